"""Daily load characteristics of one meter for one local day.

The figures describe how a site used energy over a local calendar day: how much, the
peak and the base load, how much at night, how flat the load was, and how much of the
day rests on actual rather than estimated readings. They are computed from the
cumulative import/export registers, sampled at or near the interval grid of
:mod:`meter_gateway.gateway.vee.localday`; estimates from
:mod:`meter_gateway.gateway.vee.estimate` fill gaps and are counted as such.

Definitions (``iv`` is ``interval_s``; instants are UTC epoch ns):

- Boundaries ``b_0 < ... < b_N``: the day's grid (``day_grid``), ``b_0`` the local
  midnight, ``b_N`` the next one. ``intervals = N`` (96, 92 or 100 at 900 s).
- Register at a boundary ``b`` (import and export separately; samples that do not carry
  the register are ignored for it): the sample exactly at ``b``; else linear
  interpolation between the nearest samples before and after ``b``, when those are at
  most ``iv`` apart; else unknown. The value is *estimated* when any sample it comes
  from is estimated.
- Interval ``i = [b_i, b_i+1]`` is known when both its import boundary values are known;
  its energy is ``e_i = R(b_i+1) - R(b_i)``; it is *actual* when both boundary values are
  actual, else *estimated*. ``intervals_actual`` / ``intervals_estimated`` count known
  import intervals; ``n_known`` is their sum. Export intervals are known (and their
  energy taken) on the export register's own boundary values.
- ``energy_import_kwh = sum of e_i`` over known import intervals, None when there is
  none; ``energy_export_kwh`` likewise on the export register. Negative interval
  energies (a register decrease: tamper, replacement) are kept as they are in every
  sum and figure, not clipped: they are visible rather than silently hidden.
- Demand ``d_i = e_i * 3600 / iv`` (kW, import). ``peak_demand_kw = max d_i``;
  ``peak_demand_ns`` is ``b_i`` of the first interval reaching the maximum.
- ``base_load_kw``: the mean of the ``k`` lowest demands, ``k = ceil(base_load_share *
  n_known - 1e-9)`` bounded to ``1 .. n_known`` (the ``1e-9`` keeps a float product such
  as ``0.07 * 100 = 7.000000000000001`` from counting one interval too many).
- ``night_share``: the sum of ``e_i`` of known import intervals whose start ``b_i`` has a
  local wall-clock time in ``[night_start, night_end)`` (wrapping midnight when
  ``night_start > night_end``; empty when equal), divided by ``energy_import_kwh``; None
  when that is None or ``<= 0``. Wall-clock times are compared as seconds since 00:00,
  so both instants of a repeated fall-back hour count.
- ``load_factor = (energy_import_kwh / (n_known * iv / 3600)) / peak_demand_kw``: mean
  demand of the known intervals over the peak; None when there is no known interval or
  the peak is ``<= 0``.
- ``completeness = intervals_actual / intervals`` (0 for a day without intervals).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from operator import itemgetter
from typing import Final, Literal, NamedTuple
from zoneinfo import ZoneInfo

from meter_gateway.gateway.vee.localday import NS, grid_with_wall

__all__ = ["DailyFigures", "DaySample", "daily_fields", "daily_figures"]

# Guard against a float product landing just above an integer (see base_load_kw).
_CEIL_EPS = 1e-9


class DaySample(NamedTuple):
    """A register sample, actual or estimated, as the daily figures consume it."""

    ts_ns: int
    imp: float | None
    exp: float | None
    estimated: bool


@dataclass(frozen=True, slots=True)
class DailyFigures:
    """The characteristics of one meter's local day (definitions: module docstring)."""

    day: date
    start_ns: int  # local midnight (UTC ns)
    intervals: int  # expected intervals of the day (96 / 92 / 100 at 900 s)
    intervals_actual: int
    intervals_estimated: int
    energy_import_kwh: float | None
    energy_export_kwh: float | None
    peak_demand_kw: float | None
    peak_demand_ns: int | None  # start of the peak interval
    base_load_kw: float | None
    night_share: float | None  # 0..1
    load_factor: float | None  # 0..1
    completeness: float  # intervals_actual / intervals


_TS = itemgetter(0)
# Field positions in DaySample; Final, so that indexing a sample with them has the
# field's own type.
_IMP: Final = 1
_EXP: Final = 2
_EST: Final = 3


def _boundary_values(
    win: Sequence[DaySample], grid: Sequence[int], reg: Literal[1, 2], iv_ns: int
) -> tuple[list[float | None], list[bool]]:
    """The register at every boundary (None: unknown) and whether it is estimated.

    One merge walk over the boundaries and the samples (both sorted); the scans for the
    neighbours stop one interval away, beyond which no interpolation is allowed.
    """
    vals: list[float | None] = []
    ests: list[bool] = []
    n = len(win)
    j = 0
    for b in grid:
        while j < n and win[j][0] < b:
            j += 1
        exact = j < n and win[j][0] == b
        if exact and win[j][reg] is not None:
            vals.append(win[j][reg])
            ests.append(win[j][_EST])
            continue
        before: DaySample | None = None
        k = j - 1
        while k >= 0 and win[k][0] >= b - iv_ns:
            if win[k][reg] is not None:
                before = win[k]
                break
            k -= 1
        after: DaySample | None = None
        if before is not None:
            k = j + 1 if exact else j
            limit = before[0] + iv_ns
            while k < n and win[k][0] <= limit:
                if win[k][reg] is not None:
                    after = win[k]
                    break
                k += 1
        if before is None or after is None:
            vals.append(None)
            ests.append(False)
            continue
        vb, va = before[reg], after[reg]
        assert vb is not None
        assert va is not None
        vals.append(vb + (va - vb) * (b - before[0]) / (after[0] - before[0]))
        ests.append(before[_EST] or after[_EST])
    return vals, ests


