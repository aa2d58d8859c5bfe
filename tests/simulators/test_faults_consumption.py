"""Consumption faults, holidays and real-life load variation: what the registers show, the
truth log, the four-week scenario, determinism. No broker: the fleet is run directly."""

from __future__ import annotations

import itertools
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from meter_gateway.simulators.faults import (
    ConsumptionSpike,
    FaultSpec,
    Holiday,
    LoadVariation,
    SustainedHigh,
    SustainedLow,
    Theft,
    ZeroUse,
    plan_faults,
)
from meter_gateway.simulators.fleet import Fleet
from meter_gateway.simulators.meter import STEP_S, Effect, MeterModel
from meter_gateway.simulators.profiles import Variation
from meter_gateway.simulators.scenario import (
    Scenario,
    ScenarioError,
    load_scenario,
    parse_scenario,
)
from tests.simulators.conftest import SMALL_FLEET

FOUR_WEEKS = Path(__file__).parents[2] / "simulators" / "scenarios" / "four_weeks.yaml"
DAY = 86_400
HOUR = 3600
T0 = 1795651200.0  # 2026-11-26T00:00:00Z (SMALL_FLEET's start), a Thursday

Readings = dict[str, list[dict[str, Any]]]


def run(
    faults: list[Any] | tuple[()] = (), **settings: Any
) -> tuple[Readings, list[dict[str, Any]]]:
    """Every reading per meter (in order) and the truth log of a small fleet."""
    fleet = Fleet(Scenario(faults=list(faults)), **{**SMALL_FLEET, **settings})
    out: Readings = {}
    truth: list[dict[str, Any]] = []
    for step in fleet.steps():
        truth += step.truth
        for msg in step.messages:
            if msg.kind == "reading":
                r = orjson.loads(msg.payload)
                out.setdefault(r["meter_id"], []).append(r)
    return out, truth


def deltas(rs: list[dict[str, Any]], key: str = "energy_import_kwh") -> list[float]:
    """Interval deltas of a register, reading to reading."""
    return [b[key] - a[key] for a, b in itertools.pairwise(rs)]


def window(rs: list[dict[str, Any]], t0: float, t1: float) -> list[dict[str, Any]]:
    """The readings with t0 <= ts <= t1 (ts as epoch seconds; the fleet's clocks are exact)."""
    return [
        r
        for r in rs
        if t0 <= datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).timestamp() <= t1
    ]


# -- the faults ------------------------------------------------------------------------------


def reference_kw(meter_id: str) -> float:
    """The meter's reference peak (what a load factor above 1 adds multiples of), kW."""
    return Fleet(Scenario(), **SMALL_FLEET).meters[meter_id].reference_w() / 1000.0


def test_sustained_high_adds_an_extra_load_to_every_interval_for_hours() -> None:
    spec = SustainedHigh(meters=["m-000001"], at="1h")
    got, truth = run([spec], duration="9h")
    base, _ = run(duration="9h")
    inside = deltas(window(got["m-000001"], T0 + HOUR, T0 + 7 * HOUR))
    normal = deltas(window(base["m-000001"], T0 + HOUR, T0 + 7 * HOUR))
    assert len(inside) == 24  # six hours of 15-minute intervals
    extra_kw = reference_kw("m-000001")  # (2 - 1) x its usual high
    assert 2.0 < extra_kw < 7.0  # heaters left on: a few kW, whatever the hour
    for g, b in zip(inside, normal, strict=True):
        assert g == pytest.approx(b + extra_kw / 4, abs=0.002)  # registers: 1 Wh
    after = deltas(window(got["m-000001"], T0 + 7 * HOUR, T0 + 9 * HOUR))
    normal_after = deltas(window(base["m-000001"], T0 + 7 * HOUR, T0 + 9 * HOUR))
    assert after == pytest.approx(normal_after, abs=0.0015)  # rounding of both ends
    assert got["m-000002"] == base["m-000002"]  # the other meters are left alone
    (rec,) = truth
    assert (rec["type"], rec["meters"], rec["params"]) == (
        "sustained_high",
        ["m-000001"],
        {"factor": 2.0},
    )
    assert rec["end_s"] - rec["start_s"] == 6 * HOUR


