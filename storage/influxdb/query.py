"""Reading from the configured database: InfluxQL (api v1) and Flux (api v2) queries.

storage.api v1: InfluxDB 1.x `GET /query` (InfluxQL), database, retention policy and
basic authentication as the v1 writer uses them. v2: Flux through influxdb-client's
query API with url, org, bucket and token, as the v2 writer uses them. Errors say
where the database is and which setting to check (`QueryError`).

Synchronous: its callers (the `report` commands) are. That is why v1 goes over
urllib and not aiohttp, which the writers use; influxdb-client has no InfluxQL API.
What to query is the caller's: this module runs queries and quotes their parts.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

from meter_gateway.storage.influxdb.config import StorageConfig

__all__ = [
    "QueryError",
    "flux_string",
    "ident",
    "literal",
    "rfc3339",
    "rfc3339_ns",
    "run_flux",
    "run_influxql",
    "series_rows",
]

_NS = 1_000_000_000


class QueryError(Exception):
    """The database cannot be read; the message says from where and what to do."""


# -- InfluxDB 1.x: InfluxQL ------------------------------------------------------------------


def ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def run_influxql(cfg: StorageConfig, statements: list[str]) -> list[list[dict[str, Any]]]:
    """The statements in one `GET /query` (joined by ";"); per statement, its series.

    Raises QueryError with the server's own error and what to do when the database
    cannot be read or refuses a statement.
    """
    body = _get_v1(cfg, ";\n".join(statements))
    out: list[list[dict[str, Any]]] = [[] for _ in statements]
    for i, result in enumerate(body.get("results", [])):
        if "error" in result:
            error = str(result["error"])
            if error == "not executed" and len(statements) > 1:
                # InfluxDB 1.x answers a multi-statement query that cannot run at all
                # (a missing database) with only this; the first statement alone says why.
                first = _get_v1(cfg, statements[0]).get("results") or [{}]
                error = str(first[0].get("error") or error)
            raise QueryError(_query_problem(cfg, error))
        index = result.get("statement_id", i)
        if isinstance(index, int) and 0 <= index < len(out):
            out[index] = list(result.get("series", []))
    if "error" in body:
        raise QueryError(_query_problem(cfg, str(body["error"])))
    return out


def _query_problem(cfg: StorageConfig, error: str) -> str:
    """The server's error as it said it, and what to do about it."""
    said = f"InfluxDB at {cfg.shown_url} refused the query: {error}"
    if error.startswith("database not found"):
        return (
            f"{said}. The database storage.database ({cfg.database!r}) does not exist "
            "there: check storage.database and storage.url, or, on a new server, run the "
            "gateway (`meter-gateway run` creates it at start, storage.create_database) "
            "so that it holds data to report on"
        )
    if error.startswith("retention policy not found"):
        return (
            f"{said}. Check storage.retention_policy ({cfg.retention_policy!r}); "
            f'SHOW RETENTION POLICIES ON "{cfg.database}" lists the ones there are'
        )
    if "authoriz" in error:  # "error authorizing query: ... not authorized to execute"
        user = cfg.basic_auth[0] if cfg.basic_auth else "the user in storage.username"
        return (
            f"{said}. Give {user} READ on the database as an admin: "
            f'GRANT READ ON "{cfg.database}" TO "{user}"'
        )
    return said


