"""The MQTT side of ``simulate mqtt``: a few paho-mqtt 2 connections carrying a whole fleet.

A fleet of thousands of meters goes through a handful of connections (one by default)
rather than one each, so that a simulated fleet does not need thousands of TCP connections.
Every topic always uses the same connection, which keeps per-meter order.
"""

from __future__ import annotations

import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import paho.mqtt.client as paho

if TYPE_CHECKING:
    from meter_gateway.simulators.fleet import Message

__all__ = ["BrokerOptions", "MqttPublisher", "PublishError"]


class PublishError(RuntimeError):
    """The broker refused the connection or a publish failed."""


@dataclass(frozen=True, slots=True)
class BrokerOptions:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    client_id_prefix: str = "meter-sim"
    keepalive_s: int = 60


class MqttPublisher:
    """A few paho-mqtt 2 clients; each topic always goes through the same one (per-meter order).

    At most ``max_outstanding`` QoS 1 messages wait for their PUBACK at a time: a slow broker
    slows the simulator down instead of filling memory.
    """

    def __init__(
        self, options: BrokerOptions, *, connections: int = 1, max_outstanding: int = 10_000
    ) -> None:
        if connections < 1:
            raise ValueError(f"connections must be >= 1 (got {connections})")
        self.options = options
        self.max_outstanding = max_outstanding
        self._cond = threading.Condition()
        self._outstanding = 0
        self._connected: list[threading.Event] = []
        self._refused: str | None = None
        run_id = uuid.uuid4().hex[:8]  # two simulators on one broker must not share client ids
        self._clients = [
            self._client(f"{options.client_id_prefix}-{run_id}-{i}") for i in range(connections)
        ]

    def _client(self, client_id: str) -> paho.Client:
        o = self.options
        c = paho.Client(
            callback_api_version=paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv311,
            clean_session=True,
        )
        if o.username is not None:
            c.username_pw_set(o.username, o.password)
        if o.tls or o.ca_file or o.cert_file:
            c.tls_set(
                ca_certs=o.ca_file,
                certfile=o.cert_file,
                keyfile=o.key_file,
                cert_reqs=ssl.CERT_NONE if o.tls_insecure else ssl.CERT_REQUIRED,
            )
            c.tls_insecure_set(o.tls_insecure)
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)  # unbounded in paho; ``max_outstanding`` bounds it here
        connected = threading.Event()
        self._connected.append(connected)

        def on_connect(client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
            if rc.is_failure:
                self._refused = f"broker refused the connection: {rc}"
            connected.set()

        def on_publish(client: paho.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
            with self._cond:
                self._outstanding -= 1
                self._cond.notify_all()

        c.on_connect = on_connect
        c.on_publish = on_publish
        return c

    def connect(self, timeout_s: float = 10.0) -> None:
        o = self.options
        for c in self._clients:
            try:
                c.connect(o.host, o.port, keepalive=o.keepalive_s)
            except OSError as exc:
                raise PublishError(f"cannot connect to {o.host}:{o.port}: {exc}") from exc
            c.loop_start()
        deadline = time.monotonic() + timeout_s
        for ev in self._connected:
            if not ev.wait(max(0.0, deadline - time.monotonic())):
                raise PublishError(f"no CONNACK from {o.host}:{o.port} within {timeout_s:g} s")
        if self._refused:
            raise PublishError(f"{o.host}:{o.port}: {self._refused}")

    def publish(self, msg: Message) -> None:
        with self._cond:
            while self._outstanding >= self.max_outstanding:
                self._cond.wait(1.0)
            self._outstanding += 1
        # A stable choice per topic (not hash(), which changes per process).
        client = self._clients[sum(msg.topic.encode()) % len(self._clients)]
        info = client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            # NO_CONN: paho keeps QoS 1 messages and sends them after it reconnects.
            with self._cond:
                self._outstanding -= 1
            raise PublishError(f"publish to {msg.topic} failed: {paho.error_string(info.rc)}")

    @property
    def outstanding(self) -> int:
        with self._cond:
            return self._outstanding

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until the broker has acknowledged everything; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._outstanding > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        for c in self._clients:
            c.disconnect()
            c.loop_stop()

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.flush()
        finally:
            self.close()
