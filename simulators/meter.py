"""One simulated electricity meter: load, PV, registers, voltages, clock.

The meter's net active power is piecewise constant over fixed steps of ``STEP_S`` seconds
(and over the boundaries of any injected effect), so the registers integrate it exactly: a
register delta is the sum of power x time over those pieces, whatever times ``advance`` is
called with. What the site consumes comes from ``loads`` (a household's standby, fridges,
appliance runs, EV, heating; a business's opening hours), a day at a time: the day's load
for each minute, built once, so that a stretch without faults integrates as a sum over a
slice of it instead of a step at a time. Everything is a pure function of (meter seed,
time), so the meter shows the same values at the same simulated time however it is polled.
"""

from __future__ import annotations

import bisect
import functools
import math
import random
import time
from array import array
from dataclasses import dataclass, field
from operator import sub
from typing import Literal

from meter_gateway.simulators.loads import DayPlan, Run, Site, make_site
from meter_gateway.simulators.profiles import (
    DAY_S,
    NOISE,
    NOISE_LEN,
    Profile,
    Variation,
    grid_frequency_hz,
    grid_load_index,
    mix64,
    noise_slice,
    pv_clear_sky,
    stable_seed,
    unit,
)

__all__ = ["STEP_S", "Effect", "MeterModel", "RegisterReset", "Variation", "rfc3339"]

STEP_S = 60  # resolution of the load curve: appliances switch on and off at this grain
_MINUTES = DAY_S // STEP_S
_J_PER_KWH = 3_600_000.0
_DEFAULT_VARIATION = Variation()
# Clear-sky PV by minute of the day (what ``pv_clear_sky`` gives at whole minutes).
_PV_MINUTE = tuple(pv_clear_sky(m * STEP_S) for m in range(_MINUTES))
_SUN = tuple(m for m in range(_MINUTES) if _PV_MINUTE[m] > 0.0)
_SUN_FROM, _SUN_TO = _SUN[0], _SUN[-1] + 1


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
    # meter's usual high (``MeterModel.reference_w``) on top of whatever it runs
    # (not the load x factor: at night that would be less than a kettle, and
    # during EV charging tens of kW).
    load_factor: float = 1.0
    offset_w: float = 0.0  # reverse flow on a non-prosumer: at least this much flows out
    voltage_factor: float = 1.0  # sag (<1) / swell (>1), all phases
    dead_phases: frozenset[int] = frozenset()  # phase loss: 1-based phase numbers at ~0 V
    clock_rate: float = 0.0  # meter clock error gained per simulated second (drift)
    clock_step_s: float = 0.0  # meter clock error from the start of the effect (a jump)
    powered: bool = True  # False: outage, no voltage, registers stand still
    pv_factor: float = 1.0  # share of the PV output metered (zero use, a stuck meter: 0)
    holiday: bool = False  # a public holiday: the site lives as on a Sunday
    variation: Variation | None = None  # how the site lives (loads; default: Variation())

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
    variation: Variation = _DEFAULT_VARIATION
    natural: bool = True  # powered, nothing changed but the day's plan: net = load - PV


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

    pv_kw: float
    pf: float
    phase_weights: tuple[float, ...]
    phase_offsets: tuple[float, ...]
    feeder_drop: float
    initial_import_kwh: float
    initial_export_kwh: float


