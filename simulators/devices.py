"""A simulated meter as the devices people already have put it on the wire.

The encoders take a canonical reading (``MeterModel.reading()``: the dict the ``json``
format reads) and make the MQTT messages of a Tasmota energy monitor, a Shelly Gen2/3
energy meter and a Sparkplug B edge node, in the shapes the gateway's ``tasmota``,
``shelly`` / ``shelly-online`` and ``sparkplug-b`` formats read
(``protocols/devices/``). They do no I/O: a message is a topic, a payload and whether
the broker keeps it (``retain``); each device also has its MQTT last will (``will()``),
to set on the device's own connection.

What each one carries of the canonical reading (``CARRIES``): all of it, registers,
power, voltages, currents, power factor and frequency, with these differences:

- Tasmota (``tele/<device>/SENSOR``): ``Time`` carries an offset (``SetOption52 1``),
  so the gateway keeps the meter's time. Three phases: ``Power``, ``ApparentPower`` and
  ``Factor`` are per-phase lists (the gateway sums the powers and makes the system's
  factor ``sum(Power) / sum(ApparentPower)``, so the power factor is recomputed, to
  4 decimals); registers in kWh as sent. The last will is ``tele/<device>/LWT``
  ``Online`` / ``Offline`` (retained).
- Shelly (Pro 3EM ``em:0`` / ``emdata:0``, or Pro EM ``em1:0`` / ``em1data:0`` for one
  phase): registers in Wh (the gateway divides by 1000); three phases: the factor is
  ``total_act_power / total_aprt_power`` (recomputed). ``notify()`` sends both
  components in one ``NotifyStatus`` on ``<id>/events/rpc`` with ``params.ts`` (epoch
  seconds): one reading at the meter's time. ``status()`` sends the per-component
  status messages, which carry no time (stamped with their arrival) and make two
  partial readings. The last will is ``<id>/online`` ``true`` / ``false`` (retained).
- Sparkplug B (``spBv1.0/<group>/...``): NBIRTH (``bdSeq``, ``Node Control/Rebirth``)
  and DBIRTH (every metric by name with its alias, datatype and value), then DDATA by
  alias only; every metric has the reading's timestamp (ms). Values are doubles, sent
  as the reading has them. The will is NDEATH with the NBIRTH's ``bdSeq``.

A reading whose power is 0 W has no apparent power: the three-phase Tasmota and Shelly
messages then carry no factor the gateway can compute (it leaves the field out).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from meter_gateway.protocols.devices.protobuf import encode_field

__all__ = [
    "CARRIES",
    "DeviceMessage",
    "ShellyDevice",
    "SparkplugEdge",
    "TasmotaDevice",
    "epoch_s",
]

Reading = Mapping[str, Any]

#: The canonical fields each device format carries (the others are never sent).
CARRIES: dict[str, frozenset[str]] = {
    fmt: frozenset(
        {
            "energy_import_kwh",
            "energy_export_kwh",
            "power_w",
            "voltage_v",
            "current_a",
            "power_factor",
            "frequency_hz",
        }
    )
    for fmt in ("tasmota", "shelly", "sparkplug-b")
}


@dataclass(frozen=True, slots=True)
class DeviceMessage:
    """One MQTT message of a device (QoS 1)."""

    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 1


def epoch_s(ts: str) -> float:
    """An RFC 3339 time with an offset (``...Z``, ``...+01:00``) as epoch seconds."""
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _offset_time(ts: str) -> str:
    """RFC 3339 as Tasmota writes it with ``SetOption52 1``: ``+00:00``, not ``Z``."""
    return ts[:-1] + "+00:00" if ts.endswith(("Z", "z")) else ts


def _phases(reading: Reading) -> tuple[list[float], list[float]] | None:
    """(voltages, currents) of a three-phase reading; None for one phase."""
    v, i = reading.get("voltage_v"), reading.get("current_a")
    if isinstance(v, list) and isinstance(i, list):
        return [float(x) for x in v], [float(x) for x in i]
    return None


def _split_power(power: float, currents: list[float], voltages: list[float]) -> list[float]:
    """``power`` per phase, in proportion to V*I, to 0.1 W; the three add up to it."""
    shares = [v * c for v, c in zip(voltages, currents, strict=True)]
    total = sum(shares)
    if total <= 0:
        return [round(power, 1), 0.0, 0.0]
    first = [round(power * s / total, 1) for s in shares[:2]]
    return [*first, round(power - first[0] - first[1], 1)]


def _apparent(power: float, pf: float) -> float:
    """Apparent power (VA, >= 0) of ``power`` at factor ``pf``; 0 without a factor."""
    return round(abs(power / pf), 3) if pf else 0.0


class TasmotaDevice:
    """A Tasmota energy monitor publishing on ``tele/<device>/...`` (``SetOption52 1``)."""

    def __init__(self, device: str, *, total_start_time: str = "2026-01-01T00:00:00") -> None:
        self.device = device
        self.total_start_time = total_start_time

    @property
    def meter_id(self) -> str:
        """The meter id the gateway's ``tasmota`` format gives this device."""
        return self.device

    def sensor(self, reading: Reading) -> DeviceMessage:
        """``tele/<device>/SENSOR`` with the reading in ``ENERGY``."""
        power = float(reading["power_w"])
        pf = float(reading["power_factor"])
        energy: dict[str, Any] = {
            "TotalStartTime": self.total_start_time,
            "Total": reading["energy_import_kwh"],
            "ExportActive": reading["energy_export_kwh"],
        }
        phases = _phases(reading)
        if phases is None:
            energy |= {
                "Power": power,
                "ApparentPower": _apparent(power, pf),
                "Factor": pf,
                "Frequency": reading["frequency_hz"],
                "Voltage": reading["voltage_v"],
                "Current": reading["current_a"],
            }
        else:
            volts, amps = phases
            per_phase = _split_power(power, amps, volts)
            energy |= {
                "Power": per_phase,
                "ApparentPower": [_apparent(p, pf) for p in per_phase],
                "Factor": [pf, pf, pf],
                "Frequency": reading["frequency_hz"],
                "Voltage": volts,
                "Current": amps,
            }
        body = {"Time": _offset_time(str(reading["ts"])), "ENERGY": energy}
        return DeviceMessage(f"tele/{self.device}/SENSOR", orjson.dumps(body))

    def lwt(self, online: bool) -> DeviceMessage:
        """``tele/<device>/LWT``: ``Online`` when it connects; ``Offline`` is its will."""
        return DeviceMessage(
            f"tele/{self.device}/LWT", b"Online" if online else b"Offline", retain=True
        )

    def will(self) -> DeviceMessage:
        """The MQTT last will to set on the device's connection."""
        return self.lwt(False)


