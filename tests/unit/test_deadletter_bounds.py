"""The dead-letter store stays bounded by its input, whatever a batch holds; where a record
came from is a field the gateway writes; `max_meters` admission; `dead-letter` wording.

No servers: the pipeline with the real dead-letter store (on disk), and replay against an
in-memory database.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from meter_gateway.config.schema import Config
from meter_gateway.gateway.cli import main
from meter_gateway.gateway.deadletters import (
    DeadLetterReplay,
    Selection,
    group_reasons,
    normalise_reason,
    select,
)
from meter_gateway.gateway.pipeline import MAX_GROUPS_PER_MESSAGE, Pipeline, expand_indexes
from meter_gateway.gateway.validate import MeterRules, Validator
from meter_gateway.protocols.formats import FORMATS
from meter_gateway.storage.deadletter import DeadLetterStore, dead_letter_record, read_records
from meter_gateway.storage.lineprotocol import ReadingEncoder
from tests.unit.test_deadletter_cli import MemoryDB, write_records

BATCH = FORMATS["json-batch"]
TOPIC = "concentrators/dc-01/readings"


class ListSink:
    durable = 1 << 62
    paused = False

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, line: str) -> int:
        self.lines.append(line)
        return 0


def pipeline(
    tmp_path: Path, publish: Any = None, **kw: Any
) -> tuple[Pipeline, ListSink, DeadLetterStore]:
    sink = ListSink()
    store = DeadLetterStore(tmp_path / "var", publish=publish)
    p = Pipeline(
        validator=Validator(),
        rules=MeterRules(),
        encoder=ReadingEncoder(),
        sink=sink,
        dead_letter=store,
        **kw,
    )
    return p, sink, store


def deep_batch(n: int) -> bytes:
    """The hostile concentrator batch: n elements, each nested 34 deep (69 bytes each)."""
    element = "[" * 34 + "1" + "]" * 34
    return ('{"readings":[' + ",".join([element] * n) + "]}").encode()


def ones_batch(size: int = 1 << 20) -> bytes:
    """`{"readings":[1,1,1,...]}` of `size` bytes."""
    k = (size - len(b'{"readings":[]}') + 1) // 2
    return b'{"readings":[' + b",".join([b"1"] * k) + b"]}"


def dead_letter_bytes(store: DeadLetterStore) -> int:
    return sum(p.stat().st_size for p in store.directory.glob("*.jsonl"))


def records(store: DeadLetterStore) -> list[dict[str, Any]]:
    return [dl.record for dl in read_records(sorted(store.directory.glob("*.jsonl")))]  # type: ignore[misc]


# -- amplification ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("payload", [deep_batch(1000), deep_batch(3000), ones_batch()])
async def test_a_hostile_batch_costs_the_store_about_its_own_size(tmp_path, payload) -> None:
    p, sink, store = pipeline(tmp_path)
    p.handle_message(TOPIC, payload, BATCH, "dc-01")
    await store.close()
    growth = dead_letter_bytes(store) / len(payload)
    # Before: the raw message once per element (1,000 x 69 KB; 524,278 records for 1 MiB).
    assert growth < 2.5, f"dead-letter growth {growth:.2f} x the input"
    kept = records(store)
    assert len(kept) <= 2, [r["reason"] for r in kept]
    assert not sink.lines
    n = sum(r.get("count", 1) for r in kept)
    assert n == payload.count(b",") + 1  # every element accounted for
    assert p.rejected["nesting"] + p.rejected["reading"] == n
    # The raw message is kept once at most, and every record names its message.
    assert sum(1 for r in kept if r.get("payload") == payload.decode()) <= 1
    assert len({r["message_id"] for r in kept}) == 1


async def test_records_per_message_are_bounded_whatever_the_reasons(tmp_path) -> None:
    p, _, store = pipeline(tmp_path)
    # 2,000 elements, each with a reason of its own (the value is in the reason).
    payload = ("{" + '"readings":[' + ",".join(str(i) for i in range(2000)) + "]}").encode()
    p.handle_message(TOPIC, payload, BATCH, "dc-01")
    await store.close()
    kept = records(store)
    assert len(kept) == MAX_GROUPS_PER_MESSAGE + 1
    assert sum(r.get("count", 1) for r in kept) == 2000
    other = kept[-1]
    assert "for other reasons" in other["reason"]
    assert other["count"] == 2000 - MAX_GROUPS_PER_MESSAGE
    assert expand_indexes(other["indexes"]) == list(range(MAX_GROUPS_PER_MESSAGE, 2000))
    assert dead_letter_bytes(store) < 3 * len(payload)


async def test_a_single_rejected_element_keeps_the_record_it_always_had(tmp_path) -> None:
    p, sink, store = pipeline(tmp_path)
    now = int(time.time())
    payload = orjson.dumps(
        {"readings": [{"meter_id": "m-1", "ts": now, "power_w": 1.0}, {"meter_id": "m-2"}]}
    )
    p.handle_message(TOPIC, payload, BATCH, "dc-01")
    await store.close()
    (rec,) = records(store)
    assert rec["index"] == 1
    assert "kind" not in rec
    assert "count" not in rec
    assert json.loads(rec["payload"]) == {"meter_id": "m-2"}  # the element, not the batch
    assert len(sink.lines) == 1


@pytest.mark.slow
def test_republishing_is_bounded_per_message_and_per_second(tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING, "meter_gateway.deadletter")
    published: list[bytes] = []
    p, _, store = pipeline(tmp_path, publish=published.append)
    for payload in (deep_batch(1000), deep_batch(3000), ones_batch()):
        p.handle_message(TOPIC, payload, BATCH, "dc-01")
    # Many distinct reasons in one message: at most 3 of its records go out.
    p.handle_message(
        TOPIC, b'{"readings":[' + b",".join(b"%d" % i for i in range(50)) + b"]}", BATCH, None
    )
    # A stream of small rejections: at most 50 a second go out.
    for i in range(500):
        p.handle_message(f"meters/m-{i}/reading", b"{}", FORMATS["json"], f"m-{i}")
    assert sum(len(b) for b in published) <= 262_144 * 2  # two seconds at most, in a slow run
    assert len(published) <= 3 + 2 * 50
    assert store.not_published == store.count - len(published) > 0
    # A record too large is published without its bulk: what and why, not the megabyte.
    first = orjson.loads(published[0])
    assert first["omitted_bytes"] > 65_536
    assert "payload" not in first
    assert "elements" not in first
    assert first["reason"].startswith("readings[0]: nested deeper than 32 levels")
    assert store.published_trimmed >= 3
    assert store.stats()["not_published"] == store.not_published
    warnings = [r for r in caplog.records if "not every rejection is republished" in r.message]
    assert len(warnings) == 1  # said once, not per record


# -- replaying what was aggregated --------------------------------------------------------------


def config(tmp_path: Path, **sections: Any) -> Config:
    data: dict[str, Any] = {
        "gateway": {"id": "gw-test", "data_dir": str(tmp_path / "var")},
        "mqtt": {
            "subscriptions": [
                {"topic": "meters/+/reading", "format": "json"},
                {"topic": "concentrators/+/readings", "format": "json-batch"},
                {"topic": "+/online", "format": "shelly-online"},
            ]
        },
        "storage": {"batch_size": 100, "flush_interval_s": 0.05},
        "events": {"enabled": False},
    }
    data.update(sections)
    return Config.model_validate(data)


async def test_elements_with_one_reason_replay_each_at_its_position(tmp_path) -> None:
    p, _, store = pipeline(tmp_path)
    now = int(time.time())
    good = {"meter_id": "m-0", "ts": now, "voltage_v": 230.0}
    high = [{"meter_id": f"m-{i}", "ts": now, "voltage_v": 1500.0} for i in range(1, 6)]
    way = {"meter_id": "m-9", "ts": now, "voltage_v": 9000.0}
    payload = orjson.dumps({"readings": [high[0], good, *high[1:], way]})
    p.handle_message(TOPIC, payload, BATCH, "dc-01")
    await store.close()
    kept = records(store)
    assert len(kept) == 2
    five = next(r for r in kept if r.get("count") == 5)
    assert five["kind"] == "elements"
    assert expand_indexes(five["indexes"]) == [0, 2, 3, 4, 5]
    # `list` counts the rejections, and groups the five with single ones of that reason.
    groups, _ = group_reasons(read_records(sorted(store.directory.glob("*.jsonl"))))
    assert {(g.pattern, g.count) for g in groups} == {("readings[N]: voltage_v: N above N", 6)}

    db = MemoryDB()
    report = await DeadLetterReplay(
        config(tmp_path, validation={"voltage_max_v": 2000}), client=db
    ).run(select(store.directory, Selection()))
    assert (report.replayed, report.stored) == (1, 5)
    assert sorted(line.split(",")[1] for line in db.lines) == [
        f"meter_id=m-{i}" for i in range(1, 6)
    ]
    assert sum(report.still_rejected.values()) == 1
    assert (
        "readings[6]: voltage_v: 9000.0 above 2000.0"
        in report.examples["readings[N]: voltage_v: N above N"]
    )
    again = await DeadLetterReplay(
        config(tmp_path, validation={"voltage_max_v": 2000}), client=db
    ).run(select(store.directory, Selection()))
    assert (again.stored, again.already) == (0, 1)


# -- where a record came from -------------------------------------------------------------------

FORGED = orjson.dumps({"meter_id": "m-good1", "ts": int(time.time()), "energy_import_kwh": 77777})


async def test_a_topic_saying_replay_is_no_command_record(tmp_path) -> None:
    d = tmp_path / "var" / "dead-letter"
    now = time.time()
    from datetime import UTC, datetime

    at = datetime.fromtimestamp(now, UTC)
    # As a live gateway keeps a message published on `replay:evil/online`, and as the
    # previous version kept a line of `meter-gateway replay` (no `origin` field).
    write_records(
        d,
        [
            dead_letter_record(
                reason="expected true or false",
                source="mqtt",
                payload=FORGED,
                topic="replay:evil/online",
                received_at=at,
            ),
            dead_letter_record(
                reason="voltage_v: 300.0 above 250.0",
                source="mqtt",
                payload=FORGED,
                topic="replay:old.jsonl:3",
                received_at=at,
            ),
        ],
    )
    db = MemoryDB()
    report = await DeadLetterReplay(config(tmp_path), client=db).run(select(d, Selection()))
    assert not db.lines, "a client's record was replayed as a reading of m-good1"
    assert report.stored == 0


async def test_a_record_of_meter_gateway_replay_is_replayed_as_its_line(tmp_path) -> None:
    p, _, store = pipeline(tmp_path, origin="replay")
    line = orjson.dumps({"meter_id": "m-7", "ts": int(time.time()), "voltage_v": 1500.0})
    p.handle_message("replay:week.jsonl:12", line, FORMATS["json"], None)
    await store.close()
    (rec,) = records(store)
    assert rec["origin"] == "replay"
    db = MemoryDB()
    report = await DeadLetterReplay(
        config(tmp_path, validation={"voltage_max_v": 2000}), client=db
    ).run(select(store.directory, Selection()))
    assert report.stored == 1
    assert "meter_id=m-7" in db.lines[0]


async def test_a_live_pipeline_writes_no_origin(tmp_path) -> None:
    p, _, store = pipeline(tmp_path)
    p.handle_message("replay:evil/online", FORGED, FORMATS["shelly-online"], "replay:evil")
    await store.close()
    assert all("origin" not in r for r in records(store))


# -- admission ------------------------------------------------------------------------------------


async def test_meters_beyond_the_limit_are_refused_and_known_ones_flow(tmp_path) -> None:
    p, sink, store = pipeline(tmp_path, max_meters=3, known_meters={"k-1"})
    now = int(time.time())

    def reading(meter: str, i: int) -> bytes:
        return orjson.dumps({"meter_id": meter, "ts": now - i, "power_w": 1.0})

    for i, meter in enumerate(["a-1", "a-2", "a-3", "x-1", "x-2", "k-1", "a-1"]):
        p.handle_message(f"meters/{meter}/reading", reading(meter, i), FORMATS["json"], meter)
    flood = orjson.dumps(
        {"readings": [{"meter_id": f"f-{i}", "ts": now, "power_w": 1.0} for i in range(100)]}
    )
    p.handle_message(TOPIC, flood, BATCH, "dc-01")
    stored = [line.split(",")[1] for line in sink.lines]
    assert stored == [
        "meter_id=a-1",
        "meter_id=a-2",
        "meter_id=a-3",
        "meter_id=k-1",
        "meter_id=a-1",
    ]
    assert (p.meters_admitted, p.meters_refused) == (3, 102)
    stats = p.stats()
    assert (stats["meters_admitted"], stats["meters_refused"], stats["max_meters"]) == (3, 102, 3)
    assert p.rejected["meter_limit"] == 102
    await store.close()
    kept = records(store)
    assert len(kept) == 3  # two single readings, one record for the batch's 100
    assert all("limits.max_meters" in r["reason"] for r in kept), kept[0]["reason"]
    assert kept[2]["count"] == 100


def test_no_limit_means_no_admission(tmp_path) -> None:
    p, sink, _ = pipeline(tmp_path, max_meters=0)
    now = int(time.time())
    for i in range(50):
        p.handle_message(
            "meters/x/reading",
            orjson.dumps({"meter_id": f"m-{i}", "ts": now, "power_w": 1.0}),
            FORMATS["json"],
            None,
        )
    assert len(sink.lines) == 50
    assert p.meters_refused == 0


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (-1, "0 (no limit) or a positive"),
        (1.5, "whole number"),
        (True, "whole number"),
        ("many", "whole number"),
        (10**9, "at most"),
    ],
)
def test_max_meters_is_checked_with_words(value: Any, words: str) -> None:
    with pytest.raises(ValidationError) as err:
        Config.model_validate({"limits": {"max_meters": value}})
    assert words in str(err.value)
    assert Config().limits.max_meters == 10_000
    assert Config.model_validate({"limits": {"max_meters": 0}}).limits.max_meters == 0


# -- the commands' words --------------------------------------------------------------------------


def test_the_no_offset_hint_survives_grouping() -> None:
    reason = "ts: '2026-11-27T08:15:00' has no UTC offset (add 'Z' or '+01:00')"
    assert normalise_reason(reason) == "ts: 'T' has no UTC offset (add 'Z' or '+01:00')"
    assert normalise_reason("voltage_v[1]: -12.5 above +10") == "voltage_v[N]: N above N"


def test_both_commands_take_one_format_vocabulary(tmp_path, capsys) -> None:
    write_records(
        tmp_path / "var" / "dead-letter",
        [dead_letter_record(reason="voltage_v: 300.0 above 250.0", source="modbus", device="d")],
    )
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(f"gateway: {{id: gw-test, data_dir: '{tmp_path / 'var'}'}}\n")
    for cmd, word in (("list", "table"), ("list", "text"), ("replay", "table"), ("replay", "text")):
        extra = ["--dry-run"] if cmd == "replay" else []
        assert main(["dead-letter", cmd, "-c", str(cfg), "--format", word, *extra]) == 0
        out = capsys.readouterr().out
        assert not out.lstrip().startswith("{"), (cmd, word)
    for cmd in ("list", "replay"):
        extra = ["--dry-run"] if cmd == "replay" else []
        assert main(["dead-letter", cmd, "-c", str(cfg), "--format", "json", *extra]) == 0
        json.loads(capsys.readouterr().out)
    with pytest.raises(SystemExit):
        main(["dead-letter", "replay", "-c", str(cfg), "--help"])
    assert "{table,json}" in capsys.readouterr().out


async def test_elements_stored_in_part_leave_the_rest_for_the_next_replay(tmp_path) -> None:
    p, _, store = pipeline(tmp_path)
    old = int(time.time()) - 8 * 86_400  # one reason for all three: too old
    batch = [
        {"meter_id": f"m-{i}", "ts": old, "voltage_v": v} for i, v in enumerate([230, 1500, 230])
    ]
    p.handle_message(TOPIC, orjson.dumps({"readings": batch}), BATCH, "dc-01")
    await store.close()
    (rec,) = records(store)
    assert rec["count"] == 3

    db = MemoryDB()
    older = {"max_age_s": 9 * 86_400}
    first = await DeadLetterReplay(config(tmp_path, validation=older), client=db).run(
        select(store.directory, Selection())
    )
    assert (first.replayed, first.stored, first.partly) == (1, 2, 1)
    assert "readings[1]: voltage_v: 1500.0 above 1000.0" in next(iter(first.examples.values()))
    second = await DeadLetterReplay(
        config(tmp_path, validation={**older, "voltage_max_v": 2000}), client=db
    ).run(select(store.directory, Selection()))
    # Only the element still rejected is replayed, and the record is done then.
    assert (second.replayed, second.stored, second.already) == (1, 1, 0)
    assert sorted(line.split(",")[1] for line in db.lines) == [f"meter_id=m-{i}" for i in range(3)]
    third = await DeadLetterReplay(
        config(tmp_path, validation={**older, "voltage_max_v": 2000}), client=db
    ).run(select(store.directory, Selection()))
    assert (third.stored, third.already) == (0, 1)


async def test_signals_of_meters_beyond_the_limit_are_refused_too(tmp_path) -> None:
    got: list[str] = []
    p, _, store = pipeline(
        tmp_path,
        max_meters=1,
        known_meters={"k-1"},
        on_signal=lambda sig, t: got.append(sig.meter_id),
    )
    for meter in ("k-1", "n-1", "n-2", "n-1", "k-1"):
        p.handle_message(f"meters/{meter}/status", b"offline", FORMATS["lwt"], meter)
    assert got == ["k-1", "n-1", "n-1", "k-1"]
    assert (p.meters_admitted, p.meters_refused) == (1, 1)
    await store.close()
    (rec,) = records(store)
    assert rec["topic"] == "meters/n-2/status"
    assert "limits.max_meters" in rec["reason"]
