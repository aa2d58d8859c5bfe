"""`meter-gateway dead-letter list|replay` without servers: grouping by reason, selection,
reading only complete lines, the replay ledger, and replay against an in-memory database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from meter_gateway.config.schema import Config
from meter_gateway.gateway.cli import main
from meter_gateway.gateway.deadletters import (
    DeadLetterReplay,
    Selection,
    group_reasons,
    normalise_reason,
    parse_since,
    render_table,
    select,
)
from meter_gateway.storage.deadletter import (
    ReplayLedger,
    dead_letter_record,
    read_records,
    record_files,
)
from meter_gateway.storage.influxdb.errors import BadPointsError

NOW = datetime.now(UTC).replace(microsecond=0)


def write_records(directory: Path, records: list[dict[str, Any]], day: str | None = None) -> Path:
    """Append records as the store writes them (one orjson line each) to a day's file."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{day or records[0]['received_at'][:10]}.jsonl"
    with path.open("ab") as f:
        for rec in records:
            f.write(orjson.dumps(rec, default=str) + b"\n")
    return path


def reading(meter: str, volts: float, ts: datetime = NOW, **extra: Any) -> dict[str, Any]:
    return {
        "meter_id": meter,
        "ts": ts.isoformat().replace("+00:00", "Z"),
        "energy_import_kwh": 12.5,
        "voltage_v": volts,
        **extra,
    }


def mqtt_record(meter: str, volts: float, reason: str, at: datetime = NOW) -> dict[str, Any]:
    return dead_letter_record(
        reason=reason,
        source="mqtt",
        payload=json.dumps(reading(meter, volts)).encode(),
        topic=f"meters/{meter}/reading",
        received_at=at,
    )


def element_record(meter: str, volts: float, index: int) -> dict[str, Any]:
    return dead_letter_record(
        reason=f"readings[{index}]: voltage_v: {volts} above 250.0",
        source="mqtt",
        item=reading(meter, volts),
        payload=b"{...the whole batch...}",
        topic="concentrators/dc-01/readings",
        index=index,
        received_at=NOW,
    )


def config(tmp_path: Path, **validation: Any) -> Config:
    return Config.model_validate(
        {
            "gateway": {"id": "gw-test", "data_dir": str(tmp_path / "var")},
            "mqtt": {
                "subscriptions": [
                    {"topic": "meters/+/reading", "format": "json"},
                    {"topic": "concentrators/+/readings", "format": "json-batch"},
                ]
            },
            "storage": {"batch_size": 100, "flush_interval_s": 0.05},
            "validation": validation,
            "events": {"enabled": False},
        }
    )


class MemoryDB:
    """A LineClient that keeps what it is sent; refuses lines containing `refuse`."""

    target = "memory"

    def __init__(self, refuse: str | None = None) -> None:
        self.lines: list[str] = []
        self.refuse = refuse

    async def write(self, body: bytes) -> None:
        lines = body.decode().split("\n")
        if self.refuse and any(self.refuse in line for line in lines):
            raise BadPointsError("partial write: field type conflict", status=400)
        self.lines.extend(lines)

    async def close(self) -> None:
        return None


# -- grouping -------------------------------------------------------------------------------


def test_reasons_group_without_indexes_and_numbers() -> None:
    a = normalise_reason("voltage_v[1]: 1234.0 above 1000.0")
    b = normalise_reason("voltage_v[0]: 1250.5 above 1000.0")
    assert a == b == "voltage_v[N]: N above N"
    assert normalise_reason("ts: 2026-11-27T08:15:02Z is 412 s in the future (limit 300 s)") == (
        "ts: T is N s in the future (limit N s)"
    )
    # digits inside names stay: another field is another cause
    assert normalise_reason("voltage_l1_v: -3.5e2 below 0") == "voltage_l1_v: N below N"
    assert normalise_reason("power_w: NaN is not a number") == "power_w: NaN is not a number"


