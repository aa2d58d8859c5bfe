"""Detector state per tracked meter, as RSS, and what the engine's operations cost.

    .venv/bin/python bench/bench_detector_state.py [--meters 100000] [--transformers 2000]
                                                  [--readings 4] [--repeat 3]

Each measurement runs in a fresh Python process (this script with `--child`), so
nothing another measurement allocated is in its RSS:

1. Build the topology (meter -> `MeterPlace(meter_id, transformer_id, feeder_id,
   phases=3)`, `--meters` meters evenly on `--transformers` transformers, 20
   transformers a feeder), or none ("no topology": every meter unknown to it). The
   topology is the gateway's, loaded with or without the detectors: not counted.
2. `gc.collect()`, then RSS (VmRSS from /proc/self/status): the baseline.
3. `Engine(EventsConfig(), topology, emit=list.append, now_ns=...)`, then `--readings`
   rounds: every meter one three-phase reading (every canonical field, fresh objects
   as the pipeline makes them, the meter id a new string as parsed from a message)
   through `engine.reading(r, now_ns)`. Meter i reads at its own phase of a
   15-minute interval and arrives 1 s after its stamp, so the readings are live,
   in order and normal: no event is expected (the run counts them). `engine.tick(now)`
   after every 1,000 readings (9 s of the simulated clock at 100,000 meters; the
   gateway ticks every second); the checks those ticks make are counted. Readings are
   built 1,000 at a time, outside the timed calls.
4. `gc.collect()`, RSS again: (RSS - baseline) / meters is the state per meter,
   including the engine's transformer states, its heap of silence checks and what
   the allocator keeps around freed readings (as in a running gateway).
5. `engine.snapshot()` (timed; its size), then a new engine restores it (timed), and
   its first tick, which checks every meter (a restore queues all of them), is timed.

`--repeat` runs each case (with topology, without) that many times, alternating; the
table gives medians and ranges. Exit status 1 if the median state per meter with the
topology is above 2 KiB.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from report import print_table  # bench/report.py: run as `python bench/<name>.py`

from meter_gateway.config.schema import EventsConfig
from meter_gateway.config.topology import MeterPlace
from meter_gateway.gateway.events.engine import Engine
from meter_gateway.gateway.events.event import Event
from meter_gateway.gateway.reading import Reading

NS = 1_000_000_000
INTERVAL_S = 900  # the meters' reading interval
CHUNK = 1_000  # readings built at a time, and fed between two ticks
TRANSFORMERS_PER_FEEDER = 20
GOAL_BYTES = 2048  # state per tracked meter (with its topology)
CASES = ("topology", "no topology")


def rss_bytes() -> int:
    """This process's resident set (VmRSS), after a full collection."""
    gc.collect()
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def meter_id(i: int) -> str:
    return f"m-{i:06d}"


