"""IEEE 1366 indices (gateway/reports): a hand-computed example, edge cases, the output.

The worked example (EXAMPLE_*; the integration test stores the same events in InfluxDB).
Window 2026-01-01T00:00Z to 2026-01-02T00:00Z, momentary < 300 s, CEMI3.

Topology: 10 customers.
  feeder F1: transformer T1 = m1..m4 (c1..c4), T2 = m5, m6 (c5, c6)      -> 6 customers
  feeder F2: transformer T3 = m7 (c7), m8 (c8), m9 (no customer_id: its own customer
             "meter:m9"), m10 and m11 (both c10)                        -> 4 customers
Outages (seconds after 00:00; duration in s):
  A  m1  3600 +1800  sustained 30 min (delivered twice: one outage)
  B  m2  3600 +1800  sustained 30 min
  C  m1  7200 +60    momentary
  D  m1 10000 +600   sustained 10 min
  E  m1 20000 +600   sustained 10 min
  F  m1 30000 +600   sustained 10 min      -> c1: 4 sustained, 60 min: in CEMI3 (> 3)
  G  m3 -1200 +2400  began before --from: only its clear is stored (00:20); sustained
                     (40 min long), counts 20 min (from --from)
  H  m5 40000 +120   momentary
  I  m7 85800, never cleared: open at --to; sustained (900 s by the data read up to
                     --to + 300 s), counts 10 min (up to --to)
  J  m10 50000 +1200 and m11 50600 +1200: one customer (c10), overlapping: one
                     interruption 50000..51800, 30 min
  K  m9 60000 +30 and 60100 +30: two momentary
  L  m12 (not in the topology) 3600 +1800: left out, reported as unknown
  M  m8 -5000 +1000 (over before --from) and 86500 +600 (after --to): not counted
Hand computation:
  F1: sustained CI = c1 4 + c2 1 + c3 1 = 6; CMI = 60 + 30 + 20 = 110; momentary 2 (C, H)
      SAIFI 6/6 = 1; SAIDI 110/6 min; CAIDI 110/6 min; MAIFI 2/6; CEMI3 1/6
  F2: CI = I + J = 2; CMI = 10 + 30 = 40; momentary 2 (K)
      SAIFI 2/4 = 0.5; SAIDI 40/4 = 10 min; CAIDI 40/2 = 20 min; MAIFI 2/4 = 0.5; CEMI3 0
  SYSTEM: CI 8, CMI 150, 10 customers: SAIFI 0.8, SAIDI 15 min, CAIDI 18.75 min,
          MAIFI 0.4, CEMI3 0.1 (c1)
  by transformer: T1 (4 customers) CI 6, CMI 110, momentary 1 (C): SAIFI 1.5, SAIDI 27.5;
                  T2 (2) nothing sustained: SAIFI 0, CAIDI undefined, MAIFI 0.5 (H);
                  T3 = F2.
(No published IEEE 1366 worked example was at hand to copy; this one is built so that
every rule above is exercised once.)
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from meter_gateway.config.topology import MeterPlace
from meter_gateway.gateway.cli import main
from meter_gateway.gateway.events.event import Event, event_id
from meter_gateway.gateway.reports.cli import parse_time
from meter_gateway.gateway.reports.reliability import (
    EventPoint,
    MeterOutage,
    Window,
    compute,
    pair_points,
)
from meter_gateway.gateway.reports.render import render
from meter_gateway.gateway.reports.source import (
    flux_queries,
    influxql_queries,
    read_points,
)
from meter_gateway.storage.influxdb.config import StorageConfig
from meter_gateway.storage.influxdb.query import QueryError

NS = 1_000_000_000
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
DAY = 86_400
WINDOW = Window(T0, T0 + DAY)
READ_UNTIL = T0 + DAY + 300

EXAMPLE_TOPOLOGY_CSV = """\
meter_id,transformer_id,feeder_id,customer_id
m1,T1,F1,c1
m2,T1,F1,c2
m3,T1,F1,c3
m4,T1,F1,c4
m5,T2,F1,c5
m6,T2,F1,c6
m7,T3,F2,c7
m8,T3,F2,c8
m9,T3,F2,
m10,T3,F2,c10
m11,T3,F2,c10
"""

# (meter, start s after T0, duration s or None for open, store the raise)
EXAMPLE_OUTAGES: list[tuple[str, int, int | None, bool]] = [
    ("m1", 3600, 1800, True),  # A
    ("m2", 3600, 1800, True),  # B
    ("m1", 7200, 60, True),  # C
    ("m1", 10000, 600, True),  # D
    ("m1", 20000, 600, True),  # E
    ("m1", 30000, 600, True),  # F
    ("m3", -1200, 2400, False),  # G: the raise is not stored (before the data read)
    ("m5", 40000, 120, True),  # H
    ("m7", 85800, None, True),  # I
    ("m10", 50000, 1200, True),  # J
    ("m11", 50600, 1200, True),  # J
    ("m9", 60000, 30, True),  # K
    ("m9", 60100, 30, True),  # K
    ("m12", 3600, 1800, True),  # L
    ("m8", -5000, 1000, True),  # M
    ("m8", 86500, 600, True),  # M
]


def example_topology() -> dict[str, MeterPlace]:
    rows = csv.DictReader(io.StringIO(EXAMPLE_TOPOLOGY_CSV))
    return {
        r["meter_id"]: MeterPlace(
            r["meter_id"], r["transformer_id"], r["feeder_id"], r["customer_id"] or None
        )
        for r in rows
    }


def example_events() -> list[Event]:
    """The events as the detectors emit them (raise, then clear), duplicates included."""
    topo = example_topology()
    out: list[Event] = []
    for meter, start, duration, with_raise in EXAMPLE_OUTAGES:
        place = topo.get(meter)
        subject = {"meter_id": meter}
        if place is not None:
            subject |= {"transformer_id": place.transformer_id, "feeder_id": place.feeder_id}
        start_ns = (T0 + start) * NS
        eid = event_id("power_outage", meter, start_ns)
        base = dict(type="power_outage", severity="critical", subject=subject, event_id=eid)
        if with_raise:
            out.append(Event(state="raised", start_ns=start_ns, detected_ns=start_ns, **base))
        if duration is not None:
            end_ns = start_ns + duration * NS
            out.append(
                Event(
                    state="cleared",
                    start_ns=start_ns,
                    detected_ns=end_ns,
                    cleared_ns=end_ns,
                    **base,
                )
            )
    return out + out[:2]  # A's raise and clear delivered twice


def points_of(events: list[Event]) -> list[EventPoint]:
    """What the database gives back for `event_line(ev, precision s)`."""
    pts = []
    for ev in events:
        at = ev.start_ns // NS
        if ev.cleared_ns is not None:
            at = max(ev.cleared_ns // NS, at + 1)
        pts.append(EventPoint(at, ev.subject["meter_id"], ev.state, ev.event_id, ev.duration_s))
    return pts


def example_report(by: str = "feeder"):
    return compute(
        pair_points(points_of(example_events())),
        example_topology(),
        WINDOW,
        by=by,  # type: ignore[arg-type]
        momentary_max_s=300,
        cemi_n=3,
        observed_until_s=READ_UNTIL,
    )


# -- the worked example ----------------------------------------------------------------------


def test_worked_example_by_feeder() -> None:
    report = example_report()
    f1, f2 = report.groups
    assert (f1.name, f1.customers_served, f2.name, f2.customers_served) == ("F1", 6, "F2", 4)
    assert (f1.customer_interruptions, f1.customer_minutes, f1.momentary_interruptions) == (
        6,
        110,
        2,
    )
    assert (f1.saifi, f1.saidi, f1.caidi, f1.maifi, f1.cemi) == (1, 110 / 6, 110 / 6, 2 / 6, 1 / 6)
    assert (f2.saifi, f2.saidi, f2.caidi, f2.maifi, f2.cemi) == (0.5, 10, 20, 0.5, 0)
    s = report.system
    assert (s.customers_served, s.customer_interruptions, s.customer_minutes) == (10, 8, 150)
    assert (s.saifi, s.saidi, s.caidi, s.maifi, s.cemi) == (0.8, 15, 18.75, 0.4, 0.1)
    [c1] = report.cemi
    assert (c1.customer_id, c1.sustained, c1.minutes, c1.meter_ids, c1.groups) == (
        "c1",
        4,
        60,
        ("m1",),
        ("F1",),
    )
    assert report.unknown_meters == ["m12"]
    assert report.open_outages == 1  # I


def test_worked_example_by_transformer() -> None:
    t1, t2, t3 = example_report("transformer").groups
    assert (t1.name, t1.customers_served, t1.saifi, t1.saidi, t1.maifi) == (
        "T1",
        4,
        1.5,
        27.5,
        0.25,
    )
    assert (t2.name, t2.saifi, t2.saidi, t2.caidi, t2.maifi) == ("T2", 0, 0, None, 0.5)
    assert (t3.name, t3.saifi, t3.saidi, t3.caidi, t3.maifi) == ("T3", 0.5, 10, 20, 0.5)


def test_cemi_threshold_is_more_than_n() -> None:
    def cemi(n: int) -> list[str]:
        outs = pair_points(points_of(example_events()))
        report = compute(outs, example_topology(), WINDOW, cemi_n=n, observed_until_s=READ_UNTIL)
        return [c.customer_id for c in report.cemi]

    assert cemi(4) == []
    assert cemi(0) == ["c1", "c10", "c2", "c3", "c7"]  # most interruptions first, then minutes


# -- pairing ---------------------------------------------------------------------------------


def test_pairing_deduplicates_and_uses_duration_field() -> None:
    pts = [
        EventPoint(100, "m1", "raised", "e1"),
        EventPoint(100, "m1", "raised", "e1"),  # redelivered
        EventPoint(101, "m1", "cleared", "e1", 0.2),  # same second: written one unit later
        EventPoint(500, "m2", "cleared", "e2", 400.0),  # raise not read
        EventPoint(600, "m3", "cleared", "e3"),  # no duration_s, no raise
        EventPoint(700, "m4", "raised", "e4"),
    ]
    assert pair_points(pts) == [
        MeterOutage("m1", "e1", 100, 100.2),
        MeterOutage("m2", "e2", 100, 500),
        MeterOutage("m3", "e3", 600, 600),
        MeterOutage("m4", "e4", 700, None),
    ]


def test_open_outage_shorter_than_momentary_counts_momentary() -> None:
    topo = {"m1": MeterPlace("m1", "T1", "F1", "c1")}
    outs = [MeterOutage("m1", "e", WINDOW.to_s - 100, None)]
    report = compute(outs, topo, WINDOW, observed_until_s=WINDOW.to_s)
    assert (report.system.customer_interruptions, report.system.momentary_interruptions) == (0, 1)


# -- edge cases ------------------------------------------------------------------------------


def test_no_interruptions_gives_zero_and_undefined_caidi() -> None:
    report = compute([], example_topology(), WINDOW)
    s = report.system
    assert (s.saifi, s.saidi, s.caidi, s.maifi, s.cemi) == (0, 0, None, 0, 0)
    assert "SYSTEM" in render(report, "table")
    doc = json.loads(render(report, "json"))
    assert doc["system"]["caidi_min"] is None
    rows = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert rows[-1]["feeder"] == "SYSTEM"
    assert rows[-1]["caidi_min"] == ""


def test_no_customers_served() -> None:
    outs = [MeterOutage("m1", "e", T0 + 10, T0 + 1000)]
    report = compute(outs, {}, WINDOW)
    s = report.system
    assert (s.customers_served, s.saifi, s.saidi, s.caidi, s.maifi, s.cemi) == (
        0,
        None,
        None,
        None,
        None,
        None,
    )
    assert report.unknown_meters == ["m1"]
    table = render(report, "table")
    assert "SYSTEM" in table
    assert table.splitlines()[-3].split()[-5:] == ["-"] * 5


# -- output ----------------------------------------------------------------------------------


def test_outputs_agree() -> None:
    report = example_report()
    doc = json.loads(render(report, "json"))
    assert doc["system"]["saifi"] == 0.8
    assert doc["system"]["saidi_min"] == 15
    assert doc["system"]["caidi_min"] == 18.75
    assert doc["system"]["maifi"] == 0.4
    assert doc["cemi"]["share"] == 0.1
    assert [c["customer_id"] for c in doc["cemi"]["customers"]] == ["c1"]
    assert [g["group"] for g in doc["groups"]] == ["F1", "F2"]
    rows = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert [r["feeder"] for r in rows] == ["F1", "F2", "SYSTEM"]
    assert rows[1]["saidi_min"] == "10.0"
    assert rows[2]["caidi_min"] == "18.75"
    table = render(report, "table").splitlines()
    system = next(line for line in table if line.startswith("SYSTEM"))
    assert system.split() == ["SYSTEM", "10", "8", "150", "4", "0.8", "15", "18.75", "0.4", "0.1"]
    # Aligned: every row of the table as wide as its header.
    header = next(i for i, line in enumerate(table) if line.startswith("feeder"))
    assert len({len(line) for line in table[header : header + 4]}) == 1


# -- times and queries -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "epoch"),
    [
        ("2026-01-01", T0),
        ("2026-01-01T06:00:00Z", T0 + 21600),
        ("2026-01-01T07:00:00+01:00", T0 + 21600),
        ("2026-01-01T06:00:00", T0 + 21600),  # no offset: UTC
    ],
)
def test_parse_time(text: str, epoch: int) -> None:
    assert parse_time(text).timestamp() == epoch


def test_influxql_queries() -> None:
    main_q, before_q = influxql_queries(WINDOW, READ_UNTIL, rp="autogen")
    lo, hi = T0 * NS, READ_UNTIL * NS
    assert main_q == (
        'SELECT "state", "event_id", "duration_s" FROM "autogen"."meter_event" '
        f"WHERE \"type\" = 'power_outage' AND time >= {lo} AND time < {hi} "
        'GROUP BY "meter_id"'
    )
    assert before_q == (
        'SELECT last("state") AS "state", "event_id", "duration_s" FROM "autogen"."meter_event" '
        f'WHERE "type" = \'power_outage\' AND time < {lo} GROUP BY "meter_id"'
    )


def test_flux_queries() -> None:
    """v2 is not tested against a server: VictoriaMetrics (the v2 test service) has no Flux."""
    main_q, before_q = flux_queries(WINDOW, READ_UNTIL, 'my "bucket"')
    assert main_q.startswith('from(bucket: "my \\"bucket\\"")\n')
    assert "|> range(start: 2026-01-01T00:00:00Z, stop: 2026-01-02T00:05:00Z)" in main_q
    assert 'r._measurement == "meter_event" and r.type == "power_outage"' in main_q
    assert 'pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")' in main_q
    assert "range(start: 1970-01-01T00:00:00Z, stop: 2026-01-01T00:00:00Z)" in before_q
    assert before_q.rstrip().endswith('|> last(column: "_time")')


# -- the command's errors --------------------------------------------------------------------


def _config(tmp_path: Path, topology: str | None, url: str = "http://127.0.0.1:9") -> Path:
    lines = [
        f"gateway:\n  data_dir: {tmp_path / 'var'}",
        f"storage:\n  api: v1\n  url: {url}\n  timeout_s: 2",
    ]
    if topology is not None:
        lines.append(f"topology:\n  file: {topology}")
    path = tmp_path / "gateway.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_topology_unset_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path, None)
    argv = ["report", "reliability", "-c", str(cfg), "--from", "2026-01-01", "--to", "2026-01-02"]
    assert main(argv) == 2
    assert "topology.file is not set" in capsys.readouterr().err


def test_database_unreachable_names_the_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topo = tmp_path / "topology.csv"
    topo.write_text(EXAMPLE_TOPOLOGY_CSV)
    cfg = _config(tmp_path, str(topo))
    argv = ["report", "reliability", "-c", str(cfg), "--from", "2026-01-01", "--to", "2026-01-02"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "cannot reach the database at http://127.0.0.1:9" in err
    assert "storage.url" in err


def test_database_unreachable_v2_names_the_url() -> None:
    cfg = StorageConfig(api="v2", url="http://127.0.0.1:9", token="t", org="o", timeout_s=2)
    with pytest.raises(QueryError, match=r"cannot reach the database at http://127.0.0.1:9"):
        read_points(cfg, WINDOW, READ_UNTIL)


def test_bad_times_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, None)
    with pytest.raises(SystemExit):
        main(["report", "reliability", "-c", str(cfg), "--from", "yesterday", "--to", "2026-01-02"])
    assert "not an RFC 3339 time or a date" in capsys.readouterr().err
    argv = ["report", "reliability", "-c", str(cfg), "--from", "2026-01-02", "--to", "2026-01-01"]
    assert main(argv) == 2
