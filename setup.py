"""Builds meter-gateway; compiles the event detectors' per-reading path with mypyc.

Everything else about the package is in pyproject.toml. The modules listed in
gateway/events/compiled_modules.py run once per reading on the ingest path; compiled
(mypyc, from the same type-annotated Python sources) they cost a fraction of the
interpreter's time. The `.py` files ship beside the extensions and are the fallback:
`meter_gateway.gateway.events.compiled` loads them instead when an extension is missing,
was built from a different source (`<module>.source-sha256`, written here next to each
extension) or when METER_GATEWAY_PURE_PYTHON=1 is set.

What compiles:

- a wheel (`pip install .`, `pip wheel`, `python -m build`): always;
- an editable install (`pip install -e`): only with METER_GATEWAY_COMPILE=1, which
  scripts/setup.sh sets, so that the development venv and CI test the compiled build.
  Without it the sources run and the install takes seconds. setuptools builds an
  editable install's extensions in place (PEP 660: it sets build_ext's `editable_mode`,
  `setup.py build_ext --inplace` its `inplace`): that is how one is told apart;
- nothing with METER_GATEWAY_PURE_PYTHON=1 at build time, or without mypyc. Without a
  working C compiler the build warns and installs the sources alone.

mypyc runs when build_ext runs, not when this file is read: setuptools reads it for the
metadata too (egg_info, dist_info), and finalizes build_ext there for its file list.
"""

from __future__ import annotations

import hashlib
import os
import runpy
import shutil
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
PACKAGE = "meter_gateway"
PURE_ENV = "METER_GATEWAY_PURE_PYTHON"
COMPILE_ENV = "METER_GATEWAY_COMPILE"
# The one list, relative to meter_gateway.gateway.events; run on its own (the package
# cannot be imported while it is being built).
_LISTED = runpy.run_path(str(ROOT / "gateway" / "events" / "compiled_modules.py"))["MODULES"]
COMPILED = tuple(f"gateway.events.{m}" for m in _LISTED)
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


def _compiles() -> bool:
    """Whether this build compiles (an editable install is decided when build_ext runs)."""
    if os.environ.get(PURE_ENV) == "1":
        return False
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        print("setup: mypyc not available; installing pure Python", file=sys.stderr)
        return False
    return True


def _placeholders() -> list[Extension]:
    """One per compiled module, naming its source. With them setuptools knows that the
    wheel is platform-specific and that build_ext is to run; build_ext puts mypyc's
    extensions in their place when it runs."""
    return [Extension(f"{PACKAGE}.{m}", [str(_source(m).relative_to(ROOT))]) for m in COMPILED]


def _mypycify() -> list[Extension]:
    from mypyc.build import mypycify

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
    """build_ext that compiles with mypyc (an editable install only when asked), and
    records, next to each compiled module, the hash of its source."""

    def run(self) -> None:
        if (self.editable_mode or self.inplace) and os.environ.get(COMPILE_ENV) != "1":
            print(
                f"setup: an editable install: not compiled, the sources run ({COMPILE_ENV}=1"
                " compiles them)",
                file=sys.stderr,
            )
            self.extensions = []
            return
        editable_mode, inplace = self.editable_mode, self.inplace
        self.distribution.ext_modules = _mypycify()
        # setuptools prepares each extension (its output file, ...) when it finalizes the
        # command, which it did for the placeholders: again, for mypyc's. Starting over
        # forgets what the calling command set (editable_mode; bdist_wheel's inplace).
        self.distribution.reinitialize_command(self)
        self.editable_mode, self.inplace = editable_mode, inplace
        self.ensure_finalized()
        super().run()
        for module in COMPILED:
            name = f"{PACKAGE}.{module}"
            out = Path(self.get_ext_fullpath(name))
            if not out.exists():
                continue  # not built (an optional extension that failed): the source runs
            digest = hashlib.sha256(_source(module).read_bytes()).hexdigest()
            out.with_name(module.rsplit(".", 1)[-1] + ".source-sha256").write_text(digest + "\n")


if _compiles():
    setup(ext_modules=_placeholders(), cmdclass={"build_ext": BuildExt})
else:
    setup()
