"""InfluxDB 1.x `/write` (before 1.8 there is no /api/v2/write), over aiohttp.

The database is created when it is missing and `storage.create_database` is on (the
default, as Telegraf's influxdb output does it): `CREATE DATABASE` at start and again
whenever a write answers "database not found" (it may have been dropped). When the
server refuses (the user is no admin) or creation is off, the write error says
exactly how to create it, and the writer keeps the readings and retries.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import shlex

import aiohttp

from meter_gateway.storage.influxdb.config import StorageConfig
from meter_gateway.storage.influxdb.errors import (
    FatalWriteError,
    RetryableWriteError,
    WriteError,
    error_for_status,
)

__all__ = ["V1Client", "create_database_statement"]

log = logging.getLogger("meter_gateway.storage")

_PRECISION = {"s": "s", "ms": "ms", "us": "u", "ns": "n"}


def create_database_statement(name: str) -> str:
    """`CREATE DATABASE "name"`, the name quoted as an InfluxQL identifier."""
    quoted = name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'CREATE DATABASE "{quoted}"'


class V1Client:
    """Writes line protocol with `POST /write?db=&rp=&precision=`."""

    def __init__(self, cfg: StorageConfig) -> None:
        self._cfg = cfg
        self._url = f"{cfg.endpoint}/write"
        params = {"db": cfg.database, "precision": _PRECISION[cfg.precision]}
        if cfg.retention_policy:
            params["rp"] = cfg.retention_policy
        self._params = params
        basic = cfg.basic_auth
        # A header of our own: aiohttp's BasicAuth is deprecated; latin-1 as the
        # configuration checked.
        self._headers = (
            {
                "Authorization": "Basic "
                + base64.b64encode(":".join(basic).encode("latin-1")).decode()
            }
            if basic
            else {}
        )
        self._timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self.target = f"{cfg.shown_url} database {cfg.database!r} (v1 /write)"
        # Why the database could not be created (None: not tried, or it worked).
        self._create_problem: str | None = None
        self._prepared = False

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        return self._session

    async def prepare(self) -> None:
        """At start: is the database there? Create it when allowed, else say how.

        An empty write is the probe: 204 when the database exists, 404 "database not
        found" when not (a user without admin rights may not list databases).
        """
        if self._prepared:
            return
        self._prepared = True
        try:
            await self._post(b"")
        except FatalWriteError as exc:
            if exc.status != 404 or "database not found" not in str(exc):
                return  # credentials: the first write says so
        except WriteError as exc:  # not reachable yet: the writes will say so
            log.debug("storage: cannot check database %r yet: %s", self._cfg.database, exc)
            return
        else:
            return
        if self._cfg.create_database and await self._create_database():
            return
        log.warning("storage: %s", self._missing_message())

    async def _create_database(self) -> bool:
        """`CREATE DATABASE` (a no-op when it exists); True when the server did it."""
        cfg = self._cfg
        statement = create_database_statement(cfg.database)
        try:
            async with self._http().post(f"{cfg.endpoint}/query", data={"q": statement}) as resp:
                text = await resp.text(errors="replace")
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self._create_problem = (
                f"cannot reach {cfg.shown_url}/query: {exc or type(exc).__name__}"
            )
            return False
        error = _query_error(text) if status // 100 == 2 else " ".join(text.split())[:300]
        if status // 100 == 2 and not error:
            log.info(
                "storage: created database %r at %s (%s)", cfg.database, cfg.shown_url, statement
            )
            self._create_problem = None
            return True
        self._create_problem = f"HTTP {status}: {error}" if error else f"HTTP {status}"
        return False

    def _missing_message(self) -> str:
        cfg = self._cfg
        statement = create_database_statement(cfg.database)
        how = (
            f"create it as an InfluxDB admin: curl -XPOST {shlex.quote(cfg.endpoint + '/query')}"
            f" -u ADMIN --data-urlencode {shlex.quote('q=' + statement)}"
            f" (or in the influx shell: {statement})"
        )
        if not cfg.create_database:
            return (
                f"database {cfg.database!r} does not exist at {cfg.shown_url}, and "
                f"storage.create_database is false; {how}, or set "
                "storage.create_database: true with an admin user; the readings wait in "
                "the spool and are written once it exists"
            )
        who = f"user {cfg.basic_auth[0]!r}" if cfg.basic_auth else "the gateway (no user)"
        return (
            f"database {cfg.database!r} does not exist at {cfg.shown_url} (or is not "
            f"visible to {who}) and {statement} was refused ({self._create_problem}); "
            f"{how}, and grant the gateway's user WRITE (and READ, for the reports) on "
            "it; the readings wait in the spool and are written once it exists"
        )

    async def write(self, body: bytes) -> None:
        if not self._prepared:
            await self.prepare()
        try:
            await self._post(body)
        except FatalWriteError as exc:
            if exc.status != 404 or "database not found" not in str(exc):
                raise
            # Missing (never created, or dropped): create it when allowed, then once more.
            if self._cfg.create_database and await self._create_database():
                await self._post(body)
                return
            raise FatalWriteError(
                self._missing_message(), status=exc.status, retry_after=exc.retry_after
            ) from exc

    async def _post(self, body: bytes) -> None:
        try:
            async with self._http().post(
                self._url, params=self._params, data=payload(body)
            ) as resp:
                if resp.status // 100 == 2:
                    return
                text = await resp.text(errors="replace")
                error = error_for_status(resp.status, text, resp.headers.get("Retry-After"))
                if resp.status in (401, 403) and isinstance(error, FatalWriteError):
                    error = FatalWriteError(
                        f"{error}; {self._auth_hint(resp.status)}",
                        status=error.status,
                        retry_after=error.retry_after,
                    )
                raise error
        except WriteError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise RetryableWriteError(
                f"cannot reach {self._cfg.shown_url}/write: {exc or type(exc).__name__}"
            ) from exc

    def _auth_hint(self, status: int) -> str:
        cfg = self._cfg
        basic = cfg.basic_auth
        if status == 401 or basic is None:
            return (
                "the database refused the credentials: check storage.username and "
                "storage.password (or storage.password_file)"
            )
        return (
            f"user {basic[0]!r} may not write to database {cfg.database!r}: as an InfluxDB "
            f'admin, GRANT WRITE ON "{cfg.database}" TO "{basic[0]}"'
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _query_error(text: str) -> str:
    """The first error in a `/query` answer (200 with an error inside), or ''."""
    try:
        body = json.loads(text)
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    if body.get("error"):
        return str(body["error"])
    for result in body.get("results") or []:
        if isinstance(result, dict) and result.get("error"):
            return str(result["error"])
    return ""


_LARGE_BODY = 1 << 20


def payload(body: bytes) -> bytes | io.BytesIO:
    """The body as aiohttp takes it without complaint.

    aiohttp warns (ResourceWarning) that raw bytes over 1 MiB may hold the event loop
    while they are sent; a BytesIO is sent in chunks instead. A batch of 5,000 readings
    is about 1.2 MiB.
    """
    return io.BytesIO(body) if len(body) > _LARGE_BODY else body
