"""The detectors' shared ledger of open conditions, and what they all need.

A condition is raised once and cleared once, under one id (`event_id(type, subject,
start)`), so a redelivered reading or a restart never makes a second event. Point
events (a register decrease, reverse energy, tamper) are raised only: their episode
logic lives with their detector.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

from meter_gateway.gateway.events.event import Event, event_id
from meter_gateway.gateway.events.state import CONDITION_BITS, MeterState

__all__ = ["POINT_TYPES", "SEVERITY", "Book", "signal_ts_ns", "subject_id"]

SEVERITY: dict[str, str] = {
    "power_outage": "critical",
    "transformer_outage": "critical",
    "comms_loss": "major",
    "phase_loss": "major",
    "tamper": "major",
    "register_decrease": "major",
    "reverse_energy": "major",
    "voltage_sag": "minor",
    "voltage_swell": "minor",
    "phase_imbalance": "minor",
    "overcurrent": "minor",
    "frequency_deviation": "minor",
    "clock_drift": "minor",
}
POINT_TYPES = frozenset({"register_decrease", "reverse_energy", "tamper"})

_NS = 1_000_000_000
_EPOCH_S_MAX = 253_402_300_799


def subject_id(subject: dict[str, str]) -> str:
    """The id an event is about: the meter's, else the transformer's."""
    return subject.get("meter_id") or subject.get("transformer_id") or next(iter(subject.values()))


def signal_ts_ns(ts: object, now_ns: int) -> int:
    """A meter event's ts as sent (RFC 3339 or epoch seconds) in ns; else the clock.

    The payload was decoded but not validated: an unreadable time must not lose the
    event, so it falls back to when it arrived.
    """
    if type(ts) is str:
        try:
            dt = datetime.fromisoformat(ts)
        except ValueError:
            return now_ns
        if dt.tzinfo is None:  # ambiguous across time zones: not guessed
            return now_ns
        return round(dt.timestamp() * 1_000_000) * 1000
    if type(ts) in (int, float) and 0 <= ts <= _EPOCH_S_MAX:  # type: ignore[operator]
        return round(ts * 1_000_000) * 1000  # type: ignore[operator]
    return now_ns


class Book:
    """The open conditions (by type and subject) and the counts; emits every change."""

    def __init__(self, emit: Callable[[Event], object]) -> None:
        self._emit = emit
        self.open: dict[tuple[str, str], Event] = {}
        self.raised: Counter[str] = Counter()
        self.cleared: Counter[str] = Counter()

    # -- meters ------------------------------------------------------------------------------

    def raise_meter(
        self,
        st: MeterState,
        type_: str,
        start_ns: int,
        now_ns: int,
        details: dict[str, Any],
        message: str,
        value: float | None = None,
    ) -> Event | None:
        ev = self.raise_(type_, st.subject(), start_ns, now_ns, details, message, value)
        if ev is not None and type_ not in POINT_TYPES:
            st.open |= CONDITION_BITS[type_]
        return ev

    def clear_meter(
        self,
        st: MeterState,
        type_: str,
        cleared_ns: int,
        now_ns: int,
        message: str,
        extra: dict[str, Any] | None = None,
    ) -> Event | None:
        st.open &= ~CONDITION_BITS[type_]
        return self.clear(type_, st.meter_id, cleared_ns, now_ns, message, extra)

    def start_of(self, type_: str, sid: str) -> int:
        """When the open condition began (0 when none is open)."""
        ev = self.open.get((type_, sid))
        return 0 if ev is None else ev.start_ns

    # -- any subject -------------------------------------------------------------------------

    def raise_(
        self,
        type_: str,
        subject: dict[str, str],
        start_ns: int,
        now_ns: int,
        details: dict[str, Any],
        message: str,
        value: float | None = None,
    ) -> Event | None:
        """The raised event, or None when this condition is already open."""
        sid = subject_id(subject)
        key = (type_, sid)
        if key in self.open:
            return None
        ev = Event(
            type_,
            "raised",
            SEVERITY[type_],
            subject,
            start_ns,
            now_ns,
            event_id(type_, sid, start_ns),
            details,
            message=message,
            value=value,
        )
        if type_ not in POINT_TYPES:
            self.open[key] = ev
        self.raised[type_] += 1
        self._emit(ev)
        return ev

    def clear(
        self,
        type_: str,
        sid: str,
        cleared_ns: int,
        now_ns: int,
        message: str,
        extra: dict[str, Any] | None = None,
    ) -> Event | None:
        """The clearing event (same id as the raise), or None when nothing is open."""
        ev = self.open.pop((type_, sid), None)
        if ev is None:
            return None
        # A condition cannot end before it began (a meter's clock, a late message).
        cleared_ns = max(cleared_ns, ev.start_ns)
        details = dict(ev.details)
        if extra:
            details.update(extra)
        out = Event(
            type_,
            "cleared",
            ev.severity,
            ev.subject,
            ev.start_ns,
            now_ns,
            ev.event_id,
            details,
            cleared_ns=cleared_ns,
            message=message,
            value=ev.value,
        )
        self.cleared[type_] += 1
        self._emit(out)
        return out
