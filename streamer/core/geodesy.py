"""WGS84 <-> local ENU (pymap3d) and covariance -> uncertainty ellipse.

Examples
--------
>>> e = ellipse_from_covariance([[4.0, 0.0], [0.0, 1.0]], p=0.95)
>>> round(e.semi_major_m, 3), round(e.semi_minor_m, 3), round(e.azimuth_deg, 1)
(4.895, 2.448, 90.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pymap3d


@dataclass(frozen=True)
class Origin:
    """ENU origin: latitude and longitude in degrees, altitude in metres above the ellipsoid."""

    lat: float
    lon: float
    alt_m: float = 0.0


def centroid_origin(lats, lons, alts_m) -> Origin:
    """The receivers' centroid (plain mean of lat/lon: fine for networks far smaller than a hemisphere)."""
    return Origin(float(np.mean(lats)), float(np.mean(lons)), float(np.mean(alts_m)))


def geodetic_to_enu_m(lat, lon, alt_m, origin: Origin) -> np.ndarray:
    """East, north, up (m) of points relative to ``origin``; returns ``[..., 3]``."""
    e, n, u = pymap3d.geodetic2enu(lat, lon, alt_m, origin.lat, origin.lon, origin.alt_m)
    return np.stack([np.asarray(e, float), np.asarray(n, float), np.asarray(u, float)], axis=-1)


def enu_to_geodetic(east_m, north_m, up_m, origin: Origin) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Latitude, longitude (degrees) and altitude (m) of ENU points relative to ``origin``."""
    lat, lon, alt = pymap3d.enu2geodetic(east_m, north_m, up_m, origin.lat, origin.lon, origin.alt_m)
    return np.asarray(lat, float), np.asarray(lon, float), np.asarray(alt, float)


def ellipse_scale(p: float) -> float:
    """Standard deviations spanned by a 2-D Gaussian's p-ellipse: sqrt(-2 ln(1-p)) (2.448 for 0.95)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"ellipse probability must be in (0, 1), got {p}")
    return math.sqrt(-2.0 * math.log(1.0 - p))


@dataclass(frozen=True)
class Ellipse:
    """A p-probability ellipse: axes in metres, azimuth of the major axis clockwise from north (degrees, 0..180)."""

    p: float
    semi_major_m: float
    semi_minor_m: float
    azimuth_deg: float
    scale: float | None = None  # standard deviations spanned (None: the Gaussian's, ellipse_scale(p))


def ellipse_from_covariance(cov_en_m2, p: float = 0.95, scale: float | None = None) -> Ellipse:
    """Ellipse of a 2x2 east/north covariance (m^2) holding probability ``p``: ``scale`` standard deviations
    (an estimator's credible radius, ``streamer.estimators.credible``), or a Gaussian's ``ellipse_scale(p)`` when ``None``."""
    cov = np.asarray(cov_en_m2, dtype=np.float64)
    if cov.shape != (2, 2) or not np.all(np.isfinite(cov)):
        raise ValueError(f"covariance must be a finite 2x2 matrix, got {cov!r}")
    eigvals, eigvecs = np.linalg.eigh(0.5 * (cov + cov.T))
    k = ellipse_scale(p) if scale is None else float(scale)
    if not (math.isfinite(k) and k > 0):
        raise ValueError(f"ellipse scale must be a positive number of standard deviations, got {scale!r}")
    major = eigvecs[:, 1]
    azimuth = math.degrees(math.atan2(major[0], major[1])) % 180.0  # atan2(east, north): clockwise from north
    return Ellipse(
        p=p,
        semi_major_m=k * math.sqrt(max(eigvals[1], 0.0)),
        semi_minor_m=k * math.sqrt(max(eigvals[0], 0.0)),
        azimuth_deg=azimuth,
        scale=k,
    )


