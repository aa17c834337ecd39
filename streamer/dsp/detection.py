"""The one detection rule: a window's mel frames (dBm) -> per-receiver in-channel signal power, noise power and
"heard" (in-channel SNR at or above the threshold), and which frames of a window carried a transmission.

In-channel means mel bands centred within +-channel_bandwidth/2 of the carrier; the noise density comes from the
other bands, so no receiver has to be told its noise floor. ``DetectionRule`` holds the rule's settings (bandwidth
in Hz, threshold in dB, noise band as a share of the sample rate) once, for the daemon and the trainer alike."""


from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from streamer.dsp.features import (
    FeatureSpec,
    bands_between,
    mel_filterbank,
)

#: Floor for linear powers that noise subtraction drives to zero or below (mW): -200 dBm.
_POWER_FLOOR_MW = 1e-20
#: ln(10) / 10: dBm times this, exponentiated, is mW.
_LN10_OVER_10 = float(np.log(10.0) / 10.0)


# ----------------------------------------------------------------------------------------------------
# Mel frames -> in-channel power


@dataclass(frozen=True)
class ChannelPower:
    """Per-receiver power in the channel, from one window's mel frames. All arrays are ``[R]``.

    signal_dbm : in-channel power minus the estimated noise in the same bands (dBm at the antenna, as
        far as ``calibration_db`` is right); -200 dBm when the noise estimate swallows it.
    noise_dbm : noise power in ``channel_bandwidth_hz`` (dBm), from the out-of-channel bands.
    snr_db : signal_dbm - noise_dbm.
    heard : snr_db >= the detection threshold.
    detection_level_dbm : noise_dbm + detection threshold: the signal power below which a receiver does
        not hear (the estimator's censoring level).
    """

    signal_dbm: np.ndarray
    noise_dbm: np.ndarray
    snr_db: np.ndarray
    heard: np.ndarray
    detection_level_dbm: np.ndarray


def bands_noise_bandwidth_hz(spec: FeatureSpec, low_hz: float, high_hz: float) -> float:
    """Equivalent noise bandwidth (Hz) of the mel bands that ``band_power_dbm(spec, low_hz, high_hz)`` sums.

    White noise of density N0 (mW/Hz) reads N0 times this in those bands, so this is the exact
    conversion between band power and density for the discrete filterbank (triangles, DC notch and all).
    """
    return float(mel_filterbank(spec)[bands_between(spec, low_hz, high_hz)].sum() * spec.sample_rate_hz / spec.n_fft)


@dataclass(frozen=True)
class ChannelBands:
    """Which mel bands ``channel_power`` reads as the channel and which as noise, and their noise bandwidths (Hz).

    in_channel, noise : ``[n_mels]`` bool masks (band centres within +-half the channel bandwidth; out-of-channel
        bands up to ``noise_max_offset_hz``). in_bandwidth_hz, noise_bandwidth_hz : their equivalent noise
        bandwidths (``bands_noise_bandwidth_hz``). channel_bandwidth_hz : the channel's occupied bandwidth.
    """

    in_channel: np.ndarray
    noise: np.ndarray
    in_bandwidth_hz: float
    noise_bandwidth_hz: float
    channel_bandwidth_hz: float


def channel_bands(spec: FeatureSpec, channel_bandwidth_hz: float, noise_max_offset_hz: float | None = None) -> ChannelBands:
    """The band selection of ``channel_power`` (its parameters; also what a model that measures power the daemon's way
    needs). Raises ``ValueError`` when ``noise_max_offset_hz`` is inside the channel or no band falls on either side.
    The selection of a spec and bandwidth is computed once and shared; its masks are read-only."""
    top = None if noise_max_offset_hz is None else float(noise_max_offset_hz)
    return _channel_bands(spec, float(channel_bandwidth_hz), top)


