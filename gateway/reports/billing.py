"""Billing consumption per customer from the registers at the period's boundaries: pure.

Input: per meter, around each boundary T of the period [from, to), the last
`meter_reading` point at or before T and the first at or after T (register fields and
the quality of that same point); the topology; the register grid
(`estimation.interval_s`). Output: per meter and per customer, import and export over
the period and the flags a person checking the bill needs. No I/O here.

Rules (README.md in this folder has the reasoning):

- register at T: the point exactly at T; else linear interpolation between the last
  point before T and the first after it;
- `estimated`: a point used is quality `estimated`, or T was interpolated across a gap
  (its two neighbours more than `interval_s` apart);
- `suspect`: a point used is quality `suspect`;
- `open`: no point at or after T: the last one before it is used (the period is not
  complete yet, or the meter is silent);
- `started`: no point at or before `from`: the meter's first point after it is used
  (it was installed or first read inside the period);
- `no data`: no register point around the period at all (or only after it);
- `register decrease`: a negative import or export delta, reported as it is;
- `not in topology`: a meter found in the database that the topology does not list,
  billed as its own customer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meter_gateway.config.topology import MeterPlace
from meter_gateway.gateway.reports.reliability import customer_key

__all__ = [
    "FLAGS",
    "BillingReport",
    "BoundaryValue",
    "CustomerBill",
    "MeterBill",
    "Neighbours",
    "RegisterPoint",
    "bill",
    "has_points_in",
    "register_at",
]

NS = 1_000_000_000

ESTIMATED = "estimated"
SUSPECT = "suspect"
OPEN = "open"
STARTED = "started"
NO_DATA = "no data"
DECREASE = "register decrease"
UNKNOWN = "not in topology"
# Every flag, in the order they are shown.
FLAGS = (NO_DATA, DECREASE, ESTIMATED, SUSPECT, OPEN, STARTED, UNKNOWN)

# A negative delta smaller than this (float noise of equal registers) is no decrease.
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class RegisterPoint:
    """One stored `meter_reading` point: its registers and the quality of that point."""

    time_ns: int
    import_kwh: float | None
    export_kwh: float | None
    quality: str = "actual"
    estimation_method: str = ""


@dataclass(frozen=True, slots=True)
class Neighbours:
    """A meter's points around one boundary T: last at or before T, first at or after T."""

    before: RegisterPoint | None = None
    after: RegisterPoint | None = None


@dataclass(frozen=True, slots=True)
class BoundaryValue:
    """A meter's registers at one boundary and how they were obtained."""

    at_ns: int
    import_kwh: float | None
    export_kwh: float | None
    how: str  # "exact" | "interpolated" | "last before" | "first after" | "none"
    flags: frozenset[str]
    points: tuple[RegisterPoint, ...]  # the points used


@dataclass(frozen=True, slots=True)
class MeterBill:
    meter_id: str
    customer_id: str
    start: BoundaryValue
    end: BoundaryValue
    import_kwh: float | None
    export_kwh: float | None
    flags: tuple[str, ...]


@dataclass(slots=True)
class CustomerBill:
    customer_id: str
    meters: list[MeterBill] = field(default_factory=list)

    @property
    def meter_ids(self) -> list[str]:
        return [m.meter_id for m in self.meters]

    @property
    def import_kwh(self) -> float | None:
        return _total(m.import_kwh for m in self.meters)

    @property
    def export_kwh(self) -> float | None:
        return _total(m.export_kwh for m in self.meters)

    @property
    def from_import_kwh(self) -> float | None:
        return _total(m.start.import_kwh for m in self.meters if m.import_kwh is not None)

    @property
    def to_import_kwh(self) -> float | None:
        return _total(m.end.import_kwh for m in self.meters if m.import_kwh is not None)

    @property
    def flags(self) -> tuple[str, ...]:
        return _ordered({f for m in self.meters for f in m.flags})


@dataclass(slots=True)
class BillingReport:
    from_ns: int
    to_ns: int
    timezone: str
    customers: list[CustomerBill]
    # Meters with points in the period that the topology does not list (each billed
    # as its own customer).
    unknown_meters: list[str] = field(default_factory=list)


