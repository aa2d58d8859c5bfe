"""A connection reset with unread messages in the socket ends the connection at once,
and an ack that fails ends the connection, never the task that sent it.

Against a broker of a few lines on a real loopback socket, on uvloop and on asyncio's
own loop. uvloop, on a socket with an error, calls the reader once more and then
stops watching it for good (and refuses to watch it again: "the handler is closed");
a reader that leaves bytes behind, as a burst does, is never called again. The
connection must notice anyway, and an ack on it must not raise.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from meter_gateway.protocols.mqtt.client import READ_BURST_PACKETS, Connection, MqttError
from meter_gateway.protocols.mqtt.config import MqttConfig
from meter_gateway.protocols.mqtt.source import MqttSource

#: More QoS 1 messages than one read burst takes: bytes are left when the reset comes.
MESSAGES = READ_BURST_PACKETS + 500
CONNACK = b"\x20\x03\x00\x00\x00"  # MQTT 5: no session, success, no properties
TCP_CLOSE = 7  # tcp_info.tcpi_state once a reset has been received


def publish_packet(mid: int) -> bytes:
    topic = b"meters/m-1/reading"
    body = struct.pack("!H", len(topic)) + topic + struct.pack("!H", mid) + b"\x00" + b"{}"
    return bytes([0x32, len(body)]) + body  # PUBLISH, QoS 1; the body is < 128 bytes


class ResettingBroker(threading.Thread):
    """Accepts one client, answers its CONNECT, and on `flood_and_reset()` sends it
    MESSAGES QoS 1 messages and resets the connection (RST, as a dead peer's host does)."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="resetting-broker")
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._go = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn, _ = self.listener.accept()
            conn.settimeout(10)
            conn.recv(4096)  # the CONNECT: one small segment
            conn.sendall(CONNACK)
            assert self._go.wait(10)
            conn.sendall(b"".join(publish_packet(mid) for mid in range(1, MESSAGES + 1)))
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()  # with SO_LINGER 0: a reset, not a FIN
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.listener.close()
            self.done.set()

    def flood_and_reset(self) -> None:
        self._go.set()


def reset_received(sock: socket.socket) -> bool:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
    return info[0] == TCP_CLOSE


async def until(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:.0f} s waiting for {what}")
        await asyncio.sleep(0.01)


async def reset_while_reading_is_paused() -> tuple[int, str]:
    broker = ResettingBroker()
    broker.start()
    got: list[int] = []
    conn = Connection(
        "c-dead",
        "127.0.0.1",
        broker.port,
        on_message=lambda client, msg: got.append(msg.mid),  # acks are held
        keepalive=60,  # no ping within the test: the reset alone must end it
    )
    async with conn:
        sock = conn.client.socket()
        assert isinstance(sock, socket.socket)
        # Paused, as flow control does: the flood stays unread in the socket while
        # the reset arrives.
        conn.pause_reading()
        broker.flood_and_reset()
        await until(broker.done.is_set, 10, "the broker to reset the connection")
        assert broker.error is None, broker.error
        await until(lambda: reset_received(sock), 10, "the reset to arrive")
        conn.resume_reading()
        with pytest.raises(MqttError) as lost:
            await asyncio.wait_for(conn.wait_closed(), 5)
        assert not conn.connected
        # An ack on the dead connection is dropped, never raised (the broker delivers
        # the message again on the next connection).
        conn.client.ack(1, 1)
    return len(got), str(lost.value)


def run_on(loop: str, coro: Coroutine[Any, Any, tuple[int, str]]) -> tuple[int, str]:
    return uvloop.run(coro) if loop == "uvloop" else asyncio.run(coro)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_reset_with_unread_messages_ends_the_connection(loop: str) -> None:
    taken, why = run_on(loop, reset_while_reading_is_paused())
    if loop == "uvloop":  # asyncio's loop calls the reader until the socket is drained
        assert taken < MESSAGES, "the reset came after every message was read"
    assert "Connection reset by peer" in why or "the connection was lost" in why, why


class _FailingAcks:
    """Stands for the connection: acks raise, as a library error under them would."""

    connected = True

    def __init__(self) -> None:
        self.aborted: list[str] = []
        self.client = self

    def ack(self, mid: int, qos: int) -> None:
        raise RuntimeError("the handler is closed")

    def abort(self, why: str) -> None:
        self.aborted.append(why)
        self.connected = False

    def resume_reading(self) -> None:
        pass


async def test_an_ack_that_raises_ends_the_connection_not_the_task(caplog) -> None:
    class NoFlow:
        paused = False

        async def wait_resumed(self) -> None:
            return None

    source = MqttSource(
        MqttConfig(host="127.0.0.1", port=1),
        client_id="c-unit",
        handler=lambda *a: 0,
        flow=NoFlow(),
    )
    conn = _FailingAcks()
    source._conn = conn  # type: ignore[assignment]
    source._held = [(1, 1, 0), (2, 1, 0)]
    task = asyncio.create_task(source._release())
    await asyncio.wait_for(task, 5)
    assert task.exception() is None
    assert len(conn.aborted) == 1
    assert "acknowledging messages failed" in conn.aborted[0]
    assert "mqtt: acknowledging messages failed (RuntimeError" in caplog.text
