"""`meter-gateway report billing` against a real InfluxDB 1.x, the CLI in a subprocess.

gateway.timezone Europe/Berlin; March 2026 (--from 2026-03-01 --to 2026-04-01) spans
the change to summer time (2026-03-29), so the boundaries are 2026-02-28T23:00Z
(+01:00) and 2026-03-31T22:00Z (+02:00). Every meter also has points at the UTC
midnights, which a report using the wrong offset would pick up. Grid 900 s.

  b1 (c1)  exact at both: 1000 -> 1250 import, 5 -> 12 export        250 kWh
  b2 (c1)  500 -> an estimated point exactly at --to, 600            100, estimated
                                                         c1: 350 kWh, estimated
  b3 (c3)  a gap 22:00Z..01:00Z across --from (200 .. 203): 201 at --from, estimated;
           301 at --to                                               100, estimated
  b4 (c4)  900 -> 50 (register went down)                -850, register decrease
  b5 (c5)  an estimate at --from rewritten by the actual reading (70, quality actual);
           silent since 2026-03-31T12:00Z (80)                       10, open
  b6 (c6)  no points at all                                          no data
  b9       not in the topology: own customer meter:b9, named on stderr  2 kWh

The 23-hour local day 2026-03-29 (2026-03-28T23:00Z to 2026-03-29T22:00Z): b1 1200 ->
1223, 23 kWh.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meter_gateway.simulators.services import InfluxDB1

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).parent / "meter-gateway")

TOPOLOGY = """\
meter_id,transformer_id,feeder_id,customer_id,prosumer
b1,T1,F1,c1,
b2,T1,F1,c1,
b3,T1,F1,c3,
b4,T2,F1,c4,
b5,T2,F1,c5,
b6,T2,F1,c6,
"""


def _ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def _line(meter: str, at: str, imp: float, exp: float = 0.0, quality: str = "actual") -> str:
    extra = ',estimation_method="linear"' if quality == "estimated" else ""
    return (
        f"meter_reading,meter_id={meter},source=mqtt energy_import_kwh={imp},"
        f'energy_export_kwh={exp},power_w=100,quality="{quality}"{extra} {_ts(at)}'
    )


POINTS = [
    # b1: exact at both boundaries, with neighbours and UTC-midnight decoys
    _line("b1", "2026-02-28T22:45:00", 999.7, 5.0),
    _line("b1", "2026-02-28T23:00:00", 1000.0, 5.0),
    _line("b1", "2026-02-28T23:15:00", 1000.3, 5.0),
    _line("b1", "2026-03-01T00:00:00", 1003.0, 5.5),
    _line("b1", "2026-03-28T23:00:00", 1200.0, 10.0),
    _line("b1", "2026-03-29T00:00:00", 1200.5, 10.0),
    _line("b1", "2026-03-29T22:00:00", 1223.0, 11.0),
    _line("b1", "2026-03-29T23:00:00", 1224.0, 11.0),
    _line("b1", "2026-03-31T21:45:00", 1249.8, 12.0),
    _line("b1", "2026-03-31T22:00:00", 1250.0, 12.0),
    _line("b1", "2026-03-31T22:15:00", 1250.2, 12.0),
    _line("b1", "2026-04-01T00:00:00", 1260.0, 12.0),
    # b2: an estimated point exactly at --to
    _line("b2", "2026-02-28T23:00:00", 500.0),
    _line("b2", "2026-03-31T21:45:00", 599.0),
    _line("b2", "2026-03-31T22:00:00", 600.0, quality="estimated"),
    _line("b2", "2026-03-31T22:15:00", 601.0),
    # b3: a gap across --from
    _line("b3", "2026-02-28T22:00:00", 200.0),
    _line("b3", "2026-03-01T01:00:00", 203.0),
    _line("b3", "2026-03-31T22:00:00", 301.0),
    # b4: the register went down
    _line("b4", "2026-02-28T23:00:00", 900.0),
    _line("b4", "2026-03-31T22:00:00", 50.0),
    # b5: an estimate rewritten by the actual reading; silent since noon on the 31st
    _line("b5", "2026-02-28T23:00:00", 69.0, quality="estimated"),
    _line("b5", "2026-03-31T12:00:00", 80.0),
    # b9: not in the topology
    _line("b9", "2026-02-28T23:00:00", 1.0),
    _line("b9", "2026-03-31T22:00:00", 3.0),
]
LATE = [  # the actual reading replacing b5's estimate: the same point, quality actual
    "meter_reading,meter_id=b5,source=mqtt energy_import_kwh=70,energy_export_kwh=0,"
    f'quality="actual",estimation_method="" {_ts("2026-02-28T23:00:00")}'
]


def _write(db: InfluxDB1, lines: list[str]) -> None:
    import urllib.request

    req = urllib.request.Request(
        f"{db.url}/write?db=meters&precision=s", data="\n".join(lines).encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 204


@pytest.fixture
def config(tmp_path: Path, influx1: InfluxDB1) -> Path:
    _write(influx1, POINTS)
    _write(influx1, LATE)
    topo = tmp_path / "topology.csv"
    topo.write_text(TOPOLOGY)
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"gateway:\n  data_dir: {tmp_path / 'var'}\n  timezone: Europe/Berlin\n"
        f"storage:\n  api: v1\n  url: {influx1.url}\n  database: meters\n  precision: s\n"
        f"topology:\n  file: {topo}\n"
        "estimation:\n  interval_s: 900\n"
    )
    return path


def _run(config: Path, *extra: str, frm: str = "2026-03-01", to: str = "2026-04-01"):
    argv = [CLI, "report", "billing", "-c", str(config), "--from", frm, "--to", to, *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_march_across_dst_json(config: Path) -> None:
    done = _run(config, "--format", "json")
    assert done.returncode == 0, done.stderr
    assert "b9" in done.stderr  # not in the topology: named
    doc = json.loads(done.stdout)
    assert (doc["from"], doc["to"], doc["timezone"]) == (
        "2026-02-28T23:00:00Z",
        "2026-03-31T22:00:00Z",
        "Europe/Berlin",
    )
    got = {
        c["customer_id"]: (c["meter_ids"], c["import_kwh"], c["export_kwh"], c["flags"])
        for c in doc["customers"]
    }
    assert got == {
        "c1": (["b1", "b2"], 350.0, 7.0, ["estimated"]),
        "c3": (["b3"], 100.0, 0.0, ["estimated"]),
        "c4": (["b4"], -850.0, 0.0, ["register decrease"]),
        "c5": (["b5"], 10.0, 0.0, ["open"]),
        "c6": (["b6"], None, None, ["no data"]),
        "meter:b9": (["b9"], 2.0, 0.0, ["not in topology"]),
    }
    assert doc["unknown_meters"] == ["b9"]
    meters = {m["meter_id"]: m for c in doc["customers"] for m in c["meters"]}
    b2 = meters["b2"]
    assert (b2["from_import_kwh"], b2["to_import_kwh"], b2["flags"]) == (500, 600, ["estimated"])
    assert b2["to"]["how"] == "exact"
    assert b2["to"]["points"] == [
        {
            "time": "2026-03-31T22:00:00Z",
            "import_kwh": 600.0,
            "export_kwh": 0.0,
            "quality": "estimated",
            "estimation_method": "linear",
        }
    ]
    assert b2["from"]["flags"] == []
    assert b2["to"]["flags"] == ["estimated"]
    b3 = meters["b3"]
    assert (b3["from_import_kwh"], b3["from"]["how"], b3["from"]["flags"]) == (
        201.0,
        "interpolated",
        ["estimated"],
    )
    b5 = meters["b5"]
    assert b5["from"]["points"][0]["quality"] == "actual"  # the estimate was replaced
    assert (b5["from"]["flags"], b5["to"]["flags"], b5["to"]["how"]) == (
        [],
        ["open"],
        "last before",
    )
    assert meters["b1"]["from"]["points"][0]["time"] == "2026-02-28T23:00:00Z"


def test_csv_and_customer_detail(config: Path) -> None:
    done = _run(config, "--format", "csv")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [(r["customer_id"], r["meters"], r["import_kwh"], r["flags"]) for r in rows] == [
        ("c1", "b1,b2", "350.000", "estimated"),
        ("c3", "b3", "100.000", "estimated"),
        ("c4", "b4", "-850.000", "register decrease"),
        ("c5", "b5", "10.000", "open"),
        ("c6", "b6", "", "no data"),
        ("meter:b9", "b9", "2.000", "not in topology"),
    ]
    assert (rows[0]["from_import_kwh"], rows[0]["to_import_kwh"]) == ("1500.000", "1850.000")

    done = _run(config, "--customer", "c1", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [(r["meter_id"], r["import_kwh"], r["export_kwh"], r["flags"]) for r in rows] == [
        ("", "350.000", "7.000", "estimated"),
        ("b1", "250.000", "7.000", ""),
        ("b2", "100.000", "0.000", "estimated"),
    ]
    table = _run(config, "--customer", "c1").stdout.splitlines()
    assert any(line.split()[:4] == ["c1", "total", "b1,b2", "350.000"] for line in table)
    done = _run(config, "--customer", "nobody")
    assert done.returncode == 2
    assert "no customer 'nobody'" in done.stderr


def test_the_23_hour_day(config: Path) -> None:
    done = _run(config, "--format", "json", frm="2026-03-29", to="2026-03-30")
    doc = json.loads(done.stdout)
    assert (doc["from"], doc["to"]) == ("2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z")
    (c1,) = [c for c in doc["customers"] if c["customer_id"] == "c1"]
    b1 = c1["meters"][0]
    assert (b1["import_kwh"], b1["export_kwh"], b1["flags"]) == (23.0, 1.0, [])


def test_unreachable_database(tmp_path: Path) -> None:
    topo = tmp_path / "topology.csv"
    topo.write_text(TOPOLOGY)
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(
        f"gateway:\n  data_dir: {tmp_path / 'var'}\n"
        "storage:\n  api: v1\n  url: http://127.0.0.1:9\n  timeout_s: 2\n"
        f"topology:\n  file: {topo}\n"
    )
    done = _run(cfg)
    assert done.returncode == 1
    assert "cannot reach the database at http://127.0.0.1:9" in done.stderr
