"""Device payload formats: Tasmota, Shelly Gen2/3, Sparkplug B -> canonical readings.

Payloads follow the devices' documentation (Tasmota "Power Monitoring" / MQTT,
Shelly Gen2 API "EM1", "EM1Data", "EM", "EMData", "Switch" component status, the
Sparkplug 3.0 specification); Sparkplug payloads are built with the small encoder
in `protocols/devices/protobuf.py` and checked against hand-assembled bytes.
"""

from __future__ import annotations

import struct
import time

import orjson
import pytest

from meter_gateway.gateway.validate import Validator
from meter_gateway.protocols import devices
from meter_gateway.protocols.devices import shelly as shelly_mod
from meter_gateway.protocols.devices import tasmota as tasmota_mod
from meter_gateway.protocols.devices.protobuf import (
    I32,
    ProtobufError,
    encode_field,
    fields,
)
from meter_gateway.protocols.devices.sparkplug import (
    SparkplugB,
    decode_payload,
    parse_mapping,
)
from meter_gateway.protocols.formats import FORMATS, Decoded, wants_full_topic
from meter_gateway.protocols.mqtt.config import MqttConfig, Subscription
from meter_gateway.protocols.mqtt.source import MqttSource

NOW = 1_795_797_300.0  # 2026-11-27T...Z; arrival time in these tests
NOW_NS = int(NOW * 1e9)


@pytest.fixture(autouse=True)
def _clock(monkeypatch):
    monkeypatch.setattr(devices, "clock", lambda: NOW)
    monkeypatch.setattr(shelly_mod, "_channels", {})


def valid(decoded: Decoded) -> list:
    """Every reading passes the gateway's validator (and is returned as Readings)."""
    assert not decoded.rejections, decoded.rejections
    v = Validator()
    return [v.check(r, "mqtt", NOW_NS + 60 * 10**9) for r in decoded.readings]


# -- Tasmota ---------------------------------------------------------------------------------
TASMOTA_DOC = (
    b'{"Time":"2026-11-27T08:15:00","ENERGY":{"TotalStartTime":"2026-01-10T17:43:33",'
    b'"Total":1234.567,"Yesterday":3.214,"Today":1.117,"Period":0,"Power":812,'
    b'"ApparentPower":840,"ReactivePower":214,"Factor":0.97,"Voltage":231,"Current":3.636}}'
)


def test_tasmota_single_phase_from_the_docs():
    d = FORMATS["tasmota"](TASMOTA_DOC, "tasmota_A1B2C3")
    assert d.readings == [
        {
            "meter_id": "tasmota_A1B2C3",
            "ts": NOW,  # local time without an offset: the arrival time, not a guess
            "energy_import_kwh": 1234.567,
            "power_w": 812,
            "voltage_v": 231,
            "current_a": 3.636,
            "power_factor": 0.97,
        }
    ]
    (r,) = valid(d)
    assert r.meter_id == "tasmota_A1B2C3"


def test_tasmota_time_with_an_offset_is_used_and_utc_can_be_chosen(monkeypatch):
    payload = TASMOTA_DOC.replace(b'"2026-11-27T08:15:00"', b'"2026-11-27T08:15:00+01:00"')
    assert FORMATS["tasmota"](payload, "t1").readings[0]["ts"] == "2026-11-27T08:15:00+01:00"
    monkeypatch.setattr(tasmota_mod, "NAIVE_TIME", "utc")
    assert FORMATS["tasmota"](TASMOTA_DOC, "t1").readings[0]["ts"] == "2026-11-27T08:15:00Z"


def test_tasmota_per_phase_frequency_and_factors_without_powers():
    payload = orjson.dumps(
        {
            "Time": "2026-11-27T08:15:00+00:00",
            "ENERGY": {
                "Total": 5000.5,
                "Factor": [0.9, 0.8, 0.7],
                "Voltage": [229.8, 231.2, 230.4],
                "Frequency": [50.01, 50.01, 50.04],
            },
        }
    )
    (r,) = FORMATS["tasmota"](payload, "pzem3").readings
    assert r["frequency_hz"] == 50.02  # one grid: the phases' mean
    assert r["power_factor"] == 0.8
    valid(FORMATS["tasmota"](payload, "pzem3"))


