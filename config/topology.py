"""The network topology: which transformer and feeder each meter hangs off.

CSV with a header: meter_id,transformer_id,feeder_id,customer_id,phases,
nominal_voltage_v,prosumer. Only meter_id is required per row.

The file is configuration data (`topology.file` names it), so its reader lives in
the configuration layer: the loader checks it at start, where `check-config` can
report it, and the gateway and the simulators read it from here.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meter_gateway.protocols.formats import id_problem
from meter_gateway.storage.lineprotocol import unstorable

__all__ = ["COLUMNS", "MeterPlace", "TopologyError", "load_topology"]

COLUMNS = (
    "meter_id",
    "transformer_id",
    "feeder_id",
    "customer_id",
    "phases",
    "nominal_voltage_v",
    "prosumer",
)


# Stored as tags on every reading, event and daily figure: a value the database cannot
# hold exactly is refused here rather than changed on the way in.
TAG_COLUMNS = ("meter_id", "transformer_id", "feeder_id", "customer_id")


class TopologyError(ValueError):
    """The topology file cannot be used; the message names the line and column."""


@dataclass(frozen=True, slots=True)
class MeterPlace:
    meter_id: str
    transformer_id: str | None = None
    feeder_id: str | None = None
    customer_id: str | None = None
    phases: int | None = None
    nominal_voltage_v: float | None = None
    prosumer: bool = False

    def get(self, key: str, default: str | None = None) -> str | None:
        value = getattr(self, key, None)
        return default if value is None else str(value)


def load_topology(path: Path) -> dict[str, MeterPlace]:
    """Read the CSV; raise TopologyError naming the file, the line and what to fix."""
    try:
        f = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise TopologyError(f"{path}: cannot read: {exc.strerror}") from None
    with f:
        try:
            return _read(path, f)
        except UnicodeDecodeError as exc:
            raise TopologyError(
                f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x}); save it as UTF-8"
            ) from None
        except csv.Error as exc:
            raise TopologyError(f"{path}: not a readable CSV file: {exc}") from None
        except OSError as exc:
            raise TopologyError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _read(path: Path, f: Any) -> dict[str, MeterPlace]:
    places: dict[str, MeterPlace] = {}
    reader = csv.DictReader(f)
    if reader.fieldnames is None or "meter_id" not in reader.fieldnames:
        raise TopologyError(
            f"{path}: line 1: the header must name the columns ({','.join(COLUMNS)})"
        )
    unknown = set(reader.fieldnames) - set(COLUMNS)
    if unknown:
        raise TopologyError(f"{path}: line 1: unknown column(s) {', '.join(sorted(unknown))}")
    for row in reader:
        line = reader.line_num
        meter_id = (row.get("meter_id") or "").strip()
        if not meter_id:
            raise TopologyError(f"{path}: line {line}: meter_id is empty")
        # A meter id outside the rule every format applies could never match a reading.
        id_wrong = id_problem(meter_id, "meter_id")
        if id_wrong is not None:
            raise TopologyError(f"{path}: line {line}: {id_wrong}; change the id in the file")
        for column in TAG_COLUMNS:
            value = (row.get(column) or "").strip()
            problem = unstorable(value)
            if problem:
                raise TopologyError(
                    f"{path}: line {line}: {column} {value!r} contains {problem}, which "
                    "InfluxDB cannot store in a tag; change the id in the file"
                )
        try:
            phases = int(row["phases"]) if row.get("phases") else None
            if phases not in (None, 1, 3):
                raise ValueError("phases must be 1 or 3")
            nominal = float(row["nominal_voltage_v"]) if row.get("nominal_voltage_v") else None
            if nominal is not None and not 0 < nominal < 1_000_000:
                raise ValueError(f"nominal_voltage_v {nominal!r} is not a voltage")
        except ValueError as exc:
            raise TopologyError(f"{path}: line {line}: {exc}") from None
        prosumer = (row.get("prosumer") or "").strip().lower() in {"1", "true", "yes", "y"}
        places[meter_id] = MeterPlace(
            meter_id,
            (row.get("transformer_id") or "").strip() or None,
            (row.get("feeder_id") or "").strip() or None,
            (row.get("customer_id") or "").strip() or None,
            phases,
            nominal,
            prosumer,
        )
    return places
