"""Whether this machine can build the compiled modules (mypyc's C): for the tests of the
compiled build, which are skipped where it cannot (the build installs the sources alone
there, and says so)."""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

import pytest

__all__ = ["cannot_compile", "needs_compiler"]


def cannot_compile() -> str | None:
    """Why the build cannot compile here, or None when it can: the C compiler setuptools
    calls (sysconfig's CC) and Python.h."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        return f"no C compiler ({cc}): the build installs the sources alone"
    include = Path(sysconfig.get_paths()["include"])
    if not (include / "Python.h").is_file():
        return f"no Python.h in {include} (python3-dev): the build installs the sources alone"
    return None


_WHY = cannot_compile()
needs_compiler = pytest.mark.skipif(_WHY is not None, reason=f"compiled build: {_WHY}")
