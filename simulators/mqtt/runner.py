"""Pacing a fleet by simulated time: ``run_fleet`` hands each message to a publish callable
when its simulated time comes and writes the ground-truth log of the faults injected.

It knows nothing of MQTT (the callable does the sending), so it runs as well against a
``MqttPublisher`` as against a list that collects the messages.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meter_gateway.simulators.meter import rfc3339
from meter_gateway.simulators.truth import TruthLog

if TYPE_CHECKING:
    from meter_gateway.simulators.fleet import Fleet, Message

__all__ = ["RunStats", "run_fleet"]


@dataclass(slots=True)
class RunStats:
    """What a run published and injected; ``sim_t`` is the last simulated time reached."""

    meters: int
    sim_start: float
    sim_t: float = 0.0
    messages: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    wall_start: float = field(default_factory=time.monotonic)
    wall_s: float = 0.0
    truth: list[dict[str, Any]] = field(default_factory=list)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.wall_start, 1e-9)
        return (
            f"sim {rfc3339(self.sim_t)} | meters {self.meters} | "
            f"{self.messages / elapsed:,.0f} msg/s | sent {self.messages:,} | "
            f"faults {sum(self.faults.values())}"
        )

    def summary(self) -> str:
        kinds = ", ".join(f"{n:,} {k}" for k, n in sorted(self.by_kind.items())) or "nothing"
        faults = ", ".join(f"{n} {k}" for k, n in sorted(self.faults.items())) or "none"
        return (
            f"simulated {rfc3339(self.sim_start)} .. {rfc3339(self.sim_t)} for {self.meters} "
            f"meters in {self.wall_s:.1f} s wall time\n"
            f"published {self.messages:,} messages ({kinds})\n"
            f"faults injected: {faults}"
        )


def run_fleet(
    fleet: Fleet,
    publish: Callable[[Message], None],
    *,
    speed: float = 1.0,
    truth_out: str | Path | None = None,
    stop: threading.Event | None = None,
    on_progress: Callable[[RunStats], None] | None = None,
    progress_every_s: float = 1.0,
) -> RunStats:
    """Publish the fleet's messages, ``speed`` simulated seconds per wall second (0: as fast
    as possible; when publishing cannot keep up it also goes as fast as it can)."""
    stop = stop or threading.Event()
    stats = RunStats(meters=len(fleet.meters), sim_start=fleet.start, sim_t=fleet.start)
    truth = TruthLog(truth_out) if truth_out is not None else None
    if truth is not None:
        truth.__enter__()
    wall0 = time.monotonic()
    next_progress = wall0 + progress_every_s
    try:
        for step in fleet.steps():
            for record in step.truth:
                stats.faults[record["type"]] += 1
                stats.truth.append(record)
                if truth is not None:
                    truth.write(record)
            for msg in step.messages:
                if speed > 0:
                    delay = wall0 + (msg.t - fleet.start) / speed - time.monotonic()
                    if delay > 0 and stop.wait(delay):
                        return stats
                if stop.is_set():
                    return stats
                publish(msg)
                stats.messages += 1
                stats.by_kind[msg.kind] += 1
            stats.sim_t = step.t
            if speed > 0 and not step.messages:
                delay = wall0 + (step.t - fleet.start) / speed - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    return stats
            if on_progress is not None and time.monotonic() >= next_progress:
                on_progress(stats)
                next_progress = time.monotonic() + progress_every_s
            if stop.is_set():
                return stats
        return stats
    finally:
        stats.wall_s = time.monotonic() - wall0
        if truth is not None:
            truth.__exit__(None, None, None)