@functools.lru_cache(maxsize=64)
def _channel_bands(spec: FeatureSpec, channel_bandwidth_hz: float, noise_max_offset_hz: float | None) -> ChannelBands:
    half_bw = 0.5 * channel_bandwidth_hz
    top = np.inf if noise_max_offset_hz is None else float(noise_max_offset_hz)
    if top <= half_bw:
        raise ValueError(f"noise_max_offset_hz ({top} Hz) must exceed half the channel bandwidth ({half_bw} Hz)")
    in_bw = bands_noise_bandwidth_hz(spec, -half_bw, half_bw)
    out_bw = bands_noise_bandwidth_hz(spec, half_bw, top) + bands_noise_bandwidth_hz(spec, -top, -half_bw)
    if in_bw <= 0 or out_bw <= 0:
        raise ValueError(
            f"channel_power: no mel band inside +-{half_bw} Hz or none outside it at fs={spec.sample_rate_hz} Hz, "
            f"n_mels={spec.n_mels}"
        )
    in_channel = bands_between(spec, -half_bw, half_bw)
    noise = bands_between(spec, half_bw, top) | bands_between(spec, -top, -half_bw)
    in_channel.setflags(write=False)  # shared by every caller through the cache
    noise.setflags(write=False)
    return ChannelBands(in_channel, noise, in_bw, out_bw, float(channel_bandwidth_hz))


def channel_power(
    frames_dbm: np.ndarray,
    spec: FeatureSpec,
    *,
    channel_bandwidth_hz: float,
    detection_snr_db: float,
    noise_max_offset_hz: float | None = None,
    active: np.ndarray | None = None,
) -> ChannelPower:
    """In-channel signal power, noise power and heard flag of each receiver in one window.

    Parameters
    ----------
    frames_dbm : ``[R, M, T]`` (or ``[M, T]``) dBm mel frames from ``features.mel_frames_dbm`` of IQ that
        the channelizer centred on the target frequency.
    spec : the FeatureSpec the frames were made with.
    channel_bandwidth_hz : occupied bandwidth (Hz); bands centred within +-half of it are in-channel.
    detection_snr_db : in-channel SNR (dB) at or above which a receiver counts as hearing.
    noise_max_offset_hz : only bands centred below this |offset| (Hz) estimate the noise (use it to skip
        bands in the channelizer's roll-off); default: all out-of-channel bands.
    active : ``[..., T]`` bool, the frames that carried the transmission (``DetectionRule.frame_activity``): signal and
        noise are averaged over those frames only, so a transmitter keyed for part of a window is measured at its
        on-air power. A window with no active frame, or ``None``, averages over every frame.

    Noise is assumed white across the window's bandwidth: its density is the out-of-channel band power
    divided by those bands' noise bandwidth; it is subtracted from the in-channel power (over the
    in-channel bands' own noise bandwidth) to leave the signal, and reported over ``channel_bandwidth_hz``.
    The arithmetic is ``FrameLevels.window_power`` over ``frame_levels``.
    """
    bands = channel_bands(spec, channel_bandwidth_hz, noise_max_offset_hz)
    top = np.inf if noise_max_offset_hz is None else float(noise_max_offset_hz)
    return frame_levels(frames_dbm, spec, bands, top).window_power(detection_snr_db, active)


