"""Publishes that end with the broker's acknowledgement (PUBACK), on a paho client.

paho reports an acknowledged message only through `on_publish` with its message id;
`AckedPublisher` turns that into an awaitable per publish, the way aiomqtt keeps its
PUBACK futures inside its client. `Connection.publish_acked` (client.py) is the one
the gateway uses; this module also serves a paho client run by paho's own thread.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho

__all__ = ["AckedPublisher", "PublishError"]

_OK = paho.MQTTErrorCode.MQTT_ERR_SUCCESS
_QUEUED = paho.MQTTErrorCode.MQTT_ERR_NO_CONN  # kept by paho (QoS 1/2), sent once connected

_Key = tuple[str, bytes, int, bool]  # topic, payload, qos, retain


class PublishError(Exception):
    """A message could not be published, or the broker refused it."""


@dataclass(slots=True)
class _Waiting:
    future: asyncio.Future[None]
    since: float


class AckedPublisher:
    """`await publisher(topic, payload)`: a publish (QoS 1 unless told) on a paho client
    that returns once the broker has acknowledged it (PUBACK; PUBCOMP at QoS 2; QoS 0
    once written), and raises PublishError if it could not be queued or the broker
    refused it.

    It chains itself into the client's `on_publish` (the one there keeps being called),
    so it works with a client on the gateway's event loop (client.py) as well as one
    run by paho's own thread (`loop_start`). A message published while the broker is
    away waits in paho's queue; publishing the same topic and payload again while it
    waits awaits that message rather than queueing a copy (the outbox retries a batch
    after a timeout), unless it has waited over `stale_s`.
    """

    def __init__(self, client: paho.Client, *, stale_s: float = 600.0) -> None:
        self._client = client
        self._stale_s = stale_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._by_mid: dict[int, _Key] = {}
        self._waiting: dict[_Key, _Waiting] = {}
        previous = client.on_publish

        def on_publish(c: paho.Client, userdata: Any, mid: int, *args: Any) -> None:
            if previous is not None:
                previous(c, userdata, mid, *args)
            loop = self._loop
            if loop is None or loop.is_closed():
                return
            reason = args[0] if args else None
            # Always through the loop: the publish that registers the mid has returned
            # by the time this runs, whichever thread paho called us from.
            loop.call_soon_threadsafe(self._settle, mid, reason)

        client.on_publish = on_publish

    async def __call__(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> None:
        self._loop = asyncio.get_running_loop()
        key = (topic, payload, qos, retain)
        waiting = self._waiting.get(key)
        if waiting is None or time.monotonic() - waiting.since > self._stale_s:
            try:
                info = self._client.publish(topic, payload, qos=qos, retain=retain)
            except ValueError as exc:  # an invalid topic, a payload over MQTT's limit
                raise PublishError(f"cannot publish on {topic}: {exc}") from None
            # QoS 0 is not kept while there is no connection: it goes now or never.
            if info.rc != _OK and not (info.rc == _QUEUED and qos > 0):
                raise PublishError(f"cannot publish on {topic}: {paho.error_string(info.rc)}")
            fut = self._loop.create_future()
            waiting = self._waiting[key] = _Waiting(fut, time.monotonic())
            self._by_mid[info.mid] = key
        # Shielded: a timeout stops this wait, not the message, which may still be acked.
        await asyncio.shield(waiting.future)

    def _settle(self, mid: int, reason: Any) -> None:
        key = self._by_mid.pop(mid, None)
        if key is None:
            return  # published by someone else (publish_nowait), or already settled
        waiting = self._waiting.pop(key, None)
        if waiting is None or waiting.future.done():
            return
        if reason is not None and getattr(reason, "is_failure", False):
            waiting.future.set_exception(
                PublishError(f"the broker refused the message on {key[0]}: {reason}")
            )
            waiting.future.exception()  # read: nobody may be waiting any more
        else:
            waiting.future.set_result(None)
