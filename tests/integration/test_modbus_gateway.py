"""Modbus readings join the same validation and storage path as MQTT readings."""

from __future__ import annotations

import struct

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
    assert gw.pipeline.stored["modbus"] >= 2


async def test_dead_modbus_device_is_dead_lettered_not_fatal(
    tmp_path, mosquitto, victoria, modbus_meters, run_gateway
):
    server = await modbus_meters(1, model="sdm630", values=VALUES)
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
                    "meter_id": "dead",
                    "model": "sdm630",
                    "host": "127.0.0.1",
                    "port": server.port,
                    "unit": 9,
                    "interval_s": 0.2,
                    "timeout_s": 0.2,
                    "retries": 0,
                },
            ]
        },
    )
    gw = await run_gateway(cfg)
    await wait_until(
        lambda: gw.pipeline.rejected and gw.pipeline.stored["modbus"] >= 3,
        what="live readings and a dead-device rejection",
    )
    await gw.dead_letter.flush()
    records = list((cfg.gateway.data_dir / "dead-letter").glob("*.jsonl"))
    text = records[0].read_text()
    assert '"source":"modbus"' in text
    assert "/9" in text  # names the dead unit
