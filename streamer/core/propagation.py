"""The log-distance path-loss model (dB, distances in m) and its least-squares fit with per-receiver offsets.

One model for the simulator, the physics posterior, ``heimdall calibrate`` and the POWDER loader: the estimators
may know the model, never its realisation.

Examples
--------
>>> round(float(log_distance_path_loss_db(10_000.0, ref_loss_db=75.7, exponent=3.0)), 1)
105.7
>>> d = np.array([[1000.0, 2000.0], [4000.0, 500.0], [2000.0, 3000.0]])
>>> p = 30.0 - log_distance_path_loss_db(d, 75.7, 3.0) + np.array([1.5, -2.0])
>>> fit = fit_path_loss(d, p, np.ones_like(d, bool), tx_power_dbm=np.full(3, 30.0), ref_loss_db=75.7, exponent=3.0)
>>> np.round(fit.offsets_db, 6).tolist(), fit.n_obs.tolist()
([1.5, -2.0], [3, 3])
"""


from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Shortest distance the log-distance model is evaluated at (m): below it the model (referenced to 1 km)
#: would predict absurd gains, and a transmitter that close saturates any receiver anyway.
MIN_DISTANCE_M = 100.0


# ----------------------------------------------------------------------------------------------------
# Propagation model (shared with receivers.simulator)


def log_distance_path_loss_db(distance_m, ref_loss_db: float, exponent: float) -> np.ndarray:
    """Median path loss (dB): ``ref_loss_db + 10 n log10(d / 1 km)``, d clamped at ``MIN_DISTANCE_M``."""
    d = np.maximum(np.asarray(distance_m, dtype=np.float64), MIN_DISTANCE_M)
    return ref_loss_db + 10.0 * exponent * np.log10(d / 1000.0)


def slant_distance_m(tx_en_m, tx_alt_m, rx_en_m, rx_alt_m) -> np.ndarray:
    """3-D distance (m) from transmitters ``[..., 2]`` (east, north) to receivers ``[R, 2]``: ``[..., R]``.

    Horizontal coordinates are the network's ENU east/north; the vertical separation is the difference of
    heights above the ellipsoid (m). Earth curvature is left out: over 200 km it changes a slant range by
    metres, far below what received power can resolve.
    """
    tx = np.asarray(tx_en_m, dtype=np.float64)
    rx = np.asarray(rx_en_m, dtype=np.float64)[:, :2]
    de = tx[..., None, 0] - rx[:, 0]
    dn = tx[..., None, 1] - rx[:, 1]
    dz = np.asarray(tx_alt_m, dtype=np.float64)[..., None] - np.asarray(rx_alt_m, dtype=np.float64)
    return np.sqrt(de * de + dn * dn + dz * dz)

MIN_OBSERVATIONS = 3
#: Weight of the sum(offsets) = 0 row when the transmit level is fitted (it removes the level/offset degeneracy).
_CONSTRAINT_WEIGHT = 1e3


# ----------------------------------------------------------------------------------------------------
# The fit: arrays in, arrays out


@dataclass(frozen=True)
class PathLossFit:
    """Least-squares log-distance fit with one offset per receiver (all dB unless named otherwise).

    Per receiver ``[R]``: ``offsets_db`` (NaN where not fitted), ``offset_se_db`` (standard error),
    ``residual_sigma_db`` (RMS of its residuals), ``n_obs`` (readings given), ``fitted`` (``n_obs`` >= the minimum).
    ``exponent`` (fitted or the one given; ``exponent_se`` NaN when given), ``level_db`` (the common term
    ``P_tx - ref_loss_db`` when the transmit power was not given, else NaN), ``sigma_db`` (standard deviation
    of all residuals), ``links`` (readings used), ``relative`` (offsets constrained to sum 0).
    """

    offsets_db: np.ndarray
    offset_se_db: np.ndarray
    residual_sigma_db: np.ndarray
    n_obs: np.ndarray
    fitted: np.ndarray
    exponent: float
    exponent_se: float
    level_db: float
    level_se_db: float
    sigma_db: float
    links: int
    relative: bool


