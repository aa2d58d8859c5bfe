"""Acceptance test of the package as a user gets it: the wheel, installed in a fresh venv.

The source tree is laid out as top-level folders (config/, storage/, protocols/, ...) mapped
onto one import package, `meter_gateway`. Only a built and installed wheel shows whether
that mapping works: that every module ships, that nothing lands in site-packages under a
name such as `config` that a user's own project also uses, and that the pytest fixtures,
the entry points and the console script work outside this repository.

The wheel is built from a copy of the source tree: setuptools writes build/ and *.egg-info
next to the sources, and a stale build/ from an earlier run would leak deleted modules
into the wheel. Dependencies come through pip (from its cache after the first run), pinned
by requirements.lock like everywhere else.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from meter_gateway.gateway.events import compiled
from tests.packaging.compiler import needs_compiler

# Talks to a real mosquitto (through the installed fixtures). The first run on a machine
# may download the dependencies, hence more time than the suite's default.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
PIP = ("-m", "pip", "--disable-pip-version-check")


@dataclass
class Installed:
    """A fresh venv with the wheel installed; ``timings`` says how long each step took."""

    root: Path
    wheel: Path
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"

    def env(self) -> dict[str, str]:
        """This process's environment without what would lead back to the repository's venv
        or configure pytest from outside."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith("PYTEST_")
        }
        env["PATH"] = os.pathsep.join([str(self.bin), env.get("PATH", "")])
        env["VIRTUAL_ENV"] = str(self.root)
        return env

    def run(
        self, *args: str | Path, cwd: Path | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return _run(*args, cwd=cwd, env=self.env(), timeout=timeout)


def _run(
    *args: str | Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, (
        f"{' '.join(map(str, args))} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    )
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("wheel")
    timings: dict[str, float] = {}

    t = time.monotonic()
    src = base / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(".*", "__pycache__", "*.egg-info", "build", "dist", "var"),
    )
    _run(sys.executable, *PIP, "wheel", "--no-deps", "-q", "-w", base / "dist", src)
    (wheel,) = (base / "dist").glob("meter_gateway-*.whl")
    timings["build the wheel"] = time.monotonic() - t

    t = time.monotonic()
    _run(sys.executable, "-m", "venv", base / "venv")
    inst = Installed(base / "venv", wheel, timings)
    timings["create the venv"] = time.monotonic() - t

    t = time.monotonic()
    inst.run(
        inst.python, *PIP, "install", "-q", "-c", REPO / "requirements.lock",
        wheel, "pytest", "pytest-asyncio", "pytest-timeout",
        timeout=240,
    )  # fmt: skip
    timings["install"] = time.monotonic() - t
    yield inst
    print("\n" + "\n".join(f"{step}: {s:.1f} s" for step, s in timings.items()))


def _source_files() -> set[str]:
    """Where every module and data file of the source tree lands in site-packages."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {"meter_gateway": REPO / "meter_gateway"}
    roots |= {pkg: REPO / folder for pkg, folder in setuptools["package-dir"].items()}
    files = set()
    for pkg, folder in roots.items():
        for path in folder.rglob("*"):
            rel_parts = path.relative_to(folder).parts
            if path.suffix not in (".py", ".yaml") or "__pycache__" in rel_parts:
                continue
            if not any(part.startswith(".") for part in rel_parts):  # not copied: editor files
                files.add("/".join([*pkg.split("."), *rel_parts]))
    return files


def _installed_files(inst: Installed) -> list[str]:
    out = inst.run(inst.python, *PIP, "show", "-f", "meter-gateway").stdout
    lines = out.split("\nFiles:\n", 1)[1].splitlines()
    return [line.strip() for line in lines if line.startswith("  ")]


def test_the_wheel_installs_one_top_level_package_with_every_module(installed: Installed) -> None:
    files = _installed_files(installed)
    outside = [f for f in files if f.startswith("../")]  # outside site-packages
    assert [Path(f).name for f in outside] == ["meter-gateway"]  # the console script
    tops = {f.split("/")[0] for f in files if not f.startswith("../")}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert len(dist_info) == 1
    assert tops - dist_info == {"meter_gateway"}
    missing = sorted(_source_files() - set(files))
    assert not missing, (
        "in the source tree, not in the wheel (is the package listed in pyproject.toml's "
        f"[tool.setuptools] packages?): {missing}"
    )


@needs_compiler
def test_the_wheel_runs_the_detectors_compiled(installed: Installed) -> None:
    # A wheel is always compiled (an editable install only when asked): it carries the
    # mypyc-compiled modules, each with the hash of its source, and their .py files as
    # the fallback.
    files = _installed_files(installed)
    for module in compiled.MODULES:
        stem = f"meter_gateway/gateway/events/{module.replace('.', '/')}"
        assert f"{stem}.py" in files
        assert f"{stem}.source-sha256" in files
        assert any(f.startswith(f"{stem}.cpython-") and f.endswith(".so") for f in files), stem
    check = """
from meter_gateway.gateway.events import compiled
import meter_gateway.gateway.events.engine as engine
print(compiled.status)
print(engine.__file__)
"""
    status, where = installed.run(installed.python, "-c", check, cwd=installed.root).stdout.split(
        "\n"
    )[:2]
    assert status == "compiled (mypyc)"
    assert where.endswith(".so")
    assert "site-packages" in where


def test_the_console_script_and_the_entry_points_work(installed: Installed) -> None:
    out = installed.run(installed.bin / "meter-gateway", "--help").stdout
    assert "simulate" in out
    # Every entry point of ours resolves in the installed package; the simulators' ones
    # also add their sub-command.
    check = """
import argparse
from importlib.metadata import distribution

parser = argparse.ArgumentParser(prog="meter-gateway simulate")
sub = parser.add_subparsers(dest="kind")
for ep in sorted(distribution("meter-gateway").entry_points, key=lambda ep: ep.name):
    obj = ep.load()
    if ep.group == "meter_gateway.simulators":
        obj(sub)
    print(ep.group, ep.name)
print("sub-commands", *sorted(sub.choices))
"""
    out = installed.run(installed.python, "-c", check, cwd=installed.root).stdout
    assert "meter_gateway.simulators mqtt" in out
    assert "meter_gateway.simulators modbus" in out
    assert "pytest11 meter_gateway" in out
    assert "sub-commands modbus mqtt" in out


# A project of a user's: its own top-level packages named as our source folders are, and
# tests that use our fixtures from the installed plugins.
PROJECT = {
    "pytest.ini": """\
[pytest]
timeout = 60
asyncio_default_fixture_loop_scope = function
filterwarnings =
    error
    ignore::DeprecationWarning:pymodbus.*
""",
    "config/__init__.py": "",
    "config/settings.py": 'NAME = "user-config"\n',
    "storage/__init__.py": "",
    "storage/x.py": 'NAME = "user-storage"\n',
    "protocols/__init__.py": "",
    "protocols/y.py": 'NAME = "user-protocols"\n',
    "tests/test_own.py": '''\
"""Uses no fixture of meter-gateway's: passes whatever the plugins could import."""

import sys
from pathlib import Path

import meter_gateway
from config.settings import NAME as CONFIG
from protocols.y import NAME as PROTOCOLS
from storage.x import NAME as STORAGE

PROJECT = Path(__file__).resolve().parents[1]


def test_its_own_packages_beside_the_installed_meter_gateway():
    assert (CONFIG, STORAGE, PROTOCOLS) == ("user-config", "user-storage", "user-protocols")
    for name in ("config", "storage", "protocols"):
        assert Path(sys.modules[name].__file__).parent.parent == PROJECT
    assert "site-packages" in Path(meter_gateway.__file__).parts
    assert "meter_gateway.simulators.pytest_plugin" in sys.modules
    assert "meter_gateway.simulators.modbus.pytest_plugin" in sys.modules
''',
    "tests/test_meters.py": """\
import asyncio
import json
import struct
import sys
import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from config.settings import NAME

PROJECT = Path(__file__).resolve().parents[1]


def test_a_subscriber_receives_the_fleets_readings(mqtt_broker, meter_fleet):
    got = []
    cond = threading.Condition()
    subscribed = threading.Event()

    def on_message(client, userdata, msg):
        with cond:
            got.append((msg.topic, json.loads(msg.payload)))
            cond.notify_all()

    client = paho.Client(paho.CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, *_: c.subscribe("meters/+/reading", qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    client.connect(mqtt_broker.host, mqtt_broker.port)
    client.loop_start()
    try:
        assert subscribed.wait(10)
        stats = meter_fleet(meters=3, duration="1h").wait()
        with cond:
            assert cond.wait_for(lambda: len(got) >= stats.by_kind["reading"], 20)
    finally:
        client.disconnect()
        client.loop_stop()
    assert stats.by_kind["reading"] == 3 * 5  # 15-minute readings, both ends of the hour
    assert {topic for topic, _ in got} == {f"meters/m-00000{i}/reading" for i in (1, 2, 3)}
    assert all(payload["meter_id"] == topic.split("/")[1] for topic, payload in got)
    # The fixtures imported meter-gateway's modules; the project's own are still its own.
    assert NAME == "user-config"
    assert Path(sys.modules["config"].__file__).parent.parent == PROJECT


@pytest.mark.asyncio
async def test_a_simulated_modbus_meter_answers(modbus_meters):
    server = await modbus_meters(1, model="sdm630")
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        # Modbus TCP: read input registers 0-1 (L1 voltage, float32) of unit 1.
        writer.write(struct.pack(">HHHBBHH", 1, 0, 6, 1, 4, 0, 2))
        await writer.drain()
        head = await asyncio.wait_for(reader.readexactly(9), 5)
        assert head[7:9] == bytes([4, 4])
        (volts,) = struct.unpack(">f", await reader.readexactly(4))
    finally:
        writer.close()
        await writer.wait_closed()
    assert 200 < volts < 260
""",
}


def test_a_user_project_with_its_own_config_storage_protocols_uses_the_fixtures(
    installed: Installed, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    for name, text in PROJECT.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    args = ["-q", "-p", "no:cacheprovider"]

    t = time.monotonic()
    out = installed.run(installed.python, "-m", "pytest", *args, cwd=project).stdout
    assert "3 passed" in out, out
    installed.timings["the user project's tests"] = time.monotonic() - t

    # A run that uses no fixture of ours passes without pymodbus and paho: the plugins load
    # without them. (A None entry in sys.modules fails every import of that name, as if the
    # library were not installed, and leaves the venv as it is for the other tests.)
    t = time.monotonic()
    without = (
        "import sys\n"
        "sys.modules['pymodbus'] = sys.modules['paho'] = None\n"
        "import pytest\n"
        f"sys.exit(pytest.main({[*args, 'tests/test_own.py']!r}))\n"
    )
    out = installed.run(installed.python, "-c", without, cwd=project).stdout
    assert "1 passed" in out, out
    installed.timings["a run without pymodbus and paho"] = time.monotonic() - t
