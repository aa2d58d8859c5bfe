"""Modbus readings join the same validation and storage path as MQTT readings."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

import aiohttp
import pytest

from tests.conftest import make_config, wait_until

VALUES = {
    "voltage_l1_v": 229.8,
    "voltage_l2_v": 231.2,
    "voltage_l3_v": 230.4,
    "current_l1_a": 1.2,
    "current_l2_a": 0.9,
    "current_l3_a": 1.4,
    "power_w": 812.4,
    "power_factor": 0.97,
    "frequency_hz": 50.01,
    "energy_import_kwh": 10432.117,
    "energy_export_kwh": 12.5,
}


def f32(x: float) -> float:
    return struct.unpack(">f", struct.pack(">f", x))[0]


@pytest.mark.parametrize("model", ["sdm630"])
async def test_modbus_meter_is_polled_and_stored(
    model, tmp_path, mosquitto, victoria, modbus_meters, run_gateway
):
    server = await modbus_meters(1, model=model, values=VALUES)
    cfg = make_config(
        tmp_path,
        mosquitto,
        storage={"url": victoria.url},
        modbus={
            "devices": [
                {
                    "meter_id": "sdm-0001",
                    "model": model,
                    "host": "127.0.0.1",
                    "port": server.port,
                    "unit": 1,
                    "interval_s": 0.2,
                }
            ]
        },
    )
    gw = await run_gateway(cfg)
    await wait_until(lambda: gw.writer.lines_written >= 2, what="two polls stored")
    series = victoria.export('{__name__=~"meter_reading_.*", meter_id="sdm-0001"}')
    got = {s["metric"]["__name__"].removeprefix("meter_reading_"): s for s in series}
    for field, value in VALUES.items():
        assert got[field]["metric"]["source"] == "modbus"
        assert got[field]["values"][0] == pytest.approx(f32(value), rel=1e-7), field
    assert gw.pipeline.spooled["modbus"] >= 2


async def test_modbus_device_sending_exceptions_is_dead_lettered_not_fatal(
    tmp_path, mosquitto, victoria, modbus_meters, run_gateway
):
    server = await modbus_meters(2, model="sdm630", values=VALUES)
    server.set_fault(2, "exception", exception_code=0x02)
    cfg = make_config(
        tmp_path,
        mosquitto,
        storage={"url": victoria.url},
        modbus={
            "devices": [
                {
                    "meter_id": "live",
                    "model": "sdm630",
                    "host": "127.0.0.1",
                    "port": server.port,
                    "unit": 1,
                    "interval_s": 0.2,
                },
                {
                    "meter_id": "refusing",
                    "model": "sdm630",
                    "host": "127.0.0.1",
                    "port": server.port,
                    "unit": 2,
                    "interval_s": 0.2,
                },
            ]
        },
    )
    gw = await run_gateway(cfg)
    await wait_until(
        lambda: gw.dead_letter.count and gw.pipeline.spooled["modbus"] >= 3,
        what="live readings and a rejected exception response",
    )
    await gw.dead_letter.flush()
    records = list((cfg.gateway.data_dir / "dead-letter").glob("*.jsonl"))
    text = records[0].read_text()
    assert '"source":"modbus"' in text
    assert "/2" in text  # names the unit
    assert "illegal data address" in text


async def test_unreachable_modbus_devices_write_no_dead_letters(
    tmp_path, mosquitto, victoria, modbus_meters, run_gateway
):
    interval = 1.0
    server = await modbus_meters(1, model="sdm630", values=VALUES)
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        refused_port = s.getsockname()[1]

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(4096):
                pass
        writer.close()

    mute = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    mute_port = mute.sockets[0].getsockname()[1]
    common = {"model": "sdm630", "host": "127.0.0.1", "unit": 1, "interval_s": interval}
    down_fast = {"failures": 2, "backoff_s": 30.0}
    cfg = make_config(
        tmp_path,
        mosquitto,
        storage={"url": victoria.url},
        modbus={
            "devices": [
                {"meter_id": "live", "port": server.port, **common},
                {"meter_id": "gone", "port": refused_port, "breaker": down_fast, **common},
                {
                    "meter_id": "mute",
                    "port": mute_port,
                    "timeout_s": 0.3,
                    "breaker": down_fast,
                    **common,
                },
            ]
        },
    )
    try:
        gw = await run_gateway(cfg)
        assert gw.modbus is not None
        stats = gw.modbus.stats()
        await wait_until(
            lambda: (
                stats["gone"].breaker_openings == 1
                and stats["mute"].breaker_openings == 1
                and gw.writer.lines_written >= 3
            ),
            what="both unreachable devices down and three live readings stored",
        )
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{gw.http.port}/metrics") as resp:
                metrics = await resp.text()
            async with http.get(f"http://127.0.0.1:{gw.http.port}/status") as resp:
                status = await resp.json()
            async with http.get(f"http://127.0.0.1:{gw.http.port}/") as resp:
                page = await resp.text()
        await gw.dead_letter.flush()
    finally:
        mute.close()
        await mute.wait_closed()
    dead_letters = cfg.gateway.data_dir / "dead-letter"
    assert [f for f in dead_letters.glob("*") if f.stat().st_size] == []
    assert gw.dead_letter.count == 0
    assert not gw.pipeline.rejected
    # The live meter's readings are stored, each at its slot on the grid.
    series = victoria.export('{__name__="meter_reading_power_w", meter_id="live"}')
    stamps = series[0]["timestamps"]
    assert len(stamps) >= 3
    assert all(ms % int(interval * 1000) == 0 for ms in stamps), stamps
    assert len(set(stamps)) == len(stamps)
    # Down, and visible as such.
    assert 'meter_gateway_modbus_breaker_openings_total{meter_id="gone"} 1.0' in metrics
    assert 'meter_gateway_modbus_breaker_open{meter_id="mute"} 1.0' in metrics
    assert 'meter_gateway_modbus_errors_total{kind="connection",meter_id="gone"}' in metrics
    assert 'meter_gateway_modbus_errors_total{kind="timeout",meter_id="mute"}' in metrics
    assert 'meter_gateway_modbus_failed_polls_total{meter_id="gone"}' in metrics
    assert f'meter_gateway_modbus_connected{{endpoint="tcp://127.0.0.1:{refused_port}"}} 0.0' in (
        metrics
    )
    assert status["modbus"]["gone"]["down_since"] is not None
    assert status["modbus"]["live"]["down_since"] is None
    assert status["modbus"]["gone"]["breaker_openings"] == 1
    assert status["modbus_connections"][f"tcp://127.0.0.1:{refused_port}"]["connected"] is False
    assert page.count("DOWN since") == 2  # gone and mute, not live
