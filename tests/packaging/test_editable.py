"""An editable install (`pip install -e`) runs the sources: it compiles nothing unless
METER_GATEWAY_COMPILE=1 asks for it (scripts/setup.sh does, so that the development venv
and CI test the compiled build; tests/unit/test_compiled.py checks that they do).

Built the way pip builds it (PEP 660: setuptools' editable_wheel, in an isolated build
environment with pyproject's build requirements) into a fresh venv, from a copy of the
source tree without any compiled build in it. No dependencies: nothing is imported there.
"""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from meter_gateway.gateway.events import compiled

# The first run on a machine may download the build requirements (setuptools, mypy).
pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
# What a compiled build leaves beside the sources.
_BUILT = (*(f"*{sfx}" for sfx in importlib.machinery.EXTENSION_SUFFIXES), "*.source-sha256")
# Where the installed meter_gateway comes from, asked without importing it.
_ORIGIN = "import importlib.util as u; print(u.find_spec('meter_gateway').origin)"


def test_an_editable_install_compiles_nothing_unless_asked(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".*", "__pycache__", "*.egg-info", "build", "dist", "var", *_BUILT
        ),
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=60)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("METER_GATEWAY_COMPILE", compiled.PURE_ENV, "PYTHONPATH", "VIRTUAL_ENV")
    }
    done = subprocess.run(
        [
            sys.executable, "-m", "pip", "--disable-pip-version-check",
            "--python", venv / "bin" / "python", "install", "-v", "--no-deps", "-e", src,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # setup.py's build_ext saw an editable install and handed nothing to mypyc.
    assert "setup: an editable install: not compiled" in done.stdout + done.stderr
    built = sorted(str(p.relative_to(src)) for pattern in _BUILT for p in src.rglob(pattern))
    assert built == []
    assert not (src / "build" / "mypyc").exists()
    status = compiled.decide(src / "gateway" / "events", {})
    assert status.startswith("pure Python: not compiled ("), status
    # The install is the editable one, of that copy.
    where = subprocess.run(
        [venv / "bin" / "python", "-c", _ORIGIN],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert where == str(src / "meter_gateway" / "__init__.py")
