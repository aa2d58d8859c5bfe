"""Ids outside the rule, through a real broker to a running gateway: no event, no meter,
each message dead-lettered with a reason naming the id rule.

A last gasp on `meters/<img src=x onerror=alert(1)>/event` once raised `power_outage`,
made its own `meter_event` series, POSTed the webhook and counted a meter offline.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho

from meter_gateway.simulators.services import Mosquitto
from tests.conftest import make_config, wait_until

GASP = orjson.dumps({"type": "last_gasp"})
HOSTILE_TOPICS = [
    "meters/<img src=x onerror=alert(1)>/event",
    "meters/ev il,meter_id=m-good2 power_w=1/event",
    "meters/" + "E" * 5000 + "/event",
    "meters/\u202em-good1/event",  # right-to-left override
    "meters/m-good\u200b1/event",  # zero-width space
    "meters/<img src=x onerror=alert(1)>/status",  # its last will
    "<img src=x>/online",  # a Shelly's
]
HOSTILE = [
    (t, b"offline" if t.endswith("/status") else b"false" if "online" in t else GASP)
    for t in HOSTILE_TOPICS
]


class Events:
    """What the gateway publishes on its events topics."""

    def __init__(self, broker: Mosquitto) -> None:
        self.topics: list[str] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.subscribe("events/#", qos=1)
        self.client.loop_start()
        assert self._subscribed.wait(10), "no SUBACK for events/#"

    def _message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.topics.append(msg.topic)

    def seen(self) -> list[str]:
        with self._lock:
            return list(self.topics)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def dead_letters(data_dir: Path) -> list[dict[str, Any]]:
    files = sorted((data_dir / "dead-letter").glob("*.jsonl"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


async def test_a_last_gasp_on_a_hostile_topic_raises_nothing_and_is_dead_lettered(
    tmp_path, mosquitto, victoria, publisher, run_gateway
):
    cfg = make_config(
        tmp_path,
        mosquitto,
        storage={"url": victoria.url},
        mqtt={
            "subscriptions": [
                {"topic": "meters/+/event", "format": "meter-event"},
                {"topic": "meters/+/status", "format": "lwt"},
                {"topic": "+/online", "format": "shelly-online"},
            ]
        },
    )
    gw = await run_gateway(cfg)
    events = Events(mosquitto)
    try:
        publisher.publish_many(HOSTILE)
        publisher.publish("meters/m-good1/event", GASP)  # the control: this one is real

        await wait_until(
            lambda: "events/power_outage/m-good1" in events.seen(),
            what="the good meter's power_outage on MQTT",
        )

        def kept() -> dict[str, str]:
            return {r["topic"]: r["reason"] for r in dead_letters(cfg.gateway.data_dir)}

        await wait_until(
            lambda: set(HOSTILE_TOPICS) <= set(kept()), what="every hostile message kept"
        )
        for topic, reason in kept().items():
            assert "(the id rule)" in reason, (topic, reason)
            assert "1-64 characters of A-Z a-z 0-9 . _ : -" in reason
            assert len(reason) < 200, reason
        assert "'<img src=x onerror=alert(1)>' is not" in kept()[HOSTILE_TOPICS[0]]
        assert "\\u202e" in kept()[HOSTILE_TOPICS[3]]

        assert events.seen() == ["events/power_outage/m-good1"]
        active = [ev.subject.get("meter_id") for ev in gw.events.engine.active()]
        assert active == ["m-good1"]
        assert gw.events.stats()["engine"]["meters_tracked"] == 1
        assert gw.pipeline.internal_errors == 0
    finally:
        events.close()
