"""Soak: the Modbus poller on its grid for minutes, beside two devices that never answer.

    .venv/bin/python bench/soak_modbus_grid.py                      # 10 min, 5 s interval
    .venv/bin/python bench/soak_modbus_grid.py --minutes 2 --interval 5

Serves `--meters` simulated meters (the simulator in `simulators/modbus/`, in this
process) on two TCP ports, so that meters share lines; adds two devices that never
answer: `unreachable-refused` on a port where nothing listens (connection refused)
and `unreachable-mute` on a port that accepts connections and never answers (every
request times out). Halfway through (`--revive-after`) a meter starts listening on the
refused port, so that device should come back. The poller runs with the default
breaker settings; `on_reading` costs `--handler-ms` of blocking work, as a pipeline
would.

At the end it prints, per device, polls, readings, missed and skipped slots, errors
by kind and the breaker; whether every reading's `ts` is on the grid (an exact
multiple of the interval) and whether it still is once floored to whole seconds, as
storage with `precision: s` keeps it (counts off-grid and duplicate stamps); the
`on_error` (dead-letter) calls for the unreachable devices; and every log line about
them. Exit status 1 when a stamp is off the grid or an unreachable device was
dead-lettered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import socket
import sys
import time
from collections import Counter, defaultdict
from typing import Any

import common  # bench/common.py: run as `python bench/<name>.py`

from meter_gateway.protocols.modbus.config import ModbusConfig
from meter_gateway.protocols.modbus.poller import Poller
from meter_gateway.simulators.modbus.server import MeterFleet, MeterServer, make_meter

REFUSED, MUTE = "unreachable-refused", "unreachable-mute"


class Collect(logging.Handler):
    """Every log record, for the summary."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while await reader.read(4096):
            pass
    writer.close()


def on_grid(ts: float, interval: float) -> bool:
    return (ts / interval).is_integer() and math.floor(ts / interval) * interval == ts


