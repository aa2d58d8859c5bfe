"""Fixtures: real mosquitto, VictoriaMetrics and InfluxDB 1.x on free loopback ports,
with their data in the test's temporary folder, and a gateway running in the test's loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from meter_gateway.config.schema import Config
from meter_gateway.gateway.app import Gateway
from meter_gateway.simulators.services import InfluxDB1, Mosquitto, VictoriaMetrics

# Where a test talks to a real service (a server, a subprocess gateway, a tmpfs, the
# wheel build): such tests are `integration`, so `-m "not integration"` is the fast lane.
_INTEGRATION_DIRS = ("integration", "modbus", "deploy", "packaging")
_SERVICE_FIXTURES = frozenset(
    {
        "mosquitto",
        "victoria",
        "influx1",
        "publisher",
        "run_gateway",
        "modbus_meters",
        "modbus_fleet",
        "serial_pty_pair",
        # The installed pytest plugin's: a real mosquitto, and a fleet publishing to it.
        "mqtt_broker",
        "meter_fleet",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = item.path.parent.name
        if folder in _INTEGRATION_DIRS or _SERVICE_FIXTURES & set(
            getattr(item, "fixturenames", ())
        ):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """`meter-gateway run` called in-process sets up logging; undo it for the next test."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    with VictoriaMetrics(tmp_path / "victoria") as vm:
        yield vm


@pytest.fixture
def influx1(tmp_path: Path) -> Iterator[InfluxDB1]:
    with InfluxDB1(tmp_path / "influxdb") as db:
        yield db


async def wait_until(
    predicate: Callable[[], Any], within: float = 20.0, what: str = "condition"
) -> Any:
    """Poll a condition that has no event to await (a server's state); fail clearly."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


class Publisher:
    """A plain paho client that publishes QoS 1 and waits until the broker has each one."""

    def __init__(self, broker: Mosquitto) -> None:
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.max_inflight_messages_set(1000)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos).wait_for_publish(10)

    def publish_many(self, items: list[tuple[str, bytes | str]], qos: int = 1) -> None:
        infos = [self.client.publish(t, p, qos=qos) for t, p in items]
        for info in infos:
            info.wait_for_publish(30)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def publisher(mosquitto: Mosquitto) -> Iterator[Publisher]:
    pub = Publisher(mosquitto)
    yield pub
    pub.close()


def make_config(tmp_path: Path, broker: Mosquitto, **sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {
        "gateway": {"id": "gw-test", "data_dir": str(tmp_path / "var")},
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.5,
        },
        "storage": {"batch_size": 500, "flush_interval_s": 0.1, "max_retry_delay_s": 0.5},
        "http": {"listen": "127.0.0.1:0"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return Config.model_validate(data)


@pytest.fixture
async def run_gateway() -> AsyncIterator[Callable[[Config], Awaitable[Gateway]]]:
    """Start gateways in the test's loop; each is stopped (drained) at the end."""
    started: list[Gateway] = []

    async def start(config: Config) -> Gateway:
        gw = Gateway(config, shutdown_timeout_s=5)
        await gw.start()
        started.append(gw)
        await asyncio.wait_for(gw.mqtt.wait_connected(), 20)
        return gw

    yield start
    for gw in started:
        if gw.mqtt.connects or gw._sink_tasks:
            await gw.stop()
