"""The ONNX model as an estimator: ``OnnxSession`` loads a contract-following model (streamer.estimators.contract)
and runs batches of dBm mel frames through ONNX Runtime; ``OnnxModel`` puts it behind the Estimator protocol.

The session owns everything between the window aligner's arrays and the model's tensors: the metadata's
normalisation, zero-filling masked receiver slots, padding to the model's ``max_receivers``, and checking what
comes back. A row whose output is not finite or whose covariance is not positive definite (after symmetrising)
is not raised: ``run`` returns ``valid[b] = False`` for it and the caller counts and drops it.

Providers: the configured list is filtered by ``onnxruntime.get_available_providers()`` and CPU is always
appended; ONNX Runtime may still fall back (onnxruntime-gpu lists CUDA on a machine without a GPU), so
``provider`` is read back from ``session.get_providers()[0]``, never from the request.

Examples
--------
>>> select_providers(("CUDAExecutionProvider", "CPUExecutionProvider"), available=["CPUExecutionProvider"])
['CPUExecutionProvider']
>>> covariance_km2_to_m2([[1.0, 0.0], [0.0, 0.25]]).tolist()
[[1000000.0, 0.0], [0.0, 250000.0]]
"""


from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnxruntime as ort

from streamer.config import Config
from streamer.core.errors import ModelMismatchError
from streamer.dsp.detection import DetectionRule
from streamer.dsp.features import FeatureSpec, normalise
from streamer.estimators.base import (
    Estimate,
    EstimateRejected,
    EstimatorInputs,
    file_sha256,
)
from streamer.estimators.contract import (
    AREA_INPUT,
    ELLIPSE_OUTPUT,
    FRAME_MASK_INPUT,
    OPTIONAL_OUTPUTS,
    OUTPUT_NAMES,
    OUTPUTS,
    SEARCH_AREA_WIDTH,
    SITE_INPUT,
    SITE_PROPAGATION_WIDTH,
    ModelMetadata,
    check_model,
    network_search_area_row,
    site_propagation,
)
from streamer.estimators.credible import ELLIPSE_PROBABILITIES
from streamer.estimators.physics import CALIBRATION_AGE_REFRESH_S, drift_variance_db2

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
DEFAULT_PROVIDERS = ("CUDAExecutionProvider", CPU)


class ModelOutput(NamedTuple):
    """One batch of model outputs: float64, covariance symmetrised; ``valid[b]`` False = drop and count row b."""

    position_enu_km: np.ndarray  # [B, 2] east, north (km)
    covariance_km2: np.ndarray  # [B, 2, 2] (km^2)
    valid: np.ndarray  # [B] bool: finite and positive definite (and ellipse scales finite and > 0)
    ellipse_scale: np.ndarray | None = None  # [B, P] credible radii (std devs), from a model with the optional output


