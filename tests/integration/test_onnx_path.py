"""The ONNX path through the real pipeline, with a model whose outputs are known functions of its inputs:
the daemon must feed it the daemon's own features (normalised as the metadata says), the presence mask and
the receivers' ENU positions in km, and turn its ENU mean and covariance into the right lat/lon,
``cov_en_m2`` and 95 % ellipse. Expected values are computed here independently (pymap3d, numpy)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pymap3d
import pytest

from receivers.base import ReceiverContext, TallyDropCounter
from receivers.simulator import SimulatedReceiver
from streamer import config as config_mod
from streamer.core.errors import ModelMismatchError
from streamer.estimators.build import build_estimators
from streamer.dsp.features import FeatureSpec, mel_frames_dbm
from streamer.daemon.metrics import Metrics
from streamer.daemon.pipeline import Pipeline
from tests.helpers.onnx_models import OFFSET_DB, SCALE_DB, known_ellipse_scale, known_model, known_outputs, save

START_NS = 1_790_000_000_000_000_000
MAX_RX = 8


def onnx_config(model_path, drop_receiver: str | None = None):
    base = config_mod.load()
    rxs = []
    for rx in base.receivers:
        opts = dataclasses.replace(rx.options, realtime=False, sample_rate_hz=48_000.0, center_freq_hz=145.49e6,
                                   start_ns=START_NS, duration_s=3.0)
        rxs.append(dataclasses.replace(rx, options=opts))
    est = dataclasses.replace(base.estimator, kind="onnx", model=str(model_path), providers=("CPUExecutionProvider",))
    return dataclasses.replace(base, receivers=tuple(rxs), estimator=est)


def run_pipeline(cfg, skip: dict[str, tuple[int, int]] | None = None):
    """Feed every simulated receiver's blocks through a Pipeline; capture windows and published payloads."""
    sent, windows = [], []
    clock = {"ns": START_NS}
    pipeline = Pipeline(cfg, metrics=Metrics(), send=lambda t, m: sent.append((t, m)) or True,
                        estimators=build_estimators(cfg), clock_ns=lambda: clock["ns"])
    real_poll = pipeline.aligner.poll

    def spy(host_ns):
        out = real_poll(host_ns)
        windows.extend(out)
        return out

    pipeline.aligner.poll = spy
    ctx = ReceiverContext(cfg, TallyDropCounter())
    streams = [list(SimulatedReceiver.from_config(rx, ctx)) for rx in cfg.receivers]
    for k in range(max(len(s) for s in streams)):
        for rx, blocks in zip(cfg.receivers, streams):
            lo, hi = (skip or {}).get(rx.id, (0, 0))
            if k < len(blocks) and not lo <= k < hi:
                clock["ns"] = blocks[k].t0_ns
                pipeline.push(blocks[k], arrival_ns=blocks[k].t0_ns)
        pipeline.poll()
    return pipeline, windows, [m for t, m in sent if t == "loc"]


def expected_for(window, cfg, origin):
    spec = cfg.features
    cal = np.array([rx.calibration_db for rx in cfg.receivers])
    frames = mel_frames_dbm(window.samples, spec, cal)
    feats = np.zeros((1, MAX_RX, spec.n_mels, spec.n_frames), np.float32)
    enu_km = np.zeros((1, MAX_RX, 3), np.float32)
    mask = np.zeros((1, MAX_RX), np.float32)
    n = len(cfg.receivers)
    feats[0, :n] = np.where(window.present[:, None, None], (frames - OFFSET_DB) / SCALE_DB, 0.0)
    for i, rx in enumerate(cfg.receivers):
        enu_km[0, i] = np.array(pymap3d.geodetic2enu(rx.lat, rx.lon, rx.alt_m, *origin)) / 1000.0
    mask[0, :n] = window.present
    pos_km, cov_km2 = known_outputs(feats, enu_km, mask)
    lat, lon, _ = pymap3d.enu2geodetic(pos_km[0, 0] * 1000.0, pos_km[0, 1] * 1000.0, 0.0, *origin)
    return lat, lon, cov_km2[0] * 1e6


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return save(known_model(FeatureSpec(), max_receivers=MAX_RX), tmp_path_factory.mktemp("model"))


