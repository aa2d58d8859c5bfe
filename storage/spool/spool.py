"""The spool: readings are durable here before any source acknowledges them.

    pipeline --add(line)--> [pending] --group commit: write + fsync--> segment files
                                                                     |
    database <--BatchWriter <--feed (from memory, or read back)------+
                     \\--done--> release: the ledger moves, drained segments go

- `add()` returns the sequence number of the record the line will be in; `durable`
  is the last record on disk. One fsync serves every line that arrived while the
  previous one ran (group commit), so the cost of durability does not grow with the
  message rate.
- A record leaves the spool only after the database accepted all its lines (or
  refused them for good: those are in the dead-letter store). The `ledger` file
  holds the last record released; after a crash, everything after it is written
  again. Writes are idempotent (the same reading is the same point), so a
  replay stores nothing twice.
- Bounded by `max_bytes`: at the bound, or when the disk is full, the spool says
  `paused` (sources stop acknowledging, polling waits) until it is below half.
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
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from meter_gateway.storage.spool.segment import (
    Record,
    ScanResult,
    append_durably,
    encode_record,
    read_record,
    read_records,
    scan_segment,
)

__all__ = ["Spool", "SpoolNote", "damage_reason"]

log = logging.getLogger("meter_gateway.spool")

SEGMENT_SUFFIX = ".seg"
LEDGER = "ledger"


@dataclass(frozen=True, slots=True)
class SpoolNote:
    """Something found on disk an operator should know of (for the dead-letter store)."""

    reason: str
    path: str


#: Past this much unreadable data at the end of the last segment, it is damage: one
#: record being appended when the gateway stopped is rarely so large.
TORN_TAIL_MAX = 1 << 20


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
    expected = last + 1 if last is not None else _first_seq(path)
    beyond = expected is not None and released >= expected
    unexpected = res.torn_seq is not None and expected is not None and res.torn_seq != expected
    torn = (
        is_last
        and not beyond
        and not unexpected
        and (res.torn_size is not None or res.cut_bytes > 0 or res.bad_bytes < TORN_TAIL_MAX)
    )
    if beyond:
        reason = (
            f"spool: {res.problem} at the end of {where}; {cut}. The ledger says record "
            f"{released} is in the database already, so the file was cut after it was "
            f"written (disk damage, a copy or restore cut short), not by a crash: records "
            f"{expected} to {released} ({released - expected + 1:,}) were in the part cut "
            "off (the database has them); "
            "any records after them are lost, acknowledged or not, and the file cannot say "
            "how many. Cut off."
        )
    elif torn:
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
        if unexpected:
            why = f" (record {res.torn_seq} where {expected} was next: not a record being written)"
        reason = (
            f"spool: {res.problem} in {where}{why}; the {res.bad_bytes:,} bytes after it "
            "cannot be read and are skipped (disk damage?); the readings in them are lost "
            "unless their source sends them again"
        )
    return reason, torn


def _bytes(n: int) -> str:
    return "1 byte" if n == 1 else f"{n:,} bytes"


def _first_seq(path: Path) -> int | None:
    """The first record's seq, from the segment's name (`<seq, 20 digits>.seg`)."""
    stem = path.stem
    return int(stem) if stem.isascii() and stem.isdigit() and len(stem) <= 20 else None


class Feed(Protocol):
    """The database writer, as the spool sees it."""

    @property
    def pending(self) -> int: ...

    @property
    def lines_done(self) -> int: ...

    def extend(self, lines: list[str]) -> None: ...


class Spool:
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
        # Several segments fit in the bound, so released ones can be deleted while the
        # rest waits (a segment goes only when all of it is in the database).
        self._segment_max = max(min(segment_bytes, max_bytes // 8), 64)
        self._feed_lines = feed_lines  # lines handed to the writer at most at once
        self._on_note = on_note or (lambda note: None)
        self._on_pause = on_pause or (lambda paused, why: None)
        # Called (on the loop) before each group commit is written: what derives from
        # the lines being committed reaches the OS before they are acknowledged.
        self.before_commit: Callable[[], None] | None = None
        self._pending: list[str] = []
        self._next_seq = 1  # the record being built
        self.durable = 0  # last record on disk
        self._records: deque[Record] = deque()  # committed, not yet released, in order
        self._fed = 0  # how many of _records (from the left) the writer has
        self._fed_lines_end: deque[tuple[int, int]] = deque()  # (seq, writer's line mark)
        self._feed_mark = 0  # the writer's line count once what was fed is done
        self._cached = 0  # lines of unfed records still held in memory
        self._segment: Path | None = None
        self._segment_size = 0
        self._segments: dict[Path, int] = {}  # path -> size
        self.bytes = 0
        self._released = 0  # last record the database has
        self._ledger_written = 0
        self._wakeup = asyncio.Event()
        self._durable_changed = asyncio.Event()
        self._committed = asyncio.Event()  # wakes the feeder
        self._emptied = asyncio.Event()  # set while nothing waits for the database
        self._emptied.set()
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._lock = asyncio.Lock()
        self._fd: int | None = None
        self._fd_path: Path | None = None
        self._closing = False
        self.disk_full = False
        self._failing_since: float | None = None
        # Counters for metrics.
        self.fsyncs = 0
        self.write_errors = 0
        self.records_replayed = 0
        self.lines_replayed = 0
        self.damaged = 0

    # -- the hot path -----------------------------------------------------------------
    def add(self, line: str) -> int:
        """Take a line; return the record it will be durable in (see `durable`)."""
        pending = self._pending
        pending.append(line)
        if len(pending) == 1:
            self._wakeup.set()
        return self._next_seq

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    async def wait_resumed(self) -> None:
        await self._resumed.wait()

    async def wait_durable(self, seq: int) -> None:
        """Until record `seq` is on disk (long while the disk is full)."""
        while self.durable < seq:
            self._wakeup.set()
            self._durable_changed.clear()
            await self._durable_changed.wait()

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

    def stats(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "bytes": self.bytes,
            "max_bytes": self._max,
            "records": self.records,
            "oldest_age_s": round(self.oldest_age_s(), 1),
            "durable_seq": self.durable,
            "released_seq": self._released,
            "paused": self.paused,
            "disk_full": self.disk_full,
            "fsyncs": self.fsyncs,
            "write_errors": self.write_errors,
            "records_replayed": self.records_replayed,
            "lines_replayed": self.lines_replayed,
            "damaged": self.damaged,
        }

    # -- start: recover what is on disk ---------------------------------------------------
    async def open(self) -> None:
        await asyncio.to_thread(self._recover)
        if self._records:
            self._emptied.clear()
            log.info(
                "spool: %d readings in %d records not yet in the database (from %s); "
                "writing them first",
                self.lines_replayed,
                self.records_replayed,
                self.directory,
            )
        self._check_bound()

    def _recover(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        released = self._read_ledger()
        self._released = self._ledger_written = released
        paths = sorted(self.directory.glob(f"*{SEGMENT_SUFFIX}"))
        expect: int | None = None
        last_seq = released
        for i, path in enumerate(paths):
            res = scan_segment(path, expect)
            is_last = i == len(paths) - 1
            if res.problem is not None:
                self._damaged(path, res, is_last, released)
            keep = [r for r in res.records if r.seq > released]
            if res.records:
                last_seq = max(last_seq, res.records[-1].seq)
                expect = res.records[-1].seq + 1
            if res.problem is not None:
                expect = None  # records were skipped: the next segment starts where it does
            if not keep and res.records and not is_last:
                with contextlib.suppress(OSError):
                    path.unlink()  # wholly in the database already
                continue
            size = res.good_bytes
            self._segments[path] = size
            self.bytes += size
            self._records.extend(keep)  # lines read back from disk when the writer wants them
            self.records_replayed += len(keep)
            self.lines_replayed += sum(r.n_lines for r in keep)
            if is_last:
                self._segment, self._segment_size = path, size
        self._next_seq = last_seq + 1
        self.durable = last_seq

    def _damaged(self, path: Path, res: ScanResult, is_last: bool, released: int) -> None:
        self.damaged += 1
        reason, torn = damage_reason(path, res, is_last, released)
        log.log(logging.WARNING if torn else logging.ERROR, "%s", reason)
        self._on_note(SpoolNote(reason, str(path)))
        # Cut the file there so the next start does not report it again.
        try:
            with path.open("r+b") as f:
                f.truncate(res.good_bytes)
                os.fsync(f.fileno())
        except OSError as exc:
            log.error("spool: cannot cut %s at byte %d: %s", path, res.good_bytes, exc)

    def _read_ledger(self) -> int:
        try:
            text = (self.directory / LEDGER).read_text().strip()
            return int(text) if text else 0
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            # Without the ledger everything on disk is written again: no loss, and
            # idempotent writes make it no duplicate either.
            log.warning("spool: cannot read the ledger (%s); replaying every segment", exc)
            return 0

    # -- group commit ---------------------------------------------------------------------
    async def run(self) -> None:
        """Commit what arrives, until `close()`."""
        while True:
            if not self._pending and not self._closing:
                await self._wakeup.wait()
            self._wakeup.clear()
            if not await self.commit():
                # The disk refused it. Wait without the lock held, so that the drain
                # can delete segments the database has (which is what makes room).
                await asyncio.sleep(1.0)
            if self._closing and not self._pending:
                return

    async def commit(self) -> bool:
        """Write what is pending; False when the disk refused it (it stays pending)."""
        async with self._lock:
            return await self._commit()

    async def _commit(self) -> bool:
        if not self._pending:
            return True
        if self.before_commit is not None:
            self.before_commit()
        lines, self._pending = self._pending, []
        seq = self._next_seq
        self._next_seq += 1
        now = time.time_ns()
        data = encode_record(seq, now, "\n".join(lines).encode())
        path, offset = self._segment, self._segment_size
        if path is None or offset + len(data) > self._segment_max:
            path, offset = self.directory / f"{seq:020d}{SEGMENT_SUFFIX}", 0
        try:
            fd = self._open(path)
            # A new segment's name is made durable with its first record.
            await asyncio.to_thread(
                append_durably, fd, offset, data, self.directory if offset == 0 else None
            )
        except OSError as exc:
            if offset == 0:
                self._close_fd()
                with contextlib.suppress(OSError):
                    path.unlink()  # leave no empty segment behind
            # Keep the lines (they are nobody's but ours) and try again; sources stay
            # unacknowledged meanwhile, and are paused so memory stays bounded.
            self._pending[:0] = lines
            self._next_seq = seq
            self._disk_problem(exc)
            return False
        self.fsyncs += 1
        self._segment, self._segment_size = path, offset + len(data)
        self._segments[path] = self._segment_size
        self.bytes += len(data)
        rec = Record(seq, path, offset, len(data), len(lines), now, lines)
        self._records.append(rec)
        self._emptied.clear()
        self._cached += len(lines)
        self.durable = seq
        self._durable_changed.set()
        self._committed.set()
        if self._failing_since is not None:
            log.info(
                "spool: writing to %s again after %.0f s",
                self.directory,
                time.monotonic() - self._failing_since,
            )
            self._failing_since = None
            self.disk_full = False
        self._trim_cache()
        self._check_bound()
        return True

    def _disk_problem(self, exc: OSError) -> None:
        self.write_errors += 1
        self.disk_full = True
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.error(
                "spool: cannot write to %s: %s; %d readings wait in memory, sources are "
                "paused (nothing is acknowledged) and the write is retried every second",
                self.directory,
                exc.strerror or exc,
                len(self._pending),
            )
        else:
            log.debug("spool: still cannot write to %s: %s", self.directory, exc)
        self._check_bound()

    def _check_bound(self) -> None:
        full = self.disk_full or self.bytes >= self._max
        if full and self._resumed.is_set():
            self._resumed.clear()
            why = (
                "the disk is full"
                if self.disk_full
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
        if not ends and not self._records and self._segments and not self._lock.locked():
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
        """Delete segments every record of which the database has."""
        first_unreleased = self._records[0].path if self._records else None
        for path in sorted(self._segments):
            if path == first_unreleased:
                break
            if path == self._segment:
                # The one being appended to goes only when nothing is being written
                # (the commit holds the lock across its write) and all of it is done.
                if first_unreleased is not None or self._lock.locked():
                    break
                self._segment, self._segment_size = None, 0
                self._close_fd()
            with contextlib.suppress(OSError):
                path.unlink()
            self.bytes -= self._segments.pop(path)

    def _write_ledger(self, released: int) -> None:
        tmp = self.directory / (LEDGER + ".tmp")
        try:
            with tmp.open("w") as f:
                f.write(f"{released}\n")
            tmp.replace(self.directory / LEDGER)
            self._ledger_written = released
        except OSError as exc:
            # A stale ledger only means records are written again after a restart.
            log.debug("spool: cannot update the ledger: %s", exc)

    async def close(self) -> None:
        """Commit what is pending (retrying a little while the disk is full)."""
        self._closing = True
        self._wakeup.set()
        for _ in range(5):
            await self.commit()
            if not self._pending:
                break
        if self._pending:
            log.error(
                "spool: %d readings could not be written to %s at shutdown; their MQTT "
                "messages were not acknowledged and stay at the broker",
                len(self._pending),
                self.directory,
            )
        if self._released != self._ledger_written:
            self._write_ledger(self._released)
        self._close_fd()

    def _open(self, path: Path) -> int:
        """The descriptor of the segment being appended to, kept open between commits
        (an open and a close per commit were two more trips for the GIL)."""
        if self._fd is None or self._fd_path != path:
            self._close_fd()
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            self._fd_path = path
        return self._fd

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = self._fd_path = None
