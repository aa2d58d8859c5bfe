"""Validation (VEE): schema -> plausibility -> meter-aware rules.

`Validator` is pure (schema and plausibility: a dict in, a Reading or an `Invalid`
with a reason a person can act on). `MeterRules` keeps a little state per meter
for the rules that need history: a register that goes down, duplicates.

This is the hot path: straight-line code over the parsed dict, no per-reading
model construction beyond the Reading itself.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NoReturn, cast

from meter_gateway.config.schema import ValidationConfig
from meter_gateway.gateway.reading import CURRENT_FIELDS, FIELDS, VOLTAGE_FIELDS, Reading
from meter_gateway.protocols.formats import (
    ID_RULE,
    METER_ID,
    BadId,
    check_meter_id,
    id_problem,
    short_repr,
)

__all__ = [
    "ID_RULE",
    "METER_ID",
    "BadId",
    "Flag",
    "Invalid",
    "MeterRules",
    "Validator",
    "check_meter_id",
    "format_ts",
]

# The id rule lives with the payload formats (the lowest layer, which checks topic
# levels and device names before anything is made of them); validation applies the
# same rule to every reading's meter_id, whatever format made it.
_METER_ID = METER_ID
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INF = math.inf
_MAX = sys.float_info.max  # a finite "no upper bound", so the fast path rejects infinity
_NS = 1_000_000_000
# Epoch seconds a meter can mean: 1970 up to the end of year 9999 (what RFC 3339 and
# datetime can express). Beyond that the number is in other units, or garbage.
_EPOCH_S_MAX = 253_402_300_799
# A Reading made without NamedTuple's generated __new__ (a Python call per reading): the
# same tuple, fields in order, quality "actual".
_new_tuple = tuple.__new__
_YEAR_S = 31_556_952  # mean Gregorian year
# No meter register counts this far (1,000 TWh; displays stop at 9 or 10 digits):
# a larger value is garbage, not a reading.
REGISTER_MAX_KWH = 1e12
MEASUREMENT_KEYS = (
    "energy_import_kwh",
    "energy_export_kwh",
    "power_w",
    "voltage_v",
    "current_a",
    "power_factor",
    "frequency_hz",
)


class Invalid(ValueError):
    """A reading that cannot be stored; the message names the field and the bound.

    `field` is the key at fault (`voltage_v`, `ts`, or `reading` for the whole) and
    `kind` what is wrong with it (missing, type, range, time, shape): labels for
    metrics, so that counting never depends on the wording of a message.
    `clock` is set when the reading's time is beyond the age or future bound (of a
    meter whose id passed): the finding the detectors take as a sign of a wrong clock.
    """

    def __init__(self, message: str, *, field: str, kind: str, clock: Flag | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.kind = kind
        self.clock = clock


@dataclass(slots=True, frozen=True)
class Flag:
    """A rule's finding about a stored reading (it is stored as `suspect`), or, for
    `ts_too_old` and `ts_in_future`, about a reading rejected for its time (its
    `Invalid.clock`: the meter's clock may be wrong)."""

    # "register_decrease" | "duplicate_conflict" | "out_of_order_register"
    # | "ts_too_old" | "ts_in_future"
    kind: str
    meter_id: str
    ts_ns: int
    message: str
    # ts_too_old / ts_in_future: the bound the time is beyond, s (max_age_s / max_future_s)
    bound_s: float = 0.0


def format_ts(ts_ns: int) -> str:
    """RFC 3339 text of a time; never raises (a reason must not fail on a bad time)."""
    try:
        return (_EPOCH + timedelta(microseconds=ts_ns // 1000)).isoformat().replace("+00:00", "Z")
    except OverflowError:
        return f"epoch {ts_ns // _NS} s"


def _type_name(v: object) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, str):
        return "a string"
    if v is None:
        return "null"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, int | float):
        return "a number"
    return type(v).__name__


def _number(key: str, v: object, lo: float, hi: float, field: str) -> float:
    """The slow path: convert an integer, or say exactly what is wrong."""
    t = type(v)
    if t is int:
        try:
            v = float(v)  # type: ignore[arg-type]
        except OverflowError:
            raise Invalid(
                f"{key}: {short_repr(v)} is out of range", field=field, kind="range"
            ) from None
    elif t is not float or v != v or v in (_INF, -_INF):
        raise _bad_number(key, v, field)
    if v < lo:  # type: ignore[operator]
        raise Invalid(f"{key}: {v!r} below {lo!r}", field=field, kind="range")
    if v > hi:  # type: ignore[operator]
        raise Invalid(f"{key}: {v!r} above {hi!r}", field=field, kind="range")
    return v  # type: ignore[return-value]


def _bad_number(key: str, v: object, field: str) -> Invalid:
    if isinstance(v, float):  # only NaN and infinities get here
        return Invalid(
            f"{key}: {v!r} is not a number (NaN and Infinity are not allowed)",
            field=field,
            kind="type",
        )
    if isinstance(v, list | dict):
        return Invalid(f"{key}: expected a number, got {short_repr(v)}", field=field, kind="type")
    return Invalid(
        f"{key}: expected a number, got {_type_name(v)} {short_repr(v)}", field=field, kind="type"
    )


class Validator:
    """Schema and plausibility checks; no state but caches."""

    def __init__(self, bounds: ValidationConfig | None = None) -> None:
        b = bounds or ValidationConfig()
        self._max_future_ns = int(b.max_future_s * _NS)
        self._max_age_ns = int(b.max_age_s * _NS)
        self._max_age_text = _duration_text(b.max_age_s)
        # (payload key, which is also the storage field, low, high); checked in this order.
        self._scalars = (
            ("energy_import_kwh", 0.0, REGISTER_MAX_KWH),
            ("energy_export_kwh", 0.0, REGISTER_MAX_KWH),
            ("power_w", -b.power_max_w, b.power_max_w),
            ("power_factor", -1.0, 1.0),
            ("frequency_hz", b.frequency_min_hz, b.frequency_max_hz),
        )
        self._phases = (
            ("voltage_v", VOLTAGE_FIELDS, 0.0, b.voltage_max_v),
            ("current_a", CURRENT_FIELDS, -b.current_max_a, b.current_max_a),
        )
        self._ids: set[str] = set()  # meter ids already seen valid
        self._ts_cache: dict[str, int] = {}  # batches share timestamps

    def check(self, obj: dict, source: str, now_ns: int) -> Reading:
        """Return the reading, or raise Invalid naming the first problem."""
        meter_id = obj.get("meter_id")
        # The type first: a list or an object is unhashable and cannot be looked up.
        if type(meter_id) is not str or meter_id not in self._ids:
            meter_id = self._check_meter_id(meter_id)
        ts = obj.get("ts")
        # A time seen before (a fleet shares its timestamps): the cache, without a call.
        ts_ns = self._ts_cache.get(ts) if type(ts) is str else None
        if ts_ns is None:
            ts_ns = self._ts(ts)
        if ts_ns > now_ns + self._max_future_ns:
            self._beyond(
                f"ts: {format_ts(ts_ns)} is {(ts_ns - now_ns) / _NS:.0f} s in the future "
                f"(limit {self._max_future_ns / _NS:.0f} s; check the meter's clock)",
                "ts_in_future",
                meter_id,
                ts_ns,
                self._max_future_ns,
            )
        if ts_ns < now_ns - self._max_age_ns:
            self._beyond(
                f"ts: {format_ts(ts_ns)} is older than the maximum age of {self._max_age_text}",
                "ts_too_old",
                meter_id,
                ts_ns,
                self._max_age_ns,
            )

        # Fast path: a float inside its bounds (NaN and infinities fail the chained
        # comparison); anything else goes to _number() for conversion or a reason.
        values: dict[str, float] = {}
        get = obj.get
        for key, lo, hi in self._scalars:
            v = get(key)
            if v is None:
                continue
            if type(v) is not float or not lo <= v <= hi:
                v = _number(key, v, lo, hi, key)
            values[key] = v
        for key, names, lo, hi in self._phases:
            v = get(key)
            if v is None:
                continue
            if type(v) is list:
                n = len(v)
                if n == 3:
                    a, b, c = v
                    if not (
                        type(a) is float
                        and type(b) is float
                        and type(c) is float
                        and lo <= a <= hi
                        and lo <= b <= hi
                        and lo <= c <= hi
                    ):
                        a = _number(f"{key}[0]", a, lo, hi, key)
                        b = _number(f"{key}[1]", b, lo, hi, key)
                        c = _number(f"{key}[2]", c, lo, hi, key)
                    values[names[0]] = a
                    values[names[1]] = b
                    values[names[2]] = c
                elif n == 1:
                    values[names[0]] = _number(f"{key}[0]", v[0], lo, hi, key)
                else:
                    raise Invalid(
                        f"{key}: expected one number or a list of three (L1, L2, L3), "
                        f"got a list of {n}",
                        field=key,
                        kind="shape",
                    )
            else:
                if type(v) is not float or not lo <= v <= hi:
                    v = _number(key, v, lo, hi, key)
                values[names[0]] = v
        if not values:
            raise Invalid(
                "no measurement: a reading needs at least one of " + ", ".join(MEASUREMENT_KEYS),
                field="reading",
                kind="missing",
            )
        return _new_tuple(Reading, (meter_id, ts_ns, source, values, "actual"))

    @staticmethod
    def _beyond(message: str, kind: str, meter_id: str, ts_ns: int, bound_ns: int) -> NoReturn:
        """A time beyond the age or future bound: rejected, with the clock finding."""
        raise Invalid(
            message,
            field="ts",
            kind="time",
            clock=Flag(kind, meter_id, ts_ns, message, bound_ns / _NS),
        )

    def _check_meter_id(self, meter_id: object) -> str:
        """`meter_id` when it follows the id rule (and is remembered); else Invalid."""
        if meter_id is None:
            raise Invalid("meter_id: missing", field="meter_id", kind="missing")
        if type(meter_id) is not str:
            got = _type_name(meter_id)
            if isinstance(meter_id, int | float):
                got += f" {short_repr(meter_id)}"
            raise Invalid(f"meter_id: expected text, got {got}", field="meter_id", kind="type")
        if not _METER_ID.fullmatch(meter_id):
            raise Invalid(id_problem(meter_id) or "", field="meter_id", kind="format")
        if len(self._ids) < 1_000_000:
            self._ids.add(meter_id)
        return meter_id

    def _ts(self, ts: object) -> int:
        t = type(ts)
        if t is str:
            text = cast(str, ts)  # `t is str` (mypy narrows only `type(ts) is str` itself)
            cached = self._ts_cache.get(text)
            if cached is not None:
                return cached
            ns = _parse_rfc3339(text)
            if len(self._ts_cache) >= 4096:
                self._ts_cache.clear()
            self._ts_cache[text] = ns
            return ns
        if t is int:
            if not 0 <= ts <= _EPOCH_S_MAX:  # type: ignore[operator]
                raise _bad_epoch(ts)  # type: ignore[arg-type]
            return ts * _NS  # type: ignore[operator]
        if t is float and ts == ts and ts not in (_INF, -_INF):
            if not 0 <= ts <= _EPOCH_S_MAX:  # type: ignore[operator]
                raise _bad_epoch(ts)  # type: ignore[arg-type]
            return round(ts * 1_000_000) * 1000  # type: ignore[operator]
        if ts is None:
            raise Invalid(
                "ts: missing (RFC 3339 with an offset, or epoch seconds)",
                field="ts",
                kind="missing",
            )
        raise Invalid(
            f"ts: expected RFC 3339 text or epoch seconds, got {_type_name(ts)} {short_repr(ts)}",
            field="ts",
            kind="type",
        )


def _bad_epoch(ts: float) -> Invalid:
    """Explain an epoch number that cannot be seconds, guessing the unit it is in."""
    shown = short_repr(ts)
    if ts < 0:
        return _ts_invalid(f"{shown} is before 1970 (epoch seconds cannot be negative)")
    if ts > 1e30:  # an int this long does not even convert to a float
        return _ts_invalid(f"{shown} is far beyond year 9999; not a time")
    for unit, scale in (("milliseconds", 1e3), ("microseconds", 1e6), ("nanoseconds", 1e9)):
        if ts / scale <= _EPOCH_S_MAX:
            year = 1970 + int(ts / _YEAR_S)
            return _ts_invalid(f"{shown} is not epoch seconds (year {year}); epoch {unit}?")
    return _ts_invalid(f"{shown} is far beyond year 9999; not a time")


def _ts_invalid(detail: str) -> Invalid:
    return Invalid(f"ts: {detail}", field="ts", kind="time")


def _parse_rfc3339(text: str) -> int:
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise _ts_invalid(f"{text[:40]!r} is not an RFC 3339 time") from None
    if dt.tzinfo is None:
        # A time without an offset is ambiguous across time zones: rejected, not guessed.
        raise _ts_invalid(f"{text[:40]!r} has no UTC offset (add 'Z' or '+01:00')")
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * _NS + delta.microseconds * 1000


def _duration_text(seconds: float) -> str:
    if seconds % 86_400 == 0:
        return f"{seconds / 86_400:.0f} days"
    if seconds % 3600 == 0:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds:.0f} s"


