"""What a simulated site consumes, a day at a time: households and businesses.

A household is a standby load (50-300 W for most: router, standby electronics, an alarm;
a few have a genuinely high one: an aquarium, a server, a pond pump) with fridges and
freezers cycling on top, small loads that follow who is at home and awake (lighting after
dark, TV, computers), and appliances that run as discrete events: kettles (2-3 kW for a
few minutes), hobs and ovens (2-4 kW around meals, thermostat cycling), washing machines
(about 2 kW while heating the water, 1-2 h a cycle), tumble dryers (2-3 kW for about an
hour), dishwashers, a storage water heater on some (2-3 kW for 30-90 min, at night on an
off-peak tariff or after showers), an EV on some (3.7-11 kW for 2-4 h, most evenings) and
electric heating on some (direct heaters, storage heaters charging at night, heat pumps),
following the outdoor temperature. Some days it is quiet (out all day) and a few times a
year it is away (standby and fridges only). Its annual use comes out at about
1,500-6,000 kWh without electric heating or an EV, from its size and habits.

A business keeps opening hours (an office, a shop, a bakery with its night production, a
restaurant or leisure business open at weekends), with a standby load when closed and a
steadier, higher level when open.

Everything is a pure function of (the meter's seed, the day, whether it is a public
holiday, the ``Variation``): a day's plan is the same however often and in whatever order
it is asked for. ``plan`` returns a day's appliance
runs; ``minutes`` turns the runs into the day's load in W for each minute (runs that
continue past midnight are passed on to the next day).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from itertools import repeat
from operator import add, mul

from meter_gateway.simulators.profiles import (
    NOISE,
    NOISE_LEN,
    Variation,
    darkness,
    mix64,
    outdoor_c,
    unit,
)

__all__ = ["Business", "DayPlan", "Household", "Run", "Site", "make_site"]

MINUTES = 1440
_DESIGN_DELTA_C = 32.0  # heating at full power: 20 C inside, -12 C outside


@dataclass(frozen=True, slots=True)
class Run:
    """An appliance drawing ``watts`` over minutes [start, end) of its day (end may pass
    1440: the run continues into the next day)."""

    what: str
    start: int
    end: int
    watts: float


@dataclass(frozen=True, slots=True)
class DayPlan:
    """One site-day: its hourly small load (W), its appliance runs, whether anyone is in."""

    day: int
    away: bool
    quiet: bool
    open: bool  # businesses: open at all that day (households: someone is at home)
    hourly_w: tuple[float, ...]  # 24 values: small loads (households) or the level (businesses)
    noise: float  # minute-to-minute spread of the hourly load, +- this share
    runs: tuple[Run, ...]


@functools.cache
def _noise_factors(spread: float) -> list[float]:
    """The fleet's shared noise as factors 1 +- spread (a site-day takes a slice)."""
    return [1.0 - spread + 2.0 * spread * n for n in NOISE]


def _pick(u: float, weights: tuple[float, ...]) -> int:
    acc = 0.0
    for i, w in enumerate(weights):
        acc += w
        if u < acc:
            return i
    return len(weights) - 1


class _Runs:
    """Collects a day's runs, cut to whole minutes."""

    __slots__ = ("out",)

    def __init__(self) -> None:
        self.out: list[Run] = []

    def add(self, what: str, start: float, minutes: float, watts: float) -> int:
        s = int(start)
        e = s + max(1, int(minutes))
        if watts > 0.0:
            self.out.append(Run(what, s, e, watts))
        return e

    def cycling(
        self, what: str, start: float, minutes: float, watts: float, on: int, period: int
    ) -> int:
        """A thermostat: ``on`` minutes at ``watts`` every ``period`` minutes."""
        s, end = int(start), int(start) + max(1, int(minutes))
        while s < end:
            self.out.append(Run(what, s, min(s + on, end), watts))
            s += period
        return end


