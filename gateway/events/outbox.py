"""The event outbox: every event is on disk before anyone is told of it.

    engine --append(ev)--> [pending] --group commit: write + fdatasync--> segments
                                                                          |
    MQTT, database, webhook <--deliver(name, send)-- each at its own cursor

- `append()` is synchronous and never blocks: it gives the event its sequence number
  and queues it. `run()` writes what is queued in one write and one fdatasync (group
  commit); `durable` is the last sequence number on disk, `wait_durable(seq)` waits
  for it. An event is handed to a destination only once it is durable, so a crash
  never leaves a subscriber knowing of an event the gateway forgot.
- Each destination reads the log at its own cursor, kept in `cursor.<name>` (written
  atomically after every batch it took). After a crash what was past the cursor is
  delivered again, with the same `event_id`: at least once, and subscribers dedupe.
  A slow or dead destination only grows its own backlog; the others, and `append()`,
  go on.
- The outbox is a log (storage/log: group commit, segments, marks), as the spool is:
  one record per event, a 24-byte header with a CRC over the sequence number, the
  commit time and the payload (the event's dataclass fields as JSON). On `open()`
  every segment is checked: a torn record at the end (a crash mid-write; never
  durable, so never delivered) is cut off, a damaged one is reported and what
  follows it in its segment is skipped. Both are logged; neither stops the gateway.
- A segment is deleted once every destination's cursor is past it and it is below
  the hold point (`hold()`: the engine's last snapshot, whose reconcile reads
  `events_since()`; `open(hold=...)`: what the caller's state does not cover yet,
  from the first event on before there is any snapshot). Over `max_bytes`, the oldest
  segments go even if a destination has not taken them (logged, counted in `stats()`
  as `skipped`), so one dead destination cannot fill the disk.
- A full disk does not crash anything: the commit fails, is logged once, the events
  wait in memory (at most `max_pending`; past it new ones are dropped and counted)
  and the commit is retried every `retry_s`. `wait_written(seq)` tells a caller that
  cannot wait for room (the gateway's own events) whether an event is on disk or was
  refused.

Files under `directory`: `<first seq, 20 digits>.seg`, `cursor.<destination>`, `hold`.

One module of about 670 lines: destinations, cursors, the hold point and compaction
decide together which segment may go (the log itself, group commit and segments, is
storage/log).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import orjson

from meter_gateway.gateway.events.event import Event
from meter_gateway.storage.log.marks import read_mark, write_mark
from meter_gateway.storage.log.segment import Record, ScanResult, encode_record, read_records
from meter_gateway.storage.log.segments import (
    LogStats,
    Segment,
    Segmented,
    first_seq,
    torn_or_damaged,
)

__all__ = [
    "DestinationStats",
    "Outbox",
    "OutboxStats",
    "Send",
    "backoff",
    "decode_event",
    "encode_event",
]

log = logging.getLogger("meter_gateway.events.outbox")

CURSOR_PREFIX = "cursor."
HOLD_FILE = "hold"
#: Events kept in memory once committed, so that delivery rarely reads them back.
CACHE_EVENTS = 10_000
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_FIELDS = {f.name for f in dataclasses.fields(Event)}

#: An event queued for the next commit: its seq, itself, its encoded payload.
_Queued = tuple[int, Event, bytes]

#: What `deliver()` calls with each batch of (seq, event), oldest first.
Send = Callable[[list[tuple[int, Event]]], Awaitable[None]]


def encode_event(ev: Event) -> bytes:
    """The event's dataclass fields as JSON: a field added to Event is kept too."""
    data = {f.name: getattr(ev, f.name) for f in dataclasses.fields(ev)}
    # default=str: a detail that is not JSON (a Path, a Decimal) becomes its text
    # rather than losing the event.
    return orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS)


