"""`meter-gateway simulate mqtt`: the command against a real mosquitto."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meter_gateway.simulators.fleet import Fleet
from meter_gateway.simulators.mqtt.cli import main
from meter_gateway.simulators.scenario import load_scenario
from meter_gateway.simulators.truth import read_truth
from tests.simulators.conftest import Recorder

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).parents[2] / "simulators" / "scenarios" / "example.yaml"


def test_publishes_exactly_the_generated_bytes_and_writes_truth_and_topology(
    mqtt_broker: Any, recorder: Recorder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth, topo = tmp_path / "truth.jsonl", tmp_path / "topology.csv"
    code = main(
        [
            "--scenario", str(EXAMPLE), "--speed", "0", "--quiet",
            "--host", mqtt_broker.host, "--port", str(mqtt_broker.port),
            "--truth-out", str(truth), "--topology-out", str(topo),
        ]
    )  # fmt: skip
    assert code == 0
    expected = [
        (m.topic, m.payload)
        for step in Fleet(load_scenario(EXAMPLE)).steps()
        for m in step.messages
    ]
    got = recorder.wait_for(len(expected))
    assert sorted((m.topic, m.payload) for m in got) == sorted(expected)
    # Per topic, the broker keeps the order they were sent in.
    for topic in {t for t, _ in expected}:
        assert [p for t, p in expected if t == topic] == [
            m.payload for m in got if m.topic == topic
        ]
    records = read_truth(truth)
    assert len(records) == 13
    assert records[0]["fault_id"] == "F000001"
    assert topo.read_text().startswith("meter_id,transformer_id,feeder_id,customer_id,phases,")
    assert capsys.readouterr().err == ""  # --quiet


def test_progress_and_summary_on_stderr(
    mqtt_broker: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "--meters", "3", "--interval", "15m", "--duration", "2h", "--speed", "0",
            "--seed", "5", "--host", mqtt_broker.host, "--port", str(mqtt_broker.port),
        ]
    )  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert "for 3 meters" in err
    assert "published 30 messages (27 reading, 3 status)" in err
    assert "faults injected: none" in err


def test_a_bad_scenario_exits_2_listing_every_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("faults:\n  - {type: outage, transformer: tx-001, at: 1h, colour: red}\n")
    assert main(["--scenario", str(bad), "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: not valid (1 error(s))" in err
    assert "faults[0].colour: unknown key" in err


def test_unknown_target_and_unreachable_broker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("faults:\n  - {type: outage, transformer: tx-042, at: 1h}\n")
    assert main(["--scenario", str(bad), "--meters", "3"]) == 2
    assert "faults[0].transformer: unknown transformer 'tx-042'" in capsys.readouterr().err
    from meter_gateway.simulators.services import free_port

    assert main(["--meters", "1", "--duration", "1h", "--port", str(free_port())]) == 1
    assert "cannot connect" in capsys.readouterr().err


def test_registered_under_meter_gateway_simulate(capsys: pytest.CaptureFixture[str]) -> None:
    from meter_gateway.gateway.cli import main as gateway_main

    with pytest.raises(SystemExit) as info:
        gateway_main(["simulate", "mqtt", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--meters", "--interval", "--speed", "--scenario", "--truth-out",
                   "--topology-out", "--concentrators", "--tls", "--start"):  # fmt: skip
        assert option in out


def test_bad_fleet_options_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--meters", "0", "--start", "2026-11-26T00:00:00", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "fleet.meters: Input should be greater than or equal to 1" in err
    assert "fleet.start: Input should have timezone info" in err


def _tls_files(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1, made with openssl."""
    import subprocess

    d.mkdir()
    ca_key, ca, key, csr, cert, ext = (
        d / n for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem", "ext.cnf")
    )
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    for args in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=sim-ca",
         "-keyout", ca_key, "-out", ca],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", key,
         "-out", csr],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days",
         "2", "-extfile", ext, "-out", cert],
    ):  # fmt: skip
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)
    return ca, cert, key


def test_tls_with_username_and_password_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import subprocess

    from meter_gateway.simulators.services import Mosquitto

    users = tmp_path / "passwd"
    users.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(users), "sim", "s3cret"], check=True)
    users.chmod(0o600)
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    ca, cert, key = _tls_files(tmp_path / "tls")
    with Mosquitto(tmp_path / "mq", tls=(ca, cert, key), password_file=users) as broker:
        common = ["--meters", "2", "--duration", "30m", "--speed", "0", "--quiet",
                  "--host", broker.host, "--port", str(broker.port), "--tls",
                  "--ca-file", str(ca), "--username", "sim"]  # fmt: skip
        assert main([*common, "--password-file", str(secret)]) == 0
        assert main([*common, "--password", "wrong"]) == 1
        assert "refused" in capsys.readouterr().err
