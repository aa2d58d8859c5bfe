"""The event engine: readings, meter signals and validation flags in; events out.

One `MeterState` per meter that ever reported; the detectors (outage, power quality,
meter alarms) read and update it. Silence is found without scanning the fleet: each
meter has at most one live entry in the queue of due times; `tick` takes only what is
due and the check decides (or queues the meter again at its next due time). Readings do
not touch the queue (the check recomputes from when the meter was last heard). The
queue is a heap of distinct due times, each with its meters: a fleet reading at the same
moment comes due at the same moment, so a check costs a list append, not a heap push
of its own.

Times: a reading's own `ts_ns` is when things happened (event starts, voltage
durations, spacing); `now_ns` is the gateway's clock (arrivals, silence, detection).
In replay the caller passes the readings' watermark as the clock.

One module of about 690 lines, on purpose: it is compiled with mypyc, and the
per-reading path (`Engine.reading`) is inlined here so that the compiled build makes
direct C calls within one module instead of generic calls across modules.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypedDict

import orjson

from meter_gateway.config.schema import EventsConfig
from meter_gateway.config.topology import MeterPlace
from meter_gateway.gateway.events.detectors import POINT_TYPES, SEVERITY, Book, signal_ts_ns
from meter_gateway.gateway.events.detectors.consumption import Consumption
from meter_gateway.gateway.events.detectors.meter_alarms import REVERSE_W, MeterAlarms
from meter_gateway.gateway.events.detectors.outage import DEFAULT_SPACING_S, Outage
from meter_gateway.gateway.events.detectors.power_quality import PowerQuality
from meter_gateway.gateway.events.event import Event
from meter_gateway.gateway.events.state import (
    CLOCK,
    COMMS,
    CONDITION_BITS,
    FREQUENCY,
    IMBALANCE,
    PHASE_LOSS,
    POWER,
    SAG,
    SWELL,
    Limits,
    MeterState,
    TransformerState,
)
from meter_gateway.gateway.reading import Reading
from meter_gateway.gateway.validate import Flag
from meter_gateway.protocols.formats import Signal

__all__ = ["Engine", "EngineStats"]

_NS: Final = 1_000_000_000
_SNAPSHOT_VERSION: Final = 1
# EMA weight of a new spacing sample, and how far one sample may move the estimate
# (x2 or /2): one long gap (an outage) barely moves it, a changed interval wins in a
# few readings.
_ALPHA: Final = 0.2
_OUT: Final = POWER | COMMS
_VOLTAGE_BITS: Final = PHASE_LOSS | SAG | SWELL | IMBALANCE


class EngineStats(TypedDict):
    """`Engine.stats()`: read by key by the status page and /status (a plain dict at
    run time, compiled too)."""

    meters_tracked: int
    transformers: int
    # By event type: raised and cleared since start, and open now.
    raised: dict[str, int]
    cleared: dict[str, int]
    active: dict[str, int]
    active_total: int
    # Entries in the queue of silence checks (a superseded one counts until it is due).
    queued_checks: int


class Engine:
    def __init__(
        self,
        config: EventsConfig,
        topology: Mapping[str, MeterPlace],
        *,
        emit: Callable[[Event], object],  # (what it returns is not used)
        now_ns: int,
    ) -> None:
        self._config = config
        self._topology = topology
        self._meters: dict[str, MeterState] = {}
        self._transformers = _transformers(topology)
        self._limits: dict[float, Limits] = {}
        self._book = Book(emit)
        self._outage = Outage(config, self._book, self._meters)
        self._pq = PowerQuality(config, self._book)
        self._alarms = MeterAlarms(config, self._book)
        self._consumption = Consumption(config, self._book)
        # The thresholds the hot path compares with, as the engine's own attributes (in
        # the compiled build: fields of the engine, not lookups on a detector).
        self._unbalance_max = self._pq.unbalance_max
        self._overcurrent = self._pq.overcurrent_a is not None
        self._f_nominal = self._pq.f_nominal
        self._f_tolerance = self._pq.f_tolerance
        self._drift_max_s = self._alarms.drift_max_s
        # The silence checks queued: due times (a heap, each once) and the meters due at
        # each, in the order queued (a meter may be in a list it no longer is due in:
        # skipped when its `due` says otherwise).
        self._dues: list[int] = []
        self._queued: dict[int, list[str]] = {}
        self._off_ns = self._outage.off_ns
        self._off_s: float = config.offline_after_s
        self._missed: float = config.offline_missed_intervals
        self._started_ns = now_ns
        self._now_ns = now_ns

    # -- input -------------------------------------------------------------------------------

    def reading(self, r: Reading, now_ns: int) -> None:
        """A validated, stored reading (in any order; back-filled ones too): the hot path,
        once per reading.

        The detectors' per-reading work is inlined for the common case: a healthy reading
        (voltages inside the band, frequency within tolerance, registers rising, no
        reverse flow, clock within the limit, no condition open) costs no detector call
        but the consumption detector's; anything else goes to the detector method that
        decides it, with the state it would have had. Written for the compiled build
        (see README): attributes of self and typed locals, no bound methods kept in
        locals, so that every access on the common path is native.
        """
        meter_id, ts, _, values, _ = r
        st = self._meters.get(meter_id)
        if st is None:
            st = self._track(meter_id)
        outage = self._outage
        pq = self._pq
        alarms = self._alarms
        ns = _NS
        # Arrival: the meter talks. Learn how its arrivals are spaced (a concentrator
        # delivering hourly batches is not silent between batches); a batch arrives
        # within a second and counts as one arrival.
        last = st.last_arrival
        gap_ns = now_ns - last
        if gap_ns >= ns:
            st.burst = 1
            if last:
                gap_s = gap_ns / ns
                sp = st.arrival_spacing_s
                if gap_s != sp:  # (the same spacing again leaves it as it is)
                    st.arrival_spacing_s = _learned(sp, gap_s)
        else:
            st.burst += 1
        st.last_arrival = now_ns
        if now_ns > st.last_heard:
            st.last_heard = now_ns
        open_ = st.open  # the condition bits, read again after a detector call
        was_out = open_ & _OUT  # before this reading ends a comms_loss
        if was_out or st.suspect or st.lwt_offline_ns:
            outage.arrived(st, now_ns)
            open_ = st.open
        if not st.due:
            self._schedule(st, now_ns + self._off_ns)
        prev_ts = st.last_ts
        if ts <= prev_ts:
            # Older than the meter's newest. Back-filled (arriving bunched, within a
            # second of the meter's previous arrival) or redelivered (the same ts again):
            # a sign of life, judged no further. A clock stepped back: a reading on time
            # ends a clock_drift (a corrected clock), and one alone off by more than the
            # limit may be a clock set back (MeterAlarms.set_back: the second in a row
            # with a steady offset raises clock_drift). Either way the meter's timeline
            # starts again at this reading: it is judged as the newest (prev_ts 0: no
            # spacing learned across the step).
            drift = (ts - now_ns) / ns
            if -self._drift_max_s <= drift <= self._drift_max_s:
                st.clock_n = 0
                if not open_ & CLOCK:
                    return
                alarms.clock_on_time(st, ts, now_ns)
                if ts == prev_ts:
                    return  # (the newest again: judged already)
                open_ = st.open
            elif gap_ns < ns or ts == prev_ts:
                st.clock_n = 0
                return
            elif alarms.set_back(st, ts, prev_ts, gap_ns, drift, now_ns):
                open_ = st.open
            else:
                return
            prev_ts = 0
        elif st.clock_n:
            st.clock_n = 0  # a newest reading: no run of older ones
        st.last_ts = ts
        if prev_ts:
            gap_s = (ts - prev_ts) / ns
            sp = st.ts_spacing_s
            if gap_s != sp:
                st.ts_spacing_s = _learned(sp, gap_s)
        v1 = values.get("voltage_l1_v")
        v2 = values.get("voltage_l2_v")
        v3 = values.get("voltage_l3_v")
        # Outage: only a dead L1 or an open power_outage can make it answer True.
        lim = st.limits
        if (v1 is not None and v1 < lim.zero_v) or open_ & POWER:
            powerless = outage.reading(st, ts, v1, v2, v3, now_ns)
            open_ = st.open
        else:
            powerless = False
        if not powerless:
            # Power quality: decided here when every phase is inside the band and no
            # voltage condition is open; else by PowerQuality.
            if v1 is not None:
                floor = lim.floor_v
                high = lim.high_v
                if open_ & _VOLTAGE_BITS:
                    pq.voltage(st, ts, v1, v2, v3, now_ns)
                    open_ = st.open
                elif v2 is not None and v3 is not None and st.three_phase is not False:
                    # Three phases (the topology does not say single-phase): every test
                    # below is on floats (compiled: no boxing, no generic compare).
                    if floor <= v1 <= high and floor <= v2 <= high and floor <= v3 <= high:
                        st.sag_since = st.swell_since = 0
                        b = lim.balanced_v
                        if -b < v1 - v2 < b and -b < v2 - v3 < b and -b < v1 - v3 < b:
                            st.imbalance_since = 0  # (its unbalance is below the limit)
                        else:
                            mean = (v1 + v2 + v3) / 3
                            d = v1 - mean
                            m = d if d >= 0 else -d
                            d = v2 - mean
                            if d < 0:
                                d = -d
                            if d > m:
                                m = d
                            d = v3 - mean
                            if d < 0:
                                d = -d
                            if d > m:
                                m = d
                            unbalance = m / mean
                            if unbalance > self._unbalance_max:
                                pq.imbalance(st, ts, unbalance, now_ns)
                                open_ = st.open
                            else:
                                st.imbalance_since = 0
                    else:
                        pq.voltage(st, ts, v1, v2, v3, now_ns)
                        open_ = st.open
                elif floor <= v1 <= high:
                    st.sag_since = st.swell_since = 0
                else:
                    pq.voltage(st, ts, v1, v2, v3, now_ns)
                    open_ = st.open
            if self._overcurrent:
                pq.current(st, ts, values, now_ns)
                open_ = st.open
            f = values.get("frequency_hz")
            if f is not None and (
                open_ & FREQUENCY
                or not -self._f_tolerance <= f - self._f_nominal <= self._f_tolerance
            ):
                pq.frequency(st, ts, f, now_ns)
                open_ = st.open
        imp = values.get("energy_import_kwh")
        prosumer = st.prosumer
        if imp is not None:
            if not prosumer:
                # Before the alarms take it as the meter's last register value. A
                # prosumer's import is net of its PV (the weather's, not the household's):
                # not judged.
                self._consumption.reading(st, ts, imp, was_out | open_ & _OUT, now_ns)
            # Meter alarms: register decrease (decided here only).
            last_imp = st.last_import
            st.last_import = imp
            if imp < last_imp:  # False while last is NaN (nothing to compare with)
                alarms.register_decrease(
                    st,
                    ts,
                    now_ns,
                    f"{meter_id}: energy_import_kwh went down from {last_imp!r} to {imp!r}",
                )
            elif imp > last_imp:
                st.decrease_episode = False  # rose normally again: the episode is over
        exp = values.get("energy_export_kwh")
        if not prosumer:
            power = values.get("power_w")
            if (
                st.reverse_ts
                or (exp is not None and exp > st.last_export)
                or (power is not None and power < -REVERSE_W)
            ):
                alarms.reverse(st, ts, exp, power, now_ns)
        if exp is not None:
            st.last_export = exp
        # Clock drift: a drift within the limit with no clock_drift open only moves on.
        drift = (ts - now_ns) / ns
        if st.open & CLOCK:
            alarms.clock(st, ts, prev_ts, gap_ns, now_ns)
        elif -self._drift_max_s <= drift <= self._drift_max_s:
            st.drift_prev_s = drift
        else:
            prev = st.drift_prev_s
            st.drift_prev_s = drift
            # NaN: no previous reading. Readings arriving bunched faster than stamped
            # (back-fill) are no drift: decided here, without the call.
            if abs(prev) > self._drift_max_s and not 2 * gap_ns < ts - prev_ts:
                alarms.drifted(st, ts, prev_ts, gap_ns, drift, prev, now_ns)

    def readings(self, rs: list[Reading], now_ns: int) -> None:
        """The stored readings of one input, in order: `reading` for each."""
        for r in rs:
            self.reading(r, now_ns)

    def signal(self, sig: Signal, now_ns: int) -> None:
        """A meter event (last gasp, power restored, tamper...) or its LWT status."""
        st = self._meters.get(sig.meter_id)
        if st is None:
            st = self._track(sig.meter_id)
        if sig.kind == "status":
            online = sig.value == "online"
            if online and now_ns > st.last_heard:
                st.last_heard = now_ns
            due = self._outage.status(st, online, now_ns)
            if due:
                self._schedule(st, due)
            return
        if now_ns > st.last_heard:
            st.last_heard = now_ns  # it sent something: its link works
        ts = signal_ts_ns(sig.ts, now_ns)
        value = sig.value
        if value in ("last_gasp", "power_restored"):
            self._outage.meter_event(st, value, ts, now_ns)
            # The register's next delta spans the outage: no consumption interval.
            st.imp_ts = 0
        elif value in ("tamper", "cover_open"):
            self._alarms.tamper(st, value, ts, now_ns)
        if not st.due:
            self._schedule(st, now_ns + self._off_ns)

    def flag(self, f: Flag, now_ns: int) -> None:
        """A validation finding: a register decrease is an event; a reading rejected for
        its time (too old, too far in the future) is the meter talking, and its clock
        judged (MeterAlarms.rejected). The other findings are no event."""
        kind = f.kind
        if kind == "register_decrease":
            st = self._meters.get(f.meter_id)
            if st is None:
                st = self._track(f.meter_id)
            self._alarms.register_decrease(st, f.ts_ns, now_ns, f"{f.meter_id}: {f.message}")
        elif kind == "ts_too_old" or kind == "ts_in_future":
            st = self._meters.get(f.meter_id)
            if st is None:
                st = self._track(f.meter_id)
            gap_ns = self._arrived(st, now_ns)
            if gap_ns < _NS:
                st.clock_n = 0  # bunched: a batch of old (or garbled) data, no clock
            else:
                self._alarms.rejected(st, kind, f.ts_ns, f.bound_s, gap_ns, now_ns)

    def tick(self, now_ns: int) -> None:
        """Decide on the meters whose silence check is due (only those), in the order of
        their due time, then meter id."""
        self._now_ns = now_ns
        dues = self._dues
        queued = self._queued
        meters = self._meters
        outage = self._outage
        grace = outage.grace_until
        while dues and dues[0] <= now_ns:
            due = heapq.heappop(dues)
            ids = queued.pop(due)
            if len(ids) > 1:
                ids.sort()
            for meter_id in ids:
                st = meters.get(meter_id)
                if st is None or st.due != due:
                    continue  # superseded by an earlier entry
                st.due = 0
                # The common case, a meter heard since it was queued: when it is due
                # next, decided here without the call (Outage.check would answer the same).
                nxt = self._quiet_until(st, now_ns, grace)
                if not nxt:
                    nxt = outage.check(st, now_ns)
                if nxt:
                    self._schedule(st, nxt)

    def _quiet_until(self, st: MeterState, now_ns: int, grace: int) -> int:
        """When the meter's silence check is due next, if it has nothing to decide now;
        else 0 (Outage.check decides). Outage.check's first steps for a meter with no
        last will pending and no outage or comms_loss open, in the same arithmetic
        (spacing_s, the silence limit, the overdue time)."""
        if st.lwt_offline_ns or st.open & _OUT:
            return 0
        ts_sp = st.ts_spacing_s
        arrival = st.arrival_spacing_s
        if arrival == 0.0:
            arrival = st.burst * ts_sp
        sp_s = arrival if arrival > ts_sp else ts_sp
        if not sp_s > 0:
            sp_s = DEFAULT_SPACING_S
        m = self._missed * sp_s
        limit_ns = int((m if m > self._off_s else self._off_s) * _NS)
        if st.tx is None:
            due = st.last_heard + limit_ns
        else:
            sp_ns = int(sp_s * _NS) + self._off_ns
            due = st.last_heard + (sp_ns if sp_ns < limit_ns else limit_ns)
        if due < grace:
            due = grace
        return due if now_ns < due else 0

    # -- restart -----------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """All detector state, for a file under data_dir."""
        return orjson.dumps(
            {
                "version": _SNAPSHOT_VERSION,
                "now_ns": self._now_ns,
                "meters": {m: st.dump() for m, st in self._meters.items()},
                "open": [_event_dict(ev) for ev in self._book.open.values()],
                "transformers": {
                    t: tx.dump() for t, tx in self._transformers.items() if tx.out or tx.cluster
                },
            }
        )

    def restore(self, blob: bytes, now_ns: int, *, downtime_grace: bool = True) -> None:
        """Take up a snapshot after a restart: open conditions stay open under their id.

        With downtime_grace no meter is called silent before offline_after_s from now:
        the gateway was away, not the meters.
        """
        data = orjson.loads(blob)
        if not isinstance(data, dict) or data.get("version") != _SNAPSHOT_VERSION:
            version = data.get("version") if isinstance(data, dict) else None
            raise ValueError(f"event state version {version!r} is not supported")
        try:
            self._load(data)
        except (TypeError, KeyError, AttributeError, IndexError, ValueError) as exc:
            # A damaged file: nothing of it is kept (the outbox still has every event).
            # (The compiled MeterState refuses a value of the wrong type at once.)
            self._meters.clear()
            self._book.open.clear()
            for tx in self._transformers.values():
                tx.out.clear()
                tx.cluster.clear()
            raise ValueError(f"event state is damaged ({type(exc).__name__}: {exc})") from None
        if downtime_grace:
            self._outage.grace_until = now_ns + self._off_ns
        self._now_ns = now_ns
        # Every meter is checked again from now (one heap entry each).
        first = now_ns
        for st in self._meters.values():
            st.due = first
        self._dues.clear()
        self._queued.clear()
        if self._meters:
            self._dues.append(first)
            self._queued[first] = list(self._meters)

    def _load(self, data: dict[str, Any]) -> None:
        self._meters.clear()
        self._dues.clear()
        self._queued.clear()
        self._book.open.clear()
        for meter_id, values in data["meters"].items():
            st = self._track(str(meter_id))
            st.load(values)
            st.due = 0
        for raw in data["open"]:
            ev = _event_from(raw)
            self._book.open[(ev.type, _sid(ev))] = ev
        for tid, raw in data.get("transformers", {}).items():
            tx = self._transformers.get(tid)
            if tx is not None:
                tx.load(raw)

    def reconcile(self, events: Iterable[Event]) -> None:
        """Events emitted after the snapshot (from the durable outbox): take them as done.

        A raise not in the snapshot becomes open; a clear closes its condition; a point
        event starts its episode. Applying the same events again changes nothing.
        """
        events = list(events)
        cleared = {ev.event_id for ev in events if ev.state == "cleared"}
        for ev in events:
            sid = _sid(ev)
            key = (ev.type, sid)
            meter_id = ev.subject.get("meter_id")
            st = None
            if meter_id is not None:
                st = self._meters.get(meter_id) or self._track(meter_id)
            if ev.state == "cleared":
                open_ev = self._book.open.get(key)
                if open_ev is not None and open_ev.event_id == ev.event_id:
                    del self._book.open[key]
                    if st is not None:
                        self._closed(st, ev.type)
                    elif ev.type == "transformer_outage":
                        tx = self._transformers.get(sid)
                        if tx is not None:
                            tx.cluster.clear()
                continue
            if ev.type in POINT_TYPES:
                if st is not None:
                    _point_episode(st, ev)
                continue
            if ev.event_id in cleared:
                continue  # raised and cleared since the snapshot: nothing stays open
            open_ev = self._book.open.get(key)
            if open_ev is not None and open_ev.start_ns >= ev.start_ns:
                continue  # already open (the same one, or a later one)
            self._book.open[key] = Event(
                ev.type,
                "raised",
                ev.severity,
                dict(ev.subject),
                ev.start_ns,
                ev.detected_ns,
                ev.event_id,
                dict(ev.details),
                message=ev.message,
                value=ev.value,
            )
            if st is not None:
                st.open |= CONDITION_BITS.get(ev.type, 0)
                if ev.type in ("power_outage", "comms_loss") and st.tx is not None:
                    st.suspect = False
                    st.tx.out[st.meter_id] = (ev.start_ns, ev.start_ns)
                    if self._book.start_of("transformer_outage", st.tx.transformer_id):
                        st.tx.cluster.add(st.meter_id)
                if not st.due:
                    self._schedule(st, self._now_ns + self._off_ns)
            elif ev.type == "transformer_outage":
                tx = self._transformers.get(sid)
                if tx is not None:
                    tx.cluster = set(ev.details.get("meter_ids") or [])

    def _closed(self, st: MeterState, type_: str) -> None:
        st.open &= ~CONDITION_BITS.get(type_, 0)
        tx = st.tx
        if type_ in ("power_outage", "comms_loss") and tx is not None and not st.open & _OUT:
            tx.out.pop(st.meter_id, None)
            tx.cluster.discard(st.meter_id)

    # -- status ------------------------------------------------------------------------------

    def active(self) -> list[Event]:
        """The open conditions, as their raise events, oldest first."""
        return sorted(self._book.open.values(), key=lambda ev: (ev.start_ns, ev.event_id))

    def stats(self) -> EngineStats:
        active = Counter(ev.type for ev in self._book.open.values())
        return {
            "meters_tracked": len(self._meters),
            "transformers": len(self._transformers),
            "raised": dict(self._book.raised),
            "cleared": dict(self._book.cleared),
            "active": dict(active),
            "active_total": sum(active.values()),
            "queued_checks": sum(len(ids) for ids in self._queued.values()),
        }

    # -- internals ---------------------------------------------------------------------------

    def _track(self, meter_id: str) -> MeterState:
        place = self._topology.get(meter_id)
        tx = None
        nominal = self._config.nominal_voltage_v
        if place is not None:
            if place.transformer_id:
                tx = self._transformers.get(place.transformer_id)
            if place.nominal_voltage_v:
                nominal = place.nominal_voltage_v
        limits = self._limits.get(nominal)
        if limits is None:
            limits = self._limits[nominal] = Limits(
                nominal, self._config.voltage_tolerance, self._config.voltage_unbalance_max
            )
        st = self._meters[meter_id] = MeterState(meter_id, place, tx, limits)
        return st

    def _arrived(self, st: MeterState, now_ns: int) -> int:
        """Something of the meter arrived that is not a stored reading (a reading
        rejected for its time): the arrival bookkeeping `reading` does inline (spacing,
        bursts, last heard, the end of a comms_loss, the silence check). Returns the
        gap since its previous arrival, ns."""
        last = st.last_arrival
        gap_ns = now_ns - last
        if gap_ns >= _NS:
            st.burst = 1
            if last:
                gap_s = gap_ns / _NS
                sp = st.arrival_spacing_s
                if gap_s != sp:
                    st.arrival_spacing_s = _learned(sp, gap_s)
        else:
            st.burst += 1
        st.last_arrival = now_ns
        if now_ns > st.last_heard:
            st.last_heard = now_ns
        if st.open & _OUT or st.suspect or st.lwt_offline_ns:
            self._outage.arrived(st, now_ns)
        if not st.due:
            self._schedule(st, now_ns + self._off_ns)
        return gap_ns

    def _schedule(self, st: MeterState, at: int) -> None:
        """Queue the meter's check for `at`, unless one is queued earlier already."""
        if st.due and st.due <= at:
            return
        st.due = at
        ids = self._queued.get(at)
        if ids is None:
            self._queued[at] = [st.meter_id]
            heapq.heappush(self._dues, at)
        else:
            ids.append(st.meter_id)


