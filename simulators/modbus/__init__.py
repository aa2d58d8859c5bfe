"""Simulated Modbus meters: pymodbus servers exposing meters through the bundled maps.

See `server.py` (servers, fleets, faults), `cli.py` (`meter-gateway simulate modbus`)
and `pytest_plugin.py` (fixtures). Names load on first use, so that building the
command line (`meter-gateway --help`) does not import pymodbus.
"""

from typing import Any

__all__ = ["Fault", "MeterFleet", "MeterServer", "SimulatedMeter", "make_meter"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from meter_gateway.simulators.modbus import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
