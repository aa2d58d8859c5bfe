"""Helpers for fault tests with real services: the gateway as a process that can be
SIGKILLed, a throttled QoS 1 publisher that counts PUBACKs, the spool's backlog read
from its files, InfluxDB 1.x contents, a memory sampler, and a tiny tmpfs.

Used by tests/integration/test_crash_recovery.py and bench/fault_spool.py. Everything
here is blocking (threads and subprocesses); the spool files are read with a parser of
their own, independent of the gateway's, so a format bug cannot hide itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import yaml

from meter_gateway.config.schema import Config
from meter_gateway.simulators.services import InfluxDB1, Mosquitto, free_port

__all__ = [
    "EventSubscriber",
    "GatewayProcess",
    "Message",
    "RssSampler",
    "SpoolBacklog",
    "StreamPublisher",
    "batch_message",
    "influx_points",
    "influx_series_counts",
    "influx_total",
    "memory_kib",
    "single_message",
    "spool_backlog",
    "tmpfs",
]

# -- messages ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    readings: tuple[tuple[str, int], ...]  # (meter_id, ts) of each reading in it


def single_message(meter: str, ts: int, power_w: float) -> Message:
    return Message(
        f"meters/{meter}/reading",
        orjson.dumps({"ts": ts, "power_w": power_w}),
        ((meter, ts),),
    )


def batch_message(concentrator: str, items: list[tuple[str, int, float]]) -> Message:
    body = {
        "concentrator_id": concentrator,
        "readings": [{"meter_id": m, "ts": ts, "power_w": p} for m, ts, p in items],
    }
    return Message(
        f"concentrators/{concentrator}/readings",
        orjson.dumps(body),
        tuple((m, ts) for m, ts, _ in items),
    )


# -- the gateway as a process ----------------------------------------------------------------


class GatewayProcess:
    """`meter-gateway run -c FILE` as a child process; each start logs to its own file.

    The status server listens on a fixed free port so that restarts keep it.
    """

    #: How the interpreter runs the command line (a test may run it through a wrapper).
    command: tuple[str, ...] = ("-m", "meter_gateway.gateway.cli")

    def __init__(self, config: Config, workdir: Path, *, shutdown_timeout_s: float = 10) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        data = config.model_dump(mode="json", exclude_unset=True)
        data.setdefault("http", {})["listen"] = f"127.0.0.1:{self.http_port}"
        self.config_file = self.workdir / "gateway.yaml"
        self.config_file.write_text(yaml.safe_dump(data))
        self.data_dir = Path(data["gateway"]["data_dir"])
        self.spool_dir = self.data_dir / "spool"
        self.shutdown_timeout_s = shutdown_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs: list[Path] = []  # one log per start, in order

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = self.workdir / f"gateway-{len(self.runs) + 1}.log"
        self.runs.append(log)
        with log.open("wb") as f:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    *self.command,
                    "run",
                    "-c",
                    str(self.config_file),
                    "--shutdown-timeout",
                    str(self.shutdown_timeout_s),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=f,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def connected(self) -> bool:
        """The current run has connected to the broker and subscribed (or it died: fail)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(
                f"the gateway exited with code {self.proc.returncode}; its log:\n{self.log_tail()}"
            )
        return "mqtt: connected" in self.log()

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> int | None:
        """SIGTERM (drain and stop); its exit code, or None when it was not running."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=self.shutdown_timeout_s + 20)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def close(self) -> None:
        self.kill()

    # -- what it says ---------------------------------------------------------------------------
    def log(self, run: int = -1) -> str:
        """The stderr of a run (the last by default)."""
        if not self.runs:
            return ""
        return self.runs[run].read_text(errors="replace")

    def all_logs(self) -> str:
        return "".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in self.runs)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def get(self, path: str) -> tuple[int, bytes]:
        """GET from the status server: (HTTP status, body), or (0, b"") when it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def status(self) -> dict[str, Any] | None:
        code, body = self.get("/status")
        return json.loads(body) if code == 200 else None

    def memory(self) -> dict[str, int]:
        pid = self.pid
        return memory_kib(pid) if pid is not None else {}


