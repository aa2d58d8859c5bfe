"""The compiled detectors (mypyc) against their Python sources.

The installed build runs the event engine's per-reading path compiled; the `.py` files
are its fallback. Both must decide alike: the same simulated fleet, replayed once with
each, gives the same events byte for byte and the same detector state at the end. A
stale build (a source edited since it was compiled) or a missing one falls back to the
sources, never to a mix.

The tests of the compiled build itself are skipped where nothing can be compiled (no C
compiler or no Python headers: the build installs the sources alone there).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from meter_gateway.gateway.events import compiled, compiled_modules
from tests.packaging.compiler import needs_compiler

REPO = Path(__file__).resolve().parents[2]
EVENTS = REPO / "gateway" / "events"

# Ten days of 60 meters on 6 transformers, with every kind of fault the engine decides on
# the per-reading path, so that each branch of it is taken in both builds.
SCENARIO = """
name: compiled-vs-python
fleet:
  meters: 60
  interval_s: 15m
  seed: 7
  duration: 10d
  start: "2026-11-02T00:00:00Z"
  meters_per_transformer: 10
  transformers_per_feeder: 2
  concentrators: 2
faults:
  - {type: load_variation, all: true, at: 0}
  - {type: outage, meters: [m-000003], at: 4d1h, duration: 1h30m}
  - {type: outage, meters: [m-000004], at: 4d3h, duration: 2m}
  - {type: outage, meters: [m-000005], at: 4d5h, duration: 2h, last_gasp: false, lwt: true}
  - {type: outage, transformer: tx-002, at: 5d2h, duration: 45m}
  - {type: comms_dropout, meters: [m-000041], at: 5d6h, duration: 2h, backfill: true}
  - {type: comms_dropout, meters: [m-000042], at: 5d9h, duration: 3h, backfill: false}
  - {type: voltage_sag, transformer: tx-003, at: 6d1h, duration: 1h, factor: 0.85}
  - {type: voltage_swell, meters: [m-000051], at: 6d4h, duration: 1h, factor: 1.15}
  - {type: phase_loss, meters: [m-000052], at: 6d7h, duration: 1h30m, phase: 2}
  - {type: clock_drift, meters: [m-000053], at: 6d10h, duration: 12h, step_s: 200, rate_s_per_h: 0}
  - {type: register_reset, meters: [m-000054], at: 7d1h}
  - {type: reverse_flow, meters: [m-000055], at: 7d3h, duration: 2h, export_w: 15000}
  - {type: consumption_spike, meters: [m-000056], at: 8d19h, duration: 30m, factor: 10}
  - {type: sustained_high, meters: [m-000057], at: 8d2h, duration: 6h, factor: 5}
  - {type: zero_use, meters: [m-000058], at: 8d8h, duration: 12h}
  - {type: theft, meters: [m-000059], at: 9d, factor: 0.25, event: tamper}
  - {type: malformed, all: true, rate_per_day: 0.002}
  - {type: duplicates, all: true, rate_per_day: 0.002}
"""

# Replays the file through the real Replay (detectors on, nothing stored) and prints the
# build it ran, the events it wrote and a digest of the engine's final state.
DRIVER = """
import asyncio, hashlib, json, sys
from pathlib import Path

import pytest
from meter_gateway.config.schema import Config
from meter_gateway.gateway.events import compiled
from meter_gateway.gateway.replay import Replay

traffic, topology, data_dir, events = (Path(a) for a in sys.argv[1:5])
config = Config.model_validate({
    "gateway": {"id": "gw-compiled", "data_dir": str(data_dir)},
    "topology": {"file": str(topology)},
    "events": {"baseline_warmup_days": 3},
})
with events.open("wb") as out:
    r = Replay(config, store=False, events_out=out, progress=lambda line: None)
    asyncio.run(r.run([traffic]))
