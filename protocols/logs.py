"""Logging an operator can live with: state changes and rate-limited repeats."""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["LogLimiter"]


class LogLimiter:
    """At most one log line per key per window, with a count of what it stood for.

    One misbehaving meter can send thousands of bad messages a minute; the operator
    needs to know that it happens, why, and how often, not each occurrence. The first
    occurrence of a key is logged at once; later ones within the window are counted
    and reported with the next line for that key, or by `flush()` (called about once
    a minute) when none follows.
    """

    def __init__(self, logger: logging.Logger, window_s: float = 60.0, max_keys: int = 10_000):
        self._log = logger
        self._window = window_s
        self._max_keys = max_keys
        # key -> [time of the last line, suppressed count, level, last message]
        self._keys: dict[tuple[str, ...], list[Any]] = {}
        self.suppressed = 0

    def log(
        self,
        key: tuple[str, ...],
        level: int,
        msg: str,
        *,
        exc_info: BaseException | None = None,
        now: float | None = None,
    ) -> None:
        now = time.monotonic() if now is None else now
        entry = self._keys.get(key)
        if entry is not None and now - entry[0] < self._window:
            entry[1] += 1
            entry[2] = level
            entry[3] = msg
            self.suppressed += 1
            return
        more = entry[1] if entry is not None else 0
        if len(self._keys) >= self._max_keys and entry is None:
            self.flush(now)
            self._keys.clear()  # a bound on memory; the cost is at most a repeated line
        self._keys[key] = [now, 0, level, msg]
        suffix = f" (and {more} more like it in the last {self._window:.0f} s)" if more else ""
        self._log.log(level, "%s%s", msg, suffix, exc_info=exc_info)

    def flush(self, now: float | None = None, *, final: bool = False) -> None:
        """Report the counts held back for keys whose window has passed (all: `final`)."""
        now = time.monotonic() if now is None else now
        for key, entry in list(self._keys.items()):
            if now - entry[0] < self._window and not final:
                continue
            held = entry[1]
            del self._keys[key]
            if held:
                # The latest of the held-back lines stands for all of them.
                more = f" (and {held - 1} more like it in the last {self._window:.0f} s)"
                self._log.log(entry[2], "%s%s", entry[3], more if held > 1 else "")
