"""TOML configuration -> frozen dataclasses, validated with errors that name file, key path and expectation.

Each key is one dataclass field with a default and a one-line doc in ``field(metadata={"doc": ...})``
(``streamer.core.docs.doc``). Receiver tables carry common keys (id, kind, position, calibration) plus the
kind-specific keys of the adapter's ``Options`` dataclass.

Examples
--------
>>> cfg = from_dict({"receivers": [{"id": "a", "kind": "simulator", "lat": 45.0, "lon": 7.0}]}, source="<doc>")
>>> cfg.receivers[0].id, cfg.pipeline.min_receivers
('a', 3)
>>> from_dict({"pipeline": {"min_receivers": "three"}}, source="x.toml")
Traceback (most recent call last):
...
streamer.core.errors.ConfigError: x.toml: pipeline.min_receivers: expected int, got str 'three'
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from receivers.base import ZMQ_INT_MAX
from streamer.core.docs import doc as _doc
from streamer.core.errors import ConfigError
from streamer.dsp.features import FeatureSpec
from streamer.dsp.frame_fft import backend_problem


@dataclass(frozen=True)
class NetworkConfig:
    name: str = field(default="default", metadata=_doc("network name; topic becomes loc.<name> unless 'default'"))
    target_freq_hz: float = field(default=145.5e6, metadata=_doc("frequency of the transmitter to localize (Hz)"))
    origin: tuple[float, float, float] | None = field(
        default=None, metadata=_doc("[lat, lon, alt_m] of the ENU origin; the receivers' centroid if unset")
    )
    area_margin_km: float = field(default=30.0, metadata=_doc("search area = receivers' bounding box + this margin (km)"))
    channel_bandwidth_hz: float = field(default=12_500.0, metadata=_doc("occupied bandwidth used for received power (Hz)"))


@dataclass(frozen=True)
class PipelineConfig:
    buffer_s: float = field(default=4.0, metadata=_doc("ring buffer capacity per receiver (s)"))
    late_tolerance_s: float = field(
        default=0.5, metadata=_doc("how long after a window ends to wait for a slow receiver before masking it (s)")
    )
    min_receivers: int = field(default=3, metadata=_doc("fewest receivers that must hear the transmitter to localize"))
    detection_snr_db: float = field(default=6.0, metadata=_doc("in-channel SNR above which a receiver 'hears' (dB)"))
    offline_after_s: float = field(default=3.0, metadata=_doc("a receiver silent this long is reported down (s)"))
    clock_jump_tolerance_s: float = field(
        default=0.05, metadata=_doc("timestamp disagreement with the sample count that counts as a clock jump (s)")
    )
    queue_blocks: int = field(default=4096, metadata=_doc("most blocks queued between adapters and the pipeline"))
    queue_mb: float = field(default=256.0, metadata=_doc("most sample data queued between adapters and the pipeline (MiB)"))
    lone_carrier_s: float = field(
        default=10.0,
        metadata=_doc("a receiver that hears a carrier on a watched channel that no other receiver hears, for this long "
                      "(s of frames: a DC offset at its centre frequency, a birdie, local interference), is left out of "
                      "that channel's frame decisions, emissions and estimates until it goes quiet there "
                      "(docs/band-watch.md, docs/metrics.md)"),
    )
    workers: int = field(
        default=1,
        metadata=_doc("threads for the per-receiver work (block checks, channelizer, ring buffer, mel features); "
                      "0 = one per CPU core; outputs do not depend on it. Default 1: the Python around the numpy "
                      "kernels holds the GIL, so more threads can cost more than they give; raise it where "
                      "`heimdall bench pipeline --scaling` shows a gain (docs/performance.md). Channelizing edges "
                      "(`heimdall receiver ID --channelize`) spread the channelizing over processes instead"),
    )
    fft: str = field(
        default="scipy",
        metadata=_doc("the mel features' FFT: 'scipy' (scipy.fft; the same bits in every run) or 'fftw' (FFTW "
                      "through pyFFTW, pip install -e '.[fftw]'; faster, and a run's last-bit rounding depends on "
                      "the plan FFTW times as fastest; docs/performance.md, Feature stage)"),
    )


#: The physics posterior's point estimates (``estimator.physics.point_estimate``).
PHYSICS_POINT_ESTIMATES = ("mean", "geometric_median", "map")


@dataclass(frozen=True)
class PhysicsConfig:
    path_loss_exponent: float = field(default=3.0, metadata=_doc("log-distance exponent n"))
    ref_loss_db: float = field(default=75.7, metadata=_doc("median path loss at 1 km (dB); free space at 145.5 MHz"))
    shadowing_db: float = field(default=6.0, metadata=_doc("shadowing standard deviation (dB)"))
    calibration_sigma_db: float = field(default=2.0, metadata=_doc("uncertainty of each receiver's calibration_db (dB)"))
    tx_power_min_dbm: float = field(default=30.0, metadata=_doc("lower end of the transmit power prior (dBm)"))
    tx_power_max_dbm: float = field(default=47.0, metadata=_doc("upper end of the transmit power prior (dBm)"))
    grid_step_km: float = field(default=2.0, metadata=_doc("posterior grid spacing (km)"))
    tx_alt_m: float = field(default=200.0, metadata=_doc("assumed transmitter antenna altitude above the ellipsoid (m)"))
    shadowing_map: str | None = field(
        default=None,
        metadata=_doc("surveyed shadowing map (.npz from heimdall calibrate --survey-map); unset = none; relative = to the config file"),
    )
    covariance_scale: float = field(
        default=1.0,
        metadata=_doc("factor on every posterior covariance: this site's ellipse calibration (heimdall calibrate-ellipses)"),
    )
    final_covariance_scale: float | None = field(
        default=None,
        metadata=_doc("factor on a band daemon's final (whole-emission) posterior covariances, fitted apart from the "
                      "interim ones by heimdall calibrate-ellipses; unset = covariance_scale"),
    )
    calibration_drift_db_per_sqrt_day: float = field(
        default=0.0,
        metadata=_doc("random-walk drift of each receiver's calibration (dB per square-root day): both estimators "
                      "widen for sqrt(q^2 x days since the receiver's calibrated_at); 0 = no drift. "
                      "heimdall calibrate --drift-survey fits it (docs/operations.md, Calibration age)"),
    )
    calibration_seasonal_db: float = field(
        default=0.0,
        metadata=_doc("amplitude of an annual swing of each receiver's calibration, phase unknown (dB): adds "
                      "A^2 (1 - cos(2 pi days / 365.25)) to the calibration variance; 0 = none"),
    )
    point_estimate: str = field(
        default="mean",
        metadata=_doc("the point the posterior reports: 'mean' (least squared error), 'geometric_median' (least "
                      "distance error) or 'map' (most probable cell); the ellipses are taken about it"),
    )


@dataclass(frozen=True)
class EstimatorConfig:
    kind: str = field(
        default="onnx", metadata=_doc("'onnx' (the model, with the physics posterior alongside) or 'physics' alone")
    )
    model: str | None = field(
        default=None,
        metadata=_doc("ONNX model file; unset = the model shipped in the package; relative = to the config file"),
    )
    model_sha256: str | None = field(
        default=None,
        metadata=_doc("SHA-256 of the model file (64 hex digits, as `sha256sum` prints it); a file that differs is "
                      "refused. Unset = not checked"),
    )
    providers: tuple[str, ...] = field(
        default=("CUDAExecutionProvider", "CPUExecutionProvider"),
        metadata=_doc("ONNX Runtime providers in order of preference; CPU is always the fallback"),
    )
    model_covariance_scale: float = field(
        default=1.0,
        metadata=_doc("factor on every model covariance: this site's ellipse calibration (heimdall calibrate-ellipses)"),
    )
    model_final_covariance_scale: float | None = field(
        default=None,
        metadata=_doc("factor on a band daemon's final (whole-emission) model covariances, fitted apart from the "
                      "interim ones by heimdall calibrate-ellipses; unset = model_covariance_scale"),
    )
    model_site: str = field(
        default="physics",
        metadata=_doc("what a model that takes the site's propagation is told: 'physics' (the exponent, sigmas and "
                      "power range of estimator.physics) or 'none' (it infers them from each window)"),
    )
    physics: PhysicsConfig = field(default_factory=PhysicsConfig, metadata=_doc("physics estimator parameters"))

    def covariance_scales(self, stage: str = "interim") -> dict[str, float]:
        """Each estimator's site factor (keyed by its name in messages, ``onnx`` and ``physics``) on localizations of
        ``stage``: ``final`` (a band daemon's whole-emission estimates) or anything else (its interim ones, and every
        single-channel localization)."""
        model, physics = self.model_covariance_scale, self.physics.covariance_scale
        if stage == "final":
            model = model if self.model_final_covariance_scale is None else self.model_final_covariance_scale
            physics = physics if self.physics.final_covariance_scale is None else self.physics.final_covariance_scale
        return {"onnx": model, "physics": physics}


@dataclass(frozen=True)
class ArchiveConfig:
    dir: str | None = field(
        default=None, metadata=_doc("write every localization, emission event and status message as JSON lines here (unset: no archive)")
    )
    max_bytes: int = field(default=64 << 20, metadata=_doc("a file is rotated before it would grow past this size (bytes)"))
    keep_files: int = field(default=10, metadata=_doc("rotated files kept besides the current one; older ones are deleted"))


@dataclass(frozen=True)
class OutputConfig:
    endpoint: str = field(default="tcp://127.0.0.1:5557", metadata=_doc("ZeroMQ PUB bind address"))
    send_hwm: int = field(default=1000, metadata=_doc("messages queued per subscriber before dropping"))
    send_buffer_bytes: int = field(
        default=0, metadata=_doc("kernel send buffer per subscriber connection (bytes; 0 = the OS default, which on "
                                 "Linux grows to MBs): what a stuck subscriber holds beyond send_hwm")
    )
    status_interval_s: float = field(default=2.0, metadata=_doc("heartbeat period (s)"))
    publish_truth: bool = field(default=True, metadata=_doc("publish the simulator's ground truth on topic 'truth'"))
    archive: ArchiveConfig = field(default_factory=ArchiveConfig, metadata=_doc("JSON-lines archive (docs/security.md)"))


@dataclass(frozen=True)
class SecurityConfig:
    curve_output: bool = field(
        default=False, metadata=_doc("CURVE on the output PUB: encrypted, only subscribers in output_clients_dir")
    )
    curve_ingest: bool = field(
        default=False, metadata=_doc("CURVE on framed-IQ ingest (kind 'zmq'): only edges in ingest_clients_dir")
    )
    secret_key: str | None = field(
        default=None, metadata=_doc("this host's key pair: NAME.key_secret (mode 0600) from `heimdall keys generate`; "
                                    "relative = to the config file")
    )
    output_clients_dir: str | None = field(
        default=None, metadata=_doc("allowed subscribers' public keys (*.key files; not writable by others); "
                                    "relative = to the config file")
    )
    ingest_clients_dir: str | None = field(
        default=None, metadata=_doc("allowed edge publishers' public keys (*.key files; not writable by others); "
                                    "relative = to the config file")
    )
    server_key: str | None = field(
        default=None, metadata=_doc("`heimdall receiver` with curve_ingest: the central daemon's public NAME.key; "
                                    "relative = to the config file")
    )


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = field(default=True, metadata=_doc("serve Prometheus metrics"))
    host: str = field(default="127.0.0.1", metadata=_doc("metrics HTTP bind address"))
    port: int = field(default=9108, metadata=_doc("metrics HTTP port (0 = ephemeral)"))


#: Most simulated transmitters (``simulator.transmitters``): each costs the live stream a render of its own.
MAX_SIM_TRANSMITTERS = 64


@dataclass(frozen=True)
class SimulatorConfig:
    seed: int = field(default=1, metadata=_doc("seed of the whole simulated world"))
    tx_power_min_dbm: float = field(default=30.0, metadata=_doc("transmit power, lower end (dBm)"))
    tx_power_max_dbm: float = field(default=47.0, metadata=_doc("transmit power, upper end (dBm)"))
    path_loss_exponent: float = field(default=3.0, metadata=_doc("log-distance exponent n"))
    ref_loss_db: float = field(default=75.7, metadata=_doc("median path loss at 1 km (dB)"))
    shadowing_db: float = field(default=6.0, metadata=_doc("shadowing standard deviation (dB)"))
    shadowing_corr_km: float = field(default=5.0, metadata=_doc("shadowing decorrelation distance (km)"))
    calibration_sigma_db: float = field(default=2.0, metadata=_doc("spread of true receiver gains around calibration_db (dB)"))
    noise_figure_db: float = field(default=6.0, metadata=_doc("receiver noise figure (dB)"))
    noise_figure_sigma_db: float = field(default=2.0, metadata=_doc("spread of the receivers' noise figures around noise_figure_db (dB; hidden, site noise included)"))
    speed_mps: float = field(default=300.0, metadata=_doc("transmitter ground speed (m/s); fast so a demo covers the area"))
    key_up_mean_s: float = field(default=8.0, metadata=_doc("mean length of a transmission (s)"))
    key_down_mean_s: float = field(default=3.0, metadata=_doc("mean pause between transmissions (s)"))
    fm_deviation_hz: float = field(default=2_500.0, metadata=_doc("NBFM peak deviation (Hz)"))
    clock_offset_sigma_ms: float = field(default=2.0, metadata=_doc("spread of receiver host-clock offsets (ms)"))
    clock_ppm_sigma: float = field(default=1.0, metadata=_doc("spread of receiver sample-clock errors (ppm)"))
    tx_alt_m: float = field(default=200.0, metadata=_doc("transmitter antenna altitude above the ellipsoid (m)"))
    traffic_voice_weight: float = field(default=1.0, metadata=_doc(
        "share of transmissions that are voice push-to-talk (relative weight, >= 0; the four weights are normalised)"))
    traffic_dmr_weight: float = field(default=0.0, metadata=_doc(
        "share of transmissions that are DMR-like TDMA: 27.5 ms bursts every 60 ms for the transmission's length"))
    traffic_packet_weight: float = field(default=0.0, metadata=_doc(
        "share of transmissions that are packet data: bursts of 20-500 ms with short pauses between them"))
    traffic_carrier_weight: float = field(default=0.0, metadata=_doc(
        "share of transmissions that are a steady unmodulated carrier"))
    collision_probability: float = field(default=0.0, metadata=_doc(
        "chance (0..1) that a second transmitter elsewhere in the area keys up during a transmission, on the same channel"))
    calibration_drift_db_per_sqrt_day: float = field(default=0.0, metadata=_doc(
        "random walk of each receiver's true gain (dB per sqrt(day)) from when it was calibrated; 0 = no walk"))
    calibration_seasonal_db: float = field(default=0.0, metadata=_doc(
        "amplitude of each receiver's yearly gain swing (dB; a sine of one year with a random phase per receiver)"))
    calibration_epoch_unix_s: float = field(default=1_767_225_600.0, metadata=_doc(
        "when the simulated receivers were calibrated (Unix s; default 2026-01-01T00:00Z), for those without calibrated_at"))
    clock_jitter_ms: float = field(default=0.0, metadata=_doc(
        "mean lateness of each block's host timestamp (ms, exponential), as a loaded host stamps blocks; 0 = none"))
    transmitters: int = field(default=1, metadata=_doc(
        f"how many transmitters key up independently, each with its own track, powers and traffic, on a channel of the "
        f"channel plan (distinct channels while there are enough, drawn from the seed); 1..{MAX_SIM_TRANSMITTERS}"))

    def __post_init__(self) -> None:
        weights = {name: getattr(self, f"traffic_{name}_weight") for name in ("voice", "dmr", "packet", "carrier")}
        for name, weight in weights.items():
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"traffic_{name}_weight: expected a finite weight >= 0, got {weight!r}")
        if sum(weights.values()) <= 0:
            raise ValueError("traffic_*_weight: expected at least one weight > 0, got all 0")
        if not 0.0 <= self.collision_probability <= 1.0:
            raise ValueError(f"collision_probability: expected 0..1, got {self.collision_probability!r}")
        for key in ("calibration_drift_db_per_sqrt_day", "calibration_seasonal_db", "clock_jitter_ms"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{key}: expected a finite value >= 0, got {value!r}")
        if not 1 <= self.transmitters <= MAX_SIM_TRANSMITTERS:
            raise ValueError(f"transmitters: expected 1..{MAX_SIM_TRANSMITTERS}, got {self.transmitters!r}")
        if not math.isfinite(self.calibration_epoch_unix_s):
            raise ValueError(f"calibration_epoch_unix_s: expected a finite Unix time (s), got {self.calibration_epoch_unix_s!r}")


#: Most channels a plan may hold (``[[channels]]`` or ``[band]`` expanded): the band pipeline keeps state per
#: channel and receiver, and a plan larger than this is almost surely a mistyped spacing.
MAX_CHANNELS = 1024


@dataclass(frozen=True)
class ChannelConfig:
    name: str = field(metadata=_doc("unique channel name, used in events and messages"))
    centre_hz: float = field(metadata=_doc("centre frequency of the channel (Hz)"))
    bandwidth_hz: float | None = field(
        default=None, metadata=_doc("occupied bandwidth used for received power (Hz); unset = network.channel_bandwidth_hz")
    )


@dataclass(frozen=True)
class BandConfig:
    start_hz: float = field(metadata=_doc("centre of the first channel (Hz)"))
    stop_hz: float = field(metadata=_doc("centre of the last channel (Hz); channels run start_hz, start_hz + spacing_hz, .. up to it"))
    spacing_hz: float = field(metadata=_doc("distance between neighbouring channel centres (Hz)"))
    bandwidth_hz: float | None = field(
        default=None, metadata=_doc("occupied bandwidth of each channel (Hz), at most spacing_hz; unset = spacing_hz")
    )

    def channels(self) -> tuple[ChannelConfig, ...]:
        """The plan this band expands to: a channel every ``spacing_hz`` from ``start_hz`` to ``stop_hz`` (both
        included, to a millionth of the spacing), each named by its centre in MHz (``channel_name``)."""
        count = band_channel_count(self)
        bandwidth = self.spacing_hz if self.bandwidth_hz is None else self.bandwidth_hz
        centres = (self.start_hz + k * self.spacing_hz for k in range(count))
        return tuple(ChannelConfig(channel_name(c), c, bandwidth) for c in centres)


def band_channel_count(band: BandConfig) -> int:
    """How many channels ``band`` expands to (no cap applied here; see ``MAX_CHANNELS``)."""
    return math.floor((band.stop_hz - band.start_hz) / band.spacing_hz + 1e-6) + 1


def channel_name(centre_hz: float) -> str:
    """A channel's name from its centre: MHz to the Hz, trailing zeros dropped (``145.5125``, ``462.5625``).

    >>> channel_name(145_512_500.0), channel_name(446e6)
    ('145.5125', '446')
    """
    return f"{centre_hz / 1e6:.6f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class ReceiverConfig:
    id: str = field(metadata=_doc("unique receiver id"))
    kind: str = field(metadata=_doc("adapter kind (see docs/receivers.md)"))
    lat: float = field(metadata=_doc("latitude (degrees, WGS84)"))
    lon: float = field(metadata=_doc("longitude (degrees, WGS84)"))
    alt_m: float = field(default=0.0, metadata=_doc("antenna height above the ellipsoid (m)"))
    calibration_db: float = field(default=0.0, metadata=_doc("dBm at the antenna = dBFS + calibration_db"))
    calibrated_at: str | None = field(
        default=None,
        metadata=_doc("when calibration_db was measured: a quoted ISO-8601 date or date-time, UTC unless an offset is given "
                      "(heimdall calibrate writes it); required when estimator.physics sets a calibration drift"),
    )
    options: Any = field(default=None, metadata=_doc("kind-specific keys, checked against the adapter's Options"))


@dataclass(frozen=True)
class Config:
    network: NetworkConfig = field(default_factory=NetworkConfig)
    features: FeatureSpec = field(default_factory=FeatureSpec)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    channels: tuple[ChannelConfig, ...] = field(
        default=(), metadata=_doc("[[channels]]: the channel plan, one table per channel; not with [band]")
    )
    band: BandConfig | None = field(
        default=None, metadata=_doc("[band]: a regular channel plan (start_hz .. stop_hz every spacing_hz); not with [[channels]]")
    )
    receivers: tuple[ReceiverConfig, ...] = ()
    source: str = "<defaults>"

    def has_channel_plan(self) -> bool:
        """Whether the config sets a channel plan (``[[channels]]`` or ``[band]``) rather than one target frequency."""
        return bool(self.channels) or self.band is not None

    def channel_plan(self) -> tuple[ChannelConfig, ...]:
        """The watched channels, each with its bandwidth (Hz) resolved, in every case: ``[[channels]]``, the
        expanded ``[band]``, or else one channel at ``network.target_freq_hz`` of ``network.channel_bandwidth_hz``.

        >>> Config().channel_plan()
        (ChannelConfig(name='145.5', centre_hz=145500000.0, bandwidth_hz=12500.0),)
        """
        net = self.network
        if self.band is not None:
            return self.band.channels()
        if self.channels:
            return tuple(dataclasses.replace(ch, bandwidth_hz=net.channel_bandwidth_hz) if ch.bandwidth_hz is None else ch
                         for ch in self.channels)
        return (ChannelConfig(channel_name(net.target_freq_hz), net.target_freq_hz, net.channel_bandwidth_hz),)

    def receiver(self, receiver_id: str) -> ReceiverConfig:
        for rx in self.receivers:
            if rx.id == receiver_id:
                return rx
        known = ", ".join(rx.id for rx in self.receivers)
        raise ConfigError(f"{self.source}: no receiver with id {receiver_id!r}; configured: {known}")


_COMMON_RECEIVER_KEYS = {f.name for f in dataclasses.fields(ReceiverConfig)} - {"options"}
#: [security] keys that name files or folders: ``load`` resolves them against the config file's folder.
_SECURITY_PATHS = ("secret_key", "output_clients_dir", "ingest_clients_dir", "server_key")
#: Shortest heartbeat period served (s): the status message is for dashboards, not a data stream.
MIN_STATUS_INTERVAL_S = 0.1


def default_config_path() -> Path:
    """The embedded default (a simulated seven-receiver network); works from any folder."""
    return Path(str(importlib.resources.files("streamer").joinpath("default.toml")))


def load(path: str | Path | None = None) -> Config:
    """Read and validate a TOML config; ``None`` loads the embedded default."""
    path = Path(path) if path is not None else default_config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): a TOML config must be UTF-8") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    cfg = from_dict(data, source=str(path))
    model = cfg.estimator.model
    if model is not None and not Path(model).is_absolute():
        # Relative to the config file (not the working directory), so a config and its model move together.
        # The embedded default names ../models/heimdall-<version>.onnx: the package's models/ folder.
        model = os.path.abspath(path.parent / model)
        cfg = dataclasses.replace(cfg, estimator=dataclasses.replace(cfg.estimator, model=model))
    survey = cfg.estimator.physics.shadowing_map
    if survey is not None and not Path(survey).is_absolute():
        physics = dataclasses.replace(cfg.estimator.physics, shadowing_map=os.path.abspath(path.parent / survey))
        cfg = dataclasses.replace(cfg, estimator=dataclasses.replace(cfg.estimator, physics=physics))
    sec = cfg.security
    relative = {name: os.path.abspath(path.parent / value) for name in _SECURITY_PATHS
                if (value := getattr(sec, name)) is not None and not Path(value).is_absolute()}
    if relative:  # key files move with the config, like the model
        cfg = dataclasses.replace(cfg, security=dataclasses.replace(sec, **relative))
    return cfg


def from_dict(data: dict[str, Any], *, source: str = "<dict>") -> Config:
    """Validate a parsed TOML document."""
    data = dict(data)
    receivers = data.pop("receivers", [])
    cfg = _build(Config, {**data, "source": source}, "", source)
    if not isinstance(receivers, list):
        raise ConfigError(f"{source}: receivers: expected an array of tables ([[receivers]]), got {type(receivers).__name__}")
    parsed = tuple(_build_receiver(item, f"receivers[{i}]", source) for i, item in enumerate(receivers))
    ids = [rx.id for rx in parsed]
    for i, rx_id in enumerate(ids):
        if rx_id in ids[:i]:
            raise ConfigError(f"{source}: receivers[{i}].id: duplicate receiver id {rx_id!r}")
    _check_ranges(cfg, parsed, source)
    return dataclasses.replace(cfg, receivers=parsed)


def _build_receiver(item: Any, path: str, source: str) -> ReceiverConfig:
    from receivers.registry import adapter_class

    if not isinstance(item, dict):
        raise ConfigError(f"{source}: {path}: expected a table, got {type(item).__name__}")
    common = {k: v for k, v in item.items() if k in _COMMON_RECEIVER_KEYS}
    rest = {k: v for k, v in item.items() if k not in _COMMON_RECEIVER_KEYS}
    for key in ("id", "kind"):
        if key not in common:
            raise ConfigError(f"{source}: {path}.{key}: required key is missing")
    try:
        cls = adapter_class(str(common["kind"]))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {path}.kind: {exc}") from None
    try:
        options = _build(cls.Options, rest, path, source)
        return _build(ReceiverConfig, {**common, "options": options}, path, source)
    except ConfigError as exc:  # name the receiver by its id too, as operators know it
        raise ConfigError(f"{exc} (receiver id {common['id']!r}, kind {common['kind']!r})") from None


def _build(cls: type, data: Any, path: str, source: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {path or '<top>'}: expected a table, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"{source}: {where}{unknown[0]}: unknown key; expected one of: {', '.join(sorted(k for k in fields if k != 'source'))}"
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        key_path = f"{path}.{name}" if path else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{source}: {key_path}: required key is missing")
            continue
        if name == "options":
            values[name] = data[name]
            continue
        values[name] = _coerce(hints[name], data[name], key_path, source)
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source}: {path or '<top>'}: {exc}") from None


def _coerce(hint: Any, value: Any, path: str, source: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path, source)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {path}: expected an array, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{path}[{i}]", source) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{source}: {path}: expected an array of {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, f"{path}[{i}]", source) for i, (a, v) in enumerate(zip(args, value)))
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {path}: expected a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(value):  # TOML spells nan and inf; no key of this schema or any Options takes them
            raise ConfigError(f"{source}: {path}: expected a finite number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {path}: expected int, got {type(value).__name__} {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {path}: expected true or false, got {type(value).__name__} {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {path}: expected a string, got {type(value).__name__} {value!r}")
        return value
    if hint is Any:
        return value
    raise ConfigError(f"{source}: {path}: unsupported type {hint!r}")  # pragma: no cover - schema bug


def _check_ranges(cfg: Config, receivers: tuple[ReceiverConfig, ...], source: str) -> None:
    def need(ok: bool, key: str, expected: str, value: Any) -> None:
        if not ok:
            raise ConfigError(f"{source}: {key}: expected {expected}, got {value!r}")

    p = cfg.pipeline
    need(p.buffer_s > 2 * cfg.features.window_s, "pipeline.buffer_s",
         f"more than two windows (2 x features.window_s = {2 * cfg.features.window_s:g} s)", p.buffer_s)
    need(p.min_receivers >= 1, "pipeline.min_receivers", ">= 1", p.min_receivers)
    need(p.late_tolerance_s >= 0, "pipeline.late_tolerance_s", ">= 0", p.late_tolerance_s)
    need(p.queue_blocks >= 1, "pipeline.queue_blocks", ">= 1", p.queue_blocks)
    need(p.queue_mb > 0, "pipeline.queue_mb", "> 0", p.queue_mb)
    need(p.workers >= 0, "pipeline.workers", ">= 0 (0 = one per CPU core)", p.workers)
    fft_problem = backend_problem(p.fft)
    if fft_problem:
        raise ConfigError(f"{source}: pipeline.fft: {fft_problem}")
    need(p.offline_after_s > 0, "pipeline.offline_after_s", "> 0 s", p.offline_after_s)
    need(0 < p.lone_carrier_s < math.inf, "pipeline.lone_carrier_s", "a finite duration > 0 s", p.lone_carrier_s)
    need(p.clock_jump_tolerance_s > 0, "pipeline.clock_jump_tolerance_s", "> 0 s", p.clock_jump_tolerance_s)
    net = cfg.network
    need(net.target_freq_hz > 0, "network.target_freq_hz", "a frequency > 0 Hz", net.target_freq_hz)
    need(net.area_margin_km > 0, "network.area_margin_km", "> 0 km", net.area_margin_km)
    need(net.channel_bandwidth_hz > 0, "network.channel_bandwidth_hz", "> 0 Hz", net.channel_bandwidth_hz)
    need(1 <= cfg.output.send_hwm <= ZMQ_INT_MAX, "output.send_hwm",
         f"1 to {ZMQ_INT_MAX} messages (0 would queue without limit)", cfg.output.send_hwm)
    need(cfg.output.status_interval_s >= MIN_STATUS_INTERVAL_S, "output.status_interval_s",
         f">= {MIN_STATUS_INTERVAL_S} s", cfg.output.status_interval_s)
    need(cfg.estimator.kind in ("physics", "onnx"), "estimator.kind", "'physics' or 'onnx'", cfg.estimator.kind)
    pin = cfg.estimator.model_sha256
    need(pin is None or re.fullmatch(r"[0-9a-fA-F]{64}", pin) is not None, "estimator.model_sha256",
         "64 hexadecimal digits (sha256sum MODEL.onnx)", pin)
    need(cfg.estimator.model_site in ("physics", "none"), "estimator.model_site", "'physics' or 'none'",
         cfg.estimator.model_site)
    need(0 <= cfg.metrics.port < 65536, "metrics.port", "0..65535", cfg.metrics.port)
    need(0 <= cfg.output.send_buffer_bytes <= ZMQ_INT_MAX, "output.send_buffer_bytes", f"0 to {ZMQ_INT_MAX} (0 = OS default)",
         cfg.output.send_buffer_bytes)
    need(cfg.output.archive.max_bytes > 0, "output.archive.max_bytes", "> 0", cfg.output.archive.max_bytes)
    need(cfg.output.archive.keep_files >= 0, "output.archive.keep_files", ">= 0", cfg.output.archive.keep_files)
    ph = cfg.estimator.physics
    for key in ("ref_loss_db", "tx_power_min_dbm", "tx_power_max_dbm", "tx_alt_m"):
        need(math.isfinite(getattr(ph, key)), f"estimator.physics.{key}", "a finite number", getattr(ph, key))
    need(math.isfinite(ph.path_loss_exponent) and 0 < ph.path_loss_exponent <= 10, "estimator.physics.path_loss_exponent",
         "a finite exponent in (0, 10]", ph.path_loss_exponent)
    for key in ("shadowing_db", "calibration_sigma_db"):
        need(math.isfinite(getattr(ph, key)) and getattr(ph, key) >= 0, f"estimator.physics.{key}", "a finite sigma >= 0 (dB)",
             getattr(ph, key))
    need(math.hypot(ph.shadowing_db, ph.calibration_sigma_db) > 0, "estimator.physics.shadowing_db",
         "> 0 where calibration_sigma_db is 0 (the estimators need some spread)", ph.shadowing_db)
    need(ph.tx_power_max_dbm > ph.tx_power_min_dbm, "estimator.physics.tx_power_max_dbm", "> tx_power_min_dbm", ph.tx_power_max_dbm)
    need(ph.grid_step_km > 0, "estimator.physics.grid_step_km", "> 0", ph.grid_step_km)
    for key, scale in (("estimator.model_covariance_scale", cfg.estimator.model_covariance_scale),
                       ("estimator.physics.covariance_scale", ph.covariance_scale),
                       ("estimator.model_final_covariance_scale", cfg.estimator.model_final_covariance_scale),
                       ("estimator.physics.final_covariance_scale", ph.final_covariance_scale)):
        need(scale is None or (math.isfinite(scale) and scale > 0), key, "a finite factor > 0", scale)
    for key in ("calibration_drift_db_per_sqrt_day", "calibration_seasonal_db"):
        need(getattr(ph, key) >= 0, f"estimator.physics.{key}", "a finite drift >= 0 (0 = none)", getattr(ph, key))
    need(ph.point_estimate in PHYSICS_POINT_ESTIMATES, "estimator.physics.point_estimate",
         " or ".join(repr(p) for p in PHYSICS_POINT_ESTIMATES), ph.point_estimate)
    drifting = ph.calibration_drift_db_per_sqrt_day > 0 or ph.calibration_seasonal_db > 0
    for i, rx in enumerate(receivers):
        _check_calibrated_at(rx, f"{source}: receivers[{i}].calibrated_at", drifting)
    for i, rx in enumerate(receivers):
        need(-90 <= rx.lat <= 90, f"receivers[{i}].lat", "-90..90 degrees", rx.lat)
        need(-180 <= rx.lon <= 180, f"receivers[{i}].lon", "-180..180 degrees", rx.lon)
    _check_channel_plan(cfg, need)


def _check_channel_plan(cfg: Config, need: Callable[[bool, str, str, Any], None]) -> None:
    """``[[channels]]`` or ``[band]`` (not both): positive frequencies, at most ``MAX_CHANNELS`` channels, unique
    names and centres."""
    if cfg.channels and cfg.band is not None:
        raise ConfigError(f"{cfg.source}: band: given together with [[channels]]; "
                          "expected one channel plan: either [[channels]] tables or a [band] table")
    band = cfg.band
    if band is not None:
        need(band.start_hz > 0, "band.start_hz", "a frequency > 0 Hz", band.start_hz)
        need(band.stop_hz > band.start_hz, "band.stop_hz", f"a frequency above band.start_hz ({band.start_hz!r} Hz)", band.stop_hz)
        need(band.spacing_hz >= 1, "band.spacing_hz", ">= 1 Hz (band channels are named by their centre to the Hz)",
             band.spacing_hz)
        if band.bandwidth_hz is not None:
            need(0 < band.bandwidth_hz <= band.spacing_hz, "band.bandwidth_hz",
                 f"> 0 Hz and at most band.spacing_hz ({band.spacing_hz:g} Hz)", band.bandwidth_hz)
        count = band_channel_count(band)
        need(count <= MAX_CHANNELS, "band.spacing_hz",
             f"a spacing that gives at most {MAX_CHANNELS} channels from band.start_hz to band.stop_hz "
             f"(this one gives {count})", band.spacing_hz)
        where = "band"
    else:
        need(len(cfg.channels) <= MAX_CHANNELS, "channels", f"at most {MAX_CHANNELS} [[channels]] tables", len(cfg.channels))
        for i, ch in enumerate(cfg.channels):
            need(ch.name.strip() != "", f"channels[{i}].name", "a non-empty name", ch.name)
            need(ch.centre_hz > 0, f"channels[{i}].centre_hz", "a frequency > 0 Hz", ch.centre_hz)
            need(ch.bandwidth_hz is None or ch.bandwidth_hz > 0, f"channels[{i}].bandwidth_hz", "> 0 Hz", ch.bandwidth_hz)
        where = "channels"
    names: dict[str, int] = {}
    centres: dict[float, int] = {}
    for i, ch in enumerate(cfg.channel_plan()):
        key = f"{where}[{i}]" if where == "channels" else f"band (channel {i}, {ch.name})"
        if ch.name in names:
            raise ConfigError(f"{cfg.source}: {key}.name: duplicate channel name {ch.name!r} (also channel "
                              f"{names[ch.name]}); expected unique names")
        if ch.centre_hz in centres:
            raise ConfigError(f"{cfg.source}: {key}.centre_hz: duplicate centre {ch.centre_hz!r} Hz (also channel "
                              f"{centres[ch.centre_hz]}); expected distinct channels")
        names[ch.name] = i
        centres[ch.centre_hz] = i


def _check_calibrated_at(rx: ReceiverConfig, where: str, drifting: bool) -> None:
    """A receiver's ``calibrated_at`` parses; with a calibration drift configured it must be set: an unknown age
    would let the estimators claim a freshly calibrated receiver (overconfident), and guessing one is no better."""
    from streamer.core.calibration_drift import parse_calibrated_at

    if rx.calibrated_at is None:
        if drifting:
            raise ConfigError(f"{where}: required when estimator.physics.calibration_drift_db_per_sqrt_day or "
                              "calibration_seasonal_db is > 0 (the calibration's age sets how much the estimators widen); "
                              f"expected an ISO-8601 date such as '2026-03-01' (receiver id {rx.id!r})")
        return
    try:
        parse_calibrated_at(rx.calibrated_at)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc} (receiver id {rx.id!r})") from None


def options_table(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key path, type, default, doc) for every key of a config dataclass, nested tables flattened."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in ("source", "receivers", "options", "channels", "band"):
            continue  # tables of their own sections in configuration_markdown
        key = f"{prefix}{f.name}"
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            rows.extend(options_table(hint, f"{key}."))
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        type_name = (getattr(hint, "__name__", None) or str(hint).replace("typing.", "")).replace(" | ", " or ")
        rows.append((key, type_name, default, f.metadata.get("doc", "")))
    return rows


def configuration_markdown() -> str:
    """docs/configuration.md, generated from the dataclasses (a test keeps the file in step)."""
    from receivers.registry import KINDS, adapter_class

    def table(rows) -> list[str]:
        out = ["| key | type | default | meaning |", "|---|---|---|---|"]
        out += [f"| `{k}` | {t} | `{d}` | {doc} |" for k, t, d, doc in rows]
        return out

    lines = [
        "# Configuration",
        "",
        "Generated from the dataclasses in `streamer/config.py` and each adapter's `Options` by",
        "`python -m streamer.config > docs/configuration.md`; a test checks that this file is up to date.",
        "Unknown keys, wrong types and numbers that are not finite (TOML's nan and inf; no key takes them) are",
        "refused with the file, the key path and what was expected; `heimdall check` also runs the daemon's",
        "start-up checks (`streamer/daemon/preflight.py`: memory, endpoints, key files, dependencies, tunability).",
        "",
        "## Top-level tables",
        "",
        *table(options_table(Config)),
        "",
        "## Channel plan: `[[channels]]` or `[band]`",
        "",
        "The channels the daemon watches (docs/band-watch.md, Channel plan). Give either `[[channels]]` tables or one",
        "`[band]` table, not both; with neither, the plan is one channel at `network.target_freq_hz` of",
        f"`network.channel_bandwidth_hz`, named by its centre in MHz. A plan holds at most {MAX_CHANNELS} channels;",
        "names and centres must be unique. `[band]` expands to a channel every `spacing_hz` from `start_hz` to",
        "`stop_hz` (both included), each named by its centre in MHz to the Hz (`145.50625`).",
        "",
        "### `[[channels]]`",
        "",
        *table(options_table(ChannelConfig)),
        "",
        "### `[band]`",
        "",
        *table(options_table(BandConfig)),
        "",
        "## `[[receivers]]` (common keys)",
        "",
        *table(options_table(ReceiverConfig)),
        "",
    ]
    for kind in sorted(KINDS):
        try:
            cls = adapter_class(kind)
        except Exception as exc:  # an optional dependency missing: say so instead of failing the docs
            lines += [f"## `kind = \"{kind}\"`", "", f"(options not listed: {exc})", ""]
            continue
        lines += [f"## `kind = \"{kind}\"`", "", *table(options_table(cls.Options)), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(configuration_markdown())
