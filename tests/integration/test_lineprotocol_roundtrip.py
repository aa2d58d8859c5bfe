"""The line-protocol escaper against real servers: what is written comes back exactly.

Hypothesis writes points with arbitrary tag values and string fields (every character
class, weighted towards the ones line protocol treats specially) to a real InfluxDB
1.x, many points per request, and reads them back over `/query` (InfluxQL, JSON):
every value comes back as written (or as the documented replacement says), and the
measurement has exactly the tag keys and field keys written, so no text ever ended
one tag and started another. VictoriaMetrics gets the fixed hard cases.
"""

from __future__ import annotations

import itertools
import json
import urllib.parse
import urllib.request
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meter_gateway.config.topology import MeterPlace
from meter_gateway.gateway.reading import Reading
from meter_gateway.simulators.services import InfluxDB1, VictoriaMetrics
from meter_gateway.storage.lineprotocol import ReadingEncoder, encode_point

pytestmark = pytest.mark.integration

TAG_KEYS = ("meter_id", "severity", "type")
T0 = 1_700_000_000
_case = itertools.count()

# Every character class: the separators and escapes line protocol knows, quotes, line
# ends, control characters, non-ASCII (accents, CJK, emoji, RTL marks) and the rest.
SPECIAL = [*",= \\\"'\n\r\t#\x00\x01\x7f", "\u202e", "\u200b", "é", "漢", "🙂", "\ufffd"]
text = st.text(
    alphabet=st.sampled_from(SPECIAL) | st.characters(exclude_categories=("Cs",)),
    max_size=12,
)


def stored_tag(value: str) -> str:
    """What the module docstring promises a tag value comes back as (written independently)."""
    out = []
    for i, c in enumerate(value):
        nxt = value[i + 1 : i + 2]
        if c in "\n\r" or (c == "\\" and (nxt == "" or nxt in "\\,= ")):
            out.append("\ufffd")
        else:
            out.append(c)
    return "".join(out)


def stored_string(value: str) -> str:
    return value.replace("\n", "\\n").replace("\r", "\\r")


def _write(url: str, path: str, lines: list[str]) -> None:
    req = urllib.request.Request(f"{url}{path}", data="\n".join(lines).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 204
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"HTTP {exc.code}: {exc.read()[:500]!r}\n{lines!r}") from None


def _query(db: InfluxDB1, q: str) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"db": "meters", "q": q, "epoch": "s"})
    with urllib.request.urlopen(f"{db.url}/query?{params}", timeout=30) as resp:
        body = json.loads(resp.read())
    rows: list[dict[str, Any]] = []
    for result in body["results"]:
        assert "error" not in result, result
        for series in result.get("series", []):
            rows.extend(dict(zip(series["columns"], v, strict=True)) for v in series["values"])
    return rows


