"""The configuration file's schema as pydantic models.

The sections an adapter uses are that adapter's own models (`mqtt:` from the MQTT
adapter, `modbus:` from the Modbus adapter, `storage:` from the InfluxDB adapter):
the adapters sit below this layer and must not import it. This module assembles
them with the gateway's own sections into `Config`, and re-exports every section
model, so `from meter_gateway.config.schema import MqttConfig` keeps working.

Every model forbids unknown keys: a typo in a deployed config must stop the
gateway at start, not be silently ignored. Defaults are the shipped ones.

Numbers are finite and bounded, text is bounded: a value the running gateway
cannot use (an infinite age, a keepalive MQTT cannot carry, a duration that
overflows when turned into nanoseconds, a host name no resolver takes) is
refused here, where the error names the key, not hours later where it is used.
"""

from __future__ import annotations

import re
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from meter_gateway.configbase import MAX_TEXT, Section, host_problem, read_secret, shown
from meter_gateway.protocols.modbus.config import ModbusConfig
from meter_gateway.protocols.mqtt.config import MqttConfig, Subscription, TlsConfig, mqtt_text
from meter_gateway.storage.influxdb.config import StorageConfig, header_token, http_url_problem

__all__ = [
    "MAX_TEXT",
    "Config",
    "CustomersConfig",
    "DailyConfig",
    "EstimationConfig",
    "EventsConfig",
    "GatewayConfig",
    "HttpConfig",
    "LimitsConfig",
    "ModbusConfig",
    "MqttConfig",
    "StorageConfig",
    "Subscription",
    "TlsConfig",
    "TopologyConfig",
    "ValidationConfig",
    "host_problem",
    "shown",
    "zone_problem",
]

_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_DAY = 86_400


