"""The physics posterior: ``PhysicsGrid`` computes the Bayesian grid posterior of the transmitter position from
per-receiver received power (dBm in; position and covariance in the network's ENU plane, m and m^2), and
``PhysicsPosterior`` puts it behind the Estimator protocol.

Its inputs come from the daemon's other stages: each receiver's in-channel power and "heard" flag from
``streamer.dsp.detection.channel_power``, and the median propagation model from ``streamer.core.propagation``
(``log_distance_path_loss_db`` of ``slant_distance_m``), the one the simulator renders with: the estimator may
know the model, never its realisation.

``PhysicsGrid.estimate`` puts a uniform prior on position over the search area (``grid_shape`` cells) and
on transmit power (``power_bins`` bins), a Gaussian likelihood (variance shadowing^2 + calibration^2, or the
full ``correlated_error_cov``, or a surveyed ``shadowing_map``) on the receivers that heard and a censoring
term P(received < detection level) on those that did not. It reports the posterior mean, the full 2x2
covariance and the credible ellipses' radii (``streamer.estimators.credible``: the covariance's shape scaled
to hold 68 % / 95 % of the posterior). The point it reports is the posterior mean, or by ``point_estimate``
the posterior's geometric (spatial) median, which minimises the expected distance to the transmitter, or its
mode (``POINT_ESTIMATES``); the covariance is then the second moment about that point and the ellipses are
centred on it. ``PhysicsGrid.estimate_batch`` does the same for several windows at once
(one tick's channels), with the same results. ``grid_bytes`` is what that grid costs, for the preflight check.

A posterior rather than maximum likelihood with a Fisher ellipse: with several dB of shadowing the likelihood
is far from Gaussian (banana-shaped, clipped by the area), so a Fisher ellipse misstates the error, while the
posterior's own mean, covariance and credible radii describe it.

Examples
--------
>>> from streamer.core.geodesy import SearchArea
>>> grid_shape(SearchArea(-30e3, 70e3, -30e3, 50e3), grid_step_km=2.0)
(50, 40)
"""


from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.special import log_ndtr

from streamer.config import PHYSICS_POINT_ESTIMATES, Config
from streamer.core.calibration_drift import (
    SECONDS_PER_DAY,
    CalibrationDrift,
    parse_calibrated_at,
)
from streamer.core.geodesy import SearchArea, ellipse_scale, network_geometry
from streamer.core.propagation import log_distance_path_loss_db, slant_distance_m
from streamer.estimators.base import Estimate, EstimatorInputs, file_sha256
from streamer.estimators.credible import (
    ELLIPSE_PROBABILITIES,
    PHYSICS_SUBDIVISIONS,
    credible_scales,
    radius_sq_at_mass,
    subcell_offsets,
)
from streamer.estimators.normal_tail import add_log_ndtr_outer
from streamer.estimators.survey import load_map

#: Resolution of the numerical marginalisation over transmit power (dB). The power likelihood is at
#: least sigma / sqrt(16 receivers) ~ 1.6 dB wide, so the midpoint rule at 0.5 dB stays within 0.01 nat
#: of the exact integral (tests/streamer/test_physics.py); 0.25 dB cost twice as much for nothing visible.
POWER_STEP_DB = 0.5


# ----------------------------------------------------------------------------------------------------
# Estimator


@dataclass(frozen=True)
class PhysicsResult:
    """Posterior summary of one window.

    position_en_m : ``[2]`` the point estimate (east, north) in metres from the network origin: the posterior
        mean, geometric median or mode (``PhysicsGrid``'s ``point_estimate``).
    cov_en_m2 : ``[2, 2]`` posterior second moment about that point (m^2; the covariance when it is the mean),
        including the grid cell's own spread.
    ellipse_scales : ``[P]`` the credible ellipses' radii in standard deviations of ``cov_en_m2``: the ellipses
        about the point with that matrix's shape that hold ``credible.ELLIPSE_PROBABILITIES`` of the posterior.
    tx_power_dbm : posterior mean transmit power (dBm).
    n_heard : receivers that heard (Gaussian term).
    n_censored : present receivers that did not hear (censoring term).
    """

    position_en_m: np.ndarray
    cov_en_m2: np.ndarray
    tx_power_dbm: float
    n_heard: int
    n_censored: int
    ellipse_scales: np.ndarray


#: ``PhysicsGrid``'s point estimates: ``mean`` (minimises the expected squared error), ``geometric_median``
#: (minimises the expected distance error) and ``map`` (the most probable cell).
POINT_ESTIMATES = PHYSICS_POINT_ESTIMATES
#: ``geometric_median``: iterations stop when no window's point moves by more than this fraction of a cell, or
#: after ``GEOMETRIC_MEDIAN_MAX_ITERATIONS``.
GEOMETRIC_MEDIAN_TOLERANCE_CELLS = 1e-3
GEOMETRIC_MEDIAN_MAX_ITERATIONS = 500
#: ``geometric_median`` minimises sum w sqrt(d^2 + eps^2) with eps this fraction of a cell: without it the
#: iteration divides by zero on a cell centre, and the minimiser moves by less than eps (below the grid's resolution).
GEOMETRIC_MEDIAN_SMOOTHING_CELLS = 0.05


