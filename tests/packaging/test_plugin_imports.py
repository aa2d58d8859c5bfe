"""The pytest plugins cost nothing to a test run that does not use their fixtures.

pytest loads every installed `pytest11` plugin on every run, so a project that installs
meter-gateway loads ours even when it never asks for `mqtt_broker` or `modbus_meters`. Their
module level must therefore import only pytest and the standard library: anything more
slows every run down, and a broken or missing library (pymodbus, paho) would break test
runs that have nothing to do with meters. Each check runs in a fresh interpreter, because
this one has long imported everything.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PLUGINS = (
    "meter_gateway.simulators.pytest_plugin",
    "meter_gateway.simulators.modbus.pytest_plugin",
)

# pytest-asyncio is a pytest plugin itself (pytest imports it on every run where it is
# installed), and the Modbus plugin uses its fixture decorator.
BASELINE = "import pytest, pytest_asyncio"


def _python(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHONPATH"))}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
        check=False,
    )


def test_importing_the_plugins_imports_no_protocols_gateway_storage_pymodbus_or_paho() -> None:
    code = (
        f"import {', '.join(PLUGINS)}, sys; "
        "print(sorted(m for m in sys.modules if m.startswith(('pymodbus', 'paho', "
        "'meter_gateway.protocols', 'meter_gateway.gateway', 'meter_gateway.storage'))))"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_plugins_add_only_standard_library_modules_to_what_pytest_imports() -> None:
    code = (
        "import sys\n"
        f"{BASELINE}\n"
        "before = set(sys.modules)\n"
        f"import {', '.join(PLUGINS)}\n"
        "new = {m.partition('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(new - set(sys.stdlib_module_names)))\n"
        "print(sorted(m for m in set(sys.modules) - before if m.startswith('meter_gateway')))\n"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr
    third_party, ours = done.stdout.splitlines()
    assert third_party == "['meter_gateway']"
    assert ours == str(
        sorted(
            [
                "meter_gateway",
                "meter_gateway.simulators",
                "meter_gateway.simulators.modbus",
                *PLUGINS,
            ]
        )
    )


def test_a_run_that_uses_no_fixture_passes_without_pymodbus_and_paho(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_plain.py").write_text(
        "import sys\n\n\n"
        "def test_plugins_loaded() -> None:\n"
        f"    assert {{{', '.join(map(repr, PLUGINS))}}} <= set(sys.modules)\n"
        "    assert 'pymodbus' not in sys.modules or sys.modules['pymodbus'] is None\n"
    )
    # A None entry in sys.modules makes every import of that name fail, as if the library
    # were not installed; pytest then loads the installed plugins, ours among them.
    code = (
        "import sys\n"
        "for name in ('pymodbus', 'paho'):\n"
        "    sys.modules[name] = None\n"
        "import pytest\n"
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'test_plain.py']))\n"
    )
    done = _python(code, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
