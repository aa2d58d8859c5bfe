"""Fixtures for the Modbus tests.

The simulator fixtures come from `simulators.modbus.pytest_plugin` (also shipped as
the pytest11 entry point `meter_gateway_modbus`); importing them here keeps these
tests working where the installed metadata predates that entry point.
"""

from __future__ import annotations

from simulators.modbus.pytest_plugin import (  # noqa: F401 - fixtures
    modbus_fleet,
    modbus_meters,
    serial_pty_pair,
)
