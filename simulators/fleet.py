"""A fleet of simulated meters: what each would put on the wire, in simulated-time order.

``Fleet.steps()`` generates, per reading interval, the MQTT messages of the gateway's
default topics and formats
(readings, concentrator batches, last gasp / power_restored events, status) and the
ground-truth records of the faults that started. It does no I/O and never looks at the wall
clock after construction, so the same settings and seed give the same bytes; the MQTT side
(``simulators.mqtt``) paces and publishes them.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from meter_gateway.simulators.faults import FaultInstance, malform, plan_faults
from meter_gateway.simulators.meter import Effect, MeterModel, RegisterReset, rfc3339
from meter_gateway.simulators.profiles import Variation
from meter_gateway.simulators.scenario import Scenario, fleet_settings
from meter_gateway.simulators.topology import Topology, build_topology
from meter_gateway.simulators.truth import truth_record

__all__ = ["Fleet", "Message", "Step", "default_start"]

MessageKind = Literal["reading", "batch", "event", "status"]

# Faults that only change what goes on the wire; a zero duration means "the next reading".
_WIRE_POINT = {"duplicates", "malformed"}


@dataclass(frozen=True, slots=True)
class Message:
    t: float  # simulated time at which it is sent
    topic: str
    payload: bytes
    kind: MessageKind
    qos: int = 1
    retain: bool = False


@dataclass(slots=True)
class Step:
    """Everything that happens up to and including reading time ``t``."""

    t: float
    messages: list[Message] = field(default_factory=list)
    truth: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class _Wire:
    """What a meter's active faults do to its messages."""

    down: int = 0  # active outages
    silent: int = 0  # active comms dropouts
    backfill: int = 0  # active dropouts whose readings are kept and sent when comms return
    reorder: int = 0  # active out-of-order windows
    copies: list[tuple[int, bool]] = field(default_factory=list)  # (copies, identical)
    malformed: list[str] = field(default_factory=list)
    held: list[tuple[bytes, bool]] = field(default_factory=list)  # (payload, broken JSON)
    backlog: list[tuple[bytes, bool]] = field(default_factory=list)  # kept while silent
    # (when, readings): back-fill held past the return of comms (`backfill_after`)
    deferred: list[tuple[float, list[tuple[bytes, bool]]]] = field(default_factory=list)


def default_start(interval_s: float, duration_s: float | None, now: float | None = None) -> float:
    """``now - duration`` aligned down to the interval: a fast run ends at about the wall clock,
    inside the gateway's window (not over 5 min ahead, not older than 7 days)."""
    now = time.time() if now is None else now
    return math.floor((now - (duration_s or 0.0)) / interval_s) * interval_s


