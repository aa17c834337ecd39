"""Export a trained ``LocalizerNet`` to a single-file ONNX model (opset 17) with the contract's metadata.

``export_model`` writes the graph with the TorchScript exporter (``dynamo=False``: one self-contained file,
no external ``.onnx.data``), the batch axis symbolic and R, M, T fixed to the metadata's values, stores
``ModelMetadata`` under ``metadata_props["heimdall"]``, checks the file with ``streamer.estimators.contract
.check_model`` and compares ONNX Runtime with torch on the same inputs (``onnx_vs_torch``).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from streamer.estimators.contract import (
    AREA_INPUT,
    ELLIPSE_OUTPUT,
    FRAME_MASK_INPUT,
    INPUT_NAMES,
    OUTPUT_NAMES,
    SEARCH_AREA_WIDTH,
    SITE_INPUT,
    SITE_PROPAGATION_WIDTH,
    ModelMetadata,
    check_model,
    write_metadata,
)

OPSET = 17


def export_model(model: torch.nn.Module, path: str | Path, meta: ModelMetadata) -> Path:
    """Write ``model`` as ONNX with ``meta``; returns the path. Raises if the contract check fails."""
    path = Path(path)
    spec = meta.features
    example = (
        torch.zeros(2, meta.max_receivers, spec.n_mels, spec.n_frames),
        torch.zeros(2, meta.max_receivers, 3),
        torch.ones(2, meta.max_receivers),
    )
    input_names = list(INPUT_NAMES)
    if getattr(model, "config", {}).get("site_input"):
        example += (torch.zeros(2, SITE_PROPAGATION_WIDTH),)
        input_names.append(SITE_INPUT)
    if getattr(model, "config", {}).get("area_input"):
        if len(example) == 3:  # forward(features, rx_enu_km, rx_mask, site, area): site is positional
            raise ValueError("a model that takes the search area must also take the site input")
        example += (torch.zeros(2, SEARCH_AREA_WIDTH),)
        input_names.append(AREA_INPUT)
    if getattr(model, "config", {}).get("frame_mask_input"):
        example += (torch.ones(2, spec.n_frames),)
        input_names.append(FRAME_MASK_INPUT)
    output_names = list(OUTPUT_NAMES) + ([ELLIPSE_OUTPUT] if getattr(model, "config", {}).get("ellipse_output") else [])
    model = model.eval()
    buffer = io.BytesIO()
    # The TorchScript exporter writes one self-contained opset-17 file; torch >= 2.9 warns that it is the legacy path.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # scoped to the export call
        torch.onnx.export(
            model, example, buffer, input_names=input_names, output_names=output_names,
            dynamic_axes={name: {0: "B"} for name in (*input_names, *output_names)}, opset_version=OPSET,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    write_metadata(proto, meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    check_model(path)
    return path


def set_metadata(path: str | Path, meta: ModelMetadata) -> None:
    """Replace the metadata of an exported model in place (e.g. to add measured accuracy)."""
    proto = onnx.load(str(path))
    write_metadata(proto, meta)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    check_model(path)


def onnx_vs_torch(model: torch.nn.Module, path: str | Path, features: np.ndarray, rx_enu_km: np.ndarray,
                  rx_mask: np.ndarray, site: np.ndarray | None = None, area: np.ndarray | None = None,
                  frame_mask: np.ndarray | None = None) -> dict:
    """Max absolute differences between ONNX Runtime (CPU) and torch on the same normalised inputs
    (``site``, ``area`` [B, 5]: fed where the model takes ``site_propagation`` / ``search_area_enu_km``;
    ``None`` = unknown; ``frame_mask`` [B, T]: fed where the model takes it, ``None`` = every frame)."""
    feeds = {"features": np.ascontiguousarray(features, np.float32), "rx_enu_km": np.ascontiguousarray(rx_enu_km, np.float32),
             "rx_mask": np.ascontiguousarray(rx_mask, np.float32)}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    if SITE_INPUT in names:
        feeds[SITE_INPUT] = np.ascontiguousarray(
            np.zeros((features.shape[0], SITE_PROPAGATION_WIDTH)) if site is None else site, np.float32)
    if AREA_INPUT in names:
        feeds[AREA_INPUT] = np.ascontiguousarray(
            np.zeros((features.shape[0], SEARCH_AREA_WIDTH)) if area is None else area, np.float32)
    if FRAME_MASK_INPUT in names:
        feeds[FRAME_MASK_INPUT] = np.ascontiguousarray(
            np.ones((features.shape[0], features.shape[-1])) if frame_mask is None else frame_mask, np.float32)
    names_out = [o.name for o in session.get_outputs() if o.name in (*OUTPUT_NAMES, ELLIPSE_OUTPUT)]
    ort_out = dict(zip(names_out, session.run(names_out, feeds)))
    with torch.no_grad():
        torch_out = dict(zip(names_out, (t.numpy() for t in model.eval()(*(torch.from_numpy(feeds[n]) for n in feeds)))))
    pos_ort, cov_ort = ort_out["position_enu_km"], ort_out["covariance_km2"]
    pos_t, cov_t = torch_out["position_enu_km"], torch_out["covariance_km2"]
    diff = {
        "position_max_abs_diff_km": float(np.max(np.abs(pos_ort - pos_t))),
        "covariance_max_abs_diff_km2": float(np.max(np.abs(cov_ort - cov_t))),
        "covariance_max_rel_diff": float(np.max(np.abs(cov_ort - cov_t) / (np.abs(cov_t) + 1e-6))),
        "n": int(features.shape[0]),
    }
    if ELLIPSE_OUTPUT in ort_out:
        diff["ellipse_scale_max_abs_diff"] = float(np.max(np.abs(ort_out[ELLIPSE_OUTPUT] - torch_out[ELLIPSE_OUTPUT])))
    return diff
