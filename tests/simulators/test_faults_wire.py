"""Each fault type, as it arrives from a real mosquitto and as the ground-truth log records it.

Small fleets (4 three-phase household meters, tx-001 = m-000001/2, tx-002 = m-000003/4) run
3 simulated hours as fast as possible; a paho subscriber records what the broker delivers.
Where a fault changes the physics, the same fleet without the fault is generated in-process
to compare against: same seed, so every difference is the fault's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from meter_gateway.simulators.faults import (
    ClockDrift,
    CommsDropout,
    ConsumptionSpike,
    Duplicates,
    Malformed,
    Outage,
    OutOfOrder,
    PhaseLoss,
    RegisterReset,
    ReverseFlow,
    Theft,
    VoltageSag,
    VoltageSwell,
)
from meter_gateway.simulators.fleet import Fleet
from tests.simulators.conftest import SMALL_FLEET, Received

pytestmark = pytest.mark.integration

RunOnWire = Callable[..., tuple[list[Received], list[dict[str, Any]]]]


def ts(hhmm: str) -> str:
    return f"2026-11-26T{hhmm}:00Z"


def readings(msgs: list[Received], meter_id: str) -> list[dict[str, Any]]:
    """A meter's readings in arrival order, from its own topic and from concentrator batches."""
    out = []
    for m in msgs:
        if m.topic == f"meters/{meter_id}/reading":
            out.append(m.json())
        elif m.topic.startswith("concentrators/"):
            out += [r for r in m.json()["readings"] if r["meter_id"] == meter_id]
    return out


def by_ts(rs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["ts"]: r for r in rs}


def baseline(meter_id: str, **kw: Any) -> dict[str, dict[str, Any]]:
    """The meter's readings without any fault, generated in-process."""
    out: dict[str, dict[str, Any]] = {}
    for step in Fleet(**{**SMALL_FLEET, **kw}).steps():
        for m in step.messages:
            if m.topic == f"meters/{meter_id}/reading":
                r = orjson.loads(m.payload)
                out[r["ts"]] = r
    return out


def events(msgs: list[Received], meter_id: str) -> list[dict[str, Any]]:
    return [m.json() for m in msgs if m.topic == f"meters/{meter_id}/event"]


def statuses(msgs: list[Received], meter_id: str) -> list[bytes]:
    return [m.payload for m in msgs if m.topic == f"meters/{meter_id}/status"]


