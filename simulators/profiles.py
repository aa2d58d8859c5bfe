"""The world the meters live in: weather, daylight, PV, the grid's load and frequency, how
sites live (``Variation``), and the counter-based noise they all draw from.

Every value here is a pure function of (a meter's seed, a time step). That is deliberate: a
meter's power at time t must not depend on how often or in which order somebody looked at it
(the MQTT fleet advances meters every interval, a Modbus server on every poll), so the noise
cannot come from a sequential random stream. A 64-bit mixing hash of (seed, step, salt) gives
the same numbers whatever the call pattern, and is fast enough for a fleet; minute-by-minute
noise comes from a table of such numbers shared by the fleet, at an offset hashed from
(seed, day).
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DAY_S",
    "NOISE",
    "NOISE_LEN",
    "Profile",
    "Variation",
    "darkness",
    "grid_frequency_hz",
    "grid_load_index",
    "mix64",
    "noise_slice",
    "outdoor_c",
    "pv_clear_sky",
    "shape",
    "stable_seed",
    "temperature_c",
    "unit",
    "unit_pair",
]

Profile = Literal["household", "commercial"]

DAY_S = 86_400
_M64 = (1 << 64) - 1
_INV_2_64 = 1.0 / float(1 << 64)
_INV_2_32 = 1.0 / float(1 << 32)


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from the parts' text; stable across processes (unlike ``hash()``)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def mix64(x: int) -> int:
    """The splitmix64 finaliser: a cheap bijective scrambler with good avalanche."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


_mix64 = mix64


def unit(seed: int, step: int, salt: int) -> float:
    """A uniform number in [0, 1) determined by (seed, step, salt) alone."""
    return _mix64(seed ^ _mix64((step << 8) + salt)) * _INV_2_64


def unit_pair(seed: int, step: int, salt: int) -> tuple[float, float]:
    """Two independent uniforms in [0, 1) from one hash (its high and low 32 bits)."""
    h = _mix64(seed ^ _mix64((step << 8) + salt))
    return (h >> 32) * _INV_2_32, (h & 0xFFFFFFFF) * _INV_2_32


def _normalised(weekday: list[float], weekend: list[float]) -> tuple[tuple[float, ...], ...]:
    # Scale both by the weekday mean; a weekend keeps its own level (an office uses far less
    # on a Sunday).
    mean = sum(weekday) / len(weekday)
    return tuple(v / mean for v in weekday), tuple(v / mean for v in weekend)


# The average load of many sites (not one: each site lives by ``loads``), relative to the
# weekday mean, local time, one value per hour (linearly interpolated in between): what the
# low-voltage grid carries, which drives the feeder voltage drop (``grid_load_index``).
# Households: a breakfast bump and an evening peak; at weekends a later morning and more use
# at midday. Businesses: open 8-18 on weekdays, base load otherwise.
# fmt: off
_HOUSEHOLD = _normalised(
    [0.55, 0.45, 0.40, 0.38, 0.38, 0.45, 0.80, 1.30, 1.20, 0.85, 0.75, 0.75,
     0.85, 0.80, 0.70, 0.70, 0.85, 1.30, 1.80, 2.00, 1.80, 1.50, 1.10, 0.80],
    [0.60, 0.50, 0.42, 0.40, 0.38, 0.40, 0.50, 0.75, 1.10, 1.35, 1.30, 1.20,
     1.30, 1.15, 1.00, 0.95, 1.05, 1.40, 1.80, 1.95, 1.80, 1.55, 1.20, 0.85],
)
_COMMERCIAL = _normalised(
    [0.30, 0.30, 0.30, 0.30, 0.30, 0.32, 0.45, 0.80, 1.40, 1.70, 1.75, 1.75,
     1.55, 1.70, 1.75, 1.70, 1.60, 1.25, 0.70, 0.45, 0.38, 0.35, 0.32, 0.30],
    [0.30, 0.30, 0.30, 0.30, 0.30, 0.30, 0.30, 0.32, 0.40, 0.45, 0.45, 0.45,
     0.45, 0.45, 0.42, 0.40, 0.38, 0.35, 0.33, 0.32, 0.30, 0.30, 0.30, 0.30],
)
_SHAPES: dict[tuple[str, bool], tuple[float, ...]] = {
    ("household", False): _HOUSEHOLD[0],
    ("household", True): _HOUSEHOLD[1],
    ("commercial", False): _COMMERCIAL[0],
    ("commercial", True): _COMMERCIAL[1],
}
# fmt: on
_HOUSEHOLD_PEAK = max(_SHAPES[("household", False)])


