"""MQTT ingest throughput: readings per second from a broker into the database.

Compares the gateway with a bare paho-mqtt 2 subscriber draining the same broker in
the same run:

    .venv/bin/python bench/bench_mqtt_ingest.py [--messages N] [--batches N] [--repeat K]

Two cases, QoS 1 both:

- single: N messages on `meters/<id>/reading` (format `json`), one canonical reading
  with every field each;
- batch: N messages on `concentrators/<id>/readings` (format `json-batch`) of 100
  readings each.

Method (pre-load, then drain, so that on a small machine the publisher never competes
with the consumer for a core):

1. Start mosquitto (no persistence, deep queues) and VictoriaMetrics.
2. Give each consumer a persistent session (MQTT 5, clean start off, session expiry,
   fixed client id) subscribed to both topics, then disconnect it: the bare paho
   subscriber `bench-paho`, and the gateway (`meter-gateway-bench`, started, connected
   and stopped).
3. Per case: publish the messages with QoS 1 from a separate paho client and wait for
   every PUBACK, then disconnect it. Both sessions now hold every message.
4. Drain with the bare subscriber: connect, and time until `on_message` (which only
   counts; paho acknowledges QoS 1 itself) has seen all N messages.
5. Drain with the gateway (`Gateway(config)` under uvloop, as `meter-gateway run`
   runs it): time from `start()` until `writer.lines_written` reaches the number of
   readings, i.e. until VictoriaMetrics has accepted every reading.
6. At the end, count the stored samples of `meter_reading_power_w`.

Both consumers ask the broker for the same MQTT 5 Receive Maximum (the gateway's
configured one, 500 by default), so only the client side differs. Timestamps are
within the last days (the gateway refuses readings older than 7 days), distinct per
meter, and meter ids are distinct per case and repeat, so nothing is a duplicate.

Each case runs `--repeat` times (3 by default; about a minute in all); the summary
gives the median and range. Each drain also reports the CPU time the consumer, the
broker and the database used meanwhile, in % of one core: on a 2-core machine the
gateway and VictoriaMetrics share the cores, so the database's work bounds the rate.

`--profile FILE` runs the gateway drains under cProfile and writes the stats to FILE
(the rates are then not representative).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib.metadata
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import paho.mqtt.client as paho
import uvloop
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meter_gateway.config.schema import Config
from meter_gateway.gateway.app import Gateway
from meter_gateway.simulators.services import Mosquitto, VictoriaMetrics

METERS = 1000
BATCH_SIZE = 100  # readings per concentrator message
PAHO_CLIENT_ID = "bench-paho"
GATEWAY_ID = "bench"
TOPICS = ("meters/+/reading", "concentrators/+/readings")
SESSION_EXPIRY_S = 3600


# -- payloads ---------------------------------------------------------------------------------
def _timestamps(steps: int) -> list[str]:
    """`steps` RFC 3339 times, oldest first, ending a few minutes ago, all within 3 days."""
    interval = max(1, min(900, (3 * 86_400) // max(steps, 1)))
    end = int(time.time()) // interval * interval - interval
    return [
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(end - (steps - 1 - k) * interval))
        for k in range(steps)
    ]


def _reading(meter_id: str, m: int, step: int, ts: str) -> dict[str, object]:
    """The canonical reading, every field; registers rise with time per meter."""
    x = (m * 7919 + step * 104_729) % 1000 / 1000.0
    return {
        "meter_id": meter_id,
        "ts": ts,
        "energy_import_kwh": round(10_000 + m + step * 0.25 + x * 0.1, 3),
        "energy_export_kwh": round(12.5 + step * 0.01, 3),
        "power_w": round(800 + 400 * x, 1),
        "voltage_v": [round(229.0 + x, 1), round(231.2 - x, 1), round(230.4 + x / 2, 1)],
        "current_a": [round(1.2 + x, 2), round(0.9 + x, 2), round(1.4 + x, 2)],
        "power_factor": round(0.9 + x / 20, 3),
        "frequency_hz": round(49.95 + x / 10, 2),
    }


def single_messages(n: int, tag: str) -> list[tuple[str, bytes]]:
    """n one-reading messages from METERS meters, in time order."""
    steps = -(-n // METERS)
    times = _timestamps(steps)
    out = []
    for j in range(n):
        m, step = j % METERS, j // METERS
        meter_id = f"m-{tag}-{m:05d}"
        payload = orjson.dumps(_reading(meter_id, m, step, times[step]))
        out.append((f"meters/{meter_id}/reading", payload))
    return out


def batch_messages(n: int, tag: str) -> list[tuple[str, bytes]]:
    """n concentrator messages of BATCH_SIZE readings: each concentrator has BATCH_SIZE
    meters and sends one message per reading interval."""
    concentrators = METERS // BATCH_SIZE
    steps = -(-n // concentrators)
    times = _timestamps(steps)
    out = []
    for j in range(n):
        c, step = j % concentrators, j // concentrators
        cid = f"dc-{tag}-{c:03d}"
        readings = []
        for i in range(BATCH_SIZE):
            m = c * BATCH_SIZE + i
            readings.append(_reading(f"b-{tag}-{m:05d}", m, step, times[step]))
        payload = orjson.dumps({"concentrator_id": cid, "readings": readings})
        out.append((f"concentrators/{cid}/readings", payload))
    return out


# -- CPU accounting ----------------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc; 0 if unknown."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def service_pid(service: Mosquitto | VictoriaMetrics) -> int | None:
    proc = getattr(service, "_proc", None)
    return proc.pid if proc is not None else None


class CpuMeter:
    """CPU seconds used by the broker and the database between start() and stop()."""

    def __init__(self, broker: Mosquitto, vm: VictoriaMetrics) -> None:
        self._pids = (service_pid(broker), service_pid(vm))
        self._t0 = (0.0, 0.0)
        self.broker_s = self.db_s = 0.0

    def start(self) -> None:
        self._t0 = (proc_cpu_s(self._pids[0]), proc_cpu_s(self._pids[1]))

    def stop(self) -> None:
        self.broker_s = proc_cpu_s(self._pids[0]) - self._t0[0]
        self.db_s = proc_cpu_s(self._pids[1]) - self._t0[1]


# -- MQTT helpers -------------------------------------------------------------------------------
def _connect_props(receive_maximum: int) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = SESSION_EXPIRY_S
    props.ReceiveMaximum = receive_maximum
    return props


def _client(client_id: str = "") -> paho.Client:
    return paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)


def paho_session(broker: Mosquitto, receive_maximum: int) -> None:
    """Create the bare subscriber's persistent session, subscribed, then leave."""
    c = _client(PAHO_CLIENT_ID)
    subscribed = threading.Event()
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect(
        broker.host, broker.port, clean_start=False, properties=_connect_props(receive_maximum)
    )
    c.loop_start()
    c.subscribe([(t, 1) for t in TOPICS])
    if not subscribed.wait(10):
        raise RuntimeError("bare subscriber: no SUBACK")
    c.disconnect()
    c.loop_stop()


