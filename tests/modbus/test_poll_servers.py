"""The poller against real pymodbus servers: TCP, RTU on a pseudo-terminal pair, RTU over TCP."""

from __future__ import annotations

import itertools
import struct
import time
from typing import Any

import pytest

from meter_gateway.protocols.modbus.config import ModbusConfig
from meter_gateway.protocols.modbus.poller import Poller
from meter_gateway.protocols.modbus.registermap import bundled_map
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

# At each meter's own resolution, so the scaled-integer EM24 reproduces them exactly.
VALUES = {
    "voltage_l1_v": 230.1,
    "voltage_l2_v": 229.8,
    "voltage_l3_v": 231.2,
    "current_l1_a": 1.25,
    "current_l2_a": 0.9,
    "current_l3_a": 1.4,
    "power_w": 793.6,
    "power_factor": 0.97,
    "frequency_hz": 50.1,
    "energy_import_kwh": 10432.1,
    "energy_export_kwh": 12.5,
}


def f32(x: float) -> float:
    return struct.unpack(">f", struct.pack(">f", x))[0]


def expected(model: str) -> dict[str, float]:
    """What the meter's registers say: float32 rounding for float maps, exact for EM24."""
    out = {}
    for e in bundled_map(model).registers:
        v = VALUES[e.field]
        out[e.field] = v if e.type.value.startswith("int") else f32(v / e.scale) * e.scale
    return out


def device(
    meter_id: str, model: str, transport: str, where: Any, unit: int, **kw: Any
) -> dict[str, Any]:
    d: dict[str, Any] = {"meter_id": meter_id, "model": model, "transport": transport, "unit": unit}
    if transport == "rtu":
        d["serial"] = {"port": where}
    else:
        d["host"], d["port"] = "127.0.0.1", where
    return {**d, **kw}


async def assert_exact(model: str, transport: str, where: Any, sink: Any) -> None:
    cfg = ModbusConfig(devices=[device("m-1", model, transport, where, 1)])
    poller = Poller(cfg, on_reading=sink.on_reading, on_error=sink.on_error)
    before = time.time()
    got = await poller.poll_once("m-1")
    after = time.time()
    assert sink.errors == []
    assert got is not None
    assert sink.readings == [(got, cfg.devices[0].label)]
    reading = dict(got)
    assert reading.pop("meter_id") == "m-1"
    ts = reading.pop("ts")
    assert isinstance(ts, float)
    assert before <= ts <= after
    assert reading == expected(model)
    stats = poller.stats()["m-1"]
    assert (stats.polls, stats.readings, stats.requests) == (1, 1, len(cfg.devices[0].read_plan()))


MODELS = ["sdm630", "sdm120", "em24", "iem3155"]


@pytest.mark.parametrize("transport", ["tcp", "rtu-over-tcp"])
@pytest.mark.parametrize("model", MODELS)
async def test_tcp_readings_exact_under_spec_field_names(
    model: str, transport: str, modbus_meters, sink
) -> None:
    framer = "rtu" if transport == "rtu-over-tcp" else "socket"
    server = await modbus_meters(1, model=model, values=VALUES, framer=framer)
    await assert_exact(model, transport, server.port, sink)


@pytest.mark.parametrize("model", MODELS)
async def test_rtu_on_a_serial_line_exact(model: str, modbus_meters, serial_pty_pair, sink) -> None:
    server_end, client_end = serial_pty_pair
    await modbus_meters(1, model=model, values=VALUES, serial_port=server_end)
    await assert_exact(model, "rtu", client_end, sink)


async def test_live_values_from_the_meter_model(modbus_fleet, sink) -> None:
    fleet = await modbus_fleet(2, model="sdm630", seed=3)
    cfg = ModbusConfig.model_validate({"devices": fleet.device_configs()})
    poller = Poller(cfg, on_reading=sink.on_reading, on_error=sink.on_error)
    a = await poller.poll_once("sdm630-0001")
    b = await poller.poll_once("sdm630-0002")
    assert a is not None
    assert b is not None
    for r in (a, b):
        for k in (1, 2, 3):
            assert 180 < float(r[f"voltage_l{k}_v"]) < 280  # type: ignore[arg-type]
        assert 49 < float(r["frequency_hz"]) < 51  # type: ignore[arg-type]
        assert float(r["energy_import_kwh"]) > 0  # type: ignore[arg-type]
        assert -1 <= float(r["power_factor"]) <= 1  # type: ignore[arg-type]
    assert a["energy_import_kwh"] != b["energy_import_kwh"]  # two meters, two seeds


async def test_poller_runs_every_device_on_its_interval(modbus_meters, sink) -> None:
    server = await modbus_meters(3, values=VALUES)
    cfg = ModbusConfig(
        devices=[
            device(f"m-{u}", "sdm630", "tcp", server.port, u, interval_s=0.2) for u in (1, 2, 3)
        ]
    )
    async with Poller(cfg, on_reading=sink.on_reading, on_error=sink.on_error) as poller:
        await sink.wait_for(lambda: min(sink.per_meter[f"m-{u}"] for u in (1, 2, 3)) >= 3)
    stats = poller.stats()
    assert all(s.failed_polls == 0 and s.errors == {} for s in stats.values())
    assert poller.connection_stats()[f"tcp://127.0.0.1:{server.port}"].connects == 1  # shared
    # Readings of one device are one interval apart on the wall-clock grid.
    ts = [r["ts"] for r, _ in sink.readings if r["meter_id"] == "m-1"]
    assert all(b > a for a, b in itertools.pairwise(ts))


async def test_start_up_probe_hands_nothing_on(modbus_meters, sink) -> None:
    server = await modbus_meters(1, values=VALUES)
    # An hour's interval: all this test can see is the start-up probe.
    cfg = ModbusConfig(devices=[device("m", "sdm630", "tcp", server.port, 1, interval_s=3600)])
    async with Poller(cfg, on_reading=sink.on_reading, on_error=sink.on_error) as poller:
        # The probe's answer is not handed on, so there is no event: watch the meter.
        await wait_until(lambda: server.meters[1].reads == 1, what="the start-up probe")
        stats = poller.stats()["m"]
        assert (stats.polls, stats.readings, stats.requests, stats.errors) == (0, 0, 1, {})
        assert stats.breaker == "closed"
    assert sink.readings == []  # read off the grid: not a reading to store
    assert sink.errors == []
    assert list(stats.lateness_s) == []
