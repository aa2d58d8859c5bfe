"""pytest fixtures for simulated Modbus meters (entry point `meter_gateway_modbus`).

    async def test_my_poller(modbus_meters):
        server = await modbus_meters(3, model="sdm630")        # 3 meters, units 1..3
        port = server.port                                       # a free loopback port
        server.set_fault(2, "silent")                            # unit 2 stops answering

    async def test_fleet(modbus_fleet):
        fleet = await modbus_fleet(300, model="em24")            # two ports: 247 + 53
        devices = fleet.device_configs(interval_s=1)             # `modbus.devices` entries

    async def test_rtu(modbus_meters, serial_pty_pair):
        server_end, client_end = serial_pty_pair                 # socat pseudo-terminals
        server = await modbus_meters(2, serial_port=server_end)

Servers listen on free loopback ports and stop when the test ends. Values come from
the meter model (live) unless `live=False` or `values={...}` is given (fixed values,
for exact comparisons).

Every pytest run of a project that installed meter-gateway loads this plugin, whether or
not it uses the fixtures; so at import time it needs only pytest, pytest-asyncio and the
standard library, and each fixture imports the simulator (and with it pymodbus) when a test
asks for it.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from meter_gateway.simulators.modbus.server import MeterFleet, MeterServer

    MetersFactory = Callable[..., Awaitable[MeterServer]]
    FleetFactory = Callable[..., Awaitable[MeterFleet]]

try:  # the fixtures are async; pytest-asyncio runs them
    # pytest-asyncio is a pytest plugin itself: where it is installed, pytest has imported
    # it already, so this costs nothing.
    import pytest_asyncio

    _async_fixture: Any = pytest_asyncio.fixture
except ImportError:  # pragma: no cover
    _async_fixture = pytest.fixture

__all__ = ["modbus_fleet", "modbus_meters", "serial_pty_pair"]


@_async_fixture
async def modbus_meters() -> AsyncIterator[MetersFactory]:
    """Factory: `await modbus_meters(n, model=..., framer="socket"|"rtu", serial_port=...,
    live=True, values=None, seed=0)` -> a started `MeterServer` with units 1..n."""
    from meter_gateway.simulators.modbus.server import MeterServer, make_meter

    servers: list[MeterServer] = []

    async def factory(
        n: int = 1,
        *,
        model: str = "sdm630",
        framer: str = "socket",
        serial_port: str | None = None,
        live: bool = True,
        values: dict[str, float] | None = None,
        seed: int = 0,
    ) -> MeterServer:
        meters = [
            make_meter(unit, model, seed=seed * 1_000_003 + unit, live=live, values=values)
            for unit in range(1, n + 1)
        ]
        server = MeterServer(meters, framer=framer, serial_port=serial_port)  # type: ignore[arg-type]
        await server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.stop()


@_async_fixture
async def modbus_fleet() -> AsyncIterator[FleetFactory]:
    """Factory: `await modbus_fleet(n, model=..., transport=..., units_per_port=...)` ->
    a started `MeterFleet` on free ports."""
    from meter_gateway.simulators.modbus.server import MeterFleet

    fleets: list[MeterFleet] = []

    async def factory(n: int, **kwargs: Any) -> MeterFleet:
        kwargs.setdefault("port", 0)
        fleet = MeterFleet(n, **kwargs)
        await fleet.start()
        fleets.append(fleet)
        return fleet

    yield factory
    for fleet in fleets:
        await fleet.stop()


@_async_fixture
async def serial_pty_pair() -> AsyncIterator[tuple[str, str]]:
    """Two linked pseudo-terminals from `socat` (a null-modem cable): (server end, client end)."""
    if shutil.which("socat") is None:
        pytest.skip("socat is not installed (scripts/setup.sh installs it)")
    proc = await asyncio.create_subprocess_exec(
        "socat",
        "-d",
        "-d",
        "pty,raw,echo=0",
        "pty,raw,echo=0",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    stderr = proc.stderr
    ptys: list[str] = []
    drain: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(10):
            while len(ptys) < 2:
                line = (await stderr.readline()).decode(errors="replace")
                if not line:
                    raise RuntimeError("socat exited before opening two pseudo-terminals")
                if found := re.search(r"PTY is (\S+)", line):
                    ptys.append(found.group(1))

        async def _drain() -> None:  # keep socat's log pipe from filling up
            while await stderr.readline():
                pass

        drain = asyncio.create_task(_drain())
        yield ptys[0], ptys[1]  # outside the timeout: the test takes as long as it takes
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
        if drain is not None:
            await drain
