"""What the detectors remember: one small object per meter, one per transformer.

Per meter only numbers (no history lists, no dicts): 100,000 meters must fit in a
few hundred MB at most, and the whole state is written to one file for a restart.
Times are epoch ns (0 = none); spacings are seconds (0.0 = not learned yet); register
values and the last clock drift are NaN when unknown.
"""

from __future__ import annotations

import base64
import math
import sys
from array import array
from typing import Any, Final

from meter_gateway.config.topology import MeterPlace

__all__ = [
    "BASE_SLOTS",
    "CLOCK",
    "COMMS",
    "CONDITION_BITS",
    "CONS_HIGH",
    "CONS_LOW",
    "CONS_ZERO",
    "FREQUENCY",
    "IMBALANCE",
    "OVERCURRENT",
    "PHASE_LOSS",
    "POWER",
    "SAG",
    "SPIKE",
    "SWELL",
    "Limits",
    "MeterState",
    "TransformerState",
]

# One bit per condition a meter can have open: the hot path tests a bit, not a dict.
POWER: Final = 1 << 0
COMMS: Final = 1 << 1
PHASE_LOSS: Final = 1 << 2
SAG: Final = 1 << 3
SWELL: Final = 1 << 4
IMBALANCE: Final = 1 << 5
OVERCURRENT: Final = 1 << 6
FREQUENCY: Final = 1 << 7
CLOCK: Final = 1 << 8
SPIKE: Final = 1 << 9
CONS_HIGH: Final = 1 << 10
CONS_LOW: Final = 1 << 11
CONS_ZERO: Final = 1 << 12

CONDITION_BITS: dict[str, int] = {
    "power_outage": POWER,
    "comms_loss": COMMS,
    "phase_loss": PHASE_LOSS,
    "voltage_sag": SAG,
    "voltage_swell": SWELL,
    "phase_imbalance": IMBALANCE,
    "overcurrent": OVERCURRENT,
    "frequency_deviation": FREQUENCY,
    "clock_drift": CLOCK,
    "consumption_spike": SPIKE,
    "sustained_high_consumption": CONS_HIGH,
    "sustained_low_consumption": CONS_LOW,
    "zero_consumption": CONS_ZERO,
}

_NAN: Final = math.nan
# Consumption baseline slots a meter (day type x hour: detectors/consumption.py).
BASE_SLOTS: Final = 72


class Limits:
    """Voltage thresholds for one nominal voltage, shared by every meter that has it."""

    __slots__ = ("balanced_v", "floor_v", "high_v", "low_v", "nominal_v", "zero_v")

    def __init__(self, nominal_v: float, tolerance: float, unbalance_max: float = 0.0) -> None:
        self.nominal_v = nominal_v
        self.zero_v = 0.1 * nominal_v  # below 10 % of nominal a phase is dead, not sagging
        self.low_v = nominal_v * (1 - tolerance)
        self.high_v = nominal_v * (1 + tolerance)
        # For the engine's fast path: a phase at or above floor_v is neither dead nor
        # sagging; three phases at or above it that differ pairwise by less than
        # balanced_v are balanced (max |V_i - mean| <= 2/3 of the spread, mean >= floor),
        # with a margin far above rounding. 0 or less: always computed.
        self.floor_v = max(self.low_v, self.zero_v)
        self.balanced_v = 1.5 * self.floor_v * (unbalance_max - 1e-12) * (1 - 1e-9)


