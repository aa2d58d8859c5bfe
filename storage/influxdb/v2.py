"""InfluxDB 2.x/3.x/Cloud and 1.8+ (`/api/v2/write`), through influxdb-client's async API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import aiohttp
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from meter_gateway.storage.influxdb.config import StorageConfig
from meter_gateway.storage.influxdb.errors import RetryableWriteError, WriteError, error_for_status

__all__ = ["V2Client"]

_PRECISION = {
    "s": WritePrecision.S,
    "ms": WritePrecision.MS,
    "us": WritePrecision.US,
    "ns": WritePrecision.NS,
}


class V2Client:
    """Writes prebuilt line protocol (bytes): the library does no per-point work."""

    def __init__(self, cfg: StorageConfig) -> None:
        self._cfg = cfg
        # influxdb-client annotates `write_precision` as its WritePrecision class, whose
        # constants (the values here) are plain strings: the annotation is what is wrong.
        self._precision = cast(WritePrecision, _PRECISION[cfg.precision])
        self._client: InfluxDBClientAsync | None = None
        self.target = f"{cfg.shown_url} bucket {cfg.bucket!r} (v2 /api/v2/write)"

    def _connect(self) -> InfluxDBClientAsync:
        cfg = self._cfg
        # The library wants a token; VictoriaMetrics and unsecured 1.8+ ignore it.
        # Credentials go in a header (token or basic), never in the URL: aiohttp refuses
        # a URL's user:password@ next to an Authorization header.
        return InfluxDBClientAsync(
            url=cfg.endpoint,
            org=cfg.org or "-",
            timeout=int(cfg.timeout_s * 1000),
            **cfg.client_auth(),
        )

    async def write(self, body: bytes) -> None:
        if self._client is None:
            self._client = self._connect()
        cfg = self._cfg
        try:
            await self._client.write_api().write(
                bucket=cfg.bucket,
                org=cfg.org or "-",
                record=body,
                write_precision=self._precision,
            )
        except ApiException as exc:
            headers: Mapping[str, str] = exc.headers or {}
            body_text = (
                exc.body.decode("utf-8", "replace")
                if isinstance(exc.body, bytes)
                else str(exc.body or exc.reason or "")
            )
            raise error_for_status(
                int(exc.status or 0), body_text, headers.get("Retry-After")
            ) from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise RetryableWriteError(
                f"cannot reach {cfg.shown_url}: {exc or type(exc).__name__}"
            ) from exc
        except InfluxDBError as exc:
            raise WriteError(f"influxdb-client: {exc}") from exc

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
