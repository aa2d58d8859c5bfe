"""The dead-letter store: every rejected message or reading, with its reason.

One JSON line per rejection in `<data_dir>/dead-letter/YYYY-MM-DD.jsonl` (UTC date
of receipt), holding the raw payload (base64 when not UTF-8), where it came from,
when, and a reason a person can act on. Records are buffered and written by a
background task in a worker thread with fsync (group commit), so the event loop
never blocks on the disk.

Every record gets a sequence number from `add()`; `durable` says how far the
records are on disk. A source that must not acknowledge a message before its
rejection is kept waits with `wait_durable(seq)`, which also hurries the next
group commit: the wait is one fsync, not a flush interval.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

__all__ = ["DeadLetterStore", "dead_letter_record"]

log = logging.getLogger("meter_gateway.deadletter")


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


class DeadLetterStore:
    def __init__(
        self,
        data_dir: Path,
        *,
        publish: Callable[[bytes], None] | None = None,
        flush_interval_s: float = 0.2,
    ) -> None:
        self.directory = Path(data_dir) / "dead-letter"
        self._publish = publish
        self._flush_interval = flush_interval_s
        self._buf: list[tuple[str, bytes]] = []  # (file date, JSON line)
        self._wakeup = asyncio.Event()
        self._closing = False
        self._durable_changed = asyncio.Event()
        self._lock = asyncio.Lock()
        self._failing_since: float | None = None
        self.count = 0  # records taken; also the sequence number of the last one
        self.durable = 0  # sequence number of the last record fsync'd
        self.write_errors = 0
        self.fsyncs = 0

    def add(self, record: dict[str, Any]) -> int:
        """Take a record; return its sequence number (see `durable`, `wait_durable`)."""
        line = orjson.dumps(record, default=str) + b"\n"
        day = record["received_at"][:10]
        self._buf.append((day, line))
        self.count += 1
        if self._publish is not None:
            try:
                self._publish(line[:-1])
            except Exception:
                log.debug("dead-letter: publish failed", exc_info=True)
        if len(self._buf) >= 1000:
            self._wakeup.set()
        return self.count

    async def wait_durable(self, seq: int) -> None:
        """Until record `seq` is on disk (which may take long while the disk is full)."""
        while self.durable < seq:
            self._wakeup.set()
            self._durable_changed.clear()
            await self._durable_changed.wait()

    def stats(self) -> dict[str, Any]:
        """Counters for metrics and the status page (a snapshot)."""
        return {
            "records": self.count,
            "durable": self.durable,
            "pending": self.count - self.durable,
            "write_errors": self.write_errors,
            "fsyncs": self.fsyncs,
            "directory": str(self.directory),
        }

    def path_for(self, day: str) -> Path:
        return self.directory / f"{day}.jsonl"

    async def run(self) -> None:
        while True:
            if not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._flush_interval)
            self._wakeup.clear()
            await self.flush()
            if self._closing and not self._buf:
                return

    async def flush(self) -> None:
        # One writer at a time: `close()` may flush while `run()` is mid-write, and two
        # writes in flight could finish out of order and overstate `durable`.
        async with self._lock:
            await self._flush()

    async def _flush(self) -> None:
        if not self._buf:
            return
        batch, self._buf = self._buf, []
        upto = self.count  # records that arrive while this batch is written come after it
        try:
            await asyncio.to_thread(self._append, batch)
        except OSError as exc:
            # Keep the records and try again: a full disk must not lose rejections.
            self._buf[:0] = batch
            self.write_errors += 1
            if self._failing_since is None:
                self._failing_since = time.monotonic()
                log.error(
                    "dead-letter: cannot write to %s: %s; keeping %d records in memory and "
                    "retrying every second (MQTT messages they came from stay unacknowledged)",
                    self.directory,
                    exc,
                    len(self._buf),
                )
            else:
                log.debug("dead-letter: still cannot write to %s: %s", self.directory, exc)
            await asyncio.sleep(1.0)
            return
        self.durable = upto
        self.fsyncs += 1
        self._durable_changed.set()
        if self._failing_since is not None:
            log.info(
                "dead-letter: writing to %s again after %.0f s",
                self.directory,
                time.monotonic() - self._failing_since,
            )
            self._failing_since = None

    def _append(self, batch: list[tuple[str, bytes]]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        by_day: dict[str, list[bytes]] = {}
        for day, line in batch:
            by_day.setdefault(day, []).append(line)
        for day, lines in by_day.items():
            fd = os.open(self.path_for(day), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            try:
                start = os.fstat(fd).st_size
                try:
                    data = memoryview(b"".join(lines))
                    while data:  # a short write (disk nearly full) writes the rest or fails
                        data = data[os.write(fd, data) :]
                    os.fsync(fd)
                except OSError:
                    # Leave no torn line behind: the whole batch is written again later.
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, start)
                    raise
            finally:
                os.close(fd)

    async def close(self) -> None:
        self._closing = True
        self._wakeup.set()
        for _ in range(5):
            await self.flush()
            if not self._buf:
                return
        log.error("dead-letter: %d records could not be written at shutdown", len(self._buf))
