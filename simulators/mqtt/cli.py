"""``meter-gateway simulate mqtt``: the command line of the MQTT fleet simulator.

``register`` adds the command to ``meter-gateway simulate`` (the gateway finds it through
the ``meter_gateway.simulators`` entry point); ``python -m meter_gateway.simulators.mqtt.cli``
runs it standalone.

The gateway's command line registers this command on every start, ``--help`` included, so
the MQTT client library is imported only when a run starts, not to build the parser.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any

from meter_gateway.simulators.faults import FaultError, parse_duration
from meter_gateway.simulators.fleet import Fleet
from meter_gateway.simulators.mqtt.runner import RunStats, run_fleet
from meter_gateway.simulators.scenario import Scenario, ScenarioError, load_scenario
from meter_gateway.simulators.topology import write_csv

__all__ = ["main", "register"]

EXIT_USAGE = 2


_DESCRIPTION = """\
Publish a simulated meter fleet to an MQTT broker (QoS 1), on the gateway's default topics:
  meters/<id>/reading            one reading (format json) per meter and interval
  concentrators/<id>/readings    a batch (json-batch) per concentrator and interval
  meters/<id>/event              last_gasp / power_restored (meter-event)
  meters/<id>/status             online / offline (lwt)

Time runs --speed times faster than the wall clock; timestamps are simulated time. By
default the run starts at now - duration (aligned to the interval), so a fast run ends
about now and stays inside the gateway's accepted window (not over 5 min in the future,
not older than 7 days). Durations accept seconds or 90s, 15m, 2h, 1d, 1h30m.

Faults (outages, dropouts, spikes, theft, reverse flow, register resets, voltage sag and
swell, phase loss, clock drift, duplicates, out-of-order delivery, malformed payloads)
come from a YAML --scenario; see simulators/README.md. Every injected fault is written to
--truth-out as a JSON line. Command-line options override the scenario's `fleet:` values.

All meters share one connection (or --connections N); a per-meter last will is emulated:
where the scenario sets `lwt: true`, `offline` is published on meters/<id>/status.
"""

_EPILOG = """\
examples:
  meter-gateway simulate mqtt --meters 200 --interval 15m --speed 900 --duration 1d
  meter-gateway simulate mqtt --meters 50 --concentrators 1 --speed 0 --duration 6h \\
      --scenario simulators/scenarios/example.yaml --truth-out truth.jsonl \\
      --topology-out topology.csv --seed 7
