"""What goes on the wire: Localization, EmissionEvent, Truth and Status as plain dicts (docs/protocol.md, schema v2).

These dataclasses are the only path to the publisher; numpy values are converted to Python numbers here,
because msgpack cannot encode numpy types. An estimate's latitude and longitude come from ``_lat_lon``: pymap3d's
ENU -> ECEF step, then its ECEF -> geodetic formula (You 2000) on Python floats, where pymap3d's own array code
is the costlier part of a message; ``geodesy.enu_to_geodetic`` answers the points that formula leaves out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pymap3d

from streamer.core.geodesy import Ellipse, Origin, ellipse_from_covariance, ellipse_scale, enu_to_geodetic
from streamer.estimators.base import Estimate
from streamer.estimators.credible import ELLIPSE_PROBABILITIES

SCHEMA_VERSION = 2


def _f(x: Any) -> float:
    return float(x)


@dataclass(frozen=True)
class EstimateOut:
    """One estimator's answer in geodetic terms."""

    estimator: str  # "onnx" | "physics"
    lat: float
    lon: float
    cov_en_m2: np.ndarray  # [2, 2]
    ellipse: Ellipse  # the 95 % one
    covariance_scale: float = 1.0  # the site factor already in cov_en_m2 and the ellipses
    ellipses: tuple[Ellipse, ...] = ()  # one per credible.ELLIPSE_PROBABILITIES (68 %, 95 %); () = only ``ellipse``

    @classmethod
    def from_estimate(cls, est: Estimate, origin: Origin) -> "EstimateOut":
        """``est`` (ENU m relative to ``origin``) as latitude, longitude and the credible ellipses (m, degrees)."""
        lat, lon = _lat_lon(float(est.position_en_m[0]), float(est.position_en_m[1]), origin)
        cov = np.asarray(est.cov_en_m2, dtype=np.float64)
        scales = [None] * len(ELLIPSE_PROBABILITIES) if est.ellipse_scales is None else list(est.ellipse_scales)
        ellipses = tuple(ellipse_from_covariance(cov, p=p, scale=k) for p, k in zip(ELLIPSE_PROBABILITIES, scales))
        return cls(est.estimator, float(lat), float(lon), cov, ellipses[ELLIPSE_PROBABILITIES.index(0.95)],
                   est.covariance_scale, ellipses)

    def to_wire(self) -> dict[str, Any]:
        return {
            "estimator": self.estimator,
            "lat": _f(self.lat),
            "lon": _f(self.lon),
            "cov_en_m2": [[_f(v) for v in row] for row in np.asarray(self.cov_en_m2)],
            "covariance_scale": _f(self.covariance_scale),
            "ellipse": _ellipse_to_wire(self.ellipse),
            "ellipses": [_ellipse_to_wire(e) for e in (self.ellipses or (self.ellipse,))],
        }


_WGS84 = pymap3d.Ellipsoid.from_name("wgs84")


def _lat_lon(east_m: float, north_m: float, origin: Origin) -> tuple[float, float]:
    """Latitude and longitude (degrees) of a point at zero ENU height: ``geodesy.enu_to_geodetic`` on scalars.

    pymap3d's ``ecef2geodetic`` formula (You 2000, eqns. 4 and 13) on Python floats; points on the polar axis or
    at the ellipsoid's centre (its special cases) go to ``enu_to_geodetic``.
    """
    x, y, z = (float(v) for v in pymap3d.enu2ecef(east_m, north_m, 0.0, origin.lat, origin.lon, origin.alt_m))
    a, b = _WGS84.semimajor_axis, _WGS84.semiminor_axis
    r = math.sqrt(x**2 + y**2 + z**2)
    e = math.sqrt(a**2 - b**2)
    u = math.sqrt(0.5 * (r**2 - e**2) + 0.5 * math.hypot(r**2 - e**2, 2 * e * z))
    hxy = math.hypot(x, y)
    if math.isclose(u, 0, abs_tol=1e-8) or math.isclose(hxy, 0, abs_tol=1e-8):
        lat, lon, _ = enu_to_geodetic(east_m, north_m, 0.0, origin)
        return float(lat), float(lon)
    hue = math.hypot(u, e)
    beta = math.atan(hue / u * z / hxy)
    beta += ((b * u - a * hue + e**2) * math.sin(beta)) / (a * hue * 1 / math.cos(beta) - e**2 * math.cos(beta))
    return math.degrees(math.atan(a / b * math.tan(beta))), math.degrees(math.atan2(y, x))


