"""The pipeline: decoded payloads -> validation -> storage, rejections -> dead letter.

Data flows one way: source -> format -> validate -> spool -> store, with signals
and flags going to the detectors (with the rejections of a reading for its time: a
meter's wrong clock). A source hands over raw bytes and gets back a
ticket; it acknowledges the message once `durable` has reached that ticket, i.e.
once every reading of it is in the spool and every rejection of it in the
dead-letter store, both fsync'd. Tickets are issued in arrival order, so acks are
too. `paused` says the spool is full: sources stop taking input.

The rejected elements of one batch message are kept as at most `MAX_GROUPS_PER_MESSAGE`
+ 1 dead-letter records, one per reason (with the count and the indexes of its elements,
and the elements themselves), so a message of half a million bad elements costs a few
records, not half a million copies of itself. A message's raw bytes are kept at most
once (for elements that cannot be written on their own, e.g. nested too deep); its other
records name it by the `message_id` the gateway gives them.

Admission (`max_meters`): the meters of the topology file are always taken; other meter
ids are admitted as they first come, up to `max_meters` (0: no limit). Beyond it, the
readings and signals of meters not admitted yet are dead-lettered (`meter_limit`), and
every meter already admitted keeps flowing. A set lookup per reading, nothing more.

One module of about 800 lines, on purpose: it is the ingest hot path. The live path
(`_readings`) and the replay path (`handle_readings`) repeat each other's per-reading
steps, since a call per reading is what the replay speed was won by removing, and
they stay side by side so that a change to one is made to the other.
"""

from __future__ import annotations

import base64
import gc
import json
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any, Protocol, TypedDict

from meter_gateway.gateway.reading import Reading
from meter_gateway.gateway.validate import Flag, Invalid, MeterRules, Validator
from meter_gateway.protocols.formats import (
    MAX_NESTING,
    METER_ID,
    Decoded,
    PayloadFormat,
    Signal,
    id_problem,
    too_deep,
)
from meter_gateway.protocols.logs import LogLimiter
from meter_gateway.storage.deadletter import DeadLetterStore, dead_letter_record
from meter_gateway.storage.lineprotocol import ReadingEncoder

__all__ = [
    "MAX_GROUPS_PER_MESSAGE",
    "RECENT_REJECTIONS",
    "Pipeline",
    "PipelineStats",
    "Rejected",
    "Sink",
    "expand_indexes",
    "index_runs",
]

log = logging.getLogger("meter_gateway.pipeline")

RECENT_REJECTIONS = 20  # the last rejections kept for the status page
# A message this large may hold hundreds of thousands of elements: allocating their
# objects sets off the cyclic collector over the whole heap again and again (measured in
# a running gateway: a 1 MiB batch of `1`s took 9.3 s with it, 2.8 s without). Its
# objects are freed by reference counting when the message is done.
_NO_GC_BYTES = 65_536
_REASON_MAX = 500  # characters of a reason kept there (the dead-letter record has it all)

# A recent rejection: (wall clock ns, source, topic or device, reason).
Rejected = tuple[int, str, str, str]

# Distinct reasons of one message kept as records of their own; elements rejected for
# any further reason share one more record. Bounds the records (and the work) per message
# whatever the sender varies.
MAX_GROUPS_PER_MESSAGE = 16
_OTHER = "\x00other"  # the key of the shared record; no reason starts with NUL


class _Elements:
    """The rejected elements of one message that share a reason."""

    __slots__ = ("category", "deep", "indexes", "items", "what")

    def __init__(self, what: str, category: str) -> None:
        self.what = what  # the reason without its `readings[N]: ` prefix
        self.category = category
        self.indexes: list[int] = []
        self.items: list[Any] = []
        self.deep = False  # an element too deep to write on its own: keep the raw message


def index_runs(indexes: list[int]) -> list[int | list[int]]:
    """Ascending indexes, with runs of three or more as [first, last]: `[0, 524277]`
    stands for half a million elements."""
    n = len(indexes)
    if n >= 3 and indexes == list(range(indexes[0], indexes[0] + n)):
        return [[indexes[0], indexes[-1]]]
    out: list[int | list[int]] = []
    i = 0
    while i < n:
        j = i
        while j + 1 < n and indexes[j + 1] == indexes[j] + 1:
            j += 1
        if j - i >= 2:
            out.append([indexes[i], indexes[j]])
        else:
            out.extend(indexes[i : j + 1])
        i = j + 1
    return out


