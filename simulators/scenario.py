"""Scenarios: a fleet and the faults to inject, from a hand-written YAML file or from Python.

    fleet: {meters: 50, interval_s: 15m, seed: 7, concentrators: 1}
    groups:
      street: [m-000003, m-000004]
    faults:
      - {type: outage, transformer: tx-002, at: 2h, duration: 40m}
      - {type: consumption_spike, group: street, rate_per_day: 0.5, factor: 6}

Validated like the gateway's configuration: an unknown key, a wrong type or an impossible
value is an error naming the key path (``faults[1].factr: unknown key``) and the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from meter_gateway.config.loader import ConfigError
from meter_gateway.simulators.faults import FAULT_TYPES, Duration, FaultSpec

__all__ = [
    "FleetSettings",
    "Scenario",
    "ScenarioError",
    "fleet_settings",
    "load_scenario",
    "parse_scenario",
]


class FleetSettings(BaseModel):
    """The fleet a scenario runs on; command-line options override these."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    meters: int = Field(10, ge=1, le=1_000_000)
    interval_s: Duration = Field(900.0, gt=0)
    seed: int = 0
    concentrators: int = Field(0, ge=0)
    meters_per_transformer: int = Field(25, ge=1)
    transformers_per_feeder: int = Field(4, ge=1)
    commercial_share: float = Field(0.1, ge=0.0, le=1.0)
    prosumer_share: float = Field(0.15, ge=0.0, le=1.0)
    three_phase_share: float = Field(0.3, ge=0.0, le=1.0)
    nominal_voltage_v: float = Field(230.0, gt=0.0)
    start: AwareDatetime | None = Field(
        None, description="first reading; default: now - duration, aligned to the interval"
    )
    duration: Duration | None = Field(None, description="simulated seconds; None: run forever")
    status_online: bool = Field(True, description="publish `online` for direct meters at start")


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    description: str | None = None
    fleet: FleetSettings = FleetSettings()
    groups: dict[str, list[str]] = Field(default_factory=dict)
    faults: list[FaultSpec] = Field(default_factory=list)


class ScenarioError(ConfigError):
    """A scenario cannot be used; ``errors`` lists every problem, each with its key path."""


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in FAULT_TYPES and i > 0 and isinstance(loc[i - 1], int):
            continue  # pydantic names the union member it tried; the reader wrote no such key
        elif part.startswith("function-"):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "union_tag_not_found":
        return f"`type` is missing (one of {', '.join(FAULT_TYPES)})"
    if err["type"] == "union_tag_invalid":
        return f"unknown fault type {err['input'].get('type')!r} (one of {', '.join(FAULT_TYPES)})"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def parse_scenario(data: Any, source: str = "<scenario>") -> Scenario:
    """Validate already-parsed YAML/JSON data; raises ``ScenarioError``."""
    if data is None:
        data = {}
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        errors = [f"{_loc(e['loc'])}: {_message(e)}" for e in exc.errors()]
        raise ScenarioError(source, errors) from None


def fleet_settings(data: dict[str, Any], source: str = "fleet settings") -> FleetSettings:
    """Validate fleet settings (a scenario's ``fleet:`` merged with overrides)."""
    try:
        return FleetSettings.model_validate(data)
    except ValidationError as exc:
        errors = [f"fleet.{_loc(e['loc'])}: {_message(e)}" for e in exc.errors()]
        raise ScenarioError(source, errors) from None


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a YAML scenario file; raises ``ScenarioError`` naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(str(path), [f"cannot read: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(str(path), [f"not valid YAML: {exc}"]) from None
    return parse_scenario(data, str(path))
