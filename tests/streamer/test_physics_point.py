"""The physics posterior's point estimates: the geometric median minimises the expected distance, and the
estimator reports it (with its second moment and ellipses about it) the same way one window or a batch at a time."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.optimize import minimize

from streamer.config import PhysicsConfig
from streamer.config import load as load_config
from streamer.core.geodesy import SearchArea
from streamer.core.propagation import log_distance_path_loss_db
from streamer.estimators.credible import PHYSICS_SUBDIVISIONS, credible_scales
from streamer.estimators.physics import POINT_ESTIMATES, PhysicsGrid, geometric_median


def test_geometric_median_of_points_on_a_line_is_the_weighted_median():
    # On a line the expected distance is minimised at the weighted median: cumulative weight 0.40 at x = 0, 0.75 at
    # x = 1, so the median is 1, while the mean, 0.35 + 2.5 = 2.85, is dragged towards the far point.
    points = np.array([[0.0, 5.0], [1.0, 5.0], [10.0, 5.0]])
    weights = np.array([[0.40, 0.35, 0.25]])
    got = geometric_median(points, weights, tolerance=1e-9, smoothing=1e-9)
    np.testing.assert_allclose(got, [[1.0, 5.0]], atol=1e-6)
    assert (weights @ points)[0, 0] == pytest.approx(2.85)


def test_geometric_median_minimises_the_expected_distance_of_a_skewed_grid_distribution():
    # A banana-like posterior: a peak with a long tail to one side, on a 2-D grid.
    g = np.arange(0.0, 40.0)
    cells = np.stack(np.meshgrid(g, g, indexing="xy"), axis=-1).reshape(-1, 2)
    w = np.exp(-0.5 * ((cells[:, 0] - 8.0) ** 2 / 4.0 + (cells[:, 1] - 10.0) ** 2 / 9.0))
    w += 0.3 * np.exp(-cells[:, 0] / 12.0) * np.exp(-0.5 * (cells[:, 1] - 10.0 - 0.3 * cells[:, 0]) ** 2 / 4.0)
    w /= w.sum()

    def expected_distance(x):
        return float(w @ np.hypot(cells[:, 0] - x[0], cells[:, 1] - x[1]))

    mean = w @ cells
    got = geometric_median(cells, w[None], tolerance=1e-6, smoothing=1e-6)[0]
    best = minimize(expected_distance, mean, method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-10}).x
    np.testing.assert_allclose(got, best, atol=1e-3)
    assert expected_distance(got) < expected_distance(mean) - 0.05
    assert got[0] < mean[0]  # the tail pulls the mean further than the median


def test_geometric_median_of_a_batch_is_each_windows_own():
    rng = np.random.default_rng(3)
    points = rng.normal(size=(50, 2))
    weights = rng.dirichlet(np.full(50, 0.3), size=4)
    together = geometric_median(points, weights, tolerance=1e-9, smoothing=1e-9)
    alone = np.concatenate([geometric_median(points, w[None], tolerance=1e-9, smoothing=1e-9) for w in weights])
    np.testing.assert_allclose(together, alone, atol=1e-7)


def _estimator(point_estimate: str) -> PhysicsGrid:
    rx = np.array([[0.0, 0.0], [1500.0, 0.0], [0.0, 1500.0], [1500.0, 1500.0]])
    physics = PhysicsConfig(grid_step_km=0.05, ref_loss_db=85.7, tx_alt_m=1.5, tx_power_min_dbm=27.0, tx_power_max_dbm=33.0)
    return PhysicsGrid(physics, rx, np.zeros(4), SearchArea(-300, 1800, -300, 1800), point_estimate=point_estimate)


# Four receivers, one far weaker than its distance says: a skewed posterior.
POWER = {"rx_power_dbm": np.array([-60.0, -75.0, -72.0, -85.0]), "heard": np.ones(4, bool), "present": np.ones(4, bool),
         "detection_level_dbm": np.full(4, -120.0)}


@pytest.mark.parametrize("point_estimate", POINT_ESTIMATES)
def test_the_estimator_reports_its_point_with_the_second_moment_and_ellipses_about_it(point_estimate):
    est = _estimator(point_estimate)
    log_post = est.log_posterior(**POWER)
    w = np.exp(log_post - log_post.max())
    w /= w.sum()
    want = {"mean": w @ est.grid_en_m, "map": est.grid_en_m[np.argmax(w)],
            "geometric_median": geometric_median(est.grid_en_m, w[None], tolerance=1e-6, smoothing=1e-6)[0]}[point_estimate]
    res = est.estimate(**POWER)
    np.testing.assert_allclose(res.position_en_m, want, atol=0.5)  # m, on a 50 m grid
    d = est.grid_en_m - res.position_en_m
    moment = (d * w[:, None]).T @ d + np.diag(np.square(est.cell_m) / 12.0)
    np.testing.assert_allclose(res.cov_en_m2, moment, rtol=1e-9)
    np.testing.assert_allclose(res.ellipse_scales, credible_scales(w, est.grid_en_m, est.cell_m, res.position_en_m, moment,
                                                                   subdivisions=PHYSICS_SUBDIVISIONS), rtol=1e-9)
    batch = est.estimate_batch(*(np.stack([v, v]) for v in POWER.values()))
    for got in batch:
        np.testing.assert_allclose(got.position_en_m, res.position_en_m, atol=1e-6)
        np.testing.assert_allclose(got.cov_en_m2, res.cov_en_m2, rtol=1e-9)
        np.testing.assert_allclose(got.ellipse_scales, res.ellipse_scales, rtol=1e-9)


def test_the_geometric_median_is_nearer_the_transmitter_on_average_than_the_mean_on_skewed_posteriors():
    # The distance the gates score: on windows drawn from the estimator's own model (shadowing 6 dB) the geometric
    # median's mean error cannot exceed the posterior mean's by more than noise (it minimises the expected distance).
    physics = PhysicsConfig(grid_step_km=0.05, ref_loss_db=85.7, tx_alt_m=1.5, tx_power_min_dbm=27.0, tx_power_max_dbm=33.0,
                            shadowing_db=6.0, calibration_sigma_db=1.0)
    rx = np.array([[0.0, 0.0], [1500.0, 0.0], [0.0, 1500.0], [1500.0, 1500.0], [750.0, 400.0]])
    area = SearchArea(-300, 1800, -300, 1800)
    by_point = {p: PhysicsGrid(physics, rx, np.zeros(5), area, point_estimate=p) for p in ("mean", "geometric_median")}
    rng = np.random.default_rng(11)
    truth = rng.uniform(0.0, 1500.0, size=(200, 2))
    dist = np.hypot(truth[:, None, 0] - rx[None, :, 0], truth[:, None, 1] - rx[None, :, 1])
    power = 30.0 - log_distance_path_loss_db(np.hypot(dist, 1.5), physics.ref_loss_db, physics.path_loss_exponent)
    power += rng.normal(0.0, np.hypot(6.0, 1.0), size=power.shape)
    ones = np.ones_like(power, bool)
    silent_below = np.full_like(power, -130.0)
    errors = {p: np.hypot(*(np.array([r.position_en_m for r in est.estimate_batch(power, ones, ones, silent_below)]) - truth).T)
              for p, est in by_point.items()}
    assert errors["geometric_median"].mean() <= errors["mean"].mean() * 1.02


def test_an_unknown_point_estimate_is_refused_by_name():
    with pytest.raises(ValueError, match="point_estimate: expected one of mean, geometric_median, map, got 'median'"):
        _estimator("median")


@pytest.mark.parametrize("point_estimate", POINT_ESTIMATES)
def test_the_configured_point_reaches_the_daemons_estimator(point_estimate):
    default = load_config()  # the embedded default network
    config = dataclasses.replace(default, estimator=dataclasses.replace(
        default.estimator, kind="physics", physics=dataclasses.replace(default.estimator.physics, point_estimate=point_estimate)))
    est = PhysicsGrid.from_config(config)
    assert est.point_estimate == point_estimate
    explicit = PhysicsGrid(config.estimator.physics, est.rx_en_m, est.rx_alt_m, est.area, point_estimate=point_estimate)
    power = {"rx_power_dbm": np.full(len(est.rx_en_m), -90.0), "heard": np.ones(len(est.rx_en_m), bool),
             "present": np.ones(len(est.rx_en_m), bool), "detection_level_dbm": np.full(len(est.rx_en_m), -120.0)}
    power["rx_power_dbm"][0] = -70.0
    np.testing.assert_array_equal(est.estimate(**power).position_en_m, explicit.estimate(**power).position_en_m)
