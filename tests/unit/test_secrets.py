"""Secrets are never shown: not in check-config's errors (file or environment), not in its
OK line; credentials in URLs are masked wherever a URL is shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from meter_gateway.config.loader import ConfigError, load_config
from meter_gateway.config.secrets import describe, redact_text, redact_url
from meter_gateway.gateway.cli import main

SECRET = "hunter2-Zq9"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://admin:pw@db:8086", "http://***@db:8086"),
        ("https://tok3n@db.example/x", "https://***@db.example/x"),
        ("http://u:p@ss@db:8086/a", "http://***@db:8086/a"),
        ("https://hook.example/x?api_key=abc&x=1", "https://hook.example/x?api_key=***&x=1"),
        ("http://db:8086", "http://db:8086"),
        ("http://u:pw@db:notaport", "http://***@db:notaport"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_text_masks_every_url_in_a_message() -> None:
    text = "cannot reach http://a:b1@x:1/w and https://c:d2@y/ (refused)"
    assert redact_text(text) == "cannot reach http://***@x:1/w and https://***@y/ (refused)"


def test_describe_says_what_not_which() -> None:
    assert describe(SECRET) == "text of 11 characters"
    assert describe({"nested": SECRET}) == "a mapping of 1 key"
    assert describe([SECRET]) == "a list of 1 item"


def _errors(path: Path | None, env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    return "\n".join(info.value.errors)


def test_environment_overrides_never_echo_a_secret() -> None:
    text = _errors(
        None,
        {
            "METER_GATEWAY__MQTT__PASSWORD": f"{{nested: {SECRET}}}",
            "METER_GATEWAY__STORAGE__TOKEN": f"has spaces {SECRET}",
            "METER_GATEWAY__STORAGE__PASSWORD": f"[{SECRET}]",
            "METER_GATEWAY__HTTP__TOKEN": f"bad token {SECRET}",
            "METER_GATEWAY__EVENTS__WEBHOOK_URL": f"https://u:{SECRET}@hook.example/p?key={SECRET}",
            "METER_GATEWAY__STORAGE__URL": f"http://admin:{SECRET}@db:port",
        },
    )
    assert SECRET not in text
    assert "mqtt.password: Input should be a valid string (got a mapping of 1 key)" in text
    assert "storage.token: " in text
    assert "(got text of 22 characters)" in text
    assert "http.token: " in text
    assert "events.webhook_url: " in text
    assert "https://***@hook.example/p?key=***" in text
    assert "storage.url: " in text


def test_the_file_never_echoes_a_secret(tmp_path: Path) -> None:
    p = tmp_path / "gw.yaml"
    p.write_text(
        f"mqtt:\n  password: {{nested: {SECRET}}}\n"
        f"storage:\n  token: 2026-01-0{SECRET[-1]}\n"  # read as a date by YAML
        f"http:\n  token: !!float {SECRET}\n"
    )
    text = _errors(p, {})
    assert SECRET not in text
    assert SECRET[-6:] not in text
    assert "2026-01-09" not in text
    # An override that names a key below a secret: the secret is not shown as "not a section".
    text = _errors(
        None,
        {
            "METER_GATEWAY__MQTT__PASSWORD": SECRET,
            "METER_GATEWAY__MQTT__PASSWORD__X": "1",
        },
    )
    assert SECRET not in text
    assert "mqtt.password is text of 11 characters" in text


def test_check_config_ok_line_masks_the_storage_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "gw.yaml"
    p.write_text(
        f"gateway: {{id: gw, data_dir: {tmp_path / 'var'}}}\n"
        f"storage: {{url: 'http://admin:{SECRET}@db.example:8086'}}\n"
    )
    assert main(["check-config", "-c", str(p)]) == 0
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err
    assert "storage v2 at http://***@db.example:8086" in out.out
    monkeypatch.setenv("METER_GATEWAY__MQTT__PASSWORD", f"{{nested: {SECRET}}}")
    assert main(["check-config", "-c", str(p)]) == 2
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err
    assert "got a mapping of 1 key" in out.err
