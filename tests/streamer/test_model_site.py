"""The daemon tells a model that takes the contract's optional ``site_propagation`` input the site's
propagation from ``estimator.physics`` (``estimator.model_site = "physics"``), or nothing ("none"); and a model
that takes ``search_area_enu_km`` the search area the physics estimator's prior covers."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from streamer.config import PhysicsConfig, load
from streamer.core.errors import ConfigError
from streamer.estimators.base import EstimatorInputs
from streamer.estimators.onnx import OnnxModel
from streamer.core.geodesy import network_geometry
from streamer.estimators.contract import site_propagation
from tests.helpers.daemon import write_config
from streamer.estimators.onnx import OnnxSession
from streamer.estimators.contract import search_area_row
from tests.helpers.onnx_models import AREA_SHIFT, SITE_SHIFT, known_model, save


def test_site_propagation_is_what_the_physics_estimator_is_configured_with():
    physics = PhysicsConfig(path_loss_exponent=2.7, ref_loss_db=80.0, shadowing_db=6.0, calibration_sigma_db=2.5,
                            tx_power_min_dbm=30.0, tx_power_max_dbm=42.0)
    np.testing.assert_allclose(site_propagation(physics), [2.7, 6.5, 36.0 - 80.0, 12.0 / math.sqrt(12.0), 1.0], rtol=1e-6)
    assert site_propagation(None).tolist() == [0.0] * 5


@pytest.mark.parametrize("model_site", ["physics", "none"])
def test_the_daemon_feeds_the_configured_site_or_nothing(tmp_path, model_site):
    config = load(write_config(tmp_path, {}))
    model = save(known_model(config.features, max_receivers=8, site=True), tmp_path)
    physics = dataclasses.replace(config.estimator.physics, path_loss_exponent=2.5, shadowing_db=4.0,
                                  calibration_sigma_db=3.0)
    told = dataclasses.replace(config, estimator=dataclasses.replace(
        config.estimator, model=str(model), providers=("CPUExecutionProvider",), physics=physics, model_site=model_site))
    plain = dataclasses.replace(told, estimator=dataclasses.replace(told.estimator, model_site="none"))
    _, rx_enu_m, _ = network_geometry(config)
    n_rx = len(config.receivers)
    rng = np.random.default_rng(3)
    inputs = EstimatorInputs(
        features_dbm=rng.normal(-120, 3, (n_rx, config.features.n_mels, config.features.n_frames)).astype(np.float32),
        rx_enu_m=rx_enu_m, present=np.ones(n_rx, bool), heard=np.ones(n_rx, bool),
        rx_power_dbm=np.full(n_rx, -95.0), detection_level_dbm=np.full(n_rx, -110.0))
    shift_m = OnnxModel(told).estimate(inputs).position_en_m - OnnxModel(plain).estimate(inputs).position_en_m
    expected = 1000.0 * SITE_SHIFT * np.array([2.5, 5.0]) if model_site == "physics" else np.zeros(2)
    np.testing.assert_allclose(shift_m, expected, atol=1e-3)


def test_an_unknown_model_site_is_refused_by_key(tmp_path):
    with pytest.raises(ConfigError, match="estimator.model_site"):
        load(write_config(tmp_path, {"estimator": {"model_site": "guess"}}))


@pytest.mark.parametrize("model_site, expected", [
    ("physics", "told the site from estimator.physics: path-loss exponent 2.50, sigma 5.00 dB, level 1 km away"),
    ("none", 'told nothing about the site (estimator.model_site = "none")'),
])
def test_check_says_what_the_model_is_told(tmp_path, capsys, model_site, expected):
    from streamer.cli import main

    config = load(write_config(tmp_path, {}))
    model = save(known_model(config.features, max_receivers=8, site=True), tmp_path)
    path = write_config(tmp_path, {"estimator": {"kind": "onnx", "model": str(model), "providers": ["CPUExecutionProvider"],
                                                 "model_site": model_site, "physics": {"path_loss_exponent": 2.5,
                                                 "shadowing_db": 4.0, "calibration_sigma_db": 3.0}}}, name="told.toml")
    assert main(["check", "-c", str(path)]) == 0
    assert f"model known-function 0.0.1: {expected}" in capsys.readouterr().out


def _inputs(config):
    _, rx_enu_m, _ = network_geometry(config)
    n_rx = len(config.receivers)
    rng = np.random.default_rng(4)
    return EstimatorInputs(
        features_dbm=rng.normal(-120, 3, (n_rx, config.features.n_mels, config.features.n_frames)).astype(np.float32),
        rx_enu_m=rx_enu_m, present=np.ones(n_rx, bool), heard=np.ones(n_rx, bool),
        rx_power_dbm=np.full(n_rx, -95.0), detection_level_dbm=np.full(n_rx, -110.0))


def test_the_daemon_tells_the_model_the_search_area_of_the_physics_prior(tmp_path):
    config = load(write_config(tmp_path, {}))
    plain_model = save(known_model(config.features, max_receivers=8, site=True), tmp_path, "plain.onnx")
    area_model = save(known_model(config.features, max_receivers=8, site=True, area=True), tmp_path, "area.onnx")

    def with_model(path):
        return dataclasses.replace(config, estimator=dataclasses.replace(
            config.estimator, model=str(path), providers=("CPUExecutionProvider",)))

    shift_m = (OnnxModel(with_model(area_model)).estimate(_inputs(config)).position_en_m
               - OnnxModel(with_model(plain_model)).estimate(_inputs(config)).position_en_m)
    _, _, area = network_geometry(config)
    np.testing.assert_allclose(shift_m, 1000.0 * AREA_SHIFT * np.array([area.east_min_m, area.east_max_m]) / 1e3, atol=1e-2)
    assert "told the search area" in OnnxModel(with_model(area_model)).site_summary()
    assert "told the search area" not in OnnxModel(with_model(plain_model)).site_summary()


@pytest.mark.parametrize("row, message", [
    ([10.0, -10.0, -5.0, 5.0, 1.0], "east min < east max"),
    ([-10.0, 10.0, -5.0, float("nan"), 1.0], "area: not finite"),
    ([-10.0, 10.0, -5.0, 5.0], r"area: expected \[5\]"),
])
def test_a_bad_search_area_row_is_refused_by_name(tmp_path, row, message):
    config = load(write_config(tmp_path, {}))
    est = OnnxSession(save(known_model(config.features, max_receivers=8, site=True, area=True), tmp_path),
                        providers=("CPUExecutionProvider",))
    assert est.takes_area
    n_rx = len(config.receivers)
    args = (np.zeros((1, n_rx, config.features.n_mels, config.features.n_frames), np.float32),
            np.zeros((1, n_rx, 3), np.float32), np.ones((1, n_rx), np.float32), None)
    with pytest.raises(ValueError, match=message):
        est.run(*args, row)
    assert est.run(*args, search_area_row(None)).valid.all()  # the zero row: unknown, accepted
