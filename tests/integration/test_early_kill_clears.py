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
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from meter_gateway.simulators.services import InfluxDB1, Mosquitto
from tests.conftest import Publisher, make_config, wait_until
from tests.faults import EventSubscriber, GatewayProcess

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

    command = ("-c", _NO_SNAPSHOT)


def every_meter(events: EventSubscriber, state: str) -> bool:
    return set(METERS) <= {e["meter_id"] for e in events.of("power_outage", state)}


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
    events = EventSubscriber(mosquitto)
    pub = Publisher(mosquitto)
    try:
        gw.start()
        await wait_until(gw.connected, within=30, what="the gateway subscribed")
        signal(pub, "last_gasp")  # acknowledged by the broker: the gateway has them
        await asyncio.to_thread(
            events.wait, lambda: every_meter(events, "raised"), "a power_outage raised per meter"
        )
        raised = {e["meter_id"]: e["event_id"] for e in events.of("power_outage", "raised")}
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
        await asyncio.to_thread(
            events.wait, lambda: every_meter(events, "cleared"), "a power_outage cleared per meter"
        )
        assert gw.stop() == 0, gw.log_tail()
    finally:
        pub.close()
        events.close()
        gw.close()

    # Each condition cleared exactly once, with the id it was raised with.
    cleared = events.of("power_outage", "cleared")
    assert Counter(e["event_id"] for e in cleared) == Counter(raised.values()), cleared
    assert {e["meter_id"]: e["event_id"] for e in cleared} == raised
    # A raise may come again after the kill (at least once), never under another id.
    assert {e["event_id"] for e in events.of("power_outage", "raised")} == set(raised.values())
    # The database has every raise and every clear: nothing delivered was lost.
    await wait_until(lambda: len(meter_event_points(influx1)) >= 18, what="18 meter_event points")
    points = meter_event_points(influx1)
    assert Counter((m, s) for m, s, _ in points) == Counter(
        [(m, "raised") for m in METERS] + [(m, "cleared") for m in METERS]
    ), points
    assert {(m, i) for m, _, i in points} == set(raised.items())