def test_list_groups_counts_times_and_example(tmp_path: Path) -> None:
    d = tmp_path / "dead-letter"
    t0 = NOW - timedelta(hours=2)
    recs = [
        mqtt_record("m-1", 1234.0, "voltage_v[1]: 1234.0 above 1000.0", t0),
        mqtt_record("m-2", 1250.5, "voltage_v[0]: 1250.5 above 1000.0", NOW),
        mqtt_record("m-3", 1, "ts: missing (RFC 3339 with an offset, or epoch seconds)", NOW),
        dead_letter_record(reason="voltage_v[0]: 1300.0 above 1000.0", source="modbus"),
    ]
    write_records(d, recs, day=NOW.date().isoformat())
    with (d / f"{NOW.date().isoformat()}.jsonl").open("ab") as f:
        f.write(b"not json\n")
    groups, unreadable = group_reasons(read_records(record_files(d)))
    assert unreadable == 1
    top = groups[0]
    assert (top.source, top.pattern, top.count) == ("mqtt", "voltage_v[N]: N above N", 2)
    assert top.first == recs[0]["received_at"]
    assert top.last == recs[1]["received_at"]
    assert top.example is not None
    assert top.example.where.endswith(".jsonl:1")
    # another source is another row
    assert [(g.source, g.count) for g in groups[1:]] == [("modbus", 1), ("mqtt", 1)]
    table = render_table(groups, unreadable)
    assert "voltage_v[N]: N above N" in table
    assert "e.g. " in table
    assert "meters/m-1/reading" in table
    assert "4 record(s), 3 reason(s)" in table
    assert top.as_dict()["example"]["reason"] == "voltage_v[1]: 1234.0 above 1000.0"


# -- selection and reading -------------------------------------------------------------------


def test_selection_by_time_reason_and_source(tmp_path: Path) -> None:
    d = tmp_path / "dead-letter"
    old = NOW - timedelta(days=3)
    write_records(d, [mqtt_record("m-1", 300, "voltage_v: 300.0 above 250.0", old)])
    write_records(d, [mqtt_record("m-2", 300, "voltage_v: 300.0 above 250.0", NOW)])
    write_records(d, [dead_letter_record(reason="Modbus timeout", source="modbus")])

    def picked(sel: Selection) -> list[str]:
        return [
            str(dl.record.get("topic"))
            for dl in select(d, sel)
            if dl.record and dl.record.get("topic")
        ]

    assert picked(Selection()) == ["meters/m-1/reading", "meters/m-2/reading"]
    assert picked(Selection(since=NOW - timedelta(hours=1))) == ["meters/m-2/reading"]
    assert picked(Selection(reason="VOLTAGE")) == ["meters/m-1/reading", "meters/m-2/reading"]
    assert picked(Selection(source="modbus")) == []
    assert [dl.record["reason"] for dl in select(d, Selection(reason="timeout"))] == [  # type: ignore[index]
        "Modbus timeout"
    ]


def test_since_takes_times_dates_and_ages() -> None:
    assert parse_since("2026-11-27") == datetime(2026, 11, 27, tzinfo=UTC)
    assert parse_since("2026-11-27T06:00:00Z") == datetime(2026, 11, 27, 6, tzinfo=UTC)
    assert parse_since("2026-11-27T06:00:00") == datetime(2026, 11, 27, 6, tzinfo=UTC)
    assert parse_since("2h", now=NOW) == NOW - timedelta(hours=2)
    assert parse_since("7d", now=NOW) == NOW - timedelta(days=7)
    with pytest.raises(Exception, match=r"e\.g\. 2026-11-27"):
        parse_since("yesterday")