def _in_night(wall_s: int, night_from: float, night_to: float) -> bool:
    if night_from < night_to:
        return night_from <= wall_s < night_to
    if night_from > night_to:  # wraps midnight, e.g. 22:00-06:00
        return wall_s >= night_from or wall_s < night_to
    return False  # equal bounds: an empty window


def _seconds(t: time) -> float:
    return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6


def daily_figures(
    day: date,
    tz: ZoneInfo,
    samples: Sequence[DaySample],
    *,
    interval_s: int,
    night_start: time,
    night_end: time,
    base_load_share: float,
) -> DailyFigures:
    """The daily figures of `day` from one meter's samples (definitions: module docstring).

    `samples`: actual and estimated, sorted by ts with unique ts; they may extend beyond
    the day on both sides (only those within one interval of it are looked at).
    """
    grid, walls = grid_with_wall(day, tz, interval_s)
    iv_ns = interval_s * NS
    n_iv = len(grid) - 1
    lo = bisect_left(samples, grid[0] - iv_ns, key=_TS)
    hi = bisect_right(samples, grid[-1] + iv_ns, key=_TS)
    win = samples[lo:hi]

    imp, imp_est = _boundary_values(win, grid, _IMP, iv_ns)
    exp, _ = _boundary_values(win, grid, _EXP, iv_ns)

    night_from, night_to = _seconds(night_start), _seconds(night_end)
    energies: list[float] = []
    n_actual = n_est = 0
    night: list[float] = []
    peak: float | None = None
    peak_ns: int | None = None
    exp_energies: list[float] = []
    for i in range(n_iv):
        x0, x1 = exp[i], exp[i + 1]
        if x0 is not None and x1 is not None:
            exp_energies.append(x1 - x0)
        r0, r1 = imp[i], imp[i + 1]
        if r0 is None or r1 is None:
            continue
        e = r1 - r0
        energies.append(e)
        if imp_est[i] or imp_est[i + 1]:
            n_est += 1
        else:
            n_actual += 1
        if peak is None or e > peak:  # strict: the first maximum wins
            peak, peak_ns = e, grid[i]
        if _in_night(walls[i], night_from, night_to):
            night.append(e)

    to_kw = 3600 / interval_s
    n_known = len(energies)
    energy_imp = math.fsum(energies) if energies else None
    energy_exp = math.fsum(exp_energies) if exp_energies else None
    peak_kw = None if peak is None else peak * to_kw
    base_kw: float | None = None
    night_share: float | None = None
    load_factor: float | None = None
    if n_known:
        k = min(max(math.ceil(base_load_share * n_known - _CEIL_EPS), 1), n_known)
        base_kw = math.fsum(sorted(energies)[:k]) / k * to_kw
        assert energy_imp is not None
        assert peak_kw is not None
        if energy_imp > 0:
            night_share = math.fsum(night) / energy_imp
        if peak_kw > 0:
            load_factor = (energy_imp / (n_known * interval_s / 3600)) / peak_kw
    return DailyFigures(
        day=day,
        start_ns=grid[0],
        intervals=n_iv,
        intervals_actual=n_actual,
        intervals_estimated=n_est,
        energy_import_kwh=energy_imp,
        energy_export_kwh=energy_exp,
        peak_demand_kw=peak_kw,
        peak_demand_ns=peak_ns,
        base_load_kw=base_kw,
        night_share=night_share,
        load_factor=load_factor,
        completeness=n_actual / n_iv if n_iv else 0.0,
    )


def daily_fields(fig: DailyFigures, tz: ZoneInfo) -> dict[str, object]:
    """The fields of the `meter_daily` point; None figures are left out.

    `peak_demand_time` is the local RFC 3339 time with its offset, so a reader sees the
    site's clock (e.g. ``2026-03-29T18:45:00+02:00``).
    """
    fields: dict[str, object] = {"date": fig.day.isoformat()}
    for key, value in (
        ("energy_import_kwh", fig.energy_import_kwh),
        ("energy_export_kwh", fig.energy_export_kwh),
        ("peak_demand_kw", fig.peak_demand_kw),
    ):
        if value is not None:
            fields[key] = float(value)
    if fig.peak_demand_ns is not None:
        sec, frac = divmod(fig.peak_demand_ns, NS)
        local = datetime.fromtimestamp(sec, tz).replace(microsecond=frac // 1000)
        fields["peak_demand_time"] = local.isoformat()
    for key, value in (
        ("base_load_kw", fig.base_load_kw),
        ("night_share", fig.night_share),
        ("load_factor", fig.load_factor),
    ):
        if value is not None:
            fields[key] = float(value)
    fields["completeness"] = float(fig.completeness)
    fields["intervals"] = int(fig.intervals)
    fields["intervals_actual"] = int(fig.intervals_actual)
    fields["intervals_estimated"] = int(fig.intervals_estimated)
    return fields
