"""Load the configuration: YAML file -> secrets and environment overrides -> pydantic.

Every problem is collected and reported at once, each naming the key path and
where it came from (the file, or the environment variable), so an operator fixes
a config in one pass rather than one error per restart.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from config.schema import Config

__all__ = ["ENV_PREFIX", "ConfigError", "load_config"]

ENV_PREFIX = "METER_GATEWAY__"


class ConfigError(Exception):
    """The configuration cannot be used; `errors` lists every problem found."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: {len(errors)} error(s):\n" + "\n".join(errors))


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("function-") or part in {"before", "after"}:
            continue  # pydantic's validator frames, not keys
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _env_overrides(env: Mapping[str, str]) -> dict[tuple[str, ...], tuple[str, Any]]:
    """`METER_GATEWAY__STORAGE__TOKEN=x` -> {("storage", "token"): (var, "x")}."""
    out: dict[tuple[str, ...], tuple[str, Any]] = {}
    for var, raw in env.items():
        if not var.startswith(ENV_PREFIX):
            continue
        path = tuple(p.lower() for p in var[len(ENV_PREFIX) :].split("__") if p)
        if not path:
            continue
        # YAML scalars, so `true`, `8086` and `[a, b]` mean what they would in the file.
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        out[path] = (var, value)
    return out


def _apply(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = data
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read, override and validate; raise ConfigError listing every problem."""
    env = os.environ if env is None else env
    source = str(path) if path is not None else "(defaults)"
    data: Any = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(source, [f"{source}: cannot read: {exc.strerror}"]) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError(source, [f"{source}: {where}not valid YAML: {problem}"]) from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(source, [f"{source}: the top level must be a mapping of sections"])

    overrides = _env_overrides(env)
    for key_path, (_, value) in overrides.items():
        _apply(data, key_path, value)

    # Relative paths in the file (a Modbus `map:`) mean: next to the config file.
    context = {"config_dir": Path(path).resolve().parent} if path is not None else None
    try:
        return Config.model_validate(data, context=context)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            key = _loc(loc)
            origin = source
            for key_path, (var, _) in overrides.items():
                if tuple(str(p) for p in loc[: len(key_path)]) == key_path:
                    origin = f"environment {var}"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; see config/example.yaml)"
                errors.append(f"{origin}: {key}: {msg}")
                continue
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            got = "" if err["type"] == "missing" else f" (got {_short(err.get('input'))})"
            errors.append(f"{origin}: {key}: {msg}{got}")
        raise ConfigError(source, errors) from None
