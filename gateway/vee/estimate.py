"""Gap estimation (the "E" of VEE) for cumulative energy registers.

A meter that misses readings leaves grid boundaries without a register value; billing and
the daily figures need one. This module computes, from a meter's ACTUAL samples only,
estimated register values at the missing boundaries. It is pure: the caller fetches the
samples and stores the estimates.

Definitions (``iv`` is ``interval_s``; all instants are UTC epoch ns; the grid and local
wall-clock times are those of :mod:`meter_gateway.gateway.vee.localday`):

- Gap: two consecutive actual samples ``a``, ``b`` (consecutive in the sample list,
  whatever registers they carry) with ``b.ts - a.ts > iv``. Its slots are ALL grid
  boundaries ``t`` with ``a.ts < t < b.ts``. An actual sample blocks an estimate only at
  the boundary it lies exactly on: a sample 1 s off the grid (jitter) next to a gap
  leaves the boundary beside it a slot, estimated from that sample. Conversely two
  samples at most ``iv`` apart never form a gap, even if a boundary between them has no
  sample: consumers interpolate there.
- Only gaps bounded by actual samples on both sides are estimated (nothing before the
  first sample or after the last). A gap with ``b.ts - a.ts > max_gap_s`` is not
  estimated at all. Every gap is estimated as a whole, from its own ``a`` and ``b`` and
  all of its slots, and only the slots with ``start_ns <= t < end_ns`` are returned: the
  values never depend on the requested range.
- Registers (import, export) are estimated independently, each only when both ``a`` and
  ``b`` carry it; the other is ``None``. A slot with both ``None`` is not returned.
  ``delta = b.reg - a.reg``.
- Linear: ``R(t) = a.reg + delta * (t - a.ts) / (b.ts - a.ts)``. Used when
  ``b.ts - a.ts <= max_linear_gap_s``, and as the fallback of like-day substitution.
- Like-day substitution (longer gaps): ``R(t) = a.reg + delta * P(t) / P(b.ts)``, where
  ``P(t)`` is the consumption of like days accumulated from ``a``'s local wall-clock time
  to ``t``'s. The points ``a.ts < slot_1 < ... < slot_k < b.ts`` cut the gap into
  segments; every segment lies within one local date ``d`` (local midnights are grid
  boundaries, hence slots). Its consumption is ``R_L(m_end) - R_L(m_start)`` where ``L``
  is the like day of ``d`` and ``m_*`` are the instants on ``L`` at the segment ends'
  wall-clock times (a segment ending at the next local midnight maps its end to the end
  of ``L``). ``P`` is the running sum of these segment consumptions. A gap spanning
  several dates therefore uses several like days.
- Mapping a wall-clock time onto ``L``: the instant at which ``L``'s local clock reads it;
  for a time repeated on ``L`` (fall-back hour) the same occurrence (fold) as the source
  instant. A time that does not exist on ``L`` (spring-forward hour) is unavailable.
- ``R_L(m)``: the actual sample exactly at ``m`` carrying the register, else linear
  interpolation between the nearest samples before and after ``m`` that carry it, when
  those are at most ``iv`` apart; else unavailable. (Samples not carrying a register are
  ignored for that register.)
- Like day of date ``d``: Monday -> ``d - 7``; Friday, Saturday, Sunday -> ``d - 7``;
  Tuesday, Wednesday, Thursday are interchangeable -> the first of ``d-1 .. d-7`` that is
  a Tue/Wed/Thu and has the data (every mapped point of ``d``'s segments available for
  that register), so Tue -> Thu, Wed, Tue of the week before; Wed -> Tue (day before),
  then Thu, Wed; Thu -> Wed, Tue, then Thu. The choice is made per date and per register.
- The like-day profile of a register is unavailable when, for any date of the gap, no
  like day has the data, or when any segment's like-day consumption is negative or maps
  backwards in time (a register decrease on the like day, a fall-back hour the like day
  lacks): scaling such a profile would make the estimate non-monotone. The register is
  then estimated linearly; likewise when ``delta <= 0`` (no consumption, or a decrease
  from tamper or meter replacement: interpolated, never extrapolated) or when
  ``P(b.ts) <= 0`` while ``delta > 0``.
- Method of an estimate: ``"like_day"`` when every register it carries was estimated by
  like-day substitution, else ``"linear"`` (an estimate labelled like-day never hides an
  interpolated value).

With ``delta >= 0`` every estimate lies between ``a.reg`` and ``b.reg`` and the estimates
are non-decreasing in time, so the interval energies over the gap sum to ``delta``.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from operator import itemgetter
from typing import NamedTuple
from zoneinfo import ZoneInfo

from meter_gateway.gateway.vee.localday import (
    DAY_S,
    NS,
    grid_with_wall,
    local_to_utc_ns,
    local_wall_ns,
)

__all__ = ["Estimate", "Sample", "estimate_gaps", "like_day_candidates"]


class Sample(NamedTuple):
    """One actual reading of a meter's cumulative registers."""

    ts_ns: int
    imp: float | None  # energy_import_kwh register (cumulative kWh); None: not sent
    exp: float | None  # energy_export_kwh register