class TransformerState:
    """A transformer's meters that are out now, for the roll-up.

    `out` holds only meters that are out (few, usually none): meter id -> the
    interval [lo, hi] (ns) in which its outage began. A last gasp knows the moment
    (lo == hi); a silent meter only that it was after its last reading and before its
    next one was due.
    """

    __slots__ = ("cluster", "feeder_id", "meter_ids", "n_meters", "out", "transformer_id")

    def __init__(
        self, transformer_id: str, feeder_id: str | None, meter_ids: tuple[str, ...]
    ) -> None:
        self.transformer_id = transformer_id
        self.feeder_id = feeder_id
        self.meter_ids = meter_ids  # from the topology: every meter it feeds
        self.n_meters = len(meter_ids)
        self.out: dict[str, tuple[int, int]] = {}
        # The meters the open transformer_outage covers (empty while none is open).
        self.cluster: set[str] = set()

    def subject(self) -> dict[str, str]:
        subject = {"transformer_id": self.transformer_id}
        if self.feeder_id:
            subject["feeder_id"] = self.feeder_id
        return subject

    def dump(self) -> dict[str, Any]:
        return {"out": {k: list(v) for k, v in self.out.items()}, "cluster": sorted(self.cluster)}

    def load(self, data: dict[str, Any]) -> None:
        self.out = {str(k): (int(v[0]), int(v[1])) for k, v in data.get("out", {}).items()}
        self.cluster = {str(m) for m in data.get("cluster", [])}


# The fields written to a snapshot, in order: everything but the references to the
# topology (re-resolved from the topology given at the restart).
_SAVED = (
    "open",
    "last_ts",
    "last_arrival",
    "last_heard",
    "ts_spacing_s",
    "arrival_spacing_s",
    "burst",
    "lwt_offline_ns",
    "suspect",
    "sag_since",
    "swell_since",
    "imbalance_since",
    "drift_prev_s",
    "last_import",
    "last_export",
    "decrease_episode",
    "reverse_ts",
    "reverse_clean",
    "tamper_ts",
    # Consumption (an older snapshot without them: a fresh baseline).
    "imp_ts",
    "learned_h",
    "peak_kw",
    "high_since",
    "zero_since",
    "zero_exp",
    "high_kwh",
    "low_since",
    "low_act",
    "low_exp",
    "base",
    # Clock (detectors/meter_alarms.py): readings or rejections that say the clock is off.
    "clock_n",
    "clock_prev_s",
    # Consumption, added later (an older snapshot without them: fresh values).
    "mean_kw",
    "low_base",
    "low_hour",
    "hours",
    "high_usual",
    "low_active",
)
_LITTLE: Final = sys.byteorder == "little"


