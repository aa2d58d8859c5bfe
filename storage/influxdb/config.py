"""Configuration of the `storage:` section, as a pydantic 2 model.

The InfluxDB adapter owns the model of what it is given: the configuration layer
(`meter_gateway.config.schema`) only places `StorageConfig` in the file's schema,
and this package imports nothing above it.

The model forbids unknown keys (a typo in a deployed config must stop the gateway at
start), numbers are finite and bounded, and the URL, token and credentials are
checked the way the HTTP client would use them, so the error names the key instead
of the first write failing hours later.

Credentials have one rule: `user:password@` in `url` is HTTP basic authentication,
the same as `username` / `password`; one of the two, never both, and never together
with `token` (api v2 sends one Authorization header). The clients send them as a
header and never put them in a URL they log (`StorageConfig.endpoint`,
`redacted_url`).
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any, Literal

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
    "redacted_url",
    "shown",
    "url_credentials",
    "url_without_credentials",
]

MASK = "***"

# Query keys whose values are secrets: InfluxDB 1.x takes `?u=user&p=password`, and
# tokens, keys and signatures go by many names.
_SECRET_QUERY_KEY = re.compile(
    r"(?i)^(u|p|pw|pwd|pass.*|.*(token|secret|passw|password|key|auth|sig|signature|"
    r"credential|session|code).*)$"
)
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)@")


def redacted_url(url: str) -> str:
    """`url` as a log line or a status page may show it.

    `http://user:pass@db:8086/x?db=m&p=pw&token=t` -> `http://***@db:8086/x?db=m&p=***&token=***`:
    the whole user information (a lone `token@` may be the secret itself) and the
    values of query keys that look like secrets are replaced by `***`. Any text is
    taken, a URL that does not parse too (an error may be about one).
    """
    out = _USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", url, count=1)
    head, sep, rest = out.partition("?")
    if not sep:
        return out
    query, hash_, fragment = rest.partition("#")
    parts = []
    for item in re.split(r"([&;])", query):
        key, eq, value = item.partition("=")
        secret = eq and value and _SECRET_QUERY_KEY.match(urllib.parse.unquote_plus(key))
        parts.append(f"{key}={MASK}" if secret else item)
    return f"{head}?{''.join(parts)}{hash_}{fragment}"


def url_credentials(url: str) -> tuple[str, str] | None:
    """(user, password) from `user:password@` in `url` (percent-decoded); None without."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return None
    return (
        urllib.parse.unquote(parts.username or ""),
        urllib.parse.unquote(parts.password or ""),
    )


def url_without_credentials(url: str) -> str:
    """`url` without its `user:password@`: what requests go to and messages name."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


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
    # api v1: `CREATE DATABASE` for `database` at start and whenever a write finds it
    # missing (as Telegraf's influxdb output does); needs an admin user. False: never.
    create_database: bool = True
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
    def _one_kind_of_credentials(self) -> StorageConfig:
        # Messages name keys, never values: these are secrets.
        in_url = url_credentials(self.url)
        if in_url is None:
            if self.api == "v2" and self.token is not None and self.username is not None:
                raise ValueError(
                    "storage.token and storage.username are both set: api v2 sends one "
                    "Authorization header; keep storage.token (InfluxDB 1.8 takes "
                    "`token: username:password`) or storage.username/storage.password"
                )
            return self
        user, password = in_url
        if self.username is not None or self.password is not None:
            raise ValueError(
                "storage.url has user:password@ and storage.username/storage.password are "
                "set too: keep one; better remove user:password@ from storage.url and use "
                "storage.username with storage.password_file"
            )
        if self.api == "v2" and self.token is not None:
            raise ValueError(
                "storage.url has user:password@ and storage.token is set: api v2 sends one "
                "Authorization header; remove user:password@ from storage.url (InfluxDB "
                "1.8 takes `token: username:password`)"
            )
        if not user or ":" in user:
            raise ValueError(
                "storage.url: the user name before '@' is empty or holds ':'; put the "
                "credentials in storage.username and storage.password instead"
            )
        try:
            f"{user}:{password}".encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(
                "storage.url: the user name and password before '@' must be Latin-1 text "
                "(HTTP basic authentication cannot send other characters)"
            ) from None
        return self

    @property
    def endpoint(self) -> str:
        """The URL requests go to, without credentials."""
        return url_without_credentials(self.url)

    @property
    def shown_url(self) -> str:
        """The URL as logs, errors and the status page show it."""
        return redacted_url(self.url)

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        """HTTP basic credentials: from the URL or username/password; None for none."""
        in_url = url_credentials(self.url)
        if in_url is not None:
            return in_url
        if self.username is not None:
            return (self.username, self.password or "")
        return None

    def client_auth(self) -> dict[str, Any]:
        """influxdb-client's keyword arguments for these credentials (token or basic)."""
        basic = self.basic_auth
        if basic is not None:
            return {"token": f"{basic[0]}:{basic[1]}", "auth_basic": True}
        return {"token": self.token or ""}

    @model_validator(mode="after")
    def _batch_vs_buffer(self) -> StorageConfig:
        if self.max_buffered_lines < self.batch_size:
            raise ValueError(
                f"max_buffered_lines ({self.max_buffered_lines}) must be >= batch_size "
                f"({self.batch_size})"
            )
        return self
