"""`meter-gateway dead-letter list|replay`: look at the dead-letter store, and replay it.

`list` groups the records of `<data_dir>/dead-letter/*.jsonl` by reason. Reasons are
normalised so that one cause is one row: numbers become `N` and times `T`, so
`voltage_v[1]: 1234.0 above 1000.0` and `voltage_v[0]: 1250.5 above 1000.0` both read
`voltage_v[N]: N above N` (per source; a batch element's reason keeps its
`readings[N]: ` prefix, so it is a row of its own). Each row has the count,
the first and last time received, and an example (file:line, topic or device, the
reason in full).

`replay` puts the selected records through TODAY's configuration, the way they came:

- an MQTT message: its payload through the format its topic maps to in today's
  `mqtt.subscriptions` (first match, as the gateway routes), then the validator and the
  meter rules (`Pipeline.handle_message`, the live path);
- one element of a batch (a record with `index`): that element alone, through the
  `json-batch` format's checks, then validation; reasons keep its position. Only when
  today's subscriptions still route its topic to `json-batch`;
- the elements of a batch rejected for one reason (`"kind": "elements"`: a count, their
  indexes, and the elements): those elements, each judged as above;
- a Modbus reading the validator refused: the reading again (`Pipeline.handle_reading`);
- recorded traffic rejected by `meter-gateway replay` (`"origin": "replay"`, a field only
  the gateway writes; its topic `replay:FILE:LINE` is only a label): the line as a
  `json` reading. A record without that field is a client's, whatever its topic says:
  its topic goes through today's subscriptions like any other.

Every check live ingest applies applies here too: the format its topic maps to (a
meter cannot write as another), the meter id rule, validation, and `limits.max_meters`
(counted from zero in each run, the topology's meters always taken).

Not replayable, skipped and counted: Modbus poll errors (no reading was made), lines the
database refused (`storage`: not a validation matter; fix and write them by hand), spool
and webhook notes, payloads cut at `max_payload_bytes`, MQTT topics today's
subscriptions do not route, meter events and status messages (events are not raised
from the past), elements nested too deep (no configuration takes them).

Validation's clock is each record's `received_at`: a reading is judged as if it arrived
when it did, with today's bounds (one that was too old then is still too old). What now
passes is stored with a BatchWriter straight to the configured database (no spool, no
MQTT, no detectors, no webhook). What still fails is reported by reason and NOT written
to the dead-letter store again: its record stays where it is, to replay after the next
correction.

Nothing is stored twice: every record whose readings the database accepted is appended
to the ledger `<data_dir>/dead-letter/replayed` (its line hash, file and line; fsync'd
after the database has accepted the batch); the next replay skips it ("already
replayed"). A record counts as replayed once any reading of it is stored (a batch
message partly valid: the rest is reported as still rejected, and not retried again).
A record standing for several elements of a batch is replayed element by element: the
ledger keeps the indexes of those still rejected (`rest`), and the next replay takes
those only, as if each had a record of its own.
The ledger is written only then: an interrupted replay replays the rest next time
(the database overwrites a point written twice with the same values anyway).

Safe while a gateway runs: only complete lines are read (a line being appended is left
for the next run), and the store's files are never written.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from meter_gateway.config.schema import Config
from meter_gateway.gateway.pipeline import Pipeline, expand_indexes, index_runs
from meter_gateway.gateway.validate import MeterRules, Validator
from meter_gateway.protocols.formats import FORMATS, Decoded, PayloadFormat
from meter_gateway.protocols.mqtt.source import match_topic
from meter_gateway.storage.deadletter import (
    DeadLetterLine,
    DeadLetterStore,
    ReplayLedger,
    read_records,
    record_files,
)
from meter_gateway.storage.lineprotocol import ReadingEncoder

__all__ = [
    "DESCRIPTION",
    "DeadLetterReplay",
    "ReasonGroup",
    "ReplayReport",
    "Selection",
    "group_reasons",
    "normalise_reason",
    "parse_since",
    "record_count",
    "register",
    "run_list",
    "run_replay",
    "select",
]

log = logging.getLogger("meter_gateway.deadletters")

EXIT_CONFIG = 2
EXIT_FAILED = 1
NS = 1_000_000_000

# -- selecting records -------------------------------------------------------------------------

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`--since`: RFC 3339, a date (its 00:00 UTC), or an age: 30m, 2h, 7d, 1w."""
    m = _RELATIVE.match(text)
    if m:
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    t = text.strip()
    try:
        if len(t) == 10:
            return datetime.combine(date.fromisoformat(t), datetime.min.time(), UTC)
        dt = datetime.fromisoformat(t.replace("z", "Z"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (e.g. 2026-11-27, 2026-11-27T06:00:00Z, or an age: 30m, 2h, 7d)"
        ) from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def received_at(rec: dict[str, Any]) -> datetime | None:
    """A record's `received_at` as an aware datetime; None when it is not a time."""
    value = rec.get("received_at")
    if type(value) is not str:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


@dataclass(slots=True, frozen=True)
class Selection:
    """Which records a command looks at: all of them, narrowed by each filter given."""

    since: datetime | None = None  # received at or after
    reason: str | None = None  # substring of the reason, case-insensitive
    source: str | None = None  # mqtt, modbus, storage, spool, webhook

    def matches(self, rec: dict[str, Any]) -> bool:
        if self.source is not None and rec.get("source") != self.source:
            return False
        if self.reason is not None and self.reason.lower() not in str(rec["reason"]).lower():
            return False
        if self.since is not None:
            at = received_at(rec)
            if at is None or at < self.since:
                return False
        return True


def select(directory: Path, selection: Selection) -> Iterator[DeadLetterLine]:
    """The records of the dead-letter directory that `selection` takes, in file order.

    Lines that are not records are passed through (record None) for the caller to count."""
    since_day = None
    if selection.since is not None:
        since_day = selection.since.astimezone(UTC).date().isoformat()
    for dl in read_records(record_files(directory, since_day)):
        if dl.record is None or selection.matches(dl.record):
            yield dl


# -- grouping by reason ------------------------------------------------------------------------

_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ][0-9:.]+(?:Z|[+-]\d{2}:?\d{2})?")
_NUMBER = re.compile(r"(?<![A-Za-z0-9_.])[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
# Text of the gateway's own that looks like a number but is not a value: a UTC offset
# quoted as an example (`add 'Z' or '+01:00'`). Kept as written, or the hint would read
# `'N:N'`.
_LITERAL = re.compile(r"'[+-]\d{2}:\d{2}'")
_TOKENS = re.compile(f"(?P<keep>{_LITERAL.pattern})|(?P<num>{_NUMBER.pattern})")
# The tail the gateway adds to a record that stands for several elements of one message.
_SAME_REASON = re.compile(r" \(and \d+ more element\(s\) of this message, the same reason\)$")


def normalise_reason(reason: str) -> str:
    """One cause, one text: times become `T` and numbers `N` (indexes, values, bounds).

    Digits inside names (`l1_voltage`, `sdm-0001` stays `sdm-N`) are left where a letter
    or `_` comes right before them; hints of the gateway's own (a quoted UTC offset) are
    left as written. A record standing for several elements of a message with one
    reason is grouped with the single ones of that reason."""
    text = _SAME_REASON.sub("", _TIME.sub("T", reason))
    return _TOKENS.sub(lambda m: m.group("keep") or "N", text)


def record_count(rec: dict[str, Any]) -> int:
    """How many rejections a record stands for (several elements of one message: `count`)."""
    n = rec.get("count")
    return n if type(n) is int and n > 0 else 1


@dataclass(slots=True)
class ReasonGroup:
    """The records of one normalised reason from one source."""

    source: str
    pattern: str
    count: int = 0  # rejections (a record may stand for several elements of a message)
    records: int = 0
    first: str = ""  # received_at, as written
    last: str = ""
    example: DeadLetterLine | None = None

    def as_dict(self) -> dict[str, Any]:
        ex = self.example
        rec = ex.record if ex is not None and ex.record is not None else {}
        return {
            "source": self.source,
            "reason": self.pattern,
            "count": self.count,
            "records": self.records,
            "first": self.first,
            "last": self.last,
            "example": {
                "at": ex.where if ex is not None else None,
                "id": ex.id if ex is not None else None,
                "received_at": rec.get("received_at"),
                "topic": rec.get("topic"),
                "device": rec.get("device"),
                "reason": rec.get("reason"),
            },
        }


def group_reasons(lines: Iterable[DeadLetterLine]) -> tuple[list[ReasonGroup], int]:
    """Records grouped by (source, normalised reason), most frequent first; and how many
    lines were not records."""
    groups: dict[tuple[str, str], ReasonGroup] = {}
    unreadable = 0
    for dl in lines:
        rec = dl.record
        if rec is None:
            unreadable += 1
            continue
        source = str(rec.get("source", "?"))
        pattern = normalise_reason(rec["reason"])
        g = groups.get((source, pattern))
        if g is None:
            g = groups[source, pattern] = ReasonGroup(source, pattern, example=dl)
        g.count += record_count(rec)
        g.records += 1
        at = str(rec.get("received_at", ""))
        if at and (not g.first or at < g.first):
            g.first = at
        if at > g.last:
            g.last = at
    return sorted(groups.values(), key=lambda g: (-g.count, g.source, g.pattern)), unreadable


def _short_time(at: str) -> str:
    return at[:19].replace("T", " ") if at else "-"


def render_table(groups: list[ReasonGroup], unreadable: int = 0) -> str:
    """The `list` table: one row per reason, with an example line under it."""
    if not groups:
        return "no dead letters match" + (
            f" ({unreadable} unreadable line(s) skipped)" if unreadable else ""
        )
    width = max(5, *(len(f"{g.count:,}") for g in groups))
    src = max(6, *(len(g.source) for g in groups))
    out = [f"{'COUNT':>{width}}  {'FIRST (UTC)':19}  {'LAST (UTC)':19}  {'SOURCE':{src}}  REASON"]
    for g in groups:
        out.append(
            f"{g.count:>{width},}  {_short_time(g.first):19}  {_short_time(g.last):19}  "
            f"{g.source:{src}}  {g.pattern}"
        )
        ex = g.example
        if ex is not None and ex.record is not None:
            rec = ex.record
            origin = rec.get("topic") or rec.get("device") or ""
            out.append(
                f"{'':>{width}}  e.g. {ex.where}"
                + (f" {origin}" if origin else "")
                + f": {rec['reason']}"
            )
    total = sum(g.count for g in groups)
    records = sum(g.records for g in groups)
    out.append(
        f"{records:,} record(s), {len(groups)} reason(s)"
        + (f", {total:,} rejection(s)" if total != records else "")
    )
    if unreadable:
        out.append(f"{unreadable:,} line(s) are not dead-letter records (skipped)")
    return "\n".join(out)


# -- replaying -----------------------------------------------------------------------------------


@dataclass(slots=True)
class ReplayReport:
    """What a replay did; `text()` is the summary the command prints."""

    dry_run: bool = False
    selected: int = 0  # records the filters took
    already: int = 0  # in the ledger: replayed before
    replayed: int = 0  # records with a reading stored now (or, dry run: that would be)
    partly: int = 0  # of those, records with some of it still rejected
    stored: int = 0  # readings stored (written and accepted by the database)
    duplicates: int = 0  # readings equal to one stored from an earlier record of this run
    still_rejected: Counter[str] = field(default_factory=Counter)  # normalised reason
    examples: dict[str, str] = field(default_factory=dict)  # normalised -> "file:line: reason"
    refused: int = 0  # readings valid now that the database refused
    skipped: Counter[str] = field(default_factory=Counter)  # why not replayable
    unreadable: int = 0  # lines that are not records
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "selected": self.selected,
            "already_replayed": self.already,
            "replayed": self.replayed,
            "partly_rejected": self.partly,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "still_rejected": dict(self.still_rejected),
            "examples": dict(self.examples),
            "refused_by_database": self.refused,
            "skipped": dict(self.skipped),
            "unreadable": self.unreadable,
        }

    def text(self) -> str:
        verb = "would store" if self.dry_run else "stored"
        out = [
            f"dead-letter replay{' (dry run: nothing written)' if self.dry_run else ''}: "
            f"{self.selected:,} record(s) selected in {self.elapsed_s:.1f} s",
            f"  {'would replay' if self.dry_run else 'replayed'}: {self.replayed:,} record(s), "
            f"{verb} {self.stored:,} reading(s)"
            + (f", {self.duplicates:,} duplicate(s) dropped" if self.duplicates else "")
            + (f" ({self.partly:,} only in part)" if self.partly else ""),
            f"  already replayed: {self.already:,}",
        ]
        total = sum(self.still_rejected.values())
        out.append(f"  still rejected: {total:,}" + (" (not written again)" if total else ""))
        for reason, n in self.still_rejected.most_common(10):
            out.append(f"    {n:>6,}  {reason}")
            out.append(f"            e.g. {self.examples[reason]}")
        if self.refused:
            out.append(
                f"  refused by the database: {self.refused:,} reading(s) (see the log; "
                "their records were not marked replayed)"
            )
        out.append(f"  skipped (not replayable): {sum(self.skipped.values()):,}")
        for why, n in self.skipped.most_common():
            out.append(f"    {n:>6,}  {why}")
        if self.unreadable:
            out.append(f"  unreadable lines: {self.unreadable:,}")
        return "\n".join(out)


