"""Local-day arithmetic in an IANA time zone, correct across daylight-saving changes.

Meter data is stored by UTC instant (epoch nanoseconds), but a utility bills, estimates
and characterises by the *local* day of the meter's site. Everything here converts
between the two without building a datetime per sample: a day's boundaries are computed
once (and cached), and callers then compare plain integers.

Definitions (cited by the estimation and daily-figure modules):

- Local day ``d``: the half-open UTC interval ``[start, end)`` where ``start`` is the
  first instant whose local date is ``d`` (normally local 00:00; where 00:00 does not
  exist because the clocks spring forward at midnight, the instant of that change) and
  ``end`` is the start of ``d + 1``. A normal day lasts 24 h; the spring-forward day
  23 h, the fall-back day 25 h (in zones with a one-hour change).
- Local wall-clock seconds of an instant ``t``: ``(t + utcoffset(t)) mod 86400``, the
  reading of the local clock as seconds since 00:00. On the Berlin spring-forward day
  03:00 reads 10800 although only 7200 s have elapsed since midnight.
- Interval grid for ``interval_s`` (a divisor of 3600: 60, 300, 900, 1800, 3600): a
  boundary is an instant, whole in seconds, whose local wall-clock seconds are a multiple
  of ``interval_s``. ``day_grid`` lists the boundaries ``start <= t <= end`` of one day.
  For zones whose offset changes are multiples of ``interval_s`` (every whole-hour DST
  zone, for every allowed interval; ``+05:30`` zones for intervals dividing 1800) the grid
  simply continues in UTC across a change, every interval lasts exactly ``interval_s``,
  and a day has ``length / interval_s`` intervals: 96 / 92 / 100 at 900 s for a
  24 / 23 / 25-hour day. A wall-clock time repeated by a fall-back change yields two
  boundaries, one per instant.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from functools import lru_cache
from itertools import pairwise
from zoneinfo import ZoneInfo

NS = 1_000_000_000
DAY_S = 86_400
#: The last instant local days are computed for: 9999-12-01T00:00:00Z. `datetime` ends with
#: 9999-12-31, and a day's end is the next day's start, in any zone, plus settle times:
#: a month short of the calendar's end leaves room for all of them. Callers refuse later
#: times (replay does, per line); validation's future bound keeps live data far below.
MAX_NS = 253_399_622_400 * NS
_EPOCH = datetime(1970, 1, 1)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_SECOND = timedelta(seconds=1)


def utc_offset_s(ts_s: int, tz: ZoneInfo) -> int:
    """The zone's UTC offset in whole seconds at the UTC instant `ts_s` (epoch seconds)."""
    off = datetime.fromtimestamp(ts_s, tz).utcoffset()
    # zoneinfo always yields an offset for an aware datetime; guard for the type checker.
    return 0 if off is None else off // _SECOND


