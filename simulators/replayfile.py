"""A fleet's traffic as a replay file: what ``meter-gateway replay`` reads back.

One JSON line per thing the gateway would have received, in arrival order:

- a reading (format ``json``, with ``meter_id``); a concentrator batch becomes one line per
  reading it carries, so a replay sees them as the gateway's batch decoder would;
- a meter event ``{"meter_id", "ts", "type": "last_gasp"}`` (power_restored, tamper, ...);
- a status line ``{"meter_id", "ts", "status": "offline"}`` for a meter's (emulated) will;
- a malformed payload exactly as the meter sent it, so replay rejects it as live would.

Each JSON object line also carries ``"_at"``: the simulated time at which the gateway would
have received it (epoch seconds). Replay takes it as its clock, so validation's future bound
and the detectors' timers see what a live gateway would have seen. A line that is not a JSON
object (a truncated frame) has no ``_at``; replay judges it at the time reached so far.

The ground-truth log of the injected faults is written beside it (``simulators.truth``).
Files ending in ``.gz`` are gzip-compressed (fast level, no name or time in the header, so the
same fleet and seed give the same bytes).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import orjson

from meter_gateway.simulators.fleet import Fleet, Message
from meter_gateway.simulators.meter import rfc3339
from meter_gateway.simulators.truth import TruthLog

__all__ = ["ReplayFileStats", "default_truth_path", "message_lines", "write_replay_file"]

_BATCH_HEAD = b'{"concentrator_id":'
_READINGS_AT = b',"readings":['


@dataclass(slots=True)
class ReplayFileStats:
    """What was written: lines by kind, faults by type, and how long it took."""

    path: Path
    truth_path: Path | None
    lines: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    sim_start: float = 0.0
    sim_end: float = 0.0
    wall_s: float = 0.0

    def summary(self) -> str:
        kinds = ", ".join(f"{n:,} {k}" for k, n in sorted(self.by_kind.items())) or "nothing"
        faults = ", ".join(f"{n} {k}" for k, n in sorted(self.faults.items())) or "none"
        rate = self.by_kind["reading"] / self.wall_s if self.wall_s > 0 else 0.0
        return (
            f"wrote {self.lines:,} lines to {self.path} ({kinds}) in {self.wall_s:.1f} s "
            f"({rate:,.0f} readings/s)\n"
            f"simulated {rfc3339(self.sim_start)} .. {rfc3339(self.sim_end)}\n"
            f"faults injected: {faults}"
            + (f" (truth log: {self.truth_path})" if self.truth_path else "")
        )


def default_truth_path(out: str | Path) -> Path:
    """``week.jsonl.gz`` -> ``week.truth.jsonl`` beside it."""
    out = Path(out)
    name = out.name
    for suffix in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return out.with_name(f"{name}.truth.jsonl")


def _with_at(obj_bytes: bytes, at: bytes) -> bytes:
    """A JSON object's bytes with ``"_at"`` appended (no re-encoding of the rest)."""
    if obj_bytes.endswith(b"}") and obj_bytes.startswith(b"{"):
        if obj_bytes == b"{}":
            return b'{"_at":' + at + b"}"
        return obj_bytes[:-1] + b',"_at":' + at + b"}"
    return obj_bytes  # not an object (a truncated frame): kept exactly as sent


def _one_line(raw: bytes) -> bytes:
    # A line is a record: a payload with a newline in it (none of the fleet's do) would
    # become two. Replaced by a space, which JSON treats as whitespace anyway.
    return raw.replace(b"\n", b" ").replace(b"\r", b" ") if b"\n" in raw or b"\r" in raw else raw


def _batch_readings(payload: bytes) -> list[bytes]:
    """The readings of a concentrator batch, each as its own JSON bytes."""
    try:
        batch = orjson.loads(payload)
    except orjson.JSONDecodeError:
        batch = None
    if isinstance(batch, dict) and isinstance(batch.get("readings"), list):
        return [orjson.dumps(r) for r in batch["readings"]]
    # A reading orjson refuses (NaN) or a corrupt one (a truncated frame), which the fleet
    # sends in a batch of its own: cut the batch's envelope off the known layout, and
    # split the rest with the tolerant parser when it can.
    start = payload.find(_READINGS_AT)
    if not payload.startswith(_BATCH_HEAD) or start < 0 or not payload.endswith(b"]}"):
        return [payload]
    inner = payload[start + len(_READINGS_AT) : -2]
    try:
        items = json.loads(b"[" + inner + b"]")
    except ValueError:
        return [inner]  # one broken reading: kept exactly as it was sent
    # The standard library writes NaN back as NaN: the replay rejects it as live would.
    return [json.dumps(r, separators=(",", ":")).encode() for r in items]


def message_lines(msg: Message) -> list[bytes]:
    """One message of the fleet as replay lines (without the trailing newline)."""
    at = orjson.dumps(msg.t)
    if msg.kind == "reading" or msg.kind == "event":
        return [_one_line(_with_at(msg.payload, at))]
    if msg.kind == "batch":
        return [_one_line(_with_at(r, at)) for r in _batch_readings(msg.payload)]
    if msg.kind == "status":
        meter_id = msg.topic.split("/")[1]
        status = msg.payload.decode("utf-8", "replace").strip()
        return [
            orjson.dumps(
                {"meter_id": meter_id, "ts": rfc3339(msg.t), "status": status, "_at": msg.t}
            )
        ]
    raise ValueError(f"unknown message kind {msg.kind!r}")


def _open(path: Path, stack: contextlib.ExitStack) -> IO[bytes] | gzip.GzipFile:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = stack.enter_context(path.open("wb", buffering=1 << 20))
    if path.name.endswith(".gz"):
        # Level 1: the file is written once and read a few times; level 6 would make
        # compression as slow as the simulation. No name, no mtime: same bytes every run.
        gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0)
        return stack.enter_context(gz)  # closed before `raw`: the trailer is written first
    return raw


def write_replay_file(
    fleet: Fleet,
    out: str | Path,
    truth_out: str | Path | None = None,
    *,
    on_progress: Callable[[ReplayFileStats, float], None] | None = None,
    progress_every_s: float = 2.0,
) -> ReplayFileStats:
    """Run ``fleet`` as fast as it goes and write its traffic to ``out`` (and its truth log).

    ``on_progress(stats, sim_t)`` is called every ``progress_every_s`` of wall time.
    """
    out = Path(out)
    truth_path = Path(truth_out) if truth_out is not None else None
    stats = ReplayFileStats(out, truth_path, sim_start=fleet.start, sim_end=fleet.start)
    wall0 = time.monotonic()
    next_progress = wall0 + progress_every_s
    with contextlib.ExitStack() as stack:
        f = _open(out, stack)
        truth = stack.enter_context(TruthLog(truth_path)) if truth_path is not None else None
        for step in fleet.steps():
            for record in step.truth:
                stats.faults[record["type"]] += 1
                if truth is not None:
                    truth.write(record)
            lines = _step_lines(step.messages, stats.by_kind)
            if lines:
                f.write(b"\n".join(lines) + b"\n")
                stats.lines += len(lines)
            stats.sim_end = step.t
            if on_progress is not None and time.monotonic() >= next_progress:
                on_progress(stats, step.t)
                next_progress = time.monotonic() + progress_every_s
    stats.wall_s = time.monotonic() - wall0
    return stats


def _step_lines(messages: Iterable[Message], by_kind: Counter[str]) -> list[bytes]:
    lines: list[bytes] = []
    for msg in messages:
        got = message_lines(msg)
        lines += got
        by_kind["reading" if msg.kind == "batch" else msg.kind] += len(got)
    return lines
