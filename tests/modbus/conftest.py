"""Helpers for the Modbus tests.

The simulator fixtures (`modbus_meters`, `modbus_fleet`, `serial_pty_pair`) come from
the pytest11 entry point `meter_gateway_modbus` (`simulators/modbus/pytest_plugin.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator

import pytest


class Sink:
    """Collects what a poller hands out; `wait_for` awaits a condition on it."""

    def __init__(self) -> None:
        self.readings: list[tuple[dict[str, object], str]] = []
        self.errors: list[tuple[str, str, bytes | None]] = []
        self.per_meter: Counter[str] = Counter()
        self._changed = asyncio.Event()

    def on_reading(self, reading: dict[str, object], label: str) -> None:
        self.readings.append((reading, label))
        self.per_meter[str(reading["meter_id"])] += 1
        self._changed.set()

    def on_error(self, label: str, reason: str, raw: bytes | None) -> None:
        self.errors.append((label, reason, raw))
        self._changed.set()

    async def wait_for(self, condition: Callable[[], bool], limit_s: float = 30.0) -> None:
        """Until `condition()` holds, re-checked on every reading or error."""
        async with asyncio.timeout(limit_s):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LogWatch(logging.Handler):
    """The Modbus package's log records as they come; `wait_for` awaits a condition on them.

    Log lines are the poller's only signal that a device went down or came back, so
    tests await them here rather than poll the stats."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self._changed.set()

    def lines(self, level: int, *words: str) -> list[str]:
        """Messages logged at exactly `level` that contain every one of `words`."""
        return [
            m
            for r in self.records
            if r.levelno == level and all(w in (m := r.getMessage()) for w in words)
        ]

    async def wait_for(self, condition: Callable[[], bool], limit_s: float = 30.0) -> None:
        async with asyncio.timeout(limit_s):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
def log_watch(caplog: pytest.LogCaptureFixture) -> Iterator[LogWatch]:
    """Every record of `protocols.modbus`, DEBUG up (caplog sees them too)."""
    caplog.set_level(logging.DEBUG, logger="meter_gateway.protocols.modbus")
    watch = LogWatch()
    logger = logging.getLogger("meter_gateway.protocols.modbus")
    logger.addHandler(watch)
    yield watch
    logger.removeHandler(watch)


@pytest.fixture
async def mute_port() -> AsyncIterator[int]:
    """A loopback port that accepts TCP connections and never answers a request."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(4096):
                pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()