def local_wall_ns(ts_ns: int, tz: ZoneInfo) -> tuple[date, int]:
    """The local date of an instant and its local wall-clock nanoseconds since 00:00.

    One offset lookup and integer arithmetic: cheaper than formatting a datetime, and
    exact at nanosecond resolution (a datetime only holds microseconds).
    """
    wall = ts_ns + utc_offset_s(ts_ns // NS, tz) * NS
    days, since_midnight = divmod(wall, DAY_S * NS)
    return date.fromordinal(_EPOCH_ORDINAL + days), since_midnight


def day_of(ts_ns: int, tz: ZoneInfo) -> date:
    """The local date of the instant `ts_ns` (UTC epoch ns) in `tz`."""
    return local_wall_ns(ts_ns, tz)[0]


def _local_date_s(ts_s: int, tz: ZoneInfo) -> date:
    return date.fromordinal(_EPOCH_ORDINAL + (ts_s + utc_offset_s(ts_s, tz)) // DAY_S)


@lru_cache(maxsize=4096)
def _day_start_s(day: date, tz: ZoneInfo) -> int:
    """First UTC second whose local date is `day` (see the module definition)."""
    naive = datetime(day.year, day.month, day.day)
    wall_s = (naive - _EPOCH) // _SECOND
    # Both readings of local 00:00: they differ only when midnight is repeated (fold 0 is
    # the first occurrence, the day's start) or skipped (the start is the change itself,
    # somewhere between the two readings).
    c0 = wall_s - utc_offset_s_local(naive, tz, 0)
    c1 = wall_s - utc_offset_s_local(naive, tz, 1)
    lo, hi = min(c0, c1) - 1, max(c0, c1)
    if _local_date_s(hi, tz) < day:  # pragma: no cover - only a zone skipping a whole day
        hi += DAY_S
    # Binary search for the first second whose local date is >= day: lo is before it.
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _local_date_s(mid, tz) >= day:
            hi = mid
        else:
            lo = mid
    return hi


def utc_offset_s_local(naive: datetime, tz: ZoneInfo, fold: int) -> int:
    """The UTC offset, in seconds, that `tz` assigns to the local wall time `naive`.

    `fold` picks the reading of an ambiguous or non-existent time as PEP 495 does: 0 the
    offset before the change, 1 the offset after it.
    """
    off = naive.replace(tzinfo=tz, fold=fold).utcoffset()
    return 0 if off is None else off // _SECOND


def day_bounds(day: date, tz: ZoneInfo) -> tuple[int, int]:
    """`[start_ns, end_ns)` of the local day `day`: local midnight to the next one, in UTC ns.

    Days are the unit of billing and of the daily figures, so their length is whatever
    the calendar says (23, 24 or 25 hours), never a fixed 86400 s.
    """
    try:
        return _day_start_s(day, tz) * NS, _day_start_s(day + timedelta(days=1), tz) * NS
    except OverflowError:
        raise ValueError(
            f"local day {day} is beyond the last one the gateway computes "
            "(times up to 9999-12-01T00:00:00Z)"
        ) from None


@lru_cache(maxsize=4096)
def _segments(day: date, tz: ZoneInfo) -> tuple[tuple[int, int, int], ...]:
    """The day split at its UTC-offset changes: (from_s, to_s, offset_s) pieces.

    The offset is probed every hour (no zone changes it twice within an hour) and each
    change is located to the second by bisection, since zoneinfo exposes no transition list.
    """
    start, end = _day_start_s(day, tz), _day_start_s(day + timedelta(days=1), tz)
    probes = [*range(start, end, 3600), end]
    pieces: list[tuple[int, int, int]] = []
    seg_start, seg_off = start, utc_offset_s(start, tz)
    for prev, cur in pairwise(probes):
        cur_off = utc_offset_s(cur, tz)
        if cur_off == seg_off:
            continue
        lo, hi = prev, cur  # offset at lo == seg_off, at hi differs
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if utc_offset_s(mid, tz) == seg_off:
                lo = mid
            else:
                hi = mid
        pieces.append((seg_start, hi, seg_off))
        seg_start, seg_off = hi, cur_off
    pieces.append((seg_start, end, seg_off))
    return tuple(pieces)


@lru_cache(maxsize=16384)
def grid_with_wall(
    day: date, tz: ZoneInfo, interval_s: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The day's grid boundaries (UTC ns) and, parallel, their local wall-clock seconds.

    The last boundary (the next local midnight) has wall-clock 86400, not 0, so that the
    wall-clock seconds of a day are increasing except across a fall-back repeat.
    Cached: a day's grid is shared by every meter of the same zone and interval.
    """
    if interval_s <= 0 or 3600 % interval_s:
        raise ValueError(f"interval_s must divide 3600, got {interval_s}")
    bounds: list[int] = []
    walls: list[int] = []
    for seg_from, seg_to, off in _segments(day, tz):
        # First t >= seg_from with (t + off) a multiple of interval_s: since interval_s
        # divides 86400, that is exactly "local wall-clock seconds divisible by interval_s".
        t = seg_from + (-(seg_from + off)) % interval_s
        while t < seg_to:
            bounds.append(t * NS)
            walls.append((t + off) % DAY_S)
            t += interval_s
    end = _day_start_s(day + timedelta(days=1), tz)
    bounds.append(end * NS)
    walls.append(DAY_S)
    return tuple(bounds), tuple(walls)


def day_grid(day: date, tz: ZoneInfo, interval_s: int) -> list[int]:
    """The boundaries of the day's intervals, start..end inclusive, in UTC ns.

    97 at 900 s for a 24-hour day, 93 on a 23-hour day, 101 on a 25-hour day.
    """
    return list(grid_with_wall(day, tz, interval_s)[0])


def on_grid(ts_ns: int, tz: ZoneInfo, interval_s: int) -> bool:
    """Whether `ts_ns` is a boundary of the local interval grid (see the module docstring).

    For zones with whole-quarter-hour offsets and 900 s this equals `ts_ns` being a
    multiple of 900 s in UTC; for +05:30 at 3600 s it is the local whole hour (:30 UTC).
    """
    sec, frac = divmod(ts_ns, NS)
    if frac:
        return False
    return (sec + utc_offset_s(sec, tz)) % interval_s == 0


def local_to_utc_ns(day: date, wall_ns: int, tz: ZoneInfo, fold: int = 0) -> int | None:
    """The instant at which the local clock of `day` reads `wall_ns` after 00:00, or None.

    None when that wall-clock time does not exist on `day` (skipped by a spring-forward
    change). `wall_ns == 86400 s` means the end of `day` (the next local midnight). For a
    time repeated by a fall-back change `fold` picks the occurrence (0 first, 1 second).
    """
    if wall_ns == DAY_S * NS:
        return _day_start_s(day + timedelta(days=1), tz) * NS
    whole, frac = divmod(wall_ns, NS)
    naive = datetime(day.year, day.month, day.day) + timedelta(seconds=whole)
    wall_s = (naive - _EPOCH) // _SECOND
    utc_s = wall_s - utc_offset_s_local(naive, tz, fold)
    # A skipped time maps (PEP 495) to an instant whose own local reading differs.
    if utc_s + utc_offset_s(utc_s, tz) != wall_s:
        return None
    return utc_s * NS + frac
