"""Consumption against each meter's own history: spikes, sustained high, sustained low,
zero.

Consumption is the interval delta of `energy_import_kwh` between a meter's newest
readings (never instantaneous power), as a rate in kW over the interval. Prosumers
(topology) are not judged: their import is net of their PV, the weather's doing.

Why it is built this way: a household's 15-minute energy is lumpy. A storage water
heater, a washing machine heating water, a tumble dryer, an oven and a hob each put an
interval at 2-4 kW; together 6-8 kW; every household does it at some hour, and one
week of history shows few of them. A slot's own spread cannot tell that apart from a
fault, so each condition is judged at the scale the question needs, against what this
meter does, not against a bell curve of its slot:

- **Expected**: per slot (72: day type Monday-Friday / Saturday / Sunday x hour of day,
  UTC) the running mean of the interval kW (gain 1/n for the first LEARN_SAMPLES samples,
  then fixed: older weeks fade) and its sample count, in one `array('f')`. A
  weekend slot with fewer than MIN_SLOT_SAMPLES samples is judged on that hour's weekday
  slot. The mean, not a clipped level: a day's expected energy must be the day's real
  average for the low test, and a spike's own interval is not learned.
- **Usual high**: the meter's fading maximum of its interval kW at any hour (half-life
  PEAK_HALF_LIFE_D days), so the busiest thing it does (every appliance at once, a car)
  is in it; a spike is judged against it.
- **Mean**: its mean kW over about the last two weeks (the scale of "a lot more").
- **Hours**: the last 24 hours by hour of day (consumption, expected, hours covered):
  the day-scale tests look at them once an hour.
- **Warm-up**: nothing is judged before `baseline_warmup_days` of learned intervals
  (data, not wall time) for that meter.

An interval of at most an hour (and no more than twice the meter's usual spacing) is
one sample of the slot at its midpoint: learned and judged. A longer one (a gap,
back-fill after a silence) goes into the hourly sums spread evenly; it is never a
spike, not learned, and breaks a high run. A register decrease (reset, replacement) is
no consumption: that delta is skipped. An interval across a power_outage or comms_loss
(open before its reading, or raised by it) is neither learned nor judged, and the runs
start again after it. A reading stamped before the last one (a clock set back) starts
the intervals again from it.

Events (meter subject, judged per interval in the readings' own time), each with
`details.score`: how far past its cut the consumption was (1.0 at the cut), so a
utility can set its own cut downstream:

- `consumption_spike` (minor): an interval above `spike_factor` x the meter's usual high
  (at least USUAL_HIGH_FLOOR_KW) and SPIKE_MIN_KW above its slot's expected: far above
  what this meter does at its busiest, not only at that hour. Raised at that interval (its
  start), cleared by the next interval below the cut, or superseded by a
  sustained_high_consumption when the burst stays. Value: the interval's kW.
- `sustained_high_consumption` (major): a run of intervals above their expected by at
  least the cut, max(HIGH_MIN_KW, `sustained_high_factor` x the meter's mean), going on
  while they stay half as far above, or while the meter stays HIGH_FLOOR_SHARE x the cut
  above its night floor (a run may also start there at half the cut): a load added on
  top of the household's own (appliance cycles and busy evenings come and go; a heater
  left on or an illegal load does not). Raised once the run has lasted
  `sustained_high_hours`, is on average above the cut, and holds more energy above the
  expected than RUN_MARGIN x the longest run of the meter's normal life (a fading maximum:
  a household with electric heating has hours of it every cold day). An interval counts
  at most up to the spike cut (a spike is its own event). From the run's start; cleared
  by an interval below its expected, or less than half the cut above it and no longer
  lifted off the floor.
- `zero_consumption` (major): the register still (< 0.5 Wh an interval) for
  `zero_consumption_hours` on a meter whose mean is at least ZERO_MIN_KW and whose
  expected over those hours is too (a fridge alone moves a register every few minutes).
  Cleared by the first interval with consumption.
- `sustained_low_consumption` (major): judged each hour on the last 24 hours (a day:
  `sustained_low_hours`, at most 24) against their expected: the day's consumption below
  `sustained_low_factor` x expected; the recent hours' too (those of the last half-day
  since the day's ratio fell below the clear level, at least LOW_MIN_RECENT_H) and the
  last hour's too (a household back from a weekend away is not); the
  meter's night floor gone (its second-quietest hour of the day below LOW_FLOOR_SHARE x
  its usual one); and use still coming and going in the recent hours (at least
  LOW_ACTIVE_SHARE of their energy above their quietest hour, or half of what is usual
  for the meter, or LOW_PATTERN_SHARE of what the expected has in those same hours: a
  business's opening hours are flat, and a bypass keeps them flat). A bypass or a
  tampered meter scales everything down, the fridge included, and the household still
  lives there; a quiet day keeps the floor; a household away keeps no pattern of use
  while its expected has one.
  Cleared when the day is back above (1 + factor) / 2 x expected. A meter in
  zero_consumption is not also low.

Why a run of intervals and not a CUSUM of the residual for sustained high: on CREST
households the two were compared on the same residuals (slack k = half the cut, the
threshold h a fading maximum of the meter's own normal-life excursions, times a margin):
the CUSUM merges a day's separate busy spells into one excursion, so its normal-life
maximum has a heavier tail, its threshold must sit higher, and a 1.5 kW added load
reaches it later: of the settings tried (k 0.3-0.6 of the cut, each interval clipped at
1.5-3 x the cut, margins 1.5-3), none without a false event in normal life had more
than half of the household faults in time, where the run has 90 %. A run that ends
when the household goes back to its own level keeps normal-life runs short; what broke
the runs of real faults was the residual of a quiet interval under a busy expected (a
household at 0.4 kW at 19:00 against an evening mean of 2 kW reads only 0.1 kW above
with 1.5 kW added). The night floor tells those apart: an added load keeps the meter
1.5 kW above its floor at every interval, a household's own evening falls back to it
between its cycles. A fixed window of energy, and a raised floor judged alone (without
the expected), were tried too: heating households reach both on cold days. What is
left late is a household whose longest usual run (electric heating) holds as much
energy as six hours of the fault: within six hours the two cannot be told apart.
RUN_MARGIN is 1.9: on those fleets the largest normal-life run short of the two false
events held 1.72 x its meter's usual one (a heating household), so 1.7 raises it and
1.8 does not; 1.9 keeps some room and still has the faults of the evening in time.

Why the pattern of the expected for sustained low: "use still comes and goes" keeps a
household away (a flat line of fridge and standby) from reading as a bypass, but a
business whose opening hours are flat showed no coming and going until it closed, so a
bypass that began at night waited for the next evening. Compared with what the same
hours usually do, a flat afternoon is as usual for the shop and still not for a
household that has left.

One module of about 660 lines, on purpose: it is compiled with mypyc with the
engine, and a meter's baseline, its hourly profile and the tests on them share
per-meter state that the compiled build keeps in one struct.
"""

