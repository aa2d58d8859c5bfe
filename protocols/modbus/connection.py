"""One Modbus connection (a TCP socket or a serial line) shared by the devices behind it.

The connection owns the pymodbus client, the one lock that keeps a single request
on the wire at a time, and the reconnect policy: after a failed connect it waits,
doubling from `reconnect_delay_s` up to `reconnect_max_delay_s`, and tries again
when a device next needs it - forever. Requests made while it waits fail at once
with `ModbusConnectError`, so a dead gateway costs its devices no time.
`reconnect_in()` tells the poller when that next attempt is, so that the circuit
breakers of the devices behind it probe then rather than in the middle of the wait.

Timeouts are enforced here with `asyncio.timeout`, per request, so devices with
different `timeout_s` can share one connection; pymodbus's own retry and
disconnect-after-N-timeouts logic is switched off (retries are the poller's, and
one silent unit behind a TCP gateway must not drop the connection of the others).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.client.base import ModbusBaseClient
from pymodbus.framer import FramerType

from meter_gateway.protocols.modbus.config import SerialConfig, Transport
from meter_gateway.protocols.modbus.errors import (
    DeviceExceptionError,
    GarbledFrameError,
    ModbusConnectError,
    ModbusIOError,
    ModbusTimeout,
    ProtocolError,
    map_pymodbus_errors,
)
from meter_gateway.protocols.modbus.lock import PriorityLock

__all__ = ["Connection", "ConnectionStats", "ReadResult"]

log = logging.getLogger(__name__)

# pymodbus's own timeout only has to outlast ours; ours cancels the request first.
_PYMODBUS_TIMEOUT_S = 3600.0
# A connection that only times out for this long while requests are made is presumed
# half-open (NAT dropped it, gateway rebooted silently) and is reopened.
_STALE_AFTER_S = 30.0
_STALE_MIN_TIMEOUTS = 3
_LOW_PRIORITY_GRACE_S = 0.02


@dataclass(slots=True)
class ReadResult:
    """Registers read, when the request went out and when the answer came back (epoch s)."""

    registers: list[int]
    sent_at: float
    received_at: float
    raw: bytes


@dataclass(slots=True)
class ConnectionStats:
    """For metrics: state and counters of one connection."""

    endpoint: str
    connected: bool = False
    connects: int = 0
    connect_failures: int = 0
    requests: int = 0
    last_error: str | None = None
    next_attempt_in_s: float = 0.0


class Connection:
    """A TCP, RTU-over-TCP or serial RTU connection; `read` is the only I/O call."""

    def __init__(
        self,
        endpoint: str,
        transport: Transport,
        *,
        host: str | None = None,
        port: int = 502,
        serial: SerialConfig | None = None,
        connect_timeout_s: float = 3.0,
        reconnect_delay_s: float = 0.5,
        reconnect_max_delay_s: float = 60.0,
    ) -> None:
        self.endpoint = endpoint
        self._transport = transport
        self._host = host
        self._port = port
        self._serial = serial
        self._connect_timeout_s = connect_timeout_s
        self._delay_min = reconnect_delay_s
        self._delay_max = reconnect_max_delay_s
        self._delay = 0.0
        self._next_attempt = 0.0  # monotonic
        self._client: ModbusBaseClient | None = None
        self._lock = PriorityLock()
        self._last_rx = b""
        self._connect_error: BaseException | None = None
        self._last_good = time.monotonic()
        self._timeouts_since_good = 0
        self.stats = ConnectionStats(endpoint)
        # Modbus over serial line, 2.5.1.1: 3.5 characters (11 bits each), at least 1.75 ms.
        self._frame_gap_s = max(38.5 / serial.baudrate, 0.00175) if serial is not None else 0.0

    # -- the pymodbus client -------------------------------------------------------

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        # pymodbus hands us the receive buffer as it grows; keep the latest, so a
        # timeout can tell "silence" from "garbage" and report the bytes.
        if not sending:
            self._last_rx = bytes(data)
        return data

    def _new_client(self) -> ModbusBaseClient:
        common = {
            "reconnect_delay": 0.0,  # 0 disables pymodbus's reconnect: ours is in one place
            "reconnect_delay_max": 0.0,
            "timeout": _PYMODBUS_TIMEOUT_S,
            "retries": 0,
            "trace_packet": self._trace_packet,
            "name": self.endpoint,
        }
        client: ModbusBaseClient
        if self._transport == "rtu":
            assert self._serial is not None
            s = self._serial
            client = AsyncModbusSerialClient(
                s.port,
                framer=FramerType.RTU,
                baudrate=s.baudrate,
                parity=s.parity,
                stopbits=s.stopbits,
                bytesize=s.bytesize,
                **common,  # type: ignore[arg-type]
            )
        else:
            assert self._host is not None
            framer = FramerType.RTU if self._transport == "rtu-over-tcp" else FramerType.SOCKET
            client = AsyncModbusTcpClient(
                self._host,
                port=self._port,
                framer=framer,
                **common,  # type: ignore[arg-type]
            )
        # Never let pymodbus close a shared connection because one unit is silent.
        client.set_max_no_responses(1 << 30)
        self._record_connect_errors(client)
        return client

    def _record_connect_errors(self, client: ModbusBaseClient) -> None:
        # pymodbus's connect() only returns False (and logs the reason to its own
        # logger, which the gateway keeps quiet); keep the exception, so that the one
        # line logged when a device goes down can say "connection refused".
        ctx: Any = getattr(client, "ctx", None)
        create: Callable[[], Awaitable[Any]] | None = getattr(ctx, "call_create", None)
        if create is None:
            return  # another pymodbus: the message just lacks the cause

        async def recording() -> Any:
            try:
                return await create()
            except OSError as exc:
                self._connect_error = exc
                raise

        ctx.call_create = recording

    def _connect_cause(self) -> str | None:
        """Why the last connect failed, in words: `connection refused`, `timed out`."""
        exc = self._connect_error
        if isinstance(exc, TimeoutError):
            return f"no answer within {self._connect_timeout_s:g} s"
        if isinstance(exc, OSError):
            if exc.errno and exc.errno > 0:
                return os.strerror(exc.errno).lower()
            return (exc.strerror or str(exc)).lower() or None
        if self._serial is not None and not Path(self._serial.port).exists():
            return "no such device"
        return None

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def reconnect_in(self) -> float:
        """Seconds until the next connect attempt; 0 when connected or free to try now."""
        if self.connected:
            return 0.0
        return max(0.0, self._next_attempt - time.monotonic())

    async def _ensure_connected(self) -> ModbusBaseClient:
        if self._client is not None and self._client.connected:
            return self._client
        now = time.monotonic()
        if self._client is not None:
            # It was open and is not any more (peer closed, serial unplugged).
            self._drop("connection lost")
        if now < self._next_attempt:
            wait = self._next_attempt - now
            raise ModbusConnectError(
                f"not connected ({self.stats.last_error}); next attempt in {wait:.1f} s"
            )
        client = self._new_client()
        self._connect_error = None
        ok = False
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                ok = await client.connect()
        except TimeoutError as exc:
            self._connect_error = exc
            ok = False
        if not ok:
            client.close()
            self._delay = min(max(self._delay * 2, self._delay_min), self._delay_max)
            self._next_attempt = time.monotonic() + self._delay
            what = "open serial port" if self._transport == "rtu" else "connect to"
            target = self._serial.port if self._serial else f"{self._host}:{self._port}"
            cause = self._connect_cause()
            self.stats.last_error = f"cannot {what} {target}" + (f" ({cause})" if cause else "")
            self.stats.connect_failures += 1
            self.stats.connected = False
            self.stats.next_attempt_in_s = self._delay
            raise ModbusConnectError(f"{self.stats.last_error}; retrying in {self._delay:.1f} s")
        self._client = client
        self._delay = 0.0
        self._last_good = time.monotonic()
        self._timeouts_since_good = 0
        self.stats.connects += 1
        self.stats.connected = True
        self.stats.next_attempt_in_s = 0.0
        if self.stats.connects > 1:
            # DEBUG: the poller says per device when one goes down and comes back; this
            # also fires when a silent device's stale socket is reopened, and would
            # announce a recovery that is none.
            log.debug("modbus %s: reconnected", self.endpoint)
        return client

    def _drop(self, reason: str) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self.stats.connected = False
        self.stats.last_error = reason

    async def close(self) -> None:
        """Close the connection (a later `read` opens it again)."""
        async with self._lock.hold(-1):
            self._drop("closed")

    # -- requests --------------------------------------------------------------------

    async def read(
        self,
        *,
        unit: int,
        function: int,
        address: int,
        count: int,
        timeout_s: float,
        priority: int = 0,
        busy_at: Callable[[], float | None] | None = None,
    ) -> ReadResult:
        """Read `count` registers; raises a `ModbusIOError` subclass naming the cause.

        `priority` > 0 marks a request that may well time out (a meter that has not
        been answering). Such a request waits a moment before taking a free line, so
        requests of the same slot go first; and when `busy_at()` (the next time the
        answering meters are due) falls within its timeout once it holds the line, it
        lets go, waits for that slot, and queues again behind it (once, so it is not
        starved on a line that is never idle for a whole timeout).
        """
        grace = _LOW_PRIORITY_GRACE_S if priority > 0 else 0.0
        if busy_at is not None:
            async with self._lock.hold(priority, grace):
                until = busy_at()
                if until is None or time.time() + timeout_s <= until:
                    return await self._request(unit, function, address, count, timeout_s)
            await asyncio.sleep(max(0.0, until - time.time()))
        async with self._lock.hold(priority, grace):
            return await self._request(unit, function, address, count, timeout_s)

    async def _request(
        self, unit: int, function: int, address: int, count: int, timeout_s: float
    ) -> ReadResult:
        """One request, with the line held."""
        client = await self._ensure_connected()
        self._last_rx = b""
        self.stats.requests += 1
        sent_at = time.time()
        try:
            async with asyncio.timeout(timeout_s):
                with map_pymodbus_errors():
                    if function == 3:
                        rsp = await client.read_holding_registers(
                            address, count=count, device_id=unit
                        )
                    else:
                        rsp = await client.read_input_registers(
                            address, count=count, device_id=unit
                        )
        except TimeoutError:
            err = self._timed_out(client, timeout_s)
            err.sent_at = sent_at
            raise err from None
        except ModbusConnectError as exc:
            self._drop("connection lost")
            exc.sent_at = sent_at
            raise
        except ProtocolError as exc:
            exc.raw = self._last_rx or None
            exc.sent_at = sent_at
            raise
        received_at = time.time()
        raw = self._last_rx
        self._last_good = time.monotonic()
        self._timeouts_since_good = 0
        if self._frame_gap_s:
            # RTU frames are delimited by 3.5 character times of silence: keep the
            # line quiet that long before the next request goes out.
            await asyncio.sleep(self._frame_gap_s)
        problem: ModbusIOError | None = None
        registers: list[int] = []
        if rsp.isError():
            problem = DeviceExceptionError(int(getattr(rsp, "exception_code", 0)))
        elif rsp.function_code != function:
            problem = ProtocolError(
                f"answer has function code {rsp.function_code}, expected {function}"
            )
        else:
            registers = list(rsp.registers)
            if len(registers) != count:
                problem = ProtocolError(f"answer has {len(registers)} registers, expected {count}")
        if problem is not None:
            problem.raw = raw or None
            problem.sent_at = sent_at
            raise problem
        return ReadResult(registers, sent_at, received_at, raw)

    def _timed_out(self, client: ModbusBaseClient, timeout_s: float) -> ModbusIOError:
        raw = self._last_rx
        if not client.connected:
            self._drop("connection lost")
            return ModbusConnectError("connection lost while waiting for the answer")
        self._timeouts_since_good += 1
        if (
            self._transport != "rtu"
            and self._timeouts_since_good >= _STALE_MIN_TIMEOUTS
            and time.monotonic() - self._last_good > _STALE_AFTER_S
        ):
            # Nothing has answered on this socket for a long time: reopen it.
            self._drop(f"no answer on the connection for {_STALE_AFTER_S:.0f} s")
        if raw:
            return GarbledFrameError(
                f"no valid frame within {timeout_s:g} s ({len(raw)} bytes received)", raw=raw
            )
        return ModbusTimeout(f"no answer within {timeout_s:g} s")
