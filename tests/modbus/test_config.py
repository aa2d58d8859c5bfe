"""The `modbus:` configuration: defaults, cross-field rules, errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from meter_gateway.protocols.modbus.config import ModbusConfig, ModbusDeviceConfig


def errors(data: dict[str, Any], model: type = ModbusDeviceConfig) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as err:
        model.model_validate(data)
    return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in err.value.errors()]


def test_defaults_match_spec_section_4() -> None:
    dev = ModbusDeviceConfig(meter_id="sdm-0001", model="sdm630", host="127.0.0.1")
    assert (dev.transport, dev.port, dev.unit) == ("tcp", 502, 1)
    assert (dev.interval_s, dev.timeout_s, dev.retries) == (10.0, 1.0, 2)
    assert dev.label == "tcp://127.0.0.1:502/1"
    assert [r.describe() for r in dev.read_plan()] == ["input registers 0x0000-0x004B"]


def test_spec_example_block_validates() -> None:
    text = """
    devices:
      - meter_id: sdm-0001
        model: sdm630
        transport: tcp
        host: 127.0.0.1
        port: 502
        unit: 1
        interval_s: 10
        timeout_s: 1.0
        retries: 2
      - meter_id: em-1
        model: em24
        transport: rtu
        serial: {port: /dev/ttyUSB0, baudrate: 9600, parity: N, stopbits: 1}
        unit: 3
    """
    cfg = ModbusConfig.model_validate(yaml.safe_load(text))
    assert cfg.devices[1].label == "rtu:///dev/ttyUSB0/3"
    assert cfg.devices[1].register_map.name == "em24"


@pytest.mark.parametrize(
    ("data", "loc", "msg"),
    [
        ({"host": "h"}, "map", "set `model` (a bundled map) or `map`"),
        (
            {"model": "sdm630", "map": "x.yaml", "host": "h"},
            "map",
            "either `model` or `map`, not both",
        ),
        ({"model": "sdm630"}, "host", "required for transport tcp"),
        (
            {"model": "sdm630", "transport": "rtu-over-tcp"},
            "host",
            "required for transport rtu-over-tcp",
        ),
        ({"model": "sdm630", "transport": "rtu"}, "serial", "required for transport rtu"),
        (
            {"model": "sdm630", "transport": "rtu", "host": "h", "serial": {"port": "/dev/x"}},
            "host",
            "not used with transport rtu",
        ),
        (
            {"model": "sdm630", "host": "h", "serial": {"port": "/dev/x"}},
            "serial",
            "not used with transport tcp",
        ),
        ({"model": "sdm999", "host": "h"}, "model", "unknown model 'sdm999'"),
        ({"model": "sdm630", "host": "h", "unit": 256}, "unit", "less than or equal to 255"),
        ({"model": "sdm630", "host": "h", "interval_s": 0}, "interval_s", "greater than 0"),
        (
            {"model": "sdm630", "host": "h", "polling": 1},
            "polling",
            "Extra inputs are not permitted",
        ),
        ({"model": "sdm630", "host": "h", "transport": "udp"}, "transport", "Input should be"),
        (
            {"model": "sdm630", "host": "h", "breaker": {"backoff_s": 10, "max_backoff_s": 1}},
            "breaker",
            "max_backoff_s",
        ),
    ],
)
def test_errors_name_the_key(data: dict[str, Any], loc: str, msg: str) -> None:
    found = errors({"meter_id": "m1", **data})
    assert any(where == loc and msg in m for where, m in found), found


def test_device_limit_narrower_than_an_entry() -> None:
    found = errors(
        {"meter_id": "m1", "model": "sdm630", "host": "h", "max_registers_per_request": 1}
    )
    assert (
        "`max_registers_per_request`: sdm630.yaml: registers[0] (voltage_l1_v): float32 needs 2"
        in found[0][1]
    )


def test_user_map_relative_to_the_config_dir(tmp_path: Path) -> None:
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "mine.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "mine",
                "defaults": {"function": 3, "type": "int32"},
                "registers": [
                    {"field": "power_w", "address": 0},
                    {"field": "voltage_l1_v", "address": 1},
                ],
            }
        )
    )
    data = {"meter_id": "m1", "map": "maps/mine.yaml", "host": "h"}
    found = errors(data)  # not found relative to the working directory
    assert "cannot read register map" in found[0][1]
    with pytest.raises(ValidationError) as err:
        ModbusDeviceConfig.model_validate(data, context={"config_dir": tmp_path})
    assert (
        "mine.yaml: registers[1] (voltage_l1_v): overlaps registers[0] (power_w) at 0x0001"
        in str(err.value)
    )


def test_section_rules() -> None:
    dev = {"model": "sdm630", "host": "h"}
    found = errors(
        {
            "devices": [
                {"meter_id": "a", **dev},
                {"meter_id": "a", **dev, "unit": 2},
                {"meter_id": "b", **dev},
                {
                    "meter_id": "c",
                    "model": "sdm120",
                    "transport": "rtu",
                    "serial": {"port": "/dev/x"},
                },
                {
                    "meter_id": "d",
                    "model": "sdm120",
                    "transport": "rtu",
                    "unit": 2,
                    "serial": {"port": "/dev/x", "baudrate": 19200},
                },
            ]
        },
        ModbusConfig,
    )
    text = found[0][1]
    assert "devices[1].meter_id: 'a' already used by devices[0]" in text
    assert "devices[2].unit: tcp://h:502/1 already polled as devices[0]" in text
    assert "devices[4].serial: /dev/x is set up differently in devices[3]" in text