class Estimate(NamedTuple):
    """Estimated register values at one grid boundary inside a gap."""

    ts_ns: int
    imp: float | None
    exp: float | None
    method: str  # "linear" | "like_day"


_TS = itemgetter(0)
_IMP, _EXP = 1, 2  # field positions of the registers in Sample


def like_day_candidates(d: date) -> list[date]:
    """The like days of `d`, in order of preference (see the module docstring)."""
    wd = d.weekday()  # Monday 0 .. Sunday 6
    if wd in (1, 2, 3):
        # Tue/Wed/Thu share one load shape: the most recent earlier one with data.
        return [d - timedelta(days=k) for k in range(1, 8) if (wd - k) % 7 in (1, 2, 3)]
    # Monday (weekend just ended), Friday (weekend starting) and the weekend days each
    # have a shape of their own: only the same weekday a week before will do.
    return [d - timedelta(days=7)]


def _register_at(actual: Sequence[Sample], m: int, reg: int, iv_ns: int) -> float | None:
    """`R_L(m)`: the register at instant `m` from the actual samples, or None.

    Bisection plus a scan bounded by one interval on each side: a neighbour further than
    `iv_ns` cannot take part in an interpolation, so the scan stays short even when many
    samples lack the register.
    """
    n = len(actual)
    j = bisect_left(actual, m, key=_TS)
    if j < n and actual[j][0] == m and actual[j][reg] is not None:
        return actual[j][reg]
    after_from = j + 1 if j < n and actual[j][0] == m else j
    k = j - 1
    before: Sample | None = None
    while k >= 0 and actual[k][0] >= m - iv_ns:
        if actual[k][reg] is not None:
            before = actual[k]
            break
        k -= 1
    if before is None:
        return None
    k = after_from
    while k < n and actual[k][0] <= before[0] + iv_ns:
        if actual[k][reg] is not None:
            vb, va = before[reg], actual[k][reg]
            assert vb is not None
            assert va is not None
            return vb + (va - vb) * (m - before[0]) / (actual[k][0] - before[0])
        k += 1
    return None


def _gap_slots(a_ts: int, b_ts: int, tz: ZoneInfo, interval_s: int) -> list[int]:
    """All grid boundaries strictly between `a_ts` and `b_ts`, ascending."""
    first_day = local_wall_ns(a_ts, tz)[0]
    last_day = local_wall_ns(b_ts, tz)[0]
    slots: list[int] = []
    d = first_day
    while d <= last_day:
        grid = grid_with_wall(d, tz, interval_s)[0]
        lo = bisect_right(grid, a_ts)
        hi = bisect_left(grid, b_ts)
        for t in grid[lo:hi]:
            # Consecutive days share their midnight boundary: take it once.
            if not slots or t > slots[-1]:
                slots.append(t)
        d += timedelta(days=1)
    return slots


class _Point(NamedTuple):
    """A point of a gap: its instant, local date, wall-clock ns since 00:00 and fold."""

    ts: int
    day: date
    wall: int
    fold: int


