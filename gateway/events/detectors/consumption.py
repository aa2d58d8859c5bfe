"""Consumption against each meter's own learned baseline: spikes, sustained high,
sustained low, zero.

Consumption is the interval delta of `energy_import_kwh` between a meter's newest
readings (never instantaneous power), as a rate in kW over the interval. Prosumers
(topology) are not judged: their import is net of their PV, the weather's doing.

- **Slots**: 72 per meter, day type (Monday-Friday, Saturday, Sunday) x hour of day,
  UTC (the gateway has no meter time zone; a fixed offset only shifts the learned
  shape). Five weekdays share a slot, so a 15-minute meter has 20 samples in each
  weekday slot after one week; a weekend slot with fewer than MIN_SLOT_SAMPLES samples
  is judged on that hour's weekday slot.
- **Statistic**: per slot a location and a spread, learned online as a Hampel-clipped
  running mean and mean absolute deviation: a sample outside location +- 3 sigma
  (sigma = 1.2533 x the mean absolute deviation, the normal-equivalent spread) counts
  as that bound, so a kettle or a spike moves the baseline by at most 3 sigma x the
  gain. Gain 1/n for the first LEARN_SAMPLES samples of the slot, then that fixed
  (older weeks fade). Stored as `array('f')` (level, deviation, count per slot).
- **Intervals**: an interval of at most an hour (and no more than twice the meter's
  usual spacing) is one sample of the slot at its midpoint: it is learned and judged.
  A longer one (a gap, back-fill after a silence) is spread evenly over the hours it
  covers: never a spike, not learned, judged for the sustained conditions against the
  sum of the covered slots' levels. A register decrease (reset, replacement) is no
  consumption: that delta is skipped. An interval across a power_outage or comms_loss
  (open before its reading, or raised by it) is neither learned nor judged, and the
  sustained runs start again after it.
- **Warm-up**: nothing is judged before `baseline_warmup_days` of learned intervals
  (data, not wall time) for that meter.

Events (meter subject, judged per interval in the readings' own time):

- `consumption_spike` (minor): what a utility calls a spike is a short burst far above
  the meter's own usual: a fault, an illegal load, a meter error. The noise of normal
  life is not: a washing machine (1.2-2.2 kW for 45-120 min) is many times a household's
  night baseline, a car charges at 3.7 or 7.4 kW for 2-4 h. Two guards tell them apart:
  size and shape. An *excursion* starts at a one-slot interval that is more than half
  the spike limit above its slot's level *and* above the meter's rate in the interval
  before (a jump, not a level that a slot boundary or a slowly learned car moves past);
  the spike limit is max((spike_factor - 1) x level, SPIKE_SIGMAS sigma, SPIKE_MIN_KW x
  the interval: 3 kW, an oven's worth). It lasts until the consumption falls below half
  the highest rate it reached, and it is a spike if some interval of it was above the
  full limit and it was over within SPIKE_MAX_NS (a 30-minute burst touches at most
  three 15-minute intervals; an hourly meter: one interval): a car, a heater, a long
  cycle stays up longer. So the event is known, and raised and cleared at once, when the
  consumption is back, one interval after the burst, with the excursion's start and its
  highest rate (value, kW). Hot path: a few float comparisons an interval, as before
  (no per-slot high: the state has no room for one, see state.py). Its start
  (as minus epoch seconds) and highest rate (as -rate - 1 once above the limit) live in
  the state's zero_exp / zero_sig, which a zero run alone uses (and a jump ends any zero
  run); between excursions zero_sig holds the rate of the last interval.
- `sustained_high_consumption` (major): a run starts at an interval above
  sustained_high_factor x baseline (and HIGH_SIGMAS sigma and HIGH_MIN_KW above it), and
  goes on while intervals stay above the midpoint (1 + factor) / 2 x baseline and
  HIGH_MIN_KW above it (a low night baseline doubles with everyday use); one interval
  below is tolerated (a slot boundary, a dip of the load; high_since is then stored
  negated), a second one ends the run.
  Raised once it lasts sustained_high_hours if the interval is above PEAK_MARGIN x the
  meter's usual high (a fading maximum of its interval kW over every slot, learned
  slowly from the intervals of a run, so that hours of a heater left on are still above
  it while a car charged most evenings is learned within a week); a run within
  that usual high (a household that charges its car, 2-4 h on most evenings, learns it)
  only once it has lasted HIGH_LONG_RUN_H too: longer than a charge. A heater left on
  stays on. Cleared at an interval back below 1 + (factor - 1) / 4 x baseline (1.5 x
  for 3).
- `zero_consumption` (major): the register still for zero_consumption_hours on a meter
  whose baseline for those hours is clearly above 0 (at least ZERO_MIN_KW on average and
  above its own spread). Cleared by the first interval with consumption.
- `sustained_low_consumption` (major): an exponentially weighted ratio of consumption to
  baseline (time constant sustained_low_hours / 4, so nights with only the fridge
  and days of a vacant home average out) below sustained_low_factor for 3/4 of
  sustained_low_hours (a clean drop is raised about sustained_low_hours after it
  began). Cleared when that ratio is back above (1 + factor) / 2. A meter in
  zero_consumption is not also low: the zero event clears an open low one, and the low
  run starts again after the zero one ends.
"""

