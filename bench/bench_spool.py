"""The spool's design choice: a segment log against SQLite, on this machine's disk.

    .venv/bin/python bench/bench_spool.py [--lines 100000] [--max-commits 1000]
                                          [--groups 1,10,100,1000] [--repeat 3]
                                          [--drain-batch 5000] [--dir DIR]

The same workload for both: line-protocol lines of a full reading (~200 bytes, as the
encoder writes them), group-committed G lines at a time, then drained in order.

- **SQLite**: WAL mode, `synchronous=FULL`, a table `spool (seq INTEGER PRIMARY KEY,
  line TEXT)`. A group commit is one transaction: `executemany` of the G lines, then
  COMMIT (an fsync of the WAL). Drain: select the next `--drain-batch` lines in seq
  order, hand them to the writer, delete them (one transaction each).
- **Segment spool** (`meter_gateway.storage.spool.Spool`, as the gateway uses it):
  `add(line)` per line, then `await commit()` (a record: write + fsync). Drain:
  `Spool.feed()` into a writer that finishes lines in batches of `--drain-batch`, as
  the gateway's BatchWriter with `batch_size` does (done as soon as handed over: no
  database here); the spool releases what is done (ledger, deleted segments).
  Two drains: from memory (the same Spool that committed the lines still holds them,
  the steady state while the database keeps up) and from the files (a new Spool
  opened on a copy of the folder: the start-up scan with its checksums, then every
  record read back and checked, as after a restart or a backlog beyond its cache).

Both do their disk work off the event loop (`asyncio.to_thread`), as the gateway
must. Each G writes `min(--lines, G x --max-commits)` lines (fewer for small G, where
every commit costs an fsync). Each measurement is repeated `--repeat` times, in a new
folder each time, the two stores taking turns; the table gives medians.

The folder is on the repository's filesystem, or `--dir`, never on tmpfs (an fsync
there costs nothing). The page cache is not dropped: what is read back was written
moments before, as in a gateway that drains a recent backlog.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common
from report import print_table  # bench/report.py: run as `python bench/<name>.py`

from meter_gateway.storage.spool import Spool

REPO = common.ROOT


# -- workload ---------------------------------------------------------------------------------
def make_lines(n: int) -> list[str]:
    """n lines of `meter_reading` as the encoder writes them, from 1,000 meters."""
    out = []
    t0 = 1_795_797_523
    for j in range(n):
        m, step = j % 1000, j // 1000
        x = (m * 7919 + step * 104_729) % 1000 / 1000.0
        out.append(
            f"meter_reading,meter_id=m-{m:06d},source=mqtt "
            f"energy_import_kwh={10_000 + m + step * 0.25 + x * 0.1:.3f},"
            f"energy_export_kwh={12.5 + step * 0.01:.2f},power_w={800 + 400 * x:.1f},"
            f"voltage_l1_v={229.0 + x:.1f},voltage_l2_v={231.2 - x:.1f},"
            f"voltage_l3_v={230.4 + x / 2:.1f},power_factor={0.9 + x / 20:.3f},"
            f'quality="actual" {t0 + step * 900}'
        )
    return out


class FakeWriter:
    """The database writer as the spool sees it: lines are done in batches, at once."""

    def __init__(self, total: int, batch: int) -> None:
        self._total = total
        self._batch = batch
        self._buffered = 0
        self.fed = 0
        self.lines_done = 0
        self.got: list[list[str]] = []  # checked after the clock stops

    @property
    def pending(self) -> int:
        return self._buffered

    def extend(self, lines: list[str]) -> None:
        self.got.append(lines)
        self.fed += len(lines)
        self._buffered += len(lines)
        if self._buffered >= self._batch or self.fed >= self._total:
            self.lines_done += self._buffered
            self._buffered = 0

    def check(self, lines: list[str]) -> None:
        got = [line for chunk in self.got for line in chunk]
        if got != lines:
            raise RuntimeError(f"drained {len(got)} lines, not the {len(lines)} written, in order")


@dataclass
class Run:
    append_s: float
    commits: int
    drain_s: float
    drain_disk_s: float = 0.0  # the segment spool's drain from the files


# -- SQLite -----------------------------------------------------------------------------------
def _sqlite_open(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":
        raise RuntimeError(f"SQLite refused WAL mode ({mode})")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE spool (seq INTEGER PRIMARY KEY, line TEXT NOT NULL)")
    return db


def _sqlite_commit(db: sqlite3.Connection, group: list[tuple[str]]) -> None:
    db.execute("BEGIN")
    db.executemany("INSERT INTO spool (line) VALUES (?)", group)
    db.execute("COMMIT")


def _sqlite_take(db: sqlite3.Connection, after: int, n: int) -> list[tuple[int, str]]:
    return db.execute(
        "SELECT seq, line FROM spool WHERE seq > ? ORDER BY seq LIMIT ?", (after, n)
    ).fetchall()


def _sqlite_release(db: sqlite3.Connection, upto: int) -> None:
    db.execute("BEGIN")
    db.execute("DELETE FROM spool WHERE seq <= ?", (upto,))
    db.execute("COMMIT")


async def run_sqlite(folder: Path, lines: list[str], group: int, drain_batch: int) -> Run:
    db = _sqlite_open(folder / "spool.db")
    rows = [(line,) for line in lines]
    commits = 0
    t0 = time.perf_counter()
    for i in range(0, len(rows), group):
        await asyncio.to_thread(_sqlite_commit, db, rows[i : i + group])
        commits += 1
    append_s = time.perf_counter() - t0

    writer = FakeWriter(len(lines), drain_batch)
    last = 0
    t0 = time.perf_counter()
    while True:
        taken = await asyncio.to_thread(_sqlite_take, db, last, drain_batch)
        if not taken:
            break
        writer.extend([line for _, line in taken])
        last = taken[-1][0]
        await asyncio.to_thread(_sqlite_release, db, last)  # the writer has them all
    drain_s = time.perf_counter() - t0
    left = db.execute("SELECT count(*) FROM spool").fetchone()[0]
    db.close()
    writer.check(lines)
    if left:
        raise RuntimeError(f"SQLite: {left} lines left after the drain")
    return Run(append_s, commits, drain_s)


# -- the segment spool --------------------------------------------------------------------------
async def _drain(spool: Spool, total: int, drain_batch: int) -> FakeWriter:
    writer = FakeWriter(total, drain_batch)
    feeder = asyncio.create_task(spool.feed(writer))
    try:
        await asyncio.wait_for(spool.wait_empty(), 600)
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
    return writer


async def run_spool(folder: Path, lines: list[str], group: int, drain_batch: int) -> Run:
    spool = Spool(folder / "spool")  # the gateway's defaults (16 MiB segments)
    await spool.open()
    t0 = time.perf_counter()
    for i in range(0, len(lines), group):
        for line in lines[i : i + group]:
            spool.add(line)
        await spool.commit()
    append_s = time.perf_counter() - t0
    commits = spool.fsyncs
    if spool.durable != commits:
        raise RuntimeError(f"spool: {spool.durable} records durable after {commits} commits")

    # A copy of the folder, for the drain from the files (not timed).
    shutil.copytree(folder / "spool", folder / "spool-copy")

    t0 = time.perf_counter()
    writer = await _drain(spool, len(lines), drain_batch)
    drain_s = time.perf_counter() - t0
    await spool.close()
    writer.check(lines)
    if spool.records or spool.bytes:
        raise RuntimeError(f"spool: {spool.records} records ({spool.bytes} bytes) left")

    t0 = time.perf_counter()
    reopened = Spool(folder / "spool-copy")
    await reopened.open()
    writer = await _drain(reopened, len(lines), drain_batch)
    drain_disk_s = time.perf_counter() - t0
    await reopened.close()
    writer.check(lines)
    if reopened.lines_recovered != len(lines):
        raise RuntimeError(f"spool: {reopened.lines_recovered} lines found on reopening")
    return Run(append_s, commits, drain_s, drain_disk_s)


# -- environment ----------------------------------------------------------------------------------
def choose_dir(asked: str | None) -> Path:
    """--dir, else the system's temporary folder if it is on the repository's
    filesystem and not in memory, else the repository's folder."""
    if asked:
        return Path(asked)
    tmp = Path(tempfile.gettempdir())
    if not common.in_memory(tmp) and common.mount_of(tmp).device == common.mount_of(REPO).device:
        return tmp
    return REPO


