"""Builds meter-gateway; compiles the event detectors' per-reading path with mypyc.

Everything else about the package is in pyproject.toml. The modules in `COMPILED` run
once per reading on the ingest path; compiled (mypyc, from the same type-annotated
Python sources) they cost a fraction of the interpreter's time. The `.py` files ship
beside the extensions and are the fallback: `meter_gateway.gateway.events.compiled`
loads them instead when an extension is missing, was built from a different source
(`<module>.source-sha256`, written here next to each extension) or when
METER_GATEWAY_PURE_PYTHON=1 is set.

METER_GATEWAY_PURE_PYTHON=1 at build time skips the compilation; without a working C
compiler the build warns and installs the sources alone.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
PACKAGE = "meter_gateway"
# Keep in step with meter_gateway.gateway.events.compiled.COMPILED.
COMPILED = (
    "gateway.events.state",
    "gateway.events.engine",
    "gateway.events.detectors.consumption",
)
# The folders that are subpackages of meter_gateway (pyproject's package-dir).
FOLDERS = ("config", "gateway", "protocols", "simulators", "storage")
STAGE = Path("build") / "mypyc-src"


def _source(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def _stage() -> Path:
    """mypy names modules after their folders: a tree where meter_gateway/<folder> is
    each top-level folder (symlinks), so the compiled modules get their real names."""
    stage = ROOT / STAGE
    shutil.rmtree(stage, ignore_errors=True)
    pkg = stage / PACKAGE
    pkg.mkdir(parents=True)
    for f in (ROOT / PACKAGE).iterdir():
        if f.suffix in (".py", ".typed"):
            (pkg / f.name).symlink_to(f)
    for folder in FOLDERS:
        (pkg / folder).symlink_to(ROOT / folder, target_is_directory=True)
    (stage / "mypy.ini").write_text(
        "[mypy]\nignore_missing_imports = True\nfollow_imports = silent\n"
        f"[mypy-{PACKAGE}.*]\nignore_errors = True\n"
        + "".join(f"[mypy-{PACKAGE}.{m}]\nignore_errors = False\n" for m in COMPILED)
    )
    return stage


def _ext_modules() -> list:
    if os.environ.get("METER_GATEWAY_PURE_PYTHON") == "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("setup: mypyc not available; installing pure Python", file=sys.stderr)
        return []
    stage = _stage()
    cwd = os.getcwd()
    os.chdir(stage)
    try:
        paths = [str(Path(PACKAGE, *m.split(".")).with_suffix(".py")) for m in COMPILED]
        exts = mypycify(
            ["--config-file", "mypy.ini", *paths],
            opt_level="3",
            separate=True,
            target_dir=str(ROOT / "build" / "mypyc"),
        )
    finally:
        os.chdir(cwd)
    for ext in exts:
        # No C compiler (or headers): setuptools warns and installs without it, and the
        # sources run (the gateway says so at start). Our own set-up tests that it built.
        ext.optional = True
    return exts


class BuildExt(build_ext):
    """build_ext that records, next to each compiled module, the hash of its source."""

    def run(self) -> None:
        super().run()
        for module in COMPILED:
            name = f"{PACKAGE}.{module}"
            out = Path(self.get_ext_fullpath(name))
            if not out.exists():
                continue  # not built (an optional extension that failed): the source runs
            digest = hashlib.sha256(_source(module).read_bytes()).hexdigest()
            out.with_name(module.rsplit(".", 1)[-1] + ".source-sha256").write_text(digest + "\n")


exts = _ext_modules()
setup(ext_modules=exts, cmdclass={"build_ext": BuildExt} if exts else {})
