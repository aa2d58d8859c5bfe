"""InfluxDB line protocol, written by hand for the hot path.

influxdb-client's `Point` builds and serialises ~72k points/s on this machine
(bench/bench_lineprotocol.py); the gateway must carry 100k readings/s, so readings are encoded
straight to text with their tag prefix cached per meter (bench/bench_lineprotocol.py).

Escaping (the InfluxDB line-protocol rules):

- measurement: `,` and space get a backslash;
- tag keys, tag values and field keys: `,`, `=` and space get a backslash;
- string field values: `"` and `\\` get a backslash.

What line protocol cannot carry is replaced, never refused, so that a line is always
well formed and no text can end one tag and start another:

- in a measurement, tag key, tag value or field key, a newline or carriage return
  (they end the line) and a backslash that would read as an escape (one at the end,
  which swallows the separator after it, or one before `\\`, `,`, `=` or a space,
  which InfluxDB 1.x keeps and VictoriaMetrics/InfluxDB 2.x take as an escape) are
  each replaced by U+FFFD (the replacement character). Every other character, other
  backslashes included, is stored exactly. `unstorable()` names the first such
  character, for the checks that refuse them where they enter (the topology file);
- in a string field value, a newline and a carriage return become the two characters
  `\\n` and `\\r` (the spool keeps one line per line).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Protocol

import orjson

__all__ = [
    "PRECISION_DIVISOR",
    "REPLACEMENT",
    "ReadingEncoder",
    "ReadingLike",
    "encode_point",
    "escape_key",
    "escape_measurement",
    "escape_string_field",
    "escape_tag",
    "unstorable",
]

PRECISION_DIVISOR = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}

REPLACEMENT = "\ufffd"

_KEY_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ "})
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"})
# Anything in these means the slow path; most ids and names have none of them.
_KEY_SPECIAL = re.compile(r"[,= \\\n\r]")
_STRING_SPECIAL = re.compile(r'[\\"\n\r]')
# What a name cannot carry: a line end, or a backslash that a server would read as an
# escape (last, or before a backslash, a separator or a space).
_UNSTORABLE = re.compile(r"[\n\r]|\\(?=[\\,= ]|$)")
_UNSTORABLE_WHAT = {"\n": "a newline", "\r": "a carriage return"}


class ReadingLike(Protocol):
    """What the encoder reads of a reading.

    Storage sits below the gateway and must not import its `Reading`; any object
    with these attributes (the gateway's `Reading` is one) encodes.
    """

    @property
    def meter_id(self) -> str: ...
    @property
    def ts_ns(self) -> int: ...  # UTC epoch nanoseconds
    @property
    def source(self) -> str: ...
    @property
    def values(self) -> Mapping[str, float]: ...  # storage field names -> numbers
    @property
    def quality(self) -> str: ...


def unstorable(value: str) -> str | None:
    """What in `value` a tag, field key or measurement cannot store as it is; None if nothing.

    E.g. `"a newline"`, `"a backslash at the end"`, `"a backslash before ','"`. The
    encoder replaces each such character with U+FFFD; a check at the edge refuses it.
    """
    m = _UNSTORABLE.search(value)
    if m is None:
        return None
    if m.group() != "\\":
        return _UNSTORABLE_WHAT[m.group()]
    after = value[m.end() : m.end() + 1]
    if not after:
        return "a backslash at the end"
    return f"a backslash before {'a space' if after == ' ' else repr(after)}"


def _sanitise(value: str) -> str:
    return _UNSTORABLE.sub(REPLACEMENT, value)


def escape_tag(value: str) -> str:
    """Escape a tag key, tag value or field key (see the module docstring)."""
    if _KEY_SPECIAL.search(value) is None:  # the usual case: nothing to do
        return value
    return _sanitise(value).translate(_KEY_ESCAPES)


escape_key = escape_tag


def escape_measurement(value: str) -> str:
    """Escape a measurement name (commas and spaces; see the module docstring)."""
    if _KEY_SPECIAL.search(value) is None:
        return value
    return _sanitise(value).translate(_MEASUREMENT_ESCAPES)


def escape_string_field(value: str) -> str:
    """A string field value in its double quotes, `"` and `\\` escaped."""
    if _STRING_SPECIAL.search(value) is None:
        return '"' + value + '"'
    return '"' + value.translate(_STRING_ESCAPES) + '"'


def _field_value(value: object) -> str:
    # bool before int: True is an int in Python but a boolean in line protocol.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return escape_string_field(value)
    raise TypeError(f"unsupported field type {type(value).__name__}")


def encode_point(
    measurement: str,
    tags: Mapping[str, str | None],
    fields: Mapping[str, object],
    ts: int | None,
) -> str:
    """One line: `measurement,tag=v field=1.0,n=2i,s="x" ts`. Empty tags are left out."""
    parts = [escape_measurement(measurement)]
    for key in sorted(tags):
        value = tags[key]
        if value:
            parts.append(f"{escape_tag(key)}={escape_tag(value)}")
    head = ",".join(parts)
    body = ",".join(
        f"{escape_key(k)}={_field_value(v)}" for k, v in fields.items() if v is not None
    )
    if not body:
        raise ValueError("a point needs at least one field")
    return f"{head} {body}" if ts is None else f"{head} {body} {ts}"


class Place(Protocol):
    """Where a meter sits in the network, as far as its tags need (a topology entry)."""

    def get(self, key: str, default: str | None = None, /) -> str | None: ...


class ReadingEncoder:
    """Reading -> line of `meter_reading`, with the tag prefix cached per meter."""

    def __init__(
        self,
        precision: str = "s",
        topology: Mapping[str, Place] | None = None,
    ) -> None:
        self._divisor = PRECISION_DIVISOR[precision]
        self._topology = topology or {}
        self._prefix: dict[tuple[str, str], str] = {}
        self._templates: dict[tuple[str, ...], str] = {}

    def prefix(self, meter_id: str, source: str) -> str:
        key = (meter_id, source)
        p = self._prefix.get(key)
        if p is None:
            tags = {"meter_id": meter_id, "source": source}
            place = self._topology.get(meter_id)
            if place:
                tags["transformer_id"] = place.get("transformer_id") or ""
                tags["feeder_id"] = place.get("feeder_id") or ""
            p = encode_point("meter_reading", tags, {"x": 0.0}, None).rsplit(" ", 1)[0] + " "
            self._prefix[key] = p
        return p

    def encode(self, r: ReadingLike) -> str:
        prefix = self._prefix.get((r.meter_id, r.source)) or self.prefix(r.meter_id, r.source)
        values = r.values
        keys = tuple(values)
        template = self._templates.get(keys)
        if template is None:
            # Values hold only storage field names (the validator builds them): no escaping.
            template = ",".join(f"{k}=%s" for k in keys) + ',quality="%s" %d'
            self._templates[keys] = template
        # Float formatting is most of the cost of a line; orjson formats all of a
        # reading's floats in one call, about twice as fast as repr() each
        # (bench/bench_lineprotocol.py), in a form InfluxDB parses back exactly.
        nums = orjson.dumps(tuple(values.values()))[1:-1].decode().split(",")
        return prefix + template % (*nums, r.quality, r.ts_ns // self._divisor)
