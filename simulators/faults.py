"""Fault specifications (what a scenario asks for) and their planning into concrete faults.

A spec names a target (meters, a group, a transformer, a feeder, or all meters) and either a
time (``at``) or a rate (``rate_per_day``, a Poisson process per target unit: per meter for
meter targets, per transformer or feeder for those). ``plan_faults`` turns specs into
``FaultInstance`` objects in start order, lazily, so an endless simulation can have rates.

The specs are pydantic models that forbid unknown keys, so a hand-written YAML scenario fails
with the key path of a typo; the same classes build scenarios in Python.
"""

from __future__ import annotations

import contextlib
import heapq
import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from meter_gateway.simulators.profiles import DAY_S, stable_seed
from meter_gateway.simulators.topology import Topology

__all__ = [
    "FAULT_TYPES",
    "MALFORMED_KINDS",
    "ClockDrift",
    "CommsDropout",
    "ConsumptionSpike",
    "Duplicates",
    "FaultError",
    "FaultInstance",
    "FaultSpec",
    "Holiday",
    "LoadVariation",
    "Malformed",
    "OutOfOrder",
    "Outage",
    "PhaseLoss",
    "RegisterReset",
    "ReverseFlow",
    "SustainedHigh",
    "SustainedLow",
    "Theft",
    "VoltageSag",
    "VoltageSwell",
    "ZeroUse",
    "malform",
    "parse_duration",
    "parse_time",
    "plan_faults",
]

MALFORMED_KINDS = ("invalid_json", "nan", "string_number", "naive_ts", "voltage_5000")

_DURATION = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)d)?\s*(?:(\d+(?:\.\d+)?)h)?\s*"
    r"(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*$"
)


class FaultError(ValueError):
    """A fault spec cannot be applied to this fleet (unknown meter, group, transformer...)."""


def parse_duration(value: object) -> float:
    """Seconds from a number or a text like ``90s``, ``15m``, ``2h``, ``1d``, ``1h30m``."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a text like '15m' (got a bool)")
    seconds: float | None = None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if value.strip() and m and any(m.groups()):
            d, h, mi, s = (float(g) if g else 0.0 for g in m.groups())
            seconds = d * DAY_S + h * 3600 + mi * 60 + s
        else:
            with contextlib.suppress(ValueError):
                seconds = float(value)
    if seconds is not None and math.isfinite(seconds):
        return seconds
    raise ValueError(f"not a duration: {value!r} (use seconds or e.g. '90s', '15m', '2h', '1d')")


def parse_time(value: object) -> float | datetime:
    """An offset from the simulation start (a duration), or an RFC 3339 time with an offset."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("a time needs an offset (e.g. 'Z' or '+01:00')")
        return value
    try:
        return parse_duration(value)
    except ValueError:
        pass
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if dt.tzinfo is None:
                raise ValueError(f"{value!r} has no offset: add 'Z' or '+hh:mm'")
            return dt
    raise ValueError(
        f"not a time: {value!r} (an offset from the start such as '2h', or RFC 3339 with offset)"
    )


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
TimeSpec = Annotated[float | datetime, BeforeValidator(parse_time)]


