"""`meter-gateway report customers` against a real InfluxDB 1.x, the CLI in a subprocess.

The example of tests/unit/test_customer_tags.py (see its docstring for the numbers)
stored as the gateway stores it: meter_daily points (one per meter and local day,
gateway.timezone UTC), the outage events of tests/unit/test_reliability.py as the
event writer writes them (`event_line`, precision s), and the risk events, plus points
that must not count: a tamper clear, a tamper raise after --to, and a meter_daily point
of the day after the window.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from meter_gateway.gateway.events.event import event_line
from meter_gateway.simulators.services import InfluxDB1
from meter_gateway.storage.lineprotocol import encode_point
from tests.unit.test_customer_tags import example_daily
from tests.unit.test_reliability import EXAMPLE_TOPOLOGY_CSV, NS, T0, example_events

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).parent / "meter-gateway")
DAY = 86_400


def _write(db: InfluxDB1, lines: list[str]) -> None:
    req = urllib.request.Request(
        f"{db.url}/write?db=meters&precision=s", data="\n".join(lines).encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 204


def _daily_lines() -> list[str]:
    out = []
    for d in example_daily():
        fields: dict[str, object] = {"date": d.day}
        for name in (
            "energy_import_kwh",
            "energy_export_kwh",
            "peak_demand_kw",
            "base_load_kw",
            "night_share",
        ):
            value = getattr(d, name)
            if value is not None:
                fields[name] = float(value)
        fields["intervals"] = 96
        tags = {"meter_id": d.meter_id, "customer_id": d.customer_id or ""}
        out.append(encode_point("meter_daily", tags, fields, int(d.time_s)))
    # The day after the window: not read.
    tags = {"meter_id": "m2", "customer_id": "c2"}
    out.append(
        encode_point("meter_daily", tags, {"date": "2026-01-03", "base_load_kw": 9.0}, T0 + 2 * DAY)
    )
    return out


def _event(meter: str, kind: str, state: str, eid: str, t: int) -> str:
    return encode_point(
        "meter_event",
        {"meter_id": meter, "type": kind, "severity": "warning"},
        {"state": state, "event_id": eid, "message": f"{kind} {state}"},
        t,
    )


def _risk_lines() -> list[str]:
    tamper = _event("m4", "tamper", "raised", "e-tamper", T0 + 1000)
    return [
        tamper,
        _event("m4", "register_decrease", "raised", "e-decrease", T0 + 500),
        _event("m4", "tamper", "cleared", "e-tamper", T0 + 4000),  # a clear: not counted
        _event("m6", "tamper", "raised", "e-late", T0 + 2 * DAY + 60),  # after --to
        _event("m6", "zero_consumption", "raised", "e-zero", T0 + 60),  # not a risk type
    ]


@pytest.fixture
def config(tmp_path: Path, influx1: InfluxDB1) -> Path:
    _write(influx1, _daily_lines())
    outage_lines = [event_line(ev, NS) for ev in example_events()]
    _write(influx1, outage_lines)
    _write(influx1, _risk_lines())
    _write(influx1, _risk_lines()[:1])  # the tamper raise redelivered: the same point
    topo = tmp_path / "topology.csv"
    # test_customer_tags makes m5 a prosumer.
    rows = EXAMPLE_TOPOLOGY_CSV.strip().splitlines()
    rows = [rows[0] + ",prosumer"] + [
        r + (",true" if r.startswith("m5,") else ",") for r in rows[1:]
    ]
    topo.write_text("\n".join(rows) + "\n")
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"gateway:\n  data_dir: {tmp_path / 'var'}\n"
        f"storage:\n  api: v1\n  url: {influx1.url}\n  database: meters\n  precision: s\n"
        f"topology:\n  file: {topo}\n"
        "events:\n  momentary_max_s: 300\n"
    )
    return path


def _run(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [CLI, "report", "customers", "-c", str(config), "--from", "2026-01-01"]
    done = subprocess.run(
        [*argv, "--to", "2026-01-03", *extra], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done


def test_tags_from_the_database(config: Path) -> None:
    done = _run(config, "--format", "json")
    assert "m12" in done.stderr  # in the data, not in the topology: named
    doc = json.loads(done.stdout)
    tagged = {c["customer_id"]: sorted(c["tags"]) for c in doc["customers"] if c["tags"]}
    assert tagged == {
        "c1": ["outage_sensitive"],
        "c10": ["high_standby", "night_heavy", "peak_contributor"],
        "c3": ["prosumer"],
        "c4": ["tamper_risk"],
        "c5": ["prosumer"],
    }
    customers = {c["customer_id"]: c for c in doc["customers"]}
    c10 = customers["c10"]
    assert c10["meters"] == ["m10", "m11"]
    assert c10["tags"]["high_standby"] == (
        "mean daily base load 0.3 kW over 2 day(s) >= 0.3 kW (customers.high_standby_kw)"
    )
    assert (c10["figures"]["mean_peak_kw"], c10["figures"]["night_share"]) == (5.0, 0.5)
    assert customers["c1"]["figures"]["sustained_interruptions"] == 4
    assert customers["c1"]["tags"]["outage_sensitive"].startswith("4 sustained interruptions")
    assert customers["c4"]["tags"]["tamper_risk"] == (
        "raised events: tamper 1, register_decrease 1; first 2026-01-01T00:08:20Z (meter m4)"
    )
    assert customers["c2"]["figures"]["mean_base_load_kw"] == 0.299  # not the day after
    assert customers["c6"]["tags"] == {}
    assert customers["c6"]["figures"]["risk_events"] == {}
    assert customers["c99"]["meters"] == ["m12"]
    assert [c["customer_id"] for c in doc["by_base_load"]] == ["c10", "c2", "c99"]
    assert doc["outage_sensitive"] == ["c1"]


def test_csv_table_and_tag_filter(config: Path) -> None:
    rows = list(csv.DictReader(io.StringIO(_run(config, "--format", "csv").stdout)))
    assert [(r["customer_id"], r["tags"]) for r in rows] == [
        ("c1", "outage_sensitive"),
        ("c10", "high_standby;night_heavy;peak_contributor"),
        ("c3", "prosumer"),
        ("c4", "tamper_risk"),
        ("c5", "prosumer"),
    ]
    assert rows[3]["evidence"].startswith("tamper_risk: raised events: tamper 1")
    table = _run(config, "--tag", "prosumer").stdout.splitlines()
    body = [line.split()[:3] for line in table[table.index("") + 2 :]]
    assert body == [["c3", "m3", "prosumer"], ["c5", "m5", "prosumer"]]
