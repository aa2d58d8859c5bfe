"""`meter-gateway dead-letter list|replay`: the command line (arguments, help, output).

`list` is `query.py`'s grouping by reason, printed; `replay` runs `DeadLetterReplay`
(`replay.py`) over the selected records and prints its report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from meter_gateway.config.schema import Config
from meter_gateway.gateway.deadletters.query import (
    Selection,
    group_reasons,
    parse_since,
    render_table,
    select,
)
from meter_gateway.gateway.deadletters.replay import DeadLetterReplay

__all__ = ["DESCRIPTION", "FORMAT_CHOICES", "register", "run_list", "run_replay"]

EXIT_CONFIG = 2
EXIT_FAILED = 1

DESCRIPTION = """\
The dead-letter store (<data_dir>/dead-letter/*.jsonl): list its records by reason, and
replay them through today's configuration after a bound was corrected.

  list    one row per reason, most frequent first. Reasons are normalised (numbers
          become N, times T) so one cause is one row: count, first and last time
          received, source, and an example (FILE:LINE, topic or device, full reason).
  replay  each selected record through today's validation, the way it came: an MQTT
          payload through the format its topic maps to in mqtt.subscriptions (a
          meter cannot write as another), the elements of a batch alone (a record
          may hold several rejected for one reason), a Modbus reading again, a line
          of `meter-gateway replay` as a reading. The same checks as live ingest,
          limits.max_meters included. What passes is stored in the configured
          database; what still fails is reported by reason and is NOT written to
          the dead-letter store again. Not replayable (skipped, counted): Modbus
          poll errors, lines the database refused, spool and webhook notes,
          payloads cut at max_payload_bytes, meter events and status messages,
          elements nested too deep.

Validation's clock is each record's received_at: a reading is judged as when it
arrived, with today's bounds. Every record replayed is appended to the ledger
<data_dir>/dead-letter/replayed once the database has accepted it (fsync'd): running
dead-letter replay again skips it ("already replayed"), so nothing is stored twice.

Both read only complete lines: safe while the gateway appends to the files.
Filters (both commands): --since, --reason, --source.
Exit 0 when done (records still rejected included), 1 when the store or the database
cannot be used, 2 for a bad configuration.
"""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, type=Path, help="the YAML configuration file")
    p.add_argument(
        "--since",
        type=parse_since,
        metavar="T",
        help="records received at or after T: RFC 3339, a date (00:00 UTC), or an age "
        "(30m, 2h, 7d)",
    )
    p.add_argument("--reason", metavar="TEXT", help="records whose reason contains TEXT (any case)")
    p.add_argument(
        "--source",
        choices=["mqtt", "modbus", "storage", "spool", "webhook"],
        help="records from this source only",
    )


# One vocabulary for both commands, as the reports have it: `table` for what a person
# reads, `json` for a program. `text` (what `replay` took before) is still understood.
FORMAT_CHOICES = ("table", "json")
_FORMAT_ALIASES = {"text": "table"}


def _output_format(value: str) -> str:
    return _FORMAT_ALIASES.get(value, value)


def register(sub: Any) -> None:
    """Add `dead-letter` with `list` and `replay` to the top-level subparsers."""
    dl = sub.add_parser(
        "dead-letter",
        help="list the dead-letter store by reason; replay it through today's validation",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmds = dl.add_subparsers(dest="dead_letter", metavar="COMMAND")
    cmds.required = True
    ls = cmds.add_parser(
        "list",
        help="the records grouped by reason, with counts and an example",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(ls)
    ls.add_argument(
        "--format",
        type=_output_format,
        choices=FORMAT_CHOICES,
        default="table",
        help="an aligned table, or one JSON object {groups: [...]} (default table; "
        "'text' is taken as 'table')",
    )
    ls.set_defaults(func=run_list)
    rp = cmds.add_parser(
        "replay",
        help="store what passes today's validation; a ledger keeps it from being stored twice",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(rp)
    rp.add_argument(
        "--dry-run",
        action="store_true",
        help="validate and report what would be stored; write nothing (no database, no ledger)",
    )
    rp.add_argument(
        "--format",
        type=_output_format,
        choices=FORMAT_CHOICES,
        default="table",
        help="the summary as lines of text, or as one JSON object (default table; "
        "'text' is taken as 'table')",
    )
    rp.add_argument(
        "--progress-every",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between progress lines on stderr (default 5)",
    )
    for p in (ls, rp):
        p.add_argument(
            "--log-level",
            default="warning",
            choices=["debug", "info", "warning", "error"],
            help="log verbosity (default: warning)",
        )
    rp.set_defaults(func=run_replay)


def _load(args: argparse.Namespace) -> Config | None:
    from meter_gateway.config.loader import load_config_or_say

    return load_config_or_say(args.config)


def _selection(args: argparse.Namespace) -> Selection:
    return Selection(since=args.since, reason=args.reason, source=args.source)


def _open_store(args: argparse.Namespace) -> tuple[Config, Path] | int:
    """Logging set up, the configuration and its dead-letter folder; or the exit code."""
    from meter_gateway.gateway.logs import setup_logging

    setup_logging(getattr(args, "log_level", "warning"), "text")
    cfg = _load(args)
    if cfg is None:
        return EXIT_CONFIG
    directory = Path(cfg.gateway.data_dir) / "dead-letter"
    if not directory.is_dir():
        print(
            f"dead-letter: no dead-letter store at {directory} (gateway.data_dir)", file=sys.stderr
        )
        return EXIT_FAILED
    return cfg, directory


def run_list(args: argparse.Namespace) -> int:
    """`meter-gateway dead-letter list ...`: the exit code."""
    opened = _open_store(args)
    if isinstance(opened, int):
        return opened
    _, directory = opened
    try:
        groups, unreadable = group_reasons(select(directory, _selection(args)))
    except OSError as exc:
        print(f"dead-letter: cannot read {directory}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.format == "json":
        body = {"groups": [g.as_dict() for g in groups], "unreadable": unreadable}
        print(json.dumps(body, indent=2))
    else:
        print(render_table(groups, unreadable))
    return 0


def run_replay(args: argparse.Namespace) -> int:
    """`meter-gateway dead-letter replay ...`: the exit code."""
    from meter_gateway.config.topology import TopologyError

    opened = _open_store(args)
    if isinstance(opened, int):
        return opened
    cfg, directory = opened
    # Each record still rejected is in the summary: the pipeline's per-rejection warnings
    # would only repeat it.
    pipeline_log = logging.getLogger("meter_gateway.pipeline")
    level = pipeline_log.level
    pipeline_log.setLevel(logging.ERROR)
    try:
        dl_replay = DeadLetterReplay(
            cfg,
            dry_run=args.dry_run,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
            progress_every_s=args.progress_every,
        )
        report = asyncio.run(dl_replay.run(select(directory, _selection(args))))
    except TopologyError as exc:
        print(f"dead-letter: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"dead-letter: cannot read the store or write the ledger: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(
            "dead-letter replay: interrupted; the records stored so far are in the ledger, "
            "run it again to replay the rest",
            file=sys.stderr,
        )
        return 130
    finally:
        pipeline_log.setLevel(level)
    if args.format == "json":
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.text())
    return 0
