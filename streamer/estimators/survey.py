"""Surveyed shadowing maps: each receiver's shadowing kriged from links measured at known transmitter positions.

Shadowing is a spatially correlated field of the transmitter position for each receiver: links measured nearby
tell what the next one will read. Model, per receiver r: the path-loss residual (measured minus the median
log-distance model, dB) ``e(x) = s_r(x) + u``, ``s_r`` a zero-mean Gaussian field of covariance
``sigma_r^2 rho(|x - x'|)`` and ``u`` white noise of variance ``sigma_r^2 (1 - rho(0+))``, with
``rho = w1 exp(-h/L1) + w2 exp(-h/L2)`` fitted by ``fit_correlation`` on residual pairs of one receiver at two
transmitter positions (``pair_residuals``, pooled over receivers). Links within one ``bin_m`` square are averaged
(their white part shrinks by the count). The map at x is the kriging (Gaussian-process regression) mean
``E[s_r(x) | links]`` and the predictive sd of a new reading, ``sqrt(sigma_r^2 - k(x)^T K^-1 k(x))``, in units of
``sigma_r`` (``ShadowingMaps.unit_mean``, ``unit_var``).

``heimdall calibrate --survey-map`` writes the maps of a config's receivers over its search area to an ``.npz``
file (``save_map``); ``estimator.physics.shadowing_map`` names it and ``load_map`` turns it into the
``shadowing_map`` callable of ``streamer.estimators.physics.PhysicsGrid``, after checking it was made for that config.
``models/train/powder.py`` uses the same kriging for POWDER.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from streamer.core.errors import ConfigError

#: Receiver-separation bins (m) for the correlation fit (``fit_correlation``'s default, POWDER's scale).
CORR_BINS_M = (0.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1600.0, 5000.0)
#: Random link pairs per receiver for the fit of the shadowing's correlation along transmitter positions.
PAIRS_PER_RX = 30_000
#: A receiver with fewer links than this gets no map (mean 0, sd its prior sigma).
MIN_MAP_LINKS = 30
#: Version of the ``.npz`` layout written by ``save_map``.
MAP_FORMAT = 1


def correlation_table(residuals: tuple[np.ndarray, np.ndarray], bins_m=CORR_BINS_M, min_pairs: int = 50) -> np.ndarray:
    """``[bins, 3]``: mean separation (m), pooled correlation of the residual pairs, pair count, per ``bins_m`` bin
    (bins with under ``min_pairs`` pairs left out)."""
    seps, pairs = residuals
    out = []
    for lo, hi in zip(bins_m[:-1], bins_m[1:]):
        m = (seps >= lo) & (seps < hi)
        if m.sum() >= min_pairs:
            out.append((float(np.mean(seps[m])), float(np.corrcoef(pairs[m, 0], pairs[m, 1])[0, 1]), float(m.sum())))
    return np.array(out)


def fit_correlation(residuals: tuple[np.ndarray, np.ndarray], bins_m=CORR_BINS_M, length_bounds_m=(10.0, 5000.0),
                    start_lengths_m=(50.0, 500.0)) -> tuple[tuple[float, float], ...]:
    """Shadowing correlation vs separation, from residual pairs ``(separation m [K], pair [K, 2])``.

    The pooled correlation of the pairs is measured in separation bins (``bins_m``) and a sum of two exponentials
    ``w1 exp(-d/L1) + w2 exp(-d/L2)`` (w >= 0, w1 + w2 <= 1, L within ``length_bounds_m``) is fitted to it by least
    squares weighted by each bin's pair count. Returns ``((w1, L1), (w2, L2))`` (also the input of
    ``streamer.estimators.physics.correlated_error_cov``).
    """
    from scipy.optimize import minimize

    table = correlation_table(residuals, bins_m)
    if len(table) == 0:
        raise ValueError(f"no separation bin of {tuple(bins_m)} m holds 50 residual pairs: too few links to fit a correlation")
    d, rho, wt = table[:, 0], table[:, 1], np.sqrt(table[:, 2])

    def model(x):
        return x[0] * np.exp(-d / np.exp(x[1])) + x[2] * np.exp(-d / np.exp(x[3]))

    def loss(x):
        return float(np.sum(wt * (model(x) - rho) ** 2)) + 1e3 * max(0.0, x[0] + x[2] - 1.0) ** 2

    lo, hi = math.log(length_bounds_m[0]), math.log(length_bounds_m[1])
    bounds = [(0.0, 1.0), (lo, hi), (0.0, 1.0), (lo, hi)]
    x = minimize(loss, [0.5, math.log(start_lengths_m[0]), 0.2, math.log(start_lengths_m[1])], bounds=bounds,
                 method="L-BFGS-B").x
    w1, w2 = float(x[0]), float(x[2])
    if w1 + w2 > 1.0:
        w1, w2 = w1 / (w1 + w2), w2 / (w1 + w2)
    return ((w1, float(math.exp(x[1]))), (w2, float(math.exp(x[3]))))


def pair_residuals(links: dict, pairs_per_rx: int = PAIRS_PER_RX, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(separation m, residual pair [2]) of random pairs of one receiver's links (``links``: name -> ``[N, 3]`` rows
    of transmitter east, north (m) and residual (dB)), ``pairs_per_rx`` draws per receiver, pooled."""
    rng = np.random.default_rng(seed)
    seps, pairs = [], []
    for v in links.values():
        i, j = rng.integers(0, len(v), pairs_per_rx), rng.integers(0, len(v), pairs_per_rx)
        keep = i != j
        seps.append(np.hypot(*(v[i[keep], :2] - v[j[keep], :2]).T))
        pairs.append(np.stack([v[i[keep], 2], v[j[keep], 2]], -1))
    return np.concatenate(seps), np.concatenate(pairs)