def _learned(sp: float, gap_s: float) -> float:
    """A spacing estimate `sp` (0.0: none yet) after one more gap: an EMA of the gap
    clamped to [sp / 2, 2 sp], so one long gap (an outage) barely moves it."""
    if not sp:
        return gap_s
    # sp + alpha * (max(0.5 * sp, min(gap_s, 2 * sp)) - sp), without calls
    x = 2 * sp
    if not x < gap_s:
        x = gap_s
    low = 0.5 * sp
    if not x > low:
        x = low
    return sp + _ALPHA * (x - sp)


def _transformers(topology: Mapping[str, MeterPlace]) -> dict[str, TransformerState]:
    members: dict[str, list[str]] = {}
    feeders: dict[str, str | None] = {}
    for place in topology.values():
        if place.transformer_id:
            members.setdefault(place.transformer_id, []).append(place.meter_id)
            feeders.setdefault(place.transformer_id, place.feeder_id)
    return {t: TransformerState(t, feeders[t], tuple(ms)) for t, ms in members.items()}


def _sid(ev: Event) -> str:
    return ev.subject.get("meter_id") or ev.subject.get("transformer_id") or ""


def _point_episode(st: MeterState, ev: Event) -> None:
    """A point event already sent: its episode is under way (no second one)."""
    if ev.type == "register_decrease":
        st.decrease_episode = True
    elif ev.type == "reverse_energy":
        st.reverse_ts = max(st.reverse_ts, ev.start_ns)
        st.reverse_clean = 0
    elif ev.type == "tamper":
        st.tamper_ts = max(st.tamper_ts, ev.start_ns)


def _event_dict(ev: Event) -> dict[str, Any]:
    return {
        "type": ev.type,
        "severity": ev.severity,
        "subject": ev.subject,
        "start_ns": ev.start_ns,
        "detected_ns": ev.detected_ns,
        "event_id": ev.event_id,
        "details": ev.details,
        "message": ev.message,
        "value": ev.value,
    }


def _event_from(raw: dict[str, Any]) -> Event:
    type_ = str(raw["type"])
    return Event(
        type_,
        "raised",
        str(raw.get("severity") or SEVERITY.get(type_, "minor")),
        {str(k): str(v) for k, v in raw["subject"].items()},
        int(raw["start_ns"]),
        int(raw["detected_ns"]),
        str(raw["event_id"]),
        dict(raw.get("details") or {}),
        message=str(raw.get("message") or ""),
        value=raw.get("value"),
    )
