"""MQTT ingest throughput: readings per second from a broker into the database.

Compares, in the same run, five consumers draining the same broker: two bare paho-mqtt 2
subscribers (MQTT 5 with the gateway's Receive Maximum, and a plain MQTT 3.1.1 one), the
gateway as deployed (readings durable in its on-disk spool before any
acknowledgement, the event detectors fed every stored reading), the same gateway with
`events.enabled: false` (no detectors: the pipeline gets no `on_readings` hook), and the
gateway with `spool=False` (readings wait in memory, the path before the spool; for
benchmarks only; detectors on):

    .venv/bin/python bench/bench_mqtt_ingest.py [--messages N] [--batches N] [--repeat K]
                                                [--quick] [--all-formats] [--profile FILE]

Two cases, QoS 1 both:

- single: N messages on `meters/<id>/reading` (format `json`), one canonical reading
  with every field each;
- batch: N messages on `concentrators/<id>/readings` (format `json-batch`) of 100
  readings each.

Method (pre-load, then drain, so that on a small machine the publisher never competes
with the consumer for a core):

1. Start mosquitto (no persistence, deep queues) and three VictoriaMetrics, one per
   gateway, so each creates its series itself (the second writer of the same readings
   into one database would find them all created).
2. Give each consumer a persistent session (MQTT 5, clean start off, session expiry,
   fixed client id; the plain subscriber: MQTT 3.1.1, clean session off) subscribed to
   both topics, then disconnect it: the bare paho subscribers `bench-paho` and
   `bench-paho-plain`, the gateway with the spool (`meter-gateway-bench-spool`),
   the same without detectors (`meter-gateway-bench-nodetect`) and the gateway without
   the spool (`meter-gateway-bench-memory`), each started, connected and stopped; each
   gateway has its own data_dir.
3. Per case: publish the messages with QoS 1 from a separate paho client and wait for
   every PUBACK, then disconnect it. The five sessions now hold every message.
4. Drain with each bare subscriber, the MQTT 5 one first: connect, and time from
   `connect()` (as the gateways' drains include their connect) until `on_message`
   (which only counts; paho acknowledges QoS 1 itself) has seen all N messages.
5. Drain with each gateway (`Gateway(config)`, the same with `events.enabled: false`,
   and `Gateway(config, spool=False)`, under uvloop, as `meter-gateway run` runs it; the
   order is reversed from one repeat to the next, so the two with the spool take turns
   going first): time from `start()` until `writer.lines_written` reaches the number of
   readings plus the `meter_event` lines of the events the detectors raised (they go
   to the database through the same writer), i.e. until its VictoriaMetrics has
   accepted every reading. The spool lives in the gateway's data_dir in a temporary
   folder on a disk (not on tmpfs, where an fsync costs nothing).
6. At the end, count the stored samples of `meter_reading_power_w` in each database.

The detectors see the readings as live ones, arriving now. The events they raise
are counted per drain (`Gateway.events.counts`) and printed; their WARNING log lines
are counted and kept off the terminal (one per event would bury the results). The
meters are consumers (their export register stays put), so these readings are expected
to raise none.

The MQTT 5 consumers ask the broker for the same Receive Maximum (the gateway's
configured one, 500 by default), so only the client side differs. The plain subscriber
is the baseline without that handicap: paho decodes an MQTT 3.1.1 PUBLISH without
building a `Properties` for it, and the broker sends it up to its own window
(`max_inflight_messages 1000`, as deployed) unacknowledged. The gateway's ratio against
each is printed; >= 1.00 means it drains as fast as that subscriber. Timestamps are
within the last days (the gateway refuses readings older than 7 days), distinct per
meter, and meter ids are distinct per case and repeat, so nothing is a duplicate.

Each case runs `--repeat` times (3 by default; about 2.5 min in all; `--quick`: 10,000
messages, 200 batches, once, to check the bench runs); the summary
gives the median and range. Each drain also reports the CPU time the consumer, the
broker and the database used meanwhile, in % of one core: on a 2-core machine the
gateway and VictoriaMetrics share the cores, so the database's work bounds the rate.

`--all-formats`: every consumer subscribes to every format's default topic at once
(`json`, `json-batch`, `meter-event`, `lwt`, and the device formats `tasmota`, Tasmota's
`lwt`, `shelly` (two filters), `shelly-online`, `sparkplug-b`: ALL_FORMATS below) while
the messages are the same; the cost of routing among them. For one run of the single
case only: `--all-formats --repeat 1 --batches 0`.

`--profile FILE` runs the gateway drains with the spool under cProfile and writes the
stats to FILE (the rates are then not representative).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import common  # bench/common.py: run as `python bench/<name>.py`
import orjson
import paho.mqtt.client as paho
import uvloop
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from report import print_table  # bench/report.py

from meter_gateway.config.schema import Config
from meter_gateway.gateway.app import Gateway
from meter_gateway.simulators.services import Mosquitto, VictoriaMetrics

METERS = 1000
BATCH_SIZE = 100  # readings per concentrator message
PAHO_CLIENT_ID = "bench-paho"
PLAIN_CLIENT_ID = "bench-paho-plain"
GATEWAY_ID = "bench"


@dataclass(frozen=True)
class GatewayKind:
    """How one of the benchmarked gateways runs."""

    spool: bool  # Gateway(config, spool=...)
    detectors: bool  # config events.enabled
    label: str


# The gateways: name -> how it runs; each has its own MQTT session (client id
# meter-gateway-bench-<name>), data_dir and VictoriaMetrics. "spool" is the gateway as
# deployed. Drained in this order, then in reverse on the next repeat.
GATEWAYS = {
    "spool": GatewayKind(spool=True, detectors=True, label="spool"),
    "nodetect": GatewayKind(spool=True, detectors=False, label="spool, detectors off"),
    "memory": GatewayKind(spool=False, detectors=True, label="memory"),
}
TOPICS = ("meters/+/reading", "concentrators/+/readings")
#: --all-formats: every format on its default topic (README "Reading formats").
ALL_FORMATS = (
    ("meters/+/reading", "json"),
    ("concentrators/+/readings", "json-batch"),
    ("meters/+/event", "meter-event"),
    ("meters/+/status", "lwt"),
    ("tele/+/SENSOR", "tasmota"),
    ("tele/+/LWT", "lwt"),
    ("+/status/#", "shelly"),
    ("+/events/rpc", "shelly"),
    ("+/online", "shelly-online"),
    ("spBv1.0/#", "sparkplug-b"),
)
SESSION_EXPIRY_S = 3600
# The options' defaults: (a full run, --quick) when the option is not given.
RUN_SIZES = {"messages": (50_000, 10_000), "batches": (2_000, 200), "repeat": (3, 1)}


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
    """The canonical reading, every field; the import register rises with time per meter.

    A consumer's meter: its export register stays put (a rising one is reverse energy on
    a meter not marked prosumer, and the detectors would raise an event per meter)."""
    x = (m * 7919 + step * 104_729) % 1000 / 1000.0
    return {
        "meter_id": meter_id,
        "ts": ts,
        "energy_import_kwh": round(10_000 + m + step * 0.25 + x * 0.1, 3),
        "energy_export_kwh": 12.5,
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


def machine_busy_s() -> float:
    """CPU seconds all CPUs of the machine spent busy (not idle or waiting), from /proc."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _TICK


