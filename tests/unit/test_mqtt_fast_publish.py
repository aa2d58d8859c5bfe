"""The lean PUBLISH handler gives the gateway what paho's own handler gives, packet for
packet, and leaves what it does not handle (QoS 2, malformed packets) to paho."""

from __future__ import annotations

import struct

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

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
