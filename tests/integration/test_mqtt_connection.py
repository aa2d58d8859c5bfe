"""The MQTT connection against a real mosquitto: messages arrive as published with the
lean decoder and with paho's own; a graceful stop acks what was taken and leaves the
rest to the broker; what is published while the broker is away gets there."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from meter_gateway.protocols.mqtt import fastpath
from meter_gateway.protocols.mqtt.client import Connection, PublishError, tls_context
from meter_gateway.protocols.mqtt.config import MqttConfig
from meter_gateway.protocols.mqtt.source import MqttSource
from meter_gateway.simulators.services import Mosquitto, free_port
from tests.conftest import Publisher, wait_until
from tests.integration.test_mqtt_options import make_tls_files

SESSION_S = 300


class NoFlow:
    paused = False

    async def wait_resumed(self) -> None:
        return None


class HeldDurability:
    """Durability the test controls: nothing is durable until `release`."""

    def __init__(self) -> None:
        self.durable = 0
        self._changed = asyncio.Event()

    async def wait_durable(self, seq: int) -> None:
        while self.durable < seq:
            self._changed.clear()
            await self._changed.wait()

    def release(self, upto: int) -> None:
        self.durable = upto
        self._changed.set()


def session_props() -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = SESSION_S
    return props


def resume_session(
    broker: Mosquitto, client_id: str, want: int, settle_s: float = 1.0
) -> tuple[bool, list[bytes]]:
    """Connect on an existing persistent session; what it delivers (blocking)."""
    got: list[bytes] = []
    present: list[bool] = []
    enough = threading.Event()

    def on_message(c: paho.Client, u: object, m: paho.MQTTMessage) -> None:
        got.append(m.payload)
        if len(got) >= want:
            enough.set()

    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    c.on_connect = lambda cl, u, flags, rc, p: present.append(flags.session_present)
    c.on_message = on_message
    c.connect(broker.host, broker.port, clean_start=False, properties=session_props())
    c.loop_start()
    if want:
        enough.wait(15)
    time.sleep(settle_s)  # anything more would come now
    c.disconnect()
    c.loop_stop()
    return bool(present and present[0]), got


def make_session(broker: Mosquitto, client_id: str, topic: str) -> None:
    """A persistent session subscribed to `topic`, left offline: it collects."""
    done = threading.Event()
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    c.on_subscribe = lambda *a: done.set()
    c.connect(broker.host, broker.port, clean_start=False, properties=session_props())
    c.loop_start()
    c.subscribe(topic, qos=1)
    assert done.wait(10)
    c.disconnect()
    c.loop_stop()


def source_for(broker_host: str, broker_port: int, client_id: str, **kw: object) -> MqttSource:
    cfg = MqttConfig(
        host=broker_host,
        port=broker_port,
        reconnect_min_s=0.1,
        reconnect_max_s=0.5,
        session_expiry_s=SESSION_S,
    )
    kw.setdefault("flow", NoFlow())
    return MqttSource(cfg, client_id=client_id, **kw)  # type: ignore[arg-type]


# -- the decoder: fast path and paho's own, end to end -------------------------------------------
@pytest.fixture(params=["fast", "paho"])
def decoder(request, monkeypatch) -> str:
    if request.param == "paho":
        monkeypatch.setattr(fastpath, "TESTED_PAHO_VERSIONS", frozenset())
    return request.param


def rich_props() -> Properties:
    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = [("k", "v"), ("k", "w")]
    p.ContentType = "application/json"
    p.ResponseTopic = "replies/1"
    p.CorrelationData = b"\x00\x01"
    p.PayloadFormatIndicator = 1
    return p


def user_props() -> Properties:
    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = [("only", "this")]
    return p


PUBLISHED = [  # topic, payload, qos, properties
    ("t/q0", b"zero", 0, None),
    ("t/q1", b'{"power_w": 1}', 1, None),
    ("t/q1/rich", b'{"power_w": 2}', 1, rich_props()),
    ("t/q0/props", b"", 0, user_props()),
    ("t/q1/big", bytes(range(256)) * 800, 1, None),
]


def props_of(msg: paho.MQTTMessage) -> dict[str, object]:
    # paho gives an empty Properties where the lean decoder gives None: the same.
    return {} if msg.properties is None else msg.properties.json()


async def test_messages_arrive_as_published(mosquitto, decoder):
    got: list[paho.MQTTMessage] = []

    def on_message(client: paho.Client, msg: paho.MQTTMessage) -> None:
        got.append(msg)
        if msg.qos:
            client.ack(msg.mid, msg.qos)

    conn = Connection(
        f"t-{decoder}",
        mosquitto.host,
        mosquitto.port,
        on_message=on_message,
        session_expiry_s=SESSION_S,
    )
    assert conn.fast_path is (decoder == "fast")
    async with conn:
        assert not conn.session_present
        await conn.subscribe([("t/#", 1)])
        pub = Publisher(mosquitto)
        for topic, payload, qos, props in PUBLISHED:
            pub.client.publish(topic, payload, qos=qos, properties=props).wait_for_publish(10)
        pub.close()
        await wait_until(lambda: len(got) >= len(PUBLISHED), what="every message")
    by_topic = {m.topic: m for m in got}
    assert len(got) == len(PUBLISHED)
    for topic, payload, qos, props in PUBLISHED:
        msg = by_topic[topic]
        assert (msg.payload, msg.qos, msg.retain, msg.dup) == (payload, qos, False, False), topic
        assert props_of(msg) == ({} if props is None else props.json()), topic
    # The same session again: everything was acked, nothing comes back.
    async with conn:
        assert conn.session_present
        await asyncio.sleep(0.5)
    assert len(got) == len(PUBLISHED)


async def test_many_messages_over_tls_in_bursts(tmp_path):
    ca, cert, key = make_tls_files(tmp_path / "tls")
    got: list[bytes] = []

    def on_message(client: paho.Client, msg: paho.MQTTMessage) -> None:
        got.append(msg.payload)
        client.ack(msg.mid, msg.qos)

    with Mosquitto(tmp_path / "mq", tls=(ca, cert, key)) as broker:
        conn = Connection(
            "t-tls",
            broker.host,
            broker.port,
            on_message=on_message,
            tls=lambda: tls_context(ca_file=ca),
        )
        async with conn:
            await conn.subscribe([("t/#", 1)])
            pub = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
            pub.tls_set(ca_certs=str(ca))
            pub.max_inflight_messages_set(1000)
            pub.connect(broker.host, broker.port)
            pub.loop_start()
            # Sizes around TLS records, so that decrypted bytes are left in the SSL buffer.
            sent = [bytes([i % 256]) * (1 + (i * 997) % 20000) for i in range(300)]
            infos = [pub.publish(f"t/{i}", p, qos=1) for i, p in enumerate(sent)]
            for info in infos:
                info.wait_for_publish(20)
            pub.loop_stop()
            pub.disconnect()
            await wait_until(lambda: len(got) >= len(sent), what="300 messages over TLS")
        assert sorted(got) == sorted(sent)


# -- graceful stop ------------------------------------------------------------------------------
async def test_drain_acks_what_was_taken_and_leaves_the_rest_to_the_broker(mosquitto):
    taken: list[bytes] = []

    def handler(topic, payload, fmt, topic_id) -> int:
        taken.append(payload)
        return len(taken)  # one dead-letter ticket each: none durable yet

    durability = HeldDurability()
    source = source_for(
        mosquitto.host, mosquitto.port, "gw-drain", handler=handler, durability=durability
    )
    task = asyncio.create_task(source.run())
    await asyncio.wait_for(source.wait_connected(), 10)
    pub = Publisher(mosquitto)
    pub.publish_many([(f"meters/m-{i}/reading", f"taken-{i}".encode()) for i in range(10)])
    await wait_until(lambda: source.held == 10, what="10 messages taken, their acks held")

    drain = asyncio.create_task(source.drain(10))
    await asyncio.sleep(0.3)
    assert not drain.done(), "drain must wait for the held acks"
    assert source.connected
    # Reading has stopped: these are not taken.
    pub.publish_many([(f"meters/m-{i}/reading", f"late-{i}".encode()) for i in range(5)])
    pub.close()
    await asyncio.sleep(0.3)
    assert len(taken) == 10

    durability.release(10)
    assert await asyncio.wait_for(drain, 10) is True
    await asyncio.wait_for(task, 5)  # run() ended on its own, cleanly
    assert not source.connected
    assert source.reconnect_loop() == 0

    # The same session, as the next start would resume it: the 10 taken were acked
    # before the disconnect; the 5 late ones wait at the broker.
    present, redelivered = await asyncio.to_thread(resume_session, mosquitto, "gw-drain", 5)
    assert present
    assert sorted(redelivered) == sorted(f"late-{i}".encode() for i in range(5))


async def test_drain_gives_up_after_its_timeout_and_the_broker_keeps_the_messages(
    mosquitto, caplog
):
    durability = HeldDurability()  # never released: storage is stuck
    source = source_for(
        mosquitto.host,
        mosquitto.port,
        "gw-stuck",
        handler=lambda *a: 1,
        durability=durability,
    )
    task = asyncio.create_task(source.run())
    await asyncio.wait_for(source.wait_connected(), 10)
    pub = Publisher(mosquitto)
    pub.publish_many([(f"meters/m-{i}/reading", f"held-{i}".encode()) for i in range(4)])
    pub.close()
    await wait_until(lambda: source.held == 4, what="acks held")
    t0 = time.monotonic()
    assert await source.drain(0.5) is False
    assert time.monotonic() - t0 < 5
    await asyncio.wait_for(task, 5)
    assert "4 MQTT messages taken but not acknowledged" in caplog.text
    present, redelivered = await asyncio.to_thread(resume_session, mosquitto, "gw-stuck", 4)
    assert present
    assert sorted(redelivered) == sorted(f"held-{i}".encode() for i in range(4))


async def test_drain_while_the_broker_is_unreachable_ends_run_at_once():
    source = source_for("127.0.0.1", free_port(), "gw-nobroker", handler=lambda *a: 0)
    task = asyncio.create_task(source.run())
    await wait_until(lambda: source.attempts >= 2, what="failed attempts")
    assert await asyncio.wait_for(source.drain(5), 3) is True
    await asyncio.wait_for(task, 1)


# -- publishing while the broker is away --------------------------------------------------------
@pytest.fixture
def persistent_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "persistent", persistence=True) as broker:
        yield broker


async def test_what_is_published_while_the_broker_is_away_arrives_after_it_returns(
    persistent_broker,
):
    broker = persistent_broker
    topic = "gateway/gw-pub/rejected"
    await asyncio.to_thread(make_session, broker, "listener", topic)
    source = source_for(broker.host, broker.port, "gw-pub", handler=lambda *a: 0)
    task = asyncio.create_task(source.run())
    await asyncio.wait_for(source.wait_connected(), 10)
    assert source.publish_nowait(topic, b"before")

    broker.stop()
    await wait_until(lambda: not source.connected, what="the loss noticed")
    sent = [f"away-{i}".encode() for i in range(60)]  # more than paho keeps in flight
    assert all(source.publish_nowait(topic, p) for p in sent)
    assert source.publish_dropped == 0

    broker.start()  # same port, same store: the listener's session is still there
    await wait_until(lambda: source.connected, within=15, what="the reconnect")
    present, got = await asyncio.to_thread(resume_session, broker, "listener", len(sent) + 1)
    assert present
    assert set(got) >= {b"before", *sent}
    await source.drain(5)
    await asyncio.wait_for(task, 5)


async def test_an_acked_publish_on_the_gateways_client_waits_across_a_broker_restart(
    persistent_broker,
):
    broker = persistent_broker
    topic = "events/power_outage/m-1"
    await asyncio.to_thread(make_session, broker, "event-listener", topic)
    source = source_for(broker.host, broker.port, "gw-acked", handler=lambda *a: 0)
    task = asyncio.create_task(source.run())
    await asyncio.wait_for(source.wait_connected(), 10)
    publish_acked = source.publish_acked
    await asyncio.wait_for(publish_acked(topic, b"while-up"), 10)

    broker.stop()
    await wait_until(lambda: not source.connected, what="the loss noticed")
    pending = asyncio.create_task(publish_acked(topic, b"while-away"))
    await asyncio.sleep(0)
    assert not pending.done()  # no broker, no acknowledgement
    broker.start()
    await asyncio.wait_for(pending, 20)  # resent after the reconnect, then acknowledged
    present, got = await asyncio.to_thread(resume_session, broker, "event-listener", 2)
    assert present
    assert set(got) >= {b"while-up", b"while-away"}
    with pytest.raises(PublishError):
        await publish_acked("bad/+/topic", b"x")
    await source.drain(5)
    await asyncio.wait_for(task, 5)


async def test_publish_acked_returns_with_the_brokers_acknowledgement(mosquitto):
    conn = Connection("t-acked", mosquitto.host, mosquitto.port, on_message=lambda c, m: None)
    async with conn:
        for qos in (0, 1, 2):
            await asyncio.wait_for(conn.publish_acked(f"acked/q{qos}", b"x", qos), 10)
        with pytest.raises(PublishError):
            await conn.publish_acked("acked/+/invalid", b"x")
    # No connection: QoS 1 waits in paho's queue, QoS 0 is lost at once.
    waiting = asyncio.create_task(conn.publish_acked("acked/later", b"y"))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    with pytest.raises(PublishError):
        await conn.publish_acked("acked/now", b"z", qos=0)
    async with conn:
        await asyncio.wait_for(waiting, 10)


async def test_gateway_stop_mid_stream_acks_every_message_it_took(tmp_path, mosquitto, victoria):
    from meter_gateway.gateway.app import Gateway
    from tests.conftest import make_config

    cfg = make_config(tmp_path, mosquitto, storage={"url": victoria.url})
    gw = Gateway(cfg, shutdown_timeout_s=10)
    await gw.start()
    await asyncio.wait_for(gw.mqtt.wait_connected(), 20)
    now = int(time.time())
    n = 2000
    msgs = [
        (f"meters/s-{i}/reading", f'{{"ts": {now - i % 3000}, "power_w": {i}}}'.encode())
        for i in range(n)
    ]
    pub = Publisher(mosquitto)
    publishing = asyncio.create_task(asyncio.to_thread(pub.publish_many, msgs))
    await wait_until(lambda: gw.pipeline.messages >= 50, what="ingestion under way")
    await gw.stop()  # SIGTERM's path, while messages still arrive
    await publishing
    pub.close()
    taken = gw.pipeline.messages
    assert gw.mqtt.stats()["unacknowledged"] == 0
    # The next start resumes the session: it gets exactly what the gateway did not take.
    present, rest = await asyncio.to_thread(resume_session, mosquitto, cfg.client_id, n - taken)
    assert present
    assert len(rest) == n - taken


async def test_what_the_reader_holds_when_reading_pauses_is_handled_on_resume(mosquitto):
    # The lean reader takes many small messages off the socket in one read; those it
    # still holds when the gateway pauses reading (acks held for storage) raise no
    # readable event later, and the broker has nothing more to send: resuming must
    # come back for them by itself.
    got: list[int] = []
    held_at_pause: list[int] = []
    conn: Connection

    def on_message(client: paho.Client, msg: paho.MQTTMessage) -> None:
        got.append(int(msg.payload))
        client.ack(msg.mid, msg.qos)
        if len(got) == 1:
            conn.pause_reading()
            held_at_pause.append(fastpath.buffered(client))

    conn = Connection(
        "t-paused",
        mosquitto.host,
        mosquitto.port,
        on_message=on_message,
        session_expiry_s=SESSION_S,
    )
    async with conn:
        await conn.subscribe([("paused/#", 1)])
    pub = Publisher(mosquitto)
    for i in range(200):  # queued in the session while the gateway is away
        pub.client.publish("paused/m", str(i).encode(), qos=1)
    pub.client.publish("paused/m", b"199", qos=1).wait_for_publish(10)
    pub.close()
    async with conn:
        await wait_until(lambda: len(got) >= 1, what="the first message")
        assert len(got) == 1  # paused inside the first message's callback
        assert held_at_pause[0] > 0, "the reader held nothing: the test proves nothing"
        conn.resume_reading()
        await wait_until(lambda: len(got) >= 201, what="every message after the resume")
    assert got[:200] == list(range(200))
