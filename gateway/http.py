"""HTTP endpoints: /metrics, /healthz, /readyz, /status and a status page.

Metrics are read from the gateway's plain counters at scrape time (a custom
collector), so the hot path pays nothing for them.
"""

from __future__ import annotations

import hmac
import html
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from meter_gateway.gateway.validate import format_ts

if TYPE_CHECKING:
    from meter_gateway.gateway.app import Gateway

__all__ = ["StatusServer", "status_snapshot"]


def status_snapshot(gw: Gateway) -> dict[str, Any]:
    """What /status returns and the page shows: each component's own `stats()`."""
    p = gw.pipeline.stats()
    now_ns = time.time_ns()
    offline_ns = int(gw.config.events.offline_after_s * 1e9)
    seen = gw.pipeline.last_seen
    online = sum(1 for t in seen.values() if now_ns - t <= offline_ns)
    ready, why = gw.ready()
    out: dict[str, Any] = {
        "gateway_id": gw.config.gateway.id,
        "uptime_s": round(time.time() - gw.started_at, 1),
        "ready": ready,
        "not_ready_because": why,
        "mqtt": {**gw.mqtt.stats(), "messages": p["messages"]},
        "meters": {"seen": len(seen), "online": online, "offline": len(seen) - online},
        "readings": {
            "received": p["received"],
            "stored": p["stored"],
            "rejected": p["rejected"],
            "flagged": p["flagged"],
            "duplicates": p["duplicates"],
            "rate_per_s": round(gw.rate.per_second, 1),
        },
        "storage": gw.writer.stats(),
        "spool": gw.spool.stats(),
        "dead_letter": gw.dead_letter.stats(),
        "internal_errors": p["internal_errors"] + gw.mqtt.handler_errors,
        "signals": p["signals"],
        "events": {
            **gw.events.stats(),
            "active": [
                {
                    "type": ev.type,
                    "severity": ev.severity,
                    **ev.subject,
                    "since": format_ts(ev.start_ns),
                    "event_id": ev.event_id,
                    "message": ev.message,
                }
                for ev in sorted(gw.events.active(), key=lambda e: e.start_ns)
            ],
        },
    }
    if gw.modbus is not None:
        out["modbus"] = {
            mid: {
                "label": s.label,
                "polls": s.polls,
                "readings": s.readings,
                "failed_polls": s.failed_polls,
                "skipped_slots": s.skipped,
                "missed_slots": s.missed_slots,
                "errors": dict(s.errors),
                "breaker": s.breaker,
                "breaker_openings": s.breaker_openings,
                "down_since": s.down_since,
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

        def counter(name: str, doc: str, label: str | None, values: dict[str, int]) -> Any:
            fam = CounterMetricFamily(
                f"meter_gateway_{name}", doc, labels=[label] if label else None
            )
            for key, value in values.items():
                fam.add_metric([key] if label else [], value)
            return fam

        def total(value: int) -> dict[str, int]:
            return {"": value}

        yield counter("readings_received", "Readings received, by source.", "source", p["received"])
        yield counter(
            "readings_stored", "Readings handed to storage, by source.", "source", p["stored"]
        )
        yield counter(
            "readings_rejected",
            "Readings or messages rejected, by the field at fault.",
            "reason",
            p["rejected"],
        )
        yield counter(
            "readings_flagged", "Readings stored as suspect, by rule.", "rule", p["flagged"]
        )
        yield counter(
            "readings_duplicate", "Exact duplicates dropped.", None, total(p["duplicates"])
        )
        yield counter(
            "meter_signals", "Meter events and status reports, by value.", "value", p["signals"]
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
            "Lines accepted by the database.",
            None,
            total(w["lines_written"]),
        )
        yield counter(
            "storage_lines_refused",
            "Lines the database refused (dead-lettered).",
            None,
            total(w["lines_refused"]),
        )
        yield counter("storage_batches", "Batches written.", None, total(w["batches_written"]))
        yield counter(
            "storage_retries",
            "Write attempts that failed and were retried.",
            None,
            total(w["retries"]),
        )
        yield counter(
            "dead_letter_records",
            "Records taken by the dead-letter store.",
            None,
            total(dl["records"]),
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
            "storage_pending_lines": ("Lines waiting for the database.", float(w["pending_lines"])),
            "storage_healthy": ("1 while the database accepts writes.", float(w["healthy"])),
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
        if gw.modbus is not None:
            yield from _modbus_metrics(gw)


def _event_metrics(gw: Gateway) -> Iterator[Any]:
    """Events raised and cleared, open conditions by type, what each destination owes."""
    made = CounterMetricFamily(
        "meter_gateway_events",
        "Events emitted since start, by type and state (raised / cleared).",
        labels=["type", "state"],
    )
    for (type_, state), n in sorted(gw.events.counts.items()):
        made.add_metric([type_, state], n)
    yield made
    active = GaugeMetricFamily(
        "meter_gateway_events_active", "Open conditions, by type.", labels=["type"]
    )
    by_type: dict[str, int] = {}
    for ev in gw.events.active():
        by_type[ev.type] = by_type.get(ev.type, 0) + 1
    for type_, n in sorted(by_type.items()):
        active.add_metric([type_], n)
    yield active
    backlog = GaugeMetricFamily(
        "meter_gateway_event_backlog",
        "Events in the outbox not yet delivered, by destination (mqtt, database, webhook).",
        labels=["destination"],
    )
    for name in gw.events.destinations:
        backlog.add_metric([name], gw.events.outbox.backlog(name))
    yield backlog


def _modbus_metrics(gw: Gateway) -> Iterator[Any]:
    assert gw.modbus is not None
    per_device = {
        "polls": ("Modbus polls, by device.", lambda s: s.polls),
        "readings": ("Modbus polls that gave a reading, by device.", lambda s: s.readings),
        "failed_polls": ("Modbus polls that gave nothing, by device.", lambda s: s.failed_polls),
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
        "Modbus request errors, by device and kind (connection, timeout, exception, "
        "garbled, protocol, nan).",
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
    for mid, s in stats.items():
        for kind, n in s.errors.items():
            errors.add_metric([mid, kind], n)
        breaker.add_metric([mid], float(s.breaker != "closed"))
        for st in ("closed", "open", "half_open"):
            state.add_metric([mid, st], float(s.breaker == st))
    yield errors
    yield breaker
    yield state
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


_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<meta http-equiv="refresh" content="5"><title>meter-gateway {gid}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:60em}}
table{{border-collapse:collapse;margin-bottom:1.5em}}td,th{{padding:.2em .8em;text-align:left;
border-bottom:1px solid #ddd}}.ok{{color:#080}}.bad{{color:#b00;font-weight:bold}}</style>
</head><body><h1>meter-gateway {gid}</h1>
<p class="{ready_class}">{ready_text}</p>
{tables}
<p>Machine-readable: <a href="status">/status</a> · <a href="metrics">/metrics</a>.
This page refreshes every 5 s.</p></body></html>"""


def _table(title: str, rows: dict[str, Any]) -> str:
    body = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in rows.items()
    )
    return f"<h2>{html.escape(title)}</h2><table>{body}</table>"


def _modbus_row(d: dict[str, Any]) -> str:
    parts = []
    if d["down_since"] is not None:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(d["down_since"]))
        parts.append(f"DOWN since {since}")
    parts.append(f"breaker {d['breaker']} (opened {d['breaker_openings']} times)")
    parts.append(f"{d['readings']}/{d['polls']} polls ok")
    if d["skipped_slots"]:
        parts.append(f"{d['skipped_slots']} slots skipped")
    if d["last_error"]:
        parts.append(f"last error: {d['last_error']}")
    return ", ".join(parts)


def _events_table(active: list[dict[str, Any]]) -> str:
    """Open conditions, oldest first (at most 200 rows: the count says if there are more)."""
    title = f"Active events ({len(active)})"
    if not active:
        return _table(title, {"none": ""})
    rows = {}
    for ev in active[:200]:
        subject = ev.get("meter_id") or ev.get("transformer_id") or ev.get("gateway_id") or "?"
        key = f"{ev['type']} {subject}"
        rows[key] = f"{ev['severity']}, since {ev['since']}: {ev['message']}"
    return _table(title, rows)


def render_page(s: dict[str, Any]) -> str:
    r, st, m, sp = s["readings"], s["storage"], s["mqtt"], s["spool"]
    tables = [
        _table(
            "Meters",
            {
                "online": s["meters"]["online"],
                "offline": s["meters"]["offline"],
                "seen since start": s["meters"]["seen"],
            },
        ),
        _table(
            "Readings",
            {
                "per second (last minute)": r["rate_per_s"],
                "received": sum(r["received"].values()),
                "stored": sum(r["stored"].values()),
                "rejected": f"{sum(r['rejected'].values())} {r['rejected'] or ''}",
                "suspect": f"{sum(r['flagged'].values())} {r['flagged'] or ''}",
                "duplicates dropped": r["duplicates"],
            },
        ),
        _table(
            "Storage",
            {
                "database": st["target"],
                "state": "accepting writes" if st["healthy"] else f"FAILING: {st['last_error']}",
                "written": st["lines_written"],
                "refused by the database": st["lines_refused"],
                "retries": st["retries"],
            },
        ),
        _table(
            "Spool (readings on disk, not yet in the database)",
            {
                "depth": f"{sp['records']} records, {sp['bytes']:,} of {sp['max_bytes']:,} bytes",
                "oldest waiting": f"{sp['oldest_age_s']:.0f} s",
                "sources": "PAUSED (spool full)" if sp["paused"] else "taking input",
                "disk": "FULL" if sp["disk_full"] else "ok",
                "replayed at start": f"{sp['lines_replayed']} readings",
                "damaged records skipped": sp["damaged"],
            },
        ),
        _table(
            "MQTT",
            {
                "broker": m["broker"],
                "state": "connected" if m["connected"] else "DISCONNECTED",
                "messages": m["messages"],
                "connections made": m["connects"],
            },
        ),
        _table(
            "Dead letter",
            {"records": s["dead_letter"]["records"], "files in": s["dead_letter"]["directory"]},
        ),
        _table("Meter reports", s["signals"] or {"none": ""}),
        _events_table(s["events"]["active"]),
    ]
    if "modbus" in s:
        tables.append(
            _table(
                "Modbus devices",
                {f"{mid} ({d['label']})": _modbus_row(d) for mid, d in s["modbus"].items()},
            )
        )
    ready = s["ready"]
    return _PAGE.format(
        gid=html.escape(s["gateway_id"]),
        ready_class="ok" if ready else "bad",
        ready_text="Ready"
        if ready
        else "Not ready: " + html.escape("; ".join(s["not_ready_because"])),
        tables="".join(tables),
    )


class StatusServer:
    def __init__(self, gw: Gateway) -> None:
        self._gw = gw
        self._token = gw.config.http.token
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(gw))
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/", self._page)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/status", self._status)
        self._runner = web.AppRunner(app, access_log=None)
        self.port: int | None = None

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self._token and request.path != "/healthz":
            # Bytes: compare_digest refuses non-ASCII text, and a client may send any.
            given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(given, f"Bearer {self._token}".encode()):
                return web.Response(
                    status=401, text="401: send Authorization: Bearer <http.token>\n"
                )
        return await handler(request)

    async def start(self) -> None:
        host, _, port = self._gw.config.http.listen.rpartition(":")
        await self._runner.setup()
        site = web.TCPSite(self._runner, host.strip("[]"), int(port))
        await site.start()
        sockets = site._server.sockets if site._server else []  # the real port when 0 was asked
        self.port = sockets[0].getsockname()[1] if sockets else int(port)

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(text=render_page(status_snapshot(self._gw)), content_type="text/html")

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
        return web.json_response(status_snapshot(self._gw))
