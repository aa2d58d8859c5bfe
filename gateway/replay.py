"""`meter-gateway replay`: recorded traffic through the same validation, storage and detectors.

Input: JSON Lines files (`.gz` accepted), read in arrival order, one record a line:

- a reading in the `json` format, naming its meter: `{"meter_id", "ts", "energy_import_kwh",
  "voltage_v": [...] or a number, ...}`;
- a meter event: `{"meter_id", "ts", "type": "last_gasp"}` (or power_restored, tamper,
  cover_open), checked by the `meter-event` format;
- a status line: `{"meter_id", "ts", "status": "offline"}` (or "online"), what a meter's
  MQTT last will would have said.

Readings go through the live pipeline (`Pipeline`: the format's checks, the `Validator`, the
meter rules) and are stored like live ones; bad lines go to the dead-letter store with the
reason, the file name and the line number as their topic (`replay:FILE:LINE`). Events from the
detectors go to `--events-out` (the JSON of the MQTT events, one a line) and to the
`meter_event` measurement. Nothing is published: no MQTT, no webhook (replayed history must
not page anyone). `--no-store` writes nothing to the database.

The clock is the recording's own, so history from any date replays:

- a line may carry `"_at"` (epoch seconds, a number), the time the gateway would have
  received it (the simulator writes it). When present it is the clock;
- otherwise the clock is the watermark: the latest `ts` of a reading or event seen so far,
  this line's included. A `ts` more than `validation.max_age_s` ahead of the watermark does
  not move it (it is rejected as in the future): one meter with a wild clock cannot make
  the rest of the file "too old".

Validation's age and future bounds are judged against that clock, and the detectors run on
it: `tick` each time it advances by a second or more, never past the last line's time.

Bounds, so that no line can end the run or exhaust memory: a line whose `_at` is not epoch
seconds up to `localday.MAX_NS` (9999-12-01), or whose `ts` is later than that, is
rejected with the reason (the local days of such times cannot be computed); a line longer
than `mqtt.max_payload_bytes` (what live ingest takes) is skipped as it is read, never
held whole, and kept in the dead-letter store with its first bytes and its length.

One module of about 740 lines: the recording's clock (`_at`, the watermark), its
batching into the pipeline and the detectors' ticks on that clock depend on each
other line by line; the command line around it is `replay_cli.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Protocol, final

import orjson

from meter_gateway.config.schema import Config
from meter_gateway.config.topology import MeterPlace, load_topology
from meter_gateway.gateway.events.event import Event, event_line
from meter_gateway.gateway.pipeline import Pipeline
from meter_gateway.gateway.reading import Reading
from meter_gateway.gateway.validate import Flag, MeterRules, Validator, format_ts
from meter_gateway.gateway.vee.localday import MAX_NS
from meter_gateway.gateway.vee.service import VeeService
from meter_gateway.protocols.formats import (
    Decoded,
    Rejection,
    Signal,
    id_problem,
    json_reading,
    last_will,
    meter_event,
    short_repr,
)
from meter_gateway.storage.deadletter import DeadLetterStore, dead_letter_record
from meter_gateway.storage.influxdb.factory import make_client, make_writer
from meter_gateway.storage.influxdb.sink import DirectSink
from meter_gateway.storage.influxdb.writer import BatchWriter
from meter_gateway.storage.lineprotocol import PRECISION_DIVISOR, ReadingEncoder

__all__ = ["EngineLike", "LongLine", "Replay", "ReplaySummary", "open_lines"]

log = logging.getLogger("meter_gateway.replay")

NS = 1_000_000_000
CHUNK_BYTES = 4 << 20  # read and decompress in big chunks: per-read overhead stays small
MAX_LINE_BYTES = 1 << 20  # open_lines' default; a replay uses mqtt.max_payload_bytes
LONG_LINE_HEAD = 1024  # bytes of a too-long line kept in its dead-letter record
_EPOCH_S_MAX = 253_402_300_799  # end of year 9999: validation's bound for epoch seconds
_LAST = format_ts(MAX_NS)
_UNSEEN: Any = object()  # not in the ts cache (which holds None for a ts it cannot use)


class EngineLike(Protocol):
    """What replay needs of the detectors (`gateway.events.engine.Engine`)."""

    def reading(self, r: Reading, now_ns: int) -> None: ...
    def signal(self, sig: Signal, now_ns: int) -> None: ...
    def flag(self, f: Flag, now_ns: int) -> None: ...
    def tick(self, now_ns: int) -> None: ...
    def active(self) -> list[Event]: ...


# Engine(config, topology, *, emit, now_ns): the Engine class itself fits.
EngineFactory = Callable[..., EngineLike]


def _default_engine() -> tuple[EngineFactory | None, str]:
    try:
        from meter_gateway.gateway.events.engine import Engine
    except ImportError as exc:
        return None, f"the detectors cannot be loaded ({exc}); replaying readings only"
    return Engine, ""


# -- sinks: where readings go --------------------------------------------------------------


class _NullEncoder:
    """`--no-store`: readings are validated and judged, but never turned into lines."""

    @staticmethod
    def encode(r: Reading) -> str:
        return ""


class _DeadLetter(DeadLetterStore):
    """The live dead-letter store, never published, keeping a few reasons for the summary."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, publish=None)
        self.examples: list[str] = []

    def add(self, record: dict[str, Any]) -> int:
        if len(self.examples) < 5:
            self.examples.append(f"{record.get('topic', '?')}: {record['reason']}")
        return super().add(record)


