"""Simulated sites are as lumpy as real ones: a household's standby, its appliances as
discrete runs, EVs and electric heating for hours, days away; businesses by opening hours.

Measured the way the gateway sees a meter: 15-minute interval demands from the import
register (``MeterModel.advance``), not the model's internals, except to pick meters of a
kind (an EV, electric heating, a business's opening hours).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from meter_gateway.simulators.loads import Business, Household
from meter_gateway.simulators.meter import Effect, MeterModel
from meter_gateway.simulators.profiles import DAY_S, Variation, temperature_c

T0 = datetime(2026, 11, 23, tzinfo=UTC).timestamp()  # a Monday, 00:00 UTC
D0 = int(T0 // DAY_S)
SEED = 2027
DEFAULT = Variation()


def model(i: int, profile: str = "household", **kwargs: object) -> MeterModel:
    return MeterModel(f"m-{i:06d}", seed=SEED, profile=profile, start=T0, **kwargs)  # type: ignore[arg-type]


def days_kw(m: MeterModel, days: int, start: float = T0) -> list[list[float]]:
    """Each day's 96 interval demands (kW), from the import register's deltas."""
    if m.t < start:
        m.advance(start)
    out = []
    prev = m.energy_import_kwh
    for d in range(days):
        day = []
        for k in range(1, 97):
            m.advance(start + d * DAY_S + k * 900)
            now = m.energy_import_kwh
            day.append((now - prev) * 4.0)
            prev = now
        out.append(day)
    return out


def base_kw(day: list[float]) -> float:
    """The gateway's base load: the mean of the lowest 10 % of the day's intervals."""
    return statistics.fmean(sorted(day)[:10])


def households(n: int) -> list[MeterModel]:
    return [model(i) for i in range(1, n + 1)]


@pytest.fixture(scope="module")
def two_weeks() -> list[tuple[MeterModel, list[list[float]]]]:
    """Sixty households, two weeks of 15-minute intervals each."""
    return [(m, days_kw(m, 14)) for m in households(60)]


def plain(m: MeterModel) -> bool:
    """No EV, no electric heating, no unusual standby: what most households are."""
    site = m.site
    assert isinstance(site, Household)
    return not site.has_ev(DEFAULT) and site.heating(DEFAULT)[0] == "none" and not site.high_standby


# -- households -------------------------------------------------------------------------------


def test_appliance_sized_intervals_on_most_days(two_weeks) -> None:
    # Kettles, hobs, ovens, washing machines, dryers: 2 kW and more in some interval of most
    # days of most households (a 15-minute average, so a kettle alone does not reach it).
    shares = [sum(max(day) >= 2.0 for day in days) / len(days) for _, days in two_weeks]
    assert statistics.median(shares) >= 0.6, shares
    assert sum(s >= 0.5 for s in shares) >= 0.7 * len(shares), shares
    # ... and not all day: the median interval of a household stays well under 1 kW.
    medians = [statistics.median(x for day in days for x in day) for _, days in two_weeks]
    assert statistics.median(medians) < 0.6


def test_base_load_is_a_households_standby(two_weeks) -> None:
    bases = {m.meter_id: [base_kw(day) for day in days] for m, days in two_weeks}
    for m, _ in two_weeks:
        if plain(m):
            assert 0.05 <= statistics.median(bases[m.meter_id]) <= 0.3, (m.meter_id, bases)
    # A few have a genuinely high one (an aquarium, a server, a pond pump...): above 300 W.
    high = [m for m, _ in two_weeks if m.site.high_standby]  # type: ignore[attr-defined]
    assert 1 <= len(high) <= 8
    assert all(min(bases[m.meter_id]) > 0.25 for m in high)
    # Most households: 50-300 W (the rest heat electrically or have a high standby).
    inside = sum(0.05 <= statistics.median(b) <= 0.3 for b in bases.values())
    assert inside >= 0.75 * len(bases)


def test_appliances_are_discrete_runs_of_their_size() -> None:
    m = model(3)
    site = m.site
    assert isinstance(site, Household)
    runs = [r for d in range(D0, D0 + 28) for r in m.runs(d)]
    kinds = {r.what for r in runs}
    assert {"kettle", "washing_machine"} <= kinds
    for r in runs:
        minutes = r.end - r.start
        assert minutes >= 1
        if r.what == "kettle":
            assert 2000 <= r.watts <= 3000
            assert minutes <= 4
        elif r.what == "ev":
            assert r.watts <= 11000
    # A washing machine cycle: about 2 kW while heating, far less while turning.
    wash = [r for r in runs if r.what == "washing_machine"]
    assert max(r.watts for r in wash) >= 1900
    assert min(r.watts for r in wash) <= 300


def test_ev_charging_and_electric_heating_run_for_hours() -> None:
    var = Variation(ev_share=1.0)
    evs = [m for m in households(40) if m.site.ev_w < 11000]  # type: ignore[attr-defined]
    m = evs[0]
    m.add_effect(Effect(T0, variation=var))
    series = [x for day in days_kw(m, 14) for x in day]
    ev_kw = m.site.ev_w / 1000  # type: ignore[attr-defined]
    # Charging: runs of at least two hours at the charger's power, on most evenings.
    runs, n = [], 0
    for x in series:
        if x >= 0.9 * ev_kw:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    long = [r for r in runs if r >= 7]  # 7 whole intervals and the partial ones around them
    assert len(long) >= 6, runs
    assert max(runs) <= 16  # at most 4 hours
    # In the default fleet some households have an EV (about 8 %).
    assert 1 <= sum(m.site.has_ev(DEFAULT) for m in households(100)) <= 20  # type: ignore[attr-defined]

    # Electric heating follows the weather: several kW for hours on a cold day, little on
    # a mild one.
    cold = min(range(D0, D0 + 60), key=temperature_c)
    mild = max(range(D0 + 150, D0 + 200), key=temperature_c)
    assert temperature_c(cold) < 2 < 15 < temperature_c(mild)
    heated = Variation(heating_share=1.0, appliances=0.0, ev_share=0.0)
    kinds: dict[str, tuple[float, float, int]] = {}
    for i in range(1, 30):
        m = model(i)
        kind, watts = m.site.heating(heated)
        if kind in kinds or kind == "none":
            continue
        m.add_effect(Effect(T0, variation=heated))
        (cold_day,) = days_kw(m, 1, start=cold * DAY_S)
        (mild_day,) = days_kw(m, 1, start=mild * DAY_S)
        hours = sum(x >= min(2.0, 0.4 * watts / 1000) for x in cold_day) / 4
        kinds[kind] = (sum(cold_day) / 4, sum(mild_day) / 4, hours)
    assert set(kinds) == {"direct", "storage", "heat_pump"}
    for kind, (cold_kwh, mild_kwh, hours) in kinds.items():
        assert cold_kwh > 3 * mild_kwh, (kind, kinds)
        assert hours >= 3, (kind, kinds)
    assert 15 <= sum(m.site.heating(DEFAULT)[0] != "none" for m in households(300)) <= 50


def test_away_from_home_shows_the_base_load_only() -> None:
    # Find a plain household away for a while in the next months.
    for i in range(1, 200):
        m = model(i)
        site = m.site
        assert isinstance(site, Household)
        if not plain(m):
            continue
        away = [d for d in range(D0, D0 + 150) if site.away(d, DEFAULT)]
        if len(away) >= 3:
            break
    else:
        pytest.fail("no household away")
    day = away[1]  # a whole day away
    (kw,) = days_kw(m, 1, start=day * DAY_S)
    assert m.runs(day) == ()
    standby = min(site.static) / 1000
    most = max(site.static) / 1000
    assert all(standby - 0.001 <= x <= most + 0.01 for x in kw), kw  # standby and fridges
    assert 0.05 <= base_kw(kw) <= 0.3
    # A usual day of the same household: far more than that.
    home = next(d for d in range(day - 30, day) if not site.away(d, DEFAULT))
    (usual,) = days_kw(model(int(m.meter_id[2:])), 1, start=home * DAY_S)
    assert sum(usual) > 2 * sum(kw)
    assert max(usual) > 5 * max(kw)


def test_annual_use_varies_per_household() -> None:
    # A day a fortnight over a year, scaled: 1,500-6,000 kWh for most plain households.
    year = []
    for m in households(40):
        if not plain(m):
            continue
        days = range(D0, D0 + 364, 14)
        kwh = sum(sum(m._day(d, False, DEFAULT).load) / 60000 for d in days)
        year.append(kwh * 364 / len(days))
    assert len(year) >= 25
    inside = sum(1500 <= y <= 6000 for y in year)
    assert inside >= 0.85 * len(year), sorted(year)
    assert max(year) > 1.8 * min(year)  # varied, from one person to a family


# -- businesses -------------------------------------------------------------------------------


def test_businesses_follow_their_opening_hours() -> None:
    seen: dict[str, MeterModel] = {}
    for i in range(1, 80):
        m = model(i, "commercial")
        site = m.site
        assert isinstance(site, Business)
        if site.heating(DEFAULT)[0] == "none":
            seen.setdefault(site.kind, m)
    assert set(seen) == {"office", "shop", "bakery", "weekend"}
    for kind, m in seen.items():
        site = m.site
        assert isinstance(site, Business)
        week = days_kw(m, 7)  # Monday .. Sunday
        for d, day in enumerate(week):
            hours = site.opening(D0 + d, False)
            if hours is None:
                # Closed all day: its standby (and cold rooms cycling), nothing more.
                assert max(day) < 2.0 * (site.closed_w + site.cold_w) / 1000, (kind, d)
                continue
            o, c = hours
            inside = [x for k, x in enumerate(day) if o + 15 <= k * 15 and k * 15 + 15 <= c]
            night = day[: max(1, (o - 75) // 15)] if o >= 120 else day[-4:]
            assert statistics.fmean(inside) > 2.5 * statistics.fmean(night), (kind, d)
        base = statistics.fmean(base_kw(day) for day in week)
        assert base == pytest.approx((site.closed_w + 0.5 * site.cold_w) / 1000, rel=0.5)
    # Offices and shops are closed on Sundays, weekend businesses open.
    assert seen["office"].site.opening(D0 + 6, False) is None  # type: ignore[attr-defined]
    assert seen["shop"].site.opening(D0 + 6, False) is None  # type: ignore[attr-defined]
    assert seen["weekend"].site.opening(D0 + 6, False) is not None  # type: ignore[attr-defined]
    # A public holiday: Sunday hours.
    assert seen["office"].site.opening(D0 + 1, True) is None  # type: ignore[attr-defined]


def test_businesses_are_steadier_and_bigger_than_households(two_weeks) -> None:
    def spread(days: list[list[float]]) -> float:
        kwh = [sum(day) / 4 for day in days]
        return statistics.pstdev(kwh) / statistics.fmean(kwh)

    offices = []
    for i in range(1, 60):
        m = model(i, "commercial")
        if m.site.kind == "office" and m.site.heating(DEFAULT)[0] == "none":  # type: ignore[attr-defined]
            offices.append(m)
    weekdays = [[day for d, day in enumerate(days_kw(m, 14)) if d % 7 < 5] for m in offices[:4]]
    homes = [[day for d, day in enumerate(days) if d % 7 < 5] for m, days in two_weeks if plain(m)]
    assert max(spread(w) for w in weekdays) < statistics.median(spread(h) for h in homes)
    assert min(sum(map(sum, w)) for w in weekdays) > 3 * max(sum(map(sum, h)) for h in homes)


# -- the faults still stand out ---------------------------------------------------------------


def test_consumption_faults_stand_out_from_the_lumpy_load() -> None:
    """Two weeks of normal life, then a fault: a spike several times the household's
    busiest interval, sustained high several times its normal for hours, sustained low a
    fifth of it for days."""
    for i in range(1, 40):
        m = model(i)
        if plain(m):
            break
    day15 = T0 + 14 * DAY_S
    history = [x for day in days_kw(model(i), 14) for x in day]
    busiest = max(history)

    spiked = model(i)
    spiked.add_effect(Effect(day15 + 19 * 3600 + 600, day15 + 19 * 3600 + 2400, load_factor=4.0))
    (day,) = days_kw(spiked, 1, start=day15)
    assert max(day) > 2.5 * busiest, (max(day), busiest)  # 19:15-19:30: wholly inside
    assert sorted(day)[-4] < busiest + 1.0  # short: three intervals at most

    high = model(i)
    high.add_effect(Effect(day15 + 3600, day15 + 7 * 3600, load_factor=2.0))
    (day,) = days_kw(high, 1, start=day15)
    usual = [statistics.fmean(d[4:28]) for d in (history[k : k + 96] for k in range(0, 1344, 96))]
    assert statistics.fmean(day[4:28]) > 4 * max(usual)  # 01:00-07:00 (what it does at night)
    assert min(day[4:28]) > busiest / 2

    low = model(i)
    low.add_effect(Effect(day15, day15 + 3 * DAY_S, load_factor=0.25))
    kw = [x for d in days_kw(low, 3, start=day15) for x in d]
    normal = [x for d in days_kw(model(i), 3, start=day15) for x in d]
    assert sum(kw) == pytest.approx(0.25 * sum(normal), rel=1e-6)


# -- determinism ------------------------------------------------------------------------------


def test_a_day_is_the_same_however_it_is_asked_for() -> None:
    a, b = model(5), model(5)
    # b looks at later days first, then at the day a lives.
    later = [b.day_plan(d) for d in (D0 + 9, D0 + 3, D0 + 1)]
    assert [a.day_plan(d) for d in (D0 + 9, D0 + 3, D0 + 1)] == later
    assert days_kw(a, 2) == days_kw(b, 2)


def test_the_same_values_in_another_process() -> None:
    code = (
        "from meter_gateway.simulators.meter import MeterModel\n"
        f"m = MeterModel('m-000007', seed={SEED}, prosumer=True, start={T0})\n"
        "out = []\n"
        "for k in range(1, 97 * 3):\n"
        f"    m.advance({T0} + k * 900); out.append(m.reading())\n"
        "print(repr(out))\n"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    m = MeterModel("m-000007", seed=SEED, prosumer=True, start=T0)
    here = []
    for k in range(1, 97 * 3):
        m.advance(T0 + k * 900)
        here.append(m.reading())
    assert other.stdout.strip() == repr(here)
