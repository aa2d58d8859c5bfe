"""Metric and label names used by PromQL expressions (alert rules, dashboard panels).

Not a PromQL parser: enough of the grammar to find every metric name an expression
selects (strings, label matchers, ranges and grouping clauses removed; a name followed
by `(` is a function or an aggregation) and the label names it relies on.
"""

from __future__ import annotations

import re

KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
    "group_right", "offset", "bool", "inf", "nan", "atan2",
}  # fmt: skip
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_NAME = re.compile(r"(?<![\w.$:])[a-zA-Z_:][a-zA-Z0-9_:]*")
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)")


def metric_names(expr: str) -> set[str]:
    e = _STRING.sub('""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = _GROUPING.sub(" ", e)
    names = set()
    for m in _NAME.finditer(e):
        word = m.group()
        if word in KEYWORDS or e[m.end() :].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def grouping_labels(expr: str) -> set[str]:
    """Label names in by/without/on/ignoring/group_* clauses."""
    e = _STRING.sub('""', expr)
    out: set[str] = set()
    for m in _GROUPING.finditer(e):
        out.update(x.strip() for x in m.group(2).split(",") if x.strip())
    return out


def matcher_labels(expr: str) -> dict[str, set[str]]:
    """Metric name -> label names its selectors match on."""
    out: dict[str, set[str]] = {}
    for m in _SELECTOR.finditer(expr):
        labels = {x.group(1) for x in _MATCHER.finditer(_STRING.sub('""', m.group(2)))}
        out.setdefault(m.group(1), set()).update(labels)
    return out