class Site:
    """The common part of households and businesses: standby, day plans, the minute load."""

    seed: int
    standby_w: float
    # Compressors of fridges, freezers, cold rooms: (period, minutes on, W, phase), minutes.
    cycles: tuple[tuple[int, int, float, int], ...]
    heat_kind: str  # direct, storage, heat_pump (when its share says it heats at all)
    heat_w: float
    _heat_u: float
    _heat_kind_u: float
    _heat_period: int

    def plan(self, day: int, holiday: bool, var: Variation) -> DayPlan:
        raise NotImplementedError

    def reference_w(self, var: Variation) -> float:
        raise NotImplementedError

    @property
    def static(self) -> list[float]:
        """Standby and compressors cycling, W, each minute: the same every day (the cycles'
        periods divide a day)."""
        out = [self.standby_w] * MINUTES
        for period, on, watts, phase in self.cycles:
            day = ([watts] * on + [0.0] * (period - on)) * (MINUTES // period)
            out = list(
                map(add, out, day[phase:] + day[:phase])
            )  # on when (m + phase) % period < on
        return out

    def heating(self, var: Variation) -> tuple[str, float]:
        """(kind, W at full power) of this site's electric heating under ``var``."""
        if self._heat_u >= var.heating_share:
            return "none", 0.0
        return self.heat_kind, self.heat_w

    def minutes(self, plan: DayPlan, spill: tuple[Run, ...] = ()) -> list[float]:
        """The day's load, W, for each of its 1440 minutes: standby and fridges, the hourly
        small load with minute-to-minute noise, the runs of the day and those of the day
        before that continue past midnight (``spill``, in the day before's minutes)."""
        hourly: list[float] = []
        for w in plan.hourly_w:
            hourly += [w] * 60
        noise = _noise_factors(plan.noise)
        off = mix64(self.seed ^ mix64((plan.day << 8) + 1)) % NOISE_LEN
        out = list(map(add, self.static, map(mul, hourly, noise[off : off + MINUTES])))
        for r in plan.runs:
            s, e = r.start, r.end
            if s < 0:
                s = 0
            if e > MINUTES:
                e = MINUTES
            if s < e:
                out[s:e] = map(add, out[s:e], repeat(r.watts, e - s))
        for r in spill:
            s, e = r.start - MINUTES, r.end - MINUTES
            if e <= 0:
                continue
            if s < 0:
                s = 0
            if e > MINUTES:
                e = MINUTES
            out[s:e] = map(add, out[s:e], repeat(r.watts, e - s))
        return out

    def _heat_hours(self, day: int, setpoints: list[float]) -> list[float]:
        """The share of full heating power each hour needs, from the outdoor temperature."""
        temps = outdoor_c(day)
        return [
            min(1.0, max(0.0, (sp - t) / _DESIGN_DELTA_C))
            for sp, t in zip(setpoints, temps, strict=True)
        ]

    def _heat_runs(self, runs: _Runs, kind: str, share: list[float]) -> None:
        """Electric heating, each hour at the ``share`` of its full power it needs."""
        watts = self.heat_w
        if kind == "direct":
            # Panel heaters on a thermostat: full power for part of each cycle.
            period = self._heat_period
            for h in range(24):
                on = round(share[h] * period)
                if on <= 0:
                    continue
                for c in range(h * 60, h * 60 + 60, period):
                    runs.add("heating", c, min(on, period), watts)
        elif kind == "heat_pump":
            # Modulates down to 30 % of its power; below that it cycles on and off.
            for h in range(24):
                f = share[h]
                if f <= 0.0:
                    continue
                if f >= 0.3:
                    runs.add("heating", h * 60, 60, watts * f)
                else:
                    on = max(1, round(f / 0.3 * 30))
                    runs.add("heating", h * 60, on, watts * 0.3)
                    runs.add("heating", h * 60 + 30, on, watts * 0.3)
        elif kind == "storage":
            # Night storage heaters charge off-peak (from midnight, up to 07:00) with what the
            # day will need; a cold day also takes an afternoon boost.
            need = sum(share) * 0.55 * 60.0  # minutes at full power
            if need >= 1.0:
                night = min(need, 420.0)
                runs.add("heating", 420 - night, night, watts)
                if need > 420.0:
                    runs.add("heating", 780, min(need - 420.0, 180.0), watts)


# -- households ---------------------------------------------------------------------------------

_PERSONS = (1, 2, 3, 4, 5)
_PERSONS_W = (0.34, 0.33, 0.14, 0.14, 0.05)
_FRIDGE_PERIODS = (30, 32, 36, 40, 45, 48, 60)  # divisors of 1440: the same pattern every day
_AWAY_SLOT = 73  # days: up to one trip in each fifth of a year


class Household(Site):
    """A household's constants, drawn once from its seed; ``plan`` draws each day."""

    def __init__(self, seed: int, phases: int) -> None:
        self.seed = seed
        rng = random.Random(mix64(seed ^ 0x486F757365686F6C))
        u = rng.random
        self.persons = _PERSONS[_pick(u(), _PERSONS_W)]
        p = self.persons
        # Someone at home in the daytime on weekdays (retired, home office, small children).
        self.at_home = u() < (0.45 if p == 1 else 0.3)
        self.wake = 345 + int(120 * u())  # 05:45 .. 07:45 on weekdays
        self.sleep = 1290 + int(135 * u())  # 21:30 .. 23:45
        self.leave = self.wake + 45 + int(45 * u())
        self.back = 960 + int(150 * u())  # 16:00 .. 18:30
        self.out_activity = 0.03 + (0.12 if p >= 3 else 0.03) * u()
        # Standby: most 50-300 W measured (with the fridges); a few far more.
        standby = 50.0 + 140.0 * u() ** 1.6
        self.high_standby = u() < 0.04
        if self.high_standby:
            standby += 200.0 + 250.0 * u()  # an aquarium, a server, a pond pump, a towel rail
        self.standby_w = standby
        self.small_w = (100.0 + 160.0 * u()) * (0.45 + 0.35 * p)
        self.light_w = 40.0 + 110.0 * u() * (0.8 + 0.2 * p)
        self.cooking = 0.5 + 0.5 * u()
        self.kettle_w = 2000.0 + 1000.0 * u() if u() < 0.85 else 0.0
        self.oven_w = 2000.0 + 1500.0 * u() if u() < 0.9 else 0.0
        self.hob_w = 1500.0 + 2000.0 * u() if u() < 0.75 else 0.0  # else gas
        self.washes = (0.8 + 1.3 * p) * (0.7 + 0.6 * u())  # a week
        self.dryer_w = 2000.0 + 1000.0 * u() if u() < 0.45 else 0.0
        self.dishwasher_w = 1800.0 + 400.0 * u() if u() < (0.45 + 0.1 * p) else 0.0
        # A storage water heater on some (the others heat water with gas or a heat pump).
        self.water_w = 2000.0 + 1000.0 * u() if u() < 0.3 else 0.0
        self.water_night = u() < 0.5  # on an off-peak tariff: it heats at night
        # Fridges and freezers: compressors cycling all day, the same pattern every day.
        cycles = []
        for extra in range(2):
            if extra and u() >= 0.4:
                break
            period = _FRIDGE_PERIODS[int(u() * len(_FRIDGE_PERIODS))]
            on = int(period * (0.3 + 0.2 * u()))
            watts = 70.0 + 70.0 * u()
            cycles.append((period, on, watts, int(u() * period)))
        self.cycles = tuple(cycles)
        # An EV and electric heating: drawn apart from the rest, so a ``Variation`` with
        # other shares gives or takes them without changing anything else.
        self._ev_u = unit(seed, 0, 40)
        self.ev_w = (3700.0, 7400.0, 11000.0)[_pick(unit(seed, 0, 42), (0.4, 0.45, 0.15))]
        if phases == 1 and self.ev_w > 7400.0:
            self.ev_w = 7400.0
        self.ev_minute = 1050 + int(240 * unit(seed, 0, 43))  # plugs in 17:30 .. 21:30
        self.ev_timer = unit(seed, 0, 45) < 0.25  # charges after midnight (off-peak)
        self.ev_days = 0.5 + 0.35 * unit(seed, 0, 46)
        self._heat_u = unit(seed, 0, 41)
        self._heat_kind_u = unit(seed, 0, 44)
        kind = _pick(self._heat_kind_u, (0.3, 0.2, 0.5))
        self.heat_kind = ("direct", "storage", "heat_pump")[kind]
        w = unit(seed, 0, 47)
        self.heat_w = (3000.0 + 4000.0 * w, 5000.0 + 5000.0 * w, 1500.0 + 2000.0 * w)[kind]
        self._heat_period = (15, 20, 30)[int(3 * unit(seed, 0, 48))]

    def has_ev(self, var: Variation) -> bool:
        return self._ev_u < var.ev_share

    def reference_w(self, var: Variation) -> float:
        """Its usual high, W: standby and fridges, the evening's small loads, its biggest
        appliance (cooking: oven and part of the hob; the water heater; the dryer; the
        washing machine heating), plus its EV charger and its heating at full power if it
        has them. What a consumption fault's extra load is reckoned in."""
        big = max(self.oven_w + 0.5 * self.hob_w, self.water_w, self.dryer_w, 2100.0)
        ref = self.standby_w + sum(c[2] for c in self.cycles) + self.small_w + self.light_w + big
        if self.has_ev(var):
            ref += self.ev_w
        kind, heat = self.heating(var)
        if kind != "none":
            ref += heat
        return ref

    def away(self, day: int, var: Variation) -> bool:
        """Away from home (a trip): a few a year, 3-14 days each."""
        if var.away <= 0.0:
            return False
        slot = day // _AWAY_SLOT
        for s in (slot, slot - 1):
            if unit(self.seed, s, 60) < 0.4 * var.away:
                start = s * _AWAY_SLOT + int((_AWAY_SLOT - 3) * unit(self.seed, s, 61))
                length = 3 + int(11 * unit(self.seed, s, 62) ** 1.5)
                if start <= day < start + length:
                    return True
        return False

    def plan(self, day: int, holiday: bool, var: Variation) -> DayPlan:
        rng = random.Random(mix64(self.seed ^ mix64((day << 8) + 77)))
        u = rng.random
        weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
        weekend = holiday or weekday >= 5
        away = self.away(day, var)
        quiet = not away and u() < 0.05  # out all day: a visit, an excursion
        level = 1.0 - var.daily + 2.0 * var.daily * u()
        hourly = var.hourly
        wake = self.wake + (60 + 90 * u() if weekend else 30 * (u() - 0.5))
        sleep = self.sleep + (45 if weekday in (4, 5) else 0) + 30 * (u() - 0.5)
        out = not weekend and not self.at_home
        leave = self.leave + 20 * (u() - 0.5)
        back = self.back + 60 * (u() - 0.5)
        dark = darkness(day)
        acts: list[float] = []
        small: list[float] = []
        for h in range(24):
            t = h * 60 + 30
            if away:
                a = 0.0
            elif t < wake or t > sleep:
                a = 0.02
            elif out and leave <= t < back:
                a = self.out_activity
            elif quiet and 540 <= t < 1200:
                a = 0.04
            elif t < wake + 100:
                a = 0.7
            elif t < 1020:
                a = 0.45
            elif t < 1320:
                a = 0.9
            else:
                a = 0.55
            if a > 0.0:
                a *= 1.0 - hourly + 2.0 * hourly * u()
            acts.append(a)
            light = self.light_w * dark[h] * min(1.0, 2.0 * a) if a > 0.03 else 0.0
            small.append(self.small_w * a * level + light)
        runs = _Runs()
        if not away:
            self._appliances(runs, rng, day, weekend, weekday, acts, wake, sleep, out, back, var)
        self._household_heating(runs, day, acts, away, var)
        return DayPlan(day, away, quiet, not away, tuple(small), 0.45, tuple(runs.out))

    def _appliances(
        self,
        runs: _Runs,
        rng: random.Random,
        day: int,
        weekend: bool,
        weekday: int,
        acts: list[float],
        wake: float,
        sleep: float,
        out: bool,
        back: float,
        var: Variation,
    ) -> None:
        u = rng.random
        scale = var.appliances
        home = (not out) and acts[12] > 0.1  # at home around midday
        # Kettle: a few boils a day, 2-3 kW for 2-4 minutes.
        if self.kettle_w:
            for lo, hi, chance in (
                (wake, wake + 60, 0.8),
                (600, 720, 0.5 if home else 0.0),
                (900, 1020, 0.5 if home else 0.0),
                (back, back + 60, 0.5 if out else 0.0),
                (1200, 1290, 0.35),
            ):
                if u() < chance * scale:
                    runs.add("kettle", lo + (hi - lo) * u(), 2 + 2 * u(), self.kettle_w)
        # Microwave, toaster, hair dryer: a kW or two for a few minutes.
        for lo, hi in ((wake, wake + 75), (back if out else 690, (back if out else 690) + 120)):
            if u() < 0.6 * scale:
                runs.add("small_appliance", lo + (hi - lo) * u(), 2 + 8 * u(), 900 + 1100 * u())
        # Cooking: the hob around meals, the oven for some dinners and Sunday lunches.
        dinner = (1050 if weekend else max(back, 1050) if out else 1050) + 90 * u()
        if acts[int(dinner) // 60 % 24] > 0.1 and u() < (0.55 + 0.35 * self.cooking) * scale:
            if self.hob_w:
                runs.cycling("hob", dinner, 15 + 30 * u(), self.hob_w * (0.5 + 0.4 * u()), 4, 6)
            if self.oven_w and u() < (0.45 if weekend else 0.25):
                start = dinner - 20 - 20 * u()
                end = runs.add("oven", start, 10 + 4 * u(), self.oven_w)  # heating up
                runs.cycling("oven", end, 25 + 45 * u(), self.oven_w, 3 + int(3 * u()), 8)
        if self.hob_w and u() < 0.25 * scale:
            runs.add("hob", wake + 15 + 30 * u(), 5 + 8 * u(), self.hob_w * 0.5)
        if (weekend or home) and u() < 0.5 * self.cooking * scale:
            lunch = 690 + 60 * u()
            if self.hob_w:
                runs.cycling("hob", lunch, 15 + 25 * u(), self.hob_w * 0.6, 4, 6)
            if self.oven_w and weekday == 6 and u() < 0.5:
                end = runs.add("oven", lunch - 60, 12, self.oven_w)
                runs.cycling("oven", end, 60 + 40 * u(), self.oven_w, 4, 9)
        # Laundry: the washing machine heats its water for a quarter of an hour or so, then
        # turns and spins; a dryer often follows.
        washes = self.washes / 7.0 * (1.6 if weekend else 0.85) * scale
        t_free = 0.0
        while washes > 0.0 and u() < washes:
            washes -= 1.0
            if weekend or home:
                start = 480 + 660 * u()
            else:
                start = (back + 30 + 120 * u()) if u() < 0.8 else (wake - 15 + 20 * u())
            start = max(start, t_free)
            length = 60 + 60 * u()
            heat = 10 + 18 * u()
            runs.add("washing_machine", start, 3, 150.0)
            e = runs.add("washing_machine", start + 3, heat, 1900.0 + 400.0 * u())
            e = runs.add("washing_machine", e, length - heat - 11, 180.0 + 100.0 * u())
            e = runs.add("washing_machine", e, 8, 350.0 + 250.0 * u())
            t_free = e + 5
            if self.dryer_w and u() < 0.65:
                d0 = e + 5 + 30 * u()
                d1 = runs.add("dryer", d0, 35 + 25 * u(), self.dryer_w)
                d2 = runs.cycling("dryer", d1, 15, self.dryer_w, 2, 5)
                runs.add("dryer", d0, d2 - d0, 200.0)  # the drum's motor
                t_free = max(t_free, d2)
        # Dishwasher after dinner (on some weekend days after lunch too).
        if self.dishwasher_w and u() < (0.35 + 0.12 * self.persons) * scale:
            start = (sleep - 120 + 90 * u()) if u() < 0.8 else (810 + 60 * u())
            length = 100 + 60 * u()
            runs.add("dishwasher", start, length, 80.0)
            runs.add("dishwasher", start + 3, 14 + 6 * u(), self.dishwasher_w)
            runs.add("dishwasher", start + 0.65 * length, 10 + 5 * u(), self.dishwasher_w)
        # Vacuuming at weekends.
        if weekend and u() < 0.35 * scale:
            runs.add("vacuum", 570 + 300 * u(), 15 + 20 * u(), 900.0 + 700.0 * u())
        # A storage water heater: after the showers, or at night on an off-peak tariff.
        if self.water_w:
            use = (0.5 + 0.5 * self.persons) * (0.7 + 0.6 * u())
            if self.water_night:
                heat = min(90.0, 20 + 30 * use * (0.7 + 0.3 * u()))
                runs.add("water_heater", 1350 + 60 * u(), heat, self.water_w)
            else:
                heat = min(90.0, 15 + 25 * use)
                runs.add("water_heater", wake + 10 + 30 * u(), heat, self.water_w)
                if u() < 0.6:
                    runs.add("water_heater", 1140 + 120 * u(), 10 + 15 * use, self.water_w)
                if u() < 0.5:
                    runs.add("water_heater", 120 + 180 * u(), 8 + 8 * u(), self.water_w)
        # The EV: most evenings from when it is plugged in, for 2-4 hours.
        if self.has_ev(var) and u() < self.ev_days * (0.75 if weekend else 1.0):
            # Plugged in at its usual hour, or on an off-peak timer from after midnight
            # (then the whole run belongs to the next day).
            start = 1440 + 60 * u() if self.ev_timer else self.ev_minute + 120 * (u() - 0.5)
            length = 120 + 120 * u()
            taper = 15 + 10 * u()
            e = runs.add("ev", start, length - taper, self.ev_w)
            runs.add("ev", e, taper, self.ev_w * 0.5)

    def _household_heating(
        self, runs: _Runs, day: int, acts: list[float], away: bool, var: Variation
    ) -> None:
        kind, _ = self.heating(var)
        if kind == "none":
            return
        # Warm while people are up and about, cooler at night; away: frost protection.
        setpoints = [12.0] * 24 if away else [20.5 if a > 0.1 else 17.0 for a in acts]
        share = self._heat_hours(day, setpoints)
        self._heat_runs(runs, kind, share)


# -- businesses ---------------------------------------------------------------------------------

# Opening hours (open, close) in minutes per weekday, Monday first; None: closed.
_Hours = tuple[tuple[int, int] | None, ...]
_KINDS: tuple[tuple[str, float], ...] = (
    ("office", 0.35),
    ("shop", 0.35),
    ("bakery", 0.1),
    ("weekend", 0.2),
)


def _hours(kind: str, u: float, v: float) -> _Hours:
    if kind == "office":
        o, c = 450 + int(60 * u), 1020 + int(90 * v)  # 07:30-08:30 .. 17:00-18:30
        return ((o, c),) * 5 + (None, None)
    if kind == "shop":
        o, c = 510 + int(60 * u), 1080 + int(120 * v)  # 08:30-09:30 .. 18:00-20:00
        return ((o, c),) * 5 + ((o, 960 + int(120 * v)), None)
    if kind == "bakery":
        # Production from the small hours, the counter open from early morning.
        o = 150 + int(60 * u)
        return ((o, 1080),) * 5 + ((o, 780), (o + 120, 660))
    # Restaurants, cafés, leisure: open late in the week and at weekends.
    o = 660 + int(60 * u)
    thu = (1020, 1350) if v < 0.5 else None
    return (None, None, None, thu, (1020, 1380), (o, 1380), (o, 1230))


class Business(Site):
    """A business's constants: its kind, opening hours and levels."""

    def __init__(self, seed: int, phases: int) -> None:
        self.seed = seed
        rng = random.Random(mix64(seed ^ 0x427573696E657373))
        u = rng.random
        self.kind = _KINDS[_pick(u(), tuple(w for _, w in _KINDS))][0]
        self.hours = _hours(self.kind, u(), u())
        kind = self.kind
        self.open_w = {
            "office": 3000.0 + 12000.0 * u(),
            "shop": 4000.0 + 16000.0 * u(),
            "bakery": 3000.0 + 5000.0 * u(),
            "weekend": 6000.0 + 16000.0 * u(),
        }[kind]
        share = {"office": (0.06, 0.08), "shop": (0.1, 0.12), "bakery": (0.12, 0.1),
                 "weekend": (0.08, 0.1)}[kind]  # fmt: skip
        self.closed_w = self.open_w * (share[0] + share[1] * u())
        # Ovens of a bakery's production; a restaurant's kitchen at meal times.
        self.oven_w = 8000.0 + 14000.0 * u() if kind == "bakery" else 0.0
        self.kitchen_w = 0.3 * self.open_w * (0.7 + 0.6 * u()) if kind == "weekend" else 0.0
        # Refrigeration and cold rooms (shops, bakeries, restaurants) cycle all day.
        self.standby_w = self.closed_w
        self.cold_w = 0.0
        self.cycles = ()
        if kind != "office":
            period = _FRIDGE_PERIODS[int(u() * len(_FRIDGE_PERIODS))]
            on = int(period * (0.35 + 0.25 * u()))
            self.cold_w = self.closed_w * (0.6 + 0.6 * u())
            self.cycles = ((period, on, self.cold_w, int(u() * period)),)
        self._heat_u = unit(seed, 0, 41)
        self._heat_kind_u = unit(seed, 0, 44)
        self.heat_kind = "direct" if self._heat_kind_u < 0.4 else "heat_pump"
        self.heat_w = self.open_w * (0.3 + 0.5 * unit(seed, 0, 47))
        self._heat_period = (15, 20, 30)[int(3 * unit(seed, 0, 48))]

    def reference_w(self, var: Variation) -> float:
        """Its usual high, W: the open level with its cold rooms, ovens or kitchen, and its
        heating at full power if it heats electrically."""
        ref = self.closed_w + self.cold_w + 1.15 * self.open_w + self.oven_w + self.kitchen_w
        kind, heat = self.heating(var)
        if kind != "none":
            ref += heat
        return ref

    def opening(self, day: int, holiday: bool) -> tuple[int, int] | None:
        """Its opening hours that day (a public holiday: as on a Sunday)."""
        weekday = 6 if holiday else (day + 3) % 7
        return self.hours[weekday]

    def plan(self, day: int, holiday: bool, var: Variation) -> DayPlan:
        rng = random.Random(mix64(self.seed ^ mix64((day << 8) + 78)))
        u = rng.random
        spread = var.daily * 0.5
        level = 1.0 - spread + 2.0 * spread * u()
        hours = self.opening(day, holiday)
        open_w = self.open_w * level
        hourly = [0.0] * 24
        runs = _Runs()
        on = [False] * 24
        if hours is not None:
            o, c = hours
            for h in range(24):
                a, b = h * 60, h * 60 + 60
                if b <= o - 60 or a >= c + 30:
                    continue
                # Preparing an hour before opening, cleaning up half an hour after closing.
                inside = max(0, min(b, c) - max(a, o))
                before = max(0, min(b, o) - max(a, o - 60))
                after = max(0, min(b, c + 30) - max(a, c))
                shape = 1.0
                if self.kind == "office" and 720 <= a < 840:
                    shape = 0.85  # lunch
                elif self.kind == "shop" and a >= 900:
                    shape = 1.08
                w = open_w * shape * (0.95 + 0.1 * u())
                hourly[h] = (inside * w + before * 0.55 * w + after * 0.4 * w) / 60.0
                on[h] = inside + before > 0
            if self.oven_w:
                # Baking: the ovens cycle through the early production hours.
                runs.cycling("ovens", o, 240 + 60 * u(), self.oven_w * level, 7, 10)
            if self.kitchen_w:
                for lo, hi in ((690, 840), (1080, 1290)):
                    s, e = max(lo, o), min(hi, c)
                    if s < e:
                        runs.cycling("kitchen", s, e - s, self.kitchen_w * level, 6, 9)
        kind, _ = self.heating(var)
        if kind != "none":
            setpoints = [20.0 if on[h] else 14.0 for h in range(24)]
            share = self._heat_hours(day, setpoints)
            self._heat_runs(runs, kind, share)
        return DayPlan(day, False, False, hours is not None, tuple(hourly), 0.08, tuple(runs.out))


def make_site(profile: str, seed: int, phases: int) -> Site:
    """The site behind a meter of this profile."""
    return Business(seed, phases) if profile == "commercial" else Household(seed, phases)
