"""The device encoders (simulators/devices.py), read back by the gateway's own formats."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest

from meter_gateway.protocols.devices.sparkplug import SparkplugB, decode_payload
from meter_gateway.protocols.formats import FORMATS, Decoded
from meter_gateway.simulators.devices import (
    CARRIES,
    ShellyDevice,
    SparkplugEdge,
    TasmotaDevice,
    epoch_s,
)
from meter_gateway.simulators.meter import MeterModel

from .conftest import START

T0 = epoch_s(START)


def readings(phases: int, n: int = 4, interval_s: float = 900.0) -> list[dict[str, Any]]:
    """n canonical readings of one seeded meter."""
    model = MeterModel("m-dev", seed=3, phases=phases, start=T0)  # type: ignore[arg-type]
    out = []
    for k in range(n):
        model.advance(T0 + k * interval_s)
        out.append(model.reading())
    return out


def close(a: object, b: object) -> bool:
    """Equal, numbers (and lists of them) to float precision."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def assert_same(got: dict[str, Any], want: dict[str, Any], fmt: str) -> None:
    fields = CARRIES[fmt]
    assert set(got) - {"meter_id", "ts"} == fields
    for name in fields:
        assert close(got[name], want[name]), (fmt, name, got[name], want[name])
    got_ts = epoch_s(got["ts"]) if isinstance(got["ts"], str) else got["ts"]
    assert got_ts == epoch_s(want["ts"])


def one(decoded: Decoded) -> dict[str, Any]:
    assert not decoded.rejections, decoded.rejections
    assert len(decoded.readings) == 1, decoded.readings
    return decoded.readings[0]


@pytest.mark.parametrize("phases", [1, 3])
def test_tasmota_sensor_reads_back_as_the_canonical_reading(phases: int) -> None:
    dev = TasmotaDevice("plug-1")
    for r in readings(phases):
        msg = dev.sensor(r)
        assert msg.topic == "tele/plug-1/SENSOR"
        body = orjson.loads(msg.payload)
        assert body["Time"].endswith("+00:00")  # SetOption52: the gateway keeps it
        got = one(FORMATS["tasmota"](msg.payload, "plug-1"))
        assert got["meter_id"] == dev.meter_id
        assert_same(got, r, "tasmota")
        if phases == 3:  # per-phase powers that add up to the reading's
            assert len(body["ENERGY"]["Power"]) == 3
            assert close(sum(body["ENERGY"]["Power"]), r["power_w"])


def test_tasmota_lwt_is_retained_online_offline() -> None:
    dev = TasmotaDevice("plug-1")
    on, off = dev.lwt(True), dev.will()
    assert (on.topic, on.payload, on.retain) == ("tele/plug-1/LWT", b"Online", True)
    assert (off.topic, off.payload, off.retain) == ("tele/plug-1/LWT", b"Offline", True)
    sig = FORMATS["lwt"](off.payload, "plug-1").signals
    assert [(s.meter_id, s.value) for s in sig] == [("plug-1", "offline")]


@pytest.mark.parametrize("phases", [1, 3])
def test_shelly_notify_status_is_one_reading_at_the_meters_time(phases: int) -> None:
    dev = ShellyDevice("shellypro3em-1")
    for r in readings(phases):
        msg = dev.notify(r)
        assert msg.topic == "shellypro3em-1/events/rpc"
        params = orjson.loads(msg.payload)["params"]
        names = {"em:0", "emdata:0"} if phases == 3 else {"em1:0", "em1data:0"}
        assert set(params) == {"ts", *names}
        got = one(FORMATS["shelly"](msg.payload, "shellypro3em-1"))
        assert got["meter_id"] == dev.meter_id
        assert_same(got, r, "shelly")


