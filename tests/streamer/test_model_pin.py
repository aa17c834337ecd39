"""estimator.model_sha256 pins the model file; model errors name the config key that chose the model."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from models import shipped_model_path
from streamer.daemon.app import Daemon
from streamer.cli import main
from streamer.config import load
from streamer.core.errors import ConfigError, ModelMismatchError
from tests.helpers.daemon import default_config, merge, to_toml


def _config(tmp_path, estimator: dict) -> str:
    cfg = merge(default_config(), {"metrics": {"enabled": False}, "estimator": estimator})
    path = tmp_path / "site.toml"
    path.write_text(to_toml(cfg))
    return str(path)


def _flipped_copy(tmp_path) -> str:
    """The shipped model with one bit of one weight flipped: still a valid ONNX file."""
    data = bytearray(shipped_model_path().read_bytes())
    data[len(data) // 2] ^= 0x01
    path = tmp_path / "flipped.onnx"
    path.write_bytes(bytes(data))
    return str(path)


def _verdicts(path: str, capsys) -> tuple[int, str, str]:
    """(check's exit status, check's stderr, the error the daemon's start raises)."""
    status = main(["check", "-c", path])
    err = capsys.readouterr().err
    with pytest.raises((ConfigError, ModelMismatchError)) as start:
        Daemon(load(path))
    return status, err, str(start.value)


def test_a_model_that_is_not_the_pinned_file_is_refused_by_check_and_run(tmp_path, capsys):
    pinned = hashlib.sha256(shipped_model_path().read_bytes()).hexdigest()
    flipped = _flipped_copy(tmp_path)
    status, err, started = _verdicts(_config(tmp_path, {"model": flipped, "model_sha256": pinned}), capsys)
    assert status == 2
    for text in (err, started):
        assert "estimator.model_sha256 pins " + pinned in text
        assert hashlib.sha256(Path(flipped).read_bytes()).hexdigest() in text and "site.toml: estimator.model" in text


def test_the_pinned_model_loads(tmp_path, capsys):
    pinned = hashlib.sha256(shipped_model_path().read_bytes()).hexdigest().upper()
    copy = tmp_path / "pinned.onnx"
    shutil.copy(shipped_model_path(), copy)
    assert main(["check", "-c", _config(tmp_path, {"model": str(copy), "model_sha256": pinned})]) == 0
    assert "ok" in capsys.readouterr().out


def test_a_malformed_pin_is_a_config_error(tmp_path, capsys):
    assert main(["check", "-c", _config(tmp_path, {"model_sha256": "abc123"})]) == 2
    assert "estimator.model_sha256: expected 64 hexadecimal digits" in capsys.readouterr().err


def test_a_model_error_names_the_config_key(tmp_path, capsys):
    status, err, started = _verdicts(_config(tmp_path, {"model": "nowhere.onnx"}), capsys)
    assert status == 2
    for text in (err, started):
        assert "site.toml: estimator.model: model file" in text and "nowhere.onnx missing" in text
