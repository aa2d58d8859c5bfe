"""The dead-letter store: every rejected message or reading, with its reason.

One JSON line per rejection in `<data_dir>/dead-letter/YYYY-MM-DD.jsonl` (UTC date
of receipt), holding the raw payload (base64 when not UTF-8), where it came from,
when, and a reason a person can act on. Records are buffered and written by a
background task in a worker thread with fsync (group commit, storage/log/commit.py),
so the event loop never blocks on the disk. The files are JSON lines, not the log's
segments, because people read them (`meter-gateway dead-letter list`, `jq`).

Every record gets a sequence number from `add()`; `durable` says how far the
records are on disk. A source that must not acknowledge a message before its
rejection is kept waits with `wait_durable(seq)`, which also hurries the next
group commit: the wait is one fsync, not a flush interval.

Records are also published (when a `publish` callable is given: MQTT
`gateway/<id>/rejected`), within bounds: at most `publish_max_per_s` records and
`publish_max_bytes_per_s` bytes a second, and `publish_max_per_message` records of one
message (records naming the same `message_id`). A record over
`publish_max_record_bytes` is published without its payload (`omitted_bytes` says how
much is only on disk). What is over the bounds is only on disk; `not_published` counts it and
the log says so once (then at most every ten minutes).

Reading the store back (`read_records`, for `meter-gateway dead-letter`) is safe while a
gateway appends: only complete lines (ending in a newline) are read; a line being
written is left for the next reader. Each record is named by its file and line number
(files are only ever appended to) and by a hash of its line. `ReplayLedger` keeps which
records were replayed, in `<data_dir>/dead-letter/replayed` (one JSON line each,
appended and fsync'd), so a second replay skips them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

import orjson

from meter_gateway.storage.log.commit import Committed, GroupCommit
from meter_gateway.storage.log.segment import append_durably

__all__ = [
    "LEDGER_NAME",
    "DeadLetterLine",
    "DeadLetterStats",
    "DeadLetterStore",
    "ReplayLedger",
    "dead_letter_record",
    "read_records",
    "record_files",
]

log = logging.getLogger("meter_gateway.deadletter")

# The fields a record too large to publish is published without.
_BULKY = frozenset({"payload", "payload_base64", "elements", "indexes"})


def dead_letter_record(
    *,
    reason: str,
    source: str,
    payload: bytes | str | None = None,
    item: Any = None,
    topic: str | None = None,
    device: str | None = None,
    index: int | None = None,
    received_at: datetime | None = None,
) -> dict[str, Any]:
    """Build one record. `item` is an already-parsed element (a reading in a batch)."""
    rec: dict[str, Any] = {
        "received_at": (received_at or datetime.now(UTC)).isoformat().replace("+00:00", "Z"),
        "source": source,
        "reason": reason,
    }
    if topic is not None:
        rec["topic"] = topic
    if device is not None:
        rec["device"] = device
    if index is not None:
        rec["index"] = index
    kept = _item_text(item) if item is not None else None
    if kept is not None:
        rec["payload"] = kept
    elif isinstance(payload, str):
        rec["payload"] = payload
    elif payload is not None:
        try:
            rec["payload"] = payload.decode("utf-8")
        except UnicodeDecodeError:
            rec["payload_base64"] = base64.b64encode(payload).decode("ascii")
    return rec


def _item_text(item: Any) -> str | None:
    """An element of a batch as JSON text; None when it cannot be written as JSON."""
    if isinstance(item, str):
        return item
    try:
        # The standard library writes NaN as NaN (orjson would write null): the
        # record shows what the meter sent. Not the hot path.
        return json.dumps(item, default=str)
    except (RecursionError, ValueError, TypeError):
        return None  # nested too deep for the encoder: the caller keeps the raw message


class DeadLetterStats(TypedDict):
    records: int
    durable: int
    pending: int
    write_errors: int
    fsyncs: int
    not_published: int
    not_published_bytes: int
    published_trimmed: int
    directory: str


class DeadLetterStore(Committed):
    def __init__(
        self,
        data_dir: Path,
        *,
        publish: Callable[[bytes], None] | None = None,
        flush_interval_s: float = 0.2,
        publish_max_per_s: int = 50,
        publish_max_bytes_per_s: int = 262_144,
        publish_max_record_bytes: int = 65_536,
        publish_max_per_message: int = 3,
    ) -> None:
        self.directory = Path(data_dir) / "dead-letter"
        self._publish = publish
        self._pub_max_n = publish_max_per_s
        self._pub_max_bytes = publish_max_bytes_per_s
        self._pub_max_record = publish_max_record_bytes
        self._pub_max_message = publish_max_per_message
        self._pub_second = 0  # the monotonic second the counts below are for
        self._pub_n = 0
        self._pub_bytes = 0
        self._pub_message: object = None  # message_id of the last record published
        self._pub_message_n = 0
        self._pub_logged_at: float | None = None
        self.not_published = 0  # records kept on disk only (over the publish bounds)
        self.published_trimmed = 0  # records too large: published without their payload
        self.not_published_bytes = 0
        # Written at least every `flush_interval_s`, at once when a source waits for
        # a record (`wait_durable`) or 1,000 are waiting.
        self._commit: GroupCommit[tuple[str, bytes]] = GroupCommit(
            "dead-letter",
            self.directory,
            self._write,
            log=log,
            waiting=lambda n: (
                f"{n} records wait in memory (the MQTT messages they came from stay unacknowledged)"
            ),
            linger_s=flush_interval_s,
        )
        self._buf = self._commit.pending  # (file date, JSON line); the same list for life
        self.count = 0  # records taken; also the sequence number of the last one

    def add(self, record: dict[str, Any]) -> int:
        """Take a record; return its sequence number (see `durable`, `wait_durable`)."""
        line = orjson.dumps(record, default=str) + b"\n"
        day = record["received_at"][:10]
        self._buf.append((day, line))
        self.count += 1
        if self._publish is not None:
            out = line[:-1]
            if len(out) > self._pub_max_record:
                # Subscribers still learn what was rejected and why; the bulk is on disk.
                out = orjson.dumps(
                    {k: v for k, v in record.items() if k not in _BULKY}
                    | {"omitted_bytes": len(out)},
                    default=str,
                )
                self.published_trimmed += 1
            if self._may_publish(record, len(out)):
                try:
                    self._publish(out)
                except Exception:
                    log.debug("dead-letter: publish failed", exc_info=True)
        if len(self._buf) >= 1000:
            self._commit.wake()
        return self.count

    def _may_publish(self, record: dict[str, Any], size: int) -> bool:
        """Is this record within the publish bounds? Counts it either way."""
        second = int(time.monotonic())
        if second != self._pub_second:
            self._pub_second, self._pub_n, self._pub_bytes = second, 0, 0
        message = record.get("message_id")
        if message is None or message != self._pub_message:
            self._pub_message, self._pub_message_n = message, 0
        if (
            size > self._pub_max_record  # a reason or topic that long: not worth sending
            or self._pub_n >= self._pub_max_n
            or self._pub_bytes + size > self._pub_max_bytes
            or (message is not None and self._pub_message_n >= self._pub_max_message)
        ):
            self.not_published += 1
            self.not_published_bytes += size
            now = time.monotonic()
            if self._pub_logged_at is None or now - self._pub_logged_at >= 600:
                self._pub_logged_at = now
                log.warning(
                    "dead-letter: not every rejection is republished on MQTT (at most %d "
                    "records and %d bytes a second, %d per message, records up to %d bytes); "
                    "%d record(s) so far are only in %s (dead_letter not_published)",
                    self._pub_max_n,
                    self._pub_max_bytes,
                    self._pub_max_message,
                    self._pub_max_record,
                    self.not_published,
                    self.directory,
                )
            return False
        self._pub_n += 1
        self._pub_bytes += size
        self._pub_message_n += 1
        return True

    def stats(self) -> DeadLetterStats:
        """Counters for metrics and the status page (a snapshot)."""
        return {
            "records": self.count,
            "durable": self.durable,
            "pending": self.count - self.durable,
            "write_errors": self.write_errors,
            "fsyncs": self.fsyncs,
            "not_published": self.not_published,
            "not_published_bytes": self.not_published_bytes,
            "published_trimmed": self.published_trimmed,
            "directory": str(self.directory),
        }

    def path_for(self, day: str) -> Path:
        return self.directory / f"{day}.jsonl"

    async def run(self) -> None:
        await self._commit.run()

    async def flush(self) -> None:
        """Write what is waiting now (a refused write keeps it, for the next try)."""
        await self._commit.commit()

    async def _write(self, batch: list[tuple[str, bytes]]) -> int:
        upto = self.count  # records that arrive while this batch is written come after it
        await asyncio.to_thread(self._append, batch)
        return upto

    def _append(self, batch: list[tuple[str, bytes]]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        by_day: dict[str, list[bytes]] = {}
        for day, line in batch:
            by_day.setdefault(day, []).append(line)
        for day, lines in by_day.items():
            path = self.path_for(day)
            new = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            try:
                start = os.fstat(fd).st_size
                # A new day's file: its name is made durable too (a power cut must not
                # lose the file with the records the broker was told are safe).
                append_durably(fd, start, b"".join(lines), self.directory if new else None)
            finally:
                os.close(fd)

    async def close(self) -> None:
        left = await self._commit.close()
        if left:
            log.error("dead-letter: %d records could not be written at shutdown", left)


# -- reading the store back ------------------------------------------------------------------

LEDGER_NAME = "replayed"  # in the dead-letter directory; not a `*.jsonl`, never read as records
_READ_CHUNK = 1 << 20


@dataclass(slots=True, frozen=True)
class DeadLetterLine:
    """One line of a dead-letter file: where it is, its stable id, and the record.

    `record` is None when the line is not a JSON object (damaged by hand, say); `error`
    then says why. `id` is a hash of the line's bytes: the same record has the same id
    wherever the file is moved."""

    file: str  # the file's name, e.g. 2026-11-27.jsonl
    line: int  # 1-based
    id: str
    record: dict[str, Any] | None
    error: str = ""

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def record_id(raw: bytes) -> str:
    """The stable id of a record: the first 128 bits of the SHA-256 of its line."""
    return hashlib.sha256(raw.rstrip(b"\r\n")).hexdigest()[:32]


def record_files(directory: Path, since_day: str | None = None) -> list[Path]:
    """The dead-letter files (`YYYY-MM-DD.jsonl`) in date order; from `since_day` on."""
    if not directory.is_dir():
        return []
    files = sorted(p for p in directory.glob("*.jsonl") if p.is_file())
    if since_day is not None:
        # A file holds the records received on its UTC day: older days cannot match.
        files = [p for p in files if p.name[:10] >= since_day or not p.name[:4].isdigit()]
    return files


def _complete_lines(path: Path) -> Iterator[bytes]:
    """The file's complete lines (without the newline); a last line without one is left."""
    with open(path, "rb") as f:
        rest = b""
        while True:
            chunk = f.read(_READ_CHUNK)
            if not chunk:
                return  # `rest` is a line still being written (or torn): not ours to read
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            yield from lines


