"""Events from the outbox to real destinations: a local HTTP server as the webhook
(up, down then up, failing for good), mosquitto over MQTT with QoS 1, the spool."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest
from aiohttp import web

from meter_gateway.gateway.events import Event, event_line
from meter_gateway.gateway.events.delivery import (
    database_sender,
    mqtt_sender,
    webhook_sender,
)
from meter_gateway.gateway.events.outbox import Outbox
from meter_gateway.protocols.mqtt.acked import AckedPublisher
from meter_gateway.simulators.services import Mosquitto, free_port
from meter_gateway.storage.deadletter import DeadLetterStore
from meter_gateway.storage.log.segment import read_records, scan_segment
from meter_gateway.storage.spool import Spool
from meter_gateway.storage.webhook import WebhookClient, WebhookError, parse_retry_after

pytestmark = pytest.mark.integration

Send = Callable[[list[tuple[int, Event]]], Awaitable[None]]


def make_event(i: int, state: str = "raised") -> Event:
    start = 1_700_000_000_000_000_000 + i * 1_000_000_000
    return Event(
        "meter_offline",
        state,
        "major",
        {"meter_id": f"m-{i}", "transformer_id": "t-1"},
        start,
        start + 5,
        f"ev-{i}",
        {"silent_s": 60},
        cleared_ns=start + 60 * 10**9 if state == "cleared" else None,
        message=f"meter m-{i} is silent",
    )


class Watched:
    """Wraps a sender: signals a failed try, and when the batch holding `seq` is taken."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.failed = asyncio.Event()
        self.taken = 0
        self._taken_changed = asyncio.Event()

    async def __call__(self, items: list[tuple[int, Event]]) -> None:
        try:
            await self._send(items)
        except Exception:
            self.failed.set()
            raise
        self.taken = items[-1][0]
        self._taken_changed.set()

    async def wait_taken(self, seq: int) -> None:
        async with asyncio.timeout(30):
            while self.taken < seq:
                self._taken_changed.clear()
                await self._taken_changed.wait()


@contextlib.asynccontextmanager
async def delivering(tmp_path: Path, name: str, send: Send, **kw: Any) -> AsyncIterator[Outbox]:
    outbox = Outbox(tmp_path / "outbox", [name])
    await outbox.open()
    tasks = [
        asyncio.create_task(outbox.run()),
        asyncio.create_task(outbox.deliver(name, send, max_retry_delay_s=0.1, **kw)),
    ]
    try:
        yield outbox
    finally:
        await outbox.close()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


# -- the webhook ---------------------------------------------------------------------------------


