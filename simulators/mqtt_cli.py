"""``meter-gateway simulate mqtt``: publish a simulated fleet to an MQTT broker.

Two parts: ``MqttPublisher`` (a few paho-mqtt 2 connections that publish per-meter topics, so
a fleet of thousands does not need thousands of TCP connections) and ``run_fleet`` (paces the
fleet's messages by simulated time and writes the ground-truth log). ``register`` adds the
command to ``meter-gateway simulate``; ``python -m meter_gateway.simulators.mqtt_cli`` runs
it standalone.

Last will: a per-meter MQTT last will needs a connection per meter, which this design avoids.
The simulator emulates it instead: where a scenario sets ``lwt: true`` on an ``outage`` or
``comms_dropout``, it publishes ``offline`` on ``meters/<id>/status`` when the meter dies and
``online`` when it is back, as the broker would for a real meter's will.
"""

from __future__ import annotations

import argparse
import signal
import ssl
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, Self

import paho.mqtt.client as paho

from meter_gateway.simulators.faults import FaultError, parse_duration
from meter_gateway.simulators.fleet import Fleet, Message
from meter_gateway.simulators.meter import rfc3339
from meter_gateway.simulators.scenario import Scenario, ScenarioError, load_scenario
from meter_gateway.simulators.topology import write_csv
from meter_gateway.simulators.truth import TruthLog

__all__ = [
    "BrokerOptions",
    "MqttPublisher",
    "PublishError",
    "RunStats",
    "main",
    "register",
    "run_fleet",
]

EXIT_USAGE = 2


class PublishError(RuntimeError):
    """The broker refused the connection or a publish failed."""


@dataclass(frozen=True, slots=True)
class BrokerOptions:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    client_id_prefix: str = "meter-sim"
    keepalive_s: int = 60


