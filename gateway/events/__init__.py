"""Events that utility systems subscribe to: raised once, cleared once, one id each.

The gateway's own condition (`storage_backpressure`, `Condition`) and the meter
detectors (`Engine`: outages, power quality, meter alarms) share one event model.
"""

from meter_gateway.gateway.events.condition import Condition
from meter_gateway.gateway.events.engine import Engine
from meter_gateway.gateway.events.event import Event, event_id, event_line

__all__ = ["Condition", "Engine", "Event", "event_id", "event_line"]
