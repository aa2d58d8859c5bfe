from __future__ import annotations

import math
import time

import orjson
import pytest

from meter_gateway.gateway.reading import Reading
from meter_gateway.gateway.validate import Flag, Invalid, MeterRules, Validator
from meter_gateway.protocols.formats import FORMATS

NOW = 1_800_000_000 * 10**9  # 2027-01-15
TS = "2027-01-15T07:50:00Z"


def check(obj: dict) -> Reading:
    return Validator().check({"meter_id": "m-1", "ts": TS, **obj}, "mqtt", NOW)


def test_canonical_reading():
    r = check(
        {
            "energy_import_kwh": 10432.117,
            "energy_export_kwh": 12.5,
            "power_w": 812.4,
            "voltage_v": [229.8, 231.2, 230.4],
            "current_a": [1.2, 0.9, 1.4],
            "power_factor": 0.97,
            "frequency_hz": 50.01,
            "unknown": "ignored",
        }
    )
    assert r.meter_id == "m-1"
    assert r.ts_ns == NOW - 600 * 10**9
    assert r.values == {
        "energy_import_kwh": 10432.117,
        "energy_export_kwh": 12.5,
        "power_w": 812.4,
        "power_factor": 0.97,
        "frequency_hz": 50.01,
        "voltage_l1_v": 229.8,
        "voltage_l2_v": 231.2,
        "voltage_l3_v": 230.4,
        "current_l1_a": 1.2,
        "current_l2_a": 0.9,
        "current_l3_a": 1.4,
    }
    assert r.quality == "actual"


def test_single_phase_and_integers():
    r = check({"voltage_v": 230, "current_a": 2})
    assert r.values == {"voltage_l1_v": 230.0, "current_l1_a": 2.0}
    assert type(r.values["voltage_l1_v"]) is float


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ({"voltage_v": [230, 1234.0, 230]}, "voltage_v[1]: 1234.0 above 1000.0"),
        ({"voltage_v": 5000}, "voltage_v: 5000.0 above 1000.0"),
        ({"voltage_v": -1}, "voltage_v: -1.0 below 0.0"),
        ({"voltage_v": [230, 230]}, "voltage_v: expected one number or a list of three"),
        ({"current_a": 20000}, "current_a: 20000.0 above 10000.0"),
        ({"frequency_hz": 39.9}, "frequency_hz: 39.9 below 40.0"),
        ({"power_w": -2e7}, "power_w: -20000000.0 below -10000000.0"),
        ({"power_factor": 1.2}, "power_factor: 1.2 above 1.0"),
        ({"energy_import_kwh": -1}, "energy_import_kwh: -1.0 below 0.0"),
        ({"power_w": "812"}, "power_w: expected a number, got a string '812'"),
        ({"power_w": True}, "power_w: expected a number, got a boolean true"),
        ({"power_w": math.nan}, "power_w: nan is not a number"),
        ({"voltage_v": [230, math.inf, 230]}, "voltage_v[1]: inf is not a number"),
        ({}, "no measurement"),
        ({"meter_id": "bad id!", "power_w": 1}, "meter_id: 'bad id!' is not 1-64 characters"),
        ({"meter_id": 7, "power_w": 1}, "meter_id: expected text, got a number"),
        ({"ts": "2027-01-15T07:50:00", "power_w": 1}, "has no UTC offset"),
        ({"ts": "yesterday", "power_w": 1}, "is not an RFC 3339 time"),
        ({"ts": None, "power_w": 1}, "ts: missing"),
        ({"ts": "2027-01-15T09:00:00Z", "power_w": 1}, "s in the future (limit 300 s"),
        ({"ts": "2027-01-01T00:00:00Z", "power_w": 1}, "older than the maximum age of 7 days"),
    ],
)
def test_rejections_name_the_field_and_the_bound(obj, reason):
    with pytest.raises(Invalid) as info:
        check(obj)
    assert reason in str(info.value)


