"""Load the configuration: YAML file -> secrets and environment overrides -> pydantic.

Every problem is collected and reported at once, each naming the key path and
where it came from (the file, or the environment variable), so an operator fixes
a config in one pass rather than one error per restart.

Whatever the file holds (any bytes, any YAML), the result is a `Config` or a
`ConfigError`: a bad file must be answered with what to change, never with a
traceback. The checks `run` would otherwise only meet at start-up (the data
directory, the topology file, the TLS files) are made here too, so that what
`check-config` accepts, `run` starts with.

This module ties the steps together; each is a module of its own: `yamlfile` (the
file read and parsed within bounds), `environment` (the overrides), `preflight` (the
start-up checks), `errors` (`ConfigError` and how its messages show keys and values).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from meter_gateway.config.environment import ENV_PREFIX, Overrides
from meter_gateway.config.errors import ConfigError, KeyPath, at_mark, dotted, echoed, short
from meter_gateway.config.preflight import section, startup_problems
from meter_gateway.config.schema import Config, GatewayConfig, MqttConfig, TopologyConfig
from meter_gateway.config.secrets import redact_text, scrub_message
from meter_gateway.config.yamlfile import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_VALUES,
    parse,
    read_text,
)

__all__ = [
    "ENV_PREFIX",
    "MAX_DEPTH",
    "MAX_ERRORS",
    "MAX_FILE_BYTES",
    "MAX_VALUES",
    "ConfigError",
    "load_config",
    "load_config_or_say",
]

# Beyond this many the rest are counted, not listed: they are the same mistake repeated.
MAX_ERRORS = 200


# -- values no key may hold ----------------------------------------------------------------


def _text_problems(data: Any) -> list[tuple[KeyPath, str]]:
    """NUL characters and unpaired surrogates: no file, host, or secret holds them, and
    the OS or a protocol library would fail on them later with an unrelated error."""
    out: list[tuple[KeyPath, str]] = []
    stack: list[tuple[Any, KeyPath]] = [(data, ())]
    seen: set[int] = set()
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                out.append((path, "contains a NUL character (\\0), which no value may"))
            else:
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as exc:
                    out.append(
                        (
                            path,
                            f"contains {value[exc.start]!r}, an unpaired surrogate (not a "
                            "character); write the character itself",
                        )
                    )
        elif isinstance(value, dict | list):
            if id(value) in seen:
                continue
            seen.add(id(value))
            if isinstance(value, dict):
                for key, child in value.items():
                    if isinstance(key, str) and ("\x00" in key or not key.isprintable()):
                        out.append(((*path, key), "a key with a control character"))
                        continue
                    stack.append((child, (*path, key)))
            else:
                stack.extend((child, (*path, i)) for i, child in enumerate(value))
    return out


# -- the loader ----------------------------------------------------------------------------


def _pydantic_loc(loc: tuple[Any, ...], key_named: bool) -> KeyPath:
    out: list[str | int] = []
    for i, part in enumerate(loc):
        frame = isinstance(part, str) and (
            part.startswith("function-") or part in {"before", "after"}
        )
        if frame and not (key_named and i == len(loc) - 1):
            continue  # pydantic's validator frames, not keys (but an unknown key is a key)
        out.append(part if isinstance(part, int) else str(part))
    return tuple(out)


def load_config_or_say(path: str | Path) -> Config | None:
    """For commands: the configuration, or None after printing every problem to stderr
    with its key path, as `check-config` prints them (the caller exits 2)."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{path}: configuration is not valid ({len(exc.errors)} error(s)):", file=sys.stderr)
        for err in exc.errors:
            print(f"  {err}", file=sys.stderr)
        return None


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read, override and validate; raise ConfigError listing every problem."""
    source = str(path) if path is not None else "(defaults)"
    try:
        return _load(path, os.environ if env is None else env, source)
    except ConfigError:
        raise
    except Exception as exc:  # a bug; still an answer an operator can act on, not a traceback
        raise ConfigError(
            source,
            [
                f"{source}: cannot be checked: {type(exc).__name__}: "
                f"{short(redact_text(str(exc)))} "
                "(an internal error of meter-gateway; please report it with this file)"
            ],
        ) from exc


def _under(path: KeyPath, bad: list[KeyPath]) -> bool:
    path_s = tuple(str(p) for p in path)
    return any(path_s[: len(b)] == tuple(str(p) for p in b) for b in bad)


def _load(path: str | Path | None, env: Mapping[str, str], source: str) -> Config:
    data: Any = {}
    lines: dict[KeyPath, int] = {}
    if path is not None:
        text = read_text(Path(path), source)
        data, problems, lines = parse(text)
        if problems:
            problems.sort(key=lambda p: (p[0].line, p[0].column) if p[0] else (-1, -1))
            raise ConfigError(
                source, _capped(source, [f"{source}: {at_mark(m)}{msg}" for m, msg in problems])
            )
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(
                source,
                [
                    f"{source}: the top level must be a mapping of sections (gateway:, mqtt:, "
                    f"...), not {type(data).__name__}; see config/example.yaml"
                ],
            )

    file_data = data
    data = dict(file_data)  # overrides copy what they change: the file's data stays as read
    overrides = Overrides(env)
    overrides.apply(data, source)
    errors: list[str] = [msg for _, msg in overrides.errors]

    def in_file(key_path: KeyPath) -> bool:
        if path is None:
            return False
        node: Any = file_data
        for part in key_path:
            found = (isinstance(node, dict) and part in node) or (
                isinstance(node, list) and isinstance(part, int) and part < len(node)
            )
            if not found:
                return False
            node = node[part]
        return node is not None or not key_path

    def report(key_path: KeyPath, msg: str) -> None:
        origin = overrides.origin(key_path, source, in_file(key_path))
        line = lines.get(key_path) if origin == source else None
        errors.append(f"{origin}: {dotted(key_path)}: {msg}" + (f" (line {line})" if line else ""))

    # Values no key may hold; what pydantic would add about the same keys is noise.
    bad: list[KeyPath] = []
    for key_path, msg in _text_problems(data):
        report(key_path, msg)
        bad.append(key_path)

    # Relative paths in the file (a Modbus `map:`) mean: next to the config file.
    context = None
    if path is not None:
        try:
            context = {"config_dir": Path(path).resolve().parent}
        except (OSError, RuntimeError):
            context = {"config_dir": Path(path).absolute().parent}

    cfg: Config | None = None
    failed: list[Any] = []
    try:
        cfg = Config.model_validate(data, context=context)
    except ValidationError as exc:
        failed = exc.errors()
        wants_text = {
            tuple(str(p) for p in _pydantic_loc(tuple(e["loc"]), False))
            for e in failed
            if e["type"] == "string_type"
        }
        if overrides.use_text(data, wants_text, source):
            try:
                cfg, failed = Config.model_validate(data, context=context), []
            except ValidationError as exc2:
                failed = exc2.errors()
    if failed:
        for err in failed:
            key_path = _pydantic_loc(tuple(err["loc"]), err["type"] == "extra_forbidden")
            if _under(key_path, bad):
                continue
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                report(key_path, "unknown key (check the spelling; see config/example.yaml)")
                continue
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            value = err.get("input")
            # A rule across keys is about the section: the whole section is no help.
            whole = err["type"] == "value_error" and isinstance(value, dict)
            got = "" if err["type"] == "missing" or whole else f" (got {echoed(key_path, value)})"
            # A secret's value never appears, not even inside the validator's message.
            report(key_path, f"{scrub_message(msg, value, key_path)}{got}")

    if cfg is not None:
        startup = startup_problems(cfg.gateway, cfg.topology, cfg.mqtt)
    else:  # the sections that did validate are still worth checking
        startup = startup_problems(
            section(GatewayConfig, data, "gateway"),
            section(TopologyConfig, data, "topology"),
            section(MqttConfig, data, "mqtt"),
        )
    for key_path, msg in startup:
        if not _under(key_path, bad):
            report(key_path, msg)

    if errors:
        raise ConfigError(source, _capped(source, errors))
    assert cfg is not None
    return cfg


def _capped(source: str, errors: list[str]) -> list[str]:
    # One line per error, each starting with its source: a validator's message may
    # hold a line break, which would leave the rest of it nameless.
    errors = ["; ".join(e.splitlines()) for e in errors[:MAX_ERRORS]] + errors[MAX_ERRORS:]
    if len(errors) <= MAX_ERRORS:
        return errors
    rest = len(errors) - MAX_ERRORS
    return [*errors[:MAX_ERRORS], f"{source}: ... and {rest} more error(s) like these"]
