"""Where a simulated meter's values come from: the meter model, or fixed values.

A source is `Callable[[float], Mapping[str, float]]`: given epoch seconds, the storage
fields (`voltage_l1_v`, `power_w`, ...) the meter shows at that time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ValueSource", "canonical_to_fields", "model_source", "static_source"]

ValueSource = Callable[[float], Mapping[str, float]]

_SCALARS = ("energy_import_kwh", "energy_export_kwh", "power_w", "power_factor", "frequency_hz")


def canonical_to_fields(reading: Mapping[str, Any]) -> dict[str, float]:
    """Canonical reading (`voltage_v: [..]`) -> storage fields (`voltage_l1_v`, ...)."""
    out: dict[str, float] = {}
    for key, prefix, unit in (("voltage_v", "voltage", "v"), ("current_a", "current", "a")):
        value = reading.get(key)
        if isinstance(value, list | tuple):
            for i, x in enumerate(value[:3]):
                out[f"{prefix}_l{i + 1}_{unit}"] = float(x)
        elif isinstance(value, int | float):
            out[f"{prefix}_l1_{unit}"] = float(value)
    for key in _SCALARS:
        value = reading.get(key)
        if isinstance(value, int | float):
            out[key] = float(value)
    return out


def model_source(model: Any) -> ValueSource:
    """Values of a `simulators.meter.MeterModel`, advanced to the time asked for."""

    def values(t: float) -> Mapping[str, float]:
        if t > model.t:  # the model integrates forward only
            model.advance(t)
        return canonical_to_fields(model.reading())

    return values


def static_source(values: Mapping[str, float] | None = None, *, phases: int = 3) -> ValueSource:
    """Fixed, physically consistent values (P = sum(V * I) * PF), for exact tests."""
    if values is None:
        v = (230.1, 229.8, 231.2)[:phases]
        i = (1.25, 0.9, 1.4)[:phases]
        pf = 0.97
        fields: dict[str, float] = {
            "power_w": round(sum(a * b for a, b in zip(v, i, strict=True)) * pf, 1),
            "power_factor": pf,
            "frequency_hz": 50.02,
            "energy_import_kwh": 10432.1,
            "energy_export_kwh": 12.5,
        }
        for k in range(phases):
            fields[f"voltage_l{k + 1}_v"] = v[k]
            fields[f"current_l{k + 1}_a"] = i[k]
        values = fields
    frozen = dict(values)
    return lambda _t: frozen
