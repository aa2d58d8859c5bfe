"""Configuration of the `modbus:` section, as pydantic 2 models.

`config/schema.py` imports `ModbusConfig` as the section. Relative `map:`
paths resolve against `config_dir` from the validation context when the loader
passes one (`Model.model_validate(data, context={"config_dir": dir})`), else against
the working directory. The register map is loaded and checked here, so a bad map
stops `check-config` with an error naming the key, the file and the entry.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from meter_gateway.protocols.modbus.errors import RegisterMapError
from meter_gateway.protocols.modbus.plan import ReadRequest, plan_reads
from meter_gateway.protocols.modbus.registermap import (
    MODBUS_MAX_READ,
    RegisterMap,
    bundled_map,
    bundled_models,
    load_map,
)

__all__ = [
    "BreakerConfig",
    "ModbusConfig",
    "ModbusDeviceConfig",
    "SerialConfig",
    "Transport",
]

_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

Transport = Literal["tcp", "rtu", "rtu-over-tcp"]


_DAY = 86_400
_MIN_INTERVAL_S = 0.01


class _Model(BaseModel):
    # Infinity and NaN are no durations: they pass `gt=0` and then break the scheduler.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SerialConfig(_Model):
    """An RS-485 line. Devices naming the same `port` share it (one request at a time)."""

    port: str = Field(min_length=1, description="e.g. /dev/ttyUSB0")
    # The highest standard rate; the frame gap is computed from it as a float.
    baudrate: int = Field(9600, gt=0, le=4_000_000)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8


class BreakerConfig(_Model):
    """Per-device circuit breaker: a dead meter is asked rarely, so it costs its line little.

    After `failures` failed polls in a row the device is skipped for `backoff_s`,
    then probed once (no retries); each failed probe doubles the wait up to
    `max_backoff_s`, a good answer closes the breaker.
    """

    failures: int = Field(3, ge=1)
    backoff_s: float = Field(10.0, gt=0, le=_DAY)
    max_backoff_s: float = Field(300.0, gt=0, le=_DAY)

    @model_validator(mode="after")
    def _ordered(self) -> BreakerConfig:
        if self.max_backoff_s < self.backoff_s:
            raise ValueError(
                f"max_backoff_s ({self.max_backoff_s}) must be >= backoff_s ({self.backoff_s})"
            )
        return self


class ModbusDeviceConfig(_Model):
    """One polled meter."""

    meter_id: str
    model: str | None = Field(None, description="a bundled register map: sdm630, sdm120, ...")
    map: Path | None = Field(None, validate_default=True, description="a register map file")
    transport: Transport = "tcp"
    host: str | None = Field(None, validate_default=True)
    port: int = Field(502, ge=1, le=65535)
    serial: SerialConfig | None = Field(None, validate_default=True)
    unit: int = Field(1, ge=0, le=255, description="Modbus unit id (slave address)")
    # The poller counts slots as wall-clock time / interval_s: a tiny interval
    # overflows that count, a huge one is no schedule.
    interval_s: float = Field(10.0, gt=0, le=_DAY)
    timeout_s: float = Field(1.0, gt=0, le=3600)
    retries: int = Field(2, ge=0, le=100)
    max_registers_per_request: int | None = Field(
        None, ge=1, le=MODBUS_MAX_READ, description="default: the map's"
    )
    max_gap: int | None = Field(None, ge=0, le=65_535, description="default: the map's")
    breaker: BreakerConfig = BreakerConfig()

    _register_map: RegisterMap = PrivateAttr()

    @field_validator("meter_id")
    @classmethod
    def _meter_id(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError("1-64 characters of A-Z a-z 0-9 . _ : -")
        return v

    @field_validator("interval_s")
    @classmethod
    def _interval_floor(cls, v: float) -> float:
        if v < _MIN_INTERVAL_S:
            raise ValueError(f"must be at least {_MIN_INTERVAL_S} s")
        return v

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str | None) -> str | None:
        if v is not None and v not in bundled_models():
            raise ValueError(f"unknown model {v!r}; bundled: {', '.join(bundled_models())}")
        return v

    @field_validator("map")
    @classmethod
    def _one_of_model_or_map(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        has_model = info.data.get("model") is not None
        if "model" not in info.data:
            return v  # `model` itself is invalid; that error is enough
        if v is None and not has_model:
            raise ValueError("set `model` (a bundled map) or `map` (a register map file)")
        if v is not None and has_model:
            raise ValueError("set either `model` or `map`, not both")
        if v is not None and not v.is_absolute():
            base = (info.context or {}).get("config_dir")
            if base is not None:
                v = Path(base) / v
        if v is not None:
            try:
                load_map(v)  # checked here so that the error names this key
            except RegisterMapError as exc:
                raise ValueError(str(exc)) from None
            except Exception as exc:  # a map that is not even YAML the loader can build
                raise ValueError(f"{v}: cannot load register map: {exc}") from None
        return v

    @field_validator("host")
    @classmethod
    def _host_for_tcp(cls, v: str | None, info: ValidationInfo) -> str | None:
        transport = info.data.get("transport")
        if transport in ("tcp", "rtu-over-tcp") and not v:
            raise ValueError(f"required for transport {transport}")
        if transport == "rtu" and v:
            raise ValueError("not used with transport rtu (set `serial.port`)")
        return v

    @field_validator("serial")
    @classmethod
    def _serial_for_rtu(cls, v: SerialConfig | None, info: ValidationInfo) -> SerialConfig | None:
        transport = info.data.get("transport")
        if transport == "rtu" and v is None:
            raise ValueError("required for transport rtu: {port, baudrate, parity, stopbits}")
        if transport in ("tcp", "rtu-over-tcp") and v is not None:
            raise ValueError(f"not used with transport {transport}")
        return v

    @model_validator(mode="after")
    def _load_register_map(self) -> ModbusDeviceConfig:
        try:
            rmap = bundled_map(self.model) if self.model else load_map(self.map)  # type: ignore[arg-type]
        except RegisterMapError as exc:
            raise ValueError(f"`{'model' if self.model else 'map'}`: {exc}") from None
        except Exception as exc:
            what = "model" if self.model else "map"
            raise ValueError(f"`{what}`: cannot load the register map: {exc}") from None
        if self.max_registers_per_request is not None:
            origin = f"{self.model}.yaml" if self.model else self.map.name  # type: ignore[union-attr]
            try:
                rmap.check_layout(origin, self.max_registers_per_request)
            except RegisterMapError as exc:
                raise ValueError(f"`max_registers_per_request`: {exc}") from None
        self._register_map = rmap
        return self

    @property
    def register_map(self) -> RegisterMap:
        """The validated register map named by `model` or `map`."""
        return self._register_map

    def read_plan(self) -> list[ReadRequest]:
        """The reads one poll makes, with this device's limits."""
        rmap = self._register_map
        return plan_reads(
            rmap.registers,
            max_registers=self.max_registers_per_request or rmap.max_registers_per_request,
            max_gap=rmap.max_gap if self.max_gap is None else self.max_gap,
        )

    @property
    def endpoint(self) -> str:
        """The connection this device shares with others: `tcp://host:port`, `rtu:///dev/x`."""
        if self.transport == "rtu":
            return f"rtu://{self.serial.port}"  # type: ignore[union-attr]
        return f"{self.transport}://{self.host}:{self.port}"

    @property
    def label(self) -> str:
        """`tcp://127.0.0.1:502/1`: the endpoint and unit id, as passed to the callbacks."""
        return f"{self.endpoint}/{self.unit}"


