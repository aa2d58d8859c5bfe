from __future__ import annotations

import time

import orjson

from tests.conftest import make_config, wait_until


async def test_smoke_v2(tmp_path, mosquitto, victoria, publisher, run_gateway):
    cfg = make_config(tmp_path, mosquitto, storage={"api": "v2", "url": victoria.url})
    gw = await run_gateway(cfg)
    now = int(time.time())
    publisher.publish("meters/m-1/reading", orjson.dumps({"ts": now, "power_w": 5.5}))
    await wait_until(lambda: gw.writer.lines_written >= 1, what="write")
    assert victoria.count("meter_reading_power_w") == 1