# -- the summary ---------------------------------------------------------------------------


@dataclass(slots=True)
class ReplaySummary:
    """What a replay did; `text()` is what the command prints at the end."""

    files: list[str] = field(default_factory=list)
    lines: int = 0
    readings: int = 0  # reading records seen
    accepted: int = 0  # readings that passed validation (stored unless --no-store)
    stored: bool = True
    rejected: Counter[str] = field(default_factory=Counter)  # by the field at fault
    reasons: list[str] = field(default_factory=list)  # the first few, with file:line
    duplicates: int = 0
    too_long: int = 0  # lines over the length limit, skipped unread
    flagged: Counter[str] = field(default_factory=Counter)
    signals: Counter[str] = field(default_factory=Counter)
    events: Counter[tuple[str, str]] = field(default_factory=Counter)  # (type, state)
    still_raised: int = 0
    detectors: str = "on"
    first_ns: int = 0
    watermark_ns: int = 0
    elapsed_s: float = 0.0
    daily: dict[str, float] = field(default_factory=dict)  # VEE counts; empty when off

    @property
    def rate(self) -> float:
        return self.readings / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def text(self) -> str:
        out = [
            f"replay: {self.lines:,} lines from {len(self.files)} file(s) in "
            f"{self.elapsed_s:.1f} s ({self.rate:,.0f} readings/s)",
            f"  time: {format_ts(self.first_ns)} .. {format_ts(self.watermark_ns)}"
            if self.first_ns
            else "  time: no usable timestamp",
            f"  readings: {self.readings:,}, "
            + (
                f"stored {self.accepted:,}"
                if self.stored
                else f"accepted {self.accepted:,} (not stored: --no-store)"
            )
            + f", duplicates dropped {self.duplicates:,}",
        ]
        total = sum(self.rejected.values())
        top = ", ".join(f"{k} {n:,}" for k, n in self.rejected.most_common(6))
        out.append(f"  rejected: {total:,}" + (f" (by field: {top})" if total else ""))
        out += [f"    e.g. {r}" for r in self.reasons[:3]]
        if self.too_long:
            out.append(
                f"  lines too long: {self.too_long:,} (over mqtt.max_payload_bytes; skipped, "
                "their first bytes kept in the dead-letter store)"
            )
        if self.flagged:
            out.append("  suspect: " + ", ".join(f"{k} {n:,}" for k, n in self.flagged.items()))
        if self.signals:
            out.append(
                "  meter signals: "
                + ", ".join(f"{k} {n:,}" for k, n in sorted(self.signals.items()))
            )
        if self.detectors != "on":
            out.append(f"  detectors: {self.detectors}")
        else:
            by_type: dict[str, Counter[str]] = {}
            for (type_, state), n in self.events.items():
                by_type.setdefault(type_, Counter())[state] += n
            out.append(f"  events: {sum(self.events.values()):,}")
            for type_ in sorted(by_type):
                states = ", ".join(f"{s} {n:,}" for s, n in sorted(by_type[type_].items()))
                out.append(f"    {type_}: {states}")
            out.append(f"  still raised at the end: {self.still_raised:,}")
        if self.daily:
            d = self.daily
            out.append(
                f"  daily: {d['meter_days']:,.0f} meter-days computed "
                f"({d['days_computed']:,.0f} day computations), "
                f"{d['estimates_written']:,.0f} estimates written, "
                f"{d['estimates_replaced']:,.0f} replaced by late actuals"
            )
        return "\n".join(out)


