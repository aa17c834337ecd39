"""End to end: `heimdall run` as a subprocess -> SUB socket -> schema-valid messages, honest ellipses, /metrics."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from streamer.tools.calibrate_ellipses import CHI2_95
from streamer.core.geodesy import Origin, geodetic_to_enu_m, mahalanobis_sq
from tests.helpers.daemon import (check_localization_schema, collect_messages, default_receivers, reproducible_receivers,
                                  running_daemon)


@pytest.mark.slow
def test_daemon_publishes_honest_localizations_truth_status_and_metrics(tmp_path):
    overrides = {"receivers": reproducible_receivers(), "output": {"status_interval_s": 0.5}}
    with running_daemon(tmp_path, overrides=overrides) as d:
        got = collect_messages(d.pub_endpoint, n_loc=60, timeout_s=150)
        metrics_text = urllib.request.urlopen(d.metrics_url, timeout=5).read().decode()
    locs, truths = got["loc"], got["truth"]
    print(f"{len(locs)} localizations, {len(truths)} truth, {len(got['status'])} status messages")
    assert len(locs) >= 50, f"only {len(locs)} localizations"
    assert truths and got["status"], "no truth or status messages"
    for msg in locs:
        check_localization_schema(msg)
    seqs = [m["seq"] for m in locs]
    assert seqs == sorted(seqs)
    # Truth is published for every window's midpoint: score each localization against it.
    truth_at = {t["t_ns"]: t for t in truths}
    inside: dict[str, list[bool]] = {}
    for msg in locs:
        t_mid = (msg["t_start_ns"] + msg["t_end_ns"]) // 2
        truth = truth_at.get(t_mid)
        if truth is None:
            continue
        for est in [msg, *msg["alternatives"]]:  # the primary (the model) and the physics posterior beside it
            origin = Origin(est["lat"], est["lon"], 0.0)
            delta = geodetic_to_enu_m(truth["lat"], truth["lon"], 0.0, origin)[:2]
            inside.setdefault(est["estimator"], []).append(mahalanobis_sq(delta, est["cov_en_m2"]) <= CHI2_95)
    assert set(inside) == {"onnx", "physics"}
    for estimator, hits in inside.items():
        coverage = float(np.mean(hits))
        print(f"{estimator}: 95 % ellipse covered the truth in {coverage:.2f} of {len(hits)} windows")
        assert len(hits) >= 50
        assert coverage >= 0.88, f"{estimator}: 95 % ellipse covered the truth in {coverage:.2f} of {len(hits)} windows"
    status = got["status"][-1]
    assert set(status["receivers"]) == {rx["id"] for rx in default_receivers()}
    documented = set(re.findall(r"^\| `(heimdall_[a-z_]+)`", Path("docs/metrics.md").read_text(), flags=re.M))
    exposed = set(re.findall(r"^# TYPE (heimdall_[a-z_]+)", metrics_text, flags=re.M))
    assert documented, "docs/metrics.md lists no series"
    missing = {name for name in documented if not any(name.startswith(e) or e.startswith(name) for e in exposed)}
    assert not missing, f"documented but not exposed: {sorted(missing)}"


def test_daemon_stops_cleanly_on_sigterm(tmp_path):
    with running_daemon(tmp_path) as d:
        assert d.pub_endpoint.startswith("tcp://127.0.0.1:")
    # running_daemon asserts exit code 0 within its stop timeout (2 s)
    assert d.proc.returncode == 0