from __future__ import annotations

import math
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
    "HIGH_LONG_RUN_H",
    "HIGH_MIN_KW",
    "HIGH_SIGMAS",
    "LEARN_SAMPLES",
    "MIN_SLOT_SAMPLES",
    "N_SLOTS",
    "PEAK_MARGIN",
    "SPIKE_MAX_NS",
    "SPIKE_MIN_KW",
    "SPIKE_SIGMAS",
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
_DEV: Final = N_SLOTS  # offsets into the per-meter array: level, deviation, count
_CNT: Final = 2 * N_SLOTS
# Hour of the week (Monday 00:00 UTC = 0) -> slot. Epoch hour 0 was a Thursday.
_SLOT_OF_HOW: Final = tuple((0 if d < 5 else d - 4) * 24 + h for d in range(7) for h in range(24))
_HOW_OFFSET: Final = 3 * 24

LEARN_SAMPLES: Final = 48  # gain 1/n up to here, then fixed: about 2.5 weeks of a weekday slot
MIN_SLOT_SAMPLES: Final = 4  # a slot with fewer is judged on its hour's weekday slot
_FREE_SAMPLES: Final = 4  # the first samples of a slot are not clipped (no spread known yet)
_CLIP_SIGMAS: Final = 3.0  # Hampel bound for learning
_SIGMA_OF_MEAN_DEV: Final = 1.2533  # sigma / mean absolute deviation for a normal distribution
_SIGMA_FLOOR_KW: Final = 0.02  # the least spread a slot is taken to have (register resolution)
SPIKE_SIGMAS: Final = 5.0
SPIKE_MIN_KW: Final = 3.0  # at least this much above the baseline, on average over the interval
# An excursion that lasts longer is no spike: a 30-minute burst spans at most three
# 15-minute intervals; a car's charge, a heater or a long appliance cycle lasts longer.
SPIKE_MAX_NS: Final = 46 * 60 * _NS
HIGH_SIGMAS: Final = 3.0
HIGH_MIN_KW: Final = 0.25  # ... and at least 250 W above it on average
HIGH_LONG_RUN_H: Final = 4.75  # a run within the meter's usual high: longer than a car's charge
ZERO_MIN_KW: Final = 0.05  # "normally consumes": at least 50 W on average in those hours
# The meter's own usual high: a spike is also above PEAK_MARGIN x that, so a household
# that runs a 4 kW appliance or charges a car now and then does not report every run.
PEAK_MARGIN: Final = 1.25
_PEAK_FADE_PER_H: Final = 0.002  # half-life about two weeks
_PEAK_RUN_GAIN: Final = 1 / 32  # how fast it learns from the intervals of a high run
_UNKNOWN_KW: Final = 1e9  # the rate before an interval when it is not known (after a gap)
_ZERO_KWH: Final = 0.0005  # below half a watt-hour the register did not move
_MAX_SPREAD_NS: Final = 14 * 24 * _HOUR_NS  # a longer silence is not judged at all
_ONE_SLOT_NS: Final = _HOUR_NS + 60 * _NS  # an "hourly" interval may be a minute long
_CLIP_FLOOR_KW: Final = _CLIP_SIGMAS * _SIGMA_FLOOR_KW


