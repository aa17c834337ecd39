"""The ONNX model contract as code: the tensors a model takes and gives, and its metadata (ModelMetadata);
docs/model-contract.md describes it for people.

A model has three float32 inputs and two float32 outputs (B batch, R receiver slots, M mel bands, T frames):

=================== ============== ================================================================
name                shape          meaning
=================== ============== ================================================================
``features``        [B, R, M, T]   normalised mel frames: ``(dBm - offset_db) / scale_db``
``rx_enu_km``       [B, R, 3]      east, north, up of each receiver from the network origin (km)
``rx_mask``         [B, R]         1 = receiver present, 0 = slot unused (its features are 0)
``position_enu_km`` [B, 2]         estimated transmitter east, north (km)
``covariance_km2``  [B, 2, 2]      full 2-D covariance of that estimate (km^2), symmetric PD
=================== ============== ================================================================

Three inputs are optional; a model that declares one is fed it, a model without it is fed nothing more:

- ``site_propagation`` [B, 5] float32, the site's propagation as the physics estimator is configured with it
  (``site_propagation`` below: path-loss exponent, sigma in dB, mean and spread of the level EIRP - 1 km loss
  in dBm, and a flag, 1 = known), fed from ``estimator.physics``;
- ``search_area_enu_km`` [B, 5] float32, the search area the physics estimator puts its uniform prior on
  (``search_area_row`` below: east min, east max, north min, north max in km, in ``rx_enu_km``'s frame, and a
  flag, 1 = known), fed from the receivers' bounding box and ``network.area_margin_km``;
- ``frame_mask`` [B, T] float32, 1 for each frame that carried the transmission and 0 for the others, by the
  daemon's detection rule (``streamer.dsp.detection.DetectionRule.frame_activity``), so that a model measures a
  transmitter keyed for part of a window over its on-air frames. A model without this input is fed each window's
  active frames repeated in order to fill T instead (``streamer.estimators.onnx.fill_with_active_frames``).

One output is optional; the daemon reads it from a model that declares it:

- ``ellipse_scale`` [B, 2] float32, the credible ellipses' size: the Mahalanobis radii (standard deviations of
  ``covariance_km2``) of the ellipses about ``position_enu_km``, with the covariance's shape, that hold 68 % and
  95 % of the model's posterior (``ELLIPSE_PROBABILITIES``, ``streamer.estimators.credible``). Without it the daemon takes
  a Gaussian's, sqrt(-2 ln(1 - p)) (1.515 and 2.448).

Dimensions may be static or symbolic; a static R, M or T must equal the metadata's ``max_receivers``,
``features.n_mels`` and ``features.n_frames``. Other extra outputs are allowed (the daemon does not ask for
them); other extra inputs are not (nothing would feed them).

The model's ``metadata_props`` carry one key, ``heimdall``, whose value is the JSON of :class:`ModelMetadata`.

Examples
--------
>>> from streamer.dsp.features import FeatureSpec
>>> meta = ModelMetadata(name="demo", version="1", features=FeatureSpec(), normalisation=Normalisation(-100.0, 20.0),
...                      max_receivers=8, freq_range_hz=(144e6, 148e6), training_data="simulated")
>>> ModelMetadata.from_json(meta.to_json()) == meta
True
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from streamer.core.errors import ModelMismatchError
from streamer.dsp.detection import DetectionRule
from streamer.dsp.features import FeatureSpec
from streamer.estimators.credible import ELLIPSE_PROBABILITIES

METADATA_KEY = "heimdall"
COORDINATES = "enu_km"


@dataclass(frozen=True)
class TensorContract:
    """One named float32 tensor of the contract; ``dims`` names each axis (a metadata-bound name or a number)."""

    name: str
    dims: tuple[str | int, ...]

    @property
    def rank(self) -> int:
        return len(self.dims)


INPUTS = (
    TensorContract("features", ("B", "R", "M", "T")),
    TensorContract("rx_enu_km", ("B", "R", 3)),
    TensorContract("rx_mask", ("B", "R")),
)
OUTPUTS = (
    TensorContract("position_enu_km", ("B", 2)),
    TensorContract("covariance_km2", ("B", 2, 2)),
)
SITE_INPUT = "site_propagation"
SITE_PROPAGATION_WIDTH = 5
AREA_INPUT = "search_area_enu_km"
SEARCH_AREA_WIDTH = 5
FRAME_MASK_INPUT = "frame_mask"
OPTIONAL_INPUTS = (TensorContract(SITE_INPUT, ("B", SITE_PROPAGATION_WIDTH)), TensorContract(AREA_INPUT, ("B", SEARCH_AREA_WIDTH)),
                   TensorContract(FRAME_MASK_INPUT, ("B", "T")))
#: The optional output: ellipse radii [B, P] for the probabilities ``streamer.estimators.credible.ELLIPSE_PROBABILITIES``.
ELLIPSE_OUTPUT = "ellipse_scale"
OPTIONAL_OUTPUTS = (TensorContract(ELLIPSE_OUTPUT, ("B", len(ELLIPSE_PROBABILITIES))),)
INPUT_NAMES = tuple(t.name for t in INPUTS)
OPTIONAL_INPUT_NAMES = tuple(t.name for t in OPTIONAL_INPUTS)
OUTPUT_NAMES = tuple(t.name for t in OUTPUTS)


def site_propagation(physics, calibration_sigma_db: float | None = None) -> np.ndarray:
    """The ``site_propagation`` row [5] (float32) of a ``config.PhysicsConfig``, as the physics estimator reads it.

    [path-loss exponent, sigma (dB) = hypot(shadowing_db, calibration sigma), mean level (dBm), level spread
    (dB), 1]; level = transmit power (dBm) - ``ref_loss_db``, its mean and standard deviation those of a power
    uniform over [tx_power_min_dbm, tx_power_max_dbm]. ``calibration_sigma_db``: the calibration sigma now (dB;
    ``physics.calibration_sigma_db`` widened for the calibrations' age, one value for the receivers: the model
    takes one sigma); ``None`` = ``physics.calibration_sigma_db``. ``physics=None`` gives the unknown row (zeros).
    """
    if physics is None:
        return np.zeros(SITE_PROPAGATION_WIDTH, np.float32)
    calibration = physics.calibration_sigma_db if calibration_sigma_db is None else calibration_sigma_db
    if not (math.isfinite(calibration) and calibration >= 0):
        raise ValueError(f"calibration_sigma_db: expected a finite sigma >= 0 (dB), got {calibration!r}")
    span = physics.tx_power_max_dbm - physics.tx_power_min_dbm
    return np.array([physics.path_loss_exponent, math.hypot(physics.shadowing_db, calibration),
                     0.5 * (physics.tx_power_min_dbm + physics.tx_power_max_dbm) - physics.ref_loss_db,
                     span / math.sqrt(12.0), 1.0], np.float32)


def search_area_row(area) -> np.ndarray:
    """The ``search_area_enu_km`` row [5] (float32) of a ``geodesy.SearchArea`` (metres, the network's ENU frame):
    [east min, east max, north min, north max (km), 1]. ``None`` gives the unknown row (zeros)."""
    if area is None:
        return np.zeros(SEARCH_AREA_WIDTH, np.float32)
    return np.array([area.east_min_m / 1e3, area.east_max_m / 1e3, area.north_min_m / 1e3, area.north_max_m / 1e3, 1.0],
                    np.float32)


def network_search_area_row(config) -> np.ndarray:
    """``search_area_row`` of a ``Config``'s search area (``geodesy.network_geometry``: the configured receivers'
    bounding box grown by ``network.area_margin_km``), the area the physics estimator puts its prior on."""
    from streamer.core.geodesy import network_geometry

    return search_area_row(network_geometry(config)[2])


@dataclass(frozen=True)
class Normalisation:
    """Affine map from dBm to model input: ``(dBm - offset_db) / scale_db`` (see ``features.normalise``)."""

    offset_db: float
    scale_db: float


@dataclass(frozen=True)
class ModelMetadata:
    """What a model carries about itself in ``metadata_props["heimdall"]`` (JSON).

    ``features`` is serialised as ``FeatureSpec.as_dict()``; a plain dict (or ``normalisation`` as a dict,
    ``freq_range_hz`` as a list) is accepted and converted. ``extent_scaling`` optionally describes how the graph
    rescales ENU kilometres internally (for people; the inputs and outputs stay in km). ``detection`` (optional,
    a ``DetectionRule`` or its ``as_dict()``) is the detection rule the model was trained with: which receivers
    hear and which frames are active; a daemon whose rule differs refuses the model.
    """

    name: str
    version: str
    features: FeatureSpec
    normalisation: Normalisation
    max_receivers: int
    freq_range_hz: tuple[float, float]
    training_data: str
    accuracy: dict = field(default_factory=dict, hash=False)
    calibration: dict = field(default_factory=dict, hash=False)
    coordinates: str = COORDINATES
    extent_scaling: str | None = None
    detection: DetectionRule | None = None

    def __post_init__(self) -> None:
        if isinstance(self.features, dict):
            problems: list[str] = []
            spec = _spec_from_dict(self.features, problems)
            if spec is None:
                raise ValueError("; ".join(problems))
            object.__setattr__(self, "features", spec)
        if isinstance(self.normalisation, dict):
            object.__setattr__(self, "normalisation", Normalisation(**self.normalisation))
        object.__setattr__(self, "freq_range_hz", tuple(self.freq_range_hz))
        if isinstance(self.detection, dict):
            problems = []
            rule = _detection_from_dict(self.detection, problems)
            if rule is None:
                raise ValueError("; ".join(problems))
            object.__setattr__(self, "detection", rule)

    def to_json(self) -> str:
        """Serialise as the ``heimdall`` metadata value."""
        data = dataclasses.asdict(self)
        data["features"] = self.features.as_dict()
        data["freq_range_hz"] = list(self.freq_range_hz)
        if self.extent_scaling is None:
            del data["extent_scaling"]
        if self.detection is None:
            del data["detection"]
        else:
            data["detection"] = self.detection.as_dict()
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        """Parse and validate; raises ModelMismatchError listing every problem found."""
        problems: list[str] = []
        meta = _parse_metadata(text, problems)
        if problems:
            raise ModelMismatchError("metadata 'heimdall': " + "; ".join(problems))
        return meta


OPTIONAL_KEYS = ("extent_scaling", "detection")
REQUIRED_KEYS = tuple(f.name for f in dataclasses.fields(ModelMetadata) if f.name not in OPTIONAL_KEYS)


def _parse_metadata(text: str, problems: list[str]) -> ModelMetadata | None:
    """Validate the JSON text; append one line per problem and return None if any."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        problems.append(f"not valid JSON ({exc})")
        return None
    if not isinstance(data, dict):
        problems.append(f"expected a JSON object, got {type(data).__name__}")
        return None
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    expect = _Expect(data, problems)
    expect.typed("name", str)
    expect.typed("version", str)
    expect.typed("training_data", str)
    expect.typed("accuracy", dict)
    expect.typed("calibration", dict)
    expect.typed("max_receivers", int, check=lambda v: v >= 1, wanted=">= 1")
    expect.typed("coordinates", str, check=lambda v: v == COORDINATES, wanted=f"{COORDINATES!r}")
    if "extent_scaling" in data:
        expect.typed("extent_scaling", str)
    expect.typed("freq_range_hz", list, check=_is_freq_range, wanted="[lo, hi] with 0 <= lo < hi")
    spec = _spec_from_dict(data["features"], problems) if expect.typed("features", dict) else None
    norm = _normalisation_from_dict(data["normalisation"], problems) if expect.typed("normalisation", dict) else None
    detection = _detection_from_dict(data["detection"], problems) if expect.typed("detection", dict) else None
    if problems:
        return None
    return ModelMetadata(
        name=data["name"], version=data["version"], features=spec, normalisation=norm,
        max_receivers=data["max_receivers"], freq_range_hz=tuple(float(f) for f in data["freq_range_hz"]),
        training_data=data["training_data"], accuracy=data["accuracy"], calibration=data["calibration"],
        coordinates=data["coordinates"], extent_scaling=data.get("extent_scaling"), detection=detection,
    )


