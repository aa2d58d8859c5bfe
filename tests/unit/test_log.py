"""The durable log's pieces on their own: group commit, segments, marks."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from pathlib import Path

import pytest

from meter_gateway.storage.log.commit import GroupCommit
from meter_gateway.storage.log.marks import read_mark, write_mark
from meter_gateway.storage.log.segment import encode_record
from meter_gateway.storage.log.segments import Segments, torn_or_damaged

log = logging.getLogger("test.log")


class Disk:
    """A write callback whose disk can be made to refuse, as a full one does."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.full = False
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()

    async def write(self, batch: list[int]) -> int:
        self.started.set()
        await self.release.wait()
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.batches.append(list(batch))
        return batch[-1]


def segments(directory: Path) -> Segments:
    return Segments("test", directory, segment_bytes=1 << 20, max_bytes=1 << 30, log=log)


def committer(tmp_path: Path, disk: Disk) -> GroupCommit[int]:
    return GroupCommit(
        "test", tmp_path, disk.write, log=log, waiting=lambda n: f"{n} held", retry_s=0.01
    )


async def test_what_arrives_during_a_write_goes_in_the_next_one(tmp_path):
    disk = Disk()
    gc = committer(tmp_path, disk)
    gc.pending.append(1)
    disk.release.clear()
    first = asyncio.create_task(gc.commit())
    await disk.started.wait()
    gc.pending.extend([2, 3, 4])  # while the first write runs
    disk.release.set()
    assert await first
    assert await gc.commit()
    assert disk.batches == [[1], [2, 3, 4]]
    assert (gc.durable, gc.fsyncs) == (4, 2)


async def test_a_refused_write_keeps_its_batch_in_order_and_is_logged_once(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    disk = Disk()
    gc = committer(tmp_path, disk)
    pending = gc.pending  # owners keep this reference for their hot path
    disk.full = True
    gc.pending.extend([1, 2])
    assert not await gc.commit()
    gc.pending.append(3)
    assert not await gc.commit()
    assert gc.pending is pending
    assert gc.pending == [1, 2, 3]
    assert (gc.failing, gc.disk_full, gc.write_errors, gc.durable) == (True, True, 2, 0)
    refused = [r for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(refused) == 1
    assert "3 held" not in refused[0].getMessage()  # said when it began: 2 were held
    assert "2 held" in refused[0].getMessage()
    disk.full = False
    assert await gc.commit()
    assert disk.batches == [[1, 2, 3]]
    assert not gc.failing
    assert "test: writing to" in caplog.text


async def test_wait_durable_hurries_a_lingering_writer(tmp_path):
    disk = Disk()
    gc = GroupCommit("test", tmp_path, disk.write, log=log, waiting=str, linger_s=3600)
    run = asyncio.create_task(gc.run())
    gc.pending.append(7)
    await asyncio.wait_for(gc.wait_durable(7), 5)  # not an hour
    assert await gc.close() == 0
    await asyncio.wait_for(run, 5)


async def test_close_reports_what_could_not_be_written(tmp_path):
    disk = Disk()
    gc = committer(tmp_path, disk)
    disk.full = True
    gc.pending.extend([1, 2])
    assert await gc.close(tries=2) == 2


async def test_a_refused_append_leaves_no_segment_and_the_next_starts_anew(tmp_path, monkeypatch):
    from meter_gateway.storage.log import segments as segments_module

    real = segments_module.append_durably
    segs = segments(tmp_path)
    first = await segs.append(1, 1, encode_record(1, 0, b"a"))

    def refuse(fd: int, offset: int, data: bytes, directory: Path | None = None) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(segments_module, "append_durably", refuse)
    with pytest.raises(OSError, match="I/O error"):
        await segs.append(2, 2, encode_record(2, 0, b"b"))
    monkeypatch.setattr(segments_module, "append_durably", real)
    second = await segs.append(2, 2, encode_record(2, 0, b"b"))
    assert second is not first  # no record after bytes that were not written whole
    assert [s.path.name for s in segs.files] == [f"{1:020d}.seg", f"{2:020d}.seg"]
    segs.close()
    found = segments(tmp_path).scan(
        contiguous=True, on_damage=lambda *a: pytest.fail(f"damage reported: {a}")
    )
    assert [[r.seq for r in res.records] for _, res in found] == [[1], [2]]


async def test_scan_cuts_a_torn_tail_and_reports_it_once(tmp_path):
    segs = segments(tmp_path)
    await segs.append(1, 2, encode_record(1, 0, b"one") + encode_record(2, 0, b"two"))
    segs.close()
    path = segs.files[0].path
    whole = path.stat().st_size
    with path.open("ab") as f:
        f.write(encode_record(3, 0, b"three")[:-2])  # a crash mid-append
    seen: list[str] = []

    def damaged(p: Path, res, is_last: bool) -> None:
        seen.append(torn_or_damaged(res, is_last, res.records[-1].seq + 1, consumed=0))

    segments(tmp_path).scan(contiguous=True, on_damage=damaged)
    assert seen == ["torn"]
    assert path.stat().st_size == whole
    segments(tmp_path).scan(contiguous=True, on_damage=damaged)
    assert seen == ["torn"]  # cut: not reported again


def test_a_torn_tail_past_what_a_reader_took_is_a_cut_file_not_a_crash(tmp_path):
    from meter_gateway.storage.log.segment import ScanResult

    res = ScanResult(problem="a record cut short", torn_seq=5, torn_size=40, cut_bytes=10)
    assert torn_or_damaged(res, True, expected=5, consumed=4) == "torn"
    assert torn_or_damaged(res, True, expected=5, consumed=7) == "cut"
    assert torn_or_damaged(res, False, expected=5, consumed=0) == "damaged"
    odd = ScanResult(problem="a record cut short", torn_seq=9, torn_size=40, cut_bytes=10)
    assert torn_or_damaged(odd, True, expected=5, consumed=0) == "damaged"


def test_marks_are_replaced_whole_and_unreadable_ones_count_as_absent(tmp_path, caplog):
    path = tmp_path / "cursor.a"
    assert read_mark(path, log) is None
    write_mark(path, 41)
    write_mark(path, 42, sync=False)
    assert read_mark(path, log) == 42
    assert not list(tmp_path.glob("*.tmp"))
    path.write_text("forty-two\n")
    assert read_mark(path, log) is None
    assert "ignoring unreadable" in caplog.text