@dataclass(frozen=True)
class FrameLevels:
    """The rule's levels of each frame of a window, from one conversion of its mel frames to mW. Arrays are
    ``[..., T]`` (the frames' leading axes, bands dropped).

    in_mw, noise_above_mw, noise_below_mw : power (mW) of the in-channel bands and of the noise bands above and below
        the channel, in each frame.
    bands : the band selection they were summed over; eps_mw : the FeatureSpec's floor added before a log (mW).
    """

    in_mw: np.ndarray
    noise_above_mw: np.ndarray
    noise_below_mw: np.ndarray
    bands: ChannelBands
    eps_mw: float

    @property
    def snr_db(self) -> np.ndarray:
        """In-channel SNR (dB) of each frame: signal = in-channel power minus the noise density from the out-of-channel
        bands times the in-channel bands' noise bandwidth; noise over the channel bandwidth (``channel_power``'s
        arithmetic, frame by frame, without ``eps_mw``)."""
        density_mw_hz = (self.noise_above_mw + self.noise_below_mw) / self.bands.noise_bandwidth_hz
        signal_mw = np.maximum(self.in_mw - density_mw_hz * self.bands.in_bandwidth_hz, _POWER_FLOOR_MW)
        noise_mw = np.maximum(density_mw_hz * self.bands.channel_bandwidth_hz, _POWER_FLOOR_MW)
        return 10.0 * np.log10(signal_mw / noise_mw)

    @property
    def noise_dbm(self) -> np.ndarray:
        """Noise (dBm over the channel bandwidth) of each frame: ``window_power``'s noise with the frame as a window
        of one."""
        out_mw = (self.noise_above_mw + self.eps_mw) + (self.noise_below_mw + self.eps_mw)
        return 10.0 * np.log10(np.maximum(out_mw / self.bands.noise_bandwidth_hz * self.bands.channel_bandwidth_hz,
                                          _POWER_FLOOR_MW))

    def window_power(self, detection_snr_db: float, active: np.ndarray | None = None) -> ChannelPower:
        """``ChannelPower`` of the window: the frames' powers averaged in mW (over the ``active`` frames only,
        ``[..., T]`` bool broadcast against the leading axes but the last; a row with none, or ``None``: every frame),
        ``eps_mw`` added to each band group's mean, then signal and noise as ``channel_power`` describes."""
        weights = None if active is None else _frame_weights(np.asarray(active, dtype=bool))
        in_mw = _frame_mean(self.in_mw, weights) + self.eps_mw
        out_mw = (_frame_mean(self.noise_above_mw, weights) + self.eps_mw) + (
            _frame_mean(self.noise_below_mw, weights) + self.eps_mw)
        density_mw_hz = out_mw / self.bands.noise_bandwidth_hz
        signal_mw = np.maximum(in_mw - density_mw_hz * self.bands.in_bandwidth_hz, _POWER_FLOOR_MW)
        noise_mw = np.maximum(density_mw_hz * self.bands.channel_bandwidth_hz, _POWER_FLOOR_MW)
        signal_dbm = 10.0 * np.log10(signal_mw)
        noise_dbm = 10.0 * np.log10(noise_mw)
        snr_db = signal_dbm - noise_dbm
        return ChannelPower(
            signal_dbm=signal_dbm,
            noise_dbm=noise_dbm,
            snr_db=snr_db,
            heard=snr_db >= detection_snr_db,
            detection_level_dbm=noise_dbm + detection_snr_db,
        )


def frame_levels(frames_dbm: np.ndarray, spec: FeatureSpec, bands: ChannelBands, noise_max_offset_hz: float
                 ) -> FrameLevels:
    """``[..., M, T]`` dBm mel frames made with ``spec`` -> their ``FrameLevels`` under ``bands`` (noise from bands
    centred within +-``noise_max_offset_hz``, Hz). Only the bands the rule reads are converted to mW, once (float64).
    Raises ``ValueError`` when the frames do not have ``spec.n_mels`` bands."""
    frames = np.asarray(frames_dbm)
    if frames.ndim < 2 or frames.shape[-2] != spec.n_mels:
        raise ValueError(f"detection rule: expected [..., {spec.n_mels}, T] mel frames, got shape {list(frames.shape)}")
    half_bw = 0.5 * bands.channel_bandwidth_hz
    groups = (bands_between(spec, -half_bw, half_bw), bands_between(spec, half_bw, noise_max_offset_hz),
              bands_between(spec, -noise_max_offset_hz, -half_bw))
    used = np.flatnonzero(groups[0] | groups[1] | groups[2])
    low, high = int(used[0]), int(used[-1]) + 1  # the groups are runs of neighbouring bands: one slice holds them
    linear = frames[..., low:high, :].astype(np.float64)
    linear *= _LN10_OVER_10
    np.exp(linear, out=linear)  # 10 ** (dBm / 10): numpy's exp is vectorised, its power is not (several times slower)
    in_mw, above_mw, below_mw = (_run_sum(linear, group[low:high]) for group in groups)
    return FrameLevels(in_mw, above_mw, below_mw, bands, float(spec.eps))