def fit_path_loss(distance_m, measured_db, mask, *, tx_power_dbm=None, ref_loss_db: float = 0.0,
                  exponent: float | None = None, min_distance_m: float = MIN_DISTANCE_M,
                  min_observations: int = MIN_OBSERVATIONS) -> PathLossFit:
    """Fit ``measured_ir = P_i - ref_loss_db - 10 n log10(max(d_ir, min_distance_m) / 1 km) + o_r`` by least squares.

    Parameters
    ----------
    distance_m, measured_db, mask : ``[N, R]`` distances (m), measured power (dB) and which readings exist.
    tx_power_dbm : ``[N]`` transmit powers, or None: then a common level ``A = P - ref_loss_db`` is fitted and
        the offsets of the fitted receivers are constrained to sum to 0 (only relative offsets are observable).
    exponent : fixed path-loss exponent n, or None to fit it.
    min_distance_m : distances are clamped here (``MIN_DISTANCE_M`` reproduces ``log_distance_path_loss_db``).
    min_observations : receivers with fewer readings are left out (``fitted`` False, offset NaN).

    Raises ``ValueError`` when no receiver qualifies or the readings do not determine the unknowns.
    """
    mask = np.asarray(mask, dtype=bool)
    n_obs = mask.sum(axis=0)
    fitted = n_obs >= min_observations
    relative = tx_power_dbm is None
    if fitted.sum() < (2 if relative else 1):
        raise ValueError(f"need at least {2 if relative else 1} receiver(s) with {min_observations} or more readings")
    rows, cols = np.nonzero(mask & fitted[None, :])
    log_d = 10.0 * np.log10(np.maximum(np.asarray(distance_m, dtype=np.float64)[rows, cols], min_distance_m) / 1000.0)
    target = np.asarray(measured_db, dtype=np.float64)[rows, cols]
    if not relative:
        target = target - np.asarray(tx_power_dbm, dtype=np.float64)[rows] + ref_loss_db
    if exponent is not None:
        target = target + exponent * log_d
    slot = np.cumsum(fitted) - 1  # receiver -> offset parameter
    n_offsets = int(fitted.sum())
    lead = [np.ones_like(log_d)] if relative else []
    lead += [-log_d] if exponent is None else []
    design = np.zeros((len(target), len(lead) + n_offsets))
    for j, column in enumerate(lead):
        design[:, j] = column
    design[np.arange(len(target)), len(lead) + slot[cols]] = 1.0
    constraint = np.r_[np.zeros(len(lead)), np.ones(n_offsets)][None, :] if relative else np.zeros((0, design.shape[1]))
    sol, _, rank, _ = np.linalg.lstsq(np.vstack([design, _CONSTRAINT_WEIGHT * constraint]),
                                      np.r_[target, np.zeros(len(constraint))], rcond=None)
    if rank < design.shape[1]:
        raise ValueError("the readings do not determine every unknown (e.g. every transmission at the same distances)")
    resid = target - design @ sol
    cov = _covariance(design, constraint, resid)
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    offsets = np.full(mask.shape[1], np.nan)
    offset_se = np.full(mask.shape[1], np.nan)
    offsets[fitted] = sol[len(lead):]
    offset_se[fitted] = se[len(lead):]
    rms = np.full(mask.shape[1], np.nan)
    for r in np.flatnonzero(fitted):
        rms[r] = math.sqrt(float(np.mean(resid[cols == r] ** 2)))
    fitted_n = exponent is None
    return PathLossFit(
        offsets_db=offsets, offset_se_db=offset_se, residual_sigma_db=rms, n_obs=n_obs, fitted=fitted,
        exponent=float(sol[int(relative)]) if fitted_n else float(exponent),
        exponent_se=float(se[int(relative)]) if fitted_n else math.nan,
        level_db=float(sol[0]) if relative else math.nan, level_se_db=float(se[0]) if relative else math.nan,
        sigma_db=float(resid.std()), links=int(len(target)), relative=relative)


def _covariance(design: np.ndarray, constraint: np.ndarray, resid: np.ndarray) -> np.ndarray:
    """Parameter covariance of equality-constrained least squares: s^2 times the top-left block of the KKT inverse."""
    p, c = design.shape[1], constraint.shape[0]
    dof = len(resid) - (p - c)
    s2 = float(resid @ resid) / dof if dof > 0 else math.nan
    kkt = np.block([[design.T @ design, constraint.T], [constraint, np.zeros((c, c))]])
    return s2 * np.linalg.inv(kkt)[:p, :p]