class ShellyDevice:
    """A Shelly Gen2/3 energy meter: Pro 3EM (``em:0``) for three phases, Pro EM
    (``em1:0``) for one; the topic prefix is the device id."""

    def __init__(self, device: str) -> None:
        self.device = device

    @property
    def meter_id(self) -> str:
        """The meter id the gateway's ``shelly`` format gives channel 0 of this device."""
        return self.device

    @staticmethod
    def components(reading: Reading) -> dict[str, dict[str, Any]]:
        """The reading as Shelly component statuses: ``em:0`` and ``emdata:0``, or
        ``em1:0`` and ``em1data:0``."""
        power = float(reading["power_w"])
        pf = float(reading["power_factor"])
        freq = reading["frequency_hz"]
        wh_in = round(float(reading["energy_import_kwh"]) * 1000, 2)
        wh_out = round(float(reading["energy_export_kwh"]) * 1000, 2)
        phases = _phases(reading)
        if phases is None:
            return {
                "em1:0": {
                    "id": 0,
                    "current": reading["current_a"],
                    "voltage": reading["voltage_v"],
                    "act_power": power,
                    "aprt_power": _apparent(power, pf),
                    "pf": pf,
                    "freq": freq,
                    "calibration": "factory",
                },
                "em1data:0": {"id": 0, "total_act_energy": wh_in, "total_act_ret_energy": wh_out},
            }
        volts, amps = phases
        per_phase = _split_power(power, amps, volts)
        em: dict[str, Any] = {"id": 0}
        for p, v, a, w in zip("abc", volts, amps, per_phase, strict=True):
            em |= {
                f"{p}_current": a,
                f"{p}_voltage": v,
                f"{p}_act_power": w,
                f"{p}_aprt_power": _apparent(w, pf),
                f"{p}_pf": pf,
                f"{p}_freq": freq,
            }
        em |= {
            "n_current": None,
            "total_current": round(sum(amps), 3),
            "total_act_power": power,
            "total_aprt_power": _apparent(power, pf),
            "user_calibrated_phase": [],
        }
        emdata = {"id": 0, "total_act": wh_in, "total_act_ret": wh_out}
        return {"em:0": em, "emdata:0": emdata}

    def notify(self, reading: Reading) -> DeviceMessage:
        """One ``NotifyStatus`` on ``<id>/events/rpc`` with both components and
        ``params.ts``: one reading at the meter's own time."""
        ts = epoch_s(str(reading["ts"]))
        params: dict[str, Any] = {"ts": int(ts) if ts == math.floor(ts) else round(ts, 3)}
        params |= self.components(reading)
        body = {
            "src": self.device,
            "dst": f"{self.device}/events",
            "method": "NotifyStatus",
            "params": params,
        }
        return DeviceMessage(f"{self.device}/events/rpc", orjson.dumps(body))

    def status(self, reading: Reading) -> list[DeviceMessage]:
        """``<id>/status/<component>`` per component (no time: stamped on arrival)."""
        return [
            DeviceMessage(f"{self.device}/status/{name}", orjson.dumps(status))
            for name, status in self.components(reading).items()
        ]

    def online(self, online: bool) -> DeviceMessage:
        """``<id>/online``: ``true`` when it connects; ``false`` is its will."""
        return DeviceMessage(f"{self.device}/online", b"true" if online else b"false", retain=True)

    def will(self) -> DeviceMessage:
        """The MQTT last will to set on the device's connection."""
        return self.online(False)


