"""The configuration schema as pydantic models.

Every model forbids unknown keys: a typo in a deployed config must stop the
gateway at start, not be silently ignored. Defaults are the shipped ones.

Numbers are finite and bounded, text is bounded: a value the running gateway
cannot use (an infinite age, a keepalive MQTT cannot carry, a duration that
overflows when turned into nanoseconds, a host name no resolver takes) is
refused here, where the error names the key, not hours later where it is used.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import urllib.parse
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from meter_gateway.protocols.modbus.config import ModbusConfig

__all__ = [
    "MAX_TEXT",
    "Config",
    "EventsConfig",
    "GatewayConfig",
    "HttpConfig",
    "MqttConfig",
    "StorageConfig",
    "Subscription",
    "TlsConfig",
    "TopologyConfig",
    "ValidationConfig",
    "host_problem",
    "shown",
]

_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# RFC 1123 labels; `_` too, since Docker and Compose service names have it and resolve.
_HOSTNAME = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?$")
_DAY = 86_400
# MQTT's limit for a string; far above any real name, token or path, and it keeps a
# pasted megabyte out of error messages and logs.
MAX_TEXT = 65_535
# A secret file holds one password or token; more means the wrong file was named.
_SECRET_MAX_BYTES = 65_536


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, str_max_length=MAX_TEXT
    )


def host_problem(host: str) -> str | None:
    """Why `host` is neither an IP address nor a host name; None when it is one."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return None
    if len(host) > 253 or not _HOSTNAME.match(host):
        return (
            f"{host!r} is not an IP address or a host name "
            "(letters, digits, '-', '_', dot-separated labels of at most 63)"
        )
    return None


def _http_url_problem(url: str) -> str | None:
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


def _mqtt_text(v: str | None) -> str | None:
    if v is not None and len(v.encode("utf-8", "surrogatepass")) > MAX_TEXT:
        raise ValueError(f"must be at most {MAX_TEXT} bytes as UTF-8 (MQTT's limit)")
    return v


def _header_token(v: str | None) -> str | None:
    # Sent in an HTTP header: visible ASCII only, or the request cannot be made.
    if v is not None and not re.fullmatch(r"[\x21-\x7e]+", v):
        raise ValueError(
            "must be visible ASCII characters without spaces (it is sent in an HTTP header)"
        )
    return v


def shown(path: Path | str) -> str:
    """A path for a message: quoted, and cut short when it is absurdly long."""
    text = repr(str(path))
    return text if len(text) <= 120 else f"{text[:80]}...{text[-30:]}"


