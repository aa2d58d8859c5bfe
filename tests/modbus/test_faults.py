"""Dead, refusing, garbling and NaN-sending meters: error counts and reports, never a stall.

What a device sent (exception responses, garbled frames, NaN registers) goes to
`on_error`; a device that sends nothing (connection refused, timeout) is only counted,
and logged when its breaker opens."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from meter_gateway.protocols.modbus.config import ModbusConfig
from meter_gateway.protocols.modbus.poller import Poller
from meter_gateway.simulators.modbus.server import MeterServer, make_meter

pytestmark = pytest.mark.integration


def tcp(meter_id: str, port: int, unit: int, **kw: Any) -> dict[str, Any]:
    return {
        "meter_id": meter_id,
        "model": "sdm630",
        "host": "127.0.0.1",
        "port": port,
        "unit": unit,
        **kw,
    }


async def test_dead_devices_do_not_hold_up_live_ones(modbus_meters, sink, closed_port) -> None:
    server = await modbus_meters(3, live=False)
    live = [tcp(f"live-{u}", server.port, u, interval_s=0.5, timeout_s=0.25) for u in (1, 2, 3)]
    # Unit 99 has no meter: silence on the live devices' own connection.
    dead = tcp(
        "dead",
        server.port,
        99,
        interval_s=0.5,
        timeout_s=0.25,
        breaker={"failures": 2, "backoff_s": 60},
    )
    # Nothing listens on this port at all.
    gone = tcp("gone", closed_port, 1, interval_s=0.5, timeout_s=0.25)
    cfg = ModbusConfig.model_validate({"devices": [*live, dead, gone], "reconnect_delay_s": 0.5})
    async with Poller(cfg, on_reading=sink.on_reading, on_error=sink.on_error) as poller:
        await sink.wait_for(lambda: min(sink.per_meter[f"live-{u}"] for u in (1, 2, 3)) >= 6)
        stats = poller.stats()
        conns = poller.connection_stats()
    for u in (1, 2, 3):
        s = stats[f"live-{u}"]
        assert s.errors == {}
        assert s.failed_polls == 0
        assert s.missed_slots == 0  # every slot of the interval was polled
    d = stats["dead"]
    # One attempt each (it never answered, so no retries), queued behind the live
    # devices: the start-up probe and the first slot's poll failed, the breaker opened
    # and every later slot was skipped without touching the line.
    assert (d.polls, d.requests, d.errors) == (1, 2, {"timeout": 2})
    assert d.breaker == "open"
    assert d.skipped >= 2
    assert d.last_error == (
        f"dead (tcp://127.0.0.1:{server.port}/99): timeout: no answer within 0.25 s reading "
        "input registers 0x0000-0x004B"
    )
    g = stats["gone"]
    # Probe and two polls refused (default breaker: 3 failures), then only probes, 10 s on.
    assert g.errors == {"connection": 3}
    assert g.breaker == "open"
    assert f"cannot connect to 127.0.0.1:{closed_port} (connection refused)" in str(g.last_error)
    c = conns[f"tcp://127.0.0.1:{closed_port}"]
    assert not c.connected
    assert 1 <= c.connect_failures <= 3  # reconnect backs off, it does not hammer
    assert sink.errors == []  # neither sent anything: nothing to dead-letter


async def test_device_answering_exceptions(modbus_meters, sink) -> None:
    server = await modbus_meters(2, live=False)
    server.set_fault(2, "exception", exception_code=0x02)
    cfg = ModbusConfig.model_validate(
        {"devices": [tcp("ok", server.port, 1), tcp("bad", server.port, 2)]}
    )
    poller = Poller(cfg, on_reading=sink.on_reading, on_error=sink.on_error)
    assert await poller.poll_once("bad") is None
    assert await poller.poll_once("ok") is not None
    label, reason, raw = sink.errors[0]
    assert label == f"tcp://127.0.0.1:{server.port}/2"
    assert reason == (
        f"bad ({label}): exception: modbus exception 0x02 (illegal data address) reading "
        "input registers 0x0000-0x004B"
    )
    assert raw is not None
    assert raw[-2:] == b"\x84\x02"  # the exception frame as received: fc 0x04 | 0x80, code 2
    s = poller.stats()["bad"]
    assert (s.errors, s.requests, s.breaker) == ({"exception": 1}, 1, "closed")  # not retried


async def test_busy_device_is_retried(modbus_meters, sink) -> None:
    server = await modbus_meters(1, live=False)
    cfg = ModbusConfig.model_validate({"devices": [tcp("busy", server.port, 1, retries=2)]})
    poller = Poller(cfg, on_reading=sink.on_reading, on_error=sink.on_error)
    assert await poller.poll_once("busy") is not None  # known to answer: retries apply
    server.set_fault(1, "exception", exception_code=0x06)  # server device busy
    assert await poller.poll_once("busy") is None
    assert poller.stats()["busy"].requests == 1 + 3
    assert sink.errors[0][1].endswith(
        "(server device busy) reading input registers 0x0000-0x004B (3 attempts)"
    )


@pytest.mark.parametrize("framer", ["socket", "rtu"])
async def test_garbled_frames_are_reported_with_the_bytes(
    framer: str, modbus_meters, sink, log_watch
) -> None:
    server = await modbus_meters(1, live=False, framer=framer)
    server.set_fault(1, "garbled")
    transport = "rtu-over-tcp" if framer == "rtu" else "tcp"
    dev = tcp(
        "noisy",
        server.port,
        1,
        transport=transport,
        timeout_s=0.2,
        retries=0,
        breaker={"failures": 2},
    )
    cfg = ModbusConfig.model_validate({"devices": [dev]})
    poller = Poller(cfg, on_reading=sink.on_reading, on_error=sink.on_error)
    assert await poller.poll_once("noisy") is None
    _, reason, raw = sink.errors[0]
    assert "garbled: no valid frame within 0.2 s" in reason
    assert raw is not None
    assert len(raw) > 100  # 76 registers came back, just not as a valid frame
    # Still garbling: counted, not kept again; the breaker opens on it (failing, not
    # a stream of records) with the one WARNING.
    assert await poller.poll_once("noisy") is None
    assert len(sink.errors) == 1
    s = poller.stats()["noisy"]
    assert (s.breaker, s.unusable_polls, s.breaker_openings) == ("open", 2, 1)
    server.set_fault(1, "none")  # the line recovers, and so does the poller
    assert await poller.poll_once("noisy") is not None
    assert poller.stats()["noisy"].errors == {"garbled": 2}
    warnings = log_watch.lines(logging.WARNING, "noisy (")
    assert len(warnings) == 1
    assert "is failing: it answers, but with nothing usable: garbled: no valid frame" in warnings[0]
    assert len(log_watch.lines(logging.INFO, "noisy (", "answering again, after")) == 1


async def test_garbled_on_a_serial_line(modbus_meters, serial_pty_pair, sink) -> None:
    server_end, client_end = serial_pty_pair
    server = await modbus_meters(2, live=False, model="sdm120", serial_port=server_end)
    server.set_fault(2, "garbled")
    serial = {"port": client_end}
    devs = [
        {
            "meter_id": f"m{u}",
            "model": "sdm120",
            "transport": "rtu",
            "serial": serial,
            "unit": u,
            "timeout_s": 0.2,
            "retries": 0,
        }
        for u in (1, 2)
    ]
    poller = Poller(
        ModbusConfig.model_validate({"devices": devs}),
        on_reading=sink.on_reading,
        on_error=sink.on_error,
    )
    assert await poller.poll_once("m2") is None
    assert await poller.poll_once("m1") is not None  # the line is usable right after
    assert poller.stats()["m2"].errors == {"garbled": 1}


async def test_nan_registers_are_dropped_and_reported(modbus_meters, sink) -> None:
    server = await modbus_meters(1, live=False)
    server.set_fault(1, "nan")
    cfg = ModbusConfig.model_validate({"devices": [tcp("nan", server.port, 1)]})
    poller = Poller(cfg, on_reading=sink.on_reading, on_error=sink.on_error)
    assert await poller.poll_once("nan") is None  # nothing storable: no reading at all
    # One record for the block, naming the first registers and how many more.
    assert [r for _, r, _ in sink.errors] == [
        f"nan (tcp://127.0.0.1:{server.port}/1): nan: 11 registers unusable reading input "
        "registers 0x0000-0x004B: NaN in voltage_l1_v at 0x0000 (words 7FC0 0000); NaN in "
        "voltage_l2_v at 0x0002 (words 7FC0 0000); NaN in voltage_l3_v at 0x0004 (words "
        "7FC0 0000); and 8 more"
    ]
    s = poller.stats()["nan"]
    assert s.errors == {"nan": 11}
    # Nothing usable: a failed poll for the breaker (closed until `failures` of them).
    assert (s.unusable_polls, s.breaker) == (1, "closed")


async def test_reconnects_after_the_server_comes_back(sink) -> None:
    server = MeterServer([make_meter(1, "sdm630", live=False)])
    await server.start()
    port = server.port
    cfg = ModbusConfig.model_validate(
        {
            "devices": [tcp("m", port, 1, retries=0, timeout_s=0.3)],
            "reconnect_delay_s": 0.05,
            "reconnect_max_delay_s": 0.2,
        }
    )
    poller = Poller(cfg, on_reading=sink.on_reading, on_error=sink.on_error)
    try:
        assert await poller.poll_once("m") is not None
        await server.stop()
        assert await poller.poll_once("m") is None
        assert poller.stats()["m"].errors.keys() == {"connection"}
        server = MeterServer([make_meter(1, "sdm630", live=False)], port=port)
        await server.start()
        for _ in range(50):  # the reconnect backoff is time-based: poll until it is over
            if await poller.poll_once("m") is not None:
                break
            await asyncio.sleep(0.05)
        assert poller.stats()["m"].readings == 2
        assert poller.connection_stats()[f"tcp://127.0.0.1:{port}"].connects == 2
    finally:
        await server.stop()


async def test_breaker_closes_when_the_meter_answers_again(modbus_meters, sink, log_watch) -> None:
    server = await modbus_meters(1, live=False)
    server.set_fault(1, "silent")
    dev = tcp(
        "m",
        server.port,
        1,
        interval_s=0.1,
        timeout_s=0.1,
        retries=0,
        breaker={"failures": 1, "backoff_s": 0.2},
    )
    async with Poller(
        ModbusConfig.model_validate({"devices": [dev]}),
        on_reading=sink.on_reading,
        on_error=sink.on_error,
    ) as poller:
        # Opened at the start-up probe (failures: 1), probed at a slot, failed again.
        await log_watch.wait_for(lambda: len(log_watch.lines(logging.DEBUG, "m (", "timeout")) >= 2)
        assert poller.stats()["m"].breaker == "open"
        server.set_fault(1, "none")
        await sink.wait_for(lambda: len(sink.readings) >= 1)
        s = poller.stats()["m"]
    assert s.breaker == "closed"
    assert s.skipped >= 1
    assert s.down_since is None
    assert s.breaker_openings == 1  # the failed probe's re-opening is the same outage
    assert len(log_watch.lines(logging.WARNING, "m (", "is down")) == 1
    assert len(log_watch.lines(logging.INFO, "m (", "answering again, after")) == 1
    assert sink.errors == []


async def test_polling_waits_while_storage_is_not_ready(modbus_meters, sink) -> None:
    server = await modbus_meters(1, live=False)
    ready = asyncio.Event()
    asked = asyncio.Event()

    async def wait_ready() -> None:
        asked.set()
        await ready.wait()

    cfg = ModbusConfig.model_validate({"devices": [tcp("m", server.port, 1, interval_s=0.1)]})
    async with Poller(
        cfg, on_reading=sink.on_reading, on_error=sink.on_error, wait_ready=wait_ready
    ) as poller:
        await asyncio.wait_for(asked.wait(), 10)
        assert poller.stats()["m"].polls == 0
        assert sink.readings == []
        ready.set()
        await sink.wait_for(lambda: len(sink.readings) >= 2)
    assert poller.stats()["m"].errors == {}


async def test_callback_errors_do_not_stop_polling(modbus_meters) -> None:
    server = await modbus_meters(1, live=False)
    calls: list[str] = []
    done = asyncio.Event()

    def on_reading(reading: dict[str, object], label: str) -> None:
        calls.append(label)
        if len(calls) >= 2:
            done.set()
        raise RuntimeError("downstream bug")

    cfg = ModbusConfig.model_validate({"devices": [tcp("m", server.port, 1, interval_s=0.1)]})
    async with Poller(cfg, on_reading=on_reading, on_error=lambda *a: None):
        await asyncio.wait_for(done.wait(), 10)
    assert len(calls) >= 2


async def test_a_meter_known_to_answer_is_retried_when_it_goes_quiet(modbus_meters, sink) -> None:
    server = await modbus_meters(1, live=False)
    cfg = ModbusConfig.model_validate({"devices": [tcp("m", server.port, 1, timeout_s=0.1)]})
    poller = Poller(cfg, on_reading=sink.on_reading, on_error=sink.on_error)
    assert await poller.poll_once("m") is not None
    server.set_fault(1, "silent")
    assert await poller.poll_once("m") is None
    assert str(poller.stats()["m"].last_error).endswith(
        "no answer within 0.1 s reading input registers 0x0000-0x004B (3 attempts)"
    )
    assert await poller.poll_once("m") is None  # failed last time: one attempt only
    s = poller.stats()["m"]
    assert (s.requests, s.retries, s.errors) == (1 + 3 + 1, 2, {"timeout": 2})
    assert sink.errors == []  # silence is counted, not dead-lettered


async def test_missing_serial_port_is_a_connection_error(tmp_path, sink) -> None:
    port = str(tmp_path / "ttyUSB9")
    dev = {"meter_id": "m", "model": "sdm120", "transport": "rtu", "serial": {"port": port}}
    poller = Poller(
        ModbusConfig.model_validate({"devices": [dev]}),
        on_reading=sink.on_reading,
        on_error=sink.on_error,
    )
    assert await poller.poll_once("m") is None
    first = poller.stats()["m"].last_error
    assert first == (
        f"m (rtu://{port}/1): connection: cannot open serial port {port} "
        "(no such file or directory); retrying in 0.5 s reading input registers 0x0000-0x001F"
    )
    assert await poller.poll_once("m") is None
    # Within the backoff: fails at once, no I/O.
    assert "next attempt in" in str(poller.stats()["m"].last_error)
    assert poller.stats()["m"].errors == {"connection": 2}
    assert poller.connection_stats()[f"rtu://{port}"].connect_failures == 1
    assert sink.errors == []