class ModbusConfig(_Model):
    """The `modbus:` section."""

    devices: list[ModbusDeviceConfig] = []
    connect_timeout_s: float = Field(3.0, gt=0, le=3600, description="opening a TCP connection")
    reconnect_delay_s: float = Field(
        0.5, gt=0, le=3600, description="first wait after a failed connect"
    )
    reconnect_max_delay_s: float = Field(
        60.0, gt=0, le=_DAY, description="cap of the doubling wait"
    )

    @model_validator(mode="after")
    def _consistent(self) -> ModbusConfig:
        problems: list[str] = []
        ids: dict[str, int] = {}
        units: dict[tuple[str, int], int] = {}
        lines: dict[str, tuple[int, SerialConfig]] = {}
        for i, dev in enumerate(self.devices):
            if dev.meter_id in ids:
                first_id = ids[dev.meter_id]
                problems.append(
                    f"devices[{i}].meter_id: {dev.meter_id!r} already used by devices[{first_id}]"
                )
            ids.setdefault(dev.meter_id, i)
            key = (dev.endpoint, dev.unit)
            if key in units:
                problems.append(
                    f"devices[{i}].unit: {dev.label} already polled as devices[{units[key]}]"
                )
            units.setdefault(key, i)
            if dev.serial is not None:
                first = lines.setdefault(dev.serial.port, (i, dev.serial))
                if first[1] != dev.serial:
                    problems.append(
                        f"devices[{i}].serial: {dev.serial.port} is set up differently in "
                        f"devices[{first[0]}] (one line, one baud rate and framing)"
                    )
        if self.reconnect_max_delay_s < self.reconnect_delay_s:
            problems.append("reconnect_max_delay_s: must be >= reconnect_delay_s")
        if problems:
            raise ValueError("; ".join(problems))
        return self
