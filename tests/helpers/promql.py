"""A small PromQL scanner: the metric names and label names an expression uses, for the tests that check the
Grafana dashboard and the alert rules against the registered series."""

from __future__ import annotations

import re

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_SELECTOR = re.compile(r"\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless",
             "inf", "nan", "Inf", "NaN"}


def _without_strings(expr: str) -> str:
    return _STRING.sub('""', expr)


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords, labels and literals left out).

    >>> sorted(metric_names('sum by (le) (rate(x_bucket{a=~"$v"}[$__rate_interval])) / on (a) y'))
    ['x_bucket', 'y']
    """
    text = _RANGE.sub(" ", _GROUPING.sub(" ", _SELECTOR.sub(" ", _without_strings(expr))))
    return {m.group(1) for m in _IDENT.finditer(text) if not m.group(2) and m.group(1) not in _KEYWORDS}


def label_names(expr: str) -> set[str]:
    """Label names used in selectors and in by/without/on/ignoring/group_* clauses.

    >>> sorted(label_names('sum by (le, receiver) (x{stage="pipeline"})'))
    ['le', 'receiver', 'stage']
    """
    text = _without_strings(expr)
    names = {m.group(1) for sel in _SELECTOR.findall(text) for m in _MATCHER.finditer(sel)}
    for _, inner in _GROUPING.findall(text):
        names |= {label.strip() for label in inner.split(",") if label.strip()}
    return names
