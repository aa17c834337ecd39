"""Channelizer: shift the target frequency to 0 Hz and resample to the model rate, one receiver at a time.

A stateful stage in GNU Radio's ``work()`` shape without a scheduler: ``Channelizer.process(block)`` takes
one input ``IQBlock`` and returns the output samples that became ready, or ``None``.

What it computes (the whole-signal reference is what a test compares the stream against)::

    mixed[n] = x[n] * exp(-j*2*pi*(target_freq - center_freq) * n / in_rate)     n = absolute sample_index
    D1       = channelizer.decimation1                                            cascade_decimation(up, down)
    y        = resample_poly(mixed, up, down, window=channelizer.taps)                                  D1 == 1
    y        = resample_poly(resample_poly(mixed, 1, D1, window=channelizer.taps1),
                             up, down // D1, window=channelizer.taps)                                    D1 > 1

- ``up/down`` is the exact ratio ``out_rate/in_rate`` in lowest terms (a rate pair without a small rational
  ratio is refused: a ratio that is only approximately right would make the output clock drift against
  ``out_rate``, and the ring buffer's time would drift with it for as long as the stream runs).
- What one rate may cost is bounded (``check_tunable``): the input rate lies in
  ``[out_rate/MAX_UPSAMPLING, MAX_SAMPLE_RATE_HZ]`` and the polyphase filter bank holds at most
  ``MAX_BANK_COEFFS`` coefficients. A rate pair beyond that is refused before any filter is designed, so a
  block that declares an awkward rate (e.g. 23997.6 Hz -> 24 kHz, 10000/9999) costs nothing.
- ``taps`` is the low-pass that ``resample_poly`` designs by default for its stage: ``firwin(2*half_len + 1,
  1/max(up, d), window=("kaiser", 5.0))`` with ``d = down // D1`` and ``half_len = 10*max(up, d)`` for the
  default ``taps_per_phase=20``. With ``D1 == 1`` (small decimations such as 48 k, 240 k or 250 kS/s ->
  24 kS/s, and upsampling) that is the whole filter, and the path is the single-stage one bit for bit.
- Large decimations (2.4 MS/s: ``D1 = 10``; 10 MS/s: ``D1 = 50``) run as a cascade: a first stage mixes and
  decimates by ``D1`` with ``taps1`` (``design_stage1_taps``: flat to within ``10**(-STAGE1_ATTENUATION_DB/20)``
  up to ``STAGE1_PASS_FRACTION*out_rate`` Hz, and ``STAGE1_ATTENUATION_DB`` down on every band the decimation
  folds onto that), then ``taps`` resamples ``up/(down // D1)``. The cascade keeps the single-stage
  filter's passband and alias rejection (both within that first-stage ripple) at a fraction of its cost:
  ``taps`` is ``D1`` times shorter and runs at ``1/D1`` of the input rate.
- The mixer's phase comes from the absolute input index, so it is continuous across blocks and across a
  ``reset()`` (and two receivers fed the same index see the same oscillator).
- Alignment is resample_poly's: output ``j`` (counted from 0 since the last reset) sits at input position
  ``j*down/up`` counted from the first input sample since the reset; the filters' group delay is compensated
  (both are odd-length and linear-phase, so the cascade's stage-1 output ``m`` sits at input ``m*D1``).
  Samples before that first one are taken as zero, as resample_poly pads. Output ``j`` is emitted as soon as
  the last input sample it depends on has arrived; the history it still needs is carried to the next block,
  so block boundaries leave no trace in the output.

Gaps are the caller's business: ``process`` refuses a block that does not follow the previous one (an index
jump, or a ``DISCONTINUITY``/``RETUNE`` flag) and says so; the caller counts the gap and calls ``reset()``
(``follows(block)`` tells it beforehand).

Examples
--------
>>> import numpy as np
>>> from receivers.base import IQBlock
>>> ch = Channelizer(in_rate_hz=240_000.0, center_freq_hz=145.0e6, target_freq_hz=145.025e6, out_rate_hz=24_000.0)
>>> ch.up, ch.down
(1, 10)
>>> block = IQBlock("rx1", np.ones(2400, np.complex64), sample_index=0, t0_ns=10**18, time_source="gps",
...                 sample_rate=240_000.0, center_freq=145.0e6)
>>> out = ch.process(block)
>>> out.sample_rate, out.center_freq, out.sample_index, len(out.samples), out.t0_ns == 10**18
(24000.0, 145025000.0, 0, 230, True)
>>> ch.samples_in - ch.input_samples_represented(ch.samples_out)   # input held back for the filter's tail
100
"""

from __future__ import annotations

