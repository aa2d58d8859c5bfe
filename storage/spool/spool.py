"""The spool: readings are durable here before any source acknowledges them.

    pipeline --add(line)--> [pending] --group commit: write + fsync--> segment files
                                                                     |
    database <--BatchWriter <--feed (from memory, or read back)------+
                     \\--done--> release: the ledger moves, drained segments go

The spool is a log (storage/log: group commit, segments, marks) with one reader,
the database writer, whose cursor is the `ledger` file.

- `add()` returns the sequence number of the record the line will be in; `durable`
  is the last record on disk. One fsync serves every line that arrived while the
  previous one ran (group commit), so the cost of durability does not grow with the
  message rate.
- A record leaves the spool only after the database accepted all its lines (or
  refused them for good: those are in the dead-letter store). The `ledger` file
  holds the last record released; after a crash, everything after it is written
  again. Writes are idempotent (the same reading is the same point), so this
  recovery stores nothing twice.
- Bounded by `max_bytes`: at the bound, or when the disk refuses writes, the spool
  says `paused` (sources stop acknowledging, polling waits) until it is below half.
- On start, every segment is checked record by record. A record cut short at the end
  of the last segment is cut off: a crash while it was written leaves one (never
  acknowledged, so the broker still has it), and so does a file cut by anything else
  (then acknowledged records may be gone with it); the message says how many bytes
  are missing and which it is when the ledger or the record's number can tell
  (`damage_reason`). A damaged record inside is reported, and what follows it in
  that segment is skipped. Each case is logged and noted in the dead-letter store;
  nothing crashes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from meter_gateway.storage.log.marks import read_mark, write_mark
from meter_gateway.storage.log.segment import (
    Record,
    ScanResult,
    encode_record,
    read_record,
    read_records,
)
from meter_gateway.storage.log.segments import LogStats, Segmented, first_seq, torn_or_damaged

__all__ = ["Spool", "SpoolNote", "SpoolStats", "damage_reason"]

log = logging.getLogger("meter_gateway.spool")

LEDGER = "ledger"


class SpoolStats(LogStats):
    records: int
    oldest_age_s: float
    durable_seq: int
    released_seq: int
    paused: bool
    records_recovered: int
    lines_recovered: int


@dataclass(frozen=True, slots=True)
class SpoolNote:
    """Something found on disk an operator should know of (for the dead-letter store)."""

    reason: str
    path: str


def damage_reason(path: Path, res: ScanResult, is_last: bool, released: int) -> tuple[str, bool]:
    """What a segment that did not read to its end tells an operator, and whether it
    may be the one torn record a crash leaves (True) or is damage done to the file
    afterwards (False).

    A crash (kill, power cut) can leave only the record being appended, at the end of
    the last segment: it was not yet fsync'd, so nothing in it was acknowledged. A file
    cut by anything else (disk damage, a copy or restore cut short, a truncation) can
    end the same way, but lose records that were acknowledged long before. The file
    tells them apart only sometimes: a record the ledger says the database already has
    was in the part cut off (`released`), or the record at the end is not the one that
    would have come next. Otherwise the message says both, and that the file cannot
    tell."""
    last = res.records[-1].seq if res.records else None
    after = f"after record {last}" if last is not None else "before its first whole record"
    where = f"{path} at byte {res.good_bytes:,}, {after}"
    if res.torn_size is not None:
        left = res.torn_size - res.cut_bytes
        cut = (
            f"at least {_bytes(res.cut_bytes)} cut off: record {res.torn_seq} declares "
            f"{res.torn_size:,} bytes and {left:,} are left"
        )
    elif res.cut_bytes:
        cut = (
            f"at least {_bytes(res.cut_bytes)} cut off: the rest of the next record's "
            "header, and all of its payload, whose length the file no longer says"
        )
    else:
        cut = f"{res.bad_bytes:,} bytes there cannot be read"
    # The record that comes next: after the last whole one, or the segment's first (its
    # name); a released record from there on was in the part cut off.
    expected = last + 1 if last is not None else first_seq(path)
    kind = torn_or_damaged(res, is_last, expected, released)
    if kind == "cut":
        assert expected is not None
        reason = (
            f"spool: {res.problem} at the end of {where}; {cut}. The ledger says record "
            f"{released} is in the database already, so the file was cut after it was "
            f"written (disk damage, a copy or restore cut short), not by a crash: records "
            f"{expected} to {released} ({released - expected + 1:,}) were in the part cut "
            "off (the database has them); "
            "any records after them are lost, acknowledged or not, and the file cannot say "
            "how many. Cut off."
        )
    elif kind == "torn":
        reason = (
            f"spool: {res.problem} at the end of {where}; {cut}. Its readings are lost "
            "from the spool. If the gateway was killed or lost power while writing it "
            "(the only way it leaves a record cut short), it was never acknowledged and "
            "its messages are still at the broker, which sends them again; if the file was "
            "cut by anything else (disk damage, a copy or restore cut short), acknowledged "
            "records may have been in the part cut off and are lost: the file cannot tell "
            "which. Cut off."
        )
    else:
        why = ""
        if res.torn_seq is not None and expected is not None and res.torn_seq != expected:
            why = f" (record {res.torn_seq} where {expected} was next: not a record being written)"
        reason = (
            f"spool: {res.problem} in {where}{why}; the {res.bad_bytes:,} bytes after it "
            "cannot be read and are skipped (disk damage?); the readings in them are lost "
            "unless their source sends them again"
        )
    return reason, kind == "torn"


def _bytes(n: int) -> str:
    return "1 byte" if n == 1 else f"{n:,} bytes"


class Feed(Protocol):
    """The database writer, as the spool sees it."""

    @property
    def pending(self) -> int: ...

    @property
    def lines_done(self) -> int: ...

    def extend(self, lines: list[str]) -> None: ...


class Spool(Segmented):
    """Append-only segments under `directory`, group-committed, drained in order."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = 1 << 30,
        segment_bytes: int = 16 << 20,
        feed_lines: int = 200_000,
        on_note: Callable[[SpoolNote], None] | None = None,
        on_pause: Callable[[bool, str], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self._max = max_bytes
        held = "readings wait in memory, sources are paused (nothing is acknowledged)"
        self._start_log("spool", self.directory, self._write, held, log)
        self._segments.bound(segment_bytes, max_bytes)
        self._feed_lines = feed_lines  # lines handed to the writer at most at once
        self._on_note = on_note or (lambda note: None)
        self._on_pause = on_pause or (lambda paused, why: None)
        # Called (on the loop) before each group commit is written: what derives from
        # the lines being committed reaches the OS before they are acknowledged.
        self.before_commit: Callable[[], None] | None = None
        # The hot path appends here directly (one attribute lookup less per line).
        self._pending: list[str] = self._commit.pending
        self._next_seq = 1  # the record being built
        self._records: deque[Record] = deque()  # committed, not yet released, in order
        self._fed = 0  # how many of _records (from the left) the writer has
        self._fed_lines_end: deque[tuple[int, int]] = deque()  # (seq, writer's line mark)
        self._feed_mark = 0  # the writer's line count once what was fed is done
        self._cached = 0  # lines of unfed records still held in memory
        self._released = 0  # last record the database has
        self._ledger_written = 0
        self._committed = asyncio.Event()  # wakes the feeder
        self._emptied = asyncio.Event()  # set while nothing waits for the database
        self._emptied.set()
        self._resumed = asyncio.Event()
        self._resumed.set()
        # Counters for metrics.
        self.records_recovered = 0
        self.lines_recovered = 0
        self.damaged = 0

    # -- the hot path -----------------------------------------------------------------
    def add(self, line: str) -> int:
        """Take a line; return the record it will be durable in (see `durable`)."""
        pending = self._pending
        pending.append(line)
        if len(pending) == 1:
            self._commit.wake()
        return self._next_seq

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    @property
    def disk_full(self) -> bool:
        """The disk refuses writes (full, or failing): lines wait in memory."""
        return self._commit.failing

    async def wait_resumed(self) -> None:
        await self._resumed.wait()

    # -- state --------------------------------------------------------------------------
    @property
    def records(self) -> int:
        """Records on disk that the database does not have yet."""
        return len(self._records)

    @property
    def lines(self) -> int:
        return sum(r.n_lines for r in self._records) + len(self._pending)

    def oldest_age_s(self) -> float:
        if not self._records:
            return 0.0
        return max(0.0, (time.time_ns() - self._records[0].committed_ns) / 1e9)

    def stats(self) -> SpoolStats:
        return {
            **self.log_stats(),
            "records": self.records,
            "oldest_age_s": round(self.oldest_age_s(), 1),
            "durable_seq": self.durable,
            "released_seq": self._released,
            "paused": self.paused,
            "records_recovered": self.records_recovered,
            "lines_recovered": self.lines_recovered,
        }

    # -- start: recover what is on disk ---------------------------------------------------
    async def open(self) -> None:
        await asyncio.to_thread(self._recover)
        if self._records:
            self._emptied.clear()
            log.info(
                "spool: %d readings in %d records not yet in the database (from %s); "
                "writing them first",
                self.lines_recovered,
                self.records_recovered,
                self.directory,
            )
        self._check_bound()

    def _recover(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # Without the ledger everything on disk is written again: no loss, and
        # idempotent writes make it no duplicate either.
        released = read_mark(self.directory / LEDGER, log) or 0
        self._released = self._ledger_written = released
        scanned = self._segments.scan(
            contiguous=True,
            on_damage=lambda path, res, is_last: self._damaged(path, res, is_last, released),
        )
        last_seq = released
        for i, (path, res) in enumerate(scanned):
            keep = [r for r in res.records if r.seq > released]
            if res.records:
                last_seq = max(last_seq, res.records[-1].seq)
            if not keep and (res.records or i < len(scanned) - 1):
                with contextlib.suppress(OSError):
                    path.unlink()  # wholly in the database already
                continue
            self._segments.keep(path, res)
            self._records.extend(keep)  # lines read back from disk when the writer wants them
            self.records_recovered += len(keep)
            self.lines_recovered += sum(r.n_lines for r in keep)
        self._next_seq = last_seq + 1
        self._commit.durable = last_seq

    def _damaged(self, path: Path, res: ScanResult, is_last: bool, released: int) -> None:
        self.damaged += 1
        reason, torn = damage_reason(path, res, is_last, released)
        log.log(logging.WARNING if torn else logging.ERROR, "%s", reason)
        self._on_note(SpoolNote(reason, str(path)))

    # -- group commit ---------------------------------------------------------------------
    async def run(self) -> None:
        """Commit what arrives, until `close()`."""
        await self._commit.run()

    async def commit(self) -> bool:
        """Write what is pending; False when the disk refused it (it stays pending)."""
        return await self._commit.commit()

    async def _write(self, lines: list[str]) -> int:
        """One record of every line pending, durable; its seq."""
        if self.before_commit is not None:
            self.before_commit()
        seq = self._next_seq
        self._next_seq += 1
        now = time.time_ns()
        data = encode_record(seq, now, "\n".join(lines).encode())
        try:
            seg = await self._segments.append(seq, seq, data)
        except OSError:
            # The lines go back to pending (they are nobody's but ours) and are tried
            # again; sources stay unacknowledged meanwhile, and are paused so memory
            # stays bounded.
            self._next_seq = seq
            self._check_bound(failing=True)
            raise
        rec = Record(seq, seg.path, seg.size - len(data), len(data), len(lines), now, lines)
        self._records.append(rec)
        self._emptied.clear()
        self._cached += len(lines)
        self._committed.set()
        self._trim_cache()
        self._check_bound(failing=False)
        return seq

    def _check_bound(self, failing: bool | None = None) -> None:
        if failing is None:
            failing = self._commit.failing
        full = failing or self.bytes >= self._max
        if full and self._resumed.is_set():
            self._resumed.clear()
            why = (
                "the disk is full"
                if failing
                else f"{self.bytes:,} bytes reached spool_max_bytes ({self._max:,})"
            )
            log.warning(
                "spool: %s; pausing sources (no acknowledgements, no polling) until the "
                "database has taken half of it",
                why,
            )
            self._on_pause(True, why)
        elif not full and not self._resumed.is_set() and self.bytes < self._max // 2:
            self._resumed.set()
            log.info("spool: below half of its bound (%s bytes); sources resume", f"{self.bytes:,}")
            self._on_pause(False, "")

    def _trim_cache(self) -> None:
        """Drop the lines of unfed records from memory past the bound (disk has them)."""
        if self._cached <= self._feed_lines:
            return
        for rec in list(self._records)[self._fed :]:
            if self._cached <= self._feed_lines // 2:
                break
            if rec.lines is not None:
                self._cached -= rec.n_lines
                rec.lines = None

    # -- drain: feed the writer, release what it has written --------------------------------
    async def feed(self, writer: Feed) -> None:
        """Hand records to the writer in order, as it has room; until cancelled."""
        self._feed_mark = writer.lines_done  # the writer counts every line it finishes
        while True:
            self._release(writer.lines_done)
            if self._fed < len(self._records) and writer.pending < self._feed_lines:
                rec = self._records[self._fed]
                lines = rec.lines
                if lines is None:
                    # Back from disk (after a restart, or past the memory bound): the
                    # following records of the same segment come along in one read.
                    batch = self._readable_run(self._feed_lines - writer.pending)
                    try:
                        read = await asyncio.to_thread(read_records, batch)
                    except (OSError, UnicodeDecodeError, ValueError):
                        try:  # one by one, to skip only what is damaged
                            lines = await asyncio.to_thread(read_record, rec)
                        except (OSError, UnicodeDecodeError, ValueError) as exc:
                            self._unreadable(rec, exc)
                            continue
                    else:
                        for r, r_lines in zip(batch[1:], read[1:], strict=True):
                            r.lines = r_lines
                            self._cached += r.n_lines
                        lines = read[0]
                else:
                    self._cached -= rec.n_lines
                    rec.lines = None
                writer.extend(lines)
                self._feed_mark += len(lines)
                self._fed_lines_end.append((rec.seq, self._feed_mark))
                self._fed += 1
                continue
            # Nothing to hand over: wait for a commit, or look again at the writer's
            # progress shortly (releases free disk; they do not hold any ack).
            self._committed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._committed.wait(), 0.05)

    def _readable_run(self, room: int) -> list[Record]:
        """The next unfed records from one segment with no lines in memory, up to `room`."""
        first = self._records[self._fed]
        run = [first]
        lines = first.n_lines
        for i in range(self._fed + 1, len(self._records)):
            rec = self._records[i]
            if rec.path != first.path or rec.lines is not None or lines + rec.n_lines > room:
                break
            run.append(rec)
            lines += rec.n_lines
        return run

    def _unreadable(self, rec: Record, exc: Exception) -> None:
        self.damaged += 1
        reason = (
            f"spool: record {rec.seq} in {rec.path} cannot be read back ({exc}); its "
            f"{rec.n_lines} readings are skipped"
        )
        log.error("%s", reason)
        self._on_note(SpoolNote(reason, str(rec.path)))
        del self._records[self._fed]  # nothing more can be had from it

    def _release(self, done: int) -> None:
        """Records whose every line the writer has finished leave the spool."""
        ends = self._fed_lines_end
        released = self._released
        if not ends and not self._records and self._segments.files and not self._commit.writing:
            self._drop_segments()  # all written: free the disk (a full one needs it)
            self._check_bound()
        while ends and ends[0][1] <= done:
            seq, _ = ends.popleft()
            self._records.popleft()
            self._fed -= 1
            released = seq
        if released != self._released:
            self._released = released
            self._drop_segments()
            self._write_ledger(released)
            self._check_bound()
            if not self._records:
                self._emptied.set()

    async def wait_empty(self) -> None:
        """Until the database has every record (none is left to write)."""
        await self._emptied.wait()

    def settle(self, done: int) -> None:
        """Release what the writer finished after the feeder stopped (at shutdown)."""
        self._release(done)
        if self._released != self._ledger_written:
            self._write_ledger(self._released)

    def _drop_segments(self) -> None:
        """Delete segments every record of which the database has (all of them, once
        nothing waits: a record that could not be read back is not released)."""
        segments = self._segments
        done = self._released if self._records else self._next_seq
        while segments.files:
            seg = segments.files[0]
            # The one being appended to goes only when no commit is writing to it.
            if seg.last > done or (seg is segments.current and self._commit.writing):
                break
            segments.drop_oldest()

    def _write_ledger(self, released: int) -> None:
        try:
            write_mark(self.directory / LEDGER, released, sync=False)
            self._ledger_written = released
        except OSError as exc:
            # A stale ledger only means records are written again after a restart.
            log.debug("spool: cannot update the ledger: %s", exc)

    async def close(self) -> None:
        """Commit what is pending (retrying a little while the disk is full)."""
        left = await self._commit.close()
        if left:
            log.error(
                "spool: %d readings could not be written to %s at shutdown; their MQTT "
                "messages were not acknowledged and stay at the broker",
                left,
                self.directory,
            )
        if self._released != self._ledger_written:
            self._write_ledger(self._released)
        self._segments.close()