def expand_indexes(runs: Any, limit: int = 1 << 24) -> list[int] | None:
    """The indexes a record's `indexes` stands for; None when it is not what the gateway
    writes (a damaged or hand-edited record)."""
    if type(runs) is not list:
        return None
    out: list[int] = []
    for r in runs:
        if type(r) is int and r >= 0:
            out.append(r)
        elif type(r) is list and len(r) == 2 and all(type(x) is int for x in r):
            a, b = r
            if not 0 <= a <= b or len(out) + b - a >= limit:
                return None
            out.extend(range(a, b + 1))
        else:
            return None
    return out


def _elements_text(items: list[Any]) -> str | None:
    """The elements as one compact JSON array; None when one cannot be written as JSON.
    The standard library writes NaN as NaN (orjson would write null): the record shows
    what the meter sent."""
    try:
        return json.dumps(items, default=str, separators=(",", ":"))
    except (RecursionError, ValueError, TypeError):
        return None


class PipelineStats(TypedDict):
    """`Pipeline.stats()`: counters for metrics and the status page."""

    messages: int
    received: dict[str, int]  # by source
    spooled: dict[str, int]  # valid readings handed to the spool, by source
    rejected: dict[str, int]  # by the field at fault
    rejected_by_source: dict[str, int]  # by "source field"
    flagged: dict[str, int]  # by flag kind
    duplicates: int
    signals: dict[str, int]  # by value
    internal_errors: int
    meters_seen: int
    meters_admitted: int
    meters_refused: int
    max_meters: int


class Sink(Protocol):
    """Where encoded readings go: `add` returns the position to wait for."""

    @property
    def durable(self) -> int: ...

    def add(self, line: str) -> int: ...

    @property
    def paused(self) -> bool: ...

    async def wait_durable(self, seq: int) -> None: ...


class Durable(Protocol):
    """A store that says how far it is on disk."""

    @property
    def durable(self) -> int: ...

    async def wait_durable(self, seq: int) -> None: ...


