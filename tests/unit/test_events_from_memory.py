"""The gateway's own events go out on MQTT from memory while the outbox cannot write
them, are recorded in the outbox once it can, and are not published a second time."""

from __future__ import annotations

import asyncio
import errno
from dataclasses import dataclass
from pathlib import Path

import orjson
import paho.mqtt.client as paho

from meter_gateway.config.schema import Config
from meter_gateway.gateway.events import Event
from meter_gateway.gateway.events.service import EventService
from meter_gateway.protocols.mqtt.acked import AckedPublisher
from meter_gateway.storage.deadletter import DeadLetterStore
from meter_gateway.storage.log import segments as outbox_module


@dataclass
class _Info:
    rc: paho.MQTTErrorCode
    mid: int


class FakeClient:
    """What AckedPublisher needs of a paho client; the broker acks every publish."""

    def __init__(self) -> None:
        self.on_publish = None
        self.published: list[tuple[str, dict]] = []
        self.changed = asyncio.Event()

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> _Info:
        self.published.append((topic, orjson.loads(payload)))
        self.changed.set()
        mid = len(self.published)
        asyncio.get_running_loop().call_soon(self.on_publish, self, None, mid)
        return _Info(paho.MQTTErrorCode.MQTT_ERR_SUCCESS, mid)

    async def wait_for(self, n: int) -> None:
        while len(self.published) < n:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 10)


def service(tmp_path: Path, client: FakeClient | None) -> EventService:
    """An event service on `tmp_path`; `client`: its MQTT connection (None: no MQTT)."""
    config = Config.model_validate(
        {
            "gateway": {"id": "gw-unit", "data_dir": str(tmp_path)},
            "mqtt": {"host": "127.0.0.1"},
            "storage": {"url": "http://127.0.0.1:1"},
        }
    )
    lines: list[str] = []

    async def durable(ticket: int) -> None:
        return None

    return EventService(
        config,
        {},
        dead_letter=DeadLetterStore(tmp_path),
        add_line=lambda line: lines.append(line) or len(lines),
        wait_line_durable=durable,
        precision_divisor=1,
        mqtt_publish=None if client is None else AckedPublisher(client),
    )


def backpressure(state: str) -> Event:
    start = 1_700_000_000_000_000_000
    return Event(
        "storage_backpressure",
        state,
        "major",
        {"gateway_id": "gw-unit"},
        start,
        start,
        "bp-1",
        {"cause": "the disk is full"},
        cleared_ns=start + 10**9 if state == "cleared" else None,
        message="the spool is full",
    )


def no_space(*args: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


async def test_published_from_memory_then_recorded_and_not_said_twice(tmp_path, monkeypatch):
    client = FakeClient()
    svc = service(tmp_path, client)
    await svc.open()
    svc.start()
    try:
        monkeypatch.setattr(outbox_module, "append_durably", no_space)
        svc.emit(backpressure("raised"))
        await client.wait_for(1)
        assert svc.outbox.durable == 0  # not on disk, yet said
        assert client.published[0][0] == "events/storage_backpressure/gw-unit"
        monkeypatch.undo()  # room again
        svc.emit(backpressure("cleared"))
        await client.wait_for(2)
        await svc.outbox.wait_delivered(10)
        assert [e.state for e in svc.outbox.events_since(1)] == ["raised", "cleared"]
        # The drainer took the raise from disk without publishing it again.
        assert [(b["state"], b["event_id"]) for _, b in client.published] == [
            ("raised", "bp-1"),
            ("cleared", "bp-1"),
        ]
        assert svc.published_from_memory == 1
    finally:
        await svc.stop()


async def test_meter_events_wait_for_the_disk(tmp_path, monkeypatch):
    """Only the gateway's own events skip the outbox's order: a meter's event is said
    once it is on disk, as ever (its input is redelivered after a crash)."""
    client = FakeClient()
    svc = service(tmp_path, client)
    await svc.open()
    svc.start()
    try:
        monkeypatch.setattr(outbox_module, "append_durably", no_space)
        meter_event = backpressure("raised")
        meter_event.type, meter_event.subject = "power_outage", {"meter_id": "m-1"}
        seq = svc.emit(meter_event)
        assert not await svc.outbox.wait_written(seq)
        assert client.published == []
        monkeypatch.undo()
        await client.wait_for(1)
        assert client.published[0][0] == "events/power_outage/m-1"
    finally:
        await svc.stop()


async def test_an_event_the_outbox_dropped_still_goes_out(tmp_path, monkeypatch):
    client = FakeClient()
    svc = service(tmp_path, client)
    await svc.open()
    svc.start()
    try:
        monkeypatch.setattr(svc.outbox, "_max_pending", 0)  # memory at its bound too
        assert svc.emit(backpressure("raised")) == 0
        await client.wait_for(1)
        assert client.published[0][1]["event_id"] == "bp-1"
    finally:
        await svc.stop()
