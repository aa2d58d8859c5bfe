"""Tasmota energy monitors: `tele/<device>/SENSOR` (and `stat/<device>/STATUS10`).

    {"Time": "2026-11-27T08:15:00",
     "ENERGY": {"TotalStartTime": "2026-01-01T00:00:00", "Total": 1234.567,
                "Yesterday": 3.2, "Today": 1.1, "Power": 812, "ApparentPower": 840,
                "ReactivePower": 210, "Factor": 0.97, "Voltage": 231, "Current": 3.6}}

Mapping to the canonical reading (meter id: the topic's `+` level, the device topic):

- `Total` (kWh) -> `energy_import_kwh`; `ExportActive` (kWh, bidirectional meters)
  -> `energy_export_kwh`. A list (per phase, `SetOption129 1`) is summed.
- `Power` (W) -> `power_w`; a list (per phase or channel) is summed.
- `Voltage`, `Current` -> `voltage_v`, `current_a`: a number, or a list of three
  (three phases). A list of one is that number. Other lengths (two channels of one
  device) are not one meter's phases: the reading is rejected with the reason.
- `Factor` -> `power_factor`; for a list, the system's factor sum(Power) /
  sum(ApparentPower) when those are given, else the mean of the phases' factors.
- `Frequency` (Hz; some chips) -> `frequency_hz`; a per-phase list -> its mean.
- `Today`, `Yesterday`, `ApparentPower`, `ReactivePower`, ... are not kept.

Time: Tasmota's `Time` is the device's LOCAL time without an offset unless
`SetOption52 1` is set (then it carries one, and is used as sent). Without an
offset the gateway does not guess the device's time zone: the reading is stamped
with its arrival time (`NAIVE_TIME = "arrival"`; Tasmota publishes telemetry as it
measures, so this is within the network delay, but a message queued at the broker
while the gateway was away is stamped late). Devices kept on UTC (`Timezone 0`)
can use their own time with `NAIVE_TIME = "utc"` (proposed config key:
`mqtt.formats.tasmota.naive_time: arrival | utc`).

A SENSOR message without `ENERGY` (a temperature sensor, say) holds no reading and
is ignored, not rejected: the usual `tele/+/SENSOR` subscription sees them all.
The last will on `tele/<device>/LWT` (`Online` / `Offline`) is the built-in `lwt`
format.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from meter_gateway.protocols import devices
from meter_gateway.protocols.formats import (
    Decoded,
    Rejection,
    decode_json,
    id_problem,
    register_format,
    short_repr,
)

__all__ = ["NAIVE_TIME", "tasmota"]

#: What a `Time` without an offset means: "arrival" (use the arrival time) or "utc".
NAIVE_TIME: Literal["arrival", "utc"] = "arrival"

_HAS_OFFSET = re.compile(r"(?:[zZ]|[+-]\d\d:?\d\d)$")
_NAIVE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?$")

_SUMMED = (("Total", "energy_import_kwh"), ("ExportActive", "energy_export_kwh"))
_PHASES = (("Voltage", "voltage_v"), ("Current", "current_a"))


_is_number = devices.is_number


def _ts(time_field: object) -> Any:
    """The reading's `ts` from Tasmota's `Time` (see the module's docstring)."""
    if type(time_field) is str:
        if _HAS_OFFSET.search(time_field):
            return time_field
        if NAIVE_TIME == "utc" and _NAIVE.match(time_field):
            return time_field + "Z"
    return devices.arrival_ts()


def _energy(energy: dict[str, Any], reading: dict[str, Any]) -> str | None:
    """Copy ENERGY's values into `reading`; a reason if one cannot be."""
    for key, name in _SUMMED:
        v = energy.get(key)
        if v is None:
            continue
        if type(v) is list and v and all(_is_number(x) for x in v):
            v = sum(v)
        reading[name] = v  # anything else: the validator names the field
    power = energy.get("Power")
    if power is not None:
        if type(power) is list and power and all(_is_number(x) for x in power):
            reading["power_w"] = sum(power)
        else:
            reading["power_w"] = power
    for key, name in _PHASES:
        v = energy.get(key)
        if v is None:
            continue
        if type(v) is list:
            if len(v) == 1:
                v = v[0]
            elif len(v) != 3:
                return (
                    f"ENERGY.{key}: a list of {len(v)} values is not one meter's three "
                    "phases (a device with several channels?)"
                )
        reading[name] = v
    factor = energy.get("Factor")
    if type(factor) is list:
        p, s = energy.get("Power"), energy.get("ApparentPower")
        if (
            type(p) is list
            and type(s) is list
            and all(_is_number(x) for x in (*p, *s))
            and sum(s) > 0
        ):
            reading["power_factor"] = round(sum(p) / sum(s), 4)
        elif factor and all(_is_number(x) for x in factor):
            # No per-phase powers to weigh them by: the phases' mean factor.
            reading["power_factor"] = round(sum(factor) / len(factor), 4)
        else:
            reading["power_factor"] = factor  # the validator names the field
    elif factor is not None:
        reading["power_factor"] = factor
    freq = energy.get("Frequency")
    if type(freq) is list and freq and all(_is_number(x) for x in freq):
        # Three-phase drivers report it per phase: one grid, one frequency (their mean).
        freq = round(sum(freq) / len(freq), 4)
    if freq is not None:
        reading["frequency_hz"] = freq
    return None


@register_format("tasmota")
def tasmota(payload: bytes, topic_id: str | None) -> Decoded:
    """A Tasmota SENSOR (or STATUS10) message -> one reading from its `ENERGY`."""
    out = Decoded()
    try:
        obj = decode_json(payload)
    except ValueError as exc:
        out.rejections.append(Rejection(f"tasmota: {exc}", "json"))
        return out
    if type(obj) is not dict:
        out.rejections.append(Rejection(f"tasmota: expected a JSON object, got {short_repr(obj)}"))
        return out
    if type(obj.get("StatusSNS")) is dict:  # the answer to `Status 10`
        obj = obj["StatusSNS"]
    energy = obj.get("ENERGY")
    if energy is None:
        return out  # another sensor's telemetry: no reading here
    if type(energy) is not dict:
        out.rejections.append(
            Rejection(f"tasmota: ENERGY: expected an object, got {short_repr(energy)}", "ENERGY")
        )
        return out
    if topic_id is None:
        out.rejections.append(
            Rejection("tasmota: the topic names no device (use tele/+/SENSOR)", "meter_id")
        )
        return out
    problem = id_problem(topic_id, "tasmota: topic's device id")
    if problem is not None:
        out.rejections.append(Rejection(problem, "meter_id"))
        return out
    reading: dict[str, Any] = {"meter_id": topic_id, "ts": _ts(obj.get("Time"))}
    reason = _energy(energy, reading)
    if reason:
        out.rejections.append(Rejection(f"tasmota: {reason}", "ENERGY"))
    else:
        out.readings.append(reading)
    return out
