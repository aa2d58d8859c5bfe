"""Customer tags for energy-saving advice and customer service: pure computation.

Input (read once by `readings_source.read_customer_inputs`): the `meter_daily` points
of the window, its `power_outage` points (as `report reliability` reads them) and the
raised `tamper`, `register_decrease` and `sustained_low_consumption` events; the
topology; the thresholds of the `customers:` configuration section. Output: per
customer its figures and its tags, each tag with the evidence that set it.

Tags (README.md in this folder has the reasoning):

- high_standby: mean daily base load (per day the sum of the customer's meters'
  base_load_kw, averaged over the days with data) >= high_standby_kw;
- night_heavy: night energy (sum of night_share x energy_import_kwh) / import energy
  (over the days with both fields) >= night_heavy_share;
- peak_contributor: among the customers with a mean daily peak (per day the sum of
  their meters' peak_demand_kw, averaged over days), the top
  max(1, ceil(peak_top_share x their number)) by it; a tie at the cut is tagged too;
- outage_sensitive: more than outage_sensitive_min sustained interruptions, counted
  by reliability.compute exactly as `report reliability` counts CEMIn;
- tamper_risk: any raised tamper, register_decrease or sustained_low_consumption event;
- prosumer: topology `prosumer` on one of its meters, or exported energy over the
  window >= prosumer_min_export_kwh (and more than 0).

Thresholds are compared with a tolerance of 1e-9 (a share of exactly 0.5 computed as
0.49999999999999994 is 0.5).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meter_gateway.config.schema import CustomersConfig
from meter_gateway.config.topology import MeterPlace
from meter_gateway.gateway.reports.reliability import (
    EventPoint,
    Window,
    compute,
    customer_key,
    pair_points,
)
from meter_gateway.gateway.validate import format_ts

__all__ = [
    "RISK_TYPES",
    "TAGS",
    "CustomerFigures",
    "CustomerInputs",
    "CustomerTags",
    "DailyFigures",
    "RiskEvent",
    "tag_customers",
]

NS = 1_000_000_000
TAGS = (
    "high_standby",
    "night_heavy",
    "peak_contributor",
    "outage_sensitive",
    "tamper_risk",
    "prosumer",
)
RISK_TYPES = ("tamper", "register_decrease", "sustained_low_consumption")
_TOL = 1e-9


@dataclass(frozen=True, slots=True)
class DailyFigures:
    """One `meter_daily` point (fields missing on a day with little data are None)."""

    meter_id: str
    time_s: float  # the local day's midnight
    day: str  # the `date` field, "YYYY-MM-DD"
    customer_id: str | None = None  # the point's customer_id tag
    energy_import_kwh: float | None = None
    energy_export_kwh: float | None = None
    peak_demand_kw: float | None = None
    base_load_kw: float | None = None
    night_share: float | None = None
    completeness: float | None = None
    intervals: int | None = None


@dataclass(frozen=True, slots=True)
class RiskEvent:
    """A raised tamper, register_decrease or sustained_low_consumption event."""

    time_s: float
    meter_id: str
    type: str
    event_id: str


@dataclass(slots=True)
class CustomerInputs:
    """Everything the tags need, read once (readings_source.read_customer_inputs)."""

    window: Window
    daily: list[DailyFigures]
    outage_points: list[EventPoint]
    risk_events: list[RiskEvent]
    # power_outage points were read up to here (to + momentary_max_s, never past now).
    read_until_s: float


@dataclass(slots=True)
class CustomerFigures:
    """One customer's figures over the window, and its tags with their evidence."""

    customer_id: str
    meter_ids: list[str]
    days: int = 0  # local days with a meter_daily point of one of its meters
    mean_base_load_kw: float | None = None
    base_load_days: int = 0
    import_kwh: float | None = None
    export_kwh: float | None = None
    night_kwh: float | None = None
    night_import_kwh: float | None = None  # import of the days with a night_share
    night_share: float | None = None
    mean_peak_kw: float | None = None
    peak_days: int = 0
    peak_rank: int | None = None  # 1 = highest mean daily peak
    sustained_interruptions: int = 0
    interruption_minutes: float = 0.0
    risk_events: dict[str, int] = field(default_factory=dict)
    first_risk_s: float | None = None
    first_risk_meter: str | None = None
    prosumer_meters: list[str] = field(default_factory=list)  # topology prosumer=true
    tags: dict[str, str] = field(default_factory=dict)  # tag -> evidence

    def figures(self) -> dict[str, Any]:
        """The figures as plain values (JSON), rounded to 4 decimals."""
        r = _round
        return {
            "days": self.days,
            "mean_base_load_kw": r(self.mean_base_load_kw),
            "base_load_days": self.base_load_days,
            "import_kwh": r(self.import_kwh),
            "export_kwh": r(self.export_kwh),
            "night_kwh": r(self.night_kwh),
            "night_share": r(self.night_share),
            "mean_peak_kw": r(self.mean_peak_kw),
            "peak_days": self.peak_days,
            "peak_rank": self.peak_rank,
            "sustained_interruptions": self.sustained_interruptions,
            "interruption_minutes": r(self.interruption_minutes),
            "risk_events": dict(self.risk_events),
            "first_risk": None if self.first_risk_s is None else _ts(self.first_risk_s),
            "prosumer_meters": list(self.prosumer_meters),
        }


