"""Payload formats from other distributions: the entry-point group `meter_gateway.formats`.

The example distribution in tests/plugins/example_format is installed into a
temporary directory put on sys.path (never into the shared venv): its package is
copied there with a `.dist-info` written from its pyproject.toml, which is what an
installer leaves and all `importlib.metadata` reads. When the venv can build wheels
(`wheel`, or setuptools >= 70.1), a second test installs it with pip the same way.
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

import pytest

from meter_gateway.protocols.formats import FORMATS, get_format
from meter_gateway.protocols.mqtt.config import MqttConfig, Subscription

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "example_format"
PLUGIN_FORMATS = ("example-kv", "example-csv", "example-broken")


def _forget_plugin() -> None:
    for name in PLUGIN_FORMATS:
        FORMATS.pop(name, None)
    for mod in [m for m in sys.modules if m.split(".")[0] == "example_meter_format"]:
        del sys.modules[mod]


def _install(site: Path) -> None:
    """Install the example distribution into `site` as an installer would (no pip)."""
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    shutil.copytree(PLUGIN / "example_meter_format", site / "example_meter_format")
    info = site / f"example_meter_format-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    eps = project["entry-points"]["meter_gateway.formats"]
    lines = "".join(f"{k} = {v}\n" for k, v in eps.items())
    (info / "entry_points.txt").write_text(f"[meter_gateway.formats]\n{lines}")


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The example plugin installed on sys.path for one test; gone afterwards."""
    site = tmp_path / "site"
    site.mkdir()
    _install(site)
    _forget_plugin()
    monkeypatch.syspath_prepend(str(site))  # also invalidates import caches
    yield site
    _forget_plugin()


def test_unknown_format_names_the_built_in_ones_and_the_installed_plugins():
    with pytest.raises(ValueError, match="unknown format 'example-kv'") as err:
        get_format("example-kv")
    text = str(err.value)
    assert "json, json-batch, lwt, meter-event" in text
    assert "sparkplug-b, tasmota" in text
    assert "installed plugins (entry points 'meter_gateway.formats'): " in text


def test_a_function_entry_point_is_loaded_when_first_named(plugin):
    assert "example-kv" not in FORMATS  # lazily: nothing loaded before it is named
    fmt = get_format("example-kv")
    assert FORMATS["example-kv"] is fmt
    d = fmt(b"power_w=812.5 ts=1795797300", "m-1")
    assert d.readings == [{"meter_id": "m-1", "power_w": 812.5, "ts": 1795797300.0}]
    assert "is not key=number" in fmt(b"power_w", "m-1").rejections[0].reason
    assert get_format("example-kv") is fmt  # once


def test_a_module_that_registers_on_import(plugin):
    fmt = get_format("example-csv")
    assert fmt(b"1795797300,5", "m-2").readings[0]["power_w"] == 5.0


def test_a_subscription_naming_a_plugin_format_loads_it(plugin):
    cfg = MqttConfig(subscriptions=[{"topic": "kv/+/reading", "format": "example-kv"}])
    assert cfg.subscriptions[0].format == "example-kv"
    assert "example-kv" in FORMATS


def test_unknown_and_broken_plugins_are_clear_config_errors(plugin):
    with pytest.raises(ValueError, match="unknown format 'nope'") as err:
        Subscription(topic="a/+", format="nope")
    assert "installed plugins (entry points 'meter_gateway.formats'): " in str(err.value)
    assert "example-broken, example-csv, example-kv" in str(err.value)
    with pytest.raises(ValueError, match="format 'example-broken': cannot load entry point") as e:
        Subscription(topic="a/+", format="example-broken")
    assert "example-meter-format 0.1.0" in str(e.value)
    assert "ModuleNotFoundError" in str(e.value)
