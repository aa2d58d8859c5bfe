"""Load the configuration: YAML file -> secrets and environment overrides -> pydantic.

Every problem is collected and reported at once, each naming the key path and
where it came from (the file, or the environment variable), so an operator fixes
a config in one pass rather than one error per restart.

Whatever the file holds (any bytes, any YAML), the result is a `Config` or a
`ConfigError`: a bad file must be answered with what to change, never with a
traceback. The checks `run` would otherwise only meet at start-up (the data
directory, the topology file, the TLS files) are made here too, so that what
`check-config` accepts, `run` starts with.
"""

from __future__ import annotations

import contextlib
import csv
import os
import reprlib
import ssl
import stat
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.constructor import ConstructorError
from yaml.error import Mark, MarkedYAMLError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from meter_gateway.config.schema import Config, GatewayConfig, MqttConfig, TopologyConfig, shown
from meter_gateway.config.secrets import (
    describe,
    is_secret_key,
    redact_text,
    scrub,
    scrub_message,
)
from meter_gateway.config.topology import TopologyError, load_topology

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

ENV_PREFIX = "METER_GATEWAY__"
# A configuration is kilobytes; these bounds only stop a wrong file (a log, a
# disk image, /dev/zero) or a crafted one from taking the memory or the time.
MAX_FILE_BYTES = 4 * 1024 * 1024
# The deepest real key is modbus.devices[i].breaker.failures: five levels.
MAX_DEPTH = 32
# Values, as written and after anchors and aliases are expanded ("billion laughs" is
# nine aliases deep); a thousand Modbus devices are some 30 000.
MAX_VALUES = 100_000
# Beyond this many the rest are counted, not listed: they are the same mistake repeated.
MAX_ERRORS = 200

_TAG = "tag:yaml.org,2002:"
_STR, _SEQ, _MAP, _MERGE = f"{_TAG}str", f"{_TAG}seq", f"{_TAG}map", f"{_TAG}merge"
_SCALAR_TAGS = frozenset(f"{_TAG}{t}" for t in ("str", "int", "float", "bool", "null"))

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


def _dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        text = _part(part)
        out += text if isinstance(part, int) or not out else f".{text}"
    return out or "(top level)"


def _short(value: Any) -> str:
    return _repr.repr(value)


def _secret_path(path: KeyPath) -> bool:
    return any(is_secret_key(p) for p in path)


def _shown(path: KeyPath, value: Any) -> str:
    """A value as an error may echo it: a secret's kind and length only, never its
    text; anything else shortened, with URLs' credentials and secrets inside masked."""
    if _secret_path(path):
        return describe(value)
    return _short(scrub(value, path))


def _var(name: str) -> str:
    return name if name.isprintable() else repr(name)


def _tag_name(tag: str) -> str:
    return f"!!{tag[len(_TAG) :]}" if tag.startswith(_TAG) else tag


def _at(mark: Mark | None) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


# -- reading the file ----------------------------------------------------------------------


def _read_text(path: Path, source: str) -> str:
    try:
        with path.open("rb") as f:
            blob = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(source, [f"{source}: cannot read: {exc.strerror or exc}"]) from None
    except ValueError as exc:  # a NUL in the path
        raise ConfigError(source, [f"{source}: cannot read: {exc}"]) from None
    if len(blob) > MAX_FILE_BYTES:
        raise ConfigError(
            source,
            [
                f"{source}: larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB; "
                "a configuration is a few kilobytes: is this the right file?"
            ],
        )
    try:
        return blob.decode("utf-8-sig")  # a byte-order mark, as some editors write, is fine
    except UnicodeDecodeError as exc:
        line = blob.count(b"\n", 0, exc.start) + 1
        if blob.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in blob[:64]:
            was = "it looks like UTF-16"
            how = "iconv -f UTF-16 -t UTF-8"
        else:
            was = "Latin-1 or another legacy encoding?"
            how = "iconv -f LATIN1 -t UTF-8"
        raise ConfigError(
            source,
            [
                f"{source}: line {line}: not UTF-8 text: byte {blob[exc.start]:#04x} at offset "
                f"{exc.start} ({was}); save the file as UTF-8, e.g. with `{how}`"
            ],
        ) from None


# -- YAML ----------------------------------------------------------------------------------


class _Refused(MarkedYAMLError):
    """Valid YAML that no configuration is: too deep, an unknown tag, a duplicate key."""