@dataclass(slots=True)
class CustomerTags:
    window: Window
    thresholds: CustomersConfig
    momentary_max_s: float
    customers: list[CustomerFigures]  # every customer, by customer_id
    # Customers with base load data, highest mean base load first.
    by_base_load: list[CustomerFigures]
    # The outage_sensitive customers, most sustained interruptions first.
    outage_sensitive: list[CustomerFigures]
    peak_cut: int = 0  # how many customers the peak_contributor rule takes
    # Meters in the data the topology does not list (their own customers, or the
    # customer_id tag of their meter_daily points).
    unknown_meters: list[str] = field(default_factory=list)

    def tagged(self, tag: str | None = None) -> list[CustomerFigures]:
        """Customers with any tag, or with `tag`."""
        return [c for c in self.customers if (tag in c.tags if tag else c.tags)]


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, digits)


def _ts(t_s: float) -> str:
    return format_ts(round(t_s * NS))


def _g(x: float) -> str:
    """A number for evidence text: up to 3 decimals, no trailing zeros."""
    text = f"{x:.3f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _pct(x: float) -> str:
    return _g(x * 100) + "%"


def _dedupe_daily(rows: Iterable[DailyFigures]) -> list[DailyFigures]:
    """One point per meter and day (a meter re-tagged has two series: the fuller wins)."""
    best: dict[tuple[str, str], DailyFigures] = {}
    for r in rows:
        key = (r.meter_id, r.day)
        seen = best.get(key)
        if seen is None or (r.intervals or 0) > (seen.intervals or 0):
            best[key] = r
    return list(best.values())


def tag_customers(
    inputs: CustomerInputs,
    topology: Mapping[str, MeterPlace],
    thresholds: CustomersConfig | None = None,
    *,
    momentary_max_s: float = 300.0,
) -> CustomerTags:
    """Every customer's figures and tags (see the module docstring for the rules)."""
    th = thresholds or CustomersConfig()
    daily = _dedupe_daily(inputs.daily)

    # Who is whose: the topology, then a meter_daily point's customer_id tag, then
    # the meter itself.
    owner: dict[str, str] = {m: customer_key(p) for m, p in topology.items()}
    unknown: set[str] = set()
    for r in daily:
        if r.meter_id not in owner:
            owner[r.meter_id] = r.customer_id or customer_key(MeterPlace(r.meter_id))
            unknown.add(r.meter_id)
    for e in inputs.risk_events:
        if e.meter_id not in owner:
            owner[e.meter_id] = customer_key(MeterPlace(e.meter_id))
            unknown.add(e.meter_id)

    meters_of: dict[str, list[str]] = defaultdict(list)
    for m, c in owner.items():
        meters_of[c].append(m)
    figs = {c: CustomerFigures(c, sorted(ms)) for c, ms in meters_of.items()}

    # -- daily figures: per customer and day, sums over its meters
    base: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    peak: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    days: dict[str, set[str]] = defaultdict(set)
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    seen: dict[str, set[str]] = defaultdict(set)
    for r in daily:
        c = owner[r.meter_id]
        days[c].add(r.day)
        if r.base_load_kw is not None:
            base[c][r.day] += r.base_load_kw
        if r.peak_demand_kw is not None:
            peak[c][r.day] += r.peak_demand_kw
        if r.energy_import_kwh is not None:
            sums[c]["import"] += r.energy_import_kwh
            seen[c].add("import")
            if r.night_share is not None:
                sums[c]["night"] += r.night_share * r.energy_import_kwh
                sums[c]["night_import"] += r.energy_import_kwh
                seen[c].add("night")
        if r.energy_export_kwh is not None:
            sums[c]["export"] += r.energy_export_kwh
            seen[c].add("export")
    for c, f in figs.items():
        f.days = len(days[c])
        if base[c]:
            f.base_load_days = len(base[c])
            f.mean_base_load_kw = sum(base[c].values()) / len(base[c])
        if peak[c]:
            f.peak_days = len(peak[c])
            f.mean_peak_kw = sum(peak[c].values()) / len(peak[c])
        if "import" in seen[c]:
            f.import_kwh = sums[c]["import"]
        if "export" in seen[c]:
            f.export_kwh = sums[c]["export"]
        if "night" in seen[c]:
            f.night_kwh = sums[c]["night"]
            f.night_import_kwh = sums[c]["night_import"]
            if f.night_import_kwh > 0:
                f.night_share = f.night_kwh / f.night_import_kwh

    # -- sustained interruptions, exactly as `report reliability` counts them: with
    # n = -1 its CEMIn list holds every customer with an interruption in the window.
    report = compute(
        pair_points(inputs.outage_points),
        topology,
        inputs.window,
        momentary_max_s=momentary_max_s,
        cemi_n=-1,
        observed_until_s=inputs.read_until_s,
    )
    for cc in report.cemi:
        f = figs[cc.customer_id]
        f.sustained_interruptions = cc.sustained
        f.interruption_minutes = cc.minutes

    # -- risk events: one per event_id (at-least-once delivery), earliest copy
    first_copy: dict[str, RiskEvent] = {}
    for e in inputs.risk_events:
        if e.event_id not in first_copy or e.time_s < first_copy[e.event_id].time_s:
            first_copy[e.event_id] = e
    for e in sorted(first_copy.values(), key=lambda e: (e.time_s, e.meter_id)):
        f = figs[owner[e.meter_id]]
        f.risk_events[e.type] = f.risk_events.get(e.type, 0) + 1
        if f.first_risk_s is None:
            f.first_risk_s, f.first_risk_meter = e.time_s, e.meter_id

    for m, p in topology.items():
        if p.prosumer:
            figs[owner[m]].prosumer_meters.append(m)
    for f in figs.values():
        f.prosumer_meters.sort()

    # -- the tags
    for f in figs.values():
        _tag_one(f, th, momentary_max_s)
    ranked = sorted(
        (f for f in figs.values() if f.mean_peak_kw is not None),
        key=lambda f: (-(f.mean_peak_kw or 0.0), f.customer_id),
    )
    cut = max(1, math.ceil(th.peak_top_share * len(ranked) - _TOL)) if ranked else 0
    for i, f in enumerate(ranked):
        f.peak_rank = i + 1
    if ranked:
        cut_kw = ranked[min(cut, len(ranked)) - 1].mean_peak_kw or 0.0
        for f in ranked:
            kw = f.mean_peak_kw or 0.0
            if kw > 0 and kw >= cut_kw - _TOL:
                f.tags["peak_contributor"] = (
                    f"mean daily peak {_g(kw)} kW over {f.peak_days} day(s), rank "
                    f"{f.peak_rank} of {len(ranked)}; the top {_pct(th.peak_top_share)} "
                    f"(customers.peak_top_share) is {cut} customer(s), down to {_g(cut_kw)} kW"
                )

    customers = sorted(figs.values(), key=lambda f: f.customer_id)
    for f in customers:
        f.tags = {t: f.tags[t] for t in TAGS if t in f.tags}
    return CustomerTags(
        window=inputs.window,
        thresholds=th,
        momentary_max_s=momentary_max_s,
        customers=customers,
        by_base_load=sorted(
            (f for f in customers if f.mean_base_load_kw is not None),
            key=lambda f: (-(f.mean_base_load_kw or 0.0), f.customer_id),
        ),
        outage_sensitive=sorted(
            (f for f in customers if "outage_sensitive" in f.tags),
            key=lambda f: (-f.sustained_interruptions, -f.interruption_minutes, f.customer_id),
        ),
        peak_cut=cut,
        unknown_meters=sorted(unknown),
    )