def disk_facts(dev: str) -> str:
    name = Path(dev).name
    facts = []
    for attr, label in (("rotational", "rotational"), ("write_cache", "write cache")):
        try:
            value = Path(f"/sys/block/{name}/queue/{attr}").read_text().strip()
            facts.append(f"{label} {value}")
        except OSError:
            pass
    return ", ".join(facts)


def fsync_latency(folder: Path, n: int = 200) -> str:
    """Raw 200-byte append + fsync, n times: the floor for one group commit."""
    path = folder / "probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    took = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            os.write(fd, b"x" * 200)
            os.fsync(fd)
            took.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    took.sort()
    return (
        f"median {took[n // 2] * 1000:.2f} ms, p90 {took[n * 9 // 10] * 1000:.2f} ms "
        f"per 200-byte append + fsync ({n} in a row)"
    )


def environment(folder: Path) -> list[str]:
    mnt = common.mount_of(folder)
    return [
        *common.environment(),
        f"sqlite3     {sqlite3.sqlite_version}",
        f"folder      {folder}",
        f"filesystem  {mnt.fstype} on {mnt.device} ({disk_facts(mnt.device)}), mounted on "
        f"{mnt.point} ({mnt.options})",
        f"raw fsync   {fsync_latency(folder)}",
    ]


