"""Local-day arithmetic (DST days, +05:30, day_of) and the daily load characteristics:
a hand-computed day, 23- and 25-hour days, estimated and unknown intervals, the night
window, interpolated boundaries of an off-grid meter, negative energies, the fields."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from meter_gateway.gateway.vee.daily import DailyFigures, DaySample, daily_fields, daily_figures
from meter_gateway.gateway.vee.localday import (
    NS,
    day_bounds,
    day_grid,
    day_of,
    grid_with_wall,
    local_to_utc_ns,
    on_grid,
)

B = ZoneInfo("Europe/Berlin")
K = ZoneInfo("Asia/Kolkata")
IV = 900
H = 3600
NIGHT = {"night_start": time(22), "night_end": time(6)}


def at(d: date, hh: int = 0, mm: int = 0, ss: int = 0, fold: int = 0, tz: ZoneInfo = B) -> int:
    """UTC ns of local wall time `hh:mm:ss` on `d`."""
    naive = datetime(d.year, d.month, d.day) + timedelta(hours=hh, minutes=mm, seconds=ss)
    return int(naive.replace(tzinfo=tz, fold=fold).timestamp()) * NS


def day_samples(
    d: date,
    use: Callable[[int, int], float],
    exp_use: Callable[[int, int], float] | None = None,
    estimated: Callable[[int], bool] = lambda _t: False,
) -> list[DaySample]:
    """Samples at every boundary of local day `d` (both midnights): the import register
    grows by use(i, wall_s) in interval i starting at local wall-clock second wall_s."""
    grid, walls = grid_with_wall(d, B, IV)
    imp, exp = 5000.0, 100.0
    out = []
    for i, t in enumerate(grid):
        out.append(DaySample(t, imp, exp if exp_use else None, estimated(t)))
        if i < len(grid) - 1:
            imp += use(i, walls[i])
            if exp_use:
                exp += exp_use(i, walls[i])
    return out


def figures(d: date, samples: list[DaySample], **kw: object) -> DailyFigures:
    args: dict = {"interval_s": IV, **NIGHT, "base_load_share": 0.1, **kw}
    return daily_figures(d, B, samples, **args)


# --- localday ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "hours", "intervals"),
    [
        (date(2026, 6, 3), 24, 96),
        (date(2026, 3, 29), 23, 92),  # spring forward 02:00 -> 03:00
        (date(2026, 10, 25), 25, 100),  # fall back 03:00 -> 02:00
    ],
)
def test_berlin_day_grids(day: date, hours: int, intervals: int) -> None:
    start, end = day_bounds(day, B)
    assert (end - start) == hours * H * NS
    assert start == at(day)
    assert end == at(day + timedelta(days=1))
    grid = day_grid(day, B, IV)
    assert len(grid) == intervals + 1
    assert grid[0] == start
    assert grid[-1] == end
    # The grid continues in UTC across the change: every interval is 15 minutes.
    assert {b - a for a, b in pairwise(grid)} == {IV * NS}
    assert all(on_grid(t, B, IV) for t in grid)
    assert len(day_grid(day, B, 3600)) == hours + 1


def test_berlin_dst_wall_clock() -> None:
    spring = day_grid(date(2026, 3, 29), B, IV)
    walls = [datetime.fromtimestamp(t // NS, B).strftime("%H:%M") for t in spring]
    assert walls[7:10] == ["01:45", "03:00", "03:15"]
    assert "02:30" not in walls
    autumn = day_grid(date(2026, 10, 25), B, IV)
    walls = [datetime.fromtimestamp(t // NS, B).strftime("%H:%M%z") for t in autumn]
    assert walls[8:14] == [
        *("02:00+0200", "02:15+0200", "02:30+0200", "02:45+0200"),
        *("02:00+0100", "02:15+0100"),
    ]
    # Wall-clock seconds of the repeated hour repeat too.
    assert grid_with_wall(date(2026, 10, 25), B, IV)[1][8:14] == (
        7200,
        8100,
        9000,
        9900,
        7200,
        8100,
    )


def test_kolkata_hour_grid_lands_on_local_whole_hours() -> None:
    d = date(2026, 1, 5)
    grid = day_grid(d, K, 3600)
    assert len(grid) == 25
    assert [datetime.fromtimestamp(t // NS, K).strftime("%H:%M") for t in grid[:3]] == [
        "00:00",
        "01:00",
        "02:00",
    ]
    # Local whole hours are :30 in UTC: not UTC hour multiples.
    assert all(t // NS % 3600 == 1800 for t in grid)
    assert grid[0] == at(d, tz=K)
    assert on_grid(grid[5], K, 3600)
    assert not on_grid(grid[5] + 1800 * NS, K, 3600)
    assert on_grid(grid[5] + 1800 * NS, K, 1800)
    assert len(day_grid(d, K, IV)) == 97


def test_day_of_across_midnight() -> None:
    d = date(2026, 6, 3)
    assert day_of(at(d), B) == d
    assert day_of(at(d) - 1, B) == d - timedelta(days=1)  # 1 ns before local midnight
    assert day_of(at(d, 23, 59, 59), B) == d
    # 22:30 UTC is already the next day in Berlin (UTC+2) and in Kolkata (UTC+5:30).
    utc = int(datetime(2026, 6, 3, 22, 30, tzinfo=UTC).timestamp()) * NS
    assert day_of(utc, B) == date(2026, 6, 4)
    assert day_of(utc, K) == date(2026, 6, 4)
    assert day_of(utc - 4 * H * NS, B) == date(2026, 6, 3)
    # The repeated hour of the autumn night belongs to the 25th either way.
    assert day_of(at(date(2026, 10, 25), 2, 30, fold=1), B) == date(2026, 10, 25)


def test_on_grid_rejects_fractions_and_off_grid_seconds() -> None:
    t = at(date(2026, 6, 3), 10, 15)
    assert on_grid(t, B, IV)
    assert not on_grid(t + 1, B, IV)  # 1 ns off
    assert not on_grid(t + NS, B, IV)
    assert on_grid(t, B, 300)
    assert not on_grid(t, B, 1800)


def test_local_to_utc_skips_the_spring_forward_hour() -> None:
    spring = date(2026, 3, 29)
    assert local_to_utc_ns(spring, int(2.5 * H) * NS, B) is None
    assert local_to_utc_ns(spring, 3 * H * NS, B) == at(spring, 3)
    autumn = date(2026, 10, 25)
    first = local_to_utc_ns(autumn, int(2.5 * H) * NS, B, fold=0)
    second = local_to_utc_ns(autumn, int(2.5 * H) * NS, B, fold=1)
    assert first is not None
    assert second is not None
    assert second - first == H * NS
    assert local_to_utc_ns(autumn, 86_400 * NS, B) == at(autumn + timedelta(days=1))


# --- daily figures -----------------------------------------------------------------------


def test_hand_computed_normal_day() -> None:
    d = date(2026, 6, 3)
    # 0.1 kWh per 15 min, 0.6 in 18:00-18:15; export 0.05 per 15 min 10:00-14:00.
    samples = day_samples(
        d,
        lambda i, w: 0.6 if w == 18 * H else 0.1,
        lambda i, w: 0.05 if 10 * H <= w < 14 * H else 0.0,
    )
    # Samples beyond the day on both sides are ignored except as neighbours.
    samples = [
        DaySample(at(d) - 2 * H * NS, 1.0, 1.0, False),
        *samples,
        DaySample(at(d + timedelta(days=1)) + H * NS, 1e6, 1e6, False),
    ]
    fig = figures(d, samples)
    assert fig.day == d
    assert fig.start_ns == at(d)
    assert (fig.intervals, fig.intervals_actual, fig.intervals_estimated) == (96, 96, 0)
    assert fig.completeness == 1.0
    assert fig.energy_import_kwh == pytest.approx(95 * 0.1 + 0.6)  # 10.1
    assert fig.energy_export_kwh == pytest.approx(16 * 0.05)  # 0.8
    assert fig.peak_demand_kw == pytest.approx(2.4)  # 0.6 kWh in 15 min
    assert fig.peak_demand_ns == at(d, 18)
    assert fig.base_load_kw == pytest.approx(0.4)  # lowest ceil(9.6) = 10 of 0.1 kWh
    # Night 22:00-06:00: 24 + 8 intervals of 0.1.
    assert fig.night_share == pytest.approx(3.2 / 10.1)
    assert fig.load_factor == pytest.approx((10.1 / 24) / 2.4)

    fields = daily_fields(fig, B)
    assert fields == {
        "date": "2026-06-03",
        "energy_import_kwh": pytest.approx(10.1),
        "energy_export_kwh": pytest.approx(0.8),
        "peak_demand_kw": pytest.approx(2.4),
        "peak_demand_time": "2026-06-03T18:00:00+02:00",
        "base_load_kw": pytest.approx(0.4),
        "night_share": pytest.approx(3.2 / 10.1),
        "load_factor": pytest.approx((10.1 / 24) / 2.4),
        "completeness": 1.0,
        "intervals": 96,
        "intervals_actual": 96,
        "intervals_estimated": 0,
    }
    assert all(type(fields[k]) is int for k in ("intervals", "intervals_actual"))
    assert all(
        type(v) is float
        for k, v in fields.items()
        if k not in ("date", "peak_demand_time") and not k.startswith("intervals")
    )


def test_first_maximum_is_the_peak() -> None:
    d = date(2026, 6, 3)
    fig = figures(d, day_samples(d, lambda i, w: 0.5 if w in (9 * H, 20 * H) else 0.1))
    assert fig.peak_demand_ns == at(d, 9)
    assert fig.peak_demand_kw == pytest.approx(2.0)


def test_spring_forward_day_has_92_intervals() -> None:
    d = date(2026, 3, 29)
    samples = day_samples(d, lambda i, w: 0.5 if w == 18 * H + 45 * 60 else 0.1)
    fig = figures(d, samples)
    assert (fig.intervals, fig.intervals_actual) == (92, 92)
    assert fig.energy_import_kwh == pytest.approx(91 * 0.1 + 0.5)
    # Night 22:00-06:00 on a 23-hour day: 00:00-01:45 (8) + 03:00-05:45 (12) + 8.
    assert fig.night_share == pytest.approx(2.8 / 9.6)
    assert fig.load_factor == pytest.approx((9.6 / 23) / 2.0)
    assert daily_fields(fig, B)["peak_demand_time"] == "2026-03-29T18:45:00+02:00"
    assert daily_fields(fig, B)["intervals"] == 92


def test_fall_back_day_has_100_intervals_and_a_peak_in_the_repeated_hour() -> None:
    d = date(2026, 10, 25)
    second_0215 = at(d, 2, 15, fold=1)
    grid = day_grid(d, B, IV)
    peak_i = grid.index(second_0215)
    samples = day_samples(d, lambda i, w: 0.7 if i == peak_i else 0.1)
    fig = figures(d, samples, base_load_share=0.07)
    assert (fig.intervals, fig.intervals_actual, fig.completeness) == (100, 100, 1.0)
    assert fig.energy_import_kwh == pytest.approx(99 * 0.1 + 0.7)
    assert fig.peak_demand_ns == second_0215
    assert daily_fields(fig, B)["peak_demand_time"] == "2026-10-25T02:15:00+01:00"
    # Night 22:00-06:00: 00:00-06:00 is 7 real hours (28 intervals, the peak among them)
    # + 22:00-24:00 (8).
    assert fig.night_share == pytest.approx((35 * 0.1 + 0.7) / 10.6)
    assert fig.load_factor == pytest.approx((10.6 / 25) / 2.8)
    # 0.07 * 100 is 7.000000000000001 in floating point: still the 7 lowest.
    assert fig.base_load_kw == pytest.approx(0.4)


def test_base_load_takes_the_lowest_share() -> None:
    d = date(2026, 6, 3)
    # Interval i uses (i + 1) / 100 kWh: demands 0.04, 0.08, ... kW.
    samples = day_samples(d, lambda i, w: (i + 1) / 100)
    assert figures(d, samples).base_load_kw == pytest.approx(4 * (1 + 10) / 2 / 100)
    assert figures(d, samples, base_load_share=0.0).base_load_kw == pytest.approx(0.04)
    assert figures(d, samples, base_load_share=1.0).base_load_kw == pytest.approx(4 * 97 / 2 / 100)


def test_estimated_intervals_are_counted() -> None:
    d = date(2026, 6, 3)
    # Boundaries 10:15..11:45 are estimates: 8 intervals touch them.
    samples = day_samples(d, lambda i, w: 0.1, estimated=lambda t: at(d, 10) < t < at(d, 12))
    fig = figures(d, samples)
    assert (fig.intervals, fig.intervals_actual, fig.intervals_estimated) == (96, 88, 8)
    assert fig.completeness == pytest.approx(88 / 96)
    assert fig.energy_import_kwh == pytest.approx(9.6)  # estimates count in the energy
    fields = daily_fields(fig, B)
    assert (fields["intervals_actual"], fields["intervals_estimated"]) == (88, 8)


def test_unfilled_gap_leaves_intervals_unknown() -> None:
    d = date(2026, 6, 3)
    full = day_samples(d, lambda i, w: 0.2 if w < 12 * H else 0.1)
    samples = [s for s in full if not at(d, 10) < s.ts_ns < at(d, 12)]
    fig = figures(d, samples)
    assert (fig.intervals, fig.intervals_actual, fig.intervals_estimated) == (96, 88, 0)
    assert fig.completeness == pytest.approx(88 / 96)
    # Known: 40 intervals before 10:00 at 0.2 and 48 after 12:00 at 0.1.
    assert fig.energy_import_kwh == pytest.approx(40 * 0.2 + 48 * 0.1)
    assert fig.load_factor == pytest.approx((12.8 / 22) / 0.8)  # 88 known = 22 h
    # Night: 24 intervals 00-06 at 0.2, 8 at 22-24 at 0.1.
    assert fig.night_share == pytest.approx((4.8 + 0.8) / 12.8)


def test_day_without_data() -> None:
    d = date(2026, 6, 3)
    fig = figures(d, [])
    assert (fig.intervals, fig.intervals_actual, fig.completeness) == (96, 0, 0.0)
    assert fig.energy_import_kwh is None
    assert fig.peak_demand_kw is None
    assert fig.peak_demand_ns is None
    assert fig.base_load_kw is None
    assert fig.night_share is None
    assert fig.load_factor is None
    assert daily_fields(fig, B) == {
        "date": "2026-06-03",
        "completeness": 0.0,
        "intervals": 96,
        "intervals_actual": 0,
        "intervals_estimated": 0,
    }
    # Export only: import figures absent, export energy present.
    samples = [DaySample(s.ts_ns, None, s.imp, False) for s in day_samples(d, lambda i, w: 0.1)]
    fig = figures(d, samples)
    assert fig.energy_import_kwh is None
    assert fig.energy_export_kwh == pytest.approx(9.6)
    assert "energy_import_kwh" not in daily_fields(fig, B)


def test_zero_consumption_day() -> None:
    d = date(2026, 6, 3)
    fig = figures(d, day_samples(d, lambda i, w: 0.0))
    assert fig.energy_import_kwh == 0.0
    assert fig.peak_demand_kw == 0.0
    assert fig.night_share is None  # nothing to share
    assert fig.load_factor is None  # peak 0
    assert fig.base_load_kw == 0.0


@pytest.mark.parametrize(
    ("start", "end", "night_kwh"),
    [
        (time(22), time(6), 3.2),  # wraps midnight: 22:00-24:00 + 00:00-06:00
        (time(1), time(5), 1.6),  # plain window
        (time(23, 30), time(0, 30), 0.4),  # wraps with two intervals on each side
        (time(6), time(6), 0.0),  # empty
    ],
)
def test_night_window(start: time, end: time, night_kwh: float) -> None:
    d = date(2026, 6, 3)
    fig = figures(d, day_samples(d, lambda i, w: 0.1), night_start=start, night_end=end)
    assert fig.night_share == pytest.approx(night_kwh / 9.6)


def test_off_grid_meter_every_two_seconds_is_interpolated() -> None:
    d = date(2026, 6, 3)
    start, end = day_bounds(d, B)
    kw = 1.2

    def reg(t: int) -> float:
        # Steady 1.2 kW, plus 1.0 kW in 12:00-12:15.
        base = kw * (t - start) / (H * NS)
        return 7000.0 + base + min(max(0, t - at(d, 12)), IV * NS) / (H * NS)

    # Every 2 s, 1 s off the grid: no sample lies on a boundary.
    ts = range(start - 7 * NS, end + 7 * NS, 2 * NS)
    samples = [DaySample(t, reg(t), None, False) for t in ts]
    fig = figures(d, samples)
    assert (fig.intervals, fig.intervals_actual, fig.intervals_estimated) == (96, 96, 0)
    assert fig.energy_import_kwh == pytest.approx(24 * 1.2 + 0.25)
    # Interpolating across the load steps at 12:00 and 12:15 (samples 1 s away) blurs
    # them by at most 1 kW * 1 s on each side: within 0.002 kW of 2.2.
    assert fig.peak_demand_kw == pytest.approx(2.2, abs=0.002)
    assert fig.peak_demand_ns == at(d, 12)
    assert fig.base_load_kw == pytest.approx(1.2)
    assert fig.energy_export_kwh is None
    # One estimated neighbour makes the boundary it serves estimated: 2 intervals.
    samples = [s._replace(estimated=s.ts_ns == at(d, 8) + NS) for s in samples]
    fig = figures(d, samples)
    assert (fig.intervals_actual, fig.intervals_estimated) == (94, 2)


def test_interpolation_needs_neighbours_within_one_interval() -> None:
    d = date(2026, 6, 3)
    on_time = day_samples(d, lambda i, w: 0.1)

    def moved(by_s: int) -> list[DaySample]:
        return [
            s._replace(ts_ns=s.ts_ns + by_s * NS) if s.ts_ns == at(d, 10) else s for s in on_time
        ]

    # 10:00 read 5 s late: its neighbours 09:45:00 and 10:00:05 are 905 s apart, so the
    # 10:00 boundary is unknown and so are the two intervals next to it.
    assert figures(d, moved(5)).intervals_actual == 94
    # 2 s early: 09:59:58 and 10:15:00 are 902 s apart: unknown as well.
    assert figures(d, moved(-2)).intervals_actual == 94
    # Every sample 5 s late: neighbours exactly 900 s apart, every boundary interpolated.
    late = [s._replace(ts_ns=s.ts_ns + 5 * NS) for s in on_time]
    late.insert(0, DaySample(at(d) - 895 * NS, 4999.9, None, False))
    fig = figures(d, late)
    assert fig.intervals_actual == 96
    assert fig.energy_import_kwh == pytest.approx(9.6)


def test_negative_interval_energy_is_kept() -> None:
    d = date(2026, 6, 3)
    samples = day_samples(d, lambda i, w: -2.0 if w == 12 * H else 0.1)
    fig = figures(d, samples)
    assert fig.energy_import_kwh == pytest.approx(95 * 0.1 - 2.0)
    assert fig.base_load_kw == pytest.approx(
        (-2.0 + 9 * 0.1) / 10 * 4
    )  # the lowest 10 demands include -8 kW
    assert fig.peak_demand_kw == pytest.approx(0.4)


def test_hundreds_of_meter_days_are_fast() -> None:
    d = date(2026, 6, 3)
    samples = day_samples(d, lambda i, w: 0.1 + (i % 7) / 100)
    t0 = datetime.now()
    for _ in range(2000):
        figures(d, samples)
    assert (datetime.now() - t0).total_seconds() < 10  # ~1 ms each; generous for CI
    assert math.isclose(figures(d, samples).completeness, 1.0)
