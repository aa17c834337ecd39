"""Build the configured estimators: ``estimator.kind = "physics"`` gives the physics posterior alone; ``"onnx"``
gives the model first, with the physics posterior beside it in every message so users can compare them live."""


from __future__ import annotations

from streamer.config import Config
from streamer.estimators.onnx import OnnxModel
from streamer.estimators.physics import PhysicsPosterior


def build_estimators(config: Config) -> list:
    """The primary estimator first; raises ConfigError / ModelMismatchError before start-up when it cannot load."""
    physics = PhysicsPosterior(config) if config.receivers else None
    if config.estimator.kind == "onnx":
        model = OnnxModel(config)
        return [model, physics] if physics is not None else [model]
    return [physics] if physics is not None else []
