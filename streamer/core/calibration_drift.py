"""How a receiver's calibration error grows with the time since it was calibrated, and the fit of that growth
from repeated surveys.

A receiver's offset (its ``calibration_db`` error, dB) is modelled as a random walk plus an annual seasonal
swing of unknown phase. The variance of its change over ``h`` days is the structure function::

    S(h) = q^2 |h| + A^2 (1 - cos(2 pi h / 365.25))          (dB^2)

- ``q`` (dB per square-root day, ``random_walk_db_per_sqrt_day``): the random walk: ageing connectors, cable
  moisture, gain settings nudged, a change that does not come back;
- ``A`` (dB, ``seasonal_db``): the amplitude of an annual cycle ``A cos(2 pi t / 365.25 + phi)`` (temperature,
  foliage, snow on the antenna). With the phase unknown (uniform), its change over ``h`` days has variance
  ``A^2 (1 - cos(2 pi h / 365.25))``: zero a whole year later, ``2 A^2`` half a year later.

A receiver calibrated ``age`` days ago then carries a calibration error of variance
``calibration_sigma_db^2 + S(age)``; the sign of ``age`` does not matter (a recording replayed from before the
calibration is as far from it). ``prediction_variance_db2`` generalises this to offsets fitted on several surveys
at once (their weighted mean), through the variogram: for weights ``lambda`` summing to zero,
``var(sum lambda_i o(t_i)) = -1/2 sum_ij lambda_i lambda_j S(t_i - t_j)``.

``fit_drift`` estimates ``q`` (and ``A`` where the surveys' separations allow) by maximum likelihood from the
per-receiver offsets of several surveys at known times, each with its standard error, and gives their standard
errors from the observed information.

Examples
--------
>>> drift = CalibrationDrift(random_walk_db_per_sqrt_day=0.1, seasonal_db=1.0)
>>> round(drift.structure_db2(100.0), 3), round(drift.structure_db2(365.25), 3)
(2.149, 3.653)
>>> round(float(calibration_sigma_db(2.0, drift, [0.0, 400.0])[1]), 3)
2.859
>>> parse_calibrated_at("2026-03-01").isoformat(), parse_calibrated_at("2026-03-01T12:00:00+02:00").isoformat()
('2026-03-01T00:00:00+00:00', '2026-03-01T10:00:00+00:00')
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np

DAYS_PER_YEAR = 365.25
SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class CalibrationDrift:
    """The drift model (module doc): random walk ``q`` in dB/sqrt(day), seasonal amplitude ``A`` in dB."""

    random_walk_db_per_sqrt_day: float = 0.0
    seasonal_db: float = 0.0

    @property
    def is_zero(self) -> bool:
        return self.random_walk_db_per_sqrt_day == 0.0 and self.seasonal_db == 0.0

    def structure_db2(self, lag_days):
        """``S(h)``: variance of an offset's change over ``lag_days`` (dB^2); array in, array out."""
        h = np.abs(np.asarray(lag_days, dtype=np.float64))
        season = 1.0 - np.cos(2.0 * math.pi * h / DAYS_PER_YEAR)
        out = self.random_walk_db_per_sqrt_day**2 * h + self.seasonal_db**2 * season
        return float(out) if out.ndim == 0 else out

    def prediction_variance_db2(self, at_days: float, epochs_days, weights) -> float:
        """Variance (dB^2) of ``o(at) - sum_k w_k o(t_k)``: an offset fitted as the weighted mean of surveys at
        ``epochs_days`` (weights normalised to sum 1) and used at ``at_days``. One epoch: ``S(at - t)``."""
        t = np.r_[float(at_days), np.asarray(epochs_days, dtype=np.float64)]
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != t[1:].shape or not np.all(w >= 0) or w.sum() <= 0:
            raise ValueError(f"weights: expected {t.size - 1} non-negative values with a positive sum, got {w.tolist()}")
        lam = np.r_[1.0, -w / w.sum()]
        s = self.structure_db2(t[:, None] - t[None, :])
        return float(max(-0.5 * lam @ s @ lam, 0.0))


