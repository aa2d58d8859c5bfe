"""Scoring events against the truth log, on hand-made records."""

from __future__ import annotations

import math
from typing import Any

import pytest

from meter_gateway.simulators.score import expected_events, observed_events, score

T0 = 1_795_651_200.0  # 2026-11-26T00:00:00Z


def truth(fid: str, type_: str, meters: list[str], start: float, end: float | None, **kw: Any):
    return {
        "fault_id": fid,
        "type": type_,
        "scope": kw.pop("scope", "meter"),
        "meters": meters,
        "transformer_id": kw.pop("transformer_id", None),
        "start_s": start,
        "end_s": end,
        **kw,
    }


def ev(type_: str, state: str, subject: dict[str, str], start: str, cleared: str | None = None):
    out: dict[str, Any] = {
        "event_id": f"{type_}/{subject}/{start}",
        "type": type_,
        "state": state,
        **subject,
        "ts": start,
    }
    if cleared is not None:
        out["cleared_at"] = cleared
    return out


def test_a_transformer_outage_expects_the_transformer_and_each_meter() -> None:
    exp = expected_events(
        [
            truth(
                "F1",
                "outage",
                ["m-1", "m-2"],
                T0,
                T0 + 600,
                scope="transformer",
                transformer_id="tx-1",
            ),
            truth("F2", "register_reset", ["m-3"], T0, T0),
            truth("F3", "duplicates", ["m-4"], T0, T0),  # a wire fault: no event expected
            truth("F4", "clock_drift", ["m-5"], T0, None),
            truth("F5", "reverse_flow", ["m-6", "m-7"], T0, T0 + 900),
        ],
        prosumers={"m-7"},
    )
    assert sorted((e.type, e.subject) for e in exp) == [
        ("clock_drift", "m-5"),
        ("power_outage", "m-1"),
        ("power_outage", "m-2"),
        ("register_decrease", "m-3"),
        ("reverse_energy", "m-6"),  # m-7 has PV: its export is no fault to a detector
        ("transformer_outage", "tx-1"),
    ]
    assert next(e for e in exp if e.type == "clock_drift").end_s == math.inf


def test_an_outage_without_a_last_gasp_or_a_will_is_expected_as_comms_loss() -> None:
    params = {"last_gasp": False, "lwt": True}
    exp = expected_events(
        [
            truth("F1", "outage", ["m-1", "m-2"], T0, T0 + 600, params=params),
            truth("F2", "outage", ["m-3"], T0, T0 + 600, params={"last_gasp": False}),
            truth("F3", "outage", ["m-4"], T0, T0 + 600, params={"last_gasp": True}),
        ],
        no_will={"m-2"},  # behind a concentrator: no will of its own
    )
    assert sorted((e.type, e.subject) for e in exp) == [
        ("comms_loss", "m-2"),
        ("comms_loss", "m-3"),
        ("power_outage", "m-1"),
        ("power_outage", "m-4"),
    ]


def test_raise_and_clear_lines_join_into_one_event() -> None:
    (o,) = observed_events(
        [
            ev("power_outage", "raised", {"meter_id": "m-1"}, "2026-11-26T00:00:00Z"),
            ev(
                "power_outage",
                "cleared",
                {"meter_id": "m-1"},
                "2026-11-26T00:00:00Z",
                "2026-11-26T00:10:00Z",
            ),
        ]
    )
    assert (o.subject, o.start_s, o.end_s) == ("m-1", T0, T0 + 600)
    (still,) = observed_events(
        [ev("comms_loss", "raised", {"meter_id": "m-2"}, "2026-11-26T00:00:00Z")]
    )
    assert still.end_s == math.inf


