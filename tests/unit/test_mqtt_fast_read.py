"""The chunked packet reader gives paho's handling what paho's own reader gives, on
the same bytes, however the stream is cut into reads; it says what it holds beyond
the last packet, and refuses what paho refuses. paho itself, on the same socket
bytes, is the judge."""

from __future__ import annotations

import random
import socket
import struct

import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meter_gateway.protocols.mqtt import fastpath

OK = paho.MQTTErrorCode.MQTT_ERR_SUCCESS
AGAIN = paho.MQTTErrorCode.MQTT_ERR_AGAIN


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish(topic: bytes, payload: bytes, qos: int, mid: int) -> bytes:
    body = struct.pack("!H", len(topic)) + topic
    if qos:
        body += struct.pack("!H", mid)
    body += b"\x00" + payload  # MQTT 5: no properties
    return bytes([0x30 | (qos << 1)]) + remaining_length(len(body)) + body


PINGRESP = b"\xd0\x00"
STREAM = [
    publish(b"meters/m-1/reading", b'{"power_w": 1}', 1, 7),
    PINGRESP,
    publish(b"concentrators/dc-1/readings", bytes(range(256)) * 700, 1, 8),  # 3 length bytes
    publish(b"meters/m-2/reading", b"", 0, 0),
    publish(b"meters/m-3/reading", b"x" * 127, 1, 9),  # a length of exactly 2 bytes
    publish(b"a", b"y" * 2_100_000, 1, 10),  # 4 length bytes
]


def client_on(sock: socket.socket, fast: bool) -> tuple[paho.Client, list[tuple]]:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, manual_ack=True)
    got: list[tuple] = []
    client.on_message = lambda c, u, m: got.append((m.topic, m.payload, m.qos, m.mid))
    client._sock = sock
    client._state = paho._ConnectionState.MQTT_CS_CONNECTED
    if fast:
        client._packet_read = fastpath.fast_read(client)
    return client, got


def run(stream: bytes, cuts: list[int], fast: bool) -> tuple[list[tuple], list[int]]:
    """Feed `stream` to a reader in the pieces `cuts` makes, reading after each piece
    until it has nothing whole; what it handled, and its return codes."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    client, got = client_on(ours, fast)
    codes: list[int] = []
    try:
        start = 0
        for end in [*cuts, len(stream)]:
            theirs.sendall(stream[start:end])
            start = end
            while True:
                rc = client._packet_read()
                codes.append(rc)
                if rc != OK:
                    break
        return got, [c for c in codes if c not in (OK, AGAIN)]
    finally:
        ours.close()
        theirs.close()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=2_200_000), max_size=8))
def test_any_cut_of_the_stream_gives_what_paho_gives(cuts):
    stream = b"".join(STREAM)
    cuts = sorted({c for c in cuts if c < len(stream)})
    theirs, _ = run(stream, cuts, fast=False)
    ours, errors = run(stream, cuts, fast=True)
    assert ours == theirs
    assert len(ours) == 5  # every PUBLISH; the PINGRESP handled without a message
    assert errors == []


def test_byte_by_byte_too():
    stream = b"".join(STREAM[:5])
    cuts = list(range(1, len(stream)))
    random.Random(1).shuffle(cuts)
    cuts = sorted(cuts[: len(cuts) // 3])
    assert run(stream, cuts, fast=True)[0] == run(stream, cuts, fast=False)[0]


def test_what_is_left_beyond_the_last_packet_is_said():
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    client, got = client_on(ours, fast=True)
    try:
        first, second = STREAM[0], STREAM[3]
        theirs.sendall(first + second[:5])
        assert client._packet_read() == OK
        assert len(got) == 1
        assert fastpath.buffered(client) == 5  # the start of the next packet
        assert client._packet_read() == AGAIN  # not whole yet: nothing handled
        theirs.sendall(second[5:])
        assert client._packet_read() == OK
        assert fastpath.buffered(client) == 0
        assert [g[0] for g in got] == ["meters/m-1/reading", "meters/m-2/reading"]
    finally:
        ours.close()
        theirs.close()


def test_a_new_connection_starts_with_nothing_of_the_old_one():
    old, old_peer = socket.socketpair()
    new, new_peer = socket.socketpair()
    for s in (old, new):
        s.setblocking(False)
    client, got = client_on(old, fast=True)
    try:
        old_peer.sendall(STREAM[0] + STREAM[3][:5])  # a torn packet left on the old one
        assert client._packet_read() == OK
        client._sock = new
        assert fastpath.buffered(client) == 0
        new_peer.sendall(STREAM[4])
        assert client._packet_read() == OK
        assert [g[0] for g in got] == ["meters/m-1/reading", "meters/m-3/reading"]
    finally:
        for s in (old, old_peer, new, new_peer):
            s.close()


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\x30\xff\xff\xff\xff\x01", paho.MQTTErrorCode.MQTT_ERR_PROTOCOL),  # 5 length bytes
        (b"", paho.MQTTErrorCode.MQTT_ERR_CONN_LOST),  # the broker closed the connection
    ],
)
def test_what_paho_refuses_is_refused(data, code):
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    client, _ = client_on(ours, fast=True)
    try:
        if data:
            theirs.sendall(data)
        else:
            theirs.shutdown(socket.SHUT_WR)
        assert client._packet_read() == code
    finally:
        ours.close()
        theirs.close()


def test_queueing_an_ack_is_pahos_without_the_wake_up_byte():
    def queued(fast: bool) -> tuple[list[dict], int, bytes]:
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, manual_ack=True
        )
        asked: list[object] = []
        client.on_socket_register_write = lambda c, u, s: asked.append(s)
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        client._sockpairR, client._sockpairW = wake_r, wake_w
        client._sock = wake_r  # only its presence matters to the callback
        queue = fastpath.fast_queue(client) if fast else client._packet_queue
        try:
            queue(0x40, b"\x40\x02\x00\x07", 7, 0)  # a PUBACK, as paho queues it
            try:
                woken = wake_r.recv(16)
            except BlockingIOError:
                woken = b""
            return [dict(p) for p in client._out_packet], len(asked), woken
        finally:
            client._sockpairR = client._sockpairW = None
            wake_r.close()
            wake_w.close()

    ours, theirs = queued(True), queued(False)
    assert ours[:2] == theirs[:2]  # the same packet queued, the same write asked for
    assert theirs[2] == b"0"  # paho wakes a thread nobody runs...
    assert ours[2] == b""  # ...the lean queue does not


def test_with_pahos_own_thread_or_no_outside_loop_pahos_queue_runs():
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, manual_ack=True)
    calls: list[tuple] = []
    client._packet_queue = lambda *a: calls.append(a) or OK
    queue = fastpath.fast_queue(client)
    queue(0x40, b"\x40\x02\x00\x07", 7, 0)  # no on_socket_register_write
    assert len(calls) == 1