import meter_gateway.gateway.events.engine as engine_module
print(json.dumps({
    "status": compiled.status,
    "engine_file": engine_module.__file__,
    "state_sha256": hashlib.sha256(r.engine.snapshot()).hexdigest(),
}))
"""


def _env(pure: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != compiled.PURE_ENV}
    if pure:
        env[compiled.PURE_ENV] = "1"
    return env


@needs_compiler
def test_the_installed_build_runs_the_detectors_compiled() -> None:
    # scripts/setup.sh compiles them (it asks its editable install to); a failed or stale
    # build would cost ingest speed silently (the detectors' share of the CPU triples in
    # pure Python).
    assert compiled.compiled, compiled.status
    for name in compiled.MODULES:
        module = importlib.import_module(f"meter_gateway.gateway.events.{name}")
        assert module.__file__ is not None
        assert not module.__file__.endswith(".py"), module.__file__


def test_the_compiled_modules_are_listed_once() -> None:
    # compiled_modules.py is the list: the build, the check and setup.sh's install stamp
    # read it, and none of them spells a module out again.
    assert compiled.MODULES is compiled_modules.MODULES
    sources = [f"gateway/events/{m.replace('.', '/')}.py" for m in compiled.MODULES]
    assert all((REPO / source).is_file() for source in sources), sources
    setup_py = (REPO / "setup.py").read_text()
    assert '"compiled_modules.py"' in setup_py
    setup_sh = (REPO / "scripts" / "setup.sh").read_text()
    for text in (setup_py, setup_sh):
        for name, source in zip(compiled.MODULES, sources, strict=True):
            assert f"events.{name}" not in text, name
            assert source not in text, source
    # What setup.sh hashes into its install stamp: every compiled module's source.
    listing = re.search(r"listed=\$\(\.venv/bin/python -c '(.*?)'\)", setup_sh, re.DOTALL)
    assert listing is not None
    done = subprocess.run(
        [sys.executable, "-c", listing.group(1)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        check=True,
    )
    assert done.stdout.split() == sources


@pytest.mark.slow
@needs_compiler
def test_compiled_and_python_decide_alike(tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(SCENARIO)
    traffic = tmp_path / "traffic.jsonl.gz"
    topology = tmp_path / "traffic.topology.csv"
    cli = Path(sys.executable).with_name("meter-gateway")
    made = subprocess.run(
        [cli, "simulate", "replay-file", "--scenario", scenario, "--out", traffic, "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    runs = {}
    for pure in (False, True):
        name = "python" if pure else "compiled"
        events = tmp_path / f"events-{name}.jsonl"
        done = subprocess.run(
            [sys.executable, "-c", DRIVER, traffic, topology, tmp_path / f"var-{name}", events],
            capture_output=True,
            text=True,
            env=_env(pure),
            timeout=180,
        )
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout.strip().splitlines()[-1])
        runs[name] = (result, events.read_bytes())
    (c_result, c_events), (p_result, p_events) = runs["compiled"], runs["python"]
    assert c_result["status"].startswith("compiled"), c_result
    assert not c_result["engine_file"].endswith(".py")
    assert p_result["status"] == f"pure Python ({compiled.PURE_ENV}=1)"
    assert p_result["engine_file"].endswith("engine.py")
    # The scenario raises most kinds of events: the comparison covers their paths.
    kinds = {json.loads(line)["type"] for line in p_events.splitlines()}
    for kind in (
        "power_outage",
        "transformer_outage",
        "comms_loss",
        "voltage_sag",
        "voltage_swell",
        "phase_loss",
        "clock_drift",
        "register_decrease",
        "reverse_energy",
        "tamper",
        "consumption_spike",
        "sustained_high_consumption",
    ):
        assert kind in kinds, (kind, sorted(kinds))
    assert c_events == p_events
    assert c_result["state_sha256"] == p_result["state_sha256"]


def _package_copy(tmp_path: Path) -> Path:
    """The events package's files that the check reads, in a folder of their own."""
    here = tmp_path / "events"
    for module in compiled.MODULES:
        src = EVENTS.joinpath(*module.split(".")).with_suffix(".py")
        dst = here.joinpath(*module.split(".")).with_suffix(".py")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return here


def _fake_build(here: Path, module: str) -> Path:
    py = here.joinpath(*module.split(".")).with_suffix(".py")
    ext = Path(f"{py.with_suffix('')}{importlib.machinery.EXTENSION_SUFFIXES[0]}")
    ext.write_bytes(b"")
    digest = hashlib.sha256(py.read_bytes()).hexdigest()
    py.with_name(py.stem + ".source-sha256").write_text(digest + "\n")
    return py


def test_a_missing_stale_or_unrecorded_build_is_not_used(tmp_path: Path) -> None:
    here = _package_copy(tmp_path)
    assert compiled.decide(here, {}).startswith("pure Python: not compiled (a pure-Python ")
    sources = [_fake_build(here, m) for m in compiled.MODULES]
    assert compiled.decide(here, {}) == "compiled (mypyc)"
    assert compiled.decide(here, {compiled.PURE_ENV: "1"}).startswith("pure Python (")
    # A source edited after the build: that module and so all of them run from source.
    engine_py = sources[1]
    engine_py.write_text(engine_py.read_text() + "\n# edited\n")
    status = compiled.decide(here, {})
    assert status.startswith("pure Python: engine.py changed since it was compiled"), status
    assert "scripts/setup.sh" in status
    engine_py.with_name("engine.source-sha256").unlink()
    status = compiled.decide(here, {})
    assert status == "pure Python: engine.py: no record of the source it was compiled from"


def test_a_forced_python_build_loads_every_module_from_its_source() -> None:
    code = textwrap.dedent(
        """
        import json
        import meter_gateway.gateway.events.state as s
        import meter_gateway.gateway.events.engine as e
        import meter_gateway.gateway.events.detectors.consumption as c
        from meter_gateway.gateway.events import compiled
        print(json.dumps([compiled.status, s.__file__, e.__file__, c.__file__]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(True), timeout=60
    )
    assert done.returncode == 0, done.stderr
    status, *files = json.loads(done.stdout)
    assert status.startswith("pure Python")
    assert all(f.endswith(".py") for f in files), files