class EventSubscriber:
    """Every event published under `topic` (an MQTT filter), as a subscriber sees it.

    Blocking, like the rest of this module: run `wait` in a thread from async tests."""

    def __init__(self, broker: Mosquitto, topic: str = "events/#") -> None:
        self.got: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        assert subscribed.wait(10), "no SUBACK from the broker"

    def _on_message(self, c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.got.append(orjson.loads(msg.payload))
            self._cond.notify_all()

    def of(self, type_: str, state: str) -> list[dict[str, Any]]:
        """The events of `type_` in `state` received so far."""
        with self._cond:
            return [e for e in self.got if e["type"] == type_ and e["state"] == state]

    def wait(self, done: Callable[[], bool], what: str, timeout: float = 20) -> None:
        """Until `done()` (it may call `of`); fails naming `what`."""
        with self._cond:
            ok = self._cond.wait_for(done, timeout)
        assert ok, f"{what}: not on MQTT within {timeout:.0f} s"

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB; empty when it is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return out


class RssSampler(threading.Thread):
    """Samples the gateway's VmRSS/VmHWM every `every_s`, labelled with the current phase.

    The gateway may be restarted meanwhile: each sample names its pid.
    """

    def __init__(self, gateway: GatewayProcess, every_s: float = 0.1) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.gateway = gateway
        self.every_s = every_s
        self.phase = "start"
        self.samples: list[tuple[str, int, int, int]] = []  # (phase, pid, rss, hwm) KiB
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.every_s)

    def sample(self) -> None:
        pid = self.gateway.pid
        if pid is None:
            return
        mem = memory_kib(pid)
        if "VmRSS" in mem:
            self.samples.append((self.phase, pid, mem["VmRSS"], mem.get("VmHWM", 0)))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)

    def rss(self, phase: str) -> list[int]:
        return [rss for p, _, rss, _ in self.samples if p == phase]

    def peak(self, phase: str) -> int:
        """The highest RSS in a phase, KiB: the sampled RSS, and the high-water mark of
        each process started in the phase (whose whole life is in it)."""
        first_phase: dict[int, str] = {}
        for p, pid, _, _ in self.samples:
            first_phase.setdefault(pid, p)
        peak = 0
        for p, pid, rss, hwm in self.samples:
            if p == phase:
                peak = max(peak, rss, hwm if first_phase[pid] == phase else 0)
        return peak


# -- a throttled QoS 1 publisher ----------------------------------------------------------------


class StreamPublisher(threading.Thread):
    """Publishes messages with QoS 1 at `rate` readings/s (None: as fast as it can),
    without waiting for each PUBACK (at most `max_outstanding` unacknowledged), and
    counts what the broker acknowledged. paho reconnects by itself and resends what
    was not acknowledged (a broker restart).
    """

    def __init__(
        self,
        broker: Mosquitto,
        messages: Iterable[Message],
        *,
        rate: float | None = None,
        max_outstanding: int = 5000,
        client_id: str = "fault-publisher",
    ) -> None:
        super().__init__(daemon=True, name="publisher")
        self.messages = messages
        self.rate = rate
        self.max_outstanding = max_outstanding
        self.published: list[Message] = []
        self.published_readings = 0
        self.acked_messages = 0
        self.acked_readings = 0
        self.failed: list[tuple[Message, str]] = []  # PUBACK with an error reason code
        self.error: BaseException | None = None
        self._lock = threading.Condition()
        self._pending: dict[int, Message] = {}  # mid -> message, until its PUBACK
        self._early: dict[int, tuple[bool, str]] = {}  # PUBACKs that beat publish() returning
        self._stop_event = threading.Event()
        self.finished = threading.Event()  # every message published (not necessarily acked)
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)  # unbounded: never refuse a publish
        self.client.reconnect_delay_set(0.1, 1)
        self.client.on_publish = self._on_publish
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    # paho's thread; it holds paho's message lock here, so publish() is never called
    # while holding ours.
    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        failed = bool(getattr(rc, "is_failure", False))
        with self._lock:
            msg = self._pending.pop(mid, None)
            if msg is None:
                self._early[mid] = (failed, str(rc))
            else:
                self._acked(msg, failed, str(rc))

    def _acked(self, msg: Message, failed: bool, reason: str) -> None:
        if failed:
            self.failed.append((msg, reason))
        else:
            self.acked_messages += 1
            self.acked_readings += len(msg.readings)
        self._lock.notify_all()

    def run(self) -> None:
        try:
            t0 = time.monotonic()
            for msg in self.messages:
                if self._stop_event.is_set():
                    break
                if self.rate:
                    due = t0 + self.published_readings / self.rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        self._stop_event.wait(delay)
                with self._lock:
                    while (
                        len(self.published) - self.acked_messages - len(self.failed)
                        >= self.max_outstanding
                        and not self._stop_event.is_set()
                    ):
                        self._lock.wait(0.1)
                info = self.client.publish(msg.topic, msg.payload, qos=1)
                with self._lock:
                    self.published.append(msg)
                    self.published_readings += len(msg.readings)
                    early = self._early.pop(info.mid, None)
                    if early is None:
                        self._pending[info.mid] = msg
                    else:
                        self._acked(msg, *early)
        except BaseException as exc:  # reported by wait_acked
            self.error = exc
        finally:
            self.finished.set()

    def stop(self) -> None:
        """Publish nothing more (what was published is still acknowledged)."""
        self._stop_event.set()

    @property
    def unacked(self) -> int:
        with self._lock:
            return len(self.published) - self.acked_messages - len(self.failed)

    def all_acked(self) -> bool:
        if self.error is not None:
            raise AssertionError(f"the publisher failed: {self.error!r}") from self.error
        return self.finished.is_set() and self.unacked == 0

    def published_set(self) -> set[tuple[str, int]]:
        with self._lock:
            return {r for m in self.published for r in m.readings}

    def close(self) -> None:
        self.stop()
        self.join(10)
        self.client.loop_stop()
        self.client.disconnect()


