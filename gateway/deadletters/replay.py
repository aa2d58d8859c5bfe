"""The dead-letter replay: selected records through today's configuration, once.

Each record goes through the live pipeline the way it came (its plan, `plans.py`), on
its own `received_at` clock. What passes is stored with a BatchWriter straight to the
configured database (no spool); what still fails is counted by reason and is not
written to the dead-letter store again. A record is put in the ledger
(`<data_dir>/dead-letter/replayed`) only once the database has accepted its readings,
so an interrupted run takes up the rest next time and nothing is stored twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meter_gateway.config.schema import Config
from meter_gateway.gateway.deadletters.plans import (
    ElementPlan,
    ElementsPlan,
    MessagePlan,
    SkipPlan,
    element_format,
    elements_format,
    only_elements,
    plan_for,
)
from meter_gateway.gateway.deadletters.query import normalise_reason, received_at, record_count
from meter_gateway.gateway.pipeline import Pipeline, expand_indexes, index_runs
from meter_gateway.gateway.validate import MeterRules, Validator
from meter_gateway.protocols.formats import FORMATS, PayloadFormat
from meter_gateway.protocols.mqtt.source import match_topic
from meter_gateway.storage.deadletter import DeadLetterLine, DeadLetterStore, ReplayLedger
from meter_gateway.storage.influxdb.factory import make_client, make_writer
from meter_gateway.storage.influxdb.sink import ALWAYS_DURABLE, DirectSink
from meter_gateway.storage.influxdb.writer import BatchWriter, LineClient
from meter_gateway.storage.lineprotocol import ReadingEncoder

__all__ = ["DeadLetterReplay", "DeadLetterReplayReport"]

log = logging.getLogger("meter_gateway.deadletters")

NS = 1_000_000_000


@dataclass(slots=True)
class DeadLetterReplayReport:
    """What a dead-letter replay did; `text()` is the summary the command prints."""

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
    """The pipeline's dead-letter store in a dead-letter replay: keeps rejections here,
    writes nothing (a record still rejected stays where it is)."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, publish=None)
        self.records: list[dict[str, Any]] = []

    @property
    def durable(self) -> int:
        return ALWAYS_DURABLE  # nothing is written, so nothing is waited for

    def add(self, record: dict[str, Any]) -> int:
        self.records.append(record)
        return 0

    async def wait_durable(self, seq: int) -> None:
        return None


class _RecordSink(DirectSink):
    """Lines into the database writer (or nowhere, dry run), each noted for its record."""

    def __init__(self, writer: BatchWriter | None) -> None:
        super().__init__(writer)
        self.add = self._note
        self.added = 0  # lines handed over in this run
        self.by_line: dict[str, str] = {}  # line -> record id, for the chunk being written
        self.current = ""  # the id of the record being handled

    def _note(self, line: str) -> int:
        self.added += 1
        self.by_line[line] = self.current
        if self.writer is not None:
            self.writer.add(line)
        return 0


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
        client: LineClient | None = None,
        progress: Callable[[str], None] | None = None,
        progress_every_s: float = 5.0,
        chunk: int | None = None,
    ) -> None:
        from meter_gateway.config.topology import load_topology

        self.config = config
        self.dry_run = dry_run
        self.directory = Path(config.gateway.data_dir) / "dead-letter"
        self.ledger = ReplayLedger(self.directory)
        self.report = DeadLetterReplayReport(dry_run=dry_run)
        self._progress = progress
        self._progress_every = progress_every_s
        st = config.storage
        self._chunk = chunk or st.batch_size
        self._routes = [
            (s.topic.split("/"), FORMATS[s.format], s.format) for s in config.mqtt.subscriptions
        ]
        topology = load_topology(config.topology.file) if config.topology.file else {}
        self.client: LineClient | None = None
        self.writer: BatchWriter | None = None
        if not dry_run:
            self.client = client if client is not None else make_client(st)
            self.writer = make_writer(self.client, st, on_bad_line=self._bad_line)
        self.sink = _RecordSink(self.writer)
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
        # record id -> indexes still rejected (partly replayed)
        self._rests: dict[str, list[int | list[int]]] = {}

    # -- what a record is (plans.py) ---------------------------------------------------------
    def _route(self, topic: str) -> tuple[PayloadFormat, str | None, str] | None:
        for levels, fmt, name in self._routes:
            ok, topic_id = match_topic(levels, topic)
            if ok:
                return fmt, topic_id, name
        return None

    # -- the run ---------------------------------------------------------------------------
    async def run(self, lines: Iterable[DeadLetterLine]) -> DeadLetterReplayReport:
        """Put the records (already selected) through again; return the report."""
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
                stored = self._resubmit(dl, rec, self.ledger.rest(dl.id))
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
            if task is not None and self.writer is not None and self.client is not None:
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

    def _resubmit(self, dl: DeadLetterLine, rec: dict[str, Any], rest: Any = None) -> int | None:
        """Put one record through again; the readings it stored, or None when it is not
        replayed. `rest`: of a record replayed in part before, the indexes still to go."""
        plan = plan_for(rec, self._route)
        if isinstance(plan, ElementsPlan) and rest is not None:
            plan = only_elements(plan, expand_indexes(rest))
        if isinstance(plan, SkipPlan):
            self.report.skipped[plan.why] += 1
            return None
        at = received_at(rec)
        self.now = int(at.timestamp()) * NS + at.microsecond * 1000 if at else time.time_ns()
        self.sink.current = dl.id
        added0, dup0 = self.sink.added, self.pipeline.duplicates
        self.rejections.records.clear()
        p = self.pipeline
        if isinstance(plan, MessagePlan):
            p.handle_message(plan.topic, plan.payload, plan.fmt, plan.topic_id)
        elif isinstance(plan, ElementPlan):
            p.handle_message(plan.topic, plan.payload, element_format(plan.index), None)
        elif isinstance(plan, ElementsPlan):
            p.handle_message(plan.topic, plan.elements, elements_format(plan.indexes), None)
        else:
            p.handle_reading(plan.obj, plan.source, plan.device)
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
            if isinstance(plan, ElementsPlan):
                # Its elements still rejected get the next dead-letter replay's chance, as
                # they would have each as a record of its own.
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
