"""Whether the detectors' per-reading path runs compiled, and the fallback to its sources.

`MODULES` (listed in `compiled_modules`) are built with mypyc by the package build
(setup.py) from the same Python sources: the engine's `reading` runs for every stored
reading, and compiled it costs a fraction of the interpreter's time. Their `.py` files
always ship beside the extensions and are used instead, all of them together (a
compiled module takes only the compiled classes of the others), when

- an extension is missing (a pure-Python install, an editable install not asked to
  compile, no C compiler at build time),
- an extension was built from another version of its source (the source was edited
  since the build: `<module>.source-sha256`, written by the build, does not match), or
- METER_GATEWAY_PURE_PYTHON=1 is set.

`status` says which, for the log and the status page. This module is imported by the
`events` package before any of them, and is never compiled itself.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

from meter_gateway.gateway.events.compiled_modules import MODULES

__all__ = ["MODULES", "PURE_ENV", "compiled", "decide", "status"]

PURE_ENV = "METER_GATEWAY_PURE_PYTHON"
_PACKAGE = "meter_gateway.gateway.events"
_HERE = Path(__file__).resolve().parent


def _source(here: Path, module: str) -> Path:
    return here.joinpath(*module.split(".")).with_suffix(".py")


def _why_not(here: Path, module: str) -> str | None:
    """None when `module`'s extension is there and built from its source; else why not."""
    py = _source(here, module)
    stem = py.with_suffix("")
    if not any(Path(f"{stem}{sfx}").exists() for sfx in importlib.machinery.EXTENSION_SUFFIXES):
        return (
            "not compiled (a pure-Python install, or an editable one without "
            "METER_GATEWAY_COMPILE=1)"
        )
    try:
        built = py.with_name(py.stem + ".source-sha256").read_text().strip()
        source = hashlib.sha256(py.read_bytes()).hexdigest()
    except OSError:
        return f"{py.name}: no record of the source it was compiled from"
    if built != source:
        return (
            f"{py.name} changed since it was compiled (rebuild: bash scripts/setup.sh, "
            "or pip install the package again, an editable one with METER_GATEWAY_COMPILE=1)"
        )
    return None


def decide(here: Path, environ: Mapping[str, str]) -> str:
    """What runs, for the package folder `here`: "compiled (mypyc)" or "pure Python..."
    with the reason."""
    if environ.get(PURE_ENV) == "1":
        return f"pure Python ({PURE_ENV}=1)"
    for module in MODULES:
        why = _why_not(here, module)
        if why is not None:
            return f"pure Python: {why}"
    return "compiled (mypyc)"


class _SourceFinder(MetaPathFinder):
    """Loads the listed modules from their `.py` files, ahead of any extension."""

    def __init__(self, names: dict[str, Path]) -> None:
        self._names = names

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        py = self._names.get(fullname)
        if py is None:
            return None
        return importlib.util.spec_from_file_location(fullname, py)


status = decide(_HERE, os.environ)
compiled = status.startswith("compiled")
if not compiled and not any(isinstance(f, _SourceFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _SourceFinder({f"{_PACKAGE}.{m}": _source(_HERE, m) for m in MODULES}))
