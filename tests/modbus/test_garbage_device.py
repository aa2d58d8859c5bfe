"""A device that answers, but only with garbage, is failing: its breaker opens with one
WARNING and it is counted (`unusable_polls`, `breaker_openings`), and what it sent is kept
once, not as a dead letter per poll forever. And pymodbus's own messages about a hostile
peer pass the gateway's log limit.

Real pymodbus servers (the simulator's) answer with NaN registers, exception codes, or
3.4e38 (the largest float32, a common 'no value'); a raw TCP server answers every
request with another unit's frame."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from meter_gateway.gateway.logs import library_limit, setup_logging
from meter_gateway.protocols.modbus.config import ModbusConfig
from meter_gateway.protocols.modbus.decode import FLOAT32_MAX
from meter_gateway.protocols.modbus.poller import Poller
from meter_gateway.protocols.modbus.registermap import bundled_map
from meter_gateway.simulators.modbus.server import MeterServer, make_meter

pytestmark = pytest.mark.integration

FIELDS = [e.field for e in bundled_map("sdm630").registers]


def device(port: int, **kw: Any) -> dict[str, Any]:
    return {
        "meter_id": "junk",
        "model": "sdm630",
        "host": "127.0.0.1",
        "port": port,
        "unit": 1,
        "interval_s": 0.1,
        "timeout_s": 0.3,
        "retries": 0,
        "breaker": {"failures": 3, "backoff_s": 0.1, "max_backoff_s": 0.2},
        **kw,
    }


@pytest.fixture
async def garbage_server(request: pytest.FixtureRequest) -> AsyncIterator[MeterServer]:
    kind = request.param
    if kind == "max_float":
        meter = make_meter(1, "sdm630", values=dict.fromkeys(FIELDS, FLOAT32_MAX))
    else:
        meter = make_meter(1, "sdm630", live=False)
    meter.refresh_s = 0.0  # new values show at the next read
    server = MeterServer([meter])
    await server.start()
    if kind == "nan":
        server.set_fault(1, "nan")
    elif kind == "exception":
        server.set_fault(1, "exception", exception_code=0x04)
    yield server
    await server.stop()


@pytest.mark.parametrize(
    ("garbage_server", "kind", "shown"),
    [
        ("nan", "nan", "11 registers unusable reading input registers 0x0000-0x004B: NaN in"),
        ("exception", "exception", "modbus exception 0x04 (server device failure)"),
        ("max_float", "nan", "the largest float32 (a 'no value' marker) in voltage_l1_v"),
    ],
    indirect=["garbage_server"],
)
async def test_a_device_answering_only_garbage_is_failing_not_a_stream(
    garbage_server: MeterServer, kind: str, shown: str, sink, log_watch
) -> None:
    cfg = ModbusConfig.model_validate({"devices": [device(garbage_server.port)]})
    async with Poller(cfg, on_reading=sink.on_reading, on_error=sink.on_error) as poller:
        stats = poller.stats()["junk"]
        # Three polls open the breaker; then probes, each failing again. Every poll
        # logs one DEBUG line, which wakes the wait.
        await log_watch.wait_for(lambda: stats.unusable_polls >= 8)
        assert stats.readings == 0
        assert stats.breaker_openings == 1
        assert stats.down_since is not None
        # Kept once: one record (one block), however many polls.
        assert len(sink.errors) == 1
        assert kind + ": " in sink.errors[0][1]
        assert shown in sink.errors[0][1]
        warnings = log_watch.lines(logging.WARNING, "junk (")
        assert len(warnings) == 1
        assert "is failing: it answers, but with nothing usable" in warnings[0]
        assert "until it sends valid data" in warnings[0]
        assert stats.errors[kind] >= 8
        # Good values again: answering again, one INFO line, readings flow.
        garbage_server.set_fault(1, "none")
        garbage_server.meters[1].source = make_meter(1, "sdm630", live=False).source
        await sink.wait_for(lambda: len(sink.readings) >= 1)
    assert stats.down_since is None
    assert len(log_watch.lines(logging.INFO, "junk (", "answering again, after")) == 1
    assert len(sink.errors) == 1


async def test_a_partly_bad_device_is_reported_once_per_run(sink, log_watch) -> None:
    """Readings still come (one register NaN, the rest fine): not failing, and the bad
    register is kept once and logged once, not on every poll."""
    values = dict.fromkeys(FIELDS, 1.0)
    values["frequency_hz"] = float("nan")
    server = MeterServer([make_meter(1, "sdm630", values=values)])
    await server.start()
    try:
        cfg = ModbusConfig.model_validate({"devices": [device(server.port)]})
        async with Poller(cfg, on_reading=sink.on_reading, on_error=sink.on_error) as poller:
            await sink.wait_for(lambda: len(sink.readings) >= 6)
            stats = poller.stats()["junk"]
    finally:
        await server.stop()
    assert (stats.breaker, stats.unusable_polls) == ("closed", 0)
    assert stats.errors["nan"] >= 6
    assert len(sink.errors) == 1
    assert "NaN in frequency_hz" in sink.errors[0][1]
    assert len(log_watch.lines(logging.WARNING, "junk (", "NaN in frequency_hz")) == 1


# -- pymodbus's own log about a hostile peer ---------------------------------------------------


@pytest.fixture
async def other_units_frames() -> AsyncIterator[int]:
    """A Modbus TCP server that answers every request with a frame of another unit (as a
    misbehaving gateway on a shared line would pass other devices' traffic on)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readexactly(7)
                tid, _pid, length, unit = struct.unpack(">HHHB", head)
                pdu = await reader.readexactly(length - 1)
                count = struct.unpack(">H", pdu[3:5])[0]
                body = bytes([pdu[0], 2 * count]) + b"\x12\x34" * count
                frame = struct.pack(">HHHB", tid, 0, len(body) + 1, (unit % 200) + 7) + body
                writer.write(frame)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()


@pytest.fixture
def gateway_log() -> Iterator[io.StringIO]:
    """The gateway's own log set-up (as `meter-gateway run` makes it), into a buffer."""
    stream = io.StringIO()
    levels = {n: logging.getLogger(n).level for n in ("pymodbus", "meter_gateway.mqtt.paho")}
    setup_logging("info", "text", stream=stream)
    library_limit().flush(final=True)
    stream.seek(0)
    stream.truncate(0)
    yield stream
    library_limit().flush(final=True)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


async def test_pymodbus_messages_about_a_hostile_peer_are_limited(
    other_units_frames: int, sink, gateway_log: io.StringIO
) -> None:
    cfg = ModbusConfig.model_validate(
        {"devices": [device(other_units_frames, timeout_s=0.1, breaker={"failures": 1000})]}
    )
    poller = Poller(cfg, on_reading=sink.on_reading, on_error=sink.on_error)
    try:
        for _ in range(12):
            assert await poller.poll_once("junk") is None
    finally:
        await poller.__aexit__(None, None, None)
        for conn in poller._connections.values():
            await conn.close()
    lines = gateway_log.getvalue().splitlines()
    pymodbus_lines = [x for x in lines if " pymodbus" in x]
    # pymodbus said it skipped another unit's frame 12 times, each with a dump of the
    # frames on the line: one line, without the dump.
    assert len(pymodbus_lines) == 1, pymodbus_lines
    assert pymodbus_lines[0].endswith(
        "ERROR: request ask for id=1 but got id=8, Skipping. (frame dump at --log-level debug)"
    )
    assert "0x12 0x34" not in gateway_log.getvalue()
    library_limit().flush(final=True)
    counted = gateway_log.getvalue().splitlines()[len(lines) :]
    assert len(counted) == 1
    assert counted[0].endswith("(and 10 more like it in the last 60 s)")
