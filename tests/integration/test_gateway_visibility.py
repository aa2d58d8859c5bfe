"""What the gateway shows an operator: never the database's credentials (start-up log,
/status, the page); a database that refuses every line (attention, a metric, /readyz);
and one meaning per word in the stop line (readings stored = what /metrics counts)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp import web

from meter_gateway.gateway import app as app_module
from meter_gateway.gateway.app import Gateway
from tests.conftest import make_config, wait_until
from tests.integration.test_http import families, get, sample

SECRET = "pw-Hq73-secret"


def with_credentials(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://admin:{SECRET}@{rest}"


async def test_credentials_in_the_storage_url_are_never_shown(
    tmp_path, mosquitto, victoria, run_gateway, caplog
):
    caplog.set_level(logging.INFO)
    url = with_credentials(victoria.url)
    gw = await run_gateway(make_config(tmp_path, mosquitto, storage={"url": url}))
    port = gw.http.port
    assert port is not None
    start = [r.getMessage() for r in caplog.records if "starting: storage" in r.getMessage()]
    assert len(start) == 1
    assert f"storage {victoria.url.replace('://', '://***@')}" in start[0]
    status, body = await get(port, "/status")
    assert status == 200
    assert SECRET not in body
    shown = victoria.url.replace("://", "://***@")
    assert orjson.loads(body)["storage"]["target"].startswith(shown)
    status, page = await get(port, "/")
    assert status == 200
    assert SECRET not in page
    assert shown in page
    for path in ("/status?view=page", "/readyz", "/metrics"):
        _, text = await get(port, path)
        assert SECRET not in text, path
    assert SECRET not in caplog.text


@pytest.fixture
async def refusing_database() -> AsyncIterator[str]:
    """An InfluxDB v2 write API that refuses every line, as a database at its
    max-values-per-tag limit refuses every new meter's."""

    async def write(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(
            {"code": "invalid", "message": "partial write: max-values-per-tag limit exceeded"},
            status=400,
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", write)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_a_database_refusing_every_line_is_attention_a_metric_and_not_ready(
    tmp_path, mosquitto, refusing_database, publisher, run_gateway, monkeypatch
):
    gw = await run_gateway(make_config(tmp_path, mosquitto, storage={"url": refusing_database}))
    port = gw.http.port
    assert port is not None
    now = int(time.time())
    publisher.publish_many(
        [(f"meters/m-{i}/reading", orjson.dumps({"ts": now, "power_w": 1.0})) for i in range(3)]
    )
    await wait_until(lambda: gw.writer.lines_rejected >= 3, what="3 lines refused")
    status, text = await get(port, "/readyz")
    assert status == 200  # refusing, but not for long yet
    s = orjson.loads((await get(port, "/status"))[1])
    assert s["storage"]["refusing_s"] is not None
    assert s["storage"]["lines_refused"] >= 3
    _, view = await get(port, "/status?view=page")
    attention = orjson.loads(view)["view"]["attention"]
    assert any(a.startswith("Database refusing: the database http://127.0.0.1") for a in attention)
    fams = families((await get(port, "/metrics"))[1])
    assert sample(fams, "meter_gateway_storage_refusing_seconds") >= 0
    # Past the bound (5 minutes when deployed) it is a reason not to be ready.
    monkeypatch.setattr(app_module, "REFUSING_NOT_READY_S", -1.0)
    status, text = await get(port, "/readyz")
    assert status == 503
    assert "has refused lines in every write for" in text
    assert "dead-letter list --source storage" in text


async def test_the_stop_line_counts_readings_as_metrics_do(
    tmp_path, mosquitto, victoria, publisher, caplog
):
    caplog.set_level(logging.INFO, logger="meter_gateway")
    gw = Gateway(
        make_config(tmp_path, mosquitto, storage={"url": victoria.url}), shutdown_timeout_s=5
    )
    await gw.start()
    try:
        await asyncio.wait_for(gw.mqtt.wait_connected(), 20)
        now = int(time.time())
        publisher.publish_many(
            [
                *[
                    (f"meters/s-{i}/reading", orjson.dumps({"ts": now, "power_w": 1.0}))
                    for i in range(3)
                ],
                # An event: one more line for the database, not a reading.
                ("meters/s-0/event", orjson.dumps({"ts": now, "type": "last_gasp"})),
            ]
        )
        await wait_until(
            lambda: gw.writer.lines_by_source["mqtt"] >= 3 and gw.writer.lines_written >= 4,
            what="3 readings and an event stored",
        )
        port = gw.http.port
        assert port is not None
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
            fams = families(await r.text())
        stored = sample(fams, "meter_gateway_readings_stored_total", source="mqtt")
        lines = sample(fams, "meter_gateway_storage_lines_written_total")
    finally:
        await gw.stop()
    assert stored == 3
    assert lines >= 4
    stop = [r.getMessage() for r in caplog.records if r.getMessage().startswith("gateway stopped")]
    assert len(stop) == 1
    assert ", 3 readings received, 3 stored, 0 rejected," in stop[0]
    assert f"; {gw.writer.lines_written} lines written to the database in all" in stop[0]