points = st.lists(
    st.fixed_dictionaries(
        {"tags": st.fixed_dictionaries({k: text for k in TAG_KEYS}), "message": text}
    ),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(points=points)
def test_arbitrary_tags_and_strings_round_trip_through_influxdb1(
    influx1: InfluxDB1, points: list[dict[str, Any]]
) -> None:
    case = str(next(_case))
    lines = [
        encode_point(
            "meter_event",
            {**p["tags"], "case": case},
            {"message": p["message"], "n": i},
            T0 + i,
        )
        for i, p in enumerate(points)
    ]
    _write(influx1.url, "/write?db=meters&precision=s", lines)
    rows = _query(influx1, f'SELECT * FROM "meter_event" WHERE "case" = \'{case}\'')
    assert len(rows) == len(points)
    for row in rows:
        i = row["n"]
        p = points[i]
        assert row["time"] == T0 + i
        assert row["message"] == stored_string(p["message"]), (p, lines[i])
        for key in TAG_KEYS:
            written = p["tags"][key]
            # An empty tag value is left out (line protocol has no empty tag).
            assert row.get(key) == (stored_tag(written) if written else None), (key, p, lines[i])
    # Nothing leaked: the measurement has exactly the keys written, whatever the values held.
    keys = {r["tagKey"] for r in _query(influx1, 'SHOW TAG KEYS FROM "meter_event"')}
    assert keys <= {*TAG_KEYS, "case"}
    fields = {r["fieldKey"] for r in _query(influx1, 'SHOW FIELD KEYS FROM "meter_event"')}
    assert fields == {"message", "n"}


# Values that broke or leaked before: a trailing backslash swallowing the separator after
# it, a value with the next tag's text in it, every escape next to a backslash.
HARD = [
    "bs\\",
    "f,meter_id=m-v2",
    "bs,severity=critical",
    "a\\,b",
    "a\\ b",
    "a\\=b",
    "a\\\\b",
    "a\\b",
    "\\",
    "x y=z",
    "tab\there",
    "line\nbreak",
    'q"uote',
]


def test_hard_cases_through_influxdb1_and_the_reading_encoder(influx1: InfluxDB1) -> None:
    topology = {
        f"m-{i}": MeterPlace(f"m-{i}", transformer_id=v, feeder_id=v) for i, v in enumerate(HARD)
    }
    enc = ReadingEncoder("s", topology)
    lines = [
        enc.encode(Reading(f"m-{i}", (T0 + i) * 10**9, "mqtt", {"power_w": float(i)}))
        for i in range(len(HARD))
    ]
    lines += [
        encode_point(
            "meter_event",
            {"meter_id": v, "type": "power_outage", "severity": "critical"},
            {"state": "raised", "message": v},
            T0 + i,
        )
        for i, v in enumerate(HARD)
    ]
    _write(influx1.url, "/write?db=meters&precision=s", lines)
    readings = _query(influx1, 'SELECT * FROM "meter_reading"')
    got = {(r["meter_id"], r["transformer_id"], r["feeder_id"], r["source"]) for r in readings}
    assert got == {(f"m-{i}", stored_tag(v), stored_tag(v), "mqtt") for i, v in enumerate(HARD)}
    events = _query(influx1, 'SELECT * FROM "meter_event"')
    assert {(r["meter_id"], r["severity"], r["type"], r["message"]) for r in events} == {
        (stored_tag(v), "critical", "power_outage", stored_string(v)) for v in HARD
    }
    tag_keys = {r["tagKey"] for r in _query(influx1, 'SHOW TAG KEYS FROM "meter_reading"')}
    assert tag_keys == {"meter_id", "source", "transformer_id", "feeder_id"}


def test_hard_cases_through_victoriametrics(victoria: VictoriaMetrics) -> None:
    lines = [
        encode_point(
            "meter_event",
            {"meter_id": v, "type": "power_outage", "severity": "critical"},
            {"value": float(i)},
            T0 + i,
        )
        for i, v in enumerate(HARD)
    ]
    topology = {f"m-{i}": MeterPlace(f"m-{i}", feeder_id=v) for i, v in enumerate(HARD)}
    enc = ReadingEncoder("s", topology)
    lines += [
        enc.encode(Reading(f"m-{i}", (T0 + i) * 10**9, "mqtt", {"power_w": float(i)}))
        for i in range(len(HARD))
    ]
    _write(victoria.url, "/write?db=meters&precision=s", lines)
    readings = victoria.export('{__name__="meter_reading_power_w"}')
    assert {(s["metric"]["meter_id"], s["metric"].get("feeder_id")) for s in readings} == {
        (f"m-{i}", stored_tag(v)) for i, v in enumerate(HARD)
    }
    assert all(
        set(s["metric"]) == {"__name__", "db", "meter_id", "source", "feeder_id"} for s in readings
    )
    series = victoria.export('{__name__="meter_event_value"}')
    got = {
        (s["metric"].get("meter_id"), s["metric"].get("severity"), s["metric"].get("type"))
        for s in series
    }
    assert got == {(stored_tag(v), "critical", "power_outage") for v in HARD}
    labels = {"__name__", "db", "meter_id", "severity", "type"}
    assert all(set(s["metric"]) == labels for s in series)
