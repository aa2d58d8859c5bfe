"""The spool paused by a full disk: its `storage_backpressure` event still reaches MQTT.

The outbox is on the same disk as the spool, so while the disk is full it cannot take
the very event that says so. The gateway (a process, data_dir on a small tmpfs filled to
the last byte before any reading arrives) publishes that event from memory; once the
disk has room it records it in the outbox with the same event_id and clears it, and
every reading the broker was sent meanwhile is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import struct
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from meter_gateway.simulators.services import InfluxDB1, Mosquitto
from tests.conftest import Publisher, make_config, wait_until
from tests.faults import EventSubscriber, GatewayProcess, influx_points, tmpfs

pytestmark = pytest.mark.integration

READINGS = 40
_HEADER = struct.Struct("<IIQQ")  # the segment record header: length, crc32, seq, time
_CHECKED = struct.Struct("<QQ")


def backpressure(events: EventSubscriber, state: str) -> dict[str, Any]:
    """The first storage_backpressure event in `state` (blocking: run it in a thread)."""
    events.wait(lambda: bool(events.of("storage_backpressure", state)), f"the {state} event")
    return events.of("storage_backpressure", state)[0]


def fill(disk: Path) -> Path:
    """Fill the filesystem to its last byte with one file (tmpfs: no reserve)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        chunk = 1 << 16
        while chunk:
            try:
                os.write(fd, b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk //= 2
    finally:
        os.close(fd)
    return filler


def outbox_events(outbox: Path) -> list[dict[str, Any]]:
    """Every event in the outbox's segments, read with a parser of our own."""
    out = []
    for path in sorted(outbox.glob("*.seg")):
        data, pos = path.read_bytes(), 0
        while pos + _HEADER.size <= len(data):
            length, crc, seq, ts = _HEADER.unpack_from(data, pos)
            payload = data[pos + _HEADER.size : pos + _HEADER.size + length]
            assert len(payload) == length, f"{path}: record {seq} cut short"
            assert zlib.crc32(payload, zlib.crc32(_CHECKED.pack(seq, ts))) == crc, path
            out.append(orjson.loads(payload))
            pos += _HEADER.size + length
    return out


def backpressure_points(db: InfluxDB1) -> list[tuple[str, str]]:
    rows = db.query(
        "SELECT state, event_id FROM meter_event WHERE \"type\" = 'storage_backpressure'"
    )
    return [(r["state"], r["event_id"]) for r in rows]


async def test_the_backpressure_event_reaches_mqtt_while_the_disk_is_full(
    tmp_path: Path, mosquitto: Mosquitto, influx1: InfluxDB1
) -> None:
    pub = events = None
    with contextlib.ExitStack() as stack:
        try:
            disk = stack.enter_context(tmpfs(tmp_path / "small-disk", "4m"))
        except PermissionError as exc:
            pytest.fail(str(exc))
        cfg = make_config(
            tmp_path,
            mosquitto,
            gateway={"id": "gw-full", "data_dir": str(disk / "var")},
            storage={"api": "v1", "url": influx1.url, "database": "meters", "precision": "s"},
        )
        gw = GatewayProcess(cfg, tmp_path / "gw")
        stack.callback(gw.close)  # before the unmount: nothing may hold the disk
        try:
            events = EventSubscriber(mosquitto, "events/storage_backpressure/#")
            pub = Publisher(mosquitto)
            gw.start()
            await wait_until(gw.connected, within=30, what="the gateway subscribed")
            filler = await asyncio.to_thread(fill, disk)

            # Readings arrive on the full disk: the spool cannot take them, pauses the
            # sources, and raises storage_backpressure; the outbox cannot take that either.
            now = int(time.time())
            sent = {(f"m-{i % 4}", now - 600 + i) for i in range(READINGS)}
            for meter, ts in sorted(sent, key=lambda r: r[1]):
                pub.client.publish(
                    f"meters/{meter}/reading", orjson.dumps({"ts": ts, "power_w": 1.5}), qos=1
                )
            raised = await asyncio.to_thread(backpressure, events, "raised")
            log = gw.log()
            assert "spool: the disk is full; pausing sources" in log, log
            assert "is published on MQTT from memory" in log, log
            assert raised["gateway_id"] == "gw-full", raised
            assert not list((disk / "var" / "events" / "outbox").glob("*.seg")) or not [
                e
                for e in outbox_events(disk / "var" / "events" / "outbox")
                if e["type"] == "storage_backpressure"
            ], "the outbox took the event: the disk was not full for it"
            code, body = gw.get("/readyz")
            assert code == 503, body
            assert b"the disk is full" in body, body

            # Room again: the spool takes the readings and resumes, the event clears and
            # the outbox records both, the raise under the id it was published with.
            filler.unlink()
            cleared = await asyncio.to_thread(backpressure, events, "cleared")
            assert cleared["event_id"] == raised["event_id"], (raised, cleared)
            await wait_until(
                lambda: len(set(influx_points(influx1)) & sent) == READINGS,
                within=30,
                what=f"all {READINGS} readings stored",
            )
            assert gw.stop() == 0, gw.log_tail()
        finally:
            if pub is not None:
                pub.close()
            if events is not None:
                events.close()

        recorded = [
            (e["state"], e["event_id"])
            for e in outbox_events(disk / "var" / "events" / "outbox")
            if e["type"] == "storage_backpressure"
        ]
    assert recorded == [("raised", raised["event_id"]), ("cleared", raised["event_id"])]
    # Said once on MQTT, not again when the outbox delivered it from disk.
    assert Counter((e["state"], e["event_id"]) for e in events.got) == Counter(recorded)
    # Nothing acknowledged lost, nothing twice: every reading once, both event points.
    points = influx_points(influx1)
    assert sorted(points) == sorted(sent), (len(points), len(sent))
    await wait_until(lambda: len(backpressure_points(influx1)) >= 2, what="the event points")
    assert sorted(backpressure_points(influx1)) == sorted(recorded)
