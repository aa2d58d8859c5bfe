"""Exceptions of the Modbus adapter, and the one place pymodbus's are mapped onto them.

ModbusError                       root of everything this package raises
+-- RegisterMapError              a register map is invalid (names the file and the entry)
+-- ModbusIOError                 one request failed; `kind` names the cause, `raw` the frame
    +-- ModbusConnectError        the connection is down or cannot be opened
    +-- ModbusTimeout             no answer within the device's timeout
    +-- GarbledFrameError         bytes came back, but no valid frame (CRC, header)
    +-- DeviceExceptionError      the device answered with a Modbus exception code
    +-- ProtocolError             a frame that does not answer the request sent
    +-- UnusableDataError         a whole poll answered, but nothing in it usable

`from_device` splits them in two: the device sent something (an exception response, a
garbled or wrong frame), worth keeping as evidence; or nothing came back at all
(connection refused or lost, timeout), which is the device's state, not data.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "EXCEPTION_NAMES",
    "DeviceExceptionError",
    "GarbledFrameError",
    "ModbusConnectError",
    "ModbusError",
    "ModbusIOError",
    "ModbusTimeout",
    "ProtocolError",
    "RegisterMapError",
    "UnusableDataError",
    "map_pymodbus_errors",
]

#: Modbus exception codes (Modbus Application Protocol v1.1b3, section 7).
EXCEPTION_NAMES: dict[int, str] = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "server device failure",
    0x05: "acknowledge",
    0x06: "server device busy",
    0x08: "memory parity error",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target device failed to respond",
}


class ModbusError(Exception):
    """Root of the Modbus adapter's exceptions."""


class RegisterMapError(ModbusError, ValueError):
    """A register map cannot be used; the message names the file and the entry."""


class ModbusIOError(ModbusError):
    """A request failed. `kind` is the error-count key, `raw` the frame received if any."""

    kind = "io"
    from_device = False  # True: the device answered, with something unusable

    def __init__(self, message: str, *, raw: bytes | None = None) -> None:
        super().__init__(message)
        self.raw = raw
        self.sent_at: float | None = None  # epoch s the request went out, when it did


class ModbusConnectError(ModbusIOError):
    """The connection is down, was lost, or cannot be opened (reconnect is pending)."""

    kind = "connection"


class ModbusTimeout(ModbusIOError):
    """No answer within the timeout: the device is off, unplugged or has another unit id."""

    kind = "timeout"


class GarbledFrameError(ModbusIOError):
    """Bytes arrived but formed no valid frame (bad CRC, bad MBAP header, noise)."""

    kind = "garbled"
    from_device = True


class DeviceExceptionError(ModbusIOError):
    """The device answered with a Modbus exception response."""

    kind = "exception"
    from_device = True

    def __init__(self, code: int, *, raw: bytes | None = None) -> None:
        self.code = code
        name = EXCEPTION_NAMES.get(code, "unknown exception")
        super().__init__(f"modbus exception 0x{code:02X} ({name})", raw=raw)

    @property
    def retryable(self) -> bool:
        """Busy and acknowledge mean 'ask again later'; the rest will not change on retry."""
        return self.code in (0x05, 0x06)


class ProtocolError(ModbusIOError):
    """A frame that does not answer the request (wrong unit, function, length, stale reply)."""

    kind = "protocol"
    from_device = True


class UnusableDataError(ModbusIOError):
    """A poll the device answered with nothing usable: every block an exception, a
    garbled frame or registers holding NaN or a 'no value' marker. For the breaker, a
    failed poll like silence: a device that only sends garbage is failing."""

    kind = "unusable"
    from_device = True


@contextmanager
def map_pymodbus_errors(raw: bytes | None = None) -> Iterator[None]:
    """Turn pymodbus's exceptions into ours (`raise ... from exc`), in this one place."""
    # Imported here: the configuration imports this module, and needs no pymodbus.
    from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

    try:
        yield
    except ConnectionException as exc:
        raise ModbusConnectError(f"connection lost ({exc})", raw=raw) from exc
    except ModbusIOException as exc:
        raise ProtocolError(f"unexpected response ({exc})", raw=raw) from exc
    except ModbusException as exc:
        raise ProtocolError(f"pymodbus error ({exc})", raw=raw) from exc