def test_tasmota_three_phase_arrays():
    payload = orjson.dumps(
        {
            "Time": "2026-11-27T08:15:00",
            "ENERGY": {
                "Total": 5000.5,
                "ExportActive": 12.25,
                "Power": [100, 200, 300],
                "ApparentPower": [125, 250, 375],
                "Factor": [0.8, 0.8, 0.8],
                "Voltage": [229.8, 231.2, 230.4],
                "Current": [0.5, 0.9, 1.4],
                "Frequency": 50.01,
            },
        }
    )
    (r,) = FORMATS["tasmota"](payload, "pzem3").readings
    assert r["power_w"] == 600
    assert r["voltage_v"] == [229.8, 231.2, 230.4]
    assert r["current_a"] == [0.5, 0.9, 1.4]
    assert r["power_factor"] == 0.8
    assert r["energy_export_kwh"] == 12.25
    assert r["frequency_hz"] == 50.01
    valid(FORMATS["tasmota"](payload, "pzem3"))


def test_tasmota_per_phase_totals_are_summed_and_status10_is_understood():
    payload = orjson.dumps(
        {"StatusSNS": {"Time": "2026-11-27T08:15:00", "ENERGY": {"Total": [1.5, 2.5, 3.0]}}}
    )
    assert FORMATS["tasmota"](payload, "t3").readings[0]["energy_import_kwh"] == 7.0


def test_tasmota_without_energy_is_ignored_not_rejected():
    d = FORMATS["tasmota"](b'{"Time":"2026-11-27T08:15:00","DS18B20":{"Temperature":21.3}}', "t")
    assert d == Decoded()


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"{nope", "invalid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"ENERGY": 5}', "ENERGY: expected an object"),
        (b'{"ENERGY": {"Voltage": [230, 231], "Power": [1, 2]}}', "not one meter's three phases"),
    ],
)
def test_tasmota_bad_payloads_are_rejected_in_words(payload, words):
    d = FORMATS["tasmota"](payload, "t")
    assert not d.readings
    assert words in d.rejections[0].reason
    assert d.rejections[0].reason.startswith("tasmota: ")


def test_tasmota_strings_where_numbers_belong_reach_the_validator_by_name():
    (r,) = FORMATS["tasmota"](b'{"ENERGY": {"Power": "lots"}}', "t").readings
    with pytest.raises(ValueError, match="power_w"):
        Validator().check(r, "mqtt", NOW_NS)


def test_tasmota_lwt_is_the_builtin_lwt_format():
    assert FORMATS["lwt"](b"Offline", "tasmota_A1B2C3").signals[0].value == "offline"
    assert FORMATS["lwt"](b"Online", "tasmota_A1B2C3").signals[0].value == "online"


# -- Shelly ------------------------------------------------------------------------------------
EM1 = (
    b'{"id":0,"current":2.412,"voltage":231.2,"act_power":540.1,"aprt_power":557.6,'
    b'"pf":0.97,"freq":50.0,"calibration":"factory"}'
)
EM1DATA = b'{"id":0,"total_act_energy":123456.78,"total_act_ret_energy":1500.0}'


def test_shelly_em1_and_em1data_are_partial_readings():
    power = FORMATS["shelly"](EM1, "shellyproem50-08f9e0e5e3d4")
    assert power.readings == [
        {
            "meter_id": "shellyproem50-08f9e0e5e3d4",
            "ts": NOW,
            "current_a": 2.412,
            "voltage_v": 231.2,
            "power_w": 540.1,
            "power_factor": 0.97,
            "frequency_hz": 50.0,
        }
    ]
    energy = FORMATS["shelly"](EM1DATA, "shellyproem50-08f9e0e5e3d4")
    assert energy.readings == [
        {
            "meter_id": "shellyproem50-08f9e0e5e3d4",
            "ts": NOW,
            "energy_import_kwh": pytest.approx(123.45678),
            "energy_export_kwh": 1.5,
        }
    ]
    valid(power)
    valid(energy)


def test_shelly_second_channel_is_its_own_meter_and_online_covers_it():
    d = FORMATS["shelly"](EM1.replace(b'"id":0', b'"id":1'), "shellyproem50-1")
    assert d.readings[0]["meter_id"] == "shellyproem50-1:1"
    off = FORMATS["shelly-online"](b"false", "shellyproem50-1")
    assert [(s.meter_id, s.value) for s in off.signals] == [
        ("shellyproem50-1", "offline"),
        ("shellyproem50-1:1", "offline"),
    ]
    assert FORMATS["shelly-online"](b"true", "x").signals[0].value == "online"
    assert "expected 'true' or 'false'" in FORMATS["shelly-online"](b"1", "x").rejections[0].reason


