"""The segment files of a log: appending records durably, reading the files back at
start, cutting what is damaged, deleting what every reader has.

Files under a log's directory: `<first seq, 20 digits>.seg`, oldest first by name.
Records (storage/log/segment.py) are appended to the newest segment until it would
grow past `segment_max`; a new one then begins with the record that did not fit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from meter_gateway.storage.log.commit import Committed, GroupCommit
from meter_gateway.storage.log.segment import ScanResult, append_durably, scan_segment

__all__ = [
    "SEGMENT_SUFFIX",
    "TORN_TAIL_MAX",
    "LogStats",
    "Segment",
    "Segmented",
    "Segments",
    "first_seq",
    "torn_or_damaged",
]

SEGMENT_SUFFIX = ".seg"

#: Past this much unreadable data at the end of the last segment, it is damage: one
#: batch being appended when the gateway stopped is rarely so large.
TORN_TAIL_MAX = 1 << 20


@dataclass(slots=True)
class Segment:
    path: Path
    first: int  # the first record's seq (also in the name)
    last: int  # the last record's seq so far
    size: int  # bytes of whole records


def torn_or_damaged(res: ScanResult, is_last: bool, expected: int | None, consumed: int) -> str:
    """What a segment that did not read to its end is:

    - "torn": what a crash leaves, the batch being appended at the end of the last
      segment: never fsync'd, so nothing in it was acknowledged or delivered;
    - "cut": the file ends short, but a reader had already taken records from the
      part that is gone (`consumed` reaches the record that should come next,
      `expected`): it was cut after it was written (disk damage, a copy or restore
      cut short), and what followed them is lost;
    - "damaged": bytes inside that cannot be read (or a tail too odd to be a crash's).

    A file cut by anything else can look torn too: the caller's message says the file
    cannot tell which."""
    if is_last and expected is not None and consumed >= expected:
        return "cut"
    unexpected = res.torn_seq is not None and expected is not None and res.torn_seq != expected
    if (
        is_last
        and not unexpected
        and (res.torn_size is not None or res.cut_bytes > 0 or res.bad_bytes < TORN_TAIL_MAX)
    ):
        return "torn"
    return "damaged"


class Segments:
    """The segments of one log directory and the descriptor of the one appended to."""

    def __init__(
        self,
        name: str,
        directory: Path,
        *,
        segment_bytes: int = 16 << 20,
        max_bytes: int = 1 << 30,
        log: logging.Logger,
    ) -> None:
        self.name = name  # starts log lines
        self.directory = directory
        self._log = log
        self.bound(segment_bytes, max_bytes)
        self.files: list[Segment] = []  # oldest first
        self.current: Segment | None = None  # appended to
        self.bytes = 0
        self._fd: int | None = None

    def bound(self, segment_bytes: int, max_bytes: int) -> None:
        """Segments of `segment_bytes`, fewer if need be so that several fit in
        `max_bytes`: the oldest can go while the rest waits (a segment is deleted only
        when every reader is past all of it)."""
        self.max_bytes = max_bytes
        self.segment_max = max(min(segment_bytes, max_bytes // 8), 64)

    def scan(
        self, *, contiguous: bool, on_damage: Callable[[Path, ScanResult, bool], None]
    ) -> list[tuple[Path, ScanResult]]:
        """Read every segment from its start (blocking: at start, in a worker thread).
        `contiguous`: a segment's first record must follow the previous segment's last
        (else only the order within a segment is checked, and a missing segment is no
        damage). Where a segment does not read to its end, `on_damage(path, result,
        is_last)` is called and the file is cut after its last whole record, so the next
        start does not report it again. Returns each segment with what it holds; the
        caller `keep()`s those it goes on with."""
        self.directory.mkdir(parents=True, exist_ok=True)
        paths = sorted(self.directory.glob(f"*{SEGMENT_SUFFIX}"))
        out = []
        expect: int | None = None
        for i, path in enumerate(paths):
            res = scan_segment(path, expect if contiguous else None)
            if res.problem is not None:
                on_damage(path, res, i == len(paths) - 1)
                try:
                    cut(path, res.good_bytes)
                except OSError as exc:
                    self._log.error(
                        "%s: cannot cut %s at byte %d: %s", self.name, path, res.good_bytes, exc
                    )
            # After skipped records the next segment starts where it does.
            expect = res.records[-1].seq + 1 if res.records and res.problem is None else None
            out.append((path, res))
        return out

    def keep(self, path: Path, res: ScanResult) -> None:
        """Go on with a scanned segment (the last one kept is not appended to: it may
        end where a torn record was cut)."""
        first = res.records[0].seq if res.records else first_seq(path) or 0
        last = res.records[-1].seq if res.records else first - 1
        self.files.append(Segment(path, first, last, res.good_bytes))
        self.bytes += res.good_bytes

    async def append(self, first_seq: int, last_seq: int, data: bytes) -> Segment:
        """Append whole records durably (the file's new size too, and a new segment's
        name), in a worker thread. Returns the segment written to; the records start at
        its old size. On OSError nothing of them is left (the file is cut back, an empty
        new segment removed) and the next append starts a new segment, so a record never
        follows bytes that were not written whole."""
        seg = self.current
        if seg is None or (seg.size > 0 and seg.size + len(data) > self.segment_max):
            seg = Segment(self.directory / f"{first_seq:020d}{SEGMENT_SUFFIX}", first_seq, 0, 0)
        new = seg.size == 0
        try:
            fd = self._open(seg.path, new=new)
            await asyncio.to_thread(
                append_durably, fd, seg.size, data, self.directory if new else None
            )
        except OSError:
            self.close()
            if new:
                with contextlib.suppress(OSError):
                    seg.path.unlink()
            self.current = None
            raise
        if new:
            self.files.append(seg)
        self.current = seg
        seg.last = last_seq
        seg.size += len(data)
        self.bytes += len(data)
        return seg

    def drop_oldest(self) -> Segment:
        """Delete the oldest segment (its records are no longer wanted)."""
        seg = self.files.pop(0)
        if seg is self.current:
            self.current = None
            self.close()
        with contextlib.suppress(OSError):
            seg.path.unlink()
        self.bytes -= seg.size
        return seg

    def _open(self, path: Path, *, new: bool) -> int:
        """The descriptor of the segment appended to, kept open between commits (an
        open and a close per commit were two more trips for the GIL)."""
        if self._fd is None or new:
            self.close()
            # O_TRUNC for a new segment: a file left by an earlier failed try is not ours.
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if new else 0)
            self._fd = os.open(path, flags, 0o640)
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


class LogStats(TypedDict):
    """What every segmented store reports, under the same names."""

    directory: str
    bytes: int
    max_bytes: int
    fsyncs: int
    write_errors: int
    disk_full: bool
    damaged: int  # damaged or cut records found (at start, or read back)


class Segmented(Committed):
    """A store whose records are in segments (its `_segments`), written by a group
    commit (its `_commit`)."""

    _segments: Segments
    directory: Path
    damaged: int

    def _start_log(
        self,
        name: str,
        directory: Path,
        write: Callable[[list[Any]], Awaitable[int]],
        held: str,
        log: logging.Logger,
        *,
        retry_s: float = 1.0,
    ) -> None:
        """Make the segments and their writer; `name` starts their log lines, `held`
        says what waits in memory while the disk refuses writes ("N <held>")."""
        self._segments = Segments(name, directory, log=log)
        self._commit = GroupCommit(
            name, directory, write, log=log, waiting=lambda n: f"{n} {held}", retry_s=retry_s
        )

    @property
    def bytes(self) -> int:
        """Bytes of whole records on disk."""
        return self._segments.bytes

    @property
    def disk_full(self) -> bool:
        """The disk refused the last write for want of space."""
        return self._commit.disk_full

    def log_stats(self) -> LogStats:
        return {
            "directory": str(self.directory),
            "bytes": self.bytes,
            "max_bytes": self._segments.max_bytes,
            "fsyncs": self.fsyncs,
            "write_errors": self.write_errors,
            "disk_full": self.disk_full,
            "damaged": self.damaged,
        }


def cut(path: Path, size: int) -> None:
    """Cut a segment after its last whole record (an OSError is the caller's to log)."""
    with path.open("r+b") as f:
        f.truncate(size)
        os.fsync(f.fileno())


def first_seq(path: Path) -> int | None:
    """The first record's seq, from the segment's name (`<seq, 20 digits>.seg`)."""
    stem = path.stem
    return int(stem) if stem.isascii() and stem.isdigit() and len(stem) <= 20 else None