class CpuMeter:
    """CPU seconds used by the broker and the database between start() and stop(), and
    by everything else on the machine but this process (other work: noise)."""

    def __init__(self, broker: Mosquitto, vm: VictoriaMetrics) -> None:
        self._pids = (service_pid(broker), service_pid(vm))
        self._t0 = (0.0, 0.0, 0.0, 0.0)
        self.broker_s = self.db_s = self.others_s = 0.0

    def _now(self) -> tuple[float, float, float, float]:
        return (
            proc_cpu_s(self._pids[0]),
            proc_cpu_s(self._pids[1]),
            machine_busy_s(),
            time.process_time(),
        )

    def start(self) -> None:
        self._t0 = self._now()

    def stop(self) -> None:
        broker, db, busy, own = (b - a for a, b in zip(self._t0, self._now(), strict=True))
        self.broker_s, self.db_s = broker, db
        self.others_s = max(0.0, busy - own - broker - db)


# -- MQTT helpers -------------------------------------------------------------------------------
def _connect_props(receive_maximum: int) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = SESSION_EXPIRY_S
    props.ReceiveMaximum = receive_maximum
    return props


def _client(client_id: str = "") -> paho.Client:
    return paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)


def _plain_client() -> paho.Client:
    """paho as most code uses it: MQTT 3.1.1, no properties to build per message. Clean
    session off, as the gateway's persistent session: the broker keeps its messages."""
    return paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=PLAIN_CLIENT_ID,
        protocol=paho.MQTTv311,
        clean_session=False,
    )