def build_topology(meters: int, transformers: int) -> dict[str, MeterPlace]:
    """`meters` three-phase meters, evenly on `transformers` transformers."""
    per_tx = -(-meters // transformers)
    out = {}
    for i in range(meters):
        t = i // per_tx
        mid = meter_id(i)
        out[mid] = MeterPlace(
            mid,
            transformer_id=f"tx-{t:05d}",
            feeder_id=f"f-{t // TRANSFORMERS_PER_FEEDER:04d}",
            customer_id=f"c-{i:06d}",
            phases=3,
        )
    return out


def readings_chunk(start: int, stop: int, rnd: int, t0_ns: int, meters: int) -> list[Reading]:
    """Round `rnd`'s readings of meters start..stop-1: every canonical field, three
    phases, normal values (nothing an event is made of), fresh objects each time."""
    out = []
    for i in range(start, stop):
        x = (i * 7919 + rnd * 104_729) % 1000 / 1000.0
        ts = t0_ns + rnd * INTERVAL_S * NS + i * (INTERVAL_S * NS // meters)
        values = {
            "energy_import_kwh": 10_000.0 + i + rnd * 0.25 + x * 0.1,
            "energy_export_kwh": 12.5 + i * 0.0,  # constant: no reverse flow
            "power_w": 800.0 + 400.0 * x,
            "voltage_l1_v": 229.0 + x,
            "voltage_l2_v": 231.2 - x,
            "voltage_l3_v": 230.4 + x / 2,
            "current_l1_a": 1.2 + x,
            "current_l2_a": 0.9 + x,
            "current_l3_a": 1.4 + x,
            "power_factor": 0.9 + x / 20,
            "frequency_hz": 49.95 + x / 10,
        }
        out.append(Reading(f"m-{i:06d}", ts, "mqtt", values))
    return out


# -- one measurement, in a fresh process ------------------------------------------------------
def count_checks(engine: Engine) -> list[int]:
    """Count the silence checks the engine's ticks make (a one-element list)."""
    outage = engine._outage  # a benchmark looks inside
    check = outage.check
    n = [0]

    def counted(st: Any, now_ns: int) -> int:
        n[0] += 1
        return check(st, now_ns)

    outage.check = counted  # type: ignore[method-assign]
    return n


def child(case: str, meters: int, transformers: int, rounds: int) -> dict[str, Any]:
    """Measure one case in this (fresh) process; the results as a dict."""
    topology = build_topology(meters, transformers) if case == "topology" else {}
    t0_ns = (time.time_ns() // (INTERVAL_S * NS) - rounds - 1) * INTERVAL_S * NS
    arrival_ns = NS  # each reading arrives 1 s after its stamp
    events: list[Event] = []
    rss0 = rss_bytes()

    engine = Engine(EventsConfig(), topology, emit=events.append, now_ns=t0_ns)
    rss_engine = rss_bytes()
    checks = count_checks(engine)
    reading_ns = [0] * rounds
    tick_ns = 0
    ticks = 0
    tick_max_ns = 0
    now = t0_ns
    for rnd in range(rounds):
        for start in range(0, meters, CHUNK):
            chunk = readings_chunk(start, min(meters, start + CHUNK), rnd, t0_ns, meters)
            feed = engine.reading
            t = time.perf_counter_ns()
            for r in chunk:
                feed(r, r.ts_ns + arrival_ns)
            reading_ns[rnd] += time.perf_counter_ns() - t
            now = chunk[-1].ts_ns + arrival_ns
            del chunk
            t = time.perf_counter_ns()
            engine.tick(now)
            dt = time.perf_counter_ns() - t
            tick_ns += dt
            tick_max_ns = max(tick_max_ns, dt)
            ticks += 1
    rss1 = rss_bytes()
    stats = engine.stats()

    t = time.perf_counter_ns()
    blob = engine.snapshot()
    snapshot_ns = time.perf_counter_ns() - t
    restored = Engine(EventsConfig(), topology, emit=events.append, now_ns=now)
    t = time.perf_counter_ns()
    restored.restore(blob, now + NS)
    restore_ns = time.perf_counter_ns() - t
    t = time.perf_counter_ns()
    restored.tick(now + 2 * NS)  # a restore queues a check of every meter
    full_tick_ns = time.perf_counter_ns() - t

    return {
        "case": case,
        "meters": meters,
        "tracked": stats["meters_tracked"],
        "transformers": stats["transformers"],
        "rounds": rounds,
        "rss0": rss0,
        "rss_engine": rss_engine,
        "rss1": rss1,
        "bytes_per_meter": (rss1 - rss0) / meters,
        "reading_first_us": reading_ns[0] / meters / 1000,
        "reading_later_us": sum(reading_ns[1:]) / max(1, meters * (rounds - 1)) / 1000,
        "tick_us": tick_ns / ticks / 1000,
        "tick_max_us": tick_max_ns / 1000,
        "ticks": ticks,
        "checks_per_tick": checks[0] / ticks,
        "snapshot_bytes": len(blob),
        "snapshot_s": snapshot_ns / NS,
        "restore_s": restore_ns / NS,
        "full_tick_s": full_tick_ns / NS,
        "events": len(events),
        "event_types": sorted({f"{e.type} {e.state}" for e in events}),
    }


# -- the parent: run the children, print the table ---------------------------------------------
def run_child(case: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        case,
        "--meters",
        str(args.meters),
        "--transformers",
        str(args.transformers),
        "--readings",
        str(args.readings),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"child {case} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _med(runs: list[dict[str, Any]], key: str, fmt: str, scale: float = 1.0) -> str:
    values = [r[key] * scale for r in runs]
    med = format(statistics.median(values), fmt)
    lo, hi = format(min(values), fmt), format(max(values), fmt)
    if lo == hi:
        return med
    return f"{med} ({lo}-{hi})"


def print_results(results: dict[str, list[dict[str, Any]]]) -> bool:
    """The table (medians, ranges in brackets); True if the goal is met."""
    mib = 1 / (1 << 20)
    metrics = [
        ("meters tracked", "tracked", ",.0f", 1.0),
        ("RSS before the engine, MiB", "rss0", ",.1f", mib),
        ("RSS after Engine() (transformer states), MiB", "rss_engine", ",.1f", mib),
        ("RSS after the readings, MiB", "rss1", ",.1f", mib),
        ("state per meter, bytes (RSS)", "bytes_per_meter", ",.0f", 1.0),
        ("engine.reading, 1st (tracks the meter), µs", "reading_first_us", ".2f", 1.0),
        ("engine.reading, later readings, µs", "reading_later_us", ".2f", 1.0),
        ("engine.tick every 1,000 readings, µs", "tick_us", ",.0f", 1.0),
        ("engine.tick, slowest of those, µs", "tick_max_us", ",.0f", 1.0),
        ("meters checked per tick", "checks_per_tick", ",.0f", 1.0),
        ("snapshot, MB", "snapshot_bytes", ".1f", 1e-6),
        ("snapshot, bytes per meter", "snapshot_per_meter", ",.0f", 1.0),
        ("snapshot(), s", "snapshot_s", ".3f", 1.0),
        ("restore(), s", "restore_s", ".3f", 1.0),
        ("first tick after restore (all due), s", "full_tick_s", ".3f", 1.0),
        ("events raised", "events", ",.0f", 1.0),
    ]
    for runs in results.values():
        for r in runs:
            r["snapshot_per_meter"] = r["snapshot_bytes"] / r["meters"]
    cases = list(results)
    rows = [
        [label, *(_med(results[c], key, fmt, scale) for c in cases)]
        for label, key, fmt, scale in metrics
    ]
    print_table(["median (range)", *cases], rows)
    kinds = sorted({k for runs in results.values() for r in runs for k in r["event_types"]})
    if kinds:
        print(f"events: {', '.join(kinds)}")
    print()
    ok = True
    summary = []
    for c in cases:
        per = statistics.median(r["bytes_per_meter"] for r in results[c])
        met = per <= GOAL_BYTES
        if c == "topology":
            ok = met
        summary.append([f"state per meter ({c})", f"{per:,.0f} B", "<= 2,048 B", _met(met)])
    print_table(["target", "median", "goal", ""], summary)
    return ok


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--meters", type=int, default=100_000, help="meters tracked")
    ap.add_argument("--transformers", type=int, default=2_000, help="transformers they are on")
    ap.add_argument("--readings", type=int, default=4, help="readings per meter (rounds)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each case (fresh processes)")
    ap.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.readings < 2:
        ap.error("--readings: at least 2")
    if args.child:
        result = child(args.child, args.meters, args.transformers, args.readings)
        print(json.dumps(result))
        return 0

    print(
        f"Detector state: {args.meters:,} meters on {args.transformers:,} transformers, "
        f"{args.readings} three-phase readings each, a fresh process per run"
    )
    for line in common.environment(["orjson", "pydantic"], detectors=True):
        print("  " + line)
    print()
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in CASES}
    for rep in range(args.repeat):
        order = CASES if rep % 2 == 0 else tuple(reversed(CASES))
        for case in order:
            r = run_child(case, args)
            results[case].append(r)
            print(
                f"[{rep + 1}/{args.repeat}] {case:<11}  {r['bytes_per_meter']:,.0f} B/meter "
                f"(RSS {r['rss0'] / 2**20:,.1f} -> {r['rss1'] / 2**20:,.1f} MiB), reading "
                f"{r['reading_later_us']:.2f} µs, snapshot {r['snapshot_bytes'] / 1e6:.1f} MB "
                f"in {r['snapshot_s']:.2f} s, restore {r['restore_s']:.2f} s, "
                f"events {r['events']}",
                flush=True,
            )
    print()
    ok = print_results(results)
    print()
    print(f"load average at the end: {common.load_average()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
