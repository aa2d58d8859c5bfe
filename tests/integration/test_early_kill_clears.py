"""A kill before the first detector snapshot: the open conditions still clear, once.

On a new data_dir there is no snapshot for the first seconds, so the outbox itself is
all a restart has to restore the open conditions from. The gateway runs as a process
(SIGKILL), with the snapshot interval set far beyond the test so that the kill comes
before the first snapshot by construction, not by timing; meters send last gasps
through a real mosquitto, every event is delivered (MQTT and the database) before the
kill, then the restart gets `power_restored` from each meter.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest

from meter_gateway.simulators.services import InfluxDB1, Mosquitto
from tests.conftest import Publisher, make_config, wait_until
from tests.faults import GatewayProcess

pytestmark = pytest.mark.integration

METERS = [f"m-gasp-{i}" for i in range(1, 10)]

#: Runs the gateway's command line with the detector snapshot pushed out of reach.
_NO_SNAPSHOT = (
    "import runpy, sys; "
    "import meter_gateway.gateway.events.service as service; "
    "service.SNAPSHOT_S = 86400.0; "
    "sys.argv = ['meter-gateway', *sys.argv[1:]]; "
    "runpy.run_module('meter_gateway.gateway.cli', run_name='__main__')"
)


class NoSnapshotGateway(GatewayProcess):
    """`meter-gateway run`, except that no detector snapshot is written while it runs
    (a clean stop still writes one)."""

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = self.workdir / f"gateway-{len(self.runs) + 1}.log"
        self.runs.append(log)
        with log.open("wb") as f:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _NO_SNAPSHOT,
                    "run",
                    "-c",
                    str(self.config_file),
                    "--shutdown-timeout",
                    str(self.shutdown_timeout_s),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=f,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )


class Events:
    """Every event published under events/#, as subscribers see them."""

    def __init__(self, broker: Mosquitto) -> None:
        self.got: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.subscribe("events/#", qos=1)
        self.client.loop_start()
        assert subscribed.wait(10), "no SUBACK from the broker"

    def _on_message(self, c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.got.append(orjson.loads(msg.payload))
            self._cond.notify_all()

    def of(self, state: str) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.got if e["type"] == "power_outage" and e["state"] == state]

    def wait_meters(self, state: str, timeout: float = 20) -> None:
        """Until every meter has a power_outage event in `state` (blocking: a thread)."""

        def seen() -> set[str]:
            return {
                e["meter_id"]
                for e in self.got
                if e["type"] == "power_outage" and e["state"] == state
            }

        with self._cond:
            ok = self._cond.wait_for(lambda: set(METERS) <= seen(), timeout)
            missing = set(METERS) - seen()
        assert ok, f"no power_outage {state} on MQTT for {sorted(missing)}"

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def cursor(gw: GatewayProcess, destination: str) -> int:
    try:
        return int((gw.data_dir / "events" / "outbox" / f"cursor.{destination}").read_text())
    except (OSError, ValueError):
        return 0


def meter_event_points(db: InfluxDB1) -> list[tuple[str, str, str]]:
    """(meter_id, state, event_id) of every stored power_outage point."""
    rows = db.query(
        "SELECT state, event_id FROM meter_event WHERE \"type\" = 'power_outage' GROUP BY meter_id"
    )
    return [(r["meter_id"], r["state"], r["event_id"]) for r in rows]


def signal(pub: Publisher, kind: str) -> None:
    pub.publish_many(
        [
            (f"meters/{m}/event", orjson.dumps({"ts": round(time.time(), 3), "type": kind}))
            for m in METERS
        ]
    )


async def test_a_kill_before_the_first_snapshot_keeps_every_open_outage(
    tmp_path: Path, mosquitto: Mosquitto, influx1: InfluxDB1
) -> None:
    cfg = make_config(
        tmp_path,
        mosquitto,
        gateway={"id": "gw-early"},
        storage={"api": "v1", "url": influx1.url, "database": "meters", "precision": "ms"},
        events={"offline_after_s": 3600},
    )
    gw = NoSnapshotGateway(cfg, tmp_path / "gw")
    events = Events(mosquitto)
    pub = Publisher(mosquitto)
    try:
        gw.start()
        await wait_until(gw.connected, within=30, what="the gateway subscribed")
        signal(pub, "last_gasp")  # acknowledged by the broker: the gateway has them
        await asyncio.to_thread(events.wait_meters, "raised")
        raised = {e["meter_id"]: e["event_id"] for e in events.of("raised")}
        # Delivered everywhere and the cursors on disk: all a compaction needs to drop
        # the events, were nothing holding them.
        await wait_until(
            lambda: cursor(gw, "mqtt") >= 9 and cursor(gw, "database") >= 9,
            what="both destinations' cursors past the 9 raises",
        )
        state = gw.data_dir / "events" / "detectors.state"
        assert not state.exists(), "a detector snapshot was written: the case is not tested"

        gw.kill()
        gw.start()
        await wait_until(gw.connected, within=30, what="the gateway back")
        log = gw.log()
        assert "no longer on disk" not in log, log
        assert "9 conditions open" in log, log
        signal(pub, "power_restored")
        await asyncio.to_thread(events.wait_meters, "cleared")
        assert gw.stop() == 0, gw.log_tail()
    finally:
        pub.close()
        events.close()
        gw.close()

    # Each condition cleared exactly once, with the id it was raised with.
    cleared = events.of("cleared")
    assert Counter(e["event_id"] for e in cleared) == Counter(raised.values()), cleared
    assert {e["meter_id"]: e["event_id"] for e in cleared} == raised
    # A raise may come again after the kill (at least once), never under another id.
    assert {e["event_id"] for e in events.of("raised")} == set(raised.values())
    # The database has every raise and every clear: nothing delivered was lost.
    await wait_until(lambda: len(meter_event_points(influx1)) >= 18, what="18 meter_event points")
    points = meter_event_points(influx1)
    assert Counter((m, s) for m, s, _ in points) == Counter(
        [(m, "raised") for m in METERS] + [(m, "cleared") for m in METERS]
    ), points
    assert {(m, i) for m, _, i in points} == set(raised.items())
