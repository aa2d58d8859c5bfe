"""Register maps: the bundled ones carry the manufacturers' addresses; bad maps name the entry."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from meter_gateway.protocols.modbus.errors import RegisterMapError
from meter_gateway.protocols.modbus.registermap import (
    RegisterMap,
    bundled_map,
    bundled_models,
    load_map,
)


def by_field(model: str) -> dict[str, tuple[int, int, str, str, float]]:
    return {
        e.field: (e.address, e.function, e.type.value, e.word_order.value, e.scale)
        for e in bundled_map(model).registers
    }


def test_bundled_models() -> None:
    assert bundled_models() == ["em24", "iem3155", "sdm120", "sdm630"]


def test_sdm630_addresses_from_the_manual() -> None:
    m = by_field("sdm630")
    assert m["voltage_l1_v"] == (0x0000, 4, "float32", "big", 1.0)
    assert m["voltage_l3_v"][0] == 0x0004
    assert m["current_l1_a"][0] == 0x0006
    assert m["power_w"][0] == 0x0034
    assert m["power_factor"][0] == 0x003E
    assert m["frequency_hz"][0] == 0x0046
    assert m["energy_import_kwh"][0] == 0x0048
    assert m["energy_export_kwh"][0] == 0x004A
    assert bundled_map("sdm630").max_registers_per_request == 80


def test_sdm120_is_single_phase() -> None:
    m = by_field("sdm120")
    assert "voltage_l2_v" not in m
    assert "current_l3_a" not in m
    assert m["power_w"] == (0x000C, 4, "float32", "big", 1.0)


def test_em24_scaled_int32_low_word_first() -> None:
    m = by_field("em24")
    assert m["voltage_l1_v"] == (0x0000, 3, "int32", "little", 0.1)
    assert m["current_l1_a"] == (0x000C, 3, "int32", "little", 0.001)
    assert m["power_w"] == (0x0028, 3, "int32", "little", 0.1)
    assert m["frequency_hz"] == (0x0033, 3, "int16", "little", 0.1)
    assert m["energy_import_kwh"] == (0x0034, 3, "int32", "little", 0.1)
    assert m["energy_export_kwh"] == (0x004E, 3, "int32", "little", 0.1)


def test_iem3155_holding_float32_register_minus_one_power_in_kw() -> None:
    m = by_field("iem3155")
    assert m["voltage_l1_v"] == (3027, 3, "float32", "big", 1.0)
    assert m["power_w"] == (3059, 3, "float32", "big", 1000.0)
    assert m["power_factor"][0] == 3083
    assert m["frequency_hz"][0] == 3109
    assert m["energy_import_kwh"][0] == 45099
    assert m["energy_export_kwh"][0] == 45101


def base(**kw: object) -> dict[str, object]:
    return {"name": "t", "defaults": {"function": "input", "type": "float32"}, **kw}


def test_overlap_names_both_entries_and_the_address() -> None:
    regs = [
        {"field": "voltage_l1_v", "address": 0},
        {"field": "voltage_l2_v", "address": 2},
        {"field": "voltage_l3_v", "address": 4},
        {"field": "power_w", "address": 4},
    ]
    with pytest.raises(RegisterMapError) as err:
        RegisterMap.from_dict(base(registers=regs), "sdm630.yaml")
    assert str(err.value) == (
        "sdm630.yaml: registers[3] (power_w): overlaps registers[2] (voltage_l3_v) at 0x0004"
    )


def test_overlap_with_a_wide_entry_further_back() -> None:
    regs = [
        {"field": "energy_import_kwh", "address": 0, "type": "float64"},
        {"field": "power_w", "address": 1, "type": "int16"},
        {"field": "power_factor", "address": 3, "type": "int16"},
    ]
    with pytest.raises(RegisterMapError) as err:
        RegisterMap.from_dict(base(registers=regs), "m.yaml")
    assert "registers[1] (power_w): overlaps registers[0] (energy_import_kwh) at 0x0001" in str(
        err.value
    )
    assert "registers[2] (power_factor): overlaps registers[0] (energy_import_kwh) at 0x0003" in (
        str(err.value)
    )


def test_same_address_different_function_is_no_overlap() -> None:
    regs = [
        {"field": "power_w", "address": 0, "function": 3},
        {"field": "voltage_l1_v", "address": 0, "function": 4},
    ]
    assert len(RegisterMap.from_dict(base(registers=regs)).registers) == 2


def test_unknown_field_lists_the_known_ones() -> None:
    regs = [{"field": "power_w", "address": 0}, {"field": "watts", "address": 2}]
    with pytest.raises(
        RegisterMapError,
        match=r"m.yaml: registers\[1\].field: unknown field 'watts'; known: energy_import_kwh",
    ):
        RegisterMap.from_dict(base(registers=regs), "m.yaml")


def test_read_wider_than_the_device_allows() -> None:
    regs = [{"field": "energy_import_kwh", "address": 0, "type": "float64"}]
    with pytest.raises(RegisterMapError) as err:
        RegisterMap.from_dict(base(registers=regs, max_registers_per_request=2), "m.yaml")
    assert str(err.value) == (
        "m.yaml: registers[0] (energy_import_kwh): float64 needs 4 registers, more than "
        "max_registers_per_request 2"
    )


@pytest.mark.parametrize(
    ("regs", "message"),
    [
        (
            [{"field": "power_w", "address": 0, "colour": "red"}],
            r"registers\[0\] \(power_w\).colour: unknown key",
        ),
        (
            [{"field": "power_w", "address": 0, "type": "float16"}],
            r"registers\[0\] \(power_w\).type: Input should be",
        ),
        (
            [{"field": "power_w", "address": 70000}],
            r"registers\[0\] \(power_w\).address: Input should be less than or equal to 65535",
        ),
        (
            [{"field": "power_w", "address": 0, "scale": 0}],
            r"registers\[0\] \(power_w\).scale: .*must not be 0",
        ),
        (
            [{"field": "power_w", "address": 0}, {"field": "power_w", "address": 2}],
            r"registers\[1\] \(power_w\): field already mapped by registers\[0\]",
        ),
        (
            [{"field": "power_w", "address": 0xFFFF}],
            r"registers\[0\] \(power_w\): float32 at 0xFFFF runs past 0xFFFF",
        ),
        ([], r"m.yaml: registers: List should have at least 1 item"),
    ],
)
def test_bad_entries_name_the_entry(regs: list[dict[str, object]], message: str) -> None:
    with pytest.raises(RegisterMapError, match=message):
        RegisterMap.from_dict(base(registers=regs), "m.yaml")


def test_user_map_from_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "mine",
                "defaults": {"function": "holding", "type": "uint32", "word_order": "little"},
                "registers": [{"field": "energy_import_kwh", "address": 0x10, "scale": 0.01}],
            }
        )
    )
    rmap = load_map(path)
    assert rmap.registers[0].function == 3
    assert rmap.registers[0].word_order.value == "little"


def test_bad_yaml_and_missing_file_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(RegisterMapError, match=r"bad\.yaml: not valid YAML"):
        load_map(bad)
    with pytest.raises(RegisterMapError, match="cannot read register map"):
        load_map(tmp_path / "missing.yaml")
    with pytest.raises(RegisterMapError, match="unknown model 'sdm999'; bundled: em24"):
        bundled_map("sdm999")
