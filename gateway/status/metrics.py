"""/metrics: the Prometheus exposition.

Metrics are read from the gateway's plain counters at scrape time (a custom
collector), so the hot path pays nothing for them. Every labelled counter shows its
known label values from the start, at 0 until they happen.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from meter_gateway import __version__
from meter_gateway.gateway.events import compiled
from meter_gateway.gateway.events.detectors import POINT_TYPES, SEVERITY
from meter_gateway.gateway.status.snapshot import SOURCES, meters_status
from meter_gateway.gateway.status.view import GatewayView, ModbusDeviceView
from meter_gateway.gateway.vee.service import DailyStatus
from meter_gateway.storage.influxdb.writer import Histogram

__all__ = ["GatewayCollector"]

# Label values every labelled counter shows from the start (with `SOURCES`).
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


def _with_zeros(values: Mapping[str, int], known: Iterable[str]) -> dict[str, int]:
    """The known label values at 0 (a series exists before its first event), then the rest."""
    out = dict.fromkeys(known, 0)
    out.update(values)
    return out


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(f"meter_gateway_{name}", doc)
    fam.add_metric([], [(le, float(n)) for le, n in h.cumulative()], h.sum)
    return fam


class GatewayCollector(Collector):
    """The gateway's metrics, read from its counters at each scrape."""

    def __init__(self, gw: GatewayView) -> None:
        self._gw = gw

    def collect(self) -> Iterator[Metric]:
        gw = self._gw
        p, m, w, dl = (
            gw.pipeline.stats(),
            gw.mqtt.stats(),
            gw.writer.stats(),
            gw.dead_letter.stats(),
        )
        refusing_s, _ = gw.storage_refusals()

        def counter(
            name: str, doc: str, label: str | None, values: Mapping[str, int]
        ) -> CounterMetricFamily:
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
            _with_zeros(p["spooled"], SOURCES),
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
            "spool_recovered_readings",
            "Readings found in the spool at start and written again.",
            None,
            total(sp["lines_recovered"]),
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


def _event_metrics(gw: GatewayView) -> Iterator[Metric]:
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
    meters = meters_status(gw, gw.events.stats(), active)
    online, offline = meters["online"], meters["offline"]
    if online is not None and offline is not None:
        by_state = GaugeMetricFamily(
            "meter_gateway_meters",
            "Meters known to the event engine, by state: offline while a comms_loss or "
            "power_outage is open for them, else online.",
            labels=["state"],
        )
        by_state.add_metric(["online"], online)
        by_state.add_metric(["offline"], offline)
        yield by_state
    backlog = GaugeMetricFamily(
        "meter_gateway_event_backlog",
        "Events in the outbox not yet delivered, by destination (mqtt, database, webhook).",
        labels=["destination"],
    )
    for name in gw.events.destinations:
        backlog.add_metric([name], gw.events.outbox.backlog(name))
    yield backlog


def _daily_metrics(d: DailyStatus) -> Iterator[Metric]:
    """Daily figures and estimates (VEE)."""
    counters = {
        # One point per meter and local day; named by what it counts, not in days
        # (Prometheus wants base units, and days are not one).
        "daily_points": (
            "Daily figures computed: meter_daily points, one per meter and local day.",
            d["meter_days"],
        ),
        "estimates_written": (
            "Estimated register points written for gaps.",
            d["estimates_written"],
        ),
        "estimates_replaced": (
            "Estimates replaced by the actual reading arriving late.",
            d["estimates_replaced"],
        ),
    }
    for name, (doc, value) in counters.items():
        c = CounterMetricFamily(f"meter_gateway_{name}", doc)
        c.add_metric([], float(value))
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


def _modbus_metrics(gw: GatewayView) -> Iterator[Metric]:
    assert gw.modbus is not None
    per_device: dict[str, tuple[str, Callable[[ModbusDeviceView], int]]] = {
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
