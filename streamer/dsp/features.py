"""Mel-spectrogram features: complex baseband in, dBm frames out.

This is the only feature implementation: the daemon, the trainer and the evaluator all call it.

Recipe, for one receiver's window of ``n_samples`` complex samples at ``sample_rate_hz``:

1. STFT with a periodic Hann window of ``n_fft`` points every ``hop`` samples, no padding, two-sided and
   fft-shifted (bin ``k`` of ``n_fft`` is at ``(k - n_fft/2) * fs / n_fft`` Hz, from -fs/2 to +fs/2).
2. Power per bin = |X|^2 / (n_fft * sum(w^2)). With this scaling the bins of one frame add up to the mean
   power of the windowed signal, in full-scale units (a full-scale complex tone is 1.0 = 0 dBFS), for a
   tone and for noise alike. Adding ``calibration_db`` turns dBFS into dBm at the antenna.
3. A symmetric mel filterbank: ``n_mels/2`` triangular bands on each side of the carrier, mel-spaced in
   |offset| from 0 to fs/2, HTK mel scale, unnormalised triangles (peak 1). The one-sided bands are
   exactly ``librosa.filters.mel(sr=fs, n_fft=n_fft, n_mels=n_mels/2, fmin=0, fmax=fs/2, htk=True,
   norm=None)``. Band order: index 0 is the farthest below the carrier, ``n_mels/2 - 1`` the nearest below,
   ``n_mels/2`` the nearest above, ``n_mels - 1`` the farthest above. Because neighbouring unnormalised
   triangles sum to 1, the band powers of a frame add up to the frame's power.
4. ``10*log10(power_mW + eps)`` = dBm; models apply their own affine normalisation on top
   (``normalise``), stored in the model's metadata.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class FeatureSpec:
    """Feature parameters; a model carries the ones it was trained with in its metadata."""

    sample_rate_hz: float = field(default=24_000.0, metadata={"doc": "model sample rate after the channelizer (Hz)"})
    n_fft: int = field(default=512, metadata={"doc": "STFT length (samples)"})
    hop: int = field(default=256, metadata={"doc": "STFT hop (samples)"})
    n_mels: int = field(default=32, metadata={"doc": "mel bands, half on each side of the carrier"})
    window_s: float = field(default=0.5, metadata={"doc": "analysis window length W (s)"})
    window: str = field(default="hann", metadata={"doc": "STFT window (only 'hann', periodic)"})
    mel_scale: str = field(default="htk", metadata={"doc": "mel scale (only 'htk')"})
    eps: float = field(default=1e-20, metadata={"doc": "floor added to power before log10 (mW)"})

    def __post_init__(self) -> None:
        # Checked first: a non-positive rate or window would otherwise surface as a misleading n_fft message.
        for name in ("sample_rate_hz", "window_s", "eps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"features.{name}: expected a positive number, got {value!r}")
        if self.window != "hann":
            raise ValueError(f"features.window: only 'hann' is supported, got {self.window!r}")
        if self.mel_scale != "htk":
            raise ValueError(f"features.mel_scale: only 'htk' is supported, got {self.mel_scale!r}")
        if self.n_mels < 2 or self.n_mels % 2:
            raise ValueError(f"features.n_mels: expected an even number >= 2, got {self.n_mels}")
        if self.n_fft < 16 or self.n_fft % 2 or not 0 < self.hop <= self.n_fft:
            raise ValueError(f"features: expected even n_fft >= 16 and 0 < hop <= n_fft, got {self.n_fft}, {self.hop}")
        if self.n_samples < self.n_fft:
            raise ValueError(f"features.window_s: {self.window_s} s holds fewer than n_fft={self.n_fft} samples")

    @property
    def n_samples(self) -> int:
        """Samples per window: W * fs."""
        return int(round(self.window_s * self.sample_rate_hz))

    @property
    def n_frames(self) -> int:
        """T = 1 + (W*fs - n_fft) // hop."""
        return 1 + (self.n_samples - self.n_fft) // self.hop

    def as_dict(self) -> dict:
        return {
            "sample_rate_hz": self.sample_rate_hz,
            "n_fft": self.n_fft,
            "hop": self.hop,
            "n_mels": self.n_mels,
            "window_s": self.window_s,
            "n_frames": self.n_frames,
            "window": self.window,
            "mel_scale": self.mel_scale,
            "eps": self.eps,
        }


@functools.lru_cache(maxsize=8)
def hann_periodic(n: int) -> np.ndarray:
    """Periodic Hann window of length n (the DFT-even form used for spectral analysis)."""
    k = np.arange(n)
    return (0.5 - 0.5 * np.cos(2 * np.pi * k / n)).astype(np.float64)


