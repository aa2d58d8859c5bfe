"""`meter-gateway demo`: the whole chain on this machine, then a summary.

Starts mosquitto and a database (VictoriaMetrics, or InfluxDB 1.x with
`--database influxdb1`) on free ports in a folder of its own, a few simulated Modbus
meters, the gateway, and a simulated MQTT fleet (with a concentrator, the example
scenario's faults and a few more outages, `DEMO_OUTAGES`); shows progress; stops all
it started and says what happened and where to look.

The gateway runs from the configuration the demo writes to `<dir>/gateway.yaml`, so
that after a run into InfluxDB 1.x `meter-gateway report reliability -c <dir>/gateway.yaml`
gives the reliability indices of the simulated day (the summary prints the command).
VictoriaMetrics cannot serve that report: it keeps no string fields and has no Flux.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shlex
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from meter_gateway.simulators.services import InfluxDB1

__all__ = ["DATABASES", "DEMO_OUTAGES", "register", "run_demo"]

SCENARIO = Path(__file__).parent / "scenarios" / "example.yaml"
DATABASES = ("victoria", "influxdb1")
Database = Literal["victoria", "influxdb1"]
# The example scenario's outages (tx-001 for 40 min, m-000012 for 3 min without a last
# gasp) give every customer interrupted one interruption. These make a few customers
# stand out, so CEMIn (customers with more than n sustained interruptions) names
# someone: c-000004 (tx-001 and three of its own) and c-000015 (four of its own) have
# four each, the most. Two momentary ones (under 300 s, with last gasps) give MAIFI.
# Offsets into the simulated day; the meters exist in any fleet the example runs on
# (it needs 20) and have no clock drift, so their events carry true time.
DEMO_OUTAGES: tuple[dict[str, Any], ...] = (
    {"type": "outage", "meters": ["m-000004", "m-000015"], "at": "7h", "duration": "20m"},
    {"type": "outage", "meters": ["m-000004"], "at": "9h", "duration": "1h"},
    {"type": "outage", "meters": ["m-000006"], "at": "10h", "duration": "2m"},
    {"type": "outage", "meters": ["m-000015"], "at": "11h", "duration": "10m"},
    {"type": "outage", "meters": ["m-000004", "m-000015"], "at": "14h", "duration": "45m"},
    {"type": "outage", "meters": ["m-000016"], "at": "16h", "duration": "4m"},
    {"type": "outage", "meters": ["m-000015"], "at": "18h", "duration": "30m"},
)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run broker, database, simulated meters and the gateway on this machine",
        description="Run everything on this machine: mosquitto and a database (VictoriaMetrics, "
        "or InfluxDB 1.x) on free ports in a temporary folder, a simulated MQTT fleet with a "
        "concentrator and injected faults (outages, spikes, malformed payloads, ...), three "
        "simulated Modbus meters, and the gateway. Shows progress, then a summary: readings "
        "published, stored (read back from the database), rejected, and where to look. Stops "
        "what it started. The gateway's configuration is left in the folder as gateway.yaml; "
        "with --database influxdb1 `meter-gateway report reliability` runs on it afterwards.",
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
        "--database",
        choices=DATABASES,
        default="victoria",
        help="where the gateway stores: VictoriaMetrics (default; a web UI, /vmui) or "
        "InfluxDB 1.x (keeps the events' text fields, so `meter-gateway report reliability` "
        "can run on the demo's data afterwards)",
    )
    p.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="folder for the servers' data, the dead-letter files and gateway.yaml "
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
            run_demo(
                workdir,
                args.duration,
                args.meters,
                args.modbus_meters,
                args.seed,
                database=args.database,
            )
        )
    except KeyboardInterrupt:
        return 130


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def run_demo(
    workdir: Path,
    duration: float,
    meters: int,
    modbus_meters: int,
    seed: int,
    *,
    database: Database = "victoria",
    influxdb: InfluxDB1 | None = None,
) -> int:
    """Run the demo in `workdir`; 0 when every valid reading was read back stored.

    `database`: "victoria" or "influxdb1", started in `workdir` and stopped at the end.
    `influxdb`: an InfluxDB 1.x already running (implies "influxdb1"); the demo stores
    into its database (created if missing) and leaves it running, so that the caller
    can run `meter-gateway report reliability -c <workdir>/gateway.yaml` on it.
    """
    import yaml

    from meter_gateway.config.loader import load_config
    from meter_gateway.gateway.app import Gateway
    from meter_gateway.gateway.reports.reliability import Window
    from meter_gateway.simulators.demo_customers import (
        EventListener,
        customer_lines,
        customer_tags,
    )
    from meter_gateway.simulators.fleet import Fleet
    from meter_gateway.simulators.meter import rfc3339
    from meter_gateway.simulators.modbus.server import MeterFleet
    from meter_gateway.simulators.mqtt.publisher import BrokerOptions, MqttPublisher
    from meter_gateway.simulators.mqtt.runner import RunStats, run_fleet
    from meter_gateway.simulators.scenario import load_scenario, parse_scenario
    from meter_gateway.simulators.services import InfluxDB1, Mosquitto, VictoriaMetrics
    from meter_gateway.simulators.topology import write_csv

    if influxdb is not None:
        database = "influxdb1"
    if database not in DATABASES:
        raise ValueError(f"database must be one of {', '.join(DATABASES)} (got {database!r})")
    _say(f"demo: working in {workdir}")
    with contextlib.ExitStack() as servers:
        broker = servers.enter_context(Mosquitto(workdir / "mosquitto"))
        vm: VictoriaMetrics | None = None
        influx: InfluxDB1 | None = influxdb
        if database == "victoria":
            vm = servers.enter_context(VictoriaMetrics(workdir / "victoria"))
            db_url, storage = vm.url, {"api": "v2", "url": vm.url}
            _say(
                f"demo: mosquitto on {broker.host}:{broker.port}; VictoriaMetrics at {vm.url} "
                f"(web UI {vm.url}/vmui while the demo runs)"
            )
        else:
            if influx is None:
                influx = servers.enter_context(InfluxDB1(workdir / "influxdb"))
            db_name = influx.database or "meters"
            influx.create_database(db_name)
            db_url = influx.url
            storage = {"api": "v1", "url": influx.url, "database": db_name, "precision": "s"}
            _say(
                f"demo: mosquitto on {broker.host}:{broker.port}; InfluxDB 1.x at {influx.url} "
                f"(database {db_name})"
            )
        modbus = MeterFleet(modbus_meters, model="sdm630", port=0, seed=seed)
        await modbus.start()
        try:
            # A simulated day at 15-minute intervals, spread over the run: the last whole
            # local day (UTC, the gateway's default time zone) that ends at least two hours
            # before now, so that the customers' daily figures (base load, peak) are those
            # of one whole day, not of a day's last hours. Inside the gateway's window for
            # readings (not older than 7 days), also for the example's meter whose clock
            # gains 47 min over the day (not more than 5 min ahead of the gateway's clock).
            sim_span = 86_400.0
            day_start = (time.time() - sim_span - 7200) // 86_400 * 86_400
            example = load_scenario(SCENARIO)
            scenario = parse_scenario(
                {
                    **example.model_dump(exclude_unset=True, exclude={"faults"}),
                    "faults": [
                        *(f.model_dump(exclude_unset=True) for f in example.faults),
                        *DEMO_OUTAGES,
                    ],
                },
                f"{SCENARIO} and the demo's outages",
            )
            fleet = Fleet(
                scenario,
                meters=meters,
                interval_s=900,
                seed=seed,
                duration=sim_span,
                start=datetime.fromtimestamp(day_start, UTC),
                concentrators=1,
            )
            # The gateway knows the network: transformer and feeder ids on readings and
            # events, transformer outages, and which meters have PV (no reverse_energy).
            topology_file = workdir / "topology.csv"
            write_csv(fleet.topology, topology_file)
            # The gateway runs from the file, so what the report reads is what ran.
            config_file = workdir / "gateway.yaml"
            config_file.write_text(
                "# Written by `meter-gateway demo`: the configuration its gateway ran with.\n"
                + yaml.safe_dump(
                    {
                        "gateway": {"id": "gw-demo", "data_dir": str(workdir / "var")},
                        "mqtt": {
                            "host": broker.host,
                            "port": broker.port,
                            "subscriptions": DEMO_SUBSCRIPTIONS,
                        },
                        "storage": {**storage, "flush_interval_s": 0.5},
                        "modbus": {"devices": modbus.device_configs(interval_s=2)},
                        "http": {"listen": "127.0.0.1:0"},
                        "topology": {"file": str(topology_file)},
                    },
                    sort_keys=False,
                )
            )
            cfg = load_config(config_file, env={})
            gw = Gateway(cfg)
            await gw.start()
            await asyncio.wait_for(gw.mqtt.wait_connected(), 30)
            # A utility system's view: every event the gateway publishes.
            listener = await asyncio.to_thread(
                EventListener, broker.host, broker.port, cfg.events.topic_prefix
            )
            _say(f"demo: the gateway's status page: http://127.0.0.1:{gw.http.port}/")
            publisher = MqttPublisher(BrokerOptions(host=broker.host, port=broker.port))
            publisher.connect()
            # Three devices people already have, metering one more simulated meter over
            # the same day: a Tasmota plug, a Shelly Pro 3EM, a Sparkplug B edge node.
            devices, device_msgs = device_traffic(fleet.start, sim_span, seed)

            def publish_devices() -> None:
                for m in device_msgs:
                    publisher.publish(m)

            await asyncio.to_thread(publish_devices)
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
            heard = listener.close()
        finally:
            await modbus.stop()
        if vm is not None:
            stored_db = await asyncio.to_thread(vm.count, "meter_reading_quality")
        else:
            assert influx is not None
            rows = await asyncio.to_thread(
                influx.query, 'SELECT count("quality") FROM "meter_reading"', database=db_name
            )
            stored_db = int(rows[0]["count"]) if rows else 0
        db_label = "VictoriaMetrics" if vm is not None else "InfluxDB"
        p = gw.pipeline
        handed = sum(p.spooled.values())
        # Points beside the readings: the estimates of gaps no actual has filled yet.
        estimated = int(gw.vee.stats["estimates_standing"]) if gw.vee is not None else 0
        stored_db -= estimated
        _say("")
        _say("demo summary")
        complete = stats.sim_t >= fleet.end - 1e-6 if fleet.end is not None else True
        _say(
            f"  simulated: {rfc3339(fleet.start)} .. {rfc3339(stats.sim_t)}, 15-minute readings"
            + ("" if complete else " (cut short: the run ended before the simulated day)")
        )
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
            f"  stored (read back from {db_label}): {stored_db:,} of {handed:,} valid "
            f"readings"
            + ("  -- all stored" if stored_db == handed else "  -- MISSING SOME")
            + (f"; and {estimated:,} estimated intervals (quality=estimated)" if estimated else "")
        )
        _say(
            f"  duplicates dropped: {p.duplicates:,}; flagged suspect: "
            f"{sum(p.flagged.values()):,} {dict(p.flagged) or ''}"
        )
        _say(f"  rejected: {sum(p.rejected.values()):,} {dict(p.rejected.most_common(6)) or ''}")
        _say(f"  meter signals: {dict(p.signals) or 'none'}")
        _say(
            "  devices (one meter each, the same day): "
            + ", ".join(
                f"{fmt} {mid} ({'readings stored' if mid in p.last_seen else 'NOTHING STORED'})"
                for fmt, mid in devices
            )
        )
        _say(f"  events: {_events_summary(gw.events.counts)}")
        if gw.vee is not None:
            window = Window(fleet.start, max(stats.sim_t, fleet.start + fleet.interval_s))
            tags = customer_tags(cfg, gw.topology, gw.vee, heard, window)
            kinds = {site.customer_id: site.profile for site in fleet.topology.sites.values()}
            for line in customer_lines(tags, kinds=kinds):
                _say(line)
        _say(f"  dead-letter files: {cfg.gateway.data_dir / 'dead-letter'}")
        _say(f"  the gateway's configuration: {config_file}")
        if vm is not None:
            _say(
                f"  database files: {workdir / 'victoria'} (start VictoriaMetrics on them to "
                "look again: victoria-metrics -storageDataPath=...; its UI is at /vmui)"
            )
            _say(
                "  reliability indices (SAIFI, SAIDI, CAIDI, MAIFI, CEMIn): run the demo with "
                "--database influxdb1; VictoriaMetrics keeps no text fields, which the "
                "report reads"
            )
        else:
            if influxdb is None:
                conf = workdir / "influxdb" / "influxdb.conf"
                _say(
                    f"  database files: {workdir / 'influxdb'} (start InfluxDB on them again, "
                    f"at {db_url} as gateway.yaml says: influxd -config {shlex.quote(str(conf))})"
                )
            else:
                _say(f"  database: InfluxDB at {db_url} (still running)")
            report = [
                "meter-gateway",
                "report",
                "reliability",
                "-c",
                str(config_file),
                "--from",
                rfc3339(fleet.start),
                "--to",
                rfc3339(max(stats.sim_t, fleet.start + fleet.interval_s)),
                "--by",
                "transformer",
            ]
            _say(f"  reliability indices of the simulated day: {shlex.join(report)}")
        return 0 if stored_db == handed else 1


# The default subscriptions and those of the devices the demo adds.
DEMO_SUBSCRIPTIONS = [
    {"topic": "meters/+/reading", "format": "json"},
    {"topic": "concentrators/+/readings", "format": "json-batch"},
    {"topic": "meters/+/event", "format": "meter-event"},
    {"topic": "meters/+/status", "format": "lwt"},
    {"topic": "tele/+/SENSOR", "format": "tasmota"},
    {"topic": "tele/+/LWT", "format": "lwt"},
    {"topic": "+/events/rpc", "format": "shelly"},
    {"topic": "+/online", "format": "shelly-online"},
    {"topic": "spBv1.0/#", "format": "sparkplug-b"},
]


def device_traffic(start: float, span: float, seed: int) -> tuple[list[tuple[str, str]], list[Any]]:
    """A three-phase meter over `span` seconds of 15-minute readings as a Tasmota, a
    Shelly and a Sparkplug B device put it on the wire: ((format, meter id) of each, the
    messages in time order)."""
    from meter_gateway.simulators.devices import ShellyDevice, SparkplugEdge, TasmotaDevice
    from meter_gateway.simulators.fleet import Message
    from meter_gateway.simulators.meter import MeterModel

    model = MeterModel("demo-devices", seed=seed, phases=3, start=start)
    tasmota, shelly = TasmotaDevice("plug-demo"), ShellyDevice("shellypro3em-demo")
    edge = SparkplugEdge("edge-demo", "meter-1")
    out = []
    t = start
    while t <= start + span + 1e-6:
        model.advance(t)
        r = model.reading()
        msgs = [tasmota.sensor(r), shelly.notify(r)]
        msgs += edge.birth(r) if t == start else [edge.data(r)]
        out += [Message(t, m.topic, m.payload, "reading", retain=m.retain) for m in msgs]
        t += 900.0
    ids = [
        ("Tasmota", tasmota.meter_id),
        ("Shelly", shelly.meter_id),
        ("Sparkplug B", edge.meter_id),
    ]
    return ids, out


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
