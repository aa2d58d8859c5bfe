"""`meter-gateway replay`: recorded lines through the live pipeline, on the recording's clock.

The detectors are a small fake with the Engine's API (last gasp -> power_outage, silence ->
comms_loss), so these tests pin down what replay does, not what the detectors decide; one
test runs the real Engine when the gateway has one.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meter_gateway.config.schema import Config
from meter_gateway.gateway.cli import main
from meter_gateway.gateway.events.event import Event, event_id
from meter_gateway.gateway.replay import Replay, ReplaySummary
from meter_gateway.simulators.faults import CommsDropout, Outage
from meter_gateway.simulators.fleet import Fleet
from meter_gateway.simulators.replayfile import write_replay_file
from meter_gateway.simulators.scenario import Scenario
from meter_gateway.simulators.topology import write_csv

NS = 1_000_000_000
START = "2026-10-01T00:00:00Z"  # long before any "now": history replays on its own clock


class FakeEngine:
    """The Engine's API with two toy detectors, enough to see events flow through replay."""

    instances: list[FakeEngine] = []

    def __init__(self, config: Any, topology: Any, *, emit: Any, now_ns: int) -> None:
        self.emit = emit
        self.silent_after_ns = 3 * 900 * NS
        self.last_seen: dict[str, int] = {}
        self.raised: dict[tuple[str, str], Event] = {}
        self.ticks: list[int] = []
        self.readings = 0
        FakeEngine.instances.append(self)

    def _raise(self, type_: str, meter: str, now_ns: int) -> None:
        if (type_, meter) not in self.raised:
            ev = Event(
                type_,
                "raised",
                "major",
                {"meter_id": meter},
                now_ns,
                now_ns,
                event_id(type_, meter, now_ns),
            )
            self.raised[(type_, meter)] = ev
            self.emit(ev)

    def _clear(self, type_: str, meter: str, now_ns: int) -> None:
        ev = self.raised.pop((type_, meter), None)
        if ev is not None:
            self.emit(
                Event(
                    ev.type,
                    "cleared",
                    ev.severity,
                    ev.subject,
                    ev.start_ns,
                    now_ns,
                    ev.event_id,
                    cleared_ns=now_ns,
                )
            )

    def reading(self, r: Any, now_ns: int) -> None:
        self.readings += 1
        self.last_seen[r.meter_id] = now_ns
        self._clear("comms_loss", r.meter_id, now_ns)

    def signal(self, sig: Any, now_ns: int) -> None:
        if sig.value == "last_gasp":
            self._raise("power_outage", sig.meter_id, now_ns)
        elif sig.value == "power_restored":
            self._clear("power_outage", sig.meter_id, now_ns)
            self.last_seen[sig.meter_id] = now_ns

    def flag(self, f: Any, now_ns: int) -> None:
        pass

    def tick(self, now_ns: int) -> None:
        self.ticks.append(now_ns)
        for meter, seen in self.last_seen.items():
            if now_ns - seen > self.silent_after_ns and ("power_outage", meter) not in self.raised:
                self._raise("comms_loss", meter, now_ns)

    def active(self) -> list[Event]:
        return list(self.raised.values())


def config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {
        "gateway": {"id": "gw-replay", "data_dir": str(tmp_path / "var")},
        # Nothing listens here: a replay that tried to store would fail loudly.
        "storage": {"url": "http://127.0.0.1:9", "flush_interval_s": 0.05},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return Config.model_validate(data)


def small_fleet(**fleet: Any) -> Fleet:
    """Four meters on two transformers, six hours: an outage and a comms dropout."""
    scenario = Scenario(
        faults=[
            Outage(meters=["m-000001"], at=3600.0, duration=2400.0),
            CommsDropout(meters=["m-000003"], at=3600.0, duration=5400.0),
        ]
    )
    settings = {
        "meters": 4,
        "meters_per_transformer": 2,
        "seed": 3,
        "start": START,
        "duration": 6 * 3600,
        "status_online": False,
    }
    return Fleet(scenario, **{**settings, **fleet})


def write_lines(path: Path, records: list[Any]) -> Path:
    raw = b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in records)
    if path.name.endswith(".gz"):
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def dead_letters(tmp_path: Path) -> list[dict[str, Any]]:
    folder = tmp_path / "var" / "dead-letter"
    return [
        orjson.loads(x) for f in sorted(folder.glob("*.jsonl")) for x in f.read_bytes().splitlines()
    ]


