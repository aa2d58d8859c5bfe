"""Benchmark: one Poller polling many simulated Modbus meters, some of them dead.

    .venv/bin/python bench/bench_modbus_poll.py                 # 200 meters, 20 dead, 5 s, 45 s
    .venv/bin/python bench/bench_modbus_poll.py --duration 30 --meters 400 --dead 40

The live meters are served by `meter-gateway simulate modbus` in a separate process
(so the servers do not share the poller's event loop), `--units-per-port` meters per
TCP port. Half of the dead meters are unit ids nobody answers on the live meters' own
connections (each request costs a full timeout on a shared connection: the hard
case); the other half point at a port where nothing listens (connection refused).

Prints poll lateness (slot time on the interval grid -> the poll's first request on
the wire) p50 / p99 / max in ms for the live meters, requests per second, readings,
errors by kind, and the poller process's CPU use. Meters behind one connection are
polled one request at a time, so lateness includes waiting for the others on it.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import common  # bench/common.py: run as `python bench/<name>.py`
import yaml

from meter_gateway.protocols.modbus.config import ModbusConfig
from meter_gateway.protocols.modbus.poller import Poller


def _free_run(n: int) -> int:
    """A base port with n consecutive free ports above it."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                t = socket.socket()
                socks.append(t)
                t.bind(("127.0.0.1", p))
            return int(base)
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    raise RuntimeError("no free port range")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


async def main(args: argparse.Namespace) -> int:
    print("\n".join(common.environment(["pymodbus"])))
    live = args.meters - args.dead
    ports = -(-live // args.units_per_port)
    base = _free_run(ports + 1)
    closed_port = base + ports  # kept free: nothing listens there
    tmp = Path(tempfile.mkdtemp(prefix="bench-modbus-"))
    devices_file = tmp / "devices.yaml"
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meter_gateway.simulators.modbus.cli",
        "--meters", str(live), "--units-per-port", str(args.units_per_port),
        "--port", str(base), "--model", args.model, "--seed", "1",
        "--config-out", str(devices_file), "--interval", str(args.interval),
        stderr=asyncio.subprocess.PIPE,
            cwd=str(common.ROOT),
    )  # fmt: skip
    assert sim.stderr is not None
    try:
        while True:
            line = (await sim.stderr.readline()).decode()
            if not line:
                print("simulator failed to start", file=sys.stderr)
                return 1
            if "serving" in line:
                break
        devices = yaml.safe_load(devices_file.read_text())["modbus"]["devices"]
        each = {"interval_s": args.interval, "timeout_s": args.timeout, "retries": args.retries}
        for d in devices:
            d.update(each)
        silent = args.dead // 2
        for k in range(silent):  # unit ids above the served ones, on the live connections
            port = base + k % ports
            served = min(args.units_per_port, live - (k % ports) * args.units_per_port)
            unit = served + 1 + k // ports
            devices.append(
                {"meter_id": f"silent-{k:03d}", "model": args.model, "host": "127.0.0.1",
                 "port": port, "unit": unit, **each}
            )  # fmt: skip
        for k in range(args.dead - silent):
            devices.append(
                {"meter_id": f"refused-{k:03d}", "model": args.model, "host": "127.0.0.1",
                 "port": closed_port, "unit": k + 1, **each}
            )  # fmt: skip
        cfg = ModbusConfig.model_validate({"devices": devices})
        readings = Counter[str]()
        errors = Counter[str]()

        def on_reading(reading: dict[str, object], label: str) -> None:
            readings[str(reading["meter_id"])] += 1

        def on_error(label: str, reason: str, raw: bytes | None) -> None:
            errors[reason.split(": ")[1]] += 1

        poller = Poller(cfg, on_reading=on_reading, on_error=on_error)
        cpu0, t0 = time.process_time(), time.monotonic()
        task = asyncio.create_task(poller.run())
        await asyncio.sleep(args.duration)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        elapsed = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        stats = poller.stats()
        live_ids = {d["meter_id"] for d in devices[:live]}
        late_ms = [x * 1000 for m in live_ids for x in stats[m].lateness_s]
        # Without each meter's first slot (the start-up poll, off the grid, may still be
        # sorting out which meters are dead when it comes).
        steady_ms = [x * 1000 for m in live_ids for x in list(stats[m].lateness_s)[1:]]
        requests = sum(s.requests for s in stats.values())
        missed = sum(stats[m].missed_slots for m in live_ids)
        failed_live = sum(stats[m].failed_polls for m in live_ids)
        breakers = Counter(s.breaker for m, s in stats.items() if m not in live_ids)
        print(f"meters: {args.meters} ({live} live on {ports} ports x {args.units_per_port} "
              f"units, {silent} silent units on those connections, {args.dead - silent} on a "
              f"refused port); model {args.model}; interval {args.interval:g} s; timeout "
              f"{args.timeout:g} s; retries {args.retries}; "
              f"loop {'uvloop' if args.uvloop else 'asyncio'}")  # fmt: skip
        print(f"duration: {elapsed:.1f} s")
        print(f"grid polls of live meters: {len(late_ms)}  readings (with the start-up poll): "
              f"{sum(readings.values())}  "
              f"failed live polls: {failed_live}  missed slots: {missed}")  # fmt: skip
        print(f"lateness ms (live): p50 {_pct(late_ms, 50):.2f}  p99 {_pct(late_ms, 99):.2f}  "
              f"max {max(late_ms, default=float('nan')):.2f}  "
              f"mean {statistics.fmean(late_ms):.2f}")  # fmt: skip
        print(f"lateness ms (live, after the first slot): p50 {_pct(steady_ms, 50):.2f}  "
              f"p99 {_pct(steady_ms, 99):.2f}  "
              f"max {max(steady_ms, default=float('nan')):.2f}")  # fmt: skip
        print(f"requests/s: {requests / elapsed:.1f}  ({requests} requests)")
        print(f"errors by kind: {dict(errors)}")
        print(f"dead devices' breakers: {dict(breakers)}")
        print(f"poller CPU: {cpu:.2f} s ({100 * cpu / elapsed:.1f} % of one core)")
        return 0
    finally:
        if sim.returncode is None:
            sim.terminate()
        await sim.wait()


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--meters", type=int, default=200)
    p.add_argument("--dead", type=int, default=20)
    p.add_argument("--interval", type=float, default=5.0)
    p.add_argument("--duration", type=float, default=45.0, help="seconds (default 45)")
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--retries", type=int, default=2)
    p.add_argument("--units-per-port", type=int, default=45)
    p.add_argument("--model", default="sdm630")
    p.add_argument("--uvloop", action="store_true", help="run the poller on uvloop")
    return p.parse_args(argv)


if __name__ == "__main__":
    a = _args()
    if a.uvloop:
        import uvloop

        sys.exit(uvloop.run(main(a)))
    sys.exit(asyncio.run(main(a)))
