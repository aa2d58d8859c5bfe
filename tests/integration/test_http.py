"""The status endpoints a person and Prometheus read."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from meter_gateway.gateway.app import Gateway
from meter_gateway.gateway.reading import Reading
from meter_gateway.gateway.status import page_view, render_page, status_snapshot
from tests.conftest import make_config, wait_until

_NS = 1_000_000_000


async def get(port: int, path: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{port}{path}", headers=headers) as r,
    ):
        return r.status, await r.text()


def families(text: str) -> dict[str, Any]:
    """/metrics parsed: family name -> family (names without `_total`, as the parser has them)."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams: dict[str, Any], name: str, **labels: str) -> float:
    """The value of the one sample `name` (a sample name, e.g. `..._total`) with `labels`."""
    found = [
        s.value
        for fam in fams.values()
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (name, labels, found)
    return found[0]


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
        lambda: gw.writer.lines_by_source["mqtt"] >= 1 and gw.dead_letter.count >= 1,
        what="one stored, one rejected",
    )
    port = gw.http.port
    assert await get(port, "/healthz") == (200, "ok\n")
    assert await get(port, "/readyz") == (200, "ready\n")
    status, body = await get(port, "/metrics")
    assert status == 200
    fams = families(body)
    # Counters present from the start with 0 for their known label values.
    assert sample(fams, "meter_gateway_readings_received_total", source="mqtt") == 2
    assert sample(fams, "meter_gateway_readings_received_total", source="modbus") == 0
    # Stored = accepted by the database; handed = passed validation, on its way there.
    assert sample(fams, "meter_gateway_readings_stored_total", source="mqtt") == 1
    assert sample(fams, "meter_gateway_readings_stored_total", source="modbus") == 0
    assert sample(fams, "meter_gateway_readings_handed_total", source="mqtt") == 1
    rejected = "meter_gateway_readings_rejected_total"
    assert sample(fams, rejected, source="mqtt", reason="voltage_v") == 1
    assert sample(fams, rejected, source="modbus", reason="json") == 0
    assert sample(fams, rejected, source="mqtt", reason="json") == 0
    assert sample(fams, "meter_gateway_readings_flagged_total", rule="register_decrease") == 0
    assert sample(fams, "meter_gateway_meter_signals_total", value="last_gasp") == 0
    assert sample(fams, "meter_gateway_storage_lines_written_total") >= 1
    assert sample(fams, "meter_gateway_mqtt_connected") == 1
    assert sample(fams, "meter_gateway_ready") == 1
    assert sample(fams, "meter_gateway_mqtt_sessions_lost_total") == 0
    assert sample(fams, "meter_gateway_internal_errors_total") == 0
    assert sample(fams, "meter_gateway_mqtt_unacknowledged") == 0
    assert sample(fams, "meter_gateway_spool_paused") == 0
    assert "meter_gateway_spool_fsyncs" in fams
    assert "meter_gateway_spool_oldest_age_seconds" in fams
    # Events: by type and state, and open by type, from the start.
    assert sample(fams, "meter_gateway_events_total", type="power_outage", state="raised") == 0
    assert sample(fams, "meter_gateway_events_total", type="comms_loss", state="cleared") == 0
    assert sample(fams, "meter_gateway_events_active", type="power_outage") == 0
    assert sample(fams, "meter_gateway_meters", state="online") == 1
    assert sample(fams, "meter_gateway_meters", state="offline") == 0
    # Histograms of the database writes.
    for name in ("storage_write_duration_seconds", "storage_batch_size_lines"):
        fam = fams[f"meter_gateway_{name}"]
        assert fam.type == "histogram"
        count = sample(fams, f"meter_gateway_{name}_count")
        assert count >= 1
        assert sample(fams, f"meter_gateway_{name}_bucket", le="+Inf") == count
    assert sample(fams, "meter_gateway_storage_batch_size_lines_sum") >= 1
    assert sample(fams, "meter_gateway_storage_batch_size_lines_bucket", le="1.0") >= 1
    # The process and the build.
    assert sample(fams, "process_resident_memory_bytes") > 0
    assert "process_cpu_seconds" in fams
    assert sample(fams, "meter_gateway_build_info", version=gw_version(), detectors="compiled") == 1

    status, body = await get(port, "/status")
    s = orjson.loads(body)
    assert s["meters"]["online"] == 1
    assert s["meters"]["offline"] == 0
    assert s["meters"]["seen"] == 1
    assert s["readings"]["rejected"] == {"voltage_v": 1}
    assert s["readings"]["stored"] == {"mqtt": 1}
    assert s["readings"]["handed"] == {"mqtt": 1}
    assert s["storage"]["healthy"] is True
    assert s["spool"]["fsyncs"] >= 1
    assert s["spool"]["paused"] is False
    assert s["events"]["detectors_build"] == "compiled (mypyc)"
    (rej,) = s["recent_rejections"]
    assert rej["source"] == "mqtt"
    assert rej["where"] == "meters/h-2/reading"
    assert "voltage_v" in rej["reason"]

    status, body = await get(port, "/status?view=page")
    view = orjson.loads(body)["view"]
    assert view["ready_text"] == "Ready"
    sections = {sec["id"]: sec for sec in view["sections"]}
    assert ["online", "1"] in [row["cells"] for row in sections["meters"]["rows"]]
    assert ["voltage_v", "1"] in [row["cells"] for row in sections["rejected"]["rows"]]

    status, page = await get(port, "/")
    assert status == 200
    assert "<h2>Meters</h2>" in page
    assert "Spool (readings on disk" in page
    assert '<p id="ready" class="state">Ready</p>' in page
    assert "meters/h-2/reading" in page  # the recent rejection
    assert "{'" not in page  # no Python reprs of dicts
    assert "':" not in page
    assert "setTimeout(refresh" in page  # it updates itself


