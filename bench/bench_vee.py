"""VEE's cost: the per-reading hook, the day computations, and a month's replay.

    .venv/bin/python bench/bench_vee.py [--meters 200] [--days 30] [--repeat 3] [--no-replay]

Three measurements, each against a baseline taken in the same run:

1. **hook**: `VeeService.reading` (what the pipeline calls for every stored reading)
   for 15-minute meters (every reading kept) and for meters reporting every 2 s (about
   2 kept an interval), against an empty hook of the same shape: µs per reading.
2. **days**: `--meters` meters over `--days` local days with a few gaps each, all days
   closed in one go (`compute`): meter-days/s, estimates/s.
3. **replay**: the month scenario (`simulators/scenarios/month.yaml`: 200 meters, 30
   days, comms gaps and late back-fill) through `Replay` into a database client that
   accepts and discards (so the database's speed is not measured), with estimation
   and daily figures on and off: readings/s and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import common  # bench/common.py: run as `python bench/<name>.py`

from meter_gateway.config.schema import Config
from meter_gateway.gateway.reading import Reading
from meter_gateway.gateway.replay import Replay
from meter_gateway.gateway.vee.service import VeeService
from meter_gateway.storage.lineprotocol import ReadingEncoder

NS = 1_000_000_000
START = int(datetime(2026, 10, 5, tzinfo=UTC).timestamp())


class NullClient:
    """A database that takes every batch at once."""

    target = "nowhere (discarded)"

    async def write(self, body: bytes) -> None:
        return None

    async def close(self) -> None:
        return None


def service(folder: Path, **sections: object) -> tuple[VeeService, list[str]]:
    lines: list[str] = []
    config = Config.model_validate({"daily": {"settle_s": 0}, **sections})
    vee = VeeService(
        config,
        {},
        folder=folder,
        add_line=lambda line: lines.append(line) or len(lines),
        prefix=ReadingEncoder("s").prefix,
        precision_divisor=NS,
    )
    return vee, lines


def readings(meters: int, n: int, step_s: int) -> list[Reading]:
    out = []
    for i in range(n):
        t = START + i * step_s
        for m in range(meters):
            kwh = 1000.0 + m + i * step_s / 9000
            out.append(Reading(f"m-{m:05d}", t * NS, "mqtt", {"energy_import_kwh": kwh}))
    return out


def bench_hook(repeat: int) -> None:
    print("1. the per-reading hook (µs per reading, median of", repeat, "runs)")
    cases = {
        "15-minute meters": (1000, 96, 900, False),
        "2-second meters": (100, 4000, 2, False),
        "back-filled days": (1000, 96, 900, True),  # history in days already closed
    }
    for name, (meters, n, step, closed) in cases.items():
        rs = readings(meters, n, step)
        hook_us, base_us = [], []
        for _ in range(repeat):
            with tempfile.TemporaryDirectory() as d:
                vee, _ = service(Path(d))
                if closed:
                    vee.plan((START + 30 * 86_400) * NS)  # every day of the readings closed
                t0 = time.perf_counter()
                for r in rs:
                    vee.reading(r)
                vee.store.flush()
                hook_us.append((time.perf_counter() - t0) / len(rs) * 1e6)
                kept = sum(vee.store.size(day) for day in vee.store.days()) // 29
            seen: dict[str, int] = {}

            def empty(r: Reading, seen: dict[str, int] = seen) -> None:
                v = r.values
                if v.get("energy_import_kwh") is None and v.get("energy_export_kwh") is None:
                    return
                seen[r.meter_id] = r.ts_ns

            t0 = time.perf_counter()
            for r in rs:
                empty(r)
            base_us.append((time.perf_counter() - t0) / len(rs) * 1e6)
        h, b = statistics.median(hook_us), statistics.median(base_us)
        print(
            f"   {name:18} {len(rs):>9,} readings: hook {h:.2f} µs, empty hook {b:.2f} µs, "
            f"VEE adds {h - b:.2f} µs; {kept:,} samples kept ({kept / len(rs):.2f} per reading)"
        )


def bench_days(meters: int, days: int) -> None:
    print(f"2. computing days: {meters} meters x {days} days, gaps of 1 h and 6 h every 3rd day")
    n = days * 96 + 1
    rs = []
    for i in range(n):
        day, slot = divmod(i, 96)
        if day % 3 == 2 and (8 <= slot < 12 or 40 <= slot < 64):
            continue
        t = START + i * 900
        for m in range(meters):
            kwh = 1000.0 + m + i * 0.1 + (slot % 7) * 0.01
            rs.append(Reading(f"m-{m:05d}", t * NS, "mqtt", {"energy_import_kwh": kwh}))
    with tempfile.TemporaryDirectory() as d:
        vee, lines = service(Path(d), gateway={"timezone": "Europe/Berlin"})
        vee.plan(START * NS)
        for r in rs:
            vee.reading(r)
        t0 = time.perf_counter()
        res = vee.compute((START + n * 900 + 86_400) * NS)
        took = time.perf_counter() - t0
    assert res is not None
    print(
        f"   {res.meter_days:,} meter-days and {res.estimates:,} estimates in {took:.2f} s: "
        f"{res.meter_days / took:,.0f} meter-days/s ({took / max(res.meter_days, 1) * 1e3:.2f} "
        f"ms each); {len(lines):,} lines"
    )


async def _replay(path: Path, topology: Path, on: bool, data_dir: Path) -> tuple[float, dict]:
    config = Config.model_validate(
        {
            "gateway": {"data_dir": str(data_dir), "timezone": "Europe/Berlin"},
            "topology": {"file": str(topology)},
            "events": {"enabled": False},
            "estimation": {"enabled": on},
            "daily": {"enabled": on},
        }
    )
    summary = await Replay(config, client=NullClient()).run([path])
    return summary.rate, summary.daily


def bench_replay(repeat: int) -> None:
    print(
        "3. replaying the month scenario (200 meters, 30 days), detectors off, database discarded"
    )
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "meter_gateway.gateway.cli",
                "simulate",
                "replay-file",
                "--scenario",
                str(common.ROOT / "simulators/scenarios/month.yaml"),
                "--out",
                str(folder / "month.jsonl"),
                "--quiet",
            ],
            check=True,
        )
        print(f"   generated in {time.perf_counter() - t0:.0f} s")
        rates: dict[bool, list[float]] = {True: [], False: []}
        daily: dict = {}
        for k in range(repeat):
            for on in (k % 2 == 0, k % 2 != 0):  # alternate which goes first
                rate, stats = asyncio.run(
                    _replay(
                        folder / "month.jsonl",
                        folder / "month.topology.csv",
                        on,
                        folder / f"v{k}{on}",
                    )
                )
                rates[on].append(rate)
                daily = stats or daily
        on, off = statistics.median(rates[True]), statistics.median(rates[False])
        print(
            f"   VEE on {on:,.0f} readings/s, off {off:,.0f} readings/s: ratio {on / off:.2f} "
            f"(runs: on {', '.join(f'{r:,.0f}' for r in rates[True])}; off "
            f"{', '.join(f'{r:,.0f}' for r in rates[False])})"
        )
        print(
            f"   {daily.get('meter_days', 0):,.0f} meter-days, "
            f"{daily.get('estimates_written', 0):,.0f} estimates written, "
            f"{daily.get('estimates_replaced', 0):,.0f} replaced by late actuals"
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--meters", type=int, default=200)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-replay", action="store_true")
    args = ap.parse_args()
    print("bench_vee")
    print("\n".join(common.environment(detectors=True)))
    bench_hook(args.repeat)
    bench_days(args.meters, args.days)
    if not args.no_replay:
        bench_replay(args.repeat)


if __name__ == "__main__":
    main()
