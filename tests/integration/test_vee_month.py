"""A simulated month through `meter-gateway replay` into a real InfluxDB 1.x: estimates
and daily figures checked against an independent computation from the raw readings.

The scenario (simulators/scenarios/month.yaml): 200 meters at 15 minutes for 30 days
across the end of summer time in Europe/Berlin, with comms gaps back-filled at once,
back-filled a day after comms return (estimated first, then replaced), or never
(estimated for good). The file is generated and replayed once for the module.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import subprocess
import sys
from collections import defaultdict
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from meter_gateway.config.schema import Config
from meter_gateway.gateway.replay import Replay, ReplaySummary
from meter_gateway.simulators.services import InfluxDB1

pytestmark = pytest.mark.timeout(150)  # generating and replaying a month: about a minute

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "simulators" / "scenarios" / "month.yaml"
TZ = ZoneInfo("Europe/Berlin")
STEP = 900
FIRST_DAY, LAST_DAY = date(2026, 10, 5), date(2026, 11, 2)  # whole local days recorded
NIGHT = (23 * 3600, 7 * 3600)
MAX_LINEAR_S = 3 * 3600


class Month:
    """The replayed month: the database, the raw registers, the truth, the summary."""

    def __init__(self, db: InfluxDB1, folder: Path, summary: ReplaySummary) -> None:
        self.db = db
        self.folder = folder
        self.summary = summary
        self.raw: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)
        with (folder / "month.jsonl").open("rb") as f:
            for line in f:
                obj = orjson.loads(line)
                if "energy_import_kwh" not in obj:
                    continue
                ts = int(datetime.fromisoformat(obj["ts"]).timestamp())
                self.raw[obj["meter_id"]][ts] = (obj["energy_import_kwh"], obj["energy_export_kwh"])
        self.truth = [
            orjson.loads(x) for x in (folder / "month.truth.jsonl").read_bytes().split(b"\n") if x
        ]


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("month")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "meter_gateway.gateway.cli",
            "simulate",
            "replay-file",
            "--scenario",
            str(SCENARIO),
            "--out",
            str(folder / "month.jsonl"),
            "--quiet",
        ],
        check=True,
        cwd=folder,
    )
    with InfluxDB1(folder / "influxdb") as db:
        config = Config.model_validate(
            {
                "gateway": {
                    "id": "gw-month",
                    "data_dir": str(folder / "var"),
                    "timezone": "Europe/Berlin",
                },
                "storage": {
                    "api": "v1",
                    "url": db.url,
                    "database": "meters",
                    "batch_size": 5000,
                    "flush_interval_s": 0.2,
                },
                "topology": {"file": str(folder / "month.topology.csv")},
                "events": {"enabled": False},
            }
        )

        async def replay() -> ReplaySummary:
            # Built in the loop that runs it: its database session belongs to that loop.
            return await Replay(config).run([folder / "month.jsonl"])

        summary = asyncio.run(replay())
        yield Month(db, folder, summary)


# -- the independent computation ---------------------------------------------------------


def _grid(day: date) -> list[int]:
    start = int(datetime(day.year, day.month, day.day, tzinfo=TZ).timestamp())
    nxt = day + timedelta(days=1)
    end = int(datetime(nxt.year, nxt.month, nxt.day, tzinfo=TZ).timestamp())
    return list(range(start, end + 1, STEP))


def _register(
    raw: dict[int, tuple[float, float]], times: list[int], t: int
) -> tuple[float, bool] | None:
    """The import register at t: the reading there, else linear across a short gap."""
    if t in raw:
        return raw[t][0], True
    import bisect

    i = bisect.bisect_left(times, t)
    if i == 0 or i == len(times):
        return None
    a, b = times[i - 1], times[i]
    if b - a > MAX_LINEAR_S:
        return None
    ra, rb = raw[a][0], raw[b][0]
    return ra + (rb - ra) * (t - a) / (b - a), False


def expected_day(
    raw: dict[int, tuple[float, float]], times: list[int], day: date
) -> dict[str, float]:
    grid = _grid(day)
    regs = [_register(raw, times, t) for t in grid]
    energies, actual = [], 0
    night = 0.0
    peak, peak_t = -math.inf, 0
    for i in range(len(grid) - 1):
        r0, r1 = regs[i], regs[i + 1]
        assert r0 is not None, (day, grid[i])
        assert r1 is not None, (day, grid[i + 1])
        e = r1[0] - r0[0]
        energies.append(e)
        actual += r0[1] and r1[1]
        local = datetime.fromtimestamp(grid[i], TZ)
        sec = local.hour * 3600 + local.minute * 60
        if sec >= NIGHT[0] or sec < NIGHT[1]:
            night += e
        if e * 4 > peak:
            peak, peak_t = e * 4, grid[i]
    n = len(energies)
    total = sum(energies)
    lowest = sorted(e * 4 for e in energies)[: math.ceil(0.1 * n)]
    return {
        "intervals": n,
        "intervals_actual": actual,
        "energy_import_kwh": total,
        "peak_demand_kw": peak,
        "peak_demand_time": datetime.fromtimestamp(peak_t, TZ).isoformat(),
        "base_load_kw": sum(lowest) / len(lowest),
        "night_share": night / total,
        "load_factor": (total / (n / 4)) / peak,
        "completeness": actual / n,
    }


def report_config(month: Month) -> Path:
    """A configuration for the report commands: the month's database and topology."""
    config = month.folder / "gateway.yaml"
    config.write_text(
        "gateway: {timezone: Europe/Berlin}\n"
        f"storage: {{api: v1, url: '{month.db.url}', database: meters}}\n"
        f"topology: {{file: '{month.folder / 'month.topology.csv'}'}}\n"
    )
    return config


