"""Events that utility systems subscribe to: raised once, cleared once, one id each.

Today the gateway's own condition (`storage_backpressure`); the meter detectors
(outages, power quality, consumption) build on the same event model.
"""

from meter_gateway.gateway.events.condition import Condition
from meter_gateway.gateway.events.event import Event, event_id, event_line

__all__ = ["Condition", "Event", "event_id", "event_line"]
