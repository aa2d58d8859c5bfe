"""`meter-gateway replay`: its command line (arguments, help, output, exit code).

The engine, `Replay` in `gateway/replay.py`, feeds recorded traffic through the live
pipeline on the recording's clock; this module only runs it for the command.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import sys
from pathlib import Path
from typing import IO

from meter_gateway.gateway.replay import Replay

__all__ = ["DESCRIPTION", "add_arguments", "run_cli"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `replay` command's arguments (the gateway's command line calls this)."""
    p.add_argument("-c", "--config", required=True, type=Path, help="the YAML configuration file")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="JSON Lines (.gz too)")
    p.add_argument(
        "--events-out",
        type=Path,
        metavar="FILE",
        help="write every event (raised and cleared) here, one JSON object a line",
    )
    p.add_argument(
        "--no-store",
        action="store_true",
        help="write nothing to the database (validation and detectors still run)",
    )
    p.add_argument(
        "--progress-every",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between progress lines on stderr (default 5)",
    )


DESCRIPTION = """\
Replay recorded traffic through the gateway's validation, storage and detectors, as if it
arrived live, on the recording's own clock: history from any date replays.

FILE is JSON Lines (.gz accepted), in arrival order: readings in the `json` format with a
meter_id, meter events {"meter_id", "ts", "type": "last_gasp"} (power_restored, tamper,
cover_open) and status lines {"meter_id", "ts", "status": "offline"} (or "online").
`meter-gateway simulate replay-file` writes such files.

The clock: a line's "_at" (epoch seconds: when the gateway would have received it) when
present, else the watermark, the latest ts seen so far. Validation's age and future bounds
and the detectors' timers are judged against it. A ts more than validation.max_age_s ahead of
the watermark does not move it (the line is rejected as in the future).

Readings are stored (unless --no-store) with the configuration's storage settings; events go
to --events-out and to the meter_event measurement. Nothing is published to MQTT or to the
webhook: replayed history pages no one. Bad lines go to the dead-letter store under
<data_dir>/dead-letter/, with the reason and `replay:FILE:LINE`.

Progress goes to stderr every few seconds, a summary at the end. Exit 0 when the files were
read (rejected lines included), 1 when a file cannot be read, 2 for a bad configuration.
"""


def run_cli(args: argparse.Namespace) -> int:
    """`meter-gateway replay ...`: the exit code."""
    from meter_gateway.config.loader import load_config_or_say
    from meter_gateway.config.topology import TopologyError
    from meter_gateway.gateway.logs import setup_logging

    setup_logging(getattr(args, "log_level", "info"), getattr(args, "log_format", "text"))
    cfg = load_config_or_say(args.config)
    if cfg is None:
        return 2
    missing = [str(f) for f in args.files if not Path(f).is_file()]
    if missing:
        print(f"replay: no such file: {', '.join(missing)}", file=sys.stderr)
        return 1
    out: IO[bytes] | None = None
    try:
        if args.events_out is not None:
            args.events_out.parent.mkdir(parents=True, exist_ok=True)
            out = args.events_out.open("wb", buffering=1 << 20)
        replay = Replay(
            cfg,
            store=not args.no_store,
            events_out=out,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
            progress_every_s=args.progress_every,
        )
        if replay.summary.detectors != "on":
            print(f"replay: detectors {replay.summary.detectors}", file=sys.stderr)
        summary = asyncio.run(replay.run(args.files))
    except TopologyError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        print(f"replay: cannot read the input: {exc}", file=sys.stderr)
        return 1
    finally:
        if out is not None:
            out.close()
    print(summary.text(), file=sys.stderr)
    if args.events_out is not None:
        print(f"  events written to {args.events_out}", file=sys.stderr)
    return 0
