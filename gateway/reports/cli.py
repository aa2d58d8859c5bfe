"""`meter-gateway report reliability`: IEEE 1366 indices from the stored outage events."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from meter_gateway.config.loader import ConfigError, load_config
from meter_gateway.config.topology import TopologyError, load_topology
from meter_gateway.gateway.reports.reliability import Window, compute, pair_points
from meter_gateway.gateway.reports.render import render
from meter_gateway.gateway.reports.source import SourceError, read_points

__all__ = ["RELIABILITY_DESCRIPTION", "parse_time", "register", "run_reliability"]

EXIT_CONFIG = 2
EXIT_SOURCE = 1

RELIABILITY_DESCRIPTION = """\
IEEE 1366 distribution reliability indices for the window [--from, --to), per feeder
(or transformer) and for the whole system, from the stored `power_outage` events
(measurement meter_event) and the customers of the topology file (topology.file).

  SAIFI  sustained customer interruptions / customers served (interruptions per customer)
  SAIDI  sum of customer-minutes of sustained interruption / customers served (minutes)
  CAIDI  SAIDI / SAIFI: minutes per sustained customer interruption ("-" when none)
  MAIFI  momentary customer interruptions / customers served; every momentary
         interruption counts (MAIFI, not MAIFIe: reclosing sequences are not grouped)
  CEMIn  share of customers served with more than n sustained interruptions (--cemi),
         and the list of those customers (the outage-sensitive ones)

Momentary: shorter than events.momentary_max_s (default 300 s); sustained: that or
longer, judged on the outage's whole length. Customers served: distinct customer_id
in the topology (a meter without one is its own customer); overlapping outages of one
customer's meters are one interruption. An outage begun before --from counts from
--from, one still open at --to up to --to. transformer_outage events are not counted
again: the meters behind the transformer have their own power_outage events.

Times: RFC 3339 (2026-01-01T06:00:00Z; no offset means UTC) or a date (its 00:00 UTC);
--to is exclusive, so --from 2026-01-01 --to 2026-02-01 is January.
Exit 0 on success, 2 for a bad configuration or topology, 1 when the database cannot
be read.
"""


def parse_time(text: str) -> datetime:
    """RFC 3339 or a date (midnight UTC); a time without an offset is UTC."""
    text = text.strip()
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        t = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an RFC 3339 time or a date: {text!r} (e.g. 2026-01-01 or 2026-01-01T06:00:00Z)"
        ) from None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _cemi_n(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n <= 10_000:
        raise argparse.ArgumentTypeError(f"must be a whole number 0 to 10000 (got {text!r})")
    return n


def register(sub: Any) -> None:
    """Add `report` with its `reliability` command to the top-level subparsers."""
    report = sub.add_parser(
        "report",
        help="reports from the stored data (reliability indices)",
        description="Reports computed from the data the gateway has stored.",
    )
    kinds = report.add_subparsers(dest="report", metavar="REPORT")
    kinds.required = True
    p = kinds.add_parser(
        "reliability",
        help="SAIFI, SAIDI, CAIDI, MAIFI and CEMIn per feeder or transformer",
        description=RELIABILITY_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-c", "--config", required=True, type=Path, help="the YAML configuration file")
    p.add_argument(
        "--from", dest="from_", required=True, type=parse_time, metavar="T", help="start, inclusive"
    )
    p.add_argument("--to", required=True, type=parse_time, metavar="T", help="end, exclusive")
    p.add_argument(
        "--by",
        choices=["feeder", "transformer"],
        default="feeder",
        help="one row per feeder or per transformer of the topology (default feeder)",
    )
    p.add_argument(
        "--format",
        choices=["table", "csv", "json"],
        default="table",
        help="an aligned table with a SYSTEM row, CSV with a header, or one JSON object",
    )
    p.add_argument(
        "--cemi",
        type=_cemi_n,
        default=3,
        metavar="N",
        help="CEMIn: list customers with more than N sustained interruptions (default 3)",
    )
    p.set_defaults(func=run_reliability)


def run_reliability(args: argparse.Namespace) -> int:
    if args.to <= args.from_:
        print("meter-gateway report: --to must be after --from", file=sys.stderr)
        return EXIT_CONFIG
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"{args.config}: configuration is not valid:", file=sys.stderr)
        for err in exc.errors:
            print(f"  {err}", file=sys.stderr)
        return EXIT_CONFIG
    if cfg.topology.file is None:
        print(
            f"{args.config}: topology.file is not set: the indices need the customers "
            "served, which come from the topology CSV (meter_id,transformer_id,feeder_id,"
            "customer_id,...); set topology.file",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        topology = load_topology(cfg.topology.file)
    except TopologyError as exc:
        print(f"meter-gateway report: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    window = Window(args.from_.timestamp(), args.to.timestamp())
    momentary = cfg.events.momentary_max_s
    # Clears up to momentary_max_s past --to decide whether an outage open at --to
    # was momentary; never past now, which has not been written yet.
    read_until = max(min(window.to_s + momentary, time.time()), window.to_s)
    try:
        points = read_points(cfg.storage, window, read_until)
    except SourceError as exc:
        print(f"meter-gateway report: {exc}", file=sys.stderr)
        return EXIT_SOURCE
    report = compute(
        pair_points(points),
        topology,
        window,
        by=args.by,
        momentary_max_s=momentary,
        cemi_n=args.cemi,
        observed_until_s=read_until,
    )
    if report.unknown_meters:
        shown = ", ".join(report.unknown_meters[:10])
        more = len(report.unknown_meters) - 10
        tail = f" and {more} more" if more > 0 else ""
        print(
            f"meter-gateway report: {len(report.unknown_meters)} meter(s) with outages are not "
            f"in the topology and are left out: {shown}{tail}",
            file=sys.stderr,
        )
    sys.stdout.write(render(report, args.format))
    return 0
