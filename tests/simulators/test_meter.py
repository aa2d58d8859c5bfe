"""The meter model: deterministic, physically consistent, faults change what they should."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from meter_gateway.simulators.meter import STEP_S, Effect, MeterModel, RegisterReset, rfc3339

T0 = datetime(2026, 11, 23, tzinfo=UTC).timestamp()  # a Monday, 00:00 UTC
DAY = 86_400


def _integral_kwh(model: MeterModel, t0: float, t1: float) -> tuple[float, float]:
    """Import and export energy from the model's power, summed step by step (independently
    of ``advance``): power is constant within a step and within effect boundaries."""
    imp = exp = 0.0
    t = t0
    while t < t1:
        nxt = min(t1, (math.floor(t / STEP_S) + 1) * STEP_S)
        e = model.power_w(t) * (nxt - t) / 3.6e6
        imp, exp = (imp + e, exp) if e >= 0 else (imp, exp - e)
        t = nxt
    return imp, exp


def test_same_seed_same_readings_and_other_seed_differs() -> None:
    def day(seed: int) -> list[dict[str, object]]:
        m = MeterModel("m-000001", seed=seed, prosumer=True, start=T0)
        out = []
        for k in range(1, 97):
            m.advance(T0 + k * 900)
            out.append(m.reading())
        return out

    assert day(5) == day(5)
    assert day(5) != day(6)


def test_values_do_not_depend_on_how_often_the_meter_is_polled() -> None:
    coarse = MeterModel("m-000002", seed=1, start=T0)
    fine = MeterModel("m-000002", seed=1, start=T0)
    coarse.advance(T0 + 3600)
    for k in range(1, 361):
        fine.advance(T0 + k * 10)
    assert fine.reading() == coarse.reading()
    assert math.isclose(fine.energy_import_kwh, coarse.energy_import_kwh, rel_tol=1e-12)


@pytest.mark.parametrize("profile", ["household", "commercial"])
@pytest.mark.parametrize("prosumer", [False, True])
def test_registers_integrate_power_exactly(profile: str, prosumer: bool) -> None:
    m = MeterModel("m-000003", seed=3, profile=profile, prosumer=prosumer, start=T0)  # type: ignore[arg-type]
    imp0, exp0 = m.energy_import_kwh, m.energy_export_kwh
    for k in range(1, 97):
        m.advance(T0 + k * 900 + 7.5)  # off the step grid on purpose
    imp, exp = _integral_kwh(
        MeterModel("m-000003", seed=3, profile=profile, prosumer=prosumer, start=T0),
        T0,
        T0 + 96 * 900 + 7.5,
    )  # type: ignore[arg-type]
    assert imp > 0
    assert m.energy_import_kwh - imp0 == pytest.approx(imp, rel=1e-9)
    assert m.energy_export_kwh - exp0 == pytest.approx(exp, rel=1e-9, abs=1e-12)
    assert (exp > 0) == prosumer  # only PV exports, and it does on a day with sun


def test_reading_has_the_canonical_shape() -> None:
    three = MeterModel("m-000004", seed=1, phases=3, start=T0 + 900).reading()
    assert list(three) == [
        "meter_id", "ts", "energy_import_kwh", "energy_export_kwh", "power_w",
        "voltage_v", "current_a", "power_factor", "frequency_hz",
    ]  # fmt: skip
    assert three["ts"] == "2026-11-23T00:15:00Z"
    assert len(three["voltage_v"]) == 3
    assert len(three["current_a"]) == 3
    single = MeterModel("m-000005", seed=1, phases=1, start=T0).reading()
    assert isinstance(single["voltage_v"], float)
    assert isinstance(single["current_a"], float)
    assert 0 < single["power_factor"] <= 1  # type: ignore[operator]
    assert 49.9 < single["frequency_hz"] < 50.1  # type: ignore[operator]


def test_voltages_stay_near_nominal_over_a_week() -> None:
    m = MeterModel("m-000006", seed=9, nominal_voltage_v=230.0, start=T0)
    volts = []
    for k in range(1, 7 * 96):
        m.advance(T0 + k * 900)
        volts += m.voltages_v()
    assert min(volts) > 230 * 0.95
    assert max(volts) < 230 * 1.05
    assert max(volts) - min(volts) > 2  # and they do vary


def test_weekday_evening_uses_more_than_night_and_weekend_differs() -> None:
    def hourly_kwh(start: float) -> list[float]:
        m = MeterModel("m-000007", seed=2, start=start)
        out = []
        for h in range(1, 25):
            before = m.energy_import_kwh
            m.advance(start + h * 3600)
            out.append(m.energy_import_kwh - before)
        return out

    weekday, saturday = hourly_kwh(T0), hourly_kwh(T0 + 5 * DAY)
    assert sum(weekday[18:21]) > 2 * sum(weekday[2:5])
    assert weekday != saturday


def test_pv_exports_by_day_not_at_night() -> None:
    m = MeterModel("m-000008", seed=4, prosumer=True, start=T0)
    m.advance(T0 + 5 * 3600)
    night_export = m.energy_export_kwh
    m.advance(T0 + 6 * 3600)
    assert m.energy_export_kwh == night_export
    m.advance(T0 + 16 * 3600)
    assert m.energy_export_kwh > night_export


def test_outage_stops_registers_and_zeroes_voltage() -> None:
    m = MeterModel("m-000009", seed=1, start=T0)
    m.add_effect(Effect(T0 + 3600, T0 + 7200, powered=False))
    m.advance(T0 + 3600)
    before = m.energy_import_kwh
    m.advance(T0 + 5400)
    assert m.energy_import_kwh == before
    assert not m.powered()
    r = m.reading()
    assert r["voltage_v"] == [0.0, 0.0, 0.0]
    assert r["power_w"] == 0.0
    m.advance(T0 + 7200)
    assert m.powered()
    assert m.reading()["power_w"] != 0.0


def test_phase_loss_zeroes_one_phase() -> None:
    m = MeterModel("m-000010", seed=1, phases=3, start=T0)
    m.add_effect(Effect(T0, T0 + 3600, dead_phases=frozenset({2})))
    m.advance(T0 + 60)
    r = m.reading()
    assert r["voltage_v"][1] == 0.0
    assert r["current_a"][1] == 0.0
    assert r["voltage_v"][0] > 200
    assert r["voltage_v"][2] > 200


def test_register_reset_and_clock_drift() -> None:
    m = MeterModel("m-000011", seed=1, start=T0)
    m.add_reset(RegisterReset(T0 + 900, import_kwh=0.0))
    m.add_effect(Effect(T0, clock_rate=60 / 3600))  # a minute fast per hour
    m.advance(T0 + 900)
    assert m.reading()["energy_import_kwh"] == 0.0
    m.advance(T0 + 3600)
    r = m.reading()
    assert 0 < r["energy_import_kwh"] < 5  # type: ignore[operator]
    assert r["ts"] == rfc3339(T0 + 3600 + 60)


def test_cannot_go_back_in_time_and_rejects_bad_phases() -> None:
    m = MeterModel("m-000012", seed=1, start=T0)
    with pytest.raises(ValueError, match="cannot go back in time"):
        m.advance(T0 - 1)
    with pytest.raises(ValueError, match="phases must be 1 or 3"):
        MeterModel("m-000013", seed=1, phases=2, start=T0)  # type: ignore[arg-type]


def test_rfc3339() -> None:
    assert rfc3339(T0) == "2026-11-23T00:00:00Z"
    assert rfc3339(T0 + 1.25) == "2026-11-23T00:00:01.250Z"
