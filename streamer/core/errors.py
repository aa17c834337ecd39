"""The short error hierarchy. Expected per-frame failures are counted, not raised (see metrics)."""


class HeimdallError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(HeimdallError):
    """A configuration file or value is wrong; the message names the file, the key path and what was expected."""


class ReceiverError(HeimdallError):
    """A receiver adapter failed."""


class ReceiverTransientError(ReceiverError):
    """The source went away or stalled; the runner reconnects with backoff."""


class ReceiverFatalError(ReceiverError):
    """The source cannot work as configured (missing driver, wrong device); retrying will not help."""


class MissingDependencyError(HeimdallError):
    """An optional dependency is not installed; the message carries the install command."""


class ModelMismatchError(HeimdallError):
    """An ONNX model's inputs, outputs or metadata break the model contract (docs/model-contract.md)."""
