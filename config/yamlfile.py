"""The configuration file as YAML: read with bounds, parsed by PyYAML's safe loader
guarded against what no configuration is (too big, too deep, too many values after
aliases expand, tags, non-text keys, duplicate keys), every failure returned as a
problem with its line rather than raised."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.error import Mark, MarkedYAMLError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from meter_gateway.config.errors import ConfigError, KeyPath, at_mark, dotted, echoed, short
from meter_gateway.config.secrets import scrub_message

__all__ = ["MAX_DEPTH", "MAX_FILE_BYTES", "MAX_VALUES", "parse", "read_text"]

# A configuration is kilobytes; these bounds only stop a wrong file (a log, a
# disk image, /dev/zero) or a crafted one from taking the memory or the time.
MAX_FILE_BYTES = 4 * 1024 * 1024
# The deepest real key is modbus.devices[i].breaker.failures: five levels.
MAX_DEPTH = 32
# Values, as written and after anchors and aliases are expanded ("billion laughs" is
# nine aliases deep); a thousand Modbus devices are some 30 000.
MAX_VALUES = 100_000

_TAG = "tag:yaml.org,2002:"
_STR, _SEQ, _MAP, _MERGE = f"{_TAG}str", f"{_TAG}seq", f"{_TAG}map", f"{_TAG}merge"
_SCALAR_TAGS = frozenset(f"{_TAG}{t}" for t in ("str", "int", "float", "bool", "null"))


def _tag_name(tag: str) -> str:
    return f"!!{tag[len(_TAG) :]}" if tag.startswith(_TAG) else tag


# -- reading the file ----------------------------------------------------------------------


def read_text(path: Path, source: str) -> str:
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
            prefix = f"{dotted(where)}: " if where is not None else ""
            # Where the node sits is not always known here: then it may be a secret.
            path: KeyPath = where if where is not None else ("secret",)
            shown_value = echoed(path, node.value)
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
            f"{echoed(path, node.value)} is read as a date (a YAML timestamp), which no key "
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
        problems.append((node.start_mark, f"{dotted(path)}: {msg}" if path else msg))

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
                        f"{short(key.value)} (read as {_tag_name(key.tag)})"
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
                        f"duplicate key {short(key.value)} (first at line {first.line + 1}): YAML "
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
            prefix = f"{dotted(where)}: " if where else ""
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
            prefix = f"{dotted(where)}: " if where else ""
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
        return f"{at_mark(exc.problem_mark or exc.context_mark)}{problem}"
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


def parse(text: str) -> tuple[Any, list[tuple[Mark | None, str]], dict[KeyPath, int]]:
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