def test_shelly_notify_status_uses_its_ts_and_merges_one_channel():
    rpc = {
        "src": "shellyproem50-08f9e0e5e3d4",
        "dst": "shellyproem50-08f9e0e5e3d4/events",
        "method": "NotifyStatus",
        "params": {
            "ts": 1795797290.52,
            "em1:0": {"id": 0, "act_power": 541.0},
            "em1data:0": {"id": 0, "total_act_energy": 123460.0},
            "em1:1": {"act_power": 12.0},
            "wifi": {"rssi": -60},
        },
    }
    d = FORMATS["shelly"](orjson.dumps(rpc), None)  # the device id from `src`
    assert d.readings == [
        {
            "meter_id": "shellyproem50-08f9e0e5e3d4",
            "ts": 1795797290.52,
            "power_w": 541.0,
            "energy_import_kwh": 123.46,
        },
        {"meter_id": "shellyproem50-08f9e0e5e3d4:1", "ts": 1795797290.52, "power_w": 12.0},
    ]
    valid(d)
    event = {"src": "x", "method": "NotifyEvent", "params": {"ts": 1, "events": []}}
    assert FORMATS["shelly"](orjson.dumps(event), "x") == Decoded()


def test_shelly_pro_3em_and_plus_pm():
    em = {
        "id": 0,
        "a_current": 1.0,
        "a_voltage": 230.1,
        "a_act_power": 200.0,
        "b_current": 2.0,
        "b_voltage": 231.0,
        "c_current": 3.0,
        "c_voltage": 229.5,
        "total_current": 6.0,
        "total_act_power": 1300.0,
        "total_aprt_power": 1400.0,
        "a_freq": 49.98,
    }
    (r,) = FORMATS["shelly"](orjson.dumps(em), "shellypro3em-1").readings
    assert r["voltage_v"] == [230.1, 231.0, 229.5]
    assert r["current_a"] == [1.0, 2.0, 3.0]
    assert r["power_w"] == 1300.0
    assert r["power_factor"] == pytest.approx(0.9286)
    assert r["frequency_hz"] == 49.98
    emdata = b'{"id":0,"a_total_act_energy":1000,"total_act":3000.5,"total_act_ret":10}'
    (e,) = FORMATS["shelly"](emdata, "shellypro3em-1").readings
    assert e["energy_import_kwh"] == pytest.approx(3.0005)
    switch = {
        "id": 0,
        "source": "init",
        "output": True,
        "apower": 8.9,
        "voltage": 237.5,
        "current": 0.068,
        "aenergy": {"total": 6.532, "by_minute": [45.199, 47.141, 88.397], "minute_ts": 1},
    }
    (s,) = FORMATS["shelly"](orjson.dumps(switch), "shellyplus1pm-1").readings
    assert s["power_w"] == 8.9
    assert s["energy_import_kwh"] == pytest.approx(0.006532)
    valid(FORMATS["shelly"](orjson.dumps(switch), "shellyplus1pm-1"))


def test_shelly_other_components_are_ignored():
    assert FORMATS["shelly"](b'{"id":0,"state":true}', "x") == Decoded()  # input:0


@pytest.mark.parametrize(
    ("payload", "topic_id", "words"),
    [
        (b"{", "x", "invalid JSON"),
        (b'"em1"', "x", "expected a JSON object"),
        (EM1, None, "no device id"),
        (b'{"method":"NotifyStatus","params":[]}', "x", "params: expected an object"),
        (EM1.replace(b'"id":0', b'"id":"a"'), "x", "expected a channel number"),
    ],
)
def test_shelly_bad_payloads_are_rejected_in_words(payload, topic_id, words):
    d = FORMATS["shelly"](payload, topic_id)
    assert not d.readings
    assert words in d.rejections[0].reason