class _MeterState:
    __slots__ = ("last_export", "last_import", "last_ts", "recent")

    def __init__(self) -> None:
        self.last_ts = -1
        self.last_import: float | None = None
        self.last_export: float | None = None
        # ts_ns -> fingerprint << 16 | its fields' mask (a list of them when partial
        # readings of one time complement each other), oldest first.
        self.recent: dict[int, int | list[int]] = {}


# Which storage fields a reading carries, as bits: partial readings of one time (a
# Shelly's power and its energy counters in two messages) complement each other.
_FIELD_BIT = {name: 1 << i for i, name in enumerate(FIELDS)}
_MASKS: dict[tuple[str, ...], int] = {}
_MASK_BITS = 16
_MASK_MASK = (1 << _MASK_BITS) - 1


def _fields_mask(keys: tuple[str, ...]) -> int:
    m = _MASKS.get(keys)
    if m is None:
        m = 0
        for k in keys:
            m |= _FIELD_BIT.get(k, 0)
        if len(_MASKS) < 4096:  # a few dozen field sets in practice; bounded anyway
            _MASKS[keys] = m
    return m


class MeterRules:
    """Meter-aware rules: register decrease, duplicates, out-of-order registers.

    State is per meter and bounded (`duplicate_window` timestamps per meter).
    """

    def __init__(self, duplicate_window: int = 16) -> None:
        self._window = duplicate_window
        self._meters: dict[str, _MeterState] = {}
        self.duplicates = 0

    def judge(self, r: Reading, flags: list[Flag]) -> Reading | None:
        """The reading to store (maybe marked suspect), or None for an exact duplicate.

        Findings are appended to `flags` for the pipeline to log and raise.
        """
        st = self._meters.get(r.meter_id)
        if st is None:
            st = self._meters[r.meter_id] = _MeterState()
        values = r.values
        ts = r.ts_ns
        keys = tuple(values)
        mask = _MASKS.get(keys)
        if mask is None:
            mask = _fields_mask(keys)
        # The field set (as its mask, hashed once) and the values: one reading.
        fp = hash((mask, tuple(values.values())))
        entry = fp << _MASK_BITS | mask
        recent = st.recent
        seen = recent.get(ts)
        if seen is not None:
            # isinstance narrows `seen` on both sides (`type(seen) is list` only on one).
            earlier = seen if isinstance(seen, list) else [seen]
            if any(e >> _MASK_BITS == fp for e in earlier):
                self.duplicates += 1
                return None
            if any(e & mask for e in earlier):
                flags.append(
                    Flag(
                        "duplicate_conflict",
                        r.meter_id,
                        ts,
                        f"{r.meter_id} sent different values for {format_ts(ts)}",
                    )
                )
                recent[ts] = entry
                return r._replace(quality="suspect")
            # Other fields of the same time: the rest of one reading, judged as such.
            recent[ts] = [*earlier, entry]
        else:
            recent[ts] = entry
            if len(recent) > self._window:
                del recent[next(iter(recent))]

        imp = values.get("energy_import_kwh")
        exp = values.get("energy_export_kwh")
        if imp is None and exp is None:
            if ts > st.last_ts:
                st.last_ts = ts
            return r
        suspect = False
        if ts > st.last_ts:
            st.last_ts = ts
            # The new value is the reference from now on: a replaced meter is flagged
            # once, not on every reading after.
            if imp is not None:
                last = st.last_import
                st.last_import = imp
                if last is not None and imp < last:
                    suspect = _decrease(flags, r, "energy_import_kwh", last, imp)
            if exp is not None:
                last = st.last_export
                st.last_export = exp
                if last is not None and exp < last:
                    suspect = _decrease(flags, r, "energy_export_kwh", last, exp)
        else:
            # Late data is normal (concentrators back-fill). It must still fit below
            # the register value of the later reading already held.
            for key, v, last in (
                ("energy_import_kwh", imp, st.last_import),
                ("energy_export_kwh", exp, st.last_export),
            ):
                if v is not None and last is not None and v > last:
                    flags.append(
                        Flag(
                            "out_of_order_register",
                            r.meter_id,
                            ts,
                            f"{key} {v!r} at {format_ts(ts)} is above {last!r} of a later reading",
                        )
                    )
                    suspect = True
        return r._replace(quality="suspect") if suspect else r


def _decrease(flags: list[Flag], r: Reading, key: str, last: float, v: float) -> bool:
    flags.append(
        Flag(
            "register_decrease",
            r.meter_id,
            r.ts_ns,
            f"{key} went down from {last!r} to {v!r} (meter replaced, rollover or tampering)",
        )
    )
    return True
