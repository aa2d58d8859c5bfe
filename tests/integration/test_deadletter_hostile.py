"""Hostile batches, a forged replay record and a flood of meter ids against a running
gateway, a real mosquitto and a real VictoriaMetrics.

- Batches whose elements nest 34 deep (1,000 and 3,000 of them) and a 1 MiB
  `{"readings":[1,1,...]}`: the dead-letter store grows by about the input, what is
  republished on `gateway/<id>/rejected` is bounded, and a good reading right after is
  stored. The growth factor, the process's peak RSS and how long the good reading took
  are printed (`-s`) for the record.
- A reading of another meter published on `replay:evil/online` (a Shelly `+/online`
  subscription takes that topic) and then `dead-letter replay`: nothing stored for it.
- `limits.max_meters`: a flood of new meter ids beyond the limit is dead-lettered while
  a meter of the topology and one admitted before keep being stored.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest

from meter_gateway.simulators.services import Mosquitto, VictoriaMetrics
from tests.conftest import Publisher, make_config, wait_until
from tests.unit.test_deadletter_bounds import deep_batch, ones_batch

pytestmark = pytest.mark.integration

DEFAULT_SUBSCRIPTIONS = [
    {"topic": "meters/+/reading", "format": "json"},
    {"topic": "concentrators/+/readings", "format": "json-batch"},
    {"topic": "meters/+/event", "format": "meter-event"},
    {"topic": "meters/+/status", "format": "lwt"},
]


def memory_kib(field: str) -> int:
    """VmRSS or VmHWM (peak) of this process, which runs the gateway, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Listener:
    """Counts what the gateway republishes on its rejected topic."""

    def __init__(self, broker: Mosquitto, topic: str) -> None:
        self.messages = 0
        self.bytes = 0
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.messages += 1
        self.bytes += len(msg.payload)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def dead_letter_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in (data_dir / "dead-letter").glob("*.jsonl"))


def series(victoria: VictoriaMetrics, meter: str) -> list[dict[str, Any]]:
    return victoria.export(f'{{__name__=~"meter_reading_.*", meter_id="{meter}"}}')


def power_values(victoria: VictoriaMetrics, meter: str) -> int:
    found = victoria.export(f'{{__name__="meter_reading_power_w", meter_id="{meter}"}}')
    return sum(len(s["values"]) for s in found)


