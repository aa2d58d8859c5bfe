"""Shelly Gen2/Gen3 energy meters and power-metering switches.

A Shelly publishes each component's status on its own topic,
`<id>/status/<component>:<N>` (with "Generic status update over MQTT" on), and
changes as JSON-RPC notifications on `<id>/events/rpc`:

    shellyproem50-08f9e0e5e3d4/status/em1:0
      {"id": 0, "current": 2.4, "voltage": 231.2, "act_power": 540.1,
       "aprt_power": 555.0, "pf": 0.97, "freq": 50.0, "calibration": "factory"}
    shellyproem50-08f9e0e5e3d4/status/em1data:0
      {"id": 0, "total_act_energy": 123456.78, "total_act_ret_energy": 0.0}
    shellyproem50-08f9e0e5e3d4/events/rpc
      {"src": "shellyproem50-08f9e0e5e3d4", "method": "NotifyStatus",
       "params": {"ts": 1795797300.12, "em1:0": {"id": 0, "act_power": 541.0}}}

Components understood (the kind is told by the keys, so `+/status/+` can take them
all, and the status of others, `sys`, `wifi`, `input:0`..., is ignored):

- `em1:N` (Pro EM, EM Gen3): `act_power` W, `voltage` V, `current` A, `pf`, `freq` Hz
- `em1data:N`: `total_act_energy`, `total_act_ret_energy` (Wh -> kWh)
- `em:N` (Pro 3EM, three phases): `a_/b_/c_voltage`, `a_/b_/c_current`,
  `total_act_power`, factor = total_act_power / total_aprt_power, `a_freq`
- `emdata:N`: `total_act`, `total_act_ret` (Wh -> kWh)
- `switch:N`, `pm1:N` (Plus PM, Plug, PM Mini): `apower`, `voltage`, `current`, `pf`,
  `freq`, `aenergy.total` and `ret_aenergy.total` (Wh -> kWh)

Power and energy come in separate messages: each message makes its own partial
reading with the fields it has (the validator needs one measurement, not all);
a NotifyStatus with several components of one channel makes one reading. Time: a
notification's `params.ts` (epoch seconds, the device's clock); a status message
carries none, so it is stamped with its arrival time.

Meter id: the topic's `+` level (the device's topic prefix, by default its id) for
channel 0, `<id>:<N>` for channel N >= 1 (a Pro EM's second clamp is another
meter). The device's last will, `<id>/online` = `true` / `false`, is the
`shelly-online` format: a status signal for the device and every channel of it
seen since the gateway started.
"""

from __future__ import annotations

from typing import Any

from meter_gateway.protocols import devices
from meter_gateway.protocols.formats import (
    Decoded,
    Rejection,
    Signal,
    decode_json,
    id_problem,
    register_format,
    short_repr,
)

__all__ = ["shelly", "shelly_online"]

#: Channels >= 1 seen per device, for `shelly-online` (bounded: see _remember).
_channels: dict[str, set[int]] = {}
_MAX_DEVICES = 100_000

_SIMPLE = {  # em1, and switch / pm1 (with "apower")
    "act_power": "power_w",
    "apower": "power_w",
    "voltage": "voltage_v",
    "current": "current_a",
    "pf": "power_factor",
    "freq": "frequency_hz",
}
_WH = {  # em1data, emdata
    "total_act_energy": "energy_import_kwh",
    "total_act_ret_energy": "energy_export_kwh",
    "total_act": "energy_import_kwh",
    "total_act_ret": "energy_export_kwh",
}


def _kwh(v: object) -> object:
    # Not a number: left as it is, for the validator to name the field.
    return v / 1000 if devices.is_number(v) else v  # type: ignore[operator]


def _fields(status: dict[str, Any]) -> dict[str, Any]:
    """The canonical fields of one component's status (empty for other components)."""
    out: dict[str, Any] = {}
    if "a_voltage" in status or "total_act_power" in status:  # em: three phases
        phases = ("a_", "b_", "c_")
        for suffix, name in (("voltage", "voltage_v"), ("current", "current_a")):
            values = [status.get(p + suffix) for p in phases]
            if all(v is not None for v in values):
                out[name] = values
        if "total_act_power" in status:
            out["power_w"] = status["total_act_power"]
            # No apparent power reads as 0, which `s > 0` leaves without a factor.
            p, s = status["total_act_power"], status.get("total_aprt_power", 0)
            if type(p) in (int, float) and type(s) in (int, float) and s > 0:
                out["power_factor"] = round(p / s, 4)
        if "a_freq" in status:
            out["frequency_hz"] = status["a_freq"]
        return out
    for key, name in _SIMPLE.items():
        if key in status:
            out[name] = status[key]
    for key, name in _WH.items():
        if key in status:
            out[name] = _kwh(status[key])
    for key, name in (("aenergy", "energy_import_kwh"), ("ret_aenergy", "energy_export_kwh")):
        counter = status.get(key)
        if type(counter) is dict and "total" in counter:
            out[name] = _kwh(counter["total"])
    return out


