"""Lane: one receiver's path from IQBlock to its ring buffer, with exact sample accounting.

Per receiver: check the block (dtype, finite values, index continuity, clock), channelize it to the model
rate and append it to the ring buffer; hand out windows ``[t, t + W)`` and forget what lies before them.

Accounting is kept in input samples (what the adapter delivered), so that at every moment

    received == used + buffered + dropped (pipeline reasons)

holds exactly. Output sample ``j`` of the channelizer "owns" input samples
``[ceil(j*down/up), ceil((j+1)*down/up))``, so converting any run of outputs back to inputs telescopes.
Samples a source lost before delivery (overflow, index gaps) are counted separately, with stage "source".

A block is refused whole, counted by reason, when its samples are not finite (``non_finite``) or beyond
``MAX_SAMPLE_MAGNITUDE`` (``out_of_range``), or when the channelizer cannot bring its band to the target
(``untunable``; logged once per lane with the receiver's centre, rate and the target).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from receivers.base import Flags, IQBlock, plausible_rate
from streamer.core.boundedlog import BoundedLog
from streamer.daemon.ringbuffer import RingBuffer
from streamer.dsp.channelizer import Channelizer

if TYPE_CHECKING:
    from streamer.config import Config

_log = BoundedLog(logging.getLogger(__name__))

#: stage label of drops that happened before the pipeline received the samples (never in ``received``).
SOURCE = "source"
PIPELINE = "pipeline"
#: Largest |I| or |Q| accepted (full scale is 1.0): 1000 x the clip level of any ADC, so a block beyond it
#: is not a signal; below it ``|x|**2`` <= 2e6 per sample and a window's power sums stay finite in float32
#: (values near 3e38 overflowed them and made every window's estimate NaN).
MAX_SAMPLE_MAGNITUDE = 1e3


def samples_problem(samples: np.ndarray) -> str | None:
    """``"non_finite"`` (NaN or infinite), ``"out_of_range"`` (beyond ``MAX_SAMPLE_MAGNITUDE``) or None.

    ``samples`` is complex64; the check runs on its float32 view (two reductions, no temporaries).

    Examples
    --------
    >>> samples_problem(np.array([0.5 + 1j, -1], np.complex64)) is None
    True
    >>> samples_problem(np.array([3e38j], np.complex64)), samples_problem(np.array([np.nan], np.complex64))
    ('out_of_range', 'non_finite')
    """
    if not len(samples):
        return None
    parts = np.ascontiguousarray(samples).view(np.float32)  # a copy only for a strided view
    lo, hi = parts.min(), parts.max()  # NaN propagates into both
    if lo >= -MAX_SAMPLE_MAGNITUDE and hi <= MAX_SAMPLE_MAGNITUDE:
        return None
    return "out_of_range" if math.isfinite(lo) and math.isfinite(hi) else "non_finite"


@dataclass(frozen=True)
class LaneSettings:
    """Shared by every lane of a pipeline."""

    target_freq_hz: float
    model_rate_hz: float
    capacity_s: float
    clock_jump_tolerance_s: float

    @classmethod
    def of(cls, config: Config) -> LaneSettings:
        """A single-channel config's lanes: its target (Hz), the model rate (Hz), ring length and clock tolerance (s)."""
        return cls(
            target_freq_hz=config.network.target_freq_hz,
            model_rate_hz=config.features.sample_rate_hz,
            capacity_s=config.pipeline.buffer_s,
            clock_jump_tolerance_s=config.pipeline.clock_jump_tolerance_s,
        )


class UntunableBlock(Exception):
    """The block's rate or centre frequency cannot be channelized to the target (counted, not raised further)."""


DropFn = Callable[[str, str, int], None]  # (reason, stage, n_samples)
BadFrameFn = Callable[[str], None]  # (reason)