# -- protobuf --------------------------------------------------------------------------------
def test_protobuf_decoder_against_hand_assembled_bytes():
    # Metric{name: "Power W", alias: 3, datatype: 10 (Double), double_value: 812.5}
    metric = (
        b"\x0a\x07Power W"  # field 1, length-delimited
        + b"\x10\x03"  # field 2 varint
        + b"\x20\x0a"  # field 4 varint
        + b"\x69"  # field 13, wire type 1 (64-bit)
        + struct.pack("<d", 812.5)
    )
    # Payload{timestamp: 300, metrics: [metric], seq: 0}; 300 is "ac 02" (the protobuf
    # encoding guide's own example of a varint)
    payload = b"\x08\xac\x02" + b"\x12" + bytes([len(metric)]) + metric
    payload += b"\x18\x00"
    ts, metrics, seq = decode_payload(payload)
    assert ts == 300
    assert seq == 0
    assert (metrics[0].name, metrics[0].alias, metrics[0].datatype) == ("Power W", 3, 10)
    assert metrics[0].value == 812.5
    # and the encoder used below writes the same bytes
    assert spb_metric("Power W", 812.5, alias=3, datatype=10) == metric


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"\x08", "truncated varint at byte 1"),
        (b"\x12\x05ab", "claims 5 bytes; 2 are left"),
        (b"\x08" + b"\xff" * 11, "longer than 10 bytes"),
        (b"\x0b", "unsupported wire type 3"),
        (b"\x00", "invalid field number 0"),
        (b"\x0d\x00\x00", "truncated 32-bit value"),
    ],
)
def test_protobuf_errors_say_what_and_where(raw, words):
    with pytest.raises(ProtobufError, match=words):
        fields(raw)


# -- Sparkplug B ----------------------------------------------------------------------------
DOUBLE, INT32, INT64, UINT64, FLOAT, BOOLEAN, STRING = 10, 3, 4, 8, 9, 11, 12
T0 = 1_795_797_300_000  # ms


def spb_metric(
    name=None, value=None, *, alias=None, datatype=DOUBLE, ts=None, is_null=False
) -> bytes:
    out = b""
    if name is not None:
        out += encode_field(1, name)
    if alias is not None:
        out += encode_field(2, alias)
    if ts is not None:
        out += encode_field(3, ts)
    out += encode_field(4, datatype)
    if is_null:
        out += encode_field(7, 1)
    elif datatype in (DOUBLE,):
        out += encode_field(13, float(value))
    elif datatype == FLOAT:
        out += encode_field(12, float(value), I32)
    elif datatype in (INT32,):
        out += encode_field(10, value & 0xFFFFFFFF)
    elif datatype in (INT64, UINT64):
        out += encode_field(11, value)
    elif datatype == BOOLEAN:
        out += encode_field(14, bool(value))
    elif datatype == STRING:
        out += encode_field(15, value)
    return out


def spb_payload(*metrics: bytes, ts: int | None = T0, seq: int = 0) -> bytes:
    out = encode_field(1, ts) if ts is not None else b""
    for m in metrics:
        out += encode_field(2, m)
    return out + encode_field(3, seq)


@pytest.fixture
def spb() -> SparkplugB:
    return SparkplugB()  # its own state; FORMATS["sparkplug-b"] is an instance like it


def nbirth(bdseq: int = 0) -> bytes:
    return spb_payload(
        spb_metric("bdSeq", bdseq, datatype=INT64),
        spb_metric("Node Control/Rebirth", False, datatype=BOOLEAN),
        spb_metric("Energy/Import kWh", 1042.5, alias=1),
        spb_metric("Power W", 800.0, alias=2, datatype=FLOAT),
        spb_metric("Voltage L1", 230.1, alias=3),
        spb_metric("Voltage L2", 231.2, alias=4),
        spb_metric("Voltage L3", 229.9, alias=5),
        spb_metric("Properties/Hardware Make", "ACME", alias=6, datatype=STRING),
    )


def test_sparkplug_is_registered_wanting_the_full_topic():
    assert wants_full_topic(FORMATS["sparkplug-b"])
    assert not wants_full_topic(FORMATS["json"])


