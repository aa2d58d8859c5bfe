"""A broker restart, a database outage, a field type conflict, and SIGTERM: nothing lost."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import orjson
import paho.mqtt.client as paho
import yaml

from tests.conftest import Publisher, make_config, wait_until


def readings(prefix: str, n: int, now: int) -> list[tuple[str, bytes]]:
    return [
        (f"meters/{prefix}-{i}/reading", orjson.dumps({"ts": now - i, "power_w": float(i)}))
        for i in range(n)
    ]


async def test_broker_restart_loses_nothing_published_while_disconnected(
    tmp_path, mosquitto, victoria, run_gateway
):
    cfg = make_config(
        tmp_path,
        mosquitto,
        storage={"url": victoria.url},
        mqtt={"reconnect_min_s": 2.0, "reconnect_max_s": 4.0},
    )
    gw = await run_gateway(cfg)
    now = int(time.time())
    pub = Publisher(mosquitto)
    pub.publish_many(readings("before", 20, now))
    pub.close()
    await wait_until(lambda: gw.writer.lines_written >= 20, what="the first readings")

    mosquitto.restart()  # the session and its subscriptions survive in mosquitto's store
    await wait_until(lambda: not gw.mqtt.connected, what="the gateway to notice")
    pub = Publisher(mosquitto)
    pub.publish_many(readings("during", 50, now))
    pub.close()
    assert not gw.mqtt.connected, "published while the gateway was away"

    await wait_until(lambda: gw.mqtt.connected, within=15, what="the gateway to reconnect")
    await wait_until(lambda: gw.writer.lines_written >= 70, what="the queued readings")
    assert victoria.count("meter_reading_power_w") == 70
    assert gw.mqtt.connects == 2
    # Messages that arrive right after CONNACK are acked like any other: none is
    # handled twice.
    assert gw.pipeline.messages == 70
    assert gw.pipeline.duplicates == 0


async def test_database_down_then_up_loses_nothing(
    tmp_path, mosquitto, victoria, publisher, run_gateway
):
    gw = await run_gateway(make_config(tmp_path, mosquitto, storage={"url": victoria.url}))
    victoria.stop()
    now = int(time.time())
    publisher.publish_many(readings("m", 300, now))
    await wait_until(lambda: gw.writer.retries >= 2, what="failed writes being retried")
    assert not gw.writer.healthy
    assert gw.writer.lines_written == 0
    victoria.start()
    await wait_until(lambda: gw.writer.lines_written >= 300, within=30, what="the backlog")
    assert gw.writer.healthy
    assert victoria.count("meter_reading_power_w") == 300


async def test_storage_backpressure_holds_acks_and_loses_nothing(
    tmp_path, mosquitto, victoria, publisher, run_gateway
):
    cfg = make_config(
        tmp_path,
        mosquitto,
        mqtt={"receive_maximum": 20},
        storage={
            "url": victoria.url,
            "batch_size": 10,
            "max_buffered_lines": 20,
            "spool_max_bytes": 4096,
        },
    )
    events: list[dict] = []
    watcher = paho.Client(paho.CallbackAPIVersion.VERSION2)
    watcher.on_message = lambda c, u, m: events.append(orjson.loads(m.payload))
    watcher.connect(mosquitto.host, mosquitto.port)
    watcher.subscribe("events/storage_backpressure/#", qos=1)
    watcher.loop_start()
    gw = await run_gateway(cfg)
    victoria.stop()
    now = int(time.time())
    publisher.publish_many(readings("bp", 200, now))
    await wait_until(lambda: gw.spool.paused, what="the full spool to pause the source")
    # Acks are held while paused, and what the gateway holds in memory stays bounded:
    # the writer's buffer bound (plus a record) and the receive window, even though
    # mosquitto overruns that window under a burst.
    await wait_until(lambda: gw.mqtt.held >= 20, what="acks being held")
    assert gw.writer.pending <= 20 + 20
    assert gw.pipeline.messages < 200
    assert not gw.ready()[0]
    assert "the spool is full" in "; ".join(gw.ready()[1])
    victoria.start()
    await wait_until(
        lambda: victoria.count("meter_reading_power_w") == 200, within=60, what="all 200 stored"
    )
    # One condition, one event: each time the spool filled, raised once and cleared
    # once with the same id (a 4 KiB spool fills again while the backlog drains).
    await wait_until(lambda: not gw.spool.paused, what="the spool below half")
    await wait_until(
        lambda: len(events) >= 2 and events[-1]["state"] == "cleared",
        what="the backpressure event raised and cleared",
    )
    watcher.loop_stop()
    watcher.disconnect()
    states = [e["state"] for e in events]
    assert states == ["raised", "cleared"] * (len(events) // 2)
    for raised, cleared in zip(events[::2], events[1::2], strict=True):
        assert raised["event_id"] == cleared["event_id"]
        assert cleared["duration_s"] > 0
    assert len({e["event_id"] for e in events}) == len(events) // 2
    assert events[0]["gateway_id"] == "gw-test"


async def test_v1_field_type_conflict_isolates_the_bad_line(
    tmp_path, mosquitto, influx1, publisher, run_gateway
):
    # InfluxDB 1.x keeps one type per field per shard (7-day shard groups here). An
    # integer power_w stored in an old shard makes the gateway's float for that shard a
    # conflict, while readings in the current shard are fine.
    now = int(time.time())
    week = 7 * 86400
    old = (now - 20 * 86400) // week * week + 3600
    req = urllib.request.Request(
        f"{influx1.url}/write?db=meters&precision=s",
        data=f"meter_reading,meter_id=x power_w=1i {old}".encode(),
        method="POST",
    )
    urllib.request.urlopen(req, timeout=10).close()  # noqa: ASYNC210 - before the gateway runs
    cfg = make_config(
        tmp_path,
        mosquitto,
        storage={"api": "v1", "url": influx1.url},
        validation={"max_age_s": 30 * 86400},
    )
    gw = await run_gateway(cfg)
    msgs = readings("m", 10, now)
    msgs[3] = ("meters/m-3/reading", orjson.dumps({"ts": old + 60, "power_w": 3.0}))
    publisher.publish_many(msgs)
    await wait_until(
        lambda: gw.writer.lines_written >= 9 and gw.writer.lines_rejected >= 1,
        what="9 stored and 1 refused",
    )
    rows = influx1.query("SELECT power_w FROM meter_reading WHERE time > now() - 10m GROUP BY *")
    assert sorted(r["meter_id"] for r in rows) == sorted(f"m-{i}" for i in range(10) if i != 3)
    assert [
        r["meter_id"]
        for r in influx1.query("SELECT * FROM meter_reading GROUP BY *")
        if r["meter_id"] == "m-3"
    ] == []
    await wait_until(
        lambda: list((cfg.gateway.data_dir / "dead-letter").glob("*.jsonl")),
        what="the dead-letter file",
    )
    (f,) = (cfg.gateway.data_dir / "dead-letter").glob("*.jsonl")
    (rec,) = [json.loads(line) for line in f.read_text().splitlines()]
    assert rec["source"] == "storage"
    assert "field type conflict" in rec["reason"]
    assert rec["payload"].startswith("meter_reading,meter_id=m-3,source=mqtt power_w=3.0")


def test_sigterm_drains_and_exits_zero(tmp_path, mosquitto, victoria):
    cfg_file = tmp_path / "gw.yaml"
    cfg_file.write_text(
        yaml.safe_dump(
            {
                "gateway": {"id": "gw-sig", "data_dir": str(tmp_path / "var")},
                "mqtt": {"host": mosquitto.host, "port": mosquitto.port},
                # Only a full batch or the drain writes: the last partial batch proves the drain.
                "storage": {"url": victoria.url, "batch_size": 100, "flush_interval_s": 3600},
                "http": {"listen": "127.0.0.1:0"},
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "meter_gateway.gateway.cli", "run", "-c", str(cfg_file)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        for line in proc.stderr:
            if "mqtt: connected" in line:
                break
        pub = Publisher(mosquitto)
        pub.publish_many(readings("s", 250, int(time.time())))
        pub.close()
        deadline = time.monotonic() + 20
        while victoria.count("meter_reading_power_w") < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=30) == 0, rest
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    m = re.search(r"(\d+) readings received, (\d+) stored", rest)
    assert m, rest
    received, stored = int(m.group(1)), int(m.group(2))
    assert received >= 200
    assert stored == received
    assert victoria.count("meter_reading_power_w") == stored
    assert "draining and stopping" in rest


def test_run_refuses_a_taken_status_address(tmp_path, mosquitto, victoria, capsys):
    import socket

    from meter_gateway.gateway.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg_file = tmp_path / "gw.yaml"
        cfg_file.write_text(
            yaml.safe_dump(
                {
                    "gateway": {"data_dir": str(tmp_path / "var")},
                    "mqtt": {"host": mosquitto.host, "port": mosquitto.port},
                    "storage": {"url": victoria.url},
                    "http": {"listen": f"127.0.0.1:{port}"},
                }
            )
        )
        assert main(["run", "-c", str(cfg_file)]) == 1
    err = capsys.readouterr().err
    assert f"http.listen 127.0.0.1:{port}: cannot listen" in err
    assert "not starting" in err
