"""Hostile MQTT payloads, as an attacker or a broken meter would send them.

Every payload here is invalid by construction, so each must end in the dead-letter
store with a reason; none may stop ingestion. Deterministic for a seed. Each message
goes to a topic of its own (`.../h-<n>/...`) so a test can find its record.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from meter_gateway.gateway.validate import MEASUREMENT_KEYS

__all__ = ["HostileMessage", "hostile_messages"]


@dataclass(frozen=True, slots=True)
class HostileMessage:
    topic: str
    payload: bytes
    kind: str  # what makes it hostile, for a failing test's message


class _Raw(str):
    """JSON text to embed as is: nesting too deep for the standard library to write."""


def _deep(levels: int, leaf: object = 1) -> _Raw:
    return _Raw("[" * levels + json.dumps(leaf) + "]" * levels)


def _deep_object(levels: int) -> _Raw:
    return _Raw('{"a": ' * levels + "1.0" + "}" * levels)


def _bad_values(rng: random.Random, now: int) -> list[tuple[str, object]]:
    """Values no number field may take, each with a name."""
    return [
        ("huge_int", 10**400),
        ("neg_huge_int", -(10**400)),
        ("string", "812.4"),
        ("empty_string", ""),
        ("bool", True),
        ("list", [1.0, 2.0]),
        ("object", {"v": 1.0}),
        ("deep_list", _deep(rng.randint(40, 900))),
        ("deep_object", _deep_object(rng.randint(40, 500))),
        ("huge_float", 1e300),
        ("long_text", "x" * rng.randint(1000, 100_000)),
        ("unicode", "\u202e\u0000\ufffd"),
        ("null_list", [None, None, None]),
    ]


def _ts_bad(rng: random.Random, now: int) -> list[tuple[str, object]]:
    return [
        ("epoch_ms", now * 1000 + rng.randint(0, 999)),
        ("epoch_us", now * 1_000_000),
        ("epoch_ns", now * 1_000_000_000),
        ("year_0001", "0001-01-01T00:00:00Z"),
        ("year_9999", "9999-12-31T23:59:59Z"),
        ("no_offset", "2026-11-27T08:15:00"),
        ("negative", -rng.randint(1, 10**12)),
        ("huge_int", 10**400),
        ("huge_float", 1e300),
        ("nan_text", "NaN"),
        ("garbage", "yesterday"),
        ("list", [now]),
        ("object", {"s": now}),
        ("bool", False),
        ("deep", _deep(rng.randint(40, 900))),
        ("far_future", now + 10 * 86_400),
        ("too_old", now - 30 * 86_400),
    ]


_NUMBER_FIELDS = MEASUREMENT_KEYS  # every measurement the validator knows


def _dumps(obj: object) -> bytes:
    # The standard library writes NaN and huge integers, as a hostile sender could
    # (orjson would refuse them); deep nesting is spliced in as text.
    raws: list[str] = []

    def mark(node: object) -> object:
        if isinstance(node, _Raw):
            raws.append(node)
            return f"@@RAW{len(raws) - 1}@@"
        if isinstance(node, dict):
            return {k: mark(v) for k, v in node.items()}
        if isinstance(node, list):
            return [mark(v) for v in node]
        return node

    text = json.dumps(mark(obj), allow_nan=True)
    for i, raw in enumerate(raws):
        text = text.replace(f'"@@RAW{i}@@"', raw)
    return text.encode()


def _reading_payloads(rng: random.Random, now: int, mid: str) -> list[tuple[str, bytes]]:
    """Invalid single readings for `meters/<mid>/reading`."""
    out: list[tuple[str, bytes]] = []
    for name, ts in _ts_bad(rng, now):
        out.append((f"ts_{name}", _dumps({"ts": ts, "power_w": 5.0})))
    for name, v in _bad_values(rng, now):
        field = rng.choice(_NUMBER_FIELDS)
        out.append((f"{field}_{name}", _dumps({"ts": now, field: v})))
    for name, m in [
        ("list", [mid]),
        ("object", {"id": mid}),
        ("number", 17),
        ("other_meter", "someone-else"),
        ("bad_chars", "m 1/x"),
        ("too_long", "m" * 65),
        ("deep", _deep(rng.randint(40, 900), mid)),
    ]:
        out.append((f"meter_id_{name}", _dumps({"meter_id": m, "ts": now, "power_w": 5.0})))
    out += [
        ("nan", f'{{"ts": {now}, "power_w": NaN}}'.encode()),
        ("infinity", f'{{"ts": {now}, "voltage_v": [Infinity, 230.0, 230.0]}}'.encode()),
        ("no_measurement", _dumps({"ts": now})),
        ("phases_4", _dumps({"ts": now, "voltage_v": [230.0] * 4})),
        ("phases_0", _dumps({"ts": now, "voltage_v": []})),
        ("out_of_bounds", _dumps({"ts": now, "voltage_v": 1234.0})),
        ("array", _dumps([{"ts": now, "power_w": 1.0}])),
        ("number", b"42"),
        ("string", b'"reading"'),
        ("null", b"null"),
        ("empty", b""),
        ("truncated", _dumps({"ts": now, "power_w": 5.0})[:-3]),
        ("not_utf8", b'{"ts": 1, "power_w": \xff\xfe}'),
        ("binary", rng.randbytes(rng.randint(1, 256))),
        ("deep_json", b"[" * 5000 + b"]" * 5000),
        ("deep_json_nan", b"[" * 1000 + b"NaN" + b"]" * 1000),
        ("deep_object_json", b'{"a":' * 3000 + b"1" + b"}" * 3000),
        # Over the 64 KiB `max_payload_bytes` the tests configure.
        ("too_large", b'{"ts": 1, "power_w": 1.0, "pad": "' + b"x" * 70_000 + b'"}'),
        ("dup_keys", f'{{"ts": {now}, "ts": "x", "power_w": "y"}}'.encode()),
        ("bom", b"\xef\xbb\xbf" + _dumps({"ts": now, "power_w": "x"})),
    ]
    return out


def _batch_payloads(rng: random.Random, now: int, cid: str) -> list[tuple[str, bytes]]:
    """Invalid concentrator batches: each has at least one bad element, or a bad shape."""
    good = {"meter_id": "m-ok", "ts": now, "power_w": 1.0}
    out: list[tuple[str, bytes]] = []
    items: list[tuple[str, object]] = [
        ("item_deep", _deep(1000, good)),
        ("item_deep_30", _deep(30, good)),
        ("item_deep_object", _deep_object(rng.randint(40, 900))),
        ("item_meter_list", {"meter_id": ["m-1"], "ts": now, "power_w": 1.0}),
        ("item_meter_object", {"meter_id": {"a": 1}, "ts": now, "power_w": 1.0}),
        ("item_no_meter", {"ts": now, "power_w": 1.0}),
        ("item_number", 5),
        ("item_null", None),
        ("item_string", "reading"),
    ]
    for name, ts in _ts_bad(rng, now):
        items.append((f"item_ts_{name}", {"meter_id": "m-1", "ts": ts, "power_w": 1.0}))
    for name, v in _bad_values(rng, now):
        field = rng.choice(_NUMBER_FIELDS)
        items.append((f"item_{field}_{name}", {"meter_id": "m-1", "ts": now, field: v}))
    for name, item in items:
        pos = rng.randint(0, 3)
        readings = [good] * pos + [item] + [good] * rng.randint(0, 3)
        out.append((name, _dumps({"concentrator_id": cid, "readings": readings})))
    out += [
        ("readings_missing", _dumps({"concentrator_id": cid})),
        ("readings_object", _dumps({"concentrator_id": cid, "readings": {"a": good}})),
        ("readings_string", _dumps({"concentrator_id": cid, "readings": "x"})),
        ("other_concentrator", _dumps({"concentrator_id": ["x"], "readings": [good]})),
        ("array", _dumps([good])),
        ("deep_json", b'{"readings": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
        ("binary", rng.randbytes(rng.randint(1, 256))),
    ]
    return out


def _event_payloads(rng: random.Random, now: int, mid: str) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for name, kind in [
        ("unknown", "explosion"),
        ("list", ["last_gasp"]),
        ("object", {"t": "last_gasp"}),
        ("number", 1),
        ("null", None),
        ("deep", _deep(rng.randint(40, 900), "tamper")),
    ]:
        out.append((f"type_{name}", _dumps({"ts": now, "type": kind})))
    out += [
        ("meter_list", _dumps({"meter_id": [mid], "ts": now, "type": "tamper"})),
        ("other_meter", _dumps({"meter_id": "x-other", "ts": now, "type": "tamper"})),
        ("array", _dumps(["last_gasp"])),
        ("binary", rng.randbytes(rng.randint(1, 64))),
        ("deep_json", b"[" * 5000 + b"]" * 5000),
    ]
    return out


def _lwt_payloads(rng: random.Random, now: int, mid: str) -> list[tuple[str, bytes]]:
    return [
        ("garbage", b"maybe"),
        ("json", _dumps({"status": "offline"})),
        ("binary", rng.randbytes(rng.randint(1, 64))),
        ("long", b"offline" * 10_000),
        ("not_utf8", b"\xff\xfeoff"),
        ("empty", b""),
    ]


_TOPICS: list[tuple[str, Callable[[random.Random, int, str], list[tuple[str, bytes]]]]] = [
    ("meters/{id}/reading", _reading_payloads),
    ("concentrators/{id}/readings", _batch_payloads),
    ("meters/{id}/event", _event_payloads),
    ("meters/{id}/status", _lwt_payloads),
]


def hostile_messages(
    count: int, *, seed: int = 7, now: int | None = None
) -> Iterator[HostileMessage]:
    """`count` hostile messages spread over the four default topics."""
    rng = random.Random(seed)
    now = int(time.time()) if now is None else now
    n = 0
    while n < count:
        template, make = _TOPICS[n % len(_TOPICS)]
        mid = f"h-{n:05d}"
        kind, payload = rng.choice(make(rng, now, mid))
        yield HostileMessage(template.format(id=mid), payload, f"{template.split('/')[0]}:{kind}")
        n += 1