class _FaultBase(BaseModel):
    """Target and timing, shared by every fault type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str  # each fault type narrows this to its own literal name
    meters: list[str] | None = Field(None, min_length=1, description="these meter ids")
    group: str | None = Field(None, description="a group of the scenario's `groups`")
    transformer: str | None = Field(None, description="every meter behind this transformer")
    feeder: str | None = Field(None, description="every meter on this feeder")
    all: bool = Field(False, description="every meter of the fleet")
    at: TimeSpec | None = Field(None, description="offset from the start, or RFC 3339")
    rate_per_day: float | None = Field(None, gt=0, description="Poisson rate per target unit")
    prosumer: bool | None = Field(
        None, description="only the target's meters with (true) or without (false) PV"
    )
    rate_from: TimeSpec | None = Field(
        None, description="with `rate_per_day`: no occurrence before this (default: the start)"
    )
    rate_until: TimeSpec | None = Field(
        None, description="with `rate_per_day`: no occurrence after this (default: the end)"
    )

    @model_validator(mode="after")
    def _one_target_one_timing(self) -> _FaultBase:
        targets = [
            k for k in ("meters", "group", "transformer", "feeder") if getattr(self, k) is not None
        ] + (["all"] if self.all else [])
        if len(targets) != 1:
            raise ValueError(
                "give exactly one target of `meters`, `group`, `transformer`, `feeder`, `all`"
                + (f" (got {', '.join(targets)})" if targets else "")
            )
        if (self.at is None) == (self.rate_per_day is None):
            raise ValueError("give exactly one of `at` and `rate_per_day`")
        if self.rate_per_day is None and (
            self.rate_from is not None or self.rate_until is not None
        ):
            raise ValueError("`rate_from` and `rate_until` go with `rate_per_day`, not `at`")
        return self

    @property
    def duration_s(self) -> float | None:
        """Seconds the fault lasts; None: until the end of the simulation; 0: one reading."""
        return getattr(self, "duration", 0.0)

    def params(self) -> dict[str, Any]:
        """The type-specific settings, as recorded in the ground-truth log."""
        skip = set(_FaultBase.model_fields) | {"type", "duration"}
        return {k: v for k, v in self.model_dump().items() if k not in skip}


class Outage(_FaultBase):
    """Power lost: last gasp (unless ``last_gasp: false``), silence, then power_restored."""

    type: Literal["outage"] = "outage"
    duration: Duration | None = 1800.0
    last_gasp: bool = True
    lwt: bool = Field(False, description="also publish `offline` / `online` on the status topic")


class CommsDropout(_FaultBase):
    """The meter keeps measuring but nothing arrives: no last gasp, then readings resume."""

    type: Literal["comms_dropout"] = "comms_dropout"
    duration: Duration | None = 3600.0
    lwt: bool = Field(False, description="publish `offline` / `online` on the status topic")
    backfill: bool = Field(
        False, description="deliver the missed readings, oldest first, when comms return"
    )
    backfill_after: Duration | None = Field(
        None,
        description="with backfill: deliver them this long after comms return, as a "
        "concentrator does when it reads the meters' load profiles after midnight",
    )


class ConsumptionSpike(_FaultBase):
    """A short burst of abnormal consumption: a fault, an illegal load, a meter error.

    What a utility calls a spike is an interval far above what the meter does even at its
    busiest, not the meter's load x ``factor`` (at night, x 4 is a few hundred watts: less
    than a kettle, which no detector can or should report). So the meter draws an extra
    (``factor`` - 1) x its usual high (``MeterModel.reference_w``: what its site draws at
    its busiest on a usual day, with its EV charger and its electric heating at full power
    if it has them) on top of whatever it runs: about ``factor`` x its usual high. A
    household without an EV or electric heating gets 8-16 kW more for x 4, where its
    kettle, oven and washing machine make 2-4 kW for minutes to an hour.

    The defaults (30 min, x 4) always cover one whole 15-minute interval, whatever the
    start, so that interval's register delta is its usual value plus the whole extra (a
    shorter spike straddling two intervals shows diluted in both).
    """

    type: Literal["consumption_spike"] = "consumption_spike"
    duration: Duration | None = 1800.0
    factor: float = Field(
        4.0, gt=1.0, description="extra load: (factor - 1) x the meter's usual high"
    )


class SustainedHigh(_FaultBase):
    """Hours of abnormal extra consumption: a heater left on, a grow room, an illegal load.

    Like ``consumption_spike``, an extra (``factor`` - 1) x the meter's usual high on top of
    its normal load (x 2: 2.5-6 kW more for a household without an EV or electric heating,
    several times what it normally uses, for 6 hours by default), not a multiple of its
    load at the time (x 2 of a household at night is a hundred watts more; of one charging
    its car, 7 kW).
    """

    type: Literal["sustained_high"] = "sustained_high"
    duration: Duration | None = 21600.0
    factor: float = Field(
        2.0, gt=1.0, description="extra load: (factor - 1) x the meter's usual high"
    )


class SustainedLow(_FaultBase):
    """Days of consumption far below normal: a bypass, theft, a vacancy (load x factor).

    The physics of ``theft`` without its meter event, and with an end by default.
    """

    type: Literal["sustained_low"] = "sustained_low"
    duration: Duration | None = 259200.0
    factor: float = Field(0.2, ge=0.0, lt=1.0, description="share of the load still metered")


class ZeroUse(_FaultBase):
    """No consumption while powered and reporting (vacancy, a stuck meter): load and PV at
    0, so both registers stand still and power reads 0, but readings keep coming."""

    type: Literal["zero_use"] = "zero_use"
    duration: Duration | None = 43200.0


class Theft(_FaultBase):
    """A meter bypass: a sudden, lasting drop of the metered load."""

    type: Literal["theft"] = "theft"
    duration: Duration | None = None
    factor: float = Field(0.3, ge=0.0, lt=1.0, description="share of the load still metered")
    event: Literal["tamper", "cover_open"] | None = Field(
        None, description="a meter event sent when the bypass is fitted (tamper detection)"
    )


class ReverseFlow(_FaultBase):
    """Energy flows out of a meter that should only import (wiring fault, tamper)."""

    type: Literal["reverse_flow"] = "reverse_flow"
    duration: Duration | None = 3600.0
    export_w: float = Field(
        2000.0, gt=0.0, description="flows out of the meter (at least), whatever the load"
    )


class RegisterReset(_FaultBase):
    """The cumulative registers jump down (meter replacement, tamper)."""

    type: Literal["register_reset"] = "register_reset"
    import_kwh: float = Field(0.0, ge=0.0)
    export_kwh: float | None = Field(0.0, ge=0.0, description="null: leave the export register")


class VoltageSag(_FaultBase):
    type: Literal["voltage_sag"] = "voltage_sag"
    duration: Duration | None = 1800.0
    factor: float = Field(0.85, gt=0.0, lt=1.0, description="voltage multiplier")


class VoltageSwell(_FaultBase):
    type: Literal["voltage_swell"] = "voltage_swell"
    duration: Duration | None = 1800.0
    factor: float = Field(1.15, gt=1.0, le=2.0, description="voltage multiplier")


class PhaseLoss(_FaultBase):
    """One phase at 0 V on three-phase meters (single-phase targets are left out)."""

    type: Literal["phase_loss"] = "phase_loss"
    duration: Duration | None = 1800.0
    phase: int = Field(3, ge=1, le=3)


class ClockDrift(_FaultBase):
    """The meter clock runs fast (or slow, with a negative rate) and may jump."""

    type: Literal["clock_drift"] = "clock_drift"
    duration: Duration | None = None
    rate_s_per_h: float = Field(60.0, description="seconds gained per simulated hour")
    step_s: float = Field(0.0, description="a jump at the start")


class Duplicates(_FaultBase):
    """Readings sent more than once; duration 0: the next reading only."""

    type: Literal["duplicates"] = "duplicates"
    duration: Duration | None = 0.0
    copies: int = Field(2, ge=2, le=100)
    identical: bool = Field(
        True, description="false: the copies carry other values for the same meter and ts"
    )


class OutOfOrder(_FaultBase):
    """Readings held back, then delivered newest first when the window ends."""

    type: Literal["out_of_order"] = "out_of_order"
    duration: Duration | None = 3600.0


class Malformed(_FaultBase):
    """Readings that the gateway must reject; duration 0: the next reading only."""

    type: Literal["malformed"] = "malformed"
    duration: Duration | None = 0.0
    kind: Literal["invalid_json", "nan", "string_number", "naive_ts", "voltage_5000", "random"] = (
        "random"
    )


class Holiday(_FaultBase):
    """Not a fault: a public holiday. The target lives as on a Sunday that day (households
    at home as on a Sunday, businesses keep their Sunday hours: offices and shops closed,
    bakeries and weekend businesses open). Recorded in the truth log, so events on holidays
    can be told apart; no event is expected for it."""

    type: Literal["holiday"] = "holiday"
    duration: Duration | None = 86400.0


class LoadVariation(_FaultBase):
    """Not a fault: how the target's sites live (``profiles.Variation``), from ``at`` on.
    Every meter lives by the defaults without it; an entry sets other values: the
    day-to-day and hour-to-hour spread of a household's activity, how often its appliances
    run, the shares of households with an EV and of sites heating electrically, how often
    households are away. E.g. ``{type: load_variation, all: true, at: 0, ev_share: 0.3}``."""

    type: Literal["load_variation"] = "load_variation"
    duration: Duration | None = None
    daily: float = Field(0.2, ge=0.0, lt=1.0, description="day level within 1 +- daily")
    hourly: float = Field(0.3, ge=0.0, lt=1.0, description="household hour within 1 +- hourly")
    appliances: float = Field(
        1.0, ge=0.0, le=3.0, description="how often household appliances run (1: as drawn)"
    )
    ev_share: float = Field(0.08, ge=0.0, le=1.0, description="households charging an EV")
    heating_share: float = Field(0.1, ge=0.0, le=1.0, description="sites heating electrically")
    away: float = Field(
        1.0, ge=0.0, le=3.0, description="how often households are away (1: a few trips a year)"
    )


FaultSpec = Annotated[
    Outage
    | CommsDropout
    | ConsumptionSpike
    | SustainedHigh
    | SustainedLow
    | ZeroUse
    | Theft
    | ReverseFlow
    | RegisterReset
    | VoltageSag
    | VoltageSwell
    | PhaseLoss
    | ClockDrift
    | Duplicates
    | OutOfOrder
    | Malformed
    | Holiday
    | LoadVariation,
    Field(discriminator="type"),
]

FAULT_TYPES: tuple[str, ...] = (
    "outage",
    "comms_dropout",
    "consumption_spike",
    "sustained_high",
    "sustained_low",
    "zero_use",
    "theft",
    "reverse_flow",
    "register_reset",
    "voltage_sag",
    "voltage_swell",
    "phase_loss",
    "clock_drift",
    "duplicates",
    "out_of_order",
    "malformed",
    "holiday",
    "load_variation",
)


@dataclass(frozen=True, slots=True)
class FaultInstance:
    """One planned fault: a spec applied to concrete meters over [start, end]."""

    index: int  # position of the spec in the scenario
    spec: _FaultBase
    meters: tuple[str, ...]
    start: float
    end: float | None  # None: lasts until the end of the simulation
    scope: Literal["meter", "group", "transformer", "feeder", "all"]
    transformer_id: str | None = None
    feeder_id: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return str(self.spec.type)


@dataclass(frozen=True, slots=True)
class _Unit:
    """What one occurrence of a fault hits: one meter, or a whole transformer, feeder, group."""

    key: str
    meters: tuple[str, ...]
    scope: Literal["meter", "group", "transformer", "feeder", "all"]
    transformer_id: str | None = None
    feeder_id: str | None = None


def _units(
    spec: _FaultBase, topology: Topology, groups: dict[str, list[str]], where: str
) -> list[_Unit]:
    """The target units; rates apply per unit, a timed fault hits all units together."""
    if spec.transformer is not None:
        if spec.transformer not in topology.transformers:
            raise FaultError(
                f"{where}.transformer: unknown transformer {spec.transformer!r} "
                f"(the fleet has {_span(topology.transformers)})"
            )
        return [
            _Unit(
                spec.transformer,
                tuple(topology.transformers[spec.transformer]),
                "transformer",
                transformer_id=spec.transformer,
            )
        ]
    if spec.feeder is not None:
        if spec.feeder not in topology.feeders:
            raise FaultError(
                f"{where}.feeder: unknown feeder {spec.feeder!r} (the fleet has "
                f"{_span(topology.feeders)})"
            )
        return [
            _Unit(
                spec.feeder, tuple(topology.feeders[spec.feeder]), "feeder", feeder_id=spec.feeder
            )
        ]
    if spec.group is not None:
        if spec.group not in groups:
            raise FaultError(
                f"{where}.group: unknown group {spec.group!r} (the scenario defines "
                f"{', '.join(sorted(groups)) or 'none'})"
            )
        meters, scope, label = groups[spec.group], "group", f"groups.{spec.group}"
    elif spec.meters is not None:
        meters, scope, label = spec.meters, "meter", f"{where}.meters"
    else:
        meters, scope, label = list(topology.sites), "all", f"{where}.all"
    unknown = [m for m in meters if m not in topology.sites]
    if unknown:
        raise FaultError(
            f"{label}: unknown meter(s) {', '.join(unknown[:5])} (the fleet has "
            f"{_span(topology.sites)})"
        )
    if spec.rate_per_day is not None:
        return [_Unit(m, (m,), "meter") for m in meters]
    return [_Unit(spec.group or "", tuple(meters), scope)]  # type: ignore[arg-type]


def _span(ids: dict[str, Any]) -> str:
    keys = sorted(ids)
    return f"{keys[0]}..{keys[-1]}" if len(keys) > 1 else keys[0]


def _applicable(spec: _FaultBase, meters: tuple[str, ...], topology: Topology) -> tuple[str, ...]:
    if spec.prosumer is not None:
        meters = tuple(m for m in meters if topology.sites[m].prosumer == spec.prosumer)
    if spec.type == "phase_loss":
        return tuple(m for m in meters if topology.sites[m].phases == 3)
    return meters


def _instance(
    index: int,
    spec: _FaultBase,
    unit: _Unit,
    start: float,
    rng: random.Random,
    topology: Topology,
) -> FaultInstance | None:
    meters = _applicable(spec, unit.meters, topology)
    if not meters:
        return None
    duration = spec.duration_s
    params = spec.params()
    if params.get("kind") == "random":
        params["kind"] = rng.choice(MALFORMED_KINDS)
    return FaultInstance(
        index=index,
        spec=spec,
        meters=meters,
        start=start,
        end=None if duration is None else start + duration,
        scope=unit.scope,
        transformer_id=unit.transformer_id,
        feeder_id=unit.feeder_id,
        params=params,
    )


def plan_faults(
    specs: list[Any],
    topology: Topology,
    groups: dict[str, list[str]],
    *,
    seed: int,
    start: float,
    end: float | None = None,
) -> Iterator[FaultInstance]:
    """Concrete faults in start order (ties: scenario order), up to ``end`` if given.

    Raises ``FaultError`` at once (before yielding) when a spec names what the fleet lacks.
    """
    heap: list[tuple[float, int, int, str]] = []
    arrivals: dict[tuple[int, str], tuple[_Unit, random.Random]] = {}
    fixed: list[tuple[float, int, _Unit]] = []
    until: dict[int, float] = {}
    for i, spec in enumerate(specs):
        if spec.rate_until is not None:
            until[i] = _resolve(spec.rate_until, start)
        for unit in _units(spec, topology, groups, f"faults[{i}]"):
            rng = random.Random(stable_seed(seed, "fault", i, unit.key))
            if spec.at is not None:
                fixed.append((_resolve(spec.at, start), i, unit))
                arrivals[(i, unit.key)] = (unit, rng)
            else:
                arrivals[(i, unit.key)] = (unit, rng)
                base = start if spec.rate_from is None else _resolve(spec.rate_from, start)
                t = base + rng.expovariate(spec.rate_per_day / DAY_S)
                if t <= until.get(i, math.inf):
                    heapq.heappush(heap, (t, i, len(heap), unit.key))
    for at, i, unit in fixed:
        heapq.heappush(heap, (at, i, -1, unit.key))
    return _generate(heap, arrivals, specs, topology, end, until)


def _resolve(at: float | datetime, start: float) -> float:
    """A ``TimeSpec`` as epoch seconds: an offset from ``start`` or an absolute time."""
    return at.timestamp() if isinstance(at, datetime) else start + at


def _generate(
    heap: list[tuple[float, int, int, str]],
    arrivals: dict[tuple[int, str], tuple[_Unit, random.Random]],
    specs: list[Any],
    topology: Topology,
    end: float | None,
    until: dict[int, float],
) -> Iterator[FaultInstance]:
    tie = 0
    while heap:
        t, i, _order, key = heapq.heappop(heap)
        if end is not None and t > end:
            return
        spec = specs[i]
        unit, rng = arrivals[(i, key)]
        inst = _instance(i, spec, unit, t, rng, topology)
        if inst is not None:
            yield inst
        if spec.rate_per_day is not None:
            tie += 1
            nxt = t + rng.expovariate(spec.rate_per_day / DAY_S)
            if math.isfinite(nxt) and nxt <= until.get(i, math.inf):
                heapq.heappush(heap, (nxt, i, tie, key))


def malform(reading: dict[str, Any], kind: str) -> bytes:
    """A reading's payload broken in the way ``kind`` names (see ``MALFORMED_KINDS``)."""
    if kind == "invalid_json":
        # Cut mid-document, as a truncated frame would arrive.
        raw = orjson.dumps(reading)
        return raw[: len(raw) // 2]
    bad = dict(reading)
    if kind == "nan":
        bad["power_w"] = "\x00NaN\x00"
        return orjson.dumps(bad).replace(b'"\\u0000NaN\\u0000"', b"NaN")
    if kind == "string_number":
        bad["energy_import_kwh"] = str(reading["energy_import_kwh"])
    elif kind == "naive_ts":
        bad["ts"] = str(reading["ts"]).removesuffix("Z")
    elif kind == "voltage_5000":
        v = reading["voltage_v"]
        bad["voltage_v"] = [5000.0, *v[1:]] if isinstance(v, list) else 5000.0
    else:
        raise ValueError(f"unknown malformed kind {kind!r}; one of {', '.join(MALFORMED_KINDS)}")
    return orjson.dumps(bad)
