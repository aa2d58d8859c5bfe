"""InfluxDB 1.x `/write` (before 1.8 there is no /api/v2/write), over aiohttp."""

from __future__ import annotations

import io

import aiohttp

from meter_gateway.storage.influxdb.config import StorageConfig
from meter_gateway.storage.influxdb.errors import RetryableWriteError, error_for_status

__all__ = ["V1Client"]

_PRECISION = {"s": "s", "ms": "ms", "us": "u", "ns": "n"}


class V1Client:
    """Writes line protocol with `POST /write?db=&rp=&precision=`."""

    def __init__(self, cfg: StorageConfig) -> None:
        self._url = f"{cfg.url}/write"
        params = {"db": cfg.database, "precision": _PRECISION[cfg.precision]}
        if cfg.retention_policy:
            params["rp"] = cfg.retention_policy
        self._params = params
        self._auth = aiohttp.BasicAuth(cfg.username, cfg.password or "") if cfg.username else None
        self._timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self.target = f"{cfg.url} database {cfg.database!r} (v1 /write)"

    async def write(self, body: bytes) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, auth=self._auth)
        try:
            async with self._session.post(
                self._url, params=self._params, data=payload(body)
            ) as resp:
                if resp.status // 100 == 2:
                    return
                text = await resp.text(errors="replace")
                raise error_for_status(resp.status, text, resp.headers.get("Retry-After"))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise RetryableWriteError(
                f"cannot reach {self._url}: {exc or type(exc).__name__}"
            ) from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


_LARGE_BODY = 1 << 20


def payload(body: bytes) -> bytes | io.BytesIO:
    """The body as aiohttp takes it without complaint.

    aiohttp warns (ResourceWarning) that raw bytes over 1 MiB may hold the event loop
    while they are sent; a BytesIO is sent in chunks instead. A batch of 5,000 readings
    is about 1.2 MiB.
    """
    return io.BytesIO(body) if len(body) > _LARGE_BODY else body
