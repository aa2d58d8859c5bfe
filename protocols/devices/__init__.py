"""Payload formats of devices people already have: Tasmota, Shelly Gen2/3, Sparkplug B.

Each module registers its formats with `protocols.formats.register_format` on
import; `protocols.formats` imports this package, so the names are always known:

| format | topic (subscription) | what it makes |
| --- | --- | --- |
| `tasmota` | `tele/+/SENSOR` | a reading from `ENERGY`; meter id = the `+` level |
| `lwt` (built in) | `tele/+/LWT` | Tasmota's `Online` / `Offline` last will |
| `shelly` | `+/status/#` or `+/events/rpc` | a partial reading per EM1/EM1Data/EM/EMData status |
| `shelly-online` | `+/online` | Shelly's `true` / `false` last will, for every channel seen |
| `sparkplug-b` | `spBv1.0/#` | readings from mapped metrics; BIRTH/DEATH as online/offline |

Ids: a device's id (the topic level, or a notification's `src`), `<id>:<N>` of a
channel, a Sparkplug edge node and device, and `<edge>:<device>`, become meter ids, so
each follows the gateway's id rule (`formats.ID_RULE`: 1-64 characters of
A-Z a-z 0-9 . _ : -); a message whose id breaks it is rejected with a reason naming the
rule, before anything of it is kept or signalled.

Times: a reading takes the device's own time when it sends one with an offset (or
as epoch numbers); otherwise the time it arrived (`arrival_ts`), never a guess at
the device's time zone. See each module for its rules.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["arrival_ts", "clock", "is_number"]

#: The clock for arrival times (seconds since the epoch); tests replace it.
clock: Callable[[], float] = time.time


def arrival_ts() -> float:
    """Now, as epoch seconds: the time of a reading whose payload has none."""
    return clock()


# Beyond any meter's register: a larger integer is left as sent, and validation names it.
_MAX_INT = 10**15


def is_number(v: object) -> bool:
    """A JSON number the formats may do arithmetic with (sum, scale): a float, or an
    integer small enough that turning it into one cannot overflow."""
    t = type(v)
    return t is float or (t is int and -_MAX_INT < v < _MAX_INT)  # type: ignore[operator]


# Imported last: the modules use the above.
from meter_gateway.protocols.devices import shelly, sparkplug, tasmota  # noqa: E402

__all__ += ["shelly", "sparkplug", "tasmota"]