class MqttPublisher:
    """A few paho-mqtt 2 clients; each topic always goes through the same one (per-meter order).

    At most ``max_outstanding`` QoS 1 messages wait for their PUBACK at a time: a slow broker
    slows the simulator down instead of filling memory.
    """

    def __init__(
        self, options: BrokerOptions, *, connections: int = 1, max_outstanding: int = 10_000
    ) -> None:
        if connections < 1:
            raise ValueError(f"connections must be >= 1 (got {connections})")
        self.options = options
        self.max_outstanding = max_outstanding
        self._cond = threading.Condition()
        self._outstanding = 0
        self._connected: list[threading.Event] = []
        self._refused: str | None = None
        run_id = uuid.uuid4().hex[:8]  # two simulators on one broker must not share client ids
        self._clients = [
            self._client(f"{options.client_id_prefix}-{run_id}-{i}") for i in range(connections)
        ]

    def _client(self, client_id: str) -> paho.Client:
        o = self.options
        c = paho.Client(
            callback_api_version=paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv311,
            clean_session=True,
        )
        if o.username is not None:
            c.username_pw_set(o.username, o.password)
        if o.tls or o.ca_file or o.cert_file:
            c.tls_set(
                ca_certs=o.ca_file,
                certfile=o.cert_file,
                keyfile=o.key_file,
                cert_reqs=ssl.CERT_NONE if o.tls_insecure else ssl.CERT_REQUIRED,
            )
            c.tls_insecure_set(o.tls_insecure)
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)  # unbounded in paho; ``max_outstanding`` bounds it here
        connected = threading.Event()
        self._connected.append(connected)

        def on_connect(client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
            if rc.is_failure:
                self._refused = f"broker refused the connection: {rc}"
            connected.set()

        def on_publish(client: paho.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
            with self._cond:
                self._outstanding -= 1
                self._cond.notify_all()

        c.on_connect = on_connect
        c.on_publish = on_publish
        return c

    def connect(self, timeout_s: float = 10.0) -> None:
        o = self.options
        for c in self._clients:
            try:
                c.connect(o.host, o.port, keepalive=o.keepalive_s)
            except OSError as exc:
                raise PublishError(f"cannot connect to {o.host}:{o.port}: {exc}") from exc
            c.loop_start()
        deadline = time.monotonic() + timeout_s
        for ev in self._connected:
            if not ev.wait(max(0.0, deadline - time.monotonic())):
                raise PublishError(f"no CONNACK from {o.host}:{o.port} within {timeout_s:g} s")
        if self._refused:
            raise PublishError(f"{o.host}:{o.port}: {self._refused}")

    def publish(self, msg: Message) -> None:
        with self._cond:
            while self._outstanding >= self.max_outstanding:
                self._cond.wait(1.0)
            self._outstanding += 1
        # A stable choice per topic (not hash(), which changes per process).
        client = self._clients[sum(msg.topic.encode()) % len(self._clients)]
        info = client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            # NO_CONN: paho keeps QoS 1 messages and sends them after it reconnects.
            with self._cond:
                self._outstanding -= 1
            raise PublishError(f"publish to {msg.topic} failed: {paho.error_string(info.rc)}")

    @property
    def outstanding(self) -> int:
        with self._cond:
            return self._outstanding

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until the broker has acknowledged everything; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._outstanding > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        for c in self._clients:
            c.disconnect()
            c.loop_stop()

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.flush()
        finally:
            self.close()


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


# -- command line ----------------------------------------------------------------------

_DESCRIPTION = """\
Publish a simulated meter fleet to an MQTT broker (QoS 1), on the gateway's default topics:
  meters/<id>/reading            one reading (format json) per meter and interval
  concentrators/<id>/readings    a batch (json-batch) per concentrator and interval
  meters/<id>/event              last_gasp / power_restored (meter-event)
  meters/<id>/status             online / offline (lwt)

Time runs --speed times faster than the wall clock; timestamps are simulated time. By
default the run starts at now - duration (aligned to the interval), so a fast run ends
about now and stays inside the gateway's accepted window (not over 5 min in the future,
not older than 7 days). Durations accept seconds or 90s, 15m, 2h, 1d, 1h30m.

Faults (outages, dropouts, spikes, theft, reverse flow, register resets, voltage sag and
swell, phase loss, clock drift, duplicates, out-of-order delivery, malformed payloads)
come from a YAML --scenario; see simulators/README.md. Every injected fault is written to
--truth-out as a JSON line. Command-line options override the scenario's `fleet:` values.

All meters share one connection (or --connections N); a per-meter last will is emulated:
where the scenario sets `lwt: true`, `offline` is published on meters/<id>/status.
"""

_EPILOG = """\
examples:
  meter-gateway simulate mqtt --meters 200 --interval 15m --speed 900 --duration 1d
  meter-gateway simulate mqtt --meters 50 --concentrators 1 --speed 0 --duration 6h \\
      --scenario simulators/scenarios/example.yaml --truth-out truth.jsonl \\
      --topology-out topology.csv --seed 7
"""


def _positive_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {text})")
    return value


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_arguments(p: argparse.ArgumentParser) -> None:
    fleet = p.add_argument_group("fleet (defaults: the scenario's `fleet:` values, else these)")
    fleet.add_argument("--meters", type=int, metavar="N", help="number of meters (default 10)")
    fleet.add_argument(
        "--interval", type=_duration, metavar="S", help="reading interval (default 900 = 15m)"
    )
    fleet.add_argument("--seed", type=int, metavar="K", help="random seed (default 0)")
    fleet.add_argument(
        "--duration",
        type=_duration,
        metavar="S",
        help="simulated time to run, then stop (default: run until interrupted)",
    )
    fleet.add_argument(
        "--start",
        metavar="TIME",
        help="simulated start, RFC 3339 with offset (default: now - duration, aligned)",
    )
    fleet.add_argument(
        "--concentrators",
        type=int,
        metavar="C",
        help="data concentrators dc-01.. (one per transformer, from tx-001) batching their "
        "meters' readings (default 0)",
    )
    fleet.add_argument("--meters-per-transformer", type=int, metavar="M", help="default 25")
    fleet.add_argument("--scenario", type=Path, metavar="FILE", help="YAML scenario: faults")
    fleet.add_argument(
        "--no-status",
        action="store_true",
        help="do not publish `online` on meters/<id>/status at start",
    )
    run = p.add_argument_group("run")
    run.add_argument(
        "--speed",
        type=_positive_float,
        default=1.0,
        metavar="X",
        help="simulated seconds per wall second; 900: a 15-minute interval per second; "
        "0: as fast as possible (default 1)",
    )
    run.add_argument("--topology-out", type=Path, metavar="FILE", help="write the topology CSV")
    run.add_argument("--truth-out", type=Path, metavar="FILE", help="write the ground-truth log")
    run.add_argument(
        "--connections", type=int, default=1, metavar="N", help="MQTT connections (default 1)"
    )
    run.add_argument("--quiet", action="store_true", help="no progress line")
    broker = p.add_argument_group("broker")
    broker.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    broker.add_argument("--port", type=int, default=1883, help="default 1883")
    broker.add_argument("--username")
    broker.add_argument("--password")
    broker.add_argument("--password-file", type=Path, help="read the password from this file")
    broker.add_argument("--tls", action="store_true", help="connect with TLS")
    broker.add_argument("--ca-file", help="CA certificates to verify the broker")
    broker.add_argument("--cert-file", help="client certificate (mutual TLS)")
    broker.add_argument("--key-file", help="client key (mutual TLS)")
    broker.add_argument(
        "--tls-insecure", action="store_true", help="do not verify the broker's certificate"
    )


def register(simulate_subparsers: Any) -> None:
    """Add ``mqtt`` to the subparsers of ``meter-gateway simulate``."""
    p = simulate_subparsers.add_parser(
        "mqtt",
        help="an MQTT meter fleet with injected faults",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(p)
    p.set_defaults(func=run_cli)


def _fleet_from_args(args: argparse.Namespace) -> Fleet:
    scenario = load_scenario(args.scenario) if args.scenario else Scenario()
    return Fleet(
        scenario,
        meters=args.meters,
        interval_s=args.interval,
        seed=args.seed,
        duration=args.duration,
        start=args.start,
        concentrators=args.concentrators,
        meters_per_transformer=args.meters_per_transformer,
        status_online=False if args.no_status else None,
    )


def _progress_printer(stream: IO[str]) -> Callable[[RunStats], None]:
    tty = stream.isatty()

    def show(stats: RunStats) -> None:
        if tty:
            stream.write("\r\x1b[2K" + stats.line())
        else:
            stream.write(stats.line() + "\n")
        stream.flush()

    return show


def run_cli(args: argparse.Namespace) -> int:
    err = sys.stderr
    try:
        fleet = _fleet_from_args(args)
    except ScenarioError as exc:
        print(f"{exc.source}: not valid ({len(exc.errors)} error(s)):", file=err)
        for e in exc.errors:
            print(f"  {e}", file=err)
        return EXIT_USAGE
    except (FaultError, ValueError) as exc:
        print(f"simulate mqtt: {exc}", file=err)
        return EXIT_USAGE
    if args.topology_out:
        write_csv(fleet.topology, args.topology_out)
    password = args.password
    if args.password_file:
        password = args.password_file.read_text().strip()
    options = BrokerOptions(
        host=args.host,
        port=args.port,
        username=args.username,
        password=password,
        tls=args.tls,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        tls_insecure=args.tls_insecure,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    publisher = MqttPublisher(options, connections=args.connections)
    try:
        publisher.connect()
        if fleet.end is None and args.speed != 1:
            # Without an end, simulated time overtakes the wall clock at any speed above 1.
            print(
                "note: with no --duration and --speed other than 1, timestamps run ahead of "
                "the clock; the gateway refuses readings over 5 min in the future",
                file=err,
            )
        stats = run_fleet(
            fleet,
            publisher.publish,
            speed=args.speed,
            truth_out=args.truth_out,
            stop=stop,
            on_progress=None if args.quiet else _progress_printer(err),
        )
        if not publisher.flush(timeout_s=60):
            print(f"warning: {publisher.outstanding} messages not acknowledged", file=err)
    except PublishError as exc:
        print(f"simulate mqtt: {exc}", file=err)
        return 1
    finally:
        publisher.close()
        for s, h in previous.items():
            signal.signal(s, h)
    if not args.quiet:
        print(("\n" if err.isatty() else "") + stats.summary(), file=err)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m meter_gateway.simulators.mqtt_cli",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    return run_cli(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
