"""The model contract: metadata round trip, and every broken model refused with a message naming the difference."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from streamer.core.errors import ModelMismatchError
from streamer.dsp.features import FeatureSpec
from streamer.estimators.contract import ModelMetadata, Normalisation, check_model, read_metadata, write_metadata
from tests.helpers.onnx_models import SMALL_SPEC, known_model, metadata, save


def _meta_json(**changes) -> str:
    data = json.loads(metadata().to_json())
    for key, value in changes.items():
        section, _, sub = key.partition("__")
        if value is None:
            data[section].pop(sub) if sub else data.pop(section)
        elif sub:
            data[section][sub] = value
        else:
            data[section] = value
    return json.dumps(data)


def test_metadata_json_round_trip_keeps_every_field():
    meta = metadata()
    back = ModelMetadata.from_json(meta.to_json())
    assert back == meta
    assert back.features == SMALL_SPEC
    assert json.loads(meta.to_json())["features"] == SMALL_SPEC.as_dict()


def test_metadata_accepts_plain_dicts_like_the_json():
    meta = ModelMetadata(name="m", version="2", features=SMALL_SPEC.as_dict(),
                         normalisation={"offset_db": -90.0, "scale_db": 10.0}, max_receivers=3,
                         freq_range_hz=[1e6, 2e6], training_data="x")
    assert meta.features == SMALL_SPEC
    assert meta.normalisation == Normalisation(-90.0, 10.0)
    assert meta.freq_range_hz == (1e6, 2e6)
    assert "extent_scaling" not in json.loads(meta.to_json())


def test_metadata_json_with_integer_floats_parses():
    text = _meta_json(features__sample_rate_hz=8000, normalisation__scale_db=20)
    assert ModelMetadata.from_json(text).features.sample_rate_hz == 8000.0


@pytest.mark.parametrize(
    "text, expected",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        (_meta_json(normalisation=None, training_data=None), "missing keys: normalisation, training_data"),
        (_meta_json(features__n_frames=99), "features.n_frames: 99 disagrees with the other keys, which give 3"),
        (_meta_json(features__hop=None), "features.hop: required key is missing"),
        (_meta_json(features__window="hamming"), "features.window: only 'hann' is supported"),
        (_meta_json(normalisation__scale_db=0.0), "normalisation.scale_db: expected a finite number > 0, got 0.0"),
        (_meta_json(max_receivers="4"), "max_receivers: expected int, got str '4'"),
        (_meta_json(max_receivers=True), "max_receivers: expected int, got bool True"),
        (_meta_json(freq_range_hz=[2e6, 1e6]), "freq_range_hz: expected [lo, hi] with 0 <= lo < hi"),
        (_meta_json(coordinates="wgs84"), "coordinates: expected 'enu_km', got 'wgs84'"),
        (_meta_json(accuracy="good"), "accuracy: expected dict, got str"),
    ],
)
def test_bad_metadata_names_the_problem(text, expected):
    with pytest.raises(ModelMismatchError, match="metadata 'heimdall'") as info:
        ModelMetadata.from_json(text)
    assert expected in str(info.value)


def test_bad_metadata_reports_every_problem_at_once():
    with pytest.raises(ModelMismatchError) as info:
        ModelMetadata.from_json(_meta_json(name=3, normalisation__offset_db="x", coordinates="lla"))
    message = str(info.value)
    assert "name: expected str" in message
    assert "normalisation.offset_db: expected float" in message
    assert "coordinates: expected 'enu_km'" in message


def test_write_metadata_replaces_and_keeps_other_props():
    model = known_model(meta=None)
    onnx.helper.set_model_props(model, {"author": "me"})
    write_metadata(model, metadata(max_receivers=4))
    write_metadata(model, metadata(max_receivers=4, offset_db=-60.0))
    keys = [p.key for p in model.metadata_props]
    assert sorted(keys) == ["author", "heimdall"]
    assert read_metadata(model).normalisation.offset_db == -60.0


def test_read_metadata_from_an_onnxruntime_session():
    model = known_model()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert read_metadata(session) == metadata()


def test_read_metadata_missing_raises():
    with pytest.raises(ModelMismatchError, match="missing from metadata_props"):
        read_metadata(known_model(meta=None))


def test_check_model_accepts_a_contract_model(tmp_path):
    path = save(known_model(), tmp_path)
    assert check_model(path) == metadata()
    assert check_model(path, expected_spec=SMALL_SPEC) == metadata()


def test_check_model_accepts_symbolic_dims(tmp_path):
    dims = {"features": ["batch", "rx", "mels", "frames"], "rx_enu_km": ["batch", "rx", 3], "rx_mask": ["batch", "rx"]}
    assert check_model(save(known_model(dims=dims), tmp_path)).max_receivers == 4


def test_check_model_reports_each_feature_difference_against_the_config(tmp_path):
    path = save(known_model(), tmp_path)
    config_spec = dataclasses.replace(SMALL_SPEC, n_mels=8, hop=4)
    with pytest.raises(ModelMismatchError) as info:
        check_model(path, expected_spec=config_spec)
    message = str(info.value)
    assert "features.n_mels: model 4, config 8" in message
    assert "features.hop: model 8, config 4" in message
    assert "features.n_frames: model 3, config 5" in message
    assert "features.n_fft" not in message


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelMismatchError, match=r"model file .*nothing\.onnx missing"):
        check_model(tmp_path / "nothing.onnx")


def test_random_bytes_are_not_an_onnx_model(tmp_path):
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(7).bytes(4096))
    with pytest.raises(ModelMismatchError, match="is not a valid ONNX model"):
        check_model(path)


def test_truncated_model_is_not_an_onnx_model(tmp_path):
    path = tmp_path / "cut.onnx"
    path.write_bytes(known_model().SerializeToString()[:100])
    with pytest.raises(ModelMismatchError, match="is not a valid ONNX model"):
        check_model(path)


D = onnx.TensorProto.DOUBLE


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"rename": {"features": "feats"}},
         ["input 'feats': not in the contract", "input 'features': missing (got feats, rx_enu_km, rx_mask)"]),
        ({"rename": {"covariance_km2": "cov"}}, ["output 'covariance_km2': missing"]),
        ({"elem_type": {"features": D}}, ["input 'features': element type expected float32, got double"]),
        ({"elem_type": {"position_enu_km": D}}, ["output 'position_enu_km': element type expected float32, got double"]),
        ({"dims": {"features": ["B", 4, 40, 3]}}, ["input 'features': dim 2 (M) expected 4 (features.n_mels), got 40"]),
        ({"dims": {"features": ["B", 4, 4, 7]}}, ["input 'features': dim 3 (T) expected 3 (features.n_frames), got 7"]),
        ({"dims": {"rx_mask": ["B", 5]}}, ["input 'rx_mask': dim 1 (R) expected 4 (max_receivers), got 5"]),
        ({"dims": {"rx_enu_km": ["B", 4, 2]}}, ["input 'rx_enu_km': dim 2 (axis 2) expected 3 (contract), got 2"]),
        ({"dims": {"features": ["B", 4, 12]}}, ["input 'features': rank expected 4 ['B', 'R', 'M', 'T'], got 3"]),
        ({"dims": {"covariance_km2": ["B", 4]}}, ["output 'covariance_km2': rank expected 3"]),
        ({"site": True, "dims": {"site_propagation": ["B", 4]}},
         ["input 'site_propagation': dim 1 (axis 1) expected 5 (contract), got 4"]),
        ({"site": True, "elem_type": {"site_propagation": D}},
         ["input 'site_propagation': element type expected float32, got double"]),
        ({"site": True, "area": True, "dims": {"search_area_enu_km": ["B", 4]}},
         ["input 'search_area_enu_km': dim 1 (axis 1) expected 5 (contract), got 4"]),
        ({"meta": None}, ["metadata 'heimdall': missing from metadata_props"]),
        ({"meta": "{not json"}, ["metadata 'heimdall': not valid JSON"]),
        ({"meta": _meta_json(normalisation=None)}, ["metadata 'heimdall': missing keys: normalisation"]),
        ({"meta": _meta_json(max_receivers=0)}, ["metadata 'heimdall': max_receivers: expected >= 1, got 0"]),
    ],
)
def test_broken_models_are_refused_with_the_difference(tmp_path, kwargs, expected):
    path = save(known_model(**kwargs), tmp_path)
    with pytest.raises(ModelMismatchError, match="breaks the model contract") as info:
        check_model(path)
    for line in expected:
        assert line in str(info.value)


def test_the_optional_site_input_is_accepted(tmp_path):
    assert check_model(save(known_model(site=True), tmp_path)) == metadata()


def test_the_optional_search_area_input_is_accepted(tmp_path):
    assert check_model(save(known_model(site=True, area=True), tmp_path)) == metadata()


def test_the_optional_ellipse_output_is_accepted_and_its_shape_checked(tmp_path):
    assert check_model(save(known_model(ellipse=True), tmp_path)) == metadata()
    with pytest.raises(ModelMismatchError, match=r"output 'ellipse_scale': dim 1 \(axis 1\) expected 2 \(contract\), got 3"):
        check_model(save(known_model(ellipse=True, dims={"ellipse_scale": ["B", 3]}), tmp_path, "wide.onnx"))


def test_metadata_disagreeing_with_static_dims_is_refused(tmp_path):
    model = known_model(meta=metadata(max_receivers=6))
    with pytest.raises(ModelMismatchError) as info:
        check_model(save(model, tmp_path))
    assert "input 'features': dim 1 (R) expected 6 (max_receivers), got 4" in str(info.value)
    assert "input 'rx_mask': dim 1 (R) expected 6 (max_receivers), got 4" in str(info.value)


def test_every_mismatch_is_in_one_message(tmp_path):
    model = known_model(rename={"rx_mask": "mask"}, dims={"features": ["B", 4, 40, 3]})
    with pytest.raises(ModelMismatchError) as info:
        check_model(save(model, tmp_path), expected_spec=FeatureSpec(sample_rate_hz=8_000.0, n_fft=16, hop=8,
                                                                      n_mels=6, window_s=0.004))
    message = str(info.value)
    assert "input 'mask': not in the contract" in message
    assert "input 'rx_mask': missing" in message
    assert "dim 2 (M) expected 4 (features.n_mels), got 40" in message
    assert "features.n_mels: model 4, config 6" in message
