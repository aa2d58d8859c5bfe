from __future__ import annotations

import pytest

from meter_gateway.config.topology import MeterPlace
from meter_gateway.gateway.reading import Reading
from meter_gateway.storage.lineprotocol import (
    ReadingEncoder,
    encode_point,
    escape_tag,
    unstorable,
)


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("tx 17", r"tx\ 17"),
        ("a,b", r"a\,b"),
        ("k=v", r"k\=v"),
        ("plain-id_1.2:3", "plain-id_1.2:3"),
        # A backslash is kept where no server reads it as an escape...
        ("a\\b", "a\\b"),
        # ...and replaced where one would: at the end (it would swallow the separator
        # after it) or before a backslash, a separator or a space.
        ("bs\\", "bs\ufffd"),
        ("a\\,b", "a\ufffd\\,b"),
        ("a\\\\b", "a\ufffd\\b"),
        ("line\nbreak\r", "line\ufffdbreak\ufffd"),
    ],
)
def test_tag_escaping(raw, escaped):
    assert escape_tag(raw) == escaped


def test_point_types_and_escaping():
    line = encode_point(
        "meter event",
        {"type": "power_outage", "transformer_id": "tx 1,a=b", "empty": None},
        {"count": 3, "value": 3.0, "ok": True, "message": 'said "hi" \\ there'},
        1_700_000_000,
    )
    assert line == (
        r"meter\ event,transformer_id=tx\ 1\,a\=b,type=power_outage "
        r'count=3i,value=3.0,ok=true,message="said \"hi\" \\ there" 1700000000'
    )


def test_integer_and_float_fields_differ():
    assert encode_point("m", {}, {"n": 5}, None) == "m n=5i"
    assert encode_point("m", {}, {"x": 5.0}, None) == "m x=5.0"


def test_reading_line_has_the_spec_schema_and_precision():
    r = Reading(
        "m-1",
        1_700_000_000_123_456_789,
        "mqtt",
        {"energy_import_kwh": 10432.117, "voltage_l1_v": 229.8, "power_w": -3.0},
    )
    topo = {"m-1": MeterPlace("m-1", transformer_id="tx 17", feeder_id="f-3")}
    assert ReadingEncoder("s", topo).encode(r) == (
        r"meter_reading,feeder_id=f-3,meter_id=m-1,source=mqtt,transformer_id=tx\ 17 "
        'energy_import_kwh=10432.117,voltage_l1_v=229.8,power_w=-3.0,quality="actual" 1700000000'
    )
    assert ReadingEncoder("ms").encode(r).endswith(" 1700000000123")
    assert (
        ReadingEncoder("ns")
        .encode(r._replace(quality="suspect"))
        .endswith('quality="suspect" 1700000000123456789')
    )


@pytest.mark.parametrize(
    "value",
    [1e16, 1e-05, 123456789.12345679, 0.1 + 0.2, -0.0, 5e-324, 1.7976931348623157e308, 230.0],
)
def test_float_fields_round_trip_exactly(value):
    line = ReadingEncoder("s").encode(Reading("m", 0, "mqtt", {"power_w": value}))
    text = line.split("power_w=", 1)[1].split(",", 1)[0]
    assert float(text) == value
    assert "." in text or "e" in text  # never mistaken for an integer field


def test_a_trailing_backslash_never_swallows_the_next_tag():
    line = encode_point(
        "meter_event", {"meter_id": "bs\\", "severity": "critical"}, {"state": "raised"}, 1
    )
    assert line == 'meter_event,meter_id=bs\ufffd,severity=critical state="raised" 1'


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("tx-1", None),
        ("a b,c=d", None),
        ("a\\b", None),
        ("bs\\", "a backslash at the end"),
        ("a\\ b", "a backslash before a space"),
        ("a\\=b", "a backslash before '='"),
        ("a\nb", "a newline"),
        ("a\rb", "a carriage return"),
    ],
)
def test_unstorable_names_the_character(value, problem):
    assert unstorable(value) == problem


def test_string_fields_escape_quotes_and_backslashes_and_keep_one_line():
    line = encode_point("m", {}, {"s": 'a"b\\c\nd\re\\'}, None)
    assert line == 'm s="a\\"b\\\\c\\nd\\re\\\\"'
    assert "\n" not in line
