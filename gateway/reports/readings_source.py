"""Reading what `report billing` and `report customers` need from the database.

Billing: per boundary T (the period's `from` and `to`), per meter, the last
`meter_reading` point at or before T and the first at or after T, with the register
fields and the quality of that same point. InfluxQL: the selectors `last()` and
`first()` of energy_import_kwh with the point's other fields, grouped by meter_id; the
four statements go in one request. Flux: the same after a pivot, `last()` / `first()`
per meter_id.

Customers: the window's `meter_daily` points, its raised tamper, register_decrease and
sustained_low_consumption events (one request with two InfluxQL statements), and the
`power_outage` points as `report reliability` reads them (source.read_points).

storage.api v1: InfluxDB 1.x `GET /query`; v2: Flux through influxdb-client, with the
settings the writers use (storage/influxdb/query.py runs them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from meter_gateway.config.schema import Config
from meter_gateway.config.topology import MeterPlace
from meter_gateway.gateway.reports.billing import Neighbours, RegisterPoint
from meter_gateway.gateway.reports.customers import (
    RISK_TYPES,
    CustomerInputs,
    DailyFigures,
    RiskEvent,
)
from meter_gateway.gateway.reports.reliability import Window
from meter_gateway.gateway.reports.source import read_points
from meter_gateway.storage.influxdb.config import StorageConfig
from meter_gateway.storage.influxdb.query import (
    flux_string,
    ident,
    literal,
    rfc3339_ns,
    run_flux,
    run_influxql,
    series_rows,
)

__all__ = [
    "DAILY_FIELDS",
    "billing_flux_queries",
    "billing_influxql_queries",
    "customers_flux_queries",
    "customers_influxql_queries",
    "read_boundaries",
    "read_customer_inputs",
]

NS = 1_000_000_000
READINGS = "meter_reading"
DAILY = "meter_daily"
EVENTS = "meter_event"
REGISTER_FIELDS = ("energy_import_kwh", "energy_export_kwh", "quality", "estimation_method")
DAILY_FIELDS = (
    "date",
    "energy_import_kwh",
    "energy_export_kwh",
    "peak_demand_kw",
    "base_load_kw",
    "night_share",
    "completeness",
    "intervals",
)


def _source(measurement: str, rp: str | None) -> str:
    return (f"{ident(rp)}." if rp else "") + ident(measurement)


# -- billing ---------------------------------------------------------------------------------


def billing_influxql_queries(from_ns: int, to_ns: int, rp: str | None = None) -> list[str]:
    """Four statements: per boundary, last point at or before it and first at or after it.

    A selector (last/first) may take other fields: they come from the same point, so
    the quality is that of the register value used.
    """
    src = _source(READINGS, rp)
    rest = ", ".join(ident(f) for f in REGISTER_FIELDS[1:])
    reg = ident(REGISTER_FIELDS[0])
    out = []
    for t in (from_ns, to_ns):
        out.append(
            f'SELECT last({reg}) AS {reg}, {rest} FROM {src} WHERE time <= {t} GROUP BY "meter_id"'
        )
        out.append(
            f'SELECT first({reg}) AS {reg}, {rest} FROM {src} WHERE time >= {t} GROUP BY "meter_id"'
        )
    return out


def billing_flux_queries(from_ns: int, to_ns: int, bucket: str) -> list[str]:
    """The four Flux queries, in the order of billing_influxql_queries."""
    head = f"from(bucket: {flux_string(bucket)})"
    wanted = " or ".join(f"r._field == {flux_string(f)}" for f in REGISTER_FIELDS)
    keep = ", ".join(flux_string(c) for c in ("_time", "meter_id", *REGISTER_FIELDS))
    body = (
        f"  |> filter(fn: (r) => r._measurement == {flux_string(READINGS)})\n"
        f"  |> filter(fn: (r) => {wanted})\n"
        '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
        "  |> filter(fn: (r) => exists r.energy_import_kwh)\n"
        f"  |> keep(columns: [{keep}])\n"
        '  |> group(columns: ["meter_id"])\n'
        '  |> sort(columns: ["_time"])\n'
    )
    out = []
    for t in (from_ns, to_ns):
        # range's stop is exclusive: one nanosecond past T takes a point at T.
        out.append(
            f"{head}\n  |> range(start: 1970-01-01T00:00:00Z, stop: {rfc3339_ns(t + 1)})\n"
            f'{body}  |> last(column: "_time")\n'
        )
        out.append(
            f'{head}\n  |> range(start: {rfc3339_ns(t)})\n{body}  |> first(column: "_time")\n'
        )
    return out


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def _register_point(time_ns: Any, rec: Mapping[str, Any]) -> RegisterPoint | None:
    if not isinstance(time_ns, int):
        return None
    imp = _num(rec.get("energy_import_kwh"))
    if imp is None:
        return None
    quality = rec.get("quality")
    method = rec.get("estimation_method")
    return RegisterPoint(
        time_ns,
        imp,
        _num(rec.get("energy_export_kwh")),
        quality if isinstance(quality, str) and quality else "actual",
        method if isinstance(method, str) else "",
    )


def read_boundaries(
    cfg: StorageConfig, from_ns: int, to_ns: int
) -> dict[str, tuple[Neighbours, Neighbours]]:
    """meter_id -> (points around from, points around to), for billing.bill()."""
    found: list[dict[str, RegisterPoint]] = [{} for _ in range(4)]
    if cfg.api == "v1":
        results = run_influxql(cfg, billing_influxql_queries(from_ns, to_ns, cfg.retention_policy))
        for i, series_list in enumerate(results):
            for series in series_list:
                meter = (series.get("tags") or {}).get("meter_id") or ""
                for rec in series_rows(series):
                    p = _register_point(rec.get("time"), rec)
                    if meter and p is not None:
                        found[i][meter] = p
    else:
        for i, rows in enumerate(run_flux(cfg, billing_flux_queries(from_ns, to_ns, cfg.bucket))):
            for rec in rows:
                meter = str(rec.get("meter_id") or "")
                p = _register_point(rec.get("_time_ns"), rec)
                if meter and p is not None:
                    found[i][meter] = p
    meters = set().union(*found)
    return {
        m: (
            Neighbours(found[0].get(m), found[1].get(m)),
            Neighbours(found[2].get(m), found[3].get(m)),
        )
        for m in meters
    }


# -- customers -------------------------------------------------------------------------------


def customers_influxql_queries(window: Window, rp: str | None = None) -> list[str]:
    """The meter_daily points and the raised risk events of the window."""
    lo, hi = int(window.from_s * NS), int(window.to_s * NS)
    fields = ", ".join(ident(f) for f in DAILY_FIELDS)
    types = " OR ".join(f'"type" = {literal(t)}' for t in RISK_TYPES)
    return [
        f"SELECT {fields} FROM {_source(DAILY, rp)} WHERE time >= {lo} AND time < {hi} "
        'GROUP BY "meter_id", "customer_id"',
        f'SELECT "state", "event_id" FROM {_source(EVENTS, rp)} WHERE ({types}) '
        f"AND \"state\" = 'raised' AND time >= {lo} AND time < {hi} "
        'GROUP BY "meter_id", "type"',
    ]


def customers_flux_queries(window: Window, bucket: str) -> list[str]:
    """The two Flux queries, in the order of customers_influxql_queries."""
    head = f"from(bucket: {flux_string(bucket)})"
    rng = (
        f"  |> range(start: {rfc3339_ns(int(window.from_s * NS))}, "
        f"stop: {rfc3339_ns(int(window.to_s * NS))})\n"
    )
    pivot = '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
    daily_keep = ", ".join(
        flux_string(c) for c in ("_time", "meter_id", "customer_id", *DAILY_FIELDS)
    )
    types = " or ".join(f"r.type == {flux_string(t)}" for t in RISK_TYPES)
    return [
        f"{head}\n{rng}"
        f"  |> filter(fn: (r) => r._measurement == {flux_string(DAILY)})\n"
        f"{pivot}"
        f"  |> keep(columns: [{daily_keep}])\n",
        f"{head}\n{rng}"
        f"  |> filter(fn: (r) => r._measurement == {flux_string(EVENTS)} and ({types}))\n"
        '  |> filter(fn: (r) => r._field == "state" or r._field == "event_id")\n'
        f"{pivot}"
        '  |> filter(fn: (r) => r.state == "raised")\n'
        '  |> keep(columns: ["_time", "meter_id", "type", "state", "event_id"])\n',
    ]


def _daily(time_ns: Any, meter: str, customer: str, rec: Mapping[str, Any]) -> DailyFigures | None:
    if not isinstance(time_ns, int) or not meter:
        return None
    day = rec.get("date")
    intervals = _num(rec.get("intervals"))
    return DailyFigures(
        meter_id=meter,
        time_s=time_ns / NS,
        day=day if isinstance(day, str) and day else f"t{time_ns}",
        customer_id=customer or None,
        energy_import_kwh=_num(rec.get("energy_import_kwh")),
        energy_export_kwh=_num(rec.get("energy_export_kwh")),
        peak_demand_kw=_num(rec.get("peak_demand_kw")),
        base_load_kw=_num(rec.get("base_load_kw")),
        night_share=_num(rec.get("night_share")),
        completeness=_num(rec.get("completeness")),
        intervals=None if intervals is None else int(intervals),
    )


def _risk(time_ns: Any, meter: str, kind: str, rec: Mapping[str, Any]) -> RiskEvent | None:
    eid = rec.get("event_id")
    if not isinstance(time_ns, int) or not meter or kind not in RISK_TYPES:
        return None
    if rec.get("state") != "raised":
        return None
    return RiskEvent(time_ns / NS, meter, kind, eid if isinstance(eid, str) and eid else "")


def read_customer_inputs(
    config: Config, topology: Mapping[str, MeterPlace], window: Window
) -> CustomerInputs:
    """Everything customers.tag_customers needs for the window, read once.

    `topology` is accepted for symmetry with tag_customers (the reads are not limited
    to its meters: meters it does not list are reported as unknown). Raises
    storage.influxdb.query.QueryError when the database cannot be read.
    """
    del topology
    storage = config.storage
    momentary = config.events.momentary_max_s
    # As `report reliability`: clears up to momentary_max_s past --to decide whether
    # an outage open at --to was momentary; never past now.
    read_until = max(min(window.to_s + momentary, time.time()), window.to_s)
    outage_points = read_points(storage, window, read_until)
    daily: list[DailyFigures] = []
    risks: list[RiskEvent] = []
    if storage.api == "v1":
        d_series, e_series = run_influxql(
            storage, customers_influxql_queries(window, storage.retention_policy)
        )
        for s in d_series:
            tags = s.get("tags") or {}
            for rec in series_rows(s):
                d = _daily(
                    rec.get("time"), tags.get("meter_id") or "", tags.get("customer_id") or "", rec
                )
                if d is not None:
                    daily.append(d)
        for s in e_series:
            tags = s.get("tags") or {}
            for rec in series_rows(s):
                e = _risk(rec.get("time"), tags.get("meter_id") or "", tags.get("type") or "", rec)
                if e is not None:
                    risks.append(e)
    else:
        d_rows, e_rows = run_flux(storage, customers_flux_queries(window, storage.bucket))
        for rec in d_rows:
            d = _daily(
                rec.get("_time_ns"),
                str(rec.get("meter_id") or ""),
                str(rec.get("customer_id") or ""),
                rec,
            )
            if d is not None:
                daily.append(d)
        for rec in e_rows:
            e = _risk(
                rec.get("_time_ns"), str(rec.get("meter_id") or ""), str(rec.get("type") or ""), rec
            )
            if e is not None:
                risks.append(e)
    # A risk event without an event_id is its own event.
    risks = [
        e
        if e.event_id
        else RiskEvent(e.time_s, e.meter_id, e.type, f"{e.type}:{e.meter_id}:{e.time_s}")
        for e in risks
    ]
    return CustomerInputs(window, daily, outage_points, risks, read_until)
