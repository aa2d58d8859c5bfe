"""The lean PUBLISH handler gives the gateway what paho's own handler gives, packet for
packet, and leaves what it does not handle (QoS 2, malformed packets) to paho. It is
installed only on the paho versions these tests passed on.

The end-to-end counterpart, against mosquitto: tests/integration/test_mqtt_connection.py."""

from __future__ import annotations

import logging
import struct

import paho.mqtt as paho_package
import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from meter_gateway.protocols.mqtt import fastpath
from meter_gateway.protocols.mqtt.fastpath import fast_publish as _fast_publish


def packet(
    topic: bytes,
    payload: bytes,
    qos: int,
    mid: int,
    props: Properties | None,
    dup: bool = False,
    retain: bool = False,
) -> tuple[int, bytearray]:
    header = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    body = struct.pack("!H", len(topic)) + topic
    if qos:
        body += struct.pack("!H", mid)
    body += props.pack() if props is not None else b"\x00"
    return header, bytearray(body + payload)


def handle(fast: bool, header: int, body: bytearray) -> list[paho.MQTTMessage]:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, manual_ack=True)
    got: list[paho.MQTTMessage] = []
    client.on_message = lambda c, u, m: got.append(m)
    client._in_packet = {"command": header, "packet": body}
    handler = _fast_publish(client) if fast else client._handle_publish
    handler()
    return got


def user_props() -> Properties:
    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = [("k", "v")]
    p.ContentType = "application/json"
    return p


@pytest.mark.parametrize(
    ("topic", "payload", "qos", "mid", "props", "dup", "retain"),
    [
        (b"meters/m-1/reading", b'{"power_w": 1}', 1, 7, None, False, False),
        (b"meters/m-1/reading", b"", 0, 0, None, False, True),
        (b"concentrators/dc-1/readings", b"x" * 70000, 1, 65535, None, True, False),
        (b"meters/\xc3\xa9/reading", b"\xff\x00", 1, 1, user_props(), False, False),
    ],
)
def test_same_message_as_paho(topic, payload, qos, mid, props, dup, retain):
    header, body = packet(topic, payload, qos, mid, props, dup, retain)
    (ours,) = handle(True, header, bytearray(body))
    (theirs,) = handle(False, header, bytearray(body))
    for attr in ("topic", "payload", "qos", "mid", "dup", "retain"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    if props is not None:
        assert ours.properties.UserProperty == theirs.properties.UserProperty
        assert ours.properties.ContentType == "application/json"


def test_per_topic_callbacks_and_userdata_as_in_paho():
    header, body = packet(b"meters/m-1/reading", b"x", 1, 3, None)
    for fast in (True, False):
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, manual_ack=True
        )
        client.user_data_set("ud")
        general, specific = [], []
        client.on_message = lambda c, u, m, general=general: general.append((u, m.topic))
        client._in_packet = {"command": header, "packet": bytearray(body)}
        handler = _fast_publish(client) if fast else client._handle_publish
        handler()
        assert general == [("ud", "meters/m-1/reading")]
        # A per-topic callback takes the message instead of on_message, as in paho.
        client.message_callback_add(
            "meters/+/reading", lambda c, u, m, specific=specific: specific.append(m.mid)
        )
        client._in_packet = {"command": header, "packet": bytearray(body)}
        handler()
        assert specific == [3]
        assert len(general) == 1


def test_an_exception_in_on_message_goes_up_as_in_paho():
    header, body = packet(b"a/b", b"x", 1, 3, None)
    for fast in (True, False):
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, manual_ack=True
        )

        def boom(c, u, m):
            raise RuntimeError("bug")

        client.on_message = boom
        client._in_packet = {"command": header, "packet": bytearray(body)}
        handler = _fast_publish(client) if fast else client._handle_publish
        with pytest.raises(RuntimeError, match="bug"):
            handler()
        client.suppress_exceptions = True
        handler()  # logged and swallowed by paho, both ways


def test_qos2_goes_to_paho():
    header, body = packet(b"a/b", b"x", 2, 5, None)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, manual_ack=True)
    client._in_packet = {"command": header, "packet": body}
    _fast_publish(client)()
    assert client._in_messages[5].topic == "a/b"  # held for PUBREL, as paho does


def test_malformed_packet_fails_as_in_paho():
    truncated = bytearray(b"\x00\x09ab")  # topic length 9, two bytes present
    errors = []
    for fast in (True, False):
        try:
            handle(fast, 0x32, bytearray(truncated))
        except Exception as exc:
            errors.append(type(exc))
        else:
            errors.append(None)
    assert errors[0] == errors[1]


def new_client() -> paho.Client:
    return paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, manual_ack=True)


def uses_paho_handler(client: paho.Client) -> bool:
    return getattr(client._handle_publish, "__func__", None) is paho.Client._handle_publish


def test_the_gate_names_the_paho_these_tests_ran_on():
    # Fails after a paho upgrade: the lean handler is then off (slower, still correct).
    # If this module's other tests pass on the new version, add it to the gate.
    assert paho_package.__version__ in fastpath.TESTED_PAHO_VERSIONS, (
        f"paho-mqtt {paho_package.__version__} is not in TESTED_PAHO_VERSIONS"
    )


def test_installed_on_a_tested_version_and_said_once(monkeypatch, caplog):
    caplog.set_level(logging.INFO, "meter_gateway.mqtt")
    monkeypatch.setattr(fastpath, "_reported", None)
    monkeypatch.setattr(fastpath, "TESTED_PAHO_VERSIONS", frozenset({paho_package.__version__}))
    clients = [new_client(), new_client()]
    assert all(fastpath.install(c) for c in clients)
    assert not any(uses_paho_handler(c) for c in clients)
    lines = [r for r in caplog.records if "lean handler" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].levelno == logging.INFO


def test_any_other_version_keeps_pahos_handler(monkeypatch, caplog):
    caplog.set_level(logging.INFO, "meter_gateway.mqtt")
    monkeypatch.setattr(fastpath, "_reported", None)
    monkeypatch.setattr(fastpath, "TESTED_PAHO_VERSIONS", frozenset({"0.0.1"}))
    clients = [new_client(), new_client()]
    assert not any(fastpath.install(c) for c in clients)
    assert all(uses_paho_handler(c) for c in clients)
    lines = [r for r in caplog.records if "own handler" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].levelno == logging.INFO
    assert paho_package.__version__ in lines[0].getMessage()