def _ellipse_to_wire(ellipse: Ellipse) -> dict[str, float]:
    """``p``, semi-axes (m), azimuth (degrees clockwise from north) and ``scale`` (standard deviations of the
    covariance the ellipse spans: the estimator's credible radius, or the Gaussian's sqrt(-2 ln(1 - p)))."""
    scale = ellipse.scale if ellipse.scale is not None else ellipse_scale(ellipse.p)
    return {
        "p": _f(ellipse.p),
        "semi_major_m": _f(ellipse.semi_major_m),
        "semi_minor_m": _f(ellipse.semi_minor_m),
        "azimuth_deg": _f(ellipse.azimuth_deg),
        "scale": _f(scale),
    }


@dataclass(frozen=True)
class Localization:
    """Topic ``loc``: one estimate for one window, or for one emission of a band.

    A band daemon (a channel plan) sets ``channel`` (its name), ``channel_hz`` (its centre, Hz), ``emission_id`` and
    ``stage`` (``"interim"``: over one window's active frames; ``"final"``: over the whole emission, whose start and
    end are then ``t_start_ns`` and ``t_end_ns``); a single-channel daemon leaves them None and they are not sent.
    """

    seq: int
    t_start_ns: int
    t_end_ns: int
    primary: EstimateOut
    receivers: tuple[str, ...]
    rx_power_dbm: dict[str, float]
    model: dict[str, str]
    processing_ms: float
    age_ms: float
    network: str
    alternatives: tuple[EstimateOut, ...] = ()
    channel: str | None = None
    channel_hz: float | None = None
    emission_id: int | None = None
    stage: str | None = None

    def to_wire(self) -> dict[str, Any]:
        msg = {"v": SCHEMA_VERSION, "seq": int(self.seq), "t_start_ns": int(self.t_start_ns), "t_end_ns": int(self.t_end_ns)}
        if self.channel is not None:
            msg.update({"channel": str(self.channel), "channel_hz": _f(self.channel_hz),
                        "emission_id": int(self.emission_id), "stage": str(self.stage)})
        msg.update(self.primary.to_wire())
        msg.update(
            {
                "network": self.network,
                "receivers": list(self.receivers),
                "rx_power_dbm": {k: _f(v) for k, v in self.rx_power_dbm.items()},
                "model": dict(self.model),
                "latency_ms": {"processing": _f(self.processing_ms), "age": _f(self.age_ms)},
                "alternatives": [a.to_wire() for a in self.alternatives],
            }
        )
        return msg


@dataclass(frozen=True)
class EmissionEvent:
    """Topic ``emission``: an emission on a band channel started (``event="start"``) or ended (``"end"``).

    start_ns, end_ns : its first frame and (at the end) its last active frame (Unix ns); end_ns None at the start.
    peak_snr_db : at the end, the receivers that heard it -> their peak level over their noise floor (dB); empty at
        the start. active_frames : at the end, how many frames (10.7 ms each) it was active in; None at the start.
    """

    event: str
    emission_id: int
    channel: str
    channel_hz: float
    start_ns: int
    end_ns: int | None
    peak_snr_db: dict[str, float]
    active_frames: int | None
    network: str

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "event": self.event,
            "emission_id": int(self.emission_id),
            "channel": str(self.channel),
            "channel_hz": _f(self.channel_hz),
            "start_ns": int(self.start_ns),
            "end_ns": None if self.end_ns is None else int(self.end_ns),
            "receivers": list(self.peak_snr_db),
            "peak_snr_db": {k: _f(v) for k, v in self.peak_snr_db.items()},
            "active_frames": None if self.active_frames is None else int(self.active_frames),
            "network": self.network,
        }


