"""Lines straight into the database writer, without a spool.

The spool makes each line durable before its input is acknowledged. Where nothing is
acknowledged (the dead-letter replay, `meter-gateway replay`: a run can simply be run
again) or where the spool's cost is what is being measured (benchmarks), its fsyncs
buy nothing: lines go to the writer's memory, and count as durable at once.
"""

from __future__ import annotations

from collections.abc import Callable

from meter_gateway.storage.influxdb.writer import BatchWriter

__all__ = ["ALWAYS_DURABLE", "DirectSink"]

# A position no sink ever reaches: whatever was handed over counts as durable.
ALWAYS_DURABLE = 1 << 62


def _nowhere(line: str) -> int:
    return 0


class DirectSink:
    """A sink for the pipeline (`add`, `paused`, `durable`, `wait_durable`) in front of
    a `BatchWriter`; with no writer, lines go nowhere (nothing is to be stored).

    Backpressure stays the writer's: `paused` while it holds too many lines, and
    `wait_resumed` until it does not."""

    durable = ALWAYS_DURABLE

    def __init__(self, writer: BatchWriter | None) -> None:
        self.writer = writer
        # The writer's own method, bound and not wrapped: this is the hot path (a call
        # per reading), and a wrapper would make it two.
        self.add: Callable[[str], int] = writer.add if writer is not None else _nowhere

    @property
    def paused(self) -> bool:
        return self.writer is not None and self.writer.paused

    async def wait_resumed(self) -> None:
        if self.writer is not None:
            await self.writer.wait_resumed()

    async def wait_durable(self, seq: int) -> None:
        return None
