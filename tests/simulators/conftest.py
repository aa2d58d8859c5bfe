"""Shared pieces of the simulator tests: a paho subscriber that records what the broker sends."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest

# A fixed start (inside no one's "now" window: these tests never talk to a gateway), so that
# expected timestamps can be written down.
START = "2026-11-26T00:00:00Z"

# A small fleet that shows each fault quickly: two transformers of two three-phase
# household meters, three simulated hours.
SMALL_FLEET: dict[str, Any] = {
    "meters": 4,
    "meters_per_transformer": 2,
    "seed": 11,
    "start": START,
    "duration": "3h",
    "commercial_share": 0.0,
    "prosumer_share": 0.0,
    "three_phase_share": 1.0,
    "status_online": False,
}


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes

    def json(self) -> Any:
        return orjson.loads(self.payload)


class Recorder:
    """Subscribes to ``#`` (QoS 1) and keeps every message in arrival order."""

    def __init__(self, host: str, port: int) -> None:
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client = paho.Client(
            callback_api_version=paho.CallbackAPIVersion.VERSION2, client_id="", clean_session=True
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(host, port)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("no SUBACK from the broker")

    def _on_connect(self, client: paho.Client, *_: Any) -> None:
        client.subscribe("#", qos=1)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        """Wait until ``count`` messages have arrived; return them all."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.messages) >= count, timeout):
                raise TimeoutError(f"{len(self.messages)} of {count} messages arrived")
            return list(self.messages)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def recorder(mqtt_broker: Any) -> Iterator[Recorder]:
    rec = Recorder(mqtt_broker.host, mqtt_broker.port)
    yield rec
    rec.close()


@pytest.fixture
def run_on_wire(
    meter_fleet: Callable[..., Any], recorder: Recorder
) -> Callable[..., tuple[list[Received], list[dict[str, Any]]]]:
    """Run a small fleet as fast as possible; return what arrived and the truth log."""

    def run(**kwargs: Any) -> tuple[list[Received], list[dict[str, Any]]]:
        settings = {**SMALL_FLEET, **kwargs}
        fleet_run = meter_fleet(**settings)
        stats = fleet_run.wait()
        return recorder.wait_for(stats.messages), fleet_run.truth

    return run