from __future__ import annotations

from array import array
from typing import Final

from meter_gateway.config.schema import EventsConfig
from meter_gateway.gateway.events.detectors import SEVERITY, Book
from meter_gateway.gateway.events.state import (
    BASE_SLOTS,
    CONS_HIGH,
    CONS_LOW,
    CONS_ZERO,
    SPIKE,
    MeterState,
)

__all__ = [
    "HIGH_FLOOR_SHARE",
    "HIGH_MIN_KW",
    "LEARN_SAMPLES",
    "LOW_ACTIVE_SHARE",
    "LOW_FLOOR_SHARE",
    "LOW_MIN_RECENT_H",
    "LOW_PATTERN_SHARE",
    "MIN_SLOT_SAMPLES",
    "N_SLOTS",
    "PEAK_HALF_LIFE_D",
    "RUN_MARGIN",
    "SPIKE_MIN_KW",
    "USUAL_HIGH_FLOOR_KW",
    "ZERO_MIN_KW",
    "Consumption",
    "slot_of",
]

# The engine's Book takes severities from this table; the consumption types are
# registered here, next to their detector.
SEVERITY.update(
    {
        "consumption_spike": "minor",
        "sustained_high_consumption": "major",
        "sustained_low_consumption": "major",
        "zero_consumption": "major",
    }
)