#: Where each setting of the detection rule comes from in the daemon's config.
DETECTION_CONFIG_KEYS = {"channel_bandwidth_hz": "network.channel_bandwidth_hz", "snr_db": "pipeline.detection_snr_db",
                         "noise_band_fraction": "the daemon's noise band, streamer.dsp.detection.NOISE_BAND_FRACTION"}


def _detection_from_dict(data: dict, problems: list[str]) -> DetectionRule | None:
    """``DetectionRule.as_dict()`` -> DetectionRule; one problem line per missing or bad setting."""
    before = len(problems)
    expect = _Expect(data, problems, prefix="detection.")
    wanted = {"channel_bandwidth_hz": (lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
              "snr_db": (math.isfinite, "a finite number"),
              "noise_band_fraction": (lambda v: 0 < v <= 0.5, "a number in (0, 0.5]")}
    for key, (check, text) in wanted.items():
        if key not in data:
            problems.append(f"detection.{key}: required key is missing")
        expect.typed(key, float, check=check, wanted=text)
    if len(problems) > before:
        return None
    return DetectionRule(channel_bandwidth_hz=float(data["channel_bandwidth_hz"]), snr_db=float(data["snr_db"]),
                         noise_band_fraction=float(data["noise_band_fraction"]))


def detection_differences(model_rule: DetectionRule, config_rule: DetectionRule) -> list[str]:
    """One line per setting in which the daemon's detection rule differs from the model's, naming the config key:
    ``detection.snr_db: model 6, config 8 (pipeline.detection_snr_db)``."""
    got, want = model_rule.as_dict(), config_rule.as_dict()
    return [f"detection.{k}: model {got[k]:g}, config {want[k]:g} ({DETECTION_CONFIG_KEYS[k]})" for k in want if got[k] != want[k]]


class _Expect:
    """Type checks on a JSON object that record problems instead of raising."""

    def __init__(self, data: dict, problems: list[str], prefix: str = "") -> None:
        self.data, self.problems, self.prefix = data, problems, prefix

    def typed(self, key: str, kind: type, check=None, wanted: str = "") -> bool:
        if key not in self.data:
            return False
        value = self.data[key]
        accepted = (int, float) if kind is float else kind  # JSON writes 24000.0 as 24000 too
        if isinstance(value, bool) or not isinstance(value, accepted):
            self.problems.append(f"{self.prefix}{key}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
            return False
        if check is not None and not check(value):
            self.problems.append(f"{self.prefix}{key}: expected {wanted}, got {value!r}")
            return False
        return True


def _is_freq_range(value: list) -> bool:
    if len(value) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return False
    return 0 <= value[0] < value[1]


def _normalisation_from_dict(data: dict, problems: list[str]) -> Normalisation | None:
    before = len(problems)
    expect = _Expect(data, problems, "normalisation.")
    for key in ("offset_db", "scale_db"):
        if key not in data:
            problems.append(f"normalisation.{key}: required key is missing")
    expect.typed("offset_db", float, check=math.isfinite, wanted="a finite number")
    expect.typed("scale_db", float, check=lambda v: math.isfinite(v) and v > 0, wanted="a finite number > 0")
    if len(problems) > before:
        return None
    return Normalisation(float(data["offset_db"]), float(data["scale_db"]))


_SPEC_TYPES = {"sample_rate_hz": float, "n_fft": int, "hop": int, "n_mels": int, "window_s": float,
               "n_frames": int, "window": str, "mel_scale": str, "eps": float}


def _spec_from_dict(data: dict, problems: list[str]) -> FeatureSpec | None:
    """``FeatureSpec.as_dict()`` -> FeatureSpec; ``n_frames`` is derived, so it must agree with the rest."""
    before = len(problems)
    expect = _Expect(data, problems, "features.")
    for key, kind in _SPEC_TYPES.items():
        if key not in data:
            problems.append(f"features.{key}: required key is missing")
        else:
            expect.typed(key, kind)
    if len(problems) > before:
        return None
    try:
        spec = FeatureSpec(**{k: data[k] for k in _SPEC_TYPES if k != "n_frames"})
    except ValueError as exc:
        problems.append(str(exc))
        return None
    if spec.n_frames != data["n_frames"]:
        problems.append(f"features.n_frames: {data['n_frames']} disagrees with the other keys, which give {spec.n_frames}")
        return None
    return spec


def write_metadata(model: onnx.ModelProto, meta: ModelMetadata) -> None:
    """Set (or replace) ``metadata_props["heimdall"]`` of ``model`` in place."""
    props = {p.key: p.value for p in model.metadata_props}
    props[METADATA_KEY] = meta.to_json()
    onnx.helper.set_model_props(model, props)


def read_metadata(model: Any) -> ModelMetadata:
    """The metadata of an ``onnx.ModelProto`` or an ``onnxruntime.InferenceSession``; ModelMismatchError if absent/bad."""
    text = _raw_metadata(model)
    if text is None:
        raise ModelMismatchError("metadata 'heimdall': missing from metadata_props")
    return ModelMetadata.from_json(text)


def _raw_metadata(model: Any) -> str | None:
    if hasattr(model, "get_modelmeta"):
        return model.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    return {p.key: p.value for p in model.metadata_props}.get(METADATA_KEY)


def check_model(path: str | Path, expected_spec: FeatureSpec | None = None,
                expected_detection: DetectionRule | None = None) -> ModelMetadata:
    """Verify that the ONNX file at ``path`` follows the contract; return its metadata.

    Every mismatch is collected and reported in one ModelMismatchError. With ``expected_spec`` the model's feature
    spec must equal it field by field ("features.n_mels: model 32, config 40"); with None the caller adopts
    ``metadata.features``. With ``expected_detection``, a model that records its detection rule must have been
    trained with this one; a model that declares ``frame_mask`` must record its rule.
    """
    model = _load(Path(path))
    problems: list[str] = []
    raw = _raw_metadata(model)
    meta = None
    if raw is None:
        problems.append("metadata 'heimdall': missing from metadata_props")
    else:
        meta_problems: list[str] = []
        meta = _parse_metadata(raw, meta_problems)
        problems += [f"metadata 'heimdall': {p}" for p in meta_problems]
    problems += _check_graph(model.graph, meta)
    if meta is not None and expected_spec is not None:
        problems += spec_differences(meta.features, expected_spec)
    if meta is not None and expected_detection is not None and meta.detection is not None:
        problems += detection_differences(meta.detection, expected_detection)
    if meta is not None and meta.detection is None and FRAME_MASK_INPUT in {v.name for v in model.graph.input}:
        problems.append(f"input {FRAME_MASK_INPUT!r}: the metadata must record the detection rule that made the masks "
                        "('detection')")
    if problems:
        raise ModelMismatchError(f"model {path} breaks the model contract:\n  - " + "\n  - ".join(problems))
    return meta


def spec_differences(model_spec: FeatureSpec, config_spec: FeatureSpec) -> list[str]:
    """One line per differing feature parameter, e.g. ``features.n_mels: model 32, config 40``."""
    got, want = model_spec.as_dict(), config_spec.as_dict()
    return [f"features.{k}: model {got[k]!r}, config {want[k]!r}" for k in want if got[k] != want[k]]


def _load(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise ModelMismatchError(f"model file {path} missing")
    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(str(path))
    except Exception as exc:  # protobuf DecodeError, ValidationError, OSError for a missing external file ...
        raise ModelMismatchError(f"model file {path} is not a valid ONNX model: {exc}") from exc
    return model


def _check_graph(graph: onnx.GraphProto, meta: ModelMetadata | None) -> list[str]:
    initializers = {t.name for t in graph.initializer}
    inputs = {v.name: v for v in graph.input if v.name not in initializers}
    outputs = {v.name: v for v in graph.output}
    problems = [f"input {n!r}: not in the contract (expected {', '.join(INPUT_NAMES)}, optionally "
                f"{', '.join(OPTIONAL_INPUT_NAMES)})" for n in inputs if n not in INPUT_NAMES + OPTIONAL_INPUT_NAMES]
    sizes = {"B": None}
    if meta is not None:
        sizes.update(R=meta.max_receivers, M=meta.features.n_mels, T=meta.features.n_frames)
    for kind, declared, contract in (("input", inputs, INPUTS), ("output", outputs, OUTPUTS)):
        for tensor in contract:
            if tensor.name not in declared:
                problems.append(f"{kind} {tensor.name!r}: missing (got {', '.join(declared) or 'none'})")
            else:
                problems += _check_tensor(kind, declared[tensor.name], tensor, sizes)
    for kind, declared, optional in (("input", inputs, OPTIONAL_INPUTS), ("output", outputs, OPTIONAL_OUTPUTS)):
        for tensor in optional:
            if tensor.name in declared:
                problems += _check_tensor(kind, declared[tensor.name], tensor, sizes)
    return problems


def _check_tensor(kind: str, value: onnx.ValueInfoProto, contract: TensorContract, sizes: dict) -> list[str]:
    where = f"{kind} {contract.name!r}"
    if not value.type.HasField("tensor_type"):
        return [f"{where}: expected a float32 tensor, got {value.type.WhichOneof('value')}"]
    tensor_type = value.type.tensor_type
    problems = []
    if tensor_type.elem_type != onnx.TensorProto.FLOAT:
        got = onnx.TensorProto.DataType.Name(tensor_type.elem_type).lower()
        problems.append(f"{where}: element type expected float32, got {got}")
    if not tensor_type.HasField("shape"):
        return problems + [f"{where}: no shape declared (expected rank {contract.rank})"]
    dims = tensor_type.shape.dim
    if len(dims) != contract.rank:
        return problems + [f"{where}: rank expected {contract.rank} {list(contract.dims)}, got {len(dims)}"]
    for axis, (dim, name) in enumerate(zip(dims, contract.dims)):
        want = name if isinstance(name, int) else sizes.get(name)
        if dim.HasField("dim_value") and want is not None and dim.dim_value != want:
            label = name if isinstance(name, str) else f"axis {axis}"
            source = {"R": "max_receivers", "M": "features.n_mels", "T": "features.n_frames"}.get(name, "contract")
            problems.append(f"{where}: dim {axis} ({label}) expected {want} ({source}), got {dim.dim_value}")
    return problems
