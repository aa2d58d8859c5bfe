"""Tasmota, Shelly and Sparkplug B devices live: one simulated meter, four wires, one truth.

A seeded three-phase meter (`MeterModel`) is published for several intervals as a
Tasmota energy monitor (`plug-1`), a Shelly Pro 3EM (`shellypro3em-1`, NotifyStatus
with `params.ts`), a Sparkplug B edge node `edge-1` with the device `meter-1`, and, for
reference, as the gateway's own `json` on `meters/<id>/reading`; each device on its own
MQTT connection with its last will set. A gateway subscribed to every format at once
stores them in a real InfluxDB 1.x through a real mosquitto. Then every device
disconnects "with will" (MQTT 5 reason code 4): the broker publishes the wills
(Tasmota `Offline`, Shelly `false`, Sparkplug NDEATH), which must become `offline`.

Each device's series must hold the same canonical values as the reference at the same
timestamps, for the fields its format carries (`simulators.devices.CARRIES`).
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from meter_gateway.simulators.devices import (
    CARRIES,
    DeviceMessage,
    ShellyDevice,
    SparkplugEdge,
    TasmotaDevice,
    epoch_s,
)
from meter_gateway.simulators.meter import MeterModel
from meter_gateway.simulators.services import InfluxDB1, Mosquitto
from tests.conftest import make_config, wait_until

pytestmark = pytest.mark.timeout(120)

INTERVAL_S = 60
READINGS = 6
METER = "m-sim"

#: Every format on its default topic, as a gateway that takes them all would have.
ALL_FORMATS = [
    {"topic": "meters/+/reading", "format": "json"},
    {"topic": "concentrators/+/readings", "format": "json-batch"},
    {"topic": "meters/+/event", "format": "meter-event"},
    {"topic": "meters/+/status", "format": "lwt"},
    {"topic": "tele/+/SENSOR", "format": "tasmota"},
    {"topic": "tele/+/LWT", "format": "lwt"},
    {"topic": "+/status/#", "format": "shelly"},
    {"topic": "+/events/rpc", "format": "shelly"},
    {"topic": "+/online", "format": "shelly-online"},
    {"topic": "spBv1.0/#", "format": "sparkplug-b"},
]

#: Canonical field -> the stored fields (InfluxDB columns) it becomes.
COLUMNS = {
    "energy_import_kwh": ["energy_import_kwh"],
    "energy_export_kwh": ["energy_export_kwh"],
    "power_w": ["power_w"],
    "voltage_v": ["voltage_l1_v", "voltage_l2_v", "voltage_l3_v"],
    "current_a": ["current_l1_a", "current_l2_a", "current_l3_a"],
    "power_factor": ["power_factor"],
    "frequency_hz": ["frequency_hz"],
}


class Device:
    """One device's own MQTT 5 connection, with its last will."""

    def __init__(self, broker: Mosquitto, client_id: str, will: DeviceMessage | None) -> None:
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        if will is not None:
            self.client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        connected = threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert connected.wait(10), f"{client_id}: no CONNACK"

    def send(self, messages: list[DeviceMessage]) -> None:
        """Publish in order and wait until the broker has each one."""
        infos = [
            self.client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain) for m in messages
        ]
        for info in infos:
            info.wait_for_publish(10)

    def die(self) -> None:
        """Leave so that the broker publishes the will (DISCONNECT, reason code 4)."""
        self.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
        self.client.loop_stop()


def stored_values(row: dict[str, Any], fields: frozenset[str]) -> dict[str, float]:
    """The stored columns of the canonical fields `fields`."""
    return {col: row[col] for f in sorted(fields) for col in COLUMNS[f]}


def expected_values(reading: dict[str, Any], fields: frozenset[str]) -> dict[str, float]:
    """The canonical reading as the columns it is stored in."""
    out: dict[str, float] = {}
    for f in sorted(fields):
        value = reading[f]
        values = value if isinstance(value, list) else [value]
        out.update(zip(COLUMNS[f], (float(v) for v in values), strict=True))
    return out


def assert_close(got: dict[str, Any], want: dict[str, float], what: str) -> None:
    assert got.keys() == want.keys(), what
    bad = {
        k: (got[k], want[k])
        for k in want
        if got[k] is None or not math.isclose(got[k], want[k], rel_tol=1e-9, abs_tol=1e-9)
    }
    assert not bad, f"{what}: stored != canonical: {bad}"


