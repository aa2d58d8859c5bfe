"""A lean handler for incoming QoS 0/1 PUBLISH packets, installed into paho's client.

The gateway's hot path: on a single-reading message paho's own handling cost more
than the gateway's work (bench/bench_mqtt_ingest.py). A unit test proves it equal to
paho's handler on crafted packets (QoS 0/1/2, properties, malformed).
"""

from __future__ import annotations

from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = ["fast_publish"]


def fast_publish(client: paho.Client) -> Callable[[], paho.MQTTErrorCode]:
    """paho's handling of an incoming QoS 0/1 PUBLISH, without its per-message overhead.

    paho 2.2 builds a `Properties` object for every MQTT 5 PUBLISH, even one without
    properties (about 10 us: it fills and clears a table of every property name), and
    an `MQTTMessageInfo` holding a `threading.Condition` for every incoming message;
    together they cost more than the gateway's own work on a single-reading message.
    Here properties are parsed only when the packet has some, and the message is built
    without the info object (it serves outgoing messages only). QoS 2 and anything
    that does not parse go to paho's own handler, which also reports malformed packets.
    """
    original = client._handle_publish
    new_message = paho.MQTTMessage.__new__
    clock = paho.time_func
    ok = paho.MQTTErrorCode.MQTT_ERR_SUCCESS

    def handle_publish() -> paho.MQTTErrorCode:
        header = client._in_packet["command"]
        qos = (header & 0x06) >> 1
        if qos == 2:
            return original()
        packet = client._in_packet["packet"]
        try:
            end = 2 + ((packet[0] << 8) | packet[1])
            topic = bytes(packet[2:end])
            mid = 0
            if qos:
                mid = (packet[end] << 8) | packet[end + 1]
                end += 2
            properties = None
            if packet[end] == 0:  # property length 0: the usual case
                end += 1
            else:
                properties = Properties(PacketTypes.PUBLISH)
                end += properties.unpack(bytes(packet[end:]))[1]
        except Exception:
            return original()
        msg = new_message(paho.MQTTMessage)
        msg.timestamp = clock()
        msg.state = paho.mqtt_ms_invalid
        msg.dup = bool(header & 0x08)
        msg.mid = mid
        msg._topic = topic
        msg.payload = bytes(packet[end:])
        msg.qos = qos
        msg.retain = bool(header & 0x01)
        msg.info = None  # type: ignore[assignment]
        msg.properties = properties
        client._handle_on_message(msg)
        if qos and not client._manual_ack:
            return client._send_puback(mid)
        return ok

    return handle_publish
