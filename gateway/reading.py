"""The reading: one validated measurement set of one meter at one time."""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "CURRENT_FIELDS",
    "FIELDS",
    "QUALITIES",
    "VOLTAGE_FIELDS",
    "Reading",
]

# Storage field names (SPEC 7), in the order they are written.
VOLTAGE_FIELDS = ("voltage_l1_v", "voltage_l2_v", "voltage_l3_v")
CURRENT_FIELDS = ("current_l1_a", "current_l2_a", "current_l3_a")
FIELDS = (
    "energy_import_kwh",
    "energy_export_kwh",
    "power_w",
    *VOLTAGE_FIELDS,
    *CURRENT_FIELDS,
    "power_factor",
    "frequency_hz",
)
QUALITIES = ("actual", "estimated", "suspect")


class Reading(NamedTuple):
    """Immutable; a NamedTuple because the hot path builds one per reading.

    `values` maps SPEC 7 field names to floats and holds only what the meter sent.
    """

    meter_id: str
    ts_ns: int  # UTC epoch nanoseconds
    source: str  # "mqtt" | "modbus"
    values: dict[str, float]
    quality: str = "actual"