def geometric_median(points, weights, start=None, *, tolerance: float, smoothing: float,
                     max_iterations: int = GEOMETRIC_MEDIAN_MAX_ITERATIONS) -> np.ndarray:
    """``[B, 2]`` weighted geometric medians of ``B`` distributions over the same ``points`` ``[G, 2]`` with
    ``weights`` ``[B, G]`` (each row summing to 1): the point x minimising sum_g w_g |x - p_g|, found by Weiszfeld's
    iteration (each step a weighted mean with weights w_g / |x - p_g|, which never increases the sum) from
    ``start`` ``[B, 2]`` (default: the means). ``smoothing`` (the points' unit) replaces |d| by sqrt(d^2 + s^2),
    ``tolerance`` the largest step at which it stops.

    >>> pts = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    >>> np.round(geometric_median(pts, np.array([[0.4, 0.35, 0.25]]), tolerance=1e-9, smoothing=1e-9), 3).tolist()
    [[1.0, 0.0]]
    """
    pts = np.asarray(points, dtype=np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    x = w @ pts if start is None else np.array(start, dtype=np.float64, copy=True).reshape(w.shape[0], 2)
    active = np.arange(w.shape[0])
    for _ in range(max_iterations):
        if not active.size:
            break
        d2 = (pts[None, :, 0] - x[active, 0:1]) ** 2 + (pts[None, :, 1] - x[active, 1:2]) ** 2
        q = w[active] / np.sqrt(d2 + smoothing * smoothing)
        step = q @ pts / q.sum(axis=1, keepdims=True)
        moved = np.abs(step - x[active]).max(axis=1)
        x[active] = step
        active = active[moved > tolerance]
    return x


def grid_shape(area: SearchArea, grid_step_km: float) -> tuple[int, int]:
    """(east, north) cell counts of the posterior grid: cells tile the area exactly (the step adjusted per
    axis), so the uniform prior covers exactly it."""
    step_m = 1000.0 * grid_step_km
    return max(1, round(area.width_m / step_m)), max(1, round(area.height_m / step_m))


def power_bins(physics) -> int:
    """Bins of the transmit-power marginalisation: ``POWER_STEP_DB`` wide over the prior's range."""
    return max(1, math.ceil((physics.tx_power_max_dbm - physics.tx_power_min_dbm) / POWER_STEP_DB))


def grid_bytes(physics, area: SearchArea, n_receivers: int) -> tuple[int, int]:
    """``(cells, bytes)``: the posterior grid's size and what the estimator holds at its peak, in float64:
    cell centres and their meshgrid (4 per cell), distance, path loss and implied power per receiver
    (3 x receivers) and the log posterior over the power bins (``power_bins``)."""
    n_e, n_n = grid_shape(area, physics.grid_step_km)
    cells = n_e * n_n
    return cells, cells * 8 * (4 + 3 * n_receivers + power_bins(physics))


class PhysicsGrid:
    """Grid posterior of the transmitter position from per-receiver received power.

    Parameters
    ----------
    physics : ``PhysicsConfig`` (path-loss model, shadowing and calibration sigmas in dB, transmit power
        prior in dBm, grid step in km, assumed transmitter altitude in m).
    rx_enu_m : ``[R, 2]`` or ``[R, 3]`` receiver positions (m); only east and north are used.
    rx_alt_m : ``[R]`` receiver antenna heights above the ellipsoid (m).
    area : the search area (uniform prior over it).
    error_cov_db2 : optional ``[R, R]`` covariance of the receivers' power errors (shadowing + calibration,
        dB^2), e.g. from ``correlated_error_cov``; default ``sigma_db^2 I`` with
        ``sigma_db = hypot(shadowing_db, calibration_sigma_db)`` (independent receivers).
    shadowing_map : optional callable ``grid_en_m [G, 2] -> (mean_db [G, R], sd_db [G, R])``: a surveyed map of
        each receiver's shadowing (received power minus the median model's, dB) at each cell and the standard
        deviation of what remains (dB, shadowing and calibration together); replaces ``sigma_db``.
    point_estimate : the point reported, one of ``POINT_ESTIMATES``; unset: ``physics.point_estimate``
        (``estimator.physics.point_estimate``, default ``mean``). The covariance and ellipses are taken about it.

    Examples
    --------
    >>> from streamer.config import PhysicsConfig
    >>> from streamer.core.geodesy import SearchArea
    >>> est = PhysicsGrid(PhysicsConfig(), [[0, 0], [40e3, 0], [0, 40e3]], [100, 100, 100],
    ...                        SearchArea(-30e3, 70e3, -30e3, 70e3))
    >>> res = est.estimate([-80.0, -95.0, -95.0], heard=[True, True, True], present=[True, True, True],
    ...                    detection_level_dbm=[-121.0] * 3)
    >>> bool(abs(res.position_en_m[0]) < 20e3 and abs(res.position_en_m[1]) < 20e3)
    True
    """

    def __init__(self, physics, rx_enu_m, rx_alt_m, area: SearchArea, error_cov_db2=None, shadowing_map=None,
                 point_estimate: str | None = None) -> None:
        point_estimate = physics.point_estimate if point_estimate is None else point_estimate
        if point_estimate not in POINT_ESTIMATES:
            raise ValueError(f"point_estimate: expected one of {', '.join(POINT_ESTIMATES)}, got {point_estimate!r}")
        self.point_estimate = point_estimate
        self.physics = physics
        self.area = area
        rx = np.asarray(rx_enu_m, dtype=np.float64)
        self.rx_en_m = rx[:, :2].copy()
        self.rx_alt_m = np.asarray(rx_alt_m, dtype=np.float64).reshape(-1)
        if self.rx_alt_m.shape[0] != self.rx_en_m.shape[0]:
            raise ValueError(f"rx_alt_m has {self.rx_alt_m.shape[0]} entries for {self.rx_en_m.shape[0]} receivers")
        n_e, n_n = grid_shape(area, physics.grid_step_km)
        self.cell_m = (area.width_m / n_e, area.height_m / n_n)
        east = area.east_min_m + (np.arange(n_e) + 0.5) * self.cell_m[0]
        north = area.north_min_m + (np.arange(n_n) + 0.5) * self.cell_m[1]
        ee, nn = np.meshgrid(east, north, indexing="xy")
        self.grid_en_m = np.stack([ee.ravel(), nn.ravel()], axis=-1)  # [G, 2]
        dist = slant_distance_m(self.grid_en_m, physics.tx_alt_m, self.rx_en_m, self.rx_alt_m)
        self._path_loss_db = log_distance_path_loss_db(dist, physics.ref_loss_db, physics.path_loss_exponent)  # [G, R]
        span = physics.tx_power_max_dbm - physics.tx_power_min_dbm
        n_p = power_bins(physics)
        self.power_grid_dbm = physics.tx_power_min_dbm + (np.arange(n_p) + 0.5) * span / n_p  # [P] bin centres
        self.sigma_db = math.hypot(physics.shadowing_db, physics.calibration_sigma_db)
        # Optional full covariance of the receivers' power errors (shadowing + calibration, dB^2) in place of
        # the i.i.d. sigma_db^2 I: nearby receivers see correlated shadowing (shared obstacles near the
        # transmitter), and i.i.d. errors then count the same evidence several times (overconfidence).
        self.error_cov_db2 = None
        if error_cov_db2 is not None:
            cov = np.asarray(error_cov_db2, dtype=np.float64)
            n_rx = self.rx_en_m.shape[0]
            if cov.shape != (n_rx, n_rx):
                raise ValueError(f"error_cov_db2: expected shape ({n_rx}, {n_rx}), got {cov.shape}")
            if not np.allclose(cov, cov.T) or np.linalg.eigvalsh(0.5 * (cov + cov.T)).min() <= 0:
                raise ValueError("error_cov_db2 must be symmetric positive definite")
            self.error_cov_db2 = 0.5 * (cov + cov.T)
        # Optional surveyed shadowing map: at each cell, the received power's expected departure from the median
        # path loss (dB) and the remaining error's standard deviation (dB), per receiver; receivers independent.
        self._error_var_db2 = None
        if shadowing_map is not None:
            if error_cov_db2 is not None:
                raise ValueError("give error_cov_db2 or shadowing_map, not both")
            mean_db, sd_db = (np.asarray(a, dtype=np.float64) for a in shadowing_map(self.grid_en_m))
            want = self._path_loss_db.shape
            if mean_db.shape != want or sd_db.shape != want or not np.all(sd_db > 0):
                raise ValueError(f"shadowing_map must return mean and sd (> 0) of shape {want}, got {mean_db.shape}, {sd_db.shape}")
            self._path_loss_db = self._path_loss_db - mean_db
            self._error_var_db2 = sd_db**2
        # A uniform variable over one cell has variance step^2 / 12 per axis: the posterior cannot be
        # narrower than the grid that represents it.
        self._cell_cov_m2 = np.diag([self.cell_m[0] ** 2 / 12.0, self.cell_m[1] ** 2 / 12.0])
        self._subset_cache: dict[bytes, _Subset] = {}
        self._batch_constants: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # estimate_batch's, on first use
        # What widen_calibration adds to: the error model as configured, before any calibration age.
        self._unaged = (self.sigma_db, self.error_cov_db2, self._error_var_db2)

    def widen_calibration(self, extra_var_db2) -> None:
        """Add ``extra_var_db2`` ``[R]`` (dB^2) to each receiver's error variance, replacing what an earlier call
        added: the calibration's drift since it was measured (``drift_variance_db2``). Cheap: the grid and the
        path loss are kept. Equal values keep the i.i.d. form (one sigma); differing ones make the error
        covariance diagonal per receiver (or widen a surveyed map's sd per receiver)."""
        extra = np.asarray(extra_var_db2, dtype=np.float64).reshape(-1)
        n_rx = self.rx_en_m.shape[0]
        if extra.shape != (n_rx,) or not np.all(np.isfinite(extra)) or np.any(extra < 0):
            raise ValueError(f"extra_var_db2: expected {n_rx} finite variances >= 0 (dB^2), got {extra.tolist()}")
        sigma, cov, var = self._unaged
        if var is not None:
            self._error_var_db2 = var + extra[None, :]
        elif cov is None and np.all(extra == extra[0]):
            self.sigma_db, self.error_cov_db2 = math.sqrt(sigma**2 + float(extra[0])), None
        else:
            self.error_cov_db2 = (sigma**2 * np.eye(n_rx) if cov is None else cov) + np.diag(extra)

    def _subset(self, used: np.ndarray) -> _Subset:
        """The path-loss constants of one set of receivers (``used``, bool ``[R]``), computed once per set.

        The set of hearing receivers changes rarely from window to window; gathering and centring its ``[G, k]``
        block of path loss on every window was most of the posterior's cost with many receivers.
        """
        key = used.tobytes()
        subset = self._subset_cache.get(key)
        if subset is None:
            if len(self._subset_cache) >= SUBSET_CACHE_SIZE:
                self._subset_cache.pop(next(iter(self._subset_cache)))  # the oldest set
            subset = self._subset_cache[key] = _Subset.of(self._path_loss_db[:, used])
        return subset

    @classmethod
    def from_config(cls, config, shadowing_map=None) -> PhysicsGrid:
        """Estimator for a ``Config``'s receivers, search area and ``estimator.physics`` section (``shadowing_map``:
        the callable of ``__init__``, e.g. ``streamer.estimators.survey.load_map(config)``)."""
        _, rx_enu, area = network_geometry(config)
        alts = np.array([rx.alt_m for rx in config.receivers], dtype=np.float64)
        return cls(config.estimator.physics, rx_enu, alts, area, shadowing_map=shadowing_map)

    def log_posterior(self, rx_power_dbm, heard, present, detection_level_dbm) -> np.ndarray:
        """Unnormalised log posterior over the grid cells ``[G]`` (transmit power marginalised)."""
        rx_power = np.asarray(rx_power_dbm, dtype=np.float64)
        heard = np.asarray(heard, dtype=bool)
        present = np.asarray(present, dtype=bool)
        detection = np.asarray(detection_level_dbm, dtype=np.float64)
        n_rx = self.rx_en_m.shape[0]
        for name, arr in (("rx_power_dbm", rx_power), ("heard", heard), ("present", present), ("detection_level_dbm", detection)):
            if arr.shape != (n_rx,):
                raise ValueError(f"{name}: expected shape ({n_rx},), got {arr.shape}")
        s = self.sigma_db
        p = self.power_grid_dbm  # [P]
        use_heard = present & heard & np.isfinite(rx_power)
        use_cens = present & ~heard & np.isfinite(detection)
        if self.error_cov_db2 is not None:
            return self._log_posterior_correlated(rx_power, use_heard, use_cens, detection)
        if self._error_var_db2 is not None:
            return self._log_posterior_mapped(rx_power, use_heard, use_cens, detection)
        if not use_cens.any():
            return self._log_posterior_uncensored(rx_power, use_heard)
        if use_heard.any():
            # Each hearing receiver implies a transmit power y = received + path loss; their Gaussian
            # likelihood in P is -(k (P - mean(y))^2 + scatter(y)) / (2 s^2), so no [G, R, P] array is needed.
            # In place: each [G, P] temporary is a pass over memory.
            k, mu, scatter = self._implied_power(rx_power, use_heard)
            log_post = np.subtract(p[None, :], mu[:, None])
            np.square(log_post, out=log_post)
            log_post *= k
            log_post += scatter[:, None]
            log_post /= -2.0 * s * s
        else:
            log_post = np.zeros((self.grid_en_m.shape[0], p.shape[0]))
        # Not heard: the received power P - PL fell below the detection level.
        add_censoring(log_post, p, lambda i: (detection[i] + self._path_loss_db[:, i], 1.0 / s), np.flatnonzero(use_cens))
        # logsumexp over P by hand (scipy's generic version costs ~3x more on this [G, P] shape), in place.
        peak = log_post.max(axis=1)
        log_post -= peak[:, None]
        np.exp(log_post, out=log_post)
        return np.log(log_post.sum(axis=1)) + peak

    def _log_posterior_correlated(self, rx_power, use_heard, use_cens, detection) -> np.ndarray:
        """The posterior with the full error covariance ``error_cov_db2`` (Gaussian in the hearing receivers).

        With W = inverse of the hearing receivers' error covariance and y_g the transmit powers they imply at
        cell g, the likelihood in P is exp(-(y - P 1)^T W (y - P 1) / 2) = exp(-(q - b^2/a) / 2) times a
        Gaussian in P of mean b/a and variance 1/a (a = 1^T W 1, b = 1^T W y, q = y^T W y); the uniform prior
        on P integrates it in closed form. With W = I / sigma^2 this is exactly the i.i.d. posterior. Silent
        receivers keep their independent censoring term (each with its own error variance), on the grid over P.
        """
        cov = self.error_cov_db2
        idx = np.flatnonzero(use_heard)
        n_grid = self.grid_en_m.shape[0]
        if idx.size:
            w = np.linalg.inv(cov[np.ix_(idx, idx)])
            w = 0.5 * (w + w.T)
            y = rx_power[idx] + self._path_loss_db[:, idx]  # [G, k]
            centre = y.mean(axis=1)
            yc = y - centre[:, None]
            wy = yc @ w
            a = float(w.sum())
            b = wy.sum(axis=1)
            scatter = (wy * yc).sum(axis=1) - b * b / a
            mu = centre + b / a
        else:
            a, scatter, mu = 0.0, np.zeros(n_grid), np.zeros(n_grid)
        if not use_cens.any():
            if a == 0.0:
                return np.zeros(n_grid)
            sd = 1.0 / math.sqrt(a)
            lo = (self.physics.tx_power_min_dbm - mu) / sd
            hi = (self.physics.tx_power_max_dbm - mu) / sd
            return -0.5 * scatter + _log_ndtr_difference(lo, hi)
        p = self.power_grid_dbm
        log_post = -0.5 * (scatter[:, None] + a * (p[None, :] - mu[:, None]) ** 2)
        add_censoring(log_post, p, lambda i: (detection[i] + self._path_loss_db[:, i], 1.0 / math.sqrt(cov[i, i])),
                      np.flatnonzero(use_cens))
        peak = log_post.max(axis=1)
        return np.log(np.exp(log_post - peak[:, None]).sum(axis=1)) + peak

    def _log_posterior_mapped(self, rx_power, use_heard, use_cens, detection) -> np.ndarray:
        """The posterior with a shadowing map: independent receivers, error variance v_gr per cell and receiver.

        The same closed form in P as ``_log_posterior_correlated`` with W = diag(1 / v_g) at each cell g; the
        determinant term -1/2 sum ln v_gr no longer cancels between cells and is kept.
        """
        var = self._error_var_db2
        n_grid = self.grid_en_m.shape[0]
        idx = np.flatnonzero(use_heard)
        if idx.size:
            inv = 1.0 / var[:, idx]  # [G, k]
            y = rx_power[idx] + self._path_loss_db[:, idx]
            a = inv.sum(axis=1)
            mu = (inv * y).sum(axis=1) / a
            scatter = (inv * (y - mu[:, None]) ** 2).sum(axis=1)
            log_det = -0.5 * np.log(var[:, idx]).sum(axis=1) - 0.5 * np.log(a)
        else:
            a, mu, scatter, log_det = np.zeros(n_grid), np.zeros(n_grid), np.zeros(n_grid), np.zeros(n_grid)
        if not use_cens.any():
            if not idx.size:
                return np.zeros(n_grid)
            sd = 1.0 / np.sqrt(a)
            lo = (self.physics.tx_power_min_dbm - mu) / sd
            hi = (self.physics.tx_power_max_dbm - mu) / sd
            return -0.5 * scatter + log_det + _log_ndtr_difference(lo, hi)
        p = self.power_grid_dbm
        log_post = -0.5 * (scatter[:, None] + a[:, None] * (p[None, :] - mu[:, None]) ** 2) + log_det[:, None]
        if idx.size:
            log_post += 0.5 * np.log(a)[:, None]  # the P grid integrates the Gaussian in P itself
        add_censoring(log_post, p, lambda i: (detection[i] + self._path_loss_db[:, i], 1.0 / np.sqrt(var[:, i])),
                      np.flatnonzero(use_cens))
        peak = log_post.max(axis=1)
        return np.log(np.exp(log_post - peak[:, None]).sum(axis=1)) + peak

    def _implied_power(self, rx_power_dbm: np.ndarray, used: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        """``(k, mean, scatter)`` of the transmit powers y_gr = received_r + PL_gr that the ``used`` receivers
        imply at each cell: ``mean [G]`` over them and ``scatter [G]`` = sum_r (y_gr - mean_g)^2.

        With r_c = r - mean(r) and the subset's centred path loss C (``_Subset``), scatter = sum(C^2) + 2 C r_c +
        sum(r_c^2): one matrix-vector product per window instead of building and reducing ``[G, k]`` arrays.
        """
        subset = self._subset(used)
        r = rx_power_dbm[used]
        r_mean = r.mean()
        rc = r - r_mean
        scatter = subset.centred_sq_sum + 2.0 * (subset.centred @ rc) + float(rc @ rc)
        return r.shape[0], r_mean + subset.mean, np.maximum(scatter, 0.0)

    def _log_posterior_uncensored(self, rx_power_dbm: np.ndarray, used: np.ndarray) -> np.ndarray:
        """The same posterior when every present receiver heard: the uniform transmit-power prior is then
        integrated in closed form (a Gaussian in P over [P_min, P_max]), which is ~20x faster than the grid
        over P and the common case (the censored form is needed only when some receiver did not hear)."""
        s = self.sigma_db
        if not used.any():
            return np.zeros(self.grid_en_m.shape[0])
        k, mu, scatter = self._implied_power(rx_power_dbm, used)
        sd = s / math.sqrt(k)
        lo = (self.physics.tx_power_min_dbm - mu) / sd
        hi = (self.physics.tx_power_max_dbm - mu) / sd
        return -scatter / (2.0 * s * s) + _log_ndtr_difference(lo, hi)

    def estimate(self, rx_power_dbm, heard, present, detection_level_dbm) -> PhysicsResult:
        """Posterior mean and covariance of the transmitter position.

        Parameters
        ----------
        rx_power_dbm : ``[R]`` received signal power (dBm at the antenna), e.g. ``ChannelPower.signal_dbm``;
            only read where ``heard & present``.
        heard : ``[R]`` bool, the receiver heard the transmitter (``ChannelPower.heard``).
        present : ``[R]`` bool, the receiver delivered this window (absent receivers are ignored).
        detection_level_dbm : ``[R]`` power below which the receiver would not have heard
            (``ChannelPower.detection_level_dbm``); read where ``present & ~heard``.
        """
        heard_arr = np.asarray(heard, dtype=bool)
        present_arr = np.asarray(present, dtype=bool)
        log_post = self.log_posterior(rx_power_dbm, heard_arr, present_arr, detection_level_dbm)
        w = np.exp(log_post - log_post.max())
        w /= w.sum()
        point = self._points(w[None, :])[0]
        d = self.grid_en_m - point
        cov = (d * w[:, None]).T @ d + self._cell_cov_m2
        cov = 0.5 * (cov + cov.T)
        tx_power = self._posterior_power(rx_power_dbm, heard_arr & present_arr, w)
        return PhysicsResult(
            position_en_m=point,
            cov_en_m2=cov,
            tx_power_dbm=tx_power,
            n_heard=int((heard_arr & present_arr).sum()),
            n_censored=int((~heard_arr & present_arr).sum()),
            ellipse_scales=credible_scales(w, self.grid_en_m, self.cell_m, point, cov, subdivisions=PHYSICS_SUBDIVISIONS),
        )

    def _points(self, w: np.ndarray) -> np.ndarray:
        """``[B, 2]`` the ``point_estimate`` of each window's posterior weights ``w [B, G]`` (m)."""
        mean = np.einsum("bg,gi->bi", w, self.grid_en_m)
        if self.point_estimate == "map":
            return self.grid_en_m[np.argmax(w, axis=1)]
        if self.point_estimate == "geometric_median":
            cell = min(self.cell_m)
            return geometric_median(self.grid_en_m, w, mean, tolerance=GEOMETRIC_MEDIAN_TOLERANCE_CELLS * cell,
                                    smoothing=GEOMETRIC_MEDIAN_SMOOTHING_CELLS * cell)
        return mean

    def estimate_batch(self, rx_power_dbm, heard, present, detection_level_dbm) -> list[PhysicsResult]:
        """``estimate`` of B windows in one vectorised pass: the same results as B calls of ``estimate``.

        Parameters are ``estimate``'s stacked over windows, ``[B, R]`` each. With the i.i.d. error model the
        hearing receivers' Gaussian term of every window comes from three ``[B, R] x [R, G]`` products (each
        window's set of receivers as a mask, so windows whose sets differ share one pass), the censoring terms
        from one ``[b, G, P]`` evaluation per silent receiver over the windows in which it is silent, and the
        posterior means, covariances, transmit powers and credible radii from ``[B, G]`` arrays. With
        ``error_cov_db2`` or a shadowing map the log posterior is computed window by window (its Gaussian term
        depends on each window's set of receivers through a matrix inverse or per-cell weights), the summaries
        still together. Windows go through in blocks of ``BATCH_BLOCK_CELLS`` cells (a few windows on the default
        grid), so each ``[b, G]`` array stays in cache.
        """
        arrays = self._batch_arrays(rx_power_dbm, heard, present, detection_level_dbm)
        block = max(1, BATCH_BLOCK_CELLS // self.grid_en_m.shape[0])
        return [result for start in range(0, arrays[0].shape[0], block)
                for result in self._estimate_block(*(a[start : start + block] for a in arrays))]

    def _estimate_block(self, rx, heard_arr, present_arr, detection) -> list[PhysicsResult]:
        """``estimate_batch`` of one block of windows (checked ``[b, R]`` arrays)."""
        use_heard = present_arr & heard_arr & np.isfinite(rx)
        use_cens = present_arr & ~heard_arr & np.isfinite(detection)
        if self.error_cov_db2 is not None or self._error_var_db2 is not None:
            log_post = np.stack([self.log_posterior(rx[b], heard_arr[b], present_arr[b], detection[b])
                                 for b in range(rx.shape[0])]) if rx.shape[0] else np.zeros((0, self.grid_en_m.shape[0]))
        else:
            log_post = self._log_posterior_iid_batch(rx, use_heard, use_cens, detection)
        return self._summaries(rx, heard_arr & present_arr, ~heard_arr & present_arr, log_post)

    def _batch_arrays(self, rx_power_dbm, heard, present, detection_level_dbm):
        """The four ``[B, R]`` inputs of ``estimate_batch`` as float64 / bool arrays, their shapes checked."""
        n_rx = self.rx_en_m.shape[0]
        arrays = (np.asarray(rx_power_dbm, dtype=np.float64), np.asarray(heard, dtype=bool),
                  np.asarray(present, dtype=bool), np.asarray(detection_level_dbm, dtype=np.float64))
        batch = arrays[0].shape[0] if arrays[0].ndim == 2 else -1
        for name, arr in zip(("rx_power_dbm", "heard", "present", "detection_level_dbm"), arrays):
            if arr.ndim != 2 or arr.shape != (batch, n_rx):
                raise ValueError(f"{name}: expected shape (B, {n_rx}) with one B for all four inputs, got {arr.shape}")
        return arrays

    def _log_posterior_iid_batch(self, rx, use_heard, use_cens, detection) -> np.ndarray:
        """``[B, G]`` log posteriors with the i.i.d. error model (``log_posterior`` of each window).

        With m the window's mask of hearing receivers, k = sum(m) and the path loss centred per cell over all
        receivers (D = PL - mean_r PL, which keeps the squares small), the implied powers' mean is
        mean(r) + mean_r PL + m.D / k and their scatter sum m (D - m.D/k)^2 + 2 r_c.D + sum r_c^2 (r_c the
        window's received powers centred over its hearing receivers): the products with D, D^2 are all there is
        per window.
        """
        s = self.sigma_db
        if self._batch_constants is None:
            reference = self._path_loss_db.mean(axis=1)
            centred = self._path_loss_db - reference[:, None]
            self._batch_constants = (reference, np.ascontiguousarray(centred.T), np.ascontiguousarray((centred**2).T))
        reference, centred_t, centred_sq_t = self._batch_constants  # [G], [R, G], [R, G]
        mask = use_heard.astype(np.float64)
        k = mask.sum(axis=1)  # [B]
        k_safe = np.maximum(k, 1.0)
        r_mean = np.where(use_heard, rx, 0.0).sum(axis=1) / k_safe
        rc = np.where(use_heard, rx - r_mean[:, None], 0.0)
        # In place: each [B, G] temporary is a pass over memory, and these passes are what the batch costs. The
        # products contract over R receivers only: einsum's own loop, as a BLAS call woke BLAS's threads each time,
        # which on a busy machine cost 100 times the product itself.
        pl_mean = np.einsum("br,rg->bg", mask, centred_t)  # [B, G]: mean over the used receivers of D
        pl_mean /= k_safe[:, None]
        scatter = np.einsum("br,rg->bg", mask, centred_sq_t)
        cross = np.einsum("br,rg->bg", rc, centred_t)
        cross *= 2.0
        scatter += cross
        np.multiply(pl_mean, pl_mean, out=cross)
        cross *= k[:, None]
        scatter -= cross
        scatter += (rc * rc).sum(axis=1)[:, None]
        np.maximum(scatter, 0.0, out=scatter)
        mu = pl_mean
        mu += reference[None, :]
        mu += r_mean[:, None]
        log_post = np.zeros((rx.shape[0], self.grid_en_m.shape[0]))
        censored = use_cens.any(axis=1)
        closed = np.flatnonzero(~censored & (k > 0))  # every present receiver heard: closed form in P
        if closed.size:
            every = closed.size == rx.shape[0]  # the common case: no row gathered
            mu_c, scatter_c = (mu, scatter) if every else (mu[closed], scatter[closed])
            sd = s / np.sqrt(k[closed])[:, None]
            lo = (self.physics.tx_power_min_dbm - mu_c) / sd
            hi = (self.physics.tx_power_max_dbm - mu_c) / sd
            scatter_c /= -2.0 * s * s
            scatter_c += _log_ndtr_difference(lo, hi)
            if every:
                return scatter_c
            log_post[closed] = scatter_c
        rows = np.flatnonzero(censored)
        p = self.power_grid_dbm
        chunk = max(1, BATCH_GRID_ELEMENTS // (self.grid_en_m.shape[0] * p.shape[0]))
        for start in range(0, rows.size, chunk):
            part = rows[start : start + chunk]
            # -(k (P - mu)^2 + scatter) / (2 s^2) over [b, G, P], in place (each temporary is a pass over memory).
            grid = np.subtract(p[None, None, :], mu[part, :, None])
            np.square(grid, out=grid)
            grid *= k[part, None, None]
            grid += scatter[part, :, None]
            grid /= -2.0 * s * s
            grid[k[part] == 0] = 0.0
            for row, window in zip(grid, part):
                add_censoring(row, p, lambda i: (detection[window, i] + self._path_loss_db[:, i], 1.0 / s),
                              np.flatnonzero(use_cens[window]))
            peak = grid.max(axis=2)
            grid -= peak[:, :, None]
            np.exp(grid, out=grid)
            log_post[part] = np.log(grid.sum(axis=2)) + peak
        return log_post

    def _summaries(self, rx, used, censored, log_post) -> list[PhysicsResult]:
        """``PhysicsResult`` of each window from its ``[B, G]`` log posterior: the weights, point, covariance and
        transmit power as ``[B, ...]`` arrays, the credible radii window by window (a sort of its own cells)."""
        w = np.exp(log_post - log_post.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        mean = self._points(w)  # [B, 2]: the point estimate (the mean by default)
        de = self.grid_en_m[None, :, 0] - mean[:, 0:1]
        dn = self.grid_en_m[None, :, 1] - mean[:, 1:2]
        cov = np.empty((w.shape[0], 2, 2))
        cov[:, 0, 0] = (w * de * de).sum(axis=1)
        cov[:, 1, 1] = (w * dn * dn).sum(axis=1)
        cov[:, 0, 1] = cov[:, 1, 0] = (w * de * dn).sum(axis=1)
        cov += self._cell_cov_m2
        k = used.sum(axis=1)
        r_mean = np.where(used, rx, 0.0).sum(axis=1) / np.maximum(k, 1)
        pl_mean = np.einsum("br,gr->bg", used.astype(np.float64), self._path_loss_db) / np.maximum(k, 1)[:, None]
        lo, hi = self.physics.tx_power_min_dbm, self.physics.tx_power_max_dbm
        tx_power = np.where(k > 0, np.clip(r_mean + (w * pl_mean).sum(axis=1), lo, hi), float(self.power_grid_dbm.mean()))
        scales = self._credible_scales_batch(w, mean, cov)
        return [PhysicsResult(position_en_m=mean[b], cov_en_m2=cov[b], tx_power_dbm=float(tx_power[b]),
                              n_heard=int(k[b]), n_censored=int(censored[b].sum()), ellipse_scales=scales[b])
                for b in range(w.shape[0])]

    def _credible_scales_batch(self, w: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
        """``[B, P]`` ``credible.credible_scales`` of each window's weights ``w [B, G]``, centre ``mean`` (the point
        estimate) and matrix ``cov`` (cells spread over ``PHYSICS_SUBDIVISIONS``^2 points): the squared Mahalanobis radii of all windows as one quadratic
        form, then each window's own cells above ``min_weight`` sorted (``credible.radius_sq_at_mass``)."""
        offsets = subcell_offsets(PHYSICS_SUBDIVISIONS) * np.asarray(self.cell_m)  # [S, 2]
        inv = np.linalg.inv(cov)  # [B, 2, 2], symmetric already
        keep = w >= CREDIBLE_MIN_WEIGHT
        gaussian = np.array([ellipse_scale(p) for p in ELLIPSE_PROBABILITIES])
        out = np.empty((w.shape[0], len(ELLIPSE_PROBABILITIES)))
        for b in range(w.shape[0]):
            cells = self.grid_en_m[keep[b]]
            kept = w[b, keep[b]]
            de = (cells[:, None, 0] + offsets[None, :, 0] - mean[b, 0]).ravel()
            dn = (cells[:, None, 1] + offsets[None, :, 1] - mean[b, 1]).ravel()
            r2 = inv[b, 0, 0] * de * de + 2.0 * inv[b, 0, 1] * de * dn + inv[b, 1, 1] * dn * dn
            point_w = np.repeat(kept / kept.sum() / len(offsets), len(offsets))
            k = np.sqrt(radius_sq_at_mass(r2, point_w, ELLIPSE_PROBABILITIES))
            out[b] = np.where(k > 0, k, gaussian)
        return out

    def _posterior_power(self, rx_power_dbm, used, w) -> float:
        """Posterior mean transmit power (dBm), ignoring censoring: a by-product for the message only."""
        if not used.any():
            return float(self.power_grid_dbm.mean())
        r = np.asarray(rx_power_dbm, dtype=np.float64)[used]
        lo, hi = self.physics.tx_power_min_dbm, self.physics.tx_power_max_dbm
        return float(np.clip(w @ (r.mean() + self._subset(used).mean), lo, hi))


#: Sets of receivers whose path-loss constants ``PhysicsGrid`` keeps (each ``[G, k]`` float64).
SUBSET_CACHE_SIZE = 4
#: Elements of the largest ``[b, G, P]`` float64 block ``estimate_batch`` builds for censored windows (4 MiB):
#: the censoring terms are elementwise passes over the block, which run from cache only while it is this small, so
#: a larger block is slower per window, not faster (on the default grid a block is one window).
BATCH_GRID_ELEMENTS = 1 << 19
#: Cells (windows x grid cells) of the blocks ``estimate_batch`` takes windows in: each ``[b, G]`` float64 array of a
#: block is 256 KiB, which stays in cache through the block's passes over it; the whole batch at once was slower
#: per window than single calls, blocks of a few windows faster.
BATCH_BLOCK_CELLS = 1 << 15
#: ``credible_scales``' ``min_weight``: cells lighter than this are left out of the credible radii.
CREDIBLE_MIN_WEIGHT = 1e-12


@dataclass(frozen=True)
class _Subset:
    """Per-set constants of the path loss ``PL [G, k]`` of some receivers: its mean over them ``[G]``, the
    centred ``PL - mean`` ``[G, k]`` and that one's squares summed over them ``[G]``."""

    mean: np.ndarray
    centred: np.ndarray
    centred_sq_sum: np.ndarray

    @classmethod
    def of(cls, path_loss_db: np.ndarray) -> _Subset:
        mean = path_loss_db.mean(axis=1)
        centred = np.ascontiguousarray(path_loss_db - mean[:, None])
        return cls(mean, centred, (centred * centred).sum(axis=1))


#: Log-posterior entries this many nats below the best weigh less than exp(-NEGLIGIBLE_NATS) (4e-18) against it.
NEGLIGIBLE_NATS = 40.0
#: Above this share of the grid within reach, every entry is computed at once: cheaper than gathering the share.
DENSE_CENSORING_SHARE = 0.5


def add_censoring(log_post: np.ndarray, power_dbm: np.ndarray,
                  margin_at: Callable[[int], tuple[np.ndarray, np.ndarray | float]], silent: np.ndarray) -> None:
    """Add each silent receiver's censoring term ``log Phi(z)`` to ``log_post`` [G, P] in place, where it can matter.

    ``margin_at(i)`` gives receiver ``i``'s ``(offset [G], weight)``: its detection level plus the path loss to
    each cell (dB), and 1 / the error sigma (1/dB; per cell or one value), so that its z at cell g and power bin j
    is ``(offset[g] - power_dbm[j]) * weight[g]``. log Phi is ``normal_tail``'s table, within
    ``normal_tail.MAX_ERROR_NATS`` of scipy's ``log_ndtr``. The terms are <= 0, so a cell whose every entry is
    already ``NEGLIGIBLE_NATS`` below the best censored entry stays that far below the best; such cells keep
    their uncensored values, upper bounds that still weigh less than exp(-NEGLIGIBLE_NATS) against the best. The
    cells computed (every power bin of each) are those within ``NEGLIGIBLE_NATS`` of the uncensored best, then
    of the censored best until it stops falling; when they are most of the grid (``DENSE_CENSORING_SHARE``),
    every cell is computed at once. ValueError when ``log_post`` is not C-contiguous (it is updated in place).
    """
    if not len(silent):
        return
    if not log_post.flags.c_contiguous:
        raise ValueError("add_censoring: log_post must be C-contiguous (it is updated in place)")
    row_best = log_post.max(axis=1)  # [G]: each cell's best uncensored entry
    threshold = row_best.max() - NEGLIGIBLE_NATS
    within = row_best >= threshold
    if np.count_nonzero(within) > DENSE_CENSORING_SHARE * within.size:
        # Most of the grid: every cell at once, from the two vectors (no [G, P] z), and nothing left to do.
        for i in silent:
            offset, weight = margin_at(int(i))
            add_log_ndtr_outer(log_post, offset, power_dbm, weight)
        return
    margins = [margin_at(int(i)) for i in silent]
    done = np.zeros(within.size, dtype=bool)
    best = -np.inf
    while True:
        todo = np.flatnonzero(within & ~done)
        if not todo.size:
            break
        part = log_post[todo]  # [k, P], a copy
        for offset, weight in margins:
            add_log_ndtr_outer(part, offset[todo], power_dbm, weight[todo] if np.ndim(weight) else weight)
        log_post[todo] = part
        done[todo] = True
        best = max(best, float(part.max()))
        lowered = best - NEGLIGIBLE_NATS
        if not lowered < threshold:
            break
        threshold = lowered
        within = row_best >= threshold


def _log_ndtr_difference(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """log(Phi(hi) - Phi(lo)) for lo < hi, accurate in both tails (mirror to the lower tail where lo > 0)."""
    flip = lo > 0
    a = np.where(flip, -hi, lo)
    b = np.where(flip, -lo, hi)
    log_b = log_ndtr(b)
    return log_b + np.log1p(-np.exp(np.minimum(log_ndtr(a) - log_b, 0.0)) + 1e-300)


#: How often a long-running ``PhysicsPosterior`` / ``OnnxModel`` re-measures the calibrations' age (s).
CALIBRATION_AGE_REFRESH_S = 3600.0


def drift_variance_db2(config: Config, at_s: float) -> np.ndarray:
    """``[R]`` variance (dB^2) each configured receiver's calibration has drifted by at Unix time ``at_s``: the
    structure function of ``estimator.physics``'s drift (``streamer.core.calibration_drift``) at the time since
    its ``calibrated_at`` (zeros when no drift is configured; config validation requires ``calibrated_at`` then)."""
    physics = config.estimator.physics
    drift = CalibrationDrift(physics.calibration_drift_db_per_sqrt_day, physics.calibration_seasonal_db)
    if drift.is_zero:
        return np.zeros(len(config.receivers))
    ages = [(at_s - parse_calibrated_at(rx.calibrated_at).timestamp()) / SECONDS_PER_DAY for rx in config.receivers]
    return np.asarray(drift.structure_db2(np.asarray(ages, dtype=np.float64)), dtype=np.float64).reshape(-1)


def correlated_error_cov(rx_en_m, sigma_db, components=(), calibration_sigma_db: float = 0.0) -> np.ndarray:
    """``[R, R]`` power-error covariance (dB^2) with shadowing correlated between nearby receivers.

    ``cov_ij = sigma_i sigma_j rho(d_ij) + calibration_sigma^2 [i == j]``, with d_ij the receivers' horizontal
    separation, ``rho(0) = 1`` and ``rho(d) = sum_c w_c exp(-d / L_c)`` for d > 0 (``components`` = ``((w_c,
    L_c in m), ...)``, ``sum w_c <= 1``; the rest, 1 - sum w_c, is uncorrelated). A sum of exponential kernels
    plus a nugget is positive definite, so any receiver layout gives a valid covariance. ``sigma_db`` is one
    shadowing sigma for all receivers or one per receiver ``[R]``.

    >>> c = correlated_error_cov([[0, 0], [50, 0], [5000, 0]], 6.0, ((0.5, 100.0),), 1.0)
    >>> round(float(c[0, 0]), 1), round(float(c[0, 1]), 2), round(float(c[0, 2]), 4)
    (37.0, 10.92, 0.0)
    """
    rx = np.asarray(rx_en_m, dtype=np.float64)[:, :2]
    n = rx.shape[0]
    sig = np.broadcast_to(np.asarray(sigma_db, dtype=np.float64), (n,))
    d = np.hypot(rx[:, None, 0] - rx[None, :, 0], rx[:, None, 1] - rx[None, :, 1])
    total = sum(w for w, _ in components)
    if any(w < 0 or length <= 0 for w, length in components) or total > 1.0 + 1e-12:
        raise ValueError(f"correlation components must have weights >= 0 summing to <= 1 and lengths > 0: {components}")
    rho = np.zeros((n, n))
    for w, length in components:
        rho += w * np.exp(-d / length)
    np.fill_diagonal(rho, 1.0)
    return sig[:, None] * sig[None, :] * rho + calibration_sigma_db**2 * np.eye(n)


class PhysicsPosterior:
    """streamer.estimators.physics.PhysicsGrid behind the Estimator protocol, with the surveyed shadowing map of
    ``estimator.physics.shadowing_map`` when set (``streamer.estimators.survey.load_map``: ConfigError when it does not fit)."""

    name = "physics"

    def __init__(self, config: Config, clock=time.time) -> None:
        survey = load_map(config) if config.estimator.physics.shadowing_map is not None else None
        self._estimator = PhysicsGrid.from_config(config, shadowing_map=survey)
        # With a survey map, sha256 is the map file's: the messages say which survey fed the posterior.
        self.info = {"name": "physics-posterior", "version": "1",
                     "sha256": "" if survey is None else file_sha256(config.estimator.physics.shadowing_map)}
        self.provider = "numpy"
        self._covariance_scale = config.estimator.physics.covariance_scale
        self._config, self._clock, self._aged_at_s = config, clock, -math.inf

    def _refresh_calibration_age(self, at_s: float | None = None) -> None:
        """Widen for each receiver's calibration age at Unix time ``at_s`` (s; ``None``: on ``clock``), measured again
        when that time has moved by ``CALIBRATION_AGE_REFRESH_S`` (drift over an hour is far below what is resolved)."""
        now = self._clock() if at_s is None else at_s
        if abs(now - self._aged_at_s) >= CALIBRATION_AGE_REFRESH_S:
            self._estimator.widen_calibration(drift_variance_db2(self._config, now))
            self._aged_at_s = now

    def estimate(self, inputs: EstimatorInputs) -> Estimate:
        self._refresh_calibration_age(None if inputs.t_ns is None else inputs.t_ns / 1e9)
        result = self._estimator.estimate(
            rx_power_dbm=inputs.rx_power_dbm,
            heard=inputs.heard,
            present=inputs.present,
            detection_level_dbm=inputs.detection_level_dbm,
        )
        return Estimate(self.name, np.asarray(result.position_en_m), self._covariance_scale * np.asarray(result.cov_en_m2),
                        self._covariance_scale, np.asarray(result.ellipse_scales))

    def estimate_batch(self, inputs_list) -> list[Estimate]:
        """``estimate`` of several windows (one tick's channels) through ``PhysicsGrid.estimate_batch``: the same
        estimates as one ``estimate`` call per window, in order. A window whose time re-measures the calibrations'
        age starts a new pass, so the windows before it keep the age they would have had."""
        estimates: list[Estimate] = []
        pending: list[EstimatorInputs] = []
        for inputs in inputs_list:
            now = self._clock() if inputs.t_ns is None else inputs.t_ns / 1e9
            if abs(now - self._aged_at_s) >= CALIBRATION_AGE_REFRESH_S:
                estimates += self._estimate_pass(pending)
                pending = []
                self._refresh_calibration_age(now)
            pending.append(inputs)
        return estimates + self._estimate_pass(pending)

    def _estimate_pass(self, inputs_list: list[EstimatorInputs]) -> list[Estimate]:
        """The windows' estimates at the calibration age already set."""
        if not inputs_list:
            return []
        results = self._estimator.estimate_batch(
            np.stack([i.rx_power_dbm for i in inputs_list]), np.stack([i.heard for i in inputs_list]),
            np.stack([i.present for i in inputs_list]), np.stack([i.detection_level_dbm for i in inputs_list]))
        return [Estimate(self.name, np.asarray(r.position_en_m), self._covariance_scale * np.asarray(r.cov_en_m2),
                         self._covariance_scale, np.asarray(r.ellipse_scales)) for r in results]
