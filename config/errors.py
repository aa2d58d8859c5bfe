"""How a configuration problem is reported: `ConfigError`, and how its messages name
a key (`mqtt.tls.ca_file`, `modbus.devices[2]`) and show a value (shortened; a
secret's kind and length only)."""

from __future__ import annotations

import reprlib
from typing import Any

from yaml.error import Mark

from meter_gateway.config.secrets import describe, is_secret_key, scrub

__all__ = ["ConfigError", "KeyPath", "at_mark", "dotted", "echoed", "short", "var_name"]

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60
_repr.maxlevel, _repr.maxlist, _repr.maxdict = 2, 4, 4

KeyPath = tuple[str | int, ...]


class ConfigError(Exception):
    """The configuration cannot be used; `errors` lists every problem found."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: {len(errors)} error(s):\n" + "\n".join(errors))


# -- formatting ----------------------------------------------------------------------------


def _part(part: str | int) -> str:
    if isinstance(part, int):
        return f"[{part}]"
    # A key that would print as something else (a dot, a control character) is quoted.
    if part and part.isprintable() and not any(c in part for c in ".[] "):
        return part
    return repr(part)


def dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        text = _part(part)
        out += text if isinstance(part, int) or not out else f".{text}"
    return out or "(top level)"


def short(value: Any) -> str:
    return _repr.repr(value)


def _secret_path(path: KeyPath) -> bool:
    return any(is_secret_key(p) for p in path)


def echoed(path: KeyPath, value: Any) -> str:
    """A value as an error may echo it: a secret's kind and length only, never its
    text; anything else shortened, with URLs' credentials and secrets inside masked."""
    if _secret_path(path):
        return describe(value)
    return short(scrub(value, path))


def var_name(name: str) -> str:
    return name if name.isprintable() else repr(name)


def at_mark(mark: Mark | None) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
