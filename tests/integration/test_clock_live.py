"""clock_drift live: meters reporting every 2 s through a real mosquitto to a gateway
running in the test's loop (storing into a real VictoriaMetrics); the events are taken
from `events/#` as a subscriber gets them.

- A meter whose clock jumps back 600 s (an RTC reset): its readings are older than its
  newest, yet it gets `clock_drift` from its second reading of the new time, and the
  clear once set right. A back-filled batch of another meter's past is no drift.
- Meters whose every reading validation rejects (8 days old, a day ahead): `clock_drift`
  from the rejections, and no `comms_loss` while the rejections keep arriving (only once
  they stop). The rejections are in the dead-letter store as before.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest

from meter_gateway.simulators.services import Mosquitto
from tests.conftest import Publisher, make_config, wait_until

pytestmark = pytest.mark.timeout(180)

INTERVAL_S = 2.0
DAY_S = 86_400.0


class Events:
    """The gateway's events as an `events/#` subscriber receives them; a waiter wakes on
    each one (no polling)."""

    def __init__(self, broker: Mosquitto) -> None:
        self.events: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe("events/#", qos=1)
        assert subscribed.wait(10), "subscribed to events/#"

    def _on_message(self, c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
        with self.cond:
            self.events.append(orjson.loads(msg.payload))
            self.cond.notify_all()

    def of(self, type_: str, meter: str, state: str | None = None) -> list[dict[str, Any]]:
        with self.cond:
            return [
                e
                for e in self.events
                if e["type"] == type_
                and e.get("meter_id") == meter
                and (state is None or e["state"] == state)
            ]

    async def first(
        self, type_: str, meter: str, state: str = "raised", within: float = 30.0
    ) -> dict[str, Any]:
        """The first such event, once received (waits on the subscriber's callback)."""

        def wait() -> list[dict[str, Any]]:
            with self.cond:
                self.cond.wait_for(lambda: self.of(type_, meter, state), timeout=within)
            return self.of(type_, meter, state)

        got = await asyncio.to_thread(wait)
        assert got, f"no {type_} {state} for {meter} within {within:.0f} s"
        return got[0]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Meters:
    """Meters publishing a reading each every INTERVAL_S, each with its clock `offset` s
    off the true time (the cadence is the meters', not a wait for the gateway)."""

    def __init__(self, broker: Mosquitto, offsets: dict[str, float]) -> None:
        self.pub = Publisher(broker)
        self.offsets = dict(offsets)
        self.sent: dict[str, int] = dict.fromkeys(offsets, 0)
        self.kwh = dict.fromkeys(offsets, 1000.0)
        self._next = time.time()

    def body(self, meter: str, ts: float) -> bytes:
        self.kwh[meter] += 0.001
        return orjson.dumps(
            {
                "ts": round(ts, 3),
                "energy_import_kwh": round(self.kwh[meter], 4),
                "power_w": 420.0,
                "voltage_v": [231.0, 230.0, 229.5],
                "frequency_hz": 50.0,
            }
        )

    async def rounds(self, n: int, meters: list[str] | None = None) -> None:
        """n readings of each meter (of `meters`, default all), INTERVAL_S apart."""
        for _ in range(n):
            await asyncio.sleep(max(0.0, self._next - time.time()))
            t = time.time()
            items: list[tuple[str, bytes | str]] = []
            for m in meters or list(self.offsets):
                items.append((f"meters/{m}/reading", self.body(m, t + self.offsets[m])))
                self.sent[m] += 1
            await asyncio.to_thread(self.pub.publish_many, items)
            self._next = t + INTERVAL_S

    def publish(self, topic: str, payload: bytes) -> None:
        self.pub.publish(topic, payload)

    def close(self) -> None:
        self.pub.close()


def dead_letters(data_dir: Path) -> list[dict[str, Any]]:
    """The dead-letter records written so far (a line still being written is skipped)."""
    out = []
    for f in sorted((data_dir / "dead-letter").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


async def test_a_clock_set_back_600_s_is_clock_drift_on_its_second_reading(
    tmp_path: Path, mosquitto: Mosquitto, victoria: Any, run_gateway: Callable[..., Any]
) -> None:
    cfg = make_config(
        tmp_path,
        mosquitto,
        storage={"url": victoria.url},
        events={"clock_drift_max_s": 60},
    )
    events = Events(mosquitto)
    gw = await run_gateway(cfg)
    meters = Meters(mosquitto, {"m-reset": 0.0, "m-fill": 0.0})
    try:
        await meters.rounds(4)  # live and on time: the newest reading is now
        # m-fill's past 10 minutes, kept by a concentrator and delivered at once.
        now = time.time()
        past = [
            {"meter_id": "m-fill", "ts": round(now - 600 + 2 * i, 3), "power_w": 400.0}
            for i in range(290)
        ]
        await asyncio.to_thread(
            meters.publish,
            "concentrators/dc-1/readings",
            orjson.dumps({"concentrator_id": "dc-1", "readings": past}),
        )
        # m-reset's RTC is reset: 600 s behind. Two readings of its new time, and no more.
        meters.offsets["m-reset"] = -600.0
        await meters.rounds(2)
        raised = await events.first("clock_drift", "m-reset")
        assert raised["details"]["cause"] == "clock_set_back"
        assert raised["details"]["set_back_s"] == pytest.approx(600, abs=5)
        assert raised["value"] == pytest.approx(-600, abs=5)
        assert "set back by 60" in raised["message"]
        # The back-filled batch went in before the reset (events come out in order): it
        # raised nothing.
        assert not events.of("clock_drift", "m-fill")
        assert gw.pipeline.spooled["mqtt"] >= 290 + 2 * 6

        # Judged on its new timeline (still behind: nothing new), then set right: cleared.
        await meters.rounds(2)
        meters.offsets["m-reset"] = 0.0
        await meters.rounds(1)
        cleared = await events.first("clock_drift", "m-reset", "cleared")
        assert cleared["event_id"] == raised["event_id"]
        await meters.rounds(2)
        assert len(events.of("clock_drift", "m-reset")) == 2
        assert not events.of("clock_drift", "m-fill")
        assert not [e for e in events.events if e["type"] == "comms_loss"]
    finally:
        meters.close()
        events.close()


async def test_meters_whose_readings_are_all_rejected_get_clock_drift_not_comms_loss(
    tmp_path: Path, mosquitto: Mosquitto, victoria: Any, run_gateway: Callable[..., Any]
) -> None:
    cfg = make_config(
        tmp_path,
        mosquitto,
        storage={"url": victoria.url},
        events={"clock_drift_max_s": 60, "offline_after_s": 4, "offline_missed_intervals": 3},
    )
    events = Events(mosquitto)
    gw = await run_gateway(cfg)
    # m-old reports on time first; m-ahead's clock was a day ahead from its first reading.
    meters = Meters(mosquitto, {"m-old": 0.0, "m-ahead": DAY_S})
    try:
        await meters.rounds(3)
        meters.offsets["m-old"] = -8 * DAY_S  # its clock falls 8 days behind
        rejections = asyncio.create_task(meters.rounds(8))
        old = await events.first("clock_drift", "m-old")
        ahead = await events.first("clock_drift", "m-ahead")
        await rejections
        assert old["details"]["cause"] == "clock_rejected"
        assert old["details"]["rejected"] == "ts_too_old"
        assert "older than 7 days" in old["message"]
        assert old["value"] == pytest.approx(-8 * DAY_S, abs=5)
        assert ahead["details"]["rejected"] == "ts_in_future"
        assert "in the future" in ahead["message"]

        # Every reading of both since m-old's clock fell was rejected (and handled), for
        # longer than their silence limit (max(4 s, 3 x 2 s)): still no comms_loss.
        rejected = 8 + 3 + 8
        await wait_until(
            lambda: gw.pipeline.rejected["ts"] >= rejected,
            within=30,
            what="the gateway to handle every rejected reading",
        )
        assert gw.pipeline.rejected["ts"] == rejected
        assert gw.events.counts["comms_loss", "raised"] == 0
        assert not events.of("comms_loss", "m-old")
        assert not events.of("comms_loss", "m-ahead")
        assert not gw.pipeline.last_seen.get("m-ahead")  # never a reading stored

        # As before, each rejection is in the dead-letter store with its reason.
        def kept() -> list[dict[str, Any]] | None:
            records = [r for r in dead_letters(cfg.gateway.data_dir) if "ts:" in r["reason"]]
            return records if len(records) >= rejected else None

        records = await wait_until(kept, within=30, what="the rejections in the dead-letter store")
        assert len(records) == rejected
        assert sum("older than the maximum age" in r["reason"] for r in records) == 8

        # They stop: silence is comms_loss, for both (heard, though nothing was stored).
        await events.first("comms_loss", "m-old")
        await events.first("comms_loss", "m-ahead")
    finally:
        meters.close()
        events.close()