async def replay(
    tmp_path: Path, files: list[Path], **kwargs: Any
) -> tuple[ReplaySummary, list[dict[str, Any]]]:
    run = kwargs.pop("run", "")  # several replays in one test: their own events and data
    events = tmp_path / f"events{run}.jsonl"
    cfg = kwargs.pop("cfg", None) or config(
        tmp_path, gateway={"data_dir": str(tmp_path / f"var{run}")}
    )
    kwargs.setdefault("engine_factory", FakeEngine)
    kwargs.setdefault("store", False)
    with events.open("wb") as out:
        summary = await Replay(cfg, events_out=out, **kwargs).run(files)
    lines = [orjson.loads(x) for x in events.read_bytes().splitlines()]
    return summary, lines


async def test_a_generated_file_gives_the_outage_and_the_comms_loss(tmp_path: Path) -> None:
    path = tmp_path / "small.jsonl"
    write_replay_file(small_fleet(), path, tmp_path / "truth.jsonl")
    summary, events = await replay(tmp_path, [path])
    seen = {(e["type"], e["state"], e["meter_id"]) for e in events}
    assert seen == {
        ("power_outage", "raised", "m-000001"),
        ("power_outage", "cleared", "m-000001"),
        ("comms_loss", "raised", "m-000003"),
        ("comms_loss", "cleared", "m-000003"),
    }
    outage = next(e for e in events if e["type"] == "power_outage" and e["state"] == "cleared")
    # The events are on the recording's clock (`_at`), not the wall clock.
    assert outage["ts"] == "2026-10-01T01:00:00Z"
    assert outage["duration_s"] == 2400.0
    assert outage["gateway_id"] == "gw-replay"
    assert summary.events[("power_outage", "raised")] == 1
    assert sum(summary.rejected.values()) == 0
    # 4 meters x 25 readings, less the outage's (40 min: 3 readings) and the dropout's (6).
    assert summary.readings == summary.accepted == 100 - 3 - 6
    assert summary.signals == {"last_gasp": 1, "power_restored": 1}
    assert summary.still_raised == 0
    assert summary.first_ns
    assert summary.watermark_ns > summary.first_ns
    assert "power_outage: cleared 1, raised 1" in summary.text()


async def test_the_detectors_tick_on_recorded_time_never_past_the_last_line(tmp_path: Path) -> None:
    FakeEngine.instances.clear()
    path = tmp_path / "small.jsonl"
    write_replay_file(small_fleet(), path)
    last_at = max(orjson.loads(x)["_at"] for x in path.read_bytes().splitlines())
    await replay(tmp_path, [path])
    (engine,) = FakeEngine.instances
    assert engine.ticks == sorted(engine.ticks)
    assert engine.ticks[-1] == int(last_at * NS)
    assert all(b - a >= NS for a, b in zip(engine.ticks, engine.ticks[1:], strict=False))


async def test_gz_input_replays_like_plain(tmp_path: Path) -> None:
    plain, packed = tmp_path / "a.jsonl", tmp_path / "a.jsonl.gz"
    write_replay_file(small_fleet(), plain)
    write_replay_file(small_fleet(), packed)
    assert gzip.decompress(packed.read_bytes()) == plain.read_bytes()
    s1, e1 = await replay(tmp_path, [plain], run="1")
    s2, e2 = await replay(tmp_path, [packed], run="2")
    assert e1 == e2
    assert e1
    assert (s1.lines, s1.accepted) == (s2.lines, s2.accepted)


async def test_small_chunks_split_lines_correctly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import meter_gateway.gateway.replay as mod

    path = tmp_path / "a.jsonl.gz"
    write_replay_file(small_fleet(), path)
    s1, e1 = await replay(tmp_path, [path], run="1")
    monkeypatch.setattr(mod, "CHUNK_BYTES", 97)
    monkeypatch.setattr(mod.open_lines, "__defaults__", (97,))
    s2, e2 = await replay(tmp_path, [path], run="2")
    assert (s1.lines, s1.accepted, e1) == (s2.lines, s2.accepted, e2)


