"""Register words -> values, for every data type, word order and byte order; and back."""

from __future__ import annotations

import math
import struct

import pytest

from meter_gateway.protocols.modbus.datatypes import DATA_TYPES, DataType
from meter_gateway.protocols.modbus.decode import decode, decode_block, encode, nan_words
from meter_gateway.protocols.modbus.registermap import RegisterEntry, bundled_map


def entry(
    type_: str, word_order: str = "big", byte_order: str = "big", **kw: float
) -> RegisterEntry:
    return RegisterEntry(
        field="power_w",
        address=0,
        type=type_,
        function=4,
        word_order=word_order,
        byte_order=byte_order,
        **kw,
    )


def f32(v: float) -> float:
    return struct.unpack(">f", struct.pack(">f", v))[0]


# (type, word order, byte order, words as received, expected value)
CASES = [
    ("int16", "big", "big", [0x0001], 1),
    ("int16", "big", "big", [0xFFFF], -1),
    ("int16", "big", "big", [0x8000], -32768),
    ("int16", "big", "little", [0x0100], 1),
    ("uint16", "big", "big", [0xFFFF], 65535),
    ("uint16", "big", "little", [0x3412], 0x1234),
    ("int32", "big", "big", [0xFFFF, 0xE100], -7936),
    ("int32", "little", "big", [0xE100, 0xFFFF], -7936),
    ("int32", "big", "little", [0xFFFF, 0x00E1], -7936),
    ("int32", "little", "little", [0x00E1, 0xFFFF], -7936),
    ("uint32", "big", "big", [0x0001, 0x9781], 104321),
    ("uint32", "little", "big", [0x9781, 0x0001], 104321),
    ("uint32", "big", "big", [0xFFFF, 0xFFFF], 4294967295),
    ("int64", "big", "big", [0xFFFF, 0xFEE0, 0x8E04, 0xFB35], -1234567890123),
    ("int64", "little", "big", [0xFB35, 0x8E04, 0xFEE0, 0xFFFF], -1234567890123),
    # 2**63 + 2**40: above int64, and exact as a float (readings are floats)
    ("uint64", "big", "big", [0x8000, 0x0100, 0x0000, 0x0000], 2**63 + 2**40),
    ("uint64", "little", "little", [0x0000, 0x0000, 0x0001, 0x0080], 2**63 + 2**40),
    ("float32", "big", "big", [0x4366, 0x199A], f32(230.1)),
    ("float32", "little", "big", [0x199A, 0x4366], f32(230.1)),
    ("float32", "big", "little", [0x6643, 0x9A19], f32(230.1)),
    ("float32", "little", "little", [0x9A19, 0x6643], f32(230.1)),
    ("float32", "big", "big", [0xC49A, 0x5000], -1234.5),
    ("float64", "big", "big", [0x406C, 0xC333, 0x3333, 0x3333], 230.1),
    ("float64", "little", "big", [0x3333, 0x3333, 0xC333, 0x406C], 230.1),
    ("float64", "big", "little", [0x6C40, 0x33C3, 0x3333, 0x3333], 230.1),
]


@pytest.mark.parametrize(("type_", "wo", "bo", "words", "expected"), CASES)
def test_decode_table(type_: str, wo: str, bo: str, words: list[int], expected: float) -> None:
    assert decode(words, entry(type_, wo, bo)) == expected


@pytest.mark.parametrize(("type_", "wo", "bo", "words", "expected"), CASES)
def test_encode_is_the_inverse(
    type_: str, wo: str, bo: str, words: list[int], expected: float
) -> None:
    assert encode(expected, entry(type_, wo, bo)) == words


def test_every_type_is_in_the_table_with_its_register_count() -> None:
    counts = {t.value: DATA_TYPES[t].registers for t in DataType}
    assert counts == {
        "int16": 1,
        "uint16": 1,
        "int32": 2,
        "uint32": 2,
        "int64": 4,
        "uint64": 4,
        "float32": 2,
        "float64": 4,
    }
    assert {t for t, *_ in CASES} == set(counts)


@pytest.mark.parametrize(
    ("kw", "words", "expected"),
    [
        ({"scale": 0.1}, [0x08FD], 230.1),  # 2301 / 10, not 2301 * 0.1
        ({"scale": 0.001}, [0x03CA], 0.97),
        ({"scale": 1000.0}, [0x0002], 2000.0),
        ({"scale": 0.5, "offset": -40.0}, [0x0064], 10.0),
        ({"scale": 2.0, "offset": 1.0}, [0x0003], 7.0),
    ],
)
def test_scale_and_offset(kw: dict[str, float], words: list[int], expected: float) -> None:
    e = entry("uint16", **kw)
    assert decode(words, e) == expected
    assert encode(expected, e) == words


def test_encode_clamps_integers_to_the_type() -> None:
    assert encode(1e9, entry("int16")) == [0x7FFF]
    assert encode(-5.0, entry("uint16")) == [0x0000]


