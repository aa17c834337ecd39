"""docs/metrics.md and streamer/daemon/metrics.py agree: every registered series is documented with its type and
labels, and every documented series is registered."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from streamer.daemon.metrics import Metrics
from tests.helpers.metrics_doc import METRICS_DOC, documented_series, exposed_name, exposed_series, registered_families

ROOT = Path(__file__).resolve().parents[1]


def _collectors(metrics: Metrics) -> dict[str, MetricWrapperBase]:
    """Exposed name -> the collector object on ``metrics``."""
    out = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            (family,) = value.describe()
            out[exposed_name(family.name, family.type)] = value
    return out


def _sample_labels(metrics: Metrics) -> dict[str, set[str]]:
    """Exposed name -> label names on its samples (``le`` of histogram buckets left out)."""
    labels: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        name = exposed_name(family.name, family.type)
        labels[name] = set()
        for sample in family.samples:
            labels[name] |= set(sample.labels) - {"le"}
    return labels


def test_every_registered_series_is_documented_and_vice_versa():
    documented = set(documented_series())
    registered = set(registered_families())
    assert registered - documented == set(), f"registered in streamer/daemon/metrics.py but not in docs/metrics.md: {sorted(registered - documented)}"
    assert documented - registered == set(), f"in docs/metrics.md but not registered: {sorted(documented - registered)}"


def test_documented_types_match():
    documented = documented_series()
    for name, kind in registered_families().items():
        assert documented[name][0] == kind, f"{name}: docs say {documented[name][0]}, registered as {kind}"


def test_documented_labels_match_the_code():
    """Create one child per labelled series with exactly the documented label names, then read the labels back."""
    metrics = Metrics(CollectorRegistry())
    documented = documented_series()
    for name, collector in _collectors(metrics).items():
        kind, labels = documented[name]
        if kind == "info":
            continue  # an Info's labels are set at run time: test_model_info_labels
        if labels:
            try:
                collector.labels(**{label: "x" for label in labels})
            except ValueError as exc:
                pytest.fail(f"{name}: documented labels {labels} do not match the code: {exc}")
    for name, labels in _sample_labels(metrics).items():
        if documented[name][0] != "info":
            assert labels == set(documented[name][1]), f"{name}: code has labels {sorted(labels)}, docs {documented[name][1]}"


def test_model_info_labels():
    """heimdall_model_info as the pipeline sets it for the embedded default config."""
    from streamer.config import load
    from streamer.estimators.build import build_estimators
    from streamer.daemon.pipeline import Pipeline

    config = load(None)
    metrics = Metrics(CollectorRegistry())
    Pipeline(config, metrics=metrics, send=lambda topic, payload: True, estimators=build_estimators(config))
    labels = _sample_labels(metrics)["heimdall_model_info"]
    assert labels == set(documented_series()["heimdall_model_info"][1])


def test_accounting_identity_is_stated():
    text = METRICS_DOC.read_text()
    identity = re.search(r"```\n(heimdall_samples_received_total\n.*?)```", text, re.DOTALL)
    assert identity, "docs/metrics.md: the sample accounting identity block is missing"
    block = " ".join(identity.group(1).split())
    expected = (
        "heimdall_samples_received_total = heimdall_samples_used_total + heimdall_samples_buffered"
        ' + sum by (receiver) (heimdall_samples_dropped_total{stage="pipeline"})'
    )
    assert block == expected


@pytest.mark.parametrize("doc", ["metrics.md", "operations.md"])
def test_docs_name_only_real_series(doc):
    """Every heimdall_* name in the operator docs is one a scrape can contain (catches renames and typos)."""
    names = set(re.findall(r"\bheimdall_[a-z0-9_]+", (ROOT / "docs" / doc).read_text()))
    known = exposed_series() | set(registered_families())  # sample names, and histogram family names
    assert names, doc
    assert names - known == set(), f"docs/{doc} names series that do not exist: {sorted(names - known)}"