@dataclass(frozen=True)
class Truth:
    """Topic ``truth``: the simulator's transmitter at ``t_ns`` (only when receivers are simulated).

    For a window (``window_start_ns`` set; None otherwise): the window ``[window_start_ns, window_end_ns)`` (Unix ns),
    ``keyed_fraction`` (0..1, the share of the window the wanted transmitter was on the air),
    ``keyed_intervals_ns`` (those on-air spans, clipped to the window), ``collision`` (a second transmitter
    on the channel during the window) and ``kinds`` (the traffic kinds on the air in it).
    A band daemon sends one per simulated transmitter and window, each with ``transmitter`` (its index) and the
    ``channel`` and ``channel_hz`` (Hz) it keys on; a single-channel daemon's has none of the three keys.
    """

    t_ns: int
    lat: float
    lon: float
    power_dbm: float | None
    keyed: bool
    window_start_ns: int | None = None
    window_end_ns: int | None = None
    keyed_fraction: float | None = None
    keyed_intervals_ns: tuple[tuple[int, int], ...] = ()
    collision: bool = False
    kinds: tuple[str, ...] = ()
    transmitter: int | None = None
    channel: str | None = None
    channel_hz: float | None = None

    def to_wire(self) -> dict[str, Any]:
        band = {} if self.channel is None else {"transmitter": int(self.transmitter or 0), "channel": str(self.channel),
                                                "channel_hz": _f(self.channel_hz)}
        return {
            "v": SCHEMA_VERSION,
            "t_ns": int(self.t_ns),
            "lat": _f(self.lat),
            "lon": _f(self.lon),
            "power_dbm": None if self.power_dbm is None else _f(self.power_dbm),
            "keyed": bool(self.keyed),
            "window_start_ns": None if self.window_start_ns is None else int(self.window_start_ns),
            "window_end_ns": None if self.window_end_ns is None else int(self.window_end_ns),
            "keyed_fraction": None if self.keyed_fraction is None else _f(self.keyed_fraction),
            "keyed_intervals_ns": [[int(a), int(b)] for a, b in self.keyed_intervals_ns],
            "collision": bool(self.collision),
            "kinds": [str(k) for k in self.kinds],
            **band,
        }


@dataclass(frozen=True)
class ReceiverHealth:
    up: bool
    last_block_age_s: float | None
    sample_rate_hz: float | None
    time_source: str | None
    samples_received: int
    samples_dropped: int
    buffer_fill_ratio: float

    def to_wire(self) -> dict[str, Any]:
        return {
            "up": bool(self.up),
            "last_block_age_s": None if self.last_block_age_s is None else _f(self.last_block_age_s),
            "sample_rate_hz": None if self.sample_rate_hz is None else _f(self.sample_rate_hz),
            "time_source": self.time_source,
            "samples_received": int(self.samples_received),
            "samples_dropped": int(self.samples_dropped),
            "buffer_fill_ratio": _f(self.buffer_fill_ratio),
        }


@dataclass(frozen=True)
class Status:
    """Topic ``status``: heartbeat with per-receiver health."""

    t_ns: int
    uptime_s: float
    estimator: str
    windows: int
    localizations: int
    receivers: dict[str, ReceiverHealth] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "t_ns": int(self.t_ns),
            "uptime_s": _f(self.uptime_s),
            "estimator": self.estimator,
            "windows": int(self.windows),
            "localizations": int(self.localizations),
            "receivers": {k: v.to_wire() for k, v in self.receivers.items()},
        }