def test_nan_words_decode_to_nan_and_become_problems() -> None:
    e = entry("float32")
    assert nan_words(e) == [0x7FC0, 0x0000]
    assert math.isnan(decode(nan_words(e), e))
    values, problems = decode_block([0x7FC0, 0x0000, 0x4366, 0x199A], 0, [e])
    assert values == {}
    assert str(problems[0]) == "NaN in power_w at 0x0000 (words 7FC0 0000)"


def test_infinity_is_a_problem_too() -> None:
    values, problems = decode_block([0x7F80, 0x0000], 0, [entry("float32")])
    assert values == {}
    assert str(problems[0]).startswith("infinite value in power_w at 0x0000")


def test_wrong_word_count_is_an_error() -> None:
    with pytest.raises(ValueError, match="float32 needs 2 registers, got 1"):
        decode([0x4366], entry("float32"))


# Each bundled map against register contents as the meter sends them:
# model -> {field: (words at the entry's address, expected value)}
MAP_CASES: dict[str, dict[str, tuple[list[int], float]]] = {
    "sdm630": {
        "voltage_l1_v": ([0x4366, 0x199A], f32(230.1)),
        "voltage_l2_v": ([0x4366, 0x199A], f32(230.1)),
        "voltage_l3_v": ([0x4366, 0x199A], f32(230.1)),
        "current_l1_a": ([0x3FA0, 0x0000], 1.25),
        "current_l2_a": ([0x3FA0, 0x0000], 1.25),
        "current_l3_a": ([0x3FA0, 0x0000], 1.25),
        "power_w": ([0x4446, 0x6666], f32(793.6)),
        "power_factor": ([0x3F78, 0x51EC], f32(0.97)),
        "frequency_hz": ([0x4248, 0x147B], f32(50.02)),
        "energy_import_kwh": ([0x4623, 0x0066], f32(10432.1)),
        "energy_export_kwh": ([0x4148, 0x0000], 12.5),
    },
    "sdm120": {
        "voltage_l1_v": ([0x4366, 0x199A], f32(230.1)),
        "current_l1_a": ([0x3FA0, 0x0000], 1.25),
        "power_w": ([0xC49A, 0x5000], -1234.5),  # exporting
        "power_factor": ([0xBF78, 0x51EC], f32(-0.97)),
        "frequency_hz": ([0x4248, 0x147B], f32(50.02)),
        "energy_import_kwh": ([0x4623, 0x0066], f32(10432.1)),
        "energy_export_kwh": ([0x4148, 0x0000], 12.5),
    },
    "em24": {  # INT32 low word first, scaled
        "voltage_l1_v": ([0x08FD, 0x0000], 230.1),
        "voltage_l2_v": ([0x08FA, 0x0000], 229.8),
        "voltage_l3_v": ([0x0908, 0x0000], 231.2),
        "current_l1_a": ([0x04E2, 0x0000], 1.25),
        "current_l2_a": ([0x0384, 0x0000], 0.9),
        "current_l3_a": ([0x0578, 0x0000], 1.4),
        "power_w": ([0xE100, 0xFFFF], -793.6),
        "power_factor": ([0x03CA], 0.97),
        "frequency_hz": ([0x01F4], 50.0),
        "energy_import_kwh": ([0x9781, 0x0001], 10432.1),
        "energy_export_kwh": ([0x007D, 0x0000], 12.5),
    },
    "iem3155": {  # float32 holding registers, power in kW
        "current_l1_a": ([0x3FA0, 0x0000], 1.25),
        "current_l2_a": ([0x3FA0, 0x0000], 1.25),
        "current_l3_a": ([0x3FA0, 0x0000], 1.25),
        "voltage_l1_v": ([0x4366, 0x199A], f32(230.1)),
        "voltage_l2_v": ([0x4366, 0x199A], f32(230.1)),
        "voltage_l3_v": ([0x4366, 0x199A], f32(230.1)),
        "power_w": ([0x3F4B, 0x295F], f32(0.7936) * 1000),
        "power_factor": ([0x3F78, 0x51EC], f32(0.97)),
        "frequency_hz": ([0x4248, 0x147B], f32(50.02)),
        "energy_import_kwh": ([0x4623, 0x0066], f32(10432.1)),
        "energy_export_kwh": ([0x4148, 0x0000], 12.5),
    },
}


@pytest.mark.parametrize("model", sorted(MAP_CASES))
def test_bundled_map_decodes_known_registers(model: str) -> None:
    rmap = bundled_map(model)
    cases = MAP_CASES[model]
    assert {e.field for e in rmap.registers} == set(cases)
    # Lay the words out in one register image, then decode it as the poller does.
    image: dict[int, int] = {}
    for e in rmap.registers:
        for k, w in enumerate(cases[e.field][0]):
            image[e.address + k] = w
    for e in rmap.registers:
        words = [image[e.address + k] for k in range(e.count)]
        assert decode(words, e) == cases[e.field][1], e.field
        values, problems = decode_block(words, e.address, [e])
        assert values == {e.field: cases[e.field][1]}
        assert not problems
