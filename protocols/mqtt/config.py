"""Configuration of the `mqtt:` section, as pydantic 2 models.

The MQTT adapter owns the model of what it is given, as the Modbus adapter does:
the configuration layer (`meter_gateway.config.schema`) only places `MqttConfig`
in the file's schema, and this package imports nothing above it.

Every model forbids unknown keys (a typo in a deployed config must stop the gateway
at start), and numbers are finite and bounded by what MQTT can carry, so a value the
client could never use is refused where the error names the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from meter_gateway.configbase import (
    MAX_TEXT,
    Section,
    file_problem,
    host_problem,
    read_secret,
    shown,
)

__all__ = [
    "MAX_TEXT",
    "MqttConfig",
    "Subscription",
    "TlsConfig",
    "file_problem",
    "host_problem",
    "mqtt_text",
    "read_secret",
    "shown",
]

_DAY = 86_400


def mqtt_text(v: str | None) -> str | None:
    """A string MQTT can carry: at most 65535 bytes as UTF-8 (a validator)."""
    if v is not None and len(v.encode("utf-8", "surrogatepass")) > MAX_TEXT:
        raise ValueError(f"must be at most {MAX_TEXT} bytes as UTF-8 (MQTT's limit)")
    return v


class TlsConfig(Section):
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
                problem = None if path is None else file_problem(path)
                if problem:
                    raise ValueError(f"{key}: {problem}")
            if (self.cert_file is None) != (self.key_file is None):
                raise ValueError("cert_file and key_file go together (client certificate)")
        return self


class Subscription(Section):
    topic: str
    format: str

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if not v or "#" in v[:-1] or any(("+" in level and level != "+") for level in v.split("/")):
            raise ValueError(f"invalid MQTT topic filter {v!r}")
        return mqtt_text(v)  # type: ignore[return-value]

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        # Late: formats register themselves on import; a plugin's (entry points
        # `meter_gateway.formats`) is loaded here, the first time it is named.
        from meter_gateway.protocols.formats import get_format

        get_format(v)  # ValueError naming the format, the built-in and installed ones
        return v


def _default_subscriptions() -> list[Subscription]:
    return [
        Subscription(topic="meters/+/reading", format="json"),
        Subscription(topic="concentrators/+/readings", format="json-batch"),
        Subscription(topic="meters/+/event", format="meter-event"),
        Subscription(topic="meters/+/status", format="lwt"),
    ]


class MqttConfig(Section):
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

    _secret = model_validator(mode="before")(lambda data: read_secret(data, "password"))

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        problem = host_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    _text = field_validator("client_id", "username", "password")(mqtt_text)

    @field_validator("shared_group")
    @classmethod
    def _group(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "/+#")):
            raise ValueError("a share name must not be empty nor contain '/', '+' or '#'")
        return v
