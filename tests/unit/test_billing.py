"""Billing from the registers at the period's boundaries (gateway/reports/billing.py).

Hand-computed cases, the grid is 900 s (estimation.interval_s):

- exact: a point at T is used as it is; its quality decides `estimated`;
- interpolated inside one interval (neighbours 600 s apart): not estimated;
- interpolated across a gap (neighbours 3600 s apart): estimated; T at 1/4 of the gap
  between 100 and 108 kWh gives 102 kWh;
- open: no point at or after T: the last before is used;
- a register that went down: negative delta, `register decrease`.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from meter_gateway.config.topology import MeterPlace
from meter_gateway.gateway.cli import main
from meter_gateway.gateway.reports.billing import (
    Neighbours,
    RegisterPoint,
    bill,
    register_at,
)
from meter_gateway.gateway.reports.cli import parse_local, resolve_local
from meter_gateway.gateway.reports.readings_source import (
    billing_flux_queries,
    billing_influxql_queries,
)
from meter_gateway.gateway.reports.render import render_billing

NS = 1_000_000_000
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
T1 = T0 + 31 * 86_400  # 2026-02-01T00:00:00Z
F, T = T0 * NS, T1 * NS


def pt(t_s: float, imp: float, exp: float | None = 0.0, q: str = "actual") -> RegisterPoint:
    return RegisterPoint(int(t_s * NS), imp, exp, q, "linear" if q == "estimated" else "")


# -- one boundary ----------------------------------------------------------------------------


def test_exact_point_is_used_and_its_quality_counts() -> None:
    v = register_at(F, Neighbours(pt(T0, 100.0), pt(T0, 100.0)), 900)
    assert (v.import_kwh, v.how, v.flags) == (100.0, "exact", frozenset())
    v = register_at(F, Neighbours(pt(T0 - 900, 99.0), pt(T0, 100.0, q="estimated")), 900)
    assert (v.import_kwh, v.how, v.flags) == (100.0, "exact", {"estimated"})
    assert [p.quality for p in v.points] == ["estimated"]


def test_interpolation_inside_one_interval_is_not_estimated() -> None:
    v = register_at(F, Neighbours(pt(T0 - 300, 10.0, 1.0), pt(T0 + 300, 11.0, 2.0)), 900)
    assert (v.import_kwh, v.export_kwh, v.how, v.flags) == (10.5, 1.5, "interpolated", set())


def test_interpolation_across_a_gap_is_estimated() -> None:
    v = register_at(F, Neighbours(pt(T0 - 900, 100.0), pt(T0 + 2700, 108.0)), 900)
    assert v.import_kwh == pytest.approx(102.0)
    assert (v.how, v.flags) == ("interpolated", {"estimated"})
    # At exactly one interval apart the neighbours are no gap.
    v = register_at(F, Neighbours(pt(T0 - 450, 100.0), pt(T0 + 450, 101.0)), 900)
    assert (v.import_kwh, v.flags) == (100.5, set())


def test_interpolation_with_an_estimated_neighbour_is_estimated() -> None:
    v = register_at(F, Neighbours(pt(T0 - 300, 10.0), pt(T0 + 300, 11.0, q="estimated")), 900)
    assert v.flags == {"estimated"}
    v = register_at(F, Neighbours(pt(T0 - 300, 10.0), pt(T0 + 300, 11.0, q="suspect")), 900)
    assert v.flags == {"suspect"}


def test_open_started_and_no_data() -> None:
    v = register_at(T, Neighbours(pt(T1 - 7200, 150.0), None), 900)
    assert (v.import_kwh, v.how, v.flags) == (150.0, "last before", {"open"})
    v = register_at(F, Neighbours(None, pt(T0 + 7200, 5.0)), 900)
    assert (v.import_kwh, v.how, v.flags) == (5.0, "first after", {"started"})
    v = register_at(F, Neighbours(), 900)
    assert (v.import_kwh, v.how, v.flags) == (None, "none", {"no data"})


# -- meters and customers --------------------------------------------------------------------

TOPOLOGY = {
    "m1": MeterPlace("m1", customer_id="c1"),
    "m2": MeterPlace("m2", customer_id="c1"),
    "m3": MeterPlace("m3", customer_id="c3"),
    "m4": MeterPlace("m4"),  # no customer_id: its own customer
    "m5": MeterPlace("m5", customer_id="c5"),
}


def example_readings() -> dict[str, tuple[Neighbours, Neighbours]]:
    return {
        # c1: two meters. m1 exact at both ends: 1000 -> 1300 import, 10 -> 25 export.
        "m1": (
            Neighbours(pt(T0, 1000.0, 10.0), pt(T0, 1000.0, 10.0)),
            Neighbours(pt(T1, 1300.0, 25.0), pt(T1, 1300.0, 25.0)),
        ),
        # m2: a gap across --from (estimated, 102), an estimated point exactly at --to.
        "m2": (
            Neighbours(pt(T0 - 900, 100.0), pt(T0 + 2700, 108.0)),
            Neighbours(pt(T1, 152.0, q="estimated"), pt(T1, 152.0, q="estimated")),
        ),
        # m3: the register went down (meter exchanged without a reset record).
        "m3": (
            Neighbours(pt(T0, 5000.0), pt(T0, 5000.0)),
            Neighbours(pt(T1 - 60, 20.0), pt(T1 + 840, 21.5)),
        ),
        # m4: silent since two hours before --to: open.
        "m4": (
            Neighbours(pt(T0 - 300, 40.0), pt(T0 + 300, 41.0)),
            Neighbours(pt(T1 - 7200, 90.0), None),
        ),
        # m5: nothing at all (not in the readings). m9: not in the topology.
        "m9": (
            Neighbours(pt(T0, 1.0), pt(T0, 1.0)),
            Neighbours(pt(T1, 3.0), pt(T1, 3.0)),
        ),
        # m10: not in the topology, silent for a year: left out.
        "m10": (
            Neighbours(pt(T0 - 365 * 86_400, 7.0), None),
            Neighbours(pt(T0 - 365 * 86_400, 7.0), None),
        ),
    }


def test_bill_per_meter_and_customer() -> None:
    report = bill(example_readings(), TOPOLOGY, F, T, interval_s=900)
    by_id = {c.customer_id: c for c in report.customers}
    assert list(by_id) == ["c1", "c3", "c5", "meter:m4", "meter:m9"]
    assert report.unknown_meters == ["m9"]

    c1 = by_id["c1"]
    m1, m2 = c1.meters
    assert (m1.import_kwh, m1.export_kwh, m1.flags) == (300.0, 15.0, ())
    assert m2.start.import_kwh == pytest.approx(102.0)
    assert m2.import_kwh == pytest.approx(50.0)
    assert m2.flags == ("estimated",)
    assert (m2.start.how, m2.end.how) == ("interpolated", "exact")
    assert c1.meter_ids == ["m1", "m2"]
    assert c1.import_kwh == pytest.approx(350.0)
    assert c1.export_kwh == 15.0
    assert (c1.from_import_kwh, c1.to_import_kwh) == (pytest.approx(1102.0), 1452.0)
    assert c1.flags == ("estimated",)

    c3 = by_id["c3"]
    assert c3.import_kwh == pytest.approx(20.1 - 5000.0)  # 20 + 1.5 * 60/900, as it is
    assert c3.flags == ("register decrease",)

    m4 = by_id["meter:m4"]
    assert (m4.import_kwh, m4.flags) == (49.5, ("open",))

    c5 = by_id["c5"]
    assert (c5.import_kwh, c5.export_kwh, c5.flags) == (None, None, ("no data",))

    m9 = by_id["meter:m9"]
    assert (m9.import_kwh, m9.flags) == (2.0, ("not in topology",))


def test_meter_starting_after_the_period_has_no_data() -> None:
    readings = {"m1": (Neighbours(None, pt(T1 + 60, 3.0)), Neighbours(None, pt(T1 + 60, 3.0)))}
    report = bill(readings, {"m1": MeterPlace("m1", customer_id="c1")}, F, T)
    (c,) = report.customers
    assert (c.import_kwh, c.flags) == (None, ("no data",))
    # Installed inside the period: from its first reading.
    readings = {"m1": (Neighbours(None, pt(T0 + 60, 3.0)), Neighbours(pt(T1, 13.0), pt(T1, 13.0)))}
    (c,) = bill(readings, {"m1": MeterPlace("m1", customer_id="c1")}, F, T).customers
    assert (c.import_kwh, c.flags) == (10.0, ("started",))


def test_outputs() -> None:
    report = bill(example_readings(), TOPOLOGY, F, T, timezone="UTC")
    rows = list(csv.DictReader(io.StringIO(render_billing(report, "csv"))))
    assert list(rows[0]) == [
        "customer_id",
        "meters",
        "import_kwh",
        "export_kwh",
        "from_import_kwh",
        "to_import_kwh",
        "flags",
    ]
    assert rows[0] == {
        "customer_id": "c1",
        "meters": "m1,m2",
        "import_kwh": "350.000",
        "export_kwh": "15.000",
        "from_import_kwh": "1102.000",
        "to_import_kwh": "1452.000",
        "flags": "estimated",
    }
    assert rows[2]["flags"] == "no data"
    assert rows[2]["import_kwh"] == ""

    doc = json.loads(render_billing(report, "json"))
    assert (doc["from"], doc["to"], doc["unknown_meters"]) == (
        "2026-01-01T00:00:00Z",
        "2026-02-01T00:00:00Z",
        ["m9"],
    )
    m2 = doc["customers"][0]["meters"][1]
    assert (m2["meter_id"], m2["import_kwh"], m2["flags"]) == ("m2", 50.0, ["estimated"])
    assert m2["from"]["how"] == "interpolated"
    assert [p["time"] for p in m2["from"]["points"]] == [
        "2025-12-31T23:45:00Z",
        "2026-01-01T00:45:00Z",
    ]
    assert m2["to"]["points"][0]["quality"] == "estimated"
    assert m2["to"]["points"][0]["estimation_method"] == "linear"

    report.customers = [c for c in report.customers if c.customer_id == "c1"]
    table = render_billing(report, "table", detail=True).splitlines()
    head = next(i for i, line in enumerate(table) if line.startswith("customer_id"))
    assert table[head].split()[:3] == ["customer_id", "meter_id", "meters"]
    assert table[head + 1].split() == [
        "c1",
        "total",
        "m1,m2",
        "350.000",
        "15.000",
        "1102.000",
        "1452.000",
        "estimated",
    ]
    assert table[head + 2].split() == [
        "c1",
        "m1",
        "m1",
        "300.000",
        "15.000",
        "1000.000",
        "1300.000",
        "-",
    ]
    assert table[head + 3].split()[:4] == ["c1", "m2", "m2", "50.000"]


# -- times and queries -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "zone", "utc"),
    [
        ("2026-01-01", "Europe/Berlin", datetime(2025, 12, 31, 23, tzinfo=UTC)),
        ("2026-03-29", "Europe/Berlin", datetime(2026, 3, 28, 23, tzinfo=UTC)),
        ("2026-03-30", "Europe/Berlin", datetime(2026, 3, 29, 22, tzinfo=UTC)),  # after DST
        ("2026-11-01", "Europe/Berlin", datetime(2026, 10, 31, 23, tzinfo=UTC)),
        ("2026-01-01", "UTC", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2026-01-01T06:00:00Z", "Europe/Berlin", datetime(2026, 1, 1, 6, tzinfo=UTC)),
        ("2026-07-01T06:00:00", "Europe/Berlin", datetime(2026, 7, 1, 4, tzinfo=UTC)),  # local
    ],
)
def test_local_dates(text: str, zone: str, utc: datetime) -> None:
    assert resolve_local(parse_local(text), zone) == utc


def test_parse_local_keeps_a_date_a_date() -> None:
    assert parse_local("2026-01-01") == date(2026, 1, 1)


def test_billing_influxql_queries() -> None:
    q = billing_influxql_queries(F, T, rp="autogen")
    assert q[0] == (
        'SELECT last("energy_import_kwh") AS "energy_import_kwh", "energy_export_kwh", '
        '"quality", "estimation_method" FROM "autogen"."meter_reading" '
        f'WHERE time <= {F} GROUP BY "meter_id"'
    )
    assert q[1].startswith('SELECT first("energy_import_kwh") AS "energy_import_kwh", ')
    assert q[1].endswith(f'WHERE time >= {F} GROUP BY "meter_id"')
    assert f"time <= {T} " in q[2]
    assert f"time >= {T} " in q[3]


def test_billing_flux_queries() -> None:
    """v2 is not tested against a server: VictoriaMetrics (the v2 test service) has no Flux."""
    q = billing_flux_queries(F, T, 'my "bucket"')
    assert len(q) == 4
    assert q[0].startswith('from(bucket: "my \\"bucket\\"")\n')
    assert "range(start: 1970-01-01T00:00:00Z, stop: 2026-01-01T00:00:00.000000001Z)" in q[0]
    assert q[0].rstrip().endswith('|> last(column: "_time")')
    assert "|> range(start: 2026-01-01T00:00:00Z)\n" in q[1]
    assert q[1].rstrip().endswith('|> first(column: "_time")')
    assert "stop: 2026-02-01T00:00:00.000000001Z" in q[2]
    assert "range(start: 2026-02-01T00:00:00Z)" in q[3]
    for text in q:
        assert 'r._measurement == "meter_reading"' in text
        assert 'r._field == "quality"' in text
        assert 'r._field == "estimation_method"' in text
        assert 'pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")' in text
        assert "filter(fn: (r) => exists r.energy_import_kwh)" in text
        assert 'group(columns: ["meter_id"])' in text


# -- the command's errors --------------------------------------------------------------------


def _config(tmp_path: Path, topology: bool = True, url: str = "http://127.0.0.1:9") -> Path:
    lines = [
        f"gateway:\n  data_dir: {tmp_path / 'var'}\n  timezone: Europe/Berlin",
        f"storage:\n  api: v1\n  url: {url}\n  timeout_s: 2",
    ]
    if topology:
        topo = tmp_path / "topology.csv"
        topo.write_text("meter_id,customer_id\nm1,c1\n")
        lines.append(f"topology:\n  file: {topo}")
    path = tmp_path / "gateway.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_database_unreachable_names_the_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path)
    argv = ["report", "billing", "-c", str(cfg), "--from", "2026-01-01", "--to", "2026-02-01"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "cannot reach the database at http://127.0.0.1:9" in err
    assert "storage.url" in err


def test_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path)
    argv = ["report", "billing", "-c", str(cfg), "--from", "2026-02-01", "--to", "2026-02-01"]
    assert main(argv) == 2
    assert "--to must be after --from" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["report", "billing", "-c", str(cfg), "--from", "January", "--to", "2026-02-01"])
    assert exc.value.code == 2
    assert "not an RFC 3339 time or a date" in capsys.readouterr().err
    cfg = _config(tmp_path, topology=False)
    argv = ["report", "billing", "-c", str(cfg), "--from", "2026-01-01", "--to", "2026-02-01"]
    assert main(argv) == 2
    assert "topology.file is not set" in capsys.readouterr().err


def test_help_explains_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["report", "billing", "--help"])
    out = capsys.readouterr().out
    for word in (
        "import_kwh",
        "export_kwh",
        "from_import_kwh",
        "to_import_kwh",
        "estimated",
        "suspect",
        "open",
        "started",
        "no data",
        "register decrease",
        "not in topology",
        "estimation.interval_s",
        "gateway.timezone",
    ):
        assert word in out, word
