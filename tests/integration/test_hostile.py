"""Hostile messages against a running gateway, a real broker and a real database.

6,000 generated hostile payloads on the four default topics, then 1,000 good readings:
all good readings stored, the broker connection never dropped, no traceback logged,
every hostile message in the dead-letter store with a reason in words.
"""

from __future__ import annotations

import json
import logging
import time

import orjson

from tests.conftest import make_config, wait_until
from tests.hostile import hostile_messages
from tests.unit.test_hostile_input import PYTHON_TEXT


def dead_letters(data_dir) -> list[dict]:
    files = sorted((data_dir / "dead-letter").glob("*.jsonl"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


async def test_hostile_stream_then_good_readings(
    tmp_path, mosquitto, victoria, publisher, run_gateway, caplog
):
    caplog.set_level(logging.INFO)
    cfg = make_config(
        tmp_path,
        mosquitto,
        storage={"url": victoria.url},
        mqtt={"max_payload_bytes": 65_536},
    )
    gw = await run_gateway(cfg)
    hostile = list(hostile_messages(6000))
    publisher.publish_many([(m.topic, m.payload) for m in hostile])

    now = int(time.time())
    good = [
        (f"meters/good-{i:04d}/reading", orjson.dumps({"ts": now - i, "power_w": 100.0 + i}))
        for i in range(1000)
    ]
    publisher.publish_many(good)

    def stored_good() -> int:
        victoria.flush()
        return len(victoria.export('{__name__="meter_reading_power_w", meter_id=~"good-.*"}'))

    await wait_until(lambda: stored_good() == 1000, within=60, what="1,000 good readings stored")
    # Every hostile message is kept, with a reason in words (a batch may hold several).
    await wait_until(
        lambda: gw.dead_letter.durable >= len(hostile), within=30, what="dead letters on disk"
    )
    records = dead_letters(cfg.gateway.data_dir)
    kept = {r["topic"] for r in records}
    missing = [m.kind for m in hostile if m.topic not in kept]
    assert not missing, f"hostile messages without a dead-letter record: {missing[:10]}"
    wordy = [r["reason"] for r in records if PYTHON_TEXT.search(r["reason"])]
    assert not wordy, wordy[:5]

    assert gw.mqtt.connects == 1, "the broker connection dropped"
    assert gw.pipeline.internal_errors == 0
    assert gw.mqtt.handler_errors == 0
    assert gw.ready()[0], gw.ready()[1]
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert not tracebacks, tracebacks[0].getMessage()
    # One line per kind of rejection a minute, not one per message.
    rejected_lines = [r for r in caplog.records if r.getMessage().startswith("rejected from")]
    assert 0 < len(rejected_lines) < 150, len(rejected_lines)