def _tag_one(f: CustomerFigures, th: CustomersConfig, momentary_max_s: float) -> None:
    if f.mean_base_load_kw is not None and f.mean_base_load_kw >= th.high_standby_kw - _TOL:
        f.tags["high_standby"] = (
            f"mean daily base load {_g(f.mean_base_load_kw)} kW over {f.base_load_days} "
            f"day(s) >= {_g(th.high_standby_kw)} kW (customers.high_standby_kw)"
        )
    if f.night_share is not None and f.night_share >= th.night_heavy_share - _TOL:
        f.tags["night_heavy"] = (
            f"night energy {_g(f.night_kwh or 0.0)} kWh of {_g(f.night_import_kwh or 0.0)} kWh "
            f"imported = {_pct(f.night_share)} >= {_pct(th.night_heavy_share)} "
            "(customers.night_heavy_share)"
        )
    n = th.outage_sensitive_min
    if f.sustained_interruptions > n:
        f.tags["outage_sensitive"] = (
            f"{f.sustained_interruptions} sustained interruptions "
            f"({_g(f.interruption_minutes)} min; sustained: {_g(momentary_max_s)} s or longer) "
            f"> {n} (customers.outage_sensitive_min, as CEMI{n} counts them)"
        )
    if f.risk_events and f.first_risk_s is not None:
        counts = ", ".join(f"{t} {f.risk_events[t]}" for t in RISK_TYPES if t in f.risk_events)
        f.tags["tamper_risk"] = (
            f"raised events: {counts}; first {_ts(f.first_risk_s)} (meter {f.first_risk_meter})"
        )
    exported = f.export_kwh or 0.0
    reasons = []
    if f.prosumer_meters:
        reasons.append(f"topology prosumer: meter {', '.join(f.prosumer_meters)}")
    if exported > 0 and exported >= th.prosumer_min_export_kwh - _TOL:
        reasons.append(
            f"exported {_g(exported)} kWh >= {_g(th.prosumer_min_export_kwh)} kWh "
            "(customers.prosumer_min_export_kwh)"
        )
    if reasons:
        f.tags["prosumer"] = "; ".join(reasons)
