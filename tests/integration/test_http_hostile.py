"""The status server facing hostile or careless clients: a request it cannot parse is
answered 400 without echoing it and logged as one line without a traceback (a token in
the URL goes nowhere); the `Bearer` scheme is matched whatever its case."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from meter_gateway.gateway.status.server import _QuietRequestHandler
from tests.conftest import make_config

TOKEN = "tok-Sx81-secret-Qw"


async def raw(port: int, data: bytes) -> bytes:
    """Send `data` as it is and read the whole answer (the server closes after an error)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


@pytest.fixture(autouse=True)
def _fresh_limit() -> None:
    # The handler's rate limit is per process: each test starts from nothing held.
    _QuietRequestHandler._limit.clear()


async def test_bad_requests_are_refused_without_traceback_or_echo(
    tmp_path, mosquitto, victoria, run_gateway, caplog
):
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    caplog.set_level(logging.INFO, logger="meter_gateway")
    cfg = make_config(tmp_path, mosquitto, storage={"url": victoria.url}, http={"token": TOKEN})
    gw = await run_gateway(cfg)
    port = gw.http.port
    assert port is not None
    long_url = b"GET /?token=" + TOKEN.encode() + b"&x=" + b"a" * 9000 + b" HTTP/1.1\r\n"
    requests = [
        long_url + b"Host: x\r\n\r\n",
        long_url + b"Host: x\r\n\r\n",
        long_url + b"Host: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Token: " + TOKEN.encode() + b"b" * 9000 + b"\r\n\r\n",
        b"GET /" + TOKEN.encode() + b"\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00" + TOKEN.encode() + b"\r\n\r\n",  # TLS to a plain port
    ]
    answers = [await raw(port, r) for r in requests]
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"400", answer[:200]
        assert body == b"400 Bad Request\n"
        assert TOKEN.encode() not in answer
    server_records = [
        r for r in caplog.records if r.name.startswith(("aiohttp", "meter_gateway.http"))
    ]
    assert not [r for r in server_records if r.exc_info], "no traceback for a client's mistake"
    assert TOKEN not in caplog.text
    assert "aaaaaaaa" not in caplog.text
    lines = [r.getMessage() for r in server_records if r.levelno >= logging.INFO]
    # The three oversized request lines are one line; each other kind has its own.
    assert lines == [
        "http: refused a request from 127.0.0.1 with 400: a request line or header longer "
        "than the server takes (8190 bytes)",
        "http: refused a request from 127.0.0.1 with 400: an invalid URL",
        "http: refused a request from 127.0.0.1 with 400: not HTTP (TLS to a plain HTTP port, "
        "or another protocol)",
    ]
    # The server still answers.
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{port}/healthz") as r,
    ):
        assert r.status == 200


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_the_bearer_scheme_is_case_insensitive(
    scheme, tmp_path, mosquitto, victoria, run_gateway
):
    cfg = make_config(tmp_path, mosquitto, storage={"url": victoria.url}, http={"token": TOKEN})
    gw = await run_gateway(cfg)
    base = f"http://127.0.0.1:{gw.http.port}"
    async with aiohttp.ClientSession() as s:
        for auth, status in [
            (f"{scheme} {TOKEN}", 200),
            (f"{scheme} {TOKEN.upper()}", 401),  # the token itself is case-sensitive
            (f"Basic {TOKEN}", 401),
            (f"{scheme}{TOKEN}", 401),
        ]:
            async with s.get(f"{base}/status", headers={"Authorization": auth}) as r:
                assert r.status == status, auth
