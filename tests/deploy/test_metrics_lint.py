"""The gateway's real /metrics passes `promtool check metrics` without a warning (metric
names in base units, counters ending in `_total`, help text on every family).

Scraped from a running gateway with every optional family present: daily figures,
Modbus devices (one that answers nothing), events."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess

from tests.conftest import make_config
from tests.integration.test_http import get


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_promtool_finds_nothing_to_lint_in_the_real_metrics(
    tmp_path, mosquitto, victoria, run_gateway
):
    device = {
        "meter_id": "sdm-1",
        "model": "sdm630",
        "host": "127.0.0.1",
        "port": _closed_port(),
        "unit": 1,
    }
    cfg = make_config(
        tmp_path, mosquitto, storage={"url": victoria.url}, modbus={"devices": [device]}
    )
    gw = await run_gateway(cfg)
    # Their families are in the scrape.
    assert gw.vee is not None
    assert gw.modbus is not None
    assert gw.http.port is not None
    status, text = await get(gw.http.port, "/metrics")
    assert status == 200
    assert "meter_gateway_daily_points_total" in text
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: run scripts/setup.sh (Debian package prometheus)"
    out = await asyncio.to_thread(
        subprocess.run,
        [exe, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == "", out.stdout
    assert out.stderr.strip() == "", out.stderr
