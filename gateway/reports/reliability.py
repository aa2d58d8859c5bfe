"""IEEE 1366 reliability indices from stored `power_outage` events: pure computation.

Input: the `meter_event` points of type `power_outage` (raises and clears, possibly
delivered more than once), the topology (meter -> customer, transformer, feeder), the
report window and the momentary threshold. Output: SAIFI, SAIDI, CAIDI, MAIFI and
CEMIn per group and for the whole system. No I/O here, so every rule is unit-testable.

Definitions (see README.md in this folder for the reasoning):

- a meter's outage: a raise and its clear, paired by `event_id` (duplicates dropped);
  its length is the clear's `duration_s`, else clear time - raise time;
- a customer's interruption: its meters' outages, overlapping ones merged (two meters
  of one customer out together are one customer interruption);
- sustained: length >= momentary_max_s; momentary: shorter. Judged on the whole
  length, also for the part of an outage that lies outside the window;
- in the window [from, to): an interruption counts when it overlaps the window; its
  minutes are those inside it (one begun before `from` counts from `from`, one still
  open at `to` counts up to `to`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from meter_gateway.config.topology import MeterPlace

__all__ = [
    "UNASSIGNED",
    "CustomerCount",
    "EventPoint",
    "GroupIndices",
    "MeterOutage",
    "ReliabilityReport",
    "Window",
    "compute",
    "customer_key",
    "finite",
    "pair_points",
]

GroupBy = Literal["feeder", "transformer"]
# The group of a meter the topology places on no feeder (or transformer).
UNASSIGNED = "(unassigned)"


@dataclass(frozen=True, slots=True)
class Window:
    """The report period [from_s, to_s), epoch seconds."""

    from_s: float
    to_s: float


@dataclass(frozen=True, slots=True)
class EventPoint:
    """One stored `meter_event` point of type `power_outage`."""

    time_s: float
    meter_id: str
    state: str  # "raised" | "cleared"
    event_id: str
    duration_s: float | None = None


@dataclass(frozen=True, slots=True)
class MeterOutage:
    """One outage of one meter; `end_s` None: no clear was read (still open)."""

    meter_id: str
    event_id: str
    start_s: float
    end_s: float | None


@dataclass(slots=True)
class GroupIndices:
    """The indices of one group (a feeder, a transformer, or the system)."""

    name: str
    customers_served: int
    customer_interruptions: int = 0  # sustained
    customer_minutes: float = 0.0  # sustained, inside the window
    momentary_interruptions: int = 0
    cemi_customers: int = 0

    @property
    def saifi(self) -> float | None:
        return _ratio(self.customer_interruptions, self.customers_served)

    @property
    def saidi(self) -> float | None:
        """Customer-minutes of sustained interruption per customer served."""
        return _ratio(self.customer_minutes, self.customers_served)

    @property
    def caidi(self) -> float | None:
        """SAIDI / SAIFI: minutes per sustained customer interruption; None without one."""
        return _ratio(self.customer_minutes, self.customer_interruptions)

    @property
    def maifi(self) -> float | None:
        return _ratio(self.momentary_interruptions, self.customers_served)

    @property
    def cemi(self) -> float | None:
        """Share (0..1) of the customers served with more than n sustained interruptions."""
        return _ratio(self.cemi_customers, self.customers_served)


@dataclass(frozen=True, slots=True)
class CustomerCount:
    """A customer in the CEMIn list."""

    customer_id: str
    sustained: int
    minutes: float
    meter_ids: tuple[str, ...]
    groups: tuple[str, ...]


@dataclass(slots=True)
class ReliabilityReport:
    window: Window
    by: GroupBy
    momentary_max_s: float
    cemi_n: int
    groups: list[GroupIndices]
    system: GroupIndices
    cemi: list[CustomerCount]
    # Meters with outages in the window that the topology does not list: left out,
    # since the customers they serve are not in the customers-served count.
    unknown_meters: list[str] = field(default_factory=list)
    # Outages without a clear up to the end of the data read.
    open_outages: int = 0


def _ratio(num: float, den: float) -> float | None:
    # A ratio over nothing is undefined, not 0 (CAIDI without interruptions, a group
    # with no customers): None, shown as "-" or null.
    return num / den if den else None


def customer_key(place: MeterPlace) -> str:
    """The customer a meter serves; a meter without customer_id is its own customer."""
    return place.customer_id or f"meter:{place.meter_id}"


def pair_points(points: Iterable[EventPoint]) -> list[MeterOutage]:
    """Raises and clears paired by event_id, duplicates (at-least-once delivery) dropped.

    A clear without its raise (the raise lies before the data read) still gives the
    outage: its start is the clear's time minus its `duration_s`.
    """
    raises: dict[str, EventPoint] = {}
    clears: dict[str, EventPoint] = {}
    for p in points:
        book = clears if p.state == "cleared" else raises if p.state == "raised" else None
        if book is None:
            continue
        seen = book.get(p.event_id)
        # The earliest copy wins: redelivery never moves an outage later.
        if seen is None or p.time_s < seen.time_s:
            book[p.event_id] = p
    out: list[MeterOutage] = []
    for eid in sorted(raises.keys() | clears.keys()):
        r, c = raises.get(eid), clears.get(eid)
        if r is not None and c is None:
            out.append(MeterOutage(r.meter_id, eid, r.time_s, None))
            continue
        assert c is not None
        if c.duration_s is not None:
            # duration_s is exact: the clear's own time may be one unit late (a clear
            # in the same second as its raise is written one unit after it).
            start = r.time_s if r is not None else c.time_s - c.duration_s
            end = start + c.duration_s
        else:
            start = r.time_s if r is not None else c.time_s
            end = c.time_s
        out.append(MeterOutage(c.meter_id, eid, start, max(end, start)))
    return out


@dataclass(slots=True)
class _Interruption:
    """A customer's interruption: its meters' overlapping outages, merged."""

    start_s: float
    end_s: float | None
    meter_ids: set[str]


def _merge(outages: list[MeterOutage]) -> list[_Interruption]:
    merged: list[_Interruption] = []
    for o in sorted(outages, key=lambda o: o.start_s):
        last = merged[-1] if merged else None
        if last is not None and (last.end_s is None or o.start_s <= last.end_s):
            last.end_s = None if last.end_s is None or o.end_s is None else max(last.end_s, o.end_s)
            last.meter_ids.add(o.meter_id)
        else:
            merged.append(_Interruption(o.start_s, o.end_s, {o.meter_id}))
    return merged


def compute(
    outages: Iterable[MeterOutage],
    topology: Mapping[str, MeterPlace],
    window: Window,
    *,
    by: GroupBy = "feeder",
    momentary_max_s: float = 300.0,
    cemi_n: int = 3,
    observed_until_s: float | None = None,
) -> ReliabilityReport:
    """The indices per group and for the system.

    `observed_until_s`: the time up to which events were read (default: the window's
    end). An outage with no clear by then is open: it lasted at least until then, so
    it is sustained once that is momentary_max_s or more; shorter, it counts as
    momentary (it may yet become sustained).
    """
    observed = window.to_s if observed_until_s is None else observed_until_s
    group_tag = "feeder_id" if by == "feeder" else "transformer_id"

    def group_of(place: MeterPlace) -> str:
        return getattr(place, group_tag) or UNASSIGNED

    # Customers served: distinct customers in the topology, per group and overall.
    served: dict[str, set[str]] = defaultdict(set)
    all_customers: set[str] = set()
    for place in topology.values():
        served[group_of(place)].add(customer_key(place))
        all_customers.add(customer_key(place))
    groups = {g: GroupIndices(g, len(c)) for g, c in served.items()}
    system = GroupIndices("SYSTEM", len(all_customers))

    # Outages per (customer, group) and per customer: a customer with meters in two
    # groups is served in both, and is one customer in the system.
    per_group: dict[tuple[str, str], list[MeterOutage]] = defaultdict(list)
    per_customer: dict[str, list[MeterOutage]] = defaultdict(list)
    unknown: set[str] = set()
    open_count = 0
    for o in outages:
        end = window.to_s if o.end_s is None else o.end_s
        if not (o.start_s < window.to_s and end > window.from_s):
            continue  # outside the window
        where = topology.get(o.meter_id)
        if where is None:
            unknown.add(o.meter_id)
            continue
        open_count += o.end_s is None
        per_group[(customer_key(where), group_of(where))].append(o)
        per_customer[customer_key(where)].append(o)

    def tally(target: GroupIndices, interruptions: list[_Interruption]) -> tuple[int, float]:
        sustained, minutes = 0, 0.0
        for i in interruptions:
            length = (observed if i.end_s is None else i.end_s) - i.start_s
            if length >= momentary_max_s:
                sustained += 1
                inside = min(window.to_s if i.end_s is None else i.end_s, window.to_s)
                minutes += max(inside - max(i.start_s, window.from_s), 0.0) / 60
            else:
                target.momentary_interruptions += 1
        target.customer_interruptions += sustained
        target.customer_minutes += minutes
        return sustained, minutes

    for (_customer, g), outs in per_group.items():
        sustained, _ = tally(groups[g], _merge(outs))
        groups[g].cemi_customers += sustained > cemi_n

    cemi: list[CustomerCount] = []
    for customer, outs in per_customer.items():
        merged = _merge(outs)
        sustained, minutes = tally(system, merged)
        if sustained > cemi_n:
            system.cemi_customers += 1
            meters = sorted({o.meter_id for o in outs})
            cemi.append(
                CustomerCount(
                    customer,
                    sustained,
                    minutes,
                    tuple(meters),
                    tuple(sorted({group_of(topology[m]) for m in meters})),
                )
            )
    cemi.sort(key=lambda c: (-c.sustained, -c.minutes, c.customer_id))
    return ReliabilityReport(
        window=window,
        by=by,
        momentary_max_s=momentary_max_s,
        cemi_n=cemi_n,
        groups=sorted(groups.values(), key=lambda g: (g.name == UNASSIGNED, g.name)),
        system=system,
        cemi=cemi,
        unknown_meters=sorted(unknown),
        open_outages=open_count,
    )


def finite(x: float | None, digits: int = 4) -> float | None:
    """A value for output: rounded, None kept (never NaN or inf in JSON)."""
    if x is None or not math.isfinite(x):
        return None
    return round(x, digits)