def test_daemon_feeds_the_model_its_features_mask_positions_and_converts_its_answer(model_path):
    cfg = onnx_config(model_path)
    origin = (np.mean([r.lat for r in cfg.receivers]), np.mean([r.lon for r in cfg.receivers]),
              np.mean([r.alt_m for r in cfg.receivers]))
    # torino misses 0.5 s in the middle: windows with it masked must show the mask in the model's answer.
    pipeline, windows, locs = run_pipeline(cfg, skip={"torino": (20, 30)})
    assert len(locs) >= 3
    by_start = {w.t_start_ns: w for w in windows}
    masked_seen = False
    for msg in locs:
        window = by_start[msg["t_start_ns"]]
        masked_seen |= not window.present.all()
        lat, lon, cov_m2 = expected_for(window, cfg, origin)
        assert msg["estimator"] == "onnx"
        assert msg["lat"] == pytest.approx(lat, abs=1e-7) and msg["lon"] == pytest.approx(lon, abs=1e-7)
        np.testing.assert_allclose(msg["cov_en_m2"], cov_m2, rtol=1e-4)
        eigvals, eigvecs = np.linalg.eigh(cov_m2)
        k95 = math.sqrt(-2 * math.log(0.05))
        e = msg["ellipse"]
        assert e["semi_major_m"] == pytest.approx(k95 * math.sqrt(eigvals[1]), rel=1e-4)
        assert e["semi_minor_m"] == pytest.approx(k95 * math.sqrt(eigvals[0]), rel=1e-4)
        major = eigvecs[:, 1]
        assert e["azimuth_deg"] == pytest.approx(math.degrees(math.atan2(major[0], major[1])) % 180.0, abs=1e-3)
        assert msg["model"]["name"] == "known-function" and len(msg["model"]["sha256"]) == 64
        assert [a["estimator"] for a in msg["alternatives"]] == ["physics"]
    assert masked_seen, "no localization had a masked receiver: the mask path was not exercised"


def test_a_model_that_breaks_the_contract_is_refused_before_start(tmp_path):
    broken = save(known_model(FeatureSpec(), max_receivers=MAX_RX, rename={"rx_mask": "mask"}), tmp_path)
    from streamer.core.errors import ModelMismatchError

    with pytest.raises(ModelMismatchError, match="rx_mask"):
        build_estimators(onnx_config(broken))


def test_a_model_with_too_few_receiver_slots_is_refused_before_start(tmp_path):
    small = save(known_model(FeatureSpec(), max_receivers=4), tmp_path)
    from streamer.core.errors import ModelMismatchError

    with pytest.raises(ModelMismatchError, match="max_receivers"):
        build_estimators(onnx_config(small))


def test_the_daemon_publishes_the_ellipses_a_model_gives_with_its_ellipse_scale(tmp_path):
    """A model with the contract's optional ``ellipse_scale`` output: each published ellipse is the covariance's,
    that many standard deviations long (68 % then 95 %), and the 95 % one is ``ellipse``."""
    path = save(known_model(FeatureSpec(), max_receivers=MAX_RX, ellipse=True), tmp_path)
    cfg = onnx_config(path)
    _, windows, locs = run_pipeline(cfg)
    assert len(locs) >= 3
    by_start = {w.t_start_ns: w for w in windows}
    for msg in locs:
        mask = np.zeros((1, MAX_RX))
        mask[0, : len(cfg.receivers)] = by_start[msg["t_start_ns"]].present
        scales = known_ellipse_scale(mask)[0]
        major = math.sqrt(np.linalg.eigvalsh(np.array(msg["cov_en_m2"]))[1])
        assert [e["p"] for e in msg["ellipses"]] == [0.68, 0.95]
        for e, k in zip(msg["ellipses"], scales):
            assert e["scale"] == pytest.approx(k, rel=1e-5)
            assert e["semi_major_m"] == pytest.approx(k * major, rel=1e-4)
        assert msg["ellipse"] == msg["ellipses"][1]
        physics = msg["alternatives"][0]
        assert physics["estimator"] == "physics" and 0.5 < physics["ellipses"][0]["scale"] < physics["ellipse"]["scale"]
