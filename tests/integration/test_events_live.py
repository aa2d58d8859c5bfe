"""Events live, end to end: 32 three-phase meters on 4 transformers reporting every 2 s
through a real mosquitto to a gateway process writing to a real InfluxDB 1.x, with a
webhook; faults injected on the wire; the gateway SIGKILLed and restarted while
several conditions are open.

Each event must reach MQTT, the `meter_event` measurement and the webhook; every
condition is one event_id (raised once, cleared once, redeliveries keep the id);
healthy meters get nothing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest
from aiohttp import web

from meter_gateway.simulators.services import InfluxDB1, Mosquitto, free_port
from tests.conftest import Publisher, make_config, wait_until
from tests.faults import GatewayProcess

pytestmark = pytest.mark.timeout(300)

INTERVAL_S = 2.0
METERS = [f"m-{i:02d}" for i in range(1, 33)]
TX = {m: f"tx-{(i // 8) + 1}" for i, m in enumerate(METERS)}  # 8 meters per transformer
FEEDER = {m: "f-1" if TX[m] in ("tx-1", "tx-2") else "f-2" for m in METERS}

OUTAGE = "m-01"  # last gasp, back after a few seconds: momentary
SILENT = "m-09"  # comms dropout: comms_loss, never power_outage
PHASE = "m-02"  # L3 lost
SAG = "m-03"  # all phases at 190 V
DECREASE = "m-04"  # import register goes down once
REVERSE = "m-05"  # export register rises on a consumer
DRIFT = "m-06"  # clock 2 minutes ahead (within validation's 5 minutes of the future)
DEAD_TX = "tx-4"  # m-25..m-32: all send a last gasp and go silent
FAULTY = {OUTAGE, SILENT, PHASE, SAG, DECREASE, REVERSE, DRIFT}
HEALTHY = [m for m in METERS if m not in FAULTY and TX[m] != DEAD_TX]


class Meters(threading.Thread):
    """Publishes a reading per meter every INTERVAL_S with the meter's current faults."""

    def __init__(self, broker: Mosquitto) -> None:
        super().__init__(daemon=True)
        self.pub = Publisher(broker)
        self.lock = threading.Lock()
        self.silent: set[str] = set()
        self.sag: set[str] = set()
        self.phase_lost: set[str] = set()
        self.reverse: set[str] = set()
        self.drift_s: dict[str, float] = {}
        self.import_kwh = {m: 1000.0 + i for i, m in enumerate(METERS)}
        self.export_kwh = dict.fromkeys(METERS, 5.0)
        self.rounds = 0
        self._round = threading.Condition()
        self._halt = threading.Event()

    def run(self) -> None:
        next_at = time.time()
        while not self._halt.is_set():
            self._publish_round(next_at)
            with self._round:
                self.rounds += 1
                self._round.notify_all()
            next_at += INTERVAL_S
            self._halt.wait(max(0.0, next_at - time.time()))

    def _publish_round(self, t: float) -> None:
        items = []
        with self.lock:
            for m in METERS:
                if m in self.silent:
                    continue
                self.import_kwh[m] += 0.001
                v = [190.0] * 3 if m in self.sag else [231.0, 230.0, 229.5]
                if m in self.phase_lost:
                    v[2] = 0.0
                if m in self.reverse:
                    self.export_kwh[m] += 0.002
                ts = t - self.drift_s.get(m, 0.0)
                body = {
                    "meter_id": m,
                    "ts": round(ts, 3),
                    "energy_import_kwh": round(self.import_kwh[m], 4),
                    "energy_export_kwh": round(self.export_kwh[m], 4),
                    "power_w": 420.0,
                    "voltage_v": v,
                    "current_a": [0.6, 0.6, 0.6],
                    "frequency_hz": 50.0,
                }
                items.append((f"meters/{m}/reading", orjson.dumps(body)))
        self.pub.publish_many(items)

    def event(self, meter: str, kind: str) -> None:
        body = {"meter_id": meter, "ts": round(time.time(), 3), "type": kind}
        self.pub.publish(f"meters/{meter}/event", orjson.dumps(body))

    def wait_rounds(self, n: int) -> None:
        with self._round:
            target = self.rounds + n
            assert self._round.wait_for(lambda: self.rounds >= target, timeout=INTERVAL_S * n + 30)

    def close(self) -> None:
        self._halt.set()
        self.join(10)
        self.pub.close()


