"""`meter-gateway report reliability` over the demo's stored events, recomputed by hand.

The demo runs a simulated day of 30 meters into a real InfluxDB 1.x (the test's own,
left running), then the report command it prints is run with `--format json`. Its
indices are recomputed here from two independent sources:

1. the `power_outage` points the gateway stored, read with plain InfluxQL and paired
   raise / clear by `event_id` in this file;
2. the simulator's ground truth (`truth.jsonl`): the outages it injected, per meter,
   in simulated time.

The outages the gateway can see are those with a last gasp (`power_outage` raised at
once, cleared by `power_restored`). The example's m-000012 outage has none, only an
MQTT last will `offline`: the gateway calls that a power outage after
`offline_after_s` (90 s) of silence on its own clock, and the demo's day passes in
seconds, so the meter is back (`online`) long before. Silence-based detection never
happens in the demo; that outage is left out of the expected set, and the test checks
the gateway indeed stored nothing for it.

Every meter is its own customer in the demo's topology (checked), and a meter's
outages do not overlap (checked), so a customer's interruptions are its meter's
outages: no merging. Every outage lies inside the simulated day (checked), so no
clipping to the window either. Arithmetic, with N customers served, M = 300 s:

    sustained: length >= M     SAIFI = sustained / N      SAIDI = minutes / N
    CAIDI = minutes / sustained    MAIFI = momentary / N    CEMIn = customers > n / N
"""

from __future__ import annotations

import csv
import itertools
import json
import shlex
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from meter_gateway.gateway.cli import main
from meter_gateway.simulators.demo import run_demo
from meter_gateway.simulators.services import InfluxDB1
from meter_gateway.simulators.truth import read_truth

pytestmark = pytest.mark.integration

MOMENTARY_S = 300.0  # events.momentary_max_s: the demo's configuration keeps the default
TOLERANCE = 6e-5  # the report rounds to 4 decimals


class Outage(NamedTuple):
    meter_id: str
    start_s: float
    end_s: float

    @property
    def length_s(self) -> float:
        return self.end_s - self.start_s


def _stored_outages(db: InfluxDB1) -> list[Outage]:
    """The gateway's `power_outage` points, raise and clear paired by event_id."""
    rows = db.query(
        'SELECT "state", "event_id", "duration_s" FROM "meter_event" '
        'WHERE "type" = \'power_outage\' GROUP BY "meter_id"',
        epoch="s",
    )
    raises = {r["event_id"]: r for r in rows if r["state"] == "raised"}
    clears = {r["event_id"]: r for r in rows if r["state"] == "cleared"}
    assert len(raises) + len(clears) == len(rows)  # one point each, nothing else
    assert raises.keys() == clears.keys(), "an outage without its raise or its clear"
    out = []
    for eid, r in raises.items():
        c = clears[eid]
        assert c["meter_id"] == r["meter_id"]
        # The clear's duration_s is its length; its own point is at raise + duration.
        assert c["time"] == r["time"] + c["duration_s"], (r, c)
        out.append(Outage(r["meter_id"], r["time"], r["time"] + c["duration_s"]))
    return sorted(out)


def _truth_outages(truth: list[dict[str, Any]]) -> tuple[list[Outage], set[str]]:
    """Per meter, the injected outages with a last gasp; and the meters of those without."""
    seen: list[Outage] = []
    unseen: set[str] = set()
    for t in truth:
        if t["type"] != "outage":
            continue
        if t["params"]["last_gasp"]:
            seen += [Outage(m, t["start_s"], t["end_s"]) for m in t["meters"]]
        else:
            unseen.update(t["meters"])
    return sorted(seen), unseen


def _by_hand(
    name: str, customers: set[str], outages: list[Outage], customer_of: dict[str, str], n: int
) -> dict[str, Any]:
    """One row of the report, from the customers served and their meters' outages."""
    mine = [o for o in outages if customer_of[o.meter_id] in customers]
    sustained = [o for o in mine if o.length_s >= MOMENTARY_S]
    momentary = len(mine) - len(sustained)
    minutes = sum(o.length_s for o in sustained) / 60
    per_customer = Counter(customer_of[o.meter_id] for o in sustained)
    served = len(customers)
    return {
        "group": name,
        "customers_served": served,
        "customer_interruptions": len(sustained),
        "customer_minutes": minutes,
        "momentary_interruptions": momentary,
        "saifi": len(sustained) / served,
        "saidi_min": minutes / served,
        "caidi_min": minutes / len(sustained) if sustained else None,
        "maifi": momentary / served,
        "cemi": sum(k > n for k in per_customer.values()) / served,
    }