def decode_event(payload: bytes | str) -> Event:
    """An event back from its JSON; keys Event does not know (written by a newer
    version) are ignored, missing ones take their defaults. ValueError if unusable."""
    data = orjson.loads(payload)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    try:
        return Event(**{k: v for k, v in data.items() if k in _FIELDS})
    except TypeError as exc:  # a required field missing
        raise ValueError(str(exc)) from None


class DestinationStats(TypedDict):
    cursor: int
    backlog: int
    delivered: int
    failures: int
    failing: bool
    last_error: str | None
    skipped: int


class OutboxStats(LogStats):
    appended: int
    last_seq: int
    durable: int
    pending: int
    segments: int
    hold: int | None
    dropped: int
    recovered: int
    destinations: dict[str, DestinationStats]


@dataclass(slots=True)
class _Destination:
    name: str
    cursor: int = 0  # last seq delivered
    written: int = 0  # the cursor as its file has it
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    delivered: int = 0
    failures: int = 0
    skipped: int = 0  # events dropped by the size bound before it took them
    last_error: str | None = None
    failing_since: float | None = None


class Outbox(Segmented):
    """Append-only, checksummed, group-committed log of events; each destination reads
    it at its own durable cursor."""

    def __init__(
        self,
        directory: Path,
        destinations: Sequence[str],
        *,
        max_bytes: int = 256 * 2**20,
        segment_bytes: int = 4 * 2**20,
        max_pending: int = 100_000,
        retry_s: float = 1.0,
    ) -> None:
        self.directory = Path(directory)
        for name in destinations:
            if not _NAME.fullmatch(name):
                raise ValueError(f"destination name {name!r}: letters, digits, - and _ only")
        self._dests = {name: _Destination(name) for name in destinations}
        self._max = max_bytes
        self._max_pending = max_pending
        held = f"events wait in memory (up to {max_pending:,}); none is delivered before it works"
        self._start_log("outbox", self.directory, self._write, held, log, retry_s=retry_s)
        self._segments.bound(segment_bytes, max_bytes)
        # The same list for the outbox's life.
        self._pending: list[_Queued] = self._commit.pending
        self._next_seq = 1
        self._records: list[Record] = []  # on disk, in seq order
        self._cache: dict[int, Event] = {}  # seq -> event, the newest committed ones
        self._hold: int | None = None
        self._delivered = asyncio.Event()  # some destination's cursor moved
        self._overflow_logged = False
        # Counters for metrics and the status page.
        self.appended = 0
        self.dropped = 0  # refused while the disk was full and memory at its bound
        self.damaged = 0
        self.recovered = 0

    # -- the hot path -------------------------------------------------------------------
    def append(self, ev: Event) -> int:
        """Queue an event; return its sequence number (0: dropped, see `max_pending`)."""
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error(
                    "outbox: %d events wait in memory for %s to take them again; event %s "
                    "%s (%s) is dropped (%d so far)",
                    len(self._pending),
                    self.directory,
                    ev.type,
                    ev.state,
                    ev.event_id,
                    self.dropped,
                )
            return 0
        seq = self._next_seq
        self._next_seq += 1
        # Encoded now: the caller may change the event's dicts after handing it over.
        self._pending.append((seq, ev, encode_event(ev)))
        self.appended += 1
        if len(self._pending) == 1:
            self._commit.wake()
        return seq

    @property
    def last_seq(self) -> int:
        """The highest sequence number given out."""
        return self._next_seq - 1

    async def wait_written(self, seq: int) -> bool:
        """Until event `seq` is on disk (True), or a write that held it was refused
        (False: the disk is full or failing; it stays queued and is tried again).
        Commits itself rather than waiting for `run()`, which may not run (yet)."""
        if self.durable < seq:
            await self.commit()  # takes the lock: after a commit under way, which may hold it
        return self.durable >= seq

    # -- state --------------------------------------------------------------------------
    def delivered_to(self, name: str) -> int:
        """The last seq destination `name` has taken (its cursor)."""
        return self._dests[name].cursor

    def backlog(self, name: str) -> int:
        """Events appended that destination `name` has not taken yet."""
        return max(0, self.last_seq - self._dests[name].cursor)

    def stats(self) -> OutboxStats:
        return {
            **self.log_stats(),
            "appended": self.appended,
            "last_seq": self.last_seq,
            "durable": self.durable,
            "pending": len(self._pending),
            "segments": len(self._segments.files),
            "hold": self._hold,
            "dropped": self.dropped,
            "recovered": self.recovered,
            "destinations": {
                d.name: {
                    "cursor": d.cursor,
                    "backlog": self.backlog(d.name),
                    "delivered": d.delivered,
                    "failures": d.failures,
                    "failing": d.failing_since is not None,
                    "last_error": d.last_error,
                    "skipped": d.skipped,
                }
                for d in self._dests.values()
            },
        }

    # -- start: recover what is on disk ---------------------------------------------------
    async def open(self, hold: int | None = None) -> None:
        """Recover what is on disk. `hold`: the events the caller will read back with
        `events_since(hold)` (its state covers those before); they are kept whatever the
        `hold` file says, so none is compacted before the caller has them. No state yet
        is `hold=1`: everything is kept until the first `hold()` call."""
        await asyncio.to_thread(self._recover, hold)
        self._compact()
        behind = {d.name: self.backlog(d.name) for d in self._dests.values()}
        if any(behind.values()):
            log.info(
                "outbox: %d events on disk in %s; not yet delivered: %s",
                self.recovered,
                self.directory,
                ", ".join(f"{n} {k}" for k, n in behind.items()),
            )

    def _recover(self, hold: int | None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        cursors = self._read_cursors()
        for d in self._dests.values():
            d.cursor = d.written = cursors.get(d.name, 0)
        # The lower of the two: the caller's state may be older than the hold file (a
        # snapshot lost or refused) or missing while the file is not, and the events it
        # will read back must survive the compaction below and every one until the next
        # hold() (a delivered segment would otherwise go at once: a kill before the
        # first snapshot then left nothing to restore the open conditions from).
        held = [h for h in (read_mark(self.directory / HOLD_FILE, log), hold) if h is not None]
        self._hold = max(1, min(held)) if held else None
        # No expected seq across files: a missing segment must not make the next one
        # look damaged (gaps are fine; order within a segment is checked).
        for path, res in self._segments.scan(contiguous=False, on_damage=self._damaged):
            if not res.records:
                with contextlib.suppress(OSError):
                    path.unlink()  # nothing readable in it
                continue
            if self._records and res.records[0].seq <= self._records[-1].seq:
                log.error("outbox: %s repeats earlier sequence numbers; ignored", path)
                continue
            self._records.extend(res.records)
            self._segments.keep(path, res)
        self.recovered = len(self._records)
        # Never reuse a number: cursor files (of destinations no longer configured too)
        # remember seqs whose segments are gone.
        last = max(
            self._records[-1].seq if self._records else 0,
            *cursors.values(),
            (self._hold or 1) - 1,
            0,
        )
        self._next_seq = last + 1
        self._commit.durable = last

    def _read_cursors(self) -> dict[str, int]:
        out = {}
        for path in self.directory.glob(f"{CURSOR_PREFIX}*"):
            if path.suffix == ".tmp":
                continue
            value = read_mark(path, log)
            if value is not None:
                out[path.name[len(CURSOR_PREFIX) :]] = value
        return out

    def _damaged(self, path: Path, res: ScanResult, is_last: bool) -> None:
        self.damaged += 1
        where = f"{path} at byte {res.good_bytes}"
        last = res.records[-1].seq if res.records else None
        # A crash leaves at most the batch being appended, at the end of the last
        # segment, never durable nor delivered. A destination whose cursor is past the
        # last whole record took events that were in the part cut off: the file was cut
        # afterwards (disk damage, a copy or restore cut short), not by a crash.
        delivered = max((d.cursor for d in self._dests.values()), default=0)
        cut = f"at least {res.cut_bytes} bytes cut off" if res.cut_bytes else ""
        expected = last + 1 if last is not None else first_seq(path)
        kind = torn_or_damaged(res, is_last, expected, delivered)
        if kind == "torn":
            log.warning(
                "outbox: %s at the end of %s (%s): if the gateway was killed or lost power "
                "while writing them, those events were never durable nor delivered; if the "
                "file was cut by anything else, events after seq %s may be lost: the file "
                "cannot tell which. Cut off.",
                res.problem,
                where,
                cut or f"{res.bad_bytes} bytes",
                last,
            )
        elif kind == "cut":
            log.error(
                "outbox: %s at the end of %s (%s), but events up to seq %d were delivered: "
                "the file was cut after it was written (disk damage, a copy or restore cut "
                "short), not by a crash; events %d to %d are gone from it (delivered), and "
                "any after them are lost",
                res.problem,
                where,
                cut or f"{res.bad_bytes} bytes",
                delivered,
                expected,
                delivered,
            )
        else:
            log.error(
                "outbox: %s in %s; the %d bytes after it cannot be read and are skipped "
                "(disk damage?): the events after seq %s in this segment are lost",
                res.problem,
                where,
                res.bad_bytes,
                last,
            )

    # -- group commit ---------------------------------------------------------------------
    async def run(self) -> None:
        """Commit what is appended, one fdatasync per batch, until `close()`."""
        await self._commit.run()

    async def commit(self) -> bool:
        """Write what is pending; False when the disk refused it (it stays pending)."""
        return await self._commit.commit()

    async def _write(self, batch: list[_Queued]) -> int:
        now = time.time_ns()
        parts = [encode_record(seq, now, payload) for seq, _, payload in batch]
        seg = await self._segments.append(batch[0][0], batch[-1][0], b"".join(parts))
        at = seg.size - sum(len(p) for p in parts)
        for (seq, ev, _), part in zip(batch, parts, strict=True):
            self._records.append(Record(seq, seg.path, at, len(part), 1, now))
            self._cache[seq] = ev
            at += len(part)
        while len(self._cache) > CACHE_EVENTS:
            del self._cache[next(iter(self._cache))]
        for d in self._dests.values():
            d.wake.set()
        if self.bytes > self._max:
            self._compact()
        return batch[-1][0]

    # -- reading ----------------------------------------------------------------------------
    def events_since(self, seq: int) -> list[Event]:
        """Every event from `seq` on (inclusive: `events_since(n)` is what `hold(n)` keeps),
        oldest first, including those not yet durable. Reads the disk synchronously:
        meant for start-up."""
        if self._records:
            first = self._records[0].seq
        else:
            first = self._pending[0][0] if self._pending else self._next_seq
        if max(seq, 1) < first and seq <= self.last_seq:
            log.warning(
                "outbox: events %d to %d are no longer on disk (delivered and compacted; "
                "was hold() called?)",
                max(seq, 1),
                first - 1,
            )
        recs = self._records[bisect.bisect_left(self._records, seq, key=_seq) :]
        out = []
        for part in self._plan(recs):
            if isinstance(part, list):
                out += [ev for _, ev in self._decode(part, _read_payloads(part))]
            else:
                out.append(part[1])
        out += [ev for s, ev, _ in self._pending if s >= seq]
        return out

    async def _load(self, recs: list[Record]) -> list[tuple[int, Event]]:
        """(seq, event) of records, from memory or read back in a worker thread;
        damaged ones are skipped."""
        out: list[tuple[int, Event]] = []
        for part in self._plan(recs):
            if isinstance(part, list):
                out += self._decode(part, await asyncio.to_thread(_read_payloads, part))
            else:
                out.append(part)
        return out

    def _plan(self, recs: list[Record]) -> list[tuple[int, Event] | list[Record]]:
        """Cached events as they are, the others in runs of one segment (one read each)."""
        parts: list[tuple[int, Event] | list[Record]] = []
        run: list[Record] | None = None
        for rec in recs:
            ev = self._cache.get(rec.seq)
            if ev is not None:
                parts.append((rec.seq, ev))
                run = None
            elif run is not None and run[-1].path == rec.path:
                run.append(rec)
            else:
                run = [rec]
                parts.append(run)
        return parts

    def _decode(
        self, run: list[Record], payloads: list[list[str] | Exception]
    ) -> list[tuple[int, Event]]:
        out = []
        for rec, lines in zip(run, payloads, strict=True):
            if isinstance(lines, Exception):
                if any(r is rec for r in self._records):  # else compacted while read
                    self._unreadable(rec, str(lines))
                continue
            try:
                out.append((rec.seq, decode_event("\n".join(lines))))
            except ValueError as exc:
                self._unreadable(rec, f"not an event: {exc}")
        return out

    def _unreadable(self, rec: Record, why: str) -> None:
        self.damaged += 1
        log.error(
            "outbox: event %d in %s cannot be read back (%s); skipped", rec.seq, rec.path, why
        )

    # -- delivery ------------------------------------------------------------------------------
    async def deliver(
        self,
        name: str,
        send: Send,
        *,
        batch: int = 500,
        max_retry_delay_s: float = 60,
    ) -> None:
        """Forever: hand destination `name` the durable events past its cursor, in
        batches, oldest first. A batch that fails (`send` raises) is retried with
        exponential backoff and full jitter (an exception's `retry_after`, in seconds,
        is honoured); once `send` returns, the cursor moves past it and is written."""
        dest = self._dests[name]
        attempt = 0
        while True:
            start = bisect.bisect_right(self._records, dest.cursor, key=_seq)
            recs = self._records[start : start + batch]
            if not recs:
                dest.wake.clear()
                await dest.wake.wait()
                continue
            items = await self._load(recs)
            if items:
                try:
                    await send(items)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    attempt += 1
                    delay = backoff(attempt, getattr(exc, "retry_after", None), max_retry_delay_s)
                    self._failed(dest, exc, delay, len(items))
                    await asyncio.sleep(delay)
                    continue
            attempt = 0
            if dest.failing_since is not None:
                log.info(
                    "outbox: %s takes events again after %.0f s (%d failed tries)",
                    name,
                    time.monotonic() - dest.failing_since,
                    dest.failures,
                )
                dest.failing_since = None
            dest.delivered += len(items)
            # Past damaged records too: they cannot be had any more.
            dest.cursor = max(dest.cursor, recs[-1].seq)
            self._delivered.set()
            await asyncio.to_thread(self._write_cursor, name, dest.cursor)
            self._compact()

    async def wait_delivered(self, timeout_s: float, names: Iterable[str] | None = None) -> bool:
        """Until every destination (or those named) has taken what was appended so far
        (True), or `timeout_s` passed (False): a clean stop's grace for events about to
        go out."""
        target = self._next_seq - 1
        dests = [self._dests[n] for n in names] if names is not None else list(self._dests.values())

        async def done() -> None:
            while any(d.cursor < target for d in dests):
                self._delivered.clear()
                await self._delivered.wait()

        try:
            await asyncio.wait_for(done(), timeout_s)
        except TimeoutError:
            return False
        return True

    def _failed(self, dest: _Destination, exc: Exception, delay: float, n: int) -> None:
        dest.failures += 1
        dest.last_error = str(exc) or type(exc).__name__
        if dest.failing_since is None:
            dest.failing_since = time.monotonic()
            log.error(
                "outbox: delivering %d events to %s failed: %s; retrying with backoff up to "
                "the limit until it works (events wait on disk, nothing is lost)",
                n,
                dest.name,
                dest.last_error,
            )
        else:
            log.debug("outbox: %s still failing: %s; next try in %.1f s", dest.name, exc, delay)

    def _write_cursor(self, name: str, seq: int) -> None:
        try:
            write_mark(self.directory / f"{CURSOR_PREFIX}{name}", seq)
            dest = self._dests[name]
            dest.written = max(dest.written, seq)
        except OSError as exc:
            # A stale cursor only means events are delivered again after a restart.
            log.debug("outbox: cannot write the cursor of %s: %s", name, exc)

    # -- compaction ------------------------------------------------------------------------------
    def hold(self, seq: int) -> None:
        """Keep events from `seq` on even once delivered (the engine's snapshot point)."""
        self._hold = seq
        try:
            write_mark(self.directory / HOLD_FILE, seq, sync=False)
        except OSError as exc:
            log.warning("outbox: cannot keep the hold point in %s: %s", self.directory, exc)
        self._compact()

    def _compact(self) -> None:
        """Delete segments every destination has taken and the hold point is past."""
        done = min((d.cursor for d in self._dests.values()), default=self.last_seq)
        if self._hold is not None:
            done = min(done, self._hold - 1)
        # The segment appended to stays: a commit may be writing to it.
        segments = self._segments
        while segments.files:
            seg = segments.files[0]
            if seg is segments.current or seg.last > done:
                break
            self._drop_oldest()
        # The bound: one dead destination must not fill the disk.
        while self.bytes > self._max and len(segments.files) > 1:
            seg = segments.files[0]
            if seg is segments.current:
                break
            if self._hold is not None and seg.last >= self._hold:
                if not self._overflow_logged:
                    self._overflow_logged = True
                    log.warning(
                        "outbox: %s bytes are over max_bytes (%s), but the hold point %d "
                        "keeps them",
                        f"{self.bytes:,}",
                        f"{self._max:,}",
                        self._hold,
                    )
                break
            for d in self._dests.values():
                if d.cursor < seg.last:
                    lost = seg.last - max(d.cursor, seg.first - 1)
                    d.skipped += lost
                    log.error(
                        "outbox: over max_bytes (%s): events %d to %d are dropped before %s "
                        "took them (it has been failing: %s)",
                        f"{self._max:,}",
                        max(d.cursor + 1, seg.first),
                        seg.last,
                        d.name,
                        d.last_error,
                    )
                    d.cursor = seg.last
                    self._write_cursor(d.name, d.cursor)
            self._drop_oldest()

    def _drop_oldest(self) -> Segment:
        seg = self._segments.drop_oldest()
        cut = bisect.bisect_right(self._records, seg.last, key=_seq)
        for rec in self._records[:cut]:
            self._cache.pop(rec.seq, None)
        del self._records[:cut]
        return seg

    # -- stop -------------------------------------------------------------------------------------
    async def close(self) -> None:
        """Commit what is pending (a few tries while the disk is full)."""
        left = await self._commit.close()
        if left:
            log.error(
                "outbox: %d events could not be written to %s at shutdown and are lost",
                left,
                self.directory,
            )
        # A drainer stopped while its cursor was being written: write it here, or
        # what it delivered comes again after the restart.
        for d in self._dests.values():
            if d.cursor > d.written:
                self._write_cursor(d.name, d.cursor)
        self._segments.close()


def _seq(rec: Record) -> int:
    return rec.seq


def backoff(attempt: int, retry_after: float | None, max_delay: float) -> float:
    # Full jitter: a fleet of gateways does not retry a recovering server in lockstep.
    ceiling = min(max_delay, 0.5 * 2 ** min(attempt, 30))
    delay = random.uniform(ceiling / 2, ceiling)
    if isinstance(retry_after, int | float) and retry_after > 0:
        delay = max(delay, min(float(retry_after), max_delay))
    return delay


def _read_payloads(run: list[Record]) -> list[list[str] | Exception]:
    """The lines of each record of a run (one segment), or why one cannot be read."""
    try:
        return list(read_records(run))
    except (OSError, UnicodeDecodeError, ValueError):
        pass
    out: list[list[str] | Exception] = []
    for rec in run:  # one by one, to skip only what is damaged
        try:
            out.append(read_records([rec])[0])
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            out.append(exc)
    return out
