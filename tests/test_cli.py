"""The `heimdall` command line: check, kinds, listen's line format, and errors that name what is wrong."""

from __future__ import annotations

import subprocess
import sys

import pytest

from streamer.cli import format_localization, main
from streamer.features import FeatureSpec
from tests.onnx_models import known_model, save

SITE = """
[estimator]
kind = "{kind}"
{model}
[[receivers]]
id = "a"
kind = "simulator"
lat = 45.0
lon = 7.0
"""


def write_site(tmp_path, kind="physics", model=None):
    path = tmp_path / "site.toml"
    path.write_text(SITE.format(kind=kind, model=f'model = "{model}"' if model else ""))
    return path


def test_check_accepts_a_valid_config(tmp_path, capsys):
    path = write_site(tmp_path)
    assert main(["check", "-c", str(path)]) == 0
    assert f"{path}: ok (1 receivers, estimator physics)" in capsys.readouterr().out


def test_check_accepts_a_config_with_a_contract_following_model(tmp_path, capsys):
    model = save(known_model(FeatureSpec(), max_receivers=4), tmp_path)
    assert main(["check", "-c", str(write_site(tmp_path, "onnx", model))]) == 0


@pytest.mark.parametrize(
    "make_model, message",
    [
        (lambda d: d / "absent.onnx", "missing"),
        (lambda d: (d / "corrupt.onnx").write_bytes(b"\x00\x01 not a protobuf" * 10) and d / "corrupt.onnx", "not a valid ONNX model"),
        (lambda d: save(known_model(FeatureSpec(n_mels=16), max_receivers=4), d, "other_spec.onnx"), "features.n_mels: model 16, config 32"),
        (lambda d: save(known_model(FeatureSpec(), max_receivers=4, meta=None), d, "no_meta.onnx"), "heimdall"),
    ],
)
def test_check_refuses_a_missing_corrupt_or_contract_breaking_model(tmp_path, capsys, make_model, message):
    path = write_site(tmp_path, "onnx", make_model(tmp_path))
    assert main(["check", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("heimdall: error: ") and message in err


def test_check_names_file_and_key_of_a_wrong_config(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('[pipeline]\nmin_receivers = "three"\n')
    assert main(["check", "-c", str(path)]) == 2
    assert f"{path}: pipeline.min_receivers: expected int, got str 'three'" in capsys.readouterr().err


def test_run_with_a_wrong_config_exits_non_zero_before_starting(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[metrics]\nport = 70000\n")
    proc = subprocess.run([sys.executable, "-m", "streamer", "run", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "metrics.port: expected 0..65535, got 70000" in proc.stderr


def test_kinds_lists_every_registered_adapter(capsys):
    assert main(["kinds"]) == 0
    out = capsys.readouterr().out
    for kind in ("simulator", "zmq", "gnuradio_zmq", "soapy", "pluto", "kiwisdr", "rtl_tcp"):
        assert kind in out


def test_listen_formats_one_line_per_localization():
    msg = {"t_end_ns": 1_790_000_000_500_000_000, "lat": 45.123456, "lon": 7.654321, "estimator": "physics",
           "ellipse": {"p": 0.95, "semi_major_m": 12_345.0, "semi_minor_m": 6_789.0, "azimuth_deg": 33.3},
           "receivers": ["a", "b", "c"], "latency_ms": {"processing": 12.34, "age": 600.0}}
    line = format_localization(msg)
    assert line == "2026-09-21T14:13:20.500Z 45.12346 7.65432 95% 12.3x6.8 km az 33 rx=a,b,c physics 12.3 ms"


def test_a_training_run_with_no_windows_per_network_is_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--windows-per-network", "0"])
    assert "--windows-per-network: expected a positive integer, got 0" in capsys.readouterr().err
