"""`meter-gateway report`: reliability indices, billing consumption, customer tags.

Sub-commands: `reliability` (IEEE 1366 indices from the stored outage events),
`billing` (consumption per customer from the registers at the period's boundaries)
and `customers` (tags for energy-saving advice and customer service).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from meter_gateway.config.loader import load_config_or_say
from meter_gateway.config.schema import Config
from meter_gateway.config.topology import MeterPlace, TopologyError, load_topology
from meter_gateway.gateway.reports.billing import bill
from meter_gateway.gateway.reports.customers import TAGS, tag_customers
from meter_gateway.gateway.reports.readings_source import read_boundaries, read_customer_inputs
from meter_gateway.gateway.reports.reliability import Window, compute, pair_points
from meter_gateway.gateway.reports.render import render, render_billing, render_customers
from meter_gateway.gateway.reports.source import read_points
from meter_gateway.storage.influxdb.query import QueryError

__all__ = [
    "BILLING_DESCRIPTION",
    "CUSTOMERS_DESCRIPTION",
    "RELIABILITY_DESCRIPTION",
    "no_daily_hint",
    "parse_local",
    "parse_time",
    "register",
    "resolve_local",
    "run_billing",
    "run_customers",
    "run_reliability",
]

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
        help="reports from the stored data (reliability indices, billing, customer tags)",
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
    _register_billing(kinds)
    _register_customers(kinds)


def run_reliability(args: argparse.Namespace) -> int:
    if args.to <= args.from_:
        print("meter-gateway report: --to must be after --from", file=sys.stderr)
        return EXIT_CONFIG
    loaded = _config_and_topology(args, "the indices need the customers served")
    if isinstance(loaded, int):
        return loaded
    cfg, topology = loaded

    window = Window(args.from_.timestamp(), args.to.timestamp())
    momentary = cfg.events.momentary_max_s
    # Clears up to momentary_max_s past --to decide whether an outage open at --to
    # was momentary; never past now, which has not been written yet.
    read_until = max(min(window.to_s + momentary, time.time()), window.to_s)
    try:
        points = read_points(cfg.storage, window, read_until)
    except QueryError as exc:
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


# -- billing and customers: local dates ------------------------------------------------------

LOCAL_TIMES = """\
Times: a date (2026-01-01) is its local midnight in gateway.timezone (DST-correct);
an RFC 3339 time with an offset (2026-01-01T06:00:00Z, ...+01:00) is that instant; one
without an offset is a local time in gateway.timezone. --to is exclusive, so
--from 2026-01-01 --to 2026-02-01 is January.
Exit 0 on success, 2 for a bad configuration, topology or arguments, 1 when the
database cannot be read (the message names storage.url and what to check).
"""

BILLING_DESCRIPTION = (
    """\
Consumption per customer for the billing period [--from, --to), from the cumulative
registers (energy_import_kwh, energy_export_kwh of measurement meter_reading) at the
period's two boundaries: the input of an e-bill.

  import_kwh       per meter R_import(--to) - R_import(--from); per customer the sum
                   over its meters (topology customer_id; a meter without one is its
                   own customer, "meter:<id>")
  export_kwh       the same for the export register
  from_import_kwh  the import register at --from (per customer: summed over its meters)
  to_import_kwh    the import register at --to
  meters           the customer's meters

Register at a boundary T: the stored point exactly at T; else linear interpolation
between the meter's last point before T and its first point after T.

Flags (per boundary, carried to the meter and its customer):
  estimated          a point used is quality=estimated, or T was interpolated across a
                     gap (its two neighbours more than estimation.interval_s apart)
  suspect            a point used is quality=suspect
  open               no point at or after T: the last one before it is used (the
                     period is not complete yet, or the meter is silent)
  started            no point at or before --from: the meter's first point after it
                     is used (installed or first read inside the period)
  no data            the meter has no register point up to --to: no figures
  register decrease  import or export went down over the period: the negative delta
                     is reported as it is; the bill needs a person
  not in topology    a meter with points in the period that the topology does not
                     list: billed as its own customer, and named on stderr

--customer ID: that customer only, with a row per meter under it (table and CSV);
JSON always has the per meter rows with the boundary values, how each was found and
the points used (time, registers, quality, estimation_method).
kWh rounded to 3 decimals (Wh).

