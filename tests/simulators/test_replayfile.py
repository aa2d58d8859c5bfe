"""The replay-file writer: a fleet's traffic as replay lines, deterministic for a seed."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from meter_gateway.simulators.faults import CommsDropout, Malformed, Outage
from meter_gateway.simulators.fleet import Fleet
from meter_gateway.simulators.replay_cli import main
from meter_gateway.simulators.replayfile import default_truth_path, write_replay_file
from meter_gateway.simulators.scenario import Scenario
from meter_gateway.simulators.truth import read_truth

from .conftest import SMALL_FLEET


def fleet(**overrides: Any) -> Fleet:
    scenario = Scenario(
        faults=[
            Outage(meters=["m-000003"], at=3600.0, duration=1800.0, lwt=True),
            CommsDropout(meters=["m-000004"], at=3600.0, duration=3600.0, backfill=True),
            Malformed(meters=["m-000001"], at=1800.0, kind="invalid_json"),
            Malformed(meters=["m-000002"], at=1800.0, kind="nan"),
        ]
    )
    return Fleet(scenario, **{**SMALL_FLEET, "concentrators": 1, **overrides})


def lines(path: Path) -> list[bytes]:
    raw = path.read_bytes()
    return (gzip.decompress(raw) if path.name.endswith(".gz") else raw).splitlines()


def test_same_seed_same_bytes_and_another_seed_others(tmp_path: Path) -> None:
    a, b, c = (tmp_path / f"{n}.jsonl.gz" for n in "abc")
    write_replay_file(fleet(), a, tmp_path / "a.truth.jsonl")
    write_replay_file(fleet(), b, tmp_path / "b.truth.jsonl")
    write_replay_file(fleet(seed=12), c)
    assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a.truth.jsonl").read_bytes() == (tmp_path / "b.truth.jsonl").read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_every_message_becomes_its_line_type(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    stats = write_replay_file(fleet(), path, tmp_path / "truth.jsonl")
    raw = lines(path)
    assert stats.lines == len(raw)
    parsed: list[dict[str, Any]] = []
    broken: list[bytes] = []
    for line in raw:
        try:
            parsed.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            broken.append(line)
    # Batches are split: every reading names its meter, no line is a batch.
    readings = [p for p in parsed if "energy_import_kwh" in p]
    assert not any("readings" in p or "concentrator_id" in p for p in parsed)
    assert {r["meter_id"] for r in readings} == {"m-000001", "m-000002", "m-000003", "m-000004"}
    events = [(p["meter_id"], p["type"]) for p in parsed if "type" in p]
    assert events == [("m-000003", "last_gasp"), ("m-000003", "power_restored")]
    # m-000003 publishes directly (tx-002); its emulated will becomes status lines.
    status = [(p["meter_id"], p["status"], p["ts"]) for p in parsed if "status" in p]
    assert status == [
        ("m-000003", "offline", "2026-11-26T01:00:00Z"),
        ("m-000003", "online", "2026-11-26T01:30:00Z"),
    ]
    # The malformed payloads are kept as sent: a truncated frame (not JSON, no `_at`) and
    # a NaN that only the tolerant parser reads.
    assert len(broken) == 2
    nan = [json.loads(b) for b in broken if b"NaN" in b]
    assert len(nan) == 1
    assert nan[0]["meter_id"] == "m-000002"
    assert nan[0]["_at"] == 1795653000.0  # 2026-11-26T00:30:00Z
    # Arrival times never go back, and the back-filled readings arrive late.
    ats = [p["_at"] for p in parsed]
    assert ats == sorted(ats)
    late = [r for r in readings if r["meter_id"] == "m-000004" and r["_at"] > _epoch(r["ts"])]
    assert len(late) == 4  # the dropout's hour of readings, delivered when comms returned
    assert stats.by_kind["reading"] == 4 * 13 - 2  # 3 h of 15 min readings; outage: 2
    assert stats.by_kind == {"reading": 50, "event": 2, "status": 2}
    assert stats.faults == {"outage": 1, "comms_dropout": 1, "malformed": 2}
    assert [r["type"] for r in read_truth(tmp_path / "truth.jsonl")] == [
        "malformed",
        "malformed",
        "outage",
        "comms_dropout",
    ]


def _epoch(ts: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(ts).timestamp()


def test_default_truth_path() -> None:
    assert default_truth_path("out/week.jsonl.gz") == Path("out/week.truth.jsonl")
    assert default_truth_path("a.jsonl") == Path("a.truth.jsonl")


def test_the_command_writes_file_truth_and_topology(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run" / "small.jsonl.gz"
    args = ["--meters", "6", "--duration", "2h", "--start", "2026-11-01T00:00:00Z"]
    assert main([*args, "--out", str(out), "--seed", "4"]) == 0
    assert len(lines(out)) == 6 * 9 + 6  # readings, and `online` of the direct meters
    assert (tmp_path / "run" / "small.truth.jsonl").exists()
    csv = (tmp_path / "run" / "small.topology.csv").read_text().splitlines()
    assert csv[0].startswith("meter_id,transformer_id")
    assert len(csv) == 7
    assert "wrote 60 lines" in capsys.readouterr().err


def test_the_command_refuses_an_endless_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--meters", "2", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "give --duration" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("faults: [{type: outage, meters: [m-999999], at: 1h}]\n")
    assert main(["--scenario", str(bad), "--duration", "1h", "--out", str(tmp_path / "y")]) == 2
    assert "m-999999" in capsys.readouterr().err
