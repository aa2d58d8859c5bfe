"""HTTP endpoints: /metrics, /healthz, /readyz, /status and the status page `/`.

Metrics are read from the gateway's plain counters at scrape time (a custom
collector), so the hot path pays nothing for them.

The status page is static HTML rendered on the server (it reads without JavaScript)
plus a small inline script that fetches `/status?view=page` every few seconds and
redraws it in place: no reload, no CDN, every value set as text (never as HTML).
Both draw the same view, made here by `page_view` from `status_snapshot`, so the
page's wording lives in one place.

With `http.token` set the page needs the token too. A browser cannot send an
`Authorization` header when it opens a page, so `/` (and only `/`) also takes it as
`?token=...`: the script keeps it in the tab's sessionStorage, takes it out of the
address bar and sends it as `Authorization: Bearer` on every `/status` fetch. Without
it, `/` answers 401 with the empty page and a form that asks for the token (kept the
same way). The status server keeps no access log, so a token in a URL is never logged;
the page sends no `Referer`.

Readiness (`/readyz`) is about taking MQTT input and storing it: a Modbus device that
is down does not make the gateway unready (restarting or bypassing it would not bring
the meter back), but the page names every failing device at the top, under "Needs
attention".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import logging
import platform
import time
from collections.abc import Iterable, Iterator, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from meter_gateway import __version__
from meter_gateway.config.secrets import redact_text
from meter_gateway.gateway.events import compiled
from meter_gateway.gateway.events.detectors import POINT_TYPES, SEVERITY
from meter_gateway.gateway.logs import printable
from meter_gateway.gateway.validate import format_ts

if TYPE_CHECKING:
    from meter_gateway.gateway.app import Gateway
    from meter_gateway.storage.influxdb.writer import Histogram

__all__ = ["StatusServer", "page_view", "render_page", "status_snapshot"]

ACTIVE_LIMIT = 500  # open conditions listed in /status, oldest first (the counts cover all)
PAGE_EVENTS = 50  # of those, listed on the page
REFRESH_S = 3  # the page fetches /status this often
# A meter is offline while the event engine has one of these open for it.
OFFLINE_TYPES = ("comms_loss", "power_outage")

# Label values every labelled counter shows from the start, at 0 until they happen.
SOURCES = ("mqtt", "modbus")
REJECT_REASONS = (
    "json",
    "payload",
    "meter_id",
    "ts",
    "reading",
    "too_large",
    "nesting",
    "internal_error",
    "meter_limit",
)
FLAG_RULES = ("duplicate_conflict", "out_of_order_register", "register_decrease")
SIGNAL_VALUES = ("last_gasp", "power_restored", "tamper", "cover_open", "online", "offline")
EVENT_TYPES = (*SEVERITY, "storage_backpressure")
MODBUS_ERROR_KINDS = ("connection", "timeout", "exception", "garbled", "protocol", "nan", "io")

_NS = 1_000_000_000
# What one cell of the page shows of a text written by others (an id, a message): the
# rest is cut, with the full length said.
CELL_LIMIT = 300
SUBJECT_LIMIT = 80
# A line the database refused this recently is shown under "Needs attention".
REFUSAL_ATTENTION_S = 600.0

log = logging.getLogger("meter_gateway.http")


# -- /status ------------------------------------------------------------------------------


def status_snapshot(gw: Gateway) -> dict[str, Any]:
    """What /status returns: each component's own `stats()`, plus what the page needs."""
    p = gw.pipeline.stats()
    w = dict(gw.writer.stats())
    # The database's address and its errors as people may see them: no credentials.
    w["target"] = gw.storage_target
    if w.get("last_error") is not None:
        w["last_error"] = redact_text(str(w["last_error"]))
    if w.get("last_refusal") is not None:
        w["last_refusal"] = redact_text(str(w["last_refusal"]))
    refusing_s, last_refused_s = gw.storage_refusals()
    w.pop("refusing_since", None)  # monotonic: meaningless outside the process
    w["refusing_s"] = None if refusing_s is None else round(refusing_s, 1)
    w["last_refused_s"] = None if last_refused_s is None else round(last_refused_s, 1)
    if refusing_s is not None:
        w["refusing_text"] = gw.refusing_text(refusing_s)
    now_ns = time.time_ns()
    ready, why = gw.ready()
    events = gw.events.stats()
    active = gw.events.active()  # oldest first
    out: dict[str, Any] = {
        "gateway_id": gw.config.gateway.id,
        "version": __version__,
        "time": format_ts(now_ns),
        "uptime_s": round(time.time() - gw.started_at, 1),
        "ready": ready,
        "not_ready_because": why,
        "mqtt": {**gw.mqtt.stats(), "messages": p["messages"]},
        "meters": _meters(gw, events, active),
        "readings": {
            "received": p["received"],
            # Accepted by validation and handed to storage (the spool): not yet stored.
            "handed": p["stored"],
            # Accepted by the database (its `source` tag counted per written batch).
            "stored": w["lines_by_source"],
            "rejected": p["rejected"],
            "flagged": p["flagged"],
            "duplicates": p["duplicates"],
            "rate_per_s": round(gw.rate.per_second, 1),
        },
        "recent_rejections": [
            {
                "at": format_ts(t),
                "age_s": round((now_ns - t) / _NS, 1),
                "source": source,
                "where": where,
                "reason": reason,
            }
            for t, source, where, reason in reversed(gw.pipeline.recent_rejections)
        ],
        "storage": w,
        "spool": gw.spool.stats(),
        "dead_letter": gw.dead_letter.stats(),
        "internal_errors": p["internal_errors"] + gw.mqtt.handler_errors,
        # limits.max_meters: meters outside the topology taken since start, and the
        # readings and messages of further new meters refused (dead-lettered).
        "admission": {
            "max_meters": p["max_meters"],
            "meters_admitted": p["meters_admitted"],
            "meters_refused": p["meters_refused"],
        },
        "signals": p["signals"],
        "events": {
            **events,
            # "compiled (mypyc)", or "pure Python..." with the reason (slower ingest).
            "detectors_build": compiled.status,
            "active_total": len(active),
            "active": [
                {
                    "type": ev.type,
                    "severity": ev.severity,
                    **ev.subject,
                    "since": format_ts(ev.start_ns),
                    "age_s": round(max(0, now_ns - ev.start_ns) / _NS, 1),
                    "event_id": ev.event_id,
                    "message": ev.message,
                }
                for ev in active[:ACTIVE_LIMIT]
            ],
            "backlog": {name: gw.events.outbox.backlog(name) for name in gw.events.destinations},
        },
        "daily": gw.vee.status() if gw.vee is not None else None,
    }
    if gw.modbus is not None:
        out["modbus"] = {
            mid: {
                "label": s.label,
                "polls": s.polls,
                "readings": s.readings,
                "failed_polls": s.failed_polls,
                "unusable_polls": s.unusable_polls,
                "skipped_slots": s.skipped,
                "missed_slots": s.missed_slots,
                "errors": dict(s.errors),
                "breaker": s.breaker,
                "breaker_openings": s.breaker_openings,
                "down_since": s.down_since,
                "failing": s.down_since is not None or s.breaker != "closed",
                "last_success": s.last_success,
                "last_error": s.last_error,
            }
            for mid, s in gw.modbus.stats().items()
        }
        out["modbus_connections"] = {
            ep: {
                "connected": c.connected,
                "connects": c.connects,
                "connect_failures": c.connect_failures,
                "last_error": c.last_error,
            }
            for ep, c in gw.modbus.connection_stats().items()
        }
    return out