def test_only_complete_lines_are_read(tmp_path: Path) -> None:
    d = tmp_path / "dead-letter"
    path = write_records(d, [mqtt_record("m-1", 300, "voltage_v: 300.0 above 250.0")])
    whole = orjson.dumps(mqtt_record("m-2", 300, "voltage_v: 300.0 above 250.0"))
    with path.open("ab") as f:
        f.write(whole[:40])  # the gateway is mid-write
    got = list(read_records([path]))
    assert [(dl.line, dl.record is not None) for dl in got] == [(1, True)]
    with path.open("ab") as f:
        f.write(whole[40:] + b"\n")
    got = list(read_records([path]))
    assert [dl.line for dl in got] == [1, 2]
    assert got[1].record is not None
    assert got[1].record["topic"] == "meters/m-2/reading"
    # the id is the line's: the same at every read
    assert got[0].id == next(iter(read_records([path]))).id
    assert got[0].id != got[1].id


def test_ledger_is_append_only_and_survives_a_reload(tmp_path: Path) -> None:
    d = tmp_path / "dead-letter"
    path = write_records(
        d, [mqtt_record(f"m-{i}", 300, "voltage_v: 300.0 above 250.0") for i in range(3)]
    )
    lines = list(read_records([path]))
    ledger = ReplayLedger(d)
    assert ledger.add_many([(lines[0], 1), (lines[1], 1), (lines[0], 1)]) == 2
    assert ledger.add_many([(lines[1], 1)]) == 0
    with ledger.path.open("ab") as f:
        f.write(b'{"id": "torn')  # a crash mid-append: ignored, not an error
    again = ReplayLedger(d)
    assert lines[0].id in again
    assert lines[1].id in again
    assert lines[2].id not in again
    entries = [json.loads(x) for x in ledger.path.read_text().splitlines()[:2]]
    assert [(e["file"], e["line"], e["stored"]) for e in entries] == [
        (path.name, 1, 1),
        (path.name, 2, 1),
    ]
    # the ledger is not a dead-letter file
    assert record_files(d) == [path]


# -- replay ----------------------------------------------------------------------------------


def seed(tmp_path: Path) -> Path:
    d = tmp_path / "var" / "dead-letter"
    write_records(
        d,
        [
            mqtt_record("m-1", 253.0, "voltage_v: 253.0 above 250.0"),
            mqtt_record("m-2", 254.0, "voltage_v: 254.0 above 250.0"),
            mqtt_record("m-3", 5000.0, "voltage_v: 5000.0 above 250.0"),
            element_record("m-4", 260.0, 3),
            element_record("m-5", 4000.0, 7),
            dead_letter_record(
                reason="exception code 2 (illegal data address)", source="modbus", device="sdm-1"
            ),
            dead_letter_record(
                reason="refused by the database: field type conflict",
                source="storage",
                payload="meter_reading,meter_id=m-9 voltage_v=1i 1",
            ),
            dead_letter_record(
                reason="voltage_v: 300.0 above 250.0",
                source="modbus",
                item=reading("sdm-7", 270.0),
                device="sdm-7",
                received_at=NOW,
            ),
            dead_letter_record(
                reason="voltage_v: 300.0 above 250.0",
                source="mqtt",
                payload=json.dumps(reading("m-8", 270.0)).encode(),
                topic="elsewhere/m-8",
                received_at=NOW,
            ),
        ],
    )
    return d


async def test_replay_stores_what_passes_once(tmp_path: Path) -> None:
    d = seed(tmp_path)
    db = MemoryDB()
    report = await DeadLetterReplay(config(tmp_path, voltage_max_v=300), client=db).run(
        select(d, Selection())
    )
    assert report.selected == 9
    assert (report.replayed, report.stored, report.already) == (4, 4, 0)
    assert sorted(line.split(",")[1].split("=")[1] for line in db.lines) == [
        "m-1",
        "m-2",
        "m-4",
        "sdm-7",
    ]
    assert report.still_rejected == {
        "voltage_v: N above N": 1,
        "readings[N]: voltage_v: N above N": 1,
    }
    # the element keeps its position in the batch it came in
    assert (
        "readings[7]: voltage_v: 4000.0 above 300.0"
        in report.examples["readings[N]: voltage_v: N above N"]
    )
    assert sum(report.skipped.values()) == 3
    assert any(why.startswith("modbus: a poll error") for why in report.skipped)
    assert any(why.startswith("storage:") for why in report.skipped)
    assert any("route no format" in why for why in report.skipped)
    # nothing was written to the dead-letter store again
    assert sorted(p.name for p in d.iterdir()) == [f"{NOW.date().isoformat()}.jsonl", "replayed"]
    assert len((d / "replayed").read_text().splitlines()) == 4
    text = report.text()
    assert "replayed: 4 record(s), stored 4 reading(s)" in text
    assert "still rejected: 2" in text

    again = await DeadLetterReplay(config(tmp_path, voltage_max_v=300), client=db).run(
        select(d, Selection())
    )
    assert (again.replayed, again.stored, again.already) == (0, 0, 4)
    assert sum(again.still_rejected.values()) == 2
    assert len(db.lines) == 4  # nothing stored twice