def _point(ts: int, tz: ZoneInfo) -> _Point:
    day, wall = local_wall_ns(ts, tz)
    fold = datetime.fromtimestamp(ts // NS, tz).fold
    return _Point(ts, day, wall, fold)


def _like_profile(
    actual: Sequence[Sample],
    points: list[_Point],
    reg: int,
    tz: ZoneInfo,
    iv_ns: int,
) -> list[float] | None:
    """`P` at every point (P(a) = 0), or None when the like-day profile is unavailable."""
    # Segments (i-1, i), grouped by the local date of their start.
    by_day: dict[date, list[int]] = {}
    for i in range(1, len(points)):
        by_day.setdefault(points[i - 1].day, []).append(i)
    seg_use: dict[int, float] = {}
    for d, segs in by_day.items():
        found: dict[int, float] | None = None
        for like in like_day_candidates(d):
            found = _segments_on(actual, points, segs, d, like, reg, tz, iv_ns)
            if found is not None:
                break
        if found is None:
            return None
        seg_use.update(found)
    profile = [0.0]
    for i in range(1, len(points)):
        use = seg_use[i]
        if use < 0:
            return None
        profile.append(profile[-1] + use)
    return profile


def _segments_on(
    actual: Sequence[Sample],
    points: list[_Point],
    segs: list[int],
    d: date,
    like: date,
    reg: int,
    tz: ZoneInfo,
    iv_ns: int,
) -> dict[int, float] | None:
    """Like-day consumption of segments `segs` of date `d` on day `like`, or None.

    None when any segment end cannot be mapped onto `like` or has no data there ("the
    like day does not have the data"). A segment mapping backwards in time gets -1, which
    the caller treats as unavailable without trying another like day.
    """
    cache: dict[tuple[int, int], float | None] = {}

    def reg_at_wall(wall: int, fold: int) -> tuple[float | None, int | None]:
        m = local_to_utc_ns(like, wall, tz, fold)
        if m is None:
            return None, None
        key = (wall, fold)
        if key not in cache:
            cache[key] = _register_at(actual, m, reg, iv_ns)
        return cache[key], m

    out: dict[int, float] = {}
    for i in segs:
        p0, p1 = points[i - 1], points[i]
        # The end of a segment ending on the next local midnight is the end of the like day.
        end_wall = p1.wall if p1.day == d else DAY_S * NS
        if p1.day != d and p1.wall != 0:  # pragma: no cover - midnight is always a slot
            return None
        r0, m0 = reg_at_wall(p0.wall, p0.fold)
        r1, m1 = reg_at_wall(end_wall, p1.fold)
        if r0 is None or r1 is None or m0 is None or m1 is None:
            return None
        out[i] = r1 - r0 if m1 >= m0 else -1.0
    return out


def estimate_gaps(
    actual: Sequence[Sample],
    start_ns: int,
    end_ns: int,
    *,
    tz: ZoneInfo,
    interval_s: int,
    max_linear_gap_s: float,
    max_gap_s: float,
) -> list[Estimate]:
    """Estimates at the grid boundaries in `[start_ns, end_ns)` that lie inside a gap.

    `actual`: one meter's actual samples, sorted by ts with unique ts, including up to
    8 days of history before `start_ns` (for like days) and the samples after the range
    (every gap needs its closing sample). Rules: see the module docstring.
    """
    iv_ns = interval_s * NS
    n = len(actual)
    if n < 2 or end_ns <= start_ns:
        return []
    # Only gaps overlapping the range: from the last sample at or before start_ns to the
    # first sample at or after end_ns.
    i0 = max(bisect_right(actual, start_ns, key=_TS) - 1, 0)
    i1 = min(bisect_left(actual, end_ns, key=_TS), n - 1)
    out: list[Estimate] = []
    prev_ts = actual[i0][0]
    for i in range(i0 + 1, i1 + 1):
        ts = actual[i][0]
        span = ts - prev_ts
        if span > iv_ns:
            out.extend(
                _estimate_gap(
                    actual,
                    actual[i - 1],
                    actual[i],
                    start_ns,
                    end_ns,
                    tz,
                    interval_s,
                    max_linear_gap_s,
                    max_gap_s,
                )
            )
        prev_ts = ts
    return out


def _estimate_gap(
    actual: Sequence[Sample],
    a: Sample,
    b: Sample,
    start_ns: int,
    end_ns: int,
    tz: ZoneInfo,
    interval_s: int,
    max_linear_gap_s: float,
    max_gap_s: float,
) -> list[Estimate]:
    span = b.ts_ns - a.ts_ns
    if span > max_gap_s * NS:
        return []  # too long to estimate credibly: left as a gap
    slots = _gap_slots(a.ts_ns, b.ts_ns, tz, interval_s)
    if not slots or slots[-1] < start_ns or slots[0] >= end_ns:
        return []
    linear = span <= max_linear_gap_s * NS
    points: list[_Point] | None = None

    # values[reg] is the list of estimates at the slots (or None), like[reg] whether the
    # like-day profile produced them.
    values: dict[int, list[float] | None] = {}
    like: dict[int, bool] = {}
    for reg in (_IMP, _EXP):
        ra, rb = a[reg], b[reg]
        if ra is None or rb is None:
            values[reg], like[reg] = None, False
            continue
        delta = rb - ra
        profile: list[float] | None = None
        if not linear and delta > 0:
            if points is None:
                points = [_point(t, tz) for t in (a.ts_ns, *slots, b.ts_ns)]
            profile = _like_profile(actual, points, reg, tz, interval_s * NS)
            if profile is not None and profile[-1] <= 0:
                profile = None
        if profile is None:
            values[reg] = [ra + delta * (t - a.ts_ns) / span for t in slots]
            like[reg] = False
        else:
            total = profile[-1]
            values[reg] = [ra + delta * p / total for p in profile[1:-1]]
            like[reg] = True

    imp_vals, exp_vals = values[_IMP], values[_EXP]
    if imp_vals is None and exp_vals is None:
        return []
    carried = [reg for reg in (_IMP, _EXP) if values[reg] is not None]
    method = "like_day" if all(like[reg] for reg in carried) else "linear"
    out: list[Estimate] = []
    for k, t in enumerate(slots):
        if start_ns <= t < end_ns:
            out.append(
                Estimate(
                    t,
                    None if imp_vals is None else imp_vals[k],
                    None if exp_vals is None else exp_vals[k],
                    method,
                )
            )
    return out
