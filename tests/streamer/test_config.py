"""Config validation: every mistake is refused before start-up with the file, the key path and what was expected."""

from __future__ import annotations

import pytest

from streamer import config as config_mod
from streamer.core.errors import ConfigError

RX = {"id": "a", "kind": "simulator", "lat": 45.0, "lon": 7.0}


def load_text(tmp_path, text: str):
    path = tmp_path / "site.toml"
    path.write_text(text)
    return config_mod.load(path), str(path)


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"pipeline": {"min_receivers": "3"}}, "pipeline.min_receivers: expected int, got str '3'"),
        ({"pipeline": {"min_receivers": 2.5}}, "pipeline.min_receivers: expected int, got float 2.5"),
        ({"network": {"target_freq_hz": "145.5 MHz"}}, "network.target_freq_hz: expected a number"),
        ({"output": {"publish_truth": 1}}, "output.publish_truth: expected true or false, got int 1"),
        ({"output": {"send_buffer_bytes": -1}}, "output.send_buffer_bytes: expected 0 to 2147483647 (0 = OS default), got -1"),
        ({"pipline": {}}, "pipline: unknown key; expected one of:"),
        ({"pipeline": {"window_s": 1.0}}, "pipeline.window_s: unknown key; expected one of: buffer_s"),
        ({"estimator": {"kind": "neural"}}, "estimator.kind: expected 'physics' or 'onnx', got 'neural'"),
        ({"features": {"n_mels": 31}}, "features.n_mels: expected an even number >= 2, got 31"),
        ({"receivers": [{**RX, "kind": "sopy"}]}, "receivers[0].kind: unknown receiver kind 'sopy'; known:"),
        ({"receivers": [{**RX, "gain": 20}]}, "receivers[0].gain: unknown key; expected one of:"),
        ({"receivers": [{k: v for k, v in RX.items() if k != "lat"}]}, "receivers[0].lat: required key is missing"),
        ({"receivers": [RX, RX]}, "receivers[1].id: duplicate receiver id 'a'"),
        ({"receivers": [{**RX, "lat": 95.0}]}, "receivers[0].lat: expected -90..90 degrees, got 95.0"),
        ({"receivers": [{**RX, "sample_rate_hz": -1.0}]}, "receivers[0]: sample_rate_hz must be > 0"),
        ({"receivers": {"id": "a"}}, "receivers: expected an array of tables"),
        ({"estimator": {"physics": {"path_loss_exponent": float("nan")}}},
         "estimator.physics.path_loss_exponent: expected a finite number, got nan"),
        ({"estimator": {"physics": {"path_loss_exponent": 0.0}}}, "estimator.physics.path_loss_exponent: expected a finite"),
        ({"estimator": {"physics": {"shadowing_db": -1.0}}}, "estimator.physics.shadowing_db: expected a finite sigma >= 0 (dB), got -1.0"),
        ({"estimator": {"physics": {"calibration_sigma_db": float("inf")}}}, "estimator.physics.calibration_sigma_db: expected a finite"),
        ({"estimator": {"physics": {"shadowing_db": 0.0, "calibration_sigma_db": 0.0}}},
         "estimator.physics.shadowing_db: expected > 0 where calibration_sigma_db is 0"),
        ({"estimator": {"physics": {"ref_loss_db": float("nan")}}}, "estimator.physics.ref_loss_db: expected a finite number, got nan"),
        ({"estimator": {"physics": {"tx_power_min_dbm": float("-inf")}}}, "estimator.physics.tx_power_min_dbm: expected a finite number"),
        ({"estimator": {"physics": {"point_estimate": "median"}}},
         "estimator.physics.point_estimate: expected 'mean' or 'geometric_median' or 'map', got 'median'"),
    ],
)
def test_a_wrong_config_names_file_key_and_expectation(doc, message):
    with pytest.raises(ConfigError) as err:
        config_mod.from_dict(doc, source="site.toml")
    assert str(err.value).startswith("site.toml: ")
    assert message in str(err.value)


def test_unreadable_and_invalid_toml_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="missing.toml: cannot read config"):
        config_mod.load(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"site.toml: not valid TOML"):
        load_text(tmp_path, "[pipeline\nmin_receivers = 3")


def test_a_valid_file_loads_with_defaults_filled_in(tmp_path):
    cfg, path = load_text(tmp_path, '[pipeline]\nmin_receivers = 4\n[[receivers]]\nid = "a"\nkind = "simulator"\nlat = 45.0\nlon = 7.0\n')
    assert cfg.source == path and cfg.pipeline.min_receivers == 4 and cfg.pipeline.buffer_s == 4.0
    assert cfg.receivers[0].options.sample_rate_hz == 240_000.0
    assert cfg.receiver("a").lat == 45.0
    with pytest.raises(ConfigError, match="no receiver with id 'b'; configured: a"):
        cfg.receiver("b")


def test_a_relative_model_path_is_relative_to_the_config_file(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "site.toml").write_text('[estimator]\nkind = "onnx"\nmodel = "models/m.onnx"\n')
    monkeypatch.chdir(tmp_path)
    cfg = config_mod.load("site/site.toml")
    assert cfg.estimator.model == str(tmp_path / "site" / "models" / "m.onnx")
