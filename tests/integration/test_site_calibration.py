"""A site's ellipse calibration from the daemon's own output: `heimdall run` on a simulated network,
`heimdall listen --topic "" --json` recording localizations and truth, `heimdall calibrate-ellipses` on the file."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from streamer.config import load
from streamer.core.geodesy import Origin, geodetic_to_enu_m, mahalanobis_sq
from tests.helpers.daemon import ROOT, reproducible_receivers, running_daemon
from tests.helpers.edges import STEADY_TRANSMITTER

N_MESSAGES = 100  # loc + truth + status: about 45 windows


@pytest.mark.slow
def test_the_ellipse_factors_are_fitted_from_a_recorded_run_and_written_to_the_config(tmp_path):
    run = tmp_path / "run.jsonl"
    overrides = {"receivers": reproducible_receivers(), "simulator": STEADY_TRANSMITTER}
    with running_daemon(tmp_path, overrides=overrides) as daemon, open(run, "w") as out:
        listen = subprocess.run([sys.executable, "-m", "streamer", "listen", daemon.pub_endpoint, "--topic", "", "--json",
                                 "--count", str(N_MESSAGES)], cwd=ROOT, stdout=out, timeout=120)  # fmt: skip
        assert listen.returncode == 0
    calibrated = tmp_path / "calibrated.toml"
    done = subprocess.run([sys.executable, "-m", "streamer", "calibrate-ellipses", "-c", str(daemon.config_path), str(run),
                           "--out", str(calibrated), "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report["estimators"]) == {"onnx", "physics"} and report["written"] == str(calibrated)

    # The same factor from the messages, each residual taken in the estimate's own ENU frame as test_daemon does
    # (the command uses the network's, the frame of cov_en_m2: over ~200 km the two differ by about 1 degree).
    messages = [json.loads(line) for line in run.read_text().splitlines()]
    truth_at = {m["t_ns"]: m for m in messages if m["topic"] == "truth"}
    m2: dict[str, list[float]] = {}
    for loc in (m for m in messages if m["topic"] == "loc"):
        truth = truth_at.get((loc["t_start_ns"] + loc["t_end_ns"]) // 2)
        if truth is None or not truth["keyed"]:
            continue
        for est in [loc, *loc["alternatives"]]:
            delta = geodetic_to_enu_m(truth["lat"], truth["lon"], 0.0, Origin(est["lat"], est["lon"], 0.0))[:2]
            m2.setdefault(est["estimator"], []).append(mahalanobis_sq(delta, est["cov_en_m2"]))
    written = load(calibrated).estimator
    for name, value in (("onnx", written.model_covariance_scale), ("physics", written.physics.covariance_scale)):
        fit = report["estimators"][name]
        print(f"{name}: {fit['n']} windows, cov68/cov95 {fit['cov68']:.2f}/{fit['cov95']:.2f}, factor {fit['factor']:.3f}")
        assert fit["n"] == len(m2[name]) >= 30 and fit["skipped"] == 0
        assert fit["applied_min"] == fit["applied_max"] == 1.0  # the messages say which factor they carry
        assert fit["factor"] == pytest.approx(np.mean(m2[name]) / 2, rel=1e-2)
        assert value == round(fit["factor"], 4)
