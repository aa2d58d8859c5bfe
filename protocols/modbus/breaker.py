"""Per-device circuit breaker with exponential backoff."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from enum import StrEnum

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(StrEnum):
    CLOSED = "closed"  # polled every interval
    OPEN = "open"  # skipped until the backoff ends
    HALF_OPEN = "half_open"  # one probe decides


class CircuitBreaker:
    """Opens after `failures` failed polls in a row; probes after a doubling backoff."""

    def __init__(
        self,
        failures: int,
        backoff_s: float,
        max_backoff_s: float,
        clock: Callable[[], float] = time.monotonic,
        jitter: float = 0.2,
    ) -> None:
        self._threshold = failures
        self._backoff_min = backoff_s
        self._backoff_max = max_backoff_s
        self._clock = clock
        # Breakers opened together (a line's meters lost at once) would probe together;
        # +-jitter spreads the probes so they do not queue up on the line.
        self._jitter = jitter
        self._rng = random.Random()
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.backoff_s = 0.0
        self._retry_at = 0.0
        self.opened = 0  # every opening, a failed probe's re-opening included

    def allow(self) -> bool:
        """May the device be polled now? An open breaker turns half-open when due."""
        if self.state is BreakerState.OPEN:
            if self._clock() < self._retry_at:
                return False
            self.state = BreakerState.HALF_OPEN
        return True

    @property
    def healthy(self) -> bool:
        """Closed and the last poll answered: worth retries and front-of-queue service."""
        return self.state is BreakerState.CLOSED and self.consecutive_failures == 0

    def record_success(self) -> None:
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.backoff_s = 0.0

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        if self.state is BreakerState.HALF_OPEN:
            self._open(min(self.backoff_s * 2, self._backoff_max))
        elif self.state is BreakerState.CLOSED and self.consecutive_failures >= self._threshold:
            self._open(self._backoff_min)

    def _open(self, backoff: float) -> None:
        self.state = BreakerState.OPEN
        self.backoff_s = backoff
        spread = self._rng.uniform(1 - self._jitter, 1 + self._jitter) if self._jitter else 1.0
        self._retry_at = self._clock() + backoff * spread
        self.opened += 1

    def probe_now(self) -> None:
        """Let an open breaker probe at the next `allow()`: what kept it open is known to
        be over (the connection it failed on is up again), so waiting is pointless."""
        if self.state is BreakerState.OPEN:
            self._retry_at = self._clock()

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through."""
        return max(0.0, self._retry_at - self._clock()) if self.state is BreakerState.OPEN else 0.0