class _Loader(yaml.SafeLoader):
    """The safe loader, guarded: depth and size are bounded while composing (the
    composer recurses, and parsing is the slow part), and a constructor's bare
    ValueError (`!!float x`) comes back as a YAML error with its line."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.depth = 0
        self.nodes = 0
        self.paths: dict[int, KeyPath] = {}  # node id -> where it is first written
        self.lines: dict[KeyPath, int] = {}  # key path -> line of its value

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self.depth += 1
        self.nodes += 1
        try:
            if self.nodes > MAX_VALUES:  # stop parsing early: it is the slow part
                raise _Refused(
                    None,
                    None,
                    f"more than {MAX_VALUES} values; a configuration needs far fewer",
                    self.peek_event().start_mark,
                )
            if self.depth > MAX_DEPTH:
                raise _Refused(
                    None,
                    None,
                    f"nested more than {MAX_DEPTH} levels deep; a configuration is sections "
                    "of keys, a few levels at most",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:
            where = self.paths.get(id(node))
            prefix = f"{_dotted(where)}: " if where is not None else ""
            # Where the node sits is not always known here: then it may be a secret.
            path: KeyPath = where if where is not None else ("secret",)
            shown_value = _shown(path, node.value)
            why = scrub_message(str(exc), node.value, path)
            raise ConstructorError(
                None,
                None,
                f"{prefix}cannot read {shown_value} as {_tag_name(node.tag)} ({why})",
                node.start_mark,
            ) from None


def _children(node: Node) -> Iterator[Node]:
    if isinstance(node, SequenceNode):
        yield from node.value
    elif isinstance(node, MappingNode):
        for key, value in node.value:
            yield key
            yield value


def _scalar_problem(node: ScalarNode, path: KeyPath = ()) -> str | None:
    if node.tag in _SCALAR_TAGS:
        return None
    if node.tag == f"{_TAG}timestamp":
        return (
            f"{_shown(path, node.value)} is read as a date (a YAML timestamp), which no key "
            "takes; quote it if it is text"
        )
    return (
        f"the YAML tag {_tag_name(node.tag)} is not used in this configuration: values are "
        "text, numbers, true/false, null, lists and mappings"
    )


def _check_nodes(root: Node, loader: _Loader) -> list[tuple[Mark | None, str]]:
    """What the constructor would accept silently or choke on: tags, keys, duplicates."""
    problems: list[tuple[Mark | None, str]] = []

    def bad(node: Node, path: KeyPath, msg: str) -> None:
        problems.append((node.start_mark, f"{_dotted(path)}: {msg}" if path else msg))

    stack: list[tuple[Node, KeyPath]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in loader.paths:
            continue  # an alias: checked where its anchor is
        loader.paths[id(node)] = path
        loader.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, ScalarNode):
            if node.tag == f"{_TAG}value":  # a plain `=`: text, as PyYAML treats it as a key
                node.tag = _STR
            problem = _scalar_problem(node, path)
            if problem:
                bad(node, path, problem)
        elif isinstance(node, SequenceNode):
            if node.tag != _SEQ:
                bad(node, path, f"a list tagged {_tag_name(node.tag)}; drop the tag")
                continue
            stack.extend((child, (*path, i)) for i, child in reversed(list(enumerate(node.value))))
        elif isinstance(node, MappingNode):
            if node.tag != _MAP:
                bad(node, path, f"a mapping tagged {_tag_name(node.tag)}; drop the tag")
                continue
            seen: dict[str, Mark] = {}
            pairs: list[tuple[Node, KeyPath]] = []
            for key, value in node.value:
                if isinstance(key, ScalarNode) and key.tag == _MERGE:
                    pairs.append((value, (*path, "<<")))  # merged keys may be overridden
                    continue
                if isinstance(key, ScalarNode) and key.tag == f"{_TAG}value":
                    key.tag = _STR
                if not isinstance(key, ScalarNode) or key.tag != _STR:
                    what = (
                        f"{_short(key.value)} (read as {_tag_name(key.tag)})"
                        if isinstance(key, ScalarNode)
                        else "a list or a mapping"
                    )
                    bad(key, path, f"a key must be a name, not {what}; quote it if it is text")
                    continue
                if key.value in seen:
                    first = seen[key.value]
                    bad(
                        key,
                        path,
                        f"duplicate key {_short(key.value)} (first at line {first.line + 1}): YAML "
                        "would silently keep only the last; delete one of them",
                    )
                else:
                    seen[key.value] = key.start_mark
                loader.paths.setdefault(id(key), path)
                pairs.append((value, (*path, key.value)))
            stack.extend(reversed(pairs))
    problems.extend(_check_expansion(root, loader))
    return problems


def _check_expansion(root: Node, loader: _Loader) -> list[tuple[Mark | None, str]]:
    """Bound what aliases expand to, in values and in depth, and refuse cycles.

    The node graph is a DAG when aliases are used; everything downstream (pydantic,
    error messages) walks it as a tree, so the tree's size is what must be bounded.
    """
    memo: dict[int, tuple[int, int]] = {}  # id -> (values, depth) of the expanded tree
    path_now: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        nid = id(node)
        if done:
            size, depth = 1, 0
            for child in _children(node):
                csize, cdepth = memo[id(child)]
                size, depth = min(size + csize, MAX_VALUES + 1), max(depth, cdepth)
            depth += 1
            memo[nid] = (size, depth)
            path_now.discard(nid)
            where = loader.paths.get(nid, ())
            prefix = f"{_dotted(where)}: " if where else ""
            if size > MAX_VALUES:
                return [
                    (
                        node.start_mark,
                        f"{prefix}anchors and aliases (&name, *name) expand to more than "
                        f"{MAX_VALUES} values; a configuration needs far fewer",
                    )
                ]
            if depth > MAX_DEPTH:
                return [
                    (
                        node.start_mark,
                        f"{prefix}aliases nest values more than {MAX_DEPTH} levels deep",
                    )
                ]
            continue
        if nid in memo:
            continue
        if nid in path_now:
            where = loader.paths.get(nid, ())
            prefix = f"{_dotted(where)}: " if where else ""
            return [(node.start_mark, f"{prefix}an alias refers to a node that contains it")]
        path_now.add(nid)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node))
    return []


def _marked_error(exc: yaml.YAMLError, text: str) -> str:
    if isinstance(exc, MarkedYAMLError):
        problem = exc.problem or "not valid YAML"
        if exc.context:
            context = exc.context
            if exc.context_mark is not None and exc.context_mark is not exc.problem_mark:
                context += f" at line {exc.context_mark.line + 1}"
            # PyYAML splits one sentence ("expected X" ... "but found Y") in two.
            problem = (
                f"{context} {problem}" if problem.startswith("but ") else f"{problem} ({context})"
            )
        if not isinstance(exc, _Refused | ConstructorError):
            problem = f"not valid YAML: {problem}"
        return f"{_at(exc.problem_mark or exc.context_mark)}{problem}"
    position = getattr(exc, "position", None)  # a ReaderError: a character YAML forbids
    if isinstance(position, int):
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        char = getattr(exc, "character", None)
        shown = f"the character U+{char:04X}" if isinstance(char, int) else "a character"
        return (
            f"line {line}, column {column}: not valid YAML: {shown} is not allowed in a YAML "
            "file (a control character); remove it"
        )
    return f"not valid YAML: {exc}"


def _parse(text: str) -> tuple[Any, list[tuple[Mark | None, str]], dict[KeyPath, int]]:
    """YAML text -> (data, problems, {key path: line}); raises nothing but ConfigError's
    ingredients: every failure comes back as problems."""
    loader: _Loader | None = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return None, [], {}
        problems = _check_nodes(node, loader)
        if problems:
            return None, problems, {}
        return loader.construct_document(node), [], loader.lines
    except yaml.YAMLError as exc:
        return None, [(None, _marked_error(exc, text))], {}
    except RecursionError:  # the guard above should make this unreachable; belt and braces
        return None, [(None, f"nested too deeply (more than {MAX_DEPTH} levels)")], {}
    finally:
        if loader is not None:
            loader.dispose()


def _parse_env_value(raw: str) -> Any:
    # YAML scalars, so `true`, `8086` and `[a, b]` mean what they would in the file;
    # anything that is not YAML the file would accept is the text itself (a password
    # like `@x!` or `a: b` is just that).
    if not raw.strip():
        return raw
    data, problems, _ = _parse(raw)
    return raw if problems else data


# -- environment overrides -----------------------------------------------------------------


class _Overrides:
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
                        f"environment {_var(var)}: names no key (empty name between "
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
                    (path, f"environment {_var(var)}: {_dotted(path)}: the value is not UTF-8 text")
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
                self.errors.append((path, f"environment {_var(var)}: {problem}"))
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
                        return f"{_dotted(walked)} is an empty list: set the whole list"
                    var = ENV_PREFIX + "__".join(str(p).upper() for p in walked)
                    return (
                        f"{_dotted(walked)} is a list of {len(node)} item(s): name one by its "
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
                origin = f"environment {_var(by)}" if by else source
                return (
                    f"cannot set {_dotted(path)}: {_dotted(walked)} is {_shown(walked, child)} "
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
            return f"environment {_var(best[1])}"
        if inside:
            env = f"environment {', '.join(_var(v) for v in inside)}"
            return f"{source} with {env}" if in_file else env
        return source


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


# -- start-up checks -----------------------------------------------------------------------


def _errno_text(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _data_dir_problem(path: Path) -> str | None:
    """Why `run` could not create or write `path`, or None."""
    try:
        target = path if path.is_absolute() else Path.cwd() / path
    except OSError as exc:
        return f"cannot resolve {shown(path)}: {_errno_text(exc)}"
    probe = target
    while True:
        try:
            st = os.stat(probe)
        except (FileNotFoundError, NotADirectoryError):
            if probe.parent == probe:
                return f"cannot create {shown(path)}: no existing parent directory"
            probe = probe.parent
            continue
        except (OSError, ValueError) as exc:
            return f"cannot use {shown(path)}: {_errno_text(exc)} at {shown(probe)}"
        break
    if not stat.S_ISDIR(st.st_mode):
        if probe == target:
            return f"{shown(path)} exists and is not a directory"
        return f"cannot create {shown(path)}: {shown(probe)} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is not writable" if probe == target else f"cannot be created in {shown(probe)}"
        return f"{shown(path)} {what} by this user; fix the permissions or choose another data_dir"
    return None


def _topology_problem(path: Path) -> str | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError) as exc:
        return f"cannot read {shown(path)}: {_errno_text(exc)}"
    if not stat.S_ISREG(st.st_mode):
        return f"{shown(path)} is not a regular file"
    try:
        load_topology(path)
    except TopologyError as exc:
        return str(exc)
    except UnicodeDecodeError as exc:
        return f"{shown(path)} is not UTF-8 text (byte offset {exc.start}); save it as UTF-8"
    except (OSError, ValueError, csv.Error) as exc:
        return f"{shown(path)}: cannot be read as topology CSV: {_errno_text(exc)}"
    return None


def _tls_problems(mqtt: MqttConfig) -> list[tuple[KeyPath, str]]:
    """Load the files the way the MQTT client will when it connects."""
    tls = mqtt.tls
    if not tls.enabled:
        return []
    out: list[tuple[KeyPath, str]] = []
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls.ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(tls.ca_file))
        except (ssl.SSLError, OSError, ValueError) as exc:
            out.append(
                (
                    ("mqtt", "tls", "ca_file"),
                    f"{shown(tls.ca_file)} is not a PEM CA certificate file: {_errno_text(exc)}",
                )
            )
    if tls.cert_file is not None and tls.key_file is not None:

        def no_passphrase() -> bytes:
            # Never the interactive prompt OpenSSL falls back to: a service has no terminal.
            raise ValueError("the key is encrypted; the gateway cannot be given a passphrase")

        try:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file), password=no_passphrase)
        except (ssl.SSLError, OSError, ValueError) as exc:
            out.append(
                (
                    ("mqtt", "tls", "cert_file"),
                    f"{shown(tls.cert_file)} with key {shown(tls.key_file)} cannot be used as a "
                    f"client certificate: {_errno_text(exc)}",
                )
            )
    return out


def _startup_problems(
    gateway: GatewayConfig | None, topology: TopologyConfig | None, mqtt: MqttConfig | None
) -> list[tuple[KeyPath, str]]:
    out: list[tuple[KeyPath, str]] = []
    if gateway is not None:
        problem = _data_dir_problem(gateway.data_dir)
        if problem:
            out.append((("gateway", "data_dir"), problem))
    if topology is not None and topology.file is not None:
        problem = _topology_problem(topology.file)
        if problem:
            out.append((("topology", "file"), problem))
    if mqtt is not None:
        out.extend(_tls_problems(mqtt))
    return out


def _section(model: type[Any], data: dict[str, Any], key: str) -> Any:
    """A section validated on its own, for the start-up checks when another one is bad."""
    with contextlib.suppress(Exception):
        return model.model_validate(data.get(key) or {})
    return None


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
                f"{_short(redact_text(str(exc)))} "
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
        text = _read_text(Path(path), source)
        data, problems, lines = _parse(text)
        if problems:
            problems.sort(key=lambda p: (p[0].line, p[0].column) if p[0] else (-1, -1))
            raise ConfigError(
                source, _capped(source, [f"{source}: {_at(m)}{msg}" for m, msg in problems])
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
    overrides = _Overrides(env)
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
        errors.append(f"{origin}: {_dotted(key_path)}: {msg}" + (f" (line {line})" if line else ""))

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
            got = "" if err["type"] == "missing" or whole else f" (got {_shown(key_path, value)})"
            # A secret's value never appears, not even inside the validator's message.
            report(key_path, f"{scrub_message(msg, value, key_path)}{got}")

    if cfg is not None:
        startup = _startup_problems(cfg.gateway, cfg.topology, cfg.mqtt)
    else:  # the sections that did validate are still worth checking
        startup = _startup_problems(
            _section(GatewayConfig, data, "gateway"),
            _section(TopologyConfig, data, "topology"),
            _section(MqttConfig, data, "mqtt"),
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
