"""The simulated grid: meters behind transformers on feeders, some read through concentrators.

Written out as the gateway's topology CSV so the gateway can tag readings and roll
meter outages up to their transformer.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from meter_gateway.config.topology import COLUMNS
from meter_gateway.simulators.profiles import Profile, stable_seed

__all__ = ["CSV_HEADER", "MeterSite", "Topology", "build_topology", "write_csv"]

# The gateway's topology file format, so what we write it can read.
CSV_HEADER = COLUMNS


@dataclass(frozen=True, slots=True)
class MeterSite:
    """Where a meter sits and what it measures."""

    meter_id: str
    transformer_id: str
    feeder_id: str
    customer_id: str
    phases: Literal[1, 3]
    nominal_voltage_v: float
    prosumer: bool
    profile: Profile
    concentrator_id: str | None  # None: the meter publishes over MQTT itself


@dataclass(slots=True)
class Topology:
    """Meters by id, and the reverse indexes faults need (transformer/feeder -> meters)."""

    sites: dict[str, MeterSite]
    transformers: dict[str, list[str]] = field(default_factory=dict)
    feeders: dict[str, list[str]] = field(default_factory=dict)
    concentrators: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for site in self.sites.values():
            self.transformers.setdefault(site.transformer_id, []).append(site.meter_id)
            self.feeders.setdefault(site.feeder_id, []).append(site.meter_id)
            if site.concentrator_id is not None:
                self.concentrators.setdefault(site.concentrator_id, []).append(site.meter_id)


def build_topology(
    meters: int,
    *,
    seed: int,
    meters_per_transformer: int = 25,
    transformers_per_feeder: int = 4,
    concentrators: int = 0,
    commercial_share: float = 0.1,
    prosumer_share: float = 0.15,
    three_phase_share: float = 0.3,
    nominal_voltage_v: float = 230.0,
) -> Topology:
    """Meters ``m-000001``... in blocks of ``meters_per_transformer`` per transformer.

    A concentrator sits at a transformer (as data concentrator units do), so concentrator
    ``dc-0i`` reads every meter of transformer ``tx-00i``; the meters of other transformers
    publish directly.
    """
    if meters < 1:
        raise ValueError(f"meters must be >= 1 (got {meters})")
    if meters_per_transformer < 1 or transformers_per_feeder < 1:
        raise ValueError("meters_per_transformer and transformers_per_feeder must be >= 1")
    n_tx = -(-meters // meters_per_transformer)
    if concentrators > n_tx:
        raise ValueError(
            f"{concentrators} concentrators but only {n_tx} transformers: a concentrator serves "
            f"one transformer's meters ({meters_per_transformer} meters per transformer)"
        )
    rng = random.Random(stable_seed(seed, "topology"))
    sites: dict[str, MeterSite] = {}
    for i in range(meters):
        tx = i // meters_per_transformer
        commercial = rng.random() < commercial_share
        prosumer = rng.random() < prosumer_share
        three_phase = commercial or rng.random() < three_phase_share
        meter_id = f"m-{i + 1:06d}"
        sites[meter_id] = MeterSite(
            meter_id=meter_id,
            transformer_id=f"tx-{tx + 1:03d}",
            feeder_id=f"f-{tx // transformers_per_feeder + 1:02d}",
            customer_id=f"c-{i + 1:06d}",
            phases=3 if three_phase else 1,
            nominal_voltage_v=nominal_voltage_v,
            prosumer=prosumer,
            profile="commercial" if commercial else "household",
            concentrator_id=f"dc-{tx + 1:02d}" if tx < concentrators else None,
        )
    return Topology(sites)


def write_csv(topology: Topology, path: str | Path) -> None:
    """The gateway's topology CSV, with a header line."""
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(CSV_HEADER)
        for s in topology.sites.values():
            w.writerow(
                [
                    s.meter_id,
                    s.transformer_id,
                    s.feeder_id,
                    s.customer_id,
                    s.phases,
                    f"{s.nominal_voltage_v:g}",
                    "true" if s.prosumer else "false",
                ]
            )
