"""A database outage with a crash in the middle: is every reading stored, and what does
the gateway's memory do while the spool grows?

The long version of tests/integration/test_crash_recovery.py's outage case:

    .venv/bin/python bench/fault_spool.py [--outage 60] [--rate 300] [--steady 10] [--no-kill]

1. mosquitto (persistent) and InfluxDB 1.x start on free loopback ports, their data and
   the gateway's data_dir in a temporary folder on disk; the gateway runs as
   `meter-gateway run` (a child process), `storage.api: v1`.
2. A publisher thread sends single readings with QoS 1 at `--rate` readings/s (100
   meters, round robin), counting the broker's PUBACKs.
3. Steady state for `--steady` s with the database up; then InfluxDB is stopped for
   `--outage` s. Halfway through the outage the gateway is SIGKILLed and started again
   (same config, same data_dir): it must replay its spool. Then InfluxDB starts.
4. The publisher stops; once every PUBACK is in and InfluxDB holds as many points as
   readings were published, the stored set is compared with the published one.

The gateway's VmRSS and VmHWM are read from /proc every 0.1 s. "steady" is the median
RSS of the last 5 s before the outage; "peak" is the highest RSS sampled during the
outage, and the high-water mark of the process started during it. The criterion: the
peak within 50 MiB of the steady state. Exit status 1 if a reading is lost or stored
twice, or the criterion is missed.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import common  # bench/common.py: run as `python bench/<name>.py`

sys.path.insert(0, str(common.ROOT))  # for tests.faults

from meter_gateway.config.schema import Config
from meter_gateway.simulators.services import InfluxDB1, Mosquitto
from tests.faults import (
    GatewayProcess,
    Message,
    RssSampler,
    StreamPublisher,
    influx_points,
    influx_total,
    single_message,
    spool_backlog,
)

CRITERION_MIB = 50


def wait_for(predicate: Callable[[], object], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {within:.0f} s waiting for {what}")
        time.sleep(0.05)


def stream(start: int, meters: int = 100) -> Iterator[Message]:
    k = 0
    while True:
        yield single_message(f"s-{k % meters:03d}", start + k // meters, float(k % 1000))
        k += 1


def environment(tmp: Path) -> list[str]:
    return [
        *common.environment(["paho-mqtt", "uvloop", "orjson", "aiohttp"]),
        f"broker      {common.version_of(['mosquitto', '-h'])}",
        f"database    {common.version_of(['influxd', 'version'])}",
        f"data        {tmp}",
    ]


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def main(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-fault-spool-"))
    print("\n".join(environment(tmp)))
    print(
        f"run         {args.rate} readings/s, steady {args.steady:.0f} s, database down "
        f"{args.outage:.0f} s, {'no SIGKILL' if args.no_kill else 'SIGKILL halfway'}"
    )
    with Mosquitto(tmp / "mosquitto") as broker, InfluxDB1(tmp / "influxdb") as db:
        cfg = Config.model_validate(
            {
                "gateway": {"id": "gw-bench-fault", "data_dir": str(tmp / "var")},
                "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.1,
                         "reconnect_max_s": 0.5},
                "storage": {"api": "v1", "url": db.url, "database": "meters",
                            "batch_size": 2000, "flush_interval_s": 0.1,
                            "max_retry_delay_s": 1.0},
            }
        )  # fmt: skip
        gw = GatewayProcess(cfg, tmp / "gw")
        sampler = RssSampler(gw)
        pub = None
        try:
            gw.start()
            wait_for(gw.connected, 30, "the gateway to connect")
            sampler.phase = "steady"
            sampler.start()
            pub = StreamPublisher(broker, stream(int(time.time()) - 86_400), rate=args.rate)
            pub.start()
            time.sleep(args.steady)

            db.stop()
            sampler.phase = "outage"
            began = time.monotonic()
            killed = None
            if not args.no_kill:
                time.sleep(max(0.0, began + args.outage / 2 - time.monotonic()))
                sampler.sample()
                gw.kill()
                killed = spool_backlog(gw.spool_dir)
                gw.start()
                wait_for(gw.connected, 30, "the restarted gateway to connect")
                marker = f"spool: {killed.lines} readings in {killed.records} records"
                replay = marker in gw.log()
                print(
                    f"SIGKILL     at {time.monotonic() - began:.1f} s into the outage: the spool "
                    f"held {killed.lines:,} readings in {killed.records:,} records "
                    f"({killed.bytes:,} bytes); the restart "
                    f"{'replays them' if replay else 'did NOT say it replays them'}"
                )
            time.sleep(max(0.0, began + args.outage - time.monotonic()))
            sampler.sample()
            at_end = spool_backlog(gw.spool_dir)
            sampler.phase = "after"
            print(
                f"outage end  the spool holds {at_end.lines:,} readings in {at_end.records:,} "
                f"records ({at_end.bytes:,} bytes); published {pub.published_readings:,}"
            )
            t_up = time.monotonic()
            db.start()
            pub.stop()
            wait_for(pub.all_acked, 60, "every PUBACK")
            expected = pub.published_set()
            wait_for(lambda: influx_total(db) >= len(expected), 300, "every reading stored")
            drained_s = time.monotonic() - t_up
            wait_for(lambda: spool_backlog(gw.spool_dir).records == 0, 60, "the spool drained")
            points = influx_points(db)
            twice = sum(1 for n in Counter(points).values() if n > 1)
            stored = set(points)
            lost = len(expected - stored)
            extra = len(stored - expected)
            code = gw.stop()
        finally:
            sampler.stop()
            if pub is not None:
                pub.close()
            gw.close()
    shutil.rmtree(tmp, ignore_errors=True)

    steady_rows = sampler.rss("steady")[-round(5 / sampler.every_s) :]  # the last 5 s
    steady = statistics.median(steady_rows)
    peak_outage = sampler.peak("outage")
    first_pid = next(pid for phase, pid, _, _ in sampler.samples if phase == "outage")
    peak_before_kill = max(
        rss for phase, pid, rss, _ in sampler.samples if phase == "outage" and pid == first_pid
    )
    delta = peak_outage - steady
    met = delta <= CRITERION_MIB * 1024
    print(
        f"readings    published {len(expected):,} (all acknowledged by the broker), stored "
        f"{len(stored):,}; lost {lost}, stored twice {twice}, not published {extra}; all "
        f"stored {drained_s:.1f} s after the database came back; gateway exit code {code}"
    )
    print(
        f"memory      steady {mib(steady)} (median RSS, last 5 s before the outage); peak "
        f"during the outage {mib(peak_outage)} (before the kill {mib(peak_before_kill)}); "
        f"{delta / 1024:+.1f} MiB: {'met' if met else 'MISSED'} (within {CRITERION_MIB} MiB)"
    )
    return 0 if met and not (lost or twice or extra) and code == 0 else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--outage", type=float, default=60.0, help="database down for S seconds")
    p.add_argument("--rate", type=int, default=300, help="readings/s (default 300)")
    p.add_argument("--steady", type=float, default=10.0, help="seconds before the outage")
    p.add_argument("--no-kill", action="store_true", help="no SIGKILL during the outage")
    sys.exit(main(p.parse_args()))
