"""Reading the stored `power_outage` points from the configured database.

Two reads, for the window [from, to):

1. every raise and clear from `from` to `to + momentary_max_s`: the clears past `to`
   tell whether an outage open at `to` was momentary or sustained (one not cleared
   by then is sustained whatever happens next);
2. per meter, its last `power_outage` point before `from`: when that is a raise, the
   outage was open as the window began (its clear, if any, is in read 1).

storage.api v1: InfluxQL, v2: Flux; storage/influxdb/query.py runs them (and raises
its QueryError when the database cannot be read).
"""

from __future__ import annotations

from typing import Any

from meter_gateway.gateway.reports.reliability import EventPoint, Window
from meter_gateway.storage.influxdb.config import StorageConfig
from meter_gateway.storage.influxdb.query import (
    flux_string,
    ident,
    literal,
    rfc3339,
    run_flux,
    run_influxql,
    series_rows,
)

__all__ = [
    "flux_queries",
    "influxql_queries",
    "read_points",
]

_NS = 1_000_000_000
MEASUREMENT = "meter_event"
EVENT_TYPE = "power_outage"
_FIELDS = ("state", "event_id", "duration_s")


def read_points(cfg: StorageConfig, window: Window, read_until_s: float) -> list[EventPoint]:
    """Every `power_outage` point the report needs (see the module docstring)."""
    if cfg.api == "v1":
        return _read_v1(cfg, window, read_until_s)
    return _read_v2(cfg, window, read_until_s)


# -- InfluxDB 1.x: InfluxQL ------------------------------------------------------------------


def influxql_queries(window: Window, read_until_s: float, rp: str | None = None) -> list[str]:
    """The two InfluxQL queries (times as integer nanoseconds, which InfluxQL takes)."""
    source = (f"{ident(rp)}." if rp else "") + ident(MEASUREMENT)
    where = f"{ident('type')} = {literal(EVENT_TYPE)}"
    lo, hi = int(window.from_s * _NS), int(read_until_s * _NS)
    fields = ", ".join(ident(f) for f in _FIELDS)
    return [
        f"SELECT {fields} FROM {source} WHERE {where} AND time >= {lo} AND time < {hi} "
        f'GROUP BY "meter_id"',
        # A selector (last) may take other fields: they come from the same point.
        f'SELECT last("state") AS "state", "event_id", "duration_s" FROM {source} '
        f'WHERE {where} AND time < {lo} GROUP BY "meter_id"',
    ]


def _read_v1(cfg: StorageConfig, window: Window, read_until_s: float) -> list[EventPoint]:
    points: list[EventPoint] = []
    for q in influxql_queries(window, read_until_s, cfg.retention_policy):
        for series in run_influxql(cfg, [q])[0]:
            meter = (series.get("tags") or {}).get("meter_id") or ""
            for rec in series_rows(series):
                point = _point(rec.get("time"), meter, rec)
                if point is not None:
                    points.append(point)
    return points


# -- InfluxDB 2.x / 1.8+: Flux ---------------------------------------------------------------


def flux_queries(window: Window, read_until_s: float, bucket: str) -> list[str]:
    """The two Flux queries, each giving rows of _time, meter_id, state, event_id, duration_s."""
    head = f"from(bucket: {flux_string(bucket)})"
    filters = (
        f"  |> filter(fn: (r) => r._measurement == {flux_string(MEASUREMENT)} "
        f"and r.type == {flux_string(EVENT_TYPE)})\n"
        '  |> filter(fn: (r) => r._field == "state" or r._field == "event_id" '
        'or r._field == "duration_s")\n'
        '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
        '  |> keep(columns: ["_time", "meter_id", "state", "event_id", "duration_s"])\n'
    )
    start, until = rfc3339(window.from_s), rfc3339(read_until_s)
    return [
        f"{head}\n  |> range(start: {start}, stop: {until})\n{filters}",
        f"{head}\n  |> range(start: 1970-01-01T00:00:00Z, stop: {start})\n{filters}"
        '  |> group(columns: ["meter_id"])\n'
        '  |> sort(columns: ["_time"])\n'
        '  |> last(column: "_time")\n',
    ]


def _read_v2(cfg: StorageConfig, window: Window, read_until_s: float) -> list[EventPoint]:
    points: list[EventPoint] = []
    for rows in run_flux(cfg, flux_queries(window, read_until_s, cfg.bucket)):
        for rec in rows:
            point = _point(rec.get("_time_ns"), str(rec.get("meter_id") or ""), rec)
            if point is not None:
                points.append(point)
    return points


# -- shared ----------------------------------------------------------------------------------


def _point(time_ns: Any, meter_id: str, rec: dict[str, Any]) -> EventPoint | None:
    """An EventPoint from a row; None for a row missing what pairing needs."""
    state, eid, dur = rec.get("state"), rec.get("event_id"), rec.get("duration_s")
    if not isinstance(time_ns, int) or not meter_id or not isinstance(eid, str) or not eid:
        return None
    duration = float(dur) if isinstance(dur, int | float) and not isinstance(dur, bool) else None
    return EventPoint(time_ns / _NS, meter_id, str(state), eid, duration)
