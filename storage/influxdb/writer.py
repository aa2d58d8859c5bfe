"""Batching, retries and bad-line isolation in front of a line-protocol client.

The client (v1 or v2) only writes one body and raises a typed error; this loop owns
every decision (Telegraf's split between an output and its running_output):

- a batch goes out at `batch_size` lines or after `flush_interval_s`, whichever first;
- connection errors, 429 and 5xx: exponential backoff with full jitter, capped at
  `max_retry_delay_s`, honouring `Retry-After`; the batch is kept, never dropped;
- 413: the batch is split in halves, each written on its own;
- 400/422: the batch is bisected until the offending lines are found; those go to
  the dead-letter store, the rest is written.

Backpressure: above `max_buffered_lines` the writer reports `paused`. Behind the
spool, the spool feeds it only while it has room, and pauses sources itself.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Protocol, TypedDict

from meter_gateway.storage.influxdb.errors import (
    BadPointsError,
    PayloadTooLargeError,
    RetryableWriteError,
    WriteError,
)

__all__ = [
    "BATCH_LINES_BUCKETS",
    "WRITE_SECONDS_BUCKETS",
    "BatchWriter",
    "Histogram",
    "HistogramStats",
    "LineClient",
    "WriterCounts",
    "WriterStats",
]


class HistogramStats(TypedDict):
    count: int
    sum: float
    buckets: dict[str, int]  # upper bound ("+Inf" last) -> observations at or below it


class WriterCounts(TypedDict):
    """What the writer did, in numbers."""

    healthy: bool
    lines_written: int
    lines_by_source: dict[str, int]
    lines_refused: int
    batches_written: int
    pending_lines: int
    paused_sources: bool
    retries: int
    last_write_s: float | None
    write_seconds: HistogramStats
    batch_lines: HistogramStats


class WriterStats(WriterCounts):
    """The numbers, and the words and times that are only for this process: the
    target and the database's errors may hold credentials (the status page redacts
    them), `refusing_since` is monotonic."""

    target: str
    refusing_since: float | None
    last_refusal: str | None
    last_error: str | None


log = logging.getLogger("meter_gateway.storage")

# Upper bounds (Prometheus `le`) of the writer's histograms.
WRITE_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_LINES_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000)

# The `source` tag of a line (`...,source=mqtt,...` or `...,source=mqtt <fields>`). A tag
# value escapes `,` `=` and space, and a meter id is plain text, so the pattern cannot
# match inside another tag; event lines (`meter_event`) have no source tag.
_SOURCE_TAG = re.compile(rb",source=([^, \n]+)[, ]")


class Histogram:
    """A histogram of plain numbers, read at scrape time (no metrics library here).

    `counts[i]` counts observations in (bounds[i-1], bounds[i]]; the last slot those
    above every bound (`+Inf`)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(`le`, observations at or below it) for each bound and `+Inf`, as Prometheus has it."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out

    def stats(self) -> HistogramStats:
        return {"count": self.count, "sum": self.sum, "buckets": dict(self.cumulative())}


class LineClient(Protocol):
    """Writes one body; may also have `async prepare()`, run once before the first batch."""

    target: str

    async def write(self, body: bytes) -> None: ...

    async def close(self) -> None: ...