# Sparkplug B data types (sparkplug_b.proto)
UINT64, DOUBLE, BOOLEAN = 8, 10, 11


def _metric(
    *,
    name: str | None = None,
    alias: int | None = None,
    timestamp: int | None = None,
    datatype: int,
    value: float | int | bool,
) -> bytes:
    """One ``Payload.Metric``: name=1, alias=2, timestamp=3, datatype=4, then the value
    (long_value=11, double_value=13, boolean_value=14)."""
    out = b""
    if name is not None:
        out += encode_field(1, name)
    if alias is not None:
        out += encode_field(2, alias)
    if timestamp is not None:
        out += encode_field(3, timestamp)
    out += encode_field(4, datatype)
    if datatype == BOOLEAN:
        out += encode_field(14, bool(value))
    elif datatype == DOUBLE:
        out += encode_field(13, float(value))
    else:
        out += encode_field(11, int(value))
    return out


def _payload(timestamp: int, metrics: list[bytes], seq: int | None) -> bytes:
    """``Payload``: timestamp=1 (ms), metrics=2, seq=3 (NDEATH has none)."""
    out = encode_field(1, timestamp) + b"".join(encode_field(2, m) for m in metrics)
    return out + (encode_field(3, seq) if seq is not None else b"")


def _ms(reading: Reading) -> int:
    return round(epoch_s(str(reading["ts"])) * 1000)