class EventLog:
    """Events as the three destinations saw them."""

    def __init__(self) -> None:
        self.mqtt: list[dict[str, Any]] = []
        self.webhook: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def on_message(self, c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.mqtt.append(orjson.loads(msg.payload))

    def of(self, where: str, type_: str, subject: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            evs = list(getattr(self, where))
        return [
            e
            for e in evs
            if e["type"] == type_
            and (subject is None or subject in (e.get("meter_id"), e.get("transformer_id")))
        ]

    def ids(self, where: str, type_: str, subject: str) -> set[str]:
        return {e["event_id"] for e in self.of(where, type_, subject)}


def write_topology(path: Path) -> Path:
    rows = ["meter_id,transformer_id,feeder_id,customer_id,phases,nominal_voltage_v,prosumer"]
    rows += [f"{m},{TX[m]},{FEEDER[m]},c-{m},3,230,false" for m in METERS]
    path.write_text("\n".join(rows) + "\n")
    return path


async def webhook_server(log: EventLog) -> tuple[web.AppRunner, str]:
    async def receive(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        with log.lock:
            log.webhook.append(body)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/events", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/events"


async def test_live_events_through_a_kill_and_restart(tmp_path: Path) -> None:
    log = EventLog()
    runner, hook_url = await webhook_server(log)
    with (
        Mosquitto(tmp_path / "mosquitto", persistence=True) as broker,
        InfluxDB1(tmp_path / "influx") as db,
    ):
        listener = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        listener.on_message = log.on_message
        listener.connect(broker.host, broker.port)
        listener.subscribe("events/#", qos=1)
        listener.loop_start()
        cfg = make_config(
            tmp_path,
            broker,
            storage={"api": "v1", "url": db.url, "database": "meters"},
            topology={"file": str(write_topology(tmp_path / "topology.csv"))},
            events={
                "webhook_url": hook_url,
                "offline_after_s": 6,
                "offline_missed_intervals": 3,
                "transformer_outage_window_s": 6,
                "voltage_min_duration_s": 3,
                "clock_drift_max_s": 60,
            },
        )
        gw = GatewayProcess(cfg, tmp_path / "gw", shutdown_timeout_s=10)
        meters = Meters(broker)
        try:
            gw.start()
            await wait_until(gw.connected, within=30, what="the gateway subscribed")
            assert f"status page http://127.0.0.1:{gw.http_port}/" in gw.log()
            meters.start()
            await asyncio.to_thread(meters.wait_rounds, 4)  # every meter's spacing learned

            # -- faults on: a last gasp, a dropout, a dead transformer, power quality --------
            gasp_at = time.time()
            with meters.lock:
                meters.silent |= {OUTAGE, SILENT} | {m for m in METERS if TX[m] == DEAD_TX}
                meters.sag.add(SAG)
                meters.phase_lost.add(PHASE)
                meters.reverse.add(REVERSE)
                meters.drift_s[DRIFT] = -120.0
                meters.import_kwh[DECREASE] -= 3.0
            await asyncio.to_thread(meters.event, OUTAGE, "last_gasp")
            for m in METERS:
                if TX[m] == DEAD_TX:
                    await asyncio.to_thread(meters.event, m, "last_gasp")

            raised = await wait_until(
                lambda: log.of("mqtt", "power_outage", OUTAGE), within=10, what="power_outage"
            )
            assert raised[0]["details"].get("cause") == "last_gasp"
            detected = _epoch(raised[0]["detected_at"])
            assert detected - gasp_at <= 2.0, "a last gasp raises power_outage within 2 s"

            # Power back after a few seconds: a momentary interruption.
            await asyncio.to_thread(meters.event, OUTAGE, "power_restored")
            with meters.lock:
                meters.silent.discard(OUTAGE)
            clear = await wait_until(
                lambda: [
                    e for e in log.of("mqtt", "power_outage", OUTAGE) if e["state"] == "cleared"
                ],
                within=10,
                what="the outage's clear",
            )
            assert clear[0]["event_id"] == raised[0]["event_id"]
            assert clear[0]["details"]["momentary"] is True
            assert 0 < clear[0]["duration_s"] < 30

            silent_since = time.time()
            comms = await wait_until(
                lambda: log.of("mqtt", "comms_loss", SILENT), within=20, what="comms_loss"
            )
            assert _epoch(comms[0]["detected_at"]) - silent_since <= 6 + 2 + INTERVAL_S
            tx_out = await wait_until(
                lambda: log.of("mqtt", "transformer_outage", DEAD_TX),
                within=20,
                what="transformer_outage",
            )
            for t in ("phase_loss", "voltage_sag", "register_decrease", "reverse_energy"):
                subject = {"phase_loss": PHASE, "voltage_sag": SAG}.get(t)
                subject = subject or {"register_decrease": DECREASE}.get(t, REVERSE)
                await wait_until(lambda t=t, s=subject: log.of("mqtt", t, s), within=20, what=t)
            await wait_until(
                lambda: log.of("mqtt", "clock_drift", DRIFT), within=20, what="clock_drift"
            )

            # -- kill -9 with comms_loss, the transformer outage, sag, phase loss, drift open -
            await asyncio.to_thread(gw.kill)
            await asyncio.to_thread(meters.wait_rounds, 1)
            gw.start()
            await wait_until(gw.connected, within=30, what="the gateway back")
            await asyncio.to_thread(meters.wait_rounds, 2)
            # Restored, not forgotten: the status page lists the conditions still open.
            status = await asyncio.to_thread(gw.status)
            assert status is not None
            active = {
                (e["type"], e.get("meter_id") or e.get("transformer_id"))
                for e in status["events"]["active"]
            }
            assert {("comms_loss", SILENT), ("transformer_outage", DEAD_TX)} <= active, active
            code, page = await asyncio.to_thread(gw.get, "/")
            assert code == 200
            assert b"Active events" in page
            assert f"comms_loss {SILENT}".encode() in page

            # -- faults off: every condition clears once ------------------------------------
            with meters.lock:
                meters.silent.clear()
                meters.sag.clear()
                meters.phase_lost.clear()
                meters.reverse.clear()
                meters.drift_s.clear()
            for m in METERS:
                if TX[m] == DEAD_TX:
                    await asyncio.to_thread(meters.event, m, "power_restored")
            cleared_types = [
                ("comms_loss", SILENT),
                ("transformer_outage", DEAD_TX),
                ("voltage_sag", SAG),
                ("phase_loss", PHASE),
                ("clock_drift", DRIFT),
            ]
            for t, s in cleared_types:
                await wait_until(
                    lambda t=t, s=s: [e for e in log.of("mqtt", t, s) if e["state"] == "cleared"],
                    within=30,
                    what=f"{t} {s} cleared",
                )
            await asyncio.to_thread(meters.wait_rounds, 3)  # anything more would show now
            assert gw.stop() == 0
        finally:
            meters.close()
            gw.close()
            listener.loop_stop()
            listener.disconnect()
            await runner.cleanup()

        # -- one condition, one event_id; each reached all three destinations ------------------
        expected = {
            ("power_outage", OUTAGE),
            ("comms_loss", SILENT),
            ("transformer_outage", DEAD_TX),
            ("phase_loss", PHASE),
            ("voltage_sag", SAG),
            ("register_decrease", DECREASE),
            ("reverse_energy", REVERSE),
            ("clock_drift", DRIFT),
        }
        for t, s in expected:
            assert len(log.ids("mqtt", t, s)) == 1, (t, s, log.of("mqtt", t, s))
        assert len(tx_out) >= 1
        # The dead transformer's meters: in power_outage naming it, never in comms_loss.
        for m in (m for m in METERS if TX[m] == DEAD_TX):
            outs = log.of("mqtt", "power_outage", m)
            assert outs, m
            assert all(e.get("transformer_id") == DEAD_TX for e in outs)
            assert not log.of("mqtt", "comms_loss", m), m
        assert not log.of("mqtt", "power_outage", SILENT)
        assert not [
            e
            for e in log.mqtt
            if e["type"] in ("voltage_sag", "phase_imbalance") and e.get("meter_id") == PHASE
        ]
        for m in HEALTHY:
            assert not [e for e in log.mqtt if e.get("meter_id") == m], m
        # Point events are raised once, never cleared.
        for t, s in (("register_decrease", DECREASE), ("reverse_energy", REVERSE)):
            assert [e["state"] for e in log.of("mqtt", t, s)].count("raised") >= 1
            assert not [e for e in log.of("mqtt", t, s) if e["state"] == "cleared"]

        by_id_mqtt = _states(log.mqtt)
        by_id_hook = _states(log.webhook)
        assert set(by_id_hook) == set(by_id_mqtt)
        for eid, states in by_id_mqtt.items():
            assert by_id_hook[eid] == states, eid
        stored = db.query('SELECT "state", event_id, "type" FROM meter_event')
        by_id_db: dict[str, set[str]] = defaultdict(set)
        for row in stored:
            by_id_db[row["event_id"]].add(row["state"])
        assert set(by_id_db) == set(by_id_mqtt)
        for eid, states in by_id_mqtt.items():
            assert by_id_db[eid] == states, [
                (e["type"], e.get("meter_id"), e["state"], e["ts"], e.get("cleared_at"))
                for e in log.mqtt
                if e["event_id"] == eid
            ]


def _states(events: list[dict[str, Any]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for e in events:
        out[e["event_id"]].add(e["state"])
    return dict(out)


def _epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