class Lane:
    """Channelizer + ring buffer of one receiver, and the counts that prove no sample went missing."""

    def __init__(self, receiver_id: str, settings: LaneSettings, on_drop: DropFn, on_bad_frame: BadFrameFn,
                 before_restart: Callable[[], None] | None = None) -> None:
        self.receiver_id = receiver_id
        self.settings = settings
        self._on_drop = on_drop
        self._on_bad_frame = on_bad_frame
        #: Called before a restart forgets the held samples (an edge hands on what its ring holds first).
        self._before_restart = before_restart
        self.ring = RingBuffer(int(math.ceil(settings.capacity_s * settings.model_rate_hz)), settings.model_rate_hz)
        self.channelizer: Channelizer | None = None
        self.received = 0
        self.used = 0
        self.dropped: Counter[tuple[str, str]] = Counter()
        self._expected_index: int | None = None
        self._expected_t_ns: int | None = None
        self._consumed_until_ns: int | None = None  # windows before this are already emitted
        self._pending_restart: str | None = None
        self.last_block: IQBlock | None = None
        self.untunable_reason: str | None = None  # why the last untunable block was refused (for logs)
        self._untunable_logged = False

    # Accounting -----------------------------------------------------------------------------------
    @property
    def buffered(self) -> int:
        """Input samples held in the channelizer or the ring buffer."""
        if self.channelizer is None:
            return 0
        return self.channelizer.samples_in - self._inputs_before(self.ring.start_index)

    def _inputs_before(self, out_index: int) -> int:
        assert self.channelizer is not None
        return self.channelizer.input_samples_represented(out_index)

    def _drop(self, reason: str, n: int, stage: str = PIPELINE) -> None:
        if n > 0:
            self.dropped[(reason, stage)] += n
            self._on_drop(reason, stage, n)

    def _drop_outputs(self, reason: str, first: int, last: int) -> None:
        self._drop(reason, self._inputs_before(last) - self._inputs_before(first))

    def _restart(self, reason: str) -> None:
        """Forget all held samples (counted under ``reason``) and start a new segment."""
        if self._before_restart is not None:
            self._before_restart()
        if self.channelizer is not None:
            self._drop(reason, self.buffered)
            self.channelizer.reset()
        self.ring.clear()

    # Input ----------------------------------------------------------------------------------------
    def push(self, block: IQBlock) -> None:
        """Take one block from the adapter. Every sample in it is counted as received, then placed or dropped."""
        n = len(block.samples) if isinstance(block.samples, np.ndarray) and block.samples.ndim == 1 else 0
        self.received += n
        if not isinstance(block.samples, np.ndarray) or block.samples.ndim != 1 or block.samples.dtype != np.complex64:
            self._on_bad_frame("bad_dtype")
            self._drop("bad_dtype", n)
            return
        if not plausible_rate(block.sample_rate):  # also NaN; keeps time arithmetic finite
            self._on_bad_frame("bad_rate")
            self._drop("bad_rate", n)
            return
        problem = samples_problem(block.samples)
        if problem is not None:
            self._on_bad_frame(problem)
            self._drop(problem, n)
            # The stream now has a hole the channelizer must not filter across; it is not a source gap.
            self._expected_index = block.end_index
            self._expected_t_ns = block.t0_ns + block.duration_ns
            self._pending_restart = problem
            return
        if block.flags & Flags.DISCONTINUITY:  # a reconnected source may restart its sample count
            self._expected_index = self._expected_t_ns = None
        if self._expected_index is not None and block.sample_index < self._expected_index:
            self._on_bad_frame("index_backwards")
            self._drop("index_backwards", n)
            return
        try:
            self._check_continuity(block)
        except UntunableBlock as exc:
            self._on_bad_frame("untunable")
            self._drop("untunable", n)
            self.untunable_reason = str(exc)
            self._expected_index = None
            if not self._untunable_logged:  # every block is refused until the source or the config changes
                self._untunable_logged = True
                _log.warning(
                    ("untunable", self.receiver_id),
                    "receiver %s: centre %.9g Hz, rate %.9g Hz cannot reach the target %.9g Hz at %.9g Hz;"
                    " its blocks are dropped (untunable): %s",
                    self.receiver_id, block.center_freq, block.sample_rate, self.settings.target_freq_hz,
                    self.settings.model_rate_hz, exc,
                )
            return
        self.last_block = block
        self._expected_index = block.end_index
        self._expected_t_ns = block.t0_ns + block.duration_ns
        if n == 0:
            return
        out = self.channelizer.process(block)
        if out is not None and len(out.samples):
            overwritten = self.ring.append(out.samples, out.t0_ns)
            if overwritten:
                self._drop_outputs("overwrite", self.ring.start_index - overwritten, self.ring.start_index)
        self._discard_consumed()

    def _check_continuity(self, block: IQBlock) -> None:
        restart, self._pending_restart = self._pending_restart, None
        if restart is not None:
            pass
        elif self.channelizer is None or (
            self.channelizer.in_rate_hz != block.sample_rate or self.channelizer.center_freq_hz != block.center_freq
        ):
            restart = "retune"
        elif block.flags & Flags.DISCONTINUITY:
            restart = "discontinuity"
        elif block.flags & Flags.OVERFLOW:  # the adapter counted the loss; the signal is not continuous
            restart = "overflow"
        elif self._expected_index is not None and block.sample_index > self._expected_index:
            self._drop("gap", block.sample_index - self._expected_index, SOURCE)
            restart = "gap"
        elif self._expected_t_ns is not None:
            jump_s = abs(block.t0_ns - self._expected_t_ns) / 1e9
            if jump_s > self.settings.clock_jump_tolerance_s:
                self._on_bad_frame("clock_jump")
                restart = "clock_jump"
        if restart is None:
            return
        if self.channelizer is None or restart == "retune":
            if self.channelizer is not None:
                self._restart("retune")
            try:
                self.channelizer = Channelizer(
                    in_rate_hz=block.sample_rate,
                    center_freq_hz=block.center_freq,
                    target_freq_hz=self.settings.target_freq_hz,
                    out_rate_hz=self.settings.model_rate_hz,
                )
            except ValueError as exc:  # rate ratio not rational enough, or the target outside the band
                self.channelizer = None
                self.ring.clear()
                raise UntunableBlock(str(exc)) from None
            self.ring.clear()
            self._warn_if_channelized_elsewhere(block)
        else:
            self._restart(restart)

    def _warn_if_channelized_elsewhere(self, block: IQBlock) -> None:
        """A stream already at the model rate but not centred on the target is most likely a channelizing edge
        (``heimdall receiver --channelize``) whose config names another target: its channel arrives shifted."""
        target = self.settings.target_freq_hz
        if block.sample_rate == self.settings.model_rate_hz and block.center_freq != target:
            _log.warning(
                ("channelized_elsewhere", self.receiver_id),
                "receiver %s: a stream at the model rate (%.9g Hz) centred on %.9g Hz, not on the target %.9g Hz: a"
                " channelizing edge whose config names another network.target_freq_hz? Its channel is shifted by"
                " %.9g Hz and part of it is missing",
                self.receiver_id, block.sample_rate, block.center_freq, target, target - block.center_freq,
            )

    def _discard_consumed(self) -> None:
        """Samples that belong to windows already emitted arrived too late: drop them."""
        if self._consumed_until_ns is None or self.ring.t_anchor_ns is None or not len(self.ring):
            return
        first = self.ring.start_index
        cut = min(self.ring.index_at(self._consumed_until_ns), self.ring.end_index)
        if cut > first:
            self.ring.discard_before(cut)
            self._drop_outputs("late", first, cut)

    # Windows --------------------------------------------------------------------------------------
    def span_ns(self) -> tuple[int, int] | None:
        """[first, end) time of the held segment, or None when empty."""
        if self.ring.t_anchor_ns is None or not len(self.ring):
            return None
        return self.ring.time_of(self.ring.start_index), self.ring.time_of(self.ring.end_index)

    def starts_after(self, t_ns: int) -> bool:
        """The held segment begins after the sample nearest ``t_ns`` (False when empty).

        In sample indices, as ``covers`` is: a lane's samples need not sit on the window grid, and a
        continuous lane's first sample of a window may lie up to half a sample after the window start.
        """
        if self.ring.t_anchor_ns is None or not len(self.ring):
            return False
        return self.ring.start_index > self.ring.index_at(t_ns)

    def covers(self, t_start_ns: int, n: int) -> bool:
        if self.ring.t_anchor_ns is None:
            return False
        i0 = self.ring.index_at(t_start_ns)
        return self.ring.start_index <= i0 and i0 + n <= self.ring.end_index

    def take_held(self) -> tuple[int, int, np.ndarray] | None:
        """Every sample the ring holds, as ``(segment index of the first, its time in Unix ns, samples)``, counted
        as used and forgotten; None when it holds none.

        For an edge that hands its channelized stream on as it comes (``daemon.edge_channelizer``) instead of in
        windows. Segment indices restart at 0 after each restart of the lane (gap, retune, refused block).
        """
        if self.ring.t_anchor_ns is None or not len(self.ring):
            return None
        first, end = self.ring.start_index, self.ring.end_index
        samples = self.ring.read(first, end - first)
        t0_ns = self.ring.time_of(first)
        self.used += self._inputs_before(end) - self._inputs_before(first)
        self.ring.discard_before(end)
        return first, t0_ns, samples

    def take(self, t_start_ns: int, n: int, mask_reason: str | None) -> np.ndarray | None:
        """Samples of ``[t_start, t_start + n/fs)`` if held and ``mask_reason`` is None; forgets everything before the window end.

        A masked receiver's samples in the window are dropped under ``mask_reason``.
        """
        t_end_ns = t_start_ns + int(round(n * 1e9 / self.settings.model_rate_hz))
        self._consumed_until_ns = t_end_ns
        if self.ring.t_anchor_ns is None or not len(self.ring):
            return None
        first = self.ring.start_index
        i0 = self.ring.index_at(t_start_ns)
        cut = min(max(i0 + n, first), self.ring.end_index)
        window = None
        if mask_reason is None and first <= i0 and i0 + n <= self.ring.end_index:
            window = self.ring.read(i0, n)
            # Samples before the window: the head of a new segment, which started between two windows.
            self._drop_outputs("alignment", first, i0)
            used = self._inputs_before(cut) - self._inputs_before(i0)
            self.used += used
        else:
            self._drop_outputs(mask_reason or "gap", first, cut)
        self.ring.discard_before(cut)
        return window