def _rho(correlation, delta: np.ndarray) -> np.ndarray:
    h = np.hypot(delta[..., 0], delta[..., 1])
    return sum(w * np.exp(-h / length) for w, length in correlation)


def krige(v: np.ndarray, sigma_db: float, correlation, cells: np.ndarray, bin_m: float,
          chunk: int = 32768) -> tuple[np.ndarray, np.ndarray]:
    """Kriging mean and variance (units of ``sigma_db`` and its square) at ``cells [G, 2]`` from one receiver's
    links ``v [N, 3]`` (east m, north m, residual dB); module doc."""
    from scipy.linalg import cho_solve, solve_triangular

    w_field = sum(w for w, _ in correlation)
    z = v[:, 2] / sigma_db  # unit-variance residuals
    keys = np.floor(v[:, :2] / bin_m).astype(np.int64)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    pos = np.stack([np.bincount(inverse, v[:, 0]), np.bincount(inverse, v[:, 1])], -1) / counts[:, None]
    zbar = np.bincount(inverse, z) / counts
    k_bb = _rho(correlation, pos[:, None, :] - pos[None, :, :])
    k_bb[np.diag_indices_from(k_bb)] = w_field + (1.0 - w_field) / counts
    chol = np.linalg.cholesky(k_bb)
    alpha = cho_solve((chol, True), zbar)
    mean, var = np.empty(len(cells)), np.empty(len(cells))
    for lo in range(0, len(cells), chunk):  # [chunk, B] kernel blocks: memory bounded on large grids
        k_cb = _rho(correlation, cells[lo : lo + chunk, None, :] - pos[None, :, :])
        half = solve_triangular(chol, k_cb.T, lower=True)
        mean[lo : lo + chunk] = k_cb @ alpha
        var[lo : lo + chunk] = np.maximum(1.0 - (half * half).sum(axis=0), 1.0 - w_field)
    return mean, var


