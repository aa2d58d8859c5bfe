"""A spool segment cut short: the message counts what was cut, and says what the file
can and cannot tell about whether it was acknowledged.

A crash while the gateway appends leaves at most the one record being written, at the
end of the last segment, and that one was never acknowledged. A file cut by anything
else looks the same from its end, but may have lost many acknowledged records; the
ledger (records the database has) and the record numbers sometimes tell which.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from meter_gateway.storage.log.segment import RECORD_HEADER, scan_segment
from meter_gateway.storage.spool import Spool, SpoolNote

RECORDS = 10
LINES = 5  # readings a record


def line(i: int) -> str:
    return f'meter_reading,meter_id=m-{i % 7},source=mqtt power_w={i}.5,quality="actual" {i}'


async def write_records(directory: Path) -> Path:
    """RECORDS records of LINES readings each, one group commit each; one segment."""
    spool = Spool(directory)
    await spool.open()
    task = asyncio.create_task(spool.run())
    for r in range(RECORDS):
        ticket = 0
        for k in range(LINES):
            ticket = spool.add(line(r * LINES + k))
        await spool.wait_durable(ticket)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await spool.close()
    return directory / f"{1:020d}.seg"  # the first and only one: named by its first record


async def reopen(directory: Path) -> tuple[Spool, list[SpoolNote]]:
    notes: list[SpoolNote] = []
    spool = Spool(directory, on_note=notes.append)
    await spool.open()
    return spool, notes


async def test_a_segment_cut_inside_a_record_counts_the_bytes_cut_not_those_left(tmp_path, caplog):
    segment = await write_records(tmp_path)
    records = scan_segment(segment, None).records
    fourth = records[3]
    # Cut 30 bytes into record 4: records 4 to 10 (35 readings) are gone, acknowledged.
    cut_at = fourth.offset + 30
    with segment.open("r+b") as f:
        f.truncate(cut_at)
    caplog.set_level(logging.WARNING)
    spool, notes = await reopen(tmp_path)
    assert spool.records_recovered == 3
    (note,) = notes
    reason = note.reason
    # What was cut: what record 4 declares, less the 30 bytes left of it (its header is
    # whole: it says how long it was). The records after it are not in the file at all,
    # so "at least".
    assert f"at least {fourth.size - 30:,} bytes cut off" in reason, reason
    assert f"record 4 declares {fourth.size:,} bytes and 30 are left" in reason, reason
    assert "after record 3" in reason, reason
    # Whether they were acknowledged is not known from the file, and it says so.
    assert "it was never acknowledged, so its messages are still at the broker" not in reason
    assert "the file cannot tell" in reason, reason
    assert "acknowledged records may have been in the part cut off and are lost" in reason
    assert reason in caplog.text
    assert segment.stat().st_size == fourth.offset  # cut back to the last whole record


async def test_a_header_cut_short_counts_the_header_bytes_missing(tmp_path):
    segment = await write_records(tmp_path)
    last = scan_segment(segment, None).records[-1]
    with segment.open("r+b") as f:
        f.truncate(last.offset + 7)
    _, notes = await reopen(tmp_path)
    (note,) = notes
    missing = RECORD_HEADER.size - 7
    assert f"at least {missing} bytes cut off" in note.reason, note.reason
    assert "the rest of the next record's header, and all of its payload" in note.reason
    assert "the file cannot tell" in note.reason


async def test_a_cut_past_records_the_database_has_is_not_a_crash(tmp_path, caplog):
    segment = await write_records(tmp_path)
    records = scan_segment(segment, None).records
    # The database has taken records 1 to 6; then the file loses everything from the
    # middle of record 4 on: no crash of the gateway can do that (6 was fsync'd,
    # acknowledged and written to the database before the ledger said so).
    (tmp_path / "ledger").write_text("6\n")
    with segment.open("r+b") as f:
        f.truncate(records[3].offset + 30)
    caplog.set_level(logging.WARNING)
    spool, notes = await reopen(tmp_path)
    assert spool.records_recovered == 0
    (note,) = notes
    assert "not by a crash" in note.reason, note.reason
    assert "records 4 to 6 (3) were in the part cut off (the database has them)" in note.reason
    assert "any records after them are lost, acknowledged or not" in note.reason
    assert "never acknowledged" not in note.reason
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [note.reason]


async def test_a_record_that_is_not_the_next_one_is_damage_not_a_torn_append(tmp_path):
    segment = await write_records(tmp_path)
    records = scan_segment(segment, None).records
    # The last record's header rewritten to say it is record 99 (and longer than the
    # file): the spool would have been writing record 10 there.
    last = records[-1]
    data = bytearray(segment.read_bytes())
    length, crc, _, ts = RECORD_HEADER.unpack_from(data, last.offset)
    RECORD_HEADER.pack_into(data, last.offset, length + 100, crc, 99, ts)
    segment.write_bytes(bytes(data))
    _, notes = await reopen(tmp_path)
    (note,) = notes
    assert "record 99 where 10 was next: not a record being written" in note.reason
    assert "disk damage?" in note.reason
    assert "never acknowledged" not in note.reason


async def test_the_crash_case_keeps_every_whole_record(tmp_path):
    """What a kill mid-append leaves: the records before it whole, the torn one gone,
    the numbering going on after it."""
    segment = await write_records(tmp_path)
    last = scan_segment(segment, None).records[-1]
    with segment.open("r+b") as f:
        f.truncate(last.offset + last.size - 1)
    spool, notes = await reopen(tmp_path)
    (note,) = notes
    assert "at least 1 byte cut off" in note.reason
    assert "If the gateway was killed or lost power while writing it" in note.reason
    assert spool.records_recovered == RECORDS - 1
    task = asyncio.create_task(spool.run())
    assert spool.add(line(999)) == RECORDS  # record 10 was never durable: its number again
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
