"""The live event flow: detectors -> engine -> durable outbox -> MQTT, database, webhook.

The pipeline hands validated readings, meter signals and rule flags to the engine;
every raise and clear the engine makes is appended to the outbox (and the input that
caused it is acknowledged only once the event is on disk: `Pipeline.hold_for_event`).
One drainer per destination reads the outbox at its own cursor, so a slow webhook
never holds back MQTT, and nothing of it blocks ingestion.

Detector state is snapshotted under `<data_dir>/events/` every few seconds and at a
clean stop. After a crash the snapshot is older than the outbox: the events appended
since it are read back and reconciled, so an open outage is neither forgotten nor
raised twice, and its clear still comes with the same `event_id`.
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
from typing import Any

import orjson
import paho.mqtt.client as paho

from meter_gateway.config.schema import Config
from meter_gateway.config.topology import MeterPlace
from meter_gateway.gateway.events.delivery import (
    AckedPublisher,
    database_sender,
    mqtt_sender,
    webhook_sender,
)
from meter_gateway.gateway.events.engine import Engine
from meter_gateway.gateway.events.event import Event
from meter_gateway.gateway.events.outbox import Outbox
from meter_gateway.gateway.reading import Reading
from meter_gateway.gateway.validate import Flag
from meter_gateway.protocols.formats import Signal
from meter_gateway.storage.deadletter import DeadLetterStore
from meter_gateway.storage.webhook import WebhookClient

__all__ = ["EventService"]

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
_MAGIC = b"MGEV1\n"  # state file: magic, then the outbox seq it covers, then the engine's blob


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
        mqtt_client: Callable[[], paho.Client] | None,
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
        if mqtt_client is not None:
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
        if mqtt_client is not None:
            # Waits for each PUBACK; a retry after a timeout awaits the same queued
            # message rather than queueing a copy.
            # The client is asked for when the first event goes out (it is made after us).
            get_client = mqtt_client
            publisher: list[AckedPublisher] = []

            async def publish(topic: str, payload: bytes) -> None:
                if not publisher:
                    publisher.append(AckedPublisher(get_client()))
                await publisher[0](topic, payload)

            self._senders["mqtt"] = mqtt_sender(publish, ev.topic_prefix, gid)
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
        return seq

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
        await self.outbox.open()
        if self.enabled:
            self._restore()

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
        for t in ticker:
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

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "enabled": self.enabled,
            "this_run": {f"{t} {st}": n for (t, st), n in sorted(self.counts.items())},
            "state_snapshots": self.snapshots,
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
        try:
            await asyncio.to_thread(_write_atomic, self._state_path, data)
        except OSError as exc:
            # A full disk: the older snapshot plus the outbox still cover everything.
            log.warning("events: cannot keep detector state in %s: %s", self._state_path, exc)
            return cost
        self.outbox.hold(seq + 1)
        return cost

    def _restore(self) -> None:
        now = self._clock()
        covered = 0
        try:
            data = self._state_path.read_bytes()
        except FileNotFoundError:
            data = b""
        except OSError as exc:
            log.warning("events: cannot read detector state %s: %s", self._state_path, exc)
            data = b""
        if data:
            try:
                if not data.startswith(_MAGIC):
                    raise ValueError("not a detector state file")
                head, blob = data[len(_MAGIC) :].split(b"\n", 1)
                covered = int(head)
                self.engine.restore(blob, now, downtime_grace=True)
            except (ValueError, orjson.JSONDecodeError) as exc:
                log.warning(
                    "events: ignoring unreadable detector state %s (%s); open conditions are "
                    "taken from the outbox",
                    self._state_path,
                    exc,
                )
                covered = 0
        later = self.outbox.events_since(covered + 1)
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
