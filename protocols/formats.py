"""Payload formats: bytes from a topic -> candidate readings, meter signals, rejections.

A format only parses and says which meter each reading belongs to; the gateway's
validator judges the readings. New formats (Tasmota, Shelly, Sparkplug B, ...)
register here with `@register_format("name")` and plug in without touching the
pipeline: a subscription in the config names the format.

The device formats (`tasmota`, `shelly`, `sparkplug-b`) live in `protocols/devices/`
and register on import of this module. Formats from other installed distributions
are found by name through the entry-point group `meter_gateway.formats`, loaded the
first time a subscription names them (`get_format`):

    [project.entry-points."meter_gateway.formats"]
    my-format = "my_package.formats:decode"   # a PayloadFormat, registered under its name
    other = "my_package.other"                # or a module that registers on import

A format that needs the whole MQTT topic rather than what its `+` matched (Sparkplug
B: the message type and device are topic levels) is registered with
`full_topic=True` (or has an attribute `full_topic = True`): the MQTT source then
passes the topic in the `topic_id` argument. It is decided once per topic, when the
route is cached: nothing per message.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import import_module, metadata
from types import ModuleType
from typing import Any, cast, final

import orjson

__all__ = [
    "ENTRY_POINT_GROUP",
    "FORMATS",
    "ID_RULE",
    "MAX_NESTING",
    "METER_ID",
    "BadId",
    "Decoded",
    "PayloadFormat",
    "Rejection",
    "Signal",
    "check_meter_id",
    "decode_json",
    "get_format",
    "id_problem",
    "register_format",
    "short_repr",
    "shown_id",
    "too_deep",
    "wants_full_topic",
]

METER_EVENT_TYPES = frozenset({"last_gasp", "power_restored", "tamper", "cover_open"})

#: A reading is flat (lists of three at most); anything nested deeper than this is
#: not a reading, and is not worth walking (or serialising) any further.
MAX_NESTING = 32

#: The one rule for an id, wherever it comes from: a payload's `meter_id`, a topic level,
#: a device's, Sparkplug edge node's or device's name as it becomes a meter id, a
#: concentrator's id. Ids become database tags, MQTT topic levels, webhook fields and
#: page text: anything else (markup, spaces, commas, escapes, invisible or
#: right-to-left characters, unbounded length) would break or forge one of them.
ID_RULE = "1-64 characters of A-Z a-z 0-9 . _ : -"
METER_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_id_ok = METER_ID.fullmatch
_SHOWN_MAX = 60  # characters of an offending id's repr in a reason


class BadId(ValueError):
    """An id outside the rule (`ID_RULE`); the message names where it came from."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def shown_id(text: str) -> str:
    """An id as a reason may show it: escaped (repr) and at most about 80 characters."""
    head = text[:_SHOWN_MAX]
    shown = repr(head)
    while len(shown) > _SHOWN_MAX + 2:  # escapes (\u202e) make a repr longer than its text
        head = head[: len(head) * 2 // 3]
        shown = repr(head)
    if len(head) < len(text):
        shown += f"... ({len(text)} characters)"
    return shown


def id_problem(text: object, where: str = "meter_id") -> str | None:
    """None when `text` follows the id rule; else the reason, naming `where` it came from."""
    if type(text) is str:
        if _id_ok(text):
            return None
        return f"{where}: {shown_id(text)} is not {ID_RULE} (the id rule)"
    return f"{where}: expected text ({ID_RULE}), got {short_repr(text)}"


def check_meter_id(text: object, where: str = "meter_id", field: str = "meter_id") -> str:
    """`text` when it follows the id rule; else BadId with the reason (`field`: its label)."""
    if type(text) is str and _id_ok(text):
        return text
    raise BadId(id_problem(text, where) or "", field)


def short_repr(v: object, limit: int = 40) -> str:
    """A bounded repr for reasons: never huge, never recursing into nested values."""
    t = type(v)
    if t is int:
        n = cast(int, v)  # `t is int` (mypy narrows only `type(v) is int` itself)
        if abs(n) >= 10**limit:
            return f"an integer of {len(str(abs(n)))} digits"
        return str(v)
    if v is None:
        return "null"  # as the sender wrote it: these are JSON values
    if t is bool:
        return "true" if v else "false"
    if t is float:
        return repr(v)
    if t is str:
        s = cast(str, v)  # `t is str`
        text = repr(s[:limit])
        return text if len(s) <= limit else text[:-1] + "...'"
    if t is list:
        return "a list"
    if t is dict:
        return "an object"
    return type(v).__name__


def too_deep(obj: object, limit: int = MAX_NESTING) -> bool:
    """Does `obj` nest lists/objects more than `limit` levels? Iterative: no recursion."""
    stack: list[tuple[object, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        children: Iterable[object]
        if type(node) is dict:
            children = node.values()
        elif type(node) is list:
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if type(c) in (dict, list))
    return False


@final  # no subclass: `type(x) is Rejection` then narrows both ways
@dataclass(slots=True, frozen=True)
class Rejection:
    """A payload, or one element of it, that cannot be used, and why."""

    reason: str
    field: str = "payload"  # the key at fault, a metric label (never parsed from `reason`)
    index: int | None = None  # position in a batch; None for the whole message
    item: Any = None  # the offending element of a batch, for the dead-letter record


@dataclass(slots=True, frozen=True)
class Signal:
    """A meter's report about itself (an event or its online/offline status)."""

    kind: str  # "event" | "status"
    meter_id: str
    value: str  # event type, or "online" / "offline"
    ts: Any = None  # as sent; the detector normalises it
    body: dict[str, Any] | None = None


@dataclass(slots=True)
class Decoded:
    readings: list[dict[str, Any]] = field(default_factory=list)
    signals: list[Signal] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    # For batches: each reading's position in the payload, for dead-letter records.
    positions: list[int] | None = None


# payload, the id the topic's `+` matched (or None) -> what the payload holds
PayloadFormat = Callable[[bytes, "str | None"], Decoded]

FORMATS: dict[str, PayloadFormat] = {}


#: Where other distributions declare their payload formats.
ENTRY_POINT_GROUP = "meter_gateway.formats"


def register_format(
    name: str, *, full_topic: bool = False
) -> Callable[[PayloadFormat], PayloadFormat]:
    """Register a format under `name`; `full_topic`: it is given the whole topic."""

    def deco(fn: PayloadFormat) -> PayloadFormat:
        if name in FORMATS:
            raise ValueError(f"payload format {name!r} is already registered")
        if full_topic:
            fn.full_topic = True  # type: ignore[attr-defined]
        FORMATS[name] = fn
        return fn

    return deco


def wants_full_topic(fmt: PayloadFormat) -> bool:
    """Is `fmt` to be given the whole topic instead of what its `+` matched?"""
    return getattr(fmt, "full_topic", False) is True


def _plugins() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def get_format(name: str) -> PayloadFormat:
    """The format called `name`: built in, already loaded, or from an installed plugin.

    Plugins (entry-point group `meter_gateway.formats`) are loaded here, the first
    time they are named. Raises ValueError naming the format and those available.
    """
    fmt = FORMATS.get(name)
    if fmt is not None:
        return fmt
    plugins = _plugins()
    ep = plugins.get(name)
    if ep is None:
        installed = ", ".join(sorted(plugins)) or "none"
        raise ValueError(
            f"unknown format {name!r}; built in or loaded: {', '.join(sorted(FORMATS))}; "
            f"installed plugins (entry points {ENTRY_POINT_GROUP!r}): {installed}"
        )
    where = f"entry point {ep.name} = {ep.value!r}"
    if ep.dist is not None:
        where += f" of {ep.dist.name} {ep.dist.version}"
    try:
        obj = ep.load()
    except Exception as exc:
        raise ValueError(
            f"format {name!r}: cannot load {where}: {type(exc).__name__}: {exc}"
        ) from exc
    fmt = FORMATS.get(name)  # a module (or the function's) that registered on import
    if fmt is None and callable(obj) and not isinstance(obj, ModuleType):
        fmt = FORMATS[name] = obj
    if fmt is None:
        raise ValueError(
            f"format {name!r}: {where} neither is a function (payload, topic_id) -> Decoded "
            f"nor registered a format of that name on import"
        )
    return fmt


ORJSON_MAX_DEPTH = 1024  # orjson refuses deeper documents


def _bad_constant(name: str) -> float:
    # json.loads calls this for NaN/Infinity; a NaN that survives to validation
    # gets a reason naming its field instead of "invalid JSON".
    return math.nan if name == "NaN" else (math.inf if name == "Infinity" else -math.inf)


def decode_json(payload: bytes) -> Any:
    """Parse JSON fast; fall back to the tolerant parser only to explain errors.

    orjson refuses NaN and Infinity outright. The standard library accepts them,
    which lets the validator say `power_w: NaN is not a number` rather than
    pointing at a column number.
    """
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        deep = f"invalid JSON: nested deeper than {ORJSON_MAX_DEPTH} levels"
        if "depth limit" in str(exc):
            raise ValueError(deep) from None
        try:
            return json.loads(payload, parse_constant=_bad_constant)
        except RecursionError:
            raise ValueError(deep) from None
        except (ValueError, UnicodeDecodeError):
            raise ValueError(f"invalid JSON: {exc}") from None


def _own_meter(obj: dict[str, Any], topic_id: str | None) -> str | None:
    """Check the payload's meter_id against the topic's; return a reason or None."""
    named = obj.get("meter_id")
    if named is None:
        if topic_id is not None:
            obj["meter_id"] = topic_id
        return None
    if type(named) is not str:
        return f"meter_id: expected text, got {short_repr(named)}"
    if topic_id is not None and named != topic_id:
        if not _id_ok(topic_id):
            return id_problem(topic_id, "topic's meter id")
        return (
            f"meter_id: payload names {short_repr(named)} but the topic is for {topic_id!r} "
            "(a meter cannot write as another)"
        )
    return None


def _json_object(payload: bytes, out: Decoded) -> dict[str, Any] | None:
    """The payload as a JSON object, or None with the reason added to `out`."""
    try:
        obj = decode_json(payload)
    except ValueError as exc:
        out.rejections.append(Rejection(str(exc), "json"))
        return None
    if not isinstance(obj, dict):
        out.rejections.append(Rejection(f"expected a JSON object, got {short_repr(obj)}"))
        return None
    return obj


@register_format("json")
def json_reading(payload: bytes, topic_id: str | None) -> Decoded:
    out = Decoded()
    obj = _json_object(payload, out)
    if obj is None:
        return out
    reason = _own_meter(obj, topic_id)
    if reason:
        out.rejections.append(Rejection(reason, "meter_id"))
    else:
        out.readings.append(obj)
    return out


@register_format("json-batch")
def json_batch(payload: bytes, topic_id: str | None) -> Decoded:
    out = Decoded()
    try:
        obj = decode_json(payload)
    except ValueError as exc:
        out.rejections.append(Rejection(str(exc), "json"))
        return out
    if not isinstance(obj, dict) or not isinstance(obj.get("readings"), list):
        out.rejections.append(
            Rejection('expected {"concentrator_id": ..., "readings": [reading, ...]}')
        )
        return out
    named = obj.get("concentrator_id")
    if named is not None and type(named) is not str:
        out.rejections.append(
            Rejection(f"concentrator_id: expected text, got {short_repr(named)}", "concentrator_id")
        )
        return out
    concentrator = topic_id if topic_id is not None else named
    if concentrator is not None and not _id_ok(concentrator):
        where = "concentrator_id" if topic_id is None else "topic's concentrator id"
        out.rejections.append(Rejection(id_problem(concentrator, where) or "", "concentrator_id"))
        return out
    if named is not None and topic_id is not None and named != topic_id:
        out.rejections.append(
            Rejection(
                f"concentrator_id: payload names {short_repr(named)} "
                f"but the topic is for {topic_id!r}",
                "concentrator_id",
            )
        )
        return out
    readings = out.readings
    positions: list[int] = []
    out.positions = positions
    for i, item in enumerate(obj["readings"]):
        # Each reading is judged on its own: one bad one does not sink its neighbours.
        if type(item) is not dict:
            if too_deep(item):
                what, field = f"nested deeper than {MAX_NESTING} levels", "nesting"
            else:
                what, field = f"expected a JSON object, got {short_repr(item)}", "reading"
            out.rejections.append(Rejection(f"readings[{i}]: {what}", field, index=i, item=item))
        elif "meter_id" not in item:
            out.rejections.append(
                Rejection(f"readings[{i}]: meter_id: missing", "meter_id", index=i, item=item)
            )
        else:
            readings.append(item)
            positions.append(i)
    return out


@register_format("meter-event")
def meter_event(payload: bytes, topic_id: str | None) -> Decoded:
    out = Decoded()
    obj = _json_object(payload, out)
    if obj is None:
        return out
    reason = _own_meter(obj, topic_id)
    kind = obj.get("type")
    if reason:
        out.rejections.append(Rejection(reason, "meter_id"))
    elif type(kind) is not str or kind not in METER_EVENT_TYPES:
        out.rejections.append(
            Rejection(
                f"type: {short_repr(kind)} is not one of {', '.join(sorted(METER_EVENT_TYPES))}",
                "type",
            )
        )
    elif obj.get("meter_id") is None:
        out.rejections.append(
            Rejection("meter_id: missing (not in the payload nor the topic)", "meter_id")
        )
    elif not _id_ok(obj["meter_id"]):
        # A last gasp raises an outage at once: an id outside the rule must not reach
        # the detectors, the event stream or the page.
        where = "meter_id" if topic_id is None else "topic's meter id"
        out.rejections.append(Rejection(id_problem(obj["meter_id"], where) or "", "meter_id"))
    else:
        out.signals.append(Signal("event", obj["meter_id"], kind, obj.get("ts"), obj))
    return out


@register_format("lwt")
def last_will(payload: bytes, topic_id: str | None) -> Decoded:
    out = Decoded()
    text = payload.decode("utf-8", "replace").strip().lower()
    if topic_id is None:
        out.rejections.append(Rejection("lwt: the topic names no meter (use a `+` level)", "lwt"))
    elif not _id_ok(topic_id):
        out.rejections.append(
            Rejection(id_problem(topic_id, "lwt: topic's meter id") or "", "meter_id")
        )
    elif text not in ("online", "offline"):
        got = short_repr(text)
        out.rejections.append(Rejection(f"lwt: expected 'online' or 'offline', got {got}", "lwt"))
    else:
        out.signals.append(Signal("status", topic_id, text))
    return out


# The device formats register themselves on import: last, once the above exists.
import_module("meter_gateway.protocols.devices")