class ShadowingMaps:
    """Each receiver's shadowing field on a grid (``east_m`` x ``north_m``), kriged from its links (module doc).

    ``unit_mean[name]`` and ``unit_var[name]`` are ``[E, N]`` arrays in units of the receiver's sigma (and sigma^2);
    receivers without an entry have no map.
    """

    def __init__(self, correlation, east_m, north_m, unit_mean: dict, unit_var: dict) -> None:
        self.correlation = correlation
        self.east_m, self.north_m = east_m, north_m
        self.unit_mean, self.unit_var = unit_mean, unit_var

    @classmethod
    def krige(cls, links: dict, sigma_db: dict, correlation, east_m, north_m, bin_m: float) -> "ShadowingMaps":
        """Maps of every receiver in ``links`` (name -> ``[N, 3]``: east, north (m), residual (dB)), with shadowing
        sigmas ``sigma_db`` (name -> dB) and the correlation ``((w1, L1), (w2, L2))``, on the grid ``east_m`` x
        ``north_m``."""
        east_m, north_m = np.asarray(east_m, dtype=np.float64), np.asarray(north_m, dtype=np.float64)
        cells = np.stack(np.meshgrid(east_m, north_m, indexing="ij"), -1).reshape(-1, 2)
        unit_mean, unit_var = {}, {}
        for name, v in links.items():
            mean, var = krige(v, sigma_db[name], correlation, cells, bin_m)
            unit_mean[name] = mean.reshape(len(east_m), len(north_m))
            unit_var[name] = var.reshape(len(east_m), len(north_m))
        return cls(correlation, east_m, north_m, unit_mean, unit_var)


    def for_receivers(self, names: list, sigma_db: np.ndarray, scale: float = 1.0, calibration_sigma_db: float = 0.0):
        """``shadowing_map`` callable for ``PhysicsGrid``: receivers ``names`` with shadowing sigmas ``sigma_db``
        (dB; the map's unit field times it), ``calibration_sigma_db`` added in quadrature, all sds times ``scale``.
        Outside the grid, and for receivers without a map: mean 0, sd the prior's."""
        from scipy.interpolate import RegularGridInterpolator

        sigma = np.asarray(sigma_db, dtype=np.float64)[None, :]

        def shadowing_map(grid_en_m):
            mean = np.zeros((len(grid_en_m), len(names)))
            var = np.ones((len(grid_en_m), len(names)))
            for r, name in enumerate(names):
                if name in self.unit_mean:
                    for out, table, fill in ((mean, self.unit_mean[name], 0.0), (var, self.unit_var[name], 1.0)):
                        out[:, r] = RegularGridInterpolator((self.east_m, self.north_m), table, bounds_error=False,
                                                            fill_value=fill)(grid_en_m)
            sd = scale * np.sqrt(var * sigma**2 + calibration_sigma_db**2)
            return mean * sigma, sd

        return shadowing_map


