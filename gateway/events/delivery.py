"""The outbox's destinations: MQTT, the database, the webhook.

Each `*_sender()` returns a `send(items)` for `Outbox.deliver()`: it returns once every
event of the batch is where it goes (acknowledged by the broker, durable in the spool,
taken by the webhook or kept in the dead-letter store), and raises otherwise; the
outbox then retries the batch with backoff. Delivery is at least once: a batch may
come again after a failure or a crash, with the same `event_id`s.

`mqtt_sender` takes a publish that ends with the broker's PUBACK: the MQTT
connection's `publish_acked` (protocols/mqtt/acked.py keeps the PUBACK tracking).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from meter_gateway.gateway.events.event import Event, event_line
from meter_gateway.gateway.events.outbox import Send
from meter_gateway.storage.deadletter import DeadLetterStore, dead_letter_record
from meter_gateway.storage.webhook import WebhookClient, WebhookError

__all__ = [
    "DeliveryError",
    "database_sender",
    "event_topic",
    "mqtt_sender",
    "webhook_sender",
]

log = logging.getLogger("meter_gateway.events.delivery")


class DeliveryError(Exception):
    """A batch did not get where it goes; the outbox retries it."""


def event_topic(topic_prefix: str, ev: Event, gateway_id: str) -> str:
    """`<topic_prefix>/<type>/<subject id>`: the subject's first id (meter or gateway)."""
    subject = next(iter(ev.subject.values()), gateway_id)
    return f"{topic_prefix}/{ev.type}/{subject}"


# -- MQTT -------------------------------------------------------------------------------------


def mqtt_sender(
    publish: Callable[[str, bytes], Awaitable[None]],
    topic_prefix: str,
    gateway_id: str,
    *,
    timeout_s: float = 30.0,
) -> Send:
    """Publish each event (QoS 1) and wait for every PUBACK; `publish` awaits one."""

    async def one(ev: Event) -> None:
        async with asyncio.timeout(timeout_s):
            await publish(event_topic(topic_prefix, ev, gateway_id), ev.to_json(gateway_id))

    async def send(items: list[tuple[int, Event]]) -> None:
        # All at once: paho keeps the order on the wire, the broker acks in its own time.
        results = await asyncio.gather(*(one(ev) for _, ev in items), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            first = errors[0]
            why = "no PUBACK in time" if isinstance(first, TimeoutError) else str(first)
            raise DeliveryError(
                f"{len(errors)} of {len(items)} events not acknowledged by the broker: "
                f"{why or type(first).__name__}"
            )

    return send


# -- the database -----------------------------------------------------------------------------


def database_sender(
    add_line: Callable[[str], int],
    wait_durable: Callable[[int], Awaitable[None]],
    precision_divisor: int,
) -> Send:
    """Each event as a `meter_event` point into the spool (the raise at its start, the
    clear at its clear time: two points); returns once the spool has them on disk.
    The spool writes them to the database; the same event again is the same point."""

    async def send(items: list[tuple[int, Event]]) -> None:
        ticket = 0
        for _, ev in items:
            ticket = add_line(event_line(ev, precision_divisor))
        await wait_durable(ticket)

    return send


# -- the webhook ------------------------------------------------------------------------------


@dataclass(slots=True)
class _WebhookProgress:
    done: int = 0  # last seq POSTed or dead-lettered (a retried batch skips up to it)
    seq: int = 0  # the event being tried
    attempts: int = 0
    dead_letter_ticket: int = 0  # the last dead-letter record, durable before the cursor moves
    dead_lettered: int = 0


def webhook_sender(
    client: WebhookClient,
    gateway_id: str,
    dead_letter: DeadLetterStore,
    max_attempts: int,
) -> Send:
    """POST each event, in order. A failure raises, so the outbox backs off and calls
    again; after `max_attempts` failed attempts at one event, or at once when the
    endpoint refused it for good (a 4xx), the event goes to the dead-letter store with
    the reason, and the next one is tried."""
    progress = _WebhookProgress()

    async def send(items: list[tuple[int, Event]]) -> None:
        for seq, ev in items:
            if seq <= progress.done:
                continue  # taken before an event after it failed
            body = ev.to_json(gateway_id)
            try:
                await client.post(body)
            except WebhookError as exc:
                if progress.seq != seq:
                    progress.seq, progress.attempts = seq, 0
                progress.attempts += 1
                if not exc.permanent and progress.attempts < max_attempts:
                    raise
                _give_up(ev, body, exc, progress.attempts)
            progress.done = seq
        if progress.dead_letter_ticket:
            await dead_letter.wait_durable(progress.dead_letter_ticket)

    def _give_up(ev: Event, body: bytes, exc: WebhookError, attempts: int) -> None:
        if exc.permanent:
            why = f"the webhook refused the event for good: {exc.reason}"
        else:
            why = f"the webhook did not take the event in {attempts} attempts; last: {exc.reason}"
        reason = f"event {ev.type} {ev.state} ({ev.event_id}): {why}"
        log.error("webhook: %s; kept in the dead-letter store", reason)
        progress.dead_letter_ticket = dead_letter.add(
            dead_letter_record(reason=reason, source="webhook", payload=body, device=client.target)
        )
        progress.dead_lettered += 1

    return send