def _file_problem(path: Path) -> str | None:
    """Why `path` is not a regular file that exists, or None."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"no such file {shown(path)}"
    except (OSError, ValueError) as exc:
        return f"cannot use {shown(path)}: {getattr(exc, 'strerror', None) or exc}"
    if not stat.S_ISREG(st.st_mode):
        return f"{shown(path)} is not a regular file"
    return None


def _read_secret(data: Any, key: str) -> Any:
    """Fill `key` from `<key>_file` (Docker/Kubernetes secrets), never both."""
    if not isinstance(data, dict) or data.get(f"{key}_file") is None:
        return data
    data = dict(data)
    raw = data.pop(f"{key}_file")
    if data.get(key) is not None:
        raise ValueError(f"set either `{key}` or `{key}_file`, not both")
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)  # a file named by digits, as YAML or the environment reads it
    if not isinstance(raw, str | os.PathLike):
        raise ValueError(f"`{key}_file` must be a file path (got {type(raw).__name__})")
    path = Path(raw)
    try:
        # Checked before opening: a FIFO would block, and /dev/zero would never end.
        if not stat.S_ISREG(path.stat().st_mode):
            raise ValueError(f"`{key}_file`: {shown(path)} is not a regular file")
        with path.open("rb") as f:
            blob = f.read(_SECRET_MAX_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"`{key}_file`: cannot read {shown(path)}: {exc.strerror}") from None
    if len(blob) > _SECRET_MAX_BYTES:
        raise ValueError(
            f"`{key}_file`: {shown(path)} is larger than {_SECRET_MAX_BYTES} bytes; "
            "a secret file holds only the secret"
        )
    try:
        data[key] = blob.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"`{key}_file`: {shown(path)} is not UTF-8 text (byte {blob[exc.start]:#04x} at offset "
            f"{exc.start}); write the secret as UTF-8"
        ) from None
    return data


class GatewayConfig(_Section):
    id: str = Field("gw-01", description="used in client ids, topics and tags")
    data_dir: Path = Field(Path("./var"), description="spool, dead-letter, detector state")

    @field_validator("id")
    @classmethod
    def _id_chars(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError("1-64 characters of A-Z a-z 0-9 . _ : -")
        return v


class TlsConfig(_Section):
    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False

    @model_validator(mode="after")
    def _files_exist(self) -> TlsConfig:
        # Found at start, not at the first connection attempt hours later.
        if self.enabled:
            for key in ("ca_file", "cert_file", "key_file"):
                path = getattr(self, key)
                problem = None if path is None else _file_problem(path)
                if problem:
                    raise ValueError(f"{key}: {problem}")
            if (self.cert_file is None) != (self.key_file is None):
                raise ValueError("cert_file and key_file go together (client certificate)")
        return self


class Subscription(_Section):
    topic: str
    format: str

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if not v or "#" in v[:-1] or any(("+" in level and level != "+") for level in v.split("/")):
            raise ValueError(f"invalid MQTT topic filter {v!r}")
        return _mqtt_text(v)  # type: ignore[return-value]

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        from meter_gateway.protocols.formats import (
            FORMATS,  # late: formats register themselves on import
        )

        if v not in FORMATS:
            raise ValueError(f"unknown format {v!r}; known: {', '.join(sorted(FORMATS))}")
        return v


def _default_subscriptions() -> list[Subscription]:
    return [
        Subscription(topic="meters/+/reading", format="json"),
        Subscription(topic="concentrators/+/readings", format="json-batch"),
        Subscription(topic="meters/+/event", format="meter-event"),
        Subscription(topic="meters/+/status", format="lwt"),
    ]


class MqttConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = Field(None, repr=False)
    tls: TlsConfig = TlsConfig()
    client_id: str | None = None
    clean_start: bool = False
    qos: Literal[0, 1, 2] = 1
    shared_group: str | None = None
    # MQTT's maximum packet size: a larger limit could never be reached.
    max_payload_bytes: int = Field(1_048_576, gt=0, le=268_435_455)
    # A two-byte field in CONNECT.
    keepalive_s: int = Field(60, ge=5, le=65_535)
    # MQTT 5 Receive Maximum: QoS 1 messages the broker may send before we ack.
    # While storage is behind, acks are held, so this bounds what is in memory.
    receive_maximum: int = Field(500, ge=1, le=65535)
    # MQTT 5 drops a persistent session when its expiry passes; a week covers a
    # gateway that is down over a long weekend.
    # A four-byte field in CONNECT; its maximum means "never expires".
    session_expiry_s: int = Field(604_800, ge=0, le=4_294_967_295)
    reconnect_min_s: float = Field(0.5, gt=0, le=3600)
    reconnect_max_s: float = Field(60.0, gt=0, le=_DAY)
    subscriptions: list[Subscription] = Field(default_factory=_default_subscriptions, min_length=1)

    _secret = model_validator(mode="before")(lambda data: _read_secret(data, "password"))

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        problem = host_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    _text = field_validator("client_id", "username", "password")(_mqtt_text)

    @field_validator("shared_group")
    @classmethod
    def _group(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "/+#")):
            raise ValueError("a share name must not be empty nor contain '/', '+' or '#'")
        return v


class StorageConfig(_Section):
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
    # Readings held in memory while the database is slow or down; above it the
    # sources stop acknowledging (MQTT) and polling waits (Modbus).
    max_buffered_lines: int = Field(200_000, gt=0)

    _token = model_validator(mode="before")(lambda data: _read_secret(data, "token"))
    _password = model_validator(mode="before")(lambda data: _read_secret(data, "password"))

    _header = field_validator("token")(_header_token)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        problem = _http_url_problem(v)
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


class TopologyConfig(_Section):
    file: Path | None = None


class EventsConfig(_Section):
    topic_prefix: str = "events"
    webhook_url: str | None = None
    offline_after_s: float = Field(90, gt=0, le=30 * _DAY)
    momentary_max_s: float = Field(300, gt=0, le=_DAY)
    transformer_outage_ratio: float = Field(0.6, gt=0, le=1)
    nominal_voltage_v: float = Field(230, gt=0, le=1_000_000)
    voltage_tolerance: float = Field(0.10, gt=0, lt=1)

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or "+" in v or "#" in v:
            raise ValueError("an MQTT topic to publish under: not empty, no '+' or '#'")
        return _mqtt_text(v)  # type: ignore[return-value]

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, v: str | None) -> str | None:
        problem = None if v is None else _http_url_problem(v)
        if problem:
            raise ValueError(problem)
        return v


class HttpConfig(_Section):
    listen: str = "127.0.0.1:9108"
    token: str | None = Field(None, repr=False)

    _token = model_validator(mode="before")(lambda data: _read_secret(data, "token"))
    _header = field_validator("token")(_header_token)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        # Parsed the way the status server parses it when it starts.
        host, sep, port = v.rpartition(":")
        if not sep or not host or not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
            raise ValueError("must be HOST:PORT, with PORT 0-65535")
        problem = host_problem(host.strip("[]"))
        if problem:
            raise ValueError(
                problem + ("; an IPv6 address goes in [brackets]" if ":" in host else "")
            )
        return v


class ValidationConfig(_Section):
    """Plausibility bounds; the defaults are the shipped ones."""

    voltage_max_v: float = Field(1000.0, gt=0)
    current_max_a: float = Field(10_000.0, gt=0)
    power_max_w: float = Field(10_000_000.0, gt=0)
    frequency_min_hz: float = Field(40.0, ge=0)
    frequency_max_hz: float = Field(70.0, gt=0)
    # Both become nanoseconds (x 1e9): bounded so that stays a finite number.
    max_future_s: float = Field(300.0, ge=0, le=366 * _DAY)
    max_age_s: float = Field(7 * 86_400.0, gt=0, le=100 * 366 * _DAY)
    # Timestamps remembered per meter to tell a redelivered reading from a new one.
    duplicate_window: int = Field(16, ge=1, le=10_000)

    @model_validator(mode="after")
    def _freq_order(self) -> ValidationConfig:
        if self.frequency_min_hz >= self.frequency_max_hz:
            raise ValueError("frequency_min_hz must be below frequency_max_hz")
        return self


class Config(_Section):
    gateway: GatewayConfig = GatewayConfig()
    mqtt: MqttConfig = MqttConfig()
    modbus: ModbusConfig = ModbusConfig()
    storage: StorageConfig = StorageConfig()
    topology: TopologyConfig = TopologyConfig()
    events: EventsConfig = EventsConfig()
    http: HttpConfig = HttpConfig()
    validation: ValidationConfig = ValidationConfig()

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"meter-gateway-{self.gateway.id}"
