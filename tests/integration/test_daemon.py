"""End to end: `heimdall run` as a subprocess -> SUB socket -> schema-valid messages, honest ellipses, /metrics."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from streamer.geodesy import Origin, geodetic_to_enu_m, mahalanobis_sq
from tests.helpers.daemon import default_receivers, running_daemon

LOC_KEYS = {"v", "seq", "t_start_ns", "t_end_ns", "lat", "lon", "cov_en_m2", "ellipse", "estimator", "receivers",
            "rx_power_dbm", "model", "latency_ms"}
CHI2_95 = 5.991


#: A fixed start makes the simulated world (track, keying, shadowing, noise) the same on every run: the
#: windows of one 40 s stretch of track are strongly correlated, so a coverage figure over them is only
#: repeatable, not a calibration measurement (that is tests/streamer/test_physics.py and MODEL_CARD.md).
START_NS = 1_790_000_000_000_000_000


def reproducible_receivers(duration_s: float | None = None):
    rxs = default_receivers()
    for rx in rxs:
        rx["realtime"] = True  # paced: unpaced receivers in threads drift apart and get masked late
        rx["start_ns"] = START_NS
        rx["sample_rate_hz"] = 48_000.0  # cheaper to simulate; the channelizer still mixes and resamples (2:1)
        rx["center_freq_hz"] = 145.49e6
        if duration_s is not None:
            rx["duration_s"] = duration_s
    return rxs


def collect(endpoint: str, *, n_loc: int, timeout_s: float) -> dict[str, list[dict]]:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    got: dict[str, list[dict]] = {"loc": [], "truth": [], "status": []}
    end = time.monotonic() + timeout_s
    try:
        while time.monotonic() < end and len(got["loc"]) < n_loc:
            if sock.poll(200):
                topic, body = sock.recv_multipart()
                got.setdefault(topic.decode(), []).append(msgpack.unpackb(body, raw=False))
    finally:
        sock.close()
    return got


def check_localization_schema(msg: dict) -> None:
    assert LOC_KEYS <= set(msg), LOC_KEYS - set(msg)
    assert msg["v"] == 1 and msg["estimator"] in ("physics", "onnx")
    assert msg["t_end_ns"] > msg["t_start_ns"]
    assert -90 <= msg["lat"] <= 90 and -180 <= msg["lon"] <= 180
    cov = np.array(msg["cov_en_m2"])
    assert cov.shape == (2, 2) and np.allclose(cov, cov.T) and np.all(np.linalg.eigvalsh(cov) > 0)
    e = msg["ellipse"]
    assert e["p"] == pytest.approx(0.95)
    assert e["semi_major_m"] >= e["semi_minor_m"] > 0 and 0 <= e["azimuth_deg"] < 180
    assert e["semi_major_m"] == pytest.approx(2.4477 * np.sqrt(np.linalg.eigvalsh(cov)[1]), rel=1e-3)
    assert set(msg["rx_power_dbm"]) == set(msg["receivers"]) and len(msg["receivers"]) >= 3
    assert {"name", "version", "sha256"} <= set(msg["model"])
    assert msg["latency_ms"]["processing"] > 0


@pytest.mark.slow
def test_daemon_publishes_honest_localizations_truth_status_and_metrics(tmp_path):
    overrides = {"receivers": reproducible_receivers(), "output": {"status_interval_s": 0.5}}
    with running_daemon(tmp_path, overrides=overrides) as d:
        got = collect(d.pub_endpoint, n_loc=60, timeout_s=150)
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
