"""Commands that plug into `meter-gateway` through entry points, and what a broken one does."""

from __future__ import annotations

import argparse
import importlib.metadata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meter_gateway.gateway import cli


class FakeEntryPoint:
    """What cli.py uses of an entry point: name, value, load()."""

    def __init__(self, name: str, value: str, load: Callable[[], Any]) -> None:
        self.name = name
        self.value = value
        self._load = load

    def load(self) -> Any:
        return self._load()


def _raises(exc: Exception) -> Callable[..., Any]:
    def fail(*_args: Any) -> Any:
        raise exc

    return fail


def _registers(name: str, ran: list[str]) -> Callable[[Any], None]:
    def register(sub: Any) -> None:
        p = sub.add_parser(name, help=f"the {name} plug-in")
        p.add_argument("--count", type=int, default=1)
        p.set_defaults(func=lambda args: ran.append(f"{name} {args.count}") or 0)

    return register


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """The entry points cli.py finds, per group: empty until a test adds some."""
    groups: dict[str, list[Any]] = {cli.SIMULATORS_GROUP: [], cli.COMMANDS_GROUP: []}

    def entry_points(*, group: str) -> list[Any]:
        return list(groups.get(group, []))

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    return groups


def test_a_plugin_that_cannot_be_imported_is_listed_as_unavailable_and_fails_when_run(
    plugins: dict[str, list[Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    value = "meter_gateway.simulators.no_such_module:register"
    plugins[cli.SIMULATORS_GROUP].append(
        importlib.metadata.EntryPoint("mqtt", value, cli.SIMULATORS_GROUP)
    )

    with pytest.raises(SystemExit) as exit_:
        cli.main(["simulate", "-h"])
    assert exit_.value.code == 0
    listing = capsys.readouterr().out
    assert "mqtt" in listing
    assert "unavailable: ModuleNotFoundError: No module named" in listing

    # Any arguments: the user asked for the command, the answer is why it is missing.
    assert cli.main(["simulate", "mqtt", "--meters", "5", "extra"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "meter-gateway: the mqtt command cannot be loaded: ModuleNotFoundError: No module "
        f"named 'meter_gateway.simulators.no_such_module' (from {value})\n"
    )


def test_a_plugin_whose_register_fails_half_way_leaves_only_the_placeholder(
    plugins: dict[str, list[Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    ran: list[str] = []

    def half_way(sub: Any) -> None:
        sub.add_parser("modbus", help="half built")
        raise ValueError("no 100% sure register map")  # a % must not break the help

    plugins[cli.SIMULATORS_GROUP] += [
        FakeEntryPoint("modbus", "fake.modbus:register", lambda: half_way),
        FakeEntryPoint("mqtt", "fake.mqtt:register", lambda: _registers("mqtt", ran)),
    ]

    with pytest.raises(SystemExit):
        cli.main(["simulate", "--help"])
    assert "unavailable: ValueError: no 100% sure register map" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["simulate", "modbus", "--help"])
    help_text = capsys.readouterr().out
    assert "unavailable" in help_text
    assert "ValueError: no 100% sure register map" in help_text
    assert "half built" not in help_text

    assert cli.main(["simulate", "modbus"]) == 1
    assert capsys.readouterr().err == (
        "meter-gateway: the modbus command cannot be loaded: ValueError: no 100% sure "
        "register map (from fake.modbus:register)\n"
    )
    # The good plug-in beside it works, arguments and all.
    assert cli.main(["simulate", "mqtt", "--count", "3"]) == 0
    assert ran == ["mqtt 3"]


def test_a_broken_top_level_command_is_a_placeholder_and_run_and_check_config_still_work(
    plugins: dict[str, list[Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    plugins[cli.COMMANDS_GROUP] += [
        FakeEntryPoint("demo", "fake.demo:register", _raises(ImportError("no mosquitto"))),
        # A plug-in must never replace a built-in command.
        FakeEntryPoint("run", "fake.run:register", lambda: _raises(RuntimeError("shadow"))),
    ]

    assert cli.main(["demo", "--duration", "5"]) == 1
    assert capsys.readouterr().err == (
        "meter-gateway: the demo command cannot be loaded: ImportError: no mosquitto "
        "(from fake.demo:register)\n"
    )

    args = cli._parser().parse_args(["run", "-c", "gw.yaml"])
    assert args.func is cli._cmd_run
    assert (
        "the plug-in 'run' (from fake.run:register) cannot be loaded: RuntimeError: shadow"
        in caplog.text
    )
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"gateway: {{data_dir: {tmp_path / 'var'}}}\n")
    assert cli.main(["check-config", "-c", str(cfg)]) == 0
    assert ": OK (gateway gw-01" in capsys.readouterr().out


def test_unknown_arguments_to_a_working_command_are_still_an_error(
    plugins: dict[str, list[Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    plugins[cli.SIMULATORS_GROUP].append(
        FakeEntryPoint("mqtt", "fake.mqtt:register", lambda: _registers("mqtt", []))
    )
    for argv in (["check-config", "-c", "x.yaml", "--bogus"], ["simulate", "mqtt", "--bogus"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 2
        assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_the_installed_entry_points_name_the_plugged_in_commands() -> None:
    # The real metadata (pyproject.toml, installed): the gateway finds its commands
    # only through it. Whether each loads depends on the simulators, not checked here.
    sims = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=cli.SIMULATORS_GROUP)}
    cmds = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=cli.COMMANDS_GROUP)}
    assert sims == {
        "mqtt": "meter_gateway.simulators.mqtt.cli:register",
        "modbus": "meter_gateway.simulators.modbus.cli:register",
        "replay-file": "meter_gateway.simulators.replay_cli:register",
    }
    assert cmds == {"demo": "meter_gateway.simulators.demo:register"}
    parser = cli._parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"run", "check-config", "simulate", "demo"} <= set(sub.choices)


def test_version_says_the_installed_version(capsys) -> None:
    from meter_gateway import __version__

    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"meter-gateway {__version__}"
    assert __version__ != "0.0.0"  # the package metadata was found
