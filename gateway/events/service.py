"""The live event flow: detectors -> engine -> durable outbox -> MQTT, database, webhook.

The pipeline hands validated readings, meter signals and rule flags to the engine;
every raise and clear the engine makes is appended to the outbox (and the input that
caused it is acknowledged only once the event is on disk: `Pipeline.hold_for_event`).
One drainer per destination reads the outbox at its own cursor, so a slow webhook
never holds back MQTT, and nothing of it blocks ingestion.

Detector state is snapshotted under `<data_dir>/events/` every few seconds and at a
clean stop. After a crash the snapshot is older than the outbox: the events appended
since it are read back and reconciled, so an open outage is neither forgotten nor
raised twice, and its clear still comes with the same `event_id`. Until the first
snapshot the outbox keeps every event, and a snapshot is kept only once the events it
covers are on disk.

The gateway's own events (the spool full) are published on MQTT from memory when the
outbox cannot write them: the disk that filled is the outbox's disk too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import orjson

from meter_gateway.config.schema import Config
from meter_gateway.config.topology import MeterPlace
from meter_gateway.gateway.events.delivery import (
    database_sender,
    event_topic,
    mqtt_sender,
    webhook_sender,
)
from meter_gateway.gateway.events.engine import Engine, EngineStats
from meter_gateway.gateway.events.event import Event
from meter_gateway.gateway.events.outbox import Outbox, OutboxStats, Send, backoff
from meter_gateway.gateway.reading import Reading
from meter_gateway.gateway.validate import Flag
from meter_gateway.protocols.formats import Signal
from meter_gateway.storage.deadletter import DeadLetterStore
from meter_gateway.storage.webhook import WebhookClient

__all__ = ["EventService", "EventServiceStats"]

log = logging.getLogger("meter_gateway.events")

TICK_S = 1.0  # silence is judged this often
# Detector state is written at least this often (and at a clean stop)... but a large
# fleet's snapshot takes a while on the event loop (about 0.5 s for 100,000 meters), so
# never more often than SNAPSHOT_COST_FACTOR times what the last one took. Open
# conditions do not depend on it (the outbox has them); learned spacing and baselines
# change slowly.
SNAPSHOT_S = 10.0
SNAPSHOT_COST_FACTOR = 60.0
STOP_GRACE_S = 5.0  # a clean stop waits this long for events still being delivered
STATE_FILE = "detectors.state"
MQTT_TIMEOUT_S = 30.0  # a publish from memory waits this long for its PUBACK, then again
_MAGIC = b"MGEV1\n"  # state file: magic, then the outbox seq it covers, then the engine's blob


class EventServiceStats(TypedDict):
    """`EventService.stats()`: for the metrics and the status page."""

    enabled: bool  # events.enabled
    this_run: dict[str, int]  # events emitted since start, by "type state"
    state_snapshots: int
    published_from_memory: int
    state_snapshot_s: float  # how long the last snapshot held the event loop
    outbox: OutboxStats
    engine: NotRequired[EngineStats]  # while the engine is enabled


class EventService:
    """Owns the engine, the outbox and its drainers for one running gateway."""

    def __init__(
        self,
        config: Config,
        topology: Mapping[str, MeterPlace],
        *,
        dead_letter: DeadLetterStore,
        add_line: Callable[[str], int],
        wait_line_durable: Callable[[int], Awaitable[None]],
        precision_divisor: int,
        mqtt_publish: Callable[[str, bytes], Awaitable[None]] | None,
        hold_for_event: Callable[[int], None] | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        ev = config.events
        self._config = config
        self._dir = Path(config.gateway.data_dir) / "events"
        self._clock = clock
        self._hold = hold_for_event
        self.enabled = ev.enabled
        destinations = ["database"]
        if mqtt_publish is not None:
            destinations.append("mqtt")
        self._webhook: WebhookClient | None = None
        if ev.webhook_url is not None:
            destinations.append("webhook")
            self._webhook = WebhookClient(ev.webhook_url, timeout_s=ev.webhook_timeout_s)
        self.outbox = Outbox(self._dir / "outbox", destinations)
        gid = config.gateway.id
        self._senders: dict[str, Any] = {
            "database": database_sender(add_line, wait_line_durable, precision_divisor)
        }
        # The gateway's own events (the spool full) published from memory while the
        # outbox cannot write them (the same disk is full): seq -> done, so the MQTT
        # drainer does not say them again once they are on disk.
        self._publish_now: Callable[[Event], Awaitable[None]] | None = None
        self._said_from_memory: set[int] = set()
        self._from_memory: set[asyncio.Task[None]] = set()
        self.published_from_memory = 0
        if mqtt_publish is not None:
            # Waits for each PUBACK; a retry after a timeout awaits the same queued
            # message rather than queueing a copy.
            publish = mqtt_publish

            self._senders["mqtt"] = self._unless_said(mqtt_sender(publish, ev.topic_prefix, gid))
            prefix = ev.topic_prefix

            async def publish_now(event: Event) -> None:
                async with asyncio.timeout(MQTT_TIMEOUT_S):
                    await publish(event_topic(prefix, event, gid), event.to_json(gid))

            self._publish_now = publish_now
        if self._webhook is not None:
            self._senders["webhook"] = webhook_sender(
                self._webhook, gid, dead_letter, ev.webhook_max_attempts
            )
        self.engine = Engine(ev, topology, emit=self.emit, now_ns=clock())
        self._tasks: list[asyncio.Task[None]] = []
        self.emitted = 0
        self.counts: Counter[tuple[str, str]] = Counter()  # (type, state) -> events this run
        self.snapshots = 0
        self.snapshot_s = 0.0  # what the last snapshot held the event loop

    # -- the flow in ------------------------------------------------------------------------
    def emit(self, ev: Event) -> int:
        """A raise or a clear: into the outbox; the input being handled waits for it."""
        seq = self.outbox.append(ev)
        self.emitted += 1
        self.counts[ev.type, ev.state] += 1
        subject = next(iter(ev.subject.values()), "?")
        level = logging.WARNING if ev.state == "raised" else logging.INFO
        log.log(
            level,
            "event %s %s %s: %s (event_id %s)",
            ev.type,
            ev.state,
            subject,
            ev.message,
            ev.event_id,
        )
        if self._hold is not None:
            self._hold(seq)
        publish_now = self._publish_now
        if "gateway_id" in ev.subject and publish_now is not None:
            # The gateway's own condition: what keeps the outbox from writing (a full
            # disk) may be the very thing it reports, and it must reach someone anyway.
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a tool, a test): the outbox delivers it
                return seq
            task = loop.create_task(
                self._say_from_memory(seq, ev, publish_now), name=f"event-{ev.type}-{ev.state}"
            )
            self._from_memory.add(task)
            task.add_done_callback(self._from_memory.discard)
        return seq

    async def _say_from_memory(
        self, seq: int, ev: Event, publish_now: Callable[[Event], Awaitable[None]]
    ) -> None:
        """Publish `ev` on MQTT from memory if the outbox cannot write it; it stays queued
        there and is recorded (and delivered to the other destinations) once it can.
        `seq` 0: the outbox dropped it (memory at its bound too); MQTT is all it gets."""
        if seq and await self.outbox.wait_written(seq):
            return  # on disk: delivered from there like any event
        later = (
            "recorded in the outbox (for the database and the webhook) once the disk has room"
            if seq
            else "not kept: the outbox dropped it (its memory bound is reached too), so the "
            "database and the webhook will not get it"
        )
        log.warning(
            "events: the outbox cannot write to %s (the disk is full?); event %s %s "
            "(event_id %s) is published on MQTT from memory now and %s",
            self.outbox.directory,
            ev.type,
            ev.state,
            ev.event_id,
            later,
        )
        attempt = 0
        while not seq or self.outbox.delivered_to("mqtt") < seq:
            try:
                await publish_now(ev)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker away or refusing: as the drainer would
                attempt += 1
                delay = backoff(attempt, None, 60.0)
                log.debug(
                    "events: publishing %s from memory failed (%s); again in %.1f s",
                    ev.event_id,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            if seq:
                self._said_from_memory.add(seq)
            self.published_from_memory += 1
            return

    def _unless_said(self, send: Send) -> Send:
        """The MQTT drainer, skipping what was published from memory already (the same
        event_id; a crash before it could skip them says them again, as at least once
        allows)."""

        async def skip_said(items: list[tuple[int, Event]]) -> None:
            said = self._said_from_memory
            fresh = [(seq, ev) for seq, ev in items if seq not in said]
            if fresh:
                await send(fresh)
            said.difference_update(seq for seq, _ in items)

        return skip_said

    def readings_hook(self) -> Callable[[list[Reading]], None] | None:
        """The pipeline's hook for the readings of one input: the engine takes them in
        one call (compiled: one loop in C, not a call a reading); None when disabled."""
        if not self.enabled:
            return None
        engine_readings, clock = self.engine.readings, self._clock
        return lambda rs: engine_readings(rs, clock())

    def signal(self, sig: Signal, topic: str) -> None:
        if self.enabled:
            self.engine.signal(sig, self._clock())

    def flag(self, f: Flag) -> None:
        if self.enabled:
            self.engine.flag(f, self._clock())

    # -- lifecycle --------------------------------------------------------------------------
    async def open(self) -> None:
        """Recover the outbox and the detectors' state; events may be appended from here."""
        if not self.enabled:
            await self.outbox.open()
            return
        data = self._read_state()
        covered = _covered(data)
        # The outbox keeps every event the state does not cover: on a new data_dir, from
        # the first one until the first snapshot (a kill before it must still find the
        # raises of the conditions open then, or their clears never come).
        await self.outbox.open(hold=(covered or 0) + 1)
        self._restore(data, covered)

    def start(self) -> None:
        """Start committing, delivering and judging silence (after the spool is open)."""
        self._tasks = [asyncio.create_task(self.outbox.run(), name="events-outbox")]
        for name, send in self._senders.items():
            self._tasks.append(
                asyncio.create_task(self.outbox.deliver(name, send), name=f"events-to-{name}")
            )
        if self.enabled:
            self._tasks.append(asyncio.create_task(self._ticker(), name="events-tick"))

    async def flush(self, timeout_s: float = STOP_GRACE_S) -> bool:
        """Give every destination up to `timeout_s` to take what was appended so far:
        before a clean stop closes the broker connection."""
        return await self.outbox.wait_delivered(timeout_s)

    async def stop(self) -> None:
        """Keep the detectors' state and every event appended; drainers stop where they are
        (what is not delivered yet goes out at the next start)."""
        ticker = [t for t in self._tasks if t.get_name() == "events-tick"]
        for t in [*ticker, *self._from_memory]:
            t.cancel()
        if self.enabled:
            await self._snapshot()
        # A short grace for the destinations that can still take events (the broker
        # connection is closed by now); the rest waits in the outbox.
        await self.outbox.wait_delivered(STOP_GRACE_S, [n for n in self._senders if n != "mqtt"])
        await self.outbox.close()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._webhook is not None:
            await self._webhook.close()

    @property
    def destinations(self) -> list[str]:
        return list(self._senders)

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        return list(self._tasks)

    def active(self) -> list[Event]:
        return self.engine.active() if self.enabled else []

    def stats(self) -> EventServiceStats:
        out: EventServiceStats = {
            "enabled": self.enabled,
            "this_run": {f"{t} {st}": n for (t, st), n in sorted(self.counts.items())},
            "state_snapshots": self.snapshots,
            "published_from_memory": self.published_from_memory,
            "state_snapshot_s": self.snapshot_s,
            "outbox": self.outbox.stats(),
        }
        if self.enabled:
            out["engine"] = self.engine.stats()
        return out

    async def _ticker(self) -> None:
        next_snapshot = time.monotonic() + SNAPSHOT_S
        while True:
            await asyncio.sleep(TICK_S)
            self.engine.tick(self._clock())
            now = time.monotonic()
            if now >= next_snapshot:
                cost = await self._snapshot()
                next_snapshot = time.monotonic() + max(SNAPSHOT_S, SNAPSHOT_COST_FACTOR * cost)

    # -- state across restarts ----------------------------------------------------------------
    @property
    def _state_path(self) -> Path:
        return self._dir / STATE_FILE

    async def _snapshot(self) -> float:
        """Write the engine's state and the outbox position it covers, atomically; return
        how long it held the event loop (s)."""
        started = time.monotonic()
        seq = self.outbox.last_seq
        blob = self.engine.snapshot()
        data = _MAGIC + str(seq).encode() + b"\n" + blob
        cost = time.monotonic() - started
        self.snapshots += 1
        self.snapshot_s = round(cost, 3)
        # A state that knows a condition whose raise is not on disk yet must not be
        # kept: after a crash the input that raised it comes again (it was never
        # acknowledged), finds the condition open and says nothing, and the raise is
        # never told to anyone. Kept only once every event it covers is durable.
        if not await self.outbox.wait_written(seq):
            log.debug("events: the outbox cannot write; detector state not kept this time")
            return cost
        try:
            await asyncio.to_thread(_write_atomic, self._state_path, data)
        except OSError as exc:
            # A full disk: the older snapshot plus the outbox still cover everything.
            log.warning("events: cannot keep detector state in %s: %s", self._state_path, exc)
            return cost
        self.outbox.hold(seq + 1)
        return cost

    def _read_state(self) -> bytes:
        try:
            return self._state_path.read_bytes()
        except FileNotFoundError:
            return b""
        except OSError as exc:
            log.warning("events: cannot read detector state %s: %s", self._state_path, exc)
            return b""

    def _restore(self, data: bytes, covered: int | None) -> None:
        now = self._clock()
        if data:
            try:
                if covered is None:
                    raise ValueError("not a detector state file")
                blob = data[len(_MAGIC) :].split(b"\n", 1)[1]
                self.engine.restore(blob, now, downtime_grace=True)
            except (ValueError, orjson.JSONDecodeError) as exc:
                log.warning(
                    "events: ignoring unreadable detector state %s (%s); open conditions are "
                    "taken from the outbox",
                    self._state_path,
                    exc,
                )
                covered = 0
        later = self.outbox.events_since((covered or 0) + 1)
        if later:
            self.engine.reconcile(later)
        opened = self.engine.active()
        if data or later:
            log.info(
                "events: detector state restored (%d events since the last snapshot); "
                "%d conditions open",
                len(later),
                len(opened),
            )


def _covered(data: bytes) -> int | None:
    """The last outbox seq a state file covers; None when it is no state file (empty,
    another format, a damaged head)."""
    if not data.startswith(_MAGIC):
        return None
    head, sep, _ = data[len(_MAGIC) :].partition(b"\n")
    try:
        return int(head) if sep and head.isdigit() else None
    except ValueError:
        return None


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