def test_timestamps_with_offsets_and_epochs_agree():
    a = check({"ts": "2027-01-15T08:50:00+01:00", "power_w": 1})
    b = check({"ts": NOW // 10**9 - 600, "power_w": 1})
    c = check({"ts": NOW / 10**9 - 600.0, "power_w": 1})
    assert a.ts_ns == b.ts_ns == c.ts_ns == NOW - 600 * 10**9


def reading(ts_s: int, **values: float) -> Reading:
    return Reading("m-1", ts_s * 10**9, "mqtt", values)


def test_register_decrease_is_flagged_once_and_stored_as_suspect():
    rules, flags = MeterRules(), []
    assert rules.judge(reading(100, energy_import_kwh=10.0), flags).quality == "actual"
    r = rules.judge(reading(200, energy_import_kwh=2.0), flags)
    assert r.quality == "suspect"
    assert [f.kind for f in flags] == ["register_decrease"]
    assert "energy_import_kwh went down from 10.0 to 2.0" in flags[0].message
    assert rules.judge(reading(300, energy_import_kwh=2.5), flags).quality == "actual"
    assert len(flags) == 1


def test_duplicates_identical_dropped_different_flagged():
    rules, flags = MeterRules(), []
    assert rules.judge(reading(100, power_w=1.0), flags) is not None
    assert rules.judge(reading(100, power_w=1.0), flags) is None
    assert rules.duplicates == 1
    r = rules.judge(reading(100, power_w=2.0), flags)
    assert r is not None
    assert r.quality == "suspect"
    assert flags == [Flag("duplicate_conflict", "m-1", 100 * 10**9, flags[0].message)]


def test_partial_readings_of_one_time_complement_each_other():
    # A Shelly sends power and its energy counters in two messages with one time.
    rules, flags = MeterRules(), []
    power = reading(100, power_w=400.0, voltage_l1_v=230.0)
    energy = reading(100, energy_import_kwh=12.5)
    assert rules.judge(power, flags).quality == "actual"
    assert rules.judge(energy, flags).quality == "actual"
    assert flags == []
    assert rules.judge(energy, flags) is None  # a redelivery of either is a duplicate
    assert rules.judge(power, flags) is None
    assert rules.duplicates == 2
    # The same field again with another value is a conflict, partial or not.
    assert rules.judge(reading(100, power_w=999.0), flags).quality == "suspect"
    assert [f.kind for f in flags] == ["duplicate_conflict"]


def test_out_of_order_is_accepted_and_checked_against_later_registers():
    rules, flags = MeterRules(), []
    rules.judge(reading(200, energy_import_kwh=20.0), flags)
    assert rules.judge(reading(100, energy_import_kwh=10.0), flags).quality == "actual"
    assert rules.judge(reading(150, energy_import_kwh=25.0), flags).quality == "suspect"
    assert flags[-1].kind == "out_of_order_register"


def test_duplicate_window_is_bounded():
    rules, flags = MeterRules(duplicate_window=2), []
    for t in (1, 2, 3):
        rules.judge(reading(t, power_w=1.0), flags)
    assert rules.judge(reading(3, power_w=1.0), flags) is None
    assert rules.judge(reading(1, power_w=1.0), flags) is not None  # forgotten


def test_formats_json_meter_id_from_topic_and_mismatch():
    ok = FORMATS["json"](b'{"power_w": 1}', "m-7")
    assert ok.readings == [{"power_w": 1, "meter_id": "m-7"}]
    bad = FORMATS["json"](b'{"meter_id": "m-8", "power_w": 1}', "m-7")
    assert "payload names 'm-8' but the topic is for 'm-7'" in bad.rejections[0].reason


def test_formats_nan_is_parsed_so_the_field_can_be_named():
    d = FORMATS["json"](b'{"power_w": NaN}', "m-7")
    with pytest.raises(Invalid, match="power_w: nan is not a number"):
        Validator().check({**d.readings[0], "ts": TS}, "mqtt", NOW)
    assert "invalid JSON" in FORMATS["json"](b'{"power_w": ', "m-7").rejections[0].reason


def test_formats_batch_judges_each_element():
    d = FORMATS["json-batch"](
        b'{"concentrator_id": "dc-1", "readings": '
        b'[{"meter_id": "a", "power_w": 1}, 5, {"power_w": 2}]}',
        "dc-1",
    )
    assert d.readings == [{"meter_id": "a", "power_w": 1}]
    assert d.positions == [0]
    assert [(r.index, r.reason) for r in d.rejections] == [
        (1, "readings[1]: expected a JSON object, got 5"),
        (2, "readings[2]: meter_id: missing"),
    ]


def test_formats_event_and_lwt():
    e = FORMATS["meter-event"](b'{"ts": 1, "type": "last_gasp"}', "m-1")
    assert (e.signals[0].meter_id, e.signals[0].value) == ("m-1", "last_gasp")
    assert (
        "is not one of" in FORMATS["meter-event"](b'{"type": "boom"}', "m-1").rejections[0].reason
    )
    assert FORMATS["lwt"](b"Offline", "m-1").signals[0].value == "offline"
    assert FORMATS["lwt"](b"maybe", "m-1").rejections


NOW_S = int(time.time())


@pytest.mark.parametrize(
    ("payload", "fmt", "label"),
    [
        (b'{"ts": 1, "power_w": ', "json", "json"),
        (
            b'{"readings": [{"meter_id": "m", "ts": %d, "voltage_v": [1, 1234.0, 1]}]}' % NOW_S,
            "json-batch",
            "voltage_v",
        ),
        (b'{"ts": %d, "power_w": "812"}' % NOW_S, "json", "power_w"),
        (b'{"ts": %d}' % NOW_S, "json", "reading"),
        (b'{"ts": 1, "power_w": 1.0}', "json", "ts"),
        (b'{"meter_id": "other", "ts": 1, "power_w": 1.0}', "json", "meter_id"),
        (b"[1]", "json", "payload"),
        (b"maybe", "lwt", "lwt"),
        (b"x" * 5000, "json", "too_large"),
    ],
)
def test_rejections_are_counted_by_the_field_at_fault(tmp_path, payload, fmt, label):
    from meter_gateway.gateway.pipeline import Pipeline
    from meter_gateway.storage.deadletter import DeadLetterStore
    from meter_gateway.storage.lineprotocol import ReadingEncoder

    class Sink:
        paused = False

        def add(self, line: str) -> None:
            pass

    p = Pipeline(
        validator=Validator(),
        rules=MeterRules(),
        encoder=ReadingEncoder(),
        sink=Sink(),
        dead_letter=DeadLetterStore(tmp_path),
        max_payload_bytes=4096,
    )
    p.handle_message("t/m/x", payload, FORMATS[fmt], "m")
    assert dict(p.rejected) == {label: 1}


# -- rejections for the time: what the detectors hear of a wrong clock ---------------------


def test_a_time_beyond_the_bounds_carries_the_clock_finding():
    with pytest.raises(Invalid) as ahead:
        check({"ts": "2027-01-15T09:00:00Z", "power_w": 1})
    assert (ahead.value.field, ahead.value.kind) == ("ts", "time")  # metrics as before
    assert ahead.value.clock == Flag(
        "ts_in_future", "m-1", NOW + 3600 * 10**9, str(ahead.value), 300.0
    )
    with pytest.raises(Invalid) as old:
        check({"ts": "2027-01-01T00:00:00Z", "power_w": 1})
    assert old.value.clock is not None
    assert old.value.clock.kind == "ts_too_old"
    assert old.value.clock.ts_ns == 1_798_761_600 * 10**9
    assert old.value.clock.bound_s == 7 * 86_400.0
    assert old.value.clock.message == str(old.value)


@pytest.mark.parametrize(
    "obj",
    [
        {"ts": "2027-01-15T07:50:00", "power_w": 1},  # no offset
        {"ts": "yesterday", "power_w": 1},
        {"ts": None, "power_w": 1},
        {"ts": 1_800_000_000_000, "power_w": 1},  # milliseconds: no time at all
        {"meter_id": "bad id!", "ts": "2027-01-01T00:00:00Z", "power_w": 1},
        {"meter_id": None, "ts": "2027-01-15T09:00:00Z", "power_w": 1},
        {"power_w": "x"},
    ],
)
def test_other_rejections_carry_no_clock_finding(obj):
    with pytest.raises(Invalid) as info:
        check(obj)
    assert info.value.clock is None


def test_the_pipeline_hands_rejections_for_the_time_to_the_detectors(tmp_path):
    from tests.unit.test_hostile_input import make_pipeline

    flags: list[Flag] = []
    pipeline, sink, dl = make_pipeline(tmp_path, on_flag=flags.append, clock=lambda: NOW)
    s = NOW // 10**9
    items = [
        {"meter_id": "m-1", "ts": s - 8 * 86_400, "power_w": 1.0},  # too old
        {"meter_id": "m-2", "ts": s + 3600, "power_w": 1.0},  # too far ahead
        {"meter_id": "bad id!", "ts": s + 3600, "power_w": 1.0},  # no meter: no finding
        {"meter_id": "m-3", "ts": "yesterday", "power_w": 1.0},  # no time: no finding
        {"meter_id": "m-4", "ts": s, "power_w": 1.0},  # stored
    ]
    batch = FORMATS["json-batch"]
    pipeline.handle_message(
        "concentrators/dc/readings", orjson.dumps({"readings": items}), batch, "dc"
    )
    assert [(f.kind, f.meter_id, f.ts_ns, f.bound_s) for f in flags] == [
        ("ts_too_old", "m-1", (s - 8 * 86_400) * 10**9, 7 * 86_400.0),
        ("ts_in_future", "m-2", (s + 3600) * 10**9, 300.0),
    ]
    assert flags[0].message in dl.records[0]["reason"]
    # Rejections as before: each kept with its reason and counted as one, none a flag.
    assert len(dl.records) == 4
    assert pipeline.rejected["ts"] == 3
    assert pipeline.flagged == {}
    assert len(sink.lines) == 1
    # One reading (a single-reading message, a poller's): the same.
    flags.clear()
    json = FORMATS["json"]
    pipeline.handle_message(
        "meters/m-5/reading", orjson.dumps({"ts": s + 3600, "power_w": 1}), json, "m-5"
    )
    pipeline.handle_reading(
        {"meter_id": "m-6", "ts": s - 8 * 86_400, "power_w": 1.0}, "modbus", "d"
    )
    assert [(f.kind, f.meter_id) for f in flags] == [("ts_in_future", "m-5"), ("ts_too_old", "m-6")]
    assert len(dl.records) == 6
