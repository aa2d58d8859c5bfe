"""One simulated electricity meter: load, PV, registers, voltages, clock.

The meter's net active power is piecewise constant over fixed steps of ``STEP_S`` seconds
(and over the boundaries of any injected effect), so the registers integrate it exactly: a
register delta is the sum of power x time over those pieces, whatever times ``advance`` is
called with. Per-step noise comes from a counter-based hash (see ``profiles``), so the meter
shows the same values at the same simulated time however it is polled.
"""

from __future__ import annotations

import bisect
import functools
import math
import random
import time
from dataclasses import dataclass, field
from typing import Literal

from meter_gateway.simulators.profiles import (
    DAY_S,
    Profile,
    Variation,
    grid_frequency_hz,
    grid_load_index,
    minute_shapes,
    mix64,
    pv_clear_sky,
    stable_seed,
    temperature_c,
    unit,
)

__all__ = ["STEP_S", "Effect", "MeterModel", "RegisterReset", "Variation", "rfc3339"]

STEP_S = 60  # resolution of the load curve: appliances switch on and off at this grain
_J_PER_KWH = 3_600_000.0
_M64 = (1 << 64) - 1
_INV_2_32 = 1.0 / float(1 << 32)
# Clear-sky PV by minute of the day (what ``pv_clear_sky`` gives at whole minutes).
_PV_MINUTE = tuple(pv_clear_sky(m * STEP_S) for m in range(DAY_S // STEP_S))
# The noise of minute k is mix64(seed ^ mix64((k << 8) + 1)): the inner hash is the same for
# every meter, so a fleet computes it once per minute (a bounded cache).
_INNER: dict[int, int] = {}


def _inner_hash(k: int) -> int:
    if len(_INNER) >= 200_000:
        _INNER.clear()
    h = _INNER[k] = mix64((k << 8) + 1)
    return h


# Functions of time alone, the same for every meter of a fleet at a reading: cached.
_grid_load = functools.lru_cache(maxsize=256)(grid_load_index)
_grid_frequency = functools.lru_cache(maxsize=256)(grid_frequency_hz)


@functools.lru_cache(maxsize=1024)
def rfc3339(t: float) -> str:
    """Epoch seconds as RFC 3339 UTC with ``Z``; milliseconds only when not a whole second."""
    whole = math.floor(t)
    ms = round((t - whole) * 1000)
    if ms == 1000:
        whole, ms = whole + 1, 0
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{text}.{ms:03d}Z" if ms else f"{text}Z"


@dataclass(frozen=True, slots=True)
class Effect:
    """A change to the meter's physics over [start, end); ``end`` may be ``math.inf``.

    Several effects may overlap: factors multiply, offsets add, dead phases unite, the
    meter is unpowered while any active effect says so, a day is a holiday while any says
    so, and the last active ``variation`` applies.
    """

    start: float
    end: float = math.inf
    # Below 1 (theft, sustained_low, zero_use): the share of the load still metered. Above 1
    # (consumption_spike, sustained_high): an abnormal extra load of (factor - 1) x the
    # meter's reference peak (``MeterModel.reference_w``) on top of whatever it runs
    # (not the load x factor: at night that would be less than a washing machine, and
    # during EV charging tens of kW).
    load_factor: float = 1.0
    offset_w: float = 0.0  # subtracted from net power: reverse flow on a non-prosumer
    voltage_factor: float = 1.0  # sag (<1) / swell (>1), all phases
    dead_phases: frozenset[int] = frozenset()  # phase loss: 1-based phase numbers at ~0 V
    clock_rate: float = 0.0  # meter clock error gained per simulated second (drift)
    clock_step_s: float = 0.0  # meter clock error from the start of the effect (a jump)
    powered: bool = True  # False: outage, no voltage, registers stand still
    pv_factor: float = 1.0  # share of the PV output metered (zero use, a stuck meter: 0)
    holiday: bool = False  # load follows the weekend shapes (a public holiday)
    variation: Variation | None = None  # real-life variation of the load (see profiles)

    def active(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass(frozen=True, slots=True)
class _State:
    """What the active effects add up to over a stretch where the active set is constant."""

    powered: bool = True
    load_factor: float = 1.0
    pv_factor: float = 1.0
    offset_w: float = 0.0
    extra_w: float = 0.0  # abnormal extra load (spike, sustained high), before load_factor
    dead_share: float | None = None  # share of the load still fed when phases are dead
    holiday: bool = False
    variation: Variation | None = None
    plain: bool = True  # no effect at all: net power is load - PV


_PLAIN = _State()


@dataclass(frozen=True, slots=True)
class RegisterReset:
    """At ``at`` the cumulative registers jump to these values (meter replacement, tamper)."""

    at: float
    import_kwh: float = 0.0
    export_kwh: float | None = 0.0  # None: the export register is left alone


@dataclass(slots=True)
class _Params:
    """Per-meter constants drawn once from the meter's own ``random.Random``."""

    mean_kw: float
    burst_kw: float
    pv_kw: float
    pf: float
    phase_weights: tuple[float, ...]
    phase_offsets: tuple[float, ...]
    feeder_drop: float
    initial_import_kwh: float
    initial_export_kwh: float


def _draw_params(rng: random.Random, profile: Profile, phases: int, prosumer: bool) -> _Params:
    commercial = profile == "commercial"
    mean_kw = rng.uniform(4.0, 30.0) if commercial else rng.uniform(0.25, 0.6)
    weights = [rng.uniform(0.8, 1.2) for _ in range(phases)]
    total = sum(weights)
    return _Params(
        mean_kw=mean_kw,
        burst_kw=mean_kw * 2.0 if commercial else rng.uniform(1.5, 3.0),
        pv_kw=(rng.uniform(10.0, 50.0) if commercial else rng.uniform(3.0, 8.0))
        if prosumer
        else 0.0,
        pf=rng.uniform(0.88, 0.97) if commercial else rng.uniform(0.93, 0.99),
        phase_weights=tuple(w / total for w in weights),
        phase_offsets=tuple(rng.uniform(-0.01, 0.01) for _ in range(phases)),
        # Meters far down a feeder see lower voltage and a bigger drop at peak.
        feeder_drop=rng.uniform(0.005, 0.035),
        initial_import_kwh=round(rng.uniform(500.0, 30_000.0) * (10 if commercial else 1), 3),
        initial_export_kwh=round(rng.uniform(100.0, 5_000.0), 3) if prosumer else 0.0,
    )


@dataclass(frozen=True, slots=True)
class _Day:
    """One meter-day under a ``Variation``: (start minute, end minute, W) windows."""

    var: Variation
    level: float
    cycle: tuple[int, int, float]
    ev: tuple[int, int, float]
    heat_w: float


@dataclass(slots=True)
class _EffectSet:
    """The meter's effects plus the sorted times at which the active set changes."""

    effects: list[Effect] = field(default_factory=list)
    boundaries: list[float] = field(default_factory=list)

    def add(self, effect: Effect) -> None:
        self.effects.append(effect)
        for b in (effect.start, effect.end):
            if math.isfinite(b):
                bisect.insort(self.boundaries, b)

    def active(self, t: float) -> list[Effect]:
        return [e for e in self.effects if e.start <= t < e.end]

    def next_boundary(self, t: float) -> float:
        i = bisect.bisect_right(self.boundaries, t)
        return self.boundaries[i] if i < len(self.boundaries) else math.inf


class MeterModel:
    """A seeded, deterministic meter. ``t`` is the current simulated time (epoch seconds)."""

    def __init__(
        self,
        meter_id: str,
        *,
        seed: int,
        profile: Literal["household", "commercial"] = "household",
        phases: Literal[1, 3] = 3,
        nominal_voltage_v: float = 230.0,
        prosumer: bool = False,
        start: float | None = None,
    ) -> None:
        if phases not in (1, 3):
            raise ValueError(f"{meter_id}: phases must be 1 or 3 (got {phases!r})")
        if profile not in ("household", "commercial"):
            raise ValueError(f"{meter_id}: unknown profile {profile!r}")
        self.meter_id = meter_id
        self.profile: Profile = profile
        self.phases = phases
        self.nominal_voltage_v = float(nominal_voltage_v)
        self.prosumer = prosumer
        self.seed = stable_seed(seed, meter_id)
        self.params = _draw_params(random.Random(self.seed), profile, phases, prosumer)
        self.t: float = float(start) if start is not None else float(math.floor(time.time()))
        self._import_j = self.params.initial_import_kwh * _J_PER_KWH
        self._export_j = self.params.initial_export_kwh * _J_PER_KWH
        self._effects = _EffectSet()
        self._resets: list[RegisterReset] = []
        self._shapes = (minute_shapes(profile, False), minute_shapes(profile, True))
        self._cloud_day, self._cloud = -1, 0.0
        self._days: dict[int, _Day] = {}
        # Appliances a ``Variation`` may give this meter, drawn from its seed (not from
        # the constants' random stream, which would change every meter's constants).
        self._ev_u, self._heat_u = unit(self.seed, 0, 40), unit(self.seed, 0, 41)
        self._ev_w_max = 3700.0 if unit(self.seed, 0, 42) < 0.7 else 7400.0
        self._ev_minute = 1080 + int(300 * unit(self.seed, 0, 43))  # 18:00 .. 23:00
        self._heat_w_max = (
            400.0 * self.params.mean_kw
            if profile == "commercial"
            else 1000.0 + 2000.0 * unit(self.seed, 0, 44)
        )

    # -- faults -------------------------------------------------------------------------

    def add_effect(self, effect: Effect) -> None:
        """Apply ``effect`` over its time window; effects in the past change nothing."""
        self._effects.add(effect)

    def add_reset(self, reset: RegisterReset) -> None:
        """Schedule a register reset; it happens when ``advance`` crosses ``reset.at``."""
        self._resets.append(reset)
        self._resets.sort(key=lambda r: r.at)

    def powered(self, t: float | None = None) -> bool:
        t = self.t if t is None else t
        return all(e.powered for e in self._effects.active(t))

    def clock_offset_s(self, t: float | None = None) -> float:
        """How far the meter's clock is ahead of true time (negative: behind)."""
        t = self.t if t is None else t
        return sum(e.clock_step_s + e.clock_rate * (t - e.start) for e in self._effects.active(t))

    # -- physics ------------------------------------------------------------------------

    def _state(self, t: float) -> _State:
        """The active effects at ``t``, combined (in the order they were added)."""
        effects = self._effects.active(t) if self._effects.effects else ()
        if not effects:
            return _PLAIN
        load_factor, pv_factor, offset, extra = 1.0, 1.0, 0.0, 0.0
        dead: set[int] = set()
        holiday = False
        variation: Variation | None = None
        for e in effects:
            if not e.powered:
                return _State(powered=False, plain=False)
            if e.load_factor > 1.0:
                extra += e.load_factor - 1.0
            else:
                load_factor *= e.load_factor
            pv_factor *= e.pv_factor
            offset += e.offset_w
            dead |= e.dead_phases
            holiday = holiday or e.holiday
            if e.variation is not None:
                variation = e.variation
        dead_share = None
        if dead and self.phases == 3:
            # Loads wired to the lost phase stop; the rest carry on.
            dead_share = 1.0 - sum(
                w for i, w in enumerate(self.params.phase_weights, 1) if i in dead
            )
        if extra:
            extra *= self.reference_w(variation)
        return _State(
            True,
            load_factor,
            pv_factor,
            offset,
            extra,
            dead_share,
            holiday,
            variation,
            plain=False,
        )

    def reference_w(self, var: Variation | None = None) -> float:
        """The meter's usual peak, W: its average load at the profile's busiest hour, plus
        its electric heating at full power if it heats electrically (not appliance cycles
        or EV charging: those are what a fault must stand out from). A load factor above
        1 adds (factor - 1) x this: a spike of x 8 is about 7 x the evening peak on top of
        the normal load (3.7-9 kW for a household without heating), sustained high x 4 is
        3 x it (1.6-3.9 kW: a heater or a grow room left on)."""
        ref = self.params.mean_kw * 1000.0 * max(self._shapes[0])
        if var is not None and self._heat_u < var.heating_share:
            ref += self._heat_w_max
        return ref

    def _load_w(self, k: int, holiday: bool = False, var: Variation | None = None) -> float:
        """Consumption in step ``k``: profile shape x per-step noise, plus appliance bursts;
        with a ``Variation``, also the day's level, the hour's occupancy, long appliance
        cycles, EV charging and electric heating."""
        p = self.params
        day, minute = divmod(k, 1440)
        weekend = holiday or (day + 3) % 7 >= 5
        level = self._shapes[weekend][minute]
        h = mix64(self.seed ^ mix64((k << 8) + 1))
        noise, burst = (h >> 32) * _INV_2_32, (h & 0xFFFFFFFF) * _INV_2_32
        load = p.mean_kw * level * (0.7 + 0.6 * noise)
        if var is not None:
            load *= self._day(day, var).level * self._hour_factor(k // 60, var)
        # A kettle, oven or compressor: more likely when people are up and about.
        if burst < 0.04 * level:
            load += p.burst_kw
        if var is None:
            return load * 1000.0
        return load * 1000.0 + self._extra_w(k, day, var, noise)

    def _pv_w(self, k: int) -> float:
        p = self.params
        if p.pv_kw == 0.0:
            return 0.0
        day, minute = divmod(k, 1440)
        sun = _PV_MINUTE[minute]
        if sun == 0.0:
            return 0.0
        # Cloudiness is a property of the day, flicker a property of the minute.
        if day != self._cloud_day:
            self._cloud_day, self._cloud = day, 0.35 + 0.65 * unit(self.seed, day, 3)
        return p.pv_kw * 1000.0 * sun * self._cloud * (0.85 + 0.15 * unit(self.seed, k, 4))

    # -- real-life variation (only with a Variation effect) ----------------------------

    def _day(self, day: int, var: Variation) -> _Day:
        """The day's level and appliance, EV and heating plans (cached: two days at a time)."""
        got = self._days.get(day)
        if got is not None and got.var is var:
            return got
        seed = self.seed
        commercial = self.profile == "commercial"
        spread = var.daily * (0.5 if commercial else 1.0)
        level = 1.0 - spread + 2.0 * spread * unit(seed, day, 20)
        cycle = ev = (0, 0, 0.0)
        if not commercial:
            if unit(seed, day, 22) < var.appliances:
                start = day * 1440 + 420 + int(840 * unit(seed, day, 23))  # 07:00 .. 21:00
                length = 45 + int(75 * unit(seed, day, 24))
                cycle = (start, start + length, 1200.0 + 1000.0 * unit(seed, day, 25))
            if self._ev_u < var.ev_share and unit(seed, day, 26) < 0.6:
                start = day * 1440 + self._ev_minute + int(120 * (unit(seed, day, 27) - 0.5))
                length = 120 + int(120 * unit(seed, day, 28))
                ev = (start, start + length, self._ev_w_max)
        heat = 0.0
        if self._heat_u < var.heating_share:
            heat = self._heat_w_max * max(0.0, 15.0 - temperature_c(day)) / 15.0
        got = _Day(var, level, cycle, ev, heat)
        if len(self._days) > 4:
            self._days.clear()
        self._days[day] = got
        return got

    def _hour_factor(self, hour: int, var: Variation) -> float:
        if self.profile == "commercial" or var.hourly == 0.0:
            return 1.0
        return 1.0 - var.hourly + 2.0 * var.hourly * unit(self.seed, hour, 21)

    def _extra_w(self, k: int, day: int, var: Variation, noise: float) -> float:
        """Long appliance cycles and EV charging (a window may run past midnight), heating."""
        extra = 0.0
        for d in (day, day - 1):
            plan = self._day(d, var)
            for start, end, watts in (plan.cycle, plan.ev):
                if start <= k < end:
                    extra += watts
        return extra + self._day(day, var).heat_w * (0.8 + 0.4 * noise)

    def power_w(self, t: float | None = None) -> float:
        """Net active power at ``t`` (import positive, export negative), in W."""
        t = self.t if t is None else t
        return self._power(math.floor(t / STEP_S), self._state(t))

    def _power(self, k: int, st: _State) -> float:
        if st.plain:
            return self._load_w(k) - self._pv_w(k)
        if not st.powered:
            return 0.0
        load = (self._load_w(k, st.holiday, st.variation) + st.extra_w) * st.load_factor
        if st.dead_share is not None:
            load *= st.dead_share
        return load - self._pv_w(k) * st.pv_factor - st.offset_w

    def advance(self, t: float) -> None:
        """Move simulated time to ``t``, integrating power into the registers exactly."""
        if t < self.t:
            raise ValueError(f"{self.meter_id}: cannot go back in time ({t} < {self.t})")
        cur = self.t
        resets = self._resets
        while True:
            while resets and resets[0].at <= cur:
                # A reset exactly at ``t`` is visible in the reading at ``t``.
                self._apply_reset(resets.pop(0))
            if cur >= t:
                break
            # The active effects stay the same up to the next boundary (or reset).
            limit = min(t, self._effects.next_boundary(cur))
            if resets:
                limit = min(limit, resets[0].at)
            cur = self._integrate(cur, limit, self._state(cur))
        self.t = float(t)

    def _integrate(self, cur: float, limit: float, st: _State) -> float:
        """Add the energy of [cur, limit) to the registers, step by step; returns ``limit``.

        The hot loop of a fleet: for a meter without effects the load and PV are computed
        inline (the same arithmetic, in the same order, as ``_load_w`` and ``_pv_w``).
        """
        imp, exp = self._import_j, self._export_j
        if st.plain:
            p = self.params
            seed, mean_kw, burst_kw = self.seed, p.mean_kw, p.burst_kw
            pv_kw = p.pv_kw
            shapes = self._shapes
            _inner = _INNER
            while cur < limit:
                k = math.floor(cur / STEP_S)
                nxt = (k + 1) * STEP_S
                if nxt > limit:
                    nxt = limit
                day, minute = divmod(k, 1440)
                level = shapes[(day + 3) % 7 >= 5][minute]
                inner = _inner.get(k)
                if inner is None:
                    inner = _inner_hash(k)
                x = ((seed ^ inner) + 0x9E3779B97F4A7C15) & _M64
                x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
                x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
                h = x ^ (x >> 31)
                load = mean_kw * level * (0.7 + 0.6 * ((h >> 32) * _INV_2_32))
                if (h & 0xFFFFFFFF) * _INV_2_32 < 0.04 * level:
                    load += burst_kw
                power = load * 1000.0
                if pv_kw != 0.0 and _PV_MINUTE[minute] != 0.0:
                    power -= self._pv_w(k)
                e = power * (nxt - cur)
                if e >= 0.0:
                    imp += e
                else:
                    exp -= e
                cur = nxt
        elif st.powered:
            # The same arithmetic as ``_power`` (and ``_load_w``), in the same order.
            p = self.params
            seed, mean_kw, burst_kw, pv_kw = self.seed, p.mean_kw, p.burst_kw, p.pv_kw
            shapes, _inner = self._shapes, _INNER
            holiday, var = st.holiday, st.variation
            lf, pf, off, ds = st.load_factor, st.pv_factor, st.offset_w, st.dead_share
            xw = st.extra_w
            plan_day = plan_hour = -1
            today = yesterday = None
            hour_f = 1.0
            while cur < limit:
                k = math.floor(cur / STEP_S)
                nxt = (k + 1) * STEP_S
                if nxt > limit:
                    nxt = limit
                day, minute = divmod(k, 1440)
                level = shapes[holiday or (day + 3) % 7 >= 5][minute]
                inner = _inner.get(k)
                if inner is None:
                    inner = _inner_hash(k)
                x = ((seed ^ inner) + 0x9E3779B97F4A7C15) & _M64
                x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
                x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
                h = x ^ (x >> 31)
                noise = (h >> 32) * _INV_2_32
                load = mean_kw * level * (0.7 + 0.6 * noise)
                if var is not None:
                    if day != plan_day:
                        today, yesterday, plan_day = (
                            self._day(day, var),
                            self._day(day - 1, var),
                            day,
                        )
                    if k // 60 != plan_hour:
                        plan_hour = k // 60
                        hour_f = self._hour_factor(plan_hour, var)
                    load *= today.level * hour_f  # type: ignore[union-attr]
                if (h & 0xFFFFFFFF) * _INV_2_32 < 0.04 * level:
                    load += burst_kw
                if var is None:
                    power = (load * 1000.0 + xw) * lf
                else:
                    extra = 0.0
                    for start, end, watts in (
                        today.cycle,  # type: ignore[union-attr]
                        today.ev,  # type: ignore[union-attr]
                        yesterday.cycle,  # type: ignore[union-attr]
                        yesterday.ev,  # type: ignore[union-attr]
                    ):
                        if start <= k < end:
                            extra += watts
                    power = (
                        load * 1000.0 + (extra + today.heat_w * (0.8 + 0.4 * noise)) + xw  # type: ignore[union-attr]
                    ) * lf
                if ds is not None:
                    power *= ds
                pv = self._pv_w(k) if pv_kw != 0.0 and _PV_MINUTE[minute] != 0.0 else 0.0
                e = (power - pv * pf - off) * (nxt - cur)
                if e >= 0.0:
                    imp += e
                else:
                    exp -= e
                cur = nxt
        self._import_j, self._export_j = imp, exp
        return limit

    def _apply_reset(self, reset: RegisterReset) -> None:
        self._import_j = reset.import_kwh * _J_PER_KWH
        if reset.export_kwh is not None:
            self._export_j = reset.export_kwh * _J_PER_KWH

    @property
    def energy_import_kwh(self) -> float:
        return self._import_j / _J_PER_KWH

    @property
    def energy_export_kwh(self) -> float:
        return self._export_j / _J_PER_KWH

    def voltages_v(self, t: float | None = None) -> list[float]:
        """Per-phase voltage: nominal, minus a load-dependent feeder drop, plus noise."""
        t = self.t if t is None else t
        p = self.params
        k = math.floor(t / STEP_S)
        factor = 1.0
        dead: set[int] = set()
        for e in self._effects.active(t):
            if not e.powered:
                return [0.0] * self.phases
            factor *= e.voltage_factor
            dead |= e.dead_phases
        base = 1.015 - p.feeder_drop * _grid_load(t)
        out = []
        for i in range(self.phases):
            if i + 1 in dead:
                out.append(0.0)
                continue
            noise = 0.008 * (unit(self.seed, k, 10 + i) - 0.5)
            out.append(self.nominal_voltage_v * (base + p.phase_offsets[i] + noise) * factor)
        return out

    def reading(self) -> dict[str, object]:
        """The canonical reading at the current simulated time."""
        t = self.t
        power = self.power_w(t)
        volts = self.voltages_v(t)
        pf = self.params.pf if power >= 0 else -self.params.pf
        weights = self.params.phase_weights
        live = [w if v > 0.0 else 0.0 for w, v in zip(weights, volts, strict=True)]
        live_total = sum(live) or 1.0
        currents = [
            abs(power) * (w / live_total) / (v * abs(pf)) if v > 0.0 else 0.0
            for w, v in zip(live, volts, strict=True)
        ]
        if self.phases == 1:
            voltage: object = round(volts[0], 1)
            current: object = round(currents[0], 2)
        else:
            voltage = [round(v, 1) for v in volts]
            current = [round(c, 2) for c in currents]
        powered = any(v > 0.0 for v in volts)
        return {
            "meter_id": self.meter_id,
            "ts": rfc3339(t + self.clock_offset_s(t)),
            "energy_import_kwh": round(self.energy_import_kwh, 3),
            "energy_export_kwh": round(self.energy_export_kwh, 3),
            "power_w": round(power, 1) + 0.0,  # + 0.0 turns -0.0 into 0.0
            "voltage_v": voltage,
            "current_a": current,
            "power_factor": round(pf, 2) if powered else 0.0,
            "frequency_hz": round(_grid_frequency(t), 2) if powered else 0.0,
        }