def map_axes(area, step_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Grid axes (m) at ``step_m`` covering ``area`` (a ``SearchArea``) with one step to spare on each side."""
    east = np.arange(area.east_min_m - step_m, area.east_max_m + 2.0 * step_m, step_m)
    north = np.arange(area.north_min_m - step_m, area.north_max_m + 2.0 * step_m, step_m)
    return east, north


def survey_maps(config, tx_en_m: np.ndarray, residual_db: np.ndarray, sigma_db: np.ndarray, *,
                min_links: int = MIN_MAP_LINKS) -> tuple[ShadowingMaps, np.ndarray]:
    """Maps of ``config``'s receivers over its search area from surveyed links.

    ``tx_en_m [N, 2]``: transmitter positions (config's ENU, m); ``residual_db [N, R]``: readings minus the
    calibrated median model (NaN = no link); ``sigma_db [R]``: each receiver's shadowing sigma (dB). Receivers
    with under ``min_links`` links get no map. The grid step is half the estimator's (``grid_step_km``); the
    correlation's separation bins and length bounds scale with the area's diagonal D (bins D/128 .. D, lengths
    D/1000 .. D); links are averaged in squares of a quarter grid step. Returns the maps and the links per receiver.
    Raises ``ValueError`` when no receiver has ``min_links`` links.
    """
    from streamer.core.geodesy import network_geometry

    _, _, area = network_geometry(config)
    ids = [rx.id for rx in config.receivers]
    heard = np.isfinite(residual_db)
    counts = heard.sum(axis=0)
    links = {ids[r]: np.column_stack([tx_en_m[heard[:, r]], residual_db[heard[:, r], r]])
             for r in range(len(ids)) if counts[r] >= min_links}
    if not links:
        raise ValueError(f"no receiver has {min_links} or more links (most: {int(counts.max(initial=0))}): no map")
    diag_m = math.hypot(area.width_m, area.height_m)
    bins = (0.0,) + tuple(diag_m / 2.0**k for k in range(7, -1, -1))
    correlation = fit_correlation(pair_residuals(links), bins_m=bins, length_bounds_m=(diag_m / 1000.0, diag_m),
                                  start_lengths_m=(diag_m / 100.0, diag_m / 10.0))
    step_m = 500.0 * config.estimator.physics.grid_step_km
    east, north = map_axes(area, step_m)
    sigma = {ids[r]: float(sigma_db[r]) for r in range(len(ids))}
    return ShadowingMaps.krige(links, sigma, correlation, east, north, bin_m=step_m / 4.0), counts


# ----------------------------------------------------------------------------------------------------
# The map file: written by ``heimdall calibrate --survey-map``, read by the daemon


def save_map(path: str | Path, maps: ShadowingMaps, *, receiver_ids, sigma_db, links, lat, lon, origin,
             calibration_db, path_loss_exponent: float, ref_loss_db: float) -> None:
    """Write the maps of ``receiver_ids`` (config order) and what ``load_map`` checks against a config, as ``.npz``.

    Arrays: ``receiver_ids [R]``, ``east_m [E]`` and ``north_m [N]`` (grid axes, the config's ENU frame),
    ``mean_db`` and ``sd_db [R, E, N]`` (shadowing mean and predictive sd, dB; unmapped receivers 0 and their
    sigma), ``mapped [R]``, ``links [R]``, ``sigma_db [R]``, ``correlation [2, 2]`` (w, L m), ``lat``, ``lon``,
    ``calibration_db [R]`` (the receivers' calibrated values), ``origin [3]``, ``path_loss_exponent``,
    ``ref_loss_db`` and ``format``.
    """
    shape = (len(maps.east_m), len(maps.north_m))
    sigma = np.asarray(sigma_db, dtype=np.float64)
    mean = np.stack([maps.unit_mean[n] * s if n in maps.unit_mean else np.zeros(shape) for n, s in zip(receiver_ids, sigma)])
    sd = np.stack([np.sqrt(maps.unit_var[n]) * s if n in maps.unit_var else np.full(shape, s)
                   for n, s in zip(receiver_ids, sigma)])
    with open(path, "wb") as f:
        np.savez_compressed(
            f, format=MAP_FORMAT, receiver_ids=np.array(receiver_ids, dtype=str), east_m=maps.east_m,
            north_m=maps.north_m, mean_db=mean, sd_db=sd, mapped=np.array([n in maps.unit_mean for n in receiver_ids]),
            links=np.asarray(links, dtype=np.int64), sigma_db=sigma, correlation=np.array(maps.correlation, dtype=np.float64),
            lat=np.asarray(lat, dtype=np.float64), lon=np.asarray(lon, dtype=np.float64),
            calibration_db=np.asarray(calibration_db, dtype=np.float64),
            origin=np.array([origin.lat, origin.lon, origin.alt_m], dtype=np.float64),
            path_loss_exponent=float(path_loss_exponent), ref_loss_db=float(ref_loss_db))


_KEY = "estimator.physics.shadowing_map"
#: Tolerances of ``load_map``'s checks: degrees (receiver positions, origin), dB (the calibrated config keeps
#: 2 decimals), exponent.
_TOL_DEG, _TOL_DB, _TOL_N = 1e-7, 0.006, 1e-6


def _read(path: Path, where: str) -> dict:
    wanted = ("receiver_ids", "east_m", "north_m", "mean_db", "sd_db", "lat", "lon", "calibration_db", "origin",
              "path_loss_exponent", "ref_loss_db")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in wanted if k not in data.files]
            if missing:
                raise ConfigError(f"{where}: {path} is not a survey map: arrays {missing} are missing "
                                  "(expected a file written by heimdall calibrate --survey-map)")
            return {k: data[k] for k in wanted}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ConfigError(f"{where}: cannot read {path}: {getattr(exc, 'strerror', None) or exc} "
                          "(expected an .npz written by heimdall calibrate --survey-map)") from None


def _check(m: dict, config, where: str, path: Path) -> np.ndarray:
    """Raise ConfigError unless the map ``m`` was made for ``config``; return the config's order into the map."""
    from streamer.core.geodesy import network_geometry

    ids = [rx.id for rx in config.receivers]
    have = [str(s) for s in m["receiver_ids"]]
    if sorted(have) != sorted(ids):
        raise ConfigError(f"{where}: {path} maps receivers {sorted(have)}, the config has {sorted(ids)}; "
                          "rerun heimdall calibrate --survey-map with this config")
    order = np.array([have.index(i) for i in ids])
    n_rx, n_e, n_n = len(ids), len(m["east_m"]), len(m["north_m"])
    if m["mean_db"].shape != (n_rx, n_e, n_n) or m["sd_db"].shape != (n_rx, n_e, n_n) or min(n_e, n_n) < 2:
        raise ConfigError(f"{where}: {path}: mean_db {m['mean_db'].shape} and sd_db {m['sd_db'].shape} do not match "
                          f"{n_rx} receivers x {n_e} x {n_n} grid points (at least 2 per axis)")
    if not (np.all(np.isfinite(m["mean_db"])) and np.all(m["sd_db"] > 0)):
        raise ConfigError(f"{where}: {path}: mean_db must be finite and sd_db > 0 everywhere")
    for r, rx in enumerate(config.receivers):
        k = order[r]
        if abs(m["lat"][k] - rx.lat) > _TOL_DEG or abs(m["lon"][k] - rx.lon) > _TOL_DEG:
            raise ConfigError(f"{where}: {path}: receiver {rx.id!r} was mapped at ({m['lat'][k]}, {m['lon'][k]}), "
                              f"the config puts it at ({rx.lat}, {rx.lon})")
        if abs(m["calibration_db"][k] - rx.calibration_db) > _TOL_DB:
            raise ConfigError(f"{where}: {path}: receiver {rx.id!r}: the map was made for calibration_db = "
                              f"{m['calibration_db'][k]:.2f}, the config has {rx.calibration_db}; write the calibrated "
                              "config (heimdall calibrate --out/--in-place) with the map")
    physics = config.estimator.physics
    for name, value, tol in (("path_loss_exponent", physics.path_loss_exponent, _TOL_N),
                             ("ref_loss_db", physics.ref_loss_db, _TOL_DB)):
        if abs(float(m[name]) - value) > tol:
            raise ConfigError(f"{where}: {path}: the map was made with estimator.physics.{name} = {float(m[name])}, "
                              f"the config has {value}")
    origin, _, area = network_geometry(config)
    if np.max(np.abs(m["origin"][:2] - (origin.lat, origin.lon))) > _TOL_DEG:
        raise ConfigError(f"{where}: {path}: the map's ENU origin {tuple(m['origin'][:2])} is not the config's "
                          f"({origin.lat}, {origin.lon})")
    e, n = m["east_m"], m["north_m"]
    if e[0] > area.east_min_m or e[-1] < area.east_max_m or n[0] > area.north_min_m or n[-1] < area.north_max_m:
        raise ConfigError(f"{where}: {path}: the grid (east {e[0]:.0f}..{e[-1]:.0f} m, north {n[0]:.0f}..{n[-1]:.0f} m) "
                          f"does not cover the search area (east {area.east_min_m:.0f}..{area.east_max_m:.0f} m, "
                          f"north {area.north_min_m:.0f}..{area.north_max_m:.0f} m)")
    return order


def load_map(config):
    """The ``shadowing_map`` callable of ``config.estimator.physics.shadowing_map`` for ``PhysicsGrid``.

    Mean and sd are interpolated linearly from the stored grid; the config's ``calibration_sigma_db`` is added to
    the sd in quadrature. Raises ``ConfigError`` naming the config file, the key and the problem.
    """
    from scipy.interpolate import RegularGridInterpolator

    path = Path(config.estimator.physics.shadowing_map)
    where = f"{config.source}: {_KEY}"
    if not path.is_file():
        raise ConfigError(f"{where}: no such file {path} (expected an .npz written by heimdall calibrate --survey-map)")
    m = _read(path, where)
    order = _check(m, config, where, path)
    axes = (m["east_m"], m["north_m"])
    mean = [RegularGridInterpolator(axes, m["mean_db"][k]) for k in order]
    var = [RegularGridInterpolator(axes, m["sd_db"][k] ** 2) for k in order]
    cal2 = config.estimator.physics.calibration_sigma_db ** 2

    def shadowing_map(grid_en_m):
        grid = np.asarray(grid_en_m, dtype=np.float64)
        mean_db = np.stack([f(grid) for f in mean], axis=-1)
        sd_db = np.sqrt(np.stack([f(grid) for f in var], axis=-1) + cal2)
        return mean_db, sd_db

    return shadowing_map
