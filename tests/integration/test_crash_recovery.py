"""Crashes and outages with the real services: nothing acknowledged is lost.

The gateway runs as `meter-gateway run` in a child process (so it can be SIGKILLed),
InfluxDB 1.x is the database, mosquitto keeps persistent sessions. A publisher thread
sends QoS 1 messages and counts the broker's PUBACKs; at the end of each case every
published reading must be in InfluxDB exactly once (one point per meter and second),
and the spool must have given everything back.

What a case proves rests on the gateway acking a message to the broker only after its
readings are fsync'd in the spool: what the broker has is either still queued for the
gateway's persistent session or in the spool, and both survive a SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections import Counter
from pathlib import Path

import pytest

from meter_gateway.simulators.services import InfluxDB1, Mosquitto
from tests.conftest import make_config, wait_until
from tests.faults import (
    GatewayProcess,
    Message,
    RssSampler,
    StreamPublisher,
    batch_message,
    influx_points,
    influx_series_counts,
    influx_total,
    single_message,
    spool_backlog,
    tmpfs,
)

pytestmark = pytest.mark.integration

#: How long the database is down in the outage case (bench/fault_spool.py: --outage).
OUTAGE_S = 10.0
#: The steady stream's rate in the outage case, readings/s.
STEADY_RATE = 300


def mixed_stream(meters: int, stamps: int, start: int, step_s: int = 60) -> list[Message]:
    """meters x stamps readings, distinct (meter, ts); even stamps as single-reading
    messages, odd ones as 100-reading concentrator batches, interleaved."""
    out: list[Message] = []
    names = [f"m-{i:04d}" for i in range(meters)]
    for j in range(stamps):
        ts = start + j * step_s
        if j % 2 == 0:
            out += [single_message(m, ts, float(i) + j / 1000) for i, m in enumerate(names)]
        else:
            for c in range(0, meters, 100):
                items = [(m, ts, float(c + k) + j / 1000) for k, m in enumerate(names[c : c + 100])]
                out.append(batch_message(f"c-{c // 100:02d}", items))
    return out


def config_for(
    tmp_path: Path, broker: Mosquitto, db: InfluxDB1, data_dir: Path | None = None, **st
):
    cfg = make_config(
        tmp_path,
        broker,
        gateway={"id": "gw-crash", **({"data_dir": str(data_dir)} if data_dir else {})},
        storage={
            "api": "v1",
            "url": db.url,
            "database": "meters",
            "precision": "s",
            "batch_size": 2000,
            **st,
        },
    )
    return GatewayProcess(cfg, tmp_path / "gw")


async def start(gw: GatewayProcess) -> None:
    gw.start()
    await wait_until(gw.connected, within=30, what="the gateway to connect to the broker")


def replay_line(lines: int, records: int) -> str:
    return f"spool: {lines} readings in {records} records not yet in the database"


async def kill_and_restart(gw: GatewayProcess) -> tuple[int, int]:
    """SIGKILL, read what the spool holds, restart; check the restart says it replays
    exactly that. Returns (readings, records) the spool held."""
    gw.kill()
    held = spool_backlog(gw.spool_dir)
    await start(gw)
    log = gw.log()
    if held.records:
        assert replay_line(held.lines, held.records) in log, (
            f"the spool held {held} after the kill; the restart's log:\n{log}"
        )
    else:
        assert "not yet in the database" not in log, log
    return held.lines, held.records


def assert_stored_exactly(db: InfluxDB1, expected: set[tuple[str, int]]) -> None:
    points = influx_points(db)
    counts = Counter(points)
    twice = [p for p, n in counts.items() if n > 1]
    assert not twice, f"{len(twice)} points stored more than once, e.g. {twice[:5]}"
    stored = set(points)
    missing, extra = expected - stored, stored - expected
    assert not missing, f"{len(missing)} readings lost, e.g. {sorted(missing)[:5]}"
    assert not extra, f"{len(extra)} points nobody sent, e.g. {sorted(extra)[:5]}"
    per_meter = Counter(m for m, _ in expected)
    series = influx_series_counts(db)
    assert series == {(m, "mqtt"): n for m, n in per_meter.items()}
    assert influx_total(db) == len(expected)


async def assert_spool_drained(gw: GatewayProcess) -> None:
    await wait_until(
        lambda: spool_backlog(gw.spool_dir).records == 0,
        within=20,
        what="the spool to release every record",
    )
    status = gw.status()
    if status is not None and "spool" in status:
        assert status["spool"]["records"] == 0, status["spool"]


# -- 1. SIGKILL twice mid-stream ---------------------------------------------------------------


async def test_sigkill_twice_mid_stream_loses_and_duplicates_nothing(tmp_path, mosquitto, influx1):
    total = 50_000
    msgs = mixed_stream(500, 100, int(time.time()) - 86_400 + 600)
    expected = {r for m in msgs for r in m.readings}
    assert len(expected) == total
    gw = config_for(tmp_path, mosquitto, influx1)
    pub = None
    try:
        await start(gw)
        pub = StreamPublisher(mosquitto, msgs, rate=5000)
        pub.start()
        held = []
        for threshold in (15_000, 32_000):
            await wait_until(
                lambda t=threshold: pub.published_readings >= t,
                what=f"{threshold} readings published",
            )
            assert not pub.finished.is_set(), "the stream ended before the kill"
            stored = influx_total(influx1)
            held.append(await kill_and_restart(gw))
            print(
                f"SIGKILL at {pub.published_readings} published, {stored} stored: the spool "
                f"held {held[-1][0]} readings in {held[-1][1]} records"
            )
        assert any(n for n, _ in held), f"no kill found anything in the spool to replay: {held}"
        await wait_until(pub.all_acked, within=60, what="every PUBACK")
        assert not pub.failed, pub.failed[:3]
        assert pub.published_set() == expected
        await wait_until(
            lambda: influx_total(influx1) >= total, within=60, what=f"{total} readings stored"
        )
        assert_stored_exactly(influx1, expected)
        await assert_spool_drained(gw)
        assert "Traceback" not in gw.all_logs()
        assert gw.stop() == 0, gw.log_tail()
        assert spool_backlog(gw.spool_dir).records == 0
    finally:
        if pub is not None:
            pub.close()
        gw.close()


# -- 2. the database down, the gateway SIGKILLed meanwhile -------------------------------------


def steady_stream(start: int, meters: int = 100):
    """Single readings round-robin over `meters`, one second further each round; endless."""
    k = 0
    while True:
        yield single_message(f"s-{k % meters:03d}", start + k // meters, float(k % 1000))
        k += 1


async def test_database_outage_with_a_sigkill_loses_nothing(tmp_path, mosquitto, influx1):
    gw = config_for(tmp_path, mosquitto, influx1)
    pub = sampler = None
    try:
        await start(gw)
        sampler = RssSampler(gw)
        sampler.phase = "steady"
        sampler.start()
        pub = StreamPublisher(mosquitto, steady_stream(int(time.time()) - 86_400), rate=STEADY_RATE)
        pub.start()
        await wait_until(
            lambda: influx_total(influx1) >= 3 * STEADY_RATE, what="3 s of readings stored"
        )

        influx1.stop()
        sampler.phase = "outage"
        began = time.monotonic()
        await wait_until(
            lambda: (gw.status() or {}).get("storage", {}).get("healthy") is False,
            what="the gateway to see the database down",
        )
        await asyncio.sleep(max(0.0, began + OUTAGE_S / 2 - time.monotonic()))  # the outage
        sampler.sample()
        lines, _ = await kill_and_restart(gw)
        assert lines > 0, "the database was down, yet the spool held nothing at the kill"
        await asyncio.sleep(max(0.0, began + OUTAGE_S - time.monotonic()))  # the outage
        sampler.sample()
        sampler.phase = "after"
        influx1.start()

        pub.stop()
        await wait_until(pub.all_acked, within=30, what="every PUBACK")
        assert not pub.failed, pub.failed[:3]
        expected = pub.published_set()
        await wait_until(
            lambda: influx_total(influx1) >= len(expected),
            within=60,
            what=f"{len(expected)} readings stored",
        )
        assert_stored_exactly(influx1, expected)
        await assert_spool_drained(gw)

        steady = statistics.median(sampler.rss("steady")[-10:])
        peak = sampler.peak("outage")
        print(
            f"{len(expected)} readings published and stored ({STEADY_RATE}/s, database down "
            f"{OUTAGE_S:.0f} s, SIGKILL with {lines} readings in the spool); gateway RSS: "
            f"steady {steady / 1024:.1f} MiB, peak during the outage {peak / 1024:.1f} MiB "
            f"({(peak - steady) / 1024:+.1f} MiB)"
        )
        assert gw.stop() == 0, gw.log_tail()
    finally:
        if sampler is not None:
            sampler.stop()
        if pub is not None:
            pub.close()
        gw.close()


# -- 3. the broker restarted mid-stream --------------------------------------------------------


async def test_broker_restart_mid_stream_loses_nothing(tmp_path, mosquitto, influx1):
    msgs = mixed_stream(200, 50, int(time.time()) - 86_400 + 600)
    expected = {r for m in msgs for r in m.readings}
    gw = config_for(tmp_path, mosquitto, influx1)
    pub = None
    try:
        await start(gw)
        pub = StreamPublisher(mosquitto, msgs, rate=3000)
        pub.start()
        await wait_until(lambda: pub.published_readings >= 4000, what="4000 readings published")
        assert not pub.finished.is_set(), "the stream ended before the restart"
        at = pub.published_readings
        mosquitto.restart()  # SIGTERM: mosquitto saves its sessions and queues, then starts
        print(f"broker restarted at {at} of {len(expected)} readings published")
        await wait_until(
            lambda: gw.log().count("mqtt: connected") >= 2, within=30, what="the reconnect"
        )
        await wait_until(pub.all_acked, within=60, what="every PUBACK")
        assert not pub.failed, pub.failed[:3]
        assert pub.published_set() == expected
        await wait_until(
            lambda: influx_total(influx1) >= len(expected),
            within=60,
            what=f"{len(expected)} readings stored",
        )
        assert_stored_exactly(influx1, expected)
        log = gw.log()
        assert "mqtt: connection to" in log, log
        assert "holds no session" not in log, log
        await assert_spool_drained(gw)
        assert gw.stop() == 0, gw.log_tail()
    finally:
        if pub is not None:
            pub.close()
        gw.close()


def stuck_report(what: str, gw: GatewayProcess, db: InfluxDB1, expected: int) -> str:
    status = gw.status() or {}
    stored = influx_total(db)
    received = sum(status.get("readings", {}).get("received", {}).values())
    written = status.get("storage", {}).get("lines_written", 0)
    mqtt = status.get("mqtt", {})
    vfs = os.statvfs(gw.data_dir)
    files = {p.name: p.stat().st_size for p in gw.spool_dir.iterdir()}
    return (
        f"{what}: {stored} of {expected} readings stored. The gateway has written all but "
        f"{received - written} of the {received} readings it took; the spool's files "
        f"{files} ({spool_backlog(gw.spool_dir)}), {vfs.f_bavail * vfs.f_frsize} bytes free "
        f"on the disk; {mqtt.get('unacknowledged')} MQTT messages unacknowledged for "
        f"{mqtt.get('stalled_s')} s, {expected - received} readings still at the broker; "
        f"ready: {status.get('ready')} {status.get('not_ready_because')}. The gateway's "
        f"log:\n{gw.log_tail(25)}"
    )


# -- 4. data_dir on a tiny full disk -----------------------------------------------------------


async def test_full_disk_pauses_and_loses_nothing(tmp_path, mosquitto, influx1):
    # 100,000 readings of ~80 bytes: the 4 MiB disk holds about half of them.
    msgs = mixed_stream(1000, 100, int(time.time()) - 86_400 + 600)
    expected = {r for m in msgs for r in m.readings}
    influx1.stop()  # the database is down from the start: everything goes to the spool
    pub = None
    with contextlib.ExitStack() as stack:
        try:
            disk = stack.enter_context(tmpfs(tmp_path / "small-disk", "4m"))
        except PermissionError as exc:
            pytest.fail(str(exc))
        gw = config_for(
            tmp_path, mosquitto, influx1, data_dir=disk / "var", spool_max_bytes=64 << 20
        )
        stack.callback(gw.close)  # before the unmount: nothing may hold the disk
        try:
            await start(gw)
            pub = StreamPublisher(mosquitto, msgs, max_outstanding=20_000)
            pub.start()
            await wait_until(
                lambda: "disk is full" in gw.log(), within=60, what="the spool to fill the disk"
            )
            log = gw.log()
            assert "spool: cannot write to" in log, log
            assert "No space left on device" in log, log
            assert "spool: the disk is full; pausing sources" in log, log
            code, body = gw.get("/readyz")
            assert code == 503, body
            assert b"the disk is full" in body, body
            status = gw.status()
            assert status is not None
            assert status["mqtt"]["unacknowledged"] > 0, status
            assert gw.running, "the gateway died on the full disk"
            # The broker acknowledged all of it: it holds what the gateway has not taken.
            await wait_until(pub.all_acked, within=60, what="every PUBACK")
            assert not pub.failed, pub.failed[:3]
            on_disk = spool_backlog(gw.spool_dir)
            print(
                f"disk full: the spool holds {on_disk.lines} readings in {on_disk.bytes:,} "
                f"bytes, {status['mqtt']['unacknowledged']} messages unacknowledged"
            )

            influx1.start()
            # First what the spool holds goes to the database...
            await wait_until(
                lambda: influx_total(influx1) >= on_disk.lines,
                within=30,
                what=f"the {on_disk.lines} spooled readings stored",
            )
            # ...which frees the disk: the readings waiting in memory are committed, the
            # held messages acknowledged, and the broker's backlog comes.
            try:
                await wait_until(
                    lambda: influx_total(influx1) >= len(expected),
                    within=30,
                    what=f"all {len(expected)} readings stored",
                )
            except AssertionError as exc:
                raise AssertionError(stuck_report(str(exc), gw, influx1, len(expected))) from None
            assert_stored_exactly(influx1, expected)
            await assert_spool_drained(gw)
            assert "again after" in gw.log(), gw.log()
            code, body = gw.get("/readyz")
            assert code == 200, body
            assert gw.stop() == 0, gw.log_tail()
        finally:
            if pub is not None:
                pub.close()