_NS: Final = 1_000_000_000
_HOUR_NS: Final = 3600 * _NS
N_SLOTS: Final = BASE_SLOTS
_CNT: Final = N_SLOTS  # offset into the per-meter array: level, then count
# Offsets into the hourly sums: consumption, expected (kWh), hours covered.
_H_EXP: Final = 24
_H_COV: Final = 48
# Hour of the week (Monday 00:00 UTC = 0) -> slot. Epoch hour 0 was a Thursday.
_SLOT_OF_HOW: Final = tuple((0 if d < 5 else d - 4) * 24 + h for d in range(7) for h in range(24))
_HOW_OFFSET: Final = 3 * 24

LEARN_SAMPLES: Final = 48  # gain 1/n up to here, then fixed: about 2.5 weeks of a weekday slot
MIN_SLOT_SAMPLES: Final = 4  # a slot with fewer is judged on its hour's weekday slot
SPIKE_MIN_KW: Final = 1.0  # ... and at least this much above the slot's expected
PEAK_HALF_LIFE_D: Final = 28.0
# The least usual high a meter is judged by: any household can run a kettle and an oven
# at once (a household away for its whole warm-up learned only its standby).
USUAL_HIGH_FLOOR_KW: Final = 2.5
_PEAK_FADE_PER_H: Final = 0.6931 / (PEAK_HALF_LIFE_D * 24)
HIGH_MIN_KW: Final = 0.9  # an added load of at least this much (a small heater)
RUN_MARGIN: Final = 1.9  # ... and more energy above the expected than its longest usual run
HIGH_FLOOR_SHARE: Final = 1.5  # a run goes on while this x its cut above the night floor
_MEAN_SPAN_H: Final = 14 * 24.0  # the mean's memory: about two weeks
ZERO_MIN_KW: Final = 0.03  # "normally consumes": at least 30 W on average
LOW_FLOOR_SHARE: Final = 0.4  # the night floor below half its usual
LOW_ACTIVE_SHARE: Final = 0.4  # at least 40 % of the recent energy above its floor
# ... or at least this share of what its expected's hours have above their quietest
LOW_PATTERN_SHARE: Final = 0.5
LOW_MIN_RECENT_H: Final = 4  # ... and at least this many hours of the low spell
_LOW_MIN_COVER_H: Final = 20.0  # a day is judged with at least this many hours of data
_LOW_FLOOR_RANK: Final = 1  # the floor: the second-quietest hour (one odd hour is not it)
_FLOOR_DAYS: Final = 7.0  # the usual floor: a running mean of about a week of days
_ZERO_KWH: Final = 0.0005  # below half a watt-hour the register did not move
_MAX_SPREAD_NS: Final = 24 * _HOUR_NS  # a longer silence starts the hourly sums afresh
_ONE_SLOT_NS: Final = _HOUR_NS + 60 * _NS  # an "hourly" interval may be a minute long

_JUDGED: Final = CONS_HIGH | CONS_LOW | CONS_ZERO


