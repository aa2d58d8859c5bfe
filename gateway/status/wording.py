"""What the status page says: the snapshot as text a person reads, in tables.

The server renders this view into the page (`page.render_page`); the page's script
fetches it from `/status?view=page` and draws it again, so the page's wording lives
here only. Every cell is made printable and cut here, once: it may hold text a client
wrote (ids, topics, reasons).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TypedDict

from meter_gateway.gateway.logs import printable
from meter_gateway.gateway.status.snapshot import (
    SOURCES,
    ActiveEvent,
    ModbusDeviceStatus,
    StatusSnapshot,
)

__all__ = ["PageView", "Row", "Section", "page_view"]

PAGE_EVENTS = 50  # of the open conditions in /status, listed on the page
# What one cell of the page shows of a text written by others (an id, a message): the
# rest is cut, with the full length said.
CELL_LIMIT = 300
SUBJECT_LIMIT = 80
# A line the database refused this recently is shown under "Needs attention".
REFUSAL_ATTENTION_S = 600.0


class Row(TypedDict):
    cells: list[str]
    cls: str  # "" | "bad" | "warn"


class Section(TypedDict):
    id: str
    title: str
    head: list[str] | None  # None: the first cell of each row is its heading
    rows: list[Row]
    note: str


class PageView(TypedDict):
    """The page as text: what the server renders and the page's script draws."""

    title: str
    ready: bool
    ready_text: str
    reasons: list[str]  # why not ready
    attention: list[str]
    sections: list[Section]
    updated: str


def _row(*cells: object, cls: str = "") -> Row:
    # Every cell may hold text a client wrote (ids, topics, reasons): made printable
    # here, once, for the server's rendering and the script's alike.
    return {"cells": [printable(str(c), CELL_LIMIT) for c in cells], "cls": cls}


def _section(
    id_: str, title: str, rows: list[Row], head: list[str] | None = None, note: str = ""
) -> Section:
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


def _device_state(d: ModbusDeviceStatus) -> str:
    if d["down_since"] is not None:
        state = f"DOWN since {_clock(d['down_since'])} ({_age(time.time() - d['down_since'])})"
        return state + ("; probing" if d["breaker"] == "half_open" else "; breaker open")
    if d["breaker"] != "closed":
        return f"failing (breaker {d['breaker'].replace('_', '-')})"
    return "ok" if d["polls"] else "starting"


def _subject(ev: ActiveEvent) -> str:
    subject = ev.get("meter_id") or ev.get("transformer_id") or ev.get("gateway_id") or "?"
    subject = printable(str(subject), SUBJECT_LIMIT)
    if ev.get("feeder_id") and not ev.get("meter_id"):
        subject += f" (feeder {printable(str(ev['feeder_id']), SUBJECT_LIMIT)})"
    return f"{ev['type']} {subject}"


def page_view(s: StatusSnapshot) -> PageView:
    """The status page as a person reads it: a banner and tables of plain text.

    The server renders it into the page; the page's script fetches it from
    `/status?view=page` and draws it again (the same markup)."""
    m, r, st, sp, mq = s["meters"], s["readings"], s["storage"], s["spool"], s["mqtt"]
    ev = s["events"]
    attention: list[str] = []
    sections: list[Section] = []

    # Modbus first in the attention list: a dead meter is easy to miss on a ready gateway.
    modbus: Mapping[str, ModbusDeviceStatus] = s.get("modbus") or {}
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
    last_refused_s = st["last_refused_s"]
    if "refusing_text" in st:
        attention.append(f"Database refusing: {st['refusing_text']}")
    elif last_refused_s is not None and last_refused_s < REFUSAL_ATTENTION_S:
        said = f"; the last: {st['last_refusal']}" if st["last_refusal"] else ""
        attention.append(
            f"Database {st['target']} refused lines {_age(last_refused_s)} ago "
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
                _row("recovered at start", f"{sp['lines_recovered']:,} readings"),
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
