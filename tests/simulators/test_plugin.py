"""The pytest fixtures, used as a project that installed meter-gateway would use them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meter_gateway.simulators.faults import Outage
from meter_gateway.simulators.pytest_plugin import FleetRun
from tests.simulators.conftest import START, Recorder

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).parents[2] / "simulators" / "scenarios" / "example.yaml"


def test_mqtt_broker_is_a_running_mosquitto(mqtt_broker: Any) -> None:
    assert mqtt_broker.running
    assert mqtt_broker.host == "127.0.0.1"
    assert mqtt_broker.port > 0


def test_meter_fleet_from_python(meter_fleet: Any, recorder: Recorder) -> None:
    run: FleetRun = meter_fleet(
        meters=4,
        meters_per_transformer=2,
        start=START,
        duration="2h",
        faults=[Outage(transformer="tx-002", at="1h", duration="15m")],
    )
    stats = run.wait()
    got = recorder.wait_for(stats.messages)
    assert stats.faults == {"outage": 1}
    assert sum(m.topic.endswith("/event") for m in got) == 4  # 2 last gasps, 2 restores
    assert run.truth[0]["meters"] == ["m-000003", "m-000004"]
    assert run.topology_path.read_text().count("\n") == 5  # header + 4 meters


def test_meter_fleet_from_a_scenario_file(meter_fleet: Any, recorder: Recorder) -> None:
    run = meter_fleet(EXAMPLE, meters=20)
    stats = run.wait()
    assert stats.by_kind["batch"] > 0
    assert len(recorder.wait_for(stats.messages)) == stats.messages
    assert len(run.truth) == sum(stats.faults.values()) == 13


async def test_meter_fleet_waits_without_blocking_the_event_loop(meter_fleet: Any) -> None:
    run = meter_fleet(meters=2, start=START, duration="1h")
    stats = await run.wait_async()
    assert stats.by_kind["reading"] == 2 * 5


def test_a_real_time_fleet_can_be_stopped(meter_fleet: Any, recorder: Recorder) -> None:
    run = meter_fleet(meters=2, start=START, duration="1d", speed=1.0)
    # At speed 1 the first readings go at once and the next ones in 15 minutes.
    recorder.wait_for(4)  # 2 status + 2 readings
    run.stop()
    assert run.done
    stats = run.wait()
    assert stats.messages == 4
    assert stats.sim_t == run.fleet.start