def _v5_connect(c: paho.Client, broker: Mosquitto, receive_maximum: int) -> Callable[[], object]:
    """Resume the persistent session: clean start off, session expiry, Receive Maximum."""
    props = _connect_props(receive_maximum)
    return lambda: c.connect(broker.host, broker.port, clean_start=False, properties=props)


def _plain_connect(c: paho.Client, broker: Mosquitto) -> Callable[[], object]:
    # Clean session is set on the client (off, see _plain_client): nothing to ask for here.
    return lambda: c.connect(broker.host, broker.port)


def _session(
    c: paho.Client, connect: Callable[[], object], topics: tuple[str, ...], who: str
) -> None:
    """Connect, subscribe to `topics` with QoS 1, wait for the SUBACK, leave: the broker
    keeps the session and queues what is published meanwhile."""
    subscribed = threading.Event()
    c.on_subscribe = lambda *a: subscribed.set()
    connect()
    c.loop_start()
    c.subscribe([(t, 1) for t in topics])
    if not subscribed.wait(10):
        raise RuntimeError(f"{who}: no SUBACK")
    c.disconnect()
    c.loop_stop()


def paho_session(broker: Mosquitto, receive_maximum: int, topics: tuple[str, ...] = TOPICS) -> None:
    """Create the bare subscriber's persistent session, subscribed, then leave."""
    c = _client(PAHO_CLIENT_ID)
    _session(c, _v5_connect(c, broker, receive_maximum), topics, "bare subscriber")


def plain_session(broker: Mosquitto, topics: tuple[str, ...] = TOPICS) -> None:
    """Create the plain subscriber's persistent session (MQTT 3.1.1), then leave."""
    c = _plain_client()
    _session(c, _plain_connect(c, broker), topics, "plain subscriber")


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
    fsyncs: int = 0  # group commits of the gateway's spool (0 without it)
    others_cpu_s: float = 0.0  # CPU time of everything else on the machine meanwhile
    events: dict[str, int] = field(default_factory=dict)  # "type state" -> events raised
    event_fsyncs: int = 0  # group commits of the event outbox

    @property
    def events_total(self) -> int:
        return sum(self.events.values())

    @property
    def msg_rate(self) -> float:
        return self.messages / self.seconds

    @property
    def reading_rate(self) -> float:
        return self.readings / self.seconds


def _count_drain(
    c: paho.Client, connect: Callable[[], object], n: int, meter: CpuMeter, who: str
) -> Drain:
    """Resume a subscriber's session and count until n messages have arrived: timed from
    `connect()` (the gateway's drain, from `start()`, includes its connect too) until
    `on_message` (which only counts; paho acknowledges QoS 1 itself) has seen the n-th."""
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
    connect()
    c.loop_start()
    if not done.wait(max(120.0, n / 500)):
        raise RuntimeError(f"{who}: only {state['count']} of {n} messages arrived")
    cpu = time.process_time() - cpu0
    meter.stop()
    time.sleep(0.2)  # let paho send the last PUBACKs before leaving
    c.disconnect()
    c.loop_stop()
    t = state["last"] - t0
    return Drain(
        t,
        state["first"] - t0,
        t,
        state["count"],
        0,
        cpu,
        meter.broker_s,
        meter.db_s,
        others_cpu_s=meter.others_s,
    )


def paho_drain(broker: Mosquitto, n: int, receive_maximum: int, meter: CpuMeter) -> Drain:
    """The bare subscriber: MQTT 5, asking for the gateway's Receive Maximum."""
    c = _client(PAHO_CLIENT_ID)
    return _count_drain(c, _v5_connect(c, broker, receive_maximum), n, meter, "bare subscriber")