def gw_version() -> str:
    from meter_gateway import __version__

    return __version__


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
    # The page takes the token in its URL too (a browser cannot send the header)...
    status, page = await get(port, "/?token=t0k")
    assert status == 200
    assert "gw-test" in page
    assert "<h2>Meters</h2>" in page
    assert "t0k" not in page  # never echoed
    # ... only the page: the data endpoints want the header.
    assert (await get(port, "/status?token=t0k"))[0] == 401
    assert (await get(port, "/metrics?token=t0k"))[0] == 401
    # Without it: the page without data, asking for the token.
    for path in ("/", "/?token=wrong", "/?token="):
        status, page = await get(port, path)
        assert status == 401, path
        assert 'id="login"' in page, path
        assert "gw-test" not in page, path
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
    status, body = await get(gw.http.port, "/metrics")
    assert sample(families(body), "meter_gateway_mqtt_connected") == 0


# -- no servers: the gateway built, its clock driven ------------------------------------------

_NOWHERE = SimpleNamespace(host="127.0.0.1", port=1)  # never connected to in these tests


def test_a_healthy_15_minute_fleet_is_online_between_its_readings(tmp_path):
    """Online by the event engine's rule (each meter's own interval), not "heard within
    offline_after_s (90 s)": meters reading every 15 minutes stay online in between;
    one that stops is offline once the engine calls it silent."""
    gw = Gateway(make_config(tmp_path, _NOWHERE))  # type: ignore[arg-type]
    engine = gw.events.engine
    meters = [f"q-{i:02d}" for i in range(20)]
    t0 = time.time_ns()
    every = 15 * 60 * _NS

    def read(at: int, ids: list[str]) -> None:
        for i, m in enumerate(ids):
            t = at + i * _NS  # spread over 20 s, as a real fleet is
            engine.reading(Reading(m, t, "mqtt", {"power_w": 100.0}), t)

    def meters_now(at: int) -> dict[str, Any]:
        engine.tick(at)
        return status_snapshot(gw)["meters"]

    for k in range(4):
        start = t0 + k * every
        read(start, meters)
        for after_s in (90, 91, 300, 600, 899):
            m = meters_now(start + after_s * _NS)
            assert (m["online"], m["offline"]) == (20, 0), (k, after_s, m)
    view = page_view(status_snapshot(gw))
    meters_section = next(sec for sec in view["sections"] if sec["id"] == "meters")
    assert ["online", "20"] in [row["cells"] for row in meters_section["rows"]]
    # q-00 stops; the others go on. The engine calls it silent: offline on the page.
    last = t0 + 3 * every
    for k in range(4, 12):
        read(t0 + k * every, meters[1:])
        m = meters_now(t0 + k * every + 60 * _NS)
        if m["offline"]:
            break
    assert (m["online"], m["offline"], m["comms_loss"]) == (19, 1, 1), m
    assert t0 + k * every - last > 30 * 60 * _NS  # not after a mere 90 s of silence
    page = render_page(status_snapshot(gw))
    assert "comms_loss q-00" in page


def test_a_failing_modbus_device_is_not_a_rejected_reading(tmp_path):
    """What a Modbus device sent that is unusable goes to the dead-letter store, but
    counts as a Modbus error of the device (the poller's), not as a rejected reading."""
    gw = Gateway(make_config(tmp_path, _NOWHERE))  # type: ignore[arg-type]
    gw._modbus_error("sdm-1 (tcp://x:502/1)", "sdm-1: exception: illegal data address", b"\x83")
    assert gw.dead_letter.count == 1
    assert not gw.pipeline.rejected
    assert not gw.pipeline.recent_rejections


async def test_readings_stored_counts_only_what_the_database_accepted():
    """`lines_by_source` (-> meter_gateway_readings_stored_total) and the histograms count
    lines the database accepted: a line it refused is not stored; events have no source."""
    from meter_gateway.storage.influxdb.errors import BadPointsError
    from meter_gateway.storage.influxdb.writer import BatchWriter

    class Database:
        target = "fake"
        bodies: list[bytes] = []

        async def write(self, body: bytes) -> None:
            if b"m-bad" in body:
                raise BadPointsError("HTTP 400: unable to parse", status=400)
            self.bodies.append(body)

        async def close(self) -> None:
            return None

    w = BatchWriter(Database(), batch_size=100, flush_interval_s=0.01)
    for i in range(6):
        w.add(f"meter_reading,meter_id=m-{i},source=mqtt power_w=1.0 {i}")
    w.add("meter_reading,meter_id=m-bad,source=mqtt power_w=oops 7")
    w.add("meter_reading,feeder_id=f,meter_id=m-9,source=modbus,transformer_id=t power_w=1.0 8")
    w.add('meter_event,meter_id=m-1,severity=critical,type=power_outage state="raised" 9')
    w.close()
    await asyncio.wait_for(w.run(), 10)
    assert w.lines_written == 8
    assert w.lines_rejected == 1
    assert dict(w.lines_by_source) == {"mqtt": 6, "modbus": 1}
    assert w.batch_lines.count == w.batches_written == w.write_seconds.count
    assert w.batch_lines.sum == 8
    buckets = dict(w.batch_lines.cumulative())
    # Bisected around the refused line: 4 + 2 + 2 lines accepted, in three requests.
    assert (buckets["1.0"], buckets["10.0"], buckets["+Inf"]) == (0, 3, 3)
