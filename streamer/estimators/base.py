"""The Estimator protocol shared by the ONNX model and the physics posterior, and its input/output types.

Both estimators see the same ``EstimatorInputs``, built once per window from the one feature
implementation (streamer.dsp.features), so their answers are comparable message by message.
"""


from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from streamer.core.errors import HeimdallError


@dataclass(frozen=True)
class EstimatorInputs:
    """One window, R receivers (all configured receivers, in config order).

    features_dbm : float32 [R, M, T] mel frames in dBm (zeros where not present).
    rx_enu_m : float64 [R, 3] receiver east, north, up relative to the network origin (m).
    present : bool [R] receiver delivered the whole window.
    heard : bool [R] present and in-channel SNR >= detection threshold.
    rx_power_dbm : float64 [R] estimated in-channel signal power (dBm; NaN where not present).
    detection_level_dbm : float64 [R] signal power at the detection threshold (dBm) for each receiver.
    active_frames : bool [T] the frames that carried the transmission (``DetectionRule.frame_activity``): the
        powers above are measured over them, and the model is told them; ``None``: every frame.
    t_ns : the window's start (Unix ns, the samples' own time): what calibration ages are measured at, so a
        replayed recording ages its calibrations to when it was recorded; ``None``: the estimator's clock.
    """

    features_dbm: np.ndarray
    rx_enu_m: np.ndarray
    present: np.ndarray
    heard: np.ndarray
    rx_power_dbm: np.ndarray
    detection_level_dbm: np.ndarray
    active_frames: np.ndarray | None = None
    t_ns: int | None = None


@dataclass(frozen=True)
class Estimate:
    """Position (east, north, m) and its 2x2 covariance (m^2) relative to the network origin.

    ``covariance_scale``: the site's ellipse factor already applied to ``cov_en_m2`` (heimdall calibrate-ellipses).
    ``ellipse_scales``: ``[P]`` radii, in standard deviations of ``cov_en_m2``, of the ellipses holding
    ``streamer.estimators.credible.ELLIPSE_PROBABILITIES`` of the estimator's posterior; ``None``: a Gaussian's.
    """

    estimator: str
    position_en_m: np.ndarray
    cov_en_m2: np.ndarray
    covariance_scale: float = 1.0
    ellipse_scales: np.ndarray | None = None

    def with_covariance_scale(self, scale: float) -> Estimate:
        """This estimate with the site factor ``scale`` in place of the one applied (the ellipses' radii, in standard
        deviations, are unchanged)."""
        if scale == self.covariance_scale:
            return self
        return replace(self, cov_en_m2=self.cov_en_m2 * (scale / self.covariance_scale), covariance_scale=scale)


class Estimator(Protocol):
    name: str

    def estimate(self, inputs: EstimatorInputs) -> Estimate: ...


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class EstimateRejected(HeimdallError):
    """The estimator's output for a window was unusable (not finite, covariance not positive definite)."""
