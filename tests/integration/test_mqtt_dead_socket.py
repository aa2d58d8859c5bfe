"""A gateway resumed on a dead connection notices at once, reconnects, and stops quickly.

The case: the gateway is frozen (SIGSTOP) while the broker floods its socket, the
broker is killed (SIGKILL) and started again on the same port, then the gateway is
resumed (SIGCONT). Its old socket then holds a backlog of messages, and the first
thing it writes (a keepalive ping, an ack) gets a reset from the broker's host. Under
uvloop, a reset with unread bytes left makes the loop call the reader once more and
then stop watching the socket for good: the gateway used to sit on it, ready and
"connected", until the keepalive ran out, with `Caught exception in
on_socket_register_write` and `Task exception was never retrieved` in its log.

The gateway runs as `meter-gateway run` in a child process (it must be SIGSTOPped),
on uvloop as installed and on asyncio's own loop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from meter_gateway.config.schema import Config
from meter_gateway.simulators.services import Mosquitto, VictoriaMetrics
from tests.conftest import Publisher, make_config, wait_until
from tests.faults import GatewayProcess, Message, StreamPublisher, single_message

pytestmark = pytest.mark.integration

KEEPALIVE_S = 5
#: Not ready, or reconnected, within this after SIGCONT: the keepalive and a half,
#: and a margin for a loaded machine. The gateway must not wait for the keepalive.
NOTICE_BOUND_S = KEEPALIVE_S * 1.5 + 2.0
SHUTDOWN_TIMEOUT_S = 10.0
#: Messages the broker has taken while the gateway is frozen: it pushes them into the
#: gateway's socket, so that a backlog is left unread when the reset comes.
BACKLOG_MESSAGES = 3000
CONNECTED = "mqtt: connected to "

# What the gateway's stderr must never hold (the symptoms of the dead connection).
FORBIDDEN = (
    "Task exception was never retrieved",
    "on_socket_register_write",
    "Caught exception in",
    "Traceback",
)

# `meter-gateway run` without uvloop: the CLI falls back to asyncio's loop when it
# cannot import uvloop.
WITHOUT_UVLOOP = (
    "import sys; sys.modules['uvloop'] = None; "
    "from meter_gateway.gateway.cli import main; sys.exit(main())"
)


class Gateway(GatewayProcess):
    """The gateway process on uvloop (as `meter-gateway run` is when it is installed)
    or on asyncio's own event loop."""

    def __init__(self, config: Config, workdir: Path, *, uvloop: bool) -> None:
        super().__init__(config, workdir, shutdown_timeout_s=SHUTDOWN_TIMEOUT_S)
        self.uvloop = uvloop

    def start(self) -> None:
        if self.uvloop:
            super().start()
            return
        log = self.workdir / f"gateway-{len(self.runs) + 1}.log"
        self.runs.append(log)
        with log.open("wb") as f:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-c", WITHOUT_UVLOOP),
                    *("run", "-c", str(self.config_file)),
                    *("--shutdown-timeout", str(self.shutdown_timeout_s)),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=f,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def runs_uvloop(self) -> bool:
        """Whether uvloop's extension is loaded in the process."""
        assert self.pid is not None
        return "uvloop/loop" in Path(f"/proc/{self.pid}/maps").read_text()

    def readyz(self) -> int:
        """/readyz's status; 0 when it does not answer within a second (busy, frozen)."""
        url = f"http://127.0.0.1:{self.http_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0

    def connects(self) -> int:
        return self.log().count(CONNECTED)

    def signal(self, sig: signal.Signals) -> None:
        assert self.pid is not None, "the gateway is not running"
        os.kill(self.pid, sig)