def _meters(gw: Gateway, events: Mapping[str, Any], active: Iterable[Any]) -> dict[str, Any]:
    """Online and offline by the event engine's rule, not by a fixed silence.

    A meter is offline while the engine has a `comms_loss` or `power_outage` open for
    it; the engine judges silence against each meter's own reading interval, so a
    fleet reading every 15 minutes is online between its readings."""
    seen = len(gw.pipeline.last_seen)
    if not gw.events.enabled:
        return {
            "known": seen,
            "seen": seen,
            "online": None,
            "offline": None,
            "comms_loss": None,
            "power_outage": None,
            "rule": "unknown: the event engine is off (events.enabled: false)",
        }
    out: dict[str, set[str]] = {t: set() for t in OFFLINE_TYPES}
    for ev in active:
        ids = out.get(ev.type)
        meter_id = ev.subject.get("meter_id")
        if ids is not None and meter_id:
            ids.add(meter_id)
    offline = len(out["comms_loss"] | out["power_outage"])
    known = max(int(events.get("engine", {}).get("meters_tracked", 0)), offline)
    return {
        "known": known,
        "seen": seen,
        "online": known - offline,
        "offline": offline,
        "comms_loss": len(out["comms_loss"]),
        "power_outage": len(out["power_outage"]),
        "rule": "offline: a comms_loss or power_outage event is open for the meter",
    }


# -- the page's view: what a person reads, as text -------------------------------------------

Row = dict[str, Any]  # {"cells": [str, ...], "cls": "" | "bad" | "warn"}


def _row(*cells: object, cls: str = "") -> Row:
    # Every cell may hold text a client wrote (ids, topics, reasons): made printable
    # here, once, for the server's rendering and the script's alike.
    return {"cells": [printable(str(c), CELL_LIMIT) for c in cells], "cls": cls}


def _section(
    id_: str, title: str, rows: list[Row], head: list[str] | None = None, note: str = ""
) -> dict[str, Any]:
    return {"id": id_, "title": title, "head": head, "rows": rows, "note": note}


def _n(value: float | None) -> str:
    """A count with thousands separators; "-" for none."""
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


