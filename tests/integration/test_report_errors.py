"""Reports against a real InfluxDB 1.x that cannot answer what they ask: the server's
own error is shown with what to do, and `report customers` says why tags are missing.

InfluxDB 1.x answers a multi-statement query on a missing database with nothing but
`not executed`; the report asks again for the reason the server gives for one statement.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meter_gateway.gateway.cli import main
from meter_gateway.simulators.services import InfluxDB1

pytestmark = pytest.mark.integration

REPORTS = {
    "reliability": ["--from", "2026-01-01", "--to", "2026-01-03"],
    "billing": ["--from", "2026-01-01", "--to", "2026-01-03"],
    "customers": ["--from", "2026-01-01", "--to", "2026-01-03"],
}


@pytest.fixture
def empty_influx1(tmp_path: Path) -> Iterator[InfluxDB1]:
    with InfluxDB1(tmp_path / "influxdb", database=None) as db:
        yield db


def _config(tmp_path: Path, db: InfluxDB1, extra: str = "") -> Path:
    topo = tmp_path / "topology.csv"
    topo.write_text("meter_id,transformer_id,feeder_id,customer_id\nm1,tx1,f1,c1\n")
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"gateway:\n  data_dir: {tmp_path / 'var'}\n"
        f"storage:\n  api: v1\n  url: {db.url}\n  database: meters\n{extra}"
        f"topology:\n  file: {topo}\n"
    )
    return path


@pytest.mark.parametrize("report", sorted(REPORTS))
def test_a_missing_database_is_named_with_what_to_do(
    tmp_path: Path, empty_influx1: InfluxDB1, capsys: pytest.CaptureFixture[str], report: str
) -> None:
    cfg = _config(tmp_path, empty_influx1)
    assert main(["report", report, "-c", str(cfg), *REPORTS[report]]) == 1
    err = capsys.readouterr().err
    assert "refused the query: database not found: meters" in err
    assert "not executed" not in err
    assert "storage.database ('meters') does not exist" in err
    assert "`meter-gateway run` creates it" in err


def test_a_missing_retention_policy_says_which_key(
    tmp_path: Path, empty_influx1: InfluxDB1, capsys: pytest.CaptureFixture[str]
) -> None:
    empty_influx1.create_database("meters")
    cfg = _config(tmp_path, empty_influx1, "  retention_policy: weekly\n")
    assert main(["report", "billing", "-c", str(cfg), *REPORTS["billing"]]) == 1
    err = capsys.readouterr().err
    assert "retention policy not found: weekly" in err
    assert "storage.retention_policy ('weekly')" in err


def test_customers_without_daily_figures_says_why_and_how_they_are_made(
    tmp_path: Path, empty_influx1: InfluxDB1, capsys: pytest.CaptureFixture[str]
) -> None:
    empty_influx1.create_database("meters")
    cfg = _config(tmp_path, empty_influx1)
    assert main(["report", "customers", "-c", str(cfg), *REPORTS["customers"]]) == 0
    out, err = capsys.readouterr()
    assert "no customer tagged" in out
    assert "no daily figures (measurement meter_daily) in the database for 2026-01-01" in err
    assert "high_standby, night_heavy and peak_contributor need them" in err
    assert "once the day has ended and daily.settle_s have passed" in err
