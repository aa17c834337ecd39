"""docs/metrics.md's series tables and the series ``streamer.daemon.metrics.Metrics`` registers, read for the
tests that check the docs, the Grafana dashboard, the alert rules and a live Prometheus against each other."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from streamer.daemon.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
METRICS_DOC = ROOT / "docs" / "metrics.md"

#: exposition suffix of a family's main sample, by type (a counter "x" is exposed as "x_total").
_MAIN_SUFFIX = {"counter": "_total", "info": "_info", "gauge": "", "histogram": ""}
#: every sample name a family of this type exposes, by suffix.
_ALL_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "info": ("_info",),
}
_ROW = re.compile(r"^\| `(heimdall_\w+)` \| (\w+) \| ([^|]*) \|", re.MULTILINE)


def documented_series() -> dict[str, tuple[str, tuple[str, ...]]]:
    """docs/metrics.md's series tables: exposed name -> (type, label names)."""
    rows = {}
    for name, kind, labels in _ROW.findall(METRICS_DOC.read_text()):
        assert name not in rows, f"{name} documented twice"
        rows[name] = (kind, tuple(re.findall(r"`(\w+)`", labels)))
    return rows


def exposed_name(family_name: str, kind: str) -> str:
    return family_name + _MAIN_SUFFIX[kind]


def registered_families(metrics: Metrics | None = None) -> dict[str, str]:
    """Every family ``Metrics`` registers: exposed name -> type."""
    metrics = metrics or Metrics(CollectorRegistry())
    return {exposed_name(f.name, f.type): f.type for f in metrics.registry.collect()}


def exposed_series() -> set[str]:
    """Every sample name a scrape of the daemon can contain (``x_total``, ``x_bucket``, ``x_info``, ...)."""
    metrics = Metrics(CollectorRegistry())
    return {f.name + suffix for f in metrics.registry.collect() for suffix in _ALL_SUFFIXES[f.type]}