def _close(got: float, want: float) -> bool:
    return math.isclose(got, want, rel_tol=1e-3, abs_tol=1e-6)


# -- the checks ----------------------------------------------------------------------------


def test_daily_figures_match_an_independent_computation(month: Month) -> None:
    rows = month.db.query("SELECT * FROM meter_daily GROUP BY meter_id")
    got = {(r["meter_id"], r["date"]): r for r in rows}
    days = [FIRST_DAY + timedelta(days=i) for i in range((LAST_DAY - FIRST_DAY).days + 1)]
    assert len(month.raw) == 200
    checked = 0
    lengths = set()
    for meter_id, raw in month.raw.items():
        times = sorted(raw)
        for day in days:
            want = expected_day(raw, times, day)
            row = got.get((meter_id, day.isoformat()))
            assert row is not None, f"no meter_daily for {meter_id} {day}"
            for key, value in want.items():
                if isinstance(value, str):
                    assert row[key] == value, (meter_id, day, key)
                else:
                    assert _close(row[key], value), (meter_id, day, key, row[key], value)
            lengths.add(want["intervals"])
            checked += 1
    assert checked == 200 * len(days)
    assert lengths == {96, 100}  # 2026-10-25 has 25 hours in Berlin


def test_every_estimate_is_flagged_and_late_actuals_replace_them(month: Month) -> None:
    estimated = month.db.query(
        "SELECT energy_import_kwh, quality, estimation_method FROM meter_reading "
        "WHERE quality = 'estimated' GROUP BY meter_id"
    )
    never = [f for f in month.truth if f["params"]["backfill"] is False]
    assert never, "the scenario has gaps that are never back-filled"
    # Every slot of a gap never back-filled holds an estimate, linear (at most 2.5 h),
    # equal to the interpolation between the readings around it.
    # The last, unfinished day is not computed yet: its gaps are estimated when it is.
    until = _grid(LAST_DAY)[-1]
    want = set()
    for meter_id, raw in month.raw.items():
        times = sorted(raw)
        for a, b in itertools.pairwise(times):
            if b - a > STEP:
                want.update((meter_id, t) for t in range(a + STEP, b, STEP) if t < until)
    got = {(r["meter_id"], r["time"]): r for r in estimated}
    assert set(got) == want
    for (meter_id, t), r in got.items():
        assert r["estimation_method"] == "linear"
        value, is_actual = _register(month.raw[meter_id], sorted(month.raw[meter_id]), t)
        assert not is_actual
        assert _close(r["energy_import_kwh"], value)
    # The gaps back-filled a day late were estimated first (like day: 6 h), then the
    # actuals came: those points hold the actual values, flagged actual, no method.
    late = [f for f in month.truth if f["params"].get("backfill_after")]
    assert late
    assert month.summary.daily["estimates_replaced"] > 0
    for f in late:
        meter_id = f["meters"][0]
        rows = month.db.query(
            "SELECT energy_import_kwh, quality, estimation_method FROM meter_reading "
            f"WHERE meter_id = '{meter_id}' AND time > {int(f['start_s'])}s "
            f"AND time < {int(f['end_s'])}s"
        )
        assert rows
        for r in rows:
            assert r["quality"] == "actual", (meter_id, r)
            assert r["energy_import_kwh"] == month.raw[meter_id][r["time"]][0]
            assert not r.get("estimation_method")


