"""The MQTT source: subscribe, route each message to its payload format, acknowledge.

aiomqtt (over paho-mqtt 2) owns the connection, through `client.BurstClient`, which
hands each message to this source straight from paho's callback (see client.py).

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
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from meter_gateway.config.schema import MqttConfig
from meter_gateway.protocols.formats import FORMATS, PayloadFormat
from meter_gateway.protocols.logs import LogLimiter
from meter_gateway.protocols.mqtt.client import BurstClient

__all__ = ["Durability", "FlowControl", "MqttSource", "match_topic"]

log = logging.getLogger("meter_gateway.mqtt")

# topic, payload, format, the topic's meter id -> the ticket to be durable before the ack
Handler = Callable[[str, bytes, PayloadFormat, "str | None"], int]

#: Connection losses within this many seconds that make a reconnect loop.
LOOP_WINDOW_S = 120.0
LOOP_LOSSES = 3


class FlowControl(Protocol):
    @property
    def paused(self) -> bool: ...

    async def wait_resumed(self) -> None: ...


class Durability(Protocol):
    """How far the records behind the handler's tickets are on disk."""

    durable: int

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
        self._routes: dict[str, tuple[PayloadFormat, str | None] | None] = {}
        self._client: BurstClient | None = None
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

    async def wait_connected(self) -> None:
        """Until the source is connected and subscribed."""
        await self._connected_event.wait()

    # -- routing ------------------------------------------------------------------------
    def _route(self, topic: str) -> tuple[PayloadFormat, str | None] | None:
        route = None
        for levels, fmt in self._filters:
            ok, topic_id = match_topic(levels, topic)
            if ok:
                route = (fmt, topic_id)
                break
        if len(self._routes) > 1_000_000:  # one entry per meter topic; bound it anyway
            self._routes.clear()
        self._routes[topic] = route
        return route

    def _on_message(self, client: paho.Client, msg: paho.MQTTMessage) -> None:
        # `client` is the connection this message came on: messages can arrive right
        # after CONNACK, before run() has finished setting up, and must be acked there.
        ticket = 0
        try:
            topic = msg.topic
            route = self._routes.get(topic, False)
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
                if len(self._held) >= self._cfg.receive_maximum and self._client is not None:
                    self._client.pause_reading()
                if self._release_task is None or self._release_task.done():
                    self._release_task = asyncio.get_running_loop().create_task(self._release())
            else:
                client.ack(msg.mid, msg.qos)

    async def _release(self) -> None:
        """Ack held messages, in order, as storage resumes and their rejections are kept."""
        durability = self._durability
        while self._held:
            await self._flow.wait_resumed()
            durable = durability.durable
            n = 0
            for _, _, ticket in self._held:
                if ticket > durable:
                    break
                n += 1
            if n == 0:
                await durability.wait_durable(self._held[0][2])
                continue
            client = self._client
            if client is None:
                return
            ready = self._held[:n]
            del self._held[:n]
            self._held_since = time.monotonic()
            for mid, qos, _ in ready:
                client.paho.ack(mid, qos)
            if len(self._held) < self._cfg.receive_maximum:
                client.resume_reading()

    # -- health -------------------------------------------------------------------------------
    def stalled_s(self) -> float:
        """For how long messages have waited for their ack without any being released."""
        return time.monotonic() - self._held_since if self._held else 0.0

    @property
    def held(self) -> int:
        """Messages received but not yet acknowledged."""
        return len(self._held)

    def reconnect_loop(self) -> int:
        """Connection losses in the last LOOP_WINDOW_S when they make a loop, else 0."""
        now = time.monotonic()
        recent = [t for t in self._losses if now - t < LOOP_WINDOW_S]
        return len(recent) if len(recent) >= LOOP_LOSSES else 0

    def _session_check(self, client: BurstClient, where: str) -> None:
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
        if client.session_present:
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

    # -- publishing (events, rejections): best effort, never blocks ingestion -----------------
    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1) -> bool:
        client = self._client
        if client is None or not self.connected:
            self.publish_dropped += 1
            return False
        info = client.paho.publish(topic, payload, qos=qos)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            self.publish_dropped += 1
            return False
        return True

    # -- connection ---------------------------------------------------------------------------
    def _make_client(self) -> BurstClient:
        cfg = self._cfg
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = cfg.session_expiry_s
        props.ReceiveMaximum = cfg.receive_maximum
        tls_params = None
        if cfg.tls.enabled:
            tls_params = aiomqtt.TLSParameters(
                ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
                cert_reqs=ssl.CERT_NONE if cfg.tls.insecure else ssl.CERT_REQUIRED,
            )
        return BurstClient(
            cfg.host,
            cfg.port,
            username=cfg.username,
            password=cfg.password,
            identifier=self._client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=cfg.clean_start,
            properties=props,
            keepalive=cfg.keepalive_s,
            tls_params=tls_params,
            tls_insecure=cfg.tls.insecure if cfg.tls.enabled else None,
            logger=logging.getLogger("meter_gateway.mqtt.paho"),
            on_message=self._on_message,
        )

    def _subscriptions(self) -> list[tuple[str, int]]:
        qos = self._cfg.qos
        group = self._cfg.shared_group
        return [
            (f"$share/{group}/{sub.topic}" if group else sub.topic, qos)
            for sub in self._cfg.subscriptions
        ]

    async def run(self) -> None:
        """Connect, subscribe, consume; reconnect forever with capped backoff. Cancel to stop."""
        cfg = self._cfg
        delay = cfg.reconnect_min_s
        where = f"{cfg.host}:{cfg.port}"
        failing = False
        while True:
            client = self._make_client()
            self.attempts += 1
            # Set before connecting: a resumed session's backlog arrives with the CONNACK.
            self._client = client
            try:
                async with client:
                    self.connected = True
                    self.connects += 1
                    delay = cfg.reconnect_min_s
                    failing = False
                    self._session_check(client, where)
                    subs = self._subscriptions()
                    await client.subscribe(subs)
                    log.info(
                        "mqtt: connected to %s as %s; subscribed to %s",
                        where,
                        self._client_id,
                        ", ".join(t for t, _ in subs),
                    )
                    self._connected_event.set()
                    self._on_state(True)
                    # Our messages never reach aiomqtt's queue, so this only ends
                    # (with MqttError) when the connection does.
                    async for _ in client.messages:
                        pass
            except aiomqtt.MqttError as exc:
                # One line per state change: the first failure at ERROR, repeats at DEBUG.
                if self.connected:
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
                self._client = None
                self._held.clear()  # message ids die with the connection; the broker resends
                if was:
                    self._losses.append(time.monotonic())
                    self._on_state(False)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, cfg.reconnect_max_s)