def plain_drain(broker: Mosquitto, n: int, meter: CpuMeter) -> Drain:
    """The plain subscriber: MQTT 3.1.1, the broker's own window (max_inflight_messages)."""
    c = _plain_client()
    return _count_drain(c, _plain_connect(c, broker), n, meter, "plain subscriber")


def gateway_config(
    broker: Mosquitto,
    vm: VictoriaMetrics,
    workdir: Path,
    name: str,
    kind: GatewayKind,
    all_formats: bool = False,
) -> Config:
    """One of the gateways: its own client id (session), data_dir and database; with
    `all_formats`, subscribed to ALL_FORMATS instead of the default subscriptions."""
    mqtt: dict[str, object] = {
        "host": broker.host,
        "port": broker.port,
        "client_id": f"meter-gateway-{GATEWAY_ID}-{name}",
    }
    if all_formats:
        mqtt["subscriptions"] = [{"topic": t, "format": f} for t, f in ALL_FORMATS]
    return Config.model_validate(
        {
            "gateway": {"id": GATEWAY_ID, "data_dir": str(workdir / f"gateway-{name}")},
            "mqtt": mqtt,
            # Any free port: two runs of this benchmark may overlap.
            "http": {"listen": "127.0.0.1:0"},
            "storage": {
                "api": "v2",
                "url": vm.url,
                "batch_size": 5000,
                "flush_interval_s": 0.2,
            },
            "events": {"enabled": kind.detectors},
        }
    )


async def gateway_session(config: Config, spool: bool) -> None:
    """Create the gateway's persistent session (it subscribes on connect), then stop it."""
    gw = Gateway(config, spool=spool)
    await gw.start()
    try:
        # wait_connected() returns once subscribed (SUBACK received).
        await asyncio.wait_for(gw.mqtt.wait_connected(), 20)
    except TimeoutError:
        raise RuntimeError("gateway: did not connect to the broker") from None
    finally:
        await gw.stop()


async def gateway_drain(
    config: Config, n: int, readings: int, meter: CpuMeter, spool: bool
) -> Drain:
    """Start a gateway on the preloaded session; time until `readings` lines are stored.

    The events the detectors raise go to the database through the same writer, one
    `meter_event` line each: they are waited for too (and counted in the result)."""
    gw = Gateway(config, spool=spool)
    p, w, ev = gw.pipeline, gw.writer, gw.events
    first = received = 0.0
    meter.start()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    await gw.start()
    # Events an earlier run left undelivered go to the database now, as lines too.
    leftover = max(0, ev.outbox.backlog("database") - ev.emitted)
    deadline = time.monotonic() + max(120.0, readings / 1000)
    while w.lines_written < readings + leftover + ev.emitted:
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
    fsyncs = gw.spool.fsyncs if spool else 0
    events = {f"{t} {st}": k for (t, st), k in sorted(ev.counts.items())}
    event_fsyncs = ev.outbox.fsyncs
    await gw.stop()
    return Drain(
        t1 - t0,
        (first or t1) - t0,
        (received or t1) - t0,
        n,
        readings,  # all stored; lines_written also counts the events' meter_event lines
        cpu,
        meter.broker_s,
        meter.db_s,
        p.duplicates,
        gw.mqtt.connects,
        fsyncs,
        meter.others_s,
        events,
        event_fsyncs,
    )


def cpu_text(d: Drain) -> str:
    """CPU used meanwhile, in % of one core: consumer, broker, database, other work."""
    return (
        f"CPU: consumer {d.cpu_s / d.seconds:.0%}, broker {d.broker_cpu_s / d.seconds:.0%}, "
        f"database {d.db_cpu_s / d.seconds:.0%}, others {d.others_cpu_s / d.seconds:.0%}"
    )


