"""A priority lock: one request at a time on a connection, healthy devices first.

Waiters are served by priority, then in arrival order. The poller queues requests of
devices that just failed (possibly dead, each costing a full timeout) behind those of
devices that answer, so a dead meter takes the line only when nobody else waits.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["PriorityLock"]


class PriorityLock:
    """`async with lock.hold(priority):` - lower numbers go first; FIFO within a priority."""

    def __init__(self) -> None:
        self._locked = False
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    @property
    def locked(self) -> bool:
        return self._locked

    @property
    def waiting(self) -> int:
        """Waiters not yet served (cancelled ones included until they are popped)."""
        return sum(1 for _, _, fut in self._waiters if not fut.done())

    @asynccontextmanager
    async def hold(self, priority: int = 0, grace_s: float = 0.0) -> AsyncIterator[None]:
        """Hold the lock. With `grace_s`, a free lock is taken only after that pause, so
        higher-priority requests made at the same moment (a poll slot) queue first."""
        if grace_s > 0 and not self._locked:
            await asyncio.sleep(grace_s)
        await self._acquire(priority)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, priority: int) -> None:
        if not self._locked:  # unlocked means no live waiter: release hands over directly
            self._locked = True
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._seq), fut))
        try:
            await fut
        except asyncio.CancelledError:
            # Granted and cancelled in the same step: we own the lock, pass it on.
            if fut.done() and not fut.cancelled():
                self._release()
            raise

    def _release(self) -> None:
        # Hand the lock straight to the next live waiter; it stays locked meanwhile,
        # so a newcomer cannot overtake a waiter that was already woken.
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)
                return
        self._locked = False
