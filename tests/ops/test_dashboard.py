"""config/grafana/heimdall.json: a well-formed Grafana dashboard whose every query uses only series and labels
that streamer.daemon.metrics registers. (Whether each query returns data from a live daemon is checked against a
real Prometheus in tests/integration/test_prometheus.py.)

The PromQL scanner is tests/helpers/promql.py and the dashboard reader tests/helpers/dashboard.py, shared with
the alert rule and Prometheus tests.
"""

from __future__ import annotations

import re

from tests.helpers.dashboard import (
    load_dashboard,
    panels,
    substitute,
    targets,
    template_variables,
    variable_values,
)
from tests.helpers.metrics_doc import documented_series, exposed_series
from tests.helpers.promql import label_names, metric_names


def labels_of(series: str, documented: dict[str, tuple[str, tuple[str, ...]]]) -> set[str]:
    """Labels a sample name can carry: its family's documented labels (+ ``le`` on buckets)."""
    for name, (kind, labels) in documented.items():
        base = name.removesuffix("_total").removesuffix("_info")
        if series in (name, base + "_created") or (kind == "histogram" and series in (base + "_bucket", base + "_sum", base + "_count")):
            return set(labels) | ({"le"} if series.endswith("_bucket") else set())
    raise KeyError(series)


def test_top_level_structure():
    d = load_dashboard()
    assert 36 <= d["schemaVersion"] <= 41
    assert d["uid"] == "heimdall-streamer" and d["title"]
    assert d["id"] is None, "an exported dashboard must not pin a database id"
    assert d["time"]["from"].startswith("now-")


def test_datasource_is_a_variable():
    variables = template_variables(load_dashboard())
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for name in ("instance", "receiver", "channel"):
        v = variables[name]
        assert v["type"] == "query" and v["datasource"]["uid"] == "${datasource}"
        assert v["includeAll"] and v["multi"]
        selector, label = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", v["definition"]).groups()
        (series,) = metric_names(selector)
        assert series in exposed_series() and label in labels_of(series, documented_series()) | {"instance"}


def test_every_panel_queries_through_the_datasource_variable():
    d = load_dashboard()
    for panel in panels(d):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), f"{panel['title']}: duplicate refId"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_panel_ids_unique_and_grid_fits():
    d = load_dashboard()
    ids = [p["id"] for p in d["panels"]] + [p["id"] for r in d["panels"] for p in r.get("panels", [])]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in d["panels"]:
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel at ({x}, {y})"
                cells.add((x, y))


def test_queries_use_only_registered_series_and_their_labels():
    documented = documented_series()
    known = exposed_series()
    for title, target in targets(load_dashboard()):
        expr = target["expr"]
        used = metric_names(expr)
        assert used, f"{title}: no metric in {expr!r}"
        assert used <= known, f"{title}: {sorted(used - known)} not registered by streamer.daemon.metrics"
        allowed = {"job", "instance"}.union(*(labels_of(s, documented) for s in used))
        assert label_names(expr) <= allowed, f"{title}: labels {sorted(label_names(expr) - allowed)} not on {sorted(used)}"


def test_queries_use_only_defined_variables():
    d = load_dashboard()
    defined = set(template_variables(d)) | {"__rate_interval", "__interval", "__range"}
    for title, target in targets(d):
        used = set(re.findall(r"\$\{?(\w+)", target["expr"]))
        assert used <= defined, f"{title}: undefined variables {sorted(used - defined)}"
        assert "$" not in substitute(target["expr"], variable_values()), title


def test_required_views_are_there():
    used = set().union(*(metric_names(t["expr"]) for _, t in targets(load_dashboard())))
    required = {
        "heimdall_localizations_published_total",  # localizations per second
        "heimdall_processing_seconds_bucket",  # processing latency p50/p99
        "heimdall_localization_age_seconds_bucket",  # end-to-end latency p50/p99
        "heimdall_windows_total",  # windows by outcome
        "heimdall_model_info",  # provider / model
        "heimdall_receiver_up",
        "heimdall_sample_rate_hertz",
        "heimdall_samples_dropped_total",
        "heimdall_bad_frames_total",
        "heimdall_received_power_dbm",
        "heimdall_clock_offset_seconds",
        "heimdall_last_block_age_seconds",
        "heimdall_buffer_fill_ratio",
        # band watch
        "heimdall_emissions_started_total",
        "heimdall_emissions_active",
        "heimdall_emissions_dropped_short_total",
        "heimdall_emission_localizations_total",
        "heimdall_channel_masked_windows_total",
        "heimdall_channel_lone_carrier_windows_total",
    }
    assert required <= used, f"missing views: {sorted(required - used)}"
    exprs = [t["expr"] for _, t in targets(load_dashboard())]
    for series in ("heimdall_processing_seconds_bucket", "heimdall_localization_age_seconds_bucket"):
        quantiles = {q for e in exprs if series in e for q in re.findall(r"histogram_quantile\(([\d.]+)", e)}
        assert {"0.5", "0.99"} <= quantiles, f"{series}: p50 and p99 expected, got {sorted(quantiles)}"


def test_scanner_rejects_unknown_series():
    """The checks above can fail: a misspelt series or label is caught."""
    documented = documented_series()
    assert metric_names('rate(heimdall_samples_recieved_total{receiver=~"$receiver"}[5m])') - exposed_series()
    assert label_names('sum by (reciever) (heimdall_receiver_up)') - labels_of("heimdall_receiver_up", documented)


def test_band_watch_queries_follow_the_channel_variable():
    """Every query on a series labelled by channel (band watch) narrows it to the selected channels."""
    documented = documented_series()
    band_series = {s for s in exposed_series() if "channel" in labels_of(s, documented)}
    band_targets = [(title, t["expr"]) for title, t in targets(load_dashboard()) if metric_names(t["expr"]) & band_series]
    assert band_targets, "no band watch panel"
    for title, expr in band_targets:
        assert 'channel=~"$channel"' in expr, f"{title}: {expr} ignores the channel variable"
