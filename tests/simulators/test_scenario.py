"""Scenarios: YAML and Python say the same thing; mistakes are named by key path."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from meter_gateway.simulators.faults import (
    FaultError,
    Outage,
    parse_duration,
    parse_time,
    plan_faults,
)
from meter_gateway.simulators.fleet import Fleet
from meter_gateway.simulators.scenario import Scenario, ScenarioError, load_scenario, parse_scenario
from meter_gateway.simulators.topology import build_topology

EXAMPLE = Path(__file__).parents[2] / "simulators" / "scenarios" / "example.yaml"


def test_the_example_scenario_loads_and_runs() -> None:
    scenario = load_scenario(EXAMPLE)
    assert scenario.fleet.meters == 20
    assert len(scenario.faults) == 14
    truth = [t for step in Fleet(scenario).steps() for t in step.truth]
    assert {t["type"] for t in truth} >= {"outage", "theft", "phase_loss", "malformed"}


def test_yaml_and_python_build_the_same_scenario() -> None:
    from_yaml = parse_scenario(
        {"faults": [{"type": "outage", "transformer": "tx-001", "at": "1h30m", "duration": "5m"}]}
    )
    from_python = Scenario(faults=[Outage(transformer="tx-001", at=5400, duration=300)])
    assert from_yaml == from_python


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"fleet": {"meterz": 3}}, "fleet.meterz: unknown key"),
        (
            {"faults": [{"type": "outage", "all": True, "at": 0, "lenght": 5}]},
            "faults[0].lenght: unknown key",
        ),
        ({"faults": [{"type": "outage", "at": 0}]}, "faults[0]: give exactly one target"),
        (
            {"faults": [{"type": "theft", "all": True, "at": 0, "rate_per_day": 1}]},
            "faults[0]: give exactly one of `at` and `rate_per_day`",
        ),
        ({"faults": [{"type": "blackout", "all": True, "at": 0}]}, "unknown fault type 'blackout'"),
        ({"faults": [{"all": True, "at": 0}]}, "faults[0]: `type` is missing"),
        (
            {"faults": [{"type": "outage", "all": True, "at": "2026-11-26T01:00:00"}]},
            "faults[0].at: '2026-11-26T01:00:00' has no offset",
        ),
        ({"faults": [{"type": "outage", "all": True, "at": 0, "duration": "soon"}]}, "not a dur"),
        (
            {"faults": [{"type": "consumption_spike", "all": True, "at": 0, "factor": 0.5}]},
            "faults[0].factor: Input should be greater than 1",
        ),
        ({"faults": [{"type": "phase_loss", "all": True, "at": 0, "phase": 4}]}, "faults[0].phase"),
        ({"groups": {"g": "m-000001"}}, "groups.g: Input should be a valid list"),
    ],
)
def test_mistakes_name_the_key_path(data: dict[str, object], expected: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(data, "street.yaml")
    assert str(info.value).startswith("street.yaml: 1 error(s)")
    assert any(expected in e for e in info.value.errors), info.value.errors


def test_every_error_is_listed_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("fleet: {meters: 0, sede: 1}\nfaults:\n  - {type: theft, at: 1h}\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert info.value.source == str(path)
    assert len(info.value.errors) == 3


def test_unreadable_and_non_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("faults: [\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(bad)


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ({"type": "outage", "transformer": "tx-009", "at": 0}, "faults[0].transformer: unknown"),
        ({"type": "outage", "feeder": "f-07", "at": 0}, "faults[0].feeder: unknown feeder 'f-07'"),
        ({"type": "outage", "group": "north", "at": 0}, "faults[0].group: unknown group 'north'"),
        ({"type": "outage", "meters": ["m-000099"], "at": 0}, "faults[0].meters: unknown meter"),
    ],
)
def test_targets_the_fleet_lacks_are_refused_before_running(
    fault: dict[str, object], expected: str
) -> None:
    with pytest.raises(FaultError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        Fleet(parse_scenario({"faults": [fault]}), meters=5)


def test_durations_and_times() -> None:
    assert parse_duration("1h30m") == 5400
    assert parse_duration("1d") == 86_400
    assert parse_duration(90) == 90
    assert parse_duration("2.5") == 2.5
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("inf")
    assert parse_time("15m") == 900
    assert parse_time("2026-11-26T01:00:00+01:00") == datetime(2026, 11, 26, tzinfo=UTC)


def test_rate_faults_follow_the_seed_and_the_rate() -> None:
    topo = build_topology(20, seed=1)
    spec = parse_scenario({"faults": [{"type": "theft", "all": True, "rate_per_day": 2}]}).faults

    def starts(seed: int) -> list[tuple[float, tuple[str, ...]]]:
        plan = plan_faults(list(spec), topo, {}, seed=seed, start=0.0, end=10 * 86_400.0)
        return [(f.start, f.meters) for f in plan]

    a = starts(1)
    assert a == starts(1)
    assert a != starts(2)
    # 20 meters x 2 a day x 10 days: about 400 independent occurrences, one meter each.
    assert 300 < len(a) < 500
    assert all(len(m) == 1 for _, m in a)
    assert [s for s, _ in a] == sorted(s for s, _ in a)


def test_absolute_times_are_honoured() -> None:
    scenario = parse_scenario(
        {"faults": [{"type": "outage", "meters": ["m-000001"], "at": "2026-11-20T02:00:00Z"}]}
    )
    truth = [
        t
        for step in Fleet(scenario, meters=1, start="2026-11-20T00:00:00Z", duration="3h").steps()
        for t in step.truth
    ]
    assert truth[0]["start"] == "2026-11-20T02:00:00Z"