def preload(broker: Mosquitto, messages: list[tuple[str, bytes]]) -> float:
    """Publish with QoS 1 and wait for every PUBACK; return the seconds it took."""
    c = _client()
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect(broker.host, broker.port)
    c.loop_start()
    t0 = time.perf_counter()
    infos = [c.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(60)
        if not info.is_published():
            raise RuntimeError("publisher: a message was not acknowledged by the broker")
    took = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return took


@dataclass
class Drain:
    seconds: float  # from connect/start until the last message was consumed
    first_s: float  # until the first message arrived
    received_s: float  # until the last message arrived (gateway: before its last write)
    messages: int
    readings: int
    cpu_s: float = 0.0  # CPU time of this process (all threads) meanwhile
    broker_cpu_s: float = 0.0  # CPU time of mosquitto meanwhile
    db_cpu_s: float = 0.0  # CPU time of VictoriaMetrics meanwhile
    duplicates: int = 0  # redelivered messages' readings the gateway dropped
    connects: int = 1  # MQTT connections the consumer made (more: it lost one)

    @property
    def msg_rate(self) -> float:
        return self.messages / self.seconds

    @property
    def reading_rate(self) -> float:
        return self.readings / self.seconds


def paho_drain(broker: Mosquitto, n: int, receive_maximum: int, meter: CpuMeter) -> Drain:
    """Resume the bare subscriber's session and count until n messages have arrived."""
    c = _client(PAHO_CLIENT_ID)
    done = threading.Event()
    state = {"count": 0, "first": 0.0, "last": 0.0}

    def on_message(client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        state["count"] += 1
        if state["count"] == 1:
            state["first"] = time.perf_counter()
        if state["count"] == n:
            state["last"] = time.perf_counter()
            done.set()

    c.on_message = on_message
    meter.start()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    c.connect(
        broker.host, broker.port, clean_start=False, properties=_connect_props(receive_maximum)
    )
    c.loop_start()
    if not done.wait(max(120.0, n / 500)):
        raise RuntimeError(f"bare subscriber: only {state['count']} of {n} messages arrived")
    cpu = time.process_time() - cpu0
    meter.stop()
    time.sleep(0.2)  # let paho send the last PUBACKs before leaving
    c.disconnect()
    c.loop_stop()
    t = state["last"] - t0
    return Drain(t, state["first"] - t0, t, state["count"], 0, cpu, meter.broker_s, meter.db_s)


def gateway_config(broker: Mosquitto, vm: VictoriaMetrics, workdir: Path) -> Config:
    return Config.model_validate(
        {
            "gateway": {"id": GATEWAY_ID, "data_dir": str(workdir / "gateway")},
            "mqtt": {"host": broker.host, "port": broker.port},
            "storage": {
                "api": "v2",
                "url": vm.url,
                "batch_size": 5000,
                "flush_interval_s": 0.2,
            },
        }
    )


async def gateway_session(config: Config) -> None:
    """Create the gateway's persistent session (it subscribes on connect), then stop it."""
    gw = Gateway(config)
    await gw.start()
    try:
        # wait_connected() returns once subscribed (SUBACK received).
        await asyncio.wait_for(gw.mqtt.wait_connected(), 20)
    except TimeoutError:
        raise RuntimeError("gateway: did not connect to the broker") from None
    finally:
        await gw.stop()


async def gateway_drain(config: Config, n: int, readings: int, meter: CpuMeter) -> Drain:
    """Start a gateway on the preloaded session; time until `readings` lines are stored."""
    gw = Gateway(config)
    p, w = gw.pipeline, gw.writer
    first = received = 0.0
    meter.start()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    await gw.start()
    deadline = time.monotonic() + max(120.0, readings / 1000)
    while w.lines_written < readings:
        await asyncio.sleep(0.005)
        now = time.perf_counter()
        if not first and p.messages:
            first = now
        if not received and p.messages >= n:
            received = now
        if time.monotonic() > deadline or sum(p.rejected.values()):
            await gw.stop()
            raise RuntimeError(
                f"gateway: {w.lines_written} of {readings} readings stored; {p.messages} "
                f"messages, rejected {dict(p.rejected)}, {p.duplicates} duplicates, "
                f"flagged {dict(p.flagged)}"
            )
    t1 = time.perf_counter()
    cpu = time.process_time() - cpu0
    meter.stop()
    await gw.stop()
    return Drain(
        t1 - t0,
        (first or t1) - t0,
        (received or t1) - t0,
        n,
        w.lines_written,
        cpu,
        meter.broker_s,
        meter.db_s,
        p.duplicates,
        gw.mqtt.connects,
    )


def cpu_text(d: Drain) -> str:
    """CPU used meanwhile, in % of one core: consumer, broker, database."""
    return (
        f"CPU: consumer {d.cpu_s / d.seconds:.0%}, broker {d.broker_cpu_s / d.seconds:.0%}, "
        f"database {d.db_cpu_s / d.seconds:.0%}"
    )


# -- environment and report -----------------------------------------------------------------
def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except OSError:
        return "?"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0].strip() if text else "?"


DPKG_VERSION = ["dpkg-query", "-W", "-f", "${Version}"]


def environment() -> list[str]:
    pkgs = ["paho-mqtt", "aiomqtt", "uvloop", "orjson", "influxdb-client", "aiohttp"]
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in pkgs)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"date        {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        f"machine     {platform.machine()}, {cpus} usable CPUs ({os.cpu_count()} online), "
        f"load average {load}",
        f"python      {platform.python_version()} ({platform.python_implementation()})",
        f"packages    {versions}",
        f"broker      {_version(['mosquitto', '-h'])}",
        f"database    victoria-metrics {_version([*DPKG_VERSION, 'victoria-metrics'])}",
    ]


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(
        c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(_row(header, widths))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(_row(r, widths))


def print_results(results: dict[tuple[str, str], list[Drain]]) -> None:
    """One row per case and run, then the targets (median and range over the runs)."""
    header = [
        "case",
        "run",
        "paho msg/s",
        "gateway msg/s",
        "gateway readings/s",
        "gateway/paho",
        "CPU % gateway/broker/db",
    ]
    rows = []
    for case in dict.fromkeys(name for name, _ in results):
        pairs = zip(results[(case, "paho")], results[(case, "gateway")], strict=True)
        for i, (b, g) in enumerate(pairs, 1):
            cpu = (g.cpu_s, g.broker_cpu_s, g.db_cpu_s)
            rows.append(
                [
                    case,
                    str(i),
                    f"{b.msg_rate:,.0f}",
                    f"{g.msg_rate:,.0f}",
                    f"{g.reading_rate:,.0f}",
                    f"{g.msg_rate / b.msg_rate:.2f}" if case == "single" else "-",
                    "/".join(f"{c / g.seconds * 100:.0f}" for c in cpu),
                ]
            )
    print_table(header, rows)
    print()

    summary = []
    single = results.get(("single", "gateway"))
    if single:
        ratios = [
            g.reading_rate / b.msg_rate
            for g, b in zip(single, results[("single", "paho")], strict=True)
        ]
        med = statistics.median(ratios)
        summary.append(
            [
                "single: gateway readings/s / paho msg/s",
                f"{med:.2f}",
                f"{min(ratios):.2f}-{max(ratios):.2f}",
                ">= 0.80",
                "met" if med >= 0.8 else "MISSED",
            ]
        )
    batch = results.get((f"batch x{BATCH_SIZE}", "gateway"))
    if batch:
        rates = [g.reading_rate for g in batch]
        med = statistics.median(rates)
        summary.append(
            [
                "batch: gateway readings/s",
                f"{med:,.0f}",
                f"{min(rates):,.0f}-{max(rates):,.0f}",
                ">= 100,000",
                "met" if med >= 100_000 else "MISSED",
            ]
        )
    if summary:
        print_table(["target", "median", "range", "goal", ""], summary)


# -- main -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=50_000, help="single-reading messages")
    ap.add_argument("--batches", type=int, default=2_000, help="100-reading batch messages")
    ap.add_argument("--repeat", type=int, default=3, help="repeat both cases K times")
    ap.add_argument("--profile", metavar="FILE", help="cProfile the gateway drains into FILE")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    print("MQTT ingest benchmark: pre-load the broker, then drain (QoS 1)")
    for line in environment():
        print("  " + line)
    print()

    profiler = cProfile.Profile() if args.profile else None
    results: dict[tuple[str, str], list[Drain]] = {}
    expected = 0
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp:
        work = Path(tmp)
        with (
            Mosquitto(work / "mosquitto", persistence=False, max_queued_messages=0) as broker,
            VictoriaMetrics(work / "victoria") as vm,
        ):
            config = gateway_config(broker, vm, work)
            rx_max = config.mqtt.receive_maximum
            meter = CpuMeter(broker, vm)
            paho_session(broker, rx_max)
            uvloop.run(gateway_session(config))
            for rep in range(args.repeat):
                cases = [
                    ("single", args.messages, single_messages, 1),
                    (f"batch x{BATCH_SIZE}", args.batches, batch_messages, BATCH_SIZE),
                ]
                for name, n, build, per_msg in cases:
                    if n <= 0:
                        continue
                    messages = build(n, f"r{rep}{name[0]}")
                    readings = n * per_msg
                    size = sum(len(p) for _, p in messages) / n
                    took = preload(broker, messages)
                    del messages
                    print(
                        f"[{rep + 1}/{args.repeat}] {name}: {n:,} messages "
                        f"({size:,.0f} B avg) preloaded in {took:.1f} s",
                        flush=True,
                    )
                    bare = paho_drain(broker, n, rx_max, meter)
                    if profiler is not None:
                        profiler.enable()
                    gw = uvloop.run(gateway_drain(config, n, readings, meter))
                    if profiler is not None:
                        profiler.disable()
                    expected += readings
                    results.setdefault((name, "paho"), []).append(bare)
                    results.setdefault((name, "gateway"), []).append(gw)
                    print(
                        f"      paho    {bare.msg_rate:9,.0f} msg/s      in {bare.seconds:5.2f} s"
                        f" ({cpu_text(bare)}; first message after "
                        f"{bare.first_s * 1000:.0f} ms)\n"
                        f"      gateway {gw.reading_rate:9,.0f} readings/s in {gw.seconds:5.2f} s"
                        f" ({cpu_text(gw)}; first message after {gw.first_s * 1000:.0f} ms, "
                        f"last at {gw.received_s:.2f} s)"
                        + (f"; {gw.duplicates} duplicates dropped" if gw.duplicates else "")
                        + (f"; {gw.connects} connections" if gw.connects != 1 else ""),
                        flush=True,
                    )
            stored = vm.count("meter_reading_power_w")

    print()
    print_results(results)
    print()
    print(
        f"stored: VictoriaMetrics counts {stored:,} samples of meter_reading_power_w; "
        f"expected {expected:,}" + ("" if stored == expected else "  <-- MISMATCH")
    )
    if profiler is not None:
        profiler.dump_stats(args.profile)
        print(f"profile of the gateway drains written to {args.profile}")
    return 0 if stored == expected else 1


if __name__ == "__main__":
    sys.exit(main())