def stft_power(samples: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Power per bin in full-scale units, shape ``[..., T, n_fft]``, bins from -fs/2 to +fs/2.

    ``samples`` is ``[..., n]`` complex; frames that do not fit entirely are left out.
    """
    samples = np.asarray(samples)
    n = samples.shape[-1]
    n_frames = 1 + (n - spec.n_fft) // spec.hop
    if n_frames < 1:
        raise ValueError(f"stft_power: {n} samples are fewer than n_fft={spec.n_fft}")
    w = hann_periodic(spec.n_fft)
    frames = np.lib.stride_tricks.sliding_window_view(samples, spec.n_fft, axis=-1)[..., :: spec.hop, :][..., :n_frames, :]
    spectrum = np.fft.fftshift(np.fft.fft(frames * w.astype(np.float32), axis=-1), axes=-1)
    return (spectrum.real**2 + spectrum.imag**2) / (spec.n_fft * float(np.sum(w**2)))


def bin_frequencies_hz(spec: FeatureSpec) -> np.ndarray:
    """Offset from the carrier of each fft-shifted bin (Hz)."""
    return (np.arange(spec.n_fft) - spec.n_fft // 2) * spec.sample_rate_hz / spec.n_fft


def _hz_to_mel_htk(f_hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f_hz, dtype=np.float64) / 700.0)


def _mel_to_hz_htk(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=8)
def one_sided_mel(sample_rate_hz: float, n_fft: int, n_bands: int) -> np.ndarray:
    """``[n_bands, 1 + n_fft/2]`` HTK triangles over 0..fs/2, peak 1 (= librosa's ``htk=True, norm=None``)."""
    fft_freqs = np.arange(1 + n_fft // 2) * sample_rate_hz / n_fft
    mel_points = np.linspace(_hz_to_mel_htk(0.0), _hz_to_mel_htk(sample_rate_hz / 2), n_bands + 2)
    edges_hz = _mel_to_hz_htk(mel_points)
    spacing = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / spacing[:-1, None]
    upper = ramps[2:] / spacing[1:, None]
    return np.maximum(0.0, np.minimum(lower, upper))


@functools.lru_cache(maxsize=8)
def _mel_filterbank_cached(spec: FeatureSpec) -> np.ndarray:
    half = spec.n_mels // 2
    one = one_sided_mel(spec.sample_rate_hz, spec.n_fft, half)
    centre = spec.n_fft // 2
    bank = np.zeros((spec.n_mels, spec.n_fft))
    # Positive offsets: shifted bins centre .. n_fft-1 are rfft bins 0 .. n_fft/2-1.
    bank[half:, centre:] = one[:, : spec.n_fft - centre]
    # Negative offsets: shifted bin centre-k is rfft bin k (k = 1 .. n_fft/2); farthest band first.
    bank[:half, :centre] = one[::-1, centre:0:-1]
    bank.setflags(write=False)
    return bank


def mel_filterbank(spec: FeatureSpec) -> np.ndarray:
    """Symmetric mel filterbank ``[n_mels, n_fft]`` over fft-shifted bins (band order in the module doc)."""
    return _mel_filterbank_cached(spec)


def mel_power(samples: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Linear band power in full-scale units, ``[..., n_mels, T]``."""
    power = stft_power(samples, spec)
    return np.einsum("mk,...tk->...mt", mel_filterbank(spec), power)


def mel_frames_dbm(samples: np.ndarray, spec: FeatureSpec, calibration_db: float | np.ndarray = 0.0) -> np.ndarray:
    """dBm mel frames ``[..., n_mels, T]`` (float32); ``calibration_db`` broadcasts over leading axes."""
    cal = np.asarray(calibration_db, dtype=np.float64)[..., None, None]
    power_mw = mel_power(samples, spec) * 10.0 ** (cal / 10.0)
    return (10.0 * np.log10(power_mw + spec.eps)).astype(np.float32)


def band_power_dbm(frames_dbm: np.ndarray, spec: FeatureSpec, low_hz: float, high_hz: float) -> np.ndarray:
    """Mean power (dBm) over frames of the bands whose centres lie in [low_hz, high_hz) offset from the carrier.

    ``frames_dbm`` is ``[..., n_mels, T]``; returns ``[...]``.
    """
    linear = 10.0 ** (frames_dbm[..., bands_between(spec, low_hz, high_hz), :].astype(np.float64) / 10.0)
    return 10.0 * np.log10(linear.sum(axis=-2).mean(axis=-1) + spec.eps)


def bands_between(spec: FeatureSpec, low_hz: float, high_hz: float) -> np.ndarray:
    """``[n_mels]`` bool: the bands whose centres lie in [low_hz, high_hz) offset from the carrier."""
    centres = band_centres_hz(spec)
    return (centres >= low_hz) & (centres < high_hz)


@functools.lru_cache(maxsize=8)
def band_centres_hz(spec: FeatureSpec) -> np.ndarray:
    """Centre frequency offset of each mel band (Hz), in band order."""
    half = spec.n_mels // 2
    mel_points = np.linspace(0.0, _hz_to_mel_htk(spec.sample_rate_hz / 2), half + 2)
    centres = _mel_to_hz_htk(mel_points[1:-1])
    return np.concatenate([-centres[::-1], centres])


def normalise(frames_dbm: np.ndarray, offset_db: float, scale_db: float) -> np.ndarray:
    """The model's affine normalisation: (dBm - offset) / scale, float32."""
    return ((frames_dbm - offset_db) / scale_db).astype(np.float32)