async def test_tasmota_shelly_sparkplug_store_the_same_readings(
    tmp_path: Path, mosquitto: Mosquitto, influx1: InfluxDB1, run_gateway
) -> None:
    config = make_config(
        tmp_path,
        mosquitto,
        storage={"api": "v1", "url": influx1.url, "database": "meters", "precision": "s"},
        mqtt={"subscriptions": ALL_FORMATS},
    )
    gw = await run_gateway(config)

    start = math.floor(time.time() / INTERVAL_S) * INTERVAL_S - READINGS * INTERVAL_S
    model = MeterModel(METER, seed=42, phases=3, start=start)
    tasmota = TasmotaDevice("plug-1")
    shelly = ShellyDevice("shellypro3em-1")
    edge = SparkplugEdge("edge-1", "meter-1", group="meters")
    series = {
        "tasmota": tasmota.meter_id,
        "shelly": shelly.meter_id,
        "sparkplug-b": edge.meter_id,
    }
    assert series == {
        "tasmota": "plug-1",
        "shelly": "shellypro3em-1",
        "sparkplug-b": "edge-1:meter-1",
    }
    devices = {
        "json": Device(mosquitto, "meter-m-sim", None),
        "tasmota": Device(mosquitto, "tasmota-plug-1", tasmota.will()),
        "shelly": Device(mosquitto, "shellypro3em-1", shelly.will()),
        "sparkplug-b": Device(mosquitto, "edge-1", edge.will()),
    }
    devices["tasmota"].send([tasmota.lwt(True)])
    devices["shelly"].send([shelly.online(True)])

    truth: dict[int, dict[str, Any]] = {}
    for k in range(READINGS):
        model.advance(start + k * INTERVAL_S)
        reading = model.reading()
        truth[round(epoch_s(reading["ts"]))] = reading  # type: ignore[arg-type]
        devices["json"].send([DeviceMessage(f"meters/{METER}/reading", orjson.dumps(reading))])
        devices["tasmota"].send([tasmota.sensor(reading)])
        devices["shelly"].send([shelly.notify(reading)])
        devices["sparkplug-b"].send(edge.birth(reading) if k == 0 else [edge.data(reading)])
    assert sorted(truth) == [start + k * INTERVAL_S for k in range(READINGS)]

    total = READINGS * 4

    def rows() -> list[dict[str, Any]]:
        return influx1.query("SELECT * FROM meter_reading GROUP BY meter_id")

    await wait_until(lambda: len(rows()) >= total, within=30, what=f"{total} readings stored")
    by_meter: dict[str, dict[int, dict[str, Any]]] = {}
    for row in rows():
        by_meter.setdefault(row["meter_id"], {})[row["time"]] = row
    assert sorted(by_meter) == sorted([METER, *series.values()])
    assert not gw.pipeline.rejected, dict(gw.pipeline.rejected)

    reference = by_meter[METER]
    assert sorted(reference) == sorted(truth)
    for fmt, meter_id in series.items():
        stored = by_meter[meter_id]
        assert sorted(stored) == sorted(truth), f"{fmt}: timestamps differ from the meter's"
        for ts, reading in truth.items():
            want = expected_values(reading, CARRIES[fmt])
            what = f"{fmt} {meter_id} at {ts}"
            assert_close(stored_values(stored[ts], CARRIES[fmt]), want, what)
            assert_close(stored_values(reference[ts], CARRIES[fmt]), want, f"json at {ts}")
            assert stored[ts]["quality"] == "actual", what

    # Births and last wills: online, then offline for each device (and Sparkplug's node).
    assert gw.pipeline.signals["online"] >= 4  # Tasmota, Shelly, NBIRTH, DBIRTH
    for name in ("tasmota", "shelly", "sparkplug-b"):
        devices[name].die()
    devices["json"].client.disconnect()  # a clean leave: no will
    devices["json"].client.loop_stop()
    await wait_until(
        lambda: gw.pipeline.signals["offline"] >= 4,
        within=20,
        what="offline from plug-1, shellypro3em-1, edge-1 and edge-1:meter-1",
    )
    assert gw.pipeline.signals["offline"] == 4
    assert not gw.pipeline.rejected, dict(gw.pipeline.rejected)