# -- reading the files ---------------------------------------------------------------------


@final  # so that `type(line) is LongLine`, the fast test, narrows for the type checker
@dataclass(slots=True)
class LongLine:
    """A line over the length limit, in place of its bytes: its start and its length."""

    head: bytes
    size: int


def open_lines(
    path: Path, chunk_bytes: int = CHUNK_BYTES, *, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[list[bytes | LongLine]]:
    """The file's lines, a big chunk at a time (`.gz` decompressed); no trailing newline.

    A line longer than `max_line_bytes` comes as a `LongLine`: it is skipped as it is read,
    so memory stays within about `max_line_bytes + chunk_bytes` whatever the file holds.
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        rest = b""
        long: LongLine | None = None  # a line being skipped to its end
        while True:
            chunk = f.read(chunk_bytes)
            if not chunk:
                break
            out: list[bytes | LongLine] = []
            if long is not None:
                nl = chunk.find(b"\n")
                end = len(chunk) if nl < 0 else nl
                if len(long.head) < LONG_LINE_HEAD:
                    long.head += chunk[: min(end, LONG_LINE_HEAD - len(long.head))]
                long.size += end
                if nl < 0:
                    continue
                out.append(long)
                long = None
                chunk = chunk[nl + 1 :]
            lines: list[bytes] = (rest + chunk).split(b"\n")
            rest = lines.pop()
            if len(rest) > max_line_bytes:
                long = LongLine(rest[:LONG_LINE_HEAD], len(rest))
                rest = b""
            if any(len(line) > max_line_bytes for line in lines):
                out.extend(
                    LongLine(x[:LONG_LINE_HEAD], len(x)) if len(x) > max_line_bytes else x
                    for x in lines
                )
            elif out:
                out.extend(lines)
            else:
                out = lines  # type: ignore[assignment]
            if out:
                yield out
        if long is not None:
            yield [long]
        elif rest:
            yield [rest]


def _seconds_ns(value: Any) -> int | None:
    """Epoch seconds in ns; None when they are not a usable time."""
    t = type(value)
    if (t is float or t is int) and 0 <= value <= _EPOCH_S_MAX:
        return int(value * NS)
    return None


# -- the replay ----------------------------------------------------------------------------


class Replay:
    """Feed recorded lines through a live-like pipeline on the recording's clock.

    `await run(files)` once; `summary` holds the counts. `engine_factory` builds the
    detectors as `factory(config.events, topology, emit=..., now_ns=...)` (default: the
    gateway's `Engine`); `events_out` receives each event's JSON line.
    """

    def __init__(
        self,
        config: Config,
        *,
        store: bool = True,
        events_out: IO[bytes] | None = None,
        engine_factory: EngineFactory | None = None,
        topology: Mapping[str, MeterPlace] | None = None,
        progress: Callable[[str], None] | None = None,
        progress_every_s: float = 5.0,
        client: Any = None,
    ) -> None:
        """`client` replaces the database client built from `config.storage` (tests)."""
        self.config = config
        self.store = store
        self._events_out = events_out
        self._progress = progress
        self._progress_every = progress_every_s
        if topology is None:
            topology = load_topology(config.topology.file) if config.topology.file else {}
        self.topology = topology
        self.summary = ReplaySummary(stored=store)
        self._gateway_id = config.gateway.id
        self._precision = PRECISION_DIVISOR[config.storage.precision]
        self._max_jump_ns = int(config.validation.max_age_s * NS)
        self._max_line = config.mqtt.max_payload_bytes
        if not config.events.enabled:
            self._factory, self.summary.detectors = None, "off (events.enabled is false)"
        elif engine_factory is not None:
            self._factory = engine_factory
        else:
            self._factory, why = _default_engine()
            if why:
                self.summary.detectors = why
        self.engine: EngineLike | None = None
        self.dead_letter = _DeadLetter(config.gateway.data_dir)
        self.writer: BatchWriter | None = None
        self.client: Any = None
        encoder: Any
        if store:
            st = config.storage
            self.client = client if client is not None else make_client(st)
            self.writer = make_writer(self.client, st, on_bad_line=self._bad_line)
            encoder = ReadingEncoder(st.precision, topology)
        else:
            encoder = _NullEncoder()
        # Straight into the database writer, no spool: a replay can simply be run again,
        # so the spool's fsyncs would buy nothing. Backpressure: the replay waits while
        # the writer is full. With --no-store, lines go nowhere.
        self.sink = DirectSink(self.writer)
        # VEE on the recording's clock, its interval store in a folder of its own: a
        # replay must not touch the live gateway's days. Only when storing: its
        # estimates and daily figures go nowhere else.
        self.vee: VeeService | None = None
        self._vee_dir: tempfile.TemporaryDirectory[str] | None = None
        if store and (config.estimation.enabled or config.daily.enabled):
            self._vee_dir = tempfile.TemporaryDirectory(prefix="meter-gateway-replay-")
            self.vee = VeeService(
                config,
                topology,
                folder=Path(self._vee_dir.name),
                add_line=self.sink.add,
                prefix=encoder.prefix,
                precision_divisor=self._precision,
            )
        self.pipeline = Pipeline(
            validator=Validator(config.validation),
            rules=MeterRules(config.validation.duplicate_window),
            encoder=encoder,
            sink=self.sink,
            dead_letter=self.dead_letter,
            max_payload_bytes=config.mqtt.max_payload_bytes,
            on_signal=self._on_signal,
            on_flag=self._on_flag,
            on_reading=self._on_reading,
            clock=self._clock,
            origin="replay",  # its rejections are lines of the operator's own file
            store=store,
        )
        self.now = 0  # the clock (epoch ns): `_at`, else the watermark
        self.watermark = 0  # the latest accepted-as-time ts seen (epoch ns)
        self._has_at = False  # once a file carries arrival times, lines without one wait
        self._next_tick = 0
        self._decoded = Decoded()
        self._ts_cache: dict[str, int | None] = {}

    # -- the pipeline's hooks ----------------------------------------------------------------
    def _clock(self) -> int:
        return self.now

    def _take(self, payload: bytes, topic_id: str | None) -> Decoded:
        # The "format" the pipeline calls: the line was decoded already, to read its time.
        return self._decoded

    def _on_reading(self, r: Reading) -> None:
        if self.engine is not None:
            self.engine.reading(r, self.now)
        if self.vee is not None:
            self.vee.reading(r)

    def _on_signal(self, sig: Signal, topic: str) -> None:
        if self.engine is not None:
            self.engine.signal(sig, self.now)

    def _on_flag(self, f: Flag) -> None:
        if self.engine is not None:
            self.engine.flag(f, self.now)

    def _emit(self, ev: Event) -> None:
        self.summary.events[(ev.type, ev.state)] += 1
        if self._events_out is not None:
            self._events_out.write(ev.to_json(self._gateway_id) + b"\n")
        if self.store:
            self.sink.add(event_line(ev, self._precision))

    def _bad_line(self, line: str, reason: str) -> None:
        # A line the database refused for good (as live: kept, with the database's reason).
        self.dead_letter.add(
            dead_letter_record(
                reason=reason,
                source="storage",
                payload=line,
                device=getattr(self.client, "target", None),
            )
        )

    # -- decoding a line -------------------------------------------------------------------
    def _decode(self, line: bytes) -> Decoded:
        """The line as the live formats see it; moves the clock by its `_at` or `ts`."""
        decoded = json_reading(line, None)  # parses once; refuses what is not an object
        if not decoded.readings:
            return decoded
        obj = decoded.readings[0]
        at = obj.pop("_at", None)
        ts_ns = self._ts_ns(obj.get("ts"))
        at_ns = None
        if at is not None:
            at_ns = _seconds_ns(at)
            if at_ns is None:
                return _refused(
                    f"_at: {short_repr(at)} is not epoch seconds from 1970 to year 9999 "
                    "(when the gateway received the line)",
                    "_at",
                )
            if at_ns > MAX_NS:
                # The clock would stand where no local day can be computed: refused, and
                # the clock stays where it was.
                return _refused(
                    f"_at: {format_ts(at_ns)} is later than {_LAST}, the last time replay takes",
                    "_at",
                )
        if ts_ns is not None and ts_ns > MAX_NS:
            return _refused(
                f"ts: {format_ts(ts_ns)} is later than {_LAST}, the last time replay takes",
                "ts",
            )
        if "status" in obj:
            decoded = _status(obj)
        elif "type" in obj:
            decoded = meter_event(line, None)  # rare: parse again, with the live checks
            for sig in decoded.signals:
                if sig.body is not None:
                    sig.body.pop("_at", None)
        self._advance(ts_ns, at_ns)
        return decoded

    def _ts_ns(self, ts: Any) -> int | None:
        """A record's ts for the watermark; None when the validator will refuse it anyway."""
        if type(ts) is str:
            cache = self._ts_cache
            if ts in cache:
                return cache[ts]
            ns: int | None
            try:
                dt = datetime.fromisoformat(ts)
                ns = int(dt.timestamp()) * NS + dt.microsecond * 1000 if dt.tzinfo else None
            except (ValueError, OverflowError, OSError):
                ns = None
            if len(cache) >= 8192:
                cache.clear()
            cache[ts] = ns
            return ns
        return _seconds_ns(ts)

    def _advance(self, ts_ns: int | None, at_ns: int | None) -> None:
        wm = self.watermark
        if ts_ns is not None and ts_ns > wm and (not wm or ts_ns - wm <= self._max_jump_ns):
            self.watermark = ts_ns
            if not self.summary.first_ns:
                self.summary.first_ns = ts_ns
        if at_ns is not None:
            self._has_at = True
            if at_ns > self.now:
                self.now = at_ns
        elif not self._has_at and self.watermark > self.now:
            self.now = self.watermark

    # -- the loop --------------------------------------------------------------------------
    def _lines(self, lines: list[bytes | LongLine], name: str, first: int) -> None:
        """One chunk of lines; never raises for what a line holds.

        The common line, a reading in the `json` format with a usable `_at` and `ts`, is
        parsed here and joins a run of such lines; the run goes to the pipeline in one
        call (`Pipeline.handle_readings`: each line still its own message) before the
        clock moves or the detectors tick, so every line is judged at the clock it would
        have been judged at on its own. Anything else (a status line, a meter event, a
        line that is not a JSON object, a bad `_at`...) ends the run and takes the
        general way, `_decode` and `Pipeline.handle_message`, in its place in the order.
        """
        handle = self.pipeline.handle_message
        decode = self._decode
        loads = orjson.loads
        ts_cache = self._ts_cache
        objs: list[dict[str, Any]] = []  # the run: parsed lines, their bytes, their numbers
        payloads: list[bytes] = []
        numbers: list[int] = []
        n = first
        for line in lines:
            n += 1
            if type(line) is LongLine:
                if objs:
                    self._run(objs, payloads, numbers, name)
                self._long_line(line, f"replay:{name}:{n}")
                continue
            if not line or line.isspace():
                continue
            obj: Any
            try:
                obj = loads(line)
            except orjson.JSONDecodeError:
                obj = None  # the general way says why (or reads NaN, for the validator)
            if type(obj) is dict and "status" not in obj and "type" not in obj:
                mid = obj.get("meter_id")
                at = obj.pop("_at", None)
                ts = obj.get("ts")
                ts_ns = ts_cache.get(ts, _UNSEEN) if type(ts) is str else _UNSEEN
                if ts_ns is _UNSEEN:
                    ts_ns = self._ts_ns(ts)
                # _seconds_ns(at), without the call
                t = type(at)
                at_ns = (
                    int(at * NS) if (t is float or t is int) and 0 <= at <= _EPOCH_S_MAX else None
                )
                if (
                    (mid is None or type(mid) is str)
                    and (at is None or (at_ns is not None and at_ns <= MAX_NS))
                    and (ts_ns is None or ts_ns <= MAX_NS)
                ):
                    now = self.now
                    if at_ns is not None:
                        after = at_ns if at_ns > now else now
                    else:
                        after = self._now_after(ts_ns)
                    if objs and (after != now or after >= self._next_tick):
                        self._run(objs, payloads, numbers, name)
                    if at_ns is not None and (ts_ns is None or ts_ns <= self.watermark):
                        # _advance(ts_ns, at_ns) when the watermark stays: without the call
                        self._has_at = True
                        self.now = now = after
                    else:
                        self._advance(ts_ns, at_ns)
                        now = self.now
                    if now >= self._next_tick:
                        self._tick(now)
                    objs.append(obj)
                    payloads.append(line)
                    numbers.append(n)
                    continue
            # The general way, for this line alone (parsed again there: such lines are few).
            if objs:
                self._run(objs, payloads, numbers, name)
            self._decoded = decode(line)
            now = self.now
            if now >= self._next_tick:
                self._tick(now)
            handle(f"replay:{name}:{n}", line, self._take, None)
        if objs:
            self._run(objs, payloads, numbers, name)
        self.summary.lines += n - first

    def _run(
        self, objs: list[dict[str, Any]], payloads: list[bytes], numbers: list[int], name: str
    ) -> None:
        """A run of reading lines, all at the present clock, into the pipeline; emptied."""
        self.pipeline.handle_readings(objs, payloads, lambda i: f"replay:{name}:{numbers[i]}")
        objs.clear()
        payloads.clear()
        numbers.clear()

    def _now_after(self, ts_ns: int | None) -> int:
        """The clock `_advance(ts_ns, None)` would set, without setting it."""
        now = self.now
        if self._has_at:
            return now
        wm = self.watermark
        if ts_ns is not None and ts_ns > wm and (not wm or ts_ns - wm <= self._max_jump_ns):
            wm = ts_ns
        return wm if wm > now else now

    def _long_line(self, line: LongLine, where: str) -> None:
        self.summary.too_long += 1
        self.pipeline.received["mqtt"] += 1
        self.pipeline.reject(
            source="mqtt",
            reason=f"line of {line.size:,} bytes is over mqtt.max_payload_bytes "
            f"({self._max_line:,}); skipped unread, its first {len(line.head):,} bytes are kept",
            topic=where,
            payload=line.head,
            category="too_large",
        )

    def _tick(self, now: int) -> None:
        """The detectors' clock moves on (at most once per second of recorded time)."""
        self._next_tick = now + NS
        if self.vee is not None and self.vee.due(now):
            self.vee.compute(now)
        if self.engine is None:
            if self._factory is None or now <= 0:
                return
            self.engine = self._factory(
                self.config.events, self.topology, emit=self._emit, now_ns=now
            )
        self.engine.tick(now)

    async def run(self, files: Sequence[Path]) -> ReplaySummary:
        """Replay the files in order (one clock across them); return the summary."""
        wall0 = time.monotonic()
        tasks = [asyncio.create_task(self.dead_letter.run(), name="dead-letter")]
        if self.writer is not None:
            self._writer_task = asyncio.create_task(self.writer.run(), name="storage-writer")
            tasks.append(self._writer_task)
        next_progress = wall0 + self._progress_every
        try:
            for path in files:
                self.summary.files.append(str(path))
                n = 0
                for lines in open_lines(Path(path), max_line_bytes=self._max_line):
                    self._lines(lines, Path(path).name, n)
                    n += len(lines)
                    await self._breathe()
                    if self._progress is not None and time.monotonic() >= next_progress:
                        self._progress(self._progress_line(wall0))
                        next_progress = time.monotonic() + self._progress_every
            await self._finish(tasks)
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            if self._vee_dir is not None:
                self._vee_dir.cleanup()
        self._fill_summary(time.monotonic() - wall0)
        return self.summary

    async def _breathe(self) -> None:
        """Between chunks: let storage and the dead-letter store work; wait while full."""
        _ = self.pipeline.durable  # drops what is done from the pipeline's ack queue
        await asyncio.sleep(0)
        if self.writer is not None and self.writer.paused:
            # The database is behind: wait, lose nothing; but a writer that died (a bug)
            # never resumes, so its error ends the replay instead of hanging it.
            resumed = asyncio.ensure_future(self.writer.wait_resumed())
            await asyncio.wait([resumed, self._writer_task], return_when=asyncio.FIRST_COMPLETED)
            if not resumed.done():
                resumed.cancel()
                self._writer_task.result()

    async def _finish(self, tasks: list[asyncio.Task[None]]) -> None:
        self.pipeline.flush_logs(final=True)
        if self.vee is not None:
            # The recording is over: nothing more will come for the days that ended,
            # so they are computed now, settled or not.
            end = max(self.now, self.watermark) + int(self.config.daily.settle_s * NS)
            self.vee.compute(end)
            self.summary.daily = dict(self.vee.stats)
        if self.writer is not None:
            self.writer.close()
            writer_task = tasks[-1]
            while not writer_task.done():
                done, _ = await asyncio.wait([writer_task], timeout=self._progress_every)
                if not done and self._progress is not None:
                    w = self.writer
                    self._progress(
                        f"replay: waiting for storage: {w.pending:,} lines to write"
                        + (f" (last error: {w.last_error})" if w.last_error else "")
                    )
            writer_task.result()
            await self.client.close()
        await self.dead_letter.close()

    def _fill_summary(self, elapsed: float) -> None:
        s, p = self.summary, self.pipeline
        s.elapsed_s = elapsed
        s.readings = sum(p.received.values())
        s.accepted = sum(p.spooled.values())
        s.rejected = Counter(p.rejected)
        s.reasons = list(self.dead_letter.examples)
        s.duplicates = p.duplicates
        s.flagged = Counter(p.flagged)
        s.signals = Counter(p.signals)
        s.watermark_ns = self.watermark
        if self.engine is not None:
            s.still_raised = len(self.engine.active())

    def _progress_line(self, wall0: float) -> str:
        elapsed = max(time.monotonic() - wall0, 1e-9)
        readings = sum(self.pipeline.received.values())
        return (
            f"replay: {self.summary.lines:,} lines, {readings / elapsed:,.0f} readings/s, "
            f"{sum(self.summary.events.values()):,} events, "
            f"{sum(self.pipeline.rejected.values()):,} rejected, "
            f"watermark {format_ts(self.watermark) if self.watermark else '-'}"
        )


def _refused(reason: str, field: str) -> Decoded:
    return Decoded(rejections=[Rejection(reason, field)])


def _status(obj: dict[str, Any]) -> Decoded:
    """A status line, checked as the `lwt` format checks a last will, with its ts kept."""
    meter_id, status = obj.get("meter_id"), obj.get("status")
    if type(meter_id) is not str:
        return Decoded(rejections=[Rejection("meter_id: missing", "meter_id")])
    problem = id_problem(meter_id)
    if problem is not None:
        return _refused(problem, "meter_id")
    if type(status) is not str:
        return Decoded(
            rejections=[
                Rejection(
                    f"status: expected 'online' or 'offline', got {short_repr(status)}", "lwt"
                )
            ]
        )
    decoded = last_will(status.encode(), meter_id)
    decoded.signals = [dataclasses.replace(s, ts=obj.get("ts"), body=obj) for s in decoded.signals]
    return decoded