async def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    d = seed(tmp_path)
    report = await DeadLetterReplay(config(tmp_path, voltage_max_v=300), dry_run=True).run(
        select(d, Selection(reason="voltage"))
    )
    assert (report.replayed, report.stored) == (4, 4)
    assert "would store 4" in report.text()
    assert not (d / "replayed").exists()


async def test_a_record_the_database_refuses_is_not_marked_replayed(tmp_path: Path) -> None:
    d = seed(tmp_path)
    db = MemoryDB(refuse="meter_id=m-2")
    report = await DeadLetterReplay(config(tmp_path, voltage_max_v=300), client=db).run(
        select(d, Selection())
    )
    assert report.refused == 1
    assert (report.replayed, report.stored) == (3, 3)
    assert len((d / "replayed").read_text().splitlines()) == 3


async def test_a_reading_dead_lettered_twice_is_stored_once(tmp_path: Path) -> None:
    d = tmp_path / "var" / "dead-letter"
    rec = mqtt_record("m-1", 253.0, "voltage_v: 253.0 above 250.0")
    redelivered = {**rec, "received_at": (NOW + timedelta(seconds=1)).isoformat()}
    write_records(d, [rec, redelivered])
    db = MemoryDB()
    report = await DeadLetterReplay(config(tmp_path, voltage_max_v=300), client=db).run(
        select(d, Selection())
    )
    assert (report.replayed, report.stored, report.duplicates) == (2, 1, 1)
    assert len(db.lines) == 1


# -- the command line --------------------------------------------------------------------------


def write_config(tmp_path: Path, volts: float) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"gateway: {{id: gw-test, data_dir: {tmp_path / 'var'}}}\n"
        "mqtt:\n  subscriptions:\n"
        "    - {topic: 'meters/+/reading', format: json}\n"
        "    - {topic: 'concentrators/+/readings', format: json-batch}\n"
        f"validation: {{voltage_max_v: {volts}}}\n"
    )
    return path


def test_cli_list_and_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed(tmp_path)
    cfg = write_config(tmp_path, 300)
    assert main(["dead-letter", "list", "-c", str(cfg), "--format", "json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["groups"][0] == {
        **body["groups"][0],
        "source": "mqtt",
        "reason": "voltage_v: N above N",
        "count": 4,
    }
    assert main(["dead-letter", "list", "-c", str(cfg), "--source", "modbus"]) == 0
    out = capsys.readouterr().out
    assert "2 record(s)" in out
    assert "mqtt" not in out

    code = main(["dead-letter", "replay", "-c", str(cfg), "--dry-run", "--format", "json"])
    assert code == 0
    body = json.loads(capsys.readouterr().out)
    assert (body["dry_run"], body["stored"], body["replayed"]) == (True, 4, 4)


def test_cli_says_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, 300)
    assert main(["dead-letter", "list", "-c", str(cfg)]) == 1
    assert "no dead-letter store at" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("validation: {voltage_max_v: -1}\n")
    assert main(["dead-letter", "replay", "-c", str(bad)]) == 2
    assert "voltage_max_v" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["dead-letter", "list", "-c", str(cfg), "--since", "yesterday"])
    assert "e.g. 2026-11-27" in capsys.readouterr().err
