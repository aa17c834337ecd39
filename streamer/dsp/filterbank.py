"""Analysis filter bank: one receiver's IQ split into a regular grid of channels, state kept across blocks.

The band-watch counterpart of ``streamer.dsp.channelizer``: where a ``Channelizer`` brings one target frequency
to 0 Hz, a ``FilterBank`` brings every channel of a grid to 0 Hz at once, by fast convolution: one forward FFT
per segment of input shared by every channel, then one short inverse FFT per channel. ``FilterBank.process(block)``
takes one input ``IQBlock`` and returns the channels asked for as a ``ChannelBlock`` (complex64 ``[C, n]``), or
``None`` while no output is ready yet.

The grid. A receiver at ``in_rate_hz`` tuned to ``center_freq_hz`` is split into ``N = in_rate_hz /
channel_spacing_hz`` channels (an integer, else ValueError): channel ``k`` (signed, ``-(N//2) <= k <=
(N-1)//2``) is centred on ``center_freq_hz + k*channel_spacing_hz``. Each channel comes out at ``out_rate_hz =
oversampling*channel_spacing_hz`` (oversampling 2 by default: a decimation of ``M = N/oversampling``), so the
whole channel ``±channel_spacing_hz/2`` lies inside the output band with room for the filter's transition: the
channel edges do not alias. ``channel_number`` maps a channel's centre frequency (Hz) to ``k``;
``covered_channels`` says which channels of a band a receiver covers (the rest are masked for it).

What it computes. The whole-signal reference the tests compare the stream against is, for each channel ``k``::

    mixed_k[n] = x[n] * exp(-j*2*pi*k*n_abs/N)          n_abs = the absolute sample_index of x[n]
    y_k        = resample_poly(mixed_k, 1, M, window=bank.taps)

and the bank's output is that filter, ``taps`` applied to ``mixed_k`` with the group delay compensated, sampled
every ``M`` inputs, except for what the reference's decimation folds onto the channel from beyond the bank's
output band, ``±folded_bands*out_rate_hz/2`` around the channel (``folded_bands`` is 1 unless the stopband starts
past the output's Nyquist): there the prototype is in its stopband, so the two differ by the prototype's response
there, at or below ``-attenuation_db``.

``taps`` is the prototype low-pass (``design_prototype``): a Kaiser-window FIR of length ``P*N - 1``,
unit gain at 0 Hz, flat over the channel (``|f| <= channel_spacing_hz/2``, ripple about
``10**(-attenuation_db/20)``) and ``attenuation_db`` down from the adjacent channel's centre
(``|f| >= channel_spacing_hz``) outward, so a neighbour's centre and everything the decimation folds onto the
channel are rejected by that much. ``P`` (taps per polyphase branch) is the smallest that reaches
``attenuation_db`` by Kaiser's estimate. ``passband_hz`` and ``stopband_hz`` move those two edges: the band
pipeline reads each channel flat well beyond its spacing (the features' noise bands) and stops at the output's
Nyquist; ``feature_grid`` picks a grid and an oversampling for it.

How (overlap-save). The input is cut into segments of ``fft_len = N*2**j`` samples, ``hop`` apart, overlapping by
``overlap = len(taps) - 1`` rounded up to a multiple of ``M`` (``fft_len`` is the smallest such length with the
overlap at most ``1/OVERLAP_SHARE`` of it); segment ``s`` starts ``lead_in`` inputs (the group delay rounded up to
a multiple of ``M``) before the instant of output ``s*hop/M``, counted from the first input since the reset, so
segment boundaries sit at fixed positions of the stream, not of the caller's blocks. For each segment:

1. one forward FFT (``scipy.fft.fft``, one thread) of its ``fft_len`` inputs, shared by every channel;
2. per channel, the ``folded_bands*fft_len/M`` bins centred on the channel's centre bin (``k*fft_len/N``: mixing by
   ``k`` channels is a shift of the spectrum by that many bins), times the prototype's response at those bins
   with its group delay taken out, summed modulo ``fft_len/M`` (the decimation's fold);
3. one batched inverse FFT of ``fft_len/M`` points for all channels, which is the circular convolution sampled every
   ``M`` inputs; its first outputs (before ``lead_in``) and last (past the segment's ``hop``) wrap around the
   segment and are dropped, the ``hop/M`` between are the segment's outputs;
4. the mixer's phase at the segment's first input, ``exp(-j*2*pi*k*s_abs/N)`` for its absolute index ``s_abs``,
   one complex factor per channel and segment.

Timing and accounting (as the channelizer's, with ``up/down = 1/M``):

- Output ``m`` of every channel (counted from 0 since the last reset) sits at input position ``m*M`` counted
  from the first input since the reset: the prototype's group delay, ``half_len = (len(taps) - 1)//2`` input
  samples, is compensated, and the output block's ``t0_ns`` is the time of input position
  ``sample_index*M``. Inputs before the first one are taken as zero, as resample_poly pads.
- Outputs come a segment at a time, ``outputs_per_hop = hop/M`` of them, as soon as the segment's last input has
  arrived (``ready``): an output waits at most ``max_latency_s`` after its instant's input. The inputs of the next
  segment are carried to the next block, and each segment is computed by the same operations whatever blocks
  brought its inputs, so block boundaries leave no trace in the output, bit for bit.
- The mixer's phase comes from the absolute input index, as ``Channelizer``'s does: channel ``k`` of the bank
  equals a mix by ``k*channel_spacing_hz`` followed by the same filter (but for the stopband's folds, above).

Gaps are the caller's business, as with the channelizer: ``process`` refuses a block that does not follow the
previous one; the caller counts the gap and calls ``reset()`` (``follows(block)`` tells it beforehand).

To the model's rate. The features run at ``FeatureSpec.sample_rate_hz`` (24 kHz), which differs from the
bank's channel rate (25 kHz for 12.5 kHz channels). ``feature_rate_channelizers`` gives one ``Channelizer``
per active channel (``out_rate/in_rate`` = 24/25, mixing by 0 Hz: a pure polyphase resampler with state
across blocks); ``ChannelBlock.channel_block(i)`` is the ``IQBlock`` it takes. Its output ``j`` sits at bank
output position ``j*25/24``, i.e. at input position ``j*25/24*M`` (``j*100`` at 2.4 MS/s): the same instants
as today's single ``Channelizer`` to 24 kHz. ``FeatureRateResampler`` does the same for every channel at once.

Why hand-written. No maintained Python package offers a channelizer that keeps filter state across blocks at
this speed: GNU Radio's ``pfb_channelizer_ccf`` does, but only inside a GNU Radio flowgraph (C++, its own
scheduler, a system-Python install); scipy has whole-signal ``resample_poly``/``upfirdn`` per channel and
``oaconvolve``, an overlap-add convolution of one whole signal with no mixer, decimation or state across calls.
What is hand-written here is the bookkeeping of overlap-save around ``scipy.fft``. The tests compare each channel
with that scipy reference (``resample_poly`` of the mixed signal, the formula above) and the channel powers with
GNU Radio's ``pfb_channelizer_ccf`` where GNU Radio is installed. Mapping to GNU Radio, given the same taps and
``oversample_rate``: its output ``i`` is channel ``k`` with ``k mod N == i`` (0 at the centre, then upward, then the
negative channels from ``-(N//2)``), and its outputs are not delay-compensated: an impulse that peaks at output
``m`` here peaks about ``half_len/M`` outputs later there (8 for 192 channels at 2.4 MS/s), so the two agree in
power, not sample for sample.

Examples
--------
>>> import numpy as np
>>> from receivers.base import IQBlock
>>> bank = FilterBank(in_rate_hz=2.4e6, center_freq_hz=145.0e6, channel_spacing_hz=12_500.0, channels=[-1, 0, 4])
>>> bank.n_channels, bank.decimation, bank.out_rate_hz, len(bank.taps), bank.half_len
(192, 96, 25000.0, 1727, 863)
>>> bank.fft_len, bank.hop, bank.outputs_per_hop, bank.folded_bands
(12288, 10560, 110, 1)
>>> block = IQBlock("rx1", np.ones(24_000, np.complex64), sample_index=0, t0_ns=10**18, time_source="gps",
...                 sample_rate=2.4e6, center_freq=145.0e6)
>>> out = bank.process(block)
>>> out.samples.shape, out.sample_index, out.t0_ns == 10**18, out.channel_freqs_hz
((3, 220), 0, True, (144987500.0, 145000000.0, 145050000.0))
>>> channel_number(145.05e6, center_freq_hz=145.0e6, in_rate_hz=2.4e6, channel_spacing_hz=12_500.0)
4
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import scipy.fft
from scipy.signal import firwin, kaiser_beta

from receivers.base import MAX_SAMPLE_RATE_HZ, Flags, IQBlock, TimeSource
from streamer.dsp.channelizer import NEEDS_RESET, Channelizer, polyphase_branches

#: Largest number of channels (``in_rate_hz / channel_spacing_hz``): bounds the filter (``P*N`` taps) and the FFT.
MAX_CHANNELS = 1 << 16
#: Relative mismatch between ``in_rate_hz/channel_spacing_hz`` and an integer that still counts as exact.
RATIO_TOLERANCE = 1e-9
#: Range of ``attenuation_db`` accepted: below it the prototype is no channel filter, above it float32
#: rounding (about -140 dB) would be the floor anyway.
MIN_ATTENUATION_DB, MAX_ATTENUATION_DB = 20.0, 140.0
#: The FFT segment is at least this many times the overlap it shares with the next (``len(taps) - 1`` rounded up
#: to a multiple of ``M``): at most a quarter of each forward FFT is spent again on the next segment's inputs.
OVERLAP_SHARE = 4


def channel_count(in_rate_hz: float, channel_spacing_hz: float) -> int:
    """``N = in_rate_hz / channel_spacing_hz`` (both Hz), or ValueError when it is not an integer in ``[2, MAX_CHANNELS]``.

    Examples
    --------
    >>> channel_count(2.4e6, 12_500.0)
    192
    >>> channel_count(2.4e6, 7_000.0)
    Traceback (most recent call last):
    ...
    ValueError: filterbank: channel_spacing_hz=7000.0 does not divide in_rate_hz=2400000.0 (ratio 342.857); choose a spacing of in_rate_hz/N Hz for an integer N in [2, 65536]
    """
    for name, rate in (("in_rate_hz", in_rate_hz), ("channel_spacing_hz", channel_spacing_hz)):
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"filterbank: {name} must be a positive number of Hz, got {rate!r}")
    if in_rate_hz > MAX_SAMPLE_RATE_HZ:
        raise ValueError(f"filterbank: in_rate_hz={in_rate_hz} is above MAX_SAMPLE_RATE_HZ={MAX_SAMPLE_RATE_HZ} Hz")
    ratio = in_rate_hz / channel_spacing_hz
    n = round(ratio)
    if not 2 <= n <= MAX_CHANNELS or abs(ratio - n) > RATIO_TOLERANCE * ratio:
        raise ValueError(
            f"filterbank: channel_spacing_hz={channel_spacing_hz} does not divide in_rate_hz={in_rate_hz}"
            f" (ratio {ratio:.6g}); choose a spacing of in_rate_hz/N Hz for an integer N in [2, {MAX_CHANNELS}]"
        )
    return n


def channel_range(n_channels: int) -> tuple[int, int]:
    """Lowest and highest signed channel number of an ``n_channels`` bank: ``(-(N//2), (N-1)//2)``."""
    return -(n_channels // 2), (n_channels - 1) // 2


def channel_number(freq_hz: float, *, center_freq_hz: float, in_rate_hz: float, channel_spacing_hz: float) -> int:
    """Signed channel ``k`` centred on ``freq_hz`` (Hz) for a receiver tuned to ``center_freq_hz`` (Hz).

    ValueError when ``freq_hz - center_freq_hz`` is not a whole number of ``channel_spacing_hz`` (to 1 mHz: the
    receiver is tuned off the grid) or ``k`` is outside the bank (``channel_range``).
    """
    n = channel_count(in_rate_hz, channel_spacing_hz)
    for name, value in (("channel frequency", freq_hz), ("center_freq_hz", center_freq_hz)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"filterbank: {name} must be a finite number of Hz, got {value!r}")
    offset = Fraction(freq_hz) - Fraction(center_freq_hz)
    k = round(offset / Fraction(channel_spacing_hz))
    if abs(float(offset) - k * channel_spacing_hz) > 1e-3:
        raise ValueError(
            f"filterbank: channel at {freq_hz} Hz is {float(offset)} Hz from center_freq_hz={center_freq_hz}, not a"
            f" multiple of channel_spacing_hz={channel_spacing_hz}; tune the receiver onto the channel grid"
        )
    lo, hi = channel_range(n)
    if not lo <= k <= hi:
        raise ValueError(
            f"filterbank: channel at {freq_hz} Hz (channel {k}) is outside the band of center_freq_hz={center_freq_hz}"
            f" at in_rate_hz={in_rate_hz}: channels {lo}..{hi} of {channel_spacing_hz} Hz"
        )
    return k


def covered_channels(freqs_hz: Sequence[float], *, center_freq_hz: float, in_rate_hz: float,
                     channel_spacing_hz: float, guard_hz: float = 0.0,
                     channel_width_hz: float | None = None) -> tuple[int | None, ...]:
    """For each band channel centre in ``freqs_hz`` (Hz): this receiver's channel number, or None (masked).

    A channel is covered when its whole width, ``freq ± channel_width_hz/2`` (default the spacing), lies within
    ``center_freq_hz ± (in_rate_hz/2 - guard_hz)`` (Hz): ``guard_hz`` leaves out the band edges where a front
    end's anti-alias filter rolls off. A covered channel off the receiver's grid is a ValueError
    (``channel_number``): the receiver is tuned between channels.

    Examples
    --------
    >>> covered_channels([145.0e6, 145.5e6, 146.2e6, 146.1875e6], center_freq_hz=145.0e6, in_rate_hz=2.4e6,
    ...                  channel_spacing_hz=12_500.0)
    (0, 40, None, 95)
    """
    channel_count(in_rate_hz, channel_spacing_hz)
    if not (math.isfinite(guard_hz) and 0.0 <= guard_hz < in_rate_hz / 2):
        raise ValueError(f"filterbank: guard_hz must be in [0, in_rate_hz/2 = {in_rate_hz / 2}) Hz, got {guard_hz!r}")
    width_hz = channel_spacing_hz if channel_width_hz is None else channel_width_hz
    if not (isinstance(width_hz, (int, float)) and math.isfinite(width_hz) and width_hz > 0):
        raise ValueError(f"filterbank: channel_width_hz must be a positive number of Hz, got {channel_width_hz!r}")
    reach_hz = in_rate_hz / 2 - guard_hz - width_hz / 2
    out: list[int | None] = []
    for freq in freqs_hz:
        if abs(freq - center_freq_hz) > reach_hz + 1e-3:
            out.append(None)
        else:
            out.append(channel_number(freq, center_freq_hz=center_freq_hz, in_rate_hz=in_rate_hz,
                                      channel_spacing_hz=channel_spacing_hz))
    return tuple(out)


def design_prototype(n_channels: int, attenuation_db: float = 70.0, *, passband: float = 0.5,
                     stopband: float = 1.0) -> np.ndarray:
    """The bank's prototype low-pass at the input rate (float64, odd length ``P*n_channels - 1``, unit gain at 0 Hz).

    In units of the channel spacing: flat over ``|f| <= passband`` (default 1/2: the channel), down by
    ``attenuation_db`` from ``|f| >= stopband`` (default 1: the adjacent channel's centre) outward, i.e.
    ``firwin(L, (passband + stopband)/n_channels, window=("kaiser", kaiser_beta(attenuation_db)))`` with
    ``L = P*n_channels - 1`` for the smallest ``P >= 2`` whose Kaiser estimate (``scipy.signal.kaiserord``:
    ``2.285*(L - 1)*pi*w + 7.95`` dB for the transition width ``w = 2*(stopband - passband)/n_channels`` in
    Nyquist units) reaches ``attenuation_db``.
    """
    if not (0.0 < passband < stopband and (passband + stopband) < n_channels):
        raise ValueError(f"filterbank: expected 0 < passband < stopband and passband + stopband < {n_channels} (in"
                         f" channel spacings), got passband={passband!r}, stopband={stopband!r}")
    width = 2.0 * (stopband - passband) / n_channels
    needed = (attenuation_db - 7.95) / (2.285 * np.pi * width) + 1
    branch_taps = max(2, math.ceil((needed + 1) / n_channels))
    return firwin(branch_taps * n_channels - 1, (passband + stopband) / n_channels,
                  window=("kaiser", kaiser_beta(attenuation_db)))


def feature_grid(in_rate_hz: float, center_freq_hz: float, freqs_hz: Sequence[float], min_out_rate_hz: float,
                 ) -> tuple[float, int]:
    """A grid that puts every frequency of ``freqs_hz`` (Hz) on a channel centre: ``(channel_spacing_hz, oversampling)``.

    The spacing is the largest that divides ``in_rate_hz`` and every offset ``freq - center_freq_hz`` (all whole
    Hz); the oversampling the smallest that keeps the output rate (``oversampling*spacing``) at or above
    ``min_out_rate_hz`` (Hz), so a channel's output holds ``±min_out_rate_hz/2`` whatever the spacing.
    ValueError when the rates or offsets are not whole Hz, or the grid would exceed ``MAX_CHANNELS``.

    Examples
    --------
    >>> feature_grid(2.4e6, 145.0e6, [145.0125e6, 145.5e6], 25_000.0)
    (12500.0, 2)
    >>> feature_grid(240_000.0, 145.45e6, [145.5e6, 145.5125e6], 25_000.0)
    (2500.0, 12)
    """
    whole = [in_rate_hz, *(f - center_freq_hz for f in freqs_hz)]
    if not all(math.isfinite(v) and abs(v - round(v)) <= 1e-3 for v in whole):
        raise ValueError(f"filterbank: in_rate_hz={in_rate_hz} and the channel offsets from center_freq_hz="
                         f"{center_freq_hz} must be whole Hz to share a channel grid")
    spacing = math.gcd(*(abs(round(v)) for v in whole))
    n = round(in_rate_hz) // spacing
    if n > MAX_CHANNELS:
        raise ValueError(f"filterbank: the channels' offsets from center_freq_hz={center_freq_hz} need a grid of"
                         f" {spacing} Hz, {n} channels at in_rate_hz={in_rate_hz} (at most {MAX_CHANNELS})")
    decimations = [d for d in range(1, n + 1) if n % d == 0 and in_rate_hz / d >= min_out_rate_hz]
    if not decimations:
        raise ValueError(f"filterbank: in_rate_hz={in_rate_hz} is below min_out_rate_hz={min_out_rate_hz}")
    return float(spacing), n // max(decimations)


@dataclass(frozen=True)
class ChannelBlock:
    """A run of filter-bank output: the same output times of several channels of one receiver.

    Attributes
    ----------
    receiver_id, time_source, gain_db : as the input blocks'.
    samples : complex64 ``[C, n]``, one row per entry of ``channels``; from ``FilterBank.process``, the transposed view
        of time-first memory (each output time's channels adjacent, a row's samples ``C`` apart).
    channels : signed channel numbers, row by row.
    sample_index : output index of ``samples[:, 0]`` counted since the bank's reset.
    t0_ns : Unix time (ns) of ``samples[:, 0]``.
    sample_rate : output rate of every channel (Hz).
    center_freq : the receiver's tuned centre (Hz).
    channel_spacing_hz : the grid's spacing (Hz).
    flags : union of the flags of the input blocks consumed since the previous output block.
    """

    receiver_id: str
    samples: np.ndarray
    channels: tuple[int, ...]
    sample_index: int
    t0_ns: int
    time_source: TimeSource
    sample_rate: float
    center_freq: float
    channel_spacing_hz: float
    gain_db: float | None = None
    flags: Flags = Flags.NONE

    @property
    def channel_freqs_hz(self) -> tuple[float, ...]:
        """Centre frequency (Hz) of each row."""
        return tuple(self.center_freq + k * self.channel_spacing_hz for k in self.channels)

    def channel_block(self, row: int) -> IQBlock:
        """Row ``row`` as an ``IQBlock`` at the channel rate, centred on its channel (for ``Channelizer``)."""
        return IQBlock(
            receiver_id=self.receiver_id,
            samples=self.samples[row],
            sample_index=self.sample_index,
            t0_ns=self.t0_ns,
            time_source=self.time_source,
            sample_rate=self.sample_rate,
            center_freq=self.channel_freqs_hz[row],
            gain_db=self.gain_db,
            flags=self.flags,
        )


class FilterBank:
    """Per-receiver stage: split ``in_rate_hz`` into ``channel_spacing_hz`` channels, output the ones asked for.

    Parameters
    ----------
    in_rate_hz : input sample rate (Hz); every block must carry it.
    center_freq_hz : the receiver's tuned centre (Hz); every block must carry it.
    channel_spacing_hz : the grid's spacing (Hz); must divide ``in_rate_hz`` (``channel_count``).
    channels : signed channel numbers to output, in the order wanted (``channel_range``; no repeats).
    oversampling : output rate / channel spacing, an integer dividing the channel count (2: the channel
        edges do not alias; 1: critically sampled).
    attenuation_db : the prototype's stopband attenuation (dB).
    passband_hz, stopband_hz : the prototype's flat band ``|f| <= passband_hz`` and where its stopband starts
        (Hz from a channel's centre); default ``channel_spacing_hz/2`` and ``channel_spacing_hz`` (the channel, and
        the neighbour's centre). A channel read wider than its spacing (features that read noise beside it) takes a
        wider passband and a stopband at the output's Nyquist, ``out_rate_hz/2``: nothing that folds is left.

    Attributes
    ----------
    n_channels : ``N``. decimation : ``M = N/oversampling``. out_rate_hz : ``in_rate_hz/M`` (Hz).
    taps : the prototype (``design_prototype``), float64. half_len : its group delay (input samples).
    branch_taps : ``P``, taps per polyphase branch (``len(taps) = P*N - 1``).
    fft_len, hop, overlap : the overlap-save segments (input samples; ``hop = fft_len - overlap``, all multiples of
        ``M``). outputs_per_hop : ``hop/M``, the outputs of one segment. lead_in : inputs of a segment before its
        first output's instant. folded_bands : output bands of ``out_rate_hz`` read around each channel and folded
        onto it (module doc).
    """

    def __init__(self, in_rate_hz: float, center_freq_hz: float, channel_spacing_hz: float, channels: Sequence[int],
                 *, oversampling: int = 2, attenuation_db: float = 70.0, passband_hz: float | None = None,
                 stopband_hz: float | None = None) -> None:
        n = channel_count(in_rate_hz, channel_spacing_hz)
        if isinstance(oversampling, bool) or not isinstance(oversampling, int) or oversampling < 1 or n % oversampling:
            raise ValueError(f"filterbank: oversampling must be an integer >= 1 dividing the {n} channels, got"
                             f" {oversampling!r}")
        if not (isinstance(attenuation_db, (int, float)) and MIN_ATTENUATION_DB <= attenuation_db <= MAX_ATTENUATION_DB):
            raise ValueError(f"filterbank: attenuation_db must be in [{MIN_ATTENUATION_DB}, {MAX_ATTENUATION_DB}] dB,"
                             f" got {attenuation_db!r}")
        if not (isinstance(center_freq_hz, (int, float)) and math.isfinite(center_freq_hz)):
            raise ValueError(f"filterbank: center_freq_hz must be a finite number of Hz, got {center_freq_hz!r}")
        self.channels = self._check_channels(channels, n, in_rate_hz, channel_spacing_hz)
        self.in_rate_hz = float(in_rate_hz)
        self.center_freq_hz = float(center_freq_hz)
        self.channel_spacing_hz = float(channel_spacing_hz)
        self.n_channels = n
        self.oversampling = oversampling
        self.decimation = n // oversampling
        self.out_rate_hz = self.in_rate_hz / self.decimation
        passband_hz = channel_spacing_hz / 2 if passband_hz is None else passband_hz
        stopband_hz = float(channel_spacing_hz) if stopband_hz is None else stopband_hz
        for name, value in (("passband_hz", passband_hz), ("stopband_hz", stopband_hz)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"filterbank: {name} must be a finite number of Hz, got {value!r}")
        if not 0 < passband_hz < stopband_hz <= in_rate_hz / 2:
            raise ValueError(f"filterbank: expected 0 < passband_hz < stopband_hz <= in_rate_hz/2 = {in_rate_hz / 2} Hz,"
                             f" got passband_hz={passband_hz}, stopband_hz={stopband_hz}")
        self.passband_hz, self.stopband_hz = float(passband_hz), float(stopband_hz)
        self.taps = design_prototype(n, attenuation_db, passband=passband_hz / channel_spacing_hz,
                                     stopband=stopband_hz / channel_spacing_hz)
        self.half_len = (len(self.taps) - 1) // 2
        self.branch_taps = (len(self.taps) + 1) // n
        m = self.decimation
        # Overlap-save: segments of fft_len inputs, hop apart; each gives hop/M outputs, its first lead_in inputs
        # before its first output's instant (the filter's past half), the rest of the overlap after its last.
        self.overlap = -(-(len(self.taps) - 1) // m) * m
        self.fft_len = n
        while self.fft_len < OVERLAP_SHARE * self.overlap:
            self.fft_len *= 2
        self.hop = self.fft_len - self.overlap
        self.outputs_per_hop = self.hop // m
        self.lead_in = -(-self.half_len // m) * m
        bins = self.fft_len // m  # inverse FFT length: one channel's output band, out_rate_hz wide
        bins_per_channel = self.fft_len // n
        # Bands of out_rate_hz folded onto each channel's output: enough to hold everything up to the stopband.
        self.folded_bands = max(1, math.ceil(2 * self.stopband_hz / self.out_rate_hz - 1e-9))
        span = self.folded_bands * bins
        # Offsets (bins from the channel's centre) read for output bin u of band s: -span/2 .. span/2 - 1, each
        # band's offsets in inverse-FFT order (offset = u mod bins), so summing over s is the decimation's fold.
        band_start = -span // 2 + bins * np.arange(self.folded_bands)[:, None]
        offsets = band_start + (np.arange(bins)[None, :] - band_start) % bins  # [S, bins]
        # The prototype's response at those offsets with its group delay taken out (real for an odd length, half a
        # sample of delay left for an even one), the delay being where each segment starts; times the 1/M of the
        # decimation.
        centred = np.zeros(self.fft_len)
        centred[: len(self.taps) - self.half_len] = self.taps[self.half_len :]
        centred[self.fft_len - self.half_len :] = self.taps[: self.half_len]
        response = scipy.fft.fft(centred) / m
        self._weights = response[offsets % self.fft_len].astype(np.complex64)  # [S, bins]
        centres = np.array([k % n for k in self.channels], dtype=np.intp) * bins_per_channel
        self._bin_index = (centres[:, None, None] + offsets[None]) % self.fft_len  # [C, S, bins]
        self._channel_bins = np.array([k % n for k in self.channels], dtype=np.int64)
        self._twiddles = np.exp(-2j * np.pi * np.arange(n) / n).astype(np.complex64)
        self._gathered = np.empty((len(self.channels), self.folded_bands, bins), dtype=np.complex64)
        self._in_rate = Fraction(in_rate_hz)
        self.reset()

    @staticmethod
    def _check_channels(channels: Sequence[int], n: int, in_rate_hz: float, spacing_hz: float) -> tuple[int, ...]:
        lo, hi = channel_range(n)
        if isinstance(channels, (str, bytes)) or not hasattr(channels, "__iter__"):
            raise ValueError(f"filterbank: channels must be a list of channel numbers, got {channels!r}")
        picked = tuple(channels)
        if not picked:
            raise ValueError("filterbank: channels is empty; give at least one channel number")
        for k in picked:
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not lo <= k <= hi:
                raise ValueError(f"filterbank: channel {k!r} is outside the band: channels are the integers {lo}..{hi}"
                                 f" (steps of {spacing_hz} Hz at in_rate_hz={in_rate_hz})")
        if len(set(picked)) != len(picked):
            raise ValueError(f"filterbank: channels {list(picked)} repeat a channel")
        return tuple(int(k) for k in picked)

    def reset(self) -> None:
        """Drop all state (history, stream origin, pending flags): use after a gap or discontinuity."""
        self.samples_in = 0
        self.samples_out = 0
        # _buf[:_held] are the inputs from the next segment's first on; that segment starts lead_in inputs before
        # output samples_out's instant, inputs before the stream's first being zeros.
        self._buf = np.zeros(2 * self.fft_len, dtype=np.complex64)
        self._held = self.lead_in
        self._start_index: int | None = None
        self._next_index: int | None = None
        self._receiver_id: str | None = None
        self._pending_flags = Flags.NONE

    @property
    def group_delay_s(self) -> float:
        """The prototype's group delay (s), compensated: output ``m`` sits at input position ``m*M``."""
        return self.half_len / self.in_rate_hz

    @property
    def max_latency_s(self) -> float:
        """The longest an output waits after its instant's input arrives (s): until its segment's last input."""
        return (self.fft_len - self.lead_in) / self.in_rate_hz

    @property
    def next_input_index(self) -> int | None:
        """Absolute sample_index the next block must start at, or None right after a reset."""
        return self._next_index

    def ready(self, samples_in: int) -> int:
        """Output times computable from the first ``samples_in`` inputs since the reset: every output of each segment
        whose last input has arrived (``outputs_per_hop`` at a time)."""
        first_segment_end = self.fft_len - self.lead_in
        if samples_in < first_segment_end:
            return 0
        return ((samples_in - first_segment_end) // self.hop + 1) * self.outputs_per_hop

    def input_samples_represented(self, n_out: int) -> int:
        """Input samples owned by the first ``n_out`` output times: ``n_out*M`` (output ``m`` sits at input ``m*M``)."""
        return int(n_out) * self.decimation

    def follows(self, block: IQBlock) -> bool:
        """True if ``process(block)`` can continue the current stream (no gap, no restart, no retune)."""
        if self._next_index is None:
            return True
        return block.sample_index == self._next_index and not (Flags(block.flags) & NEEDS_RESET)

    def process(self, block: IQBlock) -> ChannelBlock | None:
        """Consume one input block; return the output times that became ready (every channel asked for), or None.

        ``sample_index`` counts output times since the reset; ``t0_ns`` is the time of input position
        ``sample_index*M``, from this block's ``t0_ns``; ``flags`` the union of the flags of the input blocks
        consumed since the previous output block.
        """
        self._check(block)
        if self._start_index is None:
            self._start_index = block.sample_index
            self._receiver_id = block.receiver_id
        self._next_index = block.end_index
        self._pending_flags |= Flags(block.flags)
        first_out = self.samples_out
        made = self._push(block.samples)
        if self.samples_out == first_out:
            return None
        # Time of output `first_out`: this block's t0 moved by (first_out*M - offset) input samples.
        offset = block.sample_index - self._start_index
        numerator = (first_out * self.decimation - offset) * 10**9 * self._in_rate.denominator
        denominator = self._in_rate.numerator
        t0_ns = block.t0_ns + (2 * numerator + denominator) // (2 * denominator)  # rounded to the nearest ns
        flags, self._pending_flags = self._pending_flags, Flags.NONE
        return ChannelBlock(
            receiver_id=block.receiver_id,
            samples=made.T,  # made time first (each output time's channels together); handed out as its [C, n] view
            channels=self.channels,
            sample_index=first_out,
            t0_ns=int(t0_ns),
            time_source=block.time_source,
            sample_rate=self.out_rate_hz,
            center_freq=self.center_freq_hz,
            channel_spacing_hz=self.channel_spacing_hz,
            gain_db=block.gain_db,
            flags=flags,
        )

    def _push(self, samples: np.ndarray) -> np.ndarray:
        """Append input; return ``[count, C]`` (time first) for the output times it made ready, one segment at a time
        (each segment's outputs from the same operations whatever the blocks that brought its inputs)."""
        held, n_new = self._held, len(samples)
        if held + n_new > len(self._buf):
            grown = np.empty(max(held + n_new, 2 * len(self._buf)), dtype=np.complex64)
            grown[:held] = self._buf[:held]
            self._buf = grown
        buf = self._buf
        buf[held : held + n_new] = samples
        self._held += n_new
        self.samples_in += n_new
        segments = self.ready(self.samples_in) // self.outputs_per_hop - self.samples_out // self.outputs_per_hop
        q, first = self.outputs_per_hop, self.lead_in // self.decimation
        out = np.empty((segments * q, len(self.channels)), dtype=np.complex64)
        for i in range(segments):
            spectrum = scipy.fft.fft(buf[i * self.hop : i * self.hop + self.fft_len], workers=1, overwrite_x=False)
            np.take(spectrum, self._bin_index, out=self._gathered, mode="clip")  # "raise" would buffer `out`
            np.multiply(self._gathered, self._weights, out=self._gathered)
            folded = self._gathered[:, 0] if self.folded_bands == 1 else self._gathered.sum(axis=1)
            kept = scipy.fft.ifft(folded, axis=-1, workers=1, overwrite_x=True)[:, first : first + q]
            # read through the transpose, written time first (a ufunc writing through a transpose is far slower)
            np.multiply(kept.T, self._mixer_phase(self.samples_out), out=out[i * q : (i + 1) * q])
            self.samples_out += q
        if segments:  # moved to the front once a segment: the buffer is appended to in place between
            rest = self._held - segments * self.hop
            buf[:rest] = buf[segments * self.hop : self._held]
            self._held = rest
        return out

    def _mixer_phase(self, m_first: int) -> np.ndarray:
        """Each channel's mixer phase at the first input of the segment whose first output is ``m_first``:
        ``exp(-j*2*pi*k*s_abs/N)`` for that input's absolute index ``s_abs`` (the segment's bins are those of the
        unmixed input, shifted by ``k`` channels)."""
        n = self.n_channels
        origin = 0 if self._start_index is None else self._start_index
        start = (origin + m_first * self.decimation - self.lead_in) % n
        return self._twiddles[(self._channel_bins * start) % n]

    def _check(self, block: IQBlock) -> None:
        if not math.isclose(block.sample_rate, self.in_rate_hz, rel_tol=1e-9):
            raise ValueError(f"filterbank[{block.receiver_id}]: block sample_rate {block.sample_rate} Hz, configured"
                             f" in_rate_hz {self.in_rate_hz} Hz")
        if not math.isclose(block.center_freq, self.center_freq_hz, rel_tol=1e-12, abs_tol=1e-3):
            raise ValueError(f"filterbank[{block.receiver_id}]: block center_freq {block.center_freq} Hz, configured"
                             f" center_freq_hz {self.center_freq_hz} Hz")
        if np.ndim(block.samples) != 1:
            raise ValueError(f"filterbank[{block.receiver_id}]: samples must be 1-D, got shape {np.shape(block.samples)}")
        if self._receiver_id is not None and block.receiver_id != self._receiver_id:
            raise ValueError(f"filterbank: got a block of receiver {block.receiver_id!r} in the stream of"
                             f" {self._receiver_id!r}")
        if not self.follows(block):
            if block.sample_index != self._next_index:
                why = f"starts at sample_index {block.sample_index}, expected {self._next_index}"
            else:
                why = f"carries {Flags(block.flags)!r}"
            raise ValueError(f"filterbank[{block.receiver_id}]: block {why}; count the gap and call reset() first")


class FeatureRateResampler:
    """Every channel of a ``FilterBank`` from ``bank.out_rate_hz`` to ``feature_rate_hz`` (Hz) at once, with state
    across blocks: the ``Channelizer`` of ``feature_rate_channelizers`` applied to all rows, as one resampler over a
    channel axis instead of one Python object per channel.

    The same filter (``Channelizer``'s ``up``, ``down`` and ``taps``; the 0 Hz mixer is the identity), the same output
    instants and ``t0_ns`` rule, the same accounting (``samples_in``, ``samples_out``, ``input_samples_represented``);
    the outputs equal each channel's ``Channelizer`` to float32 rounding (BLAS orders the sums over a wider array).
    Samples are kept time first (``[n, C]`` complex64, viewed as ``[n, 2C]`` float32 pairs: real taps act on each
    component alike), so a cycle of ``up`` outputs (``down`` inputs on) is one ``[up, L]`` matrix applied to ``L``
    consecutive input rows of every channel, and every cycle of a block one batched matrix product.

    ``process(bank_output) -> (samples [n, C] complex64, t0_ns) | None`` takes the bank's ``ChannelBlock``s in order.
    A ratio that needs the ``Channelizer``'s two-stage cascade (far above the feature rate) runs the channelizers
    one per row, as ``feature_rate_channelizers`` gives them.
    """

    def __init__(self, bank: FilterBank, feature_rate_hz: float, taps_per_phase: int = 20) -> None:
        first_hz = bank.center_freq_hz + bank.channels[0] * bank.channel_spacing_hz
        template = Channelizer(bank.out_rate_hz, first_hz, first_hz, feature_rate_hz, taps_per_phase)
        self.up, self.down = template.up, template.down // template.decimation1
        self.n_channels = len(bank.channels)
        self._in_rate = Fraction(bank.out_rate_hz)
        self.per_channel: list[Channelizer] = []
        if template.decimation1 > 1:
            self.per_channel = feature_rate_channelizers(bank, feature_rate_hz, taps_per_phase)
        else:
            self.half_len, self._span, branches = polyphase_branches(self.up, self.down, template.taps)
            self._cycle_first, self._cycle_taps = self._cycle_matrix(branches.reshape(self.up, self._span))
            # Rows of zeros after the newest input: the last cycle of a push may read past it (for outputs not yet
            # ready, which are dropped).
            self._pad = self._cycle_taps.shape[1] + self.down
        self.reset()

    def _cycle_matrix(self, branches: np.ndarray) -> tuple[int, np.ndarray]:
        """One cycle of ``up`` outputs as one matrix: output ``j = up*k + p`` reads inputs
        ``down*k + first + l`` (``l < L``) with the weights of row ``p`` of the returned float32 ``[up, L]``.

        Output ``j``'s newest input is ``(j*down + half_len) // up`` and its branch ``(j*down + half_len) % up``
        (``polyphase_branches``); for ``j = up*k + p`` both move by exactly ``down`` inputs and no branch from one
        cycle to the next, so each row holds its branch at its own offset and zeros elsewhere. Returns ``first``
        (the lowest offset, input samples) and the matrix."""
        t = np.arange(self.up) * self.down + self.half_len
        starts = t // self.up - self._span + 1
        first = int(starts[0])
        matrix = np.zeros((self.up, int(starts[-1]) - first + self._span), dtype=np.float32)
        for p, (start, branch) in enumerate(zip(starts, t % self.up)):
            matrix[p, start - first : start - first + self._span] = branches[branch]
        return first, matrix

    def reset(self) -> None:
        """Forget all input and the stream origin: the next bank output is input 0, preceded by zeros."""
        for channelizer in self.per_channel:
            channelizer.reset()
        self.samples_in = self.samples_out = 0
        self._start_index: int | None = None
        self._next_index: int | None = None
        if not self.per_channel:
            self._hist_start = min(0, self._newest_input(0) - self._span + 1)
            self._hist = np.zeros((-self._hist_start, self.n_channels), dtype=np.complex64)

    def input_samples_represented(self, n_out: int) -> int:
        """Bank outputs owned by the first ``n_out`` outputs: ``ceil(n_out*down/up)``, as ``Channelizer``'s."""
        return -(-int(n_out) * self.down // self.up)

    def _newest_input(self, j: int) -> int:
        return (j * self.down + self.half_len) // self.up

    def _ready(self, samples_in: int) -> int:
        return max(0, (self.up * samples_in - self.half_len - 1) // self.down + 1)

    def process(self, block: ChannelBlock) -> tuple[np.ndarray, int] | None:
        """Consume one bank output block; the outputs that became ready (``[n, C]``) and the time of the first, or None."""
        if self.per_channel:
            rows = [ch.process(block.channel_block(i)) for i, ch in enumerate(self.per_channel)]
            self.samples_in, self.samples_out = self.per_channel[0].samples_in, self.per_channel[0].samples_out
            return None if rows[0] is None else (np.stack([r.samples for r in rows], axis=1), rows[0].t0_ns)
        if self._next_index is not None and block.sample_index != self._next_index:
            raise ValueError(f"filterbank[{block.receiver_id}]: feature-rate step got bank output {block.sample_index},"
                             f" expected {self._next_index}; reset() after a gap")
        if self._start_index is None:
            self._start_index = block.sample_index
        self._next_index = block.sample_index + block.samples.shape[1]
        first_out = self.samples_out
        samples = self._push(block.samples)
        if self.samples_out == first_out:
            return None
        offset = block.sample_index - self._start_index
        numerator = (first_out * self.down - self.up * offset) * 10**9 * self._in_rate.denominator
        denominator = self.up * self._in_rate.numerator
        return samples, int(block.t0_ns + (2 * numerator + denominator) // (2 * denominator))

    def _push(self, channel_rows: np.ndarray) -> np.ndarray:
        """Append bank outputs (``[C, n]``); return the feature-rate outputs they made ready (``[m, C]``).

        Whole cycles of ``up`` outputs are one matrix product each (``_cycle_matrix``, batched over cycles: one BLAS
        call per push), from the cycle holding the first output not yet given to the one holding the last ready;
        outputs of those cycles that were given before or are not ready yet are computed and dropped."""
        held, n_new = len(self._hist), channel_rows.shape[1]
        grown = np.empty((held + n_new + self._pad, self.n_channels), dtype=np.complex64)
        grown[:held] = self._hist
        grown[held : held + n_new] = channel_rows.T
        grown[held + n_new :] = 0
        self.samples_in += n_new
        j0, j1 = self.samples_out, self._ready(self.samples_in)
        if j1 > j0:
            k0, k1 = j0 // self.up, -(-j1 // self.up)
            pairs = grown.view(np.float32)
            row_bytes = pairs.strides[0]
            length = self._cycle_taps.shape[1]
            lo = self.down * k0 + self._cycle_first - self._hist_start
            windows = np.lib.stride_tricks.as_strided(pairs[lo:], (k1 - k0, length, pairs.shape[1]),
                                                      (self.down * row_bytes, row_bytes, pairs.strides[1]),
                                                      writeable=False)
            cycles = np.matmul(self._cycle_taps, windows)  # [K, up, 2C]: outputs up*k0 .. up*k1 - 1
            out = cycles.reshape(-1, pairs.shape[1])[j0 - self.up * k0 : j1 - self.up * k0].view(np.complex64)
        else:
            out = np.empty((0, self.n_channels), dtype=np.complex64)
        self.samples_out = max(j0, j1)
        # Keep from the first input of the cycle that holds the next output (its earlier outputs are recomputed).
        keep_from = min(self.down * (self.samples_out // self.up) + self._cycle_first, self.samples_in)
        self._hist = grown[max(0, keep_from - self._hist_start) : held + n_new].copy()
        self._hist_start = max(keep_from, self._hist_start)
        return out


def feature_rate_channelizers(bank: FilterBank, feature_rate_hz: float, taps_per_phase: int = 20) -> list[Channelizer]:
    """One ``Channelizer`` per channel of ``bank`` (row order), resampling ``bank.out_rate_hz`` -> ``feature_rate_hz``.

    Each mixes by 0 Hz (its centre and target are the channel's centre) and resamples with state across
    blocks; feed it ``ChannelBlock.channel_block(row)``. ValueError (``check_tunable``'s) when the two rates have
    no small rational ratio.
    """
    return [
        Channelizer(bank.out_rate_hz, freq, freq, feature_rate_hz, taps_per_phase)
        for freq in (bank.center_freq_hz + k * bank.channel_spacing_hz for k in bank.channels)
    ]