def test_sparkplug_nbirth_is_online_and_a_reading(spb):
    d = spb(nbirth(), "spBv1.0/plant1/NBIRTH/edge-7")
    assert [(s.kind, s.meter_id, s.value, s.ts) for s in d.signals] == [
        ("status", "edge-7", "online", T0 // 1000)
    ]
    assert d.readings == [
        {
            "meter_id": "edge-7",
            "ts": T0 // 1000,
            "energy_import_kwh": 1042.5,
            "power_w": 800.0,
            "voltage_v": [230.1, 231.2, 229.9],
        }
    ]
    valid(d)


def test_sparkplug_ndata_by_alias_and_phases_completed_from_the_last_known(spb):
    spb(nbirth(), "spBv1.0/plant1/NBIRTH/edge-7")
    data = spb_payload(
        spb_metric(None, 1043.0, alias=1, ts=T0 + 60_000),
        spb_metric(None, 232.0, alias=4, ts=T0 + 60_000),
        spb_metric(None, 790.0, alias=2, datatype=FLOAT, ts=T0 + 61_500),
        ts=T0 + 62_000,
        seq=1,
    )
    d = spb(data, "spBv1.0/plant1/NDATA/edge-7")
    assert not d.rejections
    assert d.readings == [
        {
            "meter_id": "edge-7",
            "ts": (T0 + 60_000) // 1000,
            "energy_import_kwh": 1043.0,
            "voltage_v": [230.1, 232.0, 229.9],
        },
        {"meter_id": "edge-7", "ts": (T0 + 61_500) / 1000, "power_w": 790.0},
    ]
    valid(d)


def test_sparkplug_devices_have_their_own_aliases_and_die_with_their_node(spb):
    spb(nbirth(bdseq=3), "spBv1.0/g/NBIRTH/edge-1")
    dbirth = spb_payload(
        spb_metric("Meter/Energy/Import Wh", 5_000_000, alias=1, datatype=INT64),
        spb_metric("Meter/Current L1", 1.0, alias=2),
        spb_metric("Meter/Current L2", 2.0, alias=3),
        spb_metric("Meter/Current L3", 3.0, alias=4),
        spb_metric("Meter/Power Factor", -0.5, alias=5),
    )
    d = spb(dbirth, "spBv1.0/g/DBIRTH/edge-1/meter-12")
    assert d.signals[0].meter_id == "edge-1:meter-12"
    assert d.signals[0].value == "online"
    assert d.readings[0]["energy_import_kwh"] == 5000.0
    assert d.readings[0]["current_a"] == [1.0, 2.0, 3.0]
    # the node's alias 1 is not the device's alias 1
    dd = spb(
        spb_payload(spb_metric(None, 5_001_000, alias=1, datatype=INT64)),
        "spBv1.0/g/DDATA/edge-1/meter-12",
    )
    assert dd.readings[0]["energy_import_kwh"] == 5001.0
    valid(dd)
    # a stale NDEATH (the will of an earlier session) is ignored
    stale = spb(spb_payload(spb_metric("bdSeq", 2, datatype=INT64)), "spBv1.0/g/NDEATH/edge-1")
    assert stale == Decoded()
    death = spb(spb_payload(spb_metric("bdSeq", 3, datatype=INT64)), "spBv1.0/g/NDEATH/edge-1")
    assert [(s.meter_id, s.value) for s in death.signals] == [
        ("edge-1", "offline"),
        ("edge-1:meter-12", "offline"),
    ]
    # aliases died with the node: DATA now cannot be read, and says why
    after = spb(spb_payload(spb_metric(None, 1.0, alias=2)), "spBv1.0/g/NDATA/edge-1")
    assert not after.readings
    assert "alias(es) 2" in after.rejections[0].reason
    assert "rebirth" in after.rejections[0].reason


def test_sparkplug_ddeath_is_offline_for_the_device(spb):
    d = spb(spb_payload(), "spBv1.0/g/DDEATH/edge-1/meter-12")
    assert [(s.meter_id, s.value) for s in d.signals] == [("edge-1:meter-12", "offline")]


def test_sparkplug_values_types_nulls_and_unmapped_metrics(spb):
    payload = spb_payload(
        spb_metric("Power W", -1500, datatype=INT32),  # negative Int32 in the uint32 field
        spb_metric("Voltage", None, is_null=True),
        spb_metric("Frequency Hz", 50.02, datatype=FLOAT),
        spb_metric("Temperature C", 21.5),
        ts=None,
    )
    d = spb(payload, "spBv1.0/g/NDATA/edge-2")
    (r,) = d.readings
    assert r["power_w"] == -1500
    assert r["frequency_hz"] == pytest.approx(50.02, abs=1e-4)
    assert "voltage_v" not in r
    assert r["ts"] == NOW  # no timestamp anywhere: the arrival time
    only_other = spb(spb_payload(spb_metric("Temperature C", 21.5)), "spBv1.0/g/NDATA/edge-2")
    assert only_other == Decoded()


def test_sparkplug_mapping_can_be_overridden(spb):
    spb.set_metrics({"kWh in": "energy_import_kwh", "P": "power_w*1000", "U2": "voltage_v[1]"})
    d = spb(
        spb_payload(spb_metric("kWh in", 7.5), spb_metric("P", 1.2), spb_metric("Power W", 9.0)),
        "spBv1.0/g/NDATA/e",
    )
    assert d.readings == [
        {"meter_id": "e", "ts": T0 // 1000, "energy_import_kwh": 7.5, "power_w": 1200.0}
    ]
    with pytest.raises(ValueError, match="'watts'"):
        parse_mapping({"P": "watts"})
    with pytest.raises(ValueError, match="power_w has no phases"):
        parse_mapping({"P": "power_w[1]"})


@pytest.mark.parametrize(
    ("payload", "topic", "words"),
    [
        (b"\x12\x09abc", "spBv1.0/g/NDATA/e", "invalid protobuf: field 2 at byte 0 claims 9"),
        (b"\x12\x02\x68\x01", "spBv1.0/g/NDATA/e", "metrics[0]: metric field 13 has the wrong"),
        (b"", "e", "needs the whole topic"),
        (b"", None, "needs the whole topic"),
        (b"", "spBv1.0/g/DDATA/e", "DDATA takes a device level"),
        (b"", "spBv1.0/g/NDATA/e/d", "NDATA takes no device level"),
    ],
)
def test_sparkplug_bad_messages_are_rejected_in_words(spb, payload, topic, words):
    d = spb(payload, topic)
    assert not d.readings
    assert not d.signals
    assert words in d.rejections[0].reason


def test_sparkplug_commands_and_state_are_ignored(spb):
    assert spb(spb_payload(), "spBv1.0/g/NCMD/e") == Decoded()
    assert spb(b"ONLINE", "spBv1.0/STATE/host-1") == Decoded()


def test_the_mqtt_source_gives_sparkplug_the_whole_topic_and_others_the_plus_level():
    cfg = MqttConfig(
        host="127.0.0.1",
        port=1,
        subscriptions=[
            Subscription(topic="spBv1.0/#", format="sparkplug-b"),
            Subscription(topic="tele/+/SENSOR", format="tasmota"),
        ],
    )
    source = MqttSource(cfg, client_id="c-unit", handler=lambda *a: 0, flow=None)  # type: ignore[arg-type]
    topic = "spBv1.0/g/DDATA/edge-1/meter-12"
    assert source._route(topic) == (FORMATS["sparkplug-b"], topic)
    assert source._route("tele/plug-1/SENSOR") == (FORMATS["tasmota"], "plug-1")


def test_hostile_payloads_never_raise():
    rnd = __import__("random").Random(7)
    for _ in range(300):
        raw = bytes(rnd.randrange(256) for _ in range(rnd.randrange(40)))
        for name, topic in (
            ("tasmota", "t"),
            ("shelly", "s"),
            ("shelly-online", "s"),
            ("sparkplug-b", "spBv1.0/g/NDATA/e"),
            ("sparkplug-b", "spBv1.0/g/DBIRTH/e/d"),
        ):
            assert isinstance(FORMATS[name](raw, topic), Decoded)
    assert time.time() > 0


def test_through_the_pipeline_readings_are_stored_and_signals_raised(tmp_path):
    from meter_gateway.gateway.pipeline import Pipeline
    from meter_gateway.gateway.validate import MeterRules
    from meter_gateway.storage.deadletter import DeadLetterStore
    from meter_gateway.storage.lineprotocol import ReadingEncoder

    class Sink:
        paused = False
        lines: list[str] = []

        def add(self, line: str) -> int:
            self.lines.append(line)
            return 0

    signals = []
    p = Pipeline(
        validator=Validator(),
        rules=MeterRules(),
        encoder=ReadingEncoder(),
        sink=Sink(),
        dead_letter=DeadLetterStore(tmp_path),
        max_payload_bytes=4096,
        on_signal=lambda sig, topic: signals.append((sig.meter_id, sig.value, topic)),
        clock=lambda: NOW_NS + 60 * 10**9,
    )
    spb = FORMATS["sparkplug-b"]
    spb.reset()
    try:
        topic = "spBv1.0/g/NBIRTH/edge-9"
        p.handle_message(topic, nbirth(), spb, topic)
        p.handle_message("tele/t1/SENSOR", TASMOTA_DOC, FORMATS["tasmota"], "t1")
        p.handle_message("s1/status/em1data:0", EM1DATA, FORMATS["shelly"], "s1")
        p.handle_message(
            "tele/t1/SENSOR", b'{"ENERGY": {"Voltage": [1, 2]}}', FORMATS["tasmota"], "t1"
        )
    finally:
        spb.reset()
    assert p.spooled["mqtt"] == 3
    assert signals == [("edge-9", "online", "spBv1.0/g/NBIRTH/edge-9")]
    assert sum(p.rejected.values()) == 1
    assert any(line.startswith("reading") or "edge-9" in line for line in Sink.lines)