def _age(seconds: float) -> str:
    """`0.4 s`, `42 s`, `3 min 12 s`, `2 h 5 min`, `3 d 4 h`."""
    if seconds < 10:
        return f"{max(0.0, seconds):.1f} s"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min" + (f" {s % 60} s" if s % 60 else "")
    if s < 86400:
        return f"{s // 3600} h" + (f" {s % 3600 // 60} min" if s % 3600 // 60 else "")
    return f"{s // 86400} d" + (f" {s % 86400 // 3600} h" if s % 86400 // 3600 else "")


def _clock(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch_s))


def _stamp(rfc3339: str) -> str:
    """`2026-01-02T03:04:05.678Z` -> `2026-01-02 03:04:05 UTC`."""
    return rfc3339.replace("T", " ").split(".")[0].removesuffix("Z") + " UTC"


def _by(counts: Mapping[str, int]) -> str:
    """`{"invalid": 9}` -> `invalid: 9` (largest first); `none` when empty."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{k}: {v:,}" for k, v in items) if items else "none"


def _count_rows(counts: Mapping[str, int]) -> list[Row]:
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [_row(k, _n(v)) for k, v in items] or [_row("none", "0")]


def _device_state(d: Mapping[str, Any]) -> str:
    if d["down_since"] is not None:
        state = f"DOWN since {_clock(d['down_since'])} ({_age(time.time() - d['down_since'])})"
        return state + ("; probing" if d["breaker"] == "half_open" else "; breaker open")
    if d["breaker"] != "closed":
        return f"failing (breaker {d['breaker'].replace('_', '-')})"
    return "ok" if d["polls"] else "starting"


def _subject(ev: Mapping[str, Any]) -> str:
    subject = ev.get("meter_id") or ev.get("transformer_id") or ev.get("gateway_id") or "?"
    subject = printable(str(subject), SUBJECT_LIMIT)
    if ev.get("feeder_id") and not ev.get("meter_id"):
        subject += f" (feeder {printable(str(ev['feeder_id']), SUBJECT_LIMIT)})"
    return f"{ev['type']} {subject}"


def page_view(s: Mapping[str, Any]) -> dict[str, Any]:
    """The status page as a person reads it: a banner and tables of plain text.

    The server renders it into the page; the page's script fetches it from
    `/status?view=page` and draws it again (the same markup)."""
    m, r, st, sp, mq = s["meters"], s["readings"], s["storage"], s["spool"], s["mqtt"]
    ev = s["events"]
    attention: list[str] = []
    sections: list[dict[str, Any]] = []

    # Modbus first in the attention list: a dead meter is easy to miss on a ready gateway.
    modbus: Mapping[str, Any] = s.get("modbus") or {}
    failing = [mid for mid, d in modbus.items() if d["failing"]]
    if failing:
        names = ", ".join(failing[:10]) + (f" and {len(failing) - 10} more" if failing[10:] else "")
        attention.append(f"Modbus: {len(failing)} of {len(modbus)} devices failing: {names}")
    conns = s.get("modbus_connections") or {}
    lost = [ep for ep, c in conns.items() if not c["connected"] and c["connect_failures"]]
    if lost:
        attention.append(f"Modbus: no connection to {', '.join(lost[:5])}")
    if not st["healthy"]:
        attention.append(f"Database {st['target']} failing: {st['last_error']}")
    if st.get("refusing_s") is not None:
        attention.append(f"Database refusing: {st['refusing_text']}")
    elif st.get("last_refused_s") is not None and st["last_refused_s"] < REFUSAL_ATTENTION_S:
        said = f"; the last: {st['last_refusal']}" if st.get("last_refusal") else ""
        attention.append(
            f"Database {st['target']} refused lines {_age(st['last_refused_s'])} ago "
            f"({st['lines_refused']:,} since start, dead-lettered with source storage{said})"
        )
    if m["offline"]:
        attention.append(
            f"{m['offline']:,} meter{'' if m['offline'] == 1 else 's'} offline "
            f"({m['power_outage']:,} power outage, {m['comms_loss']:,} comms loss)"
        )
    adm = s["admission"]
    if adm["meters_refused"]:
        attention.append(
            f"limits.max_meters ({adm['max_meters']:,}) reached: {adm['meters_refused']:,} "
            "readings or messages of new meters refused (dead-lettered). List the meters in "
            "the topology file or raise the limit, then run `meter-gateway dead-letter replay "
            "--reason max_meters`"
        )
    if s["internal_errors"]:
        attention.append(f"{s['internal_errors']:,} internal errors (bugs): see the log")
    daily = s.get("daily")
    if daily and daily["store_problem"]:
        attention.append(
            f"Daily figures: cannot write the interval store ({daily['store_problem']}): "
            "samples wait in memory; free the disk"
        )
    if s["dead_letter"]["write_errors"]:
        attention.append(
            f"dead-letter store: {s['dead_letter']['write_errors']:,} write errors (disk?)"
        )

    online = "unknown" if m["online"] is None else _n(m["online"])
    sections.append(
        _section(
            "meters",
            "Meters",
            [
                _row("online", online),
                _row("offline", _n(m["offline"]), cls="bad" if m["offline"] else ""),
                _row("offline: power outage", _n(m["power_outage"])),
                _row("offline: comms loss", _n(m["comms_loss"])),
                _row("known (sent anything)", _n(m["known"])),
                _row("sent a valid reading since start", _n(m["seen"])),
            ],
            note=m["rule"],
        )
    )

    active = ev["active"]
    total = ev["active_total"]
    now = time.time()
    rows = [
        _row(
            _subject(e),
            e["severity"],
            _stamp(e["since"]),
            _age(e["age_s"]),
            e["message"],
            cls="bad" if e["severity"] == "critical" else "warn",
        )
        for e in active[:PAGE_EVENTS]
    ]
    note = "" if total <= PAGE_EVENTS else f"the oldest {PAGE_EVENTS} of {total:,} are listed"
    if not ev["enabled"]:
        note = "the event engine is off (events.enabled: false)"
    elif not ev["detectors_build"].startswith("compiled"):
        note = (note + "; " if note else "") + f"detectors run as {ev['detectors_build']}"
    sections.append(
        _section(
            "events",
            f"Active events ({total:,})",
            rows or [_row("none", "", "", "", "")],
            head=["condition", "severity", "since", "for", "message"],
            note=note,
        )
    )

    recent = s["recent_rejections"]
    rejected_total = sum(r["rejected"].values())
    sections.append(
        _section(
            "rejections",
            "Recent rejections",
            [
                _row(_stamp(x["at"]), x["source"], x["where"], x["reason"], cls="warn")
                for x in recent
            ]
            or [_row("none", "", "", "")],
            head=["time", "source", "topic / device", "reason"],
            note=f"newest first; {rejected_total:,} since start, each kept in the "
            f"dead-letter store ({s['dead_letter']['directory']})",
        )
    )

    if modbus:
        rows = []
        for mid, d in modbus.items():
            errors = ", ".join(f"{k}: {v:,}" for k, v in sorted(d["errors"].items())) or "none"
            rows.append(
                _row(
                    mid if not d["label"] or d["label"] == mid else f"{mid} ({d['label']})",
                    _device_state(d),
                    f"{d['readings']:,} of {d['polls']:,}",
                    errors,
                    d["last_error"] or "",
                    cls="bad" if d["failing"] else "",
                )
            )
        for ep, c in conns.items():
            state = "connected" if c["connected"] else "not connected"
            rows.append(
                _row(
                    ep,
                    f"connection {state}",
                    f"{c['connects']:,} connects",
                    f"{c['connect_failures']:,} failed",
                    c["last_error"] or "",
                    cls="" if c["connected"] or not c["connect_failures"] else "bad",
                )
            )
        sections.append(
            _section(
                "modbus",
                f"Modbus devices ({len(failing)} of {len(modbus)} failing)",
                rows,
                head=["device", "state", "polls with a reading", "errors", "last error"],
            )
        )

    sources = sorted(set(SOURCES) | set(r["received"]) | set(r["stored"]))
    sections.append(
        _section(
            "readings",
            "Readings",
            [
                _row(
                    src,
                    _n(r["received"].get(src, 0)),
                    _n(r["handed"].get(src, 0)),
                    _n(r["stored"].get(src, 0)),
                )
                for src in sources
            ],
            head=["source", "received", "valid, handed to storage", "stored in the database"],
            note=f"{r['rate_per_s']:,.1f} readings/s over the last minute; "
            f"{r['duplicates']:,} exact duplicates dropped; suspect: {_by(r['flagged'])}",
        )
    )
    sections.append(
        _section(
            "rejected",
            f"Rejected, by the field at fault ({rejected_total:,})",
            _count_rows(r["rejected"]),
            head=["reason", "count"],
        )
    )

    last = f"{st['last_write_s'] * 1000:,.0f} ms" if st["last_write_s"] is not None else "-"
    ws = st["write_seconds"]
    avg_ms = ws["sum"] / ws["count"] * 1000 if ws["count"] else 0.0
    bl = st["batch_lines"]
    avg_lines = bl["sum"] / bl["count"] if bl["count"] else 0.0
    sections.append(
        _section(
            "storage",
            "Database",
            [
                _row("database", st["target"]),
                _row(
                    "state",
                    "accepting writes" if st["healthy"] else f"FAILING: {st['last_error']}",
                    cls="" if st["healthy"] else "bad",
                ),
                _row("lines accepted (readings and events)", _n(st["lines_written"])),
                _row("lines refused (dead-lettered)", _n(st["lines_refused"])),
                _row("lines waiting in memory", _n(st["pending_lines"])),
                _row("write retries", _n(st["retries"])),
                _row(
                    "writes",
                    f"{st['batches_written']:,}, on average {avg_lines:,.0f} lines in "
                    f"{avg_ms:,.0f} ms; the last took {last}",
                ),
            ],
        )
    )
    sections.append(
        _section(
            "spool",
            "Spool (readings on disk, not yet in the database)",
            [
                _row(
                    "depth",
                    f"{sp['records']:,} records, {sp['bytes']:,} of {sp['max_bytes']:,} bytes",
                ),
                _row(
                    "oldest waiting",
                    _age(sp["oldest_age_s"]),
                    cls="warn" if sp["oldest_age_s"] > 60 else "",
                ),
                _row(
                    "sources",
                    "PAUSED (spool full)" if sp["paused"] else "taking input",
                    cls="bad" if sp["paused"] else "",
                ),
                _row(
                    "disk",
                    "FULL" if sp["disk_full"] else "ok",
                    cls="bad" if sp["disk_full"] else "",
                ),
                _row("replayed at start", f"{sp['lines_replayed']:,} readings"),
                _row("damaged records skipped", _n(sp["damaged"])),
            ],
        )
    )
    sections.append(
        _section(
            "mqtt",
            "MQTT broker",
            [
                _row("broker", mq["broker"]),
                _row(
                    "state",
                    "connected" if mq["connected"] else "DISCONNECTED",
                    cls="" if mq["connected"] else "bad",
                ),
                _row("messages", _n(mq["messages"])),
                _row("not yet acknowledged", _n(mq["unacknowledged"])),
                _row("connections made", _n(mq["connects"])),
                _row(
                    "sessions lost (messages may be lost)",
                    _n(mq["sessions_lost"]),
                    cls="warn" if mq["sessions_lost"] else "",
                ),
            ],
        )
    )
    backlog = ev.get("backlog") or {}
    sections.append(
        _section(
            "event-flow",
            "Events this run",
            [_row(k, _n(v)) for k, v in ev["this_run"].items()]
            + [_row(f"waiting for {k}", _n(v), cls="warn" if v else "") for k, v in backlog.items()]
            or [_row("none", "0")],
            head=["event", "count"],
        )
    )
    sections.append(
        _section("signals", "Meter reports", _count_rows(s["signals"]), head=["report", "count"])
    )
    if daily:
        done = daily["closed_through"]
        sections.append(
            _section(
                "daily",
                "Daily figures and estimates",
                [
                    _row("local days of", daily["timezone"]),
                    _row("days closed through", done or "none yet"),
                    _row(
                        "computed this run",
                        f"{daily['days_computed']:,.0f} day computations, "
                        f"{daily['meter_days']:,.0f} meter-days; the last took "
                        f"{daily['last_compute_s'] * 1000:,.0f} ms",
                    ),
                    _row(
                        "estimates",
                        f"{daily['estimates_written']:,.0f} written, "
                        f"{daily['estimates_replaced']:,.0f} replaced by late actuals, "
                        f"{daily['estimates_standing']:,.0f} standing"
                        if daily["estimation"]
                        else "off (estimation.enabled: false)",
                    ),
                    _row(
                        "interval store",
                        f"FAILING: {daily['store_problem']}"
                        if daily["store_problem"]
                        else daily["store"],
                        cls="bad" if daily["store_problem"] else "",
                    ),
                ],
            )
        )
    sections.append(
        _section(
            "dead-letter",
            "Dead letter",
            [
                _row("records", _n(s["dead_letter"]["records"])),
                _row("not yet on disk", _n(s["dead_letter"]["pending"])),
                _row("files in", s["dead_letter"]["directory"]),
            ],
        )
    )
    ready = bool(s["ready"])
    return {
        "title": f"meter-gateway {printable(str(s['gateway_id']), SUBJECT_LIMIT)}",
        "ready": ready,
        "ready_text": "Ready" if ready else "Not ready",
        "reasons": [printable(str(x), CELL_LIMIT * 4) for x in s["not_ready_because"]],
        "attention": [printable(x, CELL_LIMIT * 4) for x in attention],
        "sections": sections,
        "updated": f"as of {_clock(now)}; up {_age(s['uptime_s'])}; version {s['version']}",
    }


# -- the page -----------------------------------------------------------------------------

_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;max-width:75em;color:#222}
h1{margin-bottom:0}h2{font-size:1.15em;margin:.2em 0 .4em}
table{border-collapse:collapse;margin-bottom:.3em}
td,th{padding:.2em .8em;text-align:left;border-bottom:1px solid #ddd;vertical-align:top}
thead th{border-bottom:2px solid #999}tbody th{font-weight:normal;color:#444}
section{margin-bottom:1.4em}.note,.muted{color:#666;font-size:.9em;margin:.2em 0}
.banner{padding:.6em 1em;border-radius:4px;margin:1em 0}.banner ul{margin:.3em 0}
.banner.ok{background:#e3f3e3}.banner.warn{background:#fff1cc}.banner.bad{background:#fbdcdc}
.state{font-size:1.4em;font-weight:bold;margin:0}.attention h2{margin-top:.5em}
tr.bad td,tr.bad th{color:#b00;font-weight:bold}tr.warn td{color:#7a4e00}p.bad{color:#b00}
form{margin:1em 0}"""

_SCRIPT = """(() => {
  "use strict";
  const KEY = "meter-gateway-token";
  const EVERY_MS = @REFRESH_MS@;
  const here = new URL(location.href);
  if (here.searchParams.has("token")) {
    // Keep the token in this tab only, and out of the address bar and history.
    sessionStorage.setItem(KEY, here.searchParams.get("token") || "");
    here.searchParams.delete("token");
    history.replaceState(null, "", here.pathname + here.search + here.hash);
  }
  const statusUrl = new URL("status?view=page", here);
  const $ = (id) => document.getElementById(id);
  const el = (tag, text, cls) => {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  };
  const list = (items) => {
    const ul = el("ul");
    for (const t of items) ul.append(el("li", t));
    return ul;
  };
  const banner = (v) => {
    const b = el("div", null, "banner " + (!v.ready ? "bad" : v.attention.length ? "warn" : "ok"));
    b.id = "banner";
    const p = el("p", v.ready_text, "state");
    p.id = "ready";
    b.append(p);
    if (v.reasons.length) b.append(list(v.reasons));
    if (v.attention.length) {
      const a = el("div", null, "attention");
      a.id = "attention";
      a.append(el("h2", "Needs attention"), list(v.attention));
      b.append(a);
    }
    return b;
  };
  const section = (s) => {
    const sec = el("section");
    sec.id = "sec-" + s.id;
    sec.append(el("h2", s.title));
    const table = el("table");
    if (s.head) {
      const tr = el("tr");
      for (const h of s.head) tr.append(el("th", h));
      const thead = el("thead");
      thead.append(tr);
      table.append(thead);
    }
    const tbody = el("tbody");
    for (const r of s.rows) {
      const tr = el("tr", null, r.cls);
      r.cells.forEach((c, i) => tr.append(el(!s.head && i === 0 ? "th" : "td", c)));
      tbody.append(tr);
    }
    table.append(tbody);
    sec.append(table);
    if (s.note) sec.append(el("p", s.note, "note"));
    return sec;
  };
  const draw = (v) => {
    document.title = v.title;
    $("title").textContent = v.title;
    $("view").replaceChildren(banner(v), ...v.sections.map(section));
    $("updated").textContent = v.updated;
    $("updated").className = "muted";
  };
  const login = (message) => {
    $("login").hidden = false;
    $("login-msg").textContent = message;
    $("login-token").focus();
  };
  let timer = 0;
  const refresh = async () => {
    clearTimeout(timer);
    const token = sessionStorage.getItem(KEY);
    try {
      const resp = await fetch(statusUrl, {
        headers: token ? { Authorization: "Bearer " + token } : {},
        cache: "no-store",
      });
      if (resp.status === 401) {
        login(token ? "That token was not accepted." : "");
        return; // no polling until a token is given
      }
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const body = await resp.json();
      $("login").hidden = true;
      draw(body.view);
    } catch (err) {
      $("updated").textContent =
        "Cannot reach the gateway (" + err.message + "): showing older data, retrying.";
      $("updated").className = "bad";
    }
    timer = setTimeout(refresh, EVERY_MS);
  };
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, $("login-token").value);
    $("login-token").value = "";
    refresh();
  });
  if (document.body.dataset.loaded === "1") timer = setTimeout(refresh, EVERY_MS);
  else refresh();
})();""".replace("@REFRESH_MS@", str(REFRESH_S * 1000))


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# Only this page's own script and style run; it talks to nothing but its own server.
_CSP = (
    f"default-src 'none'; script-src {_csp_hash(_SCRIPT)}; style-src {_csp_hash(_STYLE)}; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _render_banner(v: Mapping[str, Any]) -> str:
    cls = "bad" if not v["ready"] else "warn" if v["attention"] else "ok"
    out = f'<div id="banner" class="banner {cls}"><p id="ready" class="state">'
    out += f"{_e(v['ready_text'])}</p>"
    if v["reasons"]:
        out += "<ul>" + "".join(f"<li>{_e(x)}</li>" for x in v["reasons"]) + "</ul>"
    if v["attention"]:
        items = "".join(f"<li>{_e(x)}</li>" for x in v["attention"])
        out += (
            f'<div id="attention" class="attention"><h2>Needs attention</h2><ul>{items}</ul></div>'
        )
    return out + "</div>"


def _render_section(sec: Mapping[str, Any]) -> str:
    head = sec["head"]
    out = f'<section id="sec-{_e(sec["id"])}"><h2>{_e(sec["title"])}</h2><table>'
    if head:
        out += "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead>"
    out += "<tbody>"
    for row in sec["rows"]:
        cls = f' class="{_e(row["cls"])}"' if row["cls"] else ""
        cells = "".join(
            f"<th>{_e(c)}</th>" if not head and i == 0 else f"<td>{_e(c)}</td>"
            for i, c in enumerate(row["cells"])
        )
        out += f"<tr{cls}>{cells}</tr>"
    out += "</tbody></table>"
    if sec["note"]:
        out += f'<p class="note">{_e(sec["note"])}</p>'
    return out + "</section>"


def render_page(s: Mapping[str, Any] | None) -> str:
    """The status page: `s` (a `status_snapshot`) drawn on the server, and the script
    that keeps it up to date. `None`: the page without data, asking for the token."""
    if s is None:
        title = "meter-gateway"
        body = (
            '<div id="banner" class="banner warn"><p id="ready" class="state">'
            "Sign in</p><ul><li>This gateway's status needs its access token "
            "(http.token).</li></ul></div>"
        )
        updated = ""
    else:
        v = page_view(s)
        title = v["title"]
        body = _render_banner(v) + "".join(_render_section(sec) for sec in v["sections"])
        updated = v["updated"]
    hidden = "" if s is None else " hidden"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="referrer" content="no-referrer">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head>"
        f'<body data-loaded="{0 if s is None else 1}">'
        f'<h1 id="title">{_e(title)}</h1><p id="updated" class="muted">{_e(updated)}</p>'
        f'<form id="login"{hidden}><label>Access token (http.token) '
        '<input id="login-token" type="password" autocomplete="current-password" required>'
        '</label> <button type="submit">Show status</button> <span id="login-msg"></span></form>'
        f'<main id="view">{body}</main>'
        '<p class="muted">Machine-readable: <a href="status">/status</a> · '
        f'<a href="metrics">/metrics</a>. This page updates every {REFRESH_S} s.</p>'
        f"<script>{_SCRIPT}</script></body></html>"
    )


# -- /metrics -------------------------------------------------------------------------------


def _with_zeros(values: Mapping[str, int], known: Iterable[str]) -> dict[str, int]:
    """The known label values at 0 (a series exists before its first event), then the rest."""
    out = dict.fromkeys(known, 0)
    out.update(values)
    return out


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(f"meter_gateway_{name}", doc)
    fam.add_metric([], [(le, float(n)) for le, n in h.cumulative()], h.sum)
    return fam


class _Collector(Collector):
    def __init__(self, gw: Gateway) -> None:
        self._gw = gw

    def collect(self) -> Iterator[Any]:
        gw = self._gw
        p, m, w, dl = (
            gw.pipeline.stats(),
            gw.mqtt.stats(),
            gw.writer.stats(),
            gw.dead_letter.stats(),
        )
        refusing_s, _ = gw.storage_refusals()

        def counter(name: str, doc: str, label: str | None, values: Mapping[str, int]) -> Any:
            fam = CounterMetricFamily(
                f"meter_gateway_{name}", doc, labels=[label] if label else None
            )
            for key, value in values.items():
                fam.add_metric([key] if label else [], value)
            return fam

        def total(value: int) -> dict[str, int]:
            return {"": value}

        info = GaugeMetricFamily(
            "meter_gateway_build_info",
            "The gateway's version (and Python's, and whether its event detectors run"
            " compiled); always 1.",
            labels=["version", "python", "detectors"],
        )
        build = "compiled" if compiled.compiled else "python"
        info.add_metric([__version__, platform.python_version(), build], 1.0)
        yield info
        yield counter(
            "readings_received",
            "Readings received, by source.",
            "source",
            _with_zeros(p["received"], SOURCES),
        )
        yield counter(
            "readings_handed",
            "Valid readings handed to storage (the spool), by source; not yet in the database.",
            "source",
            _with_zeros(p["stored"], SOURCES),
        )
        yield counter(
            "readings_stored",
            "Readings the database accepted, by source.",
            "source",
            _with_zeros(w["lines_by_source"], SOURCES),
        )
        rejected = CounterMetricFamily(
            "meter_gateway_readings_rejected",
            "Readings or messages rejected, by source and the field at fault.",
            labels=["source", "reason"],
        )
        by_source = {(src, why): 0 for src in SOURCES for why in REJECT_REASONS}
        by_source.update(gw.pipeline.rejected_by)
        for (src, why), n in sorted(by_source.items()):
            rejected.add_metric([src, why], n)
        yield rejected
        yield counter(
            "readings_flagged",
            "Readings stored as suspect, by rule.",
            "rule",
            _with_zeros(p["flagged"], FLAG_RULES),
        )
        yield counter(
            "readings_duplicate", "Exact duplicates dropped.", None, total(p["duplicates"])
        )
        yield counter(
            "meter_signals",
            "Meter events and status reports, by value.",
            "value",
            _with_zeros(p["signals"], SIGNAL_VALUES),
        )
        yield counter("mqtt_messages", "MQTT messages received.", None, total(p["messages"]))
        yield counter("mqtt_connects", "MQTT connections made.", None, total(m["connects"]))
        yield counter(
            "mqtt_sessions_lost",
            "Reconnects that found no session at the broker (messages may have been lost).",
            None,
            total(m["sessions_lost"]),
        )
        yield counter(
            "internal_errors",
            "Inputs no rule foresaw (bugs), kept in the dead-letter store.",
            None,
            total(p["internal_errors"] + m["handler_errors"]),
        )
        yield counter(
            "storage_lines_written",
            "Lines accepted by the database (readings and events).",
            None,
            total(w["lines_written"]),
        )
        yield counter(
            "storage_lines_refused",
            "Lines the database refused (dead-lettered).",
            None,
            total(w["lines_refused"]),
        )
        yield counter(
            "storage_batches",
            "Write requests the database accepted.",
            None,
            total(w["batches_written"]),
        )
        yield counter(
            "storage_retries",
            "Write attempts that failed and were retried.",
            None,
            total(w["retries"]),
        )
        yield _histogram(
            "storage_write_duration_seconds",
            "Duration of write requests the database accepted.",
            gw.writer.write_seconds,
        )
        yield _histogram(
            "storage_batch_size_lines",
            "Lines per write request the database accepted.",
            gw.writer.batch_lines,
        )
        yield counter(
            "dead_letter_records",
            "Records taken by the dead-letter store.",
            None,
            total(dl["records"]),
        )
        yield counter(
            "dead_letter_not_published",
            "Dead-letter records kept on disk but not republished (over the per-second or "
            "per-message bound).",
            None,
            total(dl["not_published"]),
        )
        yield counter(
            "meters_refused",
            "Readings and messages of new meters refused because limits.max_meters was "
            "reached (dead-lettered).",
            None,
            total(p["meters_refused"]),
        )
        yield counter(
            "dead_letter_fsyncs",
            "Group commits of the dead-letter store.",
            None,
            total(dl["fsyncs"]),
        )
        sp = gw.spool.stats()
        yield counter(
            "spool_fsyncs", "Group commits of the spool (fsyncs).", None, total(sp["fsyncs"])
        )
        yield counter(
            "spool_write_errors",
            "Spool writes that failed (a full disk); the readings waited in memory.",
            None,
            total(sp["write_errors"]),
        )
        yield counter(
            "spool_replayed_readings",
            "Readings found in the spool at start and written again.",
            None,
            total(sp["lines_replayed"]),
        )
        yield counter(
            "spool_damaged", "Damaged spool records found and skipped.", None, total(sp["damaged"])
        )
        gauges = {
            "mqtt_connected": ("1 while connected to the broker.", float(m["connected"])),
            "mqtt_unacknowledged": (
                "MQTT messages received and not yet acknowledged.",
                float(m["unacknowledged"]),
            ),
            "ready": ("1 while /readyz says ready.", float(gw.ready()[0])),
            "storage_pending_lines": ("Lines waiting for the database.", float(w["pending_lines"])),
            "storage_healthy": ("1 while the database accepts writes.", float(w["healthy"])),
            "storage_refusing_seconds": (
                "How long the database has refused lines (HTTP 400/422; dead-lettered) "
                "in every write; 0 once a write has none refused.",
                refusing_s or 0.0,
            ),
            "storage_paused": (
                "1 while sources are paused by backpressure.",
                float(w["paused_sources"]),
            ),
            "storage_last_write_seconds": (
                "Duration of the last successful write.",
                w["last_write_s"] or 0.0,
            ),
            "dead_letter_pending": (
                "Dead-letter records not yet on disk.",
                float(dl["pending"]),
            ),
            "meters_seen": ("Meters that sent a valid reading.", float(p["meters_seen"])),
            "meters_admitted": (
                "Meters outside the topology file admitted since start (limits.max_meters).",
                float(p["meters_admitted"]),
            ),
            "max_meters": (
                "The bound on meters outside the topology file (limits.max_meters; 0: none).",
                float(p["max_meters"]),
            ),
            "spool_bytes": ("Bytes of the spool on disk.", float(sp["bytes"])),
            "spool_max_bytes": (
                "The spool's bound (storage.spool_max_bytes).",
                float(sp["max_bytes"]),
            ),
            "spool_records": (
                "Spool records (group commits) the database does not have yet.",
                float(sp["records"]),
            ),
            "spool_oldest_age_seconds": (
                "Age of the oldest reading waiting in the spool.",
                float(sp["oldest_age_s"]),
            ),
            "spool_paused": (
                "1 while the spool is full (or the disk is) and sources are paused.",
                float(sp["paused"]),
            ),
        }
        for name, (doc, value) in gauges.items():
            g = GaugeMetricFamily(f"meter_gateway_{name}", doc)
            g.add_metric([], value)
            yield g
        yield from _event_metrics(gw)
        if gw.vee is not None:
            yield from _daily_metrics(gw.vee.status())
        if gw.modbus is not None:
            yield from _modbus_metrics(gw)


def _event_metrics(gw: Gateway) -> Iterator[Any]:
    """Events raised and cleared, open conditions by type, meters online and offline,
    what each destination owes."""
    made = CounterMetricFamily(
        "meter_gateway_events",
        "Events emitted since start, by type and state (raised / cleared).",
        labels=["type", "state"],
    )
    counts: dict[tuple[str, str], int] = {}
    for type_ in EVENT_TYPES:
        counts[type_, "raised"] = 0
        if type_ not in POINT_TYPES:
            counts[type_, "cleared"] = 0
    counts.update(gw.events.counts)
    for (type_, state), n in sorted(counts.items()):
        made.add_metric([type_, state], n)
    yield made
    active = gw.events.active()
    by_type = dict.fromkeys((t for t in EVENT_TYPES if t not in POINT_TYPES), 0)
    for ev in active:
        by_type[ev.type] = by_type.get(ev.type, 0) + 1
    fam = GaugeMetricFamily(
        "meter_gateway_events_active", "Open conditions, by type.", labels=["type"]
    )
    for type_, n in sorted(by_type.items()):
        fam.add_metric([type_], n)
    yield fam
    meters = _meters(gw, gw.events.stats(), active)
    if meters["online"] is not None:
        state = GaugeMetricFamily(
            "meter_gateway_meters",
            "Meters known to the event engine, by state: offline while a comms_loss or "
            "power_outage is open for them, else online.",
            labels=["state"],
        )
        state.add_metric(["online"], meters["online"])
        state.add_metric(["offline"], meters["offline"])
        yield state
    backlog = GaugeMetricFamily(
        "meter_gateway_event_backlog",
        "Events in the outbox not yet delivered, by destination (mqtt, database, webhook).",
        labels=["destination"],
    )
    for name in gw.events.destinations:
        backlog.add_metric([name], gw.events.outbox.backlog(name))
    yield backlog


def _daily_metrics(d: Mapping[str, Any]) -> Iterator[Any]:
    """Daily figures and estimates (VEE)."""
    counters = {
        # One point per meter and local day; named by what it counts, not in days
        # (Prometheus wants base units, and days are not one).
        "daily_points": (
            "Daily figures computed: meter_daily points, one per meter and local day.",
            "meter_days",
        ),
        "estimates_written": ("Estimated register points written for gaps.", "estimates_written"),
        "estimates_replaced": (
            "Estimates replaced by the actual reading arriving late.",
            "estimates_replaced",
        ),
    }
    for name, (doc, key) in counters.items():
        c = CounterMetricFamily(f"meter_gateway_{name}", doc)
        c.add_metric([], float(d[key]))
        yield c
    g = GaugeMetricFamily(
        "meter_gateway_estimates_standing", "Estimates no actual has replaced yet."
    )
    g.add_metric([], float(d["estimates_standing"]))
    yield g
    g = GaugeMetricFamily(
        "meter_gateway_interval_store_failing",
        "1 while the interval store (daily figures) cannot be written.",
    )
    g.add_metric([], float(d["store_problem"] is not None))
    yield g


def _modbus_metrics(gw: Gateway) -> Iterator[Any]:
    assert gw.modbus is not None
    per_device = {
        "polls": ("Modbus polls, by device.", lambda s: s.polls),
        "readings": ("Modbus polls that gave a reading, by device.", lambda s: s.readings),
        "failed_polls": ("Modbus polls that gave nothing, by device.", lambda s: s.failed_polls),
        "unusable_polls": (
            "Modbus polls a device answered with nothing usable (exception codes, garbled "
            "frames, NaN or 'no value' registers): failed polls for its breaker, by device.",
            lambda s: s.unusable_polls,
        ),
        "skipped_slots": (
            "Poll slots skipped while the device's circuit breaker was open.",
            lambda s: s.skipped,
        ),
        "missed_slots": ("Poll slots overrun by a slow poll or line.", lambda s: s.missed_slots),
        "breaker_openings": (
            "Times a device went down: its circuit breaker opened after failed polls.",
            lambda s: s.breaker_openings,
        ),
    }
    stats = gw.modbus.stats()
    for name, (doc, value) in per_device.items():
        fam = CounterMetricFamily(f"meter_gateway_modbus_{name}", doc, labels=["meter_id"])
        for mid, s in stats.items():
            fam.add_metric([mid], value(s))
        yield fam
    errors = CounterMetricFamily(
        "meter_gateway_modbus_errors",
        "Failed Modbus reads, by device and kind (connection, timeout, exception, garbled, "
        "protocol, nan, io); not counted as rejected readings.",
        labels=["meter_id", "kind"],
    )
    breaker = GaugeMetricFamily(
        "meter_gateway_modbus_breaker_open",
        "1 while a device's circuit breaker is open or half-open (probing).",
        labels=["meter_id"],
    )
    state = GaugeMetricFamily(
        "meter_gateway_modbus_breaker_state",
        "1 for the state a device's circuit breaker is in (closed, open, half_open).",
        labels=["meter_id", "state"],
    )
    down = GaugeMetricFamily(
        "meter_gateway_modbus_down",
        "1 while a device is down (its breaker opened and it has not answered since).",
        labels=["meter_id"],
    )
    for mid, s in stats.items():
        for kind, n in sorted(_with_zeros(s.errors, MODBUS_ERROR_KINDS).items()):
            errors.add_metric([mid, kind], n)
        breaker.add_metric([mid], float(s.breaker != "closed"))
        for st in ("closed", "open", "half_open"):
            state.add_metric([mid, st], float(s.breaker == st))
        down.add_metric([mid], float(s.down_since is not None))
    yield errors
    yield breaker
    yield state
    yield down
    connected = GaugeMetricFamily(
        "meter_gateway_modbus_connected",
        "1 while a Modbus connection (TCP socket or serial port) is open.",
        labels=["endpoint"],
    )
    failures = CounterMetricFamily(
        "meter_gateway_modbus_connect_failures",
        "Failed attempts to open a Modbus connection.",
        labels=["endpoint"],
    )
    for ep, c in gw.modbus.connection_stats().items():
        connected.add_metric([ep], float(c.connected))
        failures.add_metric([ep], c.connect_failures)
    yield connected
    yield failures


# -- the server -----------------------------------------------------------------------------


def _bad_request_kind(exc: BaseException | None) -> str:
    """What was wrong with a request aiohttp could not parse, in words, without any of
    its text: the request line may hold a token (`/?token=...`)."""
    if isinstance(exc, http_exceptions.LineTooLong):
        return "a request line or header longer than the server takes (8190 bytes)"
    if isinstance(exc, http_exceptions.BadHttpMethod):
        return "not HTTP (TLS to a plain HTTP port, or another protocol)"
    if isinstance(exc, http_exceptions.InvalidURLError):
        return "an invalid URL"
    if isinstance(exc, http_exceptions.InvalidHeader):
        return "an invalid header"
    if isinstance(exc, http_exceptions.BadStatusLine):
        return "an invalid request line"
    if isinstance(exc, http_exceptions.HttpProcessingError):
        return f"a malformed request ({type(exc).__name__})"
    return type(exc).__name__ if exc is not None else "an unknown problem"


class _QuietRequestHandler(RequestHandler):
    """aiohttp's connection handler, except for the answer to a request it cannot use.

    aiohttp logs such a request with a traceback whose message quotes the request line,
    and echoes that line in the 400 body: a request for `/?token=...&x=<9000 bytes>`
    would write the token to the log and back to whoever sent it, and every such
    request would write nine lines. Here it is one line, rate-limited by kind, naming
    the client and what was wrong, never the request's text; the body is the status's
    name. A 500 (a bug in a handler) keeps its traceback in the log, once a minute."""

    __slots__ = ()  # the same layout as aiohttp's, so an instance can take this class
    _limit: dict[tuple[int, str], list[float]] = {}

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        kind = _bad_request_kind(exc) if status < 500 else f"{type(exc).__name__ if exc else ''}"
        now = time.monotonic()
        seen = self._limit.get((status, kind))
        if seen is None or now - seen[0] >= 60:
            more = int(seen[1]) if seen else 0
            also = f" (and {more} more like it in the last 60 s)" if more else ""
            if status >= 500:
                log.error(
                    "http: internal error answering %s %s%s",
                    request.method,
                    printable(str(request.rel_url.path), 200),
                    also,
                    exc_info=exc,
                )
            else:
                log.warning(
                    "http: refused a request from %s with %d: %s%s",
                    request.remote,
                    status,
                    kind,
                    also,
                )
            if len(self._limit) > 100:
                self._limit.clear()  # a bound on memory; at most a repeated line
            self._limit[(status, kind)] = [now, 0.0]
        else:
            seen[1] += 1
        if request.writer.output_size > 0:
            raise ConnectionError("the response was sent already; closing the connection")
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        resp = web.Response(status=status, text=f"{status} {phrase}\n")
        resp.force_close()
        return resp


class _QuietServer(web.Server):
    """Makes `_QuietRequestHandler`s: the one change to aiohttp's server."""

    def __call__(self) -> RequestHandler:
        handler = super().__call__()
        handler.__class__ = _QuietRequestHandler
        return handler


_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class StatusServer:
    """/metrics, /healthz, /readyz, /status and the page, with `http.token` as a bearer token."""

    def __init__(self, gw: Gateway) -> None:
        self._gw = gw
        self._token = gw.config.http.token
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(gw))
        # process_cpu_seconds_total, process_resident_memory_bytes, open fds... (Linux)
        ProcessCollector(registry=self._registry)
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/", self._page)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/status", self._status)
        # No access log: the page may be opened as /?token=..., which must not be logged.
        self._runner = web.AppRunner(app, access_log=None)
        self.port: int | None = None

    def _allowed(self, request: web.Request) -> bool:
        """The bearer token in the header; for the page only, also `?token=`."""
        assert self._token
        expected = self._token.encode()
        # The scheme's name is case-insensitive (RFC 7235: `bearer`, `BEARER`); the
        # token is not. Bytes: compare_digest refuses non-ASCII text, and a client may
        # send any.
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            given = credentials.strip(" ").encode("utf-8", "surrogateescape")
            if hmac.compare_digest(given, expected):
                return True
        if request.path == "/" and "token" in request.query:
            query = request.query["token"].encode("utf-8", "surrogateescape")
            return hmac.compare_digest(query, self._token.encode())
        return False

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self._token and request.path != "/healthz" and not self._allowed(request):
            if request.path == "/":
                # The page without data: its form asks for the token.
                return self._html(render_page(None), status=401)
            return web.Response(status=401, text="401: send Authorization: Bearer <http.token>\n")
        return await handler(request)

    async def start(self) -> None:
        host, _, port = self._gw.config.http.listen.rpartition(":")
        await self._runner.setup()
        # Bad requests answered without a traceback or an echo (see _QuietRequestHandler).
        assert self._runner.server is not None
        self._runner.server.__class__ = _QuietServer
        site = web.TCPSite(self._runner, host.strip("[]"), int(port))
        await site.start()
        sockets = site._server.sockets if site._server else []  # the real port when 0 was asked
        self.port = sockets[0].getsockname()[1] if sockets else int(port)

    async def stop(self) -> None:
        await self._runner.cleanup()

    @staticmethod
    def _html(text: str, status: int = 200) -> web.Response:
        headers = {**_NO_STORE, "Content-Security-Policy": _CSP}
        return web.Response(text=text, status=status, content_type="text/html", headers=headers)

    async def _page(self, request: web.Request) -> web.Response:
        return self._html(render_page(status_snapshot(self._gw)))

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._registry),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, why = self._gw.ready()
        return web.Response(
            status=200 if ready else 503,
            text="ready\n" if ready else "not ready: " + "; ".join(why) + "\n",
        )

    async def _status(self, request: web.Request) -> web.Response:
        """The snapshot as JSON; `?view=page`: the page's view instead (what the page's
        script draws)."""
        s = status_snapshot(self._gw)
        if request.query.get("view") == "page":
            return web.json_response({"view": page_view(s)}, headers=_NO_STORE)
        return web.json_response(s, headers=_NO_STORE)