class BatchWriter:
    def __init__(
        self,
        client: LineClient,
        *,
        batch_size: int = 5000,
        flush_interval_s: float = 1.0,
        max_retry_delay_s: float = 60.0,
        max_buffered_lines: int = 200_000,
        on_bad_line: Callable[[str, str], None] | None = None,
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        self._client = client
        self._batch_size = batch_size
        self._flush_interval = flush_interval_s
        self._max_delay = max_retry_delay_s
        self._high = max_buffered_lines
        self._low = max_buffered_lines // 2
        self._on_bad_line = on_bad_line or (lambda line, reason: None)
        self._on_state = on_state or (lambda healthy: None)
        self._buf: list[str] = []
        self._inflight = 0  # lines taken from the buffer but not yet accepted
        self._wakeup = asyncio.Event()
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._closing = False
        self._eager = False
        self.healthy = True
        # Counters for metrics and tests. `lines_written` counts lines the database
        # accepted (a 2xx answer to the request that carried them), events included;
        # `lines_by_source` the same by their `source` tag (readings only).
        self.lines_written = 0
        self.lines_by_source: Counter[str] = Counter()
        self.write_seconds = Histogram(WRITE_SECONDS_BUCKETS)  # accepted requests only
        self.batch_lines = Histogram(BATCH_LINES_BUCKETS)  # lines per accepted request
        self.lines_rejected = 0
        # Refusals (400/422 lines, dead-lettered) for attention, a metric and readiness:
        # `refusing_since` is the monotonic time of the first refusal in the current
        # unbroken run of batches with refusals (None once a batch has none), and
        # `last_refusal` the database's reason for the latest one.
        self.refusing_since: float | None = None
        self.last_refusal: str | None = None
        self._batch_refused = 0
        self._batch_first_reason: str | None = None
        self.lines_done = 0  # lines finished (written or refused), in the order taken
        self.batches_written = 0
        self.retries = 0
        self.last_error: str | None = None
        self.last_write_s: float | None = None

    # -- the hot path ---------------------------------------------------------------
    def add(self, line: str) -> int:
        """Take one line. Returns 0, the position a sink's `add` returns when there is
        nothing to wait for: `DirectSink` gives the pipeline this very method."""
        buf = self._buf
        buf.append(line)
        if len(buf) >= self._batch_size:
            self._wakeup.set()
        if len(buf) + self._inflight > self._high and self._resumed.is_set():
            self._resumed.clear()
            log.warning(
                "storage: %d lines waiting for %s; pausing sources until below %d",
                len(buf) + self._inflight,
                self._client.target,
                self._low,
            )
        return 0

    def extend(self, lines: list[str]) -> None:
        """Take many lines at once (a spool record)."""
        self._buf.extend(lines)
        if len(self._buf) >= self._batch_size:
            self._wakeup.set()

    @property
    def pending(self) -> int:
        return len(self._buf) + self._inflight

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    def counts(self) -> WriterCounts:
        """Counters and state for metrics and the status page (a snapshot)."""
        return {
            "healthy": self.healthy,
            "lines_written": self.lines_written,
            "lines_by_source": dict(self.lines_by_source),
            "lines_refused": self.lines_rejected,
            "batches_written": self.batches_written,
            "pending_lines": self.pending,
            "paused_sources": self.paused,
            "retries": self.retries,
            "last_write_s": self.last_write_s,
            "write_seconds": self.write_seconds.stats(),
            "batch_lines": self.batch_lines.stats(),
        }

    def stats(self) -> WriterStats:
        """`counts()` and the target, the errors and when refusals began."""
        return {
            **self.counts(),
            "target": self._client.target,
            "refusing_since": self.refusing_since,
            "last_refusal": self.last_refusal,
            "last_error": self.last_error,
        }

    async def wait_resumed(self) -> None:
        await self._resumed.wait()

    # -- the loop -----------------------------------------------------------------------
    async def run(self) -> None:
        """Write batches until `close()`; then write what is left, then return."""
        # A client may check its target first (v1: the database exists, or is created).
        prepare = getattr(self._client, "prepare", None)
        if prepare is not None:
            await prepare()
        while True:
            if len(self._buf) < self._batch_size and not self._closing:
                # Draining (shutdown): write what there is at once, but keep taking more.
                wait = 0.05 if self._eager and not self._buf else self._flush_interval
                if not (self._eager and self._buf):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), wait)
            self._wakeup.clear()
            if not self._buf:
                if self._closing:
                    return
                continue
            batch = self._buf[: self._batch_size]
            del self._buf[: self._batch_size]
            self._inflight = len(batch)
            try:
                await self._write_with_retry(batch)
                # Counted per batch, in order: a spool releases a record only when every
                # line of it is written or refused for good (a retried half counts once).
                self.lines_done += len(batch)
            finally:
                self._inflight = 0
            if not self._resumed.is_set() and self.pending <= self._low:
                log.info("storage: backlog down to %d lines; resuming sources", self.pending)
                self._resumed.set()

    def flush_eagerly(self) -> None:
        """Write partial batches at once from now on (a shutdown drains the spool)."""
        self._eager = True
        self._wakeup.set()

    def close(self) -> None:
        """Ask `run()` to flush everything and return."""
        self._closing = True
        self._wakeup.set()

    async def _write_with_retry(self, batch: list[str]) -> None:
        attempt = 0
        while True:
            # Counted per attempt: a retried batch refuses its bad lines again.
            self._batch_refused = 0
            self._batch_first_reason = None
            try:
                await self._write(batch)
            except RetryableWriteError as exc:
                attempt += 1
                self.retries += 1
                delay = self._backoff(attempt, exc.retry_after)
                self.last_error = str(exc)
                if self.healthy:
                    log.error(
                        "storage: write of %d lines to %s failed: %s; retrying in %.1f s "
                        "(and with backoff up to %.0f s until it works)",
                        len(batch),
                        self._client.target,
                        exc,
                        delay,
                        self._max_delay,
                    )
                    self.healthy = False
                    self._on_state(False)
                else:
                    log.debug("storage: retry %d failed: %s; next in %.1f s", attempt, exc, delay)
                await asyncio.sleep(delay)
                continue
            if not self.healthy:
                log.info("storage: %s accepts writes again", self._client.target)
                self.healthy = True
                self._on_state(True)
            self._note_refusals(len(batch))
            return

    def _note_refusals(self, lines: int) -> None:
        """One WARNING per batch with refusals (never one per line), and the refusal state."""
        refused = self._batch_refused
        if not refused:
            if self.refusing_since is not None:
                log.info("storage: %s accepts every line again", self._client.target)
            self.refusing_since = None
            return
        log.warning(
            "storage: %s refused %d of %d lines (kept in the dead-letter store, source "
            "storage); the first: %s",
            self._client.target,
            refused,
            lines,
            self._batch_first_reason,
        )

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        # Full jitter (AWS architecture blog): spreads a fleet of gateways apart
        # after a database restart instead of having them retry in lockstep.
        ceiling = min(self._max_delay, 0.5 * 2 ** min(attempt, 30))
        delay = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._max_delay))
        return delay

    async def _write(self, lines: list[str]) -> None:
        """Write lines; split on 413, bisect on 400/422. Raises only retryable errors."""
        body = "\n".join(lines).encode()
        started = time.perf_counter()
        try:
            await self._client.write(body)
        except PayloadTooLargeError:
            if len(lines) == 1:
                self._reject(lines[0], "a single line is over the server's request size limit")
                return
            log.warning("storage: 413 for %d lines; splitting the batch", len(lines))
            await self._halves(lines)
            return
        except BadPointsError as exc:
            if len(lines) == 1:
                self._reject(lines[0], str(exc))
                return
            await self._halves(lines)
            return
        except RetryableWriteError:
            raise
        except WriteError as exc:  # unknown failure: keep the data, retry
            raise RetryableWriteError(str(exc), status=exc.status) from exc
        took = time.perf_counter() - started
        self.last_write_s = took
        self.write_seconds.observe(took)
        self.batch_lines.observe(len(lines))
        self.lines_written += len(lines)
        self.batches_written += 1
        self._count_sources(body, len(lines))

    def _count_sources(self, body: bytes, lines: int) -> None:
        """Count a written body's lines by their `source` tag, per batch and in C.

        `bytes.count` for the sources already known (usually one or two), most frequent
        first, stopping once every line is accounted for (a batch of readings from one
        source: one pass). Tags are sorted, so the source is followed by a space (no
        topology) or by `,transformer_id=`; `source=` occurs nowhere else (meter ids
        have no `=`, other tag values escape it, no field is named so). Lines without
        the tag (events) cost one more pass; the regular expression (~0.7 us a line)
        runs only for a body with a source not seen before."""
        counts = self.lines_by_source
        left = lines
        for end in (b" ", b","):
            for source in sorted(counts, key=counts.__getitem__, reverse=True):
                if not left:
                    return
                n = body.count(b"source=" + source.encode() + end)
                counts[source] += n
                left -= n
        found = lines - left
        if body.count(b"source=") > found:  # a source not seen before
            for raw, n in Counter(_SOURCE_TAG.findall(body)).items():
                source = raw.decode("utf-8", "replace")
                if source not in counts:
                    counts[source] += n

    async def _halves(self, lines: list[str]) -> None:
        mid = len(lines) // 2
        await self._write(lines[:mid])
        await self._write(lines[mid:])

    def _reject(self, line: str, reason: str) -> None:
        # Logged once per batch by _note_refusals: a flood of bad lines is one line of log.
        self.lines_rejected += 1
        if self.refusing_since is None:
            self.refusing_since = time.monotonic()
        self._batch_refused += 1
        if self._batch_first_reason is None:
            self._batch_first_reason = reason
        self.last_refusal = reason
        self._on_bad_line(line, f"refused by the database: {reason}")
