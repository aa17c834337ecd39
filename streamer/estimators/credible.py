"""Credible ellipses of a grid posterior: the covariance ellipse scaled to hold a given probability.

A 2-D Gaussian's p-ellipse spans k = sqrt(-2 ln(1 - p)) standard deviations (``geodesy.ellipse_scale``). A
posterior on a grid is rarely Gaussian: one cut off by the search area's edges is lighter-tailed, one with a
second mode or a long ridge heavier-tailed, and the Gaussian k then holds more or less than p of its mass
(the moment ellipse of a peaked posterior with a long tail holds well over 68 % at k = 1.515). The credible
ellipse keeps the covariance's centre, shape and orientation and takes k from the posterior itself: the
Mahalanobis radius inside which the posterior holds probability p.

Each cell's mass is spread over its area (``subdivisions`` x ``subdivisions`` equal points per cell), and the
posterior's distribution of squared Mahalanobis radius is read between the midpoints of its cumulative steps,
so a posterior within one or two cells still gets a radius of the order of a uniform square's, not zero.
The trainer's ``GridPosterior`` computes the same thing in torch (``models/train/network.py``,
``credible_radius_sq``; a test checks that both agree).
"""

from __future__ import annotations

import numpy as np

from streamer.core.geodesy import ellipse_scale

#: The probabilities of the ellipses an estimate carries: the message's ``ellipses`` and evaluate's cov68/cov95.
ELLIPSE_PROBABILITIES = (0.68, 0.95)
#: Points per cell side over which a cell's mass is spread, for the model's 32 x 32 grid (``GridPosterior``; the
#: graph sorts 32 * 32 * SUBDIVISIONS^2 radii per window, which at 4 would outweigh the rest of the model at batch
#: 1). The physics posterior's grid is about 3 times finer (100 cells along the area's longer side) and spreads
#: nothing (``PHYSICS_SUBDIVISIONS``): tests/streamer/test_credible.py checks that its radii agree with 2 x 2
#: points within 1 % on the default network.
SUBDIVISIONS = 2
PHYSICS_SUBDIVISIONS = 1


def subcell_offsets(subdivisions: int = SUBDIVISIONS) -> np.ndarray:
    """``[S, 2]`` offsets of a cell's points in units of its size (east, north), S = subdivisions^2, centred."""
    u = (np.arange(subdivisions) + 0.5) / subdivisions - 0.5
    ue, un = np.meshgrid(u, u, indexing="xy")
    return np.stack([ue.ravel(), un.ravel()], axis=-1)


def radius_sq_at_mass(radius_sq: np.ndarray, weights: np.ndarray, probabilities=ELLIPSE_PROBABILITIES) -> np.ndarray:
    """``[P]`` squared radii holding each probability of a discrete distribution of ``radius_sq`` ``[N]`` with
    ``weights`` ``[N]`` (summing to 1), interpolated between the midpoints of the cumulative steps."""
    order = np.argsort(radius_sq, kind="stable")
    r2 = np.asarray(radius_sq, dtype=np.float64)[order]
    w = np.asarray(weights, dtype=np.float64)[order]
    mid = np.cumsum(w) - 0.5 * w
    # np.interp holds the end values outside [mid[0], mid[-1]]: a probability beyond the last midpoint gets the
    # largest radius, one below the first the smallest.
    return np.interp(np.asarray(probabilities, dtype=np.float64), mid, r2)


def credible_scales(weights, cells_en, cell_size_en, mean_en, cov_en, probabilities=ELLIPSE_PROBABILITIES,
                    subdivisions: int = SUBDIVISIONS, min_weight: float = 1e-12) -> np.ndarray:
    """``[P]`` Mahalanobis radii k_p (standard deviations of ``cov_en``) of the ellipses centred on ``mean_en`` with
    ``cov_en``'s shape that hold probability p of a grid posterior.

    Parameters
    ----------
    weights : ``[G]`` posterior probability of each cell (summing to 1).
    cells_en : ``[G, 2]`` cell centres (east, north; any length unit, the same for every argument).
    cell_size_en : ``[2]`` a cell's east and north size.
    mean_en : ``[2]`` the ellipse's centre (the posterior mean).
    cov_en : ``[2, 2]`` the covariance whose shape the ellipse takes (the posterior's).
    min_weight : cells lighter than this are left out (they cannot move a quantile).

    A radius that comes out 0 (all the mass at one point: a posterior inside one cell, spread over no sub-cell
    points) is a Gaussian's, ``geodesy.ellipse_scale(p)``: the grid cannot resolve that posterior's shape, and its
    covariance (which holds the cell's own spread) is all there is to draw.

    Examples
    --------
    A Gaussian on a fine grid gets the Gaussian radii, 1.515 and 2.448:

    >>> g = np.arange(-60, 61) / 10.0
    >>> cells = np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2)
    >>> w = np.exp(-0.5 * (cells**2).sum(-1)); w /= w.sum()
    >>> np.round(credible_scales(w, cells, [0.1, 0.1], [0.0, 0.0], np.eye(2)), 2).tolist()
    [1.51, 2.45]
    """
    w = np.asarray(weights, dtype=np.float64)
    keep = w >= min_weight
    w = w[keep] / w[keep].sum()
    cells = np.asarray(cells_en, dtype=np.float64)[keep]
    offsets = subcell_offsets(subdivisions) * np.asarray(cell_size_en, dtype=np.float64)  # [S, 2]
    delta = (cells[:, None, :] + offsets[None, :, :] - np.asarray(mean_en, dtype=np.float64)).reshape(-1, 2)
    cov = np.asarray(cov_en, dtype=np.float64)
    inv = np.linalg.inv(0.5 * (cov + cov.T))
    r2 = np.einsum("ni,ij,nj->n", delta, inv, delta)
    point_w = np.repeat(w / len(offsets), len(offsets))
    k = np.sqrt(radius_sq_at_mass(r2, point_w, probabilities))
    return np.where(k > 0, k, [ellipse_scale(p) for p in probabilities])
