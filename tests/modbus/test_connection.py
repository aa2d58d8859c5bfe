"""The connection: a request that would run into the answering meters' slot waits for it."""

from __future__ import annotations

import time

import pytest

from meter_gateway.protocols.modbus.connection import Connection

pytestmark = pytest.mark.integration


async def test_low_priority_request_yields_to_the_next_slot(modbus_meters) -> None:
    server = await modbus_meters(1, live=False)
    conn = Connection(f"tcp://127.0.0.1:{server.port}", "tcp", host="127.0.0.1", port=server.port)
    try:
        slot = time.time() + 0.2  # the answering meters need the line then
        result = await conn.read(
            unit=1, function=4, address=0, count=2, timeout_s=5.0, priority=1, busy_at=lambda: slot
        )
        assert result.sent_at >= slot  # waited for the slot rather than risk 5 s in its way
        assert len(result.registers) == 2
        # With room before the slot (or no slot at all) it goes at once.
        far = time.time() + 60
        before = time.time()
        result = await conn.read(
            unit=1, function=4, address=0, count=2, timeout_s=0.5, priority=1, busy_at=lambda: far
        )
        assert result.sent_at < far
        assert result.sent_at - before < 30
        assert conn.stats.requests == 2
        assert conn.stats.connects == 1
    finally:
        await conn.close()
