"""`meter-gateway report reliability` against a real InfluxDB 1.x.

The events of the hand-computed example in tests/unit/test_reliability.py (see its
docstring for the numbers) are written as the gateway writes them (`event_line`,
precision s), the raise-less clear of outage G and a `transformer_outage` (which must
not count) included, and every line twice (at-least-once delivery). The command's
table, CSV and JSON must give the hand-computed indices.

v2 (Flux) is covered only by the query-text unit test: the v2 test service,
VictoriaMetrics, keeps no string fields and has no Flux.
"""

from __future__ import annotations

import csv
import io
import json
import urllib.request
from pathlib import Path

import pytest

from meter_gateway.gateway.cli import main
from meter_gateway.gateway.events.event import Event, event_id, event_line
from meter_gateway.simulators.services import InfluxDB1
from tests.unit.test_reliability import EXAMPLE_TOPOLOGY_CSV, NS, T0, example_events

pytestmark = pytest.mark.integration


def _write(db: InfluxDB1, lines: list[str]) -> None:
    req = urllib.request.Request(
        f"{db.url}/write?db=meters&precision=s", data="\n".join(lines).encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 204


def _transformer_outage() -> Event:
    start = (T0 + 3600) * NS
    return Event(
        type="transformer_outage",
        state="raised",
        severity="critical",
        subject={"transformer_id": "T1", "feeder_id": "F1"},
        start_ns=start,
        detected_ns=start,
        event_id=event_id("transformer_outage", "T1", start),
    )


@pytest.fixture
def config(tmp_path: Path, influx1: InfluxDB1) -> Path:
    lines = [event_line(ev, NS) for ev in [*example_events(), _transformer_outage()]]
    _write(influx1, lines)
    _write(influx1, lines)  # redelivered
    topo = tmp_path / "topology.csv"
    topo.write_text(EXAMPLE_TOPOLOGY_CSV)
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"gateway:\n  data_dir: {tmp_path / 'var'}\n"
        f"storage:\n  api: v1\n  url: {influx1.url}\n  database: meters\n  precision: s\n"
        f"topology:\n  file: {topo}\n"
    )
    return path


def _run(config: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    argv = ["report", "reliability", "-c", str(config), "--from", "2026-01-01"]
    assert main([*argv, "--to", "2026-01-02T00:00:00Z", *extra]) == 0
    out, err = capsys.readouterr()
    assert "m12" in err  # the meter the topology does not know is named, and left out
    return out


def test_outages_open_as_the_window_begins(
    config: Path, influx1: InfluxDB1, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by the per-meter "last point before --from" query, clipped to the window.

    Window 2026-01-03. I (m7, raised 2026-01-01T23:50, never cleared) is open all day:
    1440 min. A new one of m6, 2026-01-02T12:00 to 2026-01-03T01:00, counts 60 min.
    SYSTEM: CI 2, CMI 1500, SAIFI 0.2, SAIDI 150, CAIDI 750.
    """
    start = (T0 + 86_400 + 43_200) * NS
    subject = {"meter_id": "m6", "transformer_id": "T2", "feeder_id": "F1"}
    base = dict(
        type="power_outage",
        severity="critical",
        subject=subject,
        start_ns=start,
        event_id=event_id("power_outage", "m6", start),
    )
    end = start + 13 * 3600 * NS
    _write(
        influx1,
        [
            event_line(Event(state="raised", detected_ns=start, **base), NS),
            event_line(Event(state="cleared", detected_ns=end, cleared_ns=end, **base), NS),
        ],
    )
    argv = ["report", "reliability", "-c", str(config), "--format", "json"]
    assert main([*argv, "--from", "2026-01-03", "--to", "2026-01-04"]) == 0
    system = json.loads(capsys.readouterr().out)["system"]
    assert (system["customer_interruptions"], system["customer_minutes"]) == (2, 1500)
    assert (system["saifi"], system["saidi_min"], system["caidi_min"]) == (0.2, 150, 750)


def test_report_formats_give_the_hand_computed_indices(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = json.loads(_run(config, capsys, "--format", "json"))
    system = doc["system"]
    assert (system["customers_served"], system["customer_interruptions"]) == (10, 8)
    assert (system["saifi"], system["saidi_min"], system["caidi_min"], system["maifi"]) == (
        0.8,
        15,
        18.75,
        0.4,
    )
    f1, f2 = doc["groups"]
    assert (f1["group"], f1["saifi"], f1["saidi_min"], f1["maifi"]) == ("F1", 1, 18.3333, 0.3333)
    assert (f2["group"], f2["saifi"], f2["saidi_min"], f2["caidi_min"]) == ("F2", 0.5, 10, 20)
    assert doc["cemi"]["share"] == 0.1
    assert [(c["customer_id"], c["sustained_interruptions"]) for c in doc["cemi"]["customers"]] == [
        ("c1", 4)
    ]
    assert doc["unknown_meters"] == ["m12"]

    rows = list(csv.DictReader(io.StringIO(_run(config, capsys, "--format", "csv"))))
    assert [(r["feeder"], r["saifi"], r["saidi_min"], r["caidi_min"]) for r in rows] == [
        ("F1", "1.0", "18.3333", "18.3333"),
        ("F2", "0.5", "10.0", "20.0"),
        ("SYSTEM", "0.8", "15.0", "18.75"),
    ]

    table = _run(config, capsys)
    system_row = next(line for line in table.splitlines() if line.startswith("SYSTEM"))
    assert system_row.split() == [
        "SYSTEM",
        "10",
        "8",
        "150",
        "4",
        "0.8",
        "15",
        "18.75",
        "0.4",
        "0.1",
    ]
    assert "c1  4 sustained, 60 min" in table


def test_report_by_transformer(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(_run(config, capsys, "--by", "transformer", "--format", "json"))
    got = {g["group"]: (g["saifi"], g["saidi_min"], g["caidi_min"]) for g in doc["groups"]}
    assert got == {"T1": (1.5, 27.5, 18.3333), "T2": (0, 0, None), "T3": (0.5, 10, 20)}