async def main(args: argparse.Namespace) -> int:
    print("\n".join(common.environment(["pymodbus"])))
    interval = args.interval
    collect = Collect()
    root = logging.getLogger()
    root.addHandler(collect)
    root.setLevel(logging.DEBUG)
    # As the gateway's logging set-up does: pymodbus warns on every connect attempt to a
    # dead device, the poller says it once.
    logging.getLogger("pymodbus").setLevel(logging.ERROR)
    shown = logging.StreamHandler(sys.stderr)
    shown.setLevel(logging.INFO)
    shown.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root.addHandler(shown)

    fleet = MeterFleet(
        args.meters, model=args.model, port=0, units_per_port=math.ceil(args.meters / 2), seed=1
    )
    await fleet.start()
    mute = await asyncio.start_server(_never_answer, "127.0.0.1", 0)
    mute_port = int(mute.sockets[0].getsockname()[1])
    refused_port = _free_port()
    each = {"interval_s": interval, "timeout_s": args.timeout}
    devices: list[dict[str, Any]] = fleet.device_configs(**each)
    for meter_id, port in ((REFUSED, refused_port), (MUTE, mute_port)):
        devices.append(
            {"meter_id": meter_id, "model": args.model, "host": "127.0.0.1", "port": port,
             "unit": 1, **each}
        )  # fmt: skip
    cfg = ModbusConfig.model_validate({"devices": devices})

    stamps: dict[str, list[float]] = defaultdict(list)
    dead_letters: Counter[str] = Counter()
    dead_letter_reasons: list[str] = []

    def on_reading(reading: dict[str, object], label: str) -> None:
        stamps[str(reading["meter_id"])].append(float(reading["ts"]))  # type: ignore[arg-type]
        if args.handler_ms:
            time.sleep(args.handler_ms / 1000)  # a pipeline's work, on the loop

    by_label = {d.label: d.meter_id for d in cfg.devices}

    def on_error(label: str, reason: str, raw: bytes | None) -> None:
        dead_letters[by_label[label]] += 1
        dead_letter_reasons.append(reason)

    revived: MeterServer | None = None
    poller = Poller(cfg, on_reading=on_reading, on_error=on_error)
    started = time.time()
    duration = args.minutes * 60
    revive_at = args.revive_after * 60 if args.revive_after else None
    task = asyncio.create_task(poller.run())
    try:
        while (elapsed := time.time() - started) < duration:
            step = min(60.0, duration - elapsed)
            if revive_at is not None and revived is None and elapsed < revive_at:
                step = min(step, revive_at - elapsed)
            await asyncio.sleep(step)
            elapsed = time.time() - started
            if revive_at is not None and revived is None and elapsed >= revive_at - 0.01:
                revived = MeterServer([make_meter(1, args.model, live=True)], port=refused_port)
                await revived.start()
                print(f"soak: {elapsed:.0f} s: a meter now listens on port {refused_port}",
                      file=sys.stderr)  # fmt: skip
            print(f"soak: {elapsed:.0f} s of {duration:.0f}: "
                  f"{sum(len(v) for v in stamps.values())} readings", file=sys.stderr)  # fmt: skip
        # Before the poller closes its connections on the way out.
        conns = {
            ep: (c.connected, c.connects, c.connect_failures)
            for ep, c in poller.connection_stats().items()
        }
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if revived is not None:
            await revived.stop()
        mute.close()
        await mute.wait_closed()
        await fleet.stop()
        root.removeHandler(shown)
    elapsed = time.time() - started

    stats = poller.stats()
    slots = elapsed / interval
    print(f"\nsoak: {args.meters} simulated {args.model} meters on 2 ports + {REFUSED} "
          f"(port {refused_port}, nothing listening"
          + (f" until {args.revive_after:g} min" if revive_at else "")
          + f") + {MUTE} (port {mute_port}, accepts, never answers); interval {interval:g} s; "
          f"timeout {args.timeout:g} s; handler {args.handler_ms:g} ms; "
          f"{elapsed / 60:.1f} min ({slots:.0f} slots)")  # fmt: skip
    print("\nper device: polls readings failed missed skipped | breaker (openings) | errors")
    for mid, s in stats.items():
        print(f"  {mid:22s} {s.polls:5d} {s.readings:8d} {s.failed_polls:6d} "
              f"{s.missed_slots:6d} {s.skipped:7d} | {s.breaker} ({s.breaker_openings}) | "
              f"{dict(s.errors) or '-'}")  # fmt: skip
    all_ts = [(mid, t) for mid, ts in stamps.items() for t in ts]
    off = [(mid, t) for mid, t in all_ts if not on_grid(t, interval)]
    stored_off = [(mid, t) for mid, t in all_ts if not on_grid(float(math.floor(t)), interval)]
    dupes = sum(len(ts) - len(set(ts)) for ts in stamps.values())
    whole = float(interval).is_integer()
    print(f"\nreadings: {len(all_ts)}; every ts on the {interval:g} s grid: "
          f"{'yes' if not off else 'NO'} ({len(off)} off-grid); "
          f"duplicate stamps: {dupes}")  # fmt: skip
    if whole:
        print(f"stored at whole seconds (precision s), every one on the grid: "
              f"{'yes' if not stored_off else 'NO'} ({len(stored_off)} off-grid)")  # fmt: skip
    for mid, t in off[:5]:
        print(f"  off-grid: {mid} {t!r}")
    lateness = sorted(x for s in stats.values() for x in s.lateness_s)
    if lateness:
        p50 = lateness[len(lateness) // 2] * 1000
        p99 = lateness[min(len(lateness) - 1, round(0.99 * (len(lateness) - 1)))] * 1000
        print(f"lateness (slot -> first request), ms: p50 {p50:.1f}  p99 {p99:.1f}  "
              f"max {lateness[-1] * 1000:.1f}")  # fmt: skip
    print(f"\ndead-letter (on_error) calls: {REFUSED}: {dead_letters[REFUSED]}, "
          f"{MUTE}: {dead_letters[MUTE]}; all devices: {sum(dead_letters.values())}")  # fmt: skip
    for ep, (connected, connects, failures) in conns.items():
        if ep.endswith((f":{refused_port}", f":{mute_port}")):
            print(f"connection {ep} at the end: connected {connected}, connects {connects}, "
                  f"connect failures {failures}")  # fmt: skip
    print("\nlog lines naming the unreachable devices or their ports (INFO and up; DEBUG "
          "counted; pymodbus's own logger at ERROR, as in the gateway):")  # fmt: skip
    for mid, port in ((REFUSED, refused_port), (MUTE, mute_port)):
        about = [
            r
            for r in collect.records
            if f"{mid} (" in (m := r.getMessage()) or f":{port}" in m or f", {port})" in m
        ]
        levels = Counter(logging.getLevelName(r.levelno) for r in about)
        print(f"  {mid}: {dict(levels) or 'none'}")
        for r in about:
            if r.levelno >= logging.INFO:
                print(f"    {logging.getLevelName(r.levelno)} {r.name}: {r.getMessage()}")
    loud_other = [
        r
        for r in collect.records
        if r.levelno >= logging.WARNING
        and not any(w in r.getMessage() for w in (REFUSED, MUTE, str(refused_port), str(mute_port)))
    ]  # fmt: skip
    print(f"other WARNING+ lines (live meters): {len(loud_other)}")
    for r in loud_other[:10]:
        print(f"    {logging.getLevelName(r.levelno)} {r.name}: {r.getMessage()}")
    bad = bool(off) or (whole and bool(stored_off)) or dupes or dead_letters[REFUSED]
    return 1 if bad or dead_letters[MUTE] else 0


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    p.add_argument("--interval", type=float, default=5.0, help="poll interval, s (default 5)")
    p.add_argument("--meters", type=int, default=6, help="simulated meters (default 6)")
    p.add_argument("--model", default="sdm630")
    p.add_argument("--timeout", type=float, default=1.0, help="per request, s (default 1)")
    p.add_argument(
        "--handler-ms", type=float, default=2.0, help="blocking work per reading (default 2)"
    )
    p.add_argument(
        "--revive-after",
        type=float,
        default=None,
        metavar="MIN",
        help="start a meter on the refused port after MIN minutes (default: half of "
        "--minutes; 0: never)",
    )
    a = p.parse_args(argv)
    if a.revive_after is None:
        a.revive_after = a.minutes / 2
    return a


if __name__ == "__main__":
    sys.exit(asyncio.run(main(_args())))
