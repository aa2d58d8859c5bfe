"""Environment overrides: `METER_GATEWAY__SECTION__KEY=value` sets section.key over
the file, its value read as YAML would read it; an error names the variable."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meter_gateway.config.errors import KeyPath, dotted, echoed, var_name
from meter_gateway.config.yamlfile import parse

__all__ = ["ENV_PREFIX", "Overrides"]

ENV_PREFIX = "METER_GATEWAY__"


def _parse_env_value(raw: str) -> Any:
    # YAML scalars, so `true`, `8086` and `[a, b]` mean what they would in the file;
    # anything that is not YAML the file would accept is the text itself (a password
    # like `@x!` or `a: b` is just that).
    if not raw.strip():
        return raw
    data, problems, _ = parse(raw)
    return raw if problems else data


class Overrides:
    """`METER_GATEWAY__STORAGE__TOKEN=x` sets storage.token; errors name the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.applied: list[tuple[KeyPath, str]] = []  # (key path, variable)
        self.errors: list[tuple[KeyPath, str]] = []  # (key path, message with variable)
        self.pending: list[tuple[tuple[str, ...], str, Any]] = []
        # Variables whose YAML reading is a number or true/false: a key that takes text
        # gets the text instead (a numeric password), see `Config` validation below.
        self.raw: dict[tuple[str, ...], str] = {}
        for var in sorted(v for v in env if v.startswith(ENV_PREFIX)):
            parts = var[len(ENV_PREFIX) :].split("__")
            if not all(parts):
                self.errors.append(
                    (
                        (),
                        f"environment {var_name(var)}: names no key (empty name between "
                        "`__`); use METER_GATEWAY__SECTION__KEY, e.g. METER_GATEWAY__MQTT__HOST",
                    )
                )
                continue
            raw = env[var]
            path = tuple(p.lower() for p in parts)
            try:
                raw.encode("utf-8")
            except UnicodeEncodeError:
                self.errors.append(
                    (
                        path,
                        f"environment {var_name(var)}: {dotted(path)}: the value is not UTF-8 text",
                    )
                )
                continue
            value = _parse_env_value(raw)
            if isinstance(value, int | float):  # bool is an int
                self.raw[path] = raw
            self.pending.append((path, var, value))
        # A whole section first, then its keys, so the more specific variable wins.
        self.pending.sort(key=lambda p: (len(p[0]), p[1]))

    def apply(self, data: dict[str, Any], source: str) -> None:
        for path, var, value in self.pending:
            problem = self._apply(data, path, value, source)
            if problem:
                self.errors.append((path, f"environment {var_name(var)}: {problem}"))
            else:
                self.applied.append((path, var))

    def use_text(self, data: dict[str, Any], paths: set[tuple[str, ...]], source: str) -> bool:
        """Set these keys to their variables' text; False when there is none to set."""
        todo = paths & set(self.raw)
        for path in todo:
            self._apply(data, path, self.raw[path], source)
        return bool(todo)

    def _set_by(self, path: KeyPath) -> str | None:
        for applied, var in reversed(self.applied):
            if tuple(str(p) for p in path[: len(applied)]) == tuple(str(p) for p in applied):
                return var
        return None

    def _apply(self, data: dict[str, Any], path: tuple[str, ...], value: Any, source: str) -> str:
        node: Any = data
        walked: KeyPath = ()
        for i, key in enumerate(path):
            last = i == len(path) - 1
            if isinstance(node, dict):
                slot: str | int = key
                child = node.get(key)
            else:  # a list
                if not (key.isascii() and key.isdigit() and len(key) < 10) or int(key) >= len(node):
                    if not node:
                        return f"{dotted(walked)} is an empty list: set the whole list"
                    var = ENV_PREFIX + "__".join(str(p).upper() for p in walked)
                    return (
                        f"{dotted(walked)} is a list of {len(node)} item(s): name one by its "
                        f"index 0-{len(node) - 1} ({var}__0__KEY), or set the whole list"
                    )
                slot = int(key)
                child = node[slot]
            walked = (*walked, slot)
            if last:
                node[slot] = value
                return ""
            # Copied on the way down: an alias in the file shares this value with
            # another key, which the override must not change too.
            if child is None:
                child = {}
            elif isinstance(child, dict):
                child = dict(child)
            elif isinstance(child, list):
                child = list(child)
            else:
                by = self._set_by(walked)
                origin = f"environment {var_name(by)}" if by else source
                return (
                    f"cannot set {dotted(path)}: {dotted(walked)} is {echoed(walked, child)} "
                    f"in {origin}, not a section"
                )
            node[slot] = child
            node = child
        return ""

    def origin(self, loc: KeyPath, source: str, in_file: bool) -> str:
        """Who set the value an error is about: the most specific variable, else the file."""
        loc_s = tuple(str(p) for p in loc)
        best: tuple[int, str] | None = None
        inside: list[str] = []
        for path, var in self.applied:
            path_s = tuple(str(p) for p in path)
            if loc_s[: len(path_s)] == path_s:
                if best is None or len(path_s) >= best[0]:
                    best = (len(path_s), var)
            elif path_s[: len(loc_s)] == loc_s:
                inside.append(var)  # a rule across keys, one of which came from a variable
        if best is not None:
            return f"environment {var_name(best[1])}"
        if inside:
            env = f"environment {', '.join(var_name(v) for v in inside)}"
            return f"{source} with {env}" if in_file else env
        return source