def only(truth: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(truth) == 1, truth
    return truth[0]


def test_outage_sends_last_gasp_then_silence_then_power_restored(run_on_wire: RunOnWire) -> None:
    msgs, truth = run_on_wire(faults=[Outage(meters=["m-000001"], at="1h", duration="30m")])
    assert events(msgs, "m-000001") == [
        {"ts": ts("01:00"), "type": "last_gasp", "meter_id": "m-000001"},
        {"ts": ts("01:30"), "type": "power_restored", "meter_id": "m-000001"},
    ]
    got = set(by_ts(readings(msgs, "m-000001")))
    assert {ts("01:00"), ts("01:15")}.isdisjoint(got)
    assert {ts("00:45"), ts("01:30")} <= got
    assert len(readings(msgs, "m-000002")) == 13  # the neighbour is unaffected
    assert statuses(msgs, "m-000001") == []  # no last will unless the scenario asks
    rec = only(truth)
    assert rec["type"] == "outage"
    assert rec["meters"] == ["m-000001"]
    assert (rec["start"], rec["end"]) == (ts("01:00"), ts("01:30"))
    # No power, no consumption: the register stands still across the outage.
    before, after = (
        by_ts(readings(msgs, "m-000001"))[ts("00:45")],
        by_ts(readings(msgs, "m-000001"))[ts("01:30")],
    )
    base = baseline("m-000001")
    assert after["energy_import_kwh"] - before["energy_import_kwh"] < (
        base[ts("01:30")]["energy_import_kwh"] - base[ts("00:45")]["energy_import_kwh"]
    )


def test_transformer_outage_takes_down_every_meter_behind_it(run_on_wire: RunOnWire) -> None:
    msgs, truth = run_on_wire(faults=[Outage(transformer="tx-001", at="1h10m", duration="50m")])
    for meter in ("m-000001", "m-000002"):
        assert [e["type"] for e in events(msgs, meter)] == ["last_gasp", "power_restored"]
        assert [e["ts"] for e in events(msgs, meter)] == [ts("01:10"), ts("02:00")]
        assert not {ts("01:15"), ts("01:30"), ts("01:45")} & set(by_ts(readings(msgs, meter)))
    for meter in ("m-000003", "m-000004"):
        assert events(msgs, meter) == []
        assert len(readings(msgs, meter)) == 13
    rec = only(truth)
    assert rec["scope"] == "transformer"
    assert rec["transformer_id"] == "tx-001"
    assert rec["meters"] == ["m-000001", "m-000002"]


def test_transformer_outage_behind_a_concentrator(run_on_wire: RunOnWire) -> None:
    msgs, truth = run_on_wire(
        concentrators=1, faults=[Outage(transformer="tx-001", at="1h", duration="30m")]
    )
    batches = [m.json() for m in msgs if m.topic == "concentrators/dc-01/readings"]
    assert all(b["concentrator_id"] == "dc-01" for b in batches)
    assert len(batches) == 13 - 2  # no batch while the transformer (and its DCU) is dark
    assert [e["type"] for e in events(msgs, "m-000002")] == ["last_gasp", "power_restored"]
    assert only(truth)["transformer_id"] == "tx-001"


def test_outage_without_last_gasp_emulates_the_last_will(run_on_wire: RunOnWire) -> None:
    msgs, truth = run_on_wire(
        faults=[Outage(meters=["m-000003"], at="1h", duration="4m", last_gasp=False, lwt=True)]
    )
    assert statuses(msgs, "m-000003") == [b"offline", b"online"]
    assert [e["type"] for e in events(msgs, "m-000003")] == ["power_restored"]
    assert only(truth)["params"] == {"last_gasp": False, "lwt": True}


def test_comms_dropout_is_silence_without_last_gasp(run_on_wire: RunOnWire) -> None:
    msgs, truth = run_on_wire(faults=[CommsDropout(meters=["m-000002"], at="1h", duration="1h")])
    got = by_ts(readings(msgs, "m-000002"))
    assert not {ts("01:00"), ts("01:15"), ts("01:30"), ts("01:45")} & set(got)
    assert events(msgs, "m-000002") == []
    assert statuses(msgs, "m-000002") == []
    # The meter kept measuring: its register after the gap matches the undisturbed meter.
    assert got[ts("02:00")] == baseline("m-000002")[ts("02:00")]
    rec = only(truth)
    assert (rec["type"], rec["start"], rec["end"]) == ("comms_dropout", ts("01:00"), ts("02:00"))


def test_comms_dropout_with_last_will(run_on_wire: RunOnWire) -> None:
    msgs, _ = run_on_wire(
        faults=[CommsDropout(meters=["m-000002"], at="1h", duration="1h", lwt=True)]
    )
    assert statuses(msgs, "m-000002") == [b"offline", b"online"]


def test_consumption_spike_adds_an_extra_load_to_interval_consumption(
    run_on_wire: RunOnWire,
) -> None:
    msgs, truth = run_on_wire(
        faults=[ConsumptionSpike(meters=["m-000001"], at="1h", duration="15m", factor=8)]
    )
    got, base = by_ts(readings(msgs, "m-000001")), baseline("m-000001")
    # (8 - 1) x the meter's reference peak on top of its load (simulators/faults.py).
    extra_w = 7 * Fleet(**SMALL_FLEET).meters["m-000001"].reference_w()

    def delta(rs: dict[str, dict[str, Any]]) -> float:
        return rs[ts("01:15")]["energy_import_kwh"] - rs[ts("01:00")]["energy_import_kwh"]

    assert delta(got) == pytest.approx(delta(base) + extra_w / 4000, abs=0.002)
    assert got[ts("01:00")]["power_w"] == pytest.approx(
        base[ts("01:00")]["power_w"] + extra_w, abs=1
    )
    assert got[ts("01:30")]["power_w"] == base[ts("01:30")]["power_w"]  # over after 15 min
    rec = only(truth)
    assert (rec["type"], rec["params"]) == ("consumption_spike", {"factor": 8.0})


def test_theft_is_a_lasting_drop(run_on_wire: RunOnWire) -> None:
    msgs, truth = run_on_wire(faults=[Theft(meters=["m-000004"], at="1h", factor=0.2)])
    got, base = by_ts(readings(msgs, "m-000004")), baseline("m-000004")
    for hhmm in ("01:00", "02:00", "03:00"):
        assert got[ts(hhmm)]["power_w"] == pytest.approx(0.2 * base[ts(hhmm)]["power_w"], abs=0.1)
    assert got[ts("00:45")] == base[ts("00:45")]
    rec = only(truth)
    assert rec["end"] is None  # lasts to the end of the run


def test_reverse_flow_exports_on_a_non_prosumer(run_on_wire: RunOnWire) -> None:
    msgs, truth = run_on_wire(
        faults=[ReverseFlow(meters=["m-000001"], at="1h", duration="1h", export_w=3000)]
    )
    got, base = by_ts(readings(msgs, "m-000001")), baseline("m-000001")
    assert base[ts("03:00")]["energy_export_kwh"] == 0.0
    assert got[ts("01:15")]["power_w"] < 0
    assert got[ts("01:15")]["power_factor"] < 0
    assert got[ts("02:00")]["energy_export_kwh"] > 0.5
    assert got[ts("02:15")]["power_w"] > 0  # back to importing
    assert only(truth)["params"] == {"export_w": 3000.0}


def test_register_reset_makes_the_register_go_down(run_on_wire: RunOnWire) -> None:
    msgs, truth = run_on_wire(faults=[RegisterReset(meters=["m-000002"], at="1h30m")])
    got = by_ts(readings(msgs, "m-000002"))
    assert got[ts("01:15")]["energy_import_kwh"] > 100
    assert got[ts("01:30")]["energy_import_kwh"] == 0.0
    assert 0 < got[ts("02:00")]["energy_import_kwh"] < 5
    rec = only(truth)
    assert rec["start"] == rec["end"] == ts("01:30")


@pytest.mark.parametrize(
    ("fault", "factor"),
    [
        (VoltageSag(transformer="tx-002", at="1h", duration="30m", factor=0.8), 0.8),
        (VoltageSwell(transformer="tx-002", at="1h", duration="30m", factor=1.15), 1.15),
    ],
)
def test_voltage_sag_and_swell(run_on_wire: RunOnWire, fault: Any, factor: float) -> None:
    msgs, truth = run_on_wire(faults=[fault])
    for meter in ("m-000003", "m-000004"):
        got, base = by_ts(readings(msgs, meter)), baseline(meter)
        for hhmm in ("01:00", "01:15"):
            for v, b in zip(got[ts(hhmm)]["voltage_v"], base[ts(hhmm)]["voltage_v"], strict=True):
                assert v == pytest.approx(b * factor, abs=0.11)
                assert not 207.0 <= v <= 253.0  # outside EN 50160's +-10 %
        assert got[ts("01:30")]["voltage_v"] == base[ts("01:30")]["voltage_v"]
    rec = only(truth)
    assert (rec["type"], rec["transformer_id"]) == (fault.type, "tx-002")


def test_phase_loss_on_three_phase_meters_only(run_on_wire: RunOnWire) -> None:
    # With seed 11 and half the meters three-phase: m-000001 and m-000003 are.
    msgs, truth = run_on_wire(
        three_phase_share=0.5, faults=[PhaseLoss(all=True, at="1h", duration="30m", phase=2)]
    )
    three = [m for m in ("m-000001", "m-000002", "m-000003", "m-000004")
             if isinstance(readings(msgs, m)[0]["voltage_v"], list)]  # fmt: skip
    assert three == ["m-000001", "m-000003"]
    rec = only(truth)
    assert rec["meters"] == three  # single-phase meters have no phase to lose
    for meter in three:
        r = by_ts(readings(msgs, meter))[ts("01:15")]
        assert r["voltage_v"][1] == 0.0
        assert r["current_a"][1] == 0.0
        assert min(r["voltage_v"][0], r["voltage_v"][2]) > 200


def test_phase_loss_on_a_transformer(run_on_wire: RunOnWire) -> None:
    msgs, truth = run_on_wire(faults=[PhaseLoss(transformer="tx-001", at="1h", phase=3)])
    assert only(truth)["meters"] == ["m-000001", "m-000002"]
    got = by_ts(readings(msgs, "m-000002"))
    assert got[ts("01:15")]["voltage_v"][2] == 0.0
    assert got[ts("01:30")]["voltage_v"][2] > 200  # the default duration is 30 min


def test_clock_drift_shifts_the_meter_timestamps(run_on_wire: RunOnWire) -> None:
    msgs, truth = run_on_wire(
        faults=[ClockDrift(meters=["m-000001"], at="1h", rate_s_per_h=600, step_s=30)]
    )
    stamps = [r["ts"] for r in readings(msgs, "m-000001")]
    assert stamps[4] == ts("01:00").replace(":00Z", ":30Z")  # the 30 s jump at the start
    assert stamps[8] == "2026-11-26T02:10:30Z"  # 10 min an hour fast, one hour later
    assert [r["ts"] for r in readings(msgs, "m-000002")][8] == ts("02:00")
    rec = only(truth)
    assert rec["params"] == {"rate_s_per_h": 600.0, "step_s": 30.0}


def test_duplicates_arrive_byte_for_byte(run_on_wire: RunOnWire) -> None:
    msgs, truth = run_on_wire(faults=[Duplicates(meters=["m-000003"], at="50m", copies=3)])
    payloads = [m.payload for m in msgs if m.topic == "meters/m-000003/reading"]
    assert len(payloads) == 13 + 2
    assert payloads[4] == payloads[5] == payloads[6]
    assert json.loads(payloads[4])["ts"] == ts("01:00")  # the next reading after 00:50
    rec = only(truth)
    assert rec["start"] == rec["end"] == ts("01:00")
    assert rec["params"] == {"copies": 3, "identical": True}


def test_out_of_order_delivers_the_held_readings_newest_first(run_on_wire: RunOnWire) -> None:
    msgs, truth = run_on_wire(faults=[OutOfOrder(meters=["m-000004"], at="1h", duration="45m")])
    order = [r["ts"][11:16] for r in readings(msgs, "m-000004")]
    assert order == [
        "00:00", "00:15", "00:30", "00:45", "01:30", "01:15", "01:00",
        "01:45", "02:00", "02:15", "02:30", "02:45", "03:00",
    ]  # fmt: skip
    rec = only(truth)
    assert (rec["start"], rec["end"]) == (ts("01:00"), ts("01:45"))


def _malformed_payload(msgs: list[Received], topic: str, index: int) -> bytes:
    return [m.payload for m in msgs if m.topic == topic][index]


@pytest.mark.parametrize(
    "kind", ["invalid_json", "nan", "string_number", "naive_ts", "voltage_5000"]
)
def test_malformed_payloads(run_on_wire: RunOnWire, kind: str) -> None:
    msgs, truth = run_on_wire(faults=[Malformed(meters=["m-000001"], at="1h", kind=kind)])
    raw = _malformed_payload(msgs, "meters/m-000001/reading", 4)
    base = baseline("m-000001")[ts("01:00")]
    if kind == "invalid_json":
        with pytest.raises(json.JSONDecodeError):
            json.loads(raw)
    else:
        bad = json.loads(raw)  # Python's json accepts NaN; conforming parsers must not
        if kind == "nan":
            assert b'"power_w":NaN' in raw
            assert math.isnan(bad["power_w"])
        elif kind == "string_number":
            assert bad["energy_import_kwh"] == str(base["energy_import_kwh"])
        elif kind == "naive_ts":
            assert bad["ts"] == "2026-11-26T01:00:00"
        else:
            assert bad["voltage_v"][0] == 5000.0
    # Only that one reading is broken.
    assert json.loads(_malformed_payload(msgs, "meters/m-000001/reading", 5))["ts"] == ts("01:15")
    rec = only(truth)
    assert rec["params"] == {"kind": kind}
    assert rec["start"] == ts("01:00")


def test_malformed_reading_inside_a_concentrator_batch(run_on_wire: RunOnWire) -> None:
    msgs, truth = run_on_wire(
        concentrators=1,
        faults=[
            Malformed(meters=["m-000001"], at="1h", kind="nan"),
            Malformed(meters=["m-000002"], at="2h", kind="invalid_json"),
        ],
    )
    batches = [m.payload for m in msgs if m.topic == "concentrators/dc-01/readings"]
    at_one = next(b for b in batches if b'"ts":"2026-11-26T01:00:00Z"' in b)
    parsed = json.loads(at_one)  # the neighbour's reading stays in the same, parseable batch
    assert [r["meter_id"] for r in parsed["readings"]] == ["m-000001", "m-000002"]
    assert math.isnan(parsed["readings"][0]["power_w"])
    # A truncated reading would break its neighbours' batch: it travels alone.
    broken = [b for b in batches if not _parses(b)]
    assert len(broken) == 1
    assert broken[0].startswith(b'{"concentrator_id":"dc-01","readings":[{"meter_id":"m-000002"')
    assert [r["params"]["kind"] for r in truth] == ["nan", "invalid_json"]


def _parses(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except json.JSONDecodeError:
        return False
    return True


def test_malformed_at_a_rate_records_each_occurrence(run_on_wire: RunOnWire) -> None:
    msgs, truth = run_on_wire(
        duration="1d", faults=[Malformed(meters=["m-000001"], rate_per_day=24)]
    )
    assert len(truth) > 5
    assert all(r["params"]["kind"] != "random" for r in truth)  # resolved per occurrence
    assert len({r["fault_id"] for r in truth}) == len(truth)
    wire = [m.payload for m in msgs if m.topic == "meters/m-000001/reading"]
    broken = sum(1 for p in wire if not _parses(p) or b"NaN" in p or b"5000.0" in p
                 or b'"energy_import_kwh":"' in p or b':00","energy' in p)  # fmt: skip
    # Two occurrences may fall on the same reading; each broken reading has a record.
    assert 0 < broken <= len(truth)


def test_comms_dropout_with_backfill_delivers_late_oldest_first(run_on_wire: RunOnWire) -> None:
    msgs, _ = run_on_wire(
        concentrators=1,
        faults=[CommsDropout(transformer="tx-001", at="1h", duration="45m", backfill=True)],
    )
    order = [r["ts"][11:16] for r in readings(msgs, "m-000001")]
    assert order == [
        "00:00", "00:15", "00:30", "00:45", "01:00", "01:15", "01:30",
        "01:45", "02:00", "02:15", "02:30", "02:45", "03:00",
    ]  # fmt: skip
    # ... but the three missed readings arrive in the 01:45 batch, not at their own time.
    batches = [m.json() for m in msgs if m.topic == "concentrators/dc-01/readings"]
    late = next(b for b in batches if any(r["ts"] == ts("01:45") for r in b["readings"]))
    assert [r["ts"][11:16] for r in late["readings"] if r["meter_id"] == "m-000001"] == [
        "01:00", "01:15", "01:30", "01:45",
    ]  # fmt: skip
    assert len(batches) == 13 - 3


def test_theft_can_raise_a_tamper_event(run_on_wire: RunOnWire) -> None:
    msgs, truth = run_on_wire(faults=[Theft(meters=["m-000002"], at="2h", event="cover_open")])
    assert events(msgs, "m-000002") == [
        {"ts": ts("02:00"), "type": "cover_open", "meter_id": "m-000002"}
    ]
    assert only(truth)["params"] == {"factor": 0.3, "event": "cover_open"}


def test_duplicates_with_other_values(run_on_wire: RunOnWire) -> None:
    msgs, truth = run_on_wire(
        faults=[Duplicates(meters=["m-000001"], at="1h", copies=2, identical=False)]
    )
    at_one = [r for r in readings(msgs, "m-000001") if r["ts"] == ts("01:00")]
    assert len(at_one) == 2
    assert at_one[1]["power_w"] == pytest.approx(at_one[0]["power_w"] + 1)
    assert {k: v for k, v in at_one[1].items() if k != "power_w"} == {
        k: v for k, v in at_one[0].items() if k != "power_w"
    }
    assert only(truth)["params"] == {"copies": 2, "identical": False}
