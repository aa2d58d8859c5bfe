"""`simulate modbus`: meters to ports and unit ids, --help, and a run as its own process."""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from pathlib import Path

import pytest
import yaml

from meter_gateway.protocols.modbus.config import ModbusConfig
from meter_gateway.protocols.modbus.poller import Poller
from meter_gateway.simulators.modbus.cli import build_parser, register
from meter_gateway.simulators.modbus.server import MeterFleet

pytestmark = pytest.mark.integration


def test_meters_map_to_units_then_ports() -> None:
    fleet = MeterFleet(300, model="sdm630", port=5020, live=False)
    assert [s.port for s in fleet.servers] == [5020, 5021]
    assert [len(s.meters) for s in fleet.servers] == [247, 53]
    m = fleet.meters
    assert (m[0].meter_id, m[0].unit) == ("sdm630-0001", 1)
    assert (m[246].meter_id, m[246].unit) == ("sdm630-0247", 247)
    assert (m[247].meter_id, m[247].unit) == ("sdm630-0248", 1)
    assert fleet.servers[1].meters[1] is m[247]


def test_help_explains_the_mapping_and_register_adds_the_command() -> None:
    text = build_parser().format_help()
    assert "meters 1..U       are unit ids 1..U on port P" in text
    assert "--transport {tcp,rtu-over-tcp}" in text
    parser = argparse.ArgumentParser(prog="meter-gateway simulate")
    register(parser.add_subparsers(dest="simulator"))
    args = parser.parse_args(["modbus", "--meters", "5", "--model", "em24", "--fault", "2=silent"])
    assert (args.meters, args.model, args.fault[0][0], args.fault[0][1]) == (
        5,
        "em24",
        2,
        "silent",
    )
    assert callable(args.func)
    with pytest.raises(SystemExit):
        parser.parse_args(["modbus", "--fault", "2=broken"])


def two_free_ports() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return int(port)
    raise RuntimeError("no two consecutive free ports")


async def test_standalone_process_serves_the_fleet_it_describes(tmp_path: Path, sink) -> None:
    port = two_free_ports()
    out = tmp_path / "devices.yaml"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meter_gateway.simulators.modbus.cli",
        "--meters", "3", "--units-per-port", "2", "--port", str(port), "--model", "em24",
        "--static", "--config-out", str(out), "--interval", "5",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(30):
            while not lines or "serving" not in lines[-1]:
                line = (await proc.stderr.readline()).decode()
                assert line, f"simulator exited: {''.join(lines)}"
                lines.append(line)
        text = "".join(lines)
        assert f"meters 1-2 (em24-0001...em24-0002) are units 1-2 on tcp://127.0.0.1:{port}" in text
        assert (
            f"meters 3-3 (em24-0003...em24-0003) are units 1-1 on tcp://127.0.0.1:{port + 1}"
            in text
        )
        cfg = ModbusConfig.model_validate(yaml.safe_load(out.read_text())["modbus"])
        assert [(d.meter_id, d.port, d.unit, d.interval_s) for d in cfg.devices] == [
            ("em24-0001", port, 1, 5.0),
            ("em24-0002", port, 2, 5.0),
            ("em24-0003", port + 1, 1, 5.0),
        ]
        poller = Poller(cfg, on_reading=sink.on_reading, on_error=sink.on_error)
        for d in cfg.devices:
            reading = await poller.poll_once(d.meter_id)
            assert reading is not None
            assert reading["voltage_l1_v"] == 230.1
        assert sink.errors == []
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