class Fleet:
    """Meters, their topology and their faults. Settings come from the scenario's ``fleet``
    section, overridden by keyword arguments (``None`` values are ignored)."""

    def __init__(self, scenario: Scenario | None = None, **overrides: Any) -> None:
        self.scenario = scenario or Scenario()
        data = self.scenario.fleet.model_dump(exclude_unset=True)
        data.update({k: v for k, v in overrides.items() if v is not None})
        self.settings = s = fleet_settings(data)
        self.interval_s = float(s.interval_s)
        self.start = (
            s.start.timestamp()
            if s.start is not None
            else default_start(self.interval_s, s.duration)
        )
        self.end = None if s.duration is None else self.start + s.duration
        self.topology: Topology = build_topology(
            s.meters,
            seed=s.seed,
            meters_per_transformer=s.meters_per_transformer,
            transformers_per_feeder=s.transformers_per_feeder,
            concentrators=s.concentrators,
            commercial_share=s.commercial_share,
            prosumer_share=s.prosumer_share,
            three_phase_share=s.three_phase_share,
            nominal_voltage_v=s.nominal_voltage_v,
        )
        self.meters: dict[str, MeterModel] = {
            m.meter_id: MeterModel(
                m.meter_id,
                seed=s.seed,
                profile=m.profile,
                phases=m.phases,
                nominal_voltage_v=m.nominal_voltage_v,
                prosumer=m.prosumer,
                start=self.start,
            )
            for m in self.topology.sites.values()
        }
        # Planned now so that a scenario naming unknown meters fails before anything runs.
        self._plan = plan_faults(
            list(self.scenario.faults),
            self.topology,
            self.scenario.groups,
            seed=s.seed,
            start=self.start,
            end=self.end,
        )
        self._wire = {m: _Wire() for m in self.meters}
        self._actions: list[tuple[float, int, int, str, FaultInstance]] = []
        self._seq = itertools.count()
        self._n_faults = 0
        self._started = False

    # -- the clock ----------------------------------------------------------------------

    def _tick_at_or_after(self, t: float) -> float:
        k = math.ceil((t - self.start) / self.interval_s - 1e-9)
        return self.start + max(k, 0) * self.interval_s

    def steps(self) -> Iterator[Step]:
        """One ``Step`` per reading interval, from start to start + duration (or forever).

        A fleet runs once (its meters and faults move on); build another to run again.
        """
        if self._started:
            raise RuntimeError("this fleet has already run; build a new Fleet to run again")
        self._started = True
        plan = iter(self._plan)
        pending = next(plan, None)
        for k in itertools.count():
            t = self.start + k * self.interval_s
            if self.end is not None and t > self.end + 1e-6:
                break
            step = Step(t)
            if k == 0 and self.settings.status_online:
                step.messages += [
                    Message(t, f"meters/{m}/status", b"online", "status")
                    for m, site in self.topology.sites.items()
                    if site.concentrator_id is None
                ]
            while pending is not None and pending.start <= t:
                self._schedule(pending)
                pending = next(plan, None)
            self._run_actions(step, t, phase=0)
            self._readings(step, t, final=self.end is not None and t + self.interval_s > self.end)
            self._run_actions(step, t, phase=1)
            yield step

    # -- faults -------------------------------------------------------------------------

    def _schedule(self, f: FaultInstance) -> None:
        """Put the fault's physics into the meter models and its wire actions on the queue."""
        start, end = f.start, f.end
        end_phase = 0
        if f.type in _WIRE_POINT and end == start:
            # A point wire fault hits exactly the next reading; it ends after that reading.
            start = end = self._tick_at_or_after(start)
            end_phase = 1
            f = dataclasses.replace(f, start=start, end=end)
        elif f.type == "register_reset":
            end, end_phase = start, 1
            f = dataclasses.replace(f, end=end)
        effect = _effect(f)
        for m in f.meters:
            if effect is not None:
                self.meters[m].add_effect(effect)
            if f.type == "register_reset":
                p = f.params
                self.meters[m].add_reset(RegisterReset(start, p["import_kwh"], p["export_kwh"]))
        heapq.heappush(self._actions, (start, 0, next(self._seq), "start", f))
        if end is not None:
            heapq.heappush(self._actions, (end, end_phase, next(self._seq), "end", f))

    def _run_actions(self, step: Step, t: float, phase: int) -> None:
        while self._actions and self._actions[0][:2] <= (t, phase):
            at, _, _seq, what, f = heapq.heappop(self._actions)
            if what == "start":
                self._n_faults += 1
                step.truth.append(truth_record(f"F{self._n_faults:06d}", f))
                self._start(step, at, f)
            else:
                self._end(step, at, f)

    def _event(self, t: float, meter_id: str, kind: str) -> Message:
        ts = rfc3339(t + self.meters[meter_id].clock_offset_s(t))
        payload = orjson.dumps({"ts": ts, "type": kind, "meter_id": meter_id})
        return Message(t, f"meters/{meter_id}/event", payload, "event")

    def _status(self, t: float, meter_id: str, online: bool) -> Message | None:
        if self.topology.sites[meter_id].concentrator_id is not None:
            return None  # no MQTT connection of its own, so no last will either
        return Message(
            t, f"meters/{meter_id}/status", b"online" if online else b"offline", "status"
        )

    def _start(self, step: Step, t: float, f: FaultInstance) -> None:
        p = f.params
        for m in f.meters:
            w = self._wire[m]
            if f.type == "outage":
                w.down += 1
                if w.down == 1 and p["last_gasp"]:
                    step.messages.append(self._event(t, m, "last_gasp"))
                if w.down == 1 and p["lwt"] and (msg := self._status(t, m, False)):
                    step.messages.append(msg)
            elif f.type == "comms_dropout":
                w.silent += 1
                w.backfill += p["backfill"]
                if w.silent == 1 and p["lwt"] and (msg := self._status(t, m, False)):
                    step.messages.append(msg)
            elif f.type == "theft" and p["event"]:
                step.messages.append(self._event(t, m, p["event"]))
            elif f.type == "duplicates":
                w.copies.append((p["copies"], p["identical"]))
            elif f.type == "malformed":
                w.malformed.append(p["kind"])
            elif f.type == "out_of_order":
                w.reorder += 1

    def _end(self, step: Step, t: float, f: FaultInstance) -> None:
        p = f.params
        for m in f.meters:
            w = self._wire[m]
            if f.type == "outage":
                w.down -= 1
                if w.down == 0:
                    step.messages.append(self._event(t, m, "power_restored"))
                    if p["lwt"] and (msg := self._status(t, m, True)):
                        step.messages.append(msg)
            elif f.type == "comms_dropout":
                w.silent -= 1
                w.backfill -= p["backfill"]
                if p["backfill"] and p.get("backfill_after") and w.backlog:
                    w.deferred.append((t + p["backfill_after"], list(w.backlog)))
                    w.backlog.clear()
                if w.silent == 0 and p["lwt"] and (msg := self._status(t, m, True)):
                    step.messages.append(msg)
            elif f.type == "duplicates":
                w.copies.remove((p["copies"], p["identical"]))
            elif f.type == "malformed":
                w.malformed.remove(p["kind"])
            elif f.type == "out_of_order":
                w.reorder -= 1

    # -- readings -----------------------------------------------------------------------

    def _readings(self, step: Step, t: float, *, final: bool) -> None:
        batches: dict[str, list[bytes]] = {}
        for meter_id, model in self.meters.items():
            model.advance(t)
            w = self._wire[meter_id]
            if w.down or (w.silent and not w.backfill):
                continue
            reading = model.reading()
            kind = w.malformed[-1] if w.malformed else None
            payload = malform(reading, kind) if kind else orjson.dumps(reading)
            frags = [(payload, kind == "invalid_json")]
            if w.copies:
                copies, identical = max(w.copies)
                if identical:
                    frags *= copies
                else:
                    # Same meter and ts, other values: a corrected resend, which the gateway
                    # must flag rather than drop as a duplicate.
                    frags += [(_altered(reading, i), False) for i in range(1, copies)]
            if w.silent:
                # Measured and stored in the meter (or its concentrator), sent later.
                w.backlog += frags
                continue
            out: list[tuple[bytes, bool]] = []
            while w.deferred and (w.deferred[0][0] <= t or final):
                out += w.deferred.pop(0)[1]
            if w.backlog:
                out += w.backlog  # late, oldest first, as a concentrator back-fills
                w.backlog.clear()
            if w.held and not w.reorder:
                out += reversed(w.held)  # newest first: the gateway sees them out of order
                w.held.clear()
            if w.reorder:
                w.held += frags
                if final:  # the run ends inside the window: deliver what was held
                    out += reversed(w.held)
                    w.held.clear()
            else:
                out += frags
            dc = self.topology.sites[meter_id].concentrator_id
            for raw, broken in out:
                if dc is None:
                    step.messages.append(Message(t, f"meters/{meter_id}/reading", raw, "reading"))
                elif broken:
                    # A corrupt reading would break the whole batch; the concentrator sends it
                    # alone so the truth log's "this meter's reading was malformed" stays true.
                    step.messages.append(_batch(t, dc, [raw]))
                else:
                    batches.setdefault(dc, []).append(raw)
        for dc, raws in batches.items():
            step.messages.append(_batch(t, dc, raws))

    @property
    def faults_started(self) -> int:
        return self._n_faults


