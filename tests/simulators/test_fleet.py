"""The fleet engine without a network: determinism, scale, energy, topology, time window."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from meter_gateway.simulators.faults import Outage
from meter_gateway.simulators.fleet import Fleet, default_start
from meter_gateway.simulators.meter import STEP_S
from meter_gateway.simulators.scenario import Scenario, load_scenario
from meter_gateway.simulators.topology import CSV_HEADER, build_topology, write_csv

EXAMPLE = Path(__file__).parents[2] / "simulators" / "scenarios" / "example.yaml"


def _wire(fleet: Fleet) -> tuple[list[tuple[float, str, bytes]], list[dict[str, Any]]]:
    msgs, truth = [], []
    for step in fleet.steps():
        msgs += [(m.t, m.topic, m.payload) for m in step.messages]
        truth += step.truth
    return msgs, truth


def test_same_seed_same_payloads_byte_for_byte() -> None:
    scenario = load_scenario(EXAMPLE)
    # A day, so that the rate-driven faults of the example fire too.
    a_msgs, a_truth = _wire(Fleet(scenario, duration="1d"))
    b_msgs, b_truth = _wire(Fleet(scenario, duration="1d"))
    assert len(a_msgs) > 1000
    assert a_msgs == b_msgs
    assert a_truth == b_truth
    assert any(t["type"] == "malformed" and t["scope"] == "meter" for t in a_truth)
    other, _ = _wire(Fleet(scenario, duration="1d", seed=8))
    assert [p for *_, p in other] != [p for *_, p in a_msgs]


@pytest.mark.slow
@pytest.mark.timeout(60)  # the acceptance bound: a simulated day of 1,000 meters in a minute
def test_a_day_of_1000_meters_and_registers_match_the_integral_of_power(
    record_property: Any,
) -> None:
    t0 = time.perf_counter()
    fleet = Fleet(meters=1000, seed=1, interval_s=900, start="2026-11-20T00:00:00Z", duration="1d")
    first: dict[str, dict[str, Any]] = {}
    last: dict[str, dict[str, Any]] = {}
    count = 0
    for step in fleet.steps():
        for m in step.messages:
            if m.kind == "reading":
                r = orjson.loads(m.payload)
                first.setdefault(r["meter_id"], r)
                last[r["meter_id"]] = r
                count += 1
    record_property("generation_s", round(time.perf_counter() - t0, 2))
    assert count == 1000 * 97  # 00:00 .. 24:00 inclusive
    assert len(last) == 1000
    for meter_id, model in fleet.meters.items():
        # Power is piecewise constant per step: the integral is the sum over the steps.
        joules = sum(
            max(model.power_w(fleet.start + k * STEP_S), 0.0) * STEP_S
            for k in range(86_400 // STEP_S)
        )
        delta = last[meter_id]["energy_import_kwh"] - first[meter_id]["energy_import_kwh"]
        assert delta == pytest.approx(joules / 3.6e6, rel=1e-3), meter_id
        assert last[meter_id]["ts"] == "2026-11-21T00:00:00Z"


def test_concentrators_batch_their_transformer_and_the_rest_publish_directly() -> None:
    fleet = Fleet(meters=6, meters_per_transformer=2, concentrators=2, seed=1,
                  start="2026-11-20T00:00:00Z", duration="15m")  # fmt: skip
    msgs, _ = _wire(fleet)
    topics = {topic for _, topic, _ in msgs}
    assert topics == {
        "concentrators/dc-01/readings", "concentrators/dc-02/readings",
        "meters/m-000005/reading", "meters/m-000006/reading",
        "meters/m-000005/status", "meters/m-000006/status",
    }  # fmt: skip
    batch = next(p for _, t, p in msgs if t == "concentrators/dc-02/readings")
    parsed = orjson.loads(batch)
    assert list(parsed) == ["concentrator_id", "readings"]
    assert [r["meter_id"] for r in parsed["readings"]] == ["m-000003", "m-000004"]
    assert batch == orjson.dumps(parsed)  # same bytes as orjson would produce


def test_status_online_once_at_start_for_direct_meters() -> None:
    msgs, _ = _wire(Fleet(meters=3, seed=1, start="2026-11-20T00:00:00Z", duration="1h"))
    status = [(topic, p) for _, topic, p in msgs if topic.endswith("/status")]
    assert status == [(f"meters/m-00000{i}/status", b"online") for i in (1, 2, 3)]


def test_messages_come_in_simulated_time_order() -> None:
    msgs, _ = _wire(Fleet(load_scenario(EXAMPLE)))
    times = [t for t, *_ in msgs]
    assert times == sorted(times)
    assert min(times) == load_scenario(EXAMPLE).fleet.start.timestamp()  # type: ignore[union-attr]


def test_default_start_keeps_a_fast_run_inside_the_gateway_window() -> None:
    now = 1_795_700_123.0
    start = default_start(900, 86_400, now=now)
    assert start % 900 == 0
    assert now - 86_400 - 900 < start <= now - 86_400
    fleet = Fleet(meters=1, duration="1d")
    assert fleet.end is not None
    assert time.time() - 7 * 86_400 < fleet.start
    assert fleet.end <= time.time() + 300


def test_topology_csv_is_what_the_gateway_loads(tmp_path: Path) -> None:
    from meter_gateway.config.topology import load_topology

    topo = build_topology(60, seed=3, meters_per_transformer=20, transformers_per_feeder=2,
                          prosumer_share=0.5)  # fmt: skip
    path = tmp_path / "topology.csv"
    write_csv(topo, path)
    assert path.read_text().splitlines()[0] == ",".join(CSV_HEADER)
    places = load_topology(path)
    assert len(places) == 60
    assert places["m-000021"].transformer_id == "tx-002"
    assert places["m-000041"].feeder_id == "f-02"
    assert {p.prosumer for p in places.values()} == {True, False}
    assert places["m-000001"].phases == topo.sites["m-000001"].phases


def test_too_many_concentrators_is_explained() -> None:
    with pytest.raises(ValueError, match="3 concentrators but only 1 transformers"):
        Fleet(meters=5, concentrators=3)


def test_overlapping_outages_send_one_last_gasp_and_one_restore() -> None:
    scenario = Scenario(
        faults=[
            Outage(transformer="tx-001", at="1h", duration="1h"),
            Outage(meters=["m-000001"], at="1h30m", duration="1h"),
        ]
    )
    msgs, truth = _wire(Fleet(scenario, meters=2, seed=1, start="2026-11-20T00:00:00Z",
                              duration="4h"))  # fmt: skip
    events = [orjson.loads(p) for _, t, p in msgs if t == "meters/m-000001/event"]
    assert [(e["type"], e["ts"][11:16]) for e in events] == [
        ("last_gasp", "01:00"),
        ("power_restored", "02:30"),
    ]
    assert len(truth) == 2


def test_a_fleet_runs_once() -> None:
    fleet = Fleet(meters=1, seed=1, start="2026-11-20T00:00:00Z", duration="15m")
    assert sum(1 for _ in fleet.steps()) == 2
    with pytest.raises(RuntimeError, match="already run"):
        next(fleet.steps())


def test_transformer_outages_at_a_rate_take_whole_transformers_down() -> None:
    scenario = Scenario(
        faults=[Outage(transformer="tx-002", rate_per_day=3, duration="20m", last_gasp=True)]
    )
    _, truth = _wire(Fleet(scenario, meters=6, meters_per_transformer=3, seed=2, duration="3d"))
    assert 2 <= len(truth) <= 25  # about 9 expected in 3 days
    assert all(r["meters"] == ["m-000004", "m-000005", "m-000006"] for r in truth)
    assert all(r["scope"] == "transformer" for r in truth)


def test_readings_held_out_of_order_are_delivered_when_the_run_ends() -> None:
    from meter_gateway.simulators.faults import OutOfOrder

    scenario = Scenario(faults=[OutOfOrder(meters=["m-000001"], at="30m", duration="2h")])
    msgs, _ = _wire(Fleet(scenario, meters=1, seed=2, start="2026-11-20T00:00:00Z",
                          duration="1h", status_online=False))  # fmt: skip
    stamps = [orjson.loads(p)["ts"][11:16] for *_, p in msgs]
    assert stamps == ["00:00", "00:15", "01:00", "00:45", "00:30"]
