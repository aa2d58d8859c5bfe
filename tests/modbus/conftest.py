"""Helpers for the Modbus tests.

The simulator fixtures (`modbus_meters`, `modbus_fleet`, `serial_pty_pair`) come from
the pytest11 entry point `meter_gateway_modbus` (`simulators/modbus/pytest_plugin.py`).
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Callable

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
