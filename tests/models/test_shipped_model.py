"""The shipped model file: the contract's names, shapes and metadata, the size limit, and a sane answer."""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnx

from models import MAX_MODEL_BYTES, SHIPPED_VERSION, shipped_model_path
from models.train.commands import add_train_arguments
from streamer.config import load
from streamer.estimators.onnx import OnnxSession
from streamer.dsp.detection import DetectionRule
from streamer.estimators.contract import (
    AREA_INPUT,
    ELLIPSE_OUTPUT,
    FRAME_MASK_INPUT,
    INPUT_NAMES,
    OUTPUT_NAMES,
    SITE_INPUT,
    check_model,
    network_search_area_row,
    site_propagation,
)

PATH = shipped_model_path()


def declared_shapes(values) -> dict[str, list]:
    return {v.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
            for v in values}


def test_the_shipped_model_follows_the_contract_with_the_default_configs_features():
    config = load()
    meta = check_model(PATH, expected_spec=config.features, expected_detection=DetectionRule.from_config(config))
    assert meta.detection == DetectionRule.from_config(config)  # the rule it was trained with is the default config's
    assert PATH.name == f"heimdall-{SHIPPED_VERSION}.onnx" and meta.version == SHIPPED_VERSION
    assert PATH.stat().st_size <= MAX_MODEL_BYTES
    assert meta.max_receivers == 16
    assert meta.freq_range_hz[0] <= config.network.target_freq_hz <= meta.freq_range_hz[1]
    spec = meta.features
    graph = onnx.load(str(PATH)).graph
    inputs, outputs = declared_shapes(graph.input), declared_shapes(graph.output)
    assert list(inputs) == [*INPUT_NAMES, SITE_INPUT, AREA_INPUT, FRAME_MASK_INPUT]
    assert list(outputs) == [*OUTPUT_NAMES, ELLIPSE_OUTPUT]
    batch = inputs["features"][0]
    assert isinstance(batch, str)  # symbolic: any batch size
    assert inputs == {"features": [batch, 16, spec.n_mels, spec.n_frames], "rx_enu_km": [batch, 16, 3],
                      "rx_mask": [batch, 16], SITE_INPUT: [batch, 5], AREA_INPUT: [batch, 5],
                      FRAME_MASK_INPUT: [batch, spec.n_frames]}
    assert outputs == {"position_enu_km": [batch, 2], "covariance_km2": [batch, 2, 2], ELLIPSE_OUTPUT: [batch, 2]}
    # What it measured of itself at training time is carried in the metadata, per dataset.
    for table in (meta.accuracy, meta.calibration):
        assert {"default", "random-0", "random-1", "random-2"} <= set(table)
    assert 0.0 < meta.accuracy["default"]["median_m"] < 100_000.0
    assert 0.5 < meta.calibration["default"]["cov95"] <= 1.0


def test_the_shipped_model_localizes_a_simulated_window_of_the_default_network():
    from models.train.dataset import draw_windows

    config = load()
    data = draw_windows(config, 4, np.random.default_rng(3), config.features, shuffle_slots=False)
    est = OnnxSession(PATH, providers=("CPUExecutionProvider",), expected_spec=config.features)
    assert est.takes_site and est.takes_area and est.takes_frame_mask
    out = est.run(data.features_dbm, data.rx_enu_km, data.rx_mask, site_propagation(config.estimator.physics),
                  network_search_area_row(config), frame_mask=data.active_frames)
    assert out.valid.all()
    error_km = np.linalg.norm(out.position_enu_km - data.tx_enu_km, axis=-1)
    sigma_km = np.sqrt(np.trace(out.covariance_km2, axis1=1, axis2=2))
    # The default network spans ~190 km: answers are inside it, with ellipses of tens of km, not metres.
    assert np.all(error_km < 150.0) and np.all((sigma_km > 1.0) & (sigma_km < 200.0))
    # Its credible ellipses: radii of the order of a Gaussian's (1.515, 2.448), the 95 % one the wider.
    assert est.gives_ellipse_scale
    assert np.all((out.ellipse_scale > 0.8) & (out.ellipse_scale < 4.0)) and np.all(out.ellipse_scale[:, 1] > out.ellipse_scale[:, 0])


def test_the_shipped_model_is_what_heimdall_train_makes_with_its_defaults():
    """The recipe the shipped file records in its metadata is ``heimdall train``'s defaults (channelized windows,
    the channel-power grid head, on-air traffic, the frame mask), so the command with no options trains it again
    (models/MODEL_CARD.md, "Retrain and re-score")."""
    description = check_model(PATH).training_data
    recorded = json.loads(description[description.rindex("; {") + 2:])
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    defaults = vars(parser.parse_args([]))
    for key in ("n_train", "n_val", "batch_size", "lr", "dim", "layers", "drop_prob", "seed", "head", "heard_weight"):
        assert recorded[key] == defaults[key], key
    assert recorded["channel_power"] is defaults["channel_power"] is True
    assert recorded["traffic"] == defaults["traffic"] == "onair"
    assert recorded["frame_mask"] is defaults["frame_mask"] is True
    assert defaults["channelized"] and recorded["render"].startswith("through streamer.channelizer from 2 x")
    assert "windows_per_network" not in recorded and defaults["windows_per_network"] == 64
