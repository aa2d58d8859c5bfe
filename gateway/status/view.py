"""What the status side reads of the running gateway, and nothing more.

The status code is typed against `GatewayView`, not the gateway's class: the gateway
makes the status server, so the status side naming the gateway would be an import
cycle. Its components are the real ones, except where importing them would cost what
the gateway avoids (pymodbus, only loaded when a Modbus device is configured) or
where they live in the gateway's own module (the rate meter): there a Protocol names
what is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from meter_gateway.config.schema import Config
from meter_gateway.gateway.events.service import EventService
from meter_gateway.gateway.pipeline import Pipeline
from meter_gateway.gateway.vee.service import VeeService
from meter_gateway.protocols.mqtt.source import MqttSource
from meter_gateway.storage.deadletter import DeadLetterStore
from meter_gateway.storage.influxdb.writer import BatchWriter
from meter_gateway.storage.spool import Spool

__all__ = ["GatewayView", "ModbusConnectionView", "ModbusDeviceView", "ModbusView", "RateView"]


class RateView(Protocol):
    @property
    def per_second(self) -> float:
        """Readings per second over the last minute."""
        ...


class ModbusDeviceView(Protocol):
    """A device's counters (the poller's `DeviceStats`)."""

    @property
    def label(self) -> str: ...
    @property
    def polls(self) -> int: ...
    @property
    def readings(self) -> int: ...
    @property
    def failed_polls(self) -> int: ...
    @property
    def unusable_polls(self) -> int: ...
    @property
    def skipped(self) -> int: ...
    @property
    def missed_slots(self) -> int: ...
    @property
    def errors(self) -> Mapping[str, int]: ...
    @property
    def breaker(self) -> str: ...
    @property
    def breaker_openings(self) -> int: ...
    @property
    def down_since(self) -> float | None: ...
    @property
    def last_success(self) -> float | None: ...
    @property
    def last_error(self) -> str | None: ...


class ModbusConnectionView(Protocol):
    """A connection's state (the poller's `ConnectionStats`)."""

    @property
    def connected(self) -> bool: ...
    @property
    def connects(self) -> int: ...
    @property
    def connect_failures(self) -> int: ...
    @property
    def last_error(self) -> str | None: ...


class ModbusView(Protocol):
    """The Modbus poller."""

    def stats(self) -> Mapping[str, ModbusDeviceView]: ...

    def connection_stats(self) -> Mapping[str, ModbusConnectionView]: ...


class GatewayView(Protocol):
    """The running gateway as the status page, /status and /metrics read it."""

    @property
    def config(self) -> Config: ...
    @property
    def started_at(self) -> float:
        """Epoch s."""
        ...

    @property
    def storage_target(self) -> str:
        """The database's address, without credentials."""
        ...

    @property
    def pipeline(self) -> Pipeline: ...
    @property
    def writer(self) -> BatchWriter: ...
    @property
    def spool(self) -> Spool: ...
    @property
    def dead_letter(self) -> DeadLetterStore: ...
    @property
    def mqtt(self) -> MqttSource: ...
    @property
    def events(self) -> EventService: ...
    @property
    def vee(self) -> VeeService | None: ...
    @property
    def modbus(self) -> ModbusView | None: ...
    @property
    def rate(self) -> RateView: ...

    def ready(self) -> tuple[bool, list[str]]:
        """(ready, why not): what /readyz says."""
        ...

    def storage_refusals(self) -> tuple[float | None, float | None]:
        """(seconds the database has refused lines in every write, or None; seconds since
        it last refused a line, or None)."""
        ...

    def refusing_text(self, refusing_s: float) -> str:
        """Why readings are not stored though the database answers."""
        ...
