"""Credentials for the database have one rule, and no URL the gateway shows holds one.

`user:password@` in storage.url is HTTP basic authentication, like storage.username /
storage.password: one of the two, never both, never with storage.token on api v2 (which
used to kill the writer task with aiohttp's "Cannot combine AUTHORIZATION header"
after check-config had said OK). The clients send the credentials in a header.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from pydantic import ValidationError

from meter_gateway.gateway.cli import main
from meter_gateway.storage.influxdb.config import StorageConfig, redacted_url
from meter_gateway.storage.influxdb.v1 import V1Client
from meter_gateway.storage.influxdb.v2 import V2Client

SECRET = "s3cr3t-Pw"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://admin:pw@db:8086", "http://***@db:8086"),
        ("https://tok3n@db.example/x", "https://***@db.example/x"),
        ("http://u:p@ss@db:8086/a", "http://***@db:8086/a"),
        ("http://db:8086/query?db=m&u=gw&p=pw", "http://db:8086/query?db=m&u=***&p=***"),
        (
            "https://hook.example/x?api_key=k&token=t&Signature=s&name=n#top",
            "https://hook.example/x?api_key=***&token=***&Signature=***&name=n#top",
        ),
        ("http://db:8086", "http://db:8086"),
        ("not a url: u:p@x", "not a url: u:p@x"),
    ],
)
def test_redacted_url(url: str, shown: str) -> None:
    assert redacted_url(url) == shown


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        (
            {"api": "v2", "url": f"http://gw:{SECRET}@db:8086", "token": "tok"},
            "storage.url has user:password@ and storage.token is set",
        ),
        (
            {"api": "v1", "url": f"http://gw:{SECRET}@db:8086", "username": "gw"},
            "storage.url has user:password@ and storage.username/storage.password are set",
        ),
        (
            {"api": "v2", "token": "tok", "username": "gw", "password": SECRET},
            "storage.token and storage.username are both set",
        ),
    ],
)
def test_conflicting_credentials_are_refused_without_showing_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], storage: dict, message: str
) -> None:
    with pytest.raises(ValidationError, match=message.replace("/", ".")):
        StorageConfig(**storage)
    p = tmp_path / "gw.yaml"
    items = ", ".join(f"{k}: '{v}'" for k, v in storage.items())
    p.write_text(f"gateway: {{data_dir: {tmp_path / 'var'}}}\nstorage: {{{items}}}\n")
    assert main(["check-config", "-c", str(p)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert SECRET not in err


def test_credentials_from_the_url() -> None:
    cfg = StorageConfig(api="v1", url="http://g%40w:p%3Aw@db:8086/")
    assert cfg.basic_auth == ("g@w", "p:w")
    assert cfg.endpoint == "http://db:8086"
    assert cfg.shown_url == "http://***@db:8086"
    assert StorageConfig(api="v1", username="gw", password="pw").basic_auth == ("gw", "pw")
    assert StorageConfig(token="t").basic_auth is None


class Recorder:
    def __init__(self) -> None:
        self.auth: list[str | None] = []
        self.lines: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.auth.append(request.headers.get("Authorization"))
        self.lines.extend(x for x in (await request.text()).split("\n") if x)
        return web.Response(status=204)


@pytest.fixture
async def server() -> AsyncIterator[tuple[Recorder, int]]:
    rec = Recorder()
    app = web.Application()
    app.router.add_post("/write", rec.handle)
    app.router.add_post("/api/v2/write", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield rec, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await runner.cleanup()


@pytest.mark.parametrize("api", ["v1", "v2"])
async def test_url_credentials_go_in_a_basic_header(server, api: str) -> None:
    rec, port = server
    cfg = StorageConfig(api=api, url=f"http://gw:{SECRET}@127.0.0.1:{port}")
    client = V1Client(cfg) if api == "v1" else V2Client(cfg)
    assert SECRET not in client.target
    try:
        await client.write(b"m x=1.0 1700000000")
    finally:
        await client.close()
    expected = "Basic " + base64.b64encode(f"gw:{SECRET}".encode()).decode()
    assert rec.auth[-1] == expected
    assert rec.lines == ["m x=1.0 1700000000"]


async def test_v2_token_still_goes_as_a_token(server) -> None:
    rec, port = server
    client = V2Client(StorageConfig(url=f"http://127.0.0.1:{port}", token="tok"))
    try:
        await client.write(b"m x=1.0 1700000000")
    finally:
        await client.close()
    assert rec.auth == ["Token tok"]
