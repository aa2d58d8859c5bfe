"""`meter-gateway simulate modbus`: simulated Modbus meters on local servers.

Also runnable on its own:
`python -m meter_gateway.simulators.modbus.cli --meters 10 --model sdm630`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from meter_gateway.protocols.modbus.registermap import bundled_models

# Kept here rather than imported from `server`, so that building the parser does not
# import pymodbus (the gateway's CLI registers this sub-command on every start).
MAX_UNITS = 247
_FAULTS = ("silent", "exception", "garbled", "nan")

__all__ = ["build_parser", "register", "run"]

_DESCRIPTION = """\
Serve N simulated electricity meters over Modbus, each through a bundled register
map, with live values from the meter model (load profile, integrating energy
registers, voltages around nominal), until SIGINT or SIGTERM.

How meters map to ports and unit ids (U = --units-per-port, 247 by default):
  meters 1..U       are unit ids 1..U on port P
  meters U+1..2U    are unit ids 1..U on port P+1, and so on.
Meter ids are <model>-0001, <model>-0002, ... (or --id-prefix).
Unit ids without a meter do not answer, as on an RS-485 line.

--transport tcp serves Modbus TCP (MBAP framing); rtu-over-tcp serves RTU frames
(with CRC) over TCP, as serial-to-Ethernet converters in transparent mode do.
--config-out writes the matching `modbus:` section for the gateway's configuration.
"""

_EPILOG = """\
examples:
  meter-gateway simulate modbus --meters 10 --model sdm630 --port 5020
  meter-gateway simulate modbus --meters 300 --model em24 --port 5020 --seed 7 \\
      --config-out modbus-devices.yaml          # ports 5020 (247 meters) and 5021 (53)
  meter-gateway simulate modbus --meters 5 --fault 2=silent --fault 3=exception
"""


def _fault(text: str) -> tuple[int, str]:
    number, _, kind = text.partition("=")
    if not number.isdigit() or kind not in _FAULTS:
        kinds = ", ".join(_FAULTS)
        raise argparse.ArgumentTypeError(f"expected METER=KIND with KIND one of {kinds}")
    return int(number), kind


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--meters", type=int, default=1, metavar="N", help="number of meters (default 1)"
    )
    p.add_argument(
        "--model",
        default="sdm630",
        choices=bundled_models(),
        help="bundled register map the meters expose (default sdm630)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5020, metavar="P", help="first port (default 5020)")
    p.add_argument(
        "--transport",
        default="tcp",
        choices=["tcp", "rtu-over-tcp"],
        help="Modbus TCP, or RTU framing over TCP (default tcp)",
    )
    p.add_argument(
        "--seed", type=int, default=0, metavar="K", help="meter model seed: same seed, same values"
    )
    p.add_argument(
        "--units-per-port",
        type=int,
        default=MAX_UNITS,
        metavar="U",
        help=f"meters per port, 1..{MAX_UNITS} (default {MAX_UNITS})",
    )
    p.add_argument(
        "--static",
        action="store_true",
        help="fixed values instead of the meter model (for exact comparisons)",
    )
    p.add_argument(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        metavar="METER=KIND",
        help="make meter number METER (1-based) silent, exception, garbled or nan; repeatable",
    )
    p.add_argument("--id-prefix", default=None, help="meter id prefix (default '<model>-')")
    p.add_argument(
        "--config-out",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the gateway's `modbus:` section polling these meters to FILE",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=10.0,
        metavar="S",
        help="interval_s written into --config-out (default 10)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help="stop after S seconds (default: run until SIGINT/SIGTERM)",
    )


def register(simulate_subparsers: Any) -> None:
    """Add the `modbus` sub-command to `meter-gateway simulate`."""
    p = simulate_subparsers.add_parser(
        "modbus",
        help="simulated Modbus meters (TCP or RTU over TCP servers)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(p)
    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    """The stand-alone parser (`python -m meter_gateway.simulators.modbus.cli`)."""
    p = argparse.ArgumentParser(
        prog="meter-gateway simulate modbus",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Handler: serve until stopped; exit 0, or 2 on bad arguments / ports in use."""
    if args.meters < 1:
        print("simulate modbus: --meters must be at least 1", file=sys.stderr)
        return 2
    if not 1 <= args.units_per_port <= MAX_UNITS:
        print(f"simulate modbus: --units-per-port is 1..{MAX_UNITS}", file=sys.stderr)
        return 2
    for number, _ in args.fault:
        if not 1 <= number <= args.meters:
            print(f"simulate modbus: --fault {number}: no such meter", file=sys.stderr)
            return 2
    try:
        return asyncio.run(_serve(args))
    except (OSError, RuntimeError) as exc:
        print(f"simulate modbus: cannot start: {exc}", file=sys.stderr)
        return 2


async def _serve(args: argparse.Namespace) -> int:
    from meter_gateway.simulators.modbus.server import Fault, MeterFleet

    fleet = MeterFleet(
        args.meters,
        model=args.model,
        host=args.host,
        port=args.port,
        transport=args.transport,
        seed=args.seed,
        units_per_port=args.units_per_port,
        live=not args.static,
        meter_id_prefix=args.id_prefix,
    )
    for number, fault in args.fault:
        fleet.meters[number - 1].fault = Fault(fault)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with fleet:
        for k, server in enumerate(fleet.servers):
            first = k * args.units_per_port + 1
            last = first + len(server.meters) - 1
            print(
                f"simulate modbus: meters {first}-{last} ({fleet.meters[first - 1].meter_id}..."
                f"{fleet.meters[last - 1].meter_id}) are units 1-{len(server.meters)} on "
                f"{args.transport}://{args.host}:{server.port} ({args.model})",
                file=sys.stderr,
                flush=True,
            )
        if args.config_out is not None:
            devices = fleet.device_configs(interval_s=args.interval)
            args.config_out.write_text(
                yaml.safe_dump({"modbus": {"devices": devices}}, sort_keys=False)
            )
            print(f"simulate modbus: wrote {args.config_out}", file=sys.stderr, flush=True)
        print("simulate modbus: serving; Ctrl-C to stop", file=sys.stderr, flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=args.duration)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