class SparkplugEdge:
    """A Sparkplug B edge node ``edge`` in ``group`` with one device, the meter.

    Messages in the order a session sends them: ``will()`` (NDEATH, set as the MQTT
    will before connecting), ``birth(reading)`` (NBIRTH, DBIRTH), then ``data(reading)``
    (DDATA) per reading; ``death()`` is the NDEATH the broker publishes for it.
    ``rebirth()`` starts a new session (the next ``bdSeq``).
    """

    def __init__(self, edge: str, device: str, *, group: str = "meters", bd_seq: int = 0) -> None:
        self.group = group
        self.edge = edge
        self.device = device
        self.bd_seq = bd_seq
        self._seq = 0
        self._aliases: dict[str, int] = {}

    @property
    def meter_id(self) -> str:
        """The meter id the gateway's ``sparkplug-b`` format gives the device."""
        return f"{self.edge}:{self.device}"

    def _topic(self, kind: str) -> str:
        tail = f"/{self.device}" if kind.startswith("D") else ""
        return f"spBv1.0/{self.group}/{kind}/{self.edge}{tail}"

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (self._seq + 1) % 256
        return seq

    @staticmethod
    def metrics(reading: Reading) -> dict[str, float]:
        """The reading as Sparkplug metric names (the gateway's ``DEFAULT_METRICS``)."""
        out: dict[str, float] = {
            "Energy/Import kWh": float(reading["energy_import_kwh"]),
            "Energy/Export kWh": float(reading["energy_export_kwh"]),
            "Power W": float(reading["power_w"]),
        }
        phases = _phases(reading)
        if phases is None:
            out["Voltage"] = float(reading["voltage_v"])
            out["Current"] = float(reading["current_a"])
        else:
            for i, (v, a) in enumerate(zip(*phases, strict=True), 1):
                out[f"Voltage L{i}"] = v
                out[f"Current L{i}"] = a
        out["Power Factor"] = float(reading["power_factor"])
        out["Frequency"] = float(reading["frequency_hz"])
        return out

    def will(self) -> DeviceMessage:
        """NDEATH with this session's ``bdSeq``: the MQTT will of the edge node."""
        bd = _metric(name="bdSeq", datatype=UINT64, value=self.bd_seq)
        return DeviceMessage(self._topic("NDEATH"), encode_field(2, bd))

    def death(self, timestamp_ms: int | None = None) -> DeviceMessage:
        """NDEATH as the edge node would publish it before leaving (with a timestamp)."""
        bd = _metric(name="bdSeq", datatype=UINT64, value=self.bd_seq)
        if timestamp_ms is None:
            return self.will()
        return DeviceMessage(self._topic("NDEATH"), _payload(timestamp_ms, [bd], None))

    def birth(self, reading: Reading) -> list[DeviceMessage]:
        """NBIRTH (``bdSeq``, rebirth control) and DBIRTH (the meter's metrics by name,
        with aliases, and the reading's values)."""
        ms = _ms(reading)
        self._seq = 0
        node = [
            _metric(name="bdSeq", timestamp=ms, datatype=UINT64, value=self.bd_seq),
            _metric(name="Node Control/Rebirth", timestamp=ms, datatype=BOOLEAN, value=False),
        ]
        nbirth = DeviceMessage(self._topic("NBIRTH"), _payload(ms, node, self._next_seq()))
        values = self.metrics(reading)
        self._aliases = {name: i for i, name in enumerate(values, 1)}
        dev = [
            _metric(name=name, alias=self._aliases[name], timestamp=ms, datatype=DOUBLE, value=v)
            for name, v in values.items()
        ]
        dbirth = DeviceMessage(self._topic("DBIRTH"), _payload(ms, dev, self._next_seq()))
        return [nbirth, dbirth]

    def data(self, reading: Reading) -> DeviceMessage:
        """DDATA: every metric by alias only, with the reading's timestamp."""
        if not self._aliases:
            raise RuntimeError("DDATA before DBIRTH: call birth() first")
        ms = _ms(reading)
        dev = [
            _metric(alias=self._aliases[name], timestamp=ms, datatype=DOUBLE, value=v)
            for name, v in self.metrics(reading).items()
        ]
        return DeviceMessage(self._topic("DDATA"), _payload(ms, dev, self._next_seq()))

    def rebirth(self) -> None:
        """A new session: the next ``bdSeq``; ``birth()`` must come next."""
        self.bd_seq = (self.bd_seq + 1) % 256
        self._aliases = {}