import cmath
import math
from fractions import Fraction

import numpy as np
from scipy.signal import firwin, kaiser_beta

from receivers.base import MAX_SAMPLE_RATE_HZ, Flags, IQBlock

#: Largest ``up`` or ``down`` accepted: the filter is about ``20*max(up, down)`` taps long.
MAX_UP_DOWN = 10_000
#: Largest ``out_rate/in_rate``: a slower input holds too little band for the model, and each input sample
#: would cost this many outputs (so a block's output size is at most this many times its own).
MAX_UPSAMPLING = 4
#: Largest polyphase filter bank (float32 coefficients, 8 MiB): ``up`` branches of ``down``-padded length, so
#: ratios near 1 with large terms (10000/9999) would cost ``up*down`` coefficients; real ones cost < 300 000.
MAX_BANK_COEFFS = 1 << 21
#: Relative mismatch between ``up/down`` and ``out_rate/in_rate`` that still counts as exact (float rounding).
RATIO_TOLERANCE = 1e-12
#: Smallest first-stage decimation worth a cascade; below it one stage is cheaper (see ``cascade_decimation``).
CASCADE_MIN_DECIMATION = 8
#: The cascade's intermediate rate is at least this many times the output rate (``out_rate_hz``).
CASCADE_MIN_OVERSAMPLING = 8
#: First stage's passband edge, as a fraction of the output rate (Hz/Hz): beyond the final filter's
#: transition band (it is down by its full stopband at ``0.58*out_rate``), so the cascade's passband and
#: transition are the final filter's.
STAGE1_PASS_FRACTION = 0.75
#: First stage's Kaiser design attenuation (dB), in its stopband (the bands that alias onto the passband of the
#: final stage) and as its passband ripple (``10**(-dB/20)``).
STAGE1_ATTENUATION_DB = 65.0
#: Flags after which filter state must not be carried across: the samples before and after do not join up.
NEEDS_RESET = Flags.DISCONTINUITY | Flags.RETUNE
# Large blocks are worked through in pieces of this many input samples: every intermediate then stays in
# the CPU cache.
_WORK_CHUNK = 16384
# The cascade's first stage keeps only its input in cache (its products are 1/decimation as long).
_STAGE1_CHUNK = 4 * _WORK_CHUNK
# Length of the precomputed oscillator table; longer inputs are covered chunk by chunk (see Mixer.mix).
_MIX_CHUNK = _WORK_CHUNK


def rational_ratio(in_rate_hz: float, out_rate_hz: float, max_up_down: int = MAX_UP_DOWN) -> tuple[int, int]:
    """``(up, down)`` in lowest terms with ``up/down == out_rate_hz/in_rate_hz``; ValueError naming the rates if none.

    Examples
    --------
    >>> rational_ratio(2.048e6, 24_000.0)
    (3, 256)
    >>> rational_ratio(2.4e6, 24_001.0)
    Traceback (most recent call last):
    ...
    ValueError: channelizer: out_rate_hz=24001.0 / in_rate_hz=2400000.0 is not a ratio up/down of integers <= 10000 (closest 1/100 is off by 4.2e-05 relative); choose rates whose ratio is a small fraction
    """
    exact = Fraction(out_rate_hz) / Fraction(in_rate_hz)
    approx = exact.limit_denominator(max_up_down)
    error = abs(float((approx - exact) / exact))
    if approx.numerator == 0 or approx.numerator > max_up_down or error > RATIO_TOLERANCE:
        raise ValueError(
            f"channelizer: out_rate_hz={out_rate_hz} / in_rate_hz={in_rate_hz} is not a ratio up/down of integers"
            f" <= {max_up_down} (closest {approx.numerator}/{approx.denominator} is off by {error:.2g} relative);"
            " choose rates whose ratio is a small fraction"
        )
    return approx.numerator, approx.denominator