def _draw_params(rng: random.Random, profile: Profile, phases: int, prosumer: bool) -> _Params:
    commercial = profile == "commercial"
    weights = [rng.uniform(0.8, 1.2) for _ in range(phases)]
    total = sum(weights)
    return _Params(
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
    """One meter-day: its load and PV for each minute, and what it imports and exports
    each minute (W)."""

    plan: DayPlan
    load: array[float]
    pv: array[float] | None
    imp: array[float]  # max(load - PV, 0) per minute (the load itself without PV)
    exp: array[float] | None  # max(PV - load, 0) per minute


def _energy(p: array[float], a: float, b: float) -> float:
    """Joules of the per-minute power ``p`` over seconds [a, b) of its day."""
    ka, kb = int(a // STEP_S), int(b // STEP_S)
    if ka == kb:
        return p[ka] * (b - a)
    e = p[ka] * ((ka + 1) * STEP_S - a) + STEP_S * sum(p[ka + 1 : kb])
    tail = b - kb * STEP_S
    if tail > 0.0:
        e += p[kb] * tail
    return e


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
        # The household or business behind the meter (its constants; ``loads``).
        self.site: Site = make_site(profile, self.seed, phases)
        self._noise_at = mix64(self.seed ^ 0x566F6C7473) % NOISE_LEN  # voltage noise
        self.t: float = float(start) if start is not None else float(math.floor(time.time()))
        self._import_j = self.params.initial_import_kwh * _J_PER_KWH
        self._export_j = self.params.initial_export_kwh * _J_PER_KWH
        self._effects = _EffectSet()
        self._held: tuple[float, float, _State] = (0.0, 0.0, _PLAIN)  # [lo, hi): the state
        self._resets: list[RegisterReset] = []
        self._plans: dict[tuple[int, bool, Variation], DayPlan] = {}
        self._days: dict[tuple[int, bool, Variation], _Day] = {}
        self._last: _Day | None = None  # the last day looked up, and its key
        self._last_key: tuple[int, bool, Variation] = (-1, False, _DEFAULT_VARIATION)

    # -- faults -------------------------------------------------------------------------

    def add_effect(self, effect: Effect) -> None:
        """Apply ``effect`` over its time window; effects in the past change nothing."""
        self._effects.add(effect)
        self._held = (0.0, 0.0, _PLAIN)
        if effect.holiday or effect.variation is not None:
            # A day may now follow another plan from the effect's start.
            self._days.clear()
            self._last = None

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
        return self._clock_offset(t, self._effects.active(t))

    @staticmethod
    def _clock_offset(t: float, effects: list[Effect]) -> float:
        return sum(e.clock_step_s + e.clock_rate * (t - e.start) for e in effects)

    # -- physics ------------------------------------------------------------------------

    def _state(self, t: float) -> _State:
        """The active effects at ``t``, combined (in the order they were added); the same
        between two boundaries of the effects, so kept for the stretch it holds on."""
        if not self._effects.effects:
            return _PLAIN
        lo, hi, st = self._held
        if lo <= t < hi:
            return st
        st = self._combine(self._effects.active(t))
        bounds = self._effects.boundaries
        i = bisect.bisect_right(bounds, t)
        self._held = (
            bounds[i - 1] if i else -math.inf,
            bounds[i] if i < len(bounds) else math.inf,
            st,
        )
        return st

    def _combine(self, effects: list[Effect]) -> _State:
        if not effects:
            return _PLAIN
        load_factor, pv_factor, offset, extra = 1.0, 1.0, 0.0, 0.0
        dead: set[int] = set()
        holiday = False
        variation = _DEFAULT_VARIATION
        for e in effects:
            if not e.powered:
                return _State(powered=False, natural=False)
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
        natural = (
            load_factor == 1.0
            and pv_factor == 1.0
            and offset == 0.0
            and extra == 0.0
            and dead_share is None
        )
        return _State(
            True,
            load_factor,
            pv_factor,
            offset,
            extra,
            dead_share,
            holiday,
            variation,
            natural,
        )

    def _flags(self, t: float) -> tuple[bool, Variation]:
        """(holiday, variation) at ``t``, whatever else the effects do."""
        holiday, variation = False, _DEFAULT_VARIATION
        for e in self._effects.active(t):
            holiday = holiday or e.holiday
            if e.variation is not None:
                variation = e.variation
        return holiday, variation

    def reference_w(self, var: Variation | None = None) -> float:
        """The meter's usual high, W: what its site draws at its busiest on a usual day
        (standby, the evening's small loads and its biggest appliance; a business's open
        level), plus its EV charger and its electric heating at full power if it has them.
        A load factor above 1 adds (factor - 1) x this: a spike of x 4 is three times the
        usual high on top of the normal load (about 9-15 kW for a household without EV or
        electric heating), sustained high x 2 is once it (3-5 kW for hours: heaters left
        on, a grow room)."""
        return self.site.reference_w(var or _DEFAULT_VARIATION)

    # -- the day's load ------------------------------------------------------------------

    def day_plan(self, day: int, holiday: bool = False, var: Variation | None = None) -> DayPlan:
        """The site's plan for epoch day ``day`` (its appliance runs, away or not...)."""
        key = (day, holiday, var or _DEFAULT_VARIATION)
        got = self._plans.get(key)
        if got is None:
            if len(self._plans) >= 4:
                del self._plans[next(iter(self._plans))]
            got = self._plans[key] = self.site.plan(*key)
        return got

    def _day(self, day: int, holiday: bool, var: Variation) -> _Day:
        """The day's load, PV, import and export per minute (cached while it is lived)."""
        got, (d, h, v) = self._last, self._last_key
        if got is not None and d == day and h == holiday and v is var:
            return got
        key = (day, holiday, var)
        got = self._days.get(key)
        if got is not None:
            self._last, self._last_key = got, key
            return got
        plan = self.day_plan(day, holiday, var)
        # Runs of the day before that go on past midnight, as that day was lived.
        before = self.day_plan(day - 1, *self._flags(day * DAY_S - STEP_S))
        spill = tuple(r for r in before.runs if r.end > _MINUTES)
        load = self.site.minutes(plan, spill)
        if self.params.pv_kw:
            pv = self._pv_minutes(day)
            net = list(map(sub, load, pv))
            got = _Day(
                plan,
                array("d", load),
                array("d", pv),
                array("d", [x if x > 0.0 else 0.0 for x in net]),
                array("d", [0.0 if x > 0.0 else -x for x in net]),
            )
        else:
            arr = array("d", load)
            got = _Day(plan, arr, None, arr, None)
        # Only the day being lived is kept (with another holiday or variation if one
        # starts within it): the meter moves on, and the plans of past days are kept.
        for old in [k for k in self._days if k[0] != day]:
            del self._days[old]
        self._days[key] = got
        self._last, self._last_key = got, key
        return got

    def _pv_minutes(self, day: int) -> list[float]:
        """PV output, W, each minute: clear sky x the day's cloudiness x a flicker."""
        peak = self.params.pv_kw * 1000.0 * (0.35 + 0.65 * unit(self.seed, day, 3))
        noise = noise_slice(self.seed, day, 4)
        out = [0.0] * _MINUTES
        out[_SUN_FROM:_SUN_TO] = [
            peak * s * (0.85 + 0.15 * n)
            for s, n in zip(_PV_MINUTE[_SUN_FROM:_SUN_TO], noise[_SUN_FROM:_SUN_TO], strict=True)
        ]
        return out

    def runs(self, day: int) -> tuple[Run, ...]:
        """The appliance runs of epoch day ``day`` as the meter lives it (its effects'
        holiday and variation at the day's noon)."""
        return self.day_plan(day, *self._flags(day * DAY_S + DAY_S / 2)).runs

    def power_w(self, t: float | None = None) -> float:
        """Net active power at ``t`` (import positive, export negative), in W."""
        t = self.t if t is None else t
        return self._power(math.floor(t / STEP_S), self._state(t))

    def _power(self, k: int, st: _State) -> float:
        if not st.powered:
            return 0.0
        day, m = divmod(k, _MINUTES)
        d = self._day(day, st.holiday, st.variation)
        pv = d.pv[m] if d.pv is not None else 0.0
        if st.natural:
            return d.load[m] - pv
        load = (d.load[m] + st.extra_w) * st.load_factor
        if st.dead_share is not None:
            load *= st.dead_share
        net = load - pv * st.pv_factor
        if st.offset_w:
            # Reverse flow: at least offset_w flows out, however much the site draws
            # (a business at 6 kW would otherwise hide a 2 kW fault).
            net -= st.offset_w
            if net > -st.offset_w:
                net = -st.offset_w
        return net

    def advance(self, t: float) -> None:
        """Move simulated time to ``t``, integrating power into the registers exactly."""
        if t < self.t:
            raise ValueError(f"{self.meter_id}: cannot go back in time ({t} < {self.t})")
        cur = self.t
        resets = self._resets
        effects = self._effects
        while True:
            while resets and resets[0].at <= cur:
                # A reset exactly at ``t`` is visible in the reading at ``t``.
                self._apply_reset(resets.pop(0))
            if cur >= t:
                break
            # The active effects stay the same up to the next boundary (or reset).
            limit = t
            if effects.boundaries:
                limit = min(t, effects.next_boundary(cur))
            if resets:
                limit = min(limit, resets[0].at)
            cur = self._integrate(cur, limit, self._state(cur))
        self.t = float(t)

    def _integrate(self, cur: float, limit: float, st: _State) -> float:
        """Add the energy of [cur, limit) to the registers, a day at a time; returns ``limit``.

        Without faults a stretch is a sum over the day's minutes (and parts of the two it
        starts and ends in); with one, the minutes are added one at a time, with the same
        arithmetic as ``_power``.
        """
        if not st.powered:
            return limit
        imp, exp = self._import_j, self._export_j
        while cur < limit:
            day = int(cur // DAY_S)
            d0 = day * DAY_S
            end = min(limit, d0 + DAY_S)
            d = self._day(day, st.holiday, st.variation)
            a, b = cur - d0, end - d0
            if st.natural:
                imp += _energy(d.imp, a, b)
                if d.exp is not None:
                    exp += _energy(d.exp, a, b)
            else:
                lf, pf, off, ds, xw = (
                    st.load_factor,
                    st.pv_factor,
                    st.offset_w,
                    st.dead_share,
                    st.extra_w,
                )
                load, pv = d.load, d.pv
                while a < b:
                    m = int(a // STEP_S)
                    nxt: float = (m + 1) * STEP_S
                    if nxt > b:
                        nxt = b
                    power = (load[m] + xw) * lf
                    if ds is not None:
                        power *= ds
                    e = (power - (pv[m] if pv is not None else 0.0) * pf - off) * (nxt - a)
                    if e >= 0.0:
                        imp += e
                    else:
                        exp -= e
                    a = nxt
            cur = end
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

    def voltages_v(
        self, t: float | None = None, effects: list[Effect] | None = None
    ) -> list[float]:
        """Per-phase voltage: nominal, minus a load-dependent feeder drop, plus noise.
        ``effects``: the effects active at ``t``, if the caller has them."""
        t = self.t if t is None else t
        p = self.params
        if effects is None:
            effects = self._effects.active(t)
        factor = 1.0
        dead: frozenset[int] | set[int] = frozenset()
        for e in effects:
            if not e.powered:
                return [0.0] * self.phases
            factor *= e.voltage_factor
            if e.dead_phases:
                dead = set(dead) | e.dead_phases
        base = 1.015 - p.feeder_drop * _grid_load(t)
        nominal = self.nominal_voltage_v
        at = (self._noise_at + 3 * math.floor(t / STEP_S)) % NOISE_LEN
        out = []
        for i in range(self.phases):
            if i + 1 in dead:
                out.append(0.0)
                continue
            noise = 0.008 * (NOISE[at + i] - 0.5)
            out.append(nominal * (base + p.phase_offsets[i] + noise) * factor)
        return out

    def reading(self) -> dict[str, object]:
        """The canonical reading at the current simulated time."""
        t = self.t
        effects = self._effects.active(t) if self._effects.effects else []
        power = self.power_w(t)
        volts = self.voltages_v(t, effects)
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
            "ts": rfc3339(t + self._clock_offset(t, effects)) if effects else rfc3339(t),
            "energy_import_kwh": round(self.energy_import_kwh, 3),
            "energy_export_kwh": round(self.energy_export_kwh, 3),
            "power_w": round(power, 1) + 0.0,  # + 0.0 turns -0.0 into 0.0
            "voltage_v": voltage,
            "current_a": current,
            "power_factor": round(pf, 2) if powered else 0.0,
            "frequency_hz": round(_grid_frequency(t), 2) if powered else 0.0,
        }