def _batch(t: float, concentrator_id: str, readings: list[bytes]) -> Message:
    # Byte-for-byte what orjson would make of {"concentrator_id": ..., "readings": [...]}.
    head = orjson.dumps(concentrator_id)
    payload = b'{"concentrator_id":' + head + b',"readings":[' + b",".join(readings) + b"]}"
    return Message(t, f"concentrators/{concentrator_id}/readings", payload, "batch")


def _altered(reading: dict[str, Any], i: int) -> bytes:
    """The reading with ``i`` W more power: same meter and ts, different values."""
    power = float(reading["power_w"])
    return orjson.dumps({**reading, "power_w": round(power + i, 1)})


def _effect(f: FaultInstance) -> Effect | None:
    """The physics of a fault, as a meter-model ``Effect`` (None: wire-only or a reset)."""
    p = f.params
    end = math.inf if f.end is None else f.end
    match f.type:
        case "outage":
            return Effect(f.start, end, powered=False)
        case "consumption_spike" | "sustained_high" | "sustained_low" | "theft":
            return Effect(f.start, end, load_factor=p["factor"])
        case "zero_use":
            return Effect(f.start, end, load_factor=0.0, pv_factor=0.0)
        case "holiday":
            return Effect(f.start, end, holiday=True)
        case "load_variation":
            return Effect(f.start, end, variation=Variation(**p))
        case "reverse_flow":
            return Effect(f.start, end, offset_w=p["export_w"])
        case "voltage_sag" | "voltage_swell":
            return Effect(f.start, end, voltage_factor=p["factor"])
        case "phase_loss":
            return Effect(f.start, end, dead_phases=frozenset({p["phase"]}))
        case "clock_drift":
            return Effect(
                f.start, end, clock_rate=p["rate_s_per_h"] / 3600.0, clock_step_s=p["step_s"]
            )
    return None
