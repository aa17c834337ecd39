"""The per-frame activity decision (``DetectionRule.frame_activity``) and what the estimators make of it: powers over
the on-air frames, the model's ``frame_mask`` input, the detection rule recorded in a model's metadata and checked
against the daemon's config."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest

from models import shipped_model_path
from models.train.render import render_windows
from models.train.traffic import Keying
from receivers.simulator import SimulatedWorld
from streamer.config import load
from streamer.core.errors import ModelMismatchError
from streamer.dsp.detection import DetectionRule
from streamer.dsp.features import FeatureSpec, mel_frames_dbm
from streamer.estimators.contract import check_model, read_metadata, write_metadata
from streamer.estimators.onnx import OnnxSession, fill_with_active_frames

SPEC = FeatureSpec()
RULE = DetectionRule(channel_bandwidth_hz=12_500.0, snr_db=6.0)
T_REF_NS = 1_767_225_600 * 10**9


def frames_keyed_over(intervals_s, power_dbm=40.0, seed=3):
    """dBm mel frames [R, M, T] of one window of the default network, transmitter keyed over ``intervals_s``."""
    world = SimulatedWorld(load())
    iq = render_windows(world, [[500.0, -800.0]], [power_dbm], [T_REF_NS], sample_rate_hz=SPEC.sample_rate_hz,
                        n_samples=SPEC.n_samples, window_ids=[seed], keyings=[Keying("partial", tuple(intervals_s))])
    return mel_frames_dbm(iq[0], SPEC, world.calibration_db)


def frame_covers(frame: int, start_s: float, end_s: float) -> float:
    """The share of frame ``frame``'s n_fft samples that fall in [start_s, end_s)."""
    first = frame * SPEC.hop / SPEC.sample_rate_hz
    last = first + SPEC.n_fft / SPEC.sample_rate_hz
    return max(0.0, min(last, end_s) - max(first, start_s)) / (last - first)


def test_active_frames_are_those_the_transmission_covers():
    frames = frames_keyed_over([(0.30, 1.5)])
    active = RULE.frame_activity(frames, SPEC)
    assert active.shape == (SPEC.n_frames,)
    covered = np.array([frame_covers(t, 0.30, 1.5) for t in range(SPEC.n_frames)])
    assert active[covered > 0.5].all()  # a frame half covered by a strong signal is on
    assert not active[covered == 0.0].any()  # nothing before key-up
    assert 0 < active.sum() < SPEC.n_frames


def test_power_over_the_active_frames_is_the_on_air_power():
    """Averaged over the whole window, a transmitter keyed for its last 30 % reads about 5 dB low at every receiver;
    over its active frames it reads its on-air power (the fully keyed window's), within a fraction of a dB."""
    full = RULE.apply(frames_keyed_over([(-1.0, 1.5)]), SPEC)
    partial_frames = frames_keyed_over([(0.35, 1.5)])
    whole = RULE.apply(partial_frames, SPEC)
    on_air = RULE.apply(partial_frames, SPEC, active=RULE.frame_activity(partial_frames, SPEC))
    strong = full.snr_db > 15.0
    assert strong.sum() >= 3
    assert np.median(full.signal_dbm[strong] - whole.signal_dbm[strong]) > 3.0
    np.testing.assert_allclose(on_air.signal_dbm[strong], full.signal_dbm[strong], atol=1.0)
    np.testing.assert_array_equal(on_air.heard, full.heard)


def test_a_window_without_activity_is_measured_over_all_its_frames():
    rng = np.random.default_rng(0)
    frames = rng.normal(-125.0, 0.5, (3, SPEC.n_mels, SPEC.n_frames))
    active = RULE.frame_activity(frames, SPEC)
    assert not active.any()
    np.testing.assert_array_equal(RULE.apply(frames, SPEC, active=active).signal_dbm, RULE.apply(frames, SPEC).signal_dbm)


def test_absent_receivers_frames_do_not_count():
    frames = np.full((2, SPEC.n_mels, SPEC.n_frames), -125.0)
    frames[1, SPEC.n_mels // 2 - 1 : SPEC.n_mels // 2 + 1, :10] = -60.0  # a loud in-channel tone at receiver 1
    assert RULE.frame_activity(frames, SPEC)[:10].all()
    assert not RULE.frame_activity(frames, SPEC, present=np.array([True, False])).any()
    with pytest.raises(ValueError, match=r"\[..., R, M, T\]"):
        RULE.frame_activity(frames[0], SPEC)


def test_older_models_see_the_active_frames_repeated():
    features = np.arange(2 * 3 * 1 * 5, dtype=np.float32).reshape(2, 3, 1, 5)
    active = np.array([[True, True, True, True, True], [False, False, True, False, True]])
    out = fill_with_active_frames(features, active)
    np.testing.assert_array_equal(out[0], features[0])
    np.testing.assert_array_equal(out[1], features[1][..., [2, 4, 2, 4, 2]])


def with_detection(tmp_path, rule):
    """A copy of the shipped model whose metadata records ``rule``."""
    proto = onnx.load(str(shipped_model_path()))
    write_metadata(proto, dataclasses.replace(read_metadata(proto), detection=rule))
    path = tmp_path / "model.onnx"
    onnx.save_model(proto, str(path))
    return path


def test_metadata_records_the_rule_and_a_differing_config_is_refused_naming_both(tmp_path):
    path = with_detection(tmp_path, RULE)
    assert check_model(path, expected_detection=RULE).detection == RULE
    stricter = DetectionRule(channel_bandwidth_hz=12_500.0, snr_db=8.0)
    with pytest.raises(ModelMismatchError, match=r"detection\.snr_db: model 6, config 8 \(pipeline\.detection_snr_db\)"):
        check_model(path, expected_detection=stricter)
    with pytest.raises(ModelMismatchError, match=r"detection\.snr_db: model 6, config 8"):
        OnnxSession(path, expected_detection=stricter)


def test_bad_detection_metadata_is_refused(tmp_path):
    proto = onnx.load(str(shipped_model_path()))
    props = {p.key: p.value for p in proto.metadata_props}
    import json

    meta = json.loads(props["heimdall"])
    meta["detection"] = {"channel_bandwidth_hz": -1.0, "snr_db": 6.0}
    onnx.helper.set_model_props(proto, {**props, "heimdall": json.dumps(meta)})
    path = tmp_path / "bad.onnx"
    onnx.save_model(proto, str(path))
    with pytest.raises(ModelMismatchError) as info:
        check_model(path)
    assert "detection.channel_bandwidth_hz: expected a finite number > 0, got -1.0" in str(info.value)
    assert "detection.noise_band_fraction: required key is missing" in str(info.value)


def test_check_and_run_refuse_a_config_whose_rule_differs_from_the_models(tmp_path, capsys, monkeypatch):
    from tests.helpers.verdicts import assert_both_refuse, merged, write_config

    model = with_detection(tmp_path, RULE)
    doc = merged({"estimator": {"kind": "onnx", "model": str(model)}, "pipeline": {"detection_snr_db": 9.0}})
    path = write_config(tmp_path, doc)
    assert_both_refuse(path, capsys, monkeypatch, "estimator.model", "breaks the model contract")
    from streamer import cli

    assert cli.main(["check", "-c", str(path)]) == 2
    assert "detection.snr_db: model 6, config 9 (pipeline.detection_snr_db)" in capsys.readouterr().err