def test_sustained_low_keeps_a_fifth_of_the_consumption_for_days() -> None:
    got, truth = run([SustainedLow(meters=["m-000003"], at="2h")], duration="4d")
    base, _ = run(duration="4d")
    inside = deltas(window(got["m-000003"], T0 + 2 * HOUR, T0 + 3 * DAY + 2 * HOUR))
    normal = deltas(window(base["m-000003"], T0 + 2 * HOUR, T0 + 3 * DAY + 2 * HOUR))
    assert len(inside) == 3 * 96
    assert sum(inside) == pytest.approx(0.2 * sum(normal), rel=1e-3)
    for g, b in zip(inside, normal, strict=True):
        assert g == pytest.approx(0.2 * b, abs=0.002)
    (rec,) = truth
    assert rec["type"] == "sustained_low"
    assert rec["params"] == {"factor": 0.2}
    assert rec["end_s"] - rec["start_s"] == 3 * DAY


def test_zero_use_stops_the_registers_while_readings_keep_coming() -> None:
    # A prosumer at midday: neither import nor export moves, the meter is powered.
    spec = ZeroUse(meters=["m-000002"], at="8h")
    got, truth = run([spec], duration="1d", prosumer_share=1.0)
    rs = window(got["m-000002"], T0 + 8 * HOUR, T0 + 20 * HOUR)
    assert len(rs) == 49  # every reading of the 12 hours arrived
    assert {r["energy_import_kwh"] for r in rs} == {rs[0]["energy_import_kwh"]}
    assert {r["energy_export_kwh"] for r in rs} == {rs[0]["energy_export_kwh"]}
    assert all(r["power_w"] == 0.0 for r in rs[:-1])
    assert all(v > 200 for r in rs for v in r["voltage_v"])  # powered, not an outage
    later = window(got["m-000002"], T0 + 20 * HOUR, T0 + 22 * HOUR)
    assert later[-1]["energy_import_kwh"] > later[0]["energy_import_kwh"]  # back to normal
    (rec,) = truth
    assert (rec["type"], rec["params"], rec["end_s"] - rec["start_s"]) == (
        "zero_use",
        {},
        12 * HOUR,
    )


def test_a_consumption_spike_by_default_fills_a_whole_interval_with_its_extra_load() -> None:
    # Started off the interval grid: 30 minutes always cover one whole 15-minute interval.
    spec = ConsumptionSpike(meters=["m-000004"], at="1h07m")
    got, truth = run([spec], duration="3h")
    base, _ = run(duration="3h")
    g = deltas(window(got["m-000004"], T0 + HOUR, T0 + 2 * HOUR))
    b = deltas(window(base["m-000004"], T0 + HOUR, T0 + 2 * HOUR))
    extra_kwh = 3 * reference_kw("m-000004") / 4  # (4 - 1) x its usual high, 15 minutes
    assert extra_kwh > 1.5  # more than 6 kW on top of the night's load
    assert g[1] == pytest.approx(b[1] + extra_kwh, abs=0.002)  # 01:15-01:30, wholly inside
    assert b[0] < g[0] < b[0] + extra_kwh  # 01:00-01:15: partly
    (rec,) = truth
    assert rec["params"] == {"factor": 4.0}
    assert rec["end_s"] - rec["start_s"] == 1800


def test_theft_is_still_the_same_physics_with_its_event() -> None:
    got, truth = run([Theft(meters=["m-000001"], at="1h", factor=0.2)], duration="3h")
    low, _ = run([SustainedLow(meters=["m-000001"], at="1h", duration=None)], duration="3h")
    assert got["m-000001"] == low["m-000001"]
    assert truth[0]["type"] == "theft"


