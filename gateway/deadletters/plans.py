"""What a dead-letter record is, and how it goes through the pipeline again: its plan.

- an MQTT message: its payload through the format its topic maps to in today's
  `mqtt.subscriptions` (`MessagePlan`);
- one element of a batch: that element alone, through the `json-batch` format's checks
  (`ElementPlan`); the elements of a batch rejected for one reason (`ElementsPlan`);
- a Modbus reading the validator refused: the reading again (`ReadingPlan`);
- anything else is not resubmitted, and says why (`SkipPlan`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from meter_gateway.gateway.pipeline import expand_indexes
from meter_gateway.protocols.formats import FORMATS, Decoded, PayloadFormat

__all__ = [
    "ElementPlan",
    "ElementsPlan",
    "MessagePlan",
    "Plan",
    "ReadingPlan",
    "Route",
    "SkipPlan",
    "element_format",
    "elements_format",
    "only_elements",
    "plan_for",
]


@dataclass(frozen=True, slots=True)
class SkipPlan:
    """Not resubmitted: why (the report counts records by it)."""

    why: str


@dataclass(frozen=True, slots=True)
class MessagePlan:
    """An MQTT message: `Pipeline.handle_message` with the format its topic maps to."""

    topic: str
    payload: bytes
    fmt: PayloadFormat
    topic_id: str | None


@dataclass(frozen=True, slots=True)
class ElementPlan:
    """One element of a batch, judged alone as the element at `index`."""

    topic: str
    payload: bytes
    index: int


@dataclass(frozen=True, slots=True)
class ElementsPlan:
    """Elements of a batch (a JSON array), judged as the elements at `indexes`."""

    topic: str
    elements: bytes
    indexes: list[int]


@dataclass(frozen=True, slots=True)
class ReadingPlan:
    """A reading already in canonical form: `Pipeline.handle_reading`."""

    obj: dict[str, Any]
    source: str
    device: str


Plan = SkipPlan | MessagePlan | ElementPlan | ElementsPlan | ReadingPlan

# Today's route for an MQTT topic: (format, topic id, format name), or None.
Route = Callable[[str], tuple[PayloadFormat, str | None, str] | None]

# A payload (or a line of `meter-gateway replay`) kept only in part: not replayable.
_TRUNCATED = re.compile(r"^(?:payload|line) of [\d,]+ bytes is over (?:mqtt\.)?max_payload_bytes")


def plan_for(rec: dict[str, Any], route: Route) -> Plan:
    """How to put a record through again, or `SkipPlan(why)`."""
    source = rec.get("source")
    reason = str(rec.get("reason", ""))
    if source == "storage":
        return SkipPlan("storage: a line the database refused (not a validation matter)")
    if source not in ("mqtt", "modbus"):
        return SkipPlan(f"{source}: not a reading")
    payload = _payload(rec)
    if source == "modbus":
        obj = _json_object(payload) if payload is not None else None
        if obj is None or "meter_id" not in obj:
            return SkipPlan("modbus: a poll error (no reading was made)")
        return ReadingPlan(obj, "modbus", str(rec.get("device") or "modbus"))
    if _TRUNCATED.match(reason):
        return SkipPlan("mqtt: payload cut at max_payload_bytes")
    topic = rec.get("topic")
    if type(topic) is not str:
        return SkipPlan("mqtt: no topic")
    if rec.get("origin") == "replay" and payload is not None:
        # Written by `meter-gateway replay` for a line of the operator's own file (a
        # field no client can set): the line as a reading naming its meter.
        return MessagePlan(topic, payload, FORMATS["json"], None)
    routed = route(topic)
    if routed is None:
        return SkipPlan("mqtt: today's mqtt.subscriptions route no format for the topic")
    fmt, topic_id, name = routed
    index = rec.get("index")
    if type(index) is int:
        if name != "json-batch":
            return SkipPlan(
                "mqtt: an element of a batch, but today's mqtt.subscriptions route its "
                "topic to another format than json-batch"
            )
        if "nested deeper than" in reason:
            return SkipPlan("mqtt: elements nested too deep (no configuration takes them)")
        if rec.get("kind") == "elements":
            indexes = expand_indexes(rec.get("indexes"))
            elements = rec.get("elements")
            if indexes is None or type(elements) is not str:
                return SkipPlan("mqtt: elements kept only inside the raw message")
            return ElementsPlan(topic, elements.encode("utf-8"), indexes)
        if payload is None:
            return SkipPlan("mqtt: no payload kept")
        return ElementPlan(topic, payload, index)
    if payload is None:
        return SkipPlan("mqtt: no payload kept")
    if name in ("lwt", "meter-event"):
        return SkipPlan(f"mqtt: a {name} message (events are not raised from the past)")
    return MessagePlan(topic, payload, fmt, topic_id)


def _payload(rec: dict[str, Any]) -> bytes | None:
    text = rec.get("payload")
    if isinstance(text, str):
        return text.encode("utf-8")
    b64 = rec.get("payload_base64")
    if isinstance(b64, str):
        try:
            return base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            return None
    return None


def _json_object(payload: bytes) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def only_elements(plan: ElementsPlan, wanted: list[int] | None) -> ElementsPlan:
    """An `ElementsPlan` narrowed to the elements at `wanted` (those still to resubmit)."""
    if wanted is None:
        return plan
    keep = set(wanted)
    try:
        items = json.loads(plan.elements)
    except ValueError:
        return plan
    if type(items) is not list or len(items) != len(plan.indexes):
        return plan
    pairs = [(i, item) for i, item in zip(plan.indexes, items, strict=True) if i in keep]
    text = json.dumps([item for _, item in pairs], separators=(",", ":"))
    return ElementsPlan(plan.topic, text.encode("utf-8"), [i for i, _ in pairs])


def element_format(index: int) -> PayloadFormat:
    """One element of a batch, checked by the `json-batch` format as element `index`."""
    elements = elements_format([index])
    return lambda payload, topic_id: elements(b"[" + payload + b"]", topic_id)


def elements_format(indexes: list[int]) -> PayloadFormat:
    """A JSON array of elements of a batch, checked by the `json-batch` format as the
    elements at `indexes` (reasons and positions name those)."""
    batch = FORMATS["json-batch"]

    def fmt(payload: bytes, topic_id: str | None) -> Decoded:
        out = batch(b'{"readings":' + payload + b"}", None)
        if out.positions is not None:
            out.positions = [_at(indexes, p) for p in out.positions]
        rejections = []
        for r in out.rejections:
            if r.index is not None:
                real = _at(indexes, r.index)
                prefix = f"readings[{r.index}]: "
                reason = r.reason
                if reason.startswith(prefix):
                    reason = f"readings[{real}]: {reason[len(prefix) :]}"
                r = dataclasses.replace(r, index=real, reason=reason)
            rejections.append(r)
        out.rejections = rejections
        return out

    return fmt


def _at(indexes: list[int], position: int) -> int:
    # A record whose elements outnumber its indexes was not written by the gateway:
    # positions past the end are named as they are, not guessed.
    return indexes[position] if position < len(indexes) else position
