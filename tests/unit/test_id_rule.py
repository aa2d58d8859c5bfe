"""One id rule for every format and every place an id comes from.

Whatever text arrives as an id (a payload's `meter_id`, a topic level, a Shelly or
Tasmota device, a Sparkplug edge node or device, a concentrator), either the id follows
the rule (`ID_RULE`) and the message makes its readings and signals, or the message is
rejected with a reason naming the rule and showing the id escaped and bounded: never a
reading or a signal with an id outside the rule. Driven through the real pipeline.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meter_gateway.gateway.pipeline import Pipeline
from meter_gateway.gateway.reading import Reading
from meter_gateway.gateway.validate import (
    ID_RULE,
    METER_ID,
    BadId,
    MeterRules,
    Validator,
    check_meter_id,
)
from meter_gateway.protocols.devices import shelly as shelly_mod
from meter_gateway.protocols.devices.protobuf import encode_field
from meter_gateway.protocols.devices.sparkplug import SparkplugB
from meter_gateway.protocols.formats import FORMATS, Signal, shown_id
from meter_gateway.storage.deadletter import DeadLetterStore
from meter_gateway.storage.lineprotocol import ReadingEncoder

RULE_WORDS = "(the id rule)"

# What independent testing sent, and the edges of the rule.
HOSTILE = [
    "<img src=x onerror=alert(1)>",
    "ev il,meter_id=m-good2 power_w=1",
    "E" * 5000,
    "\u202em-1",  # right-to-left override
    "m\u200b-1",  # zero-width space
    "m-1\u200d",  # zero-width joiner
    "bs\\",
    "m 1",
    "m-1\n",
    "",
    "a" * 64,
    "a" * 65,
    "m/1",
    "m\x00",
    "\uff4d-1",  # fullwidth letter m
]
ids = st.one_of(
    st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True),
    st.text(max_size=80),
    st.sampled_from(HOSTILE),
)


def follows(text: str) -> bool:
    return METER_ID.fullmatch(text) is not None


@dataclass
class Seen:
    readings: list[Reading] = field(default_factory=list)
    signals: list[Signal] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)

    def ids(self) -> list[str]:
        return [r.meter_id for r in self.readings] + [s.meter_id for s in self.signals]

    def reasons(self) -> list[str]:
        return [r["reason"] for r in self.records]


class _Records(DeadLetterStore):
    def __init__(self, data_dir: Path, seen: Seen) -> None:
        super().__init__(data_dir)
        self._seen = seen

    def add(self, record: dict[str, Any]) -> int:
        self._seen.records.append(record)
        return super().add(record)


class _Sink:
    paused = False

    def add(self, line: str) -> int:
        return 0


@contextmanager
def pipeline() -> Iterator[tuple[Pipeline, Seen]]:
    seen = Seen()
    with tempfile.TemporaryDirectory() as tmp:
        p = Pipeline(
            validator=Validator(),
            rules=MeterRules(),
            encoder=ReadingEncoder(),
            sink=_Sink(),
            dead_letter=_Records(Path(tmp), seen),
            max_payload_bytes=1 << 20,
            on_signal=lambda sig, topic: seen.signals.append(sig),
            on_reading=seen.readings.append,
        )
        yield p, seen


def send(fmt_name: str, payload: bytes, topic_id: str | None, topic: str = "t") -> Seen:
    fmt = FORMATS[fmt_name]
    with pipeline() as (p, seen):
        p.handle_message(topic, payload, fmt, topic_id)
    return seen


def judge(seen: Seen, expected_id: str, made: int) -> None:
    """The property: every id made follows the rule; a message with a bad id is rejected
    with the rule named, the id escaped and bounded; a good one makes what it should."""
    assert all(follows(i) for i in seen.ids()), seen.ids()
    if follows(expected_id):
        assert not seen.records, seen.reasons()
        assert len(seen.readings) + len(seen.signals) == made
        assert set(seen.ids()) == {expected_id}
    else:
        assert not seen.readings
        assert not seen.signals
        assert seen.records, "a bad id must be dead-lettered"
        reason = " ".join(seen.reasons())
        assert RULE_WORDS in reason, reason
        assert ID_RULE in reason
        for r in seen.reasons():
            assert len(r) < 300, r
            # Shown escaped: nothing invisible, nothing that turns text around.
            assert not any(ch in r for ch in "\u202e\u200b\u200d\x00\n"), r


NOW = int(time.time())
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(autouse=True)
def _no_shelly_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shelly_mod, "_channels", {})


# -- the rule itself -------------------------------------------------------------------------
def test_check_meter_id_accepts_the_rule_and_names_the_place_otherwise() -> None:
    assert check_meter_id("m-000123") == "m-000123"
    assert check_meter_id("a" * 64) == "a" * 64
    with pytest.raises(BadId) as exc:
        check_meter_id("<img src=x onerror=alert(1)>", "topic's meter id")
    assert str(exc.value) == (
        "topic's meter id: '<img src=x onerror=alert(1)>' is not "
        "1-64 characters of A-Z a-z 0-9 . _ : - (the id rule)"
    )
    assert exc.value.field == "meter_id"
    with pytest.raises(BadId, match=r"meter_id: expected text"):
        check_meter_id(17)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\u202em-1", "'\\u202em-1'"),
        ("m\u200b-1", "'m\\u200b-1'"),
        ("E" * 5000, "'" + "E" * 60 + "'... (5000 characters)"),
    ],
)
def test_an_offending_id_is_shown_escaped_and_bounded(text: str, shown: str) -> None:
    assert shown_id(text) == shown


@given(text=st.text(max_size=3000))
@FUZZ
def test_shown_ids_stay_short_and_printable(text: str) -> None:
    shown = shown_id(text)
    assert len(shown) <= 90
    assert shown.isprintable()


# -- every format, fuzzed ----------------------------------------------------------------------
@given(mid=ids)
@FUZZ
def test_json_topic_and_payload_ids(mid: str) -> None:
    judge(send("json", orjson.dumps({"ts": NOW, "power_w": 1.0}), mid), mid, 1)
    judge(send("json", orjson.dumps({"meter_id": mid, "ts": NOW, "power_w": 1.0}), None), mid, 1)


@given(mid=ids, cid=ids)
@FUZZ
def test_json_batch_meter_and_concentrator_ids(mid: str, cid: str) -> None:
    payload = orjson.dumps({"readings": [{"meter_id": mid, "ts": NOW, "power_w": 1.0}]})
    seen = send("json-batch", payload, cid)
    assert all(follows(i) for i in seen.ids())
    if not follows(cid):
        assert not seen.readings
        assert RULE_WORDS in seen.reasons()[0]
        assert "concentrator" in seen.reasons()[0]
    else:
        judge(seen, mid, 1)


@given(mid=ids)
@FUZZ
def test_meter_event_topic_and_payload_ids(mid: str) -> None:
    body = {"ts": NOW, "type": "last_gasp"}
    judge(send("meter-event", orjson.dumps(body), mid), mid, 1)
    judge(send("meter-event", orjson.dumps({**body, "meter_id": mid}), None), mid, 1)


@given(mid=ids)
@FUZZ
def test_lwt_topic_ids(mid: str) -> None:
    judge(send("lwt", b"offline", mid), mid, 1)


@given(mid=ids)
@FUZZ
def test_tasmota_topic_ids(mid: str) -> None:
    payload = orjson.dumps({"ENERGY": {"Total": 1.5, "Power": 10}})
    judge(send("tasmota", payload, mid), mid, 1)


@given(mid=ids, channel=st.sampled_from([0, 1, 12345]))
@FUZZ
def test_shelly_device_ids_and_channels(mid: str, channel: int) -> None:
    status = orjson.dumps({"id": channel, "act_power": 5.0})
    meter = mid if channel == 0 else f"{mid}:{channel}"
    # The device's id and the channel's meter id both follow the rule, or nothing is made.
    judge(send("shelly", status, mid), meter if follows(mid) else mid, 1)
    rpc = orjson.dumps(
        {"src": mid, "method": "NotifyStatus", "params": {"ts": NOW, "em1:0": {"act_power": 5.0}}}
    )
    judge(send("shelly", rpc, None), mid, 1)


@given(mid=ids)
@FUZZ
def test_shelly_online_ids_and_the_channels_it_covers(mid: str) -> None:
    with pipeline() as (p, seen):
        # A channel remembered from a status (when its id passes), then the last will.
        p.handle_message("s", orjson.dumps({"id": 3, "act_power": 1.0}), FORMATS["shelly"], mid)
        seen.readings.clear()
        seen.records.clear()
        p.handle_message("o", b"false", FORMATS["shelly-online"], mid)
    assert all(follows(i) for i in seen.ids()), seen.ids()
    if follows(mid):
        assert seen.signals
        assert seen.signals[0].meter_id == mid
    else:
        assert not seen.signals
        assert RULE_WORDS in seen.reasons()[0]


def _metric(name: str, alias: int, value: float) -> bytes:
    return (
        encode_field(1, name)
        + encode_field(2, alias)
        + encode_field(4, 10)
        + (encode_field(13, value))
    )


def _spb(*metrics: bytes) -> bytes:
    out = encode_field(1, NOW * 1000)
    for m in metrics:
        out += encode_field(2, m)
    return out + encode_field(3, 0)


@given(edge=ids, device=ids)
@FUZZ
def test_sparkplug_edge_node_and_device_ids(edge: str, device: str) -> None:
    fmt = SparkplugB()
    birth = _spb(_metric("Power W", 1, 5.0))
    for kind, levels, meter in (
        ("NBIRTH", edge, edge),
        ("NDEATH", edge, edge),
        ("DBIRTH", f"{edge}/{device}", f"{edge}:{device}"),
        ("DDATA", f"{edge}/{device}", f"{edge}:{device}"),
        ("DDEATH", f"{edge}/{device}", f"{edge}:{device}"),
    ):
        topic = f"spBv1.0/grp/{kind}/{levels}"
        with pipeline() as (p, seen):
            p.handle_message(topic, birth, fmt, topic)
        assert all(follows(i) for i in seen.ids()), (kind, seen.ids())
        if "/" in edge or ("/" in device and kind[0] == "N"):
            continue  # the levels shift: another meter, still within the rule
        if kind[0] == "D" and not device:
            assert not seen.ids()
            assert seen.records
            continue
        if not follows(meter) or not edge:
            assert not seen.ids(), (kind, seen.ids())
            assert RULE_WORDS in " ".join(seen.reasons()), seen.reasons()
        elif kind.endswith("BIRTH"):
            assert {s.meter_id for s in seen.signals} == {meter}
            assert [r.meter_id for r in seen.readings] == [meter]


def test_sparkplug_death_of_a_hostile_node_is_no_signal() -> None:
    fmt = SparkplugB()
    topic = "spBv1.0/grp/NDEATH/<img src=x onerror=alert(1)>"
    seen = send_full(fmt, topic, _spb())
    assert not seen.signals
    assert "sparkplug-b: NDEATH: edge node id: '<img src=x onerror=alert(1)>'" in seen.reasons()[0]


def send_full(fmt: Any, topic: str, payload: bytes) -> Seen:
    with pipeline() as (p, seen):
        p.handle_message(topic, payload, fmt, topic)
    return seen


# -- the cases independent testing found, in words ---------------------------------------------
@pytest.mark.parametrize("mid", HOSTILE[:6])
def test_a_last_gasp_from_a_hostile_topic_is_rejected_naming_the_rule(mid: str) -> None:
    seen = send("meter-event", b'{"type": "last_gasp"}', mid, f"meters/{mid}/event")
    assert not seen.signals
    (record,) = seen.records
    assert record["reason"].startswith(f"topic's meter id: {shown_id(mid)} is not 1-64 characters")


@pytest.mark.parametrize("bad", ["<img src=x onerror=alert(1)>", "\u202em-1", "E" * 5000, 7])
def test_a_plugin_formats_signal_with_a_bad_id_is_refused_by_the_pipeline(bad: Any) -> None:
    # The bundled formats check ids themselves; a plugin format may not, so the
    # pipeline applies the rule to every signal before it reaches the detectors.
    def plugin(payload: bytes, topic_id: str | None) -> Any:
        from meter_gateway.protocols.formats import Decoded

        return Decoded(
            signals=[Signal("event", bad, "last_gasp"), Signal("event", "m-ok", "last_gasp")]
        )

    with pipeline() as (p, seen):
        p.handle_message("plugin/x", b"{}", plugin, None)
    assert [s.meter_id for s in seen.signals] == ["m-ok"]
    reason = " ".join(seen.reasons())
    assert "signal's meter id" in reason
    assert ID_RULE in reason
