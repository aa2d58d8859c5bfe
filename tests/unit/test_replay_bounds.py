"""Replay's bounds: no line's time ends the run, no line's length exhausts memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from meter_gateway.gateway.replay import LongLine, Replay, open_lines
from tests.unit.test_replay import FakeEngine, config, dead_letters, write_lines

NS = 1_000_000_000
AT = 1_790_812_800  # 2026-10-01T00:00:00Z
PREFIX = b'{"meter_id": "m-1", "note": "'


class MemoryClient:
    """The database: takes every write (storing mode runs VEE and the writer)."""

    target = "memory"

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def write(self, body: bytes) -> None:
        self.bodies.append(body)

    async def close(self) -> None:
        return None


def reading(t: int, kwh: float, **extra: Any) -> dict[str, Any]:
    return {"meter_id": "m-1", "ts": t, "energy_import_kwh": kwh, "_at": t, **extra}


async def test_a_time_at_the_end_of_the_calendar_is_refused_per_line_not_fatal(
    tmp_path: Path,
) -> None:
    path = write_lines(
        tmp_path / "end.jsonl",
        [
            reading(AT, 1.0),
            reading(253_402_300_799, 2.0),  # year 9999, what ended the run
            {**reading(AT + 600, 1.1), "ts": "9999-12-31T23:59:59Z"},
            {"meter_id": "m-1", "ts": AT + 700, "type": "last_gasp", "_at": 253_402_300_799},
            {**reading(AT + 800, 1.2), "_at": "soon"},
            reading(AT + 900, 1.3),
        ],
    )
    client = MemoryClient()
    cfg = config(tmp_path)
    summary = await Replay(cfg, store=True, client=client, engine_factory=FakeEngine).run([path])
    assert summary.lines == 6
    assert summary.accepted == 2
    reasons = {r["topic"]: r["reason"] for r in dead_letters(tmp_path)}
    assert reasons == {
        "replay:end.jsonl:2": "_at: 9999-12-31T23:59:59Z is later than 9999-12-01T00:00:00Z, "
        "the last time replay takes",
        "replay:end.jsonl:3": "ts: 9999-12-31T23:59:59Z is later than 9999-12-01T00:00:00Z, "
        "the last time replay takes",
        "replay:end.jsonl:4": "_at: 9999-12-31T23:59:59Z is later than 9999-12-01T00:00:00Z, "
        "the last time replay takes",
        "replay:end.jsonl:5": "_at: 'soon' is not epoch seconds from 1970 to year 9999 "
        "(when the gateway received the line)",
    }
    # The clock never moved past the refused lines: the last reading is on time.
    assert summary.watermark_ns == (AT + 900) * NS
    assert b"m-1" in b"".join(client.bodies)


def test_open_lines_skips_a_long_line_across_chunks_and_keeps_the_numbering(
    tmp_path: Path,
) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"a\n" + b"x" * 50 + b"\nbb\n" + b"y" * 11 + b"\nc")
    items = [x for lines in open_lines(path, 7, max_line_bytes=10) for x in lines]
    assert items == [
        b"a",
        LongLine(b"x" * 50, 50),
        b"bb",
        LongLine(b"y" * 11, 11),
        b"c",
    ]
    # Chunks bigger than the limit: the long lines are found inside a chunk.
    items = [x for lines in open_lines(path, 1 << 20, max_line_bytes=10) for x in lines]
    assert [type(x).__name__ for x in items] == ["bytes", "LongLine", "bytes", "LongLine", "bytes"]
    assert items[1] == LongLine(b"x" * 50, 50)


@pytest.mark.timeout(60)
async def test_a_64_mib_line_is_skipped_counted_and_memory_stays_bounded(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    size = 64 << 20
    with path.open("wb") as f:
        f.write(b'{"meter_id": "m-1", "ts": 1790812800, "power_w": 1.0}\n')
        f.write(PREFIX)
        block = b"z" * (1 << 20)
        for _ in range(size >> 20):
            f.write(block)
        f.write(b'"}\n{"meter_id": "m-1", "ts": 1790812860, "power_w": 2.0}\n')
    cfg = config(tmp_path, mqtt={"max_payload_bytes": 1 << 20})
    replay = Replay(cfg, store=False, engine_factory=FakeEngine)
    tracemalloc.start()
    try:
        summary = await replay.run([path])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary.lines == 3
    assert summary.too_long == 1
    assert summary.accepted == 2
    assert "lines too long: 1" in summary.text()
    (record,) = dead_letters(tmp_path)
    assert record["topic"] == "replay:long.jsonl:2"
    assert record["reason"] == (
        f"line of {size + len(PREFIX) + 2:,} bytes is over mqtt.max_payload_bytes (1,048,576); "
        "skipped unread, its first 1,024 bytes are kept"
    )
    # The reader's chunk (4 MiB) and at most one limit's worth of a line, never the line.
    assert peak < 16 << 20, peak


async def test_replayed_events_and_status_lines_follow_the_id_rule(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "ids.jsonl",
        [
            {"meter_id": "<img src=x onerror=alert(1)>", "ts": AT, "type": "last_gasp", "_at": AT},
            {"meter_id": "\u202em-1", "ts": AT, "status": "offline", "_at": AT},
            {"meter_id": "m-1", "ts": AT, "type": "last_gasp", "_at": AT},
        ],
    )
    summary = await Replay(config(tmp_path), store=False, engine_factory=FakeEngine).run([path])
    assert summary.events == {("power_outage", "raised"): 1}  # m-1's, no other
    reasons = [r["reason"] for r in dead_letters(tmp_path)]
    assert reasons == [
        "meter_id: '<img src=x onerror=alert(1)>' is not 1-64 characters of "
        "A-Z a-z 0-9 . _ : - (the id rule)",
        "meter_id: '\\u202em-1' is not 1-64 characters of A-Z a-z 0-9 . _ : - (the id rule)",
    ]
