"""The localization models: the shipped ONNX file, its card, and (in ``models.train``, torch only) the trainer."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

#: Version of the model shipped in this package (models/heimdall-<version>.onnx).
SHIPPED_VERSION = "0.6.0"

#: Largest model file ``heimdall train`` writes, in bytes (here, not in models.train.export, so that checking the
#: shipped file needs no torch).
MAX_MODEL_BYTES = 5 * 1024 * 1024


def shipped_model_path() -> Path:
    """Path of the model shipped with the package: what ``estimator.kind = "onnx"`` uses when no model is named."""
    return Path(str(importlib.resources.files("models").joinpath(f"heimdall-{SHIPPED_VERSION}.onnx")))
