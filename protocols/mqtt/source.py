"""The MQTT source: subscribe, route each message to its payload format, acknowledge.

`client.Connection` drives paho-mqtt 2 on the event loop and hands each message to
this source straight from paho's callback (see client.py and README.md).

- Acknowledgements are manual (paho's `manual_ack`). A QoS 1 message is acked once
  the pipeline has taken it and whatever of it went to the dead-letter store is on
  disk; while storage is behind (`flow.paused`) acks are held, so the broker stops
  sending (its in-flight window fills) and keeps the rest queued in our persistent
  session: backpressure without dropping anything. Acks go out in arrival order.
- Nothing a message holds can reach paho: the handler never raises, and a guard
  here catches what a bug might still let through. An exception inside paho's
  callback would drop the connection, and the broker would redeliver the same
  message forever: one bad message would stop all ingestion.

The session is persistent (stable client id, clean start off, MQTT 5 session
expiry), so what is published while the gateway is away waits for it.

A graceful stop (`drain`) stops reading, acks every message taken once it is
durable, and disconnects cleanly; the broker keeps what was not taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol, TypedDict

import paho.mqtt.client as paho

from meter_gateway.protocols.formats import FORMATS, PayloadFormat
from meter_gateway.protocols.logs import LogLimiter
from meter_gateway.protocols.mqtt.client import Connection, MqttError, tls_context
from meter_gateway.protocols.mqtt.config import MqttConfig

__all__ = ["Durability", "FlowControl", "MqttSource", "MqttStats", "match_topic"]

log = logging.getLogger("meter_gateway.mqtt")

# topic, payload, format, the topic's meter id -> the ticket to be durable before the ack
Handler = Callable[[str, bytes, PayloadFormat, "str | None"], int]
# A topic's format and the meter id its topic gives (None: a topic no filter matches).
_Route = tuple[PayloadFormat, "str | None"]

#: Connection losses within this many seconds that make a reconnect loop.
LOOP_WINDOW_S = 120.0
LOOP_LOSSES = 3


class MqttStats(TypedDict):
    """`MqttSource.stats()`: state and counters for metrics and the status page."""

    broker: str  # host:port
    client_id: str
    connected: bool
    connects: int
    attempts: int
    unacknowledged: int  # messages received but not yet acknowledged
    stalled_s: float
    reconnect_loop: int  # connection losses in the last LOOP_WINDOW_S when they make a loop
    sessions_lost: int
    unrouted: int
    handler_errors: int
    publish_dropped: int


class FlowControl(Protocol):
    @property
    def paused(self) -> bool: ...

    async def wait_resumed(self) -> None: ...


class Durability(Protocol):
    """How far the records behind the handler's tickets are on disk."""

    @property
    def durable(self) -> int: ...

    async def wait_durable(self, seq: int) -> None: ...


class _AlwaysDurable:
    durable = 1 << 62

    async def wait_durable(self, seq: int) -> None:
        return None


def match_topic(filter_levels: list[str], topic: str) -> tuple[bool, str | None]:
    """Does `topic` match the filter? Also return what its first `+` matched."""
    levels = topic.split("/")
    plus: str | None = None
    for i, f in enumerate(filter_levels):
        if f == "#":
            return True, plus
        if i >= len(levels):
            return False, None
        if f == "+":
            if plus is None:
                plus = levels[i]
        elif f != levels[i]:
            return False, None
    return len(levels) == len(filter_levels), plus


