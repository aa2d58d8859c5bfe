"""VEE in the running gateway: samples in, estimates and daily figures out.

    pipeline (each stored reading) -> `reading` -> interval store (a file per local day)
    clock -> `plan` (which days) -> `work` (estimates, figures; in a thread) -> `commit`
          -> lines into the spool: `meter_reading` estimates, `meter_daily` points

A local day of `gateway.timezone` is computed once it has ended and `daily.settle_s`
has passed (concentrators back-fill after midnight), then again for the meters whose
late samples touched it: in the day, within an interval of its midnights, or a silent
meter's return that completes it. Which meters is kept in memory until the next
computation; after a restart a day whose file's size differs from the size it had when
last computed is recomputed whole (that survives any crash without a dirty list). A
meter whose gap spans several days is recomputed on each of them when one changes.

Estimates are written on the meter's own series (same tags as its readings), so a
late actual at the same time is the same point and replaces it: actual always wins,
nothing is stored twice. The replacing actual also gets `estimation_method=""` so no
method is left on an actual reading. Estimates are recomputed, never accumulated: a
gap that late data narrows gets fewer estimates, and the slots now actual hold the
actual values.

One module of about 670 lines: the running service's tasks (taking samples, the
daily plan, estimates and their replacement by late actuals) share the interval store
and its day bookkeeping, and a crash at any point must leave them consistent with each
other; the computations themselves are in `estimate.py` and `daily.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time as _time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any, TypedDict
from zoneinfo import ZoneInfo

import orjson

from meter_gateway.config.schema import Config
from meter_gateway.gateway.reading import Reading
from meter_gateway.gateway.vee.daily import DailyFigures, DaySample, daily_fields, daily_figures
from meter_gateway.gateway.vee.estimate import Estimate, Sample, estimate_gaps
from meter_gateway.gateway.vee.localday import day_bounds, day_of
from meter_gateway.gateway.vee.store import IntervalStore, day_range
from meter_gateway.storage.lineprotocol import encode_point

__all__ = ["DailyStatus", "VeeService"]

log = logging.getLogger("meter_gateway.vee")

NS = 1_000_000_000
_DAY_NS = 86_400 * NS


class DailyStatus(TypedDict):
    """`VeeService.status()`: the daily figures and estimates, for the status page and
    the metrics. The counters are `VeeService.stats`'."""

    timezone: str
    estimation: bool  # estimation.enabled
    daily: bool  # daily.enabled
    meters: int
    closed_through: str | None  # the last local day computed at its close (ISO date)
    days_computed: float
    meter_days: float
    estimates_written: float
    estimates_replaced: float
    estimates_standing: float
    last_compute_s: float
    store: str  # the interval store's folder
    store_problem: str | None  # why the interval store cannot be written, while it cannot
    samples_dropped: int


class _Meter:
    """What the hot path keeps per meter: its last sample, and whether it is on file."""

    __slots__ = ("cell", "exp", "imp", "last_ts", "n", "source", "written")

    def __init__(self, n: int, source: str) -> None:
        self.n = n
        self.source = source
        self.last_ts = 0
        self.imp: float | None = None
        self.exp: float | None = None
        self.cell = -1  # the grid interval of last_ts
        self.written = True


@dataclass
class Job:
    """Days to compute, planned on the event loop, worked in a thread."""

    now_ns: int
    close: list[date]  # days that end now (first computation)
    # closed days whose files changed -> the meters whose samples did (None: any may have,
    # e.g. after a restart: the whole day)
    dirty: dict[date, set[int] | None]
    sizes: dict[date, int]  # file sizes when planned: a day is clean at these
    closed_through: date


@dataclass
class Result:
    lines: list[str] = field(default_factory=list)
    # (meter, time, line) of each estimate: the commit drops those an actual overtook
    estimates_out: list[tuple[int, int, str]] = field(default_factory=list)
    days: int = 0
    meter_days: int = 0
    estimates: int = 0
    seconds: float = 0.0