def slot_of(ts_ns: int) -> int:
    """The baseline slot (day type x hour, UTC) of a moment."""
    return _SLOT_OF_HOW[(ts_ns // _HOUR_NS + _HOW_OFFSET) % 168]


def _level(base: array[float], slot: int) -> int:
    """The slot to judge by (its weekday slot while a weekend one is thin); -1: none."""
    if base[_CNT + slot] >= MIN_SLOT_SAMPLES:
        return slot
    slot %= 24
    return slot if base[_CNT + slot] >= MIN_SLOT_SAMPLES else -1


_JUDGED: Final = CONS_HIGH | CONS_LOW | CONS_ZERO


class Consumption:
    def __init__(self, config: EventsConfig, book: Book) -> None:
        self._book = book
        self._warmup_h = config.baseline_warmup_days * 24
        self._spike_m1 = config.spike_factor - 1
        self._high = config.sustained_high_factor
        self._high_mid = (1 + config.sustained_high_factor) / 2
        self._high_near = 1 + (config.sustained_high_factor - 1) / 4
        self._high_ns = int(config.sustained_high_hours * _HOUR_NS)
        self._high_long_ns = max(self._high_ns, int(HIGH_LONG_RUN_H * _HOUR_NS))
        self._low = config.sustained_low_factor
        self._low_near = (1 + config.sustained_low_factor) / 2
        self._low_rate = 4 / config.sustained_low_hours  # 1 / the time constant, per hour
        # Below this an interval may start a low run (the weighted ratio decides).
        self._low_start = config.sustained_low_factor
        self._low_hold_ns = int(0.75 * config.sustained_low_hours * _HOUR_NS)
        self._zero_ns = int(config.zero_consumption_hours * _HOUR_NS)

    def reading(self, st: MeterState, ts: int, imp: float, out: int, now_ns: int) -> None:
        """A newest reading with its import register; `out`: the meter was or is in a
        power_outage / comms_loss. Call before the register is taken as the last one."""
        a = st.imp_ts
        st.imp_ts = ts
        kwh = imp - st.last_import  # NaN for a meter's first register value
        if not a or not kwh >= 0:  # the first value, or a decrease: no consumption
            return
        dur_ns = ts - a
        if out:
            # Power or link was gone during this interval: nothing to learn or judge;
            # the sustained conditions count again from here.
            st.high_since = st.zero_since = st.low_since = 0
            st.zero_exp = 0.0  # an excursion cut by an outage is not judged
            st.zero_sig = _UNKNOWN_KW  # nor is a jump from the rate before it
            return
        base = st.base
        if base is None:
            base = st.base = array("f", bytes(4 * 3 * N_SLOTS))
        dur_h = dur_ns / _HOUR_NS
        sp_s = st.ts_spacing_s
        if dur_ns <= _ONE_SLOT_NS and (dur_ns <= 2 * sp_s * _NS or not sp_s):
            # One slot: judge it (a spike too), then learn it.
            slot = _SLOT_OF_HOW[((a + ts) // 2 // _HOUR_NS + _HOW_OFFSET) % 168]
            if st.learned_h >= self._warmup_h:
                j = slot if base[_CNT + slot] >= MIN_SLOT_SAMPLES else _level(base, slot % 24)
                if j >= 0:
                    exp = base[j] * dur_h
                    sig = _SIGMA_OF_MEAN_DEV * base[_DEV + j]
                    if sig < _SIGMA_FLOOR_KW:
                        sig = _SIGMA_FLOOR_KW
                    sig *= dur_h
                    ex = kwh - exp
                    # The spike limit: how far above the level, kWh.
                    lim = self._spike_m1 * exp
                    if SPIKE_SIGMAS * sig > lim:
                        lim = SPIKE_SIGMAS * sig
                    if SPIKE_MIN_KW * dur_h > lim:
                        lim = SPIKE_MIN_KW * dur_h
                    p = st.zero_sig
                    if st.zero_exp < 0.0:
                        # An excursion is on (p: its highest rate, kW; below 0 once it
                        # was above the spike limit): it ends when the consumption drops
                        # below half that rate. A car's charge or a heater stays up.
                        top = -p - 1.0 if p < 0.0 else p
                        if kwh <= 0.5 * top * dur_h:
                            self._end_excursion(st, a, p < 0.0, top, dur_ns, now_ns)
                        else:
                            x = kwh / dur_h
                            if x > top:
                                top = x
                            st.zero_sig = -top - 1.0 if p < 0.0 or ex > lim else top
                    else:
                        # An excursion starts with a jump from the rate before (p, kW).
                        pre = 0.0 if st.zero_since else p
                        if ex > 0.5 * lim and kwh - pre * dur_h > 0.5 * lim:
                            st.zero_exp = -a / _NS  # its start, in s
                            x = kwh / dur_h
                            st.zero_sig = -x - 1.0 if ex > lim else x
                    if (
                        st.open & _JUDGED
                        or st.high_since
                        or st.zero_since
                        or st.low_since
                        or (
                            kwh > self._high * exp or kwh < self._low_start * exp or kwh < _ZERO_KWH
                        )
                    ):
                        self._judge(st, a, ts, kwh, exp, sig, now_ns)
                    else:
                        # Nothing running, nothing starting: only the weighted sums.
                        keep = math.exp(-dur_h * self._low_rate)
                        st.low_act = st.low_act * keep + kwh
                        st.low_exp = st.low_exp * keep + exp
            # Learn (Hampel-clipped running mean and mean absolute deviation).
            x = kwh / dur_h
            n = base[_CNT + slot]
            if n < LEARN_SAMPLES:
                n += 1
                base[_CNT + slot] = n
            lvl = base[slot]
            dev = base[_DEV + slot]
            if n > _FREE_SAMPLES:
                bound = _CLIP_SIGMAS * _SIGMA_OF_MEAN_DEV * dev
                if bound < _CLIP_FLOOR_KW:
                    bound = _CLIP_FLOOR_KW
                if x > lvl + bound:
                    x = lvl + bound
                elif x < lvl - bound:
                    x = lvl - bound
            # The meter's usual high, over every slot: half way up to a higher rate,
            # fading by half in about two weeks.
            rate = kwh / dur_h
            peak = st.peak_kw
            if rate > peak:
                # Within a high run it learns slowly: a car charging most evenings is
                # learned within a week, a heater left on is still above it after hours.
                st.peak_kw = peak + (_PEAK_RUN_GAIN if st.high_since else 0.5) * (rate - peak)
            else:
                st.peak_kw = peak - peak * _PEAK_FADE_PER_H * dur_h
            if st.zero_exp >= 0.0 and not st.zero_since and kwh >= _ZERO_KWH:
                st.zero_sig = rate  # the rate before the next interval (spike excursions)
            d = x - lvl
            base[slot] = lvl + d / n
            base[_DEV + slot] = dev + ((d if d >= 0 else -d) - dev) / n
            st.learned_h += dur_h
            return
        # Spread over the hours it covers (a gap, back-fill after a silence).
        if not st.zero_since:
            st.zero_exp = 0.0  # an excursion whose end was not seen is not judged,
            st.zero_sig = _UNKNOWN_KW  # nor a jump from an unknown rate
        if st.learned_h < self._warmup_h or dur_ns > _MAX_SPREAD_NS:
            return
        exp = sig = 0.0
        t = a
        while t < ts:
            h = t // _HOUR_NS
            end = min((h + 1) * _HOUR_NS, ts)
            j = _level(base, _SLOT_OF_HOW[(h + _HOW_OFFSET) % 168])
            if j < 0:
                return  # part of it has no baseline yet
            w = (end - t) / _HOUR_NS
            exp += base[j] * w
            sig += max(_SIGMA_OF_MEAN_DEV * base[_DEV + j], _SIGMA_FLOOR_KW) * w
            t = end
        self._judge(st, a, ts, kwh, exp, sig, now_ns)

    # -- judging (exp, sig: the interval's baseline and its spread, in kWh) -------------------

    def _end_excursion(
        self, st: MeterState, end: int, confirmed: bool, top: float, dur_ns: int, now_ns: int
    ) -> None:
        """An excursion ended at ``end``: a spike if it went above the spike limit and was
        over within SPIKE_MAX_NS (or one interval of an hourly meter). Raised and cleared
        at once, from the excursion's start, its value the highest rate in kW. The start
        is kept in ``zero_exp`` as minus epoch seconds and the highest rate in
        ``zero_sig`` (as -rate - 1 once above the limit): both are free while no zero run
        is on, and an excursion (a jump far above the baseline) ends any zero run."""
        start = round(-st.zero_exp * 1000.0) * 1_000_000  # readings carry at most ms
        st.zero_exp = 0.0
        if not confirmed or end - start > max(SPIKE_MAX_NS, dur_ns) or st.open & SPIKE:
            return  # a long excursion is a charge, a cycle or a sustained high, no spike
        minutes = (end - start) / _NS / 60
        self._book.raise_meter(
            st,
            "consumption_spike",
            start,
            now_ns,
            {"cause": "consumption", "peak_kw": round(top, 3), "minutes": round(minutes, 1)},
            f"{st.meter_id}: {top:.2f} kW, far above its baseline and its rate before,"
            f" for {minutes:.0f} min",
            value=round(top, 3),
        )
        self._book.clear_meter(
            st, "consumption_spike", end, now_ns, f"{st.meter_id}: consumption back to normal"
        )

    def _judge(
        self, st: MeterState, a: int, ts: int, kwh: float, exp: float, sig: float, now_ns: int
    ) -> None:
        """The sustained conditions, for any judged interval [a, ts]."""
        book = self._book
        open_ = st.open
        # sustained_high_consumption
        if open_ & CONS_HIGH:
            if kwh <= self._high_near * exp:
                st.high_since = 0
                book.clear_meter(
                    st,
                    "sustained_high_consumption",
                    ts,
                    now_ns,
                    f"{st.meter_id}: consumption back near baseline",
                )
        elif st.high_since:
            # A run goes on while intervals stay above the midpoint and HIGH_MIN_KW above
            # the baseline; one interval below is tolerated (a slot boundary, a dip of
            # the load): high_since < 0 marks it, a second one ends the run.
            since = st.high_since if st.high_since > 0 else -st.high_since
            if kwh > self._high_mid * exp and kwh - exp > HIGH_MIN_KW * (ts - a) / _HOUR_NS:
                st.high_since = since
                if self._high_enough(st, ts - since, kwh, ts - a):
                    self._raise(st, "sustained_high_consumption", since, ts, now_ns)
            elif st.high_since > 0:
                st.high_since = -since
            else:
                st.high_since = 0
        if (
            not st.high_since
            and not open_ & CONS_HIGH
            and kwh > self._high * exp
            and kwh - exp > max(HIGH_SIGMAS * sig, HIGH_MIN_KW * (ts - a) / _HOUR_NS)
        ):
            st.high_since = a
            if self._high_enough(st, ts - a, kwh, ts - a):  # a spread one may be, alone
                self._raise(st, "sustained_high_consumption", a, ts, now_ns)
        # zero_consumption
        if kwh < _ZERO_KWH:
            if not st.zero_since:
                st.zero_since = a
                st.zero_exp = st.zero_sig = 0.0
            st.zero_exp += exp
            st.zero_sig += sig
            if (
                not st.open & CONS_ZERO
                and ts - st.zero_since >= self._zero_ns
                and st.zero_exp >= ZERO_MIN_KW * (ts - st.zero_since) / _HOUR_NS
                and st.zero_exp > st.zero_sig
            ):
                if st.open & CONS_LOW:
                    book.clear_meter(
                        st,
                        "sustained_low_consumption",
                        ts,
                        now_ns,
                        f"{st.meter_id}: no consumption at all (zero_consumption)",
                        {"superseded_by": "zero_consumption"},
                    )
                self._raise(st, "zero_consumption", st.zero_since, ts, now_ns)
        else:
            st.zero_since = 0
            if st.open & CONS_ZERO:
                book.clear_meter(
                    st, "zero_consumption", ts, now_ns, f"{st.meter_id}: consumption resumed"
                )
        # sustained_low_consumption: weighted sums of consumption and baseline.
        keep = math.exp(-(ts - a) / _HOUR_NS * self._low_rate)
        act = st.low_act = st.low_act * keep + kwh
        base = st.low_exp = st.low_exp * keep + exp
        if st.open & CONS_ZERO:
            st.low_since = 0  # one condition, one event: zero is the more specific
            return
        if act < self._low * base:
            if not st.low_since:
                st.low_since = a
            elif not st.open & CONS_LOW and ts - st.low_since >= self._low_hold_ns:
                self._raise(st, "sustained_low_consumption", st.low_since, ts, now_ns)
        else:
            st.low_since = 0
            if st.open & CONS_LOW and act >= self._low_near * base:
                book.clear_meter(
                    st,
                    "sustained_low_consumption",
                    ts,
                    now_ns,
                    f"{st.meter_id}: consumption back near baseline",
                )

    def _high_enough(self, st: MeterState, run_ns: int, kwh: float, dur_ns: int) -> bool:
        """A high run is raised after sustained_high_hours if its interval is above the
        meter's usual high (PEAK_MARGIN x its fading maximum); within it (a car charging,
        2-4 h on most evenings of an EV household, which the usual high learns) only once
        it has lasted HIGH_LONG_RUN_H as well."""
        if run_ns < self._high_ns:
            return False
        return run_ns >= self._high_long_ns or kwh > PEAK_MARGIN * st.peak_kw * dur_ns / _HOUR_NS

    def _raise(self, st: MeterState, type_: str, start: int, ts: int, now_ns: int) -> None:
        hours = (ts - start) / _HOUR_NS
        details = {"cause": "consumption", "hours": round(hours, 3)}
        value = None
        if type_ == "zero_consumption":
            what = "no consumption"
        elif type_ == "sustained_high_consumption":
            what = f"consumption above {self._high:g} x baseline"
        else:
            value = round(st.low_act / st.low_exp, 4) if st.low_exp else 0.0
            details["ratio"] = value
            what = f"consumption at {value:.2f} x baseline"
        self._book.raise_meter(
            st, type_, start, now_ns, details, f"{st.meter_id}: {what} for {hours:.1f} h", value
        )
