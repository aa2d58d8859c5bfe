"""MQTT options: TLS with username/password, shared subscriptions, a plug-in format."""

from __future__ import annotations

import subprocess
import time

import orjson
import paho.mqtt.client as paho
import pytest

from meter_gateway.protocols.formats import FORMATS, Decoded, register_format
from meter_gateway.simulators.services import Mosquitto
from tests.conftest import Publisher, make_config, wait_until


def make_tls_files(d) -> tuple:
    d.mkdir()
    ca_key, ca, key, csr, cert = (
        d / n for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem")
    )

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        str(key),
        "-out",
        str(csr),
    )
    ext = d / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(ext),
        "-out",
        str(cert),
    )
    return ca, cert, key


@pytest.fixture
def passwd(tmp_path):
    """A mosquitto password file with user `gw`, password `s3cret`."""
    pw = tmp_path / "passwd"
    pw.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(pw), "gw", "s3cret"], check=True)
    pw.chmod(0o600)
    return pw


@pytest.fixture
def tls_files(tmp_path):
    return make_tls_files(tmp_path / "tls")


async def test_tls_with_username_and_password(tmp_path, victoria, run_gateway, passwd, tls_files):
    ca, cert, key = tls_files
    pw = passwd
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    with Mosquitto(tmp_path / "mq", tls=(ca, cert, key), password_file=pw) as broker:
        cfg = make_config(
            tmp_path,
            broker,
            storage={"url": victoria.url},
            mqtt={
                "username": "gw",
                "password_file": str(secret),
                "tls": {"enabled": True, "ca_file": str(ca)},
            },
        )
        gw = await run_gateway(cfg)
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2)
        pub.username_pw_set("gw", "s3cret")
        pub.tls_set(ca_certs=str(ca))
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        pub.publish(
            "meters/t-1/reading", orjson.dumps({"ts": int(time.time()), "power_w": 7.5}), qos=1
        ).wait_for_publish(10)
        pub.loop_stop()
        await wait_until(lambda: gw.writer.lines_written >= 1, what="the reading over TLS")
        assert victoria.count("meter_reading_power_w") == 1
        await gw.stop()


async def test_wrong_password_is_retried_and_logged_once(tmp_path, victoria, caplog, passwd):
    from meter_gateway.gateway.app import Gateway

    pw = passwd
    with Mosquitto(tmp_path / "mq", password_file=pw) as broker:
        cfg = make_config(
            tmp_path,
            broker,
            storage={"url": victoria.url},
            mqtt={
                "username": "gw",
                "password": "wrong",
                "reconnect_min_s": 0.05,
                "reconnect_max_s": 0.1,
            },
        )
        gw = Gateway(cfg)
        await gw.start()
        await wait_until(lambda: caplog.text.count("cannot connect") >= 1, what="the error")
        await wait_until(lambda: gw.mqtt.attempts >= 4, what="more attempts")
        assert caplog.text.count("cannot connect") == 1  # one line per state change
        assert not gw.mqtt.connected
        await gw.stop()


async def test_shared_subscription_splits_messages_between_gateways(
    tmp_path, mosquitto, victoria, publisher, run_gateway
):
    gws = []
    for n in (1, 2):
        cfg = make_config(
            tmp_path / f"g{n}",
            mosquitto,
            storage={"url": victoria.url},
            gateway={"id": f"gw-{n}"},
            mqtt={"shared_group": "ingest"},
        )
        gws.append(await run_gateway(cfg))
    now = int(time.time())
    publisher.publish_many(
        [(f"meters/s-{i}/reading", orjson.dumps({"ts": now, "power_w": 1.0})) for i in range(200)]
    )
    await wait_until(lambda: sum(g.writer.lines_written for g in gws) >= 200, what="200 stored")
    assert all(g.pipeline.messages > 0 for g in gws)
    assert sum(g.pipeline.messages for g in gws) == 200  # each message to one gateway only
    assert victoria.count("meter_reading_power_w") == 200


@pytest.fixture
def kv_format():
    @register_format("kv-test")
    def kv(payload: bytes, topic_id: str | None) -> Decoded:
        pairs = dict(p.split("=", 1) for p in payload.decode().split(";"))
        return Decoded(
            readings=[{"meter_id": topic_id, "ts": int(pairs["t"]), "power_w": float(pairs["p"])}]
        )

    yield "kv-test"
    del FORMATS["kv-test"]


async def test_a_new_format_plugs_in_without_touching_the_pipeline(
    tmp_path, mosquitto, victoria, kv_format, run_gateway
):
    cfg = make_config(
        tmp_path,
        mosquitto,
        storage={"url": victoria.url},
        mqtt={"subscriptions": [{"topic": "kv/+/data", "format": kv_format}]},
    )
    gw = await run_gateway(cfg)
    pub = Publisher(mosquitto)
    pub.publish("kv/k-1/data", f"t={int(time.time())};p=42.5")
    pub.close()
    await wait_until(lambda: gw.writer.lines_written >= 1, what="the plug-in format's reading")
    (series,) = victoria.export('{__name__="meter_reading_power_w"}')
    assert series["metric"]["meter_id"] == "k-1"
    assert series["values"] == [42.5]
