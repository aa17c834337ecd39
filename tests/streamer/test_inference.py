"""OnnxSession against known-function models: what it feeds the model, what it returns, which provider runs."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import onnx
import onnxruntime
import pytest

from streamer.estimators import onnx as inference
from streamer.core.errors import ModelMismatchError
from streamer.estimators.onnx import ModelOutput, OnnxSession, check_outputs, covariance_km2_to_m2, select_providers
from tests.helpers.onnx_models import (OFFSET_DB, SCALE_DB, SMALL_SPEC, known_ellipse_scale, known_model, known_outputs, metadata,
                                save)

M, T = SMALL_SPEC.n_mels, SMALL_SPEC.n_frames


@pytest.fixture
def model_path(tmp_path):
    return save(known_model(), tmp_path)


def _inputs(rng, batch, n_rx):
    features = rng.uniform(-130.0, -40.0, size=(batch, n_rx, M, T)).astype(np.float32)
    enu = rng.uniform(-20.0, 20.0, size=(batch, n_rx, 3)).astype(np.float32)
    return features, enu


def _fed(features_dbm, enu, mask, max_rx=4, offset_db=OFFSET_DB, scale_db=SCALE_DB):
    """What the model should receive: normalised, masked slots zeroed, padded to max_rx (written out by hand)."""
    batch, n_rx = mask.shape
    f = np.zeros((batch, max_rx, M, T))
    e = np.zeros((batch, max_rx, 3))
    m = np.zeros((batch, max_rx))
    for b in range(batch):
        for r in range(n_rx):
            if mask[b, r] == 1:
                f[b, r] = (features_dbm[b, r].astype(np.float64) - offset_db) / scale_db
                e[b, r] = enu[b, r]
                m[b, r] = 1.0
    return f, e, m


def test_run_returns_the_known_function_of_normalised_padded_inputs(model_path):
    rng = np.random.default_rng(1)
    features, enu = _inputs(rng, 1, 3)
    mask = np.array([[1.0, 0.0, 1.0]])
    est = OnnxSession(model_path)
    result = est.run(features, enu, mask)
    position, cov = known_outputs(*_fed(features, enu, mask))
    assert isinstance(result, ModelOutput)
    np.testing.assert_allclose(result.position_enu_km, position, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.covariance_km2, cov, rtol=1e-5, atol=1e-6)
    assert result.valid.tolist() == [True]
    assert result.covariance_km2[0, 0, 0] == pytest.approx(3.0)  # 1 + two present receivers


def test_normalisation_comes_from_the_model_metadata(tmp_path):
    rng = np.random.default_rng(2)
    features, enu = _inputs(rng, 1, 4)
    mask = np.ones((1, 4))
    results = {}
    for offset_db, scale_db in ((OFFSET_DB, SCALE_DB), (-60.0, 5.0)):
        path = save(known_model(offset_db=offset_db, scale_db=scale_db), tmp_path, f"m{scale_db}.onnx")
        results[scale_db] = OnnxSession(path).run(features, enu, mask)
        expected = known_outputs(*_fed(features, enu, mask, offset_db=offset_db, scale_db=scale_db))
        np.testing.assert_allclose(results[scale_db].position_enu_km, expected[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(results[scale_db].covariance_km2, expected[1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(results[SCALE_DB].covariance_km2, results[5.0].covariance_km2)


def test_masked_slots_are_zero_filled_even_when_they_hold_nan(model_path):
    rng = np.random.default_rng(3)
    features, enu = _inputs(rng, 1, 4)
    mask = np.array([[0.0, 1.0, 1.0, 0.0]])
    features[0, 0] = np.nan
    features[0, 3] = -np.inf
    enu[0, 0] = np.nan
    result = OnnxSession(model_path).run(features, enu, mask)
    clean_features = np.where(np.isfinite(features), features, 0.0)
    position, cov = known_outputs(*_fed(clean_features, np.nan_to_num(enu), mask))
    assert result.valid.tolist() == [True]
    np.testing.assert_allclose(result.position_enu_km, position, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.covariance_km2, cov, rtol=1e-5, atol=1e-6)
    # Slot 0 is masked: the first receiver's features feed f0 as zeros, so c = 0.5 * tanh(0) = 0.
    assert result.covariance_km2[0, 0, 1] == 0.0


def test_buffers_reused_across_calls_do_not_leak_earlier_inputs(model_path):
    rng = np.random.default_rng(4)
    est = OnnxSession(model_path)
    features4, enu4 = _inputs(rng, 1, 4)
    est.run(features4, enu4, np.ones((1, 4)))
    features2, enu2 = _inputs(rng, 1, 2)
    mask2 = np.ones((1, 2))
    result = est.run(features2, enu2, mask2)
    position, cov = known_outputs(*_fed(features2, enu2, mask2))
    np.testing.assert_allclose(result.covariance_km2, cov, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.position_enu_km, position, rtol=1e-5, atol=1e-5)


def test_batches_of_any_size(model_path):
    rng = np.random.default_rng(5)
    est = OnnxSession(model_path)
    features, enu = _inputs(rng, 3, 4)
    mask = np.array([[1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float32)
    result = est.run(features, enu, mask)
    position, cov = known_outputs(*_fed(features, enu, mask))
    assert result.position_enu_km.shape == (3, 2) and result.covariance_km2.shape == (3, 2, 2)
    np.testing.assert_allclose(result.position_enu_km, position, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.covariance_km2, cov, rtol=1e-5, atol=1e-6)
    one = est.run(features[:1], enu[:1], mask[:1])
    np.testing.assert_allclose(one.position_enu_km, position[:1], rtol=1e-5, atol=1e-5)


def test_more_receivers_than_the_model_takes_is_refused(model_path):
    features, enu = _inputs(np.random.default_rng(6), 1, 5)
    with pytest.raises(ModelMismatchError, match=r"5 receivers, but model known-function 0.0.1 takes at most 4"):
        OnnxSession(model_path).run(features, enu, np.ones((1, 5)))


@pytest.mark.parametrize(
    "features_shape, enu_shape, mask_shape, expected",
    [
        ((1, 2, M + 1, T), (1, 2, 3), (1, 2), r"features_dbm: expected \[B, R, 4, 3\], got \[1, 2, 5, 3\]"),
        ((1, 2, M, T), (1, 2, 2), (1, 2), r"rx_enu_km / rx_mask: expected \[1, 2, 3\] / \[1, 2\]"),
        ((1, 2, M, T), (1, 2, 3), (1, 3), r"got \[1, 2, 3\] / \[1, 3\]"),
    ],
)
def test_wrong_input_shapes_are_refused(model_path, features_shape, enu_shape, mask_shape, expected):
    with pytest.raises(ValueError, match=expected):
        OnnxSession(model_path).run(np.zeros(features_shape), np.zeros(enu_shape), np.ones(mask_shape))


def test_fixed_batch_model_refuses_another_batch(tmp_path):
    dims = {"features": [1, 4, M, T], "rx_enu_km": [1, 4, 3], "rx_mask": [1, 4]}
    est = OnnxSession(save(known_model(dims=dims), tmp_path))
    features, enu = _inputs(np.random.default_rng(7), 2, 4)
    with pytest.raises(ValueError, match="fixed batch of 1"):
        est.run(features, enu, np.ones((2, 4)))
    assert est.run(features[:1], enu[:1], np.ones((1, 4))).valid.tolist() == [True]


def test_not_positive_definite_covariance_is_flagged_not_raised(tmp_path):
    est = OnnxSession(save(known_model(covariance="not_pd"), tmp_path))
    features, enu = _inputs(np.random.default_rng(8), 2, 4)
    result = est.run(features, enu, np.ones((2, 4)))
    assert result.valid.tolist() == [False, False]
    assert np.all(result.covariance_km2[:, 0, 0] == -5.0)


def test_non_finite_output_is_flagged(model_path):
    features, enu = _inputs(np.random.default_rng(9), 2, 4)
    mask = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=np.float32)  # nobody present: 0 / 0 in the model
    result = OnnxSession(model_path).run(features, enu, mask)
    assert result.valid.tolist() == [True, False]
    assert np.isnan(result.position_enu_km[1]).all()


def test_check_outputs_symmetrises_and_tests_positive_definiteness():
    position = np.zeros((4, 2))
    position[3, 0] = np.inf
    cov = np.array([
        [[2.0, 0.4], [0.6, 1.0]],   # asymmetric, PD once symmetrised
        [[1.0, 2.0], [2.0, 1.0]],   # symmetric, indefinite (det -3)
        [[-1.0, 0.0], [0.0, -1.0]],  # negative definite
        [[1.0, 0.0], [0.0, 1.0]],   # fine, but the position is infinite
    ])
    result = check_outputs(position, cov)
    assert result.valid.tolist() == [True, False, False, False]
    np.testing.assert_array_equal(result.covariance_km2[0], [[2.0, 0.5], [0.5, 1.0]])
    assert result.covariance_km2.dtype == np.float64


def test_covariance_km2_to_m2():
    cov = covariance_km2_to_m2(np.array([[[1.0, -0.5], [-0.5, 4.0]]], dtype=np.float32))
    np.testing.assert_array_equal(cov, [[[1e6, -5e5], [-5e5, 4e6]]])
    assert cov.dtype == np.float64


def test_estimator_exposes_metadata_spec_and_hash(model_path):
    est = OnnxSession(model_path)
    assert est.metadata == metadata()
    assert est.spec == SMALL_SPEC
    assert est.max_receivers == 4
    assert est.model_sha256 == hashlib.sha256(model_path.read_bytes()).hexdigest()


def test_contract_is_checked_before_a_session_is_made(tmp_path):
    with pytest.raises(ModelMismatchError, match="features.n_mels: model 4, config 8"):
        OnnxSession(save(known_model(), tmp_path), expected_spec=SMALL_SPEC.__class__(
            sample_rate_hz=8_000.0, n_fft=16, hop=8, n_mels=8, window_s=0.004))
    with pytest.raises(ModelMismatchError, match="missing"):
        OnnxSession(tmp_path / "absent.onnx")


def test_onnxruntime_load_errors_become_model_mismatch(tmp_path):
    model = known_model()
    tanh = next(node for node in model.graph.node if node.op_type == "Tanh")
    tanh.op_type, tanh.domain = "NoSuchOp", "org.heimdall.test"
    model.opset_import.append(onnx.helper.make_opsetid("org.heimdall.test", 1))
    with pytest.raises(ModelMismatchError, match="onnxruntime cannot load model"):
        OnnxSession(save(model, tmp_path))


@pytest.mark.parametrize(
    "requested, available, expected",
    [
        (("CUDAExecutionProvider", "CPUExecutionProvider"), ["CPUExecutionProvider"], ["CPUExecutionProvider"]),
        (("CUDAExecutionProvider",), ["CUDAExecutionProvider", "CPUExecutionProvider"],
         ["CUDAExecutionProvider", "CPUExecutionProvider"]),
        (("CPUExecutionProvider", "CUDAExecutionProvider"), ["CUDAExecutionProvider", "CPUExecutionProvider"],
         ["CUDAExecutionProvider", "CPUExecutionProvider"]),
        ((), ["CPUExecutionProvider"], ["CPUExecutionProvider"]),
        (("TensorrtExecutionProvider", "TensorrtExecutionProvider"), ["TensorrtExecutionProvider", "CPUExecutionProvider"],
         ["TensorrtExecutionProvider", "CPUExecutionProvider"]),
    ],
)
def test_select_providers(requested, available, expected):
    assert select_providers(requested, available) == expected


def test_provider_falls_back_to_cpu_and_is_logged_once(model_path, caplog):
    caplog.set_level(logging.INFO, logger="streamer.estimators.onnx")
    est = OnnxSession(model_path, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert est.provider == est.session.get_providers()[0] == "CPUExecutionProvider"
    records = [r for r in caplog.records if r.name == "streamer.estimators.onnx"]
    assert len(records) == 1 and records[0].levelno == logging.INFO
    assert "runs on CPUExecutionProvider" in records[0].getMessage()
    assert "known-function 0.0.1" in records[0].getMessage()


def test_provider_reports_what_the_session_runs_not_what_was_requested(model_path, monkeypatch, caplog):
    # onnxruntime-gpu on a machine without a GPU lists CUDA as available; the session still runs on CPU.
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    caplog.set_level(logging.INFO, logger="streamer.estimators.onnx")
    with pytest.warns(UserWarning, match="CUDAExecutionProvider"):  # CPU onnxruntime's own complaint here
        est = OnnxSession(model_path)
    assert inference.select_providers(inference.DEFAULT_PROVIDERS, onnxruntime.get_available_providers())[0] == (
        "CUDAExecutionProvider")
    assert est.provider == est.session.get_providers()[0] == "CPUExecutionProvider"
    assert "runs on CPUExecutionProvider (requested CUDAExecutionProvider, CPUExecutionProvider)" in caplog.text


def test_a_model_that_takes_the_site_gets_the_row_given_or_zeros(tmp_path):
    rng = np.random.default_rng(7)
    features, enu = _inputs(rng, 2, 3)
    mask = np.ones((2, 3))
    est = OnnxSession(save(known_model(site=True), tmp_path))
    assert est.takes_site
    row = np.array([3.2, 6.5, -40.0, 4.0, 1.0])
    for given, fed in ((row, row), (np.stack([row, 2 * row]), np.stack([row, 2 * row])), (None, np.zeros(5))):
        position, _ = known_outputs(*_fed(features, enu, mask), site=fed)
        np.testing.assert_allclose(est.run(features, enu, mask, given).position_enu_km, position, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("site, message", [(np.ones(4), r"site: expected \[5\] or \[1, 5\], got \[4\]"),
                                           (np.full(5, np.nan), "site: not finite")])
def test_a_bad_site_row_is_refused(tmp_path, site, message):
    features, enu = _inputs(np.random.default_rng(8), 1, 3)
    est = OnnxSession(save(known_model(site=True), tmp_path))
    with pytest.raises(ValueError, match=message):
        est.run(features, enu, np.ones((1, 3)), site)


def test_a_model_without_the_site_input_ignores_a_site(model_path):
    features, enu = _inputs(np.random.default_rng(9), 1, 3)
    mask = np.ones((1, 3))
    est = OnnxSession(model_path)
    assert not est.takes_site
    np.testing.assert_allclose(est.run(features, enu, mask, np.ones(5)).position_enu_km,
                               est.run(features, enu, mask).position_enu_km)


def test_a_model_with_the_ellipse_output_returns_its_scales(tmp_path):
    features, enu = _inputs(np.random.default_rng(10), 2, 3)
    mask = np.array([[1, 1, 1], [1, 0, 1]], np.float32)
    est = OnnxSession(save(known_model(ellipse=True), tmp_path))
    assert est.gives_ellipse_scale
    out = est.run(features, enu, mask)
    np.testing.assert_allclose(out.ellipse_scale, known_ellipse_scale(_fed(features, enu, mask)[2]), rtol=1e-6)
    assert out.valid.all()
    assert OnnxSession(save(known_model(), tmp_path, "plain.onnx")).run(features, enu, mask).ellipse_scale is None


def test_a_row_whose_ellipse_scale_is_not_positive_is_flagged_not_raised(tmp_path):
    features, enu = _inputs(np.random.default_rng(11), 2, 3)
    out = OnnxSession(save(known_model(ellipse=True, ellipse_base=(-0.35, 2.0)), tmp_path)).run(
        features, enu, np.array([[1, 1, 1], [1, 1, 0]], np.float32))
    # The 68 % radius -0.35 + 0.1 n is negative with 3 receivers and with 2.
    assert out.valid.tolist() == [False, False]
    assert not check_outputs(np.zeros((1, 2)), np.eye(2)[None], np.array([[1.5, np.nan]])).valid[0]
    assert check_outputs(np.zeros((1, 2)), np.eye(2)[None], np.array([[1.5, 2.4]])).valid[0]


def test_an_ellipse_scale_of_the_wrong_width_at_run_time_is_refused(tmp_path):
    """A symbolic width passes the contract check; three radii where the contract has two are refused when run."""
    model = known_model(ellipse=True, ellipse_base=(1.0, 2.0, 3.0), dims={"ellipse_scale": ["B", "P"]})
    est = OnnxSession(save(model, tmp_path))
    features, enu = _inputs(np.random.default_rng(12), 1, 3)
    with pytest.raises(ModelMismatchError, match=r"returned ellipse_scale of shape \[1, 3\], expected \[1, 2\]"):
        est.run(features, enu, np.ones((1, 3)))
