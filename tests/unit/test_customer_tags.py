"""Customer tags (gateway/reports/customers.py): each rule at and just below its threshold.

The example: the topology and outages of tests/unit/test_reliability.py (m5 made a
prosumer), window 2026-01-01 and 2026-01-02 (UTC), default thresholds
(high_standby 0.3 kW, night_heavy 0.5, peak top 0.1, outage_sensitive > 3,
prosumer 1 kWh). Daily figures (D1, D2):

  c10 = m10 + m11 (two meters)
        base load   D1 0.2 + 0.1, D2 0.25 + 0.05  -> 0.3 kW a day: high_standby (at 0.3)
        import      D1 10 + 10 (night_share 0.5 each), D2 20 (0.5) + 0 (no night_share)
                    -> night 20 of 40 kWh = 0.5: night_heavy (at 0.5)
        peak        D1 3 + 2, D2 4 + 1 -> mean 5 kW: peak_contributor (rank 1 of 4)
  c2  = m2  base 0.299 a day (just below); import 10, night_share 0.499 (just below);
            peak 1 kW
  c3  = m3  peak 2 kW; exported 1 kWh: prosumer (at 1)
  c4  = m4  peak 1.5 kW; exported 0.999 kWh (just below); a tamper event (delivered
            twice) and a register_decrease event: tamper_risk
  c5  = m5  prosumer in the topology
  c1  4 sustained interruptions (test_reliability's A, D, E, F): outage_sensitive (> 3)
  m12 not in the topology, its meter_daily customer_id tag c99: customer c99
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import pytest

from meter_gateway.config.schema import CustomersConfig
from meter_gateway.config.topology import MeterPlace
from meter_gateway.gateway.cli import main
from meter_gateway.gateway.reports.customers import (
    CustomerInputs,
    DailyFigures,
    RiskEvent,
    tag_customers,
)
from meter_gateway.gateway.reports.readings_source import (
    customers_flux_queries,
    customers_influxql_queries,
)
from meter_gateway.gateway.reports.reliability import Window
from meter_gateway.gateway.reports.render import csv_cell, render_customers
from tests.unit.test_reliability import T0, example_events, example_topology, points_of

DAY = 86_400
WINDOW = Window(T0, T0 + 2 * DAY)
READ_UNTIL = T0 + 2 * DAY + 300
D1, D2 = "2026-01-01", "2026-01-02"


def topology() -> dict[str, MeterPlace]:
    topo = example_topology()
    topo["m5"] = dataclasses.replace(topo["m5"], prosumer=True)
    return topo


def day(meter: str, d: str, **fields: float) -> DailyFigures:
    t = T0 if d == D1 else T0 + DAY
    return DailyFigures(meter, t, d, **fields)  # type: ignore[arg-type]


def example_daily() -> list[DailyFigures]:
    return [
        day("m10", D1, base_load_kw=0.2, peak_demand_kw=3.0, energy_import_kwh=10, night_share=0.5),
        day("m11", D1, base_load_kw=0.1, peak_demand_kw=2.0, energy_import_kwh=10, night_share=0.5),
        day(
            "m10", D2, base_load_kw=0.25, peak_demand_kw=4.0, energy_import_kwh=20, night_share=0.5
        ),
        day("m11", D2, base_load_kw=0.05, peak_demand_kw=1.0, energy_import_kwh=0),
        day(
            "m2",
            D1,
            base_load_kw=0.299,
            peak_demand_kw=1.0,
            energy_import_kwh=10,
            night_share=0.499,
        ),
        day("m2", D2, base_load_kw=0.299, peak_demand_kw=1.0),
        day("m3", D1, peak_demand_kw=2.0, energy_export_kwh=0.4),
        day("m3", D2, peak_demand_kw=2.0, energy_export_kwh=0.6),
        day("m4", D1, peak_demand_kw=1.5, energy_export_kwh=0.999),
        dataclasses.replace(day("m12", D1, base_load_kw=0.1), customer_id="c99"),
    ]


def example_risks() -> list[RiskEvent]:
    tamper = RiskEvent(T0 + 1000, "m4", "tamper", "e-tamper")
    return [
        tamper,
        tamper,  # redelivered: one event
        RiskEvent(T0 + 500, "m4", "register_decrease", "e-decrease"),
    ]


def inputs() -> CustomerInputs:
    return CustomerInputs(
        WINDOW, example_daily(), points_of(example_events()), example_risks(), READ_UNTIL
    )


def tags_with(**thresholds: float):
    return tag_customers(inputs(), topology(), CustomersConfig(**thresholds), momentary_max_s=300)


def by_id(result) -> dict:
    return {c.customer_id: c for c in result.customers}


def test_the_example_tags() -> None:
    result = tags_with()
    tagged = {c.customer_id: list(c.tags) for c in result.tagged()}
    assert tagged == {
        "c1": ["outage_sensitive"],
        "c10": ["high_standby", "night_heavy", "peak_contributor"],
        "c3": ["prosumer"],
        "c4": ["tamper_risk"],
        "c5": ["prosumer"],
    }
    assert [c.customer_id for c in result.by_base_load] == ["c10", "c2", "c99"]
    assert [c.customer_id for c in result.outage_sensitive] == ["c1"]
    assert result.unknown_meters == ["m12"]
    assert by_id(result)["c99"].meter_ids == ["m12"]


def test_customer_with_two_meters_sums_per_day() -> None:
    c10 = by_id(tags_with())["c10"]
    assert c10.meter_ids == ["m10", "m11"]
    assert c10.mean_base_load_kw == pytest.approx(0.3)
    assert (c10.base_load_days, c10.days) == (2, 2)
    assert c10.mean_peak_kw == 5.0
    assert (c10.import_kwh, c10.night_kwh, c10.night_import_kwh, c10.night_share) == (
        40,
        20,
        40,
        0.5,
    )


def test_high_standby_at_and_below_threshold() -> None:
    c = by_id(tags_with())
    assert c["c10"].tags["high_standby"] == (
        "mean daily base load 0.3 kW over 2 day(s) >= 0.3 kW (customers.high_standby_kw)"
    )
    assert "high_standby" not in c["c2"].tags  # 0.299
    assert "high_standby" in by_id(tags_with(high_standby_kw=0.299))["c2"].tags
    assert "high_standby" not in by_id(tags_with(high_standby_kw=0.3001))["c10"].tags


def test_night_heavy_at_and_below_threshold() -> None:
    c = by_id(tags_with())
    assert c["c10"].tags["night_heavy"] == (
        "night energy 20 kWh of 40 kWh imported = 50% >= 50% (customers.night_heavy_share)"
    )
    assert "night_heavy" not in c["c2"].tags  # 0.499
    assert by_id(tags_with(night_heavy_share=0.499))["c2"].tags["night_heavy"] == (
        "night energy 4.99 kWh of 10 kWh imported = 49.9% >= 49.9% (customers.night_heavy_share)"
    )


def test_peak_contributor_top_share() -> None:
    c = by_id(tags_with())
    assert c["c10"].tags["peak_contributor"] == (
        "mean daily peak 5 kW over 2 day(s), rank 1 of 4; the top 10% "
        "(customers.peak_top_share) is 1 customer(s), down to 5 kW"
    )
    # 0.5 of 4 customers: 2 (c10 5 kW, c3 2 kW); c4 (1.5 kW) just below the cut.
    c = by_id(tags_with(peak_top_share=0.5))
    assert [k for k, f in c.items() if "peak_contributor" in f.tags] == ["c10", "c3"]
    assert c["c4"].peak_rank == 3
    # 0.51 of 4 = 2.04: ceil gives 3.
    c = by_id(tags_with(peak_top_share=0.51))
    assert "peak_contributor" in c["c4"].tags


def test_peak_cut_is_not_fooled_by_float_products() -> None:
    """0.1 x 30 is 3.0000000000000004 in floating point: still 3 customers, not 4."""
    daily = [day(f"m{i}", D1, peak_demand_kw=float(i)) for i in range(30)]
    topo = {f"m{i}": MeterPlace(f"m{i}", customer_id=f"k{i:02d}") for i in range(30)}
    result = tag_customers(CustomerInputs(WINDOW, daily, [], [], READ_UNTIL), topo)
    assert result.peak_cut == 3
    assert [c.customer_id for c in result.tagged("peak_contributor")] == ["k27", "k28", "k29"]


def test_outage_sensitive_is_more_than_n_as_reliability_counts() -> None:
    c1 = by_id(tags_with())["c1"]
    assert (c1.sustained_interruptions, c1.interruption_minutes) == (4, 60)
    assert c1.tags["outage_sensitive"] == (
        "4 sustained interruptions (60 min; sustained: 300 s or longer) > 3 "
        "(customers.outage_sensitive_min, as CEMI3 counts them)"
    )
    # At the threshold (4 is not more than 4): not tagged.
    assert "outage_sensitive" not in by_id(tags_with(outage_sensitive_min=4))["c1"].tags
    # c10's two meters out together are one interruption.
    assert by_id(tags_with())["c10"].sustained_interruptions == 1
    # Most sustained interruptions first, then most minutes (c7's open all day).
    assert [c.customer_id for c in tags_with(outage_sensitive_min=0).outage_sensitive] == [
        "c1",
        "c7",
        "c10",
        "c2",
        "c3",
        "c8",
    ]


def test_tamper_risk_counts_each_event_once() -> None:
    c = by_id(tags_with())
    assert c["c4"].risk_events == {"tamper": 1, "register_decrease": 1}
    assert c["c4"].tags["tamper_risk"] == (
        "raised events: tamper 1, register_decrease 1; first 2026-01-01T00:08:20Z (meter m4)"
    )
    assert "tamper_risk" not in c["c3"].tags


def test_prosumer_by_topology_or_export() -> None:
    c = by_id(tags_with())
    assert c["c3"].tags["prosumer"] == (
        "exported 1 kWh >= 1 kWh (customers.prosumer_min_export_kwh)"
    )
    assert c["c5"].tags["prosumer"] == "topology prosumer: meter m5"
    assert "prosumer" not in c["c4"].tags  # 0.999 kWh
    assert "prosumer" in by_id(tags_with(prosumer_min_export_kwh=0.999))["c4"].tags
    # A threshold of 0 does not make a customer exporting nothing a prosumer.
    assert "prosumer" not in by_id(tags_with(prosumer_min_export_kwh=0))["c10"].tags


def test_rewritten_day_of_a_retagged_meter_counts_once() -> None:
    first = day("m2", D1, base_load_kw=0.1, intervals=40)
    fuller = dataclasses.replace(first, base_load_kw=0.5, intervals=96, customer_id="c2")
    result = tag_customers(CustomerInputs(WINDOW, [first, fuller], [], [], READ_UNTIL), topology())
    assert by_id(result)["c2"].mean_base_load_kw == 0.5


def test_outputs() -> None:
    result = tags_with()
    table = render_customers(result, "table").splitlines()
    row = next(line for line in table if line.startswith("c10 "))
    assert row.split()[:5] == [
        "c10",
        "m10,m11",
        "high_standby,night_heavy,peak_contributor",
        "high_standby:",
        "mean",
    ]
    assert "; night_heavy: night energy 20 kWh of 40 kWh" in row
    rows = list(csv.DictReader(io.StringIO(render_customers(result, "csv", tag="prosumer"))))
    assert [(r["customer_id"], r["meters"], r["tags"]) for r in rows] == [
        ("c3", "m3", "prosumer"),
        ("c5", "m5", "prosumer"),
    ]
    assert rows[0]["evidence"].startswith("prosumer: exported 1 kWh")
    doc = json.loads(render_customers(result, "json", timezone="UTC"))
    assert doc["thresholds"]["peak_cut"] == 1
    customers = {c["customer_id"]: c for c in doc["customers"]}
    assert customers["c6"]["tags"] == {}  # untagged customers are in the JSON
    assert customers["c10"]["figures"]["mean_base_load_kw"] == 0.3
    assert customers["c4"]["figures"]["first_risk"] == "2026-01-01T00:08:20Z"
    assert doc["by_base_load"][0] == {"customer_id": "c10", "mean_base_load_kw": 0.3}
    assert doc["outage_sensitive"] == ["c1"]
    only = json.loads(render_customers(result, "json", tag="tamper_risk"))
    assert [c["customer_id"] for c in only["customers"]] == ["c4"]


def test_customers_queries() -> None:
    d, e = customers_influxql_queries(WINDOW, rp="autogen")
    lo, hi = T0 * 1_000_000_000, (T0 + 2 * DAY) * 1_000_000_000
    assert d == (
        'SELECT "date", "energy_import_kwh", "energy_export_kwh", "peak_demand_kw", '
        '"base_load_kw", "night_share", "completeness", "intervals" '
        f'FROM "autogen"."meter_daily" WHERE time >= {lo} AND time < {hi} '
        'GROUP BY "meter_id", "customer_id"'
    )
    assert e == (
        'SELECT "state", "event_id" FROM "autogen"."meter_event" WHERE ("type" = \'tamper\' '
        "OR \"type\" = 'register_decrease' OR \"type\" = 'sustained_low_consumption') "
        f"AND \"state\" = 'raised' AND time >= {lo} AND time < {hi} "
        'GROUP BY "meter_id", "type"'
    )
    fd, fe = customers_flux_queries(WINDOW, "meters")
    assert "range(start: 2026-01-01T00:00:00Z, stop: 2026-01-03T00:00:00Z)" in fd
    assert 'r._measurement == "meter_daily"' in fd
    assert '"base_load_kw"' in fd
    assert 'r.type == "tamper" or r.type == "register_decrease"' in fe
    assert 'filter(fn: (r) => r.state == "raised")' in fe


def test_customers_help_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["report", "customers", "--help"])
    out = capsys.readouterr().out
    for word in (
        "high_standby",
        "night_heavy",
        "peak_contributor",
        "outage_sensitive",
        "tamper_risk",
        "prosumer",
        "customers.high_standby_kw",
        "customers.night_heavy_share",
        "customers.peak_top_share",
        "customers.outage_sensitive_min",
        "customers.prosumer_min_export_kwh",
        "events.momentary_max_s",
    ):
        assert word in out, word
    topo = tmp_path / "topology.csv"
    topo.write_text("meter_id,customer_id\nm1,c1\n")
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(
        f"gateway:\n  data_dir: {tmp_path / 'var'}\n"
        "storage:\n  api: v1\n  url: http://127.0.0.1:9\n  timeout_s: 2\n"
        f"topology:\n  file: {topo}\n"
    )
    argv = ["report", "customers", "-c", str(cfg), "--from", "2026-01-01", "--to", "2026-01-02"]
    assert main(argv) == 1
    assert "cannot reach the database at http://127.0.0.1:9" in capsys.readouterr().err
    assert main([*argv[:5], "2026-01-03", "--to", "2026-01-02"]) == 2


def test_csv_cells_from_the_topology_never_run_as_spreadsheet_formulas() -> None:
    # OWASP's CSV injection: a customer id from the topology file that starts like a
    # formula is written as text; numbers, negative ones too, stay numbers.
    assert csv_cell("=cmd|' /C calc'!A0") == "'=cmd|' /C calc'!A0"
    for bad in ("+1+1", "-2+3+cmd|' /C calc'!A0", "@SUM(1,1)", "\t=1", "\r=1"):
        assert csv_cell(bad) == "'" + bad
    assert csv_cell("-5.250") == "-5.250"
    assert csv_cell(-5.25) == -5.25
    assert csv_cell("c-1") == "c-1"
    topo = topology()
    evil = '=HYPERLINK("http://x","c")'
    topo["m10"] = dataclasses.replace(topo["m10"], customer_id=evil)
    topo["m11"] = dataclasses.replace(topo["m11"], customer_id=evil)
    result = tag_customers(inputs(), topo, CustomersConfig(), momentary_max_s=300)
    text = render_customers(result, "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert "'" + evil in [r["customer_id"] for r in rows]
    assert not any(r["customer_id"].startswith("=") for r in rows)
