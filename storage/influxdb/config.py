"""Configuration of the `storage:` section, as a pydantic 2 model.

The InfluxDB adapter owns the model of what it is given: the configuration layer
(`meter_gateway.config.schema`) only places `StorageConfig` in the file's schema,
and this package imports nothing above it.

The model forbids unknown keys (a typo in a deployed config must stop the gateway at
start), numbers are finite and bounded, and the URL, token and credentials are
checked the way the HTTP client would use them, so the error names the key instead
of the first write failing hours later.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from meter_gateway.configbase import Section, host_problem, read_secret, shown

__all__ = [
    "StorageConfig",
    "header_token",
    "host_problem",
    "http_url_problem",
    "read_secret",
    "shown",
]


def http_url_problem(url: str) -> str | None:
    """Why `url` is not an http(s) URL to a host, without query or fragment; or None."""
    if not url.isprintable() or any(c.isspace() for c in url):
        return "must not contain spaces or control characters"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        return f"is not a URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "names no host"
    problem = host_problem(parts.hostname)
    if problem:
        return problem
    if parts.query or parts.fragment:
        return "must not have a ?query or #fragment (the gateway adds its own)"
    return None


def header_token(v: str | None) -> str | None:
    """A token sent in an HTTP header (a validator)."""
    # Visible ASCII only, or the request cannot be made.
    if v is not None and not re.fullmatch(r"[\x21-\x7e]+", v):
        raise ValueError(
            "must be visible ASCII characters without spaces (it is sent in an HTTP header)"
        )
    return v


class StorageConfig(Section):
    api: Literal["v1", "v2"] = "v2"
    url: str = "http://127.0.0.1:8086"
    token: str | None = Field(None, repr=False)
    org: str | None = None
    bucket: str = "meters"
    database: str = "meters"
    retention_policy: str | None = None
    username: str | None = None
    password: str | None = Field(None, repr=False)
    precision: Literal["s", "ms", "us", "ns"] = "s"
    batch_size: int = Field(5000, gt=0, le=1_000_000)
    flush_interval_s: float = Field(1.0, gt=0, le=3600)
    max_retry_delay_s: float = Field(60.0, gt=0, le=3600)
    timeout_s: float = Field(10.0, gt=0, le=3600)
    spool_max_bytes: int = Field(1_073_741_824, gt=0)
    # Readings the spool hands to the writer at once: the memory the database path
    # uses however long the database is away (the rest waits on disk).
    max_buffered_lines: int = Field(200_000, gt=0)

    _token = model_validator(mode="before")(lambda data: read_secret(data, "token"))
    _password = model_validator(mode="before")(lambda data: read_secret(data, "password"))

    _header = field_validator("token")(header_token)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        problem = http_url_problem(v)
        if problem:
            raise ValueError(problem)
        return v.rstrip("/")

    @field_validator("username", "password")
    @classmethod
    def _basic_auth(cls, v: str | None, info: ValidationInfo) -> str | None:
        # InfluxDB 1.x basic auth: aiohttp refuses both of these when it builds the client.
        if v is None:
            return v
        if info.field_name == "username" and ":" in v:
            raise ValueError("must not contain ':' (HTTP basic authentication)")
        try:
            v.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(
                "must be Latin-1 text (HTTP basic authentication cannot send other characters)"
            ) from None
        return v

    @model_validator(mode="after")
    def _batch_vs_buffer(self) -> StorageConfig:
        if self.max_buffered_lines < self.batch_size:
            raise ValueError(
                f"max_buffered_lines ({self.max_buffered_lines}) must be >= batch_size "
                f"({self.batch_size})"
            )
        return self
