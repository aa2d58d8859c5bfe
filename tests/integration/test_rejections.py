"""Bad input lands in the dead-letter store with an actionable reason; good readings
around it are stored; the gateway keeps going."""

from __future__ import annotations

import base64
import json
import threading
import time

import orjson
import paho.mqtt.client as paho

from tests.conftest import make_config, wait_until


def dead_letters(data_dir) -> list[dict]:
    files = sorted((data_dir / "dead-letter").glob("*.jsonl"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


async def test_each_bad_input_is_dead_lettered_and_good_ones_stored(
    tmp_path, mosquitto, victoria, publisher, run_gateway
):
    cfg = make_config(
        tmp_path, mosquitto, storage={"url": victoria.url}, mqtt={"max_payload_bytes": 4096}
    )
    # Watch the rejection topic as a utility system would.
    seen: list[bytes] = []
    got_all = threading.Event()
    watcher = paho.Client(paho.CallbackAPIVersion.VERSION2)

    def on_message(c, u, m):
        seen.append(m.payload)
        if len(seen) >= 10:
            got_all.set()

    watcher.on_message = on_message
    watcher.connect(mosquitto.host, mosquitto.port)
    watcher.subscribe("gateway/gw-test/rejected", qos=1)
    watcher.loop_start()

    gw = await run_gateway(cfg)
    now = int(time.time())
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))

    def good(i: int) -> tuple[str, bytes]:
        return f"meters/ok-{i}/reading", orjson.dumps({"ts": now - i, "power_w": 100.0 + i})

    bad = [
        ("meters/m-1/reading", b'{"ts": 1, "power_w": ', "invalid JSON"),
        (
            "meters/m-2/reading",
            f'{{"ts": {now}, "power_w": NaN}}'.encode(),
            "power_w: nan is not a number",
        ),
        (
            "meters/m-3/reading",
            orjson.dumps({"ts": now, "power_w": "812"}),
            "power_w: expected a number, got a string '812'",
        ),
        ("meters/m-4/reading", orjson.dumps({"ts": iso, "power_w": 1.0}), "has no UTC offset"),
        (
            "meters/m-5/reading",
            orjson.dumps({"meter_id": "m-6", "ts": now, "power_w": 1.0}),
            "payload names 'm-6' but the topic is for 'm-5'",
        ),
        (
            "meters/m-7/reading",
            orjson.dumps({"ts": now, "power_w": 1.0, "pad": "x" * 5000}),
            "over max_payload_bytes (4096)",
        ),
        (
            "meters/m-8/reading",
            orjson.dumps({"ts": now, "voltage_v": 5000}),
            "voltage_v: 5000.0 above 1000.0",
        ),
        ("meters/m-9/reading", b"\xff\xfe binary", "invalid JSON"),
    ]
    messages = []
    for i, (topic, payload, _) in enumerate(bad):
        messages += [good(i), (topic, payload)]
    batch = [{"meter_id": f"b-{i}", "ts": now, "power_w": float(i)} for i in range(50)]
    batch[10]["voltage_v"] = [230, 1234.0, 230]
    batch[33]["ts"] = iso
    messages.append(
        (
            "concentrators/dc-9/readings",
            orjson.dumps({"concentrator_id": "dc-9", "readings": batch}),
        )
    )
    messages.append(good(99))
    publisher.publish_many(messages)

    await wait_until(lambda: gw.writer.lines_written >= len(bad) + 1 + 48, what="good readings")
    await wait_until(lambda: len(dead_letters(cfg.gateway.data_dir)) >= 10, what="dead letters")
    records = dead_letters(cfg.gateway.data_dir)
    assert len(records) == 10
    by_topic = {}
    for r in records:
        by_topic.setdefault(r["topic"], []).append(r)
    for topic, _payload, reason in bad:
        (rec,) = by_topic[topic]
        assert reason in rec["reason"], (topic, rec["reason"])
        assert rec["source"] == "mqtt"
        assert rec["received_at"].endswith("Z")
    # The raw payload is kept: text as text, bytes that are not UTF-8 as base64.
    assert (
        by_topic["meters/m-3/reading"][0]["payload"]
        == orjson.dumps({"ts": now, "power_w": "812"}).decode()
    )
    assert (
        base64.b64decode(by_topic["meters/m-9/reading"][0]["payload_base64"]) == b"\xff\xfe binary"
    )
    batch_recs = sorted(by_topic["concentrators/dc-9/readings"], key=lambda r: r["index"])
    assert [r["index"] for r in batch_recs] == [10, 33]
    assert "readings[10]: voltage_v[1]: 1234.0 above 1000.0" in batch_recs[0]["reason"]
    assert json.loads(batch_recs[0]["payload"])["meter_id"] == "b-10"
    assert "readings[33]: ts:" in batch_recs[1]["reason"]

    # Stored: every good single reading and the 48 good ones of the batch.
    assert victoria.count("meter_reading_power_w") == len(bad) + 1 + 48
    assert got_all.wait(10)
    assert {json.loads(p)["reason"] for p in seen} == {r["reason"] for r in records}
    watcher.loop_stop()
    watcher.disconnect()
