"""`meter-gateway demo`: the whole chain on this machine, then a summary.

Starts mosquitto and VictoriaMetrics on free ports in a folder of its own, a few
simulated Modbus meters, the gateway, and a simulated MQTT fleet (with a
concentrator and the example scenario's faults); shows progress; stops all it
started and says what happened and where to look.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["register", "run_demo"]

SCENARIO = Path(__file__).parent / "scenarios" / "example.yaml"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run broker, database, simulated meters and the gateway on this machine",
        description="Run everything on this machine: mosquitto and VictoriaMetrics on free "
        "ports in a temporary folder, a simulated MQTT fleet with a concentrator and injected "
        "faults (outages, spikes, malformed payloads, ...), three simulated Modbus meters, and "
        "the gateway. Shows progress, then a summary: readings published, stored (read back "
        "from the database), rejected, and where to look. Stops what it started.",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=20.0,
        metavar="S",
        help="wall-clock seconds to run (default 20); Ctrl-C ends early",
    )
    p.add_argument("--meters", type=int, default=200, help="MQTT meters (default 200)")
    p.add_argument("--modbus-meters", type=int, default=3, help="Modbus meters (default 3)")
    p.add_argument("--seed", type=int, default=1, help="simulation seed (default 1)")
    p.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="folder for the servers' data and the dead-letter files "
        "(default: a new temporary folder, kept afterwards)",
    )
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    from meter_gateway.gateway.cli import _run_loop
    from meter_gateway.gateway.logs import setup_logging

    setup_logging("warning")
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="meter-gateway-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return _run_loop(
            run_demo(workdir, args.duration, args.meters, args.modbus_meters, args.seed)
        )
    except KeyboardInterrupt:
        return 130


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def run_demo(
    workdir: Path, duration: float, meters: int, modbus_meters: int, seed: int
) -> int:
    from meter_gateway.config.schema import Config
    from meter_gateway.gateway.app import Gateway
    from meter_gateway.simulators.fleet import Fleet
    from meter_gateway.simulators.modbus.server import MeterFleet
    from meter_gateway.simulators.mqtt.publisher import BrokerOptions, MqttPublisher
    from meter_gateway.simulators.mqtt.runner import RunStats, run_fleet
    from meter_gateway.simulators.scenario import load_scenario
    from meter_gateway.simulators.services import Mosquitto, VictoriaMetrics
    from meter_gateway.simulators.topology import write_csv

    _say(f"demo: working in {workdir}")
    with Mosquitto(workdir / "mosquitto") as broker, VictoriaMetrics(workdir / "victoria") as vm:
        _say(
            f"demo: mosquitto on {broker.host}:{broker.port}; VictoriaMetrics at {vm.url} "
            f"(web UI {vm.url}/vmui while the demo runs)"
        )
        modbus = MeterFleet(modbus_meters, model="sdm630", port=0, seed=seed)
        await modbus.start()
        try:
            # A simulated day at 15-minute intervals, spread over the run.
            sim_span = 86_400.0
            fleet = Fleet(
                load_scenario(SCENARIO),
                meters=meters,
                interval_s=900,
                seed=seed,
                duration=sim_span,
                concentrators=1,
            )
            # The gateway knows the network: transformer and feeder ids on readings and
            # events, transformer outages, and which meters have PV (no reverse_energy).
            topology_file = workdir / "topology.csv"
            write_csv(fleet.topology, topology_file)
            cfg = Config.model_validate(
                {
                    "gateway": {"id": "gw-demo", "data_dir": str(workdir / "var")},
                    "mqtt": {"host": broker.host, "port": broker.port},
                    "storage": {"api": "v2", "url": vm.url, "flush_interval_s": 0.5},
                    "modbus": {"devices": modbus.device_configs(interval_s=2)},
                    "http": {"listen": "127.0.0.1:0"},
                    "topology": {"file": str(topology_file)},
                }
            )
            gw = Gateway(cfg)
            await gw.start()
            await asyncio.wait_for(gw.mqtt.wait_connected(), 30)
            _say(f"demo: the gateway's status page: http://127.0.0.1:{gw.http.port}/")
            publisher = MqttPublisher(BrokerOptions(host=broker.host, port=broker.port))
            publisher.connect()
            stop = threading.Event()
            latest: dict[str, RunStats] = {}
            fleet_task = asyncio.create_task(
                asyncio.to_thread(
                    run_fleet,
                    fleet,
                    publisher.publish,
                    speed=sim_span / max(duration * 0.8, 1.0),
                    stop=stop,
                    on_progress=lambda s: latest.__setitem__("s", s),
                    truth_out=workdir / "truth.jsonl",
                )
            )
            started = time.monotonic()
            try:
                while time.monotonic() - started < duration:
                    await asyncio.sleep(1.0)
                    s = latest.get("s")
                    p = gw.pipeline
                    _say(
                        f"demo: {time.monotonic() - started:4.0f} s | published "
                        f"{s.messages if s else 0:,} messages | gateway received "
                        f"{sum(p.received.values()):,} readings, rejected "
                        f"{sum(p.rejected.values()):,}, {gw.writer.lines_written:,} points "
                        f"written | faults injected {sum(s.faults.values()) if s else 0} | "
                        f"events {gw.events.emitted}, open {len(gw.events.active())}"
                    )
            finally:
                stop.set()
                stats = await fleet_task
                await asyncio.to_thread(publisher.flush, 30)
                publisher.close()
            # Let the gateway take what the broker still holds for it, then drain.
            last = -1
            while last != gw.pipeline.messages:
                last = gw.pipeline.messages
                await asyncio.sleep(0.5)
            await gw.stop()
        finally:
            await modbus.stop()
        stored_db = await asyncio.to_thread(vm.count, "meter_reading_quality")
        p = gw.pipeline
        handed = sum(p.stored.values())
        _say("")
        _say("demo summary")
        _say(
            f"  published: {stats.messages:,} MQTT messages "
            f"({', '.join(f'{n:,} {k}' for k, n in sorted(stats.by_kind.items()))}) "
            f"from {meters} meters; {modbus_meters} Modbus meters polled"
        )
        _say(
            f"  faults injected: {', '.join(f'{n} {k}' for k, n in sorted(stats.faults.items()))}"
            f" (ground truth: {workdir / 'truth.jsonl'})"
        )
        _say(
            f"  readings received: {sum(p.received.values()):,} "
            f"(mqtt {p.received['mqtt']:,}, modbus {p.received['modbus']:,})"
        )
        _say(
            f"  stored (read back from VictoriaMetrics): {stored_db:,} of {handed:,} valid "
            f"readings" + ("  -- all stored" if stored_db == handed else "  -- MISSING SOME")
        )
        _say(
            f"  duplicates dropped: {p.duplicates:,}; flagged suspect: "
            f"{sum(p.flagged.values()):,} {dict(p.flagged) or ''}"
        )
        _say(f"  rejected: {sum(p.rejected.values()):,} {dict(p.rejected.most_common(6)) or ''}")
        _say(f"  meter signals: {dict(p.signals) or 'none'}")
        _say(f"  events: {_events_summary(gw.events.counts)}")
        _say(f"  dead-letter files: {cfg.gateway.data_dir / 'dead-letter'}")
        _say(
            f"  database files: {workdir / 'victoria'} (start VictoriaMetrics on them to look "
            "again: victoria-metrics -storageDataPath=...; its UI is at /vmui)"
        )
        return 0 if stored_db == handed else 1


def _events_summary(counts: Any) -> str:
    """`power_outage 3 raised / 3 cleared, ...` by type, from (type, state) counts."""
    types = sorted({t for t, _ in counts})
    if not types:
        return "none raised"
    parts = []
    for t in types:
        raised, cleared = counts.get((t, "raised"), 0), counts.get((t, "cleared"), 0)
        parts.append(f"{t} {raised} raised" + (f" / {cleared} cleared" if cleared else ""))
    return ", ".join(parts)


logging.getLogger(__name__).addHandler(logging.NullHandler())