class VeeService:
    """Estimation and daily characteristics of every meter's registers."""

    def __init__(
        self,
        config: Config,
        topology: Mapping[str, Any],
        *,
        folder: Path,
        add_line: Callable[[str], object],
        prefix: Callable[[str, str], str],
        precision_divisor: int,
    ) -> None:
        self.config = config
        est, daily = config.estimation, config.daily
        self.estimate = est.enabled
        self.daily = daily.enabled
        self.tz = ZoneInfo(config.gateway.timezone)
        self.interval_s = est.interval_s
        self._interval_ns = est.interval_s * NS
        self._max_linear_s = est.max_linear_gap_h * 3600
        self._max_gap_s = est.max_gap_days * 86_400
        # Days read around a computed day: like days (a week back, Tue/Wed/Thu a few
        # more) and both ends of the longest gap estimated.
        self._reach = max(8, math.ceil(est.max_gap_days) + 1)
        self._keep_days = math.ceil(config.validation.max_age_s / 86_400) + self._reach + 1
        self._night = (_hhmm(daily.night_start), _hhmm(daily.night_end))
        self._base_share = daily.base_load_share
        self._settle_ns = int(daily.settle_s * NS)
        self._every_ns = int(daily.recompute_every_s * NS)
        # The grid's phase: local offsets are whole quarter hours (a few zones' half
        # hours), so one offset modulo the interval holds for every instant.
        offset = datetime.now(self.tz).utcoffset() or timedelta(0)
        self._phase = int(offset.total_seconds()) % self.interval_s
        self._topology = topology
        self._add_line = add_line
        self._prefix = prefix
        self._div = precision_divisor
        self.store = IntervalStore(folder, self.tz)
        self._meters: dict[str, _Meter] = {}
        self._state_path = folder / "state.json"
        self._closed: date | None = None
        self._computed: dict[date, int] = {}  # day -> its file size when last computed
        # meter -> times of the estimates standing in the database (an actual at one of
        # them replaces it); bounded by the days a late reading can still reach
        self._slots: dict[int, set[int]] = {}
        # (meter, time) of samples taken while a computation is out: their estimates,
        # computed without them, must not be written after them
        self._inflight: set[tuple[int, int]] | None = None
        self._closed_end_ns = 0  # where the last closed day ends (the hot path compares)
        # closed day -> meters with new samples in it since the last plan (in memory
        # only: after a restart a grown day file is computed whole)
        self._dirty: dict[date, set[int]] = {}
        self._next_ns = 0
        self.stats: dict[str, float] = {
            "days_computed": 0,
            "meter_days": 0,
            "estimates_written": 0,
            "estimates_replaced": 0,
            "estimates_standing": 0,
            "last_compute_s": 0.0,
        }
        self._load_state()

    @property
    def closed_through(self) -> date | None:
        """The last local day computed at its close (None before the first plan)."""
        return self._closed

    @closed_through.setter
    def closed_through(self, day: date | None) -> None:
        self._closed = day
        self._closed_end_ns = day_bounds(day, self.tz)[1] if day is not None else 0

    # -- the hot path ------------------------------------------------------------------------
    def reading(self, r: Reading) -> None:
        """A stored reading: its registers are kept when the figures may need them."""
        values = r.values
        imp = values.get("energy_import_kwh")
        exp = values.get("energy_export_kwh")
        if imp is None and exp is None:
            return
        m = self._meters.get(r.meter_id)
        if m is None or m.source != r.source:
            m = self._meter(r.meter_id, r.source)
        ts = r.ts_ns
        if ts > m.last_ts:
            cell = (ts // NS + self._phase) // self.interval_s
            if cell != m.cell:
                # A grid boundary lies between the last sample and this one: both are
                # what interpolating that boundary needs; the samples between are not.
                if not m.written and m.last_ts:
                    self.store.append(m.n, m.last_ts, m.imp, m.exp)
                d = self.store.append(m.n, ts, imp, exp)
                m.written = True
                m.cell = cell
                if m.last_ts < self._closed_end_ns and self.closed_through is not None:
                    # The meter's last sample is in a closed day (it was silent as the day
                    # closed): the days from there to this one lacked what comes now.
                    self._returned(m, d, ts)
            else:
                m.written = False
            m.last_ts, m.imp, m.exp = ts, imp, exp
        else:
            # Late (back-fill) or a corrected value: always kept.
            d = self.store.append(m.n, ts, imp, exp)
            if ts < self._closed_end_ns + self._interval_ns:
                self._mark(d, m.n, ts)  # in a closed day, or bounding the last one
            if ts == m.last_ts:
                m.imp, m.exp, m.written = imp, exp, True
        if self._inflight is not None:
            self._inflight.add((m.n, ts))
        # Judged by time, not by arrival: after a restart a back-fill may look in order.
        if self._slots:
            slots = self._slots.get(m.n)
            if slots and ts in slots:
                # The same point (same series and time) replaces the estimate in the
                # database; the method it carried goes too.
                slots.discard(ts)
                line = self._prefix(r.meter_id, r.source) + 'estimation_method="" '
                self._add_line(line + str(ts // self._div))
                self.stats["estimates_replaced"] += 1

    def _meter(self, meter_id: str, source: str) -> _Meter:
        n = self.store.meter(meter_id, source)
        old = self._meters.get(meter_id)
        m = _Meter(n, source)
        if old is not None:
            m.last_ts, m.imp, m.exp, m.cell, m.written = (
                old.last_ts,
                old.imp,
                old.exp,
                old.cell,
                old.written,
            )
        self._meters[meter_id] = m
        return m

    # -- when -------------------------------------------------------------------------------
    def due(self, now_ns: int) -> bool:
        return now_ns >= self._next_ns

    def _returned(self, m: _Meter, d: date, ts: int) -> None:
        closed = self.closed_through
        assert closed is not None
        if not m.last_ts:
            if d <= closed:
                self._mark(d, m.n, ts)  # a first sample (this run) for a closed day
            return
        lo, _ = self.store.bounds(d)
        if m.last_ts >= lo:  # the same day (back-filled history arrives so): cheap
            self._mark(d, m.n, ts)
            return
        for day in day_range(day_of(m.last_ts, self.tz), min(d, closed)):
            self._mark(day, m.n, ts)

    def _mark(self, day: date, n: int, ts: int) -> None:
        """A closed day got a sample of meter n: that meter's day is computed again, and
        the neighbouring day too when the sample is within an interval of midnight (a
        day's first and last boundaries come from the samples around them)."""
        closed = self.closed_through
        if closed is None:
            return
        days = [day]
        start, end = self.store.bounds(day)
        if ts - start <= self._interval_ns:
            days.append(day - timedelta(days=1))
        if end - ts <= self._interval_ns:
            days.append(day + timedelta(days=1))
        for d in days:
            if d > closed:
                continue  # computed when it closes, with what it has then
            meters = self._dirty.get(d)
            if meters is None:
                meters = self._dirty[d] = set()
            meters.add(n)

    def plan_flush(self) -> None:
        """Every meter's last sample on file too (a silent meter's last one counts)."""
        closed = self.closed_through
        for m in self._meters.values():
            if not m.written and m.last_ts:
                d = self.store.append(m.n, m.last_ts, m.imp, m.exp)
                m.written = True
                if closed is not None and d <= closed:
                    self._mark(d, m.n, m.last_ts)
        self.store.flush()

    def plan(self, now_ns: int) -> Job | None:
        """On the loop: which days to compute now; None when none."""
        self._next_ns = now_ns + self._every_ns
        self.plan_flush()
        today = day_of(now_ns, self.tz)
        through = self.start_clock(now_ns)
        close = []
        d = through + timedelta(days=1)
        while day_bounds(d, self.tz)[1] + self._settle_ns <= now_ns:
            close.append(d)
            d += timedelta(days=1)
        closed_through = close[-1] if close else through
        oldest = today - timedelta(days=self._keep_days)
        marked, self._dirty = self._dirty, {}
        dirty = {
            day: marked.get(day)
            for day in self.store.days()
            if oldest <= day <= through and self.store.size(day) != self._computed.get(day)
        }
        for day, meters in marked.items():  # a neighbour's sample changed these
            if day not in dirty and oldest <= day <= through:
                dirty[day] = meters
        if not close and not dirty:
            return None
        sizes = {day: self.store.size(day) for day in [*close, *dirty]}
        self._inflight = set()
        return Job(now_ns, close, dirty, sizes, closed_through)

    # -- the work (a thread may run it: it reads files and the job only) ----------------------
    def work(self, job: Job) -> Result:
        t0 = _time.monotonic()
        res = Result()
        reach = timedelta(days=self._reach)
        todo: dict[date, set[int] | None] = dict.fromkeys(job.close)
        todo.update(job.dirty)
        win = _Window(self.store, set(self.store.days()))
        win.load({d for day in todo for d in day_range(day - reach, day + reach)})
        done: set[tuple[date, int]] = set()
        follow: dict[date, set[int]] = {}
        for day in sorted(todo):
            meters = todo[day]
            if meters is None:
                meters = win.meters_around(day, reach)
            self._day(day, meters, win, res, done, follow, job.closed_through)
        # Gaps spanning closed days outside this job: those days again, for those meters.
        for day, meters in sorted(follow.items()):
            win.load(set(day_range(day - reach, day + reach)))
            self._day(day, meters, win, res, done, None, job.closed_through)
        res.days = len(todo)
        res.seconds = _time.monotonic() - t0
        return res

    def _day(
        self,
        day: date,
        meters: set[int],
        win: _Window,
        res: Result,
        done: set[tuple[date, int]],
        follow: dict[date, set[int]] | None,
        closed_through: date,
    ) -> None:
        start, end = day_bounds(day, self.tz)
        store = self.store
        for n in sorted(meters):
            if (day, n) in done:
                continue
            done.add((day, n))
            got = self._meter_day(day, n, win)
            if got is None:
                continue
            ts, estimates, fig = got
            meter_id, source = store.meter_ids[n], store.sources[n]
            written = [e for e in estimates if e.ts_ns < end]
            if written:
                prefix = self._prefix(meter_id, source)
                for e in written:
                    res.estimates_out.append((n, e.ts_ns, prefix + self._estimate_fields(e)))
            # Gaps touching the day: other closed days they span are recomputed for
            # this meter (a gap that ended today changes yesterday's estimates).
            lo, hi = bisect_left(ts, start), bisect_right(ts, end)
            for i in range(max(lo - 1, 0), min(hi + 1, len(ts) - 1)):
                a, b = ts[i], ts[i + 1]
                if b - a <= self._interval_ns or b <= start or a >= end:
                    continue
                if follow is not None and b - a <= self._max_gap_s * NS:
                    for other in day_range(day_of(a, self.tz), day_of(b, self.tz)):
                        if other != day and other <= closed_through:
                            follow.setdefault(other, set()).add(n)
            if fig is not None:
                res.lines.append(self._daily_line(day, meter_id, fig, start))
                res.meter_days += 1

    def _meter_day(
        self, day: date, n: int, win: _Window
    ) -> tuple[list[int], list[Estimate], DailyFigures | None] | None:
        """One meter's day: its sample times, the estimates of its gaps, its figures
        (None when daily figures are off); None when it has no sample near the day."""
        start, end = day_bounds(day, self.tz)
        actual, ts = win.series(n)
        if not actual or ts[0] >= end:
            return None  # no sample, or none before the day ended: not reporting yet
        estimates: list[Estimate] = []
        if self.estimate:
            estimates = estimate_gaps(
                actual,
                start,
                end + 1,  # the day's closing boundary too: the figures need it
                tz=self.tz,
                interval_s=self.interval_s,
                max_linear_gap_s=self._max_linear_s,
                max_gap_s=self._max_gap_s,
            )
        if not self.daily:
            return ts, estimates, None
        # The samples around the day: the last before it and the first after it bound
        # its first and last intervals.
        lo = max(bisect_left(ts, start) - 1, 0)
        hi = bisect_right(ts, end) + 1
        samples = [DaySample(s.ts_ns, s.imp, s.exp, False) for s in actual[lo:hi]]
        if estimates:
            samples.extend(DaySample(e.ts_ns, e.imp, e.exp, True) for e in estimates)
            samples.sort(key=lambda s: s.ts_ns)
        fig = daily_figures(
            day,
            self.tz,
            samples,
            interval_s=self.interval_s,
            night_start=self._night[0],
            night_end=self._night[1],
            base_load_share=self._base_share,
        )
        return ts, estimates, fig

    def figures(self, days: list[date]) -> list[tuple[str, DailyFigures]]:
        """Every meter's figures of those days as they stand now, also of a day not over
        yet (what `meter-gateway demo` sums up); nothing is written."""
        self.plan_flush()
        reach = timedelta(days=self._reach)
        win = _Window(self.store, set(self.store.days()))
        win.load({d for day in days for d in day_range(day - reach, day + reach)})
        out = []
        for day in days:
            for n in sorted(win.meters_around(day, reach)):
                got = self._meter_day(day, n, win)
                if got is not None and got[2] is not None:
                    out.append((self.store.meter_ids[n], got[2]))
        return out

    def _estimate_fields(self, e: Estimate) -> str:
        parts = []
        if e.imp is not None:
            parts.append(f"energy_import_kwh={e.imp!r}")
        if e.exp is not None:
            parts.append(f"energy_export_kwh={e.exp!r}")
        parts.append(f'quality="estimated",estimation_method="{e.method}"')
        return ",".join(parts) + f" {e.ts_ns // self._div}"

    def _daily_line(self, day: date, meter_id: str, fig: DailyFigures, start: int) -> str:
        place = self._topology.get(meter_id)
        tags = {
            "meter_id": meter_id,
            "customer_id": getattr(place, "customer_id", None),
            "transformer_id": getattr(place, "transformer_id", None),
            "feeder_id": getattr(place, "feeder_id", None),
        }
        return encode_point("meter_daily", tags, daily_fields(fig, self.tz), start // self._div)

    # -- back on the loop ---------------------------------------------------------------------
    def commit(self, job: Job, res: Result) -> None:
        """Hand the lines to the spool; remember what is computed."""
        overtaken = self._inflight or set()
        self._inflight = None
        for n, ts, line in res.estimates_out:
            if (n, ts) in overtaken:
                continue  # its actual came while this was computed: actual wins
            self._add_line(line)
            self._slots.setdefault(n, set()).add(ts)
            res.estimates += 1
        for line in res.lines:
            self._add_line(line)
        for day, size in job.sizes.items():
            self._computed[day] = size
        self.closed_through = job.closed_through
        horizon = job.now_ns - self._keep_days * _DAY_NS
        for n, slots in list(self._slots.items()):
            old = {t for t in slots if t < horizon}
            if old:
                slots -= old
            if not slots:
                del self._slots[n]
        self.stats["estimates_standing"] = sum(len(s) for s in self._slots.values())
        oldest = day_of(job.now_ns, self.tz) - timedelta(days=self._keep_days)
        self._computed = {d: s for d, s in self._computed.items() if d >= oldest}
        self.store.prune(oldest)
        self._save_state()
        st = self.stats
        st["days_computed"] += res.days
        st["meter_days"] += res.meter_days
        st["estimates_written"] += res.estimates
        st["last_compute_s"] = res.seconds
        if res.days:
            log.info(
                "daily: computed %d day(s) (%s), %d meter-days, %d estimates, in %.2f s",
                res.days,
                ", ".join(d.isoformat() for d in sorted({*job.close, *job.dirty})[:5]),
                res.meter_days,
                res.estimates,
                res.seconds,
            )

    def compute(self, now_ns: int) -> Result | None:
        """Plan, work and commit in one go (replay: on the recording's clock)."""
        job = self.plan(now_ns)
        if job is None:
            return None
        res = self.work(job)
        self.commit(job, res)
        return res

    def start_clock(self, now_ns: int) -> date:
        """The first time the service learns what time it is: at a first start, days
        before it are computed only where data for them arrives. Returns
        `closed_through`, which is set from then on."""
        closed = self.closed_through
        if closed is None:
            closed = self.closed_through = day_of(now_ns, self.tz) - timedelta(days=1)
            self._save_state()
        return closed

    async def run(self, clock: Callable[[], int] = _time.time_ns, every_s: float = 1.0) -> None:
        """Live: records to the OS every second; days computed in a thread when due.

        The first computation comes `daily.recompute_every_s` after the start, not at
        it: a restart is not the moment to add a batch job to the replay of the spool.
        """
        now = clock()
        self.start_clock(now)
        self._next_ns = now + self._every_ns
        while True:
            await asyncio.sleep(every_s)
            self.store.flush()
            now = clock()
            if not self.due(now):
                continue
            job = self.plan(now)
            if job is None:
                continue
            try:
                res = await asyncio.to_thread(self.work, job)
            except Exception:  # a bug must not stop ingest; the day is tried again
                self._inflight = None
                log.exception("daily: computing %s failed", job.close or job.dirty)
                continue
            self.commit(job, res)

    def status(self) -> DailyStatus:
        """For the status page and the metrics."""
        st = self.stats
        return {
            "timezone": self.config.gateway.timezone,
            "estimation": self.estimate,
            "daily": self.daily,
            "meters": len(self._meters),
            "closed_through": self.closed_through.isoformat() if self.closed_through else None,
            "days_computed": st["days_computed"],
            "meter_days": st["meter_days"],
            "estimates_written": st["estimates_written"],
            "estimates_replaced": st["estimates_replaced"],
            "estimates_standing": st["estimates_standing"],
            "last_compute_s": st["last_compute_s"],
            "store": str(self.store.folder),
            "store_problem": self.store.problem,
            "samples_dropped": self.store.dropped,
        }

    def close(self) -> None:
        """On stop: every sample to the OS, the state saved."""
        self.store.close()
        self._save_state()

    # -- state --------------------------------------------------------------------------------
    def _load_state(self) -> None:
        try:
            raw = orjson.loads(self._state_path.read_bytes())
            if not isinstance(raw, dict):
                raise TypeError(f"a JSON object expected, not {type(raw).__name__}")
            ct = raw.get("closed_through")
            closed = date.fromisoformat(ct) if ct else None
            if closed is not None:
                day_bounds(closed, self.tz)  # a day this zone can end (not 9999-12-31)
            computed = {date.fromisoformat(d): int(s) for d, s in raw["computed"].items()}
            index = {m: i for i, m in enumerate(self.store.meter_ids)}
            slots = {
                index[m]: {int(t) for t in times}
                for m, times in raw.get("estimates", {}).items()
                if m in index
            }
        except FileNotFoundError:
            return
        except (
            orjson.JSONDecodeError,
            KeyError,
            TypeError,
            ValueError,
            AttributeError,
            OverflowError,
        ) as exc:
            # Derived state only: the days are computed again from their files.
            log.warning(
                "daily: %s unreadable (%s): closed days will be recomputed", self._state_path, exc
            )
            return
        self.closed_through, self._computed, self._slots = closed, computed, slots

    def _save_state(self) -> None:
        ids = self.store.meter_ids
        body = {
            "closed_through": self.closed_through.isoformat() if self.closed_through else None,
            "computed": {d.isoformat(): s for d, s in sorted(self._computed.items())},
            "estimates": {ids[n]: sorted(slots) for n, slots in self._slots.items() if slots},
        }
        # Derived state: a failed save is logged and retried at the next computation.
        tmp = self._state_path.with_name(f"state.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(orjson.dumps(body))
            os.replace(tmp, self._state_path)
        except OSError as exc:
            log.warning("daily: cannot save %s (%s)", self._state_path, exc.strerror or exc)
            with contextlib.suppress(OSError):
                tmp.unlink()


class _Window:
    """The day files one computation reads, and each meter's samples across them (built
    once per meter: its days are computed one after the other)."""

    def __init__(self, store: IntervalStore, files: set[date]) -> None:
        self._store = store
        self._files = files
        self.per_day: dict[date, Mapping[int, list[Sample]]] = {}
        self._series: dict[int, tuple[list[Sample], list[int]]] = {}

    def load(self, days: set[date]) -> None:
        new = sorted((days & self._files) - self.per_day.keys())
        for d in new:
            self.per_day[d] = self._store.day(d)
        if new:
            self._series.clear()  # more days: each meter's series is longer now

    def meters_around(self, day: date, reach: timedelta) -> set[int]:
        out: set[int] = set()
        for d in day_range(day - reach, day + reach):
            out.update(self.per_day.get(d, ()))
        return out

    def series(self, n: int) -> tuple[list[Sample], list[int]]:
        """Meter n's samples over every loaded day, sorted (days are disjoint in time)."""
        got = self._series.get(n)
        if got is None:
            actual: list[Sample] = []
            for d in sorted(self.per_day):
                actual.extend(self.per_day[d].get(n, ()))
            got = self._series[n] = (actual, [s.ts_ns for s in actual])
        return got


def _hhmm(text: str) -> dtime:
    h, m = text.split(":")
    return dtime(int(h), int(m))
