"""`meter-gateway dead-letter replay` end to end: a real gateway dead-letters readings over
a too-tight voltage bound (real mosquitto, real InfluxDB 1.x); once the bound is raised,
the replay stores them; a second replay stores nothing twice; what is still out of bounds
stays rejected and is reported."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from meter_gateway.simulators.services import InfluxDB1, Mosquitto
from tests.conftest import Publisher, make_config, wait_until

pytestmark = pytest.mark.integration


def stored(influx: InfluxDB1) -> dict[str, list[float]]:
    """meter id -> the L1 voltages stored for it (InfluxQL)."""
    got: dict[str, list[float]] = {}
    for row in influx.query("SELECT voltage_l1_v FROM meter_reading GROUP BY meter_id"):
        got.setdefault(row["meter_id"], []).append(row["voltage_l1_v"])
    return got


def count_stored(influx: InfluxDB1) -> int:
    rows = influx.query("SELECT count(voltage_l1_v) FROM meter_reading")
    return int(rows[0]["count"]) if rows else 0


def write_config(tmp_path: Path, broker: Mosquitto, influx: InfluxDB1, volts: float) -> Path:
    path = tmp_path / f"gateway-{volts:g}.yaml"
    path.write_text(
        f"gateway: {{id: gw-test, data_dir: '{tmp_path / 'var'}'}}\n"
        f"mqtt: {{host: {broker.host}, port: {broker.port}}}\n"
        f"storage: {{api: v1, url: '{influx.url}', database: {influx.database}, "
        "batch_size: 500, flush_interval_s: 0.1, max_retry_delay_s: 0.5}\n"
        f"validation: {{voltage_max_v: {volts}}}\n"
    )
    return path


def dead_letter(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The command as an operator runs it (its own process, its own event loop)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "meter_gateway.gateway.cli",
            "dead-letter",
            *args,
            "-c",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_rejected_by_a_too_tight_bound_are_stored_once_after_it_is_raised(
    tmp_path: Path, mosquitto: Mosquitto, influx1: InfluxDB1, publisher: Publisher, run_gateway
) -> None:
    cfg = make_config(
        tmp_path,
        mosquitto,
        storage={"api": "v1", "url": influx1.url},
        validation={"voltage_max_v": 250},
        events={"enabled": False},
    )
    gw = await run_gateway(cfg)
    now = int(time.time())
    messages: list[tuple[str, bytes | str]] = []
    # 10 meters at 253 V (a 250 V bound set too tight), 2 at 5000 V (a real fault),
    # 3 at 230 V (stored at once).
    for i, volts in enumerate([253.0] * 10 + [5000.0] * 2 + [230.0] * 3):
        body = {"ts": now - i, "energy_import_kwh": 100.0 + i, "voltage_v": volts}
        messages.append((f"meters/m-{i:02d}/reading", orjson.dumps(body)))
    # A concentrator's batch: one element fine, one at 253 V, one at 5000 V.
    batch = {
        "concentrator_id": "dc-01",
        "readings": [
            {"meter_id": "b-0", "ts": now, "voltage_v": 231.0},
            {"meter_id": "b-1", "ts": now, "voltage_v": 253.5},
            {"meter_id": "b-2", "ts": now, "voltage_v": 5000.0},
        ],
    }
    messages.append(("concentrators/dc-01/readings", orjson.dumps(batch)))
    publisher.publish_many(messages)
    await wait_until(lambda: gw.dead_letter.durable >= 14, what="14 rejections on disk")
    await wait_until(lambda: gw.writer.lines_written >= 4, what="4 good readings written")
    await gw.stop()

    # What the gateway rejected, as the operator sees it.
    raised = write_config(tmp_path, mosquitto, influx1, 300)
    listed = dead_letter(raised, "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    groups = {g["reason"]: g["count"] for g in json.loads(listed.stdout)["groups"]}
    assert groups == {"voltage_v: N above N": 12, "readings[N]: voltage_v: N above N": 2}
    assert count_stored(influx1) == 4

    # Nothing to see before the bound is raised: a dry run with the old bound stores nothing.
    tight = write_config(tmp_path, mosquitto, influx1, 250)
    dry = dead_letter(tight, "replay", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would store 0 reading(s)" in dry.stdout

    first = dead_letter(raised, "replay")
    assert first.returncode == 0, first.stderr
    assert "replayed: 11 record(s), stored 11 reading(s)" in first.stdout, first.stdout
    assert "already replayed: 0" in first.stdout
    assert "still rejected: 3" in first.stdout
    assert "voltage_v: 5000.0 above 300.0" in first.stdout  # the real faults, named
    got = stored(influx1)
    meters = [f"m-{i:02d}" for i in range(10)] + ["m-12", "m-13", "m-14", "b-0", "b-1"]
    assert sorted(got) == sorted(meters)
    assert got["m-00"] == [253.0]
    assert sorted(stored_batch(influx1)) == ["b-0", "b-1"]
    assert count_stored(influx1) == 4 + 11

    second = dead_letter(raised, "replay", "--format", "json")
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    assert (summary["replayed"], summary["stored"], summary["already_replayed"]) == (0, 0, 11)
    assert sum(summary["still_rejected"].values()) == 3
    assert count_stored(influx1) == 4 + 11  # nothing stored twice

    # The dead-letter files are as the gateway left them; the ledger sits beside them.
    directory = tmp_path / "var" / "dead-letter"
    lines = sum(len(p.read_text().splitlines()) for p in directory.glob("*.jsonl"))
    assert lines == 14
    assert len((directory / "replayed").read_text().splitlines()) == 11


def stored_batch(influx: InfluxDB1) -> list[str]:
    rows = influx.query("SELECT voltage_l1_v, meter_id FROM meter_reading WHERE meter_id =~ /^b-/")
    return [row["meter_id"] for row in rows]
