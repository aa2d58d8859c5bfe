"""End to end: MQTT messages through a running gateway into a real database, read back."""

from __future__ import annotations

import random
import time
from typing import Any

import orjson
import pytest

from tests.conftest import make_config, wait_until

FIELDS = ("energy_import_kwh", "energy_export_kwh", "power_w", "power_factor", "frequency_hz")


def fleet_readings(now: int) -> tuple[list[tuple[str, bytes]], dict[tuple[str, int], dict]]:
    """1,000 single readings from 100 meters plus a 20-reading concentrator batch."""
    rng = random.Random(7)
    messages: list[tuple[str, bytes]] = []
    expected: dict[tuple[str, int], dict[str, Any]] = {}
    for m in range(100):
        meter = f"m-{m:04d}"
        register = rng.uniform(100, 20000)
        export = rng.uniform(0, 50)
        for k in range(10):
            ts = now - 3600 + k * 300
            register = round(register + rng.uniform(0, 2), 3)
            export = round(export + rng.uniform(0, 0.5), 3)
            values = {
                "energy_import_kwh": register,
                "energy_export_kwh": export,
                "power_w": round(rng.uniform(-2000, 9000), 1),
                "voltage_v": [round(rng.uniform(220, 240), 1) for _ in range(3)],
                "current_a": [round(rng.uniform(0, 30), 2) for _ in range(3)],
                "power_factor": round(rng.uniform(0.8, 1), 3),
                "frequency_hz": round(rng.uniform(49.9, 50.1), 2),
            }
            payload = (
                {"ts": ts, **values}
                if k % 2
                else {
                    "meter_id": meter,
                    "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)),
                    **values,
                }
            )
            messages.append((f"meters/{meter}/reading", orjson.dumps(payload)))
            expected[(meter, ts)] = values
    batch = []
    for m in range(20):
        meter = f"c-{m:04d}"
        ts = now - 900
        values = {"energy_import_kwh": 100.5 + m, "power_w": 230.25 * m, "voltage_v": 231.5}
        batch.append({"meter_id": meter, "ts": ts, **values})
        expected[(meter, ts)] = values
    messages.append(
        (
            "concentrators/dc-01/readings",
            orjson.dumps({"concentrator_id": "dc-01", "readings": batch}),
        )
    )
    return messages, expected


def flatten(values: dict[str, Any]) -> dict[str, float]:
    out = {k: float(values[k]) for k in FIELDS if k in values}
    for key, names in (("voltage_v", "voltage_l{}_v"), ("current_a", "current_l{}_a")):
        v = values.get(key)
        if isinstance(v, list):
            out.update({names.format(i + 1): float(x) for i, x in enumerate(v)})
        elif v is not None:
            out[names.format(1)] = float(v)
    return out


TAGS: dict[str, dict[str, str]] = {}  # meter id -> tags seen in the database


def place(meter_id: str) -> dict[str, str]:
    """The topology the test gives: meters m-0000..m-0049 on tx-1 (feeder f 1), the rest none."""
    if meter_id.startswith("m-00") and int(meter_id[2:]) < 50:
        return {"transformer_id": "tx-1", "feeder_id": "f 1"}
    return {}


def stored_vm(victoria) -> dict[tuple[str, int], dict[str, float]]:
    got: dict[tuple[str, int], dict[str, float]] = {}
    for series in victoria.export('{__name__=~"meter_reading_.*"}'):
        labels = series["metric"]
        TAGS[labels["meter_id"]] = {
            k: v for k, v in labels.items() if k in ("transformer_id", "feeder_id")
        }
        field = labels["__name__"].removeprefix("meter_reading_")
        if field == "quality":
            continue  # VictoriaMetrics keeps no strings; v1 checks the quality field
        assert labels["source"] == "mqtt"
        for value, ts_ms in zip(series["values"], series["timestamps"], strict=True):
            got.setdefault((labels["meter_id"], ts_ms // 1000), {})[field] = value
    return got


def stored_v1(influx) -> dict[tuple[str, int], dict[str, float]]:
    got: dict[tuple[str, int], dict[str, float]] = {}
    for row in influx.query("SELECT * FROM meter_reading GROUP BY *"):
        assert row["source"] == "mqtt"
        assert row["quality"] == "actual"
        TAGS[row["meter_id"]] = {k: row[k] for k in ("transformer_id", "feeder_id") if row.get(k)}
        got[(row["meter_id"], row["time"])] = {
            k: v
            for k, v in row.items()
            if k not in {"time", "meter_id", "source", "quality", "transformer_id", "feeder_id"}
            and v is not None
        }
    return got


@pytest.mark.parametrize("api", ["v2", "v1"])
async def test_readings_are_stored_field_for_field(
    api, tmp_path, mosquitto, victoria, influx1, publisher, run_gateway
):
    db = victoria if api == "v2" else influx1
    topology = tmp_path / "topology.csv"
    topology.write_text(
        "meter_id,transformer_id,feeder_id\n" + "".join(f"m-{m:04d},tx-1,f 1\n" for m in range(50))
    )
    TAGS.clear()
    cfg = make_config(
        tmp_path, mosquitto, storage={"api": api, "url": db.url}, topology={"file": str(topology)}
    )
    gw = await run_gateway(cfg)
    messages, expected = fleet_readings(int(time.time()))
    publisher.publish_many(messages)
    await wait_until(
        # Readings only (meter_event lines of the detectors count in lines_written too).
        lambda: sum(gw.writer.lines_by_source.values()) >= len(expected),
        what="1,020 readings written",
    )

    got = stored_vm(db) if api == "v2" else stored_v1(db)
    assert set(got) == set(expected)
    for key, values in expected.items():
        assert got[key] == flatten(values), key
    # Tags from the topology file, escaped on the wire and read back as written.
    assert {m: TAGS[m] for m in TAGS} == {m: place(m) for m in TAGS}
    assert len(TAGS) == 120
    assert gw.pipeline.spooled["mqtt"] == len(expected)
    assert sum(gw.pipeline.rejected.values()) == 0
