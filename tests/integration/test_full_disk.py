"""A full disk (the kernel's ENOSPC, from /dev/full) loses no rejection: the dead-letter
store keeps its records, says so, and writes them once the disk has room again."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime

import orjson

from meter_gateway.storage.deadletter import DeadLetterStore, dead_letter_record
from tests.conftest import make_config, wait_until


async def test_dead_letter_survives_a_full_disk(tmp_path, caplog):
    store = DeadLetterStore(tmp_path, flush_interval_s=0.01)
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    store.directory.mkdir(parents=True)
    target = store.path_for(day)
    os.symlink("/dev/full", target)  # every write now fails with ENOSPC
    for i in range(3):
        store.add(dead_letter_record(reason=f"bad {i}", source="mqtt", payload=b"x", topic="t"))
    await store.flush()
    assert store.write_errors == 1
    assert "No space left on device" in caplog.text
    target.unlink()  # room again
    await store.flush()
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["reason"] for r in records] == ["bad 0", "bad 1", "bad 2"]
    await store.close()


async def test_gateway_keeps_running_while_the_dead_letter_disk_is_full(
    tmp_path, mosquitto, victoria, publisher, run_gateway, monkeypatch
):
    monkeypatch.setattr("meter_gateway.gateway.app.STALL_S", 0.5)
    cfg = make_config(tmp_path, mosquitto, storage={"url": victoria.url})
    gw = await run_gateway(cfg)
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    gw.dead_letter.directory.mkdir(parents=True, exist_ok=True)
    target = gw.dead_letter.path_for(day)
    os.symlink("/dev/full", target)
    now = int(time.time())
    publisher.publish_many(
        [
            ("meters/d-1/reading", b"not json"),
            ("meters/d-2/reading", orjson.dumps({"ts": now, "power_w": 2.0})),
        ]
    )
    await wait_until(lambda: gw.dead_letter.write_errors >= 1, what="the ENOSPC")
    await wait_until(lambda: gw.writer.lines_written >= 1, what="the good reading stored")
    # The rejected message is not acknowledged before its record is on disk, nor is
    # the good one after it (acks go in order): the broker still holds both.
    assert gw.mqtt.held == 2
    await wait_until(lambda: not gw.ready()[0], what="readiness to report the stall")
    assert "not acknowledged" in "; ".join(gw.ready()[1])
    target.unlink()
    await wait_until(lambda: target.exists() and target.read_text(), what="the record written")
    assert "invalid JSON" in json.loads(target.read_text())["reason"]
    await wait_until(lambda: gw.mqtt.held == 0, what="the held acks released")
    assert gw.ready()[0], gw.ready()[1]
