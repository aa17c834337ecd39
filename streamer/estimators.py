"""Build the configured estimators behind the one ``Estimator`` protocol (streamer.estimate).

``estimator.kind = "physics"``: the Bayesian RSS posterior alone. ``"onnx"``: the model first, with the
physics posterior alongside as an alternative in every message, so users can compare them live.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np

from streamer.config import Config
from streamer.errors import HeimdallError, ModelMismatchError
from streamer.estimate import Estimate, EstimatorInputs
from streamer.model_contract import network_search_area_row, site_propagation
from streamer.physics import PhysicsEstimator
from streamer.survey import load_map

log = logging.getLogger(__name__)


class EstimateRejected(HeimdallError):
    """The estimator's output for a window was unusable (not finite, covariance not positive definite)."""


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class PhysicsPosterior:
    """streamer.physics.PhysicsEstimator behind the Estimator protocol, with the surveyed shadowing map of
    ``estimator.physics.shadowing_map`` when set (``streamer.survey.load_map``: ConfigError when it does not fit)."""

    name = "physics"

    def __init__(self, config: Config) -> None:
        survey = load_map(config) if config.estimator.physics.shadowing_map is not None else None
        self._estimator = PhysicsEstimator.from_config(config, shadowing_map=survey)
        # With a survey map, sha256 is the map file's: the messages say which survey fed the posterior.
        self.info = {"name": "physics-posterior", "version": "1",
                     "sha256": "" if survey is None else _sha256(config.estimator.physics.shadowing_map)}
        self.provider = "numpy"
        self._covariance_scale = config.estimator.physics.covariance_scale

    def estimate(self, inputs: EstimatorInputs) -> Estimate:
        result = self._estimator.estimate(
            rx_power_dbm=inputs.rx_power_dbm,
            heard=inputs.heard,
            present=inputs.present,
            detection_level_dbm=inputs.detection_level_dbm,
        )
        return Estimate(self.name, np.asarray(result.position_en_m), self._covariance_scale * np.asarray(result.cov_en_m2),
                        self._covariance_scale, np.asarray(result.ellipse_scales))


class OnnxModel:
    """streamer.inference.OnnxEstimator behind the Estimator protocol (km in the model, m outside)."""

    name = "onnx"

    def __init__(self, config: Config) -> None:
        from streamer.inference import OnnxEstimator, file_sha256

        from models import shipped_model_path

        import onnxruntime as ort

        path = config.estimator.model or shipped_model_path()
        key = f"{config.source}: estimator.model" + ("" if config.estimator.model else " (unset: the shipped model)")
        pin = config.estimator.model_sha256
        if pin is not None:
            try:
                digest = file_sha256(path)
            except OSError as exc:
                raise ModelMismatchError(f"{key}: cannot read {path}: {exc.strerror}") from exc
            if digest != pin.lower():
                raise ModelMismatchError(f"{key}: {path} has SHA-256 {digest}, but estimator.model_sha256 pins {pin.lower()}; "
                                         "refusing a model that is not the pinned file")
        options = ort.SessionOptions()
        # Batch 1 every half second: one thread, and no worker threads spinning on the daemon's cores.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._model = OnnxEstimator(path, providers=config.estimator.providers, expected_spec=config.features,
                                        session_options=options)
        except ModelMismatchError as exc:
            raise ModelMismatchError(f"{key}: {exc}") from exc
        meta = self._model.metadata
        if len(config.receivers) > self._model.max_receivers:
            raise ModelMismatchError(
                f"{config.source}: {len(config.receivers)} receivers configured, but model {path} "
                f"takes at most {self._model.max_receivers} (metadata max_receivers)"
            )
        self.info = {"name": meta.name, "version": meta.version, "sha256": self._model.model_sha256}
        self.provider = self._model.provider
        self._covariance_scale = config.estimator.model_covariance_scale
        self._site = site_propagation(config.estimator.physics) if config.estimator.model_site == "physics" else None
        # The physics posterior's uniform prior is on this area; a model that takes it is told the same.
        self._area = network_search_area_row(config) if config.receivers else None
        log.info("model %s %s %s", meta.name, meta.version, self.site_summary())

    def site_summary(self) -> str:
        """What the model is told about the site, for ``heimdall check`` and the start-up log."""
        if not self._model.takes_site:
            told = "takes no site input (infers the propagation from each window)"
        elif self._site is None:
            told = 'told nothing about the site (estimator.model_site = "none")'
        else:
            n, sigma, level, spread, _ = (float(v) for v in self._site)
            told = (f"told the site from estimator.physics: path-loss exponent {n:.2f}, sigma {sigma:.2f} dB, "
                    f"level 1 km away {level:.1f} +- {spread:.1f} dBm")
        if self._model.takes_area and self._area is not None:
            east_min, east_max, north_min, north_max, _ = (float(v) for v in self._area)
            told += (f"; told the search area, {east_max - east_min:.1f} x {north_max - north_min:.1f} km "
                     "(network.area_margin_km around the receivers)")
        return told

    def estimate(self, inputs: EstimatorInputs) -> Estimate:
        out = self._model.run(
            inputs.features_dbm[None].astype(np.float32),
            (inputs.rx_enu_m / 1000.0)[None].astype(np.float32),
            inputs.present[None].astype(np.float32),
            self._site,
            self._area,
        )
        if not out.valid[0]:
            raise EstimateRejected("model output not finite or covariance not positive definite")
        return Estimate(self.name, out.position_enu_km[0] * 1000.0, out.covariance_km2[0] * (1e6 * self._covariance_scale),
                        self._covariance_scale, None if out.ellipse_scale is None else out.ellipse_scale[0])


def build_estimators(config: Config) -> list:
    """The primary estimator first; raises ConfigError / ModelMismatchError before start-up when it cannot load."""
    physics = PhysicsPosterior(config) if config.receivers else None
    if config.estimator.kind == "onnx":
        model = OnnxModel(config)
        return [model, physics] if physics is not None else [model]
    return [physics] if physics is not None else []