def shape(profile: Profile, t: float) -> float:
    """Load at epoch seconds ``t`` relative to the weekday mean (simulated clock = local)."""
    day, sec = divmod(t, DAY_S)
    weekend = (int(day) + 3) % 7 >= 5  # 1970-01-01 was a Thursday; Monday = 0
    table = _SHAPES[(profile, weekend)]
    h = sec / 3600.0
    i = int(h)
    frac = h - i
    return table[i] * (1.0 - frac) + table[(i + 1) % 24] * frac


@dataclass(frozen=True, slots=True)
class Variation:
    """How the simulated sites live (``loads``): every meter follows these defaults; a
    ``load_variation`` scenario entry sets other values for its target and window.

    Every part is a pure function of (meter seed, day), so it stays deterministic however
    the meter is polled.
    """

    daily: float = 0.2  # activity varies day to day within 1 +- daily (businesses: half)
    hourly: float = 0.3  # households: occupancy varies hour to hour within 1 +- hourly
    appliances: float = 1.0  # households: how often the appliances run (1: as drawn, 0: never)
    ev_share: float = 0.08  # households charging an EV (3.7-11 kW, 2-4 h, most evenings)
    heating_share: float = 0.1  # sites heating electrically, following the outdoor temperature
    away: float = 1.0  # households away from home (1: a few trips a year, 0: never)


_TEMP_SEED = stable_seed("weather")


@functools.cache
def temperature_c(day: int) -> float:
    """Fleet-wide daily mean outdoor temperature for epoch day ``day``: a seasonal curve
    (about 1 C in mid January, 19 C in mid July) plus weather spells of a few days (+-4 C,
    interpolated between random values every third day)."""
    season = 10.0 - 9.0 * math.cos(2.0 * math.pi * ((day - 15) % 365.25) / 365.25)
    knot, frac = divmod(day, 3)
    a, b = unit(_TEMP_SEED, knot, 0), unit(_TEMP_SEED, knot + 1, 0)
    return season + 8.0 * ((a + (b - a) * frac / 3.0) - 0.5)


@functools.lru_cache(maxsize=64)
def outdoor_c(day: int) -> tuple[float, ...]:
    """The outdoor temperature of each hour of epoch day ``day``: the day's mean
    (``temperature_c``) plus a daily swing of +-3.5 C, coldest around 04:00, warmest around
    16:00 (a simple weather series: what electric heating follows)."""
    mean = temperature_c(day)
    return tuple(mean + 3.5 * math.cos(2.0 * math.pi * (h + 0.5 - 16.0) / 24.0) for h in range(24))


@functools.lru_cache(maxsize=64)
def darkness(day: int) -> tuple[float, ...]:
    """How dark each hour of epoch day ``day`` is, 0 (daylight) to 1 (night), at about 50 N:
    about 8 hours of daylight in late December, 16 in late June (lighting follows it)."""
    length = 12.0 - 4.0 * math.cos(2.0 * math.pi * ((day + 10) % 365.25) / 365.25)
    rise, set_ = 12.5 - length / 2.0, 12.5 + length / 2.0
    out = []
    for h in range(24):
        light = min(h + 1.0, set_) - max(float(h), rise)
        out.append(1.0 - min(1.0, max(0.0, light)))
    return tuple(out)


# Uniform noise shared by the fleet: a site-day takes a 1440-minute slice of it at an offset
# drawn from (its seed, the day), which costs a list slice instead of 1440 hashes.
_NOISE_SEED = stable_seed("minute-noise")
NOISE_LEN = 1440 * 16
NOISE: list[float] = [unit(_NOISE_SEED, i, 0) for i in range(NOISE_LEN + 1440)]


def noise_slice(seed: int, day: int, salt: int) -> list[float]:
    """1440 uniforms in [0, 1) for one site-day, a pure function of (seed, day, salt)."""
    off = mix64(seed ^ mix64((day << 8) + salt)) % NOISE_LEN
    return NOISE[off : off + 1440]


def grid_load_index(t: float) -> float:
    """How loaded the low-voltage grid is, 0 (night) to 1 (evening peak): drives voltage drop."""
    return shape("household", t) / _HOUSEHOLD_PEAK


def pv_clear_sky(t: float) -> float:
    """Clear-sky PV output relative to peak, 0 at night; sun up 06:00-18:00 simulated time."""
    h = (t % DAY_S) / 3600.0
    if h <= 6.0 or h >= 18.0:
        return 0.0
    return math.sin(math.pi * (h - 6.0) / 12.0) ** 1.5


# Grid frequency is shared by every meter on the grid, so it depends on time only.
_FREQ_SEED = stable_seed("grid-frequency")


def grid_frequency_hz(t: float, step_s: int = 60) -> float:
    """Grid frequency: 50 Hz with a slow wander of a few tens of mHz."""
    k = int(t // step_s)
    return (
        50.0 + 0.06 * (unit(_FREQ_SEED, k, 0) - 0.5) + 0.02 * (unit(_FREQ_SEED, k // 15, 1) - 0.5)
    )
