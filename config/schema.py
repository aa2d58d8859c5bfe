"""The configuration schema (SPEC section 4) as pydantic models.

Every model forbids unknown keys: a typo in a deployed config must stop the
gateway at start, not be silently ignored. Defaults are the shipped ones.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from protocols.modbus.config import ModbusConfig

__all__ = [
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
]

_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _read_secret(data: Any, key: str) -> Any:
    """Fill `key` from `<key>_file` (Docker/Kubernetes secrets), never both."""
    if not isinstance(data, dict) or data.get(f"{key}_file") is None:
        return data
    data = dict(data)
    path = Path(str(data.pop(f"{key}_file")))
    if data.get(key) is not None:
        raise ValueError(f"set either `{key}` or `{key}_file`, not both")
    try:
        data[key] = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"`{key}_file`: cannot read {path}: {exc.strerror}") from None
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
                if path is not None and not path.is_file():
                    raise ValueError(f"{key}: no such file {str(path)!r}")
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
        return v

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        from protocols.formats import FORMATS  # late: formats register themselves on import

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
    max_payload_bytes: int = Field(1_048_576, gt=0)
    keepalive_s: int = Field(60, ge=5)
    # MQTT 5 Receive Maximum: QoS 1 messages the broker may send before we ack.
    # While storage is behind, acks are held, so this bounds what is in memory.
    receive_maximum: int = Field(500, ge=1, le=65535)
    # MQTT 5 drops a persistent session when its expiry passes; a week covers a
    # gateway that is down over a long weekend.
    session_expiry_s: int = Field(604_800, ge=0)
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(60.0, gt=0)
    subscriptions: list[Subscription] = Field(default_factory=_default_subscriptions, min_length=1)

    _secret = model_validator(mode="before")(lambda data: _read_secret(data, "password"))

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
    flush_interval_s: float = Field(1.0, gt=0)
    max_retry_delay_s: float = Field(60.0, gt=0)
    timeout_s: float = Field(10.0, gt=0)
    spool_max_bytes: int = Field(1_073_741_824, gt=0)
    # Readings held in memory while the database is slow or down; above it the
    # sources stop acknowledging (MQTT) and polling waits (Modbus).
    max_buffered_lines: int = Field(200_000, gt=0)

    _token = model_validator(mode="before")(lambda data: _read_secret(data, "token"))
    _password = model_validator(mode="before")(lambda data: _read_secret(data, "password"))

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/]+", v):
            raise ValueError(f"must be an http:// or https:// URL (got {v!r})")
        return v.rstrip("/")

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
    offline_after_s: float = Field(90, gt=0)
    momentary_max_s: float = Field(300, gt=0)
    transformer_outage_ratio: float = Field(0.6, gt=0, le=1)
    nominal_voltage_v: float = Field(230, gt=0)
    voltage_tolerance: float = Field(0.10, gt=0, lt=1)


class HttpConfig(_Section):
    listen: str = "127.0.0.1:9108"
    token: str | None = Field(None, repr=False)

    _token = model_validator(mode="before")(lambda data: _read_secret(data, "token"))

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"must be HOST:PORT (got {v!r})")
        return v


class ValidationConfig(_Section):
    """Plausibility bounds (SPEC 6); the defaults are the spec's."""

    voltage_max_v: float = Field(1000.0, gt=0)
    current_max_a: float = Field(10_000.0, gt=0)
    power_max_w: float = Field(10_000_000.0, gt=0)
    frequency_min_hz: float = Field(40.0, ge=0)
    frequency_max_hz: float = Field(70.0, gt=0)
    max_future_s: float = Field(300.0, ge=0)
    max_age_s: float = Field(7 * 86_400.0, gt=0)
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