class GatewayConfig(Section):
    id: str = Field("gw-01", description="used in client ids, topics and tags")
    data_dir: Path = Field(Path("./var"), description="spool, dead-letter, detector state")
    timezone: str = Field(
        "UTC", description="IANA zone of the customers' local days (daily figures, billing)"
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        if zone_problem(v):
            raise ValueError(zone_problem(v))
        return v

    @field_validator("id")
    @classmethod
    def _id_chars(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError("1-64 characters of A-Z a-z 0-9 . _ : -")
        return v


class TopologyConfig(Section):
    file: Path | None = None


class EventsConfig(Section):
    """Where events go and the detectors' thresholds (each one a key, validated here)."""

    enabled: bool = Field(True, description="run the detectors; off: readings are only stored")
    topic_prefix: str = "events"
    webhook_url: str | None = None
    webhook_timeout_s: float = Field(10, gt=0, le=300)
    webhook_max_attempts: int = Field(8, ge=1, le=1000)
    offline_after_s: float = Field(90, gt=0, le=30 * _DAY)
    offline_missed_intervals: float = Field(3, ge=1, le=1000)
    momentary_max_s: float = Field(300, gt=0, le=_DAY)
    transformer_outage_ratio: float = Field(0.6, gt=0, le=1)
    transformer_outage_window_s: float = Field(120, gt=0, le=_DAY)
    nominal_voltage_v: float = Field(230, gt=0, le=1_000_000)
    voltage_tolerance: float = Field(0.10, gt=0, lt=1)
    voltage_min_duration_s: float = Field(60, ge=0, le=_DAY)
    voltage_unbalance_max: float = Field(0.02, gt=0, lt=1)
    overcurrent_a: float | None = Field(None, gt=0, le=1_000_000)
    frequency_nominal_hz: float = Field(50, gt=0, le=1000)
    frequency_tolerance_hz: float = Field(0.5, gt=0, le=100)
    spike_factor: float = Field(1.8, gt=1, le=1000)
    baseline_warmup_days: float = Field(7, ge=1, le=366)
    sustained_high_factor: float = Field(1, gt=0, le=1000)
    sustained_high_hours: float = Field(5, gt=0, le=24 * 366)
    sustained_low_factor: float = Field(0.6, gt=0, lt=1)
    sustained_low_hours: float = Field(24, gt=0, le=24 * 366)
    zero_consumption_hours: float = Field(6, gt=0, le=24 * 366)
    clock_drift_max_s: float = Field(120, gt=0, le=30 * _DAY)

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or "+" in v or "#" in v:
            raise ValueError("an MQTT topic to publish under: not empty, no '+' or '#'")
        return mqtt_text(v)  # type: ignore[return-value]

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, v: str | None) -> str | None:
        problem = None if v is None else http_url_problem(v)
        if problem:
            raise ValueError(problem)
        return v


def zone_problem(name: str) -> str | None:
    """Why `name` is no IANA time zone this machine knows, or None."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return f"{name!r} is not an IANA time zone (e.g. UTC, Europe/Berlin, Asia/Shanghai)"
    return None


def _clock_time(v: str) -> str:
    if not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", v):
        raise ValueError("a local time of day as HH:MM, e.g. 23:00")
    return v


class EstimationConfig(Section):
    """VEE estimation: gaps in a meter's interval registers are filled and flagged."""

    enabled: bool = Field(True, description="fill gaps with estimates (quality=estimated)")
    interval_s: int = Field(
        900, ge=60, le=3600, description="the register grid: estimates and daily demand"
    )
    max_linear_gap_h: float = Field(
        3, gt=0, le=24 * 7, description="gaps up to this long: linear interpolation"
    )
    max_gap_days: float = Field(
        7, gt=0, le=31, description="longer gaps are not estimated (left as missing)"
    )

    @field_validator("interval_s")
    @classmethod
    def _divides_hour(cls, v: int) -> int:
        if 3600 % v or v % 60:
            raise ValueError("whole minutes that divide an hour (60, 300, 900, 1800, 3600)")
        return v


class DailyConfig(Section):
    """Daily load characteristics per meter (measurement meter_daily), per local day."""

    enabled: bool = True
    night_start: str = Field("23:00", description="local start of the night hours")
    night_end: str = Field("07:00", description="local end of the night hours")
    base_load_share: float = Field(
        0.1, gt=0, le=1, description="base load: mean of this lowest share of the day's demands"
    )
    settle_s: float = Field(
        900, ge=0, le=_DAY, description="a day is first computed this long after it ends"
    )
    recompute_every_s: float = Field(
        300, gt=0, le=_DAY, description="how often days changed by late data are recomputed"
    )

    _times = field_validator("night_start", "night_end")(classmethod(lambda cls, v: _clock_time(v)))


class CustomersConfig(Section):
    """Thresholds of the customer tags (`meter-gateway report customers`)."""

    high_standby_kw: float = Field(0.3, gt=0, le=10_000, description="mean base load at least")
    night_heavy_share: float = Field(0.5, gt=0, le=1, description="night share of use at least")
    peak_top_share: float = Field(
        0.1, gt=0, le=1, description="peak contributors: this top share by mean daily peak"
    )
    outage_sensitive_min: int = Field(
        3, ge=0, le=10_000, description="more than this many sustained interruptions (CEMIn)"
    )
    prosumer_min_export_kwh: float = Field(1.0, ge=0, le=1e9, description="exported at least")


class HttpConfig(Section):
    listen: str = "127.0.0.1:9108"
    token: str | None = Field(None, repr=False)

    _token = model_validator(mode="before")(lambda data: read_secret(data, "token"))
    _header = field_validator("token")(header_token)

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


class ValidationConfig(Section):
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


class LimitsConfig(Section):
    """What hostile or runaway input may make the gateway (and the database) hold."""

    max_meters: int = Field(
        10_000,
        description="meters outside the topology file taken since start; 0: no limit",
    )

    @field_validator("max_meters", mode="before")
    @classmethod
    def _max_meters(cls, v: object) -> object:
        # Said in words an operator can act on: a negative count or a fraction is a typo,
        # and a limit beyond what a time-series database keeps per tag is no limit.
        if type(v) is bool or not isinstance(v, int):
            raise ValueError(
                "must be a whole number of meters (0: no limit), e.g. 10000 or 0; "
                f"got {type(v).__name__}"
            )
        if v < 0:
            raise ValueError("must be 0 (no limit) or a positive number of meters")
        if v > 100_000_000:
            raise ValueError("must be at most 100000000 (use 0 for no limit)")
        return v


class Config(Section):
    gateway: GatewayConfig = GatewayConfig()
    mqtt: MqttConfig = MqttConfig()
    modbus: ModbusConfig = ModbusConfig()
    storage: StorageConfig = StorageConfig()
    topology: TopologyConfig = TopologyConfig()
    events: EventsConfig = EventsConfig()
    http: HttpConfig = HttpConfig()
    validation: ValidationConfig = ValidationConfig()
    estimation: EstimationConfig = EstimationConfig()
    daily: DailyConfig = DailyConfig()
    customers: CustomersConfig = CustomersConfig()
    limits: LimitsConfig = LimitsConfig()

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"meter-gateway-{self.gateway.id}"