# -- environment and report -----------------------------------------------------------------
def environment(spool_dir: Path) -> list[str]:
    mnt = common.mount_of(spool_dir)
    victoria = common.version_of([*common.DPKG_VERSION, "victoria-metrics"])
    return [
        *common.environment(
            ["paho-mqtt", "uvloop", "orjson", "influxdb-client", "aiohttp"], detectors=True
        ),
        f"broker      {common.version_of(['mosquitto', '-h'])}",
        f"database    victoria-metrics {victoria}",
        f"data        {spool_dir} (spools, databases): {mnt.fstype}, {mnt.device} mounted on "
        f"{mnt.point}",
    ]


def _median_range(values: list[float], fmt: str) -> tuple[str, str]:
    med = statistics.median(values)
    return format(med, fmt), f"{format(min(values), fmt)}-{format(max(values), fmt)}"


def _cpu_cells(d: Drain) -> str:
    """Consumer/broker/database/others CPU in % of one core."""
    return "/".join(
        f"{c / d.seconds * 100:.0f}" for c in (d.cpu_s, d.broker_cpu_s, d.db_cpu_s, d.others_cpu_s)
    )


def _target(name: str, values: list[float], fmt: str, goal: float, goal_text: str) -> list[str]:
    med, rng = _median_range(values, fmt)
    return [name, med, rng, goal_text, "met" if statistics.median(values) >= goal else "MISSED"]


def print_results(results: dict[tuple[str, str], list[Drain]]) -> None:
    """One row per case and run and the medians, then the targets (median and range)."""
    header = [
        "case",
        "run",
        "paho msg/s",
        "spool readings/s",
        "memory readings/s",
        "detectors off readings/s",
        "plain paho msg/s",
        "spool/memory",
        "spool/paho",
        "spool/plain",
        "detectors on/off",
        "events spool/memory",
        "CPU % spool gw/broker/db/others",
        "CPU % memory gw/broker/db/others",
        "CPU % detectors off gw/broker/db/others",
    ]
    rows = []
    ratios: dict[str, tuple[list[float], list[float], list[float], list[float]]] = {}
    cases = list(dict.fromkeys(name for name, _ in results))
    med = statistics.median
    for case in cases:
        runs = list(
            zip(
                results[(case, "paho")],
                results[(case, "spool")],
                results[(case, "memory")],
                results[(case, "nodetect")],
                results[(case, "plain")],
                strict=True,
            )
        )
        # spool/paho and spool/plain in messages/s: for single messages the same as
        # readings/s.
        to_mem = [s.reading_rate / m.reading_rate for _, s, m, _, _ in runs]
        to_paho = [s.msg_rate / b.msg_rate for b, s, _, _, _ in runs]
        to_plain = [s.msg_rate / p.msg_rate for _, s, _, _, p in runs]
        on_off = [s.reading_rate / o.reading_rate for _, s, _, o, _ in runs]
        ratios[case] = (to_mem, to_paho, to_plain, on_off)
        for i, (b, s, m, o, p) in enumerate(runs, 1):
            rows.append(
                [
                    case,
                    str(i),
                    f"{b.msg_rate:,.0f}",
                    f"{s.reading_rate:,.0f}",
                    f"{m.reading_rate:,.0f}",
                    f"{o.reading_rate:,.0f}",
                    f"{p.msg_rate:,.0f}",
                    f"{to_mem[i - 1]:.2f}",
                    f"{to_paho[i - 1]:.2f}",
                    f"{to_plain[i - 1]:.2f}",
                    f"{on_off[i - 1]:.2f}",
                    f"{s.events_total:,}/{m.events_total:,}",
                    _cpu_cells(s),
                    _cpu_cells(m),
                    _cpu_cells(o),
                ]
            )
        if len(runs) > 1:
            rows.append(
                [
                    case,
                    "median",
                    f"{med(b.msg_rate for b, _, _, _, _ in runs):,.0f}",
                    f"{med(s.reading_rate for _, s, _, _, _ in runs):,.0f}",
                    f"{med(m.reading_rate for _, _, m, _, _ in runs):,.0f}",
                    f"{med(o.reading_rate for _, _, _, o, _ in runs):,.0f}",
                    f"{med(p.msg_rate for _, _, _, _, p in runs):,.0f}",
                    f"{med(to_mem):.2f}",
                    f"{med(to_paho):.2f}",
                    f"{med(to_plain):.2f}",
                    f"{med(on_off):.2f}",
                    "",
                    "",
                    "",
                    "",
                ]
            )
    print_table(header, rows)
    print("(spool/paho compares messages/s; for batches a message is 100 readings;")
    print(" paho: MQTT 5 asking for the gateway's Receive Maximum; plain paho: MQTT 3.1.1,")
    print(" the broker's window of max_inflight_messages; spool/plain >= 1.00: the gateway")
    print(" as deployed drains at least as fast as the plain subscriber;")
    print(" detectors on/off: spool readings/s over spool-with-detectors-off readings/s;")
    print(" events: events the detectors raised or cleared during the drain)")
    print()

    summary = []
    for case in cases:
        to_mem, to_paho, to_plain, on_off = ratios[case]
        summary.append(_target(f"{case}: spool / memory readings/s", to_mem, ".2f", 0.8, ">= 0.80"))
        if case == "single":
            summary.append(
                _target("single: spool readings/s / paho msg/s", to_paho, ".2f", 1.0, ">= 1.00")
            )
            summary.append(
                _target(
                    "single: spool readings/s / plain paho msg/s", to_plain, ".2f", 1.0, ">= 1.00"
                )
            )
        summary.append(
            _target(f"{case}: detectors on / off readings/s", on_off, ".2f", 0.85, ">= 0.85")
        )
    batch = results.get((f"batch x{BATCH_SIZE}", "spool"))
    if batch:
        rates = [g.reading_rate for g in batch]
        summary.append(_target("batch: spool readings/s", rates, ",.0f", 100_000, ">= 100,000"))
    if summary:
        print_table(["target", "median", "range", "goal", ""], summary)


