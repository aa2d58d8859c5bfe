"""The MQTT source tells the truth about its connection: a lost broker session is
reported, and a connection that keeps dropping makes the gateway not ready."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest

from meter_gateway.gateway.app import Gateway
from meter_gateway.simulators.services import Mosquitto
from tests.conftest import make_config, wait_until

LOST = "holds no session"


@pytest.fixture
def volatile_broker(tmp_path) -> Iterator[Mosquitto]:
    """A broker without persistence: a restart forgets every session."""
    with Mosquitto(tmp_path / "volatile", persistence=False) as broker:
        yield broker


async def test_a_persistent_broker_restart_keeps_the_session_quietly(
    tmp_path, mosquitto, victoria, run_gateway, caplog
):
    caplog.set_level(logging.INFO)
    gw = await run_gateway(make_config(tmp_path, mosquitto, storage={"url": victoria.url}))
    mosquitto.restart()
    await wait_until(lambda: gw.mqtt.connects == 2, what="the reconnect")
    assert gw.mqtt.sessions_lost == 0
    assert LOST not in caplog.text


async def test_a_broker_that_lost_the_session_is_reported(
    tmp_path, volatile_broker, victoria, run_gateway, caplog
):
    caplog.set_level(logging.INFO)
    cfg = make_config(tmp_path, volatile_broker, storage={"url": victoria.url})
    gw = await run_gateway(cfg)
    assert "new session at the broker" in caplog.text  # the first start: no warning
    assert LOST not in caplog.text
    volatile_broker.restart()
    await wait_until(lambda: gw.mqtt.connects == 2, what="the reconnect")
    assert gw.mqtt.sessions_lost == 1
    warnings = [r for r in caplog.records if LOST in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "may be lost" in warnings[0].getMessage()


async def test_a_lost_session_is_reported_after_the_gateway_restarts(
    tmp_path, volatile_broker, victoria, caplog
):
    caplog.set_level(logging.INFO)
    cfg = make_config(tmp_path, volatile_broker, storage={"url": victoria.url})

    async def start_and_stop() -> Gateway:
        gw = Gateway(cfg, shutdown_timeout_s=5)
        await gw.start()
        await wait_until(lambda: gw.mqtt.connected, what="connected")
        await gw.stop()
        return gw

    await start_and_stop()
    second = await start_and_stop()  # the broker kept the session: nothing to say
    assert second.mqtt.sessions_lost == 0
    assert LOST not in caplog.text
    volatile_broker.restart()  # while the gateway is away
    third = await start_and_stop()
    assert third.mqtt.sessions_lost == 1
    assert LOST in caplog.text


async def test_a_connection_that_keeps_dropping_is_not_ready(
    tmp_path, mosquitto, victoria, run_gateway, caplog
):
    cfg = make_config(tmp_path, mosquitto, storage={"url": victoria.url})
    gw = await run_gateway(cfg)
    assert gw.ready()[0]
    # Another client with the gateway's client id takes its session over, as a second
    # gateway deployed with the same id would: the broker drops ours each time.
    for n in range(2, 5):
        thief = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=cfg.client_id, protocol=paho.MQTTv5
        )
        thief.connect(mosquitto.host, mosquitto.port, clean_start=False)
        thief.loop_start()
        await wait_until(lambda n=n: gw.mqtt.connects == n, what=f"reconnect {n}")
        thief.loop_stop()
        thief.disconnect()
    ready, why = gw.ready()
    assert not ready
    assert "reconnecting in a loop" in "; ".join(why)
