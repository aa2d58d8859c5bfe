"""`meter-gateway`: run, check-config, and the commands that plug in.

The gateway never imports what sits above it. The simulators (`simulate mqtt`,
`simulate modbus`) and the demo are plug-ins, found through entry points:

- group `meter_gateway.simulators`: `register(simulate_subparsers)` adds `simulate <name>`;
- group `meter_gateway.commands`: `register(subparsers)` adds a top-level command.

A plug-in that cannot be loaded is an error, not a missing command: its name stays
listed as unavailable, with the reason, and running it says why and exits 1. `run`
and `check-config` do not depend on any plug-in.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meter_gateway.config.loader import ConfigError, load_config, load_config_or_say
from meter_gateway.config.secrets import redact_url

__all__ = ["main"]

log = logging.getLogger("meter_gateway")

EXIT_CONFIG = 2
EXIT_PLUGIN = 1

# The entry-point groups pyproject.toml declares: names under the distribution's
# name, not modules this one imports.
_GROUPS_UNDER = "meter_gateway"
SIMULATORS_GROUP = f"{_GROUPS_UNDER}.simulators"
COMMANDS_GROUP = f"{_GROUPS_UNDER}.commands"

_DESCRIPTION = """\
Smart-meter ingestion gateway: takes readings that meters and data concentrators
push over MQTT (and polls Modbus meters), validates them like a meter data system,
stores them in InfluxDB, and keeps every rejected message in a dead-letter store
with the reason.