def series_rows(series: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of one InfluxQL series as dicts of column -> value."""
    cols = series["columns"]
    return [dict(zip(cols, row, strict=False)) for row in series.get("values", [])]


def _get_v1(cfg: StorageConfig, q: str) -> dict[str, Any]:
    params = urllib.parse.urlencode({"db": cfg.database, "q": q, "epoch": "ns"})
    req = urllib.request.Request(f"{cfg.endpoint}/query?{params}")
    if cfg.basic_auth:
        cred = ":".join(cfg.basic_auth).encode("latin-1")
        req.add_header("Authorization", "Basic " + base64.b64encode(cred).decode("ascii"))
    try:
        with urllib.request.urlopen(req, timeout=cfg.timeout_s) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        text = exc.read().decode("utf-8", "replace")[:300]
        raise QueryError(_http_problem(cfg, exc.code, text)) from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise QueryError(_unreachable(cfg, reason)) from None
    except ValueError as exc:  # not JSON: something else answers on that port
        raise QueryError(
            f"{cfg.shown_url}/query did not answer as InfluxDB 1.x does: {exc}"
        ) from None


# -- InfluxDB 2.x / 1.8+: Flux ---------------------------------------------------------------


def flux_string(text: str) -> str:
    return json.dumps(text)  # a Flux string literal escapes as JSON does (\" \\ \n)


def rfc3339(t_s: float) -> str:
    return datetime.fromtimestamp(t_s, UTC).isoformat().replace("+00:00", "Z")


def rfc3339_ns(t_ns: int) -> str:
    """An RFC 3339 UTC time to the nanosecond (whole seconds without a fraction)."""
    s, ns = divmod(t_ns, _NS)
    base = datetime.fromtimestamp(s, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{ns:09d}Z" if ns else f"{base}Z"


def run_flux(cfg: StorageConfig, queries: list[str]) -> list[list[dict[str, Any]]]:
    """Each Flux query through influxdb-client; per query, its rows (every table's records).

    A row is the record's values plus `_time_ns` (its `_time` as integer nanoseconds,
    None without one). Raises QueryError naming the URL and what to check.
    """
    import urllib3
    from influxdb_client import InfluxDBClient
    from influxdb_client.rest import ApiException

    out: list[list[dict[str, Any]]] = []
    client = InfluxDBClient(
        url=cfg.endpoint, org=cfg.org or "-", timeout=int(cfg.timeout_s * 1000), **cfg.client_auth()
    )
    try:
        api = client.query_api()
        for q in queries:
            rows: list[dict[str, Any]] = []
            for table in api.query(q, org=cfg.org or "-"):
                for rec in table.records:
                    t = rec.get_time()
                    row = dict(rec.values)
                    row["_time_ns"] = None if t is None else _ns_of(t)
                    rows.append(row)
            out.append(rows)
    except ApiException as exc:
        body = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else exc.body
        problem = _http_problem(cfg, int(exc.status or 0), str(body or exc.reason))
        raise QueryError(problem) from None
    except (OSError, urllib3.exceptions.HTTPError) as exc:
        # MaxRetryError and friends (refused, timed out, reset) are urllib3's own, not OSError.
        reason = getattr(exc, "reason", None) or exc
        raise QueryError(_unreachable(cfg, reason)) from None
    finally:
        client.close()
    return out


def _ns_of(t: datetime) -> int:
    """A datetime as integer epoch nanoseconds, exact to the microsecond."""
    delta = t - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta // timedelta(microseconds=1)) * 1000


# -- shared ----------------------------------------------------------------------------------


def _unreachable(cfg: StorageConfig, reason: object) -> str:
    return (
        f"cannot reach the database at {cfg.shown_url} ({reason}): is InfluxDB running there, "
        "and is storage.url in the configuration right?"
    )


def _http_problem(cfg: StorageConfig, status: int, text: str) -> str:
    said = " ".join(text.split())[:300]
    url = cfg.shown_url
    if status in (401, 403):
        what = (
            "storage.username and storage.password"
            if cfg.api == "v1"
            else "storage.token (it needs read access to the bucket) and storage.org"
        )
        return (
            f"the database at {url} refused the credentials (HTTP {status}: {said}); check {what}"
        )
    if status == 404:
        where = f"database {cfg.database!r}" if cfg.api == "v1" else f"bucket {cfg.bucket!r}"
        key = "storage.database" if cfg.api == "v1" else "storage.bucket and storage.org"
        return f"the database at {url} does not have {where} (HTTP 404: {said}); check {key}"
    return f"the database at {url} answered HTTP {status}: {said}"
