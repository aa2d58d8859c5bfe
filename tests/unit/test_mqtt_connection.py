"""The connection without a broker: what is published while disconnected is kept (up to
a bound), TLS settings become the right SSL context."""

from __future__ import annotations

import ssl

import pytest

from meter_gateway.protocols.mqtt import client as mqtt_client
from meter_gateway.protocols.mqtt.client import Connection, MqttError, tls_context
from meter_gateway.protocols.mqtt.config import MqttConfig
from meter_gateway.protocols.mqtt.source import MqttSource


class NoFlow:
    paused = False

    async def wait_resumed(self) -> None:
        return None


def new_connection() -> Connection:
    return Connection("c-unit", "127.0.0.1", 1, on_message=lambda client, msg: None)


def test_qos1_published_while_disconnected_is_kept_qos0_is_not():
    conn = new_connection()
    assert conn.publish("gateway/x/rejected", b"kept", qos=1)
    assert not conn.publish("gateway/x/rejected", b"lost", qos=0)
    assert not conn.publish("a/#", b"invalid topic", qos=1)


def test_what_is_kept_is_bounded_and_the_rest_counted(monkeypatch):
    monkeypatch.setattr(mqtt_client, "PUBLISH_QUEUE_MAX", 3)
    source = MqttSource(
        MqttConfig(host="127.0.0.1", port=1),
        client_id="c-unit",
        handler=lambda *a: 0,
        flow=NoFlow(),
    )
    assert [source.publish_nowait("gateway/x/rejected", b"r") for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]
    assert source.publish_dropped == 1
    assert source.stats()["publish_dropped"] == 1


def test_tls_context_verifies_unless_insecure():
    strict = tls_context()
    assert strict.verify_mode == ssl.CERT_REQUIRED
    assert strict.check_hostname
    loose = tls_context(insecure=True)
    assert loose.verify_mode == ssl.CERT_NONE
    assert not loose.check_hostname


async def test_a_refused_connection_is_an_mqtt_error():
    conn = new_connection()  # port 1: nothing listens
    with pytest.raises(MqttError):
        async with conn:
            pass
    assert conn.client.socket() is None


async def test_subscribe_without_a_connection_is_an_mqtt_error():
    with pytest.raises(MqttError, match="not connected"):
        await new_connection().subscribe([("a/b", 1)])