def test_nothing_is_stored_twice(month: Month) -> None:
    readings = sum(len(raw) for raw in month.raw.values())
    estimates = month.db.query(
        "SELECT count(energy_import_kwh) FROM meter_reading WHERE quality = 'estimated'"
    )[0]["count"]
    total = month.db.query("SELECT count(energy_import_kwh) FROM meter_reading")[0]["count"]
    assert total == readings + estimates
    assert month.summary.accepted == readings


def test_billing_consumption_is_the_register_delta(month: Month) -> None:
    """`report billing` over three weeks across the end of summer time: per customer the
    registers' delta between the two local midnights, flagged where one is estimated."""
    import csv

    config = report_config(month)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "meter_gateway.gateway.cli",
            "report",
            "billing",
            "-c",
            str(config),
            "--from",
            "2026-10-12",
            "--to",
            "2026-10-31",
            "--format",
            "json",
        ],
        check=True,
        capture_output=True,
    )
    doc = orjson.loads(out.stdout)
    bounds = [_grid(date(2026, 10, 12))[0], _grid(date(2026, 10, 31))[0]]
    with (month.folder / "month.topology.csv").open() as f:
        customers: dict[str, list[str]] = defaultdict(list)
        for row in csv.DictReader(f):
            customers[row["customer_id"] or f"meter:{row['meter_id']}"].append(row["meter_id"])
    got = {c["customer_id"]: c for c in doc["customers"]}
    assert set(got) == set(customers)
    estimated = 0
    for customer, meters in customers.items():
        want, flagged = 0.0, False
        for m in meters:
            raw, times = month.raw[m], sorted(month.raw[m])
            regs = [_register(raw, times, t) for t in bounds]
            assert regs[0] is not None
            assert regs[1] is not None
            want += regs[1][0] - regs[0][0]
            flagged |= not (regs[0][1] and regs[1][1])
        assert got[customer]["import_kwh"] == pytest.approx(want, abs=2e-3), customer
        assert ("estimated" in got[customer]["flags"]) == flagged, customer
        assert set(got[customer]["flags"]) <= {"estimated"}, customer
        estimated += flagged
    assert estimated < len(customers)


def test_customer_tags_from_the_month(month: Month) -> None:
    """`report customers` over the month: every customer's mean base load is the mean of
    its meter's daily base loads recomputed here, and the top 10 % by mean daily peak
    are the peak contributors."""
    config = report_config(month)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "meter_gateway.gateway.cli",
            "report",
            "customers",
            "-c",
            str(config),
            "--from",
            FIRST_DAY.isoformat(),
            "--to",
            (LAST_DAY + timedelta(days=1)).isoformat(),
            "--format",
            "json",
        ],
        check=True,
        capture_output=True,
    )
    doc = orjson.loads(out.stdout)
    customers = {c["customer_id"]: c for c in doc["customers"]}
    days = [FIRST_DAY + timedelta(days=i) for i in range((LAST_DAY - FIRST_DAY).days + 1)]
    owner = {}
    import csv

    with (month.folder / "month.topology.csv").open() as f:
        for row in csv.DictReader(f):
            owner[row["meter_id"]] = row["customer_id"] or f"meter:{row['meter_id']}"
    peaks = {}
    for meter_id, raw in month.raw.items():
        times = sorted(raw)
        figs = [expected_day(raw, times, d) for d in days]
        c = customers[owner[meter_id]]
        base = sum(f["base_load_kw"] for f in figs) / len(figs)
        assert c["figures"]["mean_base_load_kw"] == pytest.approx(base, abs=1e-3), meter_id
        assert c["figures"]["days"] == len(days)
        peaks[owner[meter_id]] = sum(f["peak_demand_kw"] for f in figs) / len(figs)
    top = sorted(peaks, key=peaks.__getitem__, reverse=True)[: math.ceil(0.1 * len(peaks))]
    tagged = {c for c, v in customers.items() if "peak_contributor" in v["tags"]}
    assert tagged == set(top)