def flood(meters: int = 100, rounds: int = 600) -> Iterator[Message]:
    """Single readings round-robin over `meters`, one second further each round,
    ending about now (a live-looking stream, nothing rejected)."""
    start = int(time.time()) - rounds
    for k in range(meters * rounds):
        yield single_message(f"d-{k % meters:03d}", start + k // meters, float(k % 1000))


@pytest.fixture
def flooding_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """mosquitto with persistence that sends a subscriber everything it has queued,
    without an in-flight limit of its own: the gateway's socket fills while it is frozen."""
    with Mosquitto(tmp_path / "mosquitto", max_inflight_messages=0) as broker:
        yield broker


@pytest.mark.parametrize("uvloop", [True, False], ids=["uvloop", "asyncio"])
async def test_resumed_on_a_dead_connection_it_reconnects_at_once(
    tmp_path: Path, flooding_broker: Mosquitto, victoria: VictoriaMetrics, uvloop: bool
) -> None:
    broker = flooding_broker
    cfg = make_config(
        tmp_path,
        broker,
        # A window as large as MQTT allows, so the broker's flood is bounded by the
        # socket buffers alone.
        mqtt={"keepalive_s": KEEPALIVE_S, "receive_maximum": 65535},
        storage={"url": victoria.url},
    )
    gw = Gateway(cfg, tmp_path / "gw", uvloop=uvloop)
    pub: StreamPublisher | None = None
    try:
        gw.start()
        await wait_until(gw.connected, within=30, what="the gateway to connect")
        assert gw.runs_uvloop() == uvloop
        pub = StreamPublisher(broker, flood())
        pub.start()
        await wait_until(lambda: pub.acked_messages >= 500, what="ingestion under way")

        gw.signal(signal.SIGSTOP)
        stopped = time.monotonic()
        backlog = pub.acked_messages + BACKLOG_MESSAGES
        await wait_until(lambda: pub.acked_messages >= backlog, what="the broker to take a backlog")
        # Frozen for longer than the keepalive, as a stalled host would be: a ping is
        # then due at once when the gateway resumes, its first write on the dead socket.
        await wait_until(
            lambda: time.monotonic() - stopped > KEEPALIVE_S + 1,
            within=KEEPALIVE_S + 30,
            what="the freeze to outlast the keepalive",
        )
        pub.stop()
        broker.kill()
        broker.start()  # same port; the old connection died with the killed process

        gw.signal(signal.SIGCONT)
        resumed = time.monotonic()
        await wait_until(
            lambda: gw.readyz() not in (0, 200) or gw.connects() >= 2,
            within=NOTICE_BOUND_S,
            what="the gateway to notice its dead connection (not ready, or reconnected)",
        )
        notice_s = time.monotonic() - resumed
        await wait_until(lambda: gw.connects() >= 2, within=30, what="the reconnect")
        reconnect_s = time.monotonic() - resumed
        await wait_until(lambda: gw.readyz() == 200, within=30, what="ready again")
        print(
            f"loop={'uvloop' if uvloop else 'asyncio'}: noticed {notice_s:.2f} s after "
            f"SIGCONT, reconnected after {reconnect_s:.2f} s"
        )

        # What is published on the new connection is stored.
        now = int(time.time())
        fresh = [
            (f"meters/after-{i:03d}/reading", orjson.dumps({"ts": now - i, "power_w": 1.5}))
            for i in range(50)
        ]
        after = Publisher(broker)
        try:
            after.publish_many(fresh)
        finally:
            after.close()
        await wait_until(
            lambda: len(victoria.export('meter_reading_power_w{meter_id=~"after-.*"}')) == 50,
            within=30,
            what="the 50 readings published after the reconnect to be stored",
        )

        sigterm = time.monotonic()
        assert gw.stop() == 0, gw.log_tail()
        stop_s = time.monotonic() - sigterm
        assert stop_s < SHUTDOWN_TIMEOUT_S, f"SIGTERM took {stop_s:.1f} s"
        log = gw.log()  # complete now that the process has exited
        found = [s for s in FORBIDDEN if s in log]
        assert not found, f"the gateway's stderr has {found}:\n{log[-6000:]}"
    finally:
        if pub is not None:
            pub.close()
        gw.close()
