"""The database client and its writer, built from the `storage:` section.

One place for what the gateway, `meter-gateway replay` and the dead-letter replay
all build the same way: the client the section's `api` names, and a `BatchWriter`
with the section's batching, retry and backpressure settings.
"""

from __future__ import annotations

from collections.abc import Callable

from meter_gateway.storage.influxdb.config import StorageConfig
from meter_gateway.storage.influxdb.v1 import V1Client
from meter_gateway.storage.influxdb.v2 import V2Client
from meter_gateway.storage.influxdb.writer import BatchWriter, LineClient

__all__ = ["make_client", "make_writer"]


def make_client(storage: StorageConfig) -> LineClient:
    """The line-protocol client for `storage.api` (v1 `/write` or v2 `/api/v2/write`)."""
    return V1Client(storage) if storage.api == "v1" else V2Client(storage)


def make_writer(
    client: LineClient,
    storage: StorageConfig,
    *,
    on_bad_line: Callable[[str, str], None] | None = None,
) -> BatchWriter:
    """A `BatchWriter` in front of `client`, with the section's batching and bounds.

    `on_bad_line(line, reason)` gets each line the database refused for good."""
    return BatchWriter(
        client,
        batch_size=storage.batch_size,
        flush_interval_s=storage.flush_interval_s,
        max_retry_delay_s=storage.max_retry_delay_s,
        max_buffered_lines=storage.max_buffered_lines,
        on_bad_line=on_bad_line,
    )
