"""The demo runs to its summary with every valid reading stored."""

from __future__ import annotations

from meter_gateway.simulators.demo import run_demo


async def test_demo_runs_to_its_summary(tmp_path, capsys):
    rc = await run_demo(tmp_path, duration=4, meters=30, modbus_meters=2, seed=3)
    err = capsys.readouterr().err
    assert "demo summary" in err
    assert "-- all stored" in err, err
    assert rc == 0
    assert (tmp_path / "truth.jsonl").read_text().strip()
    assert "faults injected: " in err
