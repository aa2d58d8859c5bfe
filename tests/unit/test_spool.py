"""The spool on its own: group commit, replay after a crash, damaged files, the bound,
a full disk. The database side is a fake writer that finishes what it is given."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meter_gateway.storage.spool import Spool, SpoolNote


class Writer:
    """Takes lines like the batch writer; `finish()` plays the database accepting them."""

    def __init__(self) -> None:
        self.taken: list[str] = []
        self.lines_done = 0
        self.auto = True

    @property
    def pending(self) -> int:
        return len(self.taken) - self.lines_done

    def extend(self, lines: list[str]) -> None:
        self.taken.extend(lines)
        if self.auto:
            self.lines_done = len(self.taken)

    def finish(self) -> None:
        self.lines_done = len(self.taken)


async def started(directory: Path, **kw) -> tuple[Spool, list[asyncio.Task[None]], list]:
    notes: list[SpoolNote] = []
    spool = Spool(directory, on_note=notes.append, **kw)
    await spool.open()
    return spool, [asyncio.create_task(spool.run())], notes


async def stop(tasks: list[asyncio.Task[None]]) -> None:
    for t in tasks:
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t


def line(i: int) -> str:
    return f'meter_reading,meter_id=m-{i % 7},source=mqtt power_w={i}.5,quality="actual" {i}'


async def test_group_commit_one_fsync_for_many_lines(tmp_path):
    spool, tasks, _ = await started(tmp_path)
    positions = [spool.add(line(i)) for i in range(1000)]
    assert len(set(positions)) == 1  # all in the record being built
    await spool.wait_durable(positions[-1])
    assert spool.fsyncs == 1
    assert spool.records == 1
    assert spool.lines == 1000
    await stop(tasks)


async def test_a_crash_replays_what_the_database_did_not_take(tmp_path):
    spool, tasks, _ = await started(tmp_path)
    for i in range(10):
        await spool.wait_durable(spool.add(line(i)))
    writer = Writer()
    writer.auto = False
    feeder = asyncio.create_task(spool.feed(writer))
    await asyncio.sleep(0.2)
    assert len(writer.taken) == 10
    writer.lines_done = 4  # the database took the first 4 records (one line each)
    await asyncio.sleep(0.2)
    await stop([*tasks, feeder])  # a crash: no close()

    again, tasks, notes = await started(tmp_path)
    assert again.records_recovered == 6
    assert again.lines_recovered == 6
    assert notes == []
    writer = Writer()
    feeder = asyncio.create_task(again.feed(writer))
    await asyncio.wait_for(again.wait_empty(), 5)
    assert writer.taken == [line(i) for i in range(4, 10)]
    # A new record continues the sequence; drained segments are gone.
    await again.wait_durable(again.add(line(10)))
    await asyncio.wait_for(again.wait_empty(), 5)
    await stop([*tasks, feeder])
    await again.close()
    third, tasks, _ = await started(tmp_path)
    assert third.records_recovered == 0
    await stop(tasks)


async def test_a_torn_tail_is_cut_off_and_reported(tmp_path, caplog):
    spool, tasks, _ = await started(tmp_path)
    for i in range(3):
        await spool.wait_durable(spool.add(line(i)))
    await stop(tasks)
    segment = sorted(tmp_path.glob("*.seg"))[-1]
    good = segment.stat().st_size
    with segment.open("ab") as f:
        f.write(b"\x40\x00\x00\x00garbage")  # half a record: the crash case
    again, tasks, notes = await started(tmp_path)
    assert again.records_recovered == 3
    assert segment.stat().st_size == good
    assert len(notes) == 1
    # A kill mid-append leaves this, and then it was never acknowledged; a file cut by
    # anything else can too: the note says both, and how much is missing.
    assert "If the gateway was killed or lost power while writing it" in notes[0].reason
    assert "the file cannot tell which" in notes[0].reason
    assert "at least 13 bytes cut off" in notes[0].reason  # 11 of a 24-byte header left
    assert "cut short" in caplog.text
    writer = Writer()
    feeder = asyncio.create_task(again.feed(writer))
    await asyncio.wait_for(again.wait_empty(), 5)
    assert writer.taken == [line(i) for i in range(3)]
    await stop([*tasks, feeder])


async def test_a_damaged_record_inside_is_reported_and_the_rest_kept(tmp_path, caplog):
    # Small segments: each record in its own file, so damage in one leaves the others.
    spool, tasks, _ = await started(tmp_path, max_bytes=8192, segment_bytes=64)
    for i in range(3):
        await spool.wait_durable(spool.add(line(i)))
    await stop(tasks)
    segments = sorted(tmp_path.glob("*.seg"))
    assert len(segments) == 3
    data = bytearray(segments[1].read_bytes())
    data[-5] ^= 0xFF  # a flipped bit in the middle record's payload
    segments[1].write_bytes(bytes(data))
    caplog.set_level(logging.WARNING)
    again, tasks, notes = await started(tmp_path, max_bytes=8192, segment_bytes=64)
    assert len(notes) == 1
    assert "checksum" in notes[0].reason
    writer = Writer()
    feeder = asyncio.create_task(again.feed(writer))
    await asyncio.wait_for(again.wait_empty(), 5)
    assert writer.taken == [line(0), line(2)]
    await stop([*tasks, feeder])


async def test_the_bound_pauses_and_half_of_it_resumes(tmp_path):
    paused: list[bool] = []
    spool = Spool(tmp_path, max_bytes=4096, on_pause=lambda p, why: paused.append(p))
    await spool.open()
    task = asyncio.create_task(spool.run())
    while not spool.paused:
        await spool.wait_durable(spool.add(line(1) * 5))
    assert paused == [True]
    assert spool.stats()["paused"] is True
    writer = Writer()
    feeder = asyncio.create_task(spool.feed(writer))
    await asyncio.wait_for(spool.wait_resumed(), 5)
    assert paused == [True, False]
    assert spool.bytes < 2048
    await stop([task, feeder])


async def test_a_full_disk_keeps_the_lines_and_pauses(tmp_path, caplog, monkeypatch):
    # The kernel's answer, on demand (a real full filesystem is in the fault tests).
    import errno

    from meter_gateway.storage.log import segments as spool_module

    real_append = spool_module.append_durably
    full = True

    def append(fd: int, offset: int, data: bytes, directory: Path | None = None) -> None:
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_append(fd, offset, data, directory)

    monkeypatch.setattr(spool_module, "append_durably", append)
    spool, tasks, _ = await started(tmp_path)
    seq = spool.add(line(1))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(spool.wait_durable(seq)), 0.5)
    assert spool.disk_full
    assert spool.paused
    assert spool.durable == 0
    assert "No space left on device" in caplog.text
    full = False  # room again
    await asyncio.wait_for(spool.wait_durable(seq), 5)
    assert not spool.disk_full
    await asyncio.wait_for(spool.wait_resumed(), 5)
    writer = Writer()
    feeder = asyncio.create_task(spool.feed(writer))
    await asyncio.wait_for(spool.wait_empty(), 5)
    assert writer.taken == [line(1)]
    await stop([*tasks, feeder])


# -- whatever is on disk, opening the spool never fails ------------------------------------

_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@_FUZZ
@given(
    good=st.integers(min_value=0, max_value=3),
    garbage=st.binary(max_size=200),
    flip=st.integers(min_value=0, max_value=400),
    ledger=st.binary(max_size=24),
)
def test_any_segment_and_ledger_bytes_open_with_notes_not_exceptions(
    tmp_path_factory, good, garbage, flip, ledger
):
    from meter_gateway.storage.log.segment import encode_record

    directory = tmp_path_factory.mktemp("spool")
    data = bytearray(
        b"".join(encode_record(i + 1, i, line(i).encode()) for i in range(good)) + garbage
    )
    if data and flip < len(data):
        data[flip] ^= 0x55
    (directory / f"{1:020d}.seg").write_bytes(bytes(data))
    (directory / "ledger").write_bytes(ledger)

    async def open_and_drain() -> tuple[Spool, list[SpoolNote], list[str]]:
        notes: list[SpoolNote] = []
        spool = Spool(directory, on_note=notes.append)
        await spool.open()
        writer = Writer()
        feeder = asyncio.create_task(spool.feed(writer))
        await asyncio.wait_for(spool.wait_empty(), 5)
        await stop([feeder])
        return spool, notes, writer.taken

    spool, notes, taken = asyncio.run(open_and_drain())
    assert spool.damaged == len(notes)
    for note in notes:
        assert note.reason.startswith("spool: ")
        assert "Error(" not in note.reason
    # What comes out are whole lines that were written, in order.
    written = [line(i) for i in range(good)]
    assert all(t in written for t in taken)
    assert taken == sorted(taken, key=written.index)
