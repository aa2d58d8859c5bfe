"""Replay of a simulated fleet gives the same events as the live run of the same scenario.

One small scenario (12 three-phase consumer meters on 2 transformers, every 2 s, 50 s,
faults at fixed times) runs twice:

- live: the simulator publishes it in real time through a real mosquitto to a gateway
  running in the test's loop; its events are collected from MQTT (`events/#`);
- replay: the same scenario (same settings, same start) written as a replay file and fed
  through `gateway.replay.Replay` (`--no-store`, `--events-out`) with the same `events:`
  settings and topology.

Every condition (type, subject, state) must appear on both sides with the same start
`ts`, and every injected fault must have been detected (so detection broken on both
sides fails too).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest

from meter_gateway.gateway.replay import Replay
from meter_gateway.simulators.faults import (
    CommsDropout,
    Outage,
    PhaseLoss,
    RegisterReset,
    ReverseFlow,
    VoltageSag,
)
from meter_gateway.simulators.fleet import Fleet
from meter_gateway.simulators.mqtt.publisher import BrokerOptions, MqttPublisher
from meter_gateway.simulators.mqtt.runner import run_fleet
from meter_gateway.simulators.replayfile import write_replay_file
from meter_gateway.simulators.scenario import FleetSettings, Scenario
from meter_gateway.simulators.services import Mosquitto, VictoriaMetrics
from meter_gateway.simulators.topology import write_csv
from tests.conftest import make_config, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

INTERVAL_S = 2.0
DURATION_S = 50.0
# tx-001: m-000001..06, tx-002: m-000007..12 (meters_per_transformer 6), all direct.
GASP = "m-000001"  # outage with last gasp, 4 s: power_outage, momentary
SILENT = "m-000002"  # comms dropout (no last gasp), 16 s: comms_loss, never power_outage
SAG = "m-000003"  # 0.8 x nominal for 8 s (4 readings): voltage_sag
PHASE = "m-000004"  # L2 at 0 V for 6 s: phase_loss
REVERSE = "m-000005"  # 15 kW exported by a consumer: reverse_energy
RESET = "m-000006"  # registers back to 0: register_decrease
DEAD_TX = "tx-002"  # all six meters gasp at once: transformer_outage
DEAD_TX_METERS = [f"m-{i:06d}" for i in range(7, 13)]

# The detectors' thresholds, small so that everything is decided within the run. The
# silence limit is max(offline_after_s, 3 x 2 s) = 6 s: the 16 s dropout is far above
# it, and a healthy meter (a reading every 2 s) far below it even on a loaded machine.
EVENTS = {
    "offline_after_s": 5,
    "offline_missed_intervals": 3,
    "transformer_outage_window_s": 4,
    "voltage_min_duration_s": 2,
    "momentary_max_s": 60,
}

# (type, subject) -> when its condition starts, in s from the scenario's start. Every
# start comes from the meters' own timestamps (a reading's or a last gasp's ts), never
# from the arrival clock, which is why live and replay must agree exactly.
EXPECTED_START_S = {
    ("phase_loss", PHASE): 10.0,  # the first reading with L2 dead
    ("voltage_sag", SAG): 10.0,  # the first reading below the band
    ("power_outage", GASP): 12.0,  # its last gasp
    ("reverse_energy", REVERSE): 12.0,  # the first reading with negative power
    ("register_decrease", RESET): 14.0,  # the first reading after the reset
    ("comms_loss", SILENT): 18.0,  # its last reading before the silence
    ("transformer_outage", DEAD_TX): 30.0,  # the meters' last gasps
    **{("power_outage", m): 30.0 for m in DEAD_TX_METERS},
}
POINT_TYPES = {"reverse_energy", "register_decrease"}  # raised only, never cleared


def scenario(start: float) -> Scenario:
    return Scenario(
        name="replay-matches-live",
        fleet=FleetSettings(
            meters=12,
            interval_s=INTERVAL_S,
            seed=11,
            meters_per_transformer=6,
            concentrators=0,
            prosumer_share=0.0,
            three_phase_share=1.0,
            start=datetime.fromtimestamp(start, UTC),
            duration=DURATION_S,
        ),
        faults=[
            PhaseLoss(meters=[PHASE], at=10, duration=6, phase=2),
            VoltageSag(meters=[SAG], at=10, duration=8, factor=0.8),
            Outage(meters=[GASP], at=12, duration=4),
            # More than any household draws, at any hour the test runs (electric heating
            # at night drew more than 3 kW: the net power stayed positive, no event).
            ReverseFlow(meters=[REVERSE], at=12, duration=6, export_w=15000),
            RegisterReset(meters=[RESET], at=14),
            CommsDropout(meters=[SILENT], at=20, duration=16),
            Outage(transformer=DEAD_TX, at=30, duration=8),
        ],
    )


class EventLog:
    """What the gateway published under `events/#`."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()

    def on_message(self, c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.events.append(orjson.loads(msg.payload))

    def on_subscribe(self, c: paho.Client, u: object, mid: int, rc: Any, props: Any) -> None:
        self.subscribed.set()

    def copy(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.events)


Condition = tuple[str, str, str, str]  # (type, subject id, state, start ts)


def conditions(events: list[dict[str, Any]], keep: Callable[[float], bool]) -> list[Condition]:
    """Meter and transformer events as (type, subject, state, ts), one per event_id and
    state (a QoS 1 redelivery is the same event), sorted."""
    seen: dict[tuple[str, str], Condition] = {}
    for e in events:
        sid = e.get("meter_id") or e.get("transformer_id")
        if sid is None or not keep(_epoch(e["ts"])):
            continue  # the gateway's own events (storage_backpressure...)
        seen[(e["event_id"], e["state"])] = (e["type"], sid, e["state"], e["ts"])
    return sorted(seen.values())


async def test_replay_gives_the_events_of_the_live_run(
    tmp_path: Path, mosquitto: Mosquitto, victoria: VictoriaMetrics, run_gateway: Any
) -> None:
    # The topology does not depend on the start: the same for both runs.
    topology_csv = tmp_path / "topology.csv"
    write_csv(Fleet(scenario(0.0)).topology, topology_csv)

    # -- live ----------------------------------------------------------------------------
    log = EventLog()
    listener = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    listener.on_message = log.on_message
    listener.on_subscribe = log.on_subscribe
    listener.connect(mosquitto.host, mosquitto.port)
    listener.subscribe("events/#", qos=1)
    listener.loop_start()
    publisher = MqttPublisher(BrokerOptions(host=mosquitto.host, port=mosquitto.port))
    try:
        cfg = make_config(
            tmp_path,
            mosquitto,
            storage={"api": "v2", "url": victoria.url},
            topology={"file": str(topology_csv)},
            events=EVENTS,
        )
        gw = await run_gateway(cfg)
        await wait_until(log.subscribed.is_set, within=30, what="the events subscription")
        await asyncio.to_thread(publisher.connect, 30)

        # The next interval boundary: the fleet's first reading is stamped with it and sent
        # at it, so the readings' ts and their arrival agree as with real meters.
        start = math.ceil((time.time() + 1.0) / INTERVAL_S) * INTERVAL_S
        fleet = Fleet(scenario(start))
        last_reading = start + DURATION_S  # the final step's readings are stamped with it
        assert fleet.end == last_reading
        await wait_until(lambda: time.time() >= start, within=30, what="the scenario's start")
        stats = await asyncio.to_thread(run_fleet, fleet, publisher.publish, speed=1.0)
        assert await asyncio.to_thread(publisher.flush, 60), "the broker acknowledged all"
        assert stats.sim_t == last_reading, stats.summary()

        # Everything published was handled (events are emitted while handling it), then
        # every event emitted so far reached the listener.
        await wait_until(
            lambda: gw.pipeline.messages >= stats.messages,
            within=60,
            what=f"the gateway to handle the {stats.messages} messages published",
        )
        emitted = gw.events.emitted
        await wait_until(
            lambda: len(log.copy()) >= emitted,
            within=60,
            what=f"the {emitted} events emitted to arrive on events/#",
        )
        live_events = log.copy()
    finally:
        publisher.close()
        listener.loop_stop()
        listener.disconnect()

    # -- replay --------------------------------------------------------------------------
    replay_file = tmp_path / "replay" / "fleet.jsonl.gz"
    written = write_replay_file(Fleet(scenario(start)), replay_file)
    assert written.by_kind["reading"] == stats.by_kind["reading"], written.summary()
    replay_cfg = make_config(
        tmp_path / "replay",
        mosquitto,
        topology={"file": str(topology_csv)},
        events=EVENTS,
    )
    events_out = tmp_path / "replay" / "events.jsonl"
    with events_out.open("wb") as out:
        summary = await Replay(replay_cfg, store=False, events_out=out).run([replay_file])
    assert summary.accepted == summary.readings == written.by_kind["reading"], summary.text()
    replay_events = [orjson.loads(line) for line in events_out.read_bytes().splitlines()]

    # -- compare -------------------------------------------------------------------------
    # The live gateway keeps judging silence after the fleet stopped: from about 6 s after
    # the last reading every meter is silent, and comms_loss / power_outage /
    # transformer_outage may follow, all starting at the last reading's ts.
    # Replay stops at the file's last line and never sees that silence. Conditions that
    # start at or after the last reading are left out, on both sides alike.
    def in_run(ts: float) -> bool:
        return ts < last_reading

    live = conditions(live_events, in_run)
    replayed = conditions(replay_events, in_run)
    assert live == replayed, (
        "live and replay differ\n"
        + f"live ({len(live)}):\n  "
        + "\n  ".join(map(str, live))
        + f"\nreplay ({len(replayed)}):\n  "
        + "\n  ".join(map(str, replayed))
        + f"\nonly live: {sorted(set(live) - set(replayed))}"
        + f"\nonly replay: {sorted(set(replayed) - set(live))}"
    )

    # Every injected fault was detected, at the start its fault implies, raised once (and
    # cleared once, but for point events); and the comms dropout is not an outage.
    for name, got in (("live", live), ("replay", replayed)):
        for (type_, subject), offset in EXPECTED_START_S.items():
            states = ["raised"] if type_ in POINT_TYPES else ["raised", "cleared"]
            found = sorted((c[2], _epoch(c[3]) - start) for c in got if c[:2] == (type_, subject))
            assert found == [(s, offset) for s in sorted(states)], (name, type_, subject, got)
        assert not [c for c in got if c[1] == SILENT and c[0] == "power_outage"], (name, got)


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