class _Rejections(DeadLetterStore):
    """The pipeline's dead-letter store in a replay: keeps rejections here, writes nothing."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, publish=None)
        self.durable = 1 << 62
        self.records: list[dict[str, Any]] = []

    def add(self, record: dict[str, Any]) -> int:
        self.records.append(record)
        return 0

    async def wait_durable(self, seq: int) -> None:
        return None


class _Sink:
    """Lines into the database writer (or nowhere, dry run), each noted for its record."""

    durable = 1 << 62
    paused = False

    def __init__(self, writer: Any) -> None:
        self._writer = writer
        self.added = 0  # lines handed over in this run
        self.by_line: dict[str, str] = {}  # line -> record id, for the chunk being written
        self.current = ""  # the id of the record being handled

    def add(self, line: str) -> int:
        self.added += 1
        self.by_line[line] = self.current
        if self._writer is not None:
            self._writer.add(line)
        return 0

    async def wait_durable(self, seq: int) -> None:
        return None


# A plan for one record: ("message", topic, payload, format, topic_id),
# ("element", topic, payload, index), ("reading", obj, source, device), or ("skip", why).
_Plan = tuple[Any, ...]

# A payload (or a line of `meter-gateway replay`) kept only in part: not replayable.
_TRUNCATED = re.compile(r"^(?:payload|line) of [\d,]+ bytes is over (?:mqtt\.)?max_payload_bytes")


class DeadLetterReplay:
    """Put dead-letter records through today's validation; store what passes.

    `await run(lines)` once. `client` replaces the database client made from
    `config.storage` (tests); `dry_run` validates and counts, writing nothing (no
    database, no ledger)."""

    def __init__(
        self,
        config: Config,
        *,
        dry_run: bool = False,
        client: Any = None,
        progress: Callable[[str], None] | None = None,
        progress_every_s: float = 5.0,
        chunk: int | None = None,
    ) -> None:
        from meter_gateway.config.topology import load_topology

        self.config = config
        self.dry_run = dry_run
        self.directory = Path(config.gateway.data_dir) / "dead-letter"
        self.ledger = ReplayLedger(self.directory)
        self.report = ReplayReport(dry_run=dry_run)
        self._progress = progress
        self._progress_every = progress_every_s
        st = config.storage
        self._chunk = chunk or st.batch_size
        self._routes = [
            (s.topic.split("/"), FORMATS[s.format], s.format) for s in config.mqtt.subscriptions
        ]
        topology = load_topology(config.topology.file) if config.topology.file else {}
        self.client: Any = None
        self.writer: Any = None
        if not dry_run:
            from meter_gateway.gateway.app import make_client
            from meter_gateway.storage.influxdb.writer import BatchWriter

            self.client = client if client is not None else make_client(config)
            self.writer = BatchWriter(
                self.client,
                batch_size=st.batch_size,
                flush_interval_s=st.flush_interval_s,
                max_retry_delay_s=st.max_retry_delay_s,
                max_buffered_lines=st.max_buffered_lines,
                on_bad_line=self._bad_line,
            )
        self.sink = _Sink(self.writer)
        self.rejections = _Rejections(config.gateway.data_dir)
        self.now = 0
        self.pipeline = Pipeline(
            validator=Validator(config.validation),
            rules=MeterRules(config.validation.duplicate_window),
            encoder=ReadingEncoder(st.precision, topology),
            sink=self.sink,
            dead_letter=self.rejections,
            max_payload_bytes=config.mqtt.max_payload_bytes,
            clock=lambda: self.now,
            max_meters=config.limits.max_meters,
            known_meters=topology,
        )
        self._refused_ids: set[str] = set()
        self._rests: dict[str, Any] = {}  # record id -> indexes still rejected (partly replayed)

    # -- what a record is ------------------------------------------------------------------
    def _route(self, topic: str) -> tuple[PayloadFormat, str | None, str] | None:
        for levels, fmt, name in self._routes:
            ok, topic_id = match_topic(levels, topic)
            if ok:
                return fmt, topic_id, name
        return None

    def plan(self, rec: dict[str, Any]) -> _Plan:
        """How to replay a record, or ("skip", why)."""
        source = rec.get("source")
        reason = str(rec.get("reason", ""))
        if source == "storage":
            return ("skip", "storage: a line the database refused (not a validation matter)")
        if source not in ("mqtt", "modbus"):
            return ("skip", f"{source}: not a reading")
        payload = _payload(rec)
        if source == "modbus":
            obj = _json_object(payload) if payload is not None else None
            if obj is None or "meter_id" not in obj:
                return ("skip", "modbus: a poll error (no reading was made)")
            return ("reading", obj, "modbus", str(rec.get("device") or "modbus"))
        if _TRUNCATED.match(reason):
            return ("skip", "mqtt: payload cut at max_payload_bytes")
        topic = rec.get("topic")
        if type(topic) is not str:
            return ("skip", "mqtt: no topic")
        if rec.get("origin") == "replay" and payload is not None:
            # Written by `meter-gateway replay` for a line of the operator's own file (a
            # field no client can set): the line as a reading naming its meter.
            return ("message", topic, payload, FORMATS["json"], None)
        route = self._route(topic)
        if route is None:
            return ("skip", "mqtt: today's mqtt.subscriptions route no format for the topic")
        fmt, topic_id, name = route
        index = rec.get("index")
        if type(index) is int:
            if name != "json-batch":
                return (
                    "skip",
                    "mqtt: an element of a batch, but today's mqtt.subscriptions route its "
                    "topic to another format than json-batch",
                )
            if "nested deeper than" in reason:
                return ("skip", "mqtt: elements nested too deep (no configuration takes them)")
            if rec.get("kind") == "elements":
                indexes = expand_indexes(rec.get("indexes"))
                elements = rec.get("elements")
                if indexes is None or type(elements) is not str:
                    return ("skip", "mqtt: elements kept only inside the raw message")
                return ("elements", topic, elements.encode("utf-8"), indexes)
            if payload is None:
                return ("skip", "mqtt: no payload kept")
            return ("element", topic, payload, index)
        if payload is None:
            return ("skip", "mqtt: no payload kept")
        if name in ("lwt", "meter-event"):
            return ("skip", f"mqtt: a {name} message (events are not raised from the past)")
        return ("message", topic, payload, fmt, topic_id)

    # -- the run ---------------------------------------------------------------------------
    async def run(self, lines: Iterable[DeadLetterLine]) -> ReplayReport:
        """Replay the records (already selected); return the report."""
        wall0 = time.monotonic()
        task = None
        if self.writer is not None:
            self.writer.flush_eagerly()  # each chunk is written at once, then ledgered
            task = asyncio.create_task(self.writer.run(), name="dead-letter-replay-writer")
        done = self.ledger.ids()
        next_progress = wall0 + self._progress_every
        pending: list[tuple[DeadLetterLine, int]] = []  # (record, readings) of this chunk
        try:
            for dl in lines:
                rec = dl.record
                if rec is None:
                    self.report.unreadable += 1
                    continue
                self.report.selected += 1
                if dl.id in done:
                    self.report.already += 1
                    continue
                stored = self._one(dl, rec, self.ledger.rest(dl.id))
                if stored is not None:
                    pending.append((dl, stored))
                if len(pending) >= self._chunk:
                    await self._commit(pending, task)
                    pending = []
                if self._progress is not None and time.monotonic() >= next_progress:
                    self._progress(self._progress_line())
                    next_progress = time.monotonic() + self._progress_every
                await asyncio.sleep(0)
            await self._commit(pending, task)
        finally:
            if task is not None:
                # Everything handed over is written by now (or this is an error or an
                # interrupt: the ledger holds only what the database accepted).
                self.writer.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(task), 2.0)
                if not task.done():
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await self.client.close()
        self.report.elapsed_s = time.monotonic() - wall0
        return self.report

    def _one(self, dl: DeadLetterLine, rec: dict[str, Any], rest: Any = None) -> int | None:
        """Replay one record; the readings it stored, or None when it is not replayed.
        `rest`: of a record replayed in part before, the indexes still to replay."""
        plan = self.plan(rec)
        kind = plan[0]
        if kind == "elements" and rest is not None:
            plan = _only(plan, expand_indexes(rest))
        if kind == "skip":
            self.report.skipped[plan[1]] += 1
            return None
        at = received_at(rec)
        self.now = int(at.timestamp()) * NS + at.microsecond * 1000 if at else time.time_ns()
        self.sink.current = dl.id
        added0, dup0 = self.sink.added, self.pipeline.duplicates
        self.rejections.records.clear()
        p = self.pipeline
        if kind == "message":
            _, topic, payload, fmt, topic_id = plan
            p.handle_message(topic, payload, fmt, topic_id)
        elif kind == "element":
            _, topic, payload, index = plan
            p.handle_message(topic, payload, _element_format(index), None)
        elif kind == "elements":
            _, topic, elements, indexes = plan
            p.handle_message(topic, elements, _elements_format(indexes), None)
        else:
            _, obj, source, device = plan
            p.handle_reading(obj, source, device)
        stored = self.sink.added - added0
        dups = self.pipeline.duplicates - dup0
        self.report.duplicates += dups
        for r in self.rejections.records:
            why = normalise_reason(r["reason"])
            self.report.still_rejected[why] += record_count(r)
            self.report.examples.setdefault(why, f"{dl.where}: {r['reason']}")
        if not stored and not dups:
            if not self.rejections.records:  # signals only (an event in a json topic)
                self.report.skipped["mqtt: no reading in it (a meter event or status)"] += 1
            return None
        if stored and self.rejections.records:
            self.report.partly += 1
            if kind == "elements":
                # Its elements still rejected get the next replay's chance, as they would
                # have each as a record of its own.
                left: list[int] = []
                for r in self.rejections.records:
                    more = expand_indexes(r.get("indexes"))
                    left.extend(more if more is not None else [int(r.get("index", -1))])
                self._rests[dl.id] = index_runs(sorted(i for i in left if i >= 0))
        return stored

    async def _commit(
        self, pending: list[tuple[DeadLetterLine, int]], task: asyncio.Task[None] | None
    ) -> None:
        """Wait until the database has every line handed over; then ledger the records."""
        if self.writer is not None and task is not None:
            next_note = time.monotonic() + self._progress_every
            while self.writer.lines_done < self.sink.added:
                if task.done():
                    task.result()  # the writer failed: raise its error
                    raise RuntimeError("the database writer stopped before writing everything")
                await asyncio.sleep(0.02)
                if self._progress is not None and time.monotonic() >= next_note:
                    w = self.writer
                    self._progress(
                        f"dead-letter replay: waiting for the database: {w.pending:,} lines "
                        "to write" + (f" (last error: {w.last_error})" if w.last_error else "")
                    )
                    next_note = time.monotonic() + self._progress_every
        self.sink.by_line.clear()
        ok = [(dl, n) for dl, n in pending if dl.id not in self._refused_ids]
        self.report.replayed += len(ok)
        self.report.stored += sum(n for _, n in ok)
        if not self.dry_run and ok:
            self.ledger.add_many(ok, self._rests)
        self._rests.clear()

    def _bad_line(self, line: str, reason: str) -> None:
        """A line the database refused for good: its record is not marked replayed."""
        self.report.refused += 1
        rid = self.sink.by_line.get(line)
        if rid:
            self._refused_ids.add(rid)
        log.warning("dead-letter replay: %s: %s", reason, line[:200])

    def _progress_line(self) -> str:
        r = self.report
        return (
            f"dead-letter replay: {r.selected:,} records, {r.replayed:,} replayed "
            f"({self.sink.added:,} readings handed to storage), "
            f"{sum(r.still_rejected.values()):,} still rejected, {r.already:,} already replayed"
        )


def _payload(rec: dict[str, Any]) -> bytes | None:
    text = rec.get("payload")
    if isinstance(text, str):
        return text.encode("utf-8")
    b64 = rec.get("payload_base64")
    if isinstance(b64, str):
        try:
            return base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            return None
    return None


def _json_object(payload: bytes) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _only(plan: _Plan, wanted: list[int] | None) -> _Plan:
    """An "elements" plan narrowed to the elements at `wanted` (those still to replay)."""
    _, topic, elements, indexes = plan
    if wanted is None:
        return plan
    keep = set(wanted)
    try:
        items = json.loads(elements)
    except ValueError:
        return plan
    if type(items) is not list or len(items) != len(indexes):
        return plan
    pairs = [(i, item) for i, item in zip(indexes, items, strict=True) if i in keep]
    text = json.dumps([item for _, item in pairs], separators=(",", ":"))
    return ("elements", topic, text.encode("utf-8"), [i for i, _ in pairs])


def _element_format(index: int) -> PayloadFormat:
    """One element of a batch, checked by the `json-batch` format as element `index`."""
    elements = _elements_format([index])
    return lambda payload, topic_id: elements(b"[" + payload + b"]", topic_id)


def _elements_format(indexes: list[int]) -> PayloadFormat:
    """A JSON array of elements of a batch, checked by the `json-batch` format as the
    elements at `indexes` (reasons and positions name those)."""
    batch = FORMATS["json-batch"]

    def fmt(payload: bytes, topic_id: str | None) -> Decoded:
        out = batch(b'{"readings":' + payload + b"}", None)
        if out.positions is not None:
            out.positions = [_at(indexes, p) for p in out.positions]
        rejections = []
        for r in out.rejections:
            if r.index is not None:
                real = _at(indexes, r.index)
                prefix = f"readings[{r.index}]: "
                reason = r.reason
                if reason.startswith(prefix):
                    reason = f"readings[{real}]: {reason[len(prefix) :]}"
                r = dataclasses.replace(r, index=real, reason=reason)
            rejections.append(r)
        out.rejections = rejections
        return out

    return fmt


def _at(indexes: list[int], position: int) -> int:
    # A record whose elements outnumber its indexes was not written by the gateway:
    # positions past the end are named as they are, not guessed.
    return indexes[position] if position < len(indexes) else position


# -- the command ---------------------------------------------------------------------------------

DESCRIPTION = """\
The dead-letter store (<data_dir>/dead-letter/*.jsonl): list its records by reason, and
replay them through today's configuration after a bound was corrected.

  list    one row per reason, most frequent first. Reasons are normalised (numbers
          become N, times T) so one cause is one row: count, first and last time
          received, source, and an example (FILE:LINE, topic or device, full reason).
  replay  each selected record through today's validation, the way it came: an MQTT
          payload through the format its topic maps to in mqtt.subscriptions (a
          meter cannot write as another), the elements of a batch alone (a record
          may hold several rejected for one reason), a Modbus reading again, a line
          of `meter-gateway replay` as a reading. The same checks as live ingest,
          limits.max_meters included. What passes is stored in the configured
          database; what still fails is reported by reason and is NOT written to
          the dead-letter store again. Not replayable (skipped, counted): Modbus
          poll errors, lines the database refused, spool and webhook notes,
          payloads cut at max_payload_bytes, meter events and status messages,
          elements nested too deep.

Validation's clock is each record's received_at: a reading is judged as when it
arrived, with today's bounds. Every record replayed is appended to the ledger
<data_dir>/dead-letter/replayed once the database has accepted it (fsync'd): running
replay again skips it ("already replayed"), so nothing is stored twice.

Both read only complete lines: safe while the gateway appends to the files.
Filters (both commands): --since, --reason, --source.
Exit 0 when done (records still rejected included), 1 when the store or the database
cannot be used, 2 for a bad configuration.
"""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, type=Path, help="the YAML configuration file")
    p.add_argument(
        "--since",
        type=parse_since,
        metavar="T",
        help="records received at or after T: RFC 3339, a date (00:00 UTC), or an age "
        "(30m, 2h, 7d)",
    )
    p.add_argument("--reason", metavar="TEXT", help="records whose reason contains TEXT (any case)")
    p.add_argument(
        "--source",
        choices=["mqtt", "modbus", "storage", "spool", "webhook"],
        help="records from this source only",
    )


# One vocabulary for both commands, as the reports have it: `table` for what a person
# reads, `json` for a program. `text` (what `replay` took before) is still understood.
FORMAT_CHOICES = ("table", "json")
_FORMAT_ALIASES = {"text": "table"}


def _output_format(value: str) -> str:
    return _FORMAT_ALIASES.get(value, value)


def register(sub: Any) -> None:
    """Add `dead-letter` with `list` and `replay` to the top-level subparsers."""
    dl = sub.add_parser(
        "dead-letter",
        help="list the dead-letter store by reason; replay it through today's validation",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmds = dl.add_subparsers(dest="dead_letter", metavar="COMMAND")
    cmds.required = True
    ls = cmds.add_parser(
        "list",
        help="the records grouped by reason, with counts and an example",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(ls)
    ls.add_argument(
        "--format",
        type=_output_format,
        choices=FORMAT_CHOICES,
        default="table",
        help="an aligned table, or one JSON object {groups: [...]} (default table; "
        "'text' is taken as 'table')",
    )
    ls.set_defaults(func=run_list)
    rp = cmds.add_parser(
        "replay",
        help="store what passes today's validation; a ledger keeps it from being stored twice",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(rp)
    rp.add_argument(
        "--dry-run",
        action="store_true",
        help="validate and report what would be stored; write nothing (no database, no ledger)",
    )
    rp.add_argument(
        "--format",
        type=_output_format,
        choices=FORMAT_CHOICES,
        default="table",
        help="the summary as lines of text, or as one JSON object (default table; "
        "'text' is taken as 'table')",
    )
    rp.add_argument(
        "--progress-every",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between progress lines on stderr (default 5)",
    )
    for p in (ls, rp):
        p.add_argument(
            "--log-level",
            default="warning",
            choices=["debug", "info", "warning", "error"],
            help="log verbosity (default: warning)",
        )
    rp.set_defaults(func=run_replay)


def _load(args: Any) -> Config | None:
    from meter_gateway.config.loader import load_config_or_say

    return load_config_or_say(args.config)


def _selection(args: Any) -> Selection:
    return Selection(since=args.since, reason=args.reason, source=args.source)


def _open_store(args: Any) -> tuple[Any, Path] | int:
    """Logging set up, the configuration and its dead-letter folder; or the exit code."""
    from meter_gateway.gateway.logs import setup_logging

    setup_logging(getattr(args, "log_level", "warning"), "text")
    cfg = _load(args)
    if cfg is None:
        return EXIT_CONFIG
    directory = Path(cfg.gateway.data_dir) / "dead-letter"
    if not directory.is_dir():
        print(
            f"dead-letter: no dead-letter store at {directory} (gateway.data_dir)", file=sys.stderr
        )
        return EXIT_FAILED
    return cfg, directory


def run_list(args: Any) -> int:
    """`meter-gateway dead-letter list ...`: the exit code."""
    opened = _open_store(args)
    if isinstance(opened, int):
        return opened
    _, directory = opened
    try:
        groups, unreadable = group_reasons(select(directory, _selection(args)))
    except OSError as exc:
        print(f"dead-letter: cannot read {directory}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.format == "json":
        body = {"groups": [g.as_dict() for g in groups], "unreadable": unreadable}
        print(json.dumps(body, indent=2))
    else:
        print(render_table(groups, unreadable))
    return 0


def run_replay(args: Any) -> int:
    """`meter-gateway dead-letter replay ...`: the exit code."""
    from meter_gateway.config.topology import TopologyError

    opened = _open_store(args)
    if isinstance(opened, int):
        return opened
    cfg, directory = opened
    # Each record still rejected is in the summary: the pipeline's per-rejection warnings
    # would only repeat it.
    pipeline_log = logging.getLogger("meter_gateway.pipeline")
    level = pipeline_log.level
    pipeline_log.setLevel(logging.ERROR)
    try:
        replay = DeadLetterReplay(
            cfg,
            dry_run=args.dry_run,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
            progress_every_s=args.progress_every,
        )
        report = asyncio.run(replay.run(select(directory, _selection(args))))
    except TopologyError as exc:
        print(f"dead-letter: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"dead-letter: cannot read the store or write the ledger: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(
            "dead-letter replay: interrupted; the records stored so far are in the ledger, "
            "run it again to replay the rest",
            file=sys.stderr,
        )
        return 130
    finally:
        pipeline_log.setLevel(level)
    if args.format == "json":
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.text())
    return 0
