"""The Modbus poller: reads every configured meter at its interval, hands readings on.

It knows nothing of the pipeline: readings go to `on_reading(reading, device_label)`,
problems to `on_error(device_label, reason, raw_frame_or_None)`, and before each poll
it awaits `wait_ready()` when given (storage backpressure: polling waits, nothing is
dropped). A reading is `{"meter_id", "ts", <SPEC 7 field>: float, ...}` with `ts` the
UTC epoch seconds at which the poll's first request went on the wire.

Scheduling: each device polls once at start, then on the wall-clock grid of its
interval (10 s -> :00, :10, ...), so readings of many meters line up. Slots a slow
poll overran are skipped and counted, never queued up. Requests share a connection
one at a time, meters known to answer first (see `lock.py`); a meter that never
answered or failed its last poll gets no retries and queues behind the others, and
its circuit breaker soon stops polling it except for a probe now and then, so a dead
meter does not hold up its line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from protocols.modbus.breaker import CircuitBreaker
from protocols.modbus.config import ModbusConfig, ModbusDeviceConfig
from protocols.modbus.connection import Connection, ConnectionStats, ReadResult
from protocols.modbus.decode import decode_block
from protocols.modbus.errors import DeviceExceptionError, ModbusConnectError, ModbusIOError
from protocols.modbus.plan import ReadRequest

__all__ = ["DeviceStats", "OnError", "OnReading", "Poller", "WaitReady"]

log = logging.getLogger(__name__)

OnReading = Callable[[dict[str, object], str], None]
OnError = Callable[[str, str, bytes | None], None]
WaitReady = Callable[[], Awaitable[None]]


@dataclass
class DeviceStats:
    """Counters of one device, for metrics and the status page."""

    meter_id: str
    label: str
    polls: int = 0  # polls made (each one or more requests)
    readings: int = 0  # polls that produced a reading
    failed_polls: int = 0  # polls that produced nothing
    skipped: int = 0  # slots skipped because the breaker was open
    missed_slots: int = 0  # slots that passed while a poll (or the queue) overran
    requests: int = 0
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # by kind: timeout, exception, ...
    last_success: float | None = None  # epoch s of the last reading
    last_error: str | None = None
    breaker: str = "closed"
    lateness_s: deque[float] = field(default_factory=lambda: deque(maxlen=1024))


@dataclass
class _Device:
    cfg: ModbusDeviceConfig
    plan: list[ReadRequest]
    conn: Connection
    breaker: CircuitBreaker
    stats: DeviceStats
    peers: list[_Device] = field(default_factory=list)  # devices on the same connection
    next_due: float = 0.0  # epoch s of the slot it sleeps towards (or is polling)
    failing: bool = False  # for logging: the first failure at WARNING, repeats at DEBUG

    @property
    def proven(self) -> bool:
        """Answered its last poll: goes first on its connection and gets retries."""
        return self.breaker.healthy and self.stats.last_success is not None


class Poller:
    """Polls Modbus meters. `async with Poller(...)` or run `await poller.run()` and cancel it."""

    def __init__(
        self,
        config: ModbusConfig | Sequence[ModbusDeviceConfig],
        *,
        on_reading: OnReading,
        on_error: OnError,
        wait_ready: WaitReady | None = None,
    ) -> None:
        if not isinstance(config, ModbusConfig):
            config = ModbusConfig(devices=list(config))
        self._on_reading = on_reading
        self._on_error = on_error
        self._wait_ready = wait_ready
        self._connections: dict[str, Connection] = {}
        self._devices: dict[str, _Device] = {}
        for cfg in config.devices:
            conn = self._connections.get(cfg.endpoint)
            if conn is None:
                conn = Connection(
                    cfg.endpoint,
                    cfg.transport,
                    host=cfg.host,
                    port=cfg.port,
                    serial=cfg.serial,
                    connect_timeout_s=config.connect_timeout_s,
                    reconnect_delay_s=config.reconnect_delay_s,
                    reconnect_max_delay_s=config.reconnect_max_delay_s,
                )
                self._connections[cfg.endpoint] = conn
            b = cfg.breaker
            self._devices[cfg.meter_id] = _Device(
                cfg=cfg,
                plan=cfg.read_plan(),
                conn=conn,
                breaker=CircuitBreaker(b.failures, b.backoff_s, b.max_backoff_s),
                stats=DeviceStats(cfg.meter_id, cfg.label),
            )
        by_conn: dict[str, list[_Device]] = {}
        for dev in self._devices.values():
            by_conn.setdefault(dev.cfg.endpoint, []).append(dev)
        for dev in self._devices.values():
            dev.peers = [d for d in by_conn[dev.cfg.endpoint] if d is not dev]
        self._task: asyncio.Task[None] | None = None

    # -- public ----------------------------------------------------------------------

    def stats(self) -> dict[str, DeviceStats]:
        """Per-device stats by meter id (live objects: read, do not keep)."""
        for dev in self._devices.values():
            dev.stats.breaker = dev.breaker.state.value
        return {mid: dev.stats for mid, dev in self._devices.items()}

    def connection_stats(self) -> dict[str, ConnectionStats]:
        """Per-connection state by endpoint (`tcp://host:port`, `rtu:///dev/ttyUSB0`)."""
        return {ep: conn.stats for ep, conn in self._connections.items()}

    async def run(self) -> None:
        """Poll until cancelled; connections are closed on the way out."""
        try:
            async with asyncio.TaskGroup() as tg:
                for dev in self._devices.values():
                    tg.create_task(self._device_loop(dev), name=f"modbus {dev.cfg.meter_id}")
        finally:
            for conn in self._connections.values():
                with contextlib.suppress(Exception):
                    await asyncio.shield(conn.close())

    async def __aenter__(self) -> Poller:
        self._task = asyncio.create_task(self.run(), name="modbus poller")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def poll_once(self, meter_id: str) -> dict[str, object] | None:
        """Poll one device now (outside its schedule); returns the reading, if any."""
        return await self._poll(self._devices[meter_id], None)

    # -- scheduling ------------------------------------------------------------------

    async def _device_loop(self, dev: _Device) -> None:
        interval = dev.cfg.interval_s
        # A first poll at once, off the grid: every meter gives a reading soon after the
        # start, and by the first slot the poller knows which meters answer (until then
        # all are unproven, so a live meter could wait behind a dead one's timeout).
        await self._guarded_poll(dev, None)
        slot = math.floor(time.time() / interval) + 1
        while True:
            due = slot * interval
            dev.next_due = due
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if not dev.breaker.allow():
                dev.stats.skipped += 1
            else:
                await self._guarded_poll(dev, due)
            # Next grid point in the future; at least the next slot, even if the wall
            # clock lags the loop's monotonic clock by a hair.
            next_slot = max(slot + 1, math.floor(time.time() / interval) + 1)
            dev.stats.missed_slots += next_slot - slot - 1
            slot = next_slot

    async def _guarded_poll(self, dev: _Device, due: float | None) -> None:
        try:
            if self._wait_ready is not None:
                await self._wait_ready()  # storage backpressure: wait, drop nothing
            await self._poll(dev, due)
        except Exception:  # a bug must not end this device's polling for good
            log.exception("modbus %s: poll failed unexpectedly", dev.cfg.meter_id)

    # -- one poll --------------------------------------------------------------------

    async def _poll(self, dev: _Device, due: float | None) -> dict[str, object] | None:
        cfg, stats = dev.cfg, dev.stats
        stats.polls += 1
        # A meter known to answer goes first and gets retries (for glitches). One that
        # never answered or failed last time gets one attempt (a silent unit holds its
        # line a full timeout per attempt) and queues behind the answering ones.
        proven = dev.proven
        attempts = 1 + (cfg.retries if proven else 0)
        priority = 0 if proven else 1
        values: dict[str, float] = {}
        ts: float | None = None
        answered = False
        failure: ModbusIOError | None = None
        for k, req in enumerate(dev.plan):
            result, err, tries = await self._read(dev, req, attempts, priority)
            if k == 0 and due is not None:  # lateness: slot -> first request on the wire
                sent = result.sent_at if result else (err.sent_at if err else None)
                if sent is not None:
                    stats.lateness_s.append(max(0.0, sent - due))
            if err is not None:
                self._report(dev, err.kind, f"{err} reading {req.describe()}", err.raw, tries)
                if isinstance(err, DeviceExceptionError):
                    answered = True  # alive, this block refused: try the others
                    continue
                failure = err
                break  # silent or unreachable: do not spend the line on the other blocks
            assert result is not None
            answered = True
            ts = result.sent_at if ts is None else ts
            block, problems = decode_block(result.registers, req.address, req.entries)
            values.update(block)
            for p in problems:
                self._report(dev, "nan", str(p), result.raw or None, 1)
        if answered:
            dev.breaker.record_success()
        elif failure is not None and not isinstance(failure, ModbusConnectError):
            dev.breaker.record_failure()  # the connection's own backoff handles the rest
        if not values:
            stats.failed_polls += 1
            return None
        reading: dict[str, object] = {"meter_id": cfg.meter_id, "ts": ts, **values}
        stats.readings += 1
        stats.last_success = ts
        if dev.failing and failure is None:
            dev.failing = False
            log.info("modbus %s (%s): answering again", cfg.meter_id, cfg.label)
        try:
            self._on_reading(reading, cfg.label)
        except Exception:
            log.exception("modbus %s: on_reading failed", cfg.meter_id)
        return reading

    async def _read(
        self, dev: _Device, req: ReadRequest, attempts: int, priority: int
    ) -> tuple[ReadResult | None, ModbusIOError | None, int]:
        err: ModbusIOError | None = None
        for attempt in range(1, attempts + 1):
            low = priority > 0 or attempt > 1
            dev.stats.requests += 1
            if attempt > 1:
                dev.stats.retries += 1
            try:
                result = await dev.conn.read(
                    unit=dev.cfg.unit,
                    function=req.function,
                    address=req.address,
                    count=req.count,
                    timeout_s=dev.cfg.timeout_s,
                    # A retry waits behind every first attempt: one device's bad luck
                    # must not cost the others a second timeout.
                    priority=1 if low else 0,
                    # A meter not answering yields the line to the next slot of those
                    # that do; a good meter's retry (a glitch) is not held back that long.
                    busy_at=(lambda: self._next_due_of_answering_peers(dev))
                    if priority > 0
                    else None,
                )
                return result, None, attempt
            except ModbusConnectError as exc:
                return None, exc, attempt  # fails fast; the connection backs off
            except DeviceExceptionError as exc:
                err = exc
                if not exc.retryable:
                    return None, exc, attempt
            except ModbusIOError as exc:
                err = exc
        return None, err, attempts

    @staticmethod
    def _next_due_of_answering_peers(dev: _Device) -> float | None:
        """When the meters that answer on `dev`'s connection next need the line."""
        now = time.time()
        upcoming = [d.next_due for d in dev.peers if d.next_due > now and d.proven]
        return min(upcoming) if upcoming else None

    def _report(self, dev: _Device, kind: str, cause: str, raw: bytes | None, tries: int) -> None:
        cfg = dev.cfg
        suffix = f" ({tries} attempts)" if tries > 1 else ""
        reason = f"{cfg.meter_id} ({cfg.label}): {kind}: {cause}{suffix}"
        dev.stats.errors[kind] = dev.stats.errors.get(kind, 0) + 1
        dev.stats.last_error = reason
        if not dev.failing:
            dev.failing = True
            log.warning("modbus %s", reason)
        else:
            log.debug("modbus %s", reason)
        try:
            self._on_error(cfg.label, reason, raw)
        except Exception:
            log.exception("modbus %s: on_error failed", cfg.meter_id)
