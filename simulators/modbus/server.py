"""Simulated Modbus meters on real pymodbus servers (SimData/SimDevice API).

A `MeterServer` is one listening server - a TCP port (Modbus TCP or RTU framing over
TCP) or a serial line - with up to 247 meters on it as unit ids, each exposing its
register map. Values are encoded with the same map the poller decodes with (the
inverse of decoding) from a value source, usually the meter model, and refreshed at
most once a `refresh_s` as a real meter updates its registers.

Faults, per unit, switchable while running: `silent` (no answer, as a dead meter),
`exception` (a Modbus exception response), `garbled` (a corrupt frame: bad CRC on
RTU, bad MBAP header on TCP), `nan` (NaN in every float register). Unit ids with no
meter are silent, as on an RS-485 line.

`MeterFleet` spreads N meters over consecutive ports: meters 1..U are units 1..U on
port P, meters U+1..2U units 1..U on port P+1, and so on (U = `units_per_port`, 247 by
default, the Modbus maximum).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, TypedDict

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from meter_gateway.protocols.modbus.datatypes import DATA_TYPES
from meter_gateway.protocols.modbus.decode import encode, nan_words
from meter_gateway.protocols.modbus.registermap import RegisterMap, bundled_map
from meter_gateway.simulators.modbus.values import ValueSource, model_source, static_source

__all__ = ["Fault", "MeterFleet", "MeterServer", "SimulatedMeter", "make_meter"]

log = logging.getLogger(__name__)

MAX_UNITS = 247
# Gaps up to this many registers between mapped values are readable (zeros), as on
# real meters whose tables are contiguous; longer stretches answer "illegal address".
FILL_GAP = 64


class Fault(StrEnum):
    NONE = "none"
    SILENT = "silent"
    EXCEPTION = "exception"
    GARBLED = "garbled"
    NAN = "nan"


@dataclass
class SimulatedMeter:
    """One meter: a unit id, a register map and where its values come from."""

    unit: int
    register_map: RegisterMap
    source: ValueSource
    meter_id: str = ""
    fault: Fault = Fault.NONE
    exception_code: int = int(ExcCodes.DEVICE_FAILURE)
    refresh_s: float = 1.0
    reads: int = 0  # read requests this meter answered (or would have, when faulty)
    port: int | None = None  # the server's port, once started
    _updated: float = field(default=-1e18, repr=False)

    def encode_into(self, registers: list[int], start: int, now: float) -> None:
        """Write the meter's current values into a pymodbus register block at `start`."""
        values = self.source(now)
        for entry in self.register_map.registers:
            if self.fault is Fault.NAN and DATA_TYPES[entry.type].is_float:
                words = nan_words(entry)
            else:
                words = encode(values.get(entry.field, 0.0), entry)
            lo = entry.address - start
            registers[lo : lo + len(words)] = words

    def sim_device(self) -> SimDevice:
        """The pymodbus device: readable blocks over the map, values filled on each read."""
        blocks: list[SimData] = []
        ordered = sorted(self.register_map.registers, key=lambda e: e.address)
        lo, hi = ordered[0].address, ordered[0].end
        for entry in ordered[1:]:
            if entry.address - hi > FILL_GAP:
                blocks.append(SimData(lo, count=hi - lo, datatype=DataType.REGISTERS))
                lo = entry.address
            hi = max(hi, entry.end)
        blocks.append(SimData(lo, count=hi - lo, datatype=DataType.REGISTERS))
        return SimDevice(self.unit, simdata=blocks, action=self._action)

    async def _action(
        self,
        function_code: int,
        start_address: int,
        _address: int,
        _count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        self.reads += 1
        if set_values:
            return ExcCodes.ILLEGAL_FUNCTION  # a meter's measurements are read-only
        if self.fault is Fault.EXCEPTION:
            return ExcCodes(self.exception_code)
        if function_code not in self.register_map.functions:
            return ExcCodes.ILLEGAL_FUNCTION
        now = time.time()
        if now - self._updated >= self.refresh_s or self.fault is Fault.NAN:
            self._updated = now
            self.encode_into(registers, start_address, now)
        return None


def make_meter(
    unit: int,
    model: str,
    *,
    meter_id: str | None = None,
    seed: int = 0,
    values: dict[str, float] | None = None,
    live: bool = True,
    start: float | None = None,
) -> SimulatedMeter:
    """A meter of a bundled model; live values from the meter model unless `values`/`live=False`."""
    rmap = bundled_map(model)
    meter_id = meter_id or f"{model}-{unit:04d}"
    phases: Literal[1, 3] = (
        3 if any(e.field.endswith(("l2_v", "l3_v")) for e in rmap.registers) else 1
    )
    source: ValueSource
    if values is not None or not live:
        source = static_source(values, phases=phases)
    else:
        try:
            from meter_gateway.simulators.meter import MeterModel
        except ImportError:  # pragma: no cover - the model ships with the package
            source = static_source(phases=phases)
        else:
            source = model_source(MeterModel(meter_id, seed=seed, phases=phases, start=start))
    return SimulatedMeter(unit=unit, register_map=rmap, source=source, meter_id=meter_id)


class _SerialOptions(TypedDict):
    """The line settings ModbusSerialServer takes as keywords."""

    baudrate: int
    parity: str
    stopbits: int
    bytesize: int


class MeterServer:
    """One pymodbus server with meters as unit ids; `async with` starts and stops it."""

    def __init__(
        self,
        meters: Sequence[SimulatedMeter],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        framer: Literal["socket", "rtu"] = "socket",
        serial_port: str | None = None,
        baudrate: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
        bytesize: int = 8,
    ) -> None:
        units = [m.unit for m in meters]
        if len(set(units)) != len(units):
            raise ValueError("two meters with the same unit id on one server")
        if any(not 1 <= u <= MAX_UNITS for u in units):
            raise ValueError(f"unit ids are 1..{MAX_UNITS}")
        self.meters: dict[int, SimulatedMeter] = {m.unit: m for m in meters}
        self.host = host
        self.port = port
        self.serial_port = serial_port
        self._framer = FramerType.RTU if (framer == "rtu" or serial_port) else FramerType.SOCKET
        self._serial: _SerialOptions = {
            "baudrate": baudrate,
            "parity": parity,
            "stopbits": stopbits,
            "bytesize": bytesize,
        }
        self._server: ModbusTcpServer | ModbusSerialServer | None = None

    @property
    def framer(self) -> str:
        return self._framer.value

    def set_fault(self, unit: int, fault: Fault | str, exception_code: int | None = None) -> None:
        """Switch a unit's fault while running."""
        meter = self.meters[unit]
        meter.fault = Fault(fault)
        if exception_code is not None:
            meter.exception_code = exception_code

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending or not data:
            return data
        rtu = self._framer is FramerType.RTU
        unit = data[0] if rtu else (data[6] if len(data) > 6 else -1)
        meter = self.meters.get(unit)
        if meter is None or meter.fault is Fault.SILENT:
            return b""  # nobody home at that address: no answer at all
        if meter.fault is Fault.GARBLED:
            if rtu:
                return data[:-1] + bytes([data[-1] ^ 0xFF])  # CRC no longer matches
            return data[:2] + b"\xde\xad" + data[4:]  # MBAP protocol id must be 0
        return data

    async def start(self) -> None:
        # Unit 0 catches every unit id without a meter, so pymodbus does not log a
        # traceback for it; `_trace_packet` then swallows the answer.
        catch_all = SimDevice(0, simdata=SimData(0, count=1, datatype=DataType.REGISTERS))
        devices = [catch_all, *(m.sim_device() for m in self.meters.values())]
        if self.serial_port is not None:
            self._server = ModbusSerialServer(
                devices,
                framer=FramerType.RTU,
                port=self.serial_port,
                trace_packet=self._trace_packet,
                **self._serial,
            )
        else:
            self._server = ModbusTcpServer(
                devices,
                framer=self._framer,
                address=(self.host, self.port),
                trace_packet=self._trace_packet,
            )
        await self._server.serve_forever(background=True)
        listener: Any = self._server.transport
        if self.serial_port is None and hasattr(listener, "sockets"):
            self.port = listener.sockets[0].getsockname()[1]
        for m in self.meters.values():
            m.port = self.port if self.serial_port is None else None

    async def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.shutdown()
            self._server = None

    async def __aenter__(self) -> MeterServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class MeterFleet:
    """N simulated meters of one model over consecutive ports (see the module docstring)."""

    def __init__(
        self,
        meters: int,
        *,
        model: str = "sdm630",
        host: str = "127.0.0.1",
        port: int = 5020,
        transport: Literal["tcp", "rtu-over-tcp"] = "tcp",
        seed: int = 0,
        units_per_port: int = MAX_UNITS,
        live: bool = True,
        meter_id_prefix: str | None = None,
    ) -> None:
        if meters < 1:
            raise ValueError("at least one meter")
        if not 1 <= units_per_port <= MAX_UNITS:
            raise ValueError(f"units_per_port is 1..{MAX_UNITS}")
        self.model = model
        self.host = host
        self.transport = transport
        prefix = meter_id_prefix if meter_id_prefix is not None else f"{model}-"
        framer: Literal["socket", "rtu"] = "rtu" if transport == "rtu-over-tcp" else "socket"
        self.meters: list[SimulatedMeter] = []
        self.servers: list[MeterServer] = []
        start = time.time()
        for first in range(0, meters, units_per_port):
            group = [
                make_meter(
                    i - first + 1,
                    model,
                    meter_id=f"{prefix}{i + 1:04d}",
                    seed=seed * 1_000_003 + i,
                    live=live,
                    start=start,
                )
                for i in range(first, min(first + units_per_port, meters))
            ]
            self.meters.extend(group)
            server_port = 0 if port == 0 else port + first // units_per_port
            self.servers.append(MeterServer(group, host=host, port=server_port, framer=framer))

    def location(self, index: int) -> tuple[int, int]:
        """(port, unit) of meter `index` (0-based), once started."""
        m = self.meters[index]
        assert m.port is not None, "start the fleet first"
        return m.port, m.unit

    def device_configs(self, **overrides: Any) -> list[dict[str, Any]]:
        """`modbus.devices` entries that poll this fleet (overrides apply to each)."""
        return [
            {
                "meter_id": m.meter_id,
                "model": self.model,
                "transport": self.transport,
                "host": self.host,
                "port": m.port,
                "unit": m.unit,
                **overrides,
            }
            for m in self.meters
        ]

    async def start(self) -> None:
        started: list[MeterServer] = []
        try:
            for server in self.servers:
                await server.start()
                started.append(server)
        except BaseException:
            for server in started:
                await server.stop()
            raise

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.servers))

    async def __aenter__(self) -> MeterFleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