def calibration_sigma_db(calibration_sigma_db: float, drift: CalibrationDrift, age_days) -> np.ndarray:
    """Each receiver's calibration error sigma (dB) ``age_days`` ``[R]`` after its calibration:
    ``sqrt(calibration_sigma_db^2 + S(age))``."""
    return np.sqrt(calibration_sigma_db**2 + np.asarray(drift.structure_db2(np.asarray(age_days, dtype=np.float64))))


def parse_calibrated_at(text: str) -> dt.datetime:
    """An ISO-8601 date (``2026-03-01``: midnight UTC) or date-time (``2026-03-01T10:00:00Z``, an offset, or
    none: UTC) as an aware UTC datetime. Raises ``ValueError`` naming what was expected."""
    try:
        if len(text.strip()) == 10:
            day = dt.date.fromisoformat(text.strip())
            return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError("expected an ISO-8601 date (2026-03-01) or date-time (2026-03-01T10:00:00Z), "
                         f"got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)


def epoch_days(when: dt.datetime) -> float:
    """A datetime as days since the Unix epoch (float)."""
    return when.timestamp() / SECONDS_PER_DAY


# ----------------------------------------------------------------------------------------------------
# Fit from repeated surveys


@dataclass(frozen=True)
class Survey:
    """One survey's per-receiver offsets (dB, NaN = not fitted) and their standard errors (dB), at ``time_days``
    (days since the Unix epoch, ``epoch_days``); receivers in the same order in every survey."""

    time_days: float
    offsets_db: np.ndarray
    offset_se_db: np.ndarray
    name: str = ""


@dataclass(frozen=True)
class DriftFit:
    """``fit_drift``'s result: the model, each parameter's standard error (NaN: not determined), whether the
    seasonal term was fitted, and what it was fitted on."""

    drift: CalibrationDrift
    random_walk_se: float
    seasonal_se: float
    seasonal_fitted: bool
    receivers: int   # receivers seen in at least two surveys
    changes: int     # offset changes used (sum over receivers of surveys seen - 1)
    lags_days: tuple[float, ...]


#: Distinct survey separations (days) that tell the seasonal term from the random walk: at least two, and
#: differing by this much. Closer lags leave A and q trading off against each other.
MIN_LAG_SPREAD_DAYS = 30.0


def fit_drift(surveys: list[Survey], *, seasonal: bool | None = None) -> DriftFit:
    """Maximum-likelihood drift from per-receiver offsets of several surveys (module doc).

    For each receiver seen in surveys ``0..K`` (its own order by time), the changes ``o_k - o_0`` are Gaussian with
    ``cov_ij = 1/2 (S(t_i - t_0) + S(t_j - t_0) - S(t_i - t_j)) + se_0^2 + [i == j] se_i^2``; receivers are
    independent. A common shift of every receiver between surveys (relative offsets constrained to mean 0) is
    not drift of one receiver against the others, so each survey's offsets are centred on the receivers it
    shares with the others first (and the fitted variances scaled by n / (n - 1) for the n receivers centred on,
    which that centring removes). ``seasonal``: fit ``A`` too (default: when the separations spread over at
    least ``MIN_LAG_SPREAD_DAYS``); otherwise ``A = 0``. Standard errors from the inverse of the numerical
    Hessian of the negative log-likelihood in ``(q, A)``.
    """
    from scipy.optimize import minimize

    if len(surveys) < 2:
        raise ValueError(f"need at least two surveys at different times, got {len(surveys)}")
    n_rx = {np.asarray(s.offsets_db).shape for s in surveys}
    if len(n_rx) != 1:
        raise ValueError(f"every survey must list the same receivers, got offset shapes {sorted(n_rx)}")
    order = sorted(range(len(surveys)), key=lambda k: surveys[k].time_days)
    times = np.array([surveys[k].time_days for k in order])
    if np.any(np.diff(times) <= 0):
        raise ValueError("surveys must be at different times")
    off = np.array([np.asarray(surveys[k].offsets_db, dtype=np.float64) for k in order])  # [K, R]
    se = np.array([np.asarray(surveys[k].offset_se_db, dtype=np.float64) for k in order])
    seen = np.isfinite(off) & np.isfinite(se)
    shared = seen.sum(axis=0) >= 2
    if not shared.any():
        raise ValueError("no receiver was fitted in two surveys: nothing to measure drift on")
    for k in range(len(order)):
        use = seen[k] & shared
        if use.any():
            off[k] = off[k] - off[k][use].mean()
    groups = []  # per receiver: (times [k], offsets [k], se [k])
    for r in np.flatnonzero(shared):
        ks = np.flatnonzero(seen[:, r])
        groups.append((times[ks], off[ks, r], se[ks, r]))
    lags = sorted({round(float(abs(a - b)), 6) for t, _, _ in groups for a in t for b in t if a < b})
    if seasonal is None:
        seasonal = len(lags) >= 2 and lags[-1] - lags[0] >= MIN_LAG_SPREAD_DAYS

    def nll(params) -> float:
        q, amp = params[0], params[1] if seasonal else 0.0
        model = CalibrationDrift(q, amp)
        total = 0.0
        for t, o, s in groups:
            d = o[1:] - o[0]
            lag0 = t[1:] - t[0]
            cov = 0.5 * (model.structure_db2(lag0)[:, None] + model.structure_db2(lag0)[None, :]
                         - model.structure_db2(t[1:, None] - t[None, 1:]))
            cov = cov + s[0] ** 2 + np.diag(s[1:] ** 2) + 1e-9 * np.eye(d.size)
            sign, logdet = np.linalg.slogdet(cov)
            if sign <= 0:
                return 1e300
            total += 0.5 * (logdet + d @ np.linalg.solve(cov, d))
        return total

    changes = sum(len(t) - 1 for t, _, _ in groups)
    spread = math.sqrt(np.mean([np.mean((o[1:] - o[0]) ** 2) for _, o, _ in groups]))
    q0 = spread / math.sqrt(max(lags[-1], 1e-6))
    start = [q0, spread / 2.0] if seasonal else [q0]
    best = min((minimize(nll, x0, method="L-BFGS-B", bounds=[(0.0, None)] * len(x0))
                for x0 in (start, [s * 0.3 for s in start], [s * 3.0 for s in start])), key=lambda r: r.fun)
    # Centring on n receivers leaves each change (1 - 1/n) of its variance: S, hence q^2 and A^2, are scaled back.
    n_centred = int(shared.sum())
    unbias = math.sqrt(n_centred / (n_centred - 1)) if n_centred > 1 else 1.0
    theta = np.asarray(best.x, dtype=np.float64)
    ses = _standard_errors(nll, theta) * unbias
    theta = theta * unbias
    return DriftFit(CalibrationDrift(float(theta[0]), float(theta[1]) if seasonal else 0.0), float(ses[0]),
                    float(ses[1]) if seasonal else math.nan, bool(seasonal), len(groups), changes, tuple(lags))


def _standard_errors(nll, theta: np.ndarray) -> np.ndarray:
    """Standard errors from the inverse of the numerical Hessian of ``nll`` at ``theta`` (central differences;
    one-sided at a parameter on its bound 0). NaN where the Hessian is not positive definite."""
    n = theta.size
    step = np.maximum(1e-3 * np.abs(theta), 1e-4)
    base = theta + np.where(theta < 2 * step, 2 * step, 0.0)  # keep every probe >= 0
    hess = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            ei, ej = np.eye(n)[i] * step[i], np.eye(n)[j] * step[j]
            hess[i, j] = (nll(base + ei + ej) - nll(base + ei - ej) - nll(base - ei + ej) + nll(base - ei - ej)) / (
                4 * step[i] * step[j])
    try:
        cov = np.linalg.inv(0.5 * (hess + hess.T))
    except np.linalg.LinAlgError:
        return np.full(n, math.nan)
    diag = np.diag(cov)
    return np.where(diag > 0, np.sqrt(np.abs(diag)), math.nan)
