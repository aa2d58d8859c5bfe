"""Events that utility systems subscribe to: raised once, cleared once, one id each.

The gateway's own condition (`storage_backpressure`, `Condition`) and the meter
detectors (`Engine`: outages, power quality, meter alarms) share one event model.
`Engine` is imported on first use: the engine's compiled modules (see `compiled`)
load only once this package is initialised.
"""

from typing import Any

from meter_gateway.gateway.events import compiled
from meter_gateway.gateway.events.condition import Condition
from meter_gateway.gateway.events.event import Event, event_id, event_line

__all__ = ["Condition", "Engine", "Event", "compiled", "event_id", "event_line"]


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from meter_gateway.gateway.events.engine import Engine

        return Engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
