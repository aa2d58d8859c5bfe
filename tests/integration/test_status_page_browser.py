"""The status page as a person sees it: Debian's headless Chromium, driven by Playwright.

A gateway with `http.token`, MQTT meters (one in a power outage after its last gasp),
a working simulated Modbus meter and one at a port where nothing listens. The page is
opened with the token, and what it shows is checked after its own live updates (no
reload): a rejection published after the page was loaded must appear on it.

Needs `playwright` (Python, a dev dependency) and Debian's `chromium` (/usr/bin/chromium),
both installed by the test command. A screenshot goes to the test's tmp_path and to
`test-artifacts/status-page.png` (gitignored), the artefact a person can look at.
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import orjson
import playwright.async_api as pw
import pytest

from tests.conftest import make_config, wait_until

CHROMIUM = "/usr/bin/chromium"
pytestmark = [pytest.mark.integration]
TOKEN = "s3cret-t0ken"
ROOT = Path(__file__).resolve().parents[2]
# Without the background-networking flags Chromium keeps calling out to Google's hosts,
# which this machine's closed network refuses; --no-sandbox because tests run as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 20_000  # for anything the page shows after an update (it fetches every 3 s)

VALUES = {
    "voltage_l1_v": 229.8,
    "voltage_l2_v": 231.2,
    "voltage_l3_v": 230.4,
    "current_l1_a": 1.2,
    "current_l2_a": 0.9,
    "current_l3_a": 1.4,
    "power_w": 812.4,
    "power_factor": 0.97,
    "frequency_hz": 50.01,
    "energy_import_kwh": 10432.117,
    "energy_export_kwh": 12.5,
}


def _free_port() -> int:
    with socket.socket() as s:  # bound and closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keep_artifact(shot: Path) -> None:
    """Copy the screenshot to `test-artifacts/` at the repository's root, if ignored there."""
    if _artifacts_ignored():
        (ROOT / "test-artifacts").mkdir(exist_ok=True)
        shutil.copy(shot, ROOT / "test-artifacts" / shot.name)


def _artifacts_ignored() -> bool:
    """Is `test-artifacts/` in the repository's .gitignore (so a screenshot there is no
    stray file for a commit)?"""
    try:
        lines = (ROOT / ".gitignore").read_text().splitlines()
    except OSError:
        return False
    return any(line.strip().strip("/") == "test-artifacts" for line in lines)


async def test_status_page_in_chromium(
    tmp_path, mosquitto, victoria, publisher, modbus_meters, run_gateway
):
    server = await modbus_meters(1, model="sdm630", values=VALUES)
    common = {"model": "sdm630", "host": "127.0.0.1", "unit": 1, "interval_s": 1.0}
    cfg = make_config(
        tmp_path,
        mosquitto,
        storage={"url": victoria.url},
        http={"listen": "127.0.0.1:0", "token": TOKEN},
        modbus={
            "devices": [
                {"meter_id": "sdm-live", "port": server.port, **common},
                {
                    "meter_id": "sdm-dead",
                    "port": _free_port(),
                    "breaker": {"failures": 2, "backoff_s": 30.0},
                    **common,
                },
            ]
        },
    )
    gw = await run_gateway(cfg)
    assert gw.modbus is not None
    now = time.time()
    publisher.publish_many(
        [
            *[
                (f"meters/m-{i}/reading", orjson.dumps({"ts": now, "power_w": 100.0 * i}))
                for i in (1, 2, 3)
            ],
            ("meters/m-3/event", orjson.dumps({"ts": now, "type": "last_gasp"})),
            ("meters/m-9/reading", orjson.dumps({"ts": now, "voltage_v": 5000})),
        ]
    )
    devices = gw.modbus.stats()
    await wait_until(
        lambda: (
            any(ev.type == "power_outage" for ev in gw.events.active())
            and devices["sdm-dead"].down_since is not None
            and devices["sdm-live"].readings >= 1
            and gw.pipeline.recent_rejections
        ),
        within=30,
        what="the outage, the dead Modbus device, a live Modbus reading and a rejection",
    )
    port = gw.http.port

    async with pw.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on(
                "console",
                lambda msg: errors.append(msg.text) if msg.type == "error" else None,
            )
            await page.goto(f"http://127.0.0.1:{port}/?token={TOKEN}")
            # The token leaves the address bar at once (kept in the tab's sessionStorage).
            await page.wait_for_function("!location.search.includes('token')")
            assert TOKEN not in page.url
            await page.evaluate("window.__loadedOnce = 'yes'")  # a reload would lose it
            expect = pw.expect

            # Published after the page was loaded: only a live update can show it. The
            # topic carries markup, which must show as text and never run.
            hostile = "meters/<img src=x onerror=window.__xss=1>/reading"
            publisher.publish(hostile, orjson.dumps({"ts": time.time(), "power_w": 1.0}))
            publisher.publish(
                "meters/late-7/reading", orjson.dumps({"ts": time.time(), "voltage_v": "hot"})
            )
            rejections = page.locator("#sec-rejections")
            await expect(rejections).to_contain_text("meters/late-7/reading", timeout=WAIT_MS)
            await expect(rejections).to_contain_text("voltage_v", timeout=WAIT_MS)
            await expect(rejections).to_contain_text(hostile, timeout=WAIT_MS)
            assert await page.evaluate("window.__loadedOnce") == "yes", "the page reloaded"
            assert await page.evaluate("window.__xss") is None

            # What a person reads.
            await expect(page.locator("#ready")).to_have_text("Ready")
            meters = page.locator("#sec-meters")
            await expect(meters.locator("tr", has_text="online").locator("td")).to_have_text("3")
            await expect(meters.locator("tr", has_text="offline").first.locator("td")).to_have_text(
                "1"
            )
            events = page.locator("#sec-events")
            await expect(events).to_contain_text("power_outage m-3")
            await expect(events).to_contain_text("last gasp")
            dead = page.locator("#sec-modbus tr.bad", has_text="sdm-dead")
            await expect(dead).to_contain_text("DOWN since")
            await expect(page.locator("#sec-modbus tr.bad", has_text="sdm-live")).to_have_count(0)
            await expect(page.locator("#attention")).to_contain_text(
                "Modbus: 1 of 2 devices failing: sdm-dead"
            )
            await expect(page.locator("#sec-mqtt")).to_contain_text("connected")
            await expect(page.locator("#sec-storage")).to_contain_text("accepting writes")
            await expect(page.locator("#sec-spool")).to_contain_text("taking input")
            await expect(page.locator("#sec-rejected")).to_contain_text("voltage_v")
            text = await page.locator("body").inner_text()
            for python_repr in ("{'", "None", "True", "False"):
                assert python_repr not in text, text

            shot = tmp_path / "status-page.png"
            await page.screenshot(path=str(shot), full_page=True)
            _keep_artifact(shot)
            assert errors == []

            # A fresh tab without the token: the form asks for it, then the data shows.
            other = await browser.new_page()
            await other.goto(f"http://127.0.0.1:{port}/")
            await expect(other.locator("#login")).to_be_visible()
            assert "m-3" not in await other.locator("body").inner_text()
            await other.fill("#login-token", "wrong")
            await other.click("#login button")
            await expect(other.locator("#login-msg")).to_have_text("That token was not accepted.")
            await other.fill("#login-token", TOKEN)
            await other.click("#login button")
            await expect(other.locator("#sec-events")).to_contain_text(
                "power_outage m-3", timeout=WAIT_MS
            )
            await expect(other.locator("#login")).to_be_hidden()
        finally:
            await browser.close()
