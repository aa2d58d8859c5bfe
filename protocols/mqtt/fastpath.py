"""A lean handler for incoming QoS 0/1 PUBLISH packets, put into paho's client.

The gateway's hot path: on a single-reading message paho's own handling cost more
than the gateway's work (bench/bench_mqtt_ingest.py). This is the one module that
touches paho's internals, and only to install the handler:

- `Client._handle_publish` is replaced, on one client instance, by `fast_publish`;
- the handler reads `_in_packet` (the packet paho has just read), builds the
  `MQTTMessage` itself (its topic bytes go in `_topic`, as paho's constructor puts
  them), and, when acks are not manual (`_manual_ack`), calls `_send_puback`; QoS 2
  and whatever does not parse go to paho's own handler;
- it calls `on_message` itself, unless per-topic callbacks are registered
  (`message_callback_add`, seen in `_on_message_filtered`): then paho's dispatch,
  `_handle_on_message`, picks the callback;
- `Client._packet_read` is replaced by `fast_read`, which reads the socket in chunks
  (paho reads each packet's first byte, each byte of its length and then its body in
  separate `recv` calls: four system calls for a small message) and hands each whole
  packet to paho's `_packet_handle` as paho's own reader would, in `_in_packet`. What
  a chunk brought beyond the packet waits in the reader's buffer: `buffered(client)`
  says how much, so that whoever stops reading with some left comes back for it (no
  readable event will);
- `Client._packet_queue` is replaced by `fast_queue` while paho is driven by an outside
  event loop (`on_socket_register_write` set, no paho thread, as the gateway runs it):
  it queues the packet and asks for a write as paho does, without writing a byte to
  the socket pair that wakes paho's own network thread (there is none): one system
  call less per acknowledgement.

Private names change between releases without notice, so the handler is installed
only on the paho versions in `TESTED_PAHO_VERSIONS`: those on which
tests/unit/test_mqtt_fast_publish.py proves it gives what paho's handler gives, packet
for packet, and tests/integration/test_mqtt_connection.py does so end to end against
mosquitto. Any other version keeps paho's own handler: slower, never wrong. To allow
a new version, run those tests on it, then add it here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import paho.mqtt as paho_package
import paho.mqtt.client as paho
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = [
    "TESTED_PAHO_VERSIONS",
    "buffered",
    "fast_publish",
    "fast_queue",
    "fast_read",
    "install",
]

log = logging.getLogger("meter_gateway.mqtt")

#: `paho.mqtt.__version__` values the lean handler was proven equal to paho's on.
TESTED_PAHO_VERSIONS = frozenset({"2.2.0"})

_reported: bool | None = None  # what was logged: which handler this process uses


def install(client: paho.Client) -> bool:
    """Put the lean handler into `client` when this paho is a tested version.

    Returns whether it did; says which handler is used, once per process, at INFO.
    """
    global _reported
    version = paho_package.__version__
    fast = version in TESTED_PAHO_VERSIONS
    if fast:
        client._handle_publish = fast_publish(client)  # type: ignore[method-assign]
        client._packet_read = fast_read(client)  # type: ignore[method-assign]
        client._packet_queue = fast_queue(client)  # type: ignore[method-assign]
    if _reported is not fast:
        if fast:
            log.info(
                "mqtt: incoming messages are decoded by the gateway's lean handler (paho-mqtt %s)",
                version,
            )
        else:
            log.info(
                "mqtt: incoming messages are decoded by paho-mqtt %s's own handler: the "
                "lean one is enabled only on the versions it was tested on (%s)",
                version,
                ", ".join(sorted(TESTED_PAHO_VERSIONS)),
            )
        _reported = fast
    return fast


def fast_publish(client: paho.Client) -> Callable[[], paho.MQTTErrorCode]:
    """paho's handling of an incoming QoS 0/1 PUBLISH, without its per-message overhead.

    paho 2.2 builds a `Properties` object for every MQTT 5 PUBLISH, even one without
    properties (about 10 us: it fills and clears a table of every property name), and
    an `MQTTMessageInfo` holding a `threading.Condition` for every incoming message;
    together they cost more than the gateway's own work on a single-reading message.
    Here properties are parsed only when the packet has some, and the message is built
    without the info object (it serves outgoing messages only). QoS 2 and anything
    that does not parse go to paho's own handler, which also reports malformed packets.

    paho's dispatch to `on_message` (`_handle_on_message`, about 2 us) decodes the topic
    twice, looks it up among the per-topic callbacks and takes two locks; with no
    per-topic callback (the gateway registers none) `on_message` is called directly,
    on the thread that reads, as paho does. An exception from it goes up as paho's
    would (it logs and re-raises, unless `suppress_exceptions` is set: then it is
    handed to paho's dispatch, which keeps that behaviour).
    """
    original = client._handle_publish
    dispatch = client._handle_on_message
    # The per-topic callbacks' tree: its root's children stay the same dict object.
    per_topic = client._on_message_filtered._root._children
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
        on_message = client.on_message
        if per_topic or on_message is None or client.suppress_exceptions:
            dispatch(msg)
        else:
            on_message(client, client.user_data_get(), msg)
        if qos and not client._manual_ack:
            return client._send_puback(mid)
        return ok

    return handle_publish


#: Bytes asked of the socket at once: a few hundred small messages per system call.
READ_CHUNK = 1 << 16


class _Buffer:
    """What was read from one socket beyond the packets handed over so far."""

    __slots__ = ("data", "pos", "sock")

    def __init__(self) -> None:
        self.data = b""
        self.pos = 0  # where the next packet starts in `data`
        self.sock: object = None  # the socket it was read from


def buffered(client: paho.Client) -> int:
    """Bytes read from the client's socket that no packet has taken yet (0 without the
    lean reader)."""
    buf: _Buffer | None = getattr(client, "_meter_gateway_buffer", None)
    if buf is None or buf.sock is not client._sock:
        return 0
    return len(buf.data) - buf.pos


def fast_read(client: paho.Client) -> Callable[[], paho.MQTTErrorCode]:
    """paho's `_packet_read` (one whole packet to `_packet_handle` per call), reading
    the socket a chunk at a time instead of a few bytes at a time.

    Returns what paho's returns: MQTT_ERR_AGAIN while a packet is not whole yet (and
    nothing is lost: its bytes wait in the buffer), MQTT_ERR_CONN_LOST when the socket
    fails or ends, MQTT_ERR_PROTOCOL for a length over four bytes or a malformed
    packet, else what handling it returned. A packet paho's own reader had begun is
    finished by paho's reader.
    """
    original = client._packet_read
    recv = client._sock_recv
    handle = client._packet_handle
    easy_log = client._easy_log
    clock = paho.time_func
    again = paho.MQTTErrorCode.MQTT_ERR_AGAIN
    lost = paho.MQTTErrorCode.MQTT_ERR_CONN_LOST
    protocol = paho.MQTTErrorCode.MQTT_ERR_PROTOCOL
    buf = _Buffer()
    client._meter_gateway_buffer = buf  # type: ignore[attr-defined]

    def fresh_packet() -> paho._InPacket:  # (a TypedDict paho declares for type checkers)
        return {
            "command": 0,
            "have_remaining": 0,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": 0,
            "packet": bytearray(b""),
            "to_process": 0,
            "pos": 0,
        }

    def packet_read() -> paho.MQTTErrorCode:
        if client._in_packet["command"] != 0:
            return original()
        if buf.sock is not client._sock:  # a new connection: nothing of the old one
            buf.data, buf.pos, buf.sock = b"", 0, client._sock
        while True:
            data, pos = buf.data, buf.pos
            n = len(data) - pos
            if n >= 2:
                length = 0
                mult = 1
                at = pos + 1
                end = min(pos + 5, len(data))
                while at < end:
                    byte = data[at]
                    at += 1
                    length += (byte & 127) * mult
                    mult *= 128
                    if not byte & 128:
                        break
                else:
                    if at - pos > 4:
                        return protocol  # more than four length bytes: not MQTT
                    length = -1  # the length itself is not whole yet
                if length >= 0 and len(data) - at >= length:
                    break
            try:
                chunk = recv(READ_CHUNK)
            except BlockingIOError:
                return again
            except TimeoutError as err:
                easy_log(paho.MQTT_LOG_ERR, "timeout on socket: %s", err)
                return lost
            except OSError as err:
                easy_log(paho.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
                return lost
            if not chunk:
                return lost
            buf.data = data[pos:] + chunk if pos < len(data) else chunk
            buf.pos = 0
            with client._msgtime_mutex:
                client._last_bytes_received = clock()
        buf.pos = at + length
        client._in_packet = {
            "command": data[pos],
            "have_remaining": 1,
            "remaining_count": list(data[pos + 1 : at]),
            "remaining_mult": mult,
            "remaining_length": length,
            "packet": bytearray(data[at : at + length]),
            "to_process": 0,
            "pos": 0,
        }
        try:
            rc = handle()
        except MalformedPacket as exc:
            easy_log(paho.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            rc = protocol
        client._in_packet = fresh_packet()
        with client._msgtime_mutex:
            client._last_bytes_received = clock()
        return rc

    return packet_read


def fast_queue(client: paho.Client) -> Callable[..., paho.MQTTErrorCode]:
    """paho's `_packet_queue` without the wake-up byte for paho's network thread.

    paho writes one byte to a socket pair for every packet it queues, so that a
    `select()` in its own thread (`loop_start`, `loop_forever`) wakes up. Driven by an
    outside event loop there is no such thread, and paho asks that loop to write
    through `on_socket_register_write` instead: the byte is a system call per
    acknowledgement for nobody. Without an outside loop (or with paho's thread)
    paho's own `_packet_queue` runs.
    """
    original = client._packet_queue
    register_write = client._call_socket_register_write
    out = client._out_packet
    ok = paho.MQTTErrorCode.MQTT_ERR_SUCCESS

    def packet_queue(
        command: int,
        packet: bytes | bytearray,
        mid: int,
        qos: int,
        info: paho.MQTTMessageInfo | None = None,
    ) -> paho.MQTTErrorCode:
        if client._thread is not None or client._on_socket_register_write is None:
            return original(command, packet, mid, qos, info)
        out.append(
            {
                "command": command,
                "mid": mid,
                "qos": qos,
                "pos": 0,
                "to_process": len(packet),
                "packet": packet,
                "info": info,
            }
        )
        register_write()
        return ok

    return packet_queue
