"""Gap estimation: linear fill, like-day substitution (Monday, Tue/Wed/Thu, several days),
fallbacks (missing like day, decreasing register, spring-forward hour), limits, jitter,
partial registers, the DST night, and the monotone property."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import date, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meter_gateway.gateway.vee.estimate import (
    Estimate,
    Sample,
    estimate_gaps,
    like_day_candidates,
)
from meter_gateway.gateway.vee.localday import NS, day_bounds, day_grid, grid_with_wall

B = ZoneInfo("Europe/Berlin")
IV = 900
H = 3600
LIMITS = {"max_linear_gap_s": 3 * H, "max_gap_s": 3 * 86_400}

Use = Callable[[date, int], float]


def at(d: date, hh: int = 0, mm: int = 0, ss: int = 0, fold: int = 0) -> int:
    """UTC ns of local wall time `hh:mm:ss` on `d` in Berlin."""
    naive = datetime(d.year, d.month, d.day) + timedelta(hours=hh, minutes=mm, seconds=ss)
    dt = naive.replace(tzinfo=B, fold=fold)
    return int(dt.timestamp()) * NS


def build(first: date, days: int, use: Use, exp_use: Use | None = None) -> list[Sample]:
    """Samples at every 15-min boundary of `days` local days from `first`; in the interval
    starting at local wall-clock second w of day d the import register grows by use(d, w)
    (the export register by exp_use(d, w), or is not sent)."""
    imp, exp = 1000.0, 50.0
    out: list[Sample] = []
    for k in range(days):
        d = first + timedelta(days=k)
        grid, walls = grid_with_wall(d, B, IV)
        for t, w in zip(grid[:-1], walls[:-1], strict=True):
            out.append(Sample(t, imp, exp if exp_use else None))
            imp += use(d, w)
            if exp_use:
                exp += exp_use(d, w)
    last = first + timedelta(days=days)
    out.append(Sample(day_bounds(last, B)[0], imp, exp if exp_use else None))
    return out


def drop(samples: list[Sample], lo: int, hi: int) -> list[Sample]:
    """Without the samples strictly between lo and hi: a gap."""
    return [s for s in samples if not lo < s.ts_ns < hi]


def sample_at(samples: list[Sample], ts: int) -> Sample:
    return next(s for s in samples if s.ts_ns == ts)


def run(samples: list[Sample], d0: date, d1: date, **kw: float) -> list[Estimate]:
    """Estimates for the local days d0..d1 (inclusive)."""
    limits = {**LIMITS, **kw}
    return estimate_gaps(
        samples,
        day_bounds(d0, B)[0],
        day_bounds(d1, B)[1],
        tz=B,
        interval_s=IV,
        **limits,
    )


def flat(v: float) -> Use:
    return lambda _d, _w: v


# --- like-day choice -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (date(2026, 6, 8), [date(2026, 6, 1)]),  # Monday -> Monday a week before
        (date(2026, 6, 9), [date(2026, 6, 4), date(2026, 6, 3), date(2026, 6, 2)]),  # Tue
        (date(2026, 6, 10), [date(2026, 6, 9), date(2026, 6, 4), date(2026, 6, 3)]),  # Wed
        (date(2026, 6, 11), [date(2026, 6, 10), date(2026, 6, 9), date(2026, 6, 4)]),  # Thu
        (date(2026, 6, 12), [date(2026, 6, 5)]),  # Friday
        (date(2026, 6, 13), [date(2026, 6, 6)]),  # Saturday
        (date(2026, 6, 14), [date(2026, 6, 7)]),  # Sunday
    ],
)
def test_like_day_candidates(day: date, expected: list[date]) -> None:
    assert like_day_candidates(day) == expected


# --- linear ----------------------------------------------------------------------------


def test_two_hour_gap_is_filled_linearly() -> None:
    d = date(2026, 6, 3)
    full = build(d - timedelta(days=8), 10, flat(0.25))
    a_ts, b_ts = at(d, 10), at(d, 12)
    a = sample_at(full, a_ts)
    samples = drop(full, a_ts, b_ts)
    # Make the gap's delta 3.0 kWh instead of 2.0: b and everything after it +1.0.
    samples = [s._replace(imp=s.imp + 1.0) if s.ts_ns >= b_ts else s for s in samples]
    est = run(samples, d, d)
    assert [e.ts_ns for e in est] == [at(d, 10, 15 * k) for k in range(1, 8)]
    assert {e.method for e in est} == {"linear"}
    # 2 h = 8 intervals, delta 3.0: 0.375 per interval.
    expected = [0.375, 0.75, 1.125, 1.5, 1.875, 2.25, 2.625]
    assert [e.imp - a.imp for e in est] == pytest.approx(expected, abs=1e-9)
    assert all(e.exp is None for e in est)


def test_gap_over_max_gap_gives_nothing() -> None:
    d = date(2026, 6, 3)
    full = build(d - timedelta(days=8), 10, flat(0.1))
    samples = drop(full, at(d, 6), at(d, 12))
    assert run(samples, d, d, max_gap_s=6 * H - 1) == []
    # Exactly the limit is still estimated: 23 slots.
    assert len(run(samples, d, d, max_gap_s=6 * H)) == 23


def test_no_gap_no_estimates_and_edges_are_not_extrapolated() -> None:
    d = date(2026, 6, 3)
    full = build(d, 1, flat(0.1))
    assert run(full, d, d) == []
    # Nothing before the first sample or after the last: only bounded gaps.
    inner = [s for s in full if at(d, 6) <= s.ts_ns <= at(d, 18)]
    assert run(inner, d, d) == []


def test_jitter_only_a_sample_on_the_boundary_blocks_its_estimate() -> None:
    d = date(2026, 6, 3)
    s = [
        Sample(at(d, 9, 45), 10.0, None),
        Sample(at(d, 10, 0, 1), 11.0, None),  # 1 s late
        Sample(at(d, 10, 30), 13.0, None),
        Sample(at(d, 10, 45, 1), 14.0, None),  # 900 s after... +1 s: not a gap
        Sample(at(d, 11, 0), 15.0, None),
    ]
    est = run(s, d, d)
    # 09:45 -> 10:00:01 (901 s) is a gap: 10:00 is estimated beside the jittered sample;
    # 10:00:01 -> 10:30 (1799 s) is a gap: 10:15 only; 10:30 -> 10:45:01 (901 s): 10:45;
    # 10:45:01 -> 11:00 (899 s) is not a gap.
    assert [e.ts_ns for e in est] == [at(d, 10), at(d, 10, 15), at(d, 10, 45)]
    assert est[0].imp == pytest.approx(10.0 + 1.0 * 900 / 901)
    assert est[1].imp == pytest.approx(11.0 + 2.0 * 899 / 1799)
    assert est[2].imp == pytest.approx(13.0 + 1.0 * 900 / 901)


def test_decreasing_register_goes_linear_never_extrapolated() -> None:
    d = date(2026, 6, 8)  # a Monday with its like day available
    full = build(d - timedelta(days=8), 10, flat(0.1), flat(0.02))
    a_ts, b_ts = at(d, 6), at(d, 12)
    samples = drop(full, a_ts, b_ts)
    # Meter replaced at the gap: the import register restarts near zero.
    samples = [s._replace(imp=s.imp - 1500.0) if s.ts_ns >= b_ts else s for s in samples]
    a, b = sample_at(samples, a_ts), sample_at(samples, b_ts)
    est = run(samples, d, d)
    assert len(est) == 23
    for k, e in enumerate(est, start=1):
        assert e.imp == pytest.approx(a.imp + (b.imp - a.imp) * k / 24)
        assert b.imp < e.imp < a.imp
    # Export rose and took the like day, but the estimate carries a linear import value:
    # the method is "like_day" only when every estimated register used it.
    assert {e.method for e in est} == {"linear"}


def test_import_present_export_absent() -> None:
    d = date(2026, 6, 3)
    s = [
        Sample(at(d, 10), 10.0, 5.0),
        Sample(at(d, 11), 14.0, None),  # export not sent at b
        Sample(at(d, 12), 18.0, 6.0),
        Sample(at(d, 12, 30), None, 6.5),  # import not sent at b
        Sample(at(d, 13), None, None),
        Sample(at(d, 13, 30), 20.0, None),  # neither register on both sides: nothing
    ]
    est = run(s, d, d)
    by_ts = {e.ts_ns: e for e in est}
    assert [e.imp for e in est[:3]] == pytest.approx([11.0, 12.0, 13.0])
    assert [e.exp for e in est[:3]] == [None, None, None]
    # 11:00 -> 12:00: import 14 -> 18, export unknown at a.
    assert by_ts[at(d, 11, 30)].imp == pytest.approx(16.0)
    assert by_ts[at(d, 11, 30)].exp is None
    # 12:00 -> 12:30: export 6.0 -> 6.5, import absent at b.
    assert by_ts[at(d, 12, 15)] == Estimate(at(d, 12, 15), None, pytest.approx(6.25), "linear")
    # 12:30 -> 13:00 and 13:00 -> 13:30: no register on both sides.
    assert at(d, 12, 45) not in by_ts
    assert at(d, 13, 15) not in by_ts
    assert len(est) == 3 + 3 + 1


# --- like day --------------------------------------------------------------------------


def monday_profile(d: date, w: int) -> float:
    """0.1 kWh per 15 min, 0.6 between 08:00 and 09:00 on Mondays."""
    return 0.6 if d.weekday() == 0 and 8 * H <= w < 9 * H else 0.1


def test_six_hour_gap_on_monday_uses_last_monday_scaled() -> None:
    d = date(2026, 6, 8)  # Monday; like day 2026-06-01

    def use(day: date, w: int) -> float:
        if day == d:  # the gap day: 0.2 with a 1.2 peak at 10-11 (delta 8.8 over 6 h)
            return 1.2 if 10 * H <= w < 11 * H else 0.2
        return monday_profile(day, w)

    full = build(d - timedelta(days=8), 10, use)
    a_ts, b_ts = at(d, 6), at(d, 12)
    a = sample_at(full, a_ts)
    est = run(drop(full, a_ts, b_ts), d, d)
    assert len(est) == 23
    assert {e.method for e in est} == {"like_day"}
    # Like-day consumption 06:00-12:00: 20 * 0.1 + 4 * 0.6 = 4.4; delta 8.8: scale 2.
    rel = {e.ts_ns: e.imp - a.imp for e in est}
    assert rel[at(d, 6, 15)] == pytest.approx(0.2)
    assert rel[at(d, 8)] == pytest.approx(1.6)  # 8 * 0.1 * 2
    assert rel[at(d, 8, 15)] == pytest.approx(2.8)  # + 0.6 * 2
    assert rel[at(d, 9)] == pytest.approx(6.4)  # (0.8 + 2.4) * 2
    assert rel[at(d, 10)] == pytest.approx(7.2)  # (3.2 + 0.4) * 2
    assert rel[at(d, 11, 45)] == pytest.approx(8.6)  # (3.6 + 0.7) * 2


@pytest.mark.parametrize(
    ("missing", "used"),
    [
        ((), date(2026, 6, 4)),  # Tue -> the Thursday before
        ((date(2026, 6, 4),), date(2026, 6, 3)),  # no Thursday -> Wednesday
        ((date(2026, 6, 4), date(2026, 6, 3)), date(2026, 6, 2)),  # -> the Tuesday before
        ((date(2026, 6, 4), date(2026, 6, 3), date(2026, 6, 2)), None),  # none: linear
    ],
)
def test_tuesday_takes_the_latest_tue_wed_thu_with_data(
    missing: tuple[date, ...], used: date | None
) -> None:
    d = date(2026, 6, 9)  # Tuesday
    # Each candidate has its peak hour at a different time: 10 + its weekday (Tue 11, ...).
    peak_hour = {date(2026, 6, 2): 11, date(2026, 6, 3): 12, date(2026, 6, 4): 13}

    def use(day: date, w: int) -> float:
        if day in peak_hour:
            return 0.5 if peak_hour[day] * H <= w < (peak_hour[day] + 1) * H else 0.1
        return 0.25  # every other day flat: 1.0 kWh per hour

    full = build(d - timedelta(days=8), 10, use)
    for gone in missing:
        lo, hi = day_bounds(gone, B)
        full = drop(full, lo - 1, hi)  # no sample at all that day (midnight included)
    a_ts, b_ts = at(d, 10), at(d, 16)
    a = sample_at(full, a_ts)
    est = run(drop(full, a_ts, b_ts), d, d)
    rel = {e.ts_ns: e.imp - a.imp for e in est}
    assert len(est) == 23
    if used is None:
        assert {e.method for e in est} == {"linear"}
        assert rel[at(d, 13)] == pytest.approx(6.0 * 3 / 6)
        return
    assert {e.method for e in est} == {"like_day"}
    # Like-day consumption 10:00-16:00: 20 * 0.1 + 4 * 0.5 = 4.0; delta 6.0: scale 1.5.
    h = peak_hour[used]
    assert rel[at(d, h)] == pytest.approx(1.5 * 0.4 * (h - 10))
    assert rel[at(d, h + 1)] == pytest.approx(1.5 * (0.4 * (h - 10) + 2.0))


def test_wednesday_takes_the_tuesday_before() -> None:
    d = date(2026, 6, 10)  # Wednesday; the Tuesday before (June 9) has a 14:00 peak

    def use(day: date, w: int) -> float:
        if day == date(2026, 6, 9):
            return 0.5 if 14 * H <= w < 15 * H else 0.1
        return 0.25

    full = build(d - timedelta(days=8), 10, use)
    a_ts, b_ts = at(d, 10), at(d, 16)
    a = sample_at(full, a_ts)
    est = run(drop(full, a_ts, b_ts), d, d)
    assert {e.method for e in est} == {"like_day"}
    rel = {e.ts_ns: e.imp - a.imp for e in est}
    assert rel[at(d, 14)] == pytest.approx(1.5 * 1.6)
    assert rel[at(d, 15)] == pytest.approx(1.5 * 3.6)


def test_missing_like_day_falls_back_to_linear() -> None:
    d = date(2026, 6, 8)  # Monday: only the Monday before will do
    full = build(d - timedelta(days=8), 10, monday_profile)
    lo = day_bounds(date(2026, 6, 1), B)[0]
    # One hour of the like day missing inside the gap's wall-clock span is enough.
    full = drop(full, lo + 9 * H * NS, lo + 10 * H * NS + 1)
    a_ts, b_ts = at(d, 6), at(d, 12)
    a, b = sample_at(full, a_ts), sample_at(full, b_ts)
    est = run(drop(full, a_ts, b_ts), d, d)
    assert {e.method for e in est} == {"linear"}
    assert [e.imp for e in est] == pytest.approx(
        [a.imp + (b.imp - a.imp) * k / 24 for k in range(1, 24)]
    )


def test_like_day_register_is_interpolated_between_close_samples() -> None:
    d = date(2026, 6, 8)
    full = build(d - timedelta(days=8), 10, monday_profile)
    like = date(2026, 6, 1)
    # On the like day, 08:30 is missing but 08:15 and 08:45 are 1800 s apart: no data.
    gone = drop(full, at(like, 8, 15), at(like, 8, 45))
    a_ts, b_ts = at(d, 6), at(d, 12)
    assert {e.method for e in run(drop(gone, a_ts, b_ts), d, d)} == {"linear"}
    # The history read 7 s late everywhere (values consistent with a steady load within
    # each interval): the like-day boundaries are interpolated (900 s apart), same profile.
    late = [
        s._replace(ts_ns=s.ts_ns + 7 * NS, imp=s.imp + (n.imp - s.imp) * 7 / 900)
        if s.ts_ns < at(d, 0)
        else s
        for s, n in pairwise(full)
    ]
    a = sample_at(late, a_ts)
    est = run(drop(late, a_ts, b_ts), d, d)
    assert {e.method for e in est} == {"like_day"}
    # The gap day is itself a Monday: delta 4.4 = P(b), scale 1; P(09:00) = 0.8 + 2.4
    # (within 7/900 of the 0.5 kWh step at 08:00 and 09:00, where the load changes).
    assert {e.ts_ns: e.imp - a.imp for e in est}[at(d, 9)] == pytest.approx(3.2, abs=0.01)


def test_gap_over_several_days_uses_each_dates_like_day() -> None:
    sun, mon = date(2026, 6, 7), date(2026, 6, 8)

    def use(day: date, w: int) -> float:
        if day == date(2026, 5, 31):  # Sunday before: 0.2
            return 0.2
        if day == date(2026, 6, 1):  # Monday before: 0.05
            return 0.05
        return 0.4  # the gap's own days: 0.4 (delta 48 * 0.4 = 19.2 over 12 h)

    full = build(sun - timedelta(days=8), 10, use)
    a_ts, b_ts = at(sun, 20), at(mon, 8)
    a = sample_at(full, a_ts)
    est = run(drop(full, a_ts, b_ts), sun, mon)
    assert len(est) == 47
    assert {e.method for e in est} == {"like_day"}
    # Like days: Sunday 20:00-24:00 16 * 0.2 = 3.2; Monday 00:00-08:00 32 * 0.05 = 1.6.
    # P(b) = 4.8, delta 19.2: scale 4.
    rel = {e.ts_ns: e.imp - a.imp for e in est}
    assert rel[at(sun, 22)] == pytest.approx(4 * 1.6)
    assert rel[at(mon, 0)] == pytest.approx(4 * 3.2)
    assert rel[at(mon, 4)] == pytest.approx(4 * (3.2 + 0.8))
    # The requested range only filters: the Monday alone gives the same values.
    assert run(drop(full, a_ts, b_ts), mon, mon) == [e for e in est if e.ts_ns >= at(mon, 0)]


def test_gap_across_the_berlin_spring_forward_night() -> None:
    d = date(2026, 3, 29)  # Sunday, 23 h: 02:00 does not exist; like day 2026-03-22

    def use(day: date, w: int) -> float:
        return 0.1 if day == date(2026, 3, 22) else 0.2

    full = build(d - timedelta(days=8), 10, use)
    a_ts, b_ts = at(d, 0), at(d, 6)
    a, b = sample_at(full, a_ts), sample_at(full, b_ts)
    assert b.imp - a.imp == pytest.approx(20 * 0.2)  # 5 real hours: 20 intervals
    est = run(drop(full, a_ts, b_ts), d, d)
    # Slots 00:15..01:45 (7) and 03:00..05:45 (12): 19, every 15 min in UTC.
    assert len(est) == 19
    assert [e.ts_ns for e in est] == [a_ts + k * IV * NS for k in range(1, 20)]
    assert {e.method for e in est} == {"like_day"}
    # Like day 00:00-06:00 wall clock = 24 intervals * 0.1 = 2.4; delta 4.0: scale 5/3.
    # 01:45 -> 03:00 is one interval on d but five on the like day (01:45..03:00 wall).
    rel = {e.ts_ns: e.imp - a.imp for e in est}
    assert rel[at(d, 1, 45)] == pytest.approx(0.7 * 4.0 / 2.4)
    assert rel[at(d, 3)] == pytest.approx(1.2 * 4.0 / 2.4)
    assert rel[at(d, 5, 45)] == pytest.approx(2.3 * 4.0 / 2.4)


def test_like_day_on_a_spring_forward_day_is_unavailable() -> None:
    d = date(2026, 4, 5)  # Sunday; its like day 2026-03-29 has no 02:00-03:00
    full = build(d - timedelta(days=8), 10, lambda day, w: 0.3 if w < 2 * H else 0.1)
    a_ts, b_ts = at(d, 0), at(d, 6)
    a, b = sample_at(full, a_ts), sample_at(full, b_ts)
    est = run(drop(full, a_ts, b_ts), d, d)
    assert {e.method for e in est} == {"linear"}
    assert est[3].imp == pytest.approx(a.imp + (b.imp - a.imp) * 4 / 24)
    # A gap on the same day that avoids 02:00-03:00 still takes the like day.
    a_ts, b_ts = at(d, 3), at(d, 9)
    assert {e.method for e in run(drop(full, a_ts, b_ts), d, d)} == {"like_day"}


def test_gap_over_the_repeated_autumn_hour_goes_linear() -> None:
    d = date(2026, 10, 25)  # Sunday, 25 h; like day 2026-10-18 has no second 02:00-03:00
    full = build(d - timedelta(days=8), 10, lambda day, w: 0.3 if w < 3 * H else 0.1)
    a_ts, b_ts = at(d, 1), at(d, 5)
    a, b = sample_at(full, a_ts), sample_at(full, b_ts)
    est = run(drop(full, a_ts, b_ts), d, d)
    # 5 real hours: 19 slots, 02:00-02:45 twice; the like day cannot map the second pass.
    assert len(est) == 19
    assert est[3].ts_ns == at(d, 2, 0, fold=1) - H * NS
    assert est[7].ts_ns == at(d, 2, 0, fold=1)
    assert {e.method for e in est} == {"linear"}
    assert est[7].imp == pytest.approx(a.imp + (b.imp - a.imp) * 8 / 20)
    # After the repeated hour the like day maps again.
    a_ts, b_ts = at(d, 4), at(d, 10)
    assert {e.method for e in run(drop(full, a_ts, b_ts), d, d)} == {"like_day"}


def test_zero_or_negative_like_day_profile_goes_linear() -> None:
    d = date(2026, 6, 8)
    # The like day consumed nothing in the gap's hours, the gap day did.
    full = build(
        d - timedelta(days=8),
        10,
        lambda day, w: 0.0 if day == date(2026, 6, 1) and 5 * H <= w < 13 * H else 0.1,
    )
    a_ts, b_ts = at(d, 6), at(d, 12)
    assert {e.method for e in run(drop(full, a_ts, b_ts), d, d)} == {"linear"}
    # The like day's register fell once within the span (a meter swap that day).
    full = build(d - timedelta(days=8), 10, monday_profile)
    full = [
        s._replace(imp=s.imp - 5.0) if at(date(2026, 6, 1), 9) <= s.ts_ns < at(d, 0) else s
        for s in full
    ]
    assert {e.method for e in run(drop(full, a_ts, b_ts), d, d)} == {"linear"}


def test_method_when_only_one_register_takes_the_like_day() -> None:
    d = date(2026, 6, 8)
    # Import has a profile on the Monday before; export does not (flat zero there).
    full = build(
        d - timedelta(days=8),
        10,
        monday_profile,
        lambda day, w: 0.0 if day == date(2026, 6, 1) else 0.05,
    )
    a_ts, b_ts = at(d, 6), at(d, 12)
    a, b = sample_at(full, a_ts), sample_at(full, b_ts)
    est = run(drop(full, a_ts, b_ts), d, d)
    # Export: like-day profile 0 while delta > 0 -> linear; so the method is "linear"...
    assert {e.method for e in est} == {"linear"}
    assert est[0].exp == pytest.approx(a.exp + (b.exp - a.exp) / 24)
    # ...but the import values still come from the like day.
    assert est[7].imp - a.imp == pytest.approx((b.imp - a.imp) * 0.8 / 4.4)
    # Without an export register, the same gap is "like_day".
    no_exp = [s._replace(exp=None) for s in drop(full, a_ts, b_ts)]
    assert {e.method for e in run(no_exp, d, d)} == {"like_day"}


# --- properties ------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    gaps=st.lists(st.tuples(st.integers(0, 95 * 2), st.integers(2, 96)), min_size=1, max_size=4),
    jitter=st.booleans(),
)
def test_estimates_are_monotone_between_a_and_b_and_sum_to_delta(
    seed: int, gaps: list[tuple[int, int]], jitter: bool
) -> None:
    rng = random.Random(seed)
    d = date(2026, 6, 9)
    first = d - timedelta(days=8)
    full = build(first, 10, lambda _d, _w: rng.choice([0.0, 0.05, 0.1, 0.4, 1.5]))
    if jitter:
        full = [s._replace(ts_ns=s.ts_ns + rng.randint(-3, 3) * NS) for s in full]
    keep = set(range(len(full)))
    start_index = next(i for i, s in enumerate(full) if s.ts_ns >= at(d, 0) - 3 * NS)
    for offset, length in gaps:
        for i in range(start_index + offset + 1, start_index + offset + length):
            keep.discard(i)
    samples = [full[i] for i in sorted(keep)]
    d1 = d + timedelta(days=1)
    est = run(samples, d, d1, max_linear_gap_s=4 * H)
    assert est == sorted(est)
    lo, hi = day_bounds(d, B)[0], day_bounds(d1, B)[1]
    all_slots = sorted({*day_grid(d, B, IV), *day_grid(d1, B, IV)} - {hi})
    covered: list[int] = []
    for a, b in pairwise(samples):
        if b.ts_ns - a.ts_ns <= IV * NS:
            continue
        inside = [e for e in est if a.ts_ns < e.ts_ns < b.ts_ns]
        # Every grid boundary of the range strictly inside the gap, and nothing else.
        assert [e.ts_ns for e in inside] == [g for g in all_slots if a.ts_ns < g < b.ts_ns]
        covered.extend(e.ts_ns for e in inside)
        chain = [a.imp, *(e.imp for e in inside), b.imp]
        assert all(x <= y + 1e-9 for x, y in pairwise(chain))
        assert all(a.imp - 1e-9 <= v <= b.imp + 1e-9 for v in chain)
        if lo <= a.ts_ns and b.ts_ns < hi:
            # A gap wholly inside the range: its interval energies sum to the delta.
            steps = [y - x for x, y in pairwise(chain)]
            assert sum(steps) == pytest.approx(b.imp - a.imp)
    # No estimate outside a gap.
    assert covered == [e.ts_ns for e in est]
