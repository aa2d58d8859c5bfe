"""The import contract: the layers of `meter_gateway` depend one way only.

From the bottom: the adapters (`protocols`, `storage`; neither imports the other),
then `config` (assembles the adapters' models into the file's schema), then
`gateway`, then `simulators`, which may use everything. The root package imports
none of them. A dependency that points upward ties a lower layer to code that
changes for other reasons, and sooner or later makes an import cycle; this test
finds it from the source (the AST), so an import inside a function or through
`importlib.import_module("...")` counts as much as one at the top of a module.

The folders were top-level import names before they became subpackages: a bare
`import gateway` or `from config.schema import ...` only works by accident of the
working directory, so it is refused everywhere. And the `packages` list in
pyproject.toml must name every folder the package holds, or an installed copy
lacks it.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "meter_gateway"

# Layer (= folder and subpackage name) -> the layers it may import, itself included.
ALLOWED: dict[str, frozenset[str]] = {
    "protocols": frozenset({"protocols"}),
    "storage": frozenset({"storage"}),
    "config": frozenset({"config", "protocols", "storage"}),
    "gateway": frozenset({"gateway", "config", "protocols", "storage"}),
    "simulators": frozenset({"simulators", "gateway", "config", "protocols", "storage"}),
}
# Rooms inside a layer, with what they may not import (a dotted prefix; third-party
# packages too). The durable log is the floor the stores stand on: it imports nothing
# of theirs. The status page reads the gateway through a narrow Protocol, never the
# gateway itself (that was an import cycle). The wire libraries stay in their adapters:
# paho in protocols/mqtt, pymodbus in protocols/modbus, urllib's HTTP client in storage.
ROOMS: dict[str, tuple[str, ...]] = {
    "storage/log": (
        "meter_gateway.storage.influxdb",
        "meter_gateway.storage.spool",
        "meter_gateway.storage.webhook",
        "meter_gateway.storage.deadletter",
        "meter_gateway.storage.lineprotocol",
    ),
    "gateway/status": ("meter_gateway.gateway.app", "meter_gateway.gateway.cli"),
    "gateway": ("paho", "pymodbus", "urllib.request"),
    "config": ("paho", "pymodbus", "urllib.request"),
}
# The root package's own folder: it imports no layer.
ROOT_FOLDER = "meter_gateway"
# Where a bare import of an old top-level name is looked for.
SCANNED = ("gateway", "protocols", "storage", "config", "simulators", "tests", "bench")
# Folders without an `__init__.py` that are packages all the same: their files ship.
DATA_FOLDERS = ("protocols/modbus/maps", "simulators/scenarios")


# -- the checker -----------------------------------------------------------------------------


def _python_files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*.py")):
        inner = path.relative_to(folder).parts
        if not any(part.startswith(".") or part == "__pycache__" for part in inner):
            yield path


def _is_import_module(func: ast.expr) -> bool:
    """`importlib.import_module`, `import_module` (imported by name), `__import__`."""
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module"
    return isinstance(func, ast.Name) and func.id in {"import_module", "__import__"}


def imported_modules(
    path: Path, package: str | None = None, *, names: bool = False
) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in `path`, wherever it is in the file.

    `package` is the dotted name of the package the file is in; with it, relative
    imports are resolved too, else they are skipped (they cannot leave the package
    a test or script is in).
    """
    tree = ast.parse(path.read_bytes(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if package is None:
                    continue
                parts = package.split(".")
                base = parts[: len(parts) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from meter_gateway import gateway` imports the subpackage; `names`: any
            # `from a.b import c` may be the module a.b.c.
            if module and (names or "." not in module):
                found.extend(
                    (node.lineno, f"{module}.{alias.name}")
                    for alias in node.names
                    if alias.name != "*"
                )
        elif (
            isinstance(node, ast.Call)
            and _is_import_module(node.func)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    yield from sorted(found)


def _package_of(root: Path, path: Path, prefix: str) -> str:
    """The dotted package a file of folder `prefix` sits in."""
    inner = path.relative_to(root).parts[1:-1]
    return ".".join([prefix, *inner])


def layer_violations(
    root: Path,
    allowed: Mapping[str, Iterable[str]] = ALLOWED,
    package: str = PACKAGE,
    root_folder: str = ROOT_FOLDER,
) -> list[str]:
    """`file:line: layer -> module` for each import of a layer the importing layer may not use."""
    out: list[str] = []
    layers = {layer: (f"{package}.{layer}", set(ok)) for layer, ok in allowed.items()}
    layers[root_folder] = (package, set())
    for layer, (prefix, ok) in layers.items():
        folder = root / layer
        if not folder.is_dir():
            continue
        for path in _python_files(folder):
            for line, module in imported_modules(path, _package_of(root, path, prefix)):
                parts = module.split(".")
                if parts[0] != package or len(parts) < 2 or parts[1] not in allowed:
                    continue
                if parts[1] not in ok:
                    out.append(f"{path.relative_to(root)}:{line}: {layer} -> {module}")
    return out


def room_violations(
    root: Path, rooms: Mapping[str, Iterable[str]] = ROOMS, package: str = PACKAGE
) -> list[str]:
    """`file:line: room -> module` for each import a room's rule forbids."""
    out: list[str] = []
    for room, forbidden in rooms.items():
        folder = root / room
        if not folder.is_dir():
            continue
        prefixes = tuple(forbidden)
        for path in _python_files(folder):
            layer_package = ".".join([package, *path.relative_to(root).parts[:-1]])
            said: set[int] = set()  # one report a line: `from a import b` is a and a.b
            for line, module in imported_modules(path, layer_package, names=True):
                if line in said:
                    continue
                if any(module == p or module.startswith(p + ".") for p in prefixes):
                    said.add(line)
                    out.append(f"{path.relative_to(root)}:{line}: {room} -> {module}")
    return out


def bare_imports(
    root: Path, names: Iterable[str] = ALLOWED, folders: Iterable[str] = SCANNED
) -> list[str]:
    """`file:line: module` for each import of an old top-level name (`import gateway`)."""
    names = set(names)
    out: list[str] = []
    for folder in folders:
        if not (root / folder).is_dir():
            continue
        for path in _python_files(root / folder):
            for line, module in imported_modules(path):
                if module.split(".")[0] in names:
                    out.append(f"{path.relative_to(root)}:{line}: {module}")
    return out


# -- the contract ----------------------------------------------------------------------------


def test_every_layer_imports_only_the_layers_below_it() -> None:
    violations = layer_violations(ROOT)
    assert not violations, "imports against the layering:\n" + "\n".join(violations)


def test_every_room_keeps_to_its_rule() -> None:
    violations = room_violations(ROOT)
    assert not violations, "imports a room may not make:\n" + "\n".join(violations)


def test_nothing_imports_the_folders_by_their_old_top_level_names() -> None:
    found = bare_imports(ROOT)
    assert not found, f"import through `{PACKAGE}.` instead:\n" + "\n".join(found)


def test_the_packages_in_pyproject_are_exactly_the_folders() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "setuptools"
    ]
    listed: list[str] = setuptools["packages"]
    package_dir: dict[str, str] = setuptools["package-dir"]
    assert len(listed) == len(set(listed)), "a package is listed twice"

    folders = {PACKAGE: ROOT / ROOT_FOLDER}
    folders |= {name: ROOT / folder for name, folder in package_dir.items()}
    assert set(package_dir) == {f"{PACKAGE}.{layer}" for layer in ALLOWED}, (
        "package-dir maps something other than the layers"
    )
    data = {ROOT / folder for folder in DATA_FOLDERS}
    missing_data = [str(d.relative_to(ROOT)) for d in data if not d.is_dir()]
    assert not missing_data, f"data folders that do not exist: {missing_data}"

    expected: set[str] = set()
    unlisted_files: list[str] = []
    for name, top in folders.items():
        for folder in [top, *sorted(p for p in top.rglob("*") if p.is_dir())]:
            rel = folder.relative_to(top).parts
            if any(part.startswith(".") or part == "__pycache__" for part in rel):
                continue
            dotted = ".".join([name, *rel])
            if (folder / "__init__.py").is_file() or folder in data:
                expected.add(dotted)
            elif any(p.is_file() for p in folder.iterdir()):
                # Files in a folder that is neither: an installed copy would lack them.
                unlisted_files.append(str(folder.relative_to(ROOT)))
    assert not unlisted_files, (
        f"folders with files that are neither packages nor in DATA_FOLDERS: {unlisted_files}"
    )
    missing, extra = sorted(expected - set(listed)), sorted(set(listed) - expected)
    assert not missing, f"packages missing from pyproject.toml [tool.setuptools]: {missing}"
    assert not extra, f"listed in pyproject.toml [tool.setuptools], no such package: {extra}"


# -- the checker works -----------------------------------------------------------------------


def _tree(root: Path, files: Mapping[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_the_checker_reports_an_upward_import_in_any_form(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "meter_gateway/__init__.py": "from meter_gateway import config\n",
            "protocols/__init__.py": "",
            "protocols/mqtt/__init__.py": "",
            "protocols/mqtt/source.py": (
                "import logging\n"
                "from meter_gateway.protocols.formats import FORMATS\n"  # its own layer
                "from meter_gateway.config.schema import MqttConfig\n"
                "log = logging.getLogger('meter_gateway.gateway')\n"  # a logger name: no import
                "def late():\n"
                "    import meter_gateway.gateway.app\n"
                "    from ...storage import lineprotocol\n"
                "    import importlib\n"
                "    return importlib.import_module('meter_gateway.simulators.demo')\n"
            ),
            "storage/lineprotocol.py": "from meter_gateway import gateway, storage\n",
            "config/schema.py": (
                "from meter_gateway.protocols.mqtt.config import MqttConfig\n"
                "from meter_gateway.storage.influxdb.config import StorageConfig\n"
            ),
            "gateway/app.py": "from meter_gateway.config.schema import Config\n",
            "simulators/demo.py": "from meter_gateway.gateway.app import Gateway\n",
        },
    )
    assert layer_violations(root) == [
        "protocols/mqtt/source.py:3: protocols -> meter_gateway.config.schema",
        "protocols/mqtt/source.py:6: protocols -> meter_gateway.gateway.app",
        "protocols/mqtt/source.py:7: protocols -> meter_gateway.storage",
        "protocols/mqtt/source.py:9: protocols -> meter_gateway.simulators.demo",
        "storage/lineprotocol.py:1: storage -> meter_gateway.gateway",
        "meter_gateway/__init__.py:1: meter_gateway -> meter_gateway.config",
    ]


def test_the_checker_reports_the_old_top_level_names(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "tests/test_x.py": (
                "import gateway.cli\n"
                "from config.schema import Config\n"
                "import configparser\n"  # only a name that starts the same
                "from meter_gateway.storage import lineprotocol\n"
            ),
            "bench/b.py": "import importlib\nimportlib.import_module('simulators.demo')\n",
        },
    )
    assert bare_imports(root) == [
        "tests/test_x.py:1: gateway.cli",
        "tests/test_x.py:2: config.schema",
        "bench/b.py:2: simulators.demo",
    ]


def test_the_checker_reports_a_room_breaking_its_rule(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "storage/log/commit.py": (
                "from meter_gateway.storage.log.segment import Record\n"  # its own room
                "def late():\n"
                "    from ..spool import Spool\n"
            ),
            "gateway/status/page.py": (
                "from meter_gateway.gateway.status.view import GatewayView\n"
                "from meter_gateway.gateway import app\n"
            ),
            "gateway/events/delivery.py": "import paho.mqtt.client as paho\n",
            "protocols/mqtt/client.py": "import paho.mqtt.client as paho\n",  # its place
        },
    )
    assert room_violations(root) == [
        "storage/log/commit.py:3: storage/log -> meter_gateway.storage.spool",
        "gateway/status/page.py:2: gateway/status -> meter_gateway.gateway.app",
        "gateway/events/delivery.py:1: gateway -> paho.mqtt.client",
    ]
