"""The event as subscribers see it: JSON on MQTT, a `meter_event` point in the database."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from meter_gateway.gateway.validate import format_ts
from meter_gateway.storage.lineprotocol import encode_point

__all__ = ["Event", "event_id", "event_line"]

# Fixed, so that the same condition gets the same id in every process and after a
# restart: subscribers deduplicate on it.
_NAMESPACE = uuid.UUID("6f1c2d4e-8a3b-5c7d-9e0f-1a2b3c4d5e6f")


def event_id(type_: str, subject: str, start_ns: int) -> str:
    """One id per condition: its type, its subject and when it started."""
    return str(uuid.uuid5(_NAMESPACE, f"{type_}/{subject}/{start_ns}"))


@dataclass(slots=True)
class Event:
    type: str
    state: str  # "raised" | "cleared"
    severity: str
    subject: dict[str, str]  # {"gateway_id": ...} or {"meter_id": ..., "transformer_id": ...}
    start_ns: int
    detected_ns: int
    event_id: str
    details: dict[str, Any] = field(default_factory=dict)
    cleared_ns: int | None = None
    message: str = ""
    # The measured quantity where one applies (a voltage, a clock drift in s).
    value: float | None = None

    @property
    def duration_s(self) -> float | None:
        if self.cleared_ns is None:
            return None
        return round((self.cleared_ns - self.start_ns) / 1e9, 3)

    def to_json(self, gateway_id: str) -> bytes:
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "type": self.type,
            "state": self.state,
            "severity": self.severity,
            **self.subject,
            "ts": format_ts(self.start_ns),
            "detected_at": format_ts(self.detected_ns),
            "details": self.details,
            "gateway_id": gateway_id,
        }
        if self.cleared_ns is not None:
            out["cleared_at"] = format_ts(self.cleared_ns)
            out["duration_s"] = self.duration_s
        if self.message:
            out["message"] = self.message
        if self.value is not None:
            out["value"] = self.value
        return orjson.dumps(out)


def event_line(ev: Event, precision_divisor: int) -> str:
    """The event as a `meter_event` point, at the time of its raise or its clear."""
    fields: dict[str, Any] = {"state": ev.state, "event_id": ev.event_id, "message": ev.message}
    if ev.duration_s is not None:
        fields["duration_s"] = float(ev.duration_s)
    if ev.value is not None:
        fields["value"] = float(ev.value)
    at = ev.start_ns // precision_divisor
    if ev.cleared_ns is not None:
        # Its own point, never an overwrite of the raise: a clear within the same
        # second (at precision s) as its raise is written one unit later.
        at = max(ev.cleared_ns // precision_divisor, at + 1)
    tags = {"type": ev.type, "severity": ev.severity, **ev.subject}
    return encode_point("meter_event", tags, fields, at)