class Pipeline:
    def __init__(
        self,
        *,
        validator: Validator,
        rules: MeterRules,
        encoder: ReadingEncoder,
        sink: Sink,
        dead_letter: DeadLetterStore,
        max_payload_bytes: int = 1_048_576,
        on_signal: Callable[[Signal, str], None] | None = None,
        on_flag: Callable[[Flag], None] | None = None,
        on_reading: Callable[[Reading], None] | None = None,
        on_readings: Callable[[list[Reading]], None] | None = None,
        clock: Callable[[], int] = time.time_ns,
        events: Durable | None = None,
        max_meters: int = 0,
        known_meters: Collection[str] = (),
        origin: str | None = None,
        store: bool = True,
    ) -> None:
        """`clock` gives "now" in epoch ns: the wall clock live; in replay, the readings'
        own watermark, so validation's age and future bounds judge recorded time.
        `events` is the event outbox: an input that raised an event (see `hold_for_event`)
        is acknowledged only once that event is durable too.
        `on_reading` gets each reading handed to storage as it goes; `on_readings` gets
        them all once the input is handled, in one list in order (the detectors: one
        call a message, however many readings it holds). `on_flag` gets the rules'
        findings, and the rejections of a reading for its time (`Invalid.clock`).
        `max_meters`: how many meters outside `known_meters` (the topology's) are admitted
        (0: any number); see the module's docstring. `origin` goes into every dead-letter
        record as its `origin` (e.g. "replay" from `meter-gateway replay`): where the input
        came from, told by the code that made the pipeline, never by the input.
        `store=False` (`replay --no-store`): `handle_readings` validates and judges readings
        and hands them to the hooks, but neither encodes them nor adds them to `sink`
        (whose lines would be thrown away)."""
        self._validator = validator
        self._rules = rules
        self._encode = encoder.encode
        self._sink = sink
        self._dead_letter = dead_letter
        self._max_payload = max_payload_bytes
        self._on_signal = on_signal
        self._on_flag = on_flag
        self._on_reading = on_reading
        self._on_readings = on_readings
        self._clock = clock
        self._events = events
        self._event_seq = 0  # outbox sequence of the last event the input being handled raised
        self.received: Counter[str] = Counter()  # readings seen, by source
        self.spooled: Counter[str] = Counter()  # readings handed to the spool, by source
        self.rejected: Counter[str] = Counter()  # by the field at fault (a metric label)
        self.rejected_by: Counter[tuple[str, str]] = Counter()  # (source, field at fault)
        self.flagged: Counter[str] = Counter()  # by flag kind
        self.signals: Counter[str] = Counter()  # meter events and status, by value
        self.messages = 0
        self.internal_errors = 0  # inputs no rule foresaw (bugs); kept in the dead-letter store
        self._ticket = 0  # dead-letter sequence number of the input being handled
        self._pos = 0  # spool position of the input being handled
        self._issued = 0  # tickets handed out
        # (ticket, spool position, dead-letter seq, outbox seq) of inputs not yet durable
        self._waiting: deque[tuple[int, int, int, int]] = deque()
        self._log = LogLimiter(log)
        self.last_seen: dict[str, int] = {}  # meter id -> when its last valid reading came (ns)
        # The last rejections, newest last, for the status page: written only when
        # something is rejected, so an accepted reading pays nothing for it.
        self.recent_rejections: deque[Rejected] = deque(maxlen=RECENT_REJECTIONS)
        # The element rejections of the message being handled, by reason.
        self._groups: dict[str, _Elements] | None = None
        self._run_id = f"{os.getpid():x}.{time.time_ns():x}"  # message ids unique across runs
        # Admission. None: no limit, and not a single lookup more per reading.
        self.max_meters = max_meters
        self._admitted: set[str] | None = set(known_meters) if max_meters > 0 else None
        self.meters_admitted = 0  # meters outside the topology admitted since start
        self.meters_refused = 0  # readings and signals refused: their meter was over the limit
        self._limit_logged = False
        self._origin = origin
        self._store = store

    @property
    def paused(self) -> bool:
        return self._sink.paused

    @property
    def duplicates(self) -> int:
        return self._rules.duplicates

    # -- durability: when may a source acknowledge? ------------------------------------------
    def _issue(self) -> int:
        self._issued += 1
        if self._pos or self._ticket or self._event_seq:
            self._waiting.append((self._issued, self._pos, self._ticket, self._event_seq))
            self._event_seq = 0
        return self._issued

    def hold_for_event(self, seq: int) -> None:
        """The input being handled raised an event kept at outbox position `seq`."""
        self._event_seq = seq

    @property
    def durable(self) -> int:
        """The last ticket whose readings and rejections (and all before it's) are on disk."""
        waiting = self._waiting
        if not waiting:
            return self._issued
        sink_at, dl_at = self._sink.durable, self._dead_letter.durable
        ev_at = self._events.durable if self._events is not None else 1 << 62
        while waiting:
            _, pos, seq, ev = waiting[0]
            if pos > sink_at or seq > dl_at or ev > ev_at:
                return waiting[0][0] - 1
            waiting.popleft()
        return self._issued

    async def wait_durable(self, ticket: int) -> None:
        """Until `durable` reaches `ticket`."""
        while self.durable < ticket:
            _, pos, seq, ev = self._waiting[0]
            if pos > self._sink.durable:
                await self._sink.wait_durable(pos)
            if seq > self._dead_letter.durable:
                await self._dead_letter.wait_durable(seq)
            if self._events is not None and ev > self._events.durable:
                await self._events.wait_durable(ev)

    def stats(self) -> PipelineStats:
        """Counters for metrics and the status page (a snapshot; safe to keep)."""
        return {
            "messages": self.messages,
            "received": dict(self.received),
            "spooled": dict(self.spooled),
            "rejected": dict(self.rejected),
            "rejected_by_source": {f"{src} {why}": n for (src, why), n in self.rejected_by.items()},
            "flagged": dict(self.flagged),
            "duplicates": self.duplicates,
            "signals": dict(self.signals),
            "internal_errors": self.internal_errors,
            "meters_seen": len(self.last_seen),
            "meters_admitted": self.meters_admitted,
            "meters_refused": self.meters_refused,
            "max_meters": self.max_meters,
        }

    # -- MQTT ------------------------------------------------------------------------------
    def handle_message(
        self, topic: str, payload: bytes, fmt: PayloadFormat, topic_id: str | None
    ) -> int:
        """One MQTT message; never raises, whatever the payload holds.

        Returns the ticket to acknowledge it at: see `durable` and `wait_durable`.
        """
        self.messages += 1
        self._ticket = self._pos = 0
        self._groups = None
        paused_gc = len(payload) > _NO_GC_BYTES and gc.isenabled()
        if paused_gc:
            gc.disable()
        try:
            try:
                self._message(topic, payload, fmt, topic_id)
            except Exception as exc:
                # No rule foresaw this: a bug. The message is kept so nothing is lost, and
                # the traceback is logged (rate-limited: a hostile stream must not flood it).
                self._internal_error(exc, topic=topic, payload=payload)
            if self._groups:
                try:
                    self._keep_elements(topic, payload)
                except Exception as exc:
                    self._groups = None
                    self._internal_error(exc, topic=topic, payload=payload)
        finally:
            if paused_gc:
                gc.enable()
        return self._issue()

    def handle_readings(
        self, items: list[dict[str, Any]], payloads: list[bytes], topic: Callable[[int], str]
    ) -> None:
        """Messages in a row that each held one reading in the `json` format (already
        parsed: `items[i]` is what the format made of `payloads[i]`, with no rejection),
        all at one reading of the clock: `handle_message` for each, in order, with the
        same counts, tickets, records and hook calls, but the per-message setup done once
        per call. For `meter-gateway replay`, whose lines between two moves of its clock
        come here together; a format's checks (a payload over `max_payload_bytes`, not an
        object, a meter_id that is not text) are the caller's to have done.
        `topic(i)` names message i; it is asked only for a rejection or an error. On
        `on_readings`: one call per message, as `handle_message` makes."""
        now_ns = self._clock()
        check = self._validator.check
        judge = self._rules.judge
        store = self._store
        add = self._sink.add
        encode = self._encode
        on_reading = self._on_reading
        on_readings = self._on_readings
        last_seen = self.last_seen
        admitted = self._admitted
        flags: list[Flag] = []
        waiting = self._waiting
        received = spooled = 0
        for i, obj in enumerate(items):
            self.messages += 1
            self._ticket = self._pos = 0
            self._groups = None
            payload = payloads[i]
            paused_gc = len(payload) > _NO_GC_BYTES and gc.isenabled()
            if paused_gc:
                gc.disable()
            try:
                # The steps and their order are _readings' for a message of one reading,
                # so that a hook that fails leaves the same counts behind.
                r: Reading | None = None
                clock: Flag | None = None
                try:
                    r = check(obj, "mqtt", now_ns)
                    if admitted is not None and r.meter_id not in admitted:
                        refused = self._admit(r.meter_id)
                        if refused:
                            self.meters_refused += 1
                            raise Invalid(refused, field="meter_limit", kind="limit")
                    last_seen[r.meter_id] = now_ns
                    r = judge(r, flags)
                    if r is not None and store:
                        self._pos = add(encode(r))
                except Invalid as exc:
                    r = None
                    self._reject_message(topic(i), payload, str(exc), exc.field)
                    clock = exc.clock
                except Exception as exc:  # a bug, for this reading only
                    r = None
                    self._internal_error(exc, topic=topic(i), payload=payload, item=obj)
                if r is not None and on_reading is not None:
                    on_reading(r)
                received += 1
                if r is not None:
                    spooled += 1
                    if on_readings is not None:
                        on_readings([r])
                if flags:
                    self._flags(flags)
                    flags = []
                if clock is not None:
                    self._clock_rejections([clock])
            except Exception as exc:
                # As handle_message: a hook's or a rule's bug costs this message only.
                self._internal_error(exc, topic=topic(i), payload=payload)
                flags = []
            finally:
                if paused_gc:
                    gc.enable()
            # _issue(), without the call
            self._issued += 1
            if self._pos or self._ticket or self._event_seq:
                waiting.append((self._issued, self._pos, self._ticket, self._event_seq))
                self._event_seq = 0
        self.received["mqtt"] += received
        self.spooled["mqtt"] += spooled

    def _message(
        self, topic: str, payload: bytes, fmt: PayloadFormat, topic_id: str | None
    ) -> None:
        if len(payload) > self._max_payload:
            self._reject_message(
                topic,
                payload[:1024],
                f"payload of {len(payload)} bytes is over max_payload_bytes ({self._max_payload}); "
                "the first 1024 bytes are kept",
                "too_large",
            )
            return
        decoded: Decoded = fmt(payload, topic_id)
        element_rejections = 0
        reject_item = self._reject_item
        group: _Elements | None = None
        for rej in decoded.rejections:
            index = rej.index
            if index is None:
                self._reject_message(topic, payload, rej.reason, rej.field)
                continue
            element_rejections += 1
            reason = rej.reason
            # The position goes into the record on its own: the reason without it is
            # what elements rejected for the same cause share.
            if reason.startswith("readings["):
                reason = reason.partition("]: ")[2] or reason
            item = rej.item
            if group is not None and reason == group.what and type(item) not in (dict, list):
                # The common case of a hostile batch: the same reason as the element
                # before (half a million `1`s); kept without a call per element.
                group.indexes.append(index)
                group.items.append(item)
                continue
            group = reject_item(item, reason, index, rej.field)
        self.received["mqtt"] += element_rejections
        if decoded.readings:
            self._readings(decoded, topic, payload)
        if decoded.signals:
            admitted = self._admitted
            refused, why = 0, ""
            for sig in decoded.signals:
                mid = sig.meter_id
                if type(mid) is not str or not METER_ID.fullmatch(mid):
                    # Only a plugin format can hand one over: the bundled ones refuse it.
                    self._reject_message(
                        topic, payload, id_problem(mid, "signal's meter id") or "", "meter_id"
                    )
                    continue
                if admitted is not None and sig.meter_id not in admitted:
                    why = self._admit(sig.meter_id) or why
                    if sig.meter_id not in admitted:
                        refused += 1
                        continue
                self.signals[sig.value] += 1
                if self._on_signal is not None:
                    self._on_signal(sig, topic)
            if refused:
                # One record for the message, however many of its signals were refused.
                self.meters_refused += refused
                if refused > 1:
                    why += f" ({refused} signals of this message)"
                self._reject_message(topic, payload, why, "meter_limit")

    def _readings(self, decoded: Decoded, topic: str, payload: bytes) -> None:
        # handle_readings (replay) repeats these per-reading steps inline, for speed:
        # a change to them here belongs there too.
        now_ns = self._clock()
        check = self._validator.check
        judge = self._rules.judge
        add = self._sink.add
        encode = self._encode
        on_reading = self._on_reading
        batch: list[Reading] | None = [] if self._on_readings is not None else None
        flags: list[Flag] = []
        clocks: list[Flag] | None = None  # rejections for their time (Invalid.clock)
        positions = decoded.positions
        spooled = 0
        pos = 0
        last_seen = self.last_seen
        admitted = self._admitted
        items = decoded.readings
        r: Reading | None
        for i, obj in enumerate(items):
            try:
                r = check(obj, "mqtt", now_ns)
                if admitted is not None and r.meter_id not in admitted:
                    refused = self._admit(r.meter_id)
                    if refused:
                        self.meters_refused += 1
                        raise Invalid(refused, field="meter_limit", kind="limit")
                last_seen[r.meter_id] = now_ns
                r = judge(r, flags)
                if r is None:
                    continue  # exact duplicate (a QoS 1 redelivery); counted by the rules
                pos = add(encode(r))
            except Invalid as exc:
                if positions is None:
                    self._reject_message(topic, payload, str(exc), exc.field)
                else:
                    self._reject_item(obj, str(exc), positions[i], exc.field)
                if exc.clock is not None:
                    if clocks is None:
                        clocks = []
                    clocks.append(exc.clock)
                continue
            except Exception as exc:  # a bug, for this reading only: its neighbours go on
                index = positions[i] if positions is not None else None
                self._internal_error(exc, topic=topic, payload=payload, item=obj, index=index)
                continue
            spooled += 1
            if on_reading is not None:
                on_reading(r)
            if batch is not None:
                batch.append(r)
        self.received["mqtt"] += len(items)
        self.spooled["mqtt"] += spooled
        if pos:
            self._pos = pos
        if batch and self._on_readings is not None:
            self._on_readings(batch)
        if flags:
            self._flags(flags)
        if clocks:
            self._clock_rejections(clocks)

    # -- Modbus and other pollers --------------------------------------------------------------
    def handle_reading(self, obj: dict[str, Any], source: str, origin: str) -> int:
        """One reading already in canonical form (a poller's); never raises.

        Returns the ticket to wait for, as `handle_message` does.
        """
        self.received[source] += 1
        self._ticket = self._pos = 0
        now_ns = self._clock()
        try:
            r = self._validator.check(obj, source, now_ns)
            self.last_seen[r.meter_id] = now_ns
            flags: list[Flag] = []
            r2 = self._rules.judge(r, flags)
            if r2 is not None:
                self._pos = self._sink.add(self._encode(r2))
                self.spooled[source] += 1
                if self._on_reading is not None:
                    self._on_reading(r2)
                if self._on_readings is not None:
                    self._on_readings([r2])
            if flags:
                self._flags(flags)
        except Invalid as exc:
            self.reject(source=source, reason=str(exc), device=origin, item=obj, category=exc.field)
            if exc.clock is not None:
                try:
                    self._clock_rejections([exc.clock])
                except Exception as bug:  # the detectors' bug: logged, the input kept
                    self._internal_error(bug, source=source, device=origin, item=obj)
        except Exception as exc:
            self._internal_error(exc, source=source, device=origin, item=obj)
        return self._issue()

    def reject(
        self,
        *,
        source: str,
        reason: str,
        device: str | None = None,
        topic: str | None = None,
        payload: bytes | None = None,
        item: Any = None,
        category: str = "reading",
    ) -> int:
        """Keep a rejection in the dead-letter store; return its sequence number.

        `category` is the metric label (the field at fault, or the kind of failure).
        """
        self.rejected[category] += 1
        self.rejected_by[source, category] += 1
        where = device or topic or source
        self._note_rejection(source, where, reason)
        self._log.log((source, category), logging.WARNING, f"rejected from {where}: {reason}")
        self._ticket = self._keep(
            dead_letter_record(
                reason=reason, source=source, payload=payload, item=item, topic=topic, device=device
            )
        )
        return self._ticket

    def flush_logs(self, *, final: bool = False) -> None:
        """Report the rejections and flags held back by the log limiter (call each minute)."""
        self._log.flush(final=final)

    # -- helpers ------------------------------------------------------------------------------
    def _keep(self, record: dict[str, Any]) -> int:
        if self._origin is not None:
            record["origin"] = self._origin
        return self._dead_letter.add(record)

    def _note_rejection(self, source: str, where: str, reason: str) -> None:
        """Keep a rejection among the recent ones (wall clock: the page shows real time)."""
        self.recent_rejections.append((time.time_ns(), source, where, reason[:_REASON_MAX]))

    def _reject_message(self, topic: str, payload: bytes, reason: str, category: str) -> None:
        self.reject(source="mqtt", reason=reason, topic=topic, payload=payload, category=category)

    def _reject_item(self, item: Any, what: str, index: int, category: str) -> _Elements:
        """One rejected element of the message being handled; kept by `_keep_elements`.
        Returns the group it went to."""
        deep = False
        if type(item) in (dict, list) and too_deep(item):
            # Not worth walking or writing as an element: the raw message is kept.
            what, category, deep = f"nested deeper than {MAX_NESTING} levels", "nesting", True
        groups = self._groups
        if groups is None:
            groups = self._groups = {}
        g = groups.get(what)
        if g is None:
            if len(groups) < MAX_GROUPS_PER_MESSAGE:
                g = groups[what] = _Elements(what, category)
            else:
                g = groups.get(_OTHER)
                if g is None:
                    g = groups[_OTHER] = _Elements(what, category)
        g.indexes.append(index)
        g.items.append(None if deep else item)
        if deep:
            g.deep = True
        return g

    def _keep_elements(self, topic: str, payload: bytes) -> None:
        """The message's rejected elements into the dead-letter store: one record per
        reason, with its elements; the raw message at most once."""
        groups, self._groups = self._groups or {}, None
        at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        message_id = f"{self._run_id}.{self.messages}"
        raw_kept = False
        for key, g in groups.items():
            n = len(g.indexes)
            first = g.indexes[0]
            self.rejected[g.category] += n
            self.rejected_by["mqtt", g.category] += n
            reason = f"readings[{first}]: {g.what}"
            if key == _OTHER:
                reason += f" (and {n - 1} more element(s) of this message, for other reasons)"
            elif n > 1:
                reason += f" (and {n - 1} more element(s) of this message, the same reason)"
            rec: dict[str, Any] = {
                "received_at": at,
                "source": "mqtt",
                "reason": reason,
                "topic": topic,
                "index": first,
                "message_id": message_id,
            }
            text = None
            if not g.deep:
                text = _elements_text(g.items if n > 1 else g.items[0])
            if n > 1:
                rec["kind"] = "elements"
                rec["count"] = n
                rec["indexes"] = index_runs(g.indexes)
                if text is not None:
                    rec["elements"] = text  # a JSON array, in the order of `indexes`
            elif text is not None:
                rec["payload"] = text
            if text is None and not raw_kept:
                raw_kept = True
                try:
                    rec["payload"] = payload.decode("utf-8")
                except UnicodeDecodeError:
                    rec["payload_base64"] = base64.b64encode(payload).decode("ascii")
            self._note_rejection("mqtt", topic, reason)
            self._log.log(("mqtt", g.category), logging.WARNING, f"rejected from {topic}: {reason}")
            self._ticket = self._keep(rec)

    def _admit(self, meter_id: str) -> str:
        """Admit a meter not seen before, or say why not (the limit is reached)."""
        admitted = self._admitted
        assert admitted is not None
        if self.meters_admitted < self.max_meters:
            admitted.add(meter_id)
            self.meters_admitted += 1
            return ""
        if not self._limit_logged:
            self._limit_logged = True
            log.warning(
                "limits.max_meters (%d) reached: readings and signals of further meters not in "
                "the topology file are dead-lettered (reason meter_limit); meters already taken "
                "keep flowing. Add the meters to the topology file or raise the limit, then "
                "`meter-gateway dead-letter replay --reason max_meters`",
                self.max_meters,
            )
        # No id in the reason: a flood's elements share one record (their ids are in it).
        return (
            f"meter_id: a new meter beyond limits.max_meters ({self.max_meters} meters "
            "outside the topology taken since start): refused; add it to the topology file "
            "or raise the limit, then replay"
        )

    def _internal_error(
        self,
        exc: Exception,
        *,
        source: str = "mqtt",
        topic: str | None = None,
        device: str | None = None,
        payload: bytes | None = None,
        item: Any = None,
        index: int | None = None,
    ) -> None:
        self.internal_errors += 1
        where = topic or device or source
        self._log.log(
            ("bug", type(exc).__name__),
            logging.ERROR,
            f"internal error while handling a message from {where} "
            f"({type(exc).__name__}); the message is kept in the dead-letter store. "
            "This is a bug: please report it with this traceback",
            exc_info=exc,
        )
        reason = "internal error: the gateway could not handle this input (a bug, logged)"
        if index is not None:
            # An element of the message being handled: kept with the message's others.
            self._reject_item(item, reason, index, "internal_error")
            return
        try:
            self.rejected["internal_error"] += 1
            self.rejected_by[source, "internal_error"] += 1
            self._note_rejection(source, where, reason)
            self._ticket = self._keep(
                dead_letter_record(
                    reason=reason,
                    source=source,
                    payload=payload,
                    item=None if item is None or too_deep(item) else item,
                    topic=topic,
                    device=device,
                    index=index,
                )
            )
        except Exception:  # the dead-letter store itself failed: nothing more to try here
            log.exception("dead-letter: cannot keep a message from %s", where)

    def _flags(self, flags: list[Flag]) -> None:
        for f in flags:
            self.flagged[f.kind] += 1
            self._log.log(
                ("flag", f.kind), logging.WARNING, f"suspect reading: {f.meter_id}: {f.message}"
            )
            if self._on_flag is not None:
                self._on_flag(f)

    def _clock_rejections(self, clocks: list[Flag]) -> None:
        """Readings rejected for their time (too old, too far ahead) of meters whose id
        passed: to the detectors as flags (a wrong clock, and the meter talking). They
        are counted, logged and kept in the dead-letter store as rejections already."""
        if self._on_flag is not None:
            for f in clocks:
                self._on_flag(f)