async def test_bad_lines_go_to_the_dead_letter_store_with_a_reason(tmp_path: Path) -> None:
    good = {"meter_id": "m-1", "ts": START, "energy_import_kwh": 1.0, "voltage_v": 230.0}
    path = write_lines(
        tmp_path / "bad.jsonl",
        [
            good,
            b'{"meter_id": "m-1", "ts": "2026-10-01T00:15',  # truncated
            b'{"meter_id":"m-1","ts":"2026-10-01T00:15:00Z","power_w":NaN}',
            {"ts": START, "power_w": 1.0},  # no meter
            [1, 2, 3],
            {"meter_id": "m-1", "ts": START, "type": "explosion"},
            {"meter_id": "m-1", "ts": START, "status": "sleepy"},
            {"ts": START, "status": "offline"},
            {"meter_id": "m-1", "ts": "2026-10-01T00:30:00", "power_w": 1.0},  # naive ts
            b"",  # blank lines are skipped, not rejected
            {"meter_id": "m-1", "ts": "2026-10-01T00:45:00Z", "voltage_v": 5000.0},
            {"meter_id": "m-1", "ts": "2026-10-01T01:00:00Z", "power_w": 2.0},
        ],
    )
    summary, _ = await replay(tmp_path, [path])
    records = dead_letters(tmp_path)
    by_line = {r["topic"]: r["reason"] for r in records}
    assert set(by_line) == {f"replay:bad.jsonl:{n}" for n in (2, 3, 4, 5, 6, 7, 8, 9, 11)}
    assert by_line["replay:bad.jsonl:2"].startswith("invalid JSON")
    assert "NaN" in by_line["replay:bad.jsonl:3"]
    assert by_line["replay:bad.jsonl:4"] == "meter_id: missing"
    assert "expected a JSON object" in by_line["replay:bad.jsonl:5"]
    assert "explosion" in by_line["replay:bad.jsonl:6"]
    assert "sleepy" in by_line["replay:bad.jsonl:7"]
    assert "meter_id" in by_line["replay:bad.jsonl:8"]
    assert "no UTC offset" in by_line["replay:bad.jsonl:9"]
    assert "5000.0 above" in by_line["replay:bad.jsonl:11"]
    assert all(r["payload"] for r in records)
    assert summary.lines == 12
    assert summary.accepted == 2
    assert sum(summary.rejected.values()) == 9
    assert summary.reasons[0].startswith("replay:bad.jsonl:2: invalid JSON")


async def test_validation_is_judged_against_the_watermark_not_the_wall_clock(
    tmp_path: Path,
) -> None:
    # No `_at`: the clock is the latest ts seen. A month-old file has no 'too old' readings;
    # a wild clock far ahead is rejected as in the future and does not drag the clock along.
    lines = [
        {"meter_id": f"m-{m}", "ts": f"2026-10-0{d}T{h:02d}:00:00Z", "power_w": 1.0}
        for d in (1, 2)
        for h in range(24)
        for m in range(3)
    ]
    lines.insert(10, {"meter_id": "m-9", "ts": "2031-01-01T00:00:00Z", "power_w": 1.0})
    lines.insert(20, {"meter_id": "m-9", "ts": "2026-10-01T05:04:00Z", "power_w": 1.0})
    path = write_lines(tmp_path / "old.jsonl", lines)
    summary, _ = await replay(tmp_path, [path])
    reasons = [r["reason"] for r in dead_letters(tmp_path)]
    assert len(reasons) == 1
    assert "in the future" in reasons[0]
    assert "2031" in reasons[0]
    assert summary.accepted == len(lines) - 1
    assert summary.watermark_ns == 1_790_982_000 * NS  # 2026-10-02T23:00:00Z


async def test_arrival_time_is_the_clock_when_present(tmp_path: Path) -> None:
    # Received at 00:00: a reading stamped 00:10 is 600 s in the future (limit 300 s),
    # though it is the newest ts of the file.
    at = 1_790_812_800.0  # 2026-10-01T00:00:00Z
    path = write_lines(
        tmp_path / "at.jsonl",
        [
            {"meter_id": "m-1", "ts": "2026-10-01T00:00:00Z", "power_w": 1.0, "_at": at},
            {"meter_id": "m-2", "ts": "2026-10-01T00:10:00Z", "power_w": 1.0, "_at": at},
            {"meter_id": "m-3", "ts": "2026-10-01T00:10:00Z", "power_w": 1.0, "_at": at + 600},
        ],
    )
    summary, _ = await replay(tmp_path, [path])
    (record,) = dead_letters(tmp_path)
    assert record["topic"] == "replay:at.jsonl:2"
    assert "600 s in the future" in record["reason"]
    assert summary.accepted == 2


async def test_detectors_off_in_the_config_means_no_engine(tmp_path: Path) -> None:
    FakeEngine.instances.clear()
    path = tmp_path / "small.jsonl"
    write_replay_file(small_fleet(), path)
    cfg = config(tmp_path, events={"enabled": False})
    summary, events = await replay(tmp_path, [path], cfg=cfg)
    assert events == []
    assert FakeEngine.instances == []
    assert "events.enabled is false" in summary.text()


