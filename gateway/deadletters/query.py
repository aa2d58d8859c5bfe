"""Selecting dead-letter records and listing them by reason (`dead-letter list`).

A selection narrows the records of `<data_dir>/dead-letter/*.jsonl` by when they were
received, their reason and their source. `list` groups them by reason, normalised so
that one cause is one row: numbers become `N` and times `T`, so
`voltage_v[1]: 1234.0 above 1000.0` and `voltage_v[0]: 1250.5 above 1000.0` both read
`voltage_v[N]: N above N` (per source; a batch element's reason keeps its
`readings[N]: ` prefix, so it is a row of its own). Each row has the count, the first
and last time received, and an example (file:line, topic or device, the reason in full).

Only complete lines are read (a line being appended is left for the next run): safe
while a gateway runs.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from meter_gateway.storage.deadletter import DeadLetterLine, read_records, record_files

__all__ = [
    "ReasonGroup",
    "Selection",
    "group_reasons",
    "normalise_reason",
    "parse_since",
    "received_at",
    "record_count",
    "render_table",
    "select",
]

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