async def test_hostile_batches_cost_about_their_size_and_delay_nothing_for_long(
    tmp_path: Path,
    mosquitto: Mosquitto,
    victoria: VictoriaMetrics,
    publisher: Publisher,
    run_gateway: Any,
) -> None:
    cfg = make_config(tmp_path, mosquitto, storage={"url": victoria.url})
    listener = Listener(mosquitto, "gateway/gw-test/rejected")
    try:
        gw = await run_gateway(cfg)
        rss_before, peak_before = memory_kib("VmRSS"), memory_kib("VmHWM")
        batches = [deep_batch(1000), deep_batch(3000), ones_batch()]
        assert [len(b) // 1000 for b in batches] == [70, 210, 1048]  # as found: 69 KB, 207 KB
        publisher.publish_many([("concentrators/dc-01/readings", b) for b in batches])
        sent = time.monotonic()
        good = {"ts": int(time.time()), "energy_import_kwh": 1.0, "voltage_v": 230.0}
        publisher.publish("meters/m-after/reading", orjson.dumps(good))
        await wait_until(
            lambda: gw.pipeline.spooled.get("mqtt", 0) >= 1, within=60, what="the good reading"
        )
        handled_s = time.monotonic() - sent
        await wait_until(lambda: series(victoria, "m-after"), what="the good reading stored")
        stored_s = time.monotonic() - sent
        await wait_until(lambda: gw.dead_letter.durable >= gw.dead_letter.count, what="on disk")

        elements = 1000 + 3000 + batches[2].count(b",") + 1
        assert sum(gw.pipeline.rejected.values()) == elements
        growth = dead_letter_bytes(cfg.gateway.data_dir) / sum(len(b) for b in batches)
        assert growth < 2.5, f"dead-letter growth {growth:.2f} x the input"
        assert gw.dead_letter.count <= 6  # records, for 528,280 rejected elements
        await wait_until(lambda: listener.messages >= 1 or gw.dead_letter.not_published)
        # At most 64 KiB a record, 256 KiB a second: before, 345 MB went out for one batch.
        assert listener.bytes <= 1 << 20
        assert gw.ready()[0], gw.ready()[1]
        print(
            f"\nhostile batches: {elements:,} elements in {sum(map(len, batches)):,} bytes -> "
            f"{gw.dead_letter.count} dead-letter records, growth {growth:.2f} x; republished "
            f"{listener.messages} message(s), {listener.bytes:,} bytes "
            f"({gw.dead_letter.not_published} record(s) not); good reading handled after "
            f"{handled_s:.2f} s, stored after {stored_s:.2f} s; RSS {rss_before // 1024} -> "
            f"{memory_kib('VmRSS') // 1024} MiB, peak {peak_before // 1024} -> "
            f"{memory_kib('VmHWM') // 1024} MiB (this process: pytest and the gateway)"
        )
    finally:
        listener.close()


def write_config(tmp_path: Path, broker: Mosquitto, victoria: VictoriaMetrics) -> Path:
    path = tmp_path / "gateway.yaml"
    subs = "".join(
        f"    - {{topic: '{s['topic']}', format: {s['format']}}}\n" for s in DEFAULT_SUBSCRIPTIONS
    )
    path.write_text(
        f"gateway: {{id: gw-test, data_dir: '{tmp_path / 'var'}'}}\n"
        f"mqtt:\n  host: {broker.host}\n  port: {broker.port}\n  subscriptions:\n{subs}"
        "    - {topic: '+/online', format: shelly-online}\n"
        f"storage: {{url: '{victoria.url}', batch_size: 500, flush_interval_s: 0.1}}\n"
    )
    return path


async def test_a_forged_replay_topic_writes_nothing_through_dead_letter_replay(
    tmp_path: Path,
    mosquitto: Mosquitto,
    victoria: VictoriaMetrics,
    publisher: Publisher,
    run_gateway: Any,
) -> None:
    subscriptions = [*DEFAULT_SUBSCRIPTIONS, {"topic": "+/online", "format": "shelly-online"}]
    cfg = make_config(
        tmp_path,
        mosquitto,
        storage={"url": victoria.url},
        mqtt={"subscriptions": subscriptions},
    )
    gw = await run_gateway(cfg)
    forged = {
        "meter_id": "m-good1",
        "ts": int(time.time()),
        "energy_import_kwh": 77777,
        "voltage_v": 230.0,
    }
    publisher.publish("replay:evil/online", orjson.dumps(forged))
    await wait_until(lambda: gw.dead_letter.durable >= 1, what="the forged message kept")
    await gw.stop()

    replay = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "meter_gateway.gateway.cli",
            "dead-letter",
            "replay",
            "--since",
            "2m",
            "-c",
            str(write_config(tmp_path, mosquitto, victoria)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert replay.returncode == 0, replay.stderr
    assert "stored 0 reading(s)" in replay.stdout, replay.stdout
    assert not series(victoria, "m-good1"), "a client wrote m-good1's readings through replay"


async def test_a_flood_of_new_meters_is_refused_beyond_the_limit(
    tmp_path: Path,
    mosquitto: Mosquitto,
    victoria: VictoriaMetrics,
    publisher: Publisher,
    run_gateway: Any,
) -> None:
    topology = tmp_path / "topology.csv"
    topology.write_text("meter_id,transformer_id\nk-1,tx-1\n")
    cfg = make_config(
        tmp_path,
        mosquitto,
        storage={"url": victoria.url},
        topology={"file": str(topology)},
        limits={"max_meters": 20},
        events={"enabled": False},
    )
    gw = await run_gateway(cfg)
    now = int(time.time())

    def reading(meter: str, t: int) -> bytes:
        return orjson.dumps({"meter_id": meter, "ts": t, "power_w": 5.0})

    publisher.publish("meters/early-1/reading", reading("early-1", now - 600))
    await wait_until(lambda: gw.pipeline.spooled.get("mqtt", 0) == 1, what="early-1 taken")
    messages: list[tuple[str, bytes | str]] = []
    for b in range(20):
        flood = [{"meter_id": f"f-{b}-{i}", "ts": now, "power_w": 1.0} for i in range(100)]
        messages.append(("concentrators/dc-9/readings", orjson.dumps({"readings": flood})))
        messages.append(("meters/k-1/reading", reading("k-1", now - 300 + b)))
        messages.append(("meters/early-1/reading", reading("early-1", now - 300 + b)))
    publisher.publish_many(messages)
    await wait_until(lambda: gw.pipeline.messages >= 1 + len(messages), what="all handled")

    stats = gw.pipeline.stats()
    assert stats["meters_admitted"] == 20  # early-1 and 19 of the flood; k-1 is the topology's
    assert stats["meters_refused"] == 2000 - 19
    assert gw.pipeline.rejected["meter_limit"] == 2000 - 19
    await wait_until(lambda: power_values(victoria, "k-1") == 20, what="all of k-1 stored")
    await wait_until(lambda: power_values(victoria, "early-1") == 21, what="all of early-1")
    flood_series = victoria.export('{__name__="meter_reading_power_w", meter_id=~"f-.*"}')
    assert len(flood_series) == 19
    await wait_until(lambda: gw.dead_letter.durable >= gw.dead_letter.count, what="on disk")
    assert gw.dead_letter.count <= 20  # one record a batch, not one per refused reading
    # What an operator sees: an attention line on the page and the metrics.
    from prometheus_client import generate_latest
    from prometheus_client.core import CollectorRegistry

    from meter_gateway.gateway.status import GatewayCollector, page_view, status_snapshot

    snap = status_snapshot(gw)
    assert snap["admission"] == {"max_meters": 20, "meters_admitted": 20, "meters_refused": 1981}
    attention = " ".join(page_view(snap)["attention"])
    assert "limits.max_meters (20) reached: 1,981 readings or messages" in attention
    registry = CollectorRegistry()
    registry.register(GatewayCollector(gw))
    metrics = generate_latest(registry).decode()
    assert "meter_gateway_meters_refused_total 1981.0" in metrics
    assert "meter_gateway_meters_admitted 20.0" in metrics
    rejected = 'meter_gateway_readings_rejected_total{reason="meter_limit",source="mqtt"} 1981.0'
    assert rejected in metrics