def select_providers(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """The requested providers that are available, in order, with CPU always last as the fallback."""
    chosen = [p for p in requested if p in available and p != CPU]
    return [*dict.fromkeys(chosen), CPU]


def covariance_km2_to_m2(covariance_km2) -> np.ndarray:
    """km^2 -> m^2 (x 1e6), float64."""
    return np.asarray(covariance_km2, dtype=np.float64) * 1e6


def check_outputs(position_enu_km: np.ndarray, covariance_km2: np.ndarray, ellipse_scale: np.ndarray | None = None) -> ModelOutput:
    """Symmetrise the covariance and flag rows that are not finite or not positive definite, or whose ellipse
    scales (when given) are not finite and positive."""
    position = np.asarray(position_enu_km, dtype=np.float64)
    cov = np.asarray(covariance_km2, dtype=np.float64)
    cov = 0.5 * (cov + np.swapaxes(cov, -1, -2))
    with np.errstate(all="ignore"):
        finite = np.isfinite(position).all(axis=-1) & np.isfinite(cov).all(axis=(-2, -1))
        var_e, var_n, cross = cov[:, 0, 0], cov[:, 1, 1], cov[:, 0, 1]
        positive_definite = (var_e > 0) & (var_e * var_n - cross * cross > 0)
        valid = finite & positive_definite
        if ellipse_scale is not None:
            ellipse_scale = np.asarray(ellipse_scale, dtype=np.float64)
            valid &= (np.isfinite(ellipse_scale) & (ellipse_scale > 0)).all(axis=-1)
    return ModelOutput(position, cov, valid, ellipse_scale)


def fill_with_active_frames(features: np.ndarray, active: np.ndarray) -> np.ndarray:
    """[B, R, M, T] frames with each window's active frames ([B, T] bool, at least one per window) repeated in
    order to fill all T frames: what a model without the ``frame_mask`` input sees of a partly keyed window, so
    that its statistics over frames are those of the on-air frames (exactly where their count divides T; otherwise
    the first ``T mod count`` of them appear once more than the others).

    >>> frames = np.arange(4.0).reshape(1, 1, 1, 4)
    >>> fill_with_active_frames(frames, np.array([[False, True, False, True]]))[0, 0, 0].tolist()
    [1.0, 3.0, 1.0, 3.0]
    """
    if active.all():
        return features
    out = np.empty_like(features)
    t = features.shape[-1]
    for b in range(features.shape[0]):
        on = np.flatnonzero(active[b])
        out[b] = features[b][..., on[np.arange(t) % on.size]]
    return out


class OnnxSession:
    """A checked ONNX model on the best available provider; ``run`` maps dBm frames to position + covariance.

    Batches of any size (one window, or every active channel's window of a tick) go through one call. The host
    input buffers are allocated for the largest batch seen and reused (a smaller batch runs in their first rows).
    With ``io_binding`` (the default on the CUDA provider) the session runs through ONNX Runtime's I/O binding:
    input and output buffers on the provider's device, allocated once per batch size (the last
    ``BOUND_BATCH_SIZES`` sizes kept) and reused, each call copying the batch in and the outputs out.

    Not thread-safe: ``run`` reuses its buffers (the daemon calls it from one thread).
    """

    #: Batch sizes whose device buffers an ``io_binding`` session keeps (a tick's batch follows the active channels).
    BOUND_BATCH_SIZES = 4

    def __init__(self, model_path: str | Path, providers: Sequence[str] = DEFAULT_PROVIDERS,
                 expected_spec: FeatureSpec | None = None, session_options: ort.SessionOptions | None = None,
                 expected_detection: DetectionRule | None = None, io_binding: bool | None = None) -> None:
        self.model_path = Path(model_path)
        self.metadata: ModelMetadata = check_model(self.model_path, expected_spec, expected_detection)
        self.spec: FeatureSpec = self.metadata.features
        self.max_receivers: int = self.metadata.max_receivers
        self.model_sha256 = file_sha256(self.model_path)
        chosen = select_providers(providers, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(self.model_path), sess_options=session_options, providers=chosen)
        except Exception as exc:  # onnxruntime's own Fail/InvalidGraph/NotImplemented types
            raise ModelMismatchError(f"onnxruntime cannot load model {self.model_path}: {exc}") from exc
        self.provider: str = self.session.get_providers()[0]
        # A model may take the site's propagation and the search area (the contract's optional inputs); run() feeds them.
        names = {i.name for i in self.session.get_inputs()}
        self.takes_site: bool = SITE_INPUT in names
        self.takes_area: bool = AREA_INPUT in names
        self.takes_frame_mask: bool = FRAME_MASK_INPUT in names
        # A model may report its credible ellipses' radii (the contract's optional output); run() returns them.
        self.gives_ellipse_scale: bool = ELLIPSE_OUTPUT in {o.name for o in self.session.get_outputs()}
        self.output_names: list[str] = list(OUTPUT_NAMES) + ([ELLIPSE_OUTPUT] if self.gives_ellipse_scale else [])
        batch_dim = self.session.get_inputs()[0].shape[0]
        self._static_batch = batch_dim if isinstance(batch_dim, int) else None
        self._buffers = self._allocate(1)
        # I/O binding by default where it saves copies the session would otherwise make per call: on a GPU.
        self.io_binding: bool = self.provider == "CUDAExecutionProvider" if io_binding is None else bool(io_binding)
        self.io_binding_device: str = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"
        self._bindings: dict[int, tuple[ort.IOBinding, dict[str, ort.OrtValue], list[ort.OrtValue]]] = {}
        log.info("model %s %s (%s) runs on %s (requested %s)", self.metadata.name, self.metadata.version,
                 self.model_path, self.provider, ", ".join(providers))

    def _allocate(self, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r, spec = self.max_receivers, self.spec
        return (np.zeros((batch, r, spec.n_mels, spec.n_frames), np.float32), np.zeros((batch, r, 3), np.float32),
                np.zeros((batch, r), np.float32))

    @staticmethod
    def _rows(name: str, values, width: int, batch: int) -> np.ndarray:
        """``values`` ([width] or [batch, width], or None = unknown: zeros) as the [batch, width] float32 feed."""
        if values is None:
            return np.zeros((batch, width), np.float32)
        rows = np.asarray(values, np.float32)
        if rows.shape not in ((width,), (batch, width)):
            raise ValueError(f"{name}: expected [{width}] or [{batch}, {width}], got {list(rows.shape)}")
        if not np.isfinite(rows).all():
            raise ValueError(f"{name}: not finite")
        return np.ascontiguousarray(np.broadcast_to(rows, (batch, width)))

    @classmethod
    def _area_rows(cls, area, batch: int) -> np.ndarray:
        rows = cls._rows("area", area, SEARCH_AREA_WIDTH, batch)
        known = rows[:, 4] > 0.5
        if not np.all((rows[known, 0] < rows[known, 1]) & (rows[known, 2] < rows[known, 3])):
            raise ValueError("area: expected east min < east max and north min < north max (km)")
        return rows

    def _frame_mask(self, frame_mask, batch: int) -> np.ndarray | None:
        """``frame_mask`` as [B, T] bool (a window with no active frame counts every frame), or None."""
        if frame_mask is None:
            return None
        active = np.asarray(frame_mask)
        t = self.spec.n_frames
        if active.shape not in ((t,), (batch, t)):
            raise ValueError(f"frame_mask: expected [{t}] or [{batch}, {t}], got {list(active.shape)}")
        active = np.broadcast_to(active > 0.5 if active.dtype != bool else active, (batch, t))
        return active | ~active.any(axis=-1, keepdims=True)

    def _check_shapes(self, features_dbm: np.ndarray, rx_enu_km: np.ndarray, rx_mask: np.ndarray) -> tuple[int, int]:
        if features_dbm.ndim != 4 or features_dbm.shape[2:] != (self.spec.n_mels, self.spec.n_frames):
            raise ValueError(f"features_dbm: expected [B, R, {self.spec.n_mels}, {self.spec.n_frames}], "
                             f"got {list(features_dbm.shape)}")
        batch, n_rx = features_dbm.shape[:2]
        if rx_enu_km.shape != (batch, n_rx, 3) or rx_mask.shape != (batch, n_rx):
            raise ValueError(f"rx_enu_km / rx_mask: expected [{batch}, {n_rx}, 3] / [{batch}, {n_rx}], "
                             f"got {list(rx_enu_km.shape)} / {list(rx_mask.shape)}")
        if n_rx > self.max_receivers:
            raise ModelMismatchError(f"{n_rx} receivers, but model {self.metadata.name} {self.metadata.version} "
                                     f"takes at most {self.max_receivers} (metadata max_receivers)")
        if self._static_batch is not None and batch != self._static_batch:
            raise ValueError(f"batch of {batch}, but model {self.metadata.name} has a fixed batch of {self._static_batch}")
        return batch, n_rx

    def run(self, features_dbm, rx_enu_km, rx_mask, site=None, area=None, frame_mask=None) -> ModelOutput:
        """Estimate positions for a batch.

        Parameters
        ----------
        features_dbm : [B, R, M, T] dBm mel frames (``features.mel_frames_dbm``); R <= ``max_receivers``
        rx_enu_km : [B, R, 3] receiver east, north, up from the network origin (km)
        rx_mask : [B, R] 1 = present; absent slots may hold anything (NaN included): they are zero-filled
        site : [5] or [B, 5] ``model_contract.site_propagation`` row(s), fed to a model that takes them
            (``takes_site``); ``None`` = unknown (a zero row). Ignored by a model without that input.
        area : [5] or [B, 5] ``model_contract.search_area_row`` row(s) (km, in ``rx_enu_km``'s frame), fed to a
            model that takes them (``takes_area``); ``None`` = unknown. Ignored by a model without that input.
        frame_mask : [B, T] bool, the frames that carried the transmission (``DetectionRule.frame_activity``);
            ``None`` = every frame. A model that takes it (``takes_frame_mask``) is fed it; any other model is fed
            each window's active frames repeated to fill T (``fill_with_active_frames``).
        """
        features_dbm, rx_enu_km, rx_mask = np.asarray(features_dbm), np.asarray(rx_enu_km), np.asarray(rx_mask)
        batch, n_rx = self._check_shapes(features_dbm, rx_enu_km, rx_mask)
        active = self._frame_mask(frame_mask, batch)
        if active is not None and not self.takes_frame_mask:
            features_dbm = fill_with_active_frames(features_dbm, active)
        if self._buffers[0].shape[0] < batch:
            self._buffers = self._allocate(batch)
        feats, enu, mask = (buffer[:batch] for buffer in self._buffers)  # leading rows: contiguous
        absent = ~(rx_mask > 0.5)
        norm = self.metadata.normalisation
        feats[:, :n_rx] = normalise(features_dbm, norm.offset_db, norm.scale_db)
        feats[:, :n_rx][absent] = 0.0
        feats[:, n_rx:] = 0.0
        enu[:, :n_rx] = rx_enu_km
        enu[:, :n_rx][absent] = 0.0
        enu[:, n_rx:] = 0.0
        mask[:, :n_rx] = ~absent
        mask[:, n_rx:] = 0.0
        feeds = {"features": feats, "rx_enu_km": enu, "rx_mask": mask}
        if self.takes_site:
            feeds[SITE_INPUT] = self._rows("site", site, SITE_PROPAGATION_WIDTH, batch)
        if self.takes_area:
            feeds[AREA_INPUT] = self._area_rows(area, batch)
        if self.takes_frame_mask:
            feeds[FRAME_MASK_INPUT] = (np.ones((batch, self.spec.n_frames), np.float32) if active is None
                                       else np.ascontiguousarray(active, dtype=np.float32))
        if self.io_binding:
            position, covariance, *scale = self._run_bound(feeds, batch)
        else:
            position, covariance, *scale = self.session.run(self.output_names, feeds)
        if position.shape != (batch, 2) or covariance.shape != (batch, 2, 2):
            raise ModelMismatchError(f"model {self.metadata.name} returned shapes {list(position.shape)} and "
                                     f"{list(covariance.shape)}, expected [{batch}, 2] and [{batch}, 2, 2]")
        n_p = len(ELLIPSE_PROBABILITIES)
        if scale and scale[0].shape != (batch, n_p):
            raise ModelMismatchError(f"model {self.metadata.name} returned {ELLIPSE_OUTPUT} of shape {list(scale[0].shape)}, "
                                     f"expected [{batch}, {n_p}]")
        return check_outputs(position, covariance, scale[0] if scale else None)

    def _run_bound(self, feeds: dict[str, np.ndarray], batch: int) -> list[np.ndarray]:
        """``session.run`` through the I/O binding of this batch size: ``feeds`` copied into its device inputs,
        the outputs (``output_names``) copied back to host arrays."""
        binding = self._bindings.pop(batch, None) or self._bind(feeds, batch)
        self._bindings[batch] = binding  # most recently used last
        while len(self._bindings) > self.BOUND_BATCH_SIZES:
            self._bindings.pop(next(iter(self._bindings)))
        io, inputs, outputs = binding
        for name, value in inputs.items():
            value.update_inplace(np.ascontiguousarray(feeds[name]))
        try:
            self.session.run_with_iobinding(io)
        except Exception as exc:  # onnxruntime's own types: e.g. an output that does not fit the contract's shape
            raise ModelMismatchError(f"model {self.metadata.name} {self.metadata.version} failed through I/O binding "
                                     f"at batch {batch}: {exc}") from exc
        # On the CPU numpy() is a view of the reused output buffer: the copy keeps each call's answer its own.
        return [np.array(value.numpy()) for value in outputs]

    def _bind(self, feeds: dict[str, np.ndarray], batch: int):
        """An I/O binding with device buffers for ``feeds``' inputs and the contract's outputs at ``batch``."""
        io = self.session.io_binding()
        device = self.io_binding_device
        inputs = {name: ort.OrtValue.ortvalue_from_shape_and_type(list(array.shape), np.float32, device, 0)
                  for name, array in feeds.items()}
        for name, value in inputs.items():
            io.bind_ortvalue_input(name, value)
        dims = {t.name: [batch if d == "B" else d for d in t.dims] for t in (*OUTPUTS, *OPTIONAL_OUTPUTS)}
        outputs = [ort.OrtValue.ortvalue_from_shape_and_type(dims[name], np.float32, device, 0) for name in self.output_names]
        for name, value in zip(self.output_names, outputs):
            io.bind_ortvalue_output(name, value)
        return io, inputs, outputs

log = logging.getLogger(__name__)


class OnnxModel:
    """streamer.estimators.onnx.OnnxSession behind the Estimator protocol (km in the model, m outside)."""

    name = "onnx"

    def __init__(self, config: Config, clock=time.time) -> None:
        from models import shipped_model_path

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
            self._model = OnnxSession(path, providers=config.estimator.providers, expected_spec=config.features,
                                        session_options=options, expected_detection=DetectionRule.from_config(config))
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
        self._config, self._clock, self._aged_at_s = config, clock, -math.inf
        self._drift_var_db2 = np.zeros(len(config.receivers))
        # The physics posterior's uniform prior is on this area; a model that takes it is told the same.
        self._area = network_search_area_row(config) if config.receivers else None
        log.info("model %s %s %s", meta.name, meta.version, self.site_summary())

    def _site_row(self, present: np.ndarray, at_s: float | None = None) -> np.ndarray | None:
        """The site row for one window: the configured one, its sigma widened for the calibrations' age.

        The model takes one sigma for all receivers; a spread of ages becomes the RMS over the window's present
        receivers of their calibration sigmas, sqrt(mean(calibration_sigma^2 + drift variance)): the same total
        error variance over those receivers as the physics posterior's per-receiver sigmas. The age is
        measured at Unix time ``at_s`` (s; ``None``: on ``clock``), again when that time has moved by
        ``physics.CALIBRATION_AGE_REFRESH_S``.
        """
        if self._site is None:
            return None
        now = self._clock() if at_s is None else at_s
        if abs(now - self._aged_at_s) >= CALIBRATION_AGE_REFRESH_S:
            self._drift_var_db2, self._aged_at_s = drift_variance_db2(self._config, now), now
        if not self._drift_var_db2.any():
            return self._site
        used = self._drift_var_db2[np.asarray(present, dtype=bool)] if np.any(present) else self._drift_var_db2
        physics = self._config.estimator.physics
        return site_propagation(physics, math.sqrt(physics.calibration_sigma_db**2 + float(used.mean())))

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
            aged = float(self._site_row(np.ones(len(self._config.receivers), bool))[1])
            if aged != sigma:
                told += f" (sigma {aged:.2f} dB now, with every receiver's calibration age: calibrated_at)"
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
            self._site_row(inputs.present, None if inputs.t_ns is None else inputs.t_ns / 1e9),
            self._area,
            frame_mask=None if inputs.active_frames is None else inputs.active_frames[None],
        )
        if not out.valid[0]:
            raise EstimateRejected("model output not finite or covariance not positive definite")
        return Estimate(self.name, out.position_enu_km[0] * 1000.0, out.covariance_km2[0] * (1e6 * self._covariance_scale),
                        self._covariance_scale, None if out.ellipse_scale is None else out.ellipse_scale[0])

    def estimate_batch(self, inputs_list) -> list[Estimate | EstimateRejected]:
        """``estimate`` of several windows (one tick's channels) in one ``OnnxSession.run``: each window keeps its own
        site row (its calibrations' age), the search area and its frame mask. A window whose output ``estimate``
        would reject comes back as that ``EstimateRejected`` in its place, not raised, so the others still count."""
        if not inputs_list:
            return []
        sites = [self._site_row(i.present, None if i.t_ns is None else i.t_ns / 1e9) for i in inputs_list]
        n_frames = self._model.spec.n_frames
        frame_mask = None
        if any(i.active_frames is not None for i in inputs_list):
            frame_mask = np.stack([np.ones(n_frames, bool) if i.active_frames is None else np.asarray(i.active_frames, bool)
                                   for i in inputs_list])
        out = self._model.run(
            np.stack([i.features_dbm for i in inputs_list]).astype(np.float32),
            (np.stack([i.rx_enu_m for i in inputs_list]) / 1000.0).astype(np.float32),
            np.stack([i.present for i in inputs_list]).astype(np.float32),
            None if self._site is None else np.stack(sites),
            self._area,
            frame_mask=frame_mask,
        )
        return [Estimate(self.name, out.position_enu_km[b] * 1000.0, out.covariance_km2[b] * (1e6 * self._covariance_scale),
                         self._covariance_scale, None if out.ellipse_scale is None else out.ellipse_scale[b])
                if out.valid[b] else EstimateRejected("model output not finite or covariance not positive definite")
                for b in range(len(inputs_list))]