def slot_of(ts_ns: int) -> int:
    """The baseline slot (day type x hour, UTC) of a moment."""
    return _SLOT_OF_HOW[(ts_ns // _HOUR_NS + _HOW_OFFSET) % 168]


def _level(base: array[float], slot: int) -> int:
    """The slot to judge by (its weekday slot while a weekend one is thin); -1: none."""
    if base[_CNT + slot] >= MIN_SLOT_SAMPLES:
        return slot
    slot %= 24
    return slot if base[_CNT + slot] >= MIN_SLOT_SAMPLES else -1


class Consumption:
    def __init__(self, config: EventsConfig, book: Book) -> None:
        self._book = book
        self._warmup_h = config.baseline_warmup_days * 24
        self._spike = config.spike_factor
        self._high_share = config.sustained_high_factor
        self._high_ns = int(config.sustained_high_hours * _HOUR_NS)
        self._low = config.sustained_low_factor
        self._low_clear = (1 + config.sustained_low_factor) / 2
        self._low_window = max(2, min(24, round(config.sustained_low_hours)))
        self._zero_ns = int(config.zero_consumption_hours * _HOUR_NS)

    def reading(self, st: MeterState, ts: int, imp: float, out: int, now_ns: int) -> None:
        """A newest reading with its import register; `out`: the meter was or is in a
        power_outage / comms_loss. Call before the register is taken as the last one."""
        a = st.imp_ts
        st.imp_ts = ts
        kwh = imp - st.last_import  # NaN for a meter's first register value
        if not a or not kwh >= 0 or ts <= a:
            # The first value, a decrease, or a clock set back: no interval to judge.
            if a and ts <= a:
                st.high_since = st.zero_since = 0
            return
        dur_ns = ts - a
        if out:
            # Power or link was gone during this interval: nothing to learn or judge;
            # the runs count again from here.
            st.high_since = st.zero_since = 0
            return
        base = st.base
        if base is None:
            base = st.base = array("f", bytes(4 * 2 * N_SLOTS))
        sp_s = st.ts_spacing_s
        if dur_ns > _ONE_SLOT_NS or (dur_ns > 2 * sp_s * _NS and sp_s):
            self._spread(st, base, a, ts, kwh, now_ns)
            return
        # One slot: judge it, then learn it.
        dur_h = dur_ns / _HOUR_NS
        x = kwh / dur_h
        slot = _SLOT_OF_HOW[((a + ts) // 2 // _HOUR_NS + _HOW_OFFSET) % 168]
        j = slot if base[_CNT + slot] >= MIN_SLOT_SAMPLES else _level(base, slot % 24)
        learn = True
        if j >= 0:
            e = base[j]  # the expected kW
            self._hour(st, a, ts, kwh, e * dur_h, now_ns)
            judged = st.learned_h >= self._warmup_h
            # A run counts an interval at most up to the spike cut: a spike is its own
            # event, not hours of a sustained high.
            top = self._spike * (
                st.peak_kw if st.peak_kw > USUAL_HIGH_FLOOR_KW else USUAL_HIGH_FLOOR_KW
            )
            xc = x if x < top else top
            self._high(st, a, ts, xc, xc - e, dur_h, now_ns, judged)
            if judged:
                learn = self._judge(st, a, x, e, kwh, dur_h, now_ns, ts)
        elif st.hours is not None:
            st.low_hour = 0  # a slot not known yet: the day's sums start again later
        # Learn: the slot's running mean; the usual high;
        # the mean. A spike's own interval teaches none of them, nor does an interval
        # while a sustained condition is open (a heater left on for days is not what
        # the meter is expected to do afterwards; a bypass stays found).
        if st.open & _JUDGED:
            st.learned_h += dur_h
            return
        if learn:
            n = base[_CNT + slot]
            if n < LEARN_SAMPLES:
                n += 1
                base[_CNT + slot] = n
            lvl = base[slot]
            d = x - lvl
            base[slot] = lvl + d / n
            peak = st.peak_kw - st.peak_kw * _PEAK_FADE_PER_H * dur_h
            if x > peak:
                # A new high above the spike cut (unjudged in the warm-up) raises the
                # usual high to the cut only: one fault does not hide the next.
                cut = self._spike * peak
                peak = x if x <= cut or peak <= 0.0 else cut
            st.peak_kw = peak
            st.high_usual -= st.high_usual * _PEAK_FADE_PER_H * dur_h
        span = st.learned_h + dur_h
        if span > _MEAN_SPAN_H:
            span = _MEAN_SPAN_H
        st.mean_kw += (x - st.mean_kw) * dur_h / span
        st.learned_h += dur_h

    # -- judging --------------------------------------------------------------------------------

    def _judge(
        self,
        st: MeterState,
        a: int,
        x: float,
        e: float,
        kwh: float,
        dur_h: float,
        now_ns: int,
        ts: int,
    ) -> bool:
        """One interval [a, ts] of `x` kW against its expected `e` kW; False when it is a
        spike (not to be learned)."""
        book = self._book
        learn = True
        # consumption_spike: above its usual high and far above this slot.
        usual = st.peak_kw
        if usual < USUAL_HIGH_FLOOR_KW:
            usual = USUAL_HIGH_FLOOR_KW
        cut = self._spike * usual
        if st.open & SPIKE:
            if x <= cut:
                book.clear_meter(
                    st, "consumption_spike", a, now_ns, f"{st.meter_id}: consumption back to normal"
                )
            else:
                learn = False
        elif x > cut and st.peak_kw > 0.0 and x - e > SPIKE_MIN_KW and not st.open & CONS_HIGH:
            learn = False
            self._spike_raised(st, a, x, cut, now_ns)
        # zero_consumption: the register still.
        if kwh < _ZERO_KWH:
            self._still(st, a, ts, e * dur_h, now_ns)
        else:
            self._moved(st, a, now_ns)
        return learn

    def _high(
        self,
        st: MeterState,
        a: int,
        ts: int,
        x: float,
        r: float,
        dur_h: float,
        now_ns: int,
        judged: bool,
    ) -> None:
        """sustained_high_consumption: a run of intervals of `x` kW, `r` kW above their
        expected, started above the cut and going on while half as far above or while
        HIGH_FLOOR_SHARE x the cut above the night floor, for sustained_high_hours, with
        more energy above the expected than RUN_MARGIN x the meter's longest usual run (a
        household with electric heating has hours of it every cold day)."""
        thr = self._high_share * st.mean_kw
        if thr < HIGH_MIN_KW:
            thr = HIGH_MIN_KW
        floor = st.low_base
        lifted = floor > 0.0 and x - floor > HIGH_FLOOR_SHARE * thr
        if st.open & CONS_HIGH:
            if r < 0.0 or (r < 0.5 * thr and not lifted):
                st.high_since = 0
                self._book.clear_meter(
                    st,
                    "sustained_high_consumption",
                    a,
                    now_ns,
                    f"{st.meter_id}: consumption back near its expected",
                )
            return
        since = st.high_since
        if r > thr or (r > 0.5 * thr and lifted) or (since and (r > 0.5 * thr or lifted)):
            # A run starts above the cut (or half of it, lifted well above the night
            # floor) and goes on while half as far above (a dip of the load, an
            # appliance cycling off) or while lifted (an added load under a quiet
            # moment of the household's own evening); judged on its mean.
            if not since:
                since = st.high_since = a
                st.high_kwh = 0.0
            st.high_kwh += r * dur_h
            hours = (ts - since) / _HOUR_NS
            over = st.high_kwh / hours
            if (
                judged
                and ts - since >= self._high_ns
                and over >= thr
                and st.high_kwh > RUN_MARGIN * st.high_usual
            ):
                if st.open & SPIKE:
                    # One condition, one event: a burst that stayed is a sustained high.
                    self._book.clear_meter(
                        st,
                        "consumption_spike",
                        ts,
                        now_ns,
                        f"{st.meter_id}: the burst stayed (sustained_high_consumption)",
                        {"superseded_by": "sustained_high_consumption"},
                    )
                self._raise(
                    st,
                    "sustained_high_consumption",
                    since,
                    ts,
                    now_ns,
                    f"{over:.2f} kW above its expected",
                    round(over, 3),
                    over / thr,
                )
        elif since:
            # A run of normal life ended: the meter's usual longest run learns it.
            if st.high_kwh > st.high_usual:
                st.high_usual = st.high_kwh
            st.high_since = 0

    def _still(self, st: MeterState, a: int, ts: int, exp: float, now_ns: int) -> None:
        if not st.zero_since:
            st.zero_since = a
            st.zero_exp = 0.0
        st.zero_exp += exp
        if st.open & CONS_ZERO or ts - st.zero_since < self._zero_ns:
            return
        if st.learned_h < self._warmup_h:
            return
        hours = (ts - st.zero_since) / _HOUR_NS
        if st.mean_kw < ZERO_MIN_KW or st.zero_exp < ZERO_MIN_KW * hours:
            return
        if st.open & CONS_LOW:
            self._book.clear_meter(
                st,
                "sustained_low_consumption",
                ts,
                now_ns,
                f"{st.meter_id}: no consumption at all (zero_consumption)",
                {"superseded_by": "zero_consumption"},
            )
        self._raise(
            st,
            "zero_consumption",
            st.zero_since,
            ts,
            now_ns,
            f"no consumption (expected {st.zero_exp:.2f} kWh)",
            None,
            hours * _HOUR_NS / self._zero_ns,
        )

    def _moved(self, st: MeterState, a: int, now_ns: int) -> None:
        st.zero_since = 0
        if st.open & CONS_ZERO:
            self._book.clear_meter(
                st, "zero_consumption", a, now_ns, f"{st.meter_id}: consumption resumed"
            )
            # One condition, one event: the still hours are no day of low use; the
            # day's sums start again from here.
            st.low_hour = 0
            st.low_since = 0
            hrs = st.hours
            if hrs is not None:
                for i in range(72):
                    hrs[i] = 0.0

    def _spike_raised(self, st: MeterState, a: int, x: float, cut: float, now_ns: int) -> None:
        peak = cut / self._spike
        self._book.raise_meter(
            st,
            "consumption_spike",
            a,
            now_ns,
            {
                "cause": "consumption",
                "kw": round(x, 3),
                "usual_high_kw": round(peak, 3),
                "score": round(x / cut, 3),
            },
            f"{st.meter_id}: {x:.2f} kW, {x / peak:.1f} x the most it usually draws"
            f" ({peak:.2f} kW)",
            value=round(x, 3),
        )

    def _raise(
        self,
        st: MeterState,
        type_: str,
        start: int,
        ts: int,
        now_ns: int,
        what: str,
        value: float | None,
        score: float,
    ) -> None:
        hours = (ts - start) / _HOUR_NS
        details = {"cause": "consumption", "hours": round(hours, 3), "score": round(score, 3)}
        self._book.raise_meter(
            st, type_, start, now_ns, details, f"{st.meter_id}: {what} for {hours:.1f} h", value
        )

    # -- the day: hourly sums, sustained low ----------------------------------------------------

    def _spread(
        self, st: MeterState, base: array[float], a: int, ts: int, kwh: float, now_ns: int
    ) -> None:
        """An interval longer than a slot: into the hourly sums, evenly; never a spike,
        not learned, the end of a high run; a still register goes on being still."""
        st.high_since = 0
        if ts - a > _MAX_SPREAD_NS:
            st.low_hour = 0
            st.zero_since = 0
            return
        exp = 0.0
        t = a
        while t < ts:
            h = t // _HOUR_NS
            end = (h + 1) * _HOUR_NS
            if end > ts:
                end = ts
            j = _level(base, _SLOT_OF_HOW[(h + _HOW_OFFSET) % 168])
            if j < 0:
                st.low_hour = 0
                st.zero_since = 0
                return  # part of it has no expected yet
            e = base[j] * (end - t) / _HOUR_NS
            self._hour(st, t, end, kwh * (end - t) / (ts - a), e, now_ns)
            exp += e
            t = end
        if st.learned_h < self._warmup_h:
            return
        if kwh < _ZERO_KWH * (ts - a) / (15 * 60 * _NS):
            self._still(st, a, ts, exp, now_ns)
        else:
            self._moved(st, a, now_ns)

    def _hour(self, st: MeterState, a: int, ts: int, kwh: float, exp: float, now_ns: int) -> None:
        """Add [a, ts] to the hour of its midpoint; a completed hour is judged first."""
        hrs = st.hours
        if hrs is None:
            hrs = st.hours = array("f", bytes(4 * 72))
        h = (a + ts) // 2 // _HOUR_NS
        cur = st.low_hour
        if h != cur:
            if cur and h > cur:
                self._day(st, hrs, cur, now_ns, ts)
                # Hours skipped by a gap hold nothing.
                k = cur + 1
                while k <= h and k - cur <= 24:
                    i = k % 24
                    hrs[i] = hrs[_H_EXP + i] = hrs[_H_COV + i] = 0.0
                    k += 1
            elif cur != 0 and h < cur:
                return  # (not newer: cannot happen for a newest reading)
            else:
                i = h % 24
                hrs[i] = hrs[_H_EXP + i] = hrs[_H_COV + i] = 0.0
            st.low_hour = h
        i = h % 24
        hrs[i] += kwh
        hrs[_H_EXP + i] += exp
        hrs[_H_COV + i] += (ts - a) / _HOUR_NS

    def _day(self, st: MeterState, hrs: array[float], hour: int, now_ns: int, ts: int) -> None:
        """Hour `hour` (epoch hours) is complete: judge the last day on it."""
        n = self._low_window
        # The recent hours: of the half-day, those since the day's ratio fell below the
        # clear level (use before a household left is not use while it is away).
        m = n // 2
        if st.low_since:
            spell = hour + 1 - st.low_since // _HOUR_NS
            if spell < m:
                m = spell
        act = exp = cov = 0.0
        act_half = exp_half = cov_half = 0.0
        half_min = 1e9
        exp_min = 1e9  # the quietest expected hour of the recent ones, per hour
        # The three quietest covered hours of the window, per hour of coverage.
        q0 = q1 = q2 = 1e9
        for k in range(n):
            i = (hour - k) % 24
            c = hrs[_H_COV + i]
            if c <= 0.0:
                continue
            v = hrs[i]
            act += v
            exp += hrs[_H_EXP + i]
            cov += c
            if c >= 0.5:
                rate = v / c
                if rate < q0:
                    q0, q1, q2 = rate, q0, q1
                elif rate < q1:
                    q1, q2 = rate, q1
                elif rate < q2:
                    q2 = rate
                if k < m:
                    if rate < half_min:
                        half_min = rate
                    e_rate = hrs[_H_EXP + i] / c
                    if e_rate < exp_min:
                        exp_min = e_rate
            if k < m:
                act_half += v
                exp_half += hrs[_H_EXP + i]
                cov_half += c
        if cov < _LOW_MIN_COVER_H * n / 24 or exp <= 0.0:
            return
        st.low_act = act
        st.low_exp = exp
        ratio = act / exp
        floor = q1 if q1 < 1e9 else q0
        open_ = st.open
        if ratio >= self._low_clear:
            st.low_since = 0
        elif not st.low_since:
            st.low_since = (hour + 1) * _HOUR_NS
        active = (act_half - cov_half * half_min) / act_half if act_half > 0.0 else 0.0
        if hour % 12 == 11 and not open_ & _JUDGED and not st.low_since and floor < 1e9:
            # Twice a UTC day, on a normal day: the usual night floor and how much of a
            # half-day's use comes and goes (a shop open all hours: little).
            days = st.learned_h / 24
            if days > _FLOOR_DAYS:
                days = _FLOOR_DAYS
            if days < 1.0:
                days = 1.0
            if hour % 24 == 23:
                st.low_base += (floor - st.low_base) / days if st.low_base else floor
            st.low_active += (active - st.low_active) / (2 * days) if st.low_active else active
        if st.learned_h < self._warmup_h:
            return
        if open_ & CONS_LOW:
            if ratio >= self._low_clear:
                self._book.clear_meter(
                    st,
                    "sustained_low_consumption",
                    ts,
                    now_ns,
                    f"{st.meter_id}: consumption back near its expected",
                )
            return
        if open_ & CONS_ZERO or st.zero_since or ratio >= self._low or exp_half <= 0.0:
            return
        last = hour % 24
        if hrs[last] >= self._low_clear * hrs[_H_EXP + last]:
            return  # the last hour was not low (a household back home, a busy hour)
        if m < LOW_MIN_RECENT_H:
            return
        if act_half >= self._low * exp_half or act_half <= 0.0:
            return
        # Use still comes and goes: as much as usual for the meter, or as much as these
        # hours usually have (a business's opening hours are flat; a household away
        # has none of the ups and downs its expected has).
        active_exp = (exp_half - cov_half * exp_min) / exp_half if exp_min < 1e9 else 1.0
        if (
            active < LOW_ACTIVE_SHARE
            and active < 0.5 * st.low_active
            and active < LOW_PATTERN_SHARE * active_exp
        ):
            return
        if floor >= LOW_FLOOR_SHARE * st.low_base:
            return
        start = st.low_since or (hour + 1) * _HOUR_NS
        self._raise(
            st,
            "sustained_low_consumption",
            start,
            ts,
            now_ns,
            f"consumption at {ratio:.2f} x its expected over {n} h, its night floor at"
            f" {floor / st.low_base:.2f} x its usual",
            round(ratio, 4),
            self._low / ratio if ratio > 0.0 else 99.0,
        )