# -- report ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=100_000, help="lines per measurement, at most")
    ap.add_argument("--max-commits", type=int, default=1_000, help="group commits, at most")
    ap.add_argument("--groups", default="1,10,100,1000", help="lines per group commit")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--drain-batch", type=int, default=5_000, help="lines per database write")
    ap.add_argument("--dir", help="where the temporary folders go (not tmpfs)")
    args = ap.parse_args(argv)
    groups = [int(g) for g in args.groups.split(",")]

    base = choose_dir(args.dir)
    with tempfile.TemporaryDirectory(prefix="bench-spool-", dir=base) as tmp:
        work = Path(tmp)
        if common.in_memory(work):
            print(f"{work} is in memory (tmpfs): fsyncs cost nothing there; use --dir")
            return 2
        print("Spool benchmark: SQLite (WAL, synchronous=FULL) against the segment spool")
        for line in environment(work):
            print("  " + line)
        all_lines = make_lines(args.lines)
        size = sum(len(s) + 1 for s in all_lines) / len(all_lines)
        print(f"  workload    up to {args.lines:,} lines of {size:.0f} bytes on average")
        print()

        results: dict[tuple[int, str], list[Run]] = {}
        k = 0
        for group in groups:
            n = min(args.lines, group * args.max_commits)
            lines = all_lines[:n]
            for rep in range(args.repeat):
                order = ["sqlite", "spool"] if rep % 2 == 0 else ["spool", "sqlite"]
                for store in order:
                    k += 1
                    folder = work / f"{k:03d}-{store}"
                    folder.mkdir()
                    run = run_sqlite if store == "sqlite" else run_spool
                    r = asyncio.run(run(folder, lines, group, args.drain_batch))
                    shutil.rmtree(folder)
                    results.setdefault((group, store), []).append(r)
                    disk = f", from files {n / r.drain_disk_s:10,.0f}" if r.drain_disk_s else ""
                    print(
                        f"G={group:<5} {rep + 1}/{args.repeat} {store:<6} {n:7,} lines: "
                        f"append {n / r.append_s:9,.0f} lines/s, {r.commits / r.append_s:6,.0f} "
                        f"commits/s; drain {n / r.drain_s:10,.0f} lines/s{disk}",
                        flush=True,
                    )

        print()
        print(f"  raw fsync   after the runs: {fsync_latency(work)}")

    med = statistics.median
    rows = []
    for group in groups:
        n = min(args.lines, group * args.max_commits)
        sq, sp = results[(group, "sqlite")], results[(group, "spool")]
        rows.append(
            [
                str(group),
                f"{n:,}",
                f"{med(n / r.append_s for r in sq):,.0f}",
                f"{med(n / r.append_s for r in sp):,.0f}",
                f"{med(r.commits / r.append_s for r in sq):,.0f}",
                f"{med(r.commits / r.append_s for r in sp):,.0f}",
                f"{med(n / r.drain_s for r in sq):,.0f}",
                f"{med(n / r.drain_s for r in sp):,.0f}",
                f"{med(n / r.drain_disk_s for r in sp):,.0f}",
            ]
        )
    print()
    print(f"medians of {args.repeat} runs; lines/s unless said")
    print_table(
        [
            "G",
            "lines",
            "append SQLite",
            "append spool",
            "fsyncs/s SQLite",
            "fsyncs/s spool",
            "drain SQLite",
            "drain spool (memory)",
            "drain spool (files)",
        ],
        rows,
    )
    print(
        "(fsyncs/s: group commits per second while appending; each is one fsync for the "
        "spool, one of the WAL for SQLite, plus a checkpoint's now and then)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