@pytest.mark.parametrize("phases", [1, 3])
def test_shelly_status_messages_make_partial_readings(phases: int) -> None:
    dev = ShellyDevice("shellypro3em-1")
    r = readings(phases, n=1)[0]
    msgs = dev.status(r)
    suffix = ["em:0", "emdata:0"] if phases == 3 else ["em1:0", "em1data:0"]
    assert [m.topic for m in msgs] == [f"shellypro3em-1/status/{s}" for s in suffix]
    power, energy = (one(FORMATS["shelly"](m.payload, "shellypro3em-1")) for m in msgs)
    assert set(energy) == {"meter_id", "ts", "energy_import_kwh", "energy_export_kwh"}
    assert close(energy["energy_import_kwh"], r["energy_import_kwh"])
    assert close(power["power_w"], r["power_w"])
    assert close(power["voltage_v"], r["voltage_v"])


def test_shelly_online_is_the_will() -> None:
    dev = ShellyDevice("shellypro3em-1")
    assert (dev.will().topic, dev.will().payload) == ("shellypro3em-1/online", b"false")
    sig = FORMATS["shelly-online"](dev.will().payload, "shellypro3em-1").signals
    assert [(s.meter_id, s.value) for s in sig] == [("shellypro3em-1", "offline")]


@pytest.mark.parametrize("phases", [1, 3])
def test_sparkplug_birth_then_data_by_alias(phases: int) -> None:
    fmt = SparkplugB()  # its own alias state
    edge = SparkplugEdge("edge-1", "meter-1", group="g")
    rs = readings(phases)
    nbirth, dbirth = edge.birth(rs[0])
    assert nbirth.topic == "spBv1.0/g/NBIRTH/edge-1"
    assert dbirth.topic == "spBv1.0/g/DBIRTH/edge-1/meter-1"
    node = fmt(nbirth.payload, nbirth.topic)
    assert [(s.meter_id, s.value) for s in node.signals] == [("edge-1", "online")]
    assert not node.readings
    dev = fmt(dbirth.payload, dbirth.topic)
    assert [(s.meter_id, s.value) for s in dev.signals] == [("edge-1:meter-1", "online")]
    assert_same(one(dev), rs[0], "sparkplug-b")
    seqs = [decode_payload(m.payload)[2] for m in (nbirth, dbirth)]
    for r in rs[1:]:
        msg = edge.data(r)
        assert msg.topic == "spBv1.0/g/DDATA/edge-1/meter-1"
        _, metrics, seq = decode_payload(msg.payload)
        seqs.append(seq)
        assert all(m.name is None and m.alias for m in metrics)  # by alias only
        got = one(fmt(msg.payload, msg.topic))
        assert got["meter_id"] == edge.meter_id
        assert_same(got, r, "sparkplug-b")
    assert seqs == list(range(len(rs) + 1))
    # Without the birth, a new gateway cannot read the aliases: it says so.
    msg = edge.data(rs[-1])
    late = SparkplugB()(msg.payload, msg.topic)
    assert late.rejections
    assert "alias" in late.rejections[0].reason


def test_sparkplug_ndeath_will_takes_node_and_device_offline() -> None:
    fmt = SparkplugB()
    edge = SparkplugEdge("edge-1", "meter-1", bd_seq=5)
    for m in edge.birth(readings(3, n=1)[0]):
        fmt(m.payload, m.topic)
    will = edge.will()
    assert will.topic == "spBv1.0/meters/NDEATH/edge-1"
    sig = fmt(will.payload, will.topic).signals
    assert sorted((s.meter_id, s.value) for s in sig) == [
        ("edge-1", "offline"),
        ("edge-1:meter-1", "offline"),
    ]
    # A will from an earlier session (another bdSeq) is ignored.
    edge.rebirth()
    for m in edge.birth(readings(3, n=1)[0]):
        fmt(m.payload, m.topic)
    assert not fmt(will.payload, will.topic).signals
    assert len(fmt(edge.will().payload, will.topic).signals) == 2


def test_encoders_are_deterministic() -> None:
    r = readings(3, n=1)[0]
    assert TasmotaDevice("a").sensor(r) == TasmotaDevice("a").sensor(r)
    assert ShellyDevice("a").notify(r) == ShellyDevice("a").notify(r)
    assert SparkplugEdge("e", "d").birth(r) == SparkplugEdge("e", "d").birth(r)