def _run_sum(linear: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Sum over the bands axis (-2) of ``linear`` of the bands ``group`` (bool) selects; a run of neighbours is read as
    a slice (no copy), anything else by index."""
    chosen = np.flatnonzero(group)
    if chosen.size == 0:
        return np.zeros(linear.shape[:-2] + linear.shape[-1:])
    if chosen[-1] - chosen[0] + 1 == chosen.size:
        return linear[..., chosen[0] : chosen[-1] + 1, :].sum(axis=-2)
    return linear[..., chosen, :].sum(axis=-2)


def _frame_mean(per_frame: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Mean over the frames axis (-1), weighted by ``weights`` (broadcast against ``per_frame``) when given."""
    if weights is None:
        return per_frame.mean(axis=-1)
    return (per_frame * weights).sum(axis=-1) / np.broadcast_to(weights, per_frame.shape).sum(axis=-1)


def _frame_weights(active: np.ndarray) -> np.ndarray:
    """``[..., T]`` active frames -> ``[..., 1, T]`` weights over a receiver axis; a row with no active frame weighs all."""
    none = ~active.any(axis=-1, keepdims=True)
    return (active | none)[..., None, :].astype(np.float64)


def frame_snr_db(frames_dbm: np.ndarray, spec: FeatureSpec, bands: ChannelBands, noise_max_offset_hz: float) -> np.ndarray:
    """In-channel SNR (dB) of each frame: ``[..., M, T]`` dBm mel frames -> ``[..., T]`` (``FrameLevels.snr_db``)."""
    return frame_levels(frames_dbm, spec, bands, noise_max_offset_hz).snr_db


@dataclass(frozen=True)
class Measurement:
    """What the rule makes of one window of ``[..., R, M, T]`` frames, from one conversion to mW.

    levels : each frame's ``FrameLevels`` (``[..., R, T]``). active : ``[..., T]`` bool, the frames that carried a
    transmission (``DetectionRule.frame_activity``). power : ``ChannelPower`` averaged over those frames
    (``DetectionRule.apply`` with ``active``).
    """

    levels: FrameLevels
    active: np.ndarray
    power: ChannelPower


# ----------------------------------------------------------------------------------------------------
# The rule's settings, in one place


#: Noise is estimated from bands centred within +-this share of the sample rate: the channelizer's anti-alias filter
#: rolls off near +-fs/2, so the rule reads noise inside 80 % of Nyquist.
NOISE_BAND_FRACTION = 0.4


@dataclass(frozen=True)
class DetectionRule:
    """``channel_power`` with its settings: what the daemon applies to every window and the trainer to every draw.

    channel_bandwidth_hz : occupied bandwidth (Hz); ``network.channel_bandwidth_hz`` of the config.
    snr_db : in-channel SNR (dB) at or above which a receiver hears; ``pipeline.detection_snr_db``.
    noise_band_fraction : noise comes from bands centred within +-this x the sample rate (``NOISE_BAND_FRACTION``).

    Examples
    --------
    >>> rule = DetectionRule(channel_bandwidth_hz=12_500.0, snr_db=6.0)
    >>> rule.noise_max_offset_hz(FeatureSpec(sample_rate_hz=24_000.0))
    9600.0
    """

    channel_bandwidth_hz: float
    snr_db: float
    noise_band_fraction: float = NOISE_BAND_FRACTION

    @classmethod
    def from_config(cls, config) -> DetectionRule:
        """The rule a ``streamer.config.Config`` sets (its ``network`` and ``pipeline`` sections)."""
        return cls(channel_bandwidth_hz=config.network.channel_bandwidth_hz, snr_db=config.pipeline.detection_snr_db)

    def noise_max_offset_hz(self, spec: FeatureSpec) -> float:
        """Largest |offset| (Hz) of a band that estimates the noise, at ``spec``'s sample rate."""
        return self.noise_band_fraction * spec.sample_rate_hz

    def bands(self, spec: FeatureSpec) -> ChannelBands:
        """``channel_bands`` of this rule at ``spec``."""
        return channel_bands(spec, self.channel_bandwidth_hz, self.noise_max_offset_hz(spec))

    def as_dict(self) -> dict:
        """The rule's settings, as a model's metadata records them (``detection``)."""
        return {"channel_bandwidth_hz": float(self.channel_bandwidth_hz), "snr_db": float(self.snr_db),
                "noise_band_fraction": float(self.noise_band_fraction)}

    def differences(self, other: DetectionRule) -> list[str]:
        """One ``key: self's value, other's value`` line per setting that differs (``[]``: the same rule)."""
        mine, theirs = self.as_dict(), other.as_dict()
        return [f"{key}: {mine[key]:g} against {theirs[key]:g}" for key in mine if mine[key] != theirs[key]]

    def frame_levels(self, frames_dbm: np.ndarray, spec: FeatureSpec) -> FrameLevels:
        """Each frame's levels (``FrameLevels``) of ``[..., M, T]`` dBm mel frames made with ``spec``, by this rule."""
        return frame_levels(frames_dbm, spec, self.bands(spec), self.noise_max_offset_hz(spec))

    def active_frames(self, snr_db: np.ndarray, present: np.ndarray | None = None) -> np.ndarray:
        """The rule's per-frame decision from per-frame SNRs: ``[..., R, T]`` dB (``FrameLevels.snr_db``; NaN: not
        heard) -> ``[..., T]`` bool, true where a ``present`` (``[..., R]`` bool; ``None``: all) receiver reaches the
        threshold."""
        loud = np.nan_to_num(np.asarray(snr_db), nan=-np.inf) >= self.snr_db
        if present is not None:
            loud &= np.asarray(present, dtype=bool)[..., None]
        return loud.any(axis=-2)

    def measure(self, frames_dbm: np.ndarray, spec: FeatureSpec, present: np.ndarray | None = None) -> Measurement:
        """``frame_activity`` and ``apply`` over those active frames, of ``[..., R, M, T]`` dBm mel frames, from one
        conversion to mW (``Measurement``)."""
        frames = np.asarray(frames_dbm)
        if frames.ndim < 3:
            raise ValueError(f"the detection rule needs [..., R, M, T] frames, got shape {list(frames.shape)}")
        levels = self.frame_levels(frames, spec)
        active = self.active_frames(levels.snr_db, present)
        return Measurement(levels, active, levels.window_power(self.snr_db, active))

    def frame_activity(self, frames_dbm: np.ndarray, spec: FeatureSpec, present: np.ndarray | None = None) -> np.ndarray:
        """Which frames of a window carried a transmission: ``[..., R, M, T]`` dBm mel frames -> ``[..., T]`` bool.

        A frame is active when any present receiver's in-channel SNR in that frame (``frame_snr_db``) reaches the
        rule's threshold: the same rule as ``heard``, applied frame by frame, so a transmitter keyed for part of a
        window is measured over the frames in which it was on. ``present`` (``[..., R]`` bool) leaves absent
        receivers' frames (zeros, NaN) out; ``None``: every receiver is present. (``measure(...).active``.)
        """
        frames = np.asarray(frames_dbm)
        if frames.ndim < 3:
            raise ValueError(f"frame_activity needs [..., R, M, T] frames, got shape {list(frames.shape)}")
        return self.active_frames(self.frame_levels(frames, spec).snr_db, present)

    def apply(self, frames_dbm: np.ndarray, spec: FeatureSpec, active: np.ndarray | None = None) -> ChannelPower:
        """``channel_power`` of ``[..., R, M, T]`` (or ``[M, T]``) dBm mel frames made with ``spec``, by this rule;
        ``active`` (``[..., T]`` bool, ``frame_activity``) averages over those frames only."""
        return self.frame_levels(frames_dbm, spec).window_power(self.snr_db, active)