def test_precision_recall_and_false_events_per_meter_days() -> None:
    records = [
        truth(
            "F1",
            "outage",
            ["m-1", "m-2"],
            T0,
            T0 + 3600,
            scope="transformer",
            transformer_id="tx-1",
        ),
        truth("F2", "voltage_sag", ["m-3"], T0 + 7200, T0 + 9000),
        truth("F3", "reverse_flow", ["m-4"], T0, T0 + 3600),
    ]
    events = [
        # Found: both meters' outages (one detected a little late, inside the tolerance).
        ev(
            "power_outage",
            "raised",
            {"meter_id": "m-1", "transformer_id": "tx-1"},
            "2026-11-26T00:00:00Z",
        ),
        ev("power_outage", "raised", {"meter_id": "m-2"}, "2026-11-26T01:10:00Z"),
        ev("transformer_outage", "raised", {"transformer_id": "tx-1"}, "2026-11-26T00:01:00Z"),
        # A sag on the wrong meter and one at the wrong time: two false events, one miss.
        ev(
            "voltage_sag",
            "raised",
            {"meter_id": "m-9"},
            "2026-11-26T02:10:00Z",
        ),
        ev(
            "voltage_sag",
            "cleared",
            {"meter_id": "m-3"},
            "2026-11-26T06:00:00Z",
            "2026-11-26T06:30:00Z",
        ),
        # Types no fault maps to are reported apart, not scored.
        ev("billing_anomaly", "raised", {"meter_id": "m-5"}, "2026-11-26T03:00:00Z"),
    ]
    s = score(records, events, meters=100, days=2, tolerance_s=900)
    po, sag, rev, tx = (
        s.types[t] for t in ("power_outage", "voltage_sag", "reverse_energy", "transformer_outage")
    )
    assert (po.expected, po.found, po.events, po.true_events) == (2, 2, 2, 2)
    assert (po.recall, po.precision) == (1.0, 1.0)
    assert (tx.recall, tx.precision) == (1.0, 1.0)
    assert (sag.expected, sag.found, sag.events, sag.false_events) == (1, 0, 2, 2)
    assert sag.precision == 0.0
    assert (rev.recall, rev.precision) == (0.0, None)
    assert s.unscored == {"billing_anomaly": 1}
    assert s.false_events == 2
    assert s.false_per_1000_meter_days == pytest.approx(10.0)
    assert [m.subject for m in s.missed] == ["m-3", "m-4"]
    rows = {r[0]: r for r in s.rows()}
    assert rows["voltage_sag"] == ["voltage_sag", "1", "0", "0.0%", "2", "2", "0.0%"]
    assert rows["phase_loss"][3] == "-"


def test_the_tolerance_decides_a_near_miss() -> None:
    records = [truth("F1", "register_reset", ["m-1"], T0, T0)]
    events = [ev("register_decrease", "raised", {"meter_id": "m-1"}, "2026-11-26T00:15:00Z")]
    assert (
        score(records, events, meters=1, days=1, tolerance_s=900).types["register_decrease"].recall
        == 1.0
    )
    assert (
        score(records, events, meters=1, days=1, tolerance_s=60).types["register_decrease"].recall
        == 0.0
    )


def test_consumption_faults_map_to_their_events() -> None:
    day = 86_400.0
    exp = expected_events(
        [
            truth("F1", "consumption_spike", ["m-1"], T0, T0 + 1800),
            truth("F2", "sustained_high", ["m-2"], T0, T0 + 6 * 3600),
            truth("F3", "sustained_low", ["m-3"], T0, T0 + 3 * day),
            truth("F4", "theft", ["m-4"], T0, None),
            truth("F5", "zero_use", ["m-5"], T0, T0 + 12 * 3600),
            truth("F6", "holiday", ["m-6"], T0, T0 + day),  # not a fault: nothing expected
            truth("F7", "load_variation", ["m-7"], T0, None),
        ]
    )
    assert sorted((e.type, e.subject) for e in exp) == [
        ("consumption_spike", "m-1"),
        ("sustained_high_consumption", "m-2"),
        ("sustained_low_consumption", "m-3"),
        ("sustained_low_consumption", "m-4"),
        ("zero_consumption", "m-5"),
    ]


def test_consumption_faults_in_the_warm_up_or_too_short_are_not_expected() -> None:
    day = 86_400.0
    records = [
        truth("F1", "consumption_spike", ["m-1"], T0, T0 + 1800),  # in the warm-up
        truth("F2", "consumption_spike", ["m-2"], T0 + 8 * day, T0 + 8 * day + 1800),
        truth("F3", "sustained_high", ["m-3"], T0 + 8 * day, T0 + 8 * day + 3600),  # < 3 h
        truth("F4", "zero_use", ["m-4"], T0 + 8 * day, T0 + 8 * day + 5 * 3600),  # < 6 h
        # 3 days planned, but the run ends 12 h after its start: never 24 h low.
        truth("F5", "sustained_low", ["m-5"], T0 + 9.5 * day, T0 + 12.5 * day),
        truth("F6", "outage", ["m-6"], T0, T0 + 3600),  # not a consumption fault: kept
    ]
    exp = expected_events(records, judge_from_s=T0 + 7 * day, run_end_s=T0 + 10 * day)
    assert sorted((e.type, e.subject) for e in exp) == [
        ("consumption_spike", "m-2"),
        ("power_outage", "m-6"),
    ]
    # An event for the warm-up spike is a false event: no detector should raise it then.
    events = [ev("consumption_spike", "raised", {"meter_id": "m-1"}, "2026-11-26T00:15:00Z")]
    s = score(records, events, meters=10, days=10, judge_from_s=T0 + 7 * day)
    assert (s.types["consumption_spike"].expected, s.types["consumption_spike"].false_events) == (
        1,
        1,
    )
