from __future__ import annotations

from pathlib import Path

import pytest

from meter_gateway.config.loader import ConfigError, load_config
from meter_gateway.gateway.cli import main

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
    from meter_gateway.protocols.modbus.registermap import BUNDLED_MAPS_DIR

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


# -- any input: a Config or a ConfigError naming the key, the file and what to do -----------


def errors_of(path: Path | None, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    return info.value.errors


@pytest.mark.parametrize(
    ("blob", "expected"),
    [
        ("mqtt:\n  port: 1\n".encode("utf-16"), "offset 0 (it looks like UTF-16)"),
        ("gateway:\n  id: gw-\xe9\n".encode("latin-1"), "line 2: not UTF-8 text: byte 0xe9"),
    ],
)
def test_a_file_that_is_not_utf8_says_so(tmp_path, blob, expected):
    p = tmp_path / "gw.yaml"
    p.write_bytes(blob)
    [error] = errors_of(p)
    assert error.startswith(f"{p}: ")
    assert expected in error
    assert "save the file as UTF-8" in error


def test_a_utf8_byte_order_mark_is_fine(tmp_path):
    p = tmp_path / "gw.yaml"
    p.write_bytes(b"\xef\xbb\xbfmqtt:\n  port: 1884\n")
    assert load_config(p, env={}).mqtt.port == 1884


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("validation:\n  max_age_s: !!float 'x'\n", "line 2, column 14: validation.max_age_s: "),
        ("mqtt:\n  port: !!int '0x'\n", "line 2, column 9: mqtt.port: cannot read '0x' as !!int"),
        ("mqtt:\n  host: !!timestamp x\n", "mqtt.host: 'x' is read as a date"),
        ("mqtt:\n  host: !!binary aGk=\n", "the YAML tag !!binary is not used"),
        ("mqtt: !!python/object:os.system {}\n", "mqtt: a mapping tagged !!python/object"),
        ("mqtt:\n  port: " + "9" * 5000 + "\n", "mqtt.port: cannot read"),
        ("a: 1\n---\nb: 2\n", "expected a single document"),
        ("mqtt: {port: 1}\x01\n", "line 1, column 16: not valid YAML: the character U+0001"),
    ],
)
def test_yaml_that_no_config_is_names_line_and_key(tmp_path, text, expected):
    [error] = errors_of(write(tmp_path, text))
    assert expected in error


def test_duplicate_keys_are_errors_naming_both_lines(tmp_path):
    p = write(tmp_path, "mqtt:\n  port: 1\n  port: 2\nstorage: {}\nstorage: {}\n")
    assert errors_of(p) == [
        f"{p}: line 3, column 3: mqtt: duplicate key 'port' (first at line 2): YAML would "
        "silently keep only the last; delete one of them",
        f"{p}: line 5, column 1: duplicate key 'storage' (first at line 4): YAML would "
        "silently keep only the last; delete one of them",
    ]


def test_keys_must_be_names(tmp_path):
    errors = errors_of(write(tmp_path, "1: x\nnull: y\nmqtt:\n  [a]: z\n"))
    assert [e.split(": ", 1)[1] for e in errors] == [
        "line 1, column 1: a key must be a name, not '1' (read as !!int); quote it if it is text",
        "line 2, column 1: a key must be a name, not 'null' (read as !!null); quote it if it "
        "is text",
        "line 4, column 3: mqtt: a key must be a name, not a list or a mapping; quote it if it "
        "is text",
    ]


def test_alias_bombs_cycles_and_deep_nesting_are_refused(tmp_path):
    laughs = "".join(
        f"l{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else '0'] * 9)}]\n" for i in range(9)
    )
    assert "expand to more than 100000 values" in errors_of(write(tmp_path, laughs))[0]
    assert (
        "an alias refers to a node that contains it"
        in errors_of(write(tmp_path, "a: &x [*x]\n"))[0]
    )
    deep = "mqtt: " + "[" * 10_000 + "]" * 10_000 + "\n"
    assert "nested more than 32 levels deep" in errors_of(write(tmp_path, deep))[0]