class MeterState:
    """One meter's detector state (about 0.5 KiB with its numbers, 1.8 KiB once it has a
    consumption baseline)."""

    __slots__ = (
        "arrival_spacing_s",
        "base",
        "burst",
        "clock_n",
        "clock_prev_s",
        "decrease_episode",
        "drift_prev_s",
        "due",
        "high_kwh",
        "high_since",
        "high_usual",
        "hours",
        "imbalance_since",
        "imp_ts",
        "last_arrival",
        "last_export",
        "last_heard",
        "last_import",
        "last_ts",
        "learned_h",
        "limits",
        "low_act",
        "low_active",
        "low_base",
        "low_exp",
        "low_hour",
        "low_since",
        "lwt_offline_ns",
        "mean_kw",
        "meter_id",
        "open",
        "peak_kw",
        "place",
        "prosumer",
        "reverse_clean",
        "reverse_ts",
        "sag_since",
        "suspect",
        "swell_since",
        "tamper_ts",
        "three_phase",
        "ts_spacing_s",
        "tx",
        "zero_exp",
        "zero_since",
    )

    def __init__(
        self,
        meter_id: str,
        place: MeterPlace | None,
        tx: TransformerState | None,
        limits: Limits,
    ) -> None:
        self.meter_id = meter_id
        self.place = place
        self.tx = tx
        self.limits = limits
        # None: not in the topology; judged from the reading (L2 and L3 present).
        self.three_phase: bool | None = (
            None if place is None or place.phases is None else (place.phases == 3)
        )
        self.prosumer = place is not None and place.prosumer
        self.open = 0  # bits of the conditions open now
        self.last_ts = 0  # the newest reading's own ts
        self.last_arrival = 0  # the clock when the last reading arrived
        self.last_heard = 0  # ... or the last sign of life (a reading, a meter event)
        self.ts_spacing_s = 0.0  # learned spacing of the readings' ts
        self.arrival_spacing_s = 0.0  # learned spacing of their arrivals (batches)
        self.burst = 0  # readings in the latest batch (arrivals less than 1 s apart)
        self.due = 0  # when the silence check is queued for (0: not queued)
        self.lwt_offline_ns = 0  # an LWT offline waiting for silence to confirm it
        self.suspect = False  # silent past its due time, counted in the transformer roll-up
        self.sag_since = 0
        self.swell_since = 0
        self.imbalance_since = 0
        self.drift_prev_s = _NAN
        self.last_import = _NAN
        self.last_export = _NAN
        self.decrease_episode = False
        self.reverse_ts = 0  # last reverse-flow reading of the current episode
        self.reverse_clean = 0  # readings without reverse flow since
        self.tamper_ts = 0
        # Clock (meter_alarms.py): how many readings (or rejections) in a row said the
        # clock is off without being a newest reading, and the drift of the last, s.
        self.clock_n = 0
        self.clock_prev_s = _NAN
        # Consumption (detectors/consumption.py). The baseline: per slot level and
        # count as array('f'), made at the meter's first interval.
        self.base: array[float] | None = None
        self.imp_ts = 0  # ts of last_import
        self.learned_h = 0.0  # hours of intervals learned (the warm-up)
        self.peak_kw = 0.0  # its usual high: a fading maximum of its interval kW
        self.mean_kw = 0.0  # its mean consumption, kW (about the last two weeks)
        self.high_since = 0  # start of a run of intervals well above their expected
        self.high_kwh = 0.0  # ... and its energy above the expected, kWh
        self.high_usual = 0.0  # the most energy a run of its normal life had, kWh (fading)
        self.zero_since = 0  # start of a run of intervals without consumption
        self.zero_exp = 0.0  # ... the expected consumption over it, kWh
        self.low_since = 0  # when the day's ratio to the expected fell below the clear level
        self.low_act = 0.0  # the last judged day's consumption, kWh
        self.low_exp = 0.0  # ... and its expected, kWh
        self.low_base = 0.0  # its night floor: the second-quietest hour of a day, kWh
        self.low_active = 0.0  # the usual share of a half-day's use above its quietest hour
        self.low_hour = 0  # the epoch hour the hourly sums are filling
        # The last 24 hours by hour of day: consumption, expected (kWh), hours covered.
        self.hours: array[float] | None = None

    def subject(self) -> dict[str, str]:
        """The event subject: meter first, then the ids the topology knows."""
        subject = {"meter_id": self.meter_id}
        place = self.place
        if place is not None:
            if place.transformer_id:
                subject["transformer_id"] = place.transformer_id
            if place.feeder_id:
                subject["feeder_id"] = place.feeder_id
        return subject

    def dump(self) -> list[Any]:
        """The saved fields in `_SAVED`'s order (explicitly: compiled, each is a field read).

        NaN is not JSON: None stands for it. The baseline and the hourly sums: base64
        of little-endian float32s (768 and 384 characters)."""
        return [
            self.open,
            self.last_ts,
            self.last_arrival,
            self.last_heard,
            _json(self.ts_spacing_s),
            _json(self.arrival_spacing_s),
            self.burst,
            self.lwt_offline_ns,
            self.suspect,
            self.sag_since,
            self.swell_since,
            self.imbalance_since,
            _json(self.drift_prev_s),
            _json(self.last_import),
            _json(self.last_export),
            self.decrease_episode,
            self.reverse_ts,
            self.reverse_clean,
            self.tamper_ts,
            self.imp_ts,
            _json(self.learned_h),
            _json(self.peak_kw),
            self.high_since,
            self.zero_since,
            _json(self.zero_exp),
            _json(self.high_kwh),
            self.low_since,
            _json(self.low_act),
            _json(self.low_exp),
            _b64(self.base),
            self.clock_n,
            _json(self.clock_prev_s),
            _json(self.mean_kw),
            _json(self.low_base),
            self.low_hour,
            _b64(self.hours),
            _json(self.high_usual),
            _json(self.low_active),
        ]

    def load(self, values: list[Any]) -> None:
        """Take up `dump()`'s list (a shorter one, from an older version, leaves the rest
        as a fresh state has it); TypeError or ValueError on a value of the wrong kind (a
        damaged file), before it could fail a reading later."""
        if type(values) is not list:
            raise TypeError(f"meter state is {type(values).__name__}, not a list")
        n = len(_SAVED)
        v = values[:n] + _FRESH[len(values) :] if len(values) < n else values
        self.open = _int(v[0], "open")
        self.last_ts = _int(v[1], "last_ts")
        self.last_arrival = _int(v[2], "last_arrival")
        self.last_heard = _int(v[3], "last_heard")
        self.ts_spacing_s = _float(v[4], "ts_spacing_s")
        self.arrival_spacing_s = _float(v[5], "arrival_spacing_s")
        self.burst = _int(v[6], "burst")
        self.lwt_offline_ns = _int(v[7], "lwt_offline_ns")
        self.suspect = bool(v[8])
        self.sag_since = _int(v[9], "sag_since")
        self.swell_since = _int(v[10], "swell_since")
        self.imbalance_since = _int(v[11], "imbalance_since")
        self.drift_prev_s = _float(v[12], "drift_prev_s")
        self.last_import = _float(v[13], "last_import")
        self.last_export = _float(v[14], "last_export")
        self.decrease_episode = bool(v[15])
        self.reverse_ts = _int(v[16], "reverse_ts")
        self.reverse_clean = _int(v[17], "reverse_clean")
        self.tamper_ts = _int(v[18], "tamper_ts")
        self.imp_ts = _int(v[19], "imp_ts")
        self.learned_h = _float(v[20], "learned_h")
        self.peak_kw = _float(v[21], "peak_kw")
        self.high_since = _int(v[22], "high_since")
        self.zero_since = _int(v[23], "zero_since")
        self.zero_exp = _float(v[24], "zero_exp")
        self.high_kwh = _float(v[25], "high_kwh")
        self.low_since = _int(v[26], "low_since")
        self.low_act = _float(v[27], "low_act")
        self.low_exp = _float(v[28], "low_exp")
        self.base = _floats(v[29], _BASE_LEN)
        if self.base is None and v[29]:
            # The version before kept a deviation row between level and count.
            old = _floats(v[29], 3 * BASE_SLOTS)
            if old is not None:
                self.base = old[:BASE_SLOTS] + old[2 * BASE_SLOTS :]
        self.clock_n = _int(v[30], "clock_n")
        self.clock_prev_s = _float(v[31], "clock_prev_s")
        self.mean_kw = _float(v[32], "mean_kw")
        self.low_base = _float(v[33], "low_base")
        self.low_hour = _int(v[34], "low_hour")
        self.hours = _floats(v[35], _HOURS_LEN)
        self.high_usual = _float(v[36], "high_usual")
        self.low_active = _float(v[37], "low_active")
        if self.hours is None:
            self.low_hour = 0
        if self.zero_exp < 0.0:  # an excursion of the version before: not carried on
            self.zero_exp = 0.0


