"""/status: the gateway's state in one snapshot, each component's own `stats()` plus what
the page needs. The page (`page_view`) and the metrics read it by typed keys."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, NotRequired, TypedDict

from meter_gateway import __version__
from meter_gateway.config.secrets import redact_text
from meter_gateway.gateway.events import Event, compiled
from meter_gateway.gateway.events.service import EventServiceStats
from meter_gateway.gateway.status.view import GatewayView
from meter_gateway.gateway.validate import format_ts
from meter_gateway.gateway.vee.service import DailyStatus
from meter_gateway.protocols.mqtt.source import MqttStats
from meter_gateway.storage.deadletter import DeadLetterStats
from meter_gateway.storage.influxdb.writer import WriterCounts
from meter_gateway.storage.spool import SpoolStats

__all__ = [
    "ACTIVE_LIMIT",
    "OFFLINE_TYPES",
    "SOURCES",
    "ActiveEvent",
    "Admission",
    "EventsStatus",
    "MetersStatus",
    "ModbusConnectionStatus",
    "ModbusDeviceStatus",
    "MqttStatus",
    "ReadingsStatus",
    "RecentRejection",
    "StatusSnapshot",
    "meters_status",
    "status_snapshot",
]

ACTIVE_LIMIT = 500  # open conditions listed in /status, oldest first (the counts cover all)
# A meter is offline while the event engine has one of these open for it.
OFFLINE_TYPES = ("comms_loss", "power_outage")
# The sources the page and the metrics show from the start, at 0 until they send.
SOURCES = ("mqtt", "modbus")

_NS = 1_000_000_000


class MqttStatus(MqttStats):
    messages: int  # MQTT messages the pipeline took


class MetersStatus(TypedDict):
    """Online and offline are None while the event engine is off."""

    known: int
    seen: int
    online: int | None
    offline: int | None
    comms_loss: int | None
    power_outage: int | None
    rule: str


class ReadingsStatus(TypedDict):
    received: dict[str, int]  # by source
    handed: dict[str, int]  # valid, handed to the spool, by source
    stored: dict[str, int]  # accepted by the database, by source
    rejected: dict[str, int]  # by the field at fault
    flagged: dict[str, int]  # by rule
    duplicates: int
    rate_per_s: float


class RecentRejection(TypedDict):
    at: str
    age_s: float
    source: str
    where: str  # the topic or device
    reason: str


class Admission(TypedDict):
    max_meters: int
    meters_admitted: int
    meters_refused: int


# An open condition: type, severity, its subject's ids (meter_id, transformer_id...),
# since, age_s, event_id, message. The subject's keys vary: not a closed TypedDict.
ActiveEvent = dict[str, Any]


class EventsStatus(EventServiceStats):
    detectors_build: str
    active_total: int
    active: list[ActiveEvent]  # the oldest ACTIVE_LIMIT
    backlog: dict[str, int]  # by destination


class ModbusDeviceStatus(TypedDict):
    label: str
    polls: int
    readings: int
    failed_polls: int
    unusable_polls: int
    skipped_slots: int
    missed_slots: int
    errors: dict[str, int]
    breaker: str
    breaker_openings: int
    down_since: float | None
    failing: bool
    last_success: float | None
    last_error: str | None


class ModbusConnectionStatus(TypedDict):
    connected: bool
    connects: int
    connect_failures: int
    last_error: str | None


class StatusSnapshot(TypedDict):
    gateway_id: str
    version: str
    time: str
    uptime_s: float
    ready: bool
    not_ready_because: list[str]
    mqtt: MqttStatus
    meters: MetersStatus
    readings: ReadingsStatus
    recent_rejections: list[RecentRejection]  # newest first
    # The writer's stats, with the database's address and no credentials.
    storage: StorageStatus
    spool: SpoolStats
    dead_letter: DeadLetterStats
    internal_errors: int
    admission: Admission
    signals: dict[str, int]
    events: EventsStatus
    daily: DailyStatus | None
    modbus: NotRequired[dict[str, ModbusDeviceStatus]]  # with Modbus devices only
    modbus_connections: NotRequired[dict[str, ModbusConnectionStatus]]


class StorageStatus(WriterCounts):
    """The writer's stats as people may see them: no credentials, and ages in seconds
    where the writer keeps monotonic times."""

    target: str
    last_refusal: str | None
    last_error: str | None
    refusing_s: float | None
    last_refused_s: float | None
    refusing_text: NotRequired[str]  # while refusing


def storage_status(gw: GatewayView) -> StorageStatus:
    writer = gw.writer
    refused, error = writer.last_refusal, writer.last_error
    refusing_s, last_refused_s = gw.storage_refusals()
    out: StorageStatus = {
        **writer.counts(),
        # The database's address and its errors as people may see them: no credentials.
        "target": gw.storage_target,
        "last_refusal": None if refused is None else redact_text(refused),
        "last_error": None if error is None else redact_text(error),
        # `refusing_since` is monotonic: meaningless outside the process.
        "refusing_s": None if refusing_s is None else round(refusing_s, 1),
        "last_refused_s": None if last_refused_s is None else round(last_refused_s, 1),
    }
    if refusing_s is not None:
        out["refusing_text"] = gw.refusing_text(refusing_s)
    return out


def status_snapshot(gw: GatewayView) -> StatusSnapshot:
    """What /status returns: each component's own `stats()`, plus what the page needs."""
    p = gw.pipeline.stats()
    storage = storage_status(gw)
    now_ns = time.time_ns()
    ready, why = gw.ready()
    events = gw.events.stats()
    active = gw.events.active()  # oldest first
    out: StatusSnapshot = {
        "gateway_id": gw.config.gateway.id,
        "version": __version__,
        "time": format_ts(now_ns),
        "uptime_s": round(time.time() - gw.started_at, 1),
        "ready": ready,
        "not_ready_because": why,
        "mqtt": {**gw.mqtt.stats(), "messages": p["messages"]},
        "meters": meters_status(gw, events, active),
        "readings": {
            "received": p["received"],
            # Accepted by validation and handed to storage (the spool): not yet stored.
            "handed": p["spooled"],
            # Accepted by the database (its `source` tag counted per written batch).
            "stored": storage["lines_by_source"],
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
        "storage": storage,
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


def meters_status(
    gw: GatewayView, events: EventServiceStats, active: Iterable[Event]
) -> MetersStatus:
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
    engine = events.get("engine")
    known = max(engine["meters_tracked"] if engine is not None else 0, offline)
    return {
        "known": known,
        "seen": seen,
        "online": known - offline,
        "offline": offline,
        "comms_loss": len(out["comms_loss"]),
        "power_outage": len(out["power_outage"]),
        "rule": "offline: a comms_loss or power_outage event is open for the meter",
    }
