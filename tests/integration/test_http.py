"""The status endpoints a person and Prometheus read."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson

from tests.conftest import make_config, wait_until


async def get(port: int, path: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{port}{path}", headers=headers) as r,
    ):
        return r.status, await r.text()


async def test_metrics_status_and_page(tmp_path, mosquitto, victoria, publisher, run_gateway):
    gw = await run_gateway(make_config(tmp_path, mosquitto, storage={"url": victoria.url}))
    now = int(time.time())
    publisher.publish_many(
        [
            ("meters/h-1/reading", orjson.dumps({"ts": now, "power_w": 1.0})),
            ("meters/h-2/reading", orjson.dumps({"ts": now, "voltage_v": 5000})),
        ]
    )
    await wait_until(
        lambda: gw.writer.lines_written >= 1 and gw.dead_letter.count >= 1,
        what="one stored, one rejected",
    )
    port = gw.http.port
    assert await get(port, "/healthz") == (200, "ok\n")
    assert await get(port, "/readyz") == (200, "ready\n")
    status, body = await get(port, "/metrics")
    assert status == 200
    assert 'meter_gateway_readings_received_total{source="mqtt"} 2.0' in body
    assert 'meter_gateway_readings_rejected_total{reason="voltage_v"} 1.0' in body
    assert "meter_gateway_storage_lines_written_total 1.0" in body
    assert "meter_gateway_mqtt_connected 1.0" in body
    assert "meter_gateway_mqtt_sessions_lost_total 0.0" in body
    assert "meter_gateway_internal_errors_total 0.0" in body
    assert "meter_gateway_mqtt_unacknowledged 0.0" in body
    assert "meter_gateway_spool_fsyncs_total" in body
    assert "meter_gateway_spool_paused 0.0" in body
    assert "meter_gateway_spool_oldest_age_seconds" in body
    status, body = await get(port, "/status")
    s = orjson.loads(body)
    assert s["meters"] == {"seen": 1, "online": 1, "offline": 0}
    assert s["readings"]["rejected"] == {"voltage_v": 1}
    assert s["storage"]["healthy"] is True
    assert s["spool"]["fsyncs"] >= 1
    assert s["spool"]["paused"] is False
    status, page = await get(port, "/")
    assert status == 200
    assert "<h2>Meters</h2>" in page
    assert "Spool (readings on disk" in page
    assert "Ready" in page


async def test_token_protects_all_but_healthz(tmp_path, mosquitto, victoria, run_gateway):
    cfg = make_config(
        tmp_path,
        mosquitto,
        storage={"url": victoria.url},
        http={"listen": "127.0.0.1:0", "token": "t0k"},
    )
    gw = await run_gateway(cfg)
    port = gw.http.port
    assert (await get(port, "/healthz"))[0] == 200
    assert (await get(port, "/status"))[0] == 401
    assert (await get(port, "/metrics", token="wrong"))[0] == 401
    assert (await get(port, "/status", token="t0k"))[0] == 200
    # A header that is not ASCII is a wrong token, not a server error.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\xf6k\r\n\r\n")
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 401")
    writer.close()
    await writer.wait_closed()


async def test_readyz_says_why_when_the_broker_is_gone(tmp_path, mosquitto, victoria, run_gateway):
    gw = await run_gateway(make_config(tmp_path, mosquitto, storage={"url": victoria.url}))
    mosquitto.stop()
    await wait_until(lambda: not gw.mqtt.connected, what="the disconnect")
    status, text = await get(gw.http.port, "/readyz")
    assert status == 503
    assert "not connected to the broker" in text