"""
    + LOCAL_TIMES
)

CUSTOMERS_DESCRIPTION = (
    """\
Customer tags for energy-saving advice and customer service, from the daily figures
(measurement meter_daily) and the events (meter_event) of [--from, --to), each with
the evidence that set it (the numbers and the threshold). Thresholds: the customers:
section of the configuration.

  high_standby      mean daily base load >= customers.high_standby_kw; per day the sum
                    of the customer's meters' base_load_kw, averaged over the days
                    with data
  night_heavy       night energy (sum of night_share x energy_import_kwh) / import
                    energy of the days with both >= customers.night_heavy_share
  peak_contributor  the top customers.peak_top_share of the customers with daily
                    peak data by mean daily peak (per day the sum of their meters'
                    peak_demand_kw, averaged over days): ceil(share x customers), at
                    least 1; a tie at the cut is tagged too
  outage_sensitive  more than customers.outage_sensitive_min sustained interruptions
                    (counted as `report reliability` counts CEMIn: overlapping outages
                    of a customer's meters are one; sustained: events.momentary_max_s
                    or longer)
  tamper_risk       any raised tamper, register_decrease or sustained_low_consumption
                    event of the customer's meters (counts per type, the first time)
  prosumer          topology prosumer=true on one of its meters, or exported energy
                    (sum of energy_export_kwh) >= customers.prosumer_min_export_kwh
                    and more than 0

Customers: those of the topology (customer_id; a meter without one is its own
customer), plus meters found in the data it does not list (their meter_daily
customer_id tag, else their own customer; named on stderr).
Output: one row per tagged customer (customer_id, meters, tags, evidence); --tag
keeps the customers with that tag. JSON lists every customer (tagged or not) with its
figures, the customers by mean base load (highest first) and the outage-sensitive.

