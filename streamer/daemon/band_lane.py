"""The band path's lanes: each receiver's IQ split into the channels of the plan it covers, at the feature rate,
and windows of every channel cut on one grid.

- ``BandFrontEnd``: one ``dsp.filterbank.FilterBank`` over a receiver's band, on the grid ``feature_grid`` picks
  (every covered channel on a centre), then every covered channel to the feature rate (24 kHz) by one
  ``FeatureRateResampler`` (each channel's ``Channelizer`` filter, over a channel axis).
  Each channel's stream is flat to ``PASSBAND_HZ`` around its centre (the bank's stopband at its output's
  Nyquist), beyond the ±9.6 kHz from which the detection rule and the model read the noise, as the single-channel
  ``Channelizer``'s output is. A channel is covered when its whole bandwidth lies inside the receiver's band
  (``daemon.coverage.channel_in_band``, the rule ``heimdall check`` applies).
- ``BandLane``: a ``daemon.lane.Lane`` with that front end and a ``ChannelRings`` (a ring buffer with one row
  per covered channel): the same block checks, and the same accounting, ``received == used + buffered + dropped``
  in input samples (row ``j`` of the rings owns the input samples its bank outputs own).
- ``BandAligner``: the ``WindowAligner``'s grid and decisions, cutting ``BandWindow``s: each present receiver's
  covered channels ``[C_covered, N]``, read in place from its ring (no window-sized copy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from receivers.base import IQBlock
from streamer.config import ChannelConfig
from streamer.daemon.aligner import WindowAligner
from streamer.daemon.coverage import channel_in_band
from streamer.daemon.lane import Lane, LaneSettings, UntunableBlock
from streamer.daemon.ringbuffer import RingBuffer
from streamer.dsp.filterbank import (
    FeatureRateResampler,
    FilterBank,
    channel_number,
    feature_grid,
)

#: Each channel's stream is flat to this far from its centre (Hz): past the ±9.6 kHz from which the detection rule
#: and the model read the noise (0.4 x the 24 kHz feature rate), as the single-channel Channelizer's output is.
PASSBAND_HZ = 11_000.0
#: Lowest filter-bank output rate (Hz): its Nyquist (where the bank's stopband starts) sits past ``PASSBAND_HZ``.
MIN_BANK_RATE_HZ = 25_000.0


@dataclass(frozen=True)
class ChannelRows:
    """A run of feature-rate samples of a receiver's covered channels: ``samples`` complex64 ``[n, C_covered]``
    (time first, as the feature-rate step makes them; ``ChannelRings`` stores them channel first), ``t0_ns`` the Unix time of the first row."""

    samples: np.ndarray
    t0_ns: int


class BandFrontEnd:
    """FilterBank + the feature-rate step of every covered channel (``FeatureRateResampler``), for one receiver's band.

    It stands where a ``Lane`` keeps its ``Channelizer``, with the same accounting verbs: ``samples_in`` (input
    samples since the reset), ``input_samples_represented(n)`` (the input samples the first ``n`` output rows own:
    row ``j`` owns bank outputs by the Channelizer's rule, each bank output ``M`` inputs), ``reset()`` and
    ``process(block) -> ChannelRows | None``. ValueError when no channel of ``plan`` lies in the band, or the band
    puts them on no usable grid.
    """

    def __init__(self, in_rate_hz: float, center_freq_hz: float, plan: Sequence[ChannelConfig], feature_rate_hz: float):
        self.in_rate_hz = float(in_rate_hz)
        self.center_freq_hz = float(center_freq_hz)
        self.covered = np.array([channel_in_band(ch.centre_hz, ch.bandwidth_hz, center_freq_hz, in_rate_hz)
                                 for ch in plan], dtype=bool)
        if not self.covered.any():
            names = ", ".join(ch.name for ch in plan[:6]) + (" .." if len(plan) > 6 else "")
            raise ValueError(f"no channel of the plan ({names}) lies inside the band {center_freq_hz:.9g} Hz ± "
                             f"{in_rate_hz / 2:.9g} Hz")
        freqs = [ch.centre_hz for ch, inside in zip(plan, self.covered) if inside]
        spacing_hz, oversampling = feature_grid(in_rate_hz, center_freq_hz, freqs, MIN_BANK_RATE_HZ)
        numbers = [channel_number(f, center_freq_hz=center_freq_hz, in_rate_hz=in_rate_hz, channel_spacing_hz=spacing_hz)
                   for f in freqs]
        out_rate_hz = oversampling * spacing_hz
        self.bank = FilterBank(in_rate_hz, center_freq_hz, spacing_hz, numbers, oversampling=oversampling,
                               passband_hz=PASSBAND_HZ, stopband_hz=out_rate_hz / 2)
        self.to_feature_rate = FeatureRateResampler(self.bank, feature_rate_hz)

    @property
    def samples_in(self) -> int:
        return self.bank.samples_in

    def input_samples_represented(self, n_out: int) -> int:
        return self.bank.input_samples_represented(self.to_feature_rate.input_samples_represented(n_out))

    def reset(self) -> None:
        self.bank.reset()
        self.to_feature_rate.reset()

    def process(self, block: IQBlock) -> ChannelRows | None:
        out = self.bank.process(block)
        if out is None:
            return None
        rows = self.to_feature_rate.process(out)
        return None if rows is None else ChannelRows(*rows)


class ChannelRings(RingBuffer):
    """A ``RingBuffer`` whose every index holds one sample per covered channel, stored channel first (complex64
    ``[columns, capacity]``): a window of one channel is a contiguous run, so cutting ``[C, N]`` windows copies rows
    instead of transposing."""

    def __init__(self, capacity: int, sample_rate_hz: float, columns: int) -> None:
        super().__init__(capacity, sample_rate_hz)
        self._data = np.zeros((columns, self.capacity), dtype=np.complex64)

    def _write(self, pos: int, head: int, samples: np.ndarray) -> None:
        """Store rows ``[n, columns]`` (time first, as ``ChannelRows`` carries them) channel first, from ring
        position ``pos``: ``RingBuffer.append`` does the rest."""
        # Transposed in a scratch array first: assigned straight from the transposed view, numpy walks the source's
        # order and writes each sample to another channel's row, one page apart (many times slower).
        self._data[:, pos : pos + head] = np.ascontiguousarray(samples[:head].T)
        self._data[:, : len(samples) - head] = np.ascontiguousarray(samples[head:].T)

    def read(self, start: int, n: int) -> np.ndarray:
        """``n`` indices from segment index ``start`` as ``[n, columns]`` (transposed: ``.T`` of it is channel first, each
        channel's run contiguous); they must be held. Read-only, valid until the next ``append``: a view of the ring
        where the run does not wrap (the band aligner hands it on as a window's rows), else a copy."""
        if start < self.start_index or start + n > self.end_index:
            raise IndexError(f"[{start}, {start + n}) not held in [{self.start_index}, {self.end_index})")
        pos = start % self.capacity
        head = min(n, self.capacity - pos)
        if head == n:
            view = self._data[:, pos : pos + n]
            view.flags.writeable = False
            return view.T
        out = np.empty((len(self._data), n), dtype=np.complex64)
        out[:, :head] = self._data[:, pos : pos + head]
        out[:, head:] = self._data[:, : n - head]
        return out.T


class BandLane(Lane):
    """A ``Lane`` whose front end is a ``BandFrontEnd`` and whose ring holds every covered channel.

    ``covered`` (bool ``[C]``, plan order) says which channels the current front end carries; none before the first
    block. A block whose band holds no channel of the plan is refused as ``untunable``, as a single-channel lane
    refuses one whose band misses the target.
    """

    def __init__(self, receiver_id: str, settings: LaneSettings, plan: Sequence[ChannelConfig], on_drop, on_bad_frame):
        super().__init__(receiver_id, settings, on_drop, on_bad_frame)
        self.plan = tuple(plan)
        self._capacity = self.ring.capacity
        self.ring = ChannelRings(self._capacity, settings.model_rate_hz, 0)
        self.covered = np.zeros(len(self.plan), dtype=bool)

    def _check_continuity(self, block: IQBlock) -> None:
        front = self.channelizer
        if front is None or front.in_rate_hz != block.sample_rate or front.center_freq_hz != block.center_freq:
            if front is not None:
                self._restart("retune")
            try:
                front = BandFrontEnd(block.sample_rate, block.center_freq, self.plan, self.settings.model_rate_hz)
            except ValueError as exc:
                self.channelizer = None
                self.ring.clear()
                self.covered = np.zeros(len(self.plan), dtype=bool)
                raise UntunableBlock(str(exc)) from None
            self.channelizer = front
            self.ring = ChannelRings(self._capacity, self.settings.model_rate_hz, int(front.covered.sum()))
            self.covered = front.covered.copy()
            # A retune starts a new stream: as the single-channel lane does, no gap or clock check against the old one.
            self._expected_index = self._expected_t_ns = None
        super()._check_continuity(block)


@dataclass(frozen=True)
class BandWindow:
    """One aligned window of every channel of the plan, each receiver's samples where its ring holds them.

    t_start_ns, t_end_ns, receiver_ids, present, mask_reasons : as ``Window``'s.
    covered : bool ``[R, C]``, the receiver's band holds the channel (only meaningful where ``present``).
    rows : per receiver, complex64 ``[covered channels, N]`` (its covered channels in plan order, each row
        contiguous), or None where not present. Read-only views of the receiver's ring where the window does not
        wrap in it: valid until that receiver's next block is pushed, so a caller uses them (or copies them)
        before pushing again, as ``BandPipeline.poll`` does. No window-sized copy is made.
    """

    t_start_ns: int
    t_end_ns: int
    receiver_ids: tuple[str, ...]
    present: np.ndarray
    mask_reasons: dict[str, str]
    covered: np.ndarray
    rows: tuple[np.ndarray | None, ...]

    @property
    def samples(self) -> np.ndarray:
        """Every channel of every receiver as one new complex64 ``[R, C, N]`` array, zeros where a receiver is not
        present or does not cover the channel (a copy: for inspection, not the daemon's path)."""
        n = next((rows.shape[1] for rows in self.rows if rows is not None), 0)
        out = np.zeros(self.covered.shape + (n,), dtype=np.complex64)
        for r, rows in enumerate(self.rows):
            if rows is not None:
                out[r, self.covered[r]] = rows
        return out


class BandAligner(WindowAligner):
    """``WindowAligner`` over ``BandLane``s: the same grid and decisions, cutting ``BandWindow``s whose samples stay in
    the lanes' rings (``BandWindow.rows``)."""

    def __init__(self, lanes: list[BandLane], n_channels: int, **options) -> None:
        super().__init__(lanes, **options)
        self.n_channels = n_channels

    def _cut(self, t0: int, t1: int, host_ns: int) -> BandWindow:
        n_rx = len(self.lanes)
        present = np.zeros(n_rx, dtype=bool)
        covered = np.zeros((n_rx, self.n_channels), dtype=bool)
        rows: list[np.ndarray | None] = []
        reasons = {}
        for i, lane in enumerate(self.lanes):
            reason = None
            if not lane.covers(t0, self.n_samples):
                if not self.is_live(lane.receiver_id, host_ns):
                    reason = "offline"
                elif lane.starts_after(t0):
                    reason = "gap"
                else:
                    reason = "late"
                reasons[lane.receiver_id] = reason
            taken = lane.take(t0, self.n_samples, reason)
            if taken is None:
                rows.append(None)
            else:
                rows.append(taken.T)  # channel first: each channel's run contiguous in the ring
                present[i] = True
                covered[i] = lane.covered
        return BandWindow(t0, t1, tuple(lane.receiver_id for lane in self.lanes), present, reasons, covered,
                          tuple(rows))
