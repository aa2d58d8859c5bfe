"""The MQTT fleet simulator (``meter-gateway simulate mqtt``), one job per module:

- ``publisher``: ``MqttPublisher``, a few paho-mqtt 2 connections that carry a whole fleet
- ``runner``: ``run_fleet``, which paces a fleet by simulated time and writes the
  ground-truth log, and the ``RunStats`` it returns
- ``cli``: the command line (``register`` for ``meter-gateway simulate``, ``main``)

Last will: a per-meter MQTT last will needs a connection per meter, which this design avoids.
The simulator emulates it instead: where a scenario sets ``lwt: true`` on an ``outage`` or
``comms_dropout``, it publishes ``offline`` on ``meters/<id>/status`` when the meter dies and
``online`` when it is back, as the broker would for a real meter's will.

Names load on first use, so that building the gateway's command line (which imports
``cli``, and with it this package) does not import paho-mqtt.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meter_gateway.simulators.mqtt.cli import main, register
    from meter_gateway.simulators.mqtt.publisher import BrokerOptions, MqttPublisher, PublishError
    from meter_gateway.simulators.mqtt.runner import RunStats, run_fleet

__all__ = [
    "BrokerOptions",
    "MqttPublisher",
    "PublishError",
    "RunStats",
    "main",
    "register",
    "run_fleet",
]

_MODULE_OF = {
    "BrokerOptions": "publisher",
    "MqttPublisher": "publisher",
    "PublishError": "publisher",
    "RunStats": "runner",
    "run_fleet": "runner",
    "main": "cli",
    "register": "cli",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
