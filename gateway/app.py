"""The running gateway: wires sources, the pipeline and storage, and drains on stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from meter_gateway.config.schema import Config
from meter_gateway.config.secrets import redact_text
from meter_gateway.config.topology import MeterPlace, load_topology
from meter_gateway.gateway.events import Condition, Event, compiled
from meter_gateway.gateway.events.service import EventService
from meter_gateway.gateway.logs import library_limit
from meter_gateway.gateway.pipeline import Pipeline
from meter_gateway.gateway.reading import canonical_from_fields
from meter_gateway.gateway.status import StatusServer
from meter_gateway.gateway.validate import Flag, MeterRules, Validator
from meter_gateway.gateway.vee.service import VeeService
from meter_gateway.protocols.formats import Signal
from meter_gateway.protocols.mqtt.source import LOOP_WINDOW_S, MqttSource
from meter_gateway.storage.deadletter import DeadLetterStore, dead_letter_record
from meter_gateway.storage.influxdb.factory import make_client, make_writer
from meter_gateway.storage.influxdb.sink import DirectSink
from meter_gateway.storage.lineprotocol import PRECISION_DIVISOR, ReadingEncoder
from meter_gateway.storage.spool import Spool, SpoolNote

__all__ = ["Gateway"]

log = logging.getLogger("meter_gateway")

STALL_S = 60.0  # messages unacknowledged this long without progress: not ready
# The database refusing lines in every write this long (a tag-value limit reached: every
# new meter refused; a schema conflict): it answers, so nothing else says that readings
# are not stored, and it will not pass by itself.
REFUSING_NOT_READY_S = 300.0
WATCH_S = 5.0  # how often readiness is checked for the log


class RateMeter:
    """Readings per second over the last minute, sampled every few seconds."""

    def __init__(self, total: Callable[[], int], every_s: float = 5.0, window: int = 12) -> None:
        self._total = total
        self._every = every_s
        self._samples: deque[tuple[float, int]] = deque(maxlen=window + 1)

    @property
    def per_second(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    async def run(self, report: Callable[[], None] | None = None, report_every: int = 12) -> None:
        n = 0
        while True:
            self._samples.append((time.monotonic(), self._total()))
            n += 1
            if report is not None and n % report_every == 0:
                report()
            await asyncio.sleep(self._every)


class Gateway:
    """`await start()`, then `await stop()` (drains); or `await run(stop_event)`."""

    def __init__(
        self, config: Config, *, shutdown_timeout_s: float = 30.0, spool: bool = True
    ) -> None:
        """`spool=False` is for benchmarks only: readings wait in memory, as before the
        spool, and a crash loses what was acknowledged."""
        self.config = config
        self.shutdown_timeout_s = shutdown_timeout_s
        self.started_at = time.time()
        topology: dict[str, MeterPlace] = {}
        if config.topology.file is not None:
            topology = load_topology(config.topology.file)
        self.topology = topology
        rejected_topic = f"gateway/{config.gateway.id}/rejected"

        def publish_rejected(line: bytes) -> None:
            # A record the broker connection cannot take is counted there (publish_dropped).
            self.mqtt.publish_nowait(rejected_topic, line, qos=1)

        self.dead_letter = DeadLetterStore(config.gateway.data_dir, publish=publish_rejected)
        self.client = make_client(config.storage)
        # The database as people may see it (logs, /status, the page): no credentials.
        self.storage_target = redact_text(self.client.target)
        # Refusals seen by `storage_refusals()`, for the writers that do not track them.
        self._refused_seen = 0
        self._written_seen = 0
        self._refusing_since: float | None = None
        self._last_refused_at: float | None = None
        st = config.storage
        self.writer = make_writer(self.client, st, on_bad_line=self._bad_line)
        self.spool = Spool(
            config.gateway.data_dir / "spool",
            max_bytes=st.spool_max_bytes,
            feed_lines=st.max_buffered_lines,
            on_note=self._spool_note,
            on_pause=self._backpressure,
        )
        self.backpressure = ""  # why sources are paused, while they are
        self._precision = PRECISION_DIVISOR[st.precision]
        self._backpressure_event = Condition(
            config.gateway.data_dir / "events",
            "storage_backpressure",
            {"gateway_id": config.gateway.id},
            "major",
        )
        # Without the spool (benchmarks that measure what it costs; never a deployment),
        # readings go straight into the writer's memory: the path before the spool.
        sink: Spool | DirectSink = self.spool if spool else DirectSink(self.writer)
        self._sink = sink
        # Events: detectors -> engine -> outbox -> MQTT / database (through the spool) /
        # webhook. An input that raised an event is acked once the event is on disk.
        self.events = EventService(
            config,
            topology,
            dead_letter=self.dead_letter,
            add_line=sink.add,
            wait_line_durable=sink.wait_durable,
            precision_divisor=self._precision,
            # Late lookup: the MQTT source is made after the event service.
            mqtt_publish=lambda topic, payload: self.mqtt.publish_acked(topic, payload),
            hold_for_event=lambda seq: self.pipeline.hold_for_event(seq),
        )
        encoder = ReadingEncoder(st.precision, topology)
        # VEE: registers -> estimates for gaps and daily figures per local day, into
        # the spool like readings (derived: a crash recomputes them from data_dir).
        self.vee: VeeService | None = None
        if config.estimation.enabled or config.daily.enabled:
            self.vee = VeeService(
                config,
                topology,
                folder=config.gateway.data_dir / "intervals",
                add_line=sink.add,
                prefix=encoder.prefix,
                precision_divisor=self._precision,
            )
            # The samples of the readings in a group commit are in the interval store
            # (in the OS) before those readings are acknowledged: a kill -9 loses none.
            self.spool.before_commit = self.vee.store.flush
        self.pipeline = Pipeline(
            validator=Validator(config.validation),
            rules=MeterRules(config.validation.duplicate_window),
            encoder=encoder,
            sink=sink,
            dead_letter=self.dead_letter,
            max_payload_bytes=config.mqtt.max_payload_bytes,
            on_signal=self._signal,
            on_flag=self._flag,
            on_reading=self.vee.reading if self.vee is not None else None,
            on_readings=self.events.readings_hook(),
            events=self.events.outbox,
            max_meters=config.limits.max_meters,
            known_meters=topology,
        )
        self.mqtt = MqttSource(
            config.mqtt,
            client_id=config.client_id,
            handler=self.pipeline.handle_message,
            flow=sink,
            durability=self.pipeline,
            state_dir=config.gateway.data_dir,
        )
        self.modbus = None
        if config.modbus.devices:
            from meter_gateway.protocols.modbus.poller import (
                Poller,  # pymodbus only when it is used
            )

            self.modbus = Poller(
                config.modbus,
                on_reading=self._modbus_reading,
                on_error=self._modbus_error,
                wait_ready=sink.wait_resumed,
            )
        self.rate = RateMeter(lambda: sum(self.pipeline.received.values()))
        self.http = StatusServer(self)
        self._source_tasks: list[asyncio.Task[None]] = []
        self._vee_task: asyncio.Task[None] | None = None
        self._sink_tasks: list[asyncio.Task[None]] = []

    # -- hooks for the detectors ---------------------------------------------------------------
    def _signal(self, sig: Signal, topic: str) -> None:
        log.info("meter %s reports %s %s (on %s)", sig.meter_id, sig.kind, sig.value, topic)
        self.events.signal(sig, topic)

    def _flag(self, flag: Flag) -> None:
        self.events.flag(flag)  # logged by the pipeline

    def _modbus_reading(self, reading: dict[str, object], device: str) -> Awaitable[None]:
        ticket = self.pipeline.handle_reading(canonical_from_fields(reading), "modbus", device)
        return self.pipeline.wait_durable(ticket)

    def _spool_note(self, note: SpoolNote) -> None:
        record = dead_letter_record(reason=note.reason, source="spool", device=note.path)
        self.dead_letter.add(record)

    def _backpressure(self, paused: bool, why: str) -> None:
        self.backpressure = why if paused else ""
        cond = self._backpressure_event
        if paused:
            ev = cond.raise_(
                f"the spool is full ({why}): sources are paused, nothing is acknowledged",
                {"cause": why, "spool_bytes": self.spool.bytes},
            )
        else:
            ev = cond.clear("the spool is below half of its bound: sources resume")
        if ev is not None:
            self._emit(ev)

    def _emit(self, ev: Event) -> None:
        """The gateway's own event, through the same outbox as the meters' events."""
        self.events.emit(ev)

    def _modbus_error(self, device: str, reason: str, raw: bytes | None) -> None:
        """What a Modbus device sent that cannot be used: kept in the dead-letter store.

        Not a rejected reading (no reading was made): the poller counts it by device and
        kind (`meter_gateway_modbus_errors_total`) and logs it itself."""
        self.dead_letter.add(
            dead_letter_record(reason=reason, source="modbus", payload=raw, device=device)
        )

    def _bad_line(self, line: str, reason: str) -> None:
        self.dead_letter.add(
            dead_letter_record(
                reason=reason, source="storage", payload=line, device=self.storage_target
            )
        )

    def _report(self) -> None:
        """A line a minute that an operator can grep: `ingest:`."""
        p, w = self.pipeline, self.writer
        log.info(
            "ingest: %.0f readings/s; received %d, stored %d, rejected %d, suspect %d, "
            "duplicates %d; spool %d readings (%s bytes, oldest %.0f s); mqtt %s; storage %s",
            self.rate.per_second,
            sum(p.received.values()),
            self.readings_stored(),
            sum(p.rejected.values()),
            sum(p.flagged.values()),
            p.duplicates,
            self.spool.lines,
            f"{self.spool.bytes:,}",
            self.spool.oldest_age_s(),
            "connected" if self.mqtt.connected else "DISCONNECTED",
            "ok" if w.healthy else f"FAILING ({redact_text(str(w.last_error))})",
        )

    def readings_stored(self) -> int:
        """Readings the database accepted: what `meter_gateway_readings_stored_total`
        counts (lines with a `source` tag), not events or daily figures."""
        return sum(self.writer.lines_by_source.values())

    def storage_refusals(self) -> tuple[float | None, float | None]:
        """(seconds the database has refused lines in every write, or None; seconds
        since it last refused a line, or None if it never did).

        The writer's own `refusing_since` (monotonic) is used when it has one; else
        refusals are told from its counters, sampled whenever readiness is asked (a
        refusal with nothing written since)."""
        now = time.monotonic()
        w = self.writer.stats()
        refused, written = int(w["lines_refused"]), int(w["lines_written"])
        if refused > self._refused_seen:
            self._last_refused_at = now
            if written == self._written_seen and self._refusing_since is None:
                self._refusing_since = now
        if written > self._written_seen:
            self._refusing_since = None
        self._refused_seen, self._written_seen = refused, written
        since = w.get("refusing_since", self._refusing_since)
        refusing = None if since is None else max(0.0, now - float(since))
        last = None if self._last_refused_at is None else now - self._last_refused_at
        return refusing, last

    def ready(self) -> tuple[bool, list[str]]:
        """Broker connected and ingesting, and storage writable or its backlog below the bound."""
        why = []
        broker = f"{self.config.mqtt.host}:{self.config.mqtt.port}"
        if not self.mqtt.connected:
            why.append(f"not connected to the broker {broker}")
        losses = self.mqtt.reconnect_loop()
        if losses:
            why.append(
                f"the connection to the broker {broker} was lost {losses} times in the last "
                f"{LOOP_WINDOW_S:.0f} s (reconnecting in a loop)"
            )
        stalled = self.mqtt.stalled_s()
        if stalled > STALL_S:
            why.append(
                f"{self.mqtt.held} MQTT messages taken but not acknowledged for {stalled:.0f} s "
                "(storage or the dead-letter store is not keeping up)"
            )
        if self._sink.paused:
            cause = self.backpressure or "storage is behind"
            error = redact_text(str(self.writer.last_error))
            state = "" if self.writer.healthy else f"; storage failing ({error})"
            why.append(f"the spool is full ({cause}): sources are paused{state}")
        refusing, _ = self.storage_refusals()
        if refusing is not None and refusing > REFUSING_NOT_READY_S:
            why.append(self.refusing_text(refusing))
        return not why, why

    def refusing_text(self, refusing_s: float) -> str:
        """Why readings are not stored though the database answers: for /readyz and the page."""
        w = self.writer.stats()
        last = w.get("last_refusal")
        said = f"; it said: {redact_text(str(last))}" if last else ""
        return (
            f"the database {self.storage_target} has refused lines in every write for "
            f"{refusing_s:.0f} s ({w['lines_refused']:,} lines refused so far{said}): "
            "readings are dead-lettered (source storage), not stored; fix the database "
            "(a tag-value or series limit, a field type conflict), then write them again "
            "(`meter-gateway dead-letter list --source storage` shows them)"
        )

    async def _watch(self) -> None:
        """Say in the log when readiness changes, and why; report held-back log lines."""
        was_ready = True
        n = 0
        while True:
            await asyncio.sleep(WATCH_S)
            ready, why = self.ready()
            if ready != was_ready:
                if ready:
                    log.info("ready again")
                else:
                    log.warning("not ready: %s", "; ".join(why))
                was_ready = ready
            n += 1
            if n % round(60 / WATCH_S) == 0:
                self.pipeline.flush_logs()
                library_limit().flush()

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self.config.gateway.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            await self.http.start()
        except OSError as exc:
            raise OSError(
                f"http.listen {self.config.http.listen}: cannot listen: {exc.strerror}; "
                "set http.listen to a free address"
            ) from exc
        log.info(
            "gateway %s starting: storage %s, broker %s:%d, data in %s; status page "
            "http://%s:%s/ (also /metrics /healthz /readyz /status)",
            self.config.gateway.id,
            self.storage_target,
            self.config.mqtt.host,
            self.config.mqtt.port,
            self.config.gateway.data_dir,
            self.config.http.listen.rsplit(":", 1)[0],
            self.http.port,
        )
        if self.events.enabled:
            # Compiled, the detectors cost ingest about a tenth of its rate; as plain
            # Python about three times as much: an operator should know which runs.
            level = logging.INFO if compiled.compiled else logging.WARNING
            log.log(level, "event detectors: %s", compiled.status)
        self._writer_task = asyncio.create_task(self.writer.run(), name="storage-writer")
        self._dl_task = asyncio.create_task(self.dead_letter.run(), name="dead-letter")
        self._sink_tasks = [self._writer_task, self._dl_task]
        await self.events.open()
        if self._sink is self.spool:
            # What an earlier run left (a crash, a slow database) goes first.
            await self.spool.open()
            if not self.spool.paused:
                self._backpressure(False, "")  # a condition left raised by a crash ends
            self._spool_task = asyncio.create_task(self.spool.run(), name="spool")
            self._feed_task = asyncio.create_task(self.spool.feed(self.writer), name="spool-feed")
            self._sink_tasks += [self._spool_task, self._feed_task]
        self.events.start()
        self._sink_tasks += self.events.tasks
        self._vee_task = None
        if self.vee is not None:
            self._vee_task = asyncio.create_task(self.vee.run(), name="daily")
        self._rate_task = asyncio.create_task(self.rate.run(self._report), name="rate")
        self._watch_task = asyncio.create_task(self._watch(), name="watch")
        self._source_tasks = [asyncio.create_task(self.mqtt.run(), name="mqtt-source")]
        if self.modbus is not None:
            self._source_tasks.append(asyncio.create_task(self.modbus.run(), name="modbus-poller"))

    async def stop(self) -> None:
        """Stop taking input, flush what was taken, close."""
        # MQTT first, while storage and the dead-letter store still run: stop reading,
        # ack what was taken once it is durable, disconnect cleanly.
        # Events raised so far go out while the broker connection is still open.
        await self.events.flush(min(5.0, self.shutdown_timeout_s))
        await self.mqtt.drain(self.shutdown_timeout_s)
        for task in self._source_tasks:
            task.cancel()
        for task in self._source_tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        deadline = time.monotonic() + self.shutdown_timeout_s
        await self.events.stop()  # before the spool closes: its database drainer adds to it
        if self._vee_task is not None and self.vee is not None:
            self._vee_task.cancel()  # a day being computed is computed again on the next start
            with contextlib.suppress(asyncio.CancelledError):
                await self._vee_task
            self.vee.close()
        if self._sink is self.spool:
            await self.spool.close()  # everything taken is on disk now
            self.writer.flush_eagerly()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.spool.wait_empty(), max(0.1, deadline - time.monotonic())
                )
            self._feed_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feed_task
        self.writer.close()
        writer_task, dl_task = self._writer_task, self._dl_task
        try:
            await asyncio.wait_for(
                asyncio.shield(writer_task), max(0.1, deadline - time.monotonic())
            )
        except TimeoutError:
            left = self.spool.lines if self._sink is self.spool else self.writer.pending
            log.error(
                "shutdown: %d readings could not be written to %s within %.0f s; %s",
                left,
                self.storage_target,
                self.shutdown_timeout_s,
                "they are in the spool and go first at the next start"
                if self._sink is self.spool
                else "unacknowledged MQTT messages stay queued at the broker",
            )
            writer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer_task
        if self._sink is self.spool:
            self.spool.settle(self.writer.lines_done)
        await self.dead_letter.close()
        dl_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dl_task
        await self.client.close()
        self._rate_task.cancel()
        self._watch_task.cancel()
        self.pipeline.flush_logs(final=True)
        library_limit().flush(final=True)
        await self.http.stop()
        log.info("%s", self.stop_summary())

    def stop_summary(self) -> str:
        """The last log line. One meaning per word, as on /metrics: `readings ... stored`
        are readings the database accepted (`meter_gateway_readings_stored_total`);
        the lines it accepted in all (estimates, daily figures and events too) are
        `meter_gateway_storage_lines_written_total`."""
        p = self.pipeline
        return (
            f"gateway stopped: {p.messages} messages, {sum(p.received.values())} readings "
            f"received, {self.readings_stored()} stored, {sum(p.rejected.values())} rejected, "
            f"{p.duplicates} duplicates dropped; {self.writer.lines_written} lines written "
            "to the database in all (readings, estimates, daily figures, events)"
        )

    async def run(self, stop: asyncio.Event) -> int:
        await self.start()
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait(
            [waiter, *self._sink_tasks, *self._source_tasks], return_when=asyncio.FIRST_COMPLETED
        )
        crashed = [t for t in done if t is not waiter]
        for t in crashed:
            if t.exception() is not None:
                log.error("task %s failed", t.get_name(), exc_info=t.exception())
        waiter.cancel()
        await self.stop()
        return 1 if crashed else 0
