"""Credible ellipses of a grid posterior (streamer.estimators.credible): radii that hold the posterior's own mass."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamer.estimators.credible import ELLIPSE_PROBABILITIES, credible_scales, radius_sq_at_mass, subcell_offsets
from streamer.core.geodesy import ellipse_scale, mahalanobis_sq


def _grid(half: float, step: float) -> np.ndarray:
    g = np.arange(-half + step / 2, half, step)
    return np.stack(np.meshgrid(g, g, indexing="xy"), axis=-1).reshape(-1, 2)


def _moments(w, cells, step):
    mean = w @ cells
    d = cells - mean
    return mean, (d * w[:, None]).T @ d + np.eye(2) * step**2 / 12.0


def test_a_gaussian_posterior_gets_the_gaussian_radii():
    cells = _grid(6.0, 0.1)
    cov = np.array([[1.0, 0.3], [0.3, 0.5]])
    w = np.exp(-0.5 * mahalanobis_sq(cells, cov))
    w /= w.sum()
    mean, moment_cov = _moments(w, cells, 0.1)
    k = credible_scales(w, cells, [0.1, 0.1], mean, moment_cov)
    np.testing.assert_allclose(k, [ellipse_scale(p) for p in ELLIPSE_PROBABILITIES], rtol=0.01)


def test_a_uniform_posterior_gets_the_radii_of_a_uniform_square():
    """Uniform over a square (a posterior the area's edges cut off everywhere): lighter-tailed than a Gaussian.
    Its radii from a dense random sample of the square, against the grid's."""
    cells = _grid(1.0, 0.05)
    w = np.full(len(cells), 1.0 / len(cells))
    mean, cov = _moments(w, cells, 0.05)
    k = credible_scales(w, cells, [0.05, 0.05], mean, cov)
    points = np.random.default_rng(3).uniform(-1.0, 1.0, size=(400_000, 2))
    expected = np.sqrt(np.quantile(mahalanobis_sq(points, np.eye(2) / 3.0), ELLIPSE_PROBABILITIES))
    np.testing.assert_allclose(k, expected, rtol=0.01)
    assert k[1] < ellipse_scale(0.95)  # the Gaussian's 95 % ellipse would hold more than 95 % of it


def test_a_peaked_posterior_with_heavy_tails_gets_a_smaller_68_radius_than_the_gaussian():
    """80 % in a tight core, 20 % in a broad halo: the halo inflates the covariance, so a Gaussian 68 % ellipse
    about the mean holds far more than 68 % (the moment ellipse of a heavy-tailed posterior)."""
    cells = _grid(16.0, 0.1)
    r2 = (cells**2).sum(-1)
    core, halo = np.exp(-0.5 * r2 / 0.5**2), np.exp(-0.5 * r2 / 4.0**2)
    w = 0.8 * core / core.sum() + 0.2 * halo / halo.sum()
    mean, cov = _moments(w, cells, 0.1)
    k = credible_scales(w, cells, [0.1, 0.1], mean, cov)
    m2 = mahalanobis_sq(cells - mean, cov)
    assert w[m2 <= ellipse_scale(0.68) ** 2].sum() > 0.75
    assert k[0] < 0.9 * ellipse_scale(0.68)
    assert w[m2 <= k[0] ** 2].sum() == pytest.approx(0.68, abs=0.01)
    assert w[m2 <= k[1] ** 2].sum() == pytest.approx(0.95, abs=0.01)


def test_a_posterior_within_one_cell_gets_a_radius_of_the_order_of_the_cell_not_zero():
    k = credible_scales([1.0], [[0.0, 0.0]], [1.0, 1.0], [0.0, 0.0], np.eye(2) / 12.0)
    assert 1.0 < k[0] <= k[1] < 2.6  # a uniform square: 1.61 and 2.08


def test_radius_at_mass_interpolates_between_step_midpoints_and_holds_the_ends():
    r2 = np.array([4.0, 1.0, 9.0])
    w = np.array([0.25, 0.5, 0.25])  # sorted: 1 (0.5), 4 (0.25), 9 (0.25); midpoints 0.25, 0.625, 0.875
    np.testing.assert_allclose(radius_sq_at_mass(r2, w, (0.1, 0.25, 0.75, 0.95)), [1.0, 1.0, 6.5, 9.0])


def test_subcell_offsets_tile_the_cell_evenly():
    offsets = subcell_offsets(4)
    assert offsets.shape == (16, 2)
    np.testing.assert_allclose(offsets.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(sorted(set(offsets[:, 0])), [-0.375, -0.125, 0.125, 0.375])
    assert math.isclose(offsets[:, 0].var(), 5.0 / 64.0)


def test_the_wire_carries_the_68_and_95_ellipses_with_the_scales_they_span():
    from streamer.core.geodesy import ellipse_from_covariance
    from streamer.daemon.messages import EstimateOut

    cov = np.array([[4.0e6, 0.0], [0.0, 1.0e6]])
    ellipses = tuple(ellipse_from_covariance(cov, p, k) for p, k in zip(ELLIPSE_PROBABILITIES, (1.2, 2.2)))
    wire = EstimateOut("physics", 45.0, 7.0, cov, ellipses[-1], 1.0, ellipses).to_wire()
    assert [e["p"] for e in wire["ellipses"]] == [0.68, 0.95]
    assert wire["ellipses"][0]["semi_major_m"] == pytest.approx(1.2 * 2000.0)
    assert wire["ellipse"] == wire["ellipses"][1] and wire["ellipse"]["scale"] == pytest.approx(2.2)
    gaussian = EstimateOut("physics", 45.0, 7.0, cov, ellipse_from_covariance(cov, 0.95)).to_wire()
    assert gaussian["ellipses"] == [gaussian["ellipse"]] and gaussian["ellipse"]["scale"] == pytest.approx(ellipse_scale(0.95))
    with pytest.raises(ValueError, match="ellipse scale must be a positive number"):
        ellipse_from_covariance(cov, 0.95, float("nan"))


def test_the_physics_posteriors_grid_is_fine_enough_to_spread_nothing():
    """PHYSICS_SUBDIVISIONS = 1: on the default network's posterior the radii with 2 x 2 points per cell agree."""
    from streamer.config import load
    from streamer.estimators.credible import PHYSICS_SUBDIVISIONS
    from streamer.estimators.physics import PhysicsGrid

    config = load()
    est = PhysicsGrid.from_config(config)
    n = len(config.receivers)
    power = np.array([-95.0, -88.0, -101.0, -92.0, -99.0, -90.0, -97.0])[:n]
    heard = np.ones(n, bool)
    result = est.estimate(power, heard, heard, np.full(n, -121.0))
    log_post = est.log_posterior(power, heard, heard, np.full(n, -121.0))
    w = np.exp(log_post - log_post.max())
    w /= w.sum()
    assert PHYSICS_SUBDIVISIONS == 1
    spread = credible_scales(w, est.grid_en_m, est.cell_m, result.position_en_m, result.cov_en_m2, subdivisions=2)
    np.testing.assert_allclose(result.ellipse_scales, spread, rtol=0.01)


def test_a_posterior_the_grid_cannot_resolve_gets_a_gaussians_radii_not_zero():
    """All the mass at one point (one cell, no sub-cell points, as the physics posterior spreads it): a radius of 0
    would draw no ellipse at all; the covariance, which holds the cell's own spread, is drawn at a Gaussian's."""
    k = credible_scales([1.0], [[0.0, 0.0]], [1.0, 1.0], [0.0, 0.0], np.eye(2) / 12.0, subdivisions=1)
    np.testing.assert_allclose(k, [ellipse_scale(p) for p in ELLIPSE_PROBABILITIES])