class EventLogFilter(logging.Filter):
    """Counts the gateway's per-event log lines and keeps them off the terminal.

    The gateway logs every raise at WARNING; a bench whose readings raise an event per
    meter would print thousands. The record is still made (as in a deployment); only
    the output is spared."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "meter_gateway.events" and str(record.msg).startswith("event "):
            self.dropped += 1
            return False
        return True


# -- main -------------------------------------------------------------------------------------
def baseline_text(label: str, d: Drain) -> str:
    return (
        f"      {label:<15} {d.msg_rate:9,.0f} msg/s      in {d.seconds:5.2f} s "
        f"({cpu_text(d)}; first message after {d.first_s * 1000:.0f} ms)"
    )


def drain_text(label: str, d: Drain) -> str:
    extra = ""
    if d.fsyncs:
        extra += f"; {d.fsyncs:,} fsyncs, {d.readings / d.fsyncs:,.0f} readings each"
    if d.duplicates:
        extra += f"; {d.duplicates} duplicates dropped"
    if d.connects != 1:
        extra += f"; {d.connects} connections"
    if d.events:
        kinds = ", ".join(f"{k} {v:,}" for k, v in d.events.items())
        extra += f"; events: {kinds} ({d.event_fsyncs:,} outbox fsyncs)"
    return (
        f"      {label:<28} {d.reading_rate:9,.0f} readings/s in {d.seconds:5.2f} s"
        f" ({cpu_text(d)}; first message after {d.first_s * 1000:.0f} ms, "
        f"last at {d.received_s:.2f} s{extra})"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--messages", type=int, help="single-reading messages (default 50,000; --quick 10,000)"
    )
    ap.add_argument(
        "--batches", type=int, help="100-reading batch messages (default 2,000; --quick 200)"
    )
    ap.add_argument("--repeat", type=int, help="repeat both cases K times (default 3; --quick 1)")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a short run to check the bench works (rates from one small run are noisy): "
        "10,000 messages, 200 batches, 1 repeat unless given",
    )
    ap.add_argument(
        "--all-formats",
        action="store_true",
        help="subscribe every consumer to every format's default topic (ALL_FORMATS)",
    )
    ap.add_argument(
        "--profile", metavar="FILE", help="cProfile the gateway drains with the spool into FILE"
    )
    args = ap.parse_args(argv)
    for name, (full, quick) in RUN_SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    event_logs = EventLogFilter()
    for handler in logging.getLogger().handlers:
        handler.addFilter(event_logs)

    profiler = cProfile.Profile() if args.profile else None
    results: dict[tuple[str, str], list[Drain]] = {}
    expected = 0
    stored: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-", dir=common.disk_tempdir()) as tmp:
        work = Path(tmp)
        print("MQTT ingest benchmark: pre-load the broker, then drain (QoS 1)")
        if args.all_formats:
            topics = ", ".join(f"{t} ({f})" for t, f in ALL_FORMATS)
            print(f"  all formats subscribed: {topics}")
        for line in environment(work):
            print("  " + line)
        print()
        with (
            # As deployed (see the README): a window of at least mqtt.receive_maximum, since
            # the gateway acks once readings are on disk, not when they arrive.
            Mosquitto(
                work / "mosquitto",
                persistence=False,
                max_queued_messages=0,
                max_inflight_messages=1000,
            ) as broker,
            VictoriaMetrics(work / "victoria-spool") as vm_spool,
            VictoriaMetrics(work / "victoria-nodetect") as vm_nodetect,
            VictoriaMetrics(work / "victoria-memory") as vm_memory,
        ):
            dbs = {"spool": vm_spool, "nodetect": vm_nodetect, "memory": vm_memory}
            configs = {
                name: gateway_config(broker, dbs[name], work, name, kind, args.all_formats)
                for name, kind in GATEWAYS.items()
            }
            meters = {name: CpuMeter(broker, dbs[name]) for name in GATEWAYS}
            rx_max = configs["spool"].mqtt.receive_maximum
            filters = tuple(t for t, _ in ALL_FORMATS) if args.all_formats else TOPICS
            paho_session(broker, rx_max, filters)
            plain_session(broker, filters)
            for name, kind in GATEWAYS.items():
                uvloop.run(gateway_session(configs[name], kind.spool))
            for rep in range(args.repeat):
                cases = [
                    ("single", args.messages, single_messages, 1),
                    (f"batch x{BATCH_SIZE}", args.batches, batch_messages, BATCH_SIZE),
                ]
                # The order reverses from one repeat to the next: the gateways with the
                # spool, detectors on and off, take turns going first, so do spool and
                # memory.
                order = list(GATEWAYS) if rep % 2 == 0 else list(reversed(GATEWAYS))
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
                    bare = paho_drain(broker, n, rx_max, meters["spool"])
                    results.setdefault((name, "paho"), []).append(bare)
                    print(baseline_text("paho", bare), flush=True)
                    plain = plain_drain(broker, n, meters["spool"])
                    results.setdefault((name, "plain"), []).append(plain)
                    print(baseline_text("plain paho 3.1.1", plain), flush=True)
                    for gw_name in order:
                        kind = GATEWAYS[gw_name]
                        profile = profiler is not None and gw_name == "spool"
                        if profile:
                            profiler.enable()
                        gw = uvloop.run(
                            gateway_drain(
                                configs[gw_name], n, readings, meters[gw_name], kind.spool
                            )
                        )
                        if profile:
                            profiler.disable()
                        results.setdefault((name, gw_name), []).append(gw)
                        print(drain_text(f"gateway {kind.label}", gw), flush=True)
                    expected += readings
            stored = {name: db.count("meter_reading_power_w") for name, db in dbs.items()}

    print()
    print_results(results)
    print()
    print(f"load average at the end: {common.load_average()}")
    for name in GATEWAYS:
        total: dict[str, int] = {}
        for (_, gw_name), drains in results.items():
            if gw_name == name:
                for d in drains:
                    for k, v in d.events.items():
                        total[k] = total.get(k, 0) + v
        kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(total.items())) or "none"
        print(f"events raised/cleared in all drains ({GATEWAYS[name].label}): {kinds}")
    if event_logs.dropped:
        print(f"({event_logs.dropped:,} event log lines kept off the terminal)")
    ok = all(count == expected for count in stored.values())
    for name, count in stored.items():
        print(
            f"stored ({name}): VictoriaMetrics counts {count:,} samples of "
            f"meter_reading_power_w; expected {expected:,}"
            + ("" if count == expected else "  <-- MISMATCH")
        )
    if profiler is not None:
        profiler.dump_stats(args.profile)
        print(f"profile of the gateway drains (with the spool) written to {args.profile}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
