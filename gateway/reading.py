"""The reading: one validated measurement set of one meter at one time."""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "CURRENT_FIELDS",
    "FIELDS",
    "QUALITIES",
    "VOLTAGE_FIELDS",
    "Reading",
    "canonical_from_fields",
]

# Storage field names (measurement `meter_reading`), in the order they are written.
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

    `values` maps storage field names to floats and holds only what the meter sent.
    """

    meter_id: str
    ts_ns: int  # UTC epoch nanoseconds
    source: str  # "mqtt" | "modbus"
    values: dict[str, float]
    quality: str = "actual"


def canonical_from_fields(values: dict[str, object]) -> dict[str, object]:
    """Storage field names (a poller's output) -> the canonical reading the validator takes.

    Three phases become a list; a meter with only L1 is single phase.
    """
    out = {k: v for k, v in values.items() if k not in VOLTAGE_FIELDS and k not in CURRENT_FIELDS}
    for key, names in (("voltage_v", VOLTAGE_FIELDS), ("current_a", CURRENT_FIELDS)):
        phases = [values.get(n) for n in names]
        if all(v is not None for v in phases):
            out[key] = phases
        elif phases[0] is not None:
            out[key] = phases[0]
    return out
