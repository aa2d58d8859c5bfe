"""Modbus adapter: register maps, the poller, and the typed errors (see README.md).

`Poller` and `DeviceStats` load on first use, so that importing the configuration
models (as `config/schema.py` does) does not import pymodbus.
"""

from typing import Any

from meter_gateway.protocols.modbus.config import (
    BreakerConfig,
    ModbusConfig,
    ModbusDeviceConfig,
    SerialConfig,
)
from meter_gateway.protocols.modbus.errors import (
    DeviceExceptionError,
    GarbledFrameError,
    ModbusConnectError,
    ModbusError,
    ModbusIOError,
    ModbusTimeout,
    ProtocolError,
    RegisterMapError,
)
from meter_gateway.protocols.modbus.registermap import (
    RegisterEntry,
    RegisterMap,
    bundled_map,
    load_map,
)

__all__ = [
    "BreakerConfig",
    "DeviceExceptionError",
    "DeviceStats",
    "GarbledFrameError",
    "ModbusConfig",
    "ModbusConnectError",
    "ModbusDeviceConfig",
    "ModbusError",
    "ModbusIOError",
    "ModbusTimeout",
    "Poller",
    "ProtocolError",
    "RegisterEntry",
    "RegisterMap",
    "RegisterMapError",
    "SerialConfig",
    "bundled_map",
    "load_map",
]


def __getattr__(name: str) -> Any:
    if name in ("Poller", "DeviceStats"):
        from meter_gateway.protocols.modbus import poller

        return getattr(poller, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
