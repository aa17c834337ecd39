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

How ``mel_frames_dbm`` computes it: a chunk of frames at a time (``CHUNK_BYTES``), window, a single-thread
FFT in place (``streamer.dsp.frame_fft``: ``scipy.fft``, or FFTW where ``pipeline.fft`` asks for it), squares
in place, and the mel projection as a few BLAS matmuls on the unshifted bins, the bank cut into blocks of
neighbouring bands (``_projection``) with the power scaling folded in. complex64 samples (the daemon's and the
trainer's) are computed in single precision, complex128 in double. Single precision matches a double-precision
transform to well under 1e-3 dB except in bands 60 dB or more below their frame's strongest band, where the FFT's
rounding shows (up to about 1e-2 dB).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import scipy.fft

from streamer.dsp.frame_fft import DEFAULT_BACKEND, frame_fft


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
    window = (0.5 - 0.5 * np.cos(2 * np.pi * k / n)).astype(np.float64)
    window.setflags(write=False)
    return window


def _work_dtype(samples: np.ndarray) -> np.dtype:
    """The complex type the STFT runs in: complex64 for complex64 (and float32, int16 ...) samples, complex128
    for complex128 or float64 ones: the same promotion as ``samples * float32 window``."""
    work = np.result_type(samples.dtype, np.complex64)
    return work if work in (np.complex64, np.complex128) else np.dtype(np.complex128)


@functools.lru_cache(maxsize=16)
def _window(n_fft: int, dtype: np.dtype) -> np.ndarray:
    # The float32 window is what the single-precision path multiplies by (as numpy's ``frames * w32`` did).
    window = hann_periodic(n_fft).astype(np.float32).astype(dtype)
    window.setflags(write=False)
    return window


def _frames(samples: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Read-only strided view ``[..., T, n_fft]`` of the frames that fit entirely."""
    n = samples.shape[-1]
    n_frames = 1 + (n - spec.n_fft) // spec.hop
    if n_frames < 1:
        raise ValueError(f"stft_power: {n} samples are fewer than n_fft={spec.n_fft}")
    return np.lib.stride_tricks.sliding_window_view(samples, spec.n_fft, axis=-1)[..., :: spec.hop, :][..., :n_frames, :]


def _power_scale(spec: FeatureSpec) -> float:
    """1 / (n_fft * sum(w^2)): the Parseval scaling of step 2 in the module doc."""
    return 1.0 / (spec.n_fft * float(np.sum(hann_periodic(spec.n_fft) ** 2)))


def stft_power(samples: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Power per bin in full-scale units, shape ``[..., T, n_fft]``, bins from -fs/2 to +fs/2.

    ``samples`` is ``[..., n]`` complex; frames that do not fit entirely are left out. float32 for complex64
    samples, float64 for complex128 ones.
    """
    samples = np.asarray(samples)
    work = _work_dtype(samples)
    frames = _frames(samples, spec) * _window(spec.n_fft, np.finfo(work).dtype)
    spectrum = np.fft.fftshift(scipy.fft.fft(frames, axis=-1, workers=1, overwrite_x=True), axes=-1)
    return (spectrum.real**2 + spectrum.imag**2) * _power_scale(spec)


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


#: What one matmul call costs beside its multiply-adds, in multiply-adds per frame; it sets how finely
#: ``_projection`` splits the filterbank into blocks.
CALL_COST = 256


@functools.lru_cache(maxsize=16)
def _projection(spec: FeatureSpec, dtype: np.dtype) -> tuple[tuple[int, int, int, int, np.ndarray], ...]:
    """The mel filterbank on the unshifted FFT bins, with the power scaling folded in, as dense blocks.

    Each ``(lo, hi, m0, m1, block)`` says: bands ``m0:m1`` take their power from bins ``lo:hi`` only, with
    ``block`` ``[2 * (hi - lo), m1 - m0]`` weighting the squared real and imaginary parts of those bins (the
    float view of a spectrum, interleaved, so each bin's weight appears twice). A band's triangle covers a
    few neighbouring bins, so blocks of neighbouring bands skip the zeros a dense ``[n_fft, n_mels]`` product
    would multiply; the split (by dynamic programming over the band order) weighs the products a block costs
    against ``CALL_COST`` per block. Every weight of the dense bank is in exactly one block.
    """
    bank = np.fft.ifftshift(mel_filterbank(spec), axes=-1) * _power_scale(spec)  # [n_mels, n_fft]
    n_mels = spec.n_mels
    support = [np.flatnonzero(row) for row in bank]
    first = [int(s[0]) if s.size else n_mels * spec.n_fft for s in support]  # an empty band widens nothing
    last = [int(s[-1]) + 1 if s.size else -1 for s in support]

    def span(m0: int, m1: int) -> tuple[int, int]:
        lo, hi = min(first[m0:m1]), max(last[m0:m1])
        return (lo, hi) if lo < hi else (0, 1)

    best = [0.0] + [math.inf] * n_mels  # best[m]: cost of bands 0:m
    cut = [0] * (n_mels + 1)
    for m1 in range(1, n_mels + 1):
        lo, hi = first[m1 - 1], last[m1 - 1]
        for m0 in range(m1 - 1, -1, -1):
            lo, hi = min(lo, first[m0]), max(hi, last[m0])
            cost = best[m0] + CALL_COST + 2 * max(hi - lo, 1) * (m1 - m0)
            if cost < best[m1]:
                best[m1], cut[m1] = cost, m0
    blocks = []
    m1 = n_mels
    while m1 > 0:
        m0 = cut[m1]
        lo, hi = span(m0, m1)
        block = np.repeat(bank[m0:m1, lo:hi].T, 2, axis=0).astype(dtype)
        block.setflags(write=False)
        blocks.append((lo, hi, m0, m1, block))
        m1 = m0
    return tuple(reversed(blocks))


#: Bytes of complex frames transformed per step: enough frames that numpy's and BLAS's per-call costs vanish,
#: few enough that the buffer stays in a core's cache between the window, the FFT, the squares and the matmuls.
CHUNK_BYTES = 1 << 20


def _mel_power_rows(rows: np.ndarray, spec: FeatureSpec, work: np.dtype, fft_backend: str) -> np.ndarray:
    """Band power ``[L, T, n_mels]`` of ``rows`` ``[L, n]`` (of dtype ``work``, samples contiguous), in ``work``'s
    real type: frames windowed, transformed, squared and projected a chunk at a time."""
    real = np.finfo(work).dtype
    frames = _frames(rows, spec)  # [L, T, n_fft], a view
    n_rows, n_frames, n_fft = frames.shape
    window2 = np.repeat(_window(n_fft, real), 2)  # each weight for the real and the imaginary part
    blocks = _projection(spec, real)
    out = np.empty((n_rows, n_frames, spec.n_mels), real)
    if out.size == 0:
        return out
    flat_out = out.reshape(n_rows * n_frames, spec.n_mels)
    step = max(1, CHUNK_BYTES // (n_fft * work.itemsize))  # frames per step
    transform = frame_fft(n_fft, work, fft_backend)
    buffer = transform.empty(min(step, n_rows * n_frames))
    # Whole rows per step while a row fits in one (as many per step as the fewest steps need); otherwise each
    # row in runs of ``step`` frames.
    rows_per_step = max(1, step // n_frames)
    rows_per_step = -(-n_rows // -(-n_rows // rows_per_step))
    for r0 in range(0, n_rows, rows_per_step):
        r1 = min(n_rows, r0 + rows_per_step)
        for t0 in range(0, n_frames, step):
            t1 = min(n_frames, t0 + step)
            k = (r1 - r0) * (t1 - t0)
            chunk = buffer[:k]
            # On the float views (re, im interleaved) the window is a real multiply with no casting.
            np.multiply(frames[r0:r1, t0:t1].view(real), window2, out=chunk.view(real).reshape(r1 - r0, t1 - t0, 2 * n_fft))
            spectrum = transform.forward(chunk)
            squares = spectrum.view(real)  # [k, 2 * n_fft]: re, im, re, im, ...
            np.square(squares, out=squares)
            # Whole rows: their frames are consecutive in ``out``; part of one row: that row's run of frames.
            target = flat_out[r0 * n_frames : r1 * n_frames] if t1 - t0 == n_frames else out[r0, t0:t1]
            for lo, hi, m0, m1, block in blocks:
                np.matmul(squares[:, 2 * lo : 2 * hi], block, out=target[:, m0:m1])
    return out


def mel_power(samples: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Linear band power in full-scale units, ``[..., n_mels, T]``, float64."""
    return _mel_power(np.asarray(samples), spec).astype(np.float64)


def _mel_power(samples: np.ndarray, spec: FeatureSpec, fft_backend: str = DEFAULT_BACKEND) -> np.ndarray:
    """``mel_power`` in the working precision (float32 for complex64 samples, float64 for complex128)."""
    work = _work_dtype(samples)
    lead, n = samples.shape[:-1], samples.shape[-1]
    rows = samples.reshape(-1, n)
    if rows.dtype != work or rows.strides[-1] != work.itemsize:  # real or strided input: complex, contiguous
        rows = np.ascontiguousarray(rows, dtype=work)
    power = _mel_power_rows(rows, spec, work, fft_backend)  # [L, T, M]
    return np.swapaxes(power, -1, -2).reshape(*lead, spec.n_mels, power.shape[1])


def mel_frames_dbm(samples: np.ndarray, spec: FeatureSpec, calibration_db: float | np.ndarray = 0.0, *,
                   fft_backend: str = DEFAULT_BACKEND) -> np.ndarray:
    """dBm mel frames ``[..., n_mels, T]`` (float32); ``calibration_db`` broadcasts over leading axes.

    ``fft_backend``: ``"scipy"`` or ``"fftw"`` (``streamer.dsp.frame_fft``, the daemon's ``pipeline.fft``); both
    give the same frames to single-precision rounding.

    complex64 samples are transformed and projected in single precision, complex128 ones in double; the
    dB values are the same to well within 1e-3 dB either way, except for bands that lie near single
    precision's rounding floor (about 140 dB below the strongest bin of a frame).
    """
    power = _mel_power(np.asarray(samples), spec, fft_backend)
    gain = 10.0 ** (np.asarray(calibration_db, dtype=np.float64)[..., None, None] / 10.0)
    power_mw = power * gain.astype(power.dtype)
    power_mw += power.dtype.type(spec.eps)
    np.log10(power_mw, out=power_mw)
    power_mw *= 10.0
    return power_mw.astype(np.float32, copy=False)


def band_power_dbm(frames_dbm: np.ndarray, spec: FeatureSpec, low_hz: float, high_hz: float,
                   frame_weights: np.ndarray | None = None) -> np.ndarray:
    """Mean power (dBm) over frames of the bands whose centres lie in [low_hz, high_hz) offset from the carrier.

    ``frames_dbm`` is ``[..., n_mels, T]``; returns ``[...]``. ``frame_weights`` (``[..., T]``, broadcast against
    the frames' leading axes; each row summing to more than 0) averages over some frames only: 1 for a frame
    that counts, 0 for one that does not. ``None``: every frame counts.
    """
    per_frame = band_frame_power_mw(frames_dbm, spec, low_hz, high_hz)
    if frame_weights is None:
        mean = per_frame.mean(axis=-1)
    else:
        weights = np.asarray(frame_weights, dtype=np.float64)
        mean = (per_frame * weights).sum(axis=-1) / np.broadcast_to(weights, per_frame.shape).sum(axis=-1)
    return 10.0 * np.log10(mean + spec.eps)


def band_frame_power_mw(frames_dbm: np.ndarray, spec: FeatureSpec, low_hz: float, high_hz: float) -> np.ndarray:
    """Power (mW) in each frame of the bands whose centres lie in [low_hz, high_hz): ``[..., n_mels, T]`` -> ``[..., T]``."""
    linear = 10.0 ** (frames_dbm[..., bands_between(spec, low_hz, high_hz), :].astype(np.float64) / 10.0)
    return linear.sum(axis=-2)


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