def read_records(files: Iterable[Path]) -> Iterator[DeadLetterLine]:
    """Every complete line of the files, in order, parsed; blank lines are skipped."""
    for path in files:
        for n, raw in enumerate(_complete_lines(path), start=1):
            if not raw.strip():
                continue
            rid = record_id(raw)
            try:
                rec = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                yield DeadLetterLine(path.name, n, rid, None, f"not JSON: {exc}")
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("reason"), str):
                yield DeadLetterLine(path.name, n, rid, None, "not a dead-letter record")
                continue
            yield DeadLetterLine(path.name, n, rid, rec)


class ReplayLedger:
    """Which dead-letter records were replayed: `<dead-letter dir>/replayed`, append-only.

    One JSON line a record: `{"id", "file", "line", "replayed_at", "stored"}`. `add_many`
    appends and fsyncs; call it only once the database has accepted what the records
    became, so a record in the ledger is a record whose readings are stored.

    A record standing for several elements of a batch, some of them stored and some
    still rejected, gets `"rest"`: the indexes still to replay (as the record writes
    them). It is not done: the next replay takes those elements only. A later entry of
    the same id says how it stands now. (A reader that knows no `rest` takes the record
    as done, as a partly stored message always was.)"""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LEDGER_NAME
        self._ids: set[str] | None = None
        self._rest: dict[str, Any] = {}

    def ids(self) -> set[str]:
        """The ids replayed for good so far (read once, then kept up to date by `add_many`)."""
        if self._ids is None:
            ids: set[str] = set()
            rest: dict[str, Any] = {}
            if self.path.is_file():
                for raw in _complete_lines(self.path):
                    try:
                        entry = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        continue  # a damaged entry: that record may be replayed again
                    if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                        rid = entry["id"]
                        if isinstance(entry.get("rest"), list) and entry["rest"]:
                            rest[rid] = entry["rest"]
                            ids.discard(rid)
                        else:
                            ids.add(rid)
                            rest.pop(rid, None)
            self._ids, self._rest = ids, rest
        return self._ids

    def rest(self, rid: str) -> Any:
        """What of a partly replayed record is still to replay (its `rest`), or None."""
        self.ids()
        return self._rest.get(rid)

    def __contains__(self, rid: object) -> bool:
        return rid in self.ids()

    def add_many(
        self, entries: Iterable[tuple[DeadLetterLine, int]], rests: dict[str, Any] | None = None
    ) -> int:
        """Record (line, readings stored from it) pairs as replayed; fsync'd. Returns how many.
        `rests`: record id -> the indexes of its elements still rejected (see the class)."""
        entries = list(entries)
        known = self.ids()
        rests = rests or {}
        at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        lines: list[bytes] = []
        added: list[str] = []
        for dl, stored in entries:
            if dl.id in known or dl.id in added:
                continue
            added.append(dl.id)
            entry: dict[str, Any] = {"id": dl.id, "file": dl.file, "line": dl.line}
            entry.update(replayed_at=at, stored=stored)
            if rests.get(dl.id):
                entry["rest"] = rests[dl.id]
            lines.append(orjson.dumps(entry) + b"\n")
        if not lines:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            start = os.fstat(fd).st_size
            data = memoryview(b"".join(lines))
            try:
                while data:
                    data = data[os.write(fd, data) :]
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)  # no torn entry: the records are replayed again
                raise
        finally:
            os.close(fd)
        for rid in added:
            if rests.get(rid):
                self._rest[rid] = rests[rid]
            else:
                known.add(rid)
                self._rest.pop(rid, None)
        if created:  # the new file's name must survive a crash too
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        return len(lines)