def _assert_row(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        if value is None or isinstance(value, str | int):
            assert got[key] == value, (want["group"], key, got)
        else:
            assert got[key] == pytest.approx(value, abs=TOLERANCE), (want["group"], key, got)


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def test_report_reliability_over_the_demo_matches_the_hand_count_and_the_truth(
    tmp_path: Path, influx1: InfluxDB1, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = await run_demo(tmp_path, duration=10, meters=30, modbus_meters=1, seed=3, influxdb=influx1)
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "cut short" not in err, "the machine was too slow to simulate the whole day\n" + err
    # The command the summary prints, run as printed (plus JSON and the CEMI n below).
    line = next(x for x in err.splitlines() if "meter-gateway report reliability" in x)
    argv = shlex.split(line.split("meter-gateway ", 1)[1])
    assert argv[:4] == ["report", "reliability", "-c", str(tmp_path / "gateway.yaml")]
    from_s, to_s = _ts(argv[argv.index("--from") + 1]), _ts(argv[argv.index("--to") + 1])
    assert to_s - from_s == 86_400  # the simulated day

    with (tmp_path / "topology.csv").open(newline="") as f:
        topology = list(csv.DictReader(f))
    customer_of = {r["meter_id"]: r["customer_id"] for r in topology}
    assert len(set(customer_of.values())) == len(customer_of) == 30  # one meter, one customer
    transformers: dict[str, set[str]] = {}
    for r in topology:
        transformers.setdefault(r["transformer_id"], set()).add(r["customer_id"])

    # 1. What the gateway stored, against what the simulator did.
    stored = _stored_outages(influx1)
    expected, unseen = _truth_outages(read_truth(tmp_path / "truth.jsonl"))
    assert unseen == {"m-000012"}  # the example's outage without a last gasp ...
    assert not unseen & {o.meter_id for o in stored}  # ... which the gateway cannot see
    assert stored == expected  # every seen outage, to the second, and nothing else
    for a, b in itertools.pairwise(stored):
        assert a.meter_id != b.meter_id or a.end_s <= b.start_s  # a meter's do not overlap
    assert all(from_s <= o.start_s and o.end_s < to_s for o in stored)  # inside the window
    sustained_truth = Counter(
        customer_of[o.meter_id] for o in expected if o.length_s >= MOMENTARY_S
    )
    assert sum(sustained_truth.values()) > 0
    assert any(o.length_s < MOMENTARY_S for o in expected)  # MAIFI has something to count
    # transformer_outage points are stored too, and must not count a second time.
    assert influx1.query(
        'SELECT count("state") FROM "meter_event" WHERE "type" = \'transformer_outage\''
    )[0]["count"]

    # CEMIn with n one below the most interruptions: the most interrupted customers.
    most = max(sustained_truth.values())
    n = most - 1
    most_interrupted = sorted(c for c, k in sustained_truth.items() if k == most)
    assert 0 < len(most_interrupted) < len(sustained_truth)  # some stand out

    assert main([*argv, "--format", "json", "--cemi", str(n)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["by"], doc["momentary_max_s"]) == ("transformer", MOMENTARY_S)
    assert (doc["unknown_meters"], doc["open_outages"]) == ([], 0)

    # 2. The indices, by hand from the stored events.
    assert [g["group"] for g in doc["groups"]] == sorted(transformers)
    for got in doc["groups"]:
        name = got["group"]
        _assert_row(got, _by_hand(name, transformers[name], stored, customer_of, n))
    system = _by_hand("SYSTEM", set(customer_of.values()), stored, customer_of, n)
    _assert_row(doc["system"], system)
    # ... and the sustained count straight from the truth log.
    assert doc["system"]["customer_interruptions"] == sum(sustained_truth.values())

    # 3. CEMIn: exactly the customers the simulator interrupted most.
    assert doc["cemi"]["n"] == n
    assert doc["cemi"]["share"] == pytest.approx(len(most_interrupted) / 30, abs=TOLERANCE)
    listed = doc["cemi"]["customers"]
    assert sorted(c["customer_id"] for c in listed) == most_interrupted
    meter_of = {c: m for m, c in customer_of.items()}
    for c in listed:
        mine = [o for o in expected if o.meter_id == meter_of[c["customer_id"]]]
        assert c["sustained_interruptions"] == most
        assert c["meter_ids"] == [meter_of[c["customer_id"]]]
        assert c["minutes"] == pytest.approx(
            sum(o.length_s for o in mine if o.length_s >= MOMENTARY_S) / 60, abs=TOLERANCE
        )