def mahalanobis_sq(delta_en_m, cov_en_m2):
    """r^T C^-1 r (unitless) of residuals ``[..., 2]`` (m) under covariances ``[..., 2, 2]`` (m^2), C symmetrised:
    inside the p-ellipse when <= ellipse_scale(p)**2; chi-square with 2 dof when C is calibrated.

    A float for one residual ``[2]``, else an array ``[...]``.
    """
    d = np.asarray(delta_en_m, dtype=np.float64)
    cov = np.asarray(cov_en_m2, dtype=np.float64)
    cov = 0.5 * (cov + np.swapaxes(cov, -1, -2))
    m2 = np.einsum("...i,...i->...", d, np.linalg.solve(cov, d[..., None])[..., 0])
    return float(m2) if d.ndim == 1 else m2


@dataclass(frozen=True)
class SearchArea:
    """Axis-aligned rectangle in the network's ENU plane (metres): where a transmitter may be.

    The simulator keeps its transmitter inside it and the physics estimator puts its uniform prior on it,
    so both must build it the same way: with ``search_area``.
    """

    east_min_m: float
    east_max_m: float
    north_min_m: float
    north_max_m: float

    @property
    def width_m(self) -> float:
        """East-west extent (m)."""
        return self.east_max_m - self.east_min_m

    @property
    def height_m(self) -> float:
        """North-south extent (m)."""
        return self.north_max_m - self.north_min_m

    def contains(self, east_north_m) -> np.ndarray:
        """True where points ``[..., 2]`` (east, north, m) lie inside (edges included)."""
        p = np.asarray(east_north_m, dtype=np.float64)
        return (
            (p[..., 0] >= self.east_min_m)
            & (p[..., 0] <= self.east_max_m)
            & (p[..., 1] >= self.north_min_m)
            & (p[..., 1] <= self.north_max_m)
        )


def search_area(rx_enu_m, margin_km: float) -> SearchArea:
    """The receivers' ENU bounding box grown by ``margin_km`` on every side.

    Examples
    --------
    >>> search_area([[0.0, 0.0, 0.0], [10_000.0, 5_000.0, 0.0]], margin_km=1.0)
    SearchArea(east_min_m=-1000.0, east_max_m=11000.0, north_min_m=-1000.0, north_max_m=6000.0)
    """
    rx = np.asarray(rx_enu_m, dtype=np.float64).reshape(-1, np.shape(rx_enu_m)[-1])
    if rx.shape[0] == 0:
        raise ValueError("search_area: no receiver positions")
    margin_m = 1000.0 * float(margin_km)
    return SearchArea(
        east_min_m=float(rx[:, 0].min() - margin_m),
        east_max_m=float(rx[:, 0].max() + margin_m),
        north_min_m=float(rx[:, 1].min() - margin_m),
        north_max_m=float(rx[:, 1].max() + margin_m),
    )


def network_geometry(config) -> tuple[Origin, np.ndarray, SearchArea]:
    """ENU origin, receiver positions ``[R, 3]`` (east, north, up in m) and search area of a ``Config``.

    The origin is ``config.network.origin`` when set, else the receivers' centroid. The up
    coordinate is relative to the origin's altitude; the physics models use heights above the ellipsoid
    (``ReceiverConfig.alt_m``) for the vertical part of a distance instead.
    """
    receivers = config.receivers
    if not receivers:
        raise ValueError("network_geometry: the config names no receivers")
    lats = np.array([rx.lat for rx in receivers], dtype=np.float64)
    lons = np.array([rx.lon for rx in receivers], dtype=np.float64)
    alts = np.array([rx.alt_m for rx in receivers], dtype=np.float64)
    if config.network.origin is not None:
        origin = Origin(*(float(v) for v in config.network.origin))
    else:
        origin = centroid_origin(lats, lons, alts)
    rx_enu = geodetic_to_enu_m(lats, lons, alts, origin).reshape(len(receivers), 3)
    return origin, rx_enu, search_area(rx_enu, config.network.area_margin_km)