def _remember(device: str, channel: int) -> None:
    if len(_channels) >= _MAX_DEVICES and device not in _channels:
        _channels.clear()  # hostile topics must not grow this without bound
    _channels.setdefault(device, set()).add(channel)


def _meter(device: str, channel: object) -> str | Rejection:
    """The meter id of `channel` of `device`, or the rejection saying why there is none."""
    if channel is None or channel == 0:
        return device
    if type(channel) is not int or channel < 0:
        return Rejection(f"shelly: id: expected a channel number, got {short_repr(channel)}", "id")
    meter = f"{device}:{channel}"
    problem = id_problem(meter, "shelly: meter id of a channel")
    if problem is not None:  # a long device id plus its channel: too long to be one
        return Rejection(problem, "meter_id")
    _remember(device, channel)
    return meter


@register_format("shelly")
def shelly(payload: bytes, topic_id: str | None) -> Decoded:
    """One component status, or a NotifyStatus / NotifyFullStatus -> partial readings."""
    out = Decoded()
    try:
        obj = decode_json(payload)
    except ValueError as exc:
        out.rejections.append(Rejection(f"shelly: {exc}", "json"))
        return out
    if type(obj) is not dict:
        out.rejections.append(Rejection(f"shelly: expected a JSON object, got {short_repr(obj)}"))
        return out
    method = obj.get("method")
    if method is not None:  # JSON-RPC on <id>/events/rpc
        if method not in ("NotifyStatus", "NotifyFullStatus"):
            return out  # NotifyEvent and the like: no measurement
        device = topic_id if topic_id is not None else obj.get("src")
        params = obj.get("params")
        if type(params) is not dict:
            out.rejections.append(
                Rejection(f"shelly: params: expected an object, got {short_repr(params)}")
            )
            return out
        ts = params.get("ts")
        statuses = [(key, v) for key, v in params.items() if key != "ts" and type(v) is dict]
    else:
        device, ts = topic_id, obj.get("ts")
        statuses = [("", obj)]
    if type(device) is not str:
        out.rejections.append(
            Rejection("shelly: no device id (use a `+` level for it in the topic)", "meter_id")
        )
        return out
    problem = id_problem(
        device, "shelly: device id" if topic_id is None else "shelly: topic's device id"
    )
    if problem is not None:
        out.rejections.append(Rejection(problem, "meter_id"))
        return out
    if ts is None:
        ts = devices.arrival_ts()
    readings: dict[str, dict[str, Any]] = {}
    for key, status in statuses:
        values = _fields(status)
        if not values:
            continue
        channel = status.get("id")
        if channel is None and ":" in key:  # "em1:1" in a notification
            tail = key.rpartition(":")[2]
            channel = int(tail) if tail.isdigit() else tail
        meter = _meter(device, channel)
        if type(meter) is Rejection:
            out.rejections.append(meter)
            continue
        reading = readings.get(meter)
        if reading is None:
            reading = readings[meter] = {"meter_id": meter, "ts": ts}
        reading.update(values)
    out.readings.extend(readings.values())
    return out


@register_format("shelly-online")
def shelly_online(payload: bytes, topic_id: str | None) -> Decoded:
    """`<id>/online`: `true` / `false` -> status signals for the device and its channels."""
    out = Decoded()
    text = payload.decode("utf-8", "replace").strip().lower()
    if topic_id is None:
        out.rejections.append(
            Rejection("shelly-online: the topic names no device (use +/online)", "lwt")
        )
    elif (problem := id_problem(topic_id, "shelly-online: topic's device id")) is not None:
        out.rejections.append(Rejection(problem, "meter_id"))
    elif text not in ("true", "false"):
        out.rejections.append(
            Rejection(f"shelly-online: expected 'true' or 'false', got {short_repr(text)}", "lwt")
        )
    else:
        value = "online" if text == "true" else "offline"
        out.signals.append(Signal("status", topic_id, value))
        for channel in sorted(_channels.get(topic_id, ())):
            out.signals.append(Signal("status", f"{topic_id}:{channel}", value))
    return out