class MqttSource:
    def __init__(
        self,
        cfg: MqttConfig,
        *,
        client_id: str,
        handler: Handler,
        flow: FlowControl,
        durability: Durability | None = None,
        on_state: Callable[[bool], None] | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self._cfg = cfg
        self._client_id = client_id
        self._handler = handler
        self._flow = flow
        self._durability: Durability = durability or _AlwaysDurable()
        # Remembers that the broker held a session for us, so that a session found
        # missing after a restart (of either side) is told apart from the first start.
        self._session_file = state_dir / "mqtt-session" if state_dir is not None else None
        self._on_state = on_state or (lambda connected: None)
        self._filters = [(sub.topic.split("/"), FORMATS[sub.format]) for sub in cfg.subscriptions]
        self._routes: dict[str, _Route | None] = {}
        # One connection object, one paho client, for the life of the source: what is
        # published while the broker is away waits in it (see publish_nowait).
        self._conn = self._make_connection()
        self._held: list[tuple[int, int, int]] = []  # (mid, qos, ticket), in arrival order
        self._held_since = 0.0  # monotonic time acks last moved while some were held
        self._release_task: asyncio.Task[None] | None = None
        self.connected = False
        self._connected_event = asyncio.Event()
        self.connects = 0
        self.attempts = 0
        self.unrouted = 0
        self.publish_dropped = 0
        self.handler_errors = 0
        self.sessions_lost = 0  # reconnects that found no session at the broker
        self._losses: deque[float] = deque(maxlen=LOOP_LOSSES)  # monotonic times
        self._log_errors = LogLimiter(log)
        self._stopping = False  # drain() called: no more connections
        self._wake = asyncio.Event()  # ends a backoff sleep early
        self._running = False
        self._finished = asyncio.Event()  # set when run() returns

    async def wait_connected(self) -> None:
        """Until the source is connected and subscribed."""
        await self._connected_event.wait()

    # -- routing ------------------------------------------------------------------------
    def _route(self, topic: str) -> _Route | None:
        route = None
        for levels, fmt in self._filters:
            ok, topic_id = match_topic(levels, topic)
            if ok:
                # Decided here, once per topic (routes are cached): a format that
                # reads the topic itself (Sparkplug B; formats.wants_full_topic) gets all of it.
                route = (fmt, topic if getattr(fmt, "full_topic", False) is True else topic_id)
                break
        if len(self._routes) > 1_000_000:  # one entry per meter topic; bound it anyway
            self._routes.clear()
        self._routes[topic] = route
        return route

    def _on_message(self, client: paho.Client, msg: paho.MQTTMessage) -> None:
        # Messages can arrive right after CONNACK, before run() has finished setting
        # up: everything used here exists from the start.
        ticket = 0
        try:
            topic = msg.topic
            # False: not seen yet (None is cached too: a topic routed nowhere).
            route: _Route | Literal[False] | None = self._routes.get(topic, False)
            if route is False:
                route = self._route(topic)
            if route is None:
                self.unrouted += 1
                log.debug("message on %s matches no subscription; ignored", topic)
            else:
                ticket = self._handler(topic, msg.payload, route[0], route[1])
        except Exception as exc:
            # The handler keeps everything it is given and never raises; this is the
            # guard for a bug around it. Acked all the same: a message that cannot be
            # handled would otherwise come back at every reconnect, forever.
            self.handler_errors += 1
            self._log_errors.log(
                ("handler", type(exc).__name__),
                logging.ERROR,
                f"mqtt: internal error handling a message ({type(exc).__name__}); "
                "this is a bug: please report it with this traceback",
                exc_info=exc,
            )
        if msg.qos:
            if self._held or self._flow.paused or ticket > self._durability.durable:
                if not self._held:
                    self._held_since = time.monotonic()
                self._held.append((msg.mid, msg.qos, ticket))
                if len(self._held) >= self._cfg.receive_maximum:
                    self._conn.pause_reading()
                if self._release_task is None or self._release_task.done():
                    self._release_task = asyncio.get_running_loop().create_task(self._release())
            else:
                client.ack(msg.mid, msg.qos)

    async def _release(self) -> None:
        """Ack held messages, in order, as storage resumes and their rejections are kept.

        Never ends with an exception nobody reads: an ack that fails (a bug, a library
        error) ends the connection instead. Dropping acks is safe: the broker delivers
        the messages again on the next connection, and what the gateway already has of
        them is dropped as exact duplicates (or written again as the same points).
        """
        try:
            await self._release_held()
        except Exception as exc:
            self._log_errors.log(
                ("release", type(exc).__name__),
                logging.ERROR,
                f"mqtt: acknowledging messages failed ({type(exc).__name__}: {exc}); "
                "reconnecting: the broker delivers the unacknowledged ones again",
                exc_info=exc,
            )
            self._conn.abort(f"acknowledging messages failed: {exc}")

    async def _release_held(self) -> None:
        durability = self._durability
        while self._held:
            await self._flow.wait_resumed()
            if not self._held:
                return  # the connection ended meanwhile: run() dropped them
            durable = durability.durable
            n = 0
            for _, _, ticket in self._held:
                if ticket > durable:
                    break
                n += 1
            if n == 0:
                await durability.wait_durable(self._held[0][2])
                continue
            conn = self._conn
            if not conn.connected:
                # Message ids belong to their connection: the broker sends these
                # again on the next one (run() clears the list when it ends).
                return
            ready = self._held[:n]
            del self._held[:n]
            self._held_since = time.monotonic()
            ack = conn.client.ack
            for mid, qos, _ in ready:
                ack(mid, qos)
            if not conn.connected:
                return  # ended under the acks (a dead socket): run() drops the rest
            if len(self._held) < self._cfg.receive_maximum:
                conn.resume_reading()  # ignored once drain() has stopped reading

    # -- health -------------------------------------------------------------------------------
    def stalled_s(self) -> float:
        """For how long messages have waited for their ack without any being released."""
        return time.monotonic() - self._held_since if self._held else 0.0

    @property
    def held(self) -> int:
        """Messages received but not yet acknowledged."""
        return len(self._held)

    def stats(self) -> MqttStats:
        """State and counters for metrics and the status page (a snapshot)."""
        return {
            "broker": f"{self._cfg.host}:{self._cfg.port}",
            "client_id": self._client_id,
            "connected": self.connected,
            "connects": self.connects,
            "attempts": self.attempts,
            "unacknowledged": len(self._held),
            "stalled_s": round(self.stalled_s(), 1),
            "reconnect_loop": self.reconnect_loop(),
            "sessions_lost": self.sessions_lost,
            "unrouted": self.unrouted,
            "handler_errors": self.handler_errors,
            "publish_dropped": self.publish_dropped,
        }

    def reconnect_loop(self) -> int:
        """Connection losses in the last LOOP_WINDOW_S when they make a loop, else 0."""
        now = time.monotonic()
        recent = [t for t in self._losses if now - t < LOOP_WINDOW_S]
        return len(recent) if len(recent) >= LOOP_LOSSES else 0

    def _session_check(self, conn: Connection, where: str) -> None:
        """Warn when the broker has lost our persistent session (and what it held)."""
        if self._cfg.clean_start:
            return
        marker = self._session_file
        expected = f"{self._client_id}@{where}\n"
        had = self.connects > 1
        if not had and marker is not None:
            try:
                had = marker.read_text() == expected
            except OSError:
                had = False
        if conn.session_present:
            pass
        elif had:
            self.sessions_lost += 1
            log.warning(
                "mqtt: the broker %s holds no session for %s (it restarted without "
                "persistence, or the session expired): messages published while the "
                "gateway was away may be lost",
                where,
                self._client_id,
            )
        else:
            log.info("mqtt: new session at the broker %s for %s", where, self._client_id)
        if marker is not None and not had:
            try:
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(expected)
            except OSError as exc:
                log.warning("mqtt: cannot remember the session in %s: %s", marker, exc)

    # -- publishing (events, rejections): never blocks ingestion ------------------------------
    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1) -> bool:
        """Publish, or keep the message to publish once connected (QoS 1/2, up to
        client.PUBLISH_QUEUE_MAX); False, and counted in `publish_dropped`, if lost."""
        if self._conn.publish(topic, payload, qos):
            return True
        self.publish_dropped += 1
        return False

    async def publish_acked(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish and return once the broker acknowledged it (for the event outbox);
        see `Connection.publish_acked`."""
        await self._conn.publish_acked(topic, payload, qos, retain)

    # -- connection ---------------------------------------------------------------------------
    def _make_connection(self) -> Connection:
        cfg = self._cfg
        tls = None
        if cfg.tls.enabled:
            tls = functools.partial(
                tls_context, cfg.tls.ca_file, cfg.tls.cert_file, cfg.tls.key_file, cfg.tls.insecure
            )
        return Connection(
            self._client_id,
            cfg.host,
            cfg.port,
            on_message=self._on_message,
            keepalive=cfg.keepalive_s,
            clean_start=cfg.clean_start,
            session_expiry_s=cfg.session_expiry_s,
            receive_maximum=cfg.receive_maximum,
            username=cfg.username,
            password=cfg.password,
            tls=tls,
            logger=logging.getLogger("meter_gateway.mqtt.paho"),
        )

    def _subscriptions(self) -> list[tuple[str, int]]:
        qos = self._cfg.qos
        group = self._cfg.shared_group
        return [
            (f"$share/{group}/{sub.topic}" if group else sub.topic, qos)
            for sub in self._cfg.subscriptions
        ]

    async def run(self) -> None:
        """Connect, subscribe, consume; reconnect forever with capped backoff.

        Ends after `drain()`, or when cancelled.
        """
        self._running = True
        self._finished.clear()
        try:
            await self._run()
        finally:
            self._running = False
            self._finished.set()

    async def _run(self) -> None:
        cfg = self._cfg
        conn = self._conn
        delay = cfg.reconnect_min_s
        where = f"{cfg.host}:{cfg.port}"
        failing = False
        while not self._stopping:
            self.attempts += 1
            try:
                async with conn:
                    if self._stopping:
                        break  # drain() came while connecting: leave cleanly
                    self.connected = True
                    self.connects += 1
                    delay = cfg.reconnect_min_s
                    failing = False
                    self._session_check(conn, where)
                    subs = self._subscriptions()
                    codes = await conn.subscribe(subs)
                    for (topic, _), code in zip(subs, codes, strict=False):
                        if code.is_failure:
                            log.error(
                                "mqtt: the broker %s refused the subscription to %s: %s",
                                where,
                                topic,
                                code,
                            )
                    log.info(
                        "mqtt: connected to %s as %s; subscribed to %s",
                        where,
                        self._client_id,
                        ", ".join(t for t, _ in subs),
                    )
                    self._connected_event.set()
                    self._on_state(True)
                    # Messages go to _on_message from paho's callback; this only waits
                    # for the end: drain()'s clean disconnect, or a loss (MqttError).
                    await conn.wait_closed()
            except MqttError as exc:
                # One line per state change: the first failure at ERROR, repeats at DEBUG.
                if self._stopping:
                    log.debug("mqtt: %s while stopping: %s", where, exc)
                elif self.connected:
                    log.error("mqtt: connection to %s lost: %s; reconnecting", where, exc)
                elif not failing:
                    log.error(
                        "mqtt: cannot connect to %s: %s; retrying with backoff up to %.0f s",
                        where,
                        exc,
                        cfg.reconnect_max_s,
                    )
                else:
                    log.debug("mqtt: still cannot connect to %s: %s", where, exc)
                failing = not self.connected
            except Exception:
                # Not a connection problem we know (a TLS or library error): say so with
                # the traceback, and keep trying; ingestion must not end on one bad attempt.
                log.exception("mqtt: unexpected error with %s; reconnecting", where)
                failing = not self.connected
            finally:
                was = self.connected
                self.connected = False
                self._connected_event.clear()
                self._held.clear()  # message ids die with the connection; the broker resends
                if was:
                    if not self._stopping:  # a stop is not a loss
                        self._losses.append(time.monotonic())
                    self._on_state(False)
            if self._stopping:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, cfg.reconnect_max_s)

    async def drain(self, timeout_s: float) -> bool:
        """Graceful stop: take no more messages, ack those taken, disconnect; run() ends.

        Reading stops at once (what the broker has sent meanwhile stays unacked, and it
        delivers it again to the next session). Held acks go out as their messages
        become durable, the release path's usual way, for up to `timeout_s`; then the
        connection is closed with a DISCONNECT, after the acks. Subscriptions are kept:
        the session must go on collecting while the gateway is away. Returns whether
        every message taken was acknowledged.
        """
        self._stopping = True
        self._wake.set()
        conn = self._conn
        conn.stop_reading()
        acked = True
        try:
            async with asyncio.timeout(timeout_s):
                while self._held:
                    task = self._release_task
                    if task is None or task.done():
                        break  # the connection ended: run() drops the rest, the broker resends
                    await asyncio.wait({task})
        except TimeoutError:
            pass
        if self._held:
            acked = False
            log.warning(
                "shutdown: %d MQTT messages taken but not acknowledged within %.0f s "
                "(storage or the dead-letter store is behind); the broker keeps them and "
                "delivers them again at the next start",
                len(self._held),
                timeout_s,
            )
        conn.disconnect()  # after the acks queued above: paho sends in order
        if self._running:
            try:
                await asyncio.wait_for(self._finished.wait(), timeout_s + 5.0)
            except TimeoutError:
                log.warning(
                    "mqtt: the connection to %s:%d did not close in time",
                    self._cfg.host,
                    self._cfg.port,
                )
        return acked
