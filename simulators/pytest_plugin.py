"""pytest fixtures: a real MQTT broker and simulated meter fleets publishing to it.

Installed with the package (entry point ``pytest11: meter_gateway``), so any project that
installs meter-gateway can use them:

    def test_my_consumer(mqtt_broker, meter_fleet):
        run = meter_fleet(meters=5, duration="2h", faults=[Outage(transformer="tx-001", at="1h")])
        stats = run.wait()
        ...

Every pytest run of such a project loads this plugin, whether or not it uses the fixtures;
so at import time it needs only pytest and the standard library, and each fixture imports the
simulator (and with it paho-mqtt) when a test asks for it. See simulators/README.md.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # imported lazily: every pytest run loads this plugin
    from meter_gateway.simulators.fleet import Fleet
    from meter_gateway.simulators.mqtt.runner import RunStats
    from meter_gateway.simulators.scenario import Scenario
    from meter_gateway.simulators.services import Mosquitto
    from meter_gateway.simulators.topology import Topology

__all__ = ["FleetRun", "meter_fleet", "mqtt_broker"]


class FleetRun:
    """A fleet publishing to a broker in a background thread.

    ``wait()`` (or ``await wait_async()``) blocks until it has published everything and the
    broker acknowledged it, and returns the ``RunStats``; ``stop()`` ends it early.
    """

    def __init__(
        self,
        fleet: Fleet,
        host: str,
        port: int,
        *,
        speed: float,
        truth_out: Path,
        topology_out: Path,
        connections: int = 1,
    ) -> None:
        from meter_gateway.simulators.mqtt.publisher import BrokerOptions, MqttPublisher
        from meter_gateway.simulators.topology import write_csv

        self.fleet = fleet
        self.truth_path = truth_out
        self.topology_path = topology_out
        write_csv(fleet.topology, topology_out)
        self._stop = threading.Event()
        self._stats: RunStats | None = None
        self._error: BaseException | None = None
        self._publisher = MqttPublisher(
            BrokerOptions(host=host, port=port), connections=connections
        )
        try:
            self._publisher.connect()  # fail in the test, not in a thread, without a broker
        except BaseException:
            self._publisher.close()
            raise
        self._thread = threading.Thread(
            target=self._run, args=(speed,), name="meter-fleet", daemon=True
        )
        self._thread.start()

    def _run(self, speed: float) -> None:
        from meter_gateway.simulators.mqtt.runner import run_fleet

        try:
            self._stats = run_fleet(
                self.fleet,
                self._publisher.publish,
                speed=speed,
                truth_out=self.truth_path,
                stop=self._stop,
            )
            if not self._publisher.flush(timeout_s=60):
                raise RuntimeError(f"{self._publisher.outstanding} messages not acknowledged")
        except BaseException as exc:  # handed to the test thread by wait()
            self._error = exc
        finally:
            self._publisher.close()

    @property
    def topology(self) -> Topology:
        return self.fleet.topology

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout_s: float | None = 60.0) -> RunStats:
        """Wait for the run to end; raises what the run raised, or TimeoutError."""
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"the meter fleet did not finish within {timeout_s} s")
        if self._error is not None:
            raise self._error
        assert self._stats is not None
        return self._stats

    async def wait_async(self, timeout_s: float | None = 60.0) -> RunStats:
        """``wait()`` without blocking the event loop (for gateways under test in the loop)."""
        return await asyncio.to_thread(self.wait, timeout_s)

    def stop(self) -> None:
        """End the run early (at the next message) and close the connection."""
        self._stop.set()
        self._thread.join(30)

    @property
    def truth(self) -> list[dict[str, Any]]:
        """The ground-truth records written so far."""
        from meter_gateway.simulators.truth import read_truth

        return read_truth(self.truth_path) if self.truth_path.exists() else []


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A real mosquitto on a free loopback port for the test session (``.host``, ``.port``)."""
    from meter_gateway.simulators.services import Mosquitto

    with Mosquitto(tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker


@pytest.fixture
def meter_fleet(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., FleetRun]]:
    """A factory: ``meter_fleet(scenario=None, *, faults=(), groups=None, host=None, port=None,
    speed=0, connections=1, **fleet_settings) -> FleetRun``.

    ``scenario`` is a ``Scenario``, a path to a YAML scenario, or a dict; ``faults`` (fault
    models such as ``Outage(...)``) and ``groups`` are added to it; ``fleet_settings`` override
    its ``fleet:`` section (``meters``, ``interval_s``, ``seed``, ``start``, ``duration``,
    ``concentrators``, ...). Without ``host``/``port`` it publishes to ``mqtt_broker``. Runs
    still going at the end of the test are stopped.
    """
    runs: list[FleetRun] = []

    def start(
        scenario: Scenario | str | Path | dict[str, Any] | None = None,
        *,
        faults: Any = (),
        groups: dict[str, list[str]] | None = None,
        host: str | None = None,
        port: int | None = None,
        speed: float = 0.0,
        connections: int = 1,
        **fleet_settings: Any,
    ) -> FleetRun:
        from meter_gateway.simulators.fleet import Fleet
        from meter_gateway.simulators.scenario import Scenario, load_scenario, parse_scenario

        if scenario is None:
            sc = Scenario()
        elif isinstance(scenario, Scenario):
            sc = scenario
        elif isinstance(scenario, dict):
            sc = parse_scenario(scenario)
        else:
            sc = load_scenario(scenario)
        if faults or groups:
            sc = sc.model_copy(
                update={"faults": [*sc.faults, *faults], "groups": {**sc.groups, **(groups or {})}}
            )
        if host is None or port is None:
            broker = request.getfixturevalue("mqtt_broker")
            host, port = broker.host, broker.port
        n = len(runs) + 1
        run = FleetRun(
            Fleet(sc, **fleet_settings),
            host,
            port,
            speed=speed,
            truth_out=tmp_path / f"fleet-{n}-truth.jsonl",
            topology_out=tmp_path / f"fleet-{n}-topology.csv",
            connections=connections,
        )
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.stop()