def _cli_config(tmp_path: Path, storage_url: str, topology: Path | None = None) -> Path:
    cfg = tmp_path / "gateway.yaml"
    text = (
        f"gateway: {{id: gw-replay, data_dir: {tmp_path / 'var'}}}\n"
        f"storage: {{url: '{storage_url}', flush_interval_s: 0.05}}\n"
    )
    if topology is not None:
        text += f"topology: {{file: {topology}}}\n"
    cfg.write_text(text)
    return cfg


def test_the_cli_says_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _cli_config(tmp_path, "http://127.0.0.1:9")
    assert main(["replay", "-c", str(cfg), str(tmp_path / "nope.jsonl"), "--no-store"]) == 1
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("storage: {batch_size: -1}\n")
    assert main(["replay", "-c", str(bad), str(cfg), "--no-store"]) == 2
    assert "storage.batch_size" in capsys.readouterr().err


@pytest.mark.integration
def test_no_store_writes_nothing_and_store_writes_readings_and_events(
    tmp_path: Path,
    victoria: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import meter_gateway.gateway.replay as mod

    # The CLI builds its own detectors: the fake stands in for the Engine here.
    monkeypatch.setattr(mod, "_default_engine", lambda: (FakeEngine, ""))
    fleet = small_fleet()
    write_csv(fleet.topology, tmp_path / "topology.csv")
    path = tmp_path / "small.jsonl.gz"
    write_replay_file(fleet, path)
    cfg = _cli_config(tmp_path, victoria.url, tmp_path / "topology.csv")
    events = tmp_path / "events.jsonl"

    args = ["replay", "-c", str(cfg), str(path), "--events-out", str(events)]
    assert main([*args, "--no-store"]) == 0
    err = capsys.readouterr().err
    assert "readings: 91, accepted 91 (not stored: --no-store)" in err
    assert victoria.count("meter_reading_power_w") == 0
    assert len(events.read_bytes().splitlines()) == 4

    assert main(args) == 0
    err = capsys.readouterr().err
    assert "readings: 91, stored 91" in err
    assert victoria.count("meter_reading_power_w") == 91
    # Raised events hold only text fields (which VictoriaMetrics does not keep); a cleared
    # one carries its duration.
    series = victoria.export('{__name__="meter_event_duration_s"}')
    got = {(s["metric"]["type"], s["metric"]["meter_id"]): s["values"] for s in series}
    assert set(got) == {("power_outage", "m-000001"), ("comms_loss", "m-000003")}
    assert got[("power_outage", "m-000001")] == [2400.0]
    tagged = victoria.export('{__name__="meter_reading_power_w", meter_id="m-000003"}')
    assert tagged[0]["metric"]["transformer_id"] == "tx-002"


async def test_the_real_engine_when_there_is_one(tmp_path: Path) -> None:
    engine = pytest.importorskip("meter_gateway.gateway.events.engine")
    fleet = small_fleet()
    path = tmp_path / "small.jsonl"
    write_replay_file(fleet, path)
    topology = {
        m: __import__("meter_gateway.config.topology", fromlist=["MeterPlace"]).MeterPlace(
            m, s.transformer_id, s.feeder_id
        )
        for m, s in fleet.topology.sites.items()
    }
    summary, events = await replay(
        tmp_path, [path], engine_factory=engine.Engine, topology=topology
    )
    assert sum(summary.rejected.values()) == 0
    raised = {(e["type"], e.get("meter_id")) for e in events if e["state"] == "raised"}
    assert ("power_outage", "m-000001") in raised


# -- hostile files: whatever a line holds, replay goes on and says why it refused it ----------
_values = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_line = st.dictionaries(
    st.sampled_from(
        ["meter_id", "ts", "_at", "type", "status", "power_w", "voltage_v", "energy_import_kwh"]
    ),
    _values | st.lists(_values, max_size=3) | st.sampled_from([START, "m-1", "last_gasp"]),
    max_size=6,
)
_raw = _line.map(lambda d: json.dumps(d).encode()) | st.binary(max_size=60).filter(
    lambda b: b"\n" not in b
)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(lines=st.lists(_raw, min_size=1, max_size=12))
def test_any_file_replays_to_its_end_and_every_refusal_has_a_reason(lines: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = write_lines(folder / "hostile.jsonl", lines)
        summary, _ = asyncio.run(replay(folder, [path]))
        assert summary.lines == len(lines)
        for r in dead_letters(folder):
            assert r["reason"], r
            assert r["topic"].startswith("replay:hostile.jsonl:")
            assert "internal error" not in r["reason"], r
            assert not re.search(r"Traceback|Error\b|<\w+ object at", r["reason"]), r
