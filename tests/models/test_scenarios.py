"""``heimdall evaluate``'s drift scenario: windows rendered with each receiver's calibration error at their own
time, the estimators told the drift as the daemon widens for it."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from models.train import evaluate
from models.train.dataset import UNIX_2026_NS
from models.train.render import render_windows
from receivers.simulator import SimulatedWorld
from streamer.config import load
from streamer.core.calibration_drift import CalibrationDrift
from streamer.dsp.features import FeatureSpec, mel_frames_dbm

SPEC = FeatureSpec()
DAY_NS = 86_400 * 10**9


def test_a_window_reads_its_receivers_calibration_error_at_its_own_time():
    config = load()
    config = replace(config, simulator=replace(config.simulator, calibration_drift_db_per_sqrt_day=0.3,
                                               calibration_seasonal_db=1.0, calibration_epoch_unix_s=UNIX_2026_NS / 1e9))
    world = SimulatedWorld(config)
    later_ns = UNIX_2026_NS + 200 * DAY_NS
    iq = render_windows(world, [[0.0, 0.0]] * 2, [45.0] * 2, [UNIX_2026_NS, later_ns], sample_rate_hz=SPEC.sample_rate_hz,
                        n_samples=SPEC.n_samples, window_ids=[3, 3], add_noise=False)
    power_db = 10 * np.log10((10 ** (mel_frames_dbm(iq, SPEC, world.calibration_db) / 10)).sum(axis=(-2, -1)))
    moved_db = world.calibration_error_db_at(later_ns) - world.calibration_error_db_at(UNIX_2026_NS)
    assert np.abs(moved_db).max() > 1.0  # the test means something: the calibrations did move
    np.testing.assert_allclose(power_db[1] - power_db[0], -moved_db, atol=0.05)


def test_drifted_networks_are_drawn_at_the_calibrations_age_and_their_estimators_widen_for_it():
    scenario = evaluate.SCENARIOS["drift"]
    base = load()
    config, told, (first_ns, last_ns) = evaluate.drifted(base, base.estimator.physics, scenario)
    drift = scenario.drift
    assert config.simulator.calibration_drift_db_per_sqrt_day == drift.random_walk_db_per_sqrt_day
    assert config.simulator.calibration_seasonal_db == drift.seasonal_db
    assert config.estimator.physics.calibration_drift_db_per_sqrt_day == drift.random_walk_db_per_sqrt_day
    assert {rx.calibrated_at for rx in config.receivers} == {"2026-01-01T00:00:00+00:00"}
    age_days = (first_ns - UNIX_2026_NS) / DAY_NS
    assert age_days == pytest.approx(scenario.calibration_age_days)
    assert (last_ns - first_ns) / 1e9 == evaluate.DRIFT_WINDOW_SPAN_S
    widened = math.hypot(base.estimator.physics.calibration_sigma_db, math.sqrt(drift.structure_db2(age_days)))
    assert told.calibration_sigma_db == pytest.approx(widened, rel=1e-3)
    assert replace(told, calibration_sigma_db=base.estimator.physics.calibration_sigma_db) == base.estimator.physics


def test_the_drift_scenario_shares_the_other_scenarios_hidden_states_and_draws_at_the_age():
    drifting = evaluate.scenario_networks("drift", 1, 2, SPEC)
    partial = evaluate.scenario_networks("partial", 1, 2, SPEC)
    assert [c.simulator.seed for c, _, _ in drifting] == [c.simulator.seed for c, _, _ in partial]
    for (config, told, data), (_, physics, _) in zip(drifting, partial):
        assert told.calibration_sigma_db > physics.calibration_sigma_db
        assert np.all(data.keyed_fraction == 1.0)
        assert config.simulator.calibration_drift_db_per_sqrt_day > 0


def test_a_drift_free_scenario_leaves_the_world_and_the_estimators_alone():
    assert evaluate.SCENARIOS["partial"].drift is None and evaluate.SCENARIOS["partial"].cache_key() == ""
    assert evaluate.Scenario("full", CalibrationDrift(0.1, 0.0), 30.0).cache_key() == "-drift0.1+0@30d"


def test_a_configured_drift_widens_both_estimators_at_the_calibrations_age_as_the_daemon_does():
    base = load()
    physics = replace(base.estimator.physics, calibration_drift_db_per_sqrt_day=0.2)
    config = replace(base, estimator=replace(base.estimator, physics=physics),
                     receivers=[replace(rx, calibrated_at="2025-01-01") for rx in base.receivers])
    age_days = evaluate.SCORED_AT_S / 86_400 - (UNIX_2026_NS / 1e9 / 86_400 - 365)
    sigma = math.hypot(physics.calibration_sigma_db, 0.2 * math.sqrt(age_days))
    assert evaluate.site_row(config, physics)[1] == pytest.approx(math.hypot(physics.shadowing_db, sigma), rel=1e-5)
    assert evaluate.site_row(base, base.estimator.physics)[1] == pytest.approx(
        math.hypot(physics.shadowing_db, physics.calibration_sigma_db), rel=1e-6)
    data = evaluate.simulated_sets(4, 0, SPEC)["default"][2]
    _, aged_cov, _ = evaluate.run_physics(config, physics, data, SPEC)
    _, fresh_cov, _ = evaluate.run_physics(base, base.estimator.physics, data, SPEC)
    assert np.all(np.linalg.det(aged_cov) > np.linalg.det(fresh_cov))