def test_anchors_and_merge_keys_still_work(tmp_path):
    p = write(
        tmp_path, "mqtt: &m {host: localhost, <<: {port: 1885}}\nvalidation: {max_age_s: 60}\n"
    )
    cfg = load_config(p, env={})
    assert (cfg.mqtt.host, cfg.mqtt.port) == ("localhost", 1885)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("validation: {max_age_s: .inf}", "validation.max_age_s: Input should be a finite number"),
        ("validation: {max_future_s: .nan}", "validation.max_future_s: Input should be a finite"),
        ("validation: {max_age_s: 1.0e+300}", "validation.max_age_s: Input should be less than"),
        (
            "mqtt: {keepalive_s: 70000}",
            "mqtt.keepalive_s: Input should be less than or equal to 65535",
        ),
        ("mqtt: {port: " + str(10**400) + "}", "mqtt.port: Input should be less than or equal"),
        ("mqtt: {reconnect_max_s: .inf}", "mqtt.reconnect_max_s: Input should be a finite"),
        ("events: {offline_after_s: 1.0e+300}", "events.offline_after_s: Input should be less"),
        ("modbus: {connect_timeout_s: .inf}", "modbus.connect_timeout_s: Input should be a finite"),
        ("mqtt: {host: '" + "a" * 70_000 + "'}", "mqtt.host: String should have at most 65535"),
        ("mqtt: {host: 'a b'}", "mqtt.host: 'a b' is not an IP address or a host name"),
        ('gateway: {data_dir: "a\\0b"}', "gateway.data_dir: contains a NUL character"),
        ("http: {listen: 'a b:80'}", "http.listen: 'a b' is not an IP address"),
        ("http: {listen: 'x:\u0663'}", "http.listen: must be HOST:PORT"),
        ("http: {token: 't\u00f6k'}", "http.token: must be visible ASCII"),
        ("storage: {api: v1, username: 'a:b'}", "storage.username: must not contain ':'"),
        ("storage: {url: 'http://x:99999'}", "storage.url: is not a URL"),
        ("mqtt: [1, 2]", "mqtt: Input should be a valid dictionary"),
        ("mqtt: {subscriptions: {a: 1}}", "mqtt.subscriptions: Input should be a valid list"),
        ("gateway: {timezone: Mars/Olympus}", "gateway.timezone: 'Mars/Olympus' is not an IANA"),
        ("gateway: {timezone: '../../etc/passwd'}", "gateway.timezone: '../../etc/passwd' is not"),
        ("gateway: {timezone: ''}", "gateway.timezone: '' is not an IANA time zone"),
        ("estimation: {interval_s: 700}", "estimation.interval_s: whole minutes that divide"),
        ("estimation: {interval_s: 7200}", "estimation.interval_s: Input should be less than"),
        ("estimation: {max_linear_gap_h: 0}", "estimation.max_linear_gap_h: Input should be great"),
        ("estimation: {max_gap_days: .inf}", "estimation.max_gap_days: Input should be a finite"),
        ("daily: {night_start: '25:00'}", "daily.night_start: a local time of day as HH:MM"),
        ("daily: {night_end: 7}", "daily.night_end: Input should be a valid string"),
        ("daily: {base_load_share: 0}", "daily.base_load_share: Input should be greater than 0"),
        ("daily: {recompute_every_s: .nan}", "daily.recompute_every_s: Input should be a finite"),
        ("customers: {peak_top_share: 2}", "customers.peak_top_share: Input should be less than"),
        (
            "customers: {outage_sensitive_min: -1}",
            "customers.outage_sensitive_min: Input should be",
        ),
        ("customers: {standby_kw: 1}", "customers.standby_kw: unknown key (check the spelling"),
    ],
)
def test_values_run_could_not_use_are_refused(tmp_path, text, expected):
    p = write(tmp_path, text + "\n")
    errors = errors_of(p)
    assert any(e.startswith(f"{p}: {expected}") for e in errors), errors