def tap_count(up: int, down: int, taps_per_phase: int = 20) -> int:
    """Length of ``design_taps(up, down, taps_per_phase)`` without designing it."""
    if up == down == 1:
        return 1
    return 2 * (taps_per_phase * max(up, down) // 2) + 1


def bank_size(up: int, down: int, n_taps: int) -> int:
    """Coefficients in the polyphase bank of ``PolyphaseResampler(up, down, taps)`` for ``n_taps`` taps."""
    branch_len = -(-n_taps // up)
    return up * (-(-branch_len // down)) * down


def check_tunable(in_rate_hz: float, center_freq_hz: float, target_freq_hz: float, out_rate_hz: float,
                  max_up_down: int = MAX_UP_DOWN, taps_per_phase: int = 20) -> tuple[int, int]:
    """The rule a ``Channelizer`` applies: ``(up, down)``, or ValueError saying why the band cannot be channelized.

    Rates (Hz) must be positive and finite, the input rate within ``[out_rate_hz / MAX_UPSAMPLING,
    MAX_SAMPLE_RATE_HZ]``, the target within ``center_freq_hz ± in_rate_hz/2`` (Hz), ``out_rate_hz/in_rate_hz``
    a small fraction (``rational_ratio``), and its polyphase filter bank at most ``MAX_BANK_COEFFS``
    coefficients; nothing is designed before all of that holds. ``heimdall check`` applies it to receivers
    whose config fixes their band.

    Examples
    --------
    >>> check_tunable(2.4e6, 145.45e6, 145.5e6, 24_000.0)
    (1, 100)
    >>> check_tunable(48_000.0, 145.45e6, 145.5e6, 24_000.0)
    Traceback (most recent call last):
    ...
    ValueError: channelizer: target_freq_hz=145500000.0 is outside the band received around center_freq_hz=145450000.0 at in_rate_hz=48000.0 (±24000.0 Hz)
    """
    for name, rate in (("in_rate_hz", in_rate_hz), ("out_rate_hz", out_rate_hz)):
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"channelizer: {name} must be a positive number of Hz, got {rate!r}")
    if not out_rate_hz / MAX_UPSAMPLING <= in_rate_hz <= MAX_SAMPLE_RATE_HZ:
        raise ValueError(
            f"channelizer: in_rate_hz={in_rate_hz} is outside [{out_rate_hz / MAX_UPSAMPLING}, {MAX_SAMPLE_RATE_HZ}]"
            f" Hz (out_rate_hz / MAX_UPSAMPLING={MAX_UPSAMPLING} up to MAX_SAMPLE_RATE_HZ)"
        )
    if not abs(target_freq_hz - center_freq_hz) <= in_rate_hz / 2:
        raise ValueError(
            f"channelizer: target_freq_hz={target_freq_hz} is outside the band received around"
            f" center_freq_hz={center_freq_hz} at in_rate_hz={in_rate_hz} (±{in_rate_hz / 2} Hz)"
        )
    if isinstance(taps_per_phase, bool) or not isinstance(taps_per_phase, int) or taps_per_phase < 2:
        raise ValueError(f"channelizer: taps_per_phase must be an integer >= 2, got {taps_per_phase!r}")
    up, down = rational_ratio(in_rate_hz, out_rate_hz, max_up_down)
    coeffs = bank_size(up, down, tap_count(up, down, taps_per_phase))
    if coeffs > MAX_BANK_COEFFS:
        raise ValueError(
            f"channelizer: out_rate_hz={out_rate_hz} / in_rate_hz={in_rate_hz} = {up}/{down} needs a filter bank of"
            f" {coeffs} coefficients, more than MAX_BANK_COEFFS={MAX_BANK_COEFFS}; choose rates whose ratio is a"
            " small fraction"
        )
    return up, down


def design_taps(up: int, down: int, taps_per_phase: int = 20) -> np.ndarray:
    """Anti-alias low-pass designed as ``resample_poly`` does by default (not yet multiplied by ``up``).

    ``firwin(2*half_len + 1, 1/max(up, down), window=("kaiser", 5.0))`` with
    ``half_len = taps_per_phase*max(up, down)//2``: cutoff at the lower of the two Nyquist frequencies, and a
    sinc that spans ``taps_per_phase`` of its zero crossings. ``up == down == 1`` needs no filter: ``[1.0]``.
    """
    if up == down == 1:
        return np.ones(1)
    max_rate = max(up, down)
    half_len = taps_per_phase * max_rate // 2
    return firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0))


def cascade_decimation(up: int, down: int) -> int:
    """First-stage decimation ``D1`` of the channelizer's cascade for ratio ``up/down``, or 1 for a single stage.

    ``D1`` is the largest divisor of ``down`` with ``D1 >= CASCADE_MIN_DECIMATION`` that leaves the
    intermediate rate ``in_rate/D1`` at least ``CASCADE_MIN_OVERSAMPLING`` times the output rate
    (``down/D1 >= CASCADE_MIN_OVERSAMPLING*up``); 1 when there is none (small decimations, upsampling).

    Examples
    --------
    >>> cascade_decimation(1, 100), cascade_decimation(3, 256), cascade_decimation(3, 1250)
    (10, 8, 50)
    >>> cascade_decimation(1, 2), cascade_decimation(1, 10), cascade_decimation(12, 125)
    (1, 1, 1)
    """
    best = 1
    for d1 in range(CASCADE_MIN_DECIMATION, down // (CASCADE_MIN_OVERSAMPLING * up) + 1):
        if down % d1 == 0:
            best = d1
    return best


def design_stage1_taps(up: int, down: int, decimation: int) -> np.ndarray:
    """First-stage low-pass of the cascade (float64, odd length ``B*decimation - 1`` or ``- 2``, unit gain at 0 Hz).

    At the input rate ``fs``: passband ``|f| <= p`` with ``p = STAGE1_PASS_FRACTION * fs*up/down`` (a fraction
    of the output rate), stopband ``|f| >= fs/decimation - p`` (everything that the decimation folds onto the
    passband), i.e. ``firwin(N, 1/decimation, window=("kaiser", kaiser_beta(STAGE1_ATTENUATION_DB)))`` with the
    transition width ``w = 2/decimation - 4*p/fs`` (Nyquist units) and ``N`` the largest odd number
    ``<= B*decimation - 1`` for the smallest ``B >= 2`` whose Kaiser estimate ``2.285*(N - 1)*pi*w + 7.95``
    (``kaiserord``) reaches ``STAGE1_ATTENUATION_DB``.
    """
    pass_nyq = 2 * STAGE1_PASS_FRACTION * up / down  # p in units of fs/2
    width = 2.0 / decimation - 2 * pass_nyq
    needed = (STAGE1_ATTENUATION_DB - 7.95) / (2.285 * np.pi * width) + 1  # scipy.signal.kaiserord's estimate
    blocks = max(2, math.ceil((needed + 1) / decimation))
    n_taps = blocks * decimation - 1
    n_taps -= 1 - n_taps % 2  # odd: the centre tap is a whole input sample, so output m sits at input m*decimation
    return firwin(n_taps, 1.0 / decimation, window=("kaiser", kaiser_beta(STAGE1_ATTENUATION_DB)))


class Mixer:
    """Multiplies by ``exp(-j*2*pi*offset_hz*n/sample_rate_hz)`` with ``n`` the absolute sample index.

    With ``step`` k > 1 the samples given to ``mix`` are every k-th one (absolute indices ``first_index``,
    ``first_index + k``, ...): the oscillator of a stage that decimates by k, still at ``sample_rate_hz``'s
    index. The phase at a block's first sample is computed exactly (rational arithmetic on the float inputs), so it
    does not degrade after days of samples; within a block a precomputed table is rotated chunk by chunk,
    which costs one complex multiply per sample instead of a complex exponential.
    """

    def __init__(self, offset_hz: float, sample_rate_hz: float, step: int = 1) -> None:
        cycles_per_sample = Fraction(offset_hz) / Fraction(sample_rate_hz)
        self._num = cycles_per_sample.numerator
        self._den = cycles_per_sample.denominator
        # An integer number of cycles per sample is the identity (0 Hz offset, or exactly a multiple of fs).
        self.is_identity = self._den == 1
        cycles_per_step = cycles_per_sample * int(step)
        nu = float(cycles_per_step)
        self._table = np.exp(-2j * np.pi * nu * np.arange(_MIX_CHUNK)).astype(np.complex64)
        self._chunk_cycles = float((cycles_per_step * _MIX_CHUNK) % 1)

    def phase_cycles(self, index: int) -> float:
        """Oscillator phase at absolute sample ``index``, in cycles in [0, 1)."""
        return (self._num * int(index) % self._den) / self._den

    def mix(self, samples: np.ndarray, first_index: int) -> np.ndarray:
        """Mixed copy of ``samples`` (complex64); ``first_index`` is the absolute index of ``samples[0]``.

        Sample ``k`` is taken to sit at absolute index ``first_index + k*step``.
        """
        samples = np.asarray(samples, dtype=np.complex64)
        n = len(samples)
        if self.is_identity or n == 0:
            return samples.copy()
        if n <= _MIX_CHUNK:  # the common case: one rotation of the table
            rotation = np.complex64(cmath.exp(-2j * cmath.pi * self.phase_cycles(first_index)))
            return samples * (self._table[:n] * rotation)
        n_chunks = -(-n // _MIX_CHUNK)
        starts = (self.phase_cycles(first_index) + np.arange(n_chunks) * self._chunk_cycles) % 1.0
        rotations = np.exp(-2j * np.pi * starts).astype(np.complex64)
        oscillator = (rotations[:, None] * self._table[None, :]).ravel()[:n]
        return samples * oscillator


def polyphase_branches(up: int, down: int, taps: np.ndarray) -> tuple[int, int, np.ndarray]:
    """``resample_poly(.., up, down, window=taps)``'s polyphase branches laid out for ``PolyphaseResampler``:
    ``(half_len, span, branches)``, with ``half_len`` the filter's centre (input samples at the up-sampled rate),
    ``span`` the inputs each output reads (padded to a multiple of ``down``) and ``branches`` float32
    ``[up, span // down, down]``: branch p reversed and front-padded, so that window element m' =
    x[newest - span + 1 + m'] meets its tap."""
    taps = np.asarray(taps, dtype=np.float64)
    half_len = (len(taps) - 1) // 2
    span = bank_size(up, down, len(taps)) // up
    bank = np.zeros((up, span), dtype=np.float32)
    for p in range(up):
        branch = taps[p::up] * up
        bank[p, span - len(branch) :] = branch[::-1]
    return half_len, span, bank.reshape(up, span // down, down)


class PolyphaseResampler:
    """Streaming ``resample_poly(x, up, down, window=taps)``: push input, get the outputs that became ready.

    Output ``j`` is ``sum_k up*taps[j*down + half_len - k*up] * x[k]``. Writing ``t = j*down + half_len``,
    its newest input is ``x[t // up]`` and it uses the polyphase branch ``taps[t % up :: up]``; outputs
    ``j`` of one residue ``j % up`` share a branch and step ``down`` inputs apart. Each residue is then a
    decimate-by-``down`` FIR, computed without copying windows: the input span is reshaped to
    ``[rows, down]`` and one matrix product with the branch (reshaped to ``[D, down]``) gives partial sums
    whose ``D`` diagonals add up to the outputs. Cost: one BLAS call per residue per push, about
    ``len(taps)/up`` real multiply-adds per output and component.
    """

    def __init__(self, up: int, down: int, taps: np.ndarray) -> None:
        self.up, self.down = int(up), int(down)
        self.half_len, self._span, self._bank = polyphase_branches(self.up, self.down, taps)
        self._blocks = self._span // self.down  # D: the branch padded to a multiple of `down`
        self._identity = self.up == self.down == 1 and self._bank.shape == (1, 1, 1) and self._bank[0, 0, 0] == 1.0
        self.reset()

    def reset(self) -> None:
        """Forget all input: the next sample pushed is input 0, preceded by zeros."""
        self.samples_in = 0
        self.samples_out = 0
        # Float32 [real; imag] rows, so each component is one plain BLAS product; column 0 is input _hist_start.
        self._hist_start = min(0, self._newest_input(0) - self._span + 1)
        self._hist = np.zeros((2, -self._hist_start), dtype=np.float32)

    def _newest_input(self, j: int) -> int:
        return (j * self.down + self.half_len) // self.up

    def ready(self, samples_in: int) -> int:
        """Outputs computable from the first ``samples_in`` inputs (those whose newest input has arrived)."""
        return max(0, (self.up * samples_in - self.half_len - 1) // self.down + 1)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Append complex input; return the complex64 outputs that became ready (possibly none)."""
        n = len(samples)
        if self._identity:  # 1:1 with the one-tap filter [1.0] (an edge's channelized stream): the product's result
            self.samples_in += n
            self.samples_out += n
            return np.array(samples, dtype=np.complex64)
        if n:
            grown = np.empty((2, self._hist.shape[1] + n), dtype=np.float32)
            grown[:, : self._hist.shape[1]] = self._hist
            grown[0, self._hist.shape[1] :] = samples.real
            grown[1, self._hist.shape[1] :] = samples.imag
            self._hist = grown
            self.samples_in += n
        j0, j1 = self.samples_out, self.ready(self.samples_in)
        out = np.empty(max(0, j1 - j0), dtype=np.complex64)
        for r in range(min(self.up, len(out))):
            self._fill_residue(out, j0 + r, j1)
        self.samples_out = max(j0, j1)
        self._trim()
        return out

    def _fill_residue(self, out: np.ndarray, j_first: int, j_end: int) -> None:
        """Outputs ``j_first, j_first + up, ... < j_end`` into ``out[j_first - samples_out :: up]``."""
        count = -(-(j_end - j_first) // self.up)
        t = j_first * self.down + self.half_len
        branch = self._bank[t % self.up]
        lo = t // self.up - self._span + 1 - self._hist_start
        rows = count + self._blocks - 1
        span = self._hist[:, lo : lo + rows * self.down].reshape(2, rows, self.down)
        partial = np.ascontiguousarray(span @ branch.T)  # [2, rows, D]
        # Output i is the sum over d of partial[:, i + d, d]: a diagonal view, summed in one call.
        s = partial.strides
        # np.ndarray over the same buffer: as_strided does the same with ~10x the per-call overhead.
        diagonals = np.ndarray((2, count, self._blocks), np.float32, partial, 0, (s[0], s[1], s[1] + s[2]))
        summed = diagonals.sum(axis=-1)
        offset = j_first - self.samples_out
        out.real[offset :: self.up] = summed[0]
        out.imag[offset :: self.up] = summed[1]

    def _trim(self) -> None:
        # Keep from the oldest input the next output reads; newest inputs are never past samples_in.
        keep_from = min(self._newest_input(self.samples_out) - self._span + 1, self.samples_in)
        drop = keep_from - self._hist_start
        if drop > 0:
            self._hist = self._hist[:, drop:].copy()
            self._hist_start = keep_from


class MixingDecimator:
    """Streaming first stage of the cascade: mix to 0 Hz and decimate by an integer, in one matrix product.

    Output ``m`` is ``sum_k taps[m*decimation + half_len - k] * x[k] * exp(-j*2*pi*nu*(origin + k))``
    (``k`` counted from the first input since the reset, ``origin`` its absolute index, ``nu`` =
    ``offset_hz/sample_rate_hz``): ``resample_poly(mixed, 1, decimation, window=taps)``. Written with
    ``t = m*decimation + half_len`` (its newest input) that is ``exp(-j*2*pi*nu*(origin + t))`` times the
    input filtered by the complex taps ``taps[i]*exp(+j*2*pi*nu*i)``, so the oscillator runs at the output
    rate (``Mixer`` with ``step=decimation``, phase from the absolute index ``origin + t``). The complex
    input, viewed as float32 ``[rows, 2*decimation]`` pairs (re, im), meets a real ``[2*decimation, 2*B]``
    matrix (one complex multiply per tap written as its 2x2 real form) in one BLAS product; output ``m``
    is the sum of ``B`` diagonal entries of the result, as in ``PolyphaseResampler``.
    """

    def __init__(self, offset_hz: float, sample_rate_hz: float, decimation: int, taps: np.ndarray) -> None:
        self.decimation = d = int(decimation)
        taps = np.asarray(taps, dtype=np.float64)
        self.half_len = (len(taps) - 1) // 2
        self._blocks = b = -(-len(taps) // d)
        nu = float(Fraction(offset_hz) / Fraction(sample_rate_hz))
        complex_taps = taps * np.exp(2j * np.pi * nu * np.arange(len(taps)))
        # Window element w = x[t - b*d + 1 + w] meets tap b*d - 1 - w; element w = block*d + p sits in
        # row `block` (relative to the output's first row), column p of the [rows, d] view.
        window = np.zeros(b * d, dtype=np.complex128)
        window[b * d - len(taps) :] = complex_taps[::-1]
        c = window.reshape(b, d).T  # [p, block]
        matrix = np.empty((d, 2, b, 2), dtype=np.float32)  # [p, (re, im) in, block, (re, im) out]
        matrix[:, 0, :, 0], matrix[:, 0, :, 1] = c.real, c.imag
        matrix[:, 1, :, 0], matrix[:, 1, :, 1] = -c.imag, c.real
        self._matrix = matrix.reshape(2 * d, 2 * b)
        self._oscillator = Mixer(offset_hz, sample_rate_hz, step=d)
        self.reset()

    def reset(self) -> None:
        """Forget all input: the next sample pushed is input 0, preceded by zeros."""
        self.samples_in = 0
        self.samples_out = 0
        self._hist_start = self._window_start(0)  # input position of _hist[0]: the next output's window start
        self._hist = np.zeros(-self._hist_start, dtype=np.complex64)

    def _window_start(self, m: int) -> int:
        return m * self.decimation + self.half_len - self._blocks * self.decimation + 1

    def ready(self, samples_in: int) -> int:
        """Outputs computable from the first ``samples_in`` inputs (those whose newest input has arrived)."""
        return max(0, (samples_in - 1 - self.half_len) // self.decimation + 1)

    def push(self, samples: np.ndarray, first_index: int) -> np.ndarray:
        """Append complex input (``samples[0]`` at absolute index ``first_index``); return the outputs now ready."""
        samples = np.asarray(samples, dtype=np.complex64)
        origin = first_index - self.samples_in  # absolute index of input 0
        buf = np.concatenate((self._hist, samples))
        self.samples_in += len(samples)
        m0, m1 = self.samples_out, self.ready(self.samples_in)
        count = max(0, m1 - m0)
        out = np.empty(count, dtype=np.complex64)
        if count:
            b, d = self._blocks, self.decimation
            rows = count + b - 1
            partial = (buf[: rows * d].view(np.float32).reshape(rows, 2 * d) @ self._matrix).view(np.complex64)
            s = partial.strides  # [rows, b] complex; output i is the sum over block of partial[i + block, block]
            np.ndarray((count, b), np.complex64, partial, 0, (s[0], s[0] + s[1])).sum(axis=-1, out=out)
            out = self._oscillator.mix(out, origin + m0 * d + self.half_len)
            self.samples_out = m1
        keep_from = self._window_start(self.samples_out)
        self._hist = buf[keep_from - self._hist_start :].copy()
        self._hist_start = keep_from
        return out


class Channelizer:
    """Per-receiver stage: mix ``target_freq_hz`` to 0 Hz, resample ``in_rate_hz`` -> ``out_rate_hz``.

    Parameters
    ----------
    in_rate_hz : input sample rate (Hz); every block must carry it.
    center_freq_hz : the receiver's tuned centre (Hz); every block must carry it.
    target_freq_hz : the frequency to bring to 0 Hz (Hz); within ``center_freq_hz ± in_rate_hz/2``.
    out_rate_hz : output sample rate (Hz); ``out_rate_hz/in_rate_hz`` must be a fraction ``up/down`` with both
        terms <= ``max_up_down``, and the pair must pass ``check_tunable`` (ValueError with its reason).
    taps_per_phase : filter length as zero crossings of its sinc: ``taps_per_phase*max(up, down) + 1`` taps,
        i.e. about ``taps_per_phase`` taps per branch of the equivalent interpolate-by-``max(up, down)``
        filter. 20 is resample_poly's default.

    Attributes
    ----------
    up, down : the resampling ratio in lowest terms.
    decimation1 : the cascade's first-stage decimation ``D1`` (``cascade_decimation(up, down)``); 1 for a
        single stage.
    taps1 : the first stage's low-pass at the input rate (float64, unit gain at 0 Hz), or None for a single
        stage.
    taps : the (final-stage) low-pass (float64, not multiplied by ``up``) of ``resample_poly(.., up,
        down // decimation1, window=taps)``; the module docstring gives the whole-signal equivalent.
    """

    def __init__(
        self,
        in_rate_hz: float,
        center_freq_hz: float,
        target_freq_hz: float,
        out_rate_hz: float,
        taps_per_phase: int = 20,
        *,
        max_up_down: int = MAX_UP_DOWN,
    ) -> None:
        up, down = check_tunable(in_rate_hz, center_freq_hz, target_freq_hz, out_rate_hz, max_up_down, taps_per_phase)
        self.in_rate_hz = float(in_rate_hz)
        self.center_freq_hz = float(center_freq_hz)
        self.target_freq_hz = float(target_freq_hz)
        self.out_rate_hz = float(out_rate_hz)
        self.up, self.down = up, down
        self.decimation1 = cascade_decimation(up, down)
        offset_hz = Fraction(target_freq_hz) - Fraction(center_freq_hz)
        self._stage1: MixingDecimator | None = None
        if self.decimation1 == 1:
            self.taps1 = None
            self._mixer = Mixer(offset_hz, in_rate_hz)
        else:
            self.taps1 = design_stage1_taps(up, down, self.decimation1)
            self._stage1 = MixingDecimator(offset_hz, in_rate_hz, self.decimation1, self.taps1)
        self.taps = design_taps(self.up, self.down // self.decimation1, taps_per_phase)
        self._resampler = PolyphaseResampler(self.up, self.down // self.decimation1, self.taps)
        self._in_rate = Fraction(in_rate_hz)
        self.reset()

    def reset(self) -> None:
        """Drop all state (history, stream origin, pending flags): use after a gap or discontinuity."""
        self._resampler.reset()
        if self._stage1 is not None:
            self._stage1.reset()
        self._start_index: int | None = None
        self._next_index: int | None = None
        self._receiver_id: str | None = None
        self._pending_flags = Flags.NONE

    @property
    def samples_in(self) -> int:
        """Input samples accepted since the last reset."""
        return self._resampler.samples_in if self._stage1 is None else self._stage1.samples_in

    @property
    def samples_out(self) -> int:
        """Output samples emitted since the last reset (= the next output's sample_index)."""
        return self._resampler.samples_out

    def ready(self, samples_in: int) -> int:
        """Outputs computable from the first ``samples_in`` inputs since the reset (all their inputs have arrived)."""
        if self._stage1 is not None:
            samples_in = self._stage1.ready(samples_in)
        return self._resampler.ready(samples_in)

    @property
    def next_input_index(self) -> int | None:
        """Absolute sample_index the next block must start at, or None right after a reset."""
        return self._next_index

    def input_samples_represented(self, n_out: int) -> int:
        """Input samples owned by the first ``n_out`` outputs: ``ceil(n_out*down/up)``.

        Output ``j`` sits at input position ``j*down/up``, so outputs ``0..n_out-1`` cover input positions
        ``[0, n_out*down/up)``. ``samples_in - input_samples_represented(samples_out)`` is the input held
        back for outputs not yet computable.
        """
        return -(-int(n_out) * self.down // self.up)

    def follows(self, block: IQBlock) -> bool:
        """True if ``process(block)`` can continue the current stream (no gap, no restart, no retune)."""
        if self._next_index is None:
            return True
        return block.sample_index == self._next_index and not (Flags(block.flags) & NEEDS_RESET)

    def process(self, block: IQBlock) -> IQBlock | None:
        """Consume one input block; return the output samples that became ready, or None.

        The output block has the same receiver_id, time_source and gain_db; ``samples`` complex64 at
        ``out_rate_hz``; ``sample_index`` counted in outputs since the reset; ``t0_ns`` the time of input
        position ``sample_index*down/up``, from this block's ``t0_ns``; ``center_freq`` = target; ``flags`` the
        union of the flags of the input blocks consumed since the previous output block.
        """
        self._check(block)
        if self._start_index is None:
            self._start_index = block.sample_index
            self._receiver_id = block.receiver_id
        self._next_index = block.end_index
        self._pending_flags |= Flags(block.flags)
        first_out = self.samples_out
        samples = self._filter(block)
        if self.samples_out == first_out:
            return None
        # Time of output `first_out`: this block's t0 moved by the input distance from the block's first
        # sample to input position first_out*down/up, i.e. (first_out*down - up*offset) / (up*in_rate) s.
        offset = block.sample_index - self._start_index
        numerator = (first_out * self.down - self.up * offset) * 10**9 * self._in_rate.denominator
        denominator = self.up * self._in_rate.numerator
        t0_ns = block.t0_ns + (2 * numerator + denominator) // (2 * denominator)  # rounded to the nearest ns
        flags, self._pending_flags = self._pending_flags, Flags.NONE
        return IQBlock(
            receiver_id=block.receiver_id,
            samples=samples,
            sample_index=first_out,
            t0_ns=int(t0_ns),
            time_source=block.time_source,
            sample_rate=self.out_rate_hz,
            center_freq=self.target_freq_hz,
            gain_db=block.gain_db,
            flags=flags,
        )

    def _filter(self, block: IQBlock) -> np.ndarray:
        """The outputs that ``block``'s samples make ready, through one stage or the cascade."""
        chunks = range(0, len(block.samples), _WORK_CHUNK)
        if not chunks:
            return np.empty(0, dtype=np.complex64)
        if self._stage1 is None:
            pieces = [
                self._resampler.push(self._mixer.mix(block.samples[i : i + _WORK_CHUNK], block.sample_index + i))
                for i in chunks
            ]
        else:  # the final stage runs once per block on the first stage's (few) outputs
            step = _STAGE1_CHUNK
            pieces = [
                self._stage1.push(block.samples[i : i + step], block.sample_index + i)
                for i in range(0, len(block.samples), step)
            ]
            pieces = [self._resampler.push(pieces[0] if len(pieces) == 1 else np.concatenate(pieces))]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def _check(self, block: IQBlock) -> None:
        if not math.isclose(block.sample_rate, self.in_rate_hz, rel_tol=1e-9):
            raise ValueError(
                f"channelizer[{block.receiver_id}]: block sample_rate {block.sample_rate} Hz, configured"
                f" in_rate_hz {self.in_rate_hz} Hz"
            )
        if not math.isclose(block.center_freq, self.center_freq_hz, rel_tol=1e-12, abs_tol=1e-3):
            raise ValueError(
                f"channelizer[{block.receiver_id}]: block center_freq {block.center_freq} Hz, configured"
                f" center_freq_hz {self.center_freq_hz} Hz"
            )
        if np.ndim(block.samples) != 1:
            raise ValueError(f"channelizer[{block.receiver_id}]: samples must be 1-D, got shape {np.shape(block.samples)}")
        if self._receiver_id is not None and block.receiver_id != self._receiver_id:
            raise ValueError(
                f"channelizer: got a block of receiver {block.receiver_id!r} in the stream of {self._receiver_id!r}"
            )
        if not self.follows(block):
            if block.sample_index != self._next_index:
                why = f"starts at sample_index {block.sample_index}, expected {self._next_index}"
            else:
                why = f"carries {Flags(block.flags)!r}"
            raise ValueError(f"channelizer[{block.receiver_id}]: block {why}; count the gap and call reset() first")
