"""InfluxDB 1.x without the configured database: the gateway creates it, or says how.

- a gateway pointed at a server without its database creates it at start and the
  readings land;
- a user without admin rights cannot create it: the warning at start and the write
  error say exactly how (the statement, as whom), the readings wait, and once an admin
  has created it they are written;
- `storage.create_database: false`: nothing is created, and the message says how.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from meter_gateway.simulators.services import InfluxDB1
from meter_gateway.storage.influxdb.config import StorageConfig
from meter_gateway.storage.influxdb.v1 import V1Client
from meter_gateway.storage.influxdb.writer import BatchWriter
from tests.conftest import make_config, wait_until

pytestmark = pytest.mark.integration

ADMIN = ("admin", "admin-pw")
USER = ("gw", "gw-pw")


class AuthInfluxDB1(InfluxDB1):
    """InfluxDB 1.x with authentication on, an admin and a user without admin rights."""

    def _command(self) -> list[str]:
        cmd = super()._command()
        conf = self.workdir / "influxdb.conf"
        conf.write_text(conf.read_text().replace("[http]\n", "[http]\n  auth-enabled = true\n"))
        return cmd

    def start(self) -> None:
        super().start()
        # The first user may be created without credentials; it must be an admin.
        self.run(f"CREATE USER {ADMIN[0]} WITH PASSWORD '{ADMIN[1]}' WITH ALL PRIVILEGES")
        self.run(f"CREATE USER {USER[0]} WITH PASSWORD '{USER[1]}'", as_admin=True)

    def run(self, q: str, *, as_admin: bool = False) -> dict:
        data = urllib.parse.urlencode({"q": q}).encode()
        req = urllib.request.Request(f"{self.url}/query", data=data, method="POST")
        if as_admin:
            cred = base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {cred}")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())


@pytest.fixture
def bare_influx1(tmp_path: Path) -> Iterator[InfluxDB1]:
    with InfluxDB1(tmp_path / "influxdb", database=None) as db:
        yield db


@pytest.fixture
def auth_influx1(tmp_path: Path) -> Iterator[AuthInfluxDB1]:
    with AuthInfluxDB1(tmp_path / "influxdb", database=None) as db:
        yield db


def _databases(db: InfluxDB1) -> set[str]:
    rows = db._post_query("SHOW DATABASES")["results"][0].get("series", [{}])[0]
    return {v[0] for v in rows.get("values", [])}


async def test_a_gateway_creates_the_missing_database_and_the_readings_land(
    tmp_path, mosquitto, bare_influx1, publisher, run_gateway, caplog
):
    assert "meters" not in _databases(bare_influx1)
    cfg = make_config(
        tmp_path, mosquitto, storage={"api": "v1", "url": bare_influx1.url, "database": "meters"}
    )
    with caplog.at_level(logging.INFO, logger="meter_gateway.storage"):
        gw = await run_gateway(cfg)
        now = int(time.time())
        publisher.publish_many(
            [
                (
                    f"meters/m-{i}/reading",
                    orjson.dumps({"ts": now - 600 + i, "energy_import_kwh": 100.0 + i}),
                )
                for i in range(20)
            ]
        )
        await wait_until(
            lambda: sum(gw.writer.lines_by_source.values()) >= 20, what="20 readings written"
        )
    rows = bare_influx1.query(
        'SELECT "energy_import_kwh", "meter_id" FROM "meter_reading"', database="meters"
    )
    assert sorted(r["energy_import_kwh"] for r in rows) == [100.0 + i for i in range(20)]
    assert "created database 'meters'" in caplog.text
    assert "database not found" not in caplog.text


async def _write(client: V1Client, lines: list[str]) -> tuple[BatchWriter, asyncio.Task[None]]:
    writer = BatchWriter(client, batch_size=100, flush_interval_s=0.01, max_retry_delay_s=0.1)
    for line in lines:
        writer.add(line)
    return writer, asyncio.create_task(writer.run())


LINES = [f"m,meter_id=m{i} x={i}.0 {1_700_000_000 + i}" for i in range(5)]


async def test_a_user_without_admin_rights_is_told_how_and_the_readings_wait(auth_influx1, caplog):
    cfg = StorageConfig(
        api="v1", url=auth_influx1.url, username=USER[0], password=USER[1], max_retry_delay_s=0.1
    )
    client = V1Client(cfg)
    with caplog.at_level(logging.INFO, logger="meter_gateway.storage"):
        writer, task = await _write(client, LINES)
        await wait_until(lambda: writer.retries >= 2, what="writes refused and retried")
        start = next(r for r in caplog.records if r.levelno == logging.WARNING)
        message = start.getMessage()
        for words in (
            "database 'meters' does not exist",
            'CREATE DATABASE "meters" was refused (HTTP 403',
            f"curl -XPOST {auth_influx1.url}/query -u ADMIN --data-urlencode "
            "'q=CREATE DATABASE \"meters\"'",
            "grant the gateway's user WRITE",
            "the readings wait in the spool",
        ):
            assert words in message
        assert "CREATE DATABASE" in writer.last_error  # the status page shows how, too
        assert USER[1] not in caplog.text
        # An admin does as told: the waiting lines are written.
        auth_influx1.run('CREATE DATABASE "meters"', as_admin=True)
        auth_influx1.run(f'GRANT ALL ON "meters" TO "{USER[0]}"', as_admin=True)
        await wait_until(lambda: writer.lines_written == len(LINES), what="lines written")
        writer.close()
        await task
    await client.close()


async def test_creation_switched_off_says_how(bare_influx1, caplog):
    cfg = StorageConfig(
        api="v1", url=bare_influx1.url, create_database=False, max_retry_delay_s=0.1
    )
    client = V1Client(cfg)
    with caplog.at_level(logging.INFO, logger="meter_gateway.storage"):
        writer, task = await _write(client, LINES)
        await wait_until(lambda: writer.retries >= 1, what="a refused write")
        assert "meters" not in _databases(bare_influx1)
        assert "storage.create_database is false" in writer.last_error
        assert "storage.create_database: true" in writer.last_error
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any('CREATE DATABASE "meters"' in m for m in warnings)
        bare_influx1.create_database("meters")
        await wait_until(lambda: writer.lines_written == len(LINES), what="lines written")
        writer.close()
        await task
    await client.close()


async def test_wrong_credentials_and_missing_grants_say_what_to_fix(auth_influx1, caplog):
    auth_influx1.run('CREATE DATABASE "meters"', as_admin=True)
    wrong = V1Client(
        StorageConfig(api="v1", url=auth_influx1.url, username=USER[0], password="nope")
    )
    writer, task = await _write(wrong, LINES)
    await wait_until(lambda: writer.retries >= 1, what="a refused write")
    assert "HTTP 401" in writer.last_error
    assert "check storage.username and storage.password" in writer.last_error
    writer.close()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await wrong.close()

    client = V1Client(
        StorageConfig(api="v1", url=auth_influx1.url, username=USER[0], password=USER[1])
    )
    writer, task = await _write(client, LINES)
    await wait_until(lambda: writer.retries >= 1, what="a refused write")
    assert "HTTP 403" in writer.last_error
    assert 'GRANT WRITE ON "meters" TO "gw"' in writer.last_error
    auth_influx1.run(f'GRANT WRITE ON "meters" TO "{USER[0]}"', as_admin=True)
    await wait_until(lambda: writer.lines_written == len(LINES), what="lines written")
    writer.close()
    await task
    await client.close()
    assert USER[1] not in caplog.text