# -- the spool, read from its files ----------------------------------------------------------------

_HEADER = struct.Struct("<IIQQ")  # length, crc32, seq, committed_ns
_CHECKED = struct.Struct("<QQ")


@dataclass(frozen=True, slots=True)
class SpoolBacklog:
    segments: int  # segment files present
    bytes: int  # their size
    records: int  # whole records not yet released (seq above the ledger)
    lines: int  # readings in those
    ledger: int  # the last record released, as the ledger says
    last_seq: int  # the last whole record on disk
    torn_bytes: int  # bytes after the last whole record of each file


def spool_backlog(spool_dir: Path) -> SpoolBacklog:
    """What the spool still holds for the database, from its files alone."""
    try:
        ledger = int((spool_dir / "ledger").read_text().strip() or 0)
    except (OSError, ValueError):
        ledger = 0
    segments = total = records = lines = last_seq = torn = 0
    for path in sorted(spool_dir.glob("*.seg")):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # released meanwhile
            continue
        segments += 1
        total += len(data)
        pos = 0
        while pos + _HEADER.size <= len(data):
            length, crc, seq, ts = _HEADER.unpack_from(data, pos)
            end = pos + _HEADER.size + length
            if end > len(data):
                break
            payload = data[pos + _HEADER.size : end]
            if zlib.crc32(payload, zlib.crc32(_CHECKED.pack(seq, ts))) != crc:
                break
            last_seq = max(last_seq, seq)
            if seq > ledger:
                records += 1
                lines += payload.count(b"\n") + 1 if length else 0
            pos = end
        torn += len(data) - pos
    return SpoolBacklog(segments, total, records, lines, ledger, last_seq, torn)


# -- InfluxDB 1.x ---------------------------------------------------------------------------------


def influx_total(db: InfluxDB1) -> int:
    """Points of meter_reading (power_w), or -1 while the database does not answer."""
    try:
        rows = db.query("SELECT count(power_w) FROM meter_reading")
    except OSError:
        return -1
    return int(rows[0]["count"]) if rows else 0


def influx_series_counts(db: InfluxDB1) -> dict[tuple[str, str], int]:
    """Points per series: (meter_id, source) -> count."""
    rows = db.query("SELECT count(power_w) FROM meter_reading GROUP BY meter_id, source")
    return {(r["meter_id"], r["source"]): int(r["count"]) for r in rows}


def influx_points(db: InfluxDB1) -> list[tuple[str, int]]:
    """Every stored (meter_id, timestamp in s), duplicates kept as returned."""
    rows = db.query("SELECT power_w FROM meter_reading GROUP BY meter_id", epoch="s")
    return [(r["meter_id"], int(r["time"])) for r in rows]


# -- a tiny filesystem ----------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(directory: Path, size: str = "4m") -> Iterator[Path]:
    """Mount a tmpfs of `size` at `directory` (root only); unmount at the end."""
    directory.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        raise PermissionError(
            f"cannot mount a {size} tmpfs at {directory} (this test needs root, or "
            f"CAP_SYS_ADMIN in a container): {res.stderr.strip() or res.returncode}"
        )
    try:
        yield directory
    finally:
        res = subprocess.run(["umount", str(directory)], capture_output=True, check=False)
        if res.returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)