class Hook:
    """An HTTP server on loopback that records what is POSTed and answers `status`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/hook"
        self.status = 200
        self.headers: dict[str, str] = {}
        self.bodies: list[dict[str, Any]] = []
        self.requests = 0
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        assert request.content_type == "application/json"
        body = await request.json()
        self._changed.set()
        if self.status // 100 != 2:
            return web.Response(status=self.status, text="try later", headers=self.headers)
        self.bodies.append(body)
        return web.Response(status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, n: int) -> None:
        async with asyncio.timeout(30):
            while len(self.bodies) < n:
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    h = Hook(free_port())
    yield h
    await h.stop()


@pytest.fixture
async def dead_letter(tmp_path: Path) -> AsyncIterator[DeadLetterStore]:
    store = DeadLetterStore(tmp_path, flush_interval_s=0.01)
    task = asyncio.create_task(store.run())
    yield store
    await store.close()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def dead_letters(store: DeadLetterStore) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for p in sorted(store.directory.glob("*.jsonl"))
        for line in p.read_text().splitlines()
    ]


async def test_the_webhook_gets_each_event_once_as_json(tmp_path, hook, dead_letter):
    await hook.start()
    client = WebhookClient(hook.url, timeout_s=5)
    send = webhook_sender(client, "gw-1", dead_letter, max_attempts=3)
    async with delivering(tmp_path, "webhook", send) as outbox:
        for i in range(10):
            outbox.append(make_event(i))
        outbox.append(make_event(0, "cleared"))
        await hook.wait_for(11)
    await client.close()
    assert [(b["event_id"], b["state"]) for b in hook.bodies] == [
        *((f"ev-{i}", "raised") for i in range(10)),
        ("ev-0", "cleared"),
    ]
    assert hook.bodies[0]["gateway_id"] == "gw-1"
    assert hook.bodies[0]["meter_id"] == "m-0"
    assert hook.bodies[-1]["duration_s"] == 60
    assert dead_letter.count == 0


async def test_a_webhook_that_is_down_gets_the_events_once_it_is_back(
    tmp_path, hook, dead_letter, caplog
):
    client = WebhookClient(hook.url, timeout_s=5)  # nothing listens yet: refused
    send = Watched(webhook_sender(client, "gw-1", dead_letter, max_attempts=1000))
    async with delivering(tmp_path, "webhook", send) as outbox:
        seqs = [outbox.append(make_event(i)) for i in range(5)]
        await send.failed.wait()
        # Ingestion does not wait for the webhook: every event is on disk already.
        await outbox.wait_durable(seqs[-1])
        st = outbox.stats()["destinations"]["webhook"]
        assert st["backlog"] == 5
        assert "cannot reach http://127.0.0.1" in st["last_error"]
        assert outbox.append(make_event(5)) == 6
        await hook.start()
        await hook.wait_for(6)
        await send.wait_taken(6)
    await client.close()
    assert [b["event_id"] for b in hook.bodies] == [f"ev-{i}" for i in range(6)]
    assert dead_letter.count == 0
    assert caplog.text.count("delivering") == 1  # one line for the outage


async def test_a_webhook_failing_for_good_sends_events_to_the_dead_letter_store(
    tmp_path, hook, dead_letter
):
    hook.status = 500
    await hook.start()
    client = WebhookClient(hook.url, timeout_s=5)
    send = Watched(webhook_sender(client, "gw-1", dead_letter, max_attempts=2))
    async with delivering(tmp_path, "webhook", send) as outbox:
        for i in range(3):
            outbox.append(make_event(i))
        await send.wait_taken(3)  # the cursor moves on once they are dead-lettered
    await client.close()
    assert hook.requests == 6  # two attempts each, no more
    records = dead_letters(dead_letter)
    assert [orjson.loads(r["payload"])["event_id"] for r in records] == ["ev-0", "ev-1", "ev-2"]
    assert all(r["source"] == "webhook" for r in records)
    assert "did not take the event in 2 attempts" in records[0]["reason"]
    assert "HTTP 500" in records[0]["reason"]


async def test_a_4xx_is_dead_lettered_at_once(tmp_path, hook, dead_letter):
    hook.status = 422
    await hook.start()
    client = WebhookClient(hook.url, timeout_s=5)
    send = Watched(webhook_sender(client, "gw-1", dead_letter, max_attempts=50))
    async with delivering(tmp_path, "webhook", send) as outbox:
        outbox.append(make_event(0))
        await send.wait_taken(1)
    await client.close()
    assert hook.requests == 1
    (record,) = dead_letters(dead_letter)
    assert "refused the event for good" in record["reason"]
    assert "HTTP 422" in record["reason"]


async def test_the_webhook_client_says_why_and_reads_retry_after(hook):
    hook.status = 429
    hook.headers = {"Retry-After": "7"}
    await hook.start()
    client = WebhookClient(hook.url.replace("127.0.0.1", "user:secret@127.0.0.1"), timeout_s=5)
    with pytest.raises(WebhookError) as err:
        await client.post(b"{}")
    await client.close()
    assert (err.value.status, err.value.permanent, err.value.retry_after) == (429, False, 7.0)
    assert "secret" not in err.value.reason
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None


# -- MQTT -------------------------------------------------------------------------------------


class Subscriber:
    """A plain paho client on its own thread, subscribed to `events/#` at QoS 1."""

    def __init__(self, broker: Mosquitto) -> None:
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        subacks: queue.Queue[int] = queue.Queue()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda c, u, mid, *a: subacks.put(mid)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        _, mid = self.client.subscribe("events/#", qos=1)
        # Subscribed (SUBACK) before anything is published, or the first events are missed.
        assert subacks.get(timeout=10) == mid

    def take(self, n: int) -> list[paho.MQTTMessage]:
        return [self.messages.get(timeout=20) for _ in range(n)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def test_mqtt_subscribers_get_events_on_their_topic_at_qos_1(tmp_path, mosquitto):
    sub = Subscriber(mosquitto)
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    send = Watched(mqtt_sender(AckedPublisher(pub), "events", "gw-1", timeout_s=10))
    try:
        async with delivering(tmp_path, "mqtt", send, batch=4) as outbox:
            for i in range(9):
                outbox.append(make_event(i))
            outbox.append(make_event(3, "cleared"))
            # Taken only once the broker has acknowledged every message (PUBACK).
            await send.wait_taken(10)
        got = await asyncio.to_thread(sub.take, 10)
    finally:
        pub.loop_stop()
        pub.disconnect()
        sub.close()
    assert [m.topic for m in got][:3] == [
        "events/meter_offline/m-0",
        "events/meter_offline/m-1",
        "events/meter_offline/m-2",
    ]
    assert all(m.qos == 1 for m in got)
    bodies = [orjson.loads(m.payload) for m in got]
    assert sorted((b["event_id"], b["state"]) for b in bodies) == sorted(
        [(f"ev-{i}", "raised") for i in range(9)] + [("ev-3", "cleared")]
    )
    assert got[-1].topic == "events/meter_offline/m-3"
    assert bodies[-1]["gateway_id"] == "gw-1"


async def test_mqtt_delivery_waits_for_the_broker_and_loses_nothing(tmp_path, mosquitto):
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    send = Watched(mqtt_sender(AckedPublisher(pub), "events", "gw-1", timeout_s=0.5))
    mosquitto.stop()  # the broker is away: no PUBACK, the batch is retried
    try:
        async with delivering(tmp_path, "mqtt", send) as outbox:
            outbox.append(make_event(0))
            await send.failed.wait()
            assert outbox.backlog("mqtt") == 1
            assert (
                "not acknowledged by the broker"
                in outbox.stats()["destinations"]["mqtt"]["last_error"]
            )
            await asyncio.to_thread(mosquitto.start)  # paho reconnects and sends it
            await send.wait_taken(1)
    finally:
        pub.loop_stop()
        pub.disconnect()


# -- the database (through the spool) ---------------------------------------------------------


async def test_events_go_into_the_spool_as_meter_event_points(tmp_path):
    spool = Spool(tmp_path / "spool")
    await spool.open()
    spool_task = asyncio.create_task(spool.run())
    send = Watched(database_sender(spool.add, spool.wait_durable, 1))
    async with delivering(tmp_path, "database", send) as outbox:
        raised, cleared = make_event(1), make_event(1, "cleared")
        outbox.append(raised)
        outbox.append(cleared)
        await send.wait_taken(2)
        # Taken means durable in the spool: nothing is lost if we die now.
        assert spool.durable >= 1
    await spool.close()
    spool_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await spool_task
    lines = [
        line
        for seg in sorted((tmp_path / "spool").glob("*.seg"))
        for batch in read_records(scan_segment(seg, None).records)
        for line in batch
    ]
    assert lines == [event_line(raised, 1), event_line(cleared, 1)]
    assert lines[0] != lines[1]  # the clear is a point of its own, at its own time