Configuration: one YAML file (see config/example.yaml); any key can be overridden
with an environment variable METER_GATEWAY__SECTION__KEY, e.g.
METER_GATEWAY__STORAGE__TOKEN. Logs go to stderr.
"""


def _add_logging(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (default: info)",
    )
    p.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="text for people, json (one object per line) for log collectors",
    )


def _seconds(text: str) -> float:
    # float() takes "inf" and "nan"; neither is a time the event loop can wait for.
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 86_400:
        raise argparse.ArgumentTypeError(f"must be 0 to 86400 seconds (got {text!r})")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meter-gateway",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from meter_gateway import __version__

    parser.add_argument("--version", action="version", version=f"meter-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser(
        "run",
        help="run the gateway until SIGINT/SIGTERM",
        description="Run the gateway until SIGINT or SIGTERM. On SIGTERM it stops taking "
        "input, writes what it has taken, and exits 0. A bad configuration is refused "
        f"with every error listed (exit {EXIT_CONFIG}).",
    )
    run.add_argument("-c", "--config", required=True, type=Path, help="the YAML configuration file")
    run.add_argument(
        "--shutdown-timeout",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="how long to keep writing to the database after SIGTERM (default 30)",
    )
    _add_logging(run)
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser(
        "check-config",
        help="validate a configuration file",
        description=f"Validate a configuration file (with the environment's overrides). "
        f"Exit 0 when it is good, {EXIT_CONFIG} with every error listed by key path when not.",
    )
    check.add_argument(
        "-c", "--config", required=True, type=Path, help="the YAML configuration file"
    )
    check.set_defaults(func=_cmd_check)

    # `replay`: recorded traffic through validation, storage and detectors (the engine in
    # gateway/replay.py, its command line in gateway/replay_cli.py).
    from meter_gateway.gateway import replay_cli as replay_cmd

    replay = sub.add_parser(
        "replay",
        help="replay recorded traffic (JSON Lines) through validation, storage and detectors",
        description=replay_cmd.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay_cmd.add_arguments(replay)
    _add_logging(replay)
    replay.set_defaults(func=replay_cmd.run_cli)

    # `report`: indices computed from the stored data (gateway/reports/cli.py).
    from meter_gateway.gateway.reports import cli as report_cmd

    report_cmd.register(sub)

    # `dead-letter list|replay`: the dead-letter store by reason, and its records put
    # through today's validation again (gateway/deadletters/).
    from meter_gateway.gateway.deadletters import cli as dead_letter_cmd

    dead_letter_cmd.register(sub)

    simulate = sub.add_parser(
        "simulate",
        help="simulated meters: an MQTT fleet or Modbus servers",
        description="Simulated meters for testing without hardware.",
    )
    sim_sub = simulate.add_subparsers(dest="simulator", metavar="KIND")
    sim_sub.required = True
    _add_plugins(SIMULATORS_GROUP, sim_sub)
    _add_plugins(COMMANDS_GROUP, sub)
    return parser


# -- plug-ins --------------------------------------------------------------------------------


def _add_plugins(group: str, sub: Any) -> None:
    """Let every entry point of `group` register its sub-command into `sub`."""
    try:
        found = importlib.metadata.entry_points(group=group)
    except Exception as exc:  # broken metadata must not take `run` down with it
        log.warning("cannot list the %s plug-ins: %s: %s", group, type(exc).__name__, exc)
        return
    for ep in sorted(found, key=lambda e: e.name):
        # What a failed registration added is taken back, so the placeholder does not
        # meet a half-built command of the same name.
        before = dict(sub.choices)
        listed = len(sub._choices_actions)
        try:
            ep.load()(sub)
        except Exception as exc:
            sub.choices.clear()
            sub.choices.update(before)
            del sub._choices_actions[listed:]
            _add_unavailable(sub, ep.name, ep.value, exc)


def _add_unavailable(sub: Any, name: str, origin: str, exc: Exception) -> None:
    """A placeholder for a plug-in that failed: listed, and an error when run."""
    reason = f"{type(exc).__name__}: {exc}"
    if name in sub.choices:  # never shadow a command that works (`run`, a good plug-in)
        log.warning(
            "the plug-in %r (from %s) cannot be loaded: %s; its name is another command's",
            name,
            origin,
            reason,
        )
        return
    p = sub.add_parser(
        name,
        help="unavailable: " + reason.replace("%", "%%"),  # argparse %-formats a help text
        description=f"The {name} command is unavailable: it cannot be loaded from "
        f"{origin}: {reason}",
    )
    message = f"meter-gateway: the {name} command cannot be loaded: {reason} (from {origin})"
    p.set_defaults(func=lambda _args: _unavailable(message), accepts_any_arguments=True)


def _unavailable(message: str) -> int:
    print(message, file=sys.stderr)
    return EXIT_PLUGIN


# -- commands --------------------------------------------------------------------------------


def _cmd_check(args: argparse.Namespace) -> int:
    cfg = load_config_or_say(args.config)
    if cfg is None:
        return EXIT_CONFIG
    print(
        f"{args.config}: OK (gateway {cfg.gateway.id}, storage {cfg.storage.api} at "
        f"{redact_url(cfg.storage.url)}, broker {cfg.mqtt.host}:{cfg.mqtt.port}, "
        f"{len(cfg.mqtt.subscriptions)} subscriptions, {len(cfg.modbus.devices)} Modbus devices)"
    )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from meter_gateway.gateway.logs import setup_logging

    setup_logging(args.log_level, args.log_format)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        log.error("%s: configuration is not valid; not starting:", args.config)
        for err in exc.errors:
            log.error("  %s", err)
        return EXIT_CONFIG
    from meter_gateway.config.topology import TopologyError

    try:
        return _run_loop(_serve(cfg, args.shutdown_timeout))
    except TopologyError as exc:
        log.error("%s; not starting", exc)
        return EXIT_CONFIG
    except OSError as exc:  # the status page's address is taken, the data_dir is not writable
        log.error("%s; not starting", exc)
        return 1


async def _serve(cfg: object, shutdown_timeout: float) -> int:
    from meter_gateway.gateway.app import Gateway

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _stopper(stop, sig))
    gw = Gateway(cfg, shutdown_timeout_s=shutdown_timeout)  # type: ignore[arg-type]
    return await gw.run(stop)


def _stopper(stop: asyncio.Event, sig: signal.Signals):
    def handler() -> None:
        log.info("received %s: draining and stopping", sig.name)
        stop.set()

    return handler


def _run_loop(coro) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is not on Windows
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    # As parse_args, except that an unavailable plug-in takes any arguments: it is run
    # only to say why it cannot be.
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
