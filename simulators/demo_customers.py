"""The customers part of `meter-gateway demo`'s summary: who has the highest standby
load (energy-saving advice) and who is outage-sensitive (CEMIn).

The demo listens to the gateway as a utility system does: an MQTT subscriber on its
events topic. The daily figures come from the gateway's own interval store, for the
simulated day as it stands (its local days are not over when the demo ends, so none
was written to `meter_daily` yet). Both go through the same rules as
`meter-gateway report customers`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson
import paho.mqtt.client as paho

from meter_gateway.config.schema import Config
from meter_gateway.config.topology import MeterPlace
from meter_gateway.gateway.reports.customers import (
    RISK_TYPES,
    CustomerInputs,
    CustomerTags,
    DailyFigures,
    RiskEvent,
    tag_customers,
)
from meter_gateway.gateway.reports.reliability import EventPoint, Window
from meter_gateway.gateway.vee.localday import day_of
from meter_gateway.gateway.vee.service import VeeService

__all__ = ["EventListener", "customer_lines", "customer_tags"]

NS = 1_000_000_000


class EventListener:
    """A QoS 1 subscriber on `<topic_prefix>/#`, keeping every event it is sent."""

    def __init__(self, host: str, port: int, topic_prefix: str = "events") -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._topic = f"{topic_prefix}/#"
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="demo-events")
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(host, port)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError(f"could not subscribe to {self._topic} on {host}:{port}")

    def _on_connect(self, client: paho.Client, *_: Any) -> None:
        client.subscribe(self._topic, qos=1)

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        try:
            ev = orjson.loads(msg.payload)
        except orjson.JSONDecodeError:
            return
        if isinstance(ev, dict):
            with self._lock:
                self.events.append(ev)

    def close(self) -> list[dict[str, Any]]:
        self._client.loop_stop()
        self._client.disconnect()
        with self._lock:
            return list(self.events)


def _seconds(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


def customer_tags(
    config: Config,
    topology: Mapping[str, MeterPlace],
    vee: VeeService,
    events: list[dict[str, Any]],
    window: Window,
) -> CustomerTags:
    """The tags of `report customers`, from the events heard and the interval store."""
    outages: list[EventPoint] = []
    risks: list[RiskEvent] = []
    for ev in events:
        meter, eid, state = ev.get("meter_id"), ev.get("event_id"), ev.get("state")
        if not isinstance(meter, str) or not isinstance(eid, str):
            continue
        at = _seconds(ev.get("cleared_at") if state == "cleared" else ev.get("ts"))
        if at is None:
            continue
        if ev.get("type") == "power_outage":
            duration = ev.get("duration_s")
            outages.append(
                EventPoint(at, meter, str(state), eid, float(duration) if duration else None)
            )
        elif ev.get("type") in RISK_TYPES and state == "raised":
            risks.append(RiskEvent(at, meter, str(ev["type"]), eid))
    first = day_of(int(window.from_s * NS), vee.tz)
    last = day_of(int(window.to_s * NS), vee.tz)
    days = [first.fromordinal(d) for d in range(first.toordinal(), last.toordinal() + 1)]
    daily = []
    for meter_id, fig in vee.figures(days):
        place = topology.get(meter_id)
        daily.append(
            DailyFigures(
                meter_id=meter_id,
                time_s=fig.start_ns / NS,
                day=fig.day.isoformat(),
                customer_id=place.customer_id if place else None,
                energy_import_kwh=fig.energy_import_kwh,
                energy_export_kwh=fig.energy_export_kwh,
                peak_demand_kw=fig.peak_demand_kw,
                base_load_kw=fig.base_load_kw,
                night_share=fig.night_share,
                completeness=fig.completeness,
                intervals=fig.intervals,
            )
        )
    inputs = CustomerInputs(window, daily, outages, risks, read_until_s=window.to_s)
    return tag_customers(
        inputs, topology, config.customers, momentary_max_s=config.events.momentary_max_s
    )


def customer_lines(
    tags: CustomerTags, top: int = 5, kinds: Mapping[str, str] | None = None
) -> list[str]:
    """The summary's lines: the highest standby loads, the outage-sensitive customers.

    ``kinds``: customer id -> what it is (``household``, ``commercial``), when known: the
    tags do not know (the topology file has no customer class), the reader should.
    """
    kinds = kinds or {}

    def kind(customer_id: str) -> str:
        k = kinds.get(customer_id)
        return " (business)" if k == "commercial" else ""

    standby = [c for c in tags.by_base_load if c.mean_base_load_kw is not None][:top]
    lines = [
        "  highest standby load (mean base load; energy-saving advice): "
        + (
            ", ".join(
                f"{c.customer_id} {c.mean_base_load_kw:.2f} kW{kind(c.customer_id)}"
                for c in standby
            )
            if standby
            else "no daily figures"
        )
    ]
    n = tags.thresholds.outage_sensitive_min
    sensitive = tags.outage_sensitive
    lines.append(
        f"  outage-sensitive (more than {n} sustained interruptions): "
        + (
            ", ".join(f"{c.customer_id} ({c.tags['outage_sensitive']})" for c in sensitive)
            if sensitive
            else "none"
        )
    )
    counts = {t: tags.tagged(t) for t in ("high_standby", "night_heavy", "tamper_risk")}

    def count(tag: str) -> str:
        got = counts[tag]
        businesses = sum(kinds.get(c.customer_id) == "commercial" for c in got)
        of = f" ({businesses} business{'es' if businesses > 1 else ''})" if businesses else ""
        return f"{tag} {len(got)}{of}"

    lines.append(
        "  customer tags: " + ", ".join(count(t) for t, got in counts.items() if got)
        if any(counts.values())
        else "  customer tags: none besides those"
    )
    return lines
