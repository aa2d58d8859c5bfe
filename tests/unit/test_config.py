from __future__ import annotations

from pathlib import Path

import pytest

from config.loader import ConfigError, load_config
from gateway.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example.yaml"


def test_example_config_loads_and_matches_the_defaults():
    cfg = load_config(EXAMPLE, env={})
    defaults = load_config(None, env={})
    assert cfg == defaults  # the commented example is the shipped defaults: it cannot drift
    assert cfg.storage.batch_size == 5000
    assert [s.format for s in cfg.mqtt.subscriptions] == [
        "json",
        "json-batch",
        "meter-event",
        "lwt",
    ]
    assert cfg.client_id == "meter-gateway-gw-01"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "gw.yaml"
    p.write_text(text)
    return p


def test_every_error_is_listed_with_key_path_and_file(tmp_path):
    p = write(
        tmp_path,
        "storage:\n  batch_size: -5\n  precison: s\nmqtt:\n  port: 70000\n"
        "  subscriptions:\n    - {topic: a/+/b, format: xml}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(p, env={})
    errors = info.value.errors
    assert len(errors) == 4, errors
    text = "\n".join(errors)
    assert f"{p}: storage.batch_size: Input should be greater than 0 (got -5)" in text
    assert f"{p}: storage.precison: unknown key" in text
    assert f"{p}: mqtt.port:" in text
    assert "mqtt.subscriptions[0].format: unknown format 'xml'" in text


def test_invalid_yaml_names_the_line(tmp_path):
    p = write(tmp_path, "storage:\n  batch_size: [1,\n")
    with pytest.raises(ConfigError, match=r"line \d+, column \d+: not valid YAML"):
        load_config(p, env={})


def test_environment_overrides_and_names_its_variable(tmp_path):
    p = write(tmp_path, "storage:\n  api: v1\n")
    cfg = load_config(
        p,
        env={
            "METER_GATEWAY__STORAGE__TOKEN": "s3cret",
            "METER_GATEWAY__MQTT__PORT": "1884",
            "METER_GATEWAY__MQTT__TLS__ENABLED": "true",
        },
    )
    assert cfg.storage.token == "s3cret"
    assert cfg.mqtt.port == 1884
    assert cfg.mqtt.tls.enabled is True
    assert cfg.storage.api == "v1"
    with pytest.raises(ConfigError) as info:
        load_config(p, env={"METER_GATEWAY__STORAGE__BATCH_SIZE": "zero"})
    assert info.value.errors[0].startswith(
        "environment METER_GATEWAY__STORAGE__BATCH_SIZE: storage.batch_size:"
    )


def test_secrets_from_files(tmp_path):
    (tmp_path / "token").write_text("tok-123\n")
    (tmp_path / "pw").write_text("pw-456\n")
    p = write(
        tmp_path,
        f"storage:\n  token_file: {tmp_path / 'token'}\n"
        f"mqtt:\n  username: gw\n  password_file: {tmp_path / 'pw'}\n",
    )
    cfg = load_config(p, env={})
    assert cfg.storage.token == "tok-123"
    assert cfg.mqtt.password == "pw-456"
    assert "pw-456" not in repr(cfg)  # secrets stay out of logs


def test_missing_secret_file_is_an_error(tmp_path):
    p = write(tmp_path, f"storage:\n  token_file: {tmp_path / 'nope'}\n")
    with pytest.raises(ConfigError, match="token_file`: cannot read"):
        load_config(p, env={})


def test_check_config_exit_codes(tmp_path, capsys):
    assert main(["check-config", "-c", str(EXAMPLE)]) == 0
    assert "OK" in capsys.readouterr().out
    bad = write(tmp_path, "storage:\n  batch_size: -1\ngateway:\n  idd: x\n")
    assert main(["check-config", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "storage.batch_size" in err
    assert "gateway.idd: unknown key" in err
    assert str(bad) in err


def test_run_refuses_a_bad_config(tmp_path):
    bad = write(tmp_path, "storage:\n  batch_size: 0\n")
    assert main(["run", "-c", str(bad)]) == 2


def test_relative_register_map_path_is_next_to_the_config_file(tmp_path):
    from protocols.modbus.registermap import BUNDLED_MAPS_DIR

    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "mine.yaml").write_text((BUNDLED_MAPS_DIR / "sdm120.yaml").read_text())
    p = write(
        tmp_path,
        "modbus:\n  devices:\n    - {meter_id: x, map: maps/mine.yaml, host: 127.0.0.1}\n",
    )
    cfg = load_config(p, env={})
    assert cfg.modbus.devices[0].register_map.registers


def test_tls_files_must_exist(tmp_path):
    p = write(tmp_path, f"mqtt:\n  tls: {{enabled: true, ca_file: {tmp_path / 'nope.pem'}}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(p, env={})
    assert "mqtt.tls: ca_file: no such file" in info.value.errors[0]