def test_what_run_needs_at_start_is_checked(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "topo.csv").write_text("meter,x\n1,2\n")
    (tmp_path / "ca.pem").write_text("not a certificate")
    p = write(
        tmp_path,
        f"gateway: {{data_dir: {tmp_path / 'file' / 'var'}}}\n"
        f"topology: {{file: {tmp_path / 'topo.csv'}}}\n"
        f"mqtt: {{tls: {{enabled: true, ca_file: {tmp_path / 'ca.pem'}}}}}\n",
    )
    errors = errors_of(p)
    assert len(errors) == 3, errors
    assert f"{p}: gateway.data_dir: cannot create" in errors[0]
    assert "is not a directory" in errors[0]
    assert f"{p}: topology.file: {tmp_path / 'topo.csv'}: line 1: the header" in errors[1]
    assert f"{p}: mqtt.tls.ca_file: '{tmp_path / 'ca.pem'}' is not a PEM CA" in errors[2]


def test_a_secret_file_must_be_a_regular_file(tmp_path):
    p = write(tmp_path, "storage: {token_file: /dev/zero}\n")
    assert "token_file`: '/dev/zero' is not a regular file" in errors_of(p)[0]


def test_environment_variables_with_odd_names_or_paths(tmp_path):
    p = write(tmp_path, "mqtt: 5\nmodbus: {devices: []}\n")
    errors = errors_of(
        p,
        {
            "METER_GATEWAY____": "x",
            "METER_GATEWAY__MQTT__PORT": "1",
            "METER_GATEWAY__MODBUS__DEVICES__0__HOST": "h",
        },
    )
    assert errors == [
        "environment METER_GATEWAY____: names no key (empty name between `__`); use "
        "METER_GATEWAY__SECTION__KEY, e.g. METER_GATEWAY__MQTT__HOST",
        f"environment METER_GATEWAY__MQTT__PORT: cannot set mqtt.port: mqtt is 5 in {p}, not a "
        "section",
        "environment METER_GATEWAY__MODBUS__DEVICES__0__HOST: modbus.devices is an empty list: "
        "set the whole list",
        f"{p}: mqtt: Input should be a valid dictionary or instance of MqttConfig (got 5) (line 1)",
    ]


def test_environment_reaches_into_lists_and_is_blamed_for_its_errors(tmp_path):
    p = write(tmp_path, "mqtt:\n  subscriptions:\n    - {topic: a/b, format: json}\n")
    cfg = load_config(p, env={"METER_GATEWAY__MQTT__SUBSCRIPTIONS__0__TOPIC": "c/+"})
    assert cfg.mqtt.subscriptions[0].topic == "c/+"
    errors = errors_of(p, {"METER_GATEWAY__MQTT__SUBSCRIPTIONS__0__FORMAT": "xml"})
    assert errors[0].startswith(
        "environment METER_GATEWAY__MQTT__SUBSCRIPTIONS__0__FORMAT: "
        "mqtt.subscriptions[0].format: unknown format 'xml'"
    )
    # A rule across keys, one of them from the environment: both are named.
    p = write(tmp_path, "storage: {max_buffered_lines: 10}\n")
    [error] = errors_of(p, {"METER_GATEWAY__STORAGE__BATCH_SIZE": "100"})
    assert error == (
        f"{p} with environment METER_GATEWAY__STORAGE__BATCH_SIZE: storage: "
        "max_buffered_lines (10) must be >= batch_size (100)"
    )


def test_environment_text_stays_text_where_text_is_meant(tmp_path):
    cfg = load_config(
        None,
        env={"METER_GATEWAY__STORAGE__TOKEN": "12345", "METER_GATEWAY__MQTT__PASSWORD": "true"},
    )
    assert (cfg.storage.token, cfg.mqtt.password) == ("12345", "true")


def test_errors_beyond_two_hundred_are_counted(tmp_path):
    items = ", ".join(["{topic: a}"] * 300)
    errors = errors_of(write(tmp_path, f"mqtt: {{subscriptions: [{items}]}}\n"))
    assert len(errors) == 201
    assert errors[-1].endswith("... and 100 more error(s) like these")
