"""One simulated electricity meter: load, PV, registers, voltages, clock.

The meter's net active power is piecewise constant over fixed steps of ``STEP_S`` seconds
(and over the boundaries of any injected effect), so the registers integrate it exactly: a
register delta is the sum of power x time over those pieces, whatever times ``advance`` is
called with. Per-step noise comes from a counter-based hash (see ``profiles``), so the meter
shows the same values at the same simulated time however it is polled.
"""

from __future__ import annotations

import bisect
import math
import random
import time
from dataclasses import dataclass, field
from typing import Literal

from meter_gateway.simulators.profiles import (
    DAY_S,
    Profile,
    grid_frequency_hz,
    grid_load_index,
    pv_clear_sky,
    shape,
    stable_seed,
    unit,
    unit_pair,
)

__all__ = ["STEP_S", "Effect", "MeterModel", "RegisterReset", "rfc3339"]

STEP_S = 60  # resolution of the load curve: appliances switch on and off at this grain
_J_PER_KWH = 3_600_000.0


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

    Several effects may overlap: factors multiply, offsets add, dead phases unite, and the
    meter is unpowered while any active effect says so.
    """

    start: float
    end: float = math.inf
    load_factor: float = 1.0  # consumption spike (>1), theft / bypass (<1)
    offset_w: float = 0.0  # subtracted from net power: reverse flow on a non-prosumer
    voltage_factor: float = 1.0  # sag (<1) / swell (>1), all phases
    dead_phases: frozenset[int] = frozenset()  # phase loss: 1-based phase numbers at ~0 V
    clock_rate: float = 0.0  # meter clock error gained per simulated second (drift)
    clock_step_s: float = 0.0  # meter clock error from the start of the effect (a jump)
    powered: bool = True  # False: outage, no voltage, registers stand still

    def active(self, t: float) -> bool:
        return self.start <= t < self.end


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

    def _load_w(self, k: int) -> float:
        """Consumption in step ``k``: profile shape x per-step noise, plus appliance bursts."""
        p = self.params
        level = shape(self.profile, k * STEP_S)
        noise, burst = unit_pair(self.seed, k, 1)
        load = p.mean_kw * level * (0.7 + 0.6 * noise)
        # A kettle, oven or compressor: more likely when people are up and about.
        if burst < 0.04 * level:
            load += p.burst_kw
        return load * 1000.0

    def _pv_w(self, k: int) -> float:
        p = self.params
        if p.pv_kw == 0.0:
            return 0.0
        t = k * STEP_S
        sun = pv_clear_sky(t)
        if sun == 0.0:
            return 0.0
        # Cloudiness is a property of the day, flicker a property of the minute.
        cloud = 0.35 + 0.65 * unit(self.seed, int(t // DAY_S), 3)
        return p.pv_kw * 1000.0 * sun * cloud * (0.85 + 0.15 * unit(self.seed, k, 4))

    def power_w(self, t: float | None = None) -> float:
        """Net active power at ``t`` (import positive, export negative), in W."""
        t = self.t if t is None else t
        k = math.floor(t / STEP_S)
        effects = self._effects.active(t) if self._effects.effects else ()
        if not effects:
            return self._load_w(k) - self._pv_w(k)
        load_factor, offset = 1.0, 0.0
        dead: set[int] = set()
        for e in effects:
            if not e.powered:
                return 0.0
            load_factor *= e.load_factor
            offset += e.offset_w
            dead |= e.dead_phases
        load = self._load_w(k) * load_factor
        if dead and self.phases == 3:
            # Loads wired to the lost phase stop; the rest carry on.
            load *= 1.0 - sum(w for i, w in enumerate(self.params.phase_weights, 1) if i in dead)
        return load - self._pv_w(k) - offset

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
            nxt = min(t, (math.floor(cur / STEP_S) + 1) * STEP_S, self._effects.next_boundary(cur))
            if resets:
                nxt = min(nxt, resets[0].at)
            e = self.power_w(cur) * (nxt - cur)
            if e >= 0.0:
                self._import_j += e
            else:
                self._export_j -= e
            cur = nxt
        self.t = float(t)

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
        base = 1.015 - p.feeder_drop * grid_load_index(t)
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
            "frequency_hz": round(grid_frequency_hz(t), 2) if powered else 0.0,
        }
