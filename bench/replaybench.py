"""What the detector-scoring benches share: a folder, a replay file made from a fleet
(with its truth and topology beside it), and a replay of it with the detectors on."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from meter_gateway.config.schema import Config
from meter_gateway.gateway.replay import Replay, ReplaySummary
from meter_gateway.simulators.fleet import Fleet
from meter_gateway.simulators.meter import rfc3339
from meter_gateway.simulators.replayfile import write_replay_file
from meter_gateway.simulators.topology import write_csv

__all__ = ["folder", "generate", "replay"]


@contextlib.contextmanager
def folder(path: Path | None, prefix: str) -> Iterator[Path]:
    """`path` (made if missing, kept), or a temporary folder removed at the end."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def generate(
    fleet: Fleet, where: Path, reuse: bool, *, progress_every_s: float = 10.0
) -> tuple[Path, float | None]:
    """The replay file of `fleet` (truth and topology beside it) and the seconds it took;
    with `reuse`, an existing one (None for the time)."""
    out = where / "traffic.jsonl.gz"
    truth, topology = where / "traffic.truth.jsonl", where / "traffic.topology.csv"
    if reuse and out.exists() and truth.exists() and topology.exists():
        return out, None
    write_csv(fleet.topology, topology)
    t0 = time.perf_counter()
    stats = write_replay_file(
        fleet,
        out,
        truth,
        on_progress=lambda s, t: print(
            f"  generating: sim {rfc3339(t)}, {s.by_kind['reading']:,} readings",
            file=sys.stderr,
        ),
        progress_every_s=progress_every_s,
    )
    wall = time.perf_counter() - t0
    print(stats.summary(), file=sys.stderr)
    return out, wall


def replay(
    path: Path,
    where: Path,
    *,
    store: bool,
    storage: dict[str, Any] | None = None,
    events: dict[str, Any] | None = None,
    progress_every_s: float = 10.0,
) -> tuple[ReplaySummary, Config]:
    """`meter-gateway replay` of `path` with the topology beside it (and `events:`
    settings other than the defaults); events go to `events-store.jsonl` or
    `events-nostore.jsonl` in `where`."""
    name = "store" if store else "nostore"
    config = Config.model_validate(
        {
            "gateway": {"id": "gw-bench", "data_dir": str(where / f"var-{name}")},
            "topology": {"file": str(path.with_name("traffic.topology.csv"))},
            "storage": storage or {},
            "events": events or {},
        }
    )
    with (where / f"events-{name}.jsonl").open("wb") as out:
        r = Replay(
            config,
            store=store,
            events_out=out,
            progress=lambda line: print("  " + line, file=sys.stderr),
            progress_every_s=progress_every_s,
        )
        if r.summary.detectors != "on":
            sys.exit(f"the detectors are {r.summary.detectors}: nothing to score")
        return asyncio.run(r.run([path])), config
