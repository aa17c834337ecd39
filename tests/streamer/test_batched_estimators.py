"""Batched inference: ``estimate_batch`` of both estimators gives what one ``estimate`` per window gives, and
``OnnxSession`` runs any batch through reused buffers, with or without I/O binding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from streamer.config import PhysicsConfig, load
from streamer.core.calibration_drift import SECONDS_PER_DAY, parse_calibrated_at
from streamer.core.geodesy import SearchArea, network_geometry
from streamer.core.propagation import log_distance_path_loss_db
from streamer.estimators.base import EstimateRejected, EstimatorInputs
from streamer.estimators.onnx import OnnxModel, OnnxSession
from streamer.estimators.physics import (
    PhysicsGrid,
    PhysicsPosterior,
    correlated_error_cov,
)
from tests.helpers.daemon import write_config
from tests.helpers.onnx_models import SMALL_SPEC, known_model, save

RX_EN_M = np.array([[0.0, 0.0], [60e3, 0.0], [0.0, 60e3], [60e3, 60e3], [30e3, 30e3], [10e3, 45e3]])
AREA = SearchArea(-30e3, 90e3, -30e3, 90e3)


def _windows(physics: PhysicsConfig, batch: int, seed: int = 0):
    """``[B, R]`` received powers, heard, present and detection levels of transmitters at random places: windows
    where every present receiver heard, windows with silent (censored) receivers, absent receivers holding NaN, one
    window nobody heard and one where no receiver is present."""
    rng = np.random.default_rng(seed)
    n_rx = len(RX_EN_M)
    truth = rng.uniform(-20e3, 80e3, (batch, 2))
    d = np.hypot(*(RX_EN_M[None] - truth[:, None]).transpose(2, 0, 1))
    power = (rng.uniform(32.0, 45.0, (batch, 1)) - log_distance_path_loss_db(d, physics.ref_loss_db,
             physics.path_loss_exponent) + rng.normal(0.0, 6.0, (batch, n_rx)))
    detection = rng.uniform(-124.0, -112.0, (batch, n_rx))
    heard = power >= detection
    heard[: batch // 2] = True  # the common case: every present receiver heard
    present = rng.random((batch, n_rx)) < 0.85
    heard[-2], present[-1] = False, False
    power[~present] = np.nan
    return power, heard, present, detection


def _assert_same_results(single, batched, rtol):
    assert len(single) == len(batched)
    for a, b in zip(single, batched):
        for field in ("position_en_m", "cov_en_m2", "ellipse_scales", "tx_power_dbm"):
            want = np.asarray(getattr(a, field))
            # Relative to the quantity's scale: a near-zero covariance entry (a round posterior) is rounding noise.
            np.testing.assert_allclose(getattr(b, field), want, rtol=rtol, atol=rtol * np.abs(want).max(), err_msg=field)
        assert (a.n_heard, a.n_censored) == (b.n_heard, b.n_censored)


def test_a_batch_gives_the_posteriors_of_one_estimate_per_window():
    physics = PhysicsConfig(grid_step_km=2.0)
    grid = PhysicsGrid(physics, RX_EN_M, np.full(len(RX_EN_M), 150.0), AREA)
    power, heard, present, detection = _windows(physics, 24)
    single = [grid.estimate(power[b], heard[b], present[b], detection[b]) for b in range(len(power))]
    batched = grid.estimate_batch(power, heard, present, detection)
    _assert_same_results(single, batched, rtol=1e-9)
    assert {r.n_censored > 0 for r in batched} == {True, False}  # both the closed form and the grid over power
    assert batched[-1].n_heard == 0 and batched[-2].n_heard == 0


def test_windows_split_into_other_blocks_give_the_same_posteriors(monkeypatch):
    from streamer.estimators import physics as physics_module

    physics = PhysicsConfig(grid_step_km=3.0)
    grid = PhysicsGrid(physics, RX_EN_M, np.full(len(RX_EN_M), 150.0), AREA)
    power, heard, present, detection = _windows(physics, 12, seed=4)
    whole = grid.estimate_batch(power, heard, present, detection)
    cells = grid.grid_en_m.shape[0] * grid.power_grid_dbm.shape[0]
    monkeypatch.setattr(physics_module, "BATCH_GRID_ELEMENTS", 3 * cells)  # blocks of 3 windows
    _assert_same_results(whole, grid.estimate_batch(power, heard, present, detection), rtol=1e-12)
    monkeypatch.setattr(physics_module, "BATCH_BLOCK_CELLS", 100 * grid.grid_en_m.shape[0])  # all 12 in one block
    _assert_same_results(whole, grid.estimate_batch(power, heard, present, detection), rtol=1e-12)


@pytest.mark.parametrize("error_model", ["correlated", "mapped"])
def test_the_other_error_models_batch_to_the_same_posteriors(error_model):
    physics = PhysicsConfig(grid_step_km=3.0)
    alts = np.full(len(RX_EN_M), 150.0)
    if error_model == "correlated":
        cov = correlated_error_cov(RX_EN_M, physics.shadowing_db, ((0.5, 20e3),), physics.calibration_sigma_db)
        grid = PhysicsGrid(physics, RX_EN_M, alts, AREA, error_cov_db2=cov)
    else:
        def shadowing_map(cells):
            bump = -6.0 * np.exp(-np.hypot(*(cells - 30e3).T) / 20e3)
            return np.repeat(bump[:, None], len(RX_EN_M), axis=1), np.full((len(cells), len(RX_EN_M)), 5.0)

        grid = PhysicsGrid(physics, RX_EN_M, alts, AREA, shadowing_map=shadowing_map)
    power, heard, present, detection = _windows(physics, 8, seed=2)
    single = [grid.estimate(power[b], heard[b], present[b], detection[b]) for b in range(len(power))]
    _assert_same_results(single, grid.estimate_batch(power, heard, present, detection), rtol=1e-9)


def test_batch_inputs_are_checked_and_an_empty_batch_is_empty():
    grid = PhysicsGrid(PhysicsConfig(grid_step_km=5.0), RX_EN_M, np.full(len(RX_EN_M), 150.0), AREA)
    n_rx = len(RX_EN_M)
    good = (np.full((2, n_rx), -90.0), np.ones((2, n_rx), bool), np.ones((2, n_rx), bool), np.full((2, n_rx), -120.0))
    with pytest.raises(ValueError, match=r"heard: expected shape \(B, 6\)"):
        grid.estimate_batch(good[0], good[1][:1], good[2], good[3])
    with pytest.raises(ValueError, match="rx_power_dbm"):
        grid.estimate_batch(good[0][0], *good[1:])
    assert grid.estimate_batch(*(a[:0] for a in good)) == []


def _drifting_config(tmp_path):
    base = load(write_config(tmp_path, {}))
    receivers = tuple(dataclasses.replace(rx, calibrated_at=("2026-01-01", "2025-06-01")[i % 2])
                      for i, rx in enumerate(base.receivers))
    physics = dataclasses.replace(base.estimator.physics, calibration_drift_db_per_sqrt_day=0.3, grid_step_km=4.0)
    return dataclasses.replace(base, receivers=receivers, estimator=dataclasses.replace(base.estimator, physics=physics))


def _inputs_list(config, batch: int, t_s: list[float], seed: int = 0) -> list[EstimatorInputs]:
    _, rx_enu_m, _ = network_geometry(config)
    n_rx = len(config.receivers)
    rng = np.random.default_rng(seed)
    spec = config.features
    out = []
    for b in range(batch):
        present = rng.random(n_rx) < 0.9
        active = rng.random(spec.n_frames) < 0.6 if b % 2 else None
        out.append(EstimatorInputs(
            features_dbm=rng.normal(-115, 6, (n_rx, spec.n_mels, spec.n_frames)).astype(np.float32),
            rx_enu_m=rx_enu_m, present=present, heard=present & (rng.random(n_rx) < 0.8),
            rx_power_dbm=np.where(present, rng.uniform(-110.0, -80.0, n_rx), np.nan),
            detection_level_dbm=np.full(n_rx, -118.0), active_frames=active, t_ns=int(t_s[b % len(t_s)] * 1e9)))
    return out


def test_the_physics_posterior_batches_windows_across_a_calibration_age_refresh(tmp_path):
    config = _drifting_config(tmp_path)
    start = parse_calibrated_at("2026-02-01").timestamp()
    # Windows an hour and more apart re-measure the age between them, in order, as single calls would.
    times = [start, start + 60.0, start + 90 * SECONDS_PER_DAY, start + 90 * SECONDS_PER_DAY + 5.0]
    inputs = _inputs_list(config, 8, times)
    one_by_one = PhysicsPosterior(config)
    single = [one_by_one.estimate(i) for i in inputs]
    batched = PhysicsPosterior(config).estimate_batch(inputs)
    for a, b in zip(single, batched):
        np.testing.assert_allclose(b.position_en_m, a.position_en_m, rtol=1e-9)
        np.testing.assert_allclose(b.cov_en_m2, a.cov_en_m2, rtol=1e-9)
        np.testing.assert_allclose(b.ellipse_scales, a.ellipse_scales, rtol=1e-9)
    # The age matters here: the same windows all at the later time give other covariances.
    late = PhysicsPosterior(config).estimate_batch(_inputs_list(config, 8, [times[2]]))
    assert not np.allclose(late[0].cov_en_m2, batched[0].cov_en_m2, rtol=1e-3)
    assert PhysicsPosterior(config).estimate_batch([]) == []


def _onnx_config(tmp_path, **model_options):
    config = _drifting_config(tmp_path)
    model = save(known_model(config.features, max_receivers=8, **model_options), tmp_path)
    return dataclasses.replace(config, estimator=dataclasses.replace(
        config.estimator, model=str(model), providers=("CPUExecutionProvider",), model_site="physics"))


def test_the_model_batch_gives_the_estimates_of_one_call_per_window(tmp_path):
    config = _onnx_config(tmp_path, site=True, area=True, ellipse=True)
    start = parse_calibrated_at("2026-02-01").timestamp()
    inputs = _inputs_list(config, 9, [start, start + 30 * SECONDS_PER_DAY])
    model = OnnxModel(config)
    single = [model.estimate(i) for i in inputs]
    batched = OnnxModel(config).estimate_batch(inputs)
    assert len(batched) == len(inputs)
    for a, b in zip(single, batched):
        np.testing.assert_allclose(b.position_en_m, a.position_en_m, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(b.cov_en_m2, a.cov_en_m2, rtol=1e-5)
        np.testing.assert_allclose(b.ellipse_scales, a.ellipse_scales, rtol=1e-6)
    # Each window is told its own site sigma (its calibrations' age) and its own frames: the rows differ.
    assert not np.allclose(batched[0].position_en_m, batched[1].position_en_m)
    assert OnnxModel(config).estimate_batch([]) == []


def test_an_unusable_window_comes_back_rejected_in_its_place(tmp_path):
    config = _onnx_config(tmp_path)
    inputs = _inputs_list(config, 3, [parse_calibrated_at("2026-02-01").timestamp()])
    inputs[1] = dataclasses.replace(inputs[1], present=np.zeros_like(inputs[1].present))  # 0 / 0 in the model
    out = OnnxModel(config).estimate_batch(inputs)
    assert isinstance(out[1], EstimateRejected)
    assert not isinstance(out[0], EstimateRejected) and not isinstance(out[2], EstimateRejected)
    with pytest.raises(EstimateRejected):
        OnnxModel(config).estimate(inputs[1])


def _batch(rng, batch, n_rx=3):
    features = rng.uniform(-130.0, -40.0, (batch, n_rx, SMALL_SPEC.n_mels, SMALL_SPEC.n_frames)).astype(np.float32)
    enu = rng.uniform(-20.0, 20.0, (batch, n_rx, 3)).astype(np.float32)
    mask = (rng.random((batch, n_rx)) < 0.8).astype(np.float32)
    mask[:, 0] = 1.0
    return features, enu, mask


def test_io_binding_gives_what_session_run_gives_at_every_batch_size(tmp_path):
    path = save(known_model(site=True, ellipse=True), tmp_path)
    plain = OnnxSession(path, providers=("CPUExecutionProvider",))
    bound = OnnxSession(path, providers=("CPUExecutionProvider",), io_binding=True)
    assert not plain.io_binding and bound.io_binding and bound.io_binding_device == "cpu"
    rng = np.random.default_rng(1)
    sizes = [1, 8, 32, 8, 3, 5, 2, 32]  # more sizes than the session keeps bindings for, and some again
    for size in sizes:
        args = _batch(rng, size)
        site = rng.uniform(0.0, 1.0, (size, 5))
        want, got = plain.run(*args, site=site), bound.run(*args, site=site)
        np.testing.assert_array_equal(got.position_enu_km, want.position_enu_km)
        np.testing.assert_array_equal(got.covariance_km2, want.covariance_km2)
        np.testing.assert_array_equal(got.ellipse_scale, want.ellipse_scale)
        assert got.valid.tolist() == want.valid.tolist()
    assert len(bound._bindings) == OnnxSession.BOUND_BATCH_SIZES
    assert list(bound._bindings)[-1] == 32  # most recently used kept


def test_a_smaller_batch_after_a_larger_one_runs_in_the_reused_buffers(tmp_path):
    path = save(known_model(), tmp_path)
    reused = OnnxSession(path, providers=("CPUExecutionProvider",))
    rng = np.random.default_rng(2)
    reused.run(*_batch(rng, 16))
    small = _batch(rng, 4)
    got = reused.run(*small)
    assert reused._buffers[0].shape[0] == 16  # not reallocated for the smaller batch
    want = OnnxSession(path, providers=("CPUExecutionProvider",)).run(*small)
    np.testing.assert_array_equal(got.position_enu_km, want.position_enu_km)
    np.testing.assert_array_equal(got.covariance_km2, want.covariance_km2)
