"""The MQTT connection: paho-mqtt 2 driven by the asyncio event loop.

paho's documented interface for an external event loop does the work: its socket
callbacks (`on_socket_open`, `on_socket_close`, `on_socket_register_write`,
`on_socket_unregister_write`) register the socket with the loop (`add_reader`,
`add_writer`), and the loop calls `loop_read()`, `loop_write()` and, every second,
`loop_misc()` (keepalive). `Connection` is one async context manager around it:

    conn = Connection(client_id, host, port, ..., on_message=handle)
    async with conn:            # connected (CONNACK received); conn.session_present
        await conn.subscribe([(topic, qos)])
        await conn.wait_closed()  # until the connection ends
    async with conn: ...        # again, after a loss: the same paho client

One paho client serves every connection of a `Connection`: what is published while
the broker is away stays in paho's queue and is sent once connected again.

What it adds for the gateway's speed and flow control:

- Messages go to `on_message` straight from paho's callback, on the event loop: no
  queue between them. Acks are manual (`manual_ack_set`, `ack`).
- Packets are read in bursts, their acks sent in one write at the end (`_on_readable`).
- The socket reader can be paused (`pause_reading`): the backstop of flow control,
  since mosquitto 2.0.11 sends past our Receive Maximum when publishers burst
  (measured: 100 of 100 delivered with 20 acks and a window of 21), so held acks
  alone do not bound memory. With the reader paused, TCP flow control stops the broker.
- The CONNACK's session-present flag is kept (`session_present`).
- `publish_acked` returns once the broker has acknowledged the message (acked.py).
- A clean close leaves no unread bytes: closing a socket with some makes the kernel
  reset the connection, and the broker then drops what it has not read yet of ours,
  our last acks among it (see `_linger`).
- A dead socket ends the connection at once, not at the next keepalive: a pending
  socket error (a reset from the broker's host) is looked for after every read burst
  and every second, and a socket the event loop refuses to watch any more ends it too
  (see `_socket_error`, `_watch_failed`).
- On paho versions it was tested on, a lean PUBLISH decoder replaces paho's (fastpath.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from meter_gateway.protocols.mqtt import fastpath
from meter_gateway.protocols.mqtt.acked import AckedPublisher, PublishError

__all__ = [
    "CONNECT_TIMEOUT_S",
    "PUBLISH_QUEUE_MAX",
    "READ_BURST_PACKETS",
    "READ_BURST_S",
    "Connection",
    "MqttError",
    "PublishError",
    "tls_context",
]

READ_BURST_S = 0.001  # longest stretch of packet handling before the loop's other tasks run
READ_BURST_PACKETS = 1000  # and at most this many packets in one go
MISC_INTERVAL_S = 1.0  # how often loop_misc() runs (keepalive pings, their timeout)
CONNECT_TIMEOUT_S = 10.0  # TCP connect plus TLS handshake, and then again the CONNACK
DISCONNECT_TIMEOUT_S = 5.0  # for our DISCONNECT (and the acks before it) to go out,
# and then for the broker to close its side
#: Outgoing QoS 1/2 messages paho keeps (in flight or waiting for the broker); past it
#: `publish` refuses. Generous: it holds what is published while the broker is away.
PUBLISH_QUEUE_MAX = 10_000

OnMessage = Callable[[paho.Client, paho.MQTTMessage], None]

_OK = paho.MQTTErrorCode.MQTT_ERR_SUCCESS


class MqttError(Exception):
    """The connection could not be made, or was lost."""


def tls_context(
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    insecure: bool = False,
) -> ssl.SSLContext:
    """A client context: the CA file (else the system's CAs), a client certificate if
    given; `insecure` checks neither the broker's certificate nor its name."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert_file is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _settle(fut: asyncio.Future[Any], exc: BaseException | None = None, result: Any = None) -> None:
    if not fut.done():
        if exc is None:
            fut.set_result(result)
        else:
            fut.set_exception(exc)


def _new_future(loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
    fut = loop.create_future()
    # Read the exception when nobody waits for it, so asyncio does not log it as lost.
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())
    return fut


class Connection:
    """MQTT 5 connections to one broker over one paho client; a reusable (not
    reentrant) async context manager: each `async with` is one connection."""

    def __init__(
        self,
        client_id: str,
        host: str,
        port: int,
        *,
        on_message: OnMessage,
        keepalive: int = 60,
        clean_start: bool = False,
        session_expiry_s: int | None = None,
        receive_maximum: int | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: Callable[[], ssl.SSLContext] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        """`tls` makes the context, at the first connection: a bad file is then a
        failed attempt, reported and retried like any other."""
        self.host = host
        self.port = port
        self._keepalive = keepalive
        self._clean_start = clean_start
        props = Properties(PacketTypes.CONNECT)
        if session_expiry_s is not None:
            props.SessionExpiryInterval = session_expiry_s
        if receive_maximum is not None:
            props.ReceiveMaximum = receive_maximum
        self._properties = props
        self._tls = tls
        self._on_message = on_message

        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
            reconnect_on_failure=False,  # reconnecting is the caller's, with its backoff
        )
        client.manual_ack_set(True)
        if logger is not None:
            client.enable_logger(logger)
        client.connect_timeout = CONNECT_TIMEOUT_S
        client.max_queued_messages_set(PUBLISH_QUEUE_MAX)
        if username is not None:
            client.username_pw_set(username, password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._message
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        self.client = client
        #: Whether incoming messages are decoded by the lean handler (see fastpath.py).
        self.fast_path = fastpath.install(client)

        self.session_present = False
        self.reading_paused = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._active = False  # inside `async with`
        self._attempt = 0  # counts `async with`s, so a late thread finds its own out
        self._tls_done = False
        self._connack: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._misc_task: asyncio.Task[None] | None = None
        self._fd: int | None = None  # the socket, once registered with the loop
        self._reader_on = False
        self._writer_on = False
        self._reading_stopped = False
        self._disconnecting = False
        self._graceful = False  # our DISCONNECT went out: the socket closing is the clean end
        self._linger_task: asyncio.Task[None] | None = None
        self._in_read = False
        self._write_pending = False
        self._progress = False
        self._acked: AckedPublisher | None = None  # made at the first publish_acked

    # -- state ------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """CONNACK received and the connection not closed (nor found dead)."""
        closed = self._closed
        return self.client.is_connected() and closed is not None and not closed.done()

    async def wait_closed(self) -> None:
        """Until the connection ends: returns after `disconnect()`, raises when it was lost."""
        assert self._closed is not None, "not connected"
        await asyncio.shield(self._closed)

    # -- the context manager -----------------------------------------------------------------
    async def __aenter__(self) -> Connection:
        if self._active:
            raise RuntimeError("Connection is reusable, not reentrant")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._connack = _new_future(loop)
        self._closed = _new_future(loop)
        self._subacks.clear()
        self.session_present = False
        self.reading_paused = False
        self._reading_stopped = False
        self._disconnecting = False
        self._graceful = False
        self._active = True
        self._attempt += 1
        attempt = self._attempt
        client = self.client
        try:
            if self._tls is not None and not self._tls_done:
                try:
                    context = self._tls()
                except OSError as exc:  # ssl.SSLError too: a file that is not PEM
                    raise MqttError(f"TLS setup: {exc}") from None
                client.tls_set_context(context)  # paho takes it once, for good
                self._tls_done = True
            # Also closes what is left of the last connection, here on the loop's
            # thread, so that the executor thread below only ever opens a socket.
            client.connect_async(
                self.host,
                self.port,
                self._keepalive,
                clean_start=self._clean_start,
                properties=self._properties,
            )
            # DNS, TCP connect and TLS handshake block: paho runs them in reconnect().
            # It calls on_socket_open from that thread; see _in_loop().
            opening = loop.run_in_executor(None, client.reconnect)
            try:
                await opening
            except asyncio.CancelledError:
                # The thread goes on connecting: close what it opens, unless a new
                # attempt has started meanwhile.
                def late(_: object) -> None:
                    if self._attempt == attempt and not self._active:
                        self._drop_socket()

                opening.add_done_callback(lambda f: loop.call_soon_threadsafe(late, f))
                raise
            except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError)
                raise MqttError(str(exc) or type(exc).__name__) from None
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    await asyncio.shield(self._connack)
            except TimeoutError:
                raise MqttError(f"no CONNACK within {CONNECT_TIMEOUT_S:.0f} s") from None
        except BaseException:
            self._abandon()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            closed = self._closed
            if self.client.socket() is not None and closed is not None and not closed.done():
                self.disconnect()
                if exc_type is None or issubclass(exc_type, Exception):
                    with contextlib.suppress(TimeoutError, MqttError):
                        async with asyncio.timeout(DISCONNECT_TIMEOUT_S):
                            await asyncio.shield(closed)
                else:  # cancelled: no waiting, only what the socket takes now
                    with contextlib.suppress(Exception):
                        self.client.loop_write()
        finally:
            self._abandon()
        linger = self._linger_task
        if linger is not None and (exc_type is None or issubclass(exc_type, Exception)):
            await asyncio.wait({linger})

    def _drop_socket(self) -> None:
        """Close the socket at once, sending nothing, if it is open."""
        if self.client.socket() is not None:
            # paho's way to drop a connection: connect_async() closes the socket
            # (through on_socket_close) before setting up the next connect.
            self.client.connect_async(
                self.host,
                self.port,
                self._keepalive,
                clean_start=self._clean_start,
                properties=self._properties,
            )

    def _abandon(self) -> None:
        """End this connection at once: close the socket, stop the loop's work on it."""
        if self._active:
            self._drop_socket()
        self._forget_socket()
        if self._connack is not None:
            _settle(self._connack, MqttError("connection closed"))
        if self._closed is not None:
            _settle(self._closed)
        for fut in self._subacks.values():
            _settle(fut, MqttError("connection closed"))
        self._subacks.clear()
        self._active = False

    # -- operations ------------------------------------------------------------------------------
    async def subscribe(self, topics: list[tuple[str, int]]) -> list[ReasonCode]:
        """Subscribe and wait for the SUBACK; return its reason codes, one per topic."""
        closed, loop = self._closed, self._loop
        if closed is None or loop is None:
            raise MqttError("not connected")
        rc, mid = self.client.subscribe(topics)
        if rc != _OK or mid is None:
            raise MqttError(f"cannot subscribe: {paho.error_string(rc)}")
        fut = self._subacks[mid] = _new_future(loop)
        done, _ = await asyncio.wait(
            {fut, closed}, timeout=CONNECT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        if fut in done:
            return fut.result()
        self._subacks.pop(mid, None)
        if closed.done():
            closed.result()  # raises why the connection ended
            raise MqttError("disconnected while subscribing")
        raise MqttError(f"no SUBACK within {CONNECT_TIMEOUT_S:.0f} s")

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> bool:
        """Send, or keep to send: True unless the message is lost.

        QoS 1/2 messages published while there is no connection wait in paho's queue
        (up to PUBLISH_QUEUE_MAX) and are sent once connected; so are those in flight
        when a connection is lost. QoS 0 goes now or never.
        """
        try:
            info = self.client.publish(topic, payload, qos=qos)
        except ValueError:  # an invalid topic, a payload over MQTT's limit
            return False
        return info.rc == _OK or (info.rc == paho.MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0)

    async def publish_acked(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish and return once the broker has acknowledged the message (PUBACK).

        Raises PublishError when it cannot be queued (an invalid topic, paho's queue
        full) or the broker refused it. A message published while there is no
        connection, or in flight when one is lost, waits in paho's queue and is sent
        once connected again (as with `publish`): the wait goes on across reconnects,
        so the caller bounds it (asyncio.timeout). The same topic and payload again
        while the first waits awaits that message rather than queueing a copy (see
        acked.py).
        """
        if self._acked is None:
            self._acked = AckedPublisher(self.client)
        await self._acked(topic, payload, qos, retain)

    def disconnect(self) -> None:
        """Close cleanly: the acks queued so far go out, then a DISCONNECT.

        The session stays at the broker (its expiry was set at CONNECT). Before the
        CONNACK this only marks the attempt, which then closes once it is connected.
        """
        self._disconnecting = True
        self.stop_reading()
        if self._connack is not None and self._connack.done() and self.client.socket() is not None:
            self.client.disconnect()

    def pause_reading(self) -> None:
        """Stop reading from the socket: the broker soon stops sending (TCP flow control)."""
        if not self.reading_paused:
            self.reading_paused = True
            if self._reader_on and self._fd is not None and self._loop is not None:
                self._loop.remove_reader(self._fd)
                self._reader_on = False

    def resume_reading(self) -> None:
        if self.reading_paused and not self._reading_stopped:
            self.reading_paused = False
            self._start_reader()

    def stop_reading(self) -> None:
        """Pause reading for the rest of this connection: `resume_reading` is then ignored."""
        self._reading_stopped = True
        self.pause_reading()

    # -- reading and writing -------------------------------------------------------------------
    def _start_reader(self) -> None:
        if self._fd is not None and not self._reader_on and self._loop is not None:
            try:
                self._loop.add_reader(self._fd, self._on_readable)
            except (RuntimeError, OSError, ValueError) as exc:
                self._watch_failed(exc)
                return
            self._reader_on = True
            if self._read_pending():
                self._loop.call_soon(self._on_readable)

    def _read_pending(self) -> bool:
        # Bytes already taken off the socket raise no readable event: those an SSL
        # socket has decrypted (paho issue 131) and those the lean reader holds beyond
        # the last packet (fastpath.buffered). Whoever stops reading with some left
        # must come back for them.
        client = self.client
        if fastpath.buffered(client):
            return True
        pending = getattr(client.socket(), "pending", None)
        return pending is not None and pending() > 0

    def _on_readable(self) -> None:
        """Handle the packets waiting on the socket, then send their acks in one write.

        One `loop_read()` is one packet (paho 2.2 ignores its `max_packets` argument
        and reads one packet per QoS>0 message of ours in flight, usually none), so
        each message would cost a trip through the event loop. Here they are read until
        a read brings nothing (no callback ran), for at most READ_BURST_S and
        READ_BURST_PACKETS so the storage writer keeps its turn, and until the reader
        is paused; the socket is level-triggered, so what is left wakes us again. The
        acks the messages queue are written once, at the end (see
        _on_socket_register_write).
        """
        client = self.client
        read = client.loop_read
        clock = time.perf_counter
        deadline = clock() + READ_BURST_S
        self._in_read = True
        try:
            for _ in range(READ_BURST_PACKETS):
                if self.reading_paused:
                    break
                self._progress = False
                if read() != _OK:
                    break  # paho closed the socket and told on_disconnect why
                if not self._progress or clock() > deadline:
                    break
        except Exception as exc:  # a bug in a callback: the packet would be handled again
            self._fail(exc)
        finally:
            self._in_read = False
        if self._write_pending:
            self._write_pending = False
            self._flush()
        # A burst can end with bytes left in the socket, and the loop is meant to call
        # us again for them. uvloop does not when the socket has an error (a reset):
        # it calls the reader once more, then closes its watcher for good while we and
        # paho still take the connection for alive (and adding a writer then raises).
        # So the error is looked for here, after every burst.
        self._socket_error()
        if not self.reading_paused and self._read_pending() and self._loop is not None:
            self._loop.call_soon(self._on_readable)

    def _socket_error(self) -> bool:
        """End the connection if its socket has a pending error; True if it had one.

        A pending error on a connected TCP socket (a reset, a timeout, an unreachable
        host) means the connection is dead; reading it clears it, so it is acted on here
        and not left for a later read to find.
        """
        sock = self.client.socket()
        # A TCP or TLS socket (ssl.SSLSocket is one): the only transports opened here.
        if not isinstance(sock, socket.socket) or self._closed is None or self._closed.done():
            return False
        try:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except (OSError, ValueError):  # closed meanwhile
            return False
        if not err:
            return False
        self._fail(MqttError(f"the socket failed: {os.strerror(err)}"))
        return True

    def _watch_failed(self, exc: BaseException) -> None:
        """The event loop refused to watch the socket: end the connection.

        uvloop refuses (RuntimeError, "the handler is closed") after it has seen an
        error on the socket: nothing would be read or written on it any more, acks and
        keepalive pings would wait in paho's queue, and the connection would look alive
        until the keepalive ran out twice.
        """
        self._fail(MqttError(f"the event loop cannot watch the socket any more ({exc})"))

    def _flush(self) -> None:
        client = self.client
        if client.socket() is None:
            return
        try:
            client.loop_write()
        except Exception as exc:
            self._fail(exc)
            return
        # paho asked for a writer once already (we deferred it), so it does not ask
        # again when the socket took only part: finish when it is writable.
        if client.want_write():
            self._start_writer()

    def _on_writable(self) -> None:
        try:
            self.client.loop_write()  # unregisters the writer when all is sent
        except Exception as exc:
            self._fail(exc)

    def _start_writer(self) -> None:
        # Never raises: it runs inside paho's calls (ack, publish), which would pass the
        # error on to their caller and leave paho believing a writer was registered.
        if self._fd is not None and not self._writer_on and self._loop is not None:
            try:
                self._loop.add_writer(self._fd, self._on_writable)
            except (RuntimeError, OSError, ValueError) as exc:
                self._watch_failed(exc)
                return
            self._writer_on = True

    def _stop_writer(self) -> None:
        if self._writer_on and self._fd is not None and self._loop is not None:
            self._loop.remove_writer(self._fd)
        self._writer_on = False

    async def _misc_loop(self) -> None:
        client = self.client
        while True:
            await asyncio.sleep(MISC_INTERVAL_S)
            # Also while reading is paused, when no read would find a reset.
            if self._socket_error():
                return
            try:
                if client.loop_misc() != _OK:
                    return  # no socket any more (paho reported why to on_disconnect)
            except Exception as exc:
                self._fail(exc)
                return

    def abort(self, why: str) -> None:
        """End this connection now as lost (the socket is closed when `async with`
        exits): for a caller that found it cannot go on, e.g. an ack that failed."""
        self._fail(MqttError(why))

    def _fail(self, exc: Exception) -> None:
        """The connection cannot go on (paho's state is unknown): end it, with `exc`.

        paho still holds the socket until `async with` exits (`_abandon`), a moment
        later; `connected` is False from now on.
        """
        self.pause_reading()
        if self._connack is not None:
            _settle(self._connack, exc)  # if it comes to that before the CONNACK
        if self._closed is not None:
            _settle(self._closed, exc)

    def _forget_socket(self, still_open: bool = False) -> None:
        """Stop watching the socket; `still_open`: its descriptor is still ours."""
        fd, loop = self._fd, self._loop
        if fd is not None and loop is not None:
            # While the socket is open, both are removed whatever we believe: uvloop
            # keeps a watcher it closed after a socket error registered under the
            # descriptor, and only a remove takes it away (the next socket may well
            # get the same number). Once closed, the number may be someone else's.
            if self._reader_on or still_open:
                loop.remove_reader(fd)
            if self._writer_on or still_open:
                loop.remove_writer(fd)
        self._fd = None
        self._reader_on = self._writer_on = False
        task, self._misc_task = self._misc_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    # -- paho's socket callbacks -----------------------------------------------------------------
    def _in_loop(self, fn: Callable[..., None], *args: Any) -> bool:
        """Run `fn` on the loop's thread; True if it was deferred there.

        paho calls on_socket_open and on_socket_register_write from the executor
        thread that runs reconnect(); the loop's own calls happen at once.
        """
        if threading.get_ident() == self._loop_thread:
            return False
        assert self._loop is not None
        self._loop.call_soon_threadsafe(fn, *args)
        return True

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if not self._in_loop(self._opened, sock):
            self._opened(sock)

    def _opened(self, sock: Any) -> None:
        if not self._active or sock is not self.client.socket() or self._loop is None:
            return  # closed meanwhile, or an attempt given up
        self._forget_socket()
        self._fd = sock.fileno()
        if not self.reading_paused:
            self._start_reader()
        if self.client.want_write():  # the CONNECT, queued before we could add a writer
            self._start_writer()
        self._misc_task = self._loop.create_task(self._misc_loop())

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # Always on the loop's thread: connect_async() closes the last socket before
        # reconnect() runs in the executor.
        if not self._in_loop(self._closing, sock):
            self._closing(sock)

    def _closing(self, sock: Any) -> None:
        if self._graceful:
            self._graceful = False
            try:  # paho closes its socket next: a copy keeps the connection open
                keep = socket.socket(fileno=os.dup(sock.fileno()))
                keep.setblocking(False)
            except (OSError, ValueError):
                pass
            else:
                assert self._loop is not None
                self._linger_task = self._loop.create_task(self._linger(keep))
        self._forget_socket(still_open=self._fd is not None and sock.fileno() == self._fd)

    async def _linger(self, sock: socket.socket) -> None:
        """After our DISCONNECT: read and drop until the broker closes its side.

        While reading is paused (flow control, drain()) messages pile up unread in the
        socket. Closing a socket with unread bytes resets the connection (RST instead
        of FIN), and on a reset the broker discards what it has not read yet: our last
        acks and the DISCONNECT, so that it delivers acked messages again. The broker
        closes on DISCONNECT; waiting for that makes the close clean. What is dropped
        here was never taken, nor acked: the broker keeps it for the session.
        """
        assert self._loop is not None
        try:
            async with asyncio.timeout(DISCONNECT_TIMEOUT_S):
                while await self._loop.sock_recv(sock, 65536):
                    pass
        except (TimeoutError, OSError):
            pass
        finally:
            sock.close()

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._in_loop(self._start_writer):
            return
        if self._in_read:
            self._write_pending = True  # written by _on_readable() once the burst is handled
        else:
            self._start_writer()

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if not self._in_loop(self._stop_writer):
            self._stop_writer()

    # -- paho's protocol callbacks ---------------------------------------------------------------
    def _message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self._progress = True
        self._on_message(client, msg)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, *args: Any) -> None:
        self._progress = True

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        self._progress = True
        if self._connack is None or self._connack.done():
            return
        if reason_code.is_failure:
            _settle(self._connack, MqttError(f"the broker refused the connection: {reason_code}"))
            return
        self.session_present = bool(flags.session_present)
        _settle(self._connack)
        if self._disconnecting:  # disconnect() came while connecting
            client.disconnect()

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        self._progress = True
        if flags.is_disconnect_packet_from_server:
            why = MqttError(f"the broker closed the connection: {reason_code}")
        elif reason_code.is_failure:
            lost = "Unspecified error"  # paho's name for a socket that failed or closed
            why = MqttError(
                "the connection was lost" if str(reason_code) == lost else str(reason_code)
            )
        else:
            why = None
        self._graceful = why is None and self._disconnecting
        if self._connack is not None:
            _settle(self._connack, why or MqttError("disconnected before CONNACK"))
        if self._closed is not None:
            _settle(self._closed, None if self._disconnecting else why or MqttError("disconnected"))

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None = None,
    ) -> None:
        self._progress = True
        fut = self._subacks.pop(mid, None)
        if fut is not None:
            _settle(fut, result=reason_codes)
