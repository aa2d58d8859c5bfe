"""The demo runs to its summary with every valid reading stored and its faults raised as events."""

from __future__ import annotations

from meter_gateway.config.loader import load_config
from meter_gateway.simulators.demo import run_demo


async def test_demo_runs_to_its_summary(tmp_path, capsys):
    rc = await run_demo(tmp_path, duration=4, meters=30, modbus_meters=2, seed=3)
    err = capsys.readouterr().err
    assert "demo summary" in err
    assert "-- all stored" in err, err
    assert rc == 0
    assert (tmp_path / "truth.jsonl").read_text().strip()
    assert "faults injected: " in err
    # The injected transformer outage and its meters' last gasps come back as events.
    events = next(line for line in err.splitlines() if line.strip().startswith("events:"))
    assert "transformer_outage 1 raised / 1 cleared" in events, events
    assert "power_outage" in events, events
    # The gateway ran from the configuration the demo leaves behind.
    assert load_config(tmp_path / "gateway.yaml", env={}).storage.url.startswith("http://")
    assert "--database influxdb1" in err  # where the reliability report can run
    # The devices people already have, mixed in: each one's readings are stored.
    devices = next(line for line in err.splitlines() if line.strip().startswith("devices"))
    assert devices.count("(readings stored)") == 3, devices
    # The customer services' view: standby loads ranked, the outage-sensitive named
    # (c-000015: four sustained interruptions of its own in the demo's day).
    standby = next(line for line in err.splitlines() if "highest standby load" in line)
    assert standby.count(" kW") == 5, standby
    sensitive = next(line for line in err.splitlines() if "outage-sensitive" in line)
    assert "c-000015" in sensitive, sensitive
