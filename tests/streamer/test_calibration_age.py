"""Calibration that knows its age: the drift model (``streamer.core.calibration_drift``), its fit from repeated
surveys, and both estimators widening for the time since each receiver's ``calibrated_at``."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from streamer.config import PhysicsConfig, from_dict, load
from streamer.core.calibration_drift import (
    DAYS_PER_YEAR,
    SECONDS_PER_DAY,
    CalibrationDrift,
    Survey,
    fit_drift,
    parse_calibrated_at,
)
from streamer.core.geodesy import SearchArea, network_geometry
from streamer.core.propagation import log_distance_path_loss_db, slant_distance_m
from streamer.estimators.base import EstimatorInputs
from streamer.estimators.contract import site_propagation
from streamer.estimators.physics import (
    PhysicsGrid,
    PhysicsPosterior,
    drift_variance_db2,
)
from tests.helpers.daemon import write_config


def test_structure_function_is_the_random_walk_plus_a_seasonal_swing_of_unknown_phase():
    drift = CalibrationDrift(random_walk_db_per_sqrt_day=0.2, seasonal_db=1.5)
    assert drift.structure_db2(0.0) == 0.0
    assert drift.structure_db2(-30.0) == drift.structure_db2(30.0)  # before or after the calibration alike
    assert drift.structure_db2(DAYS_PER_YEAR) == pytest.approx(0.04 * DAYS_PER_YEAR)  # the season is back
    assert drift.structure_db2(DAYS_PER_YEAR / 2) == pytest.approx(0.04 * DAYS_PER_YEAR / 2 + 2 * 1.5**2)
    # The seasonal term is the variance over a uniform phase of A cos(wt + phi) - A cos(phi).
    phase = np.linspace(0, 2 * math.pi, 20_000, endpoint=False)
    w = 2 * math.pi * 100.0 / DAYS_PER_YEAR
    empirical = np.mean((1.5 * np.cos(w + phase) - 1.5 * np.cos(phase)) ** 2)
    assert CalibrationDrift(0.0, 1.5).structure_db2(100.0) == pytest.approx(empirical, rel=1e-9)


def test_prediction_variance_of_a_pooled_calibration():
    drift = CalibrationDrift(0.3, 0.0)
    assert drift.prediction_variance_db2(50.0, [10.0], [1.0]) == pytest.approx(0.09 * 40.0)
    # Random walk: the mean of offsets at 0 and 20 days, used at 20 days, misses by half the walk from 0 to 20.
    assert drift.prediction_variance_db2(20.0, [0.0, 20.0], [1.0, 1.0]) == pytest.approx(0.09 * 20.0 / 4.0)
    with pytest.raises(ValueError, match="weights"):
        drift.prediction_variance_db2(20.0, [0.0, 20.0], [1.0])


@pytest.mark.parametrize("text, expected", [
    ("2026-03-01", "2026-03-01T00:00:00+00:00"),
    ("2026-03-01T10:30:00Z", "2026-03-01T10:30:00+00:00"),
    ("2026-03-01T10:30:00-05:00", "2026-03-01T15:30:00+00:00"),
    ("2026-03-01 10:30", "2026-03-01T10:30:00+00:00"),
])
def test_calibrated_at_parses_as_utc(text, expected):
    assert parse_calibrated_at(text).isoformat() == expected


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "", "01/03/2026"])
def test_a_malformed_calibrated_at_is_refused_naming_the_receiver(text):
    with pytest.raises(Exception, match=f"receivers\\[0\\].calibrated_at: expected an ISO-8601 date .*got '{text}' "
                                        r"\(receiver id 'a'"):
        from_dict({"receivers": [{"id": "a", "kind": "simulator", "lat": 45, "lon": 7, "calibrated_at": text}]}, source="x")


def synthetic_surveys(rng, *, q, seasonal_db, survey_days, n_rx, se_db) -> list[Survey]:
    """Per-receiver offsets: a random walk of q dB/sqrt(day) plus a yearly cosine of random phase, each survey
    measuring them with noise se_db; offsets relative to an arbitrary common level per survey."""
    t = np.asarray(survey_days, dtype=np.float64)
    steps = rng.normal(0.0, 1.0, (len(t), n_rx)) * q * np.sqrt(np.diff(np.r_[t[0], t]))[:, None]
    walk = np.cumsum(steps, axis=0) + rng.normal(0.0, 3.0, n_rx)
    phase = rng.uniform(0.0, 2 * math.pi, n_rx)
    season = seasonal_db * np.cos(2 * math.pi * t[:, None] / DAYS_PER_YEAR + phase[None, :])
    measured = walk + season + rng.normal(0.0, se_db, walk.shape) + rng.normal(0.0, 5.0, (len(t), 1))
    return [Survey(float(day), measured[k], np.full(n_rx, se_db), f"s{k}") for k, day in enumerate(t)]


def test_fit_recovers_a_known_random_walk_within_its_stated_uncertainty():
    q = 0.15
    days = 20_000.0 + np.array([0.0, 12.0, 40.0, 75.0, 130.0, 200.0])
    hits = 0
    for seed in range(6):
        fit = fit_drift(synthetic_surveys(np.random.default_rng(seed), q=q, seasonal_db=0.0, survey_days=days,
                                          n_rx=30, se_db=0.3), seasonal=False)
        assert fit.receivers == 30 and fit.changes == 150 and not fit.seasonal_fitted
        assert 0.0 < fit.random_walk_se < 0.3 * q
        print(f"seed {seed}: q {fit.drift.random_walk_db_per_sqrt_day:.4f} +- {fit.random_walk_se:.4f} (true {q})")
        assert abs(fit.drift.random_walk_db_per_sqrt_day - q) < 3.0 * fit.random_walk_se
        hits += abs(fit.drift.random_walk_db_per_sqrt_day - q) < fit.random_walk_se
    assert hits >= 3  # about 68 % of the fits land within one standard error


def test_fit_separates_the_seasonal_swing_when_the_surveys_span_the_year():
    days = 20_000.0 + np.arange(0.0, 720.0, 45.0)
    surveys = synthetic_surveys(np.random.default_rng(11), q=0.05, seasonal_db=2.0, survey_days=days, n_rx=40, se_db=0.3)
    fit = fit_drift(surveys)
    assert fit.seasonal_fitted
    print(f"q {fit.drift.random_walk_db_per_sqrt_day:.4f} +- {fit.random_walk_se:.4f}, "
          f"A {fit.drift.seasonal_db:.3f} +- {fit.seasonal_se:.3f}")
    assert abs(fit.drift.seasonal_db - 2.0) < 3.0 * fit.seasonal_se and fit.seasonal_se < 0.5
    assert abs(fit.drift.random_walk_db_per_sqrt_day - 0.05) < 3.0 * fit.random_walk_se


def test_one_separation_cannot_tell_the_season_from_the_walk():
    surveys = synthetic_surveys(np.random.default_rng(2), q=0.2, seasonal_db=0.0, survey_days=[0.0, 90.0], n_rx=20, se_db=0.3)
    fit = fit_drift(surveys)
    assert not fit.seasonal_fitted and fit.drift.seasonal_db == 0.0 and math.isnan(fit.seasonal_se)


def test_fit_refuses_what_it_cannot_measure():
    one = Survey(0.0, np.zeros(3), np.full(3, 0.3))
    with pytest.raises(ValueError, match="at least two surveys"):
        fit_drift([one])
    with pytest.raises(ValueError, match="different times"):
        fit_drift([one, one])
    with pytest.raises(ValueError, match="no receiver was fitted in two surveys"):
        fit_drift([one, Survey(10.0, np.full(3, np.nan), np.full(3, 0.3))])


# ----------------------------------------------------------------------------------------------------
# The estimators widen


AREA = SearchArea(-30e3, 70e3, -30e3, 70e3)
RX_EN = [[0, 0], [40e3, 0], [0, 40e3], [40e3, 40e3]]
POWER = {"rx_power_dbm": [-80.0, -95.0, -95.0, -99.0], "heard": [True] * 4, "present": [True] * 4,
         "detection_level_dbm": [-121.0] * 4}


def test_equal_drift_is_the_same_posterior_as_a_wider_calibration_sigma():
    physics = PhysicsConfig()
    grid = PhysicsGrid(physics, RX_EN, [100] * 4, AREA)
    grid.widen_calibration([5.0] * 4)
    wide = PhysicsGrid(dataclasses.replace(physics, calibration_sigma_db=math.sqrt(physics.calibration_sigma_db**2 + 5.0)),
                       RX_EN, [100] * 4, AREA)
    np.testing.assert_allclose(grid.estimate(**POWER).cov_en_m2, wide.estimate(**POWER).cov_en_m2, rtol=1e-12)
    grid.widen_calibration([0.0] * 4)  # replaces, not adds to, the earlier widening
    np.testing.assert_allclose(grid.estimate(**POWER).cov_en_m2,
                               PhysicsGrid(physics, RX_EN, [100] * 4, AREA).estimate(**POWER).cov_en_m2, rtol=1e-12)


def test_differing_ages_give_each_receiver_its_own_variance():
    physics = PhysicsConfig()
    extra = np.array([0.0, 30.0, 0.0, 60.0])
    grid = PhysicsGrid(physics, RX_EN, [100] * 4, AREA)
    grid.widen_calibration(extra)
    sigma2 = physics.shadowing_db**2 + physics.calibration_sigma_db**2
    diag = PhysicsGrid(physics, RX_EN, [100] * 4, AREA, error_cov_db2=np.diag(sigma2 + extra))
    censored = {**POWER, "heard": [True, True, True, False]}
    for power in (POWER, censored):
        np.testing.assert_allclose(grid.log_posterior(**power), diag.log_posterior(**power), rtol=1e-12)
    with pytest.raises(ValueError, match="expected 4 finite variances"):
        grid.widen_calibration([1.0, -1.0, 0.0, 0.0])


def drifting_config(tmp_path, calibrated_at: list[str], drift: float = 0.2, seasonal: float = 0.0):
    base = load(write_config(tmp_path, {}))
    receivers = tuple(dataclasses.replace(rx, calibrated_at=calibrated_at[i % len(calibrated_at)])
                      for i, rx in enumerate(base.receivers))
    physics = dataclasses.replace(base.estimator.physics, calibration_drift_db_per_sqrt_day=drift,
                                  calibration_seasonal_db=seasonal)
    return dataclasses.replace(base, receivers=receivers, estimator=dataclasses.replace(base.estimator, physics=physics))


def window_inputs(config) -> EstimatorInputs:
    _, rx_enu_m, _ = network_geometry(config)
    n_rx = len(config.receivers)
    rng = np.random.default_rng(5)
    return EstimatorInputs(
        features_dbm=rng.normal(-120, 3, (n_rx, config.features.n_mels, config.features.n_frames)).astype(np.float32),
        rx_enu_m=rx_enu_m, present=np.ones(n_rx, bool), heard=np.ones(n_rx, bool),
        rx_power_dbm=np.linspace(-80.0, -105.0, n_rx), detection_level_dbm=np.full(n_rx, -121.0), active_frames=None)


def test_drift_variance_is_measured_from_each_receivers_calibrated_at(tmp_path):
    config = drifting_config(tmp_path, ["2026-01-01", "2026-01-21"], drift=0.2, seasonal=1.0)
    at = parse_calibrated_at("2026-01-31").timestamp()
    got = drift_variance_db2(config, at)
    expected = CalibrationDrift(0.2, 1.0).structure_db2(np.array([30.0, 10.0] * 4)[: len(config.receivers)])
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    undrifted = load(write_config(tmp_path, {}))
    assert not drift_variance_db2(undrifted, at).any()


def test_the_posterior_widens_with_the_calibrations_age_and_refreshes_hourly(tmp_path):
    config = drifting_config(tmp_path, ["2026-01-01"], drift=0.5)  # 200 days: sigma 6.3 -> 9.5 dB
    calibrated_s = parse_calibrated_at("2026-01-01").timestamp()
    now = [calibrated_s]
    posterior = PhysicsPosterior(config, clock=lambda: now[0])
    inputs = window_inputs(config)
    fresh = np.linalg.det(posterior.estimate(inputs).cov_en_m2)
    now[0] = calibrated_s + 1800.0  # within the hour: not re-measured
    assert np.linalg.det(posterior.estimate(inputs).cov_en_m2) == fresh
    now[0] = calibrated_s + 200 * SECONDS_PER_DAY
    aged = np.linalg.det(posterior.estimate(inputs).cov_en_m2)
    assert aged > 1.2 * fresh
    undrifted = dataclasses.replace(config, estimator=dataclasses.replace(
        config.estimator, physics=dataclasses.replace(config.estimator.physics, calibration_drift_db_per_sqrt_day=0.0)))
    assert np.linalg.det(PhysicsPosterior(undrifted, clock=lambda: now[0]).estimate(inputs).cov_en_m2) == pytest.approx(fresh)


def test_the_model_is_told_the_rms_calibration_sigma_of_the_present_receivers(tmp_path):
    from streamer.estimators.onnx import OnnxModel
    from tests.helpers.onnx_models import known_model, save

    config = drifting_config(tmp_path, ["2026-01-01", "2025-01-01"], drift=0.3)
    model = save(known_model(config.features, max_receivers=8, site=True), tmp_path)
    config = dataclasses.replace(config, estimator=dataclasses.replace(
        config.estimator, model=str(model), providers=("CPUExecutionProvider",), model_site="physics"))
    at = parse_calibrated_at("2026-02-01").timestamp()
    onnx = OnnxModel(config, clock=lambda: at)
    present = np.zeros(len(config.receivers), bool)
    present[[0, 1, 2]] = True  # ages 31, 396, 31 days
    physics = config.estimator.physics
    mean_var = np.mean(0.09 * np.array([31.0, 396.0, 31.0]))
    expected = site_propagation(physics, math.sqrt(physics.calibration_sigma_db**2 + mean_var))
    np.testing.assert_allclose(onnx._site_row(present), expected, rtol=1e-6)
    assert expected[1] > site_propagation(physics)[1] + 1.0


def test_check_says_how_much_the_calibrations_age_widens_the_model_sigma(tmp_path, capsys):
    from streamer.cli import main
    from tests.helpers.onnx_models import known_model, save

    config = load(write_config(tmp_path, {}))
    model = save(known_model(config.features, max_receivers=8, site=True), tmp_path)
    receivers = [{"id": rx.id, "kind": "simulator", "lat": rx.lat, "lon": rx.lon, "calibrated_at": "2020-01-01"}
                 for rx in config.receivers]
    path = write_config(tmp_path, {"estimator": {"kind": "onnx", "model": str(model), "providers": ["CPUExecutionProvider"],
                                                 "physics": {"shadowing_db": 4.0, "calibration_sigma_db": 3.0,
                                                             "calibration_drift_db_per_sqrt_day": 0.1}},
                                   "receivers": receivers}, name="aged.toml")
    assert main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sigma 5.00 dB, level" in out and "dB now, with every receiver's calibration age: calibrated_at)" in out


def coverage_95(grid: PhysicsGrid, rng, *, n: int, true_cal_sigma_db: float) -> float:
    """Share of ``n`` simulated windows whose true position lies in the posterior's 95 % ellipse; each window draws
    its receivers' calibration errors with ``true_cal_sigma_db`` (i.i.d. shadowing of the grid's configured sigma)."""
    physics = grid.physics
    inside = 0
    for _ in range(n):
        tx = np.array([rng.uniform(grid.area.east_min_m, grid.area.east_max_m),
                       rng.uniform(grid.area.north_min_m, grid.area.north_max_m)])
        dist = slant_distance_m(tx[None, :], physics.tx_alt_m, grid.rx_en_m, grid.rx_alt_m)[0]
        power = (rng.uniform(physics.tx_power_min_dbm, physics.tx_power_max_dbm)
                 - log_distance_path_loss_db(dist, physics.ref_loss_db, physics.path_loss_exponent)
                 + rng.normal(0.0, physics.shadowing_db, dist.shape) + rng.normal(0.0, true_cal_sigma_db, dist.shape))
        heard = power > -121.0
        res = grid.estimate(power, heard, np.ones_like(heard), np.full(heard.shape, -121.0))
        d = tx - res.position_en_m
        inside += float(d @ np.linalg.solve(res.cov_en_m2, d)) <= res.ellipse_scales[1] ** 2
    return inside / n


def test_widening_for_the_drift_restores_the_posteriors_coverage():
    """Receivers calibrated 150 days ago with a 0.5 dB/sqrt(day) walk carry sqrt(2^2 + 37.5) = 6.5 dB of calibration
    error: the posterior told 2 dB is overconfident; widened for the age it covers as designed."""
    config = load()
    physics = config.estimator.physics
    drift = CalibrationDrift(0.5, 0.0)
    true_sigma = math.sqrt(physics.calibration_sigma_db**2 + drift.structure_db2(150.0))
    grid = PhysicsGrid.from_config(config)
    stale = coverage_95(grid, np.random.default_rng(8), n=800, true_cal_sigma_db=true_sigma)
    grid.widen_calibration(np.full(len(config.receivers), drift.structure_db2(150.0)))
    aged = coverage_95(grid, np.random.default_rng(8), n=800, true_cal_sigma_db=true_sigma)
    print(f"cov95 told the calibration of the day {stale:.3f}, widened for its age {aged:.3f}")
    assert stale < 0.90 and 0.92 <= aged <= 0.98


def test_a_window_is_aged_at_its_own_time_not_the_estimators_clock(tmp_path):
    """A replayed recording's windows carry the time they were recorded (``EstimatorInputs.t_ns``): both estimators
    age the calibrations to then, whatever the clock says."""
    from streamer.estimators.onnx import OnnxModel
    from tests.helpers.onnx_models import known_model, save

    config = drifting_config(tmp_path, ["2026-01-01"], drift=0.5)
    calibrated_s = parse_calibrated_at("2026-01-01").timestamp()
    late_clock = lambda: calibrated_s + 400 * SECONDS_PER_DAY  # noqa: E731 - a replay a year after recording
    inputs = window_inputs(config)
    at_calibration = dataclasses.replace(inputs, t_ns=int(calibrated_s * 1e9))
    fresh = PhysicsPosterior(config, clock=lambda: calibrated_s).estimate(inputs).cov_en_m2
    np.testing.assert_allclose(PhysicsPosterior(config, clock=late_clock).estimate(at_calibration).cov_en_m2, fresh)
    assert np.linalg.det(PhysicsPosterior(config, clock=late_clock).estimate(inputs).cov_en_m2) > 1.2 * np.linalg.det(fresh)
    model = save(known_model(config.features, max_receivers=8, site=True), tmp_path)
    config = dataclasses.replace(config, estimator=dataclasses.replace(
        config.estimator, model=str(model), providers=("CPUExecutionProvider",), model_site="physics"))
    onnx = OnnxModel(config, clock=late_clock)
    present = np.ones(len(config.receivers), bool)
    assert onnx._site_row(present, at_s=calibrated_s)[1] == pytest.approx(site_propagation(config.estimator.physics)[1])
    assert onnx._site_row(present)[1] > site_propagation(config.estimator.physics)[1] + 1.0