"""
    + LOCAL_TIMES
)


def parse_local(text: str) -> date | datetime:
    """A date, or an RFC 3339 time (naive when it has no offset: local, resolved later)."""
    text = text.strip()
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        return datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an RFC 3339 time or a date: {text!r} (e.g. 2026-01-01 or 2026-01-01T06:00:00Z)"
        ) from None


def resolve_local(value: date | datetime, timezone: str) -> datetime:
    """The instant of a parse_local value: a date is its local midnight in `timezone`."""
    zone = ZoneInfo(timezone)
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=zone)
    return datetime.combine(value, datetime.min.time(), zone)


def _ns(t: datetime) -> int:
    return ((t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)) * 1000


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, type=Path, help="the YAML configuration file")
    p.add_argument(
        "--from",
        dest="from_",
        required=True,
        type=parse_local,
        metavar="DATE",
        help="start, inclusive: a local date (its midnight in gateway.timezone) or a time",
    )
    p.add_argument(
        "--to",
        required=True,
        type=parse_local,
        metavar="DATE",
        help="end, exclusive: a local date or a time",
    )


def _register_billing(kinds: Any) -> None:
    p = kinds.add_parser(
        "billing",
        help="consumption per customer for a billing period, from the registers",
        description=BILLING_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    p.add_argument(
        "--customer",
        metavar="ID",
        help="only this customer (a customer_id, or meter:<id>), with a row per meter",
    )
    p.add_argument(
        "--format",
        choices=["table", "csv", "json"],
        default="table",
        help="an aligned table, CSV with a header, or one JSON object with the meters",
    )
    p.set_defaults(func=run_billing)


def _register_customers(kinds: Any) -> None:
    p = kinds.add_parser(
        "customers",
        help="customer tags (high standby, night heavy, peak, outages, tamper, prosumer)",
        description=CUSTOMERS_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    p.add_argument("--tag", choices=TAGS, help="only the customers with this tag")
    p.add_argument(
        "--format",
        choices=["table", "csv", "json"],
        default="table",
        help="an aligned table, CSV with a header, or one JSON object (every customer)",
    )
    p.set_defaults(func=run_customers)


def _config_and_topology(
    args: argparse.Namespace, why: str
) -> tuple[Config, dict[str, MeterPlace]] | int:
    """The configuration and its topology; or exit 2 after saying what is wrong."""
    cfg = load_config_or_say(args.config)
    if cfg is None:
        return EXIT_CONFIG
    if cfg.topology.file is None:
        print(
            f"{args.config}: topology.file is not set: {why}, which come from the "
            "topology CSV (meter_id,transformer_id,feeder_id,customer_id,...,prosumer); "
            "set topology.file",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        topology = load_topology(cfg.topology.file)
    except TopologyError as exc:
        print(f"meter-gateway report: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return cfg, topology


def _load(
    args: argparse.Namespace,
) -> tuple[Config, dict[str, MeterPlace], datetime, datetime] | int:
    """The configuration, topology and period; or the exit code after saying why not."""
    loaded = _config_and_topology(args, "the report needs the customers")
    if isinstance(loaded, int):
        return loaded
    cfg, topology = loaded
    start = resolve_local(args.from_, cfg.gateway.timezone)
    end = resolve_local(args.to, cfg.gateway.timezone)
    if end <= start:
        print("meter-gateway report: --to must be after --from", file=sys.stderr)
        return EXIT_CONFIG
    return cfg, topology, start, end


def _name_unknown(meters: list[str], what: str) -> None:
    if not meters:
        return
    shown = ", ".join(meters[:10])
    more = len(meters) - 10
    tail = f" and {more} more" if more > 0 else ""
    print(
        f"meter-gateway report: {len(meters)} meter(s) {what} are not in the topology: "
        f"{shown}{tail}",
        file=sys.stderr,
    )


def run_billing(args: argparse.Namespace) -> int:
    loaded = _load(args)
    if isinstance(loaded, int):
        return loaded
    cfg, topology, start, end = loaded
    from_ns, to_ns = _ns(start), _ns(end)
    try:
        readings = read_boundaries(cfg.storage, from_ns, to_ns)
    except QueryError as exc:
        print(f"meter-gateway report: {exc}", file=sys.stderr)
        return EXIT_SOURCE
    report = bill(
        readings,
        topology,
        from_ns,
        to_ns,
        interval_s=cfg.estimation.interval_s,
        timezone=cfg.gateway.timezone,
    )
    _name_unknown(report.unknown_meters, "with readings in the period (billed as their own)")
    if args.customer is not None:
        report.customers = [c for c in report.customers if c.customer_id == args.customer]
        if not report.customers:
            print(
                f"meter-gateway report: no customer {args.customer!r} in the topology or "
                "in the readings (a meter without customer_id is meter:<meter_id>)",
                file=sys.stderr,
            )
            return EXIT_CONFIG
    sys.stdout.write(render_billing(report, args.format, detail=args.customer is not None))
    return 0


def no_daily_hint(cfg: Config, start: datetime, end: datetime) -> str:
    """Why no customer has the tags that come from daily figures, and how they get made."""
    period = f"{start.isoformat()} to {end.isoformat()}"
    how = (
        "the running gateway (`meter-gateway run`) computes them for each local day of "
        "gateway.timezone once the day has ended and daily.settle_s have passed, from "
        "the readings it received (and `meter-gateway replay` without --no-store does "
        "for recorded traffic)"
    )
    if not cfg.daily.enabled:
        how = "daily.enabled is false in this configuration, so the gateway computes none; " + how
    return (
        f"no daily figures (measurement meter_daily) in the database for {period}: "
        "high_standby, night_heavy and peak_contributor need them, so no customer has "
        f"those tags (outage_sensitive, tamper_risk and prosumer come from the events and "
        f"the topology). {how[0].upper()}{how[1:]}"
    )


def run_customers(args: argparse.Namespace) -> int:
    loaded = _load(args)
    if isinstance(loaded, int):
        return loaded
    cfg, topology, start, end = loaded
    window = Window(start.timestamp(), end.timestamp())
    try:
        inputs = read_customer_inputs(cfg, topology, window)
    except QueryError as exc:
        print(f"meter-gateway report: {exc}", file=sys.stderr)
        return EXIT_SOURCE
    tags = tag_customers(
        inputs, topology, cfg.customers, momentary_max_s=cfg.events.momentary_max_s
    )
    _name_unknown(tags.unknown_meters, "with daily figures or events")
    if not inputs.daily:
        print(f"meter-gateway report: {no_daily_hint(cfg, start, end)}", file=sys.stderr)
    out = render_customers(tags, args.format, tag=args.tag, timezone=cfg.gateway.timezone)
    sys.stdout.write(out)
    return 0
