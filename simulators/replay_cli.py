"""``meter-gateway simulate replay-file``: a fleet's traffic written to a replay file.

``register`` adds the command to ``meter-gateway simulate`` (through the
``meter_gateway.simulators`` entry point); ``python -m meter_gateway.simulators.replay_cli``
runs it standalone.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meter_gateway.simulators.faults import FaultError, parse_duration
from meter_gateway.simulators.fleet import Fleet
from meter_gateway.simulators.meter import rfc3339
from meter_gateway.simulators.replayfile import (
    ReplayFileStats,
    default_truth_path,
    write_replay_file,
)
from meter_gateway.simulators.scenario import Scenario, ScenarioError, load_scenario
from meter_gateway.simulators.topology import write_csv

__all__ = ["main", "register"]

EXIT_USAGE = 2

_DESCRIPTION = """\
Write a simulated fleet's traffic to a replay file, as fast as the simulation runs, for
`meter-gateway replay` (which runs it through the gateway's validation, storage and
detectors) and for scoring the detectors against the injected faults.

The file is JSON Lines, in arrival order (gzip-compressed when FILE ends in .gz):
  readings          {"meter_id", "ts", "energy_import_kwh", "voltage_v", ...}
                    (a concentrator batch becomes one line per reading)
  meter events      {"meter_id", "ts", "type": "last_gasp"}  (power_restored, tamper, ...)
  status            {"meter_id", "ts", "status": "offline"}  (or "online")
  malformed         the payload as the meter sent it, so replay rejects it
Each JSON object carries "_at": when the gateway would have received it (epoch seconds),
which replay uses as its clock.

Beside it go the ground-truth log of the injected faults (--truth, default
<name>.truth.jsonl) and the topology CSV (--topology, default <name>.topology.csv) for the
gateway's `topology.file`, which transformer outages need.

The same scenario, options and seed give the same file, byte for byte. Without --start a
scenario's `fleet.start` is used, else the run ends about now (like `simulate mqtt`).
"""

_EPILOG = """\
examples:
  meter-gateway simulate replay-file --scenario simulators/scenarios/week.yaml \\
      --out week.jsonl.gz
  meter-gateway simulate replay-file --meters 50 --duration 1d --start 2026-11-01T00:00:00Z \\
      --out small.jsonl --truth small-truth.jsonl
  meter-gateway replay -c gateway.yaml week.jsonl.gz --events-out events.jsonl --no-store
"""


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", required=True, type=Path, metavar="FILE", help="the replay file (.jsonl[.gz])"
    )
    p.add_argument(
        "--truth", type=Path, metavar="FILE", help="ground-truth log (default: beside --out)"
    )
    p.add_argument(
        "--topology", type=Path, metavar="FILE", help="topology CSV (default: beside --out)"
    )
    p.add_argument("--scenario", type=Path, metavar="FILE", help="YAML scenario: fleet and faults")
    fleet = p.add_argument_group("fleet (defaults: the scenario's `fleet:` values)")
    fleet.add_argument("--meters", type=int, metavar="N", help="number of meters")
    fleet.add_argument("--interval", type=_duration, metavar="S", help="reading interval")
    fleet.add_argument("--seed", type=int, metavar="K", help="random seed")
    fleet.add_argument(
        "--duration",
        type=_duration,
        metavar="S",
        help="e.g. 7d (required unless the scenario sets one: a replay file must end)",
    )
    fleet.add_argument("--start", metavar="TIME", help="first reading, RFC 3339 with offset")
    fleet.add_argument("--concentrators", type=int, metavar="C", help="data concentrators")
    fleet.add_argument("--meters-per-transformer", type=int, metavar="M")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def register(simulate_subparsers: Any) -> None:
    """Add ``replay-file`` to the subparsers of ``meter-gateway simulate``."""
    p = simulate_subparsers.add_parser(
        "replay-file",
        help="write a fleet's traffic to a replay file (for `meter-gateway replay`)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(p)
    p.set_defaults(func=run_cli)


def _progress(stats: ReplayFileStats, sim_t: float) -> None:
    print(
        f"sim {rfc3339(sim_t)} | {stats.lines:,} lines | "
        f"{stats.by_kind['reading']:,} readings | faults {sum(stats.faults.values())}",
        file=sys.stderr,
        flush=True,
    )


def run_cli(args: argparse.Namespace) -> int:
    err = sys.stderr
    try:
        scenario = load_scenario(args.scenario) if args.scenario else Scenario()
        fleet = Fleet(
            scenario,
            meters=args.meters,
            interval_s=args.interval,
            seed=args.seed,
            duration=args.duration,
            start=args.start,
            concentrators=args.concentrators,
            meters_per_transformer=args.meters_per_transformer,
        )
    except ScenarioError as exc:
        print(f"{exc.source}: not valid ({len(exc.errors)} error(s)):", file=err)
        for e in exc.errors:
            print(f"  {e}", file=err)
        return EXIT_USAGE
    except (FaultError, ValueError) as exc:
        print(f"simulate replay-file: {exc}", file=err)
        return EXIT_USAGE
    if fleet.end is None:
        print(
            "simulate replay-file: no duration: give --duration (e.g. 7d) or set "
            "`fleet.duration` in the scenario; a replay file must end",
            file=err,
        )
        return EXIT_USAGE
    truth = args.truth or default_truth_path(args.out)
    topology = args.topology or truth.with_name(
        truth.name.removesuffix(".truth.jsonl") + ".topology.csv"
    )
    try:
        topology.parent.mkdir(parents=True, exist_ok=True)
        write_csv(fleet.topology, topology)
        stats = write_replay_file(
            fleet, args.out, truth, on_progress=None if args.quiet else _progress
        )
    except OSError as exc:
        print(f"simulate replay-file: cannot write: {exc}", file=err)
        return 1
    if not args.quiet:
        print(stats.summary() + f"\ntopology: {topology}", file=err)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m meter_gateway.simulators.replay_cli",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    return run_cli(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
