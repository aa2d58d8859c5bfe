"""Group commit: what arrives while one write-and-fsync runs goes in the next one.

    add (on the loop, never blocks) --> pending --run()--> write(batch) --> durable

The owner (the spool, the event outbox, the dead-letter store) appends to `pending`
(the same list for the writer's whole life) on its hot path and numbers what it
appends; `write(batch)` puts a batch on disk (in a worker thread) and returns the new
`durable` number. One fsync then serves every
item that arrived while the previous one ran, so the cost of durability does not grow
with the rate.

A write the disk refuses (full, failing) raises OSError: the batch goes back to the
front of `pending`, the failure is logged once (with what the owner says it means)
and counted, and the write is retried every `retry_s`; the first write that works
again is logged too. Nothing is dropped here: the owner bounds what it lets in.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

__all__ = ["Committed", "GroupCommit"]

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """One writer for one durable store. `name` starts its log lines (`spool`,
    `outbox`, `dead-letter`); `waiting(n)` says what `n` pending items mean while the
    disk refuses them (who waits, what is held back); `linger_s`: with it, an idle
    writer waits up to that long for more before it writes (a store whose adds do not
    wake it, and which is hurried only by `wait_durable`)."""

    def __init__(
        self,
        name: str,
        directory: Path,
        write: Callable[[list[T]], Awaitable[int]],
        *,
        log: logging.Logger,
        waiting: Callable[[int], str],
        retry_s: float = 1.0,
        linger_s: float | None = None,
    ) -> None:
        self.name = name
        self.directory = directory
        self._write = write
        self._log = log
        self._waiting = waiting
        self.retry_s = retry_s
        self._linger = linger_s
        self.pending: list[T] = []
        self.durable = 0  # what `write` last returned
        self._wakeup = asyncio.Event()
        self._durable_changed = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closing = False
        self._failing_since: float | None = None
        self.fsyncs = 0
        self.write_errors = 0
        self.disk_full = False  # the last refusal was for want of space

    def wake(self) -> None:
        """Something is pending: write it soon."""
        self._wakeup.set()

    @property
    def failing(self) -> bool:
        """The last write was refused: what is added waits in memory."""
        return self._failing_since is not None

    @property
    def writing(self) -> bool:
        """A batch is being written (the owner must not delete what it writes to)."""
        return self._lock.locked()

    async def wait_durable(self, seq: int) -> None:
        """Until `durable` reaches `seq` (long while the disk refuses writes)."""
        while self.durable < seq:
            self._wakeup.set()
            self._durable_changed.clear()
            await self._durable_changed.wait()

    async def run(self) -> None:
        """Write what is pending, batch after batch, until `close()`."""
        while True:
            if not self._closing and (self._linger is not None or not self.pending):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._linger)
            self._wakeup.clear()
            if not await self.commit() and not self._closing:
                # Without the lock held: the owner may free room meanwhile (the spool
                # deletes what the database has), which is what lets the retry work.
                await asyncio.sleep(self.retry_s)
            if self._closing and not self.pending:
                return

    async def commit(self) -> bool:
        """Write what is pending now; False when the disk refused it (it stays pending)."""
        # One write at a time: two in flight could finish out of order and overstate
        # `durable`.
        async with self._lock:
            if not self.pending:
                return True
            # The list itself stays: owners keep a reference to it for their hot path.
            batch = self.pending[:]
            self.pending.clear()
            try:
                durable = await self._write(batch)
            except OSError as exc:
                self.pending[:0] = batch
                self._refused(exc)
                return False
            self.fsyncs += 1
            self.durable = durable
            self._durable_changed.set()
            if self._failing_since is not None:
                self._log.info(
                    "%s: writing to %s again after %.0f s",
                    self.name,
                    self.directory,
                    time.monotonic() - self._failing_since,
                )
                self._failing_since = None
                self.disk_full = False
            return True

    def _refused(self, exc: OSError) -> None:
        self.write_errors += 1
        self.disk_full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            self._log.error(
                "%s: cannot write to %s: %s; %s; the write is retried every %g s",
                self.name,
                self.directory,
                exc.strerror or exc,
                self._waiting(len(self.pending)),
                self.retry_s,
            )
        else:
            self._log.debug("%s: still cannot write to %s: %s", self.name, self.directory, exc)

    async def close(self, tries: int = 5) -> int:
        """Write what is pending (a few tries while the disk refuses it); return how
        many items could not be written."""
        self._closing = True
        self._wakeup.set()
        for _ in range(tries):
            if await self.commit():
                break
        return len(self.pending)


class Committed:
    """What a store built on a `GroupCommit` (its `_commit`) tells about its writes."""

    _commit: GroupCommit[Any]

    @property
    def durable(self) -> int:
        """The last sequence number on disk."""
        return self._commit.durable

    @property
    def fsyncs(self) -> int:
        return self._commit.fsyncs

    @property
    def write_errors(self) -> int:
        return self._commit.write_errors

    @property
    def failing(self) -> bool:
        """The last write was refused (a full or failing disk): what is added waits in
        memory."""
        return self._commit.failing

    async def wait_durable(self, seq: int) -> None:
        """Until `seq` is on disk (long while the disk refuses writes)."""
        await self._commit.wait_durable(seq)
