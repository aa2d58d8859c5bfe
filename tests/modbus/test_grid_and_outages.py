"""Readings stamped with their slot on the interval grid; devices that do not answer go
down with one WARNING, come back with one INFO line, and are never dead-lettered."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from typing import Any

import pytest

from meter_gateway.protocols.modbus.config import ModbusConfig
from meter_gateway.protocols.modbus.poller import Poller
from meter_gateway.simulators.modbus.server import MeterServer, make_meter

pytestmark = pytest.mark.integration


def tcp(meter_id: str, port: int, unit: int = 1, **kw: Any) -> dict[str, Any]:
    return {
        "meter_id": meter_id,
        "model": "sdm630",
        "host": "127.0.0.1",
        "port": port,
        "unit": unit,
        **kw,
    }


def on_grid(ts: object, interval: float) -> bool:
    """`ts` is a whole number of intervals since the epoch, exactly."""
    assert isinstance(ts, float)
    return (ts / interval).is_integer() and math.floor(ts / interval) * interval == ts


def stamps(sink: Any, meter_id: str) -> list[float]:
    return [float(r["ts"]) for r, _ in sink.readings if r["meter_id"] == meter_id]  # type: ignore[arg-type]


async def test_readings_are_stamped_with_their_slot_on_a_busy_line(modbus_meters, sink) -> None:
    interval = 0.5
    server = await modbus_meters(6, live=False)
    # Six meters on one connection, one request at a time: all but the first go out
    # after their slot. The handler blocks the loop a while, as a slow pipeline would.
    ids = [f"m-{u}" for u in range(1, 7)]
    cfg = ModbusConfig.model_validate(
        {"devices": [tcp(m, server.port, u, interval_s=interval) for u, m in enumerate(ids, 1)]}
    )
    handed: list[tuple[float, float]] = []

    def slow_handler(reading: dict[str, object], label: str) -> None:
        handed.append((float(reading["ts"]), time.time()))  # type: ignore[arg-type]
        time.sleep(0.02)
        sink.on_reading(reading, label)

    started = time.time()
    async with Poller(cfg, on_reading=slow_handler, on_error=sink.on_error) as poller:
        await sink.wait_for(lambda: min(sink.per_meter[m] for m in ids) >= 4)
        stats = poller.stats()
    assert sink.errors == []
    for m in ids:
        ts = stamps(sink, m)
        assert all(on_grid(t, interval) for t in ts), ts
        assert all(b > a for a, b in itertools.pairwise(ts))  # one reading per slot
        assert ts[0] > started  # the start-up probe's values were not handed on
        assert (stats[m].failed_polls, stats[m].errors) == (0, {})
    # Stamped with the slot, never the moment of sending: some went out well after it.
    assert all(ts <= at for ts, at in handed)
    assert max(late for m in ids for late in stats[m].lateness_s) > 0.02


async def test_a_poll_that_starts_a_slot_late_is_stamped_with_the_slot_it_started_in(
    modbus_meters, sink
) -> None:
    interval = 0.5
    server = await modbus_meters(1, live=False)
    held: list[float] = []

    async def storage_backpressure() -> None:
        if len(held) == 1:  # the second poll: storage makes it wait past the next slot
            held.append(time.time())
            await asyncio.sleep(interval * 1.5)
        else:
            held.append(time.time())

    cfg = ModbusConfig.model_validate({"devices": [tcp("m", server.port, interval_s=interval)]})
    async with Poller(
        cfg, on_reading=sink.on_reading, on_error=sink.on_error, wait_ready=storage_backpressure
    ) as poller:
        await sink.wait_for(lambda: len(sink.readings) >= 4)
        stats = poller.stats()["m"]
    ts = stamps(sink, "m")
    assert all(on_grid(t, interval) for t in ts), ts
    assert all(b > a for a, b in itertools.pairwise(ts))
    held_slot = math.floor(held[1] / interval) * interval
    # Not stamped with the slot it was meant for: its values were read a slot later.
    assert held_slot not in ts
    assert ts[1] >= held_slot + interval
    assert stats.missed_slots >= 1


async def test_unreachable_devices_go_down_once_and_come_back(
    modbus_meters, sink, log_watch, caplog, closed_port, mute_port
) -> None:
    interval = 0.5
    server = await modbus_meters(1, live=False)
    down_fast = {"failures": 2, "backoff_s": 0.5, "max_backoff_s": 1.0}
    devices = [
        tcp("live", server.port, interval_s=interval),
        # Nothing listens: connection refused.
        tcp("refused", closed_port, interval_s=interval, breaker=down_fast),
        # Accepts the connection, never answers: every request times out.
        tcp("mute", mute_port, interval_s=interval, timeout_s=0.2, breaker=down_fast),
    ]
    cfg = ModbusConfig.model_validate(
        {"devices": devices, "reconnect_delay_s": 0.1, "reconnect_max_delay_s": 0.2}
    )

    def down(meter_id: str) -> list[str]:
        return log_watch.lines(logging.WARNING, f"modbus {meter_id} (", "is down")

    revived: MeterServer | None = None
    async with Poller(cfg, on_reading=sink.on_reading, on_error=sink.on_error) as poller:
        try:
            await log_watch.wait_for(lambda: bool(down("refused")) and bool(down("mute")))
            stats = poller.stats()
            assert stats["refused"].breaker == "open"
            assert stats["mute"].breaker in ("open", "half_open")
            # The live meter's readings keep coming while both are down.
            before = sink.per_meter["live"]
            await sink.wait_for(lambda: sink.per_meter["live"] >= before + 3)
            # Something starts listening on the refused port: it comes back.
            revived = MeterServer([make_meter(1, "sdm630", live=False)], port=closed_port)
            await revived.start()
            await sink.wait_for(lambda: sink.per_meter["refused"] >= 2)
            stats = poller.stats()
        finally:
            if revived is not None:
                await revived.stop()
    assert sink.errors == []  # nothing the devices sent: no dead letters
    [refused_down] = down("refused")
    assert refused_down.startswith(
        f"modbus refused (tcp://127.0.0.1:{closed_port}/1) is down: cannot connect to "
        f"127.0.0.1:{closed_port} (connection refused) (2 failed polls in a row since "
    )
    assert down("mute")[0].startswith(
        f"modbus mute (tcp://127.0.0.1:{mute_port}/1) is down: no answer within 0.2 s"
    )
    back = log_watch.lines(logging.INFO, "modbus refused (", "answering again, after")
    assert len(back) == 1
    assert " down (since " in back[0]
    # One line each way, from any logger, about either device.
    for meter_id in ("refused", "mute"):
        loud = [
            r
            for r in caplog.records
            if r.levelno >= logging.WARNING and f"{meter_id} (" in r.getMessage()
        ]
        assert len(loud) == 1, [r.getMessage() for r in loud]
    assert log_watch.lines(logging.INFO, "modbus mute (") == []  # still down
    for m in ("live", "refused"):
        assert all(on_grid(t, interval) for t in stamps(sink, m))
    s = stats["refused"]
    assert (s.breaker, s.down_since, s.breaker_openings) == ("closed", None, 1)
    assert set(s.errors) == {"connection"}
    assert s.skipped >= 1
    m = stats["mute"]
    assert set(m.errors) == {"timeout"}
    assert m.breaker_openings == 1
    assert m.down_since is not None
    live = stats["live"]
    assert (live.errors, live.failed_polls) == ({}, 0)


async def test_a_probe_waits_for_the_connections_own_reconnect(
    sink, log_watch, closed_port
) -> None:
    # The breaker would probe every 0.1 s, the connection only tries every 0.6 s: probes
    # in between would fail without trying and double the backoff for nothing.
    cfg = ModbusConfig.model_validate(
        {
            "devices": [
                tcp(
                    "gone",
                    closed_port,
                    interval_s=0.1,
                    breaker={"failures": 1, "backoff_s": 0.1, "max_backoff_s": 0.1},
                )
            ],
            "reconnect_delay_s": 0.6,
            "reconnect_max_delay_s": 0.6,
        }
    )
    async with Poller(cfg, on_reading=sink.on_reading, on_error=sink.on_error) as poller:
        await log_watch.wait_for(
            lambda: len(log_watch.lines(logging.DEBUG, "gone (", "connection:")) >= 3
        )
        s = poller.stats()["gone"]
        c = poller.connection_stats()[f"tcp://127.0.0.1:{closed_port}"]
        # Every failed poll was a real attempt to connect; the slots between were skipped.
        assert s.errors["connection"] == c.connect_failures
        assert s.skipped >= 3
        assert s.breaker_openings == 1


async def test_devices_behind_a_connection_that_comes_back_are_probed_at_once(
    sink, log_watch, closed_port
) -> None:
    fast = {"failures": 1, "backoff_s": 0.3, "max_backoff_s": 0.3}
    slow = {"failures": 1, "backoff_s": 600.0, "max_backoff_s": 600.0}
    devices = [
        tcp("a", closed_port, 1, interval_s=0.2, breaker=fast),
        # On its own it would wait ten minutes before asking again.
        tcp("b", closed_port, 2, interval_s=0.2, breaker=slow),
    ]
    cfg = ModbusConfig.model_validate(
        {"devices": devices, "reconnect_delay_s": 0.1, "reconnect_max_delay_s": 0.1}
    )
    server = MeterServer(
        [make_meter(1, "sdm630", live=False), make_meter(2, "sdm630", live=False)],
        port=closed_port,
    )
    async with Poller(cfg, on_reading=sink.on_reading, on_error=sink.on_error) as poller:
        try:
            await log_watch.wait_for(
                lambda: all(log_watch.lines(logging.WARNING, f"{m} (", "is down") for m in "ab")
            )
            await server.start()
            await sink.wait_for(lambda: sink.per_meter["a"] >= 1 and sink.per_meter["b"] >= 1)
            stats = poller.stats()
        finally:
            await server.stop()
    assert stats["b"].breaker == "closed"
    assert len(log_watch.lines(logging.INFO, "modbus b (", "answering again")) == 1
    assert sink.errors == []
