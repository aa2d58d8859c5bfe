"""Score the gateway's events against the ground-truth log of injected faults.

Each truth record becomes the events a perfect detector would emit (``expected``): an
outage -> ``power_outage`` per meter (a transformer-scope outage also ``transformer_outage``
for its transformer), comms_dropout -> ``comms_loss``, voltage_sag -> ``voltage_sag``,
voltage_swell -> ``voltage_swell``, phase_loss -> ``phase_loss``, clock_drift ->
``clock_drift``, register_reset -> ``register_decrease``, reverse_flow -> ``reverse_energy``;
the consumption faults: consumption_spike -> ``consumption_spike``, sustained_high ->
``sustained_high_consumption``, sustained_low and theft -> ``sustained_low_consumption``,
zero_use -> ``zero_consumption``. Other fault types (wire faults, holidays, load variation)
expect no event and are not scored, nor does reverse flow on a prosumer's meter
(indistinguishable from its PV export).

A consumption detector judges a meter against its own baseline, learned over a warm-up:
consumption faults that start before ``judge_from_s`` (the end of the warm-up) are not
expected. Nor are those too short to be seen by definition (``MIN_DURATION_S``: a
sustained-high fault under 3 h, sustained-low under 24 h, zero use under 6 h), counting a
fault's length only up to ``run_end_s`` when that is given.

An emitted event matches an expectation of its type when their subjects agree (the event's
``meter_id``, else ``transformer_id``) and their times overlap, each widened by
``tolerance_s``: the expectation spans the fault (to the end of the run when it has no end),
the event spans its raise to its clear (or to the end of the run while still raised).

Per type: recall = expectations matched by some event / expectations; precision = events
matching some expectation / events. False events (those matching nothing) are also given
per 1,000 meter-days, the rate an operator would see.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "CONSUMPTION_EVENTS",
    "EXPECTED_EVENTS",
    "MIN_DURATION_S",
    "Expected",
    "Observed",
    "Score",
    "TypeScore",
    "expected_events",
    "observed_events",
    "read_events",
    "score",
]

# Truth fault type -> the event type a detector should raise for each affected meter.
EXPECTED_EVENTS: dict[str, str] = {
    "outage": "power_outage",
    "comms_dropout": "comms_loss",
    "voltage_sag": "voltage_sag",
    "voltage_swell": "voltage_swell",
    "phase_loss": "phase_loss",
    "clock_drift": "clock_drift",
    "register_reset": "register_decrease",
    "reverse_flow": "reverse_energy",
    "consumption_spike": "consumption_spike",
    "sustained_high": "sustained_high_consumption",
    "sustained_low": "sustained_low_consumption",
    "theft": "sustained_low_consumption",
    "zero_use": "zero_consumption",
}
TRANSFORMER_OUTAGE = "transformer_outage"
# The events a meter's consumption baseline decides (none before its warm-up is over).
CONSUMPTION_EVENTS = frozenset(
    {
        "consumption_spike",
        "sustained_high_consumption",
        "sustained_low_consumption",
        "zero_consumption",
    }
)
# How long a consumption fault must last before any detector can call it by its name.
MIN_DURATION_S: dict[str, float] = {
    "sustained_high_consumption": 3 * 3600.0,
    "sustained_low_consumption": 24 * 3600.0,
    "zero_consumption": 6 * 3600.0,
}


@dataclass(frozen=True, slots=True)
class Expected:
    """An event a perfect detector would emit for one fault."""

    type: str
    subject: str
    start_s: float
    end_s: float  # math.inf: to the end of the run
    fault_id: str


@dataclass(frozen=True, slots=True)
class Observed:
    """One emitted event (its raise and clear lines joined by ``event_id``)."""

    type: str
    subject: str
    start_s: float
    end_s: float  # math.inf while still raised
    event_id: str


@dataclass(slots=True)
class TypeScore:
    type: str
    expected: int = 0
    found: int = 0  # expectations matched by at least one event
    events: int = 0
    true_events: int = 0  # events matching at least one expectation

    @property
    def recall(self) -> float | None:
        return self.found / self.expected if self.expected else None

    @property
    def precision(self) -> float | None:
        return self.true_events / self.events if self.events else None

    @property
    def false_events(self) -> int:
        return self.events - self.true_events


@dataclass(slots=True)
class Score:
    types: dict[str, TypeScore] = field(default_factory=dict)
    meter_days: float = 0.0
    unscored: dict[str, int] = field(default_factory=dict)  # event types no fault maps to
    missed: list[Expected] = field(default_factory=list)
    false: list[Observed] = field(default_factory=list)

    @property
    def false_events(self) -> int:
        return sum(t.false_events for t in self.types.values())

    @property
    def false_per_1000_meter_days(self) -> float | None:
        return 1000.0 * self.false_events / self.meter_days if self.meter_days > 0 else None

    def rows(self) -> list[list[str]]:
        """A table: type, expected, found, recall, events, false, precision."""
        out = []
        for name in sorted(self.types):
            t = self.types[name]
            out.append(
                [
                    name,
                    str(t.expected),
                    str(t.found),
                    _pct(t.recall),
                    str(t.events),
                    str(t.false_events),
                    _pct(t.precision),
                ]
            )
        return out

    HEADER = ["event type", "expected", "found", "recall", "events", "false", "precision"]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _time_s(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def expected_events(
    truth: Iterable[Mapping[str, Any]],
    prosumers: Collection[str] = (),
    no_will: Collection[str] = (),
    *,
    judge_from_s: float | None = None,
    run_end_s: float | None = None,
) -> list[Expected]:
    """What a perfect detector would emit for these truth records.

    Consumption faults starting before ``judge_from_s`` (a baseline's warm-up) are not
    expected, nor those shorter than their type's ``MIN_DURATION_S`` (up to ``run_end_s``).

    Reverse flow on a prosumer's meter is its PV export as far as any detector can tell:
    those meters (``prosumers``) expect no ``reverse_energy``. An outage without a last
    gasp shows on the wire only as silence unless the meter's MQTT will says `offline`;
    meters behind a concentrator (``no_will``) have no will of their own, so for them
    such an outage is, to any detector, a ``comms_loss``.
    """
    out: list[Expected] = []
    for rec in truth:
        type_ = EXPECTED_EVENTS.get(rec["type"])
        if type_ is None:
            continue
        start = float(rec["start_s"])
        end = math.inf if rec.get("end_s") is None else float(rec["end_s"])
        if type_ in CONSUMPTION_EVENTS:
            if judge_from_s is not None and start < judge_from_s:
                continue
            seen = min(end, math.inf if run_end_s is None else run_end_s) - start
            if seen < MIN_DURATION_S.get(type_, 0.0):
                continue
        fid = str(rec.get("fault_id", ""))
        meters = rec.get("meters", ())
        if type_ == "reverse_energy":
            meters = [m for m in meters if m not in prosumers]
        params = rec.get("params") or {}
        if rec["type"] == "outage" and params.get("last_gasp") is False:
            silent = [m for m in meters if not params.get("lwt") or m in no_will]
            out += [Expected("comms_loss", m, start, end, fid) for m in silent]
            meters = [m for m in meters if m not in set(silent)]
        out += [Expected(type_, m, start, end, fid) for m in meters]
        if rec["type"] == "outage" and rec.get("scope") == "transformer":
            out.append(Expected(TRANSFORMER_OUTAGE, rec["transformer_id"], start, end, fid))
    return out


def _subject(ev: Mapping[str, Any]) -> str:
    for key in ("meter_id", "transformer_id", "feeder_id", "gateway_id"):
        if ev.get(key):
            return str(ev[key])
    return ""


def observed_events(lines: Iterable[Mapping[str, Any]]) -> list[Observed]:
    """Join raise and clear lines (``--events-out``) into one event per ``event_id``."""
    by_id: dict[str, dict[str, Any]] = {}
    for ev in lines:
        key = str(ev.get("event_id") or id(ev))
        cur = by_id.setdefault(
            key, {"type": ev["type"], "subject": _subject(ev), "start": None, "end": None}
        )
        start = _time_s(ev.get("ts"))
        if start is not None and (cur["start"] is None or start < cur["start"]):
            cur["start"] = start
        cleared = _time_s(ev.get("cleared_at"))
        if cleared is not None:
            cur["end"] = cleared
    out = []
    for key, cur in by_id.items():
        start = cur["start"] if cur["start"] is not None else 0.0
        end = cur["end"] if cur["end"] is not None else math.inf
        out.append(Observed(cur["type"], cur["subject"], start, end, key))
    return out


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """The lines of an ``--events-out`` file."""
    return [orjson.loads(x) for x in Path(path).read_bytes().splitlines() if x.strip()]


def _overlap(a0: float, a1: float, b0: float, b1: float, tol: float) -> bool:
    return a0 - tol <= b1 and b0 - tol <= a1


def score(
    truth: Iterable[Mapping[str, Any]],
    events: Iterable[Mapping[str, Any]],
    *,
    meters: int,
    days: float,
    tolerance_s: float = 900.0,
    prosumers: Collection[str] = (),
    no_will: Collection[str] = (),
    judge_from_s: float | None = None,
    run_end_s: float | None = None,
) -> Score:
    """Per event type precision and recall; ``meters`` x ``days`` for the false-event rate.

    ``tolerance_s``: how far apart in time a fault and an event may be and still match
    (a detector sees a 15-minute fleet only at its readings: one interval by default).
    ``prosumers``: meters with PV, which expect no ``reverse_energy``; ``no_will``: meters
    behind a concentrator (see ``expected_events``). ``judge_from_s``: consumption faults
    before it (the baselines' warm-up) are not expected; ``run_end_s``: the end of the
    traffic, for how much of a fault's minimum duration was seen.
    """
    expected = expected_events(
        truth, prosumers, no_will, judge_from_s=judge_from_s, run_end_s=run_end_s
    )
    observed = observed_events(events)
    result = Score(meter_days=meters * days)
    by_key: dict[tuple[str, str], list[Observed]] = {}
    for ev in observed:
        if ev.type not in _SCORED:
            result.unscored[ev.type] = result.unscored.get(ev.type, 0) + 1
            continue
        by_key.setdefault((ev.type, ev.subject), []).append(ev)
    exp_by_key: dict[tuple[str, str], list[Expected]] = {}
    for ex in expected:
        exp_by_key.setdefault((ex.type, ex.subject), []).append(ex)
    for type_ in _SCORED:
        result.types[type_] = TypeScore(type_)
    for ex in expected:
        ts = result.types[ex.type]
        ts.expected += 1
        if any(
            _overlap(ex.start_s, ex.end_s, ev.start_s, ev.end_s, tolerance_s)
            for ev in by_key.get((ex.type, ex.subject), ())
        ):
            ts.found += 1
        else:
            result.missed.append(ex)
    for (type_, subject), evs in by_key.items():
        ts = result.types[type_]
        for ev in evs:
            ts.events += 1
            if any(
                _overlap(ex.start_s, ex.end_s, ev.start_s, ev.end_s, tolerance_s)
                for ex in exp_by_key.get((type_, subject), ())
            ):
                ts.true_events += 1
            else:
                result.false.append(ev)
    return result


_SCORED = frozenset({*EXPECTED_EVENTS.values(), TRANSFORMER_OUTAGE})
