"""The Modbus poller: reads every configured meter at its interval, hands readings on.

It knows nothing of the pipeline: readings go to `on_reading(reading, device_label)`,
data a device sent that cannot be used to `on_error(device_label, reason, raw)`, and
before each poll it awaits `wait_ready()` when given (storage backpressure: polling
waits, nothing is dropped). A reading is `{"meter_id", "ts", <field>: float, ...}`
with the register maps' field names (`power_w`, `energy_import_kwh`, ...).

Scheduling and time stamps: each device polls on the wall-clock grid of its interval
(10 s -> :00, :10, ...), so that readings of many meters line up, and a reading's `ts`
is the slot it was polled for, an exact multiple of the interval - not the moment the
request went out, which storage keeping whole seconds would file under the second
before the slot whenever a poll woke a hair early or its clock lagged. A poll that
could not even start within its slot (held back by storage backpressure, or queued on
its line for a whole interval) is stamped with the slot it started in: a stamp stays
within one interval of the moment the meter was read, and stamps of one device only
increase. Slots a poll overran are skipped and counted (`missed_slots`), never queued
up or polled late.

Start-up: before its first slot each device is asked once for its first block of
registers, only to learn whether it answers. Until then no meter is known to answer,
and at the first slot a live meter could wait behind a dead one's timeout. That probe's
values are not handed on, so every reading lies on the grid; the first reading comes at
the first slot, at most one interval later. Snapping the probe's reading to the nearest
grid point was the alternative, but it would label values read up to half an interval
away as that slot's, and the first slot is never far off anyway.

Shared lines: requests share a connection one at a time, meters known to answer first
(see `lock.py`); a meter that never answered or failed its last poll gets no retries and
queues behind the others, and yields the line rather than let its timeout run into the
next slot of the meters that answer.

A device that does not answer (connection refused or lost, timeout) is counted by kind
and logged at DEBUG; nothing goes to `on_error`, as the device sent nothing to keep.
After `breaker.failures` such polls in a row its circuit breaker opens and one WARNING
names the device, its address and the cause; from then on a probe at a slot now and
then, after a doubling backoff, checks on it. When it answers again, one INFO line says
so and how long it was down. `on_error` is for what a device did send: exception
responses, garbled frames, frames that do not answer the request, NaN registers and
the float32 "no value" marker (3.4e38).

A device that answers, but with nothing usable in a whole poll (every block an
exception, garbled, or NaN), fails that poll like a silent one: its breaker opens after
`breaker.failures` of them, with the one WARNING, and `unusable_polls` counts them.
What it sent is evidence, kept once: each kind of problem (a block's exception code,
its garbling, the set of registers holding NaN) goes to `on_error` once per run of bad
polls, one record per block (all its NaN registers in one), and repeats are only
counted (`errors`), never a stream of records; the run ends with a clean poll. A poll
that still gave a reading but had problems logs its first of a run at WARNING.

The devices behind one connection share its reconnect backoff (`connection.py`): a
device in that wait fails at once and counts the failure, since the connection failed
for it too. A breaker probe due while the connection waits is held until the
connection's own next attempt: made at once, it would fail without trying and double
the backoff for nothing. And once a peer's poll has the connection back up, devices down
only because of the connection are probed at their next slot instead of at the end of
a backoff that may have grown to minutes.
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

from meter_gateway.protocols.modbus.breaker import BreakerState, CircuitBreaker
from meter_gateway.protocols.modbus.config import ModbusConfig, ModbusDeviceConfig
from meter_gateway.protocols.modbus.connection import Connection, ConnectionStats, ReadResult
from meter_gateway.protocols.modbus.decode import decode_block
from meter_gateway.protocols.modbus.errors import (
    DeviceExceptionError,
    ModbusConnectError,
    ModbusIOError,
    UnusableDataError,
)
from meter_gateway.protocols.modbus.plan import ReadRequest

__all__ = ["DeviceStats", "OnError", "OnReading", "Poller", "WaitReady"]

log = logging.getLogger(__name__)

# reading, device label -> None, or an awaitable that completes when it is durable
OnReading = Callable[[dict[str, object], str], Awaitable[None] | None]
OnError = Callable[[str, str, bytes | None], None]
WaitReady = Callable[[], Awaitable[None]]


@dataclass
class DeviceStats:
    """Counters of one device, for metrics and the status page."""

    meter_id: str
    label: str
    polls: int = 0  # polls made at slots or by poll_once (each one or more requests)
    readings: int = 0  # polls that produced a reading
    failed_polls: int = 0  # polls that produced nothing
    skipped: int = 0  # slots skipped because the breaker was open
    missed_slots: int = 0  # slots that passed while a poll (or the queue) overran
    unusable_polls: int = 0  # polls answered with nothing usable (exceptions, garbage, NaN)
    requests: int = 0  # the start-up probe's included
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # by kind: timeout, exception, ...
    last_success: float | None = None  # ts of the last reading
    last_error: str | None = None
    breaker: str = "closed"
    breaker_openings: int = 0  # times it went down (not counting failed probes' re-openings)
    down_since: float | None = None  # epoch s of the first failed poll, while it is down
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
    answered: bool = False  # has answered since the start (the start-up probe counts)
    failing_since: float | None = None  # epoch s of the first of the failed polls in a row
    last_failure: ModbusIOError | None = None  # of the failed polls in a row, the latest
    bad_data: bool = False  # for logging: the first data error at WARNING, repeats at DEBUG
    # Kinds of bad data already handed to `on_error` in the current run of bad polls.
    reported: set[tuple[object, ...]] = field(default_factory=set)

    @property
    def proven(self) -> bool:
        """Answered its last poll: goes first on its connection and gets retries."""
        return self.answered and self.breaker.healthy


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
        """Poll one device now, outside its schedule and its breaker (tools, tests).

        The reading is handed on as well as returned, stamped with the moment its first
        request went out: off the grid, which is why the running poller never calls this.
        """
        return await self._poll(self._devices[meter_id], None)

    # -- scheduling ------------------------------------------------------------------

    async def _device_loop(self, dev: _Device) -> None:
        interval = dev.cfg.interval_s
        try:
            await self._probe(dev)
        except Exception:  # a bug must not end this device's polling for good
            log.exception("modbus %s: start-up probe failed unexpectedly", dev.cfg.meter_id)
        slot = math.floor(time.time() / interval) + 1
        while True:
            dev.next_due = slot * interval
            await _sleep_until(dev.next_due)
            if self._may_poll(dev):
                await self._guarded_poll(dev, slot)
            else:
                dev.stats.skipped += 1
            # Next grid point in the future; at least the next slot, even if the wall
            # clock lags the loop's monotonic clock by a hair.
            next_slot = max(slot + 1, math.floor(time.time() / interval) + 1)
            dev.stats.missed_slots += next_slot - slot - 1
            slot = next_slot

    def _may_poll(self, dev: _Device) -> bool:
        breaker, conn = dev.breaker, dev.conn
        if (
            breaker.state is BreakerState.OPEN
            and isinstance(dev.last_failure, ModbusConnectError)
            and conn.connected
        ):
            breaker.probe_now()  # a peer got the connection back: check on this one too
        if not breaker.allow():
            return False
        # A probe within the connection's reconnect wait would fail without trying.
        return breaker.state is not BreakerState.HALF_OPEN or conn.reconnect_in() <= 0

    async def _guarded_poll(self, dev: _Device, slot: int) -> None:
        try:
            if self._wait_ready is not None:
                await self._wait_ready()  # storage backpressure: wait, drop nothing
            await self._poll(dev, slot)
        except Exception:  # a bug must not end this device's polling for good
            log.exception("modbus %s: poll failed unexpectedly", dev.cfg.meter_id)

    async def _probe(self, dev: _Device) -> None:
        """The start-up question "do you answer?": one request, nothing handed on."""
        req = dev.plan[0]
        result, err, tries = await self._read(dev, req, attempts=1, priority=1)
        if result is not None or isinstance(err, DeviceExceptionError):
            self._answered(dev)
            return
        assert err is not None
        # Not dead-lettered even when bytes came back: the first slot's poll asks again
        # and reports what it gets then.
        self._note(dev, err.kind, f"{err} reading {req.describe()}", tries)
        self._failed(dev, err)

    # -- one poll --------------------------------------------------------------------

    async def _poll(self, dev: _Device, slot: int | None) -> dict[str, object] | None:
        cfg, stats = dev.cfg, dev.stats
        stats.polls += 1
        # A meter known to answer goes first and gets retries (for glitches). One that
        # never answered or failed last time gets one attempt (a silent unit holds its
        # line a full timeout per attempt) and queues behind the answering ones.
        proven = dev.proven
        attempts = 1 + (cfg.retries if proven else 0)
        priority = 0 if proven else 1
        values: dict[str, float] = {}
        first_sent: float | None = None
        failure: ModbusIOError | None = None
        # What the device sent that cannot be used: (signature, kind, reason, raw).
        bad: list[tuple[tuple[object, ...], str, str, bytes | None]] = []
        for k, req in enumerate(dev.plan):
            result, err, tries = await self._read(dev, req, attempts, priority)
            if k == 0:
                first_sent = result.sent_at if result else (err.sent_at if err else None)
            if err is not None:
                cause = f"{err} reading {req.describe()}"
                reason = self._note(dev, err.kind, cause, tries)
                if err.from_device:
                    code = err.code if isinstance(err, DeviceExceptionError) else None
                    sig: tuple[object, ...] = (err.kind, req.function, req.address, code)
                    bad.append((sig, err.kind, reason, err.raw))
                if isinstance(err, DeviceExceptionError):
                    continue  # alive, this block refused: try the others
                failure = err
                break  # silent, unreachable or garbling: spare the line the other blocks
            assert result is not None
            block, problems = decode_block(result.registers, req.address, req.entries)
            values.update(block)
            if problems:
                # One record for the block, however many of its registers are unusable.
                shown = "; ".join(str(p) for p in problems[:3])
                if len(problems) > 3:
                    shown += f"; and {len(problems) - 3} more"
                cause = (
                    str(problems[0])
                    if len(problems) == 1
                    else f"{len(problems)} registers unusable reading {req.describe()}: {shown}"
                )
                reason = self._note(dev, "nan", cause, 1, count=len(problems))
                fields = tuple(sorted(p.entry.field for p in problems))
                sig = ("nan", req.function, req.address, fields)
                bad.append((sig, "nan", reason, result.raw or None))
        if values:
            self._answered(dev)
        elif failure is not None and not failure.from_device:
            self._failed(dev, failure)
        else:
            # It answered (exceptions, garbage, NaN), but nothing in the poll can be used:
            # as failed as silence, for the breaker and for the operator.
            stats.unusable_polls += 1
            first = bad[0][2] if bad else "no usable value"
            self._failed(dev, UnusableDataError(first.split(": ", 1)[-1]))
        self._report_bad_data(dev, bad, usable=bool(values))
        if dev.bad_data and not bad and failure is None:
            dev.bad_data = False
            log.info("modbus %s (%s): sending valid data again", cfg.meter_id, cfg.label)
        if not bad and failure is None:
            dev.reported.clear()  # a clean poll ends the run of bad data
        if slot is not None and first_sent is not None:
            stats.lateness_s.append(max(0.0, first_sent - slot * cfg.interval_s))
        if not values:
            stats.failed_polls += 1
            return None
        ts = _stamp(slot, cfg.interval_s, first_sent)
        reading: dict[str, object] = {"meter_id": cfg.meter_id, "ts": ts, **values}
        stats.readings += 1
        stats.last_success = ts
        try:
            done = self._on_reading(reading, cfg.label)
            if done is not None:
                # The poll counts as done once its reading is durable (a spool that is
                # full or a disk that is full holds the device's next poll back).
                await done
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

    # -- outcomes --------------------------------------------------------------------

    def _answered(self, dev: _Device) -> None:
        dev.answered = True
        dev.breaker.record_success()
        dev.failing_since = None
        dev.last_failure = None
        stats = dev.stats
        if stats.down_since is not None:
            now = time.time()
            log.info(
                "modbus %s (%s): answering again, after %s down (since %s UTC)",
                dev.cfg.meter_id,
                dev.cfg.label,
                _duration(now - stats.down_since),
                _clock(stats.down_since),
            )
            stats.down_since = None

    def _failed(self, dev: _Device, err: ModbusIOError) -> None:
        """A poll (or the probe) without any answer; the breaker may open on it."""
        now = time.time()
        if dev.failing_since is None:
            dev.failing_since = now
        dev.last_failure = err
        breaker, stats = dev.breaker, dev.stats
        breaker.record_failure()
        if breaker.state is not BreakerState.OPEN or stats.down_since is not None:
            return  # not down yet, or a failed probe of a device known to be down
        stats.down_since = dev.failing_since
        stats.breaker_openings += 1
        cause = str(err)
        if isinstance(err, ModbusConnectError) and dev.conn.stats.last_error:
            cause = dev.conn.stats.last_error  # without the connection's retry timing
        n = breaker.consecutive_failures
        if isinstance(err, UnusableDataError):
            state, until = "is failing: it answers, but with nothing usable", "it sends valid data"
        else:
            state, until = "is down", "it answers"
        log.warning(
            "modbus %s (%s) %s: %s (%d failed poll%s in a row since %s UTC); asking "
            "again in %s, then less and less often, at most every %s, until %s",
            dev.cfg.meter_id,
            dev.cfg.label,
            state,
            cause,
            n,
            "" if n == 1 else "s",
            _clock(dev.failing_since),
            _duration(breaker.retry_in()),
            _duration(dev.cfg.breaker.max_backoff_s),
            until,
        )

    def _note(self, dev: _Device, kind: str, cause: str, tries: int, *, count: int = 1) -> str:
        """Count a failed request (or `count` unusable registers); the reason in words."""
        cfg = dev.cfg
        suffix = f" ({tries} attempts)" if tries > 1 else ""
        reason = f"{cfg.meter_id} ({cfg.label}): {kind}: {cause}{suffix}"
        dev.stats.errors[kind] = dev.stats.errors.get(kind, 0) + count
        dev.stats.last_error = reason
        log.debug("modbus %s", reason)
        return reason

    def _report_bad_data(
        self,
        dev: _Device,
        bad: list[tuple[tuple[object, ...], str, str, bytes | None]],
        *,
        usable: bool,
    ) -> None:
        """Hand what a device sent to `on_error`: each kind once per run of bad polls.

        A device known to be failing (its breaker opened on unusable polls) sends
        nothing new by repeating itself: its repeats are counted, not kept again."""
        cfg = dev.cfg
        for sig, _kind, reason, raw in bad:
            if sig in dev.reported or dev.stats.down_since is not None:
                continue
            if len(dev.reported) >= 64:
                dev.reported.clear()  # a bound on memory; the cost is a repeated record
            dev.reported.add(sig)
            if usable and not dev.bad_data:
                # A reading was made, some of it unusable: the one line that says so. (A
                # poll with nothing usable gets its line from the breaker when it opens.)
                dev.bad_data = True
                log.warning("modbus %s", reason)
            try:
                self._on_error(cfg.label, reason, raw)
            except Exception:
                log.exception("modbus %s: on_error failed", cfg.meter_id)


def _stamp(slot: int | None, interval: float, first_sent: float | None) -> float:
    """A reading's ts: its slot, or the later slot its poll only started in."""
    if slot is None:  # poll_once: no slot, the time it was made
        return first_sent if first_sent is not None else time.time()
    if first_sent is not None:
        # max(): a request sent a hair before its slot (clocks) belongs to that slot.
        slot = max(slot, math.floor(first_sent / interval))
    return slot * interval


async def _sleep_until(wall: float) -> None:
    # asyncio sleeps on the monotonic clock, which the wall clock may run behind (NTP
    # slewing): top up, so that a slot's poll does not go out before the slot.
    for _ in range(3):
        delay = wall - time.time()
        if delay <= 0:
            return
        await asyncio.sleep(delay)


def _clock(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


def _duration(seconds: float) -> str:
    """`0.4 s`, `42 s`, `3 min 12 s`, `5 min`, `2 h 5 min`."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min" + (f" {s % 60} s" if s % 60 else "")
    return f"{s // 3600} h" + (f" {s % 3600 // 60} min" if s % 3600 // 60 else "")