def test_prosumer_filter_and_rate_window() -> None:
    specs = [
        ZeroUse(all=True, prosumer=False, rate_per_day=2, rate_from="2d", rate_until="3d"),
        SustainedHigh(all=True, prosumer=True, at="1h"),
    ]
    fleet = Fleet(meters=40, seed=3, start="2026-11-26T00:00:00Z", duration="4d",
                  prosumer_share=0.5)  # fmt: skip
    pv = {m for m, site in fleet.topology.sites.items() if site.prosumer}
    assert 0 < len(pv) < 40
    planned = list(plan_faults(specs, fleet.topology, {}, seed=3, start=fleet.start, end=fleet.end))
    zero = [f for f in planned if f.type == "zero_use"]
    assert len(zero) > 10
    assert all(fleet.start + 2 * DAY <= f.start <= fleet.start + 3 * DAY for f in zero)
    assert not {m for f in zero for m in f.meters} & pv
    (high,) = [f for f in planned if f.type == "sustained_high"]
    assert set(high.meters) == pv


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ({"type": "sustained_high", "all": True, "at": 0, "factor": 0.5}, "faults[0].factor"),
        ({"type": "sustained_low", "all": True, "at": 0, "factor": 1.2}, "faults[0].factor"),
        ({"type": "zero_use", "all": True, "at": 0, "factor": 0}, "faults[0].factor: unknown key"),
        ({"type": "load_variation", "all": True, "at": 0, "daily": 2}, "faults[0].daily"),
        ({"type": "holiday", "all": True, "at": 0, "prosumer": "x"}, "faults[0].prosumer"),
        (
            {"type": "zero_use", "all": True, "at": 0, "rate_from": "1d"},
            "faults[0]: `rate_from` and `rate_until` go with `rate_per_day`",
        ),
    ],
)
def test_mistakes_in_the_new_types_name_the_key_path(fault: dict[str, Any], expected: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario({"faults": [fault]}, "s.yaml")
    assert any(expected in e for e in info.value.errors), info.value.errors


# -- real life: holidays and load variation --------------------------------------------------


def _day_kwh(model: MeterModel, day_start: float) -> float:
    model.advance(day_start)
    before = model.energy_import_kwh
    model.advance(day_start + DAY)
    return model.energy_import_kwh - before


def test_a_holiday_is_lived_as_a_sunday() -> None:
    tuesday = T0 + 5 * DAY  # 2026-12-01
    day = int(tuesday // DAY)
    # Households: at home as on a Sunday (up later, another day's appliances).
    plain = MeterModel("m-000001", seed=5, start=tuesday)
    holiday = MeterModel("m-000001", seed=5, start=tuesday)
    holiday.add_effect(Effect(tuesday, tuesday + DAY, holiday=True))
    assert [plain.power_w(tuesday + h * HOUR + 60) for h in range(24)] != [
        holiday.power_w(tuesday + h * HOUR + 60) for h in range(24)
    ]
    # Businesses keep their Sunday hours: an office or a shop stays closed.
    for i in range(1, 40):
        m = MeterModel(f"m-{i:06d}", seed=5, profile="commercial", start=tuesday)
        if m.site.kind in ("office", "shop"):  # type: ignore[attr-defined]
            break
    closed = MeterModel(m.meter_id, seed=5, profile="commercial", start=tuesday)
    closed.add_effect(Effect(tuesday, tuesday + DAY, holiday=True))
    assert m.site.opening(day, True) is None  # type: ignore[attr-defined]
    assert _day_kwh(closed, tuesday) < 0.5 * _day_kwh(m, tuesday)
    # Through a scenario: recorded in the truth log, expected to raise nothing.
    _, truth = run([Holiday(all=True, at="2026-11-26T00:00:00Z")], duration="1h")
    assert truth[0]["type"] == "holiday"
    assert truth[0]["end_s"] - truth[0]["start_s"] == DAY


def test_load_variation_changes_how_sites_live_and_keeps_registers_exact() -> None:
    var = Variation(ev_share=1.0, heating_share=1.0)
    for profile, prosumer in (("household", False), ("household", True), ("commercial", False)):
        m = MeterModel("m-000009", seed=4, profile=profile, prosumer=prosumer, start=T0)  # type: ignore[arg-type]
        m.add_effect(Effect(T0, variation=var))
        m.add_effect(Effect(T0 + 30 * HOUR, T0 + 33 * HOUR, load_factor=4.0))
        imp0, exp0 = m.energy_import_kwh, m.energy_export_kwh
        imp = exp = 0.0
        for k in range(int(3 * DAY / STEP_S)):
            e = m.power_w(T0 + k * STEP_S) * STEP_S / 3.6e6
            imp, exp = (imp + e, exp) if e >= 0 else (imp, exp - e)
        m.advance(T0 + 3 * DAY)
        assert m.energy_import_kwh - imp0 == pytest.approx(imp, rel=1e-9)
        assert m.energy_export_kwh - exp0 == pytest.approx(exp, rel=1e-9, abs=1e-9)
    # Households: the same weekday a week apart differs (appliances, occupancy, level).
    m = MeterModel("m-000010", seed=4, start=T0)
    days = [_day_kwh(m, T0 + d * 7 * DAY) for d in range(7)]
    assert max(days) / min(days) > 1.15
    # Without appliances, EV, heating or trips: standby, fridges and small loads only.
    quiet = MeterModel("m-000010", seed=4, start=T0)
    calm = Variation(appliances=0.0, ev_share=0.0, heating_share=0.0, away=0.0)
    quiet.add_effect(Effect(T0, variation=calm))
    assert quiet.runs(int(T0 // DAY)) == ()
    assert _day_kwh(quiet, T0) < 0.8 * _day_kwh(MeterModel("m-000010", seed=4, start=T0), T0)
    # A site with an EV and heating under one variation has none under another.
    assert quiet.reference_w(calm) < quiet.reference_w(var)


def test_same_seed_same_bytes_with_variation_and_consumption_faults() -> None:
    faults: list[FaultSpec] = [
        LoadVariation(all=True, at=0, ev_share=0.5),
        Holiday(all=True, at="1d"),
        SustainedHigh(all=True, rate_per_day=0.5, duration="3h"),
        ZeroUse(all=True, rate_per_day=0.5, duration="7h"),
        ConsumptionSpike(all=True, rate_per_day=1),
    ]

    def wire(seed: int) -> list[tuple[float, str, bytes]]:
        fleet = Fleet(Scenario(faults=faults), **{**SMALL_FLEET, "duration": "2d", "seed": seed,
                                                  "prosumer_share": 0.5})  # fmt: skip
        return [(m.t, m.topic, m.payload) for s in fleet.steps() for m in s.messages]

    a, b = wire(11), wire(11)
    assert len(a) > 700
    assert a == b
    assert wire(12) != a


# -- the four-week scenario ------------------------------------------------------------------


def test_the_four_week_scenario_puts_consumption_faults_in_the_last_week_only() -> None:
    scenario = load_scenario(FOUR_WEEKS)
    assert scenario.fleet.meters == 2000
    assert scenario.fleet.duration == 28 * DAY
    fleet = Fleet(scenario)
    planned = list(
        plan_faults(
            list(scenario.faults),
            fleet.topology,
            scenario.groups,
            seed=scenario.fleet.seed,
            start=fleet.start,
            end=fleet.end,
        )
    )
    by_type: dict[str, list[Any]] = {}
    for f in planned:
        by_type.setdefault(f.type, []).append(f)
    assert fleet.end is not None
    pv = {m for m, site in fleet.topology.sites.items() if site.prosumer}
    for type_ in ("consumption_spike", "sustained_high", "sustained_low", "zero_use"):
        faults = by_type[type_]
        assert 20 <= len(faults) <= 45, (type_, len(faults))
        for f in faults:
            assert f.start >= fleet.start + 21 * DAY
            assert f.end is not None
            assert f.end <= fleet.end
            assert not set(f.meters) & pv
    assert all(f.start >= fleet.start + 21 * DAY for f in by_type["theft"])
    assert len(by_type["holiday"]) == 2
    assert math.isinf(by_type["load_variation"][0].end or math.inf)
    assert len(by_type["outage"]) > 50  # normal life goes on
