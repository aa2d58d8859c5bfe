"""No input stops the pipeline: every hostile payload is kept with a reason in words.

The pipeline is driven directly (no broker): thousands of generated hostile payloads,
and property-based fuzzing of every payload format with hypothesis.
"""

from __future__ import annotations

import re
import string
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meter_gateway.gateway.pipeline import Pipeline
from meter_gateway.gateway.validate import MeterRules, Validator
from meter_gateway.protocols.formats import FORMATS, decode_json
from meter_gateway.storage.deadletter import DeadLetterStore
from meter_gateway.storage.lineprotocol import ReadingEncoder
from tests.hostile import hostile_messages

# A reason in words names what is wrong; it is never a Python exception's repr.
PYTHON_TEXT = re.compile(r"\w+(Error|Exception)\b|Traceback|<\w+ object at 0x|\bNone\b")
ROUTES = {
    "reading": ("json", True),
    "readings": ("json-batch", True),
    "event": ("meter-event", True),
    "status": ("lwt", True),
}


class ListSink:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.paused = False

    def add(self, line: str) -> None:
        self.lines.append(line)


class Records(DeadLetterStore):
    """The real store's record building, kept in memory (nothing is flushed here)."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.records: list[dict[str, Any]] = []

    def add(self, record: dict[str, Any]) -> int:
        self.records.append(record)
        return super().add(record)


def make_pipeline(tmp_path: Path, **hooks: Any) -> tuple[Pipeline, ListSink, Records]:
    sink, dl = ListSink(), Records(tmp_path)
    pipeline = Pipeline(
        validator=Validator(),
        rules=MeterRules(),
        encoder=ReadingEncoder(),
        sink=sink,
        dead_letter=dl,
        max_payload_bytes=65_536,
        **hooks,
    )
    return pipeline, sink, dl


def route(topic: str) -> tuple[str, str]:
    kind, meter = topic.split("/")[2], topic.split("/")[1]
    return ROUTES[kind][0], meter


@pytest.mark.slow
def test_generated_hostile_payloads_are_each_kept_with_a_reason(tmp_path, caplog):
    pipeline, sink, dl = make_pipeline(tmp_path)
    messages = list(hostile_messages(6000))
    for m in messages:
        fmt, meter = route(m.topic)
        ticket = pipeline.handle_message(m.topic, m.payload, FORMATS[fmt], meter)
        assert ticket > 0, f"{m.kind}: nothing was kept for a hostile message"
    assert pipeline.internal_errors == 0
    by_topic = {r["topic"] for r in dl.records}
    missing = [m.kind for m in messages if m.topic not in by_topic]
    assert not missing, f"hostile messages without a dead-letter record: {missing[:10]}"
    for r in dl.records:
        assert r["reason"]
        assert not PYTHON_TEXT.search(r["reason"]), r["reason"]
        assert "payload" in r or "payload_base64" in r, r
    # The good readings inside hostile batches are stored; nothing else is.
    assert all(",meter_id=m-ok," in line for line in sink.lines)
    # One line per kind of rejection per minute, not one per message; no traceback.
    assert len(caplog.records) < 100, len(caplog.records)
    assert not [r for r in caplog.records if r.exc_info]


NOW = int(time.time())


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (
            b'{"ts": 1795797523000, "power_w": 5.0}',
            "ts: 1795797523000 is not epoch seconds (year 58876); epoch milliseconds?",
        ),
        (b'{"ts": 1795797523000000, "power_w": 5.0}', "epoch microseconds?"),
        (b'{"ts": 1795797523000000000, "power_w": 5.0}', "epoch nanoseconds?"),
        (b'{"ts": "0001-01-01T00:00:00Z", "power_w": 5.0}', "older than the maximum age"),
        (b'{"ts": "9999-12-31T23:59:59Z", "power_w": 5.0}', "s in the future"),
        (b'{"ts": 1' + b"0" * 400 + b', "power_w": 5.0}', "ts: an integer of 401 digits"),
        (
            b'{"ts": %d, "power_w": 1%s}' % (NOW, b"0" * 400),
            "power_w: an integer of 401 digits is out of range",
        ),
        (b'{"ts": %d, "voltage_v": [[[1]]]}' % NOW, "voltage_v[0]: expected a number, got a list"),
        (b'{"meter_id": ["x"], "ts": %d, "power_w": 1}' % NOW, "meter_id: expected text"),
    ],
)
def test_reasons_name_the_field_and_the_cause(tmp_path, payload, reason):
    pipeline, _, dl = make_pipeline(tmp_path)
    pipeline.handle_message("meters/x/reading", payload, FORMATS["json"], "x")
    assert len(dl.records) == 1
    assert reason in dl.records[0]["reason"]


def test_batch_item_nested_deep_and_unhashable_meter_ids(tmp_path):
    pipeline, sink, dl = make_pipeline(tmp_path)
    now = int(time.time())
    ok = f'{{"meter_id": "m-1", "ts": {now}, "power_w": 1.0}}'
    deep = "[" * 1000 + ok + "]" * 1000
    payload = (
        f'{{"readings": [{ok}, {{"meter_id": ["a"], "ts": {now}, "power_w": 1.0}}, '
        f'{{"meter_id": {{"a": 1}}, "ts": {now}, "power_w": 1.0}}, {deep}]}}'
    ).encode()
    pipeline.handle_message("concentrators/dc/readings", payload, FORMATS["json-batch"], "dc")
    assert len(sink.lines) == 1
    assert sorted(r["reason"] for r in dl.records) == [
        "readings[1]: meter_id: expected text, got a list",
        "readings[2]: meter_id: expected text, got an object",
        "readings[3]: nested deeper than 32 levels",
    ]
    deep_record = next(r for r in dl.records if r["index"] == 3)
    assert deep_record["payload"] == payload.decode()  # the raw message, kept whole


def test_the_detectors_get_a_messages_stored_readings_in_one_call(tmp_path):
    # The engine's hook (on_readings) takes every reading of one input that went to
    # storage, in order, after the input is handled; rejected and duplicate ones are not
    # in it, and a message without stored readings makes no call.
    calls: list[list[tuple[str, int]]] = []
    each: list[str] = []
    pipeline, sink, _ = make_pipeline(
        tmp_path,
        on_reading=lambda r: each.append(r.meter_id),
        on_readings=lambda rs: calls.append([(r.meter_id, r.ts_ns) for r in rs]),
    )
    now = int(time.time())
    items = [
        {"meter_id": "m-1", "ts": now - 900, "power_w": 1.0},
        {"meter_id": "m-2", "ts": now - 900, "power_w": "x"},  # rejected
        {"meter_id": "m-3", "ts": now - 900, "power_w": 3.0},
        {"meter_id": "m-1", "ts": now - 900, "power_w": 1.0},  # an exact duplicate
        {"meter_id": "m-1", "ts": now, "power_w": 2.0},
    ]
    batch = FORMATS["json-batch"]
    pipeline.handle_message(
        "concentrators/dc/readings", orjson.dumps({"readings": items}), batch, "dc"
    )
    ns = 1_000_000_000
    assert calls == [[("m-1", (now - 900) * ns), ("m-3", (now - 900) * ns), ("m-1", now * ns)]]
    assert each == ["m-1", "m-3", "m-1"]
    assert len(sink.lines) == 3
    pipeline.handle_message(
        "concentrators/dc/readings", orjson.dumps({"readings": items[1:2]}), batch, "dc"
    )
    assert len(calls) == 1  # nothing stored: no call
    pipeline.handle_reading({"meter_id": "m-9", "ts": now, "power_w": 1.0}, "modbus", "dev-9")
    assert calls[1] == [("m-9", now * ns)]


def test_a_bug_is_kept_counted_and_logged_once_a_minute(tmp_path, caplog):
    pipeline, _, dl = make_pipeline(tmp_path)

    def broken(payload: bytes, topic_id: str | None) -> Any:
        raise KeyError("surprise")

    for _ in range(50):
        pipeline.handle_message("meters/x/reading", b"{}", broken, "x")
    assert pipeline.internal_errors == 50
    assert len(dl.records) == 50
    reason = dl.records[0]["reason"]
    assert reason.startswith("internal error")
    assert "KeyError" not in reason
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert errors[0].exc_info is not None


# -- property-based fuzzing of every format ---------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**500), max_value=10**500)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=80)
    | st.sampled_from(["2026-11-27T08:15:00Z", "0001-01-01T00:00:00+14:00", "NaN", "online"])
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=20,
)
_fields = st.sampled_from(
    [
        "meter_id",
        "ts",
        "power_w",
        "voltage_v",
        "current_a",
        "energy_import_kwh",
        "energy_export_kwh",
        "power_factor",
        "frequency_hz",
        "type",
        "concentrator_id",
    ]
)
_reading = st.dictionaries(_fields, _json, max_size=8)
_documents = (
    _reading
    | st.fixed_dictionaries(
        {"readings": st.lists(_reading | _json, max_size=6)},
        optional={"concentrator_id": _json},
    )
    | _json
)


def _encode(doc: Any) -> bytes:
    try:
        return orjson.dumps(doc)
    except TypeError:  # integers beyond 64 bits, NaN: as a hostile sender would write them
        import json

        return json.dumps(doc).encode()


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
_meter_ids = st.sampled_from([None, "m-1", "x"]) | st.text(
    alphabet=string.printable, min_size=1, max_size=8
)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["json", "json-batch", "meter-event", "lwt"])
@FUZZ
@given(doc=_documents, topic_id=_meter_ids)
def test_fuzz_documents(tmp_path_factory, fmt, doc, topic_id):
    _fuzz_one(tmp_path_factory, fmt, _encode(doc), topic_id)


@pytest.mark.parametrize("fmt", ["json", "json-batch", "meter-event", "lwt"])
@FUZZ
@given(payload=st.binary(max_size=300), topic_id=_meter_ids)
def test_fuzz_bytes(tmp_path_factory, fmt, payload, topic_id):
    _fuzz_one(tmp_path_factory, fmt, payload, topic_id)


_PIPELINES: dict[str, tuple[Pipeline, ListSink, Records]] = {}


def _fuzz_one(tmp_path_factory: Any, fmt: str, payload: bytes, topic_id: str | None) -> None:
    # One pipeline per format for all examples: state across messages is fuzzed too.
    if fmt not in _PIPELINES:
        _PIPELINES[fmt] = make_pipeline(tmp_path_factory.mktemp(fmt))
    pipeline, sink, dl = _PIPELINES[fmt]
    before = (len(sink.lines), len(dl.records), sum(pipeline.signals.values()))
    topic = f"t/{topic_id}/x"
    pipeline.handle_message(topic, payload, FORMATS[fmt], topic_id)
    after = (len(sink.lines), len(dl.records), sum(pipeline.signals.values()))
    assert pipeline.internal_errors == 0
    # Every message is accounted for: stored, kept with a reason, a signal, or a
    # duplicate; only an empty batch holds nothing to account for.
    try:
        doc = decode_json(payload)
    except ValueError:
        doc = None
    empty_batch = fmt == "json-batch" and isinstance(doc, dict) and doc.get("readings") == []
    assert after != before or pipeline.duplicates > 0 or empty_batch
    for r in dl.records[before[1] :]:
        assert r["reason"]
        assert not PYTHON_TEXT.search(r["reason"]), r["reason"]


# -- the device formats: Tasmota, Shelly, Sparkplug B -------------------------------------------
from meter_gateway.protocols.devices.protobuf import encode_field  # noqa: E402

_energy_keys = st.sampled_from(
    [
        "Total",
        "ExportActive",
        "Power",
        "ApparentPower",
        "Factor",
        "Voltage",
        "Current",
        "Frequency",
        "Today",
    ]
)
_tasmota_docs = (
    st.fixed_dictionaries(
        {"ENERGY": st.dictionaries(_energy_keys, _json | st.lists(_json, max_size=4), max_size=8)},
        optional={"Time": _json, "StatusSNS": _json},
    )
    | _json
)
_shelly_keys = st.sampled_from(
    [
        "id",
        "voltage",
        "current",
        "act_power",
        "aprt_power",
        "pf",
        "freq",
        "total_act_energy",
        "total_act_ret_energy",
        "a_voltage",
        "total_act_power",
        "method",
        "params",
        "ts",
        "aenergy",
    ]
)
_shelly_docs = (
    st.dictionaries(_shelly_keys, _json, max_size=10)
    | st.fixed_dictionaries(
        {
            "method": st.just("NotifyStatus"),
            "params": st.dictionaries(
                st.sampled_from(["ts", "em:0", "emdata:0", "em1:0", "em1data:0"]),
                _json | st.dictionaries(_shelly_keys, _json, max_size=6),
                max_size=4,
            ),
        }
    )
    | _json
)
# Sparkplug B payloads: metrics with any mix of known field numbers and wire values.
_pb_value = (
    st.integers(0, 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.binary(max_size=12)
    | (st.text(max_size=12))
)
_metric = st.lists(st.tuples(st.integers(1, 18), _pb_value), max_size=8).map(
    lambda fs: b"".join(encode_field(n, v) for n, v in fs)
)
_sparkplug = st.lists(
    st.tuples(st.sampled_from([1, 2, 3, 2, 2]), _metric | _pb_value), max_size=6
).map(lambda fs: b"".join(encode_field(n, v) for n, v in fs)) | st.binary(max_size=200)
_sparkplug_topics = st.sampled_from(
    [
        "spBv1.0/meters/NBIRTH/edge-1",
        "spBv1.0/meters/NDATA/edge-1",
        "spBv1.0/meters/DBIRTH/edge-1/m-1",
        "spBv1.0/meters/DDATA/edge-1/m-1",
        "spBv1.0/meters/NDEATH/edge-1",
        "spBv1.0/meters/DDEATH/edge-1/m-1",
        "spBv1.0/meters/STATE",
        "spBv1.0/x",
    ]
)


def _device_one(tmp_path_factory: Any, fmt: str, payload: bytes, topic: str, tid: Any) -> None:
    """No exception escapes; every rejection is kept with a reason in words."""
    if fmt not in _PIPELINES:
        _PIPELINES[fmt] = make_pipeline(tmp_path_factory.mktemp(fmt))
    pipeline, _, dl = _PIPELINES[fmt]
    before, bugs = len(dl.records), pipeline.internal_errors
    pipeline.handle_message(topic, payload, FORMATS[fmt], tid)
    assert pipeline.internal_errors == bugs, dl.records[-1]["reason"]
    for r in dl.records[before:]:
        assert r["reason"]
        assert not PYTHON_TEXT.search(r["reason"]), r["reason"]


@pytest.mark.slow
@FUZZ
@given(doc=_tasmota_docs, topic_id=_meter_ids)
def test_fuzz_tasmota(tmp_path_factory, doc, topic_id):
    _device_one(tmp_path_factory, "tasmota", _encode(doc), f"tele/{topic_id}/SENSOR", topic_id)


@pytest.mark.slow
@FUZZ
@given(doc=_shelly_docs, topic_id=_meter_ids, component=st.sampled_from(["em:0", "em1data:0"]))
def test_fuzz_shelly(tmp_path_factory, doc, topic_id, component):
    topic = f"{topic_id}/status/{component}"
    _device_one(tmp_path_factory, "shelly", _encode(doc), topic, topic_id)


@FUZZ
@given(payload=_sparkplug, topic=_sparkplug_topics)
def test_fuzz_sparkplug(tmp_path_factory, payload, topic):
    # Sparkplug B reads the whole topic (message type, node, device).
    _device_one(tmp_path_factory, "sparkplug-b", payload, topic, topic)


@FUZZ
@given(payload=st.binary(max_size=300), topic_id=_meter_ids)
def test_fuzz_device_bytes(tmp_path_factory, payload, topic_id):
    for fmt in ("tasmota", "shelly", "shelly-online"):
        _device_one(tmp_path_factory, fmt, payload, f"x/{topic_id}/y", topic_id)
