"""The batch writer against a small local HTTP server that answers what real servers
cannot be made to answer on demand (413, 429 with Retry-After, 5xx, 400 per line)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from meter_gateway.config.schema import StorageConfig
from meter_gateway.storage.influxdb.v1 import V1Client
from meter_gateway.storage.influxdb.v2 import V2Client
from meter_gateway.storage.influxdb.writer import BatchWriter


class FakeInflux:
    """Records accepted lines; `script` decides each answer from the body."""

    def __init__(self) -> None:
        self.accepted: list[str] = []
        self.requests = 0
        self.script: Callable[[list[str], int], web.Response | None] = lambda lines, n: None

    async def handle(self, request: web.Request) -> web.Response:
        text = await request.text()
        if not text:  # the v1 client's probe at start: is the database there?
            return web.Response(status=204)
        self.requests += 1
        lines = text.split("\n")
        answer = self.script(lines, self.requests)
        if answer is not None:
            return answer
        self.accepted.extend(lines)
        return web.Response(status=204)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeInflux, str]]:
    server = FakeInflux()
    app = web.Application()
    app.router.add_post("/write", server.handle)
    app.router.add_post("/api/v2/write", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield server, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def lines(n: int) -> list[str]:
    return [f"m,meter_id=m{i} x={i}.0 {1700000000 + i}" for i in range(n)]


async def write_all(client, batch: list[str], **kw) -> tuple[BatchWriter, list[tuple[str, str]]]:
    bad: list[tuple[str, str]] = []
    w = BatchWriter(
        client,
        batch_size=kw.pop("batch_size", 100),
        flush_interval_s=0.01,
        max_retry_delay_s=0.05,
        on_bad_line=lambda line, why: bad.append((line, why)),
        **kw,
    )
    for line in batch:
        w.add(line)
    w.close()
    await w.run()
    await client.close()
    return w, bad


@pytest.mark.parametrize("api", ["v1", "v2"])
async def test_transient_errors_are_retried_until_accepted(fake, api):
    server, url = fake
    answers = {
        1: web.Response(status=503, text="overloaded"),
        2: web.Response(status=429, headers={"Retry-After": "0.01"}),
        3: web.Response(status=500),
    }
    server.script = lambda body, n: answers.get(n)
    cfg = StorageConfig(url=url, api=api)
    client = V1Client(cfg) if api == "v1" else V2Client(cfg)
    w, bad = await write_all(client, lines(10))
    assert sorted(server.accepted) == sorted(lines(10))
    assert w.retries == 3
    assert bad == []


async def test_413_splits_the_batch(fake):
    server, url = fake
    server.script = lambda body, n: web.Response(status=413) if len(body) > 25 else None
    w, bad = await write_all(V1Client(StorageConfig(url=url, api="v1")), lines(100))
    assert sorted(server.accepted) == sorted(lines(100))
    assert bad == []
    assert w.lines_written == 100


async def test_400_bisects_to_the_bad_lines_and_writes_the_rest(fake):
    server, url = fake
    poison = {"m,meter_id=m13 x=13.0 1700000013", "m,meter_id=m77 x=77.0 1700000077"}

    def script(body: list[str], n: int) -> web.Response | None:
        if poison & set(body):
            return web.Response(status=400, text='{"error":"field type conflict"}')
        return None

    server.script = script
    w, bad = await write_all(V2Client(StorageConfig(url=url)), lines(100))
    assert sorted(server.accepted) == sorted(set(lines(100)) - poison)
    assert {line for line, _ in bad} == poison
    assert all(
        "refused by the database: HTTP 400" in why and "field type conflict" in why
        for _, why in bad
    )
    assert w.lines_rejected == 2


async def test_backpressure_pauses_above_the_bound_and_resumes(fake):
    server, url = fake
    client = V1Client(StorageConfig(url=url, api="v1"))
    w = BatchWriter(client, batch_size=10, max_buffered_lines=20, flush_interval_s=0.01)
    for line in lines(21):
        w.add(line)
    assert w.paused
    w.close()
    await w.run()
    assert not w.paused
    assert len(server.accepted) == 21
    await client.close()


@pytest.mark.parametrize(
    ("poisoned_batches", "still_refusing"), [((0, 1, 2), True), ((0, 1), False)]
)
async def test_refusals_are_logged_once_per_batch_and_tracked(
    fake, caplog, poisoned_batches, still_refusing
):
    import logging
    import time

    server, url = fake
    all_lines = lines(150)  # three batches of 50
    poison = {all_lines[b * 50 + k] for b in poisoned_batches for k in (3, 17, 40)}

    def script(body: list[str], n: int) -> web.Response | None:
        if poison & set(body):
            return web.Response(status=400, text='{"error":"unable to parse: bad tag"}')
        return None

    server.script = script
    seen: list[float] = []
    bad: list[tuple[str, str]] = []
    w = BatchWriter(
        V1Client(StorageConfig(url=url, api="v1")),
        batch_size=50,
        flush_interval_s=0.01,
        max_retry_delay_s=0.05,
        on_bad_line=lambda line, why: (bad.append((line, why)), seen.append(time.monotonic())),
    )
    for line in all_lines:
        w.add(line)
    w.close()
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="meter_gateway.storage"):
        await w.run()
    stats = w.stats()
    assert stats["lines_refused"] == len(poison) == len(bad)
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == len(poisoned_batches)  # one per batch, not one per line
    assert all(r.levelno == logging.WARNING for r in refusals)
    assert "refused 3 of 50 lines" in refusals[0].getMessage()
    assert "unable to parse: bad tag" in refusals[0].getMessage()
    assert "unable to parse: bad tag" in stats["last_refusal"]
    if still_refusing:
        # The first refusal of the unbroken run, not the latest.
        assert started <= stats["refusing_since"] <= seen[0]
    else:
        assert stats["refusing_since"] is None
        assert any("accepts every line again" in r.getMessage() for r in caplog.records)
    await w._client.close()
