"""Real local servers for tests, benchmarks and the demo.

Each class starts the Debian-packaged binary on a free loopback port with its data
in a folder of the caller's, waits until it answers, and stops it on exit:

    with Mosquitto(tmp_path / "mqtt") as broker:
        ...broker.host, broker.port...

Nothing here is mocked: the gateway's integration tests talk to these.
"""

from __future__ import annotations

import getpass
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = ["InfluxDB1", "Mosquitto", "ServiceError", "VictoriaMetrics", "free_port"]

HOST = "127.0.0.1"


class ServiceError(RuntimeError):
    """A local test server could not be started or did not answer."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _binary(name: str, *extra_dirs: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for d in extra_dirs:
        candidate = Path(d) / name
        if candidate.exists():
            return str(candidate)
    raise ServiceError(
        f"{name} is not installed; run `bash scripts/setup.sh` (it installs the Debian packages)"
    )


class _Service:
    """A child process with a readiness probe; a context manager."""

    name = "service"
    start_timeout_s = 30.0

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = self.workdir / f"{self.name}.log"

    # Subclasses say how to start and how to tell it is up.
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        if self._proc is not None:
            return
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(
                self._command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServiceError(
                    f"{self.name} exited with code {self._proc.returncode} at start; "
                    f"its log:\n{self.log_tail()}"
                )
            if self._ready():
                return
            time.sleep(0.02)
        self.stop()
        raise ServiceError(
            f"{self.name} did not answer on port {self.port} within {self.start_timeout_s:.0f} s; "
            f"its log:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash would."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)

    def restart(self) -> None:
        """Stop and start again on the same port with the same data."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _port_open(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def _http_ok(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=0.5) as resp:
                return 200 <= resp.status < 300
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Mosquitto(_Service):
    """mosquitto 2 on loopback, anonymous, persistent sessions kept on disk.

    `max_queued_messages` is raised from mosquitto's default of 1000: beyond it a
    slow QoS 1 subscriber loses messages at the broker.
    """

    name = "mosquitto"

    def __init__(
        self,
        workdir: Path,
        *,
        persistence: bool = True,
        max_queued_messages: int = 1_000_000,
        max_inflight_messages: int = 20,
        extra_config: str = "",
        tls: tuple[Path, Path, Path] | None = None,
        password_file: Path | None = None,
    ) -> None:
        """`tls`: (CA, certificate, key) files make the listener TLS-only;
        `password_file` (mosquitto_passwd format) turns anonymous access off."""
        super().__init__(workdir)
        self.tls = tls
        self.password_file = password_file
        self.persistence = persistence
        self.max_queued_messages = max_queued_messages
        self.max_inflight_messages = max_inflight_messages
        self.extra_config = extra_config

    def _command(self) -> list[str]:
        conf = self.workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} {self.host}",
            *(
                [f"cafile {self.tls[0]}", f"certfile {self.tls[1]}", f"keyfile {self.tls[2]}"]
                if self.tls
                else []
            ),
            *(
                ["allow_anonymous false", f"password_file {self.password_file}"]
                if self.password_file
                else ["allow_anonymous true"]
            ),
            # Run as whoever started us, so the persistence file stays in our folder.
            f"user {getpass.getuser()}",
            f"max_queued_messages {self.max_queued_messages}",
            f"max_inflight_messages {self.max_inflight_messages}",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/"]
        else:
            lines.append("persistence false")
        conf.write_text("\n".join(lines) + "\n" + self.extra_config)
        return [_binary("mosquitto", "/usr/sbin"), "-c", str(conf)]

    def _ready(self) -> bool:
        return self._port_open()


class VictoriaMetrics(_Service):
    """VictoriaMetrics single-node: accepts influxdb-client's /api/v2/write."""

    name = "victoria-metrics"

    def _command(self) -> list[str]:
        return [
            _binary("victoria-metrics"),
            f"-storageDataPath={self.workdir / 'data'}",
            f"-httpListenAddr={self.host}:{self.port}",
            "-retentionPeriod=100y",
            # Fresh points visible at once, one sample per series and timestamp
            # (InfluxDB's overwrite semantics), quiet logs.
            "-search.latencyOffset=0s",
            "-dedup.minScrapeInterval=1ms",
            "-loggerLevel=ERROR",
        ]

    def _ready(self) -> bool:
        return self._http_ok("/health")

    def flush(self) -> None:
        urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10).close()

    def export(self, match: str) -> list[dict[str, Any]]:
        """Series matching a selector, as VictoriaMetrics' JSON-lines export."""
        self.flush()
        q = urllib.parse.urlencode({"match[]": match})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{q}", timeout=30) as resp:
            return [json.loads(line) for line in resp.read().splitlines() if line.strip()]

    def count(self, metric: str) -> int:
        """How many samples of a metric are stored."""
        return sum(len(series["values"]) for series in self.export(f'{{__name__="{metric}"}}'))


class InfluxDB1(_Service):
    """InfluxDB 1.x (Debian's 1.6): the /write and /query API."""

    name = "influxdb"

    def __init__(self, workdir: Path, *, database: str | None = "meters") -> None:
        super().__init__(workdir)
        self.rpc_port = free_port()
        self.database = database

    def _command(self) -> list[str]:
        d = self.workdir
        conf = d / "influxdb.conf"
        conf.write_text(
            f"""reporting-disabled = true
bind-address = "{self.host}:{self.rpc_port}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[http]
  bind-address = "{self.host}:{self.port}"
  log-enabled = false
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
[logging]
  level = "warn"
"""
        )
        return [_binary("influxd"), "-config", str(conf)]

    def _ready(self) -> bool:
        return self._http_ok("/ping")

    def start(self) -> None:
        super().start()
        if self.database:
            self.create_database(self.database)

    def create_database(self, name: str) -> None:
        self._post_query(f'CREATE DATABASE "{name}"')

    def _post_query(self, q: str) -> dict[str, Any]:
        data = urllib.parse.urlencode({"q": q}).encode()
        req = urllib.request.Request(f"{self.url}/query", data=data, method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def query(self, q: str, *, database: str | None = None, epoch: str = "s") -> list[dict]:
        """Rows of the first series of a query, as dicts of column -> value."""
        params = urllib.parse.urlencode({"db": database or self.database, "q": q, "epoch": epoch})
        with urllib.request.urlopen(f"{self.url}/query?{params}", timeout=30) as resp:
            body = json.loads(resp.read())
        rows: list[dict] = []
        for result in body.get("results", []):
            if "error" in result:
                raise ServiceError(f"query failed: {result['error']}")
            for series in result.get("series", []):
                cols = series["columns"]
                tags = series.get("tags", {})
                rows.extend(
                    {**tags, **dict(zip(cols, values, strict=True))} for values in series["values"]
                )
        return rows