def _json(x: float) -> float | None:
    return None if x != x else x


def _int(x: Any, key: str) -> int:
    if type(x) is not int:
        raise TypeError(f"{key}: {x!r} is not an integer")
    return x


def _float(x: Any, key: str) -> float:
    if x is None:
        return _NAN
    if type(x) is not float and type(x) is not int:
        raise TypeError(f"{key}: {x!r} is not a number")
    return float(x)


def _b64(a: array[float] | None) -> str | None:
    """An array('f') as base64 of its little-endian float32s."""
    if a is None:
        return None
    if not _LITTLE:
        a = array("f", a)
        a.byteswap()
    return base64.b64encode(a.tobytes()).decode()


def _floats(text: Any, size: int) -> array[float] | None:
    """A dumped array('f'); None (fresh) when absent or not of the current shape."""
    if not text:
        return None
    if type(text) is not str:
        raise TypeError(f"float array: {text!r} is not text")
    base = array("f")
    base.frombytes(base64.b64decode(text))
    if not _LITTLE:
        base.byteswap()
    return base if len(base) == size else None


_BASE_LEN: Final = 2 * BASE_SLOTS
_HOURS_LEN: Final = 3 * 24

# What a fresh state saves: the values an older, shorter snapshot leaves as they are.
_FRESH: Final = MeterState("", None, None, Limits(1.0, 0.0)).dump()
assert len(_FRESH) == len(_SAVED)
