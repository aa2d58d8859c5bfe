"""The commented example in protocols/modbus (and its README) is a valid configuration."""

from __future__ import annotations

from pathlib import Path

import yaml

from meter_gateway.protocols.modbus.config import ModbusConfig, ModbusDeviceConfig

HERE = Path(__file__).resolve().parents[2] / "protocols" / "modbus"


def test_example_loads_and_its_defaults_are_the_real_ones(tmp_path: Path) -> None:
    data = yaml.safe_load((HERE / "example.yaml").read_text())["modbus"]
    # The example's own map path resolves against the config's folder.
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "my-iem3155.yaml").write_text((HERE / "maps" / "iem3155.yaml").read_text())
    cfg = ModbusConfig.model_validate(data, context={"config_dir": tmp_path})
    first = cfg.devices[0]
    defaults = ModbusConfig(devices=[]).model_dump(exclude={"devices"})
    assert cfg.model_dump(exclude={"devices"}) == defaults
    stripped = first.model_dump(
        include={
            "port",
            "unit",
            "interval_s",
            "timeout_s",
            "retries",
            "breaker",
            "max_gap",
            "max_registers_per_request",
        }
    )
    plain = ModbusDeviceConfig(meter_id="x", model="sdm630", host="h")
    assert stripped == plain.model_dump(include=set(stripped))
    assert [d.endpoint for d in cfg.devices] == [
        "tcp://192.0.2.10:502",
        "rtu:///dev/ttyUSB0",
        "rtu:///dev/ttyUSB0",
        "rtu-over-tcp://192.0.2.20:4001",
    ]


def test_readme_embeds_the_example() -> None:
    readme = (HERE / "README.md").read_text()
    assert (HERE / "example.yaml").read_text() in readme