"""


def _positive_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {text})")
    return value


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_arguments(p: argparse.ArgumentParser) -> None:
    fleet = p.add_argument_group("fleet (defaults: the scenario's `fleet:` values, else these)")
    fleet.add_argument("--meters", type=int, metavar="N", help="number of meters (default 10)")
    fleet.add_argument(
        "--interval", type=_duration, metavar="S", help="reading interval (default 900 = 15m)"
    )
    fleet.add_argument("--seed", type=int, metavar="K", help="random seed (default 0)")
    fleet.add_argument(
        "--duration",
        type=_duration,
        metavar="S",
        help="simulated time to run, then stop (default: run until interrupted)",
    )
    fleet.add_argument(
        "--start",
        metavar="TIME",
        help="simulated start, RFC 3339 with offset (default: now - duration, aligned)",
    )
    fleet.add_argument(
        "--concentrators",
        type=int,
        metavar="C",
        help="data concentrators dc-01.. (one per transformer, from tx-001) batching their "
        "meters' readings (default 0)",
    )
    fleet.add_argument("--meters-per-transformer", type=int, metavar="M", help="default 25")
    fleet.add_argument("--scenario", type=Path, metavar="FILE", help="YAML scenario: faults")
    fleet.add_argument(
        "--no-status",
        action="store_true",
        help="do not publish `online` on meters/<id>/status at start",
    )
    run = p.add_argument_group("run")
    run.add_argument(
        "--speed",
        type=_positive_float,
        default=1.0,
        metavar="X",
        help="simulated seconds per wall second; 900: a 15-minute interval per second; "
        "0: as fast as possible (default 1)",
    )
    run.add_argument("--topology-out", type=Path, metavar="FILE", help="write the topology CSV")
    run.add_argument("--truth-out", type=Path, metavar="FILE", help="write the ground-truth log")
    run.add_argument(
        "--connections", type=int, default=1, metavar="N", help="MQTT connections (default 1)"
    )
    run.add_argument("--quiet", action="store_true", help="no progress line")
    broker = p.add_argument_group("broker")
    broker.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    broker.add_argument("--port", type=int, default=1883, help="default 1883")
    broker.add_argument("--username")
    broker.add_argument("--password")
    broker.add_argument("--password-file", type=Path, help="read the password from this file")
    broker.add_argument("--tls", action="store_true", help="connect with TLS")
    broker.add_argument("--ca-file", help="CA certificates to verify the broker")
    broker.add_argument("--cert-file", help="client certificate (mutual TLS)")
    broker.add_argument("--key-file", help="client key (mutual TLS)")
    broker.add_argument(
        "--tls-insecure", action="store_true", help="do not verify the broker's certificate"
    )


def register(simulate_subparsers: Any) -> None:
    """Add ``mqtt`` to the subparsers of ``meter-gateway simulate``."""
    p = simulate_subparsers.add_parser(
        "mqtt",
        help="an MQTT meter fleet with injected faults",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(p)
    p.set_defaults(func=run_cli)


def _fleet_from_args(args: argparse.Namespace) -> Fleet:
    scenario = load_scenario(args.scenario) if args.scenario else Scenario()
    return Fleet(
        scenario,
        meters=args.meters,
        interval_s=args.interval,
        seed=args.seed,
        duration=args.duration,
        start=args.start,
        concentrators=args.concentrators,
        meters_per_transformer=args.meters_per_transformer,
        status_online=False if args.no_status else None,
    )


def _progress_printer(stream: IO[str]) -> Callable[[RunStats], None]:
    tty = stream.isatty()

    def show(stats: RunStats) -> None:
        if tty:
            stream.write("\r\x1b[2K" + stats.line())
        else:
            stream.write(stats.line() + "\n")
        stream.flush()

    return show


def run_cli(args: argparse.Namespace) -> int:
    from meter_gateway.simulators.mqtt.publisher import BrokerOptions, MqttPublisher, PublishError

    err = sys.stderr
    try:
        fleet = _fleet_from_args(args)
    except ScenarioError as exc:
        print(f"{exc.source}: not valid ({len(exc.errors)} error(s)):", file=err)
        for e in exc.errors:
            print(f"  {e}", file=err)
        return EXIT_USAGE
    except (FaultError, ValueError) as exc:
        print(f"simulate mqtt: {exc}", file=err)
        return EXIT_USAGE
    if args.topology_out:
        write_csv(fleet.topology, args.topology_out)
    password = args.password
    if args.password_file:
        password = args.password_file.read_text().strip()
    options = BrokerOptions(
        host=args.host,
        port=args.port,
        username=args.username,
        password=password,
        tls=args.tls,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        tls_insecure=args.tls_insecure,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    publisher = MqttPublisher(options, connections=args.connections)
    try:
        publisher.connect()
        if fleet.end is None and args.speed != 1:
            # Without an end, simulated time overtakes the wall clock at any speed above 1.
            print(
                "note: with no --duration and --speed other than 1, timestamps run ahead of "
                "the clock; the gateway refuses readings over 5 min in the future",
                file=err,
            )
        stats = run_fleet(
            fleet,
            publisher.publish,
            speed=args.speed,
            truth_out=args.truth_out,
            stop=stop,
            on_progress=None if args.quiet else _progress_printer(err),
        )
        if not publisher.flush(timeout_s=60):
            print(f"warning: {publisher.outstanding} messages not acknowledged", file=err)
    except PublishError as exc:
        print(f"simulate mqtt: {exc}", file=err)
        return 1
    finally:
        publisher.close()
        for s, h in previous.items():
            signal.signal(s, h)
    if not args.quiet:
        print(("\n" if err.isatty() else "") + stats.summary(), file=err)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m meter_gateway.simulators.mqtt.cli",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    return run_cli(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