def _total(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _ordered(flags: set[str] | frozenset[str]) -> tuple[str, ...]:
    return tuple(f for f in FLAGS if f in flags)


def _quality_flags(points: tuple[RegisterPoint, ...]) -> set[str]:
    out = set()
    for p in points:
        if p.quality == "estimated":
            out.add(ESTIMATED)
        elif p.quality == "suspect":
            out.add(SUSPECT)
    return out


def _lerp(a: float | None, b: float | None, frac: float) -> float | None:
    if a is None or b is None:
        return None
    return a + (b - a) * frac


def register_at(at_ns: int, around: Neighbours, interval_s: float) -> BoundaryValue:
    """The registers at `at_ns` from the points around it (see the module docstring)."""
    b, a = around.before, around.after
    for p in (b, a):
        if p is not None and p.time_ns == at_ns:
            return BoundaryValue(
                at_ns, p.import_kwh, p.export_kwh, "exact", frozenset(_quality_flags((p,))), (p,)
            )
    if b is not None and a is not None:
        frac = (at_ns - b.time_ns) / (a.time_ns - b.time_ns)
        flags = _quality_flags((b, a))
        if a.time_ns - b.time_ns > interval_s * NS:
            flags.add(ESTIMATED)  # interpolated across a gap in the register grid
        return BoundaryValue(
            at_ns,
            _lerp(b.import_kwh, a.import_kwh, frac),
            _lerp(b.export_kwh, a.export_kwh, frac),
            "interpolated",
            frozenset(flags),
            (b, a),
        )
    if b is not None:
        flags = _quality_flags((b,)) | {OPEN}
        return BoundaryValue(
            at_ns, b.import_kwh, b.export_kwh, "last before", frozenset(flags), (b,)
        )
    if a is not None:
        flags = _quality_flags((a,)) | {STARTED}
        return BoundaryValue(
            at_ns, a.import_kwh, a.export_kwh, "first after", frozenset(flags), (a,)
        )
    return BoundaryValue(at_ns, None, None, "none", frozenset({NO_DATA}), ())


def _delta(end: float | None, start: float | None) -> float | None:
    return None if end is None or start is None else end - start


def _meter_bill(
    meter_id: str,
    customer_id: str,
    around: tuple[Neighbours, Neighbours],
    from_ns: int,
    to_ns: int,
    interval_s: float,
    unknown: bool,
) -> MeterBill:
    start = register_at(from_ns, around[0], interval_s)
    end = register_at(to_ns, around[1], interval_s)
    first = around[0].after
    if around[0].before is None and (first is None or first.time_ns >= to_ns):
        # Nothing up to the period's end: the meter had no data in it.
        none = frozenset({NO_DATA})
        start = BoundaryValue(from_ns, None, None, "none", none, ())
        end = BoundaryValue(to_ns, None, None, "none", none, ())
    imp = _delta(end.import_kwh, start.import_kwh)
    exp = _delta(end.export_kwh, start.export_kwh)
    flags = set(start.flags) | set(end.flags)
    if (imp is not None and imp < -_EPS) or (exp is not None and exp < -_EPS):
        flags.add(DECREASE)
    if unknown:
        flags.add(UNKNOWN)
    return MeterBill(meter_id, customer_id, start, end, imp, exp, _ordered(flags))


def has_points_in(around: tuple[Neighbours, Neighbours], from_ns: int, to_ns: int) -> bool:
    """Whether the points read show a point in [from, to] (its boundaries included)."""
    first, last = around[0].after, around[1].before
    return (first is not None and first.time_ns <= to_ns) or (
        last is not None and last.time_ns >= from_ns
    )


def bill(
    readings: Mapping[str, tuple[Neighbours, Neighbours]],
    topology: Mapping[str, MeterPlace],
    from_ns: int,
    to_ns: int,
    *,
    interval_s: float = 900,
    timezone: str = "UTC",
) -> BillingReport:
    """Per meter and per customer consumption over [from, to).

    `readings`: meter_id -> (points around `from`, points around `to`); a meter missing
    from it has no points. Every topology meter is billed (`no data` when it has no
    points); a meter found only in `readings` is billed as its own customer when it has
    a point in the period, and listed in `unknown_meters`.
    """
    customers: dict[str, CustomerBill] = {}
    unknown: list[str] = []
    empty = (Neighbours(), Neighbours())
    meters = sorted(set(topology) | set(readings))
    for meter_id in meters:
        around = readings.get(meter_id, empty)
        place = topology.get(meter_id)
        if place is None:
            if not has_points_in(around, from_ns, to_ns):
                continue  # an old meter, silent since before the period
            unknown.append(meter_id)
            place = MeterPlace(meter_id)
        cid = customer_key(place)
        mb = _meter_bill(meter_id, cid, around, from_ns, to_ns, interval_s, meter_id in unknown)
        customers.setdefault(cid, CustomerBill(cid)).meters.append(mb)
    return BillingReport(
        from_ns,
        to_ns,
        timezone,
        sorted(customers.values(), key=lambda c: c.customer_id),
        unknown,
    )
