"""Small ONNX models that follow (or deliberately break) the model contract, built with onnx.helper.

The "known" model's outputs are exact functions of its inputs, so a test can tell what the daemon fed it.
With ``f`` the ``features`` input [B, R, M, T], ``e`` = ``rx_enu_km`` [B, R, 3], ``m`` = ``rx_mask`` [B, R]:

- ``n = sum_r m``; ``f0 = mean over M, T of f[:, 0]`` (the first receiver slot's normalised features)
- ``position_enu_km = sum_r m * e[..., :2] / n + coef * f0``                (coef is a 2-vector)
- ``covariance_km2 = [[1 + n, c], [c, 2 + mean over R, M, T of f**2]]`` with ``c = 0.5 * tanh(f0)``

With ``site=True`` the model also declares the contract's optional ``site_propagation`` input ``s`` [B, 5] and adds
``SITE_SHIFT * s[:, :2]`` to the position, so a test can read back the row it was fed.

With ``ellipse=True`` it also declares the optional output ``ellipse_scale`` [B, 2] = ``ELLIPSE_BASE + 0.1 n``
(``known_ellipse_scale``); ``ellipse_base`` replaces ``ELLIPSE_BASE`` (a negative entry breaks it).

The covariance is symmetric positive definite for every input (|c| < 0.5, diagonal >= 1 and >= 2), except in the
``covariance="not_pd"`` variant, whose upper-left element is ``-(1 + n)``. :func:`known_outputs` is the numpy twin.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from streamer.dsp.features import FeatureSpec
from streamer.estimators.contract import ModelMetadata, Normalisation, write_metadata

OPSET = 17
IR_VERSION = 9  # onnxruntime >= 1.15 reads it; onnx's own default may be newer than the installed runtime

# 8 kHz, 16-point FFT, hop 8, 4 ms window -> M = 4 bands, T = 3 frames: tiny and fast.
SMALL_SPEC = FeatureSpec(sample_rate_hz=8_000.0, n_fft=16, hop=8, n_mels=4, window_s=0.004)
OFFSET_DB = -100.0
SCALE_DB = 20.0
COEF = (0.5, -0.25)
ELLIPSE_BASE = (1.3, 2.3)
SITE_SHIFT = 0.01  # km of position per unit of the site row's first two entries (site=True)
AREA_SHIFT = 0.01  # km of position per km of the area's east min / east max (``known_model(area=True)``)


def metadata(spec: FeatureSpec = SMALL_SPEC, *, max_receivers: int = 4, offset_db: float = OFFSET_DB,
             scale_db: float = SCALE_DB) -> ModelMetadata:
    """Valid metadata for a test model."""
    return ModelMetadata(
        name="known-function", version="0.0.1", features=spec, normalisation=Normalisation(offset_db, scale_db),
        max_receivers=max_receivers, freq_range_hz=(144e6, 148e6), training_data="none: a test model",
        accuracy={"median_error_km": 0.0}, calibration={"coverage_95": 0.95},
        extent_scaling="none: km in, km out",
    )


def _const(name: str, values, dtype=np.float32) -> onnx.NodeProto:
    array = np.asarray(values, dtype=dtype)
    return helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(array, name))


def _known_nodes(coef, covariance: str) -> list[onnx.NodeProto]:
    n = helper.make_node
    return [
        _const("ax1", [1], np.int64), _const("ax2", [2], np.int64), _const("zero", [0], np.int64),
        _const("two", [2], np.int64), _const("idx0", 0, np.int64), _const("ax1_shape", [-1, 1], np.int64),
        _const("one_f", 1.0), _const("two_f", 2.0), _const("half_f", 0.5), _const("coef", coef),
        n("Unsqueeze", ["rx_mask", "ax2"], ["mask3"]),
        n("Slice", ["rx_enu_km", "zero", "two", "ax2"], ["en"]),
        n("Mul", ["en", "mask3"], ["en_masked"]),
        n("ReduceSum", ["en_masked", "ax1"], ["en_sum"], keepdims=0),
        n("ReduceSum", ["rx_mask", "ax1"], ["count"], keepdims=1),
        n("Div", ["en_sum", "count"], ["en_mean"]),
        n("Gather", ["features", "idx0"], ["f0_frames"], axis=1),
        n("ReduceMean", ["f0_frames"], ["f0"], axes=[1, 2], keepdims=0),
        n("Unsqueeze", ["f0", "ax1"], ["f0_col"]),
        n("Mul", ["f0_col", "coef"], ["offset"]),
        n("Add", ["en_mean", "offset"], ["position_enu_km"]),
        n("Add", ["count", "one_f"], ["s1_pos"]),
        n("Neg", ["s1_pos"], ["s1"]) if covariance == "not_pd" else n("Identity", ["s1_pos"], ["s1"]),
        n("Mul", ["features", "features"], ["f_sq"]),
        n("ReduceMean", ["f_sq"], ["f_sq_mean"], axes=[1, 2, 3], keepdims=1),
        n("Reshape", ["f_sq_mean", "ax1_shape"], ["f_sq_col"]),
        n("Add", ["f_sq_col", "two_f"], ["s2"]),
        n("Tanh", ["f0_col"], ["tanh_f0"]),
        n("Mul", ["tanh_f0", "half_f"], ["c"]),
        n("Concat", ["s1", "c"], ["row1"], axis=1),
        n("Concat", ["c", "s2"], ["row2"], axis=1),
        n("Unsqueeze", ["row1", "ax1"], ["row1_3"]),
        n("Unsqueeze", ["row2", "ax1"], ["row2_3"]),
        n("Concat", ["row1_3", "row2_3"], ["covariance_km2"], axis=1),
    ]


def _shift_position_by(nodes: list, name: str, tag: str, shift: float) -> list:
    """Nodes that add ``shift`` x the first two columns of input ``name`` to the position (renaming its producer)."""
    position = next(node for node in nodes if node.output[0] == "position_enu_km")
    position.output[0] = f"position_before_{tag}"
    return [_const(f"{tag}_lo", [0], np.int64), _const(f"{tag}_hi", [2], np.int64), _const(f"{tag}_ax", [1], np.int64),
            _const(f"{tag}_shift", shift),
            helper.make_node("Slice", [name, f"{tag}_lo", f"{tag}_hi", f"{tag}_ax"], [f"{tag}_two"]),
            helper.make_node("Mul", [f"{tag}_two", f"{tag}_shift"], [f"{tag}_offset"]),
            helper.make_node("Add", [f"position_before_{tag}", f"{tag}_offset"], ["position_enu_km"])]


def known_model(spec: FeatureSpec = SMALL_SPEC, *, max_receivers: int = 4, coef=COEF, offset_db: float = OFFSET_DB,
                scale_db: float = SCALE_DB, dims: dict | None = None, rename: dict | None = None,
                elem_type: dict | None = None, meta: ModelMetadata | str | None | bool = True,
                covariance: str = "pd", site: bool = False, area: bool = False, ellipse: bool = False,
                ellipse_base=ELLIPSE_BASE) -> onnx.ModelProto:
    """The known-function model, optionally broken.

    dims:      tensor name -> declared shape (list of ints / symbol strings), replacing the contract's
    rename:    contract name -> name declared in the graph (an Identity connects it)
    elem_type: tensor name -> TensorProto element type declared instead of FLOAT
    meta:      True = valid metadata, a ModelMetadata, a raw string (written verbatim), None = no metadata
    covariance: "pd" or "not_pd"
    site:      also take ``site_propagation`` [B, 5] (module doc)
    area:      also take ``search_area_enu_km`` [B, 5]: position += AREA_SHIFT x its first two columns
    ellipse:   also give ``ellipse_scale`` [B, 2] (module doc)
    """
    dims, rename, elem_type = dims or {}, rename or {}, elem_type or {}
    shapes = {
        "features": ["B", max_receivers, spec.n_mels, spec.n_frames], "rx_enu_km": ["B", max_receivers, 3],
        "rx_mask": ["B", max_receivers], "position_enu_km": ["B", 2], "covariance_km2": ["B", 2, 2],
        "site_propagation": ["B", 5], "search_area_enu_km": ["B", 5], "ellipse_scale": ["B", 2],
    }
    shapes.update(dims)
    nodes = _known_nodes(coef, covariance)
    inputs = ["features", "rx_enu_km", "rx_mask"]
    for name, tag, shift in (("site_propagation", "site", SITE_SHIFT), ("search_area_enu_km", "area", AREA_SHIFT)):
        if (site if tag == "site" else area):
            inputs.append(name)
            nodes += _shift_position_by(nodes, name, tag, shift)
    outputs = ["position_enu_km", "covariance_km2"]
    if ellipse:
        outputs.append("ellipse_scale")
        nodes += [_const("ellipse_step", 0.1), _const("ellipse_base", ellipse_base),
                  helper.make_node("Mul", ["count", "ellipse_step"], ["ellipse_grow"]),
                  helper.make_node("Add", ["ellipse_grow", "ellipse_base"], ["ellipse_scale"])]

    def value_info(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(rename.get(name, name), elem_type.get(name, TensorProto.FLOAT), shapes[name])

    for name in ("features", "rx_enu_km", "rx_mask"):
        if name in rename:
            nodes.insert(0, helper.make_node("Identity", [rename[name]], [name]))
    for name in ("position_enu_km", "covariance_km2"):
        if name in rename:
            nodes.append(helper.make_node("Identity", [name], [rename[name]]))
    graph = helper.make_graph(
        nodes, "known_function",
        [value_info(n) for n in inputs],
        [value_info(n) for n in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="heimdall-tests")
    model.ir_version = IR_VERSION
    if meta is True:
        write_metadata(model, metadata(spec, max_receivers=max_receivers, offset_db=offset_db, scale_db=scale_db))
    elif isinstance(meta, ModelMetadata):
        write_metadata(model, meta)
    elif isinstance(meta, str):
        helper.set_model_props(model, {"heimdall": meta})
    return model


def known_outputs(features: np.ndarray, rx_enu_km: np.ndarray, rx_mask: np.ndarray, coef=COEF,
                  covariance: str = "pd", site: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """numpy twin of the known model, for the inputs exactly as the model receives them (float64 results);
    ``site`` [B, 5] or [5]: the row a ``site=True`` model was fed."""
    f = np.asarray(features, np.float64)
    m = np.asarray(rx_mask, np.float64)
    e = np.asarray(rx_enu_km, np.float64)
    count = m.sum(axis=1)
    f0 = f[:, 0].mean(axis=(1, 2))
    position = (e[..., :2] * m[..., None]).sum(axis=1) / count[:, None] + f0[:, None] * np.asarray(coef)
    if site is not None:
        position = position + SITE_SHIFT * np.asarray(site, np.float64)[..., :2]
    s1 = (1.0 + count) * (-1.0 if covariance == "not_pd" else 1.0)
    s2 = 2.0 + (f**2).mean(axis=(1, 2, 3))
    c = 0.5 * np.tanh(f0)
    cov = np.stack([np.stack([s1, c], -1), np.stack([c, s2], -1)], -2)
    return position, cov


def known_ellipse_scale(rx_mask: np.ndarray, ellipse_base=ELLIPSE_BASE) -> np.ndarray:
    """numpy twin of an ``ellipse=True`` model's ``ellipse_scale`` [B, 2]."""
    return np.asarray(ellipse_base, np.float64) + 0.1 * np.asarray(rx_mask, np.float64).sum(axis=1, keepdims=True)


def save(model: onnx.ModelProto, folder: Path, name: str = "model.onnx") -> Path:
    """Write ``model`` to ``folder/name`` and return the path."""
    path = Path(folder) / name
    onnx.save(model, str(path))
    return path
