"""ReplayPacer: keeps receivers that are not real-time in step with each other and with the pipeline.

A real-time source delivers at the pace of its signal. A source that is not (SigMF replay with
``realtime = false``, an unpaced simulator) delivers as fast as it is let, and left alone one such receiver
runs ahead of the others, so that windows are cut before the others' data has arrived (masked and dropped
``late``), and ahead of the pipeline, so that its ring buffer overwrites samples no window has taken yet
(``overwrite``). The daemon calls ``admit`` in the adapter's thread before handing such a block over;
it waits until both of these hold:

- stream time (``IQBlock.t0_ns``, ns): the block ends at most ``lead_s`` after the newest handed-over sample
  of every other paced receiver, unless this receiver is the one furthest behind (it may always go, so
  one of them always can);
- samples in flight: this receiver's samples handed over but not yet used or dropped by the windows
  (queued, plus held in its lane as last reported by ``settle``), with the block, fit in ``budget_s`` of its
  signal, so its ring buffer never has to overwrite. A block is admitted whenever nothing of its receiver
  is in flight, however long it is.

Receivers configured as not real-time are expected from the start: no paced block goes until each has
arrived with its first block or has left (``leave``: its source ended, failed or turned out to be
real-time), so one that is slow to open is not left behind.

``limits(config)`` derives ``lead_s`` (half of ``pipeline.late_tolerance_s``) and ``budget_s``
(``pipeline.buffer_s`` less ``RING_MARGIN_S``), once per config (``streamer.daemon.app.build``). With blocks
no longer than ``late_tolerance_s`` no paced receiver is then masked ``late`` while another one waits, and
none overwrites its ring buffer, provided the buffer holds two windows plus a block (a lane may need that
much to cover its next window).

Examples
--------
>>> import threading, numpy as np
>>> from receivers.base import IQBlock, plausible_rate
>>> def block(rid, k):  # 0.1 s blocks at 1 kS/s
...     return IQBlock(rid, np.zeros(100, np.complex64), 100 * k, k * 10**8, "host", 1000.0, 0.0)
>>> pacer = ReplayPacer(expected=["a", "b"], lead_s=0.1, budget_s=10.0)
>>> stop = threading.Event()
>>> pacer.admit(block("a", 0), stop, timeout_s=0.01)  # "a" has arrived, but "b" has not shown up yet
False
>>> pacer.admit(block("b", 0), stop, timeout_s=0.01), pacer.delivered(block("b", 0))
(True, None)
>>> pacer.admit(block("a", 0), stop, timeout_s=0.01), pacer.delivered(block("a", 0))
(True, None)
>>> pacer.admit(block("a", 1), stop, timeout_s=0.01), pacer.delivered(block("a", 1))  # ends 0.1 s after b
(True, None)
>>> pacer.admit(block("a", 2), stop, timeout_s=0.01)  # would end 0.2 s after b: waits for b
False
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from typing import Iterable, Mapping

from receivers.base import IQBlock, plausible_rate

#: Kept free in each ring buffer below ``pipeline.buffer_s`` (s): the channelizer's rounding of input to
#: output samples may put a few more samples in the ring than the input count suggests.
RING_MARGIN_S = 0.01

#: How often a waiting ``admit`` looks at its ``stop`` event (s); the pacer's own changes wake it at once.
STOP_POLL_S = 0.05


def limits(config) -> dict[str, float]:
    """``lead_s`` and ``budget_s`` (both s) for a daemon config's ``[pipeline]`` section."""
    p = config.pipeline
    return {"lead_s": p.late_tolerance_s / 2, "budget_s": max(0.0, p.buffer_s - RING_MARGIN_S)}


def _rate(block: IQBlock) -> float:
    """The block's rate (Hz); infinite for a rate the lane will refuse (bad_rate: outside ``plausible_rate``'s
    MIN_SAMPLE_RATE_HZ to MAX_SAMPLE_RATE_HZ, or not a number), which then bounds nothing."""
    rate = block.sample_rate
    return rate if isinstance(rate, (int, float)) and plausible_rate(rate) else math.inf


def _end_ns(block: IQBlock) -> int:
    """Unix ns just after the block's last sample (its start, for a rate the lane will refuse)."""
    rate = _rate(block)
    return block.t0_ns + (0 if math.isinf(rate) else int(round(len(block.samples) * 1e9 / rate)))


@dataclasses.dataclass
class _Paced:
    position_ns: int | None = None  # end of the last block handed over; the first block's start while it waits
    queued: int = 0  # samples admitted, not yet taken by the pipeline
    held: int = 0  # samples in the pipeline's lane (``settle``) plus those taken since


class ReplayPacer:
    """Admission of blocks from sources that are not real-time; thread-safe."""

    def __init__(self, *, expected: Iterable[str] = (), lead_s: float, budget_s: float) -> None:
        self._cond = threading.Condition()
        self._paced: dict[str, _Paced] = {rid: _Paced() for rid in expected}
        self._waiting: set[str] = set()
        self._closed = False
        self.lead_ns = int(round(lead_s * 1e9))
        self.budget_s = float(budget_s)

    @classmethod
    def for_config(cls, config) -> "ReplayPacer":
        """Expecting every receiver whose options say ``realtime = false``."""
        expected = [rx.id for rx in config.receivers if getattr(rx.options, "realtime", True) is False]
        return cls(expected=expected, **limits(config))

    def paced(self) -> list[str]:
        """Receivers the pacer holds in step now."""
        with self._cond:
            return sorted(self._paced)

    def waiting(self) -> list[str]:
        """Receivers whose adapter thread waits in ``admit`` now."""
        with self._cond:
            return sorted(self._waiting)

    # Adapter threads ----------------------------------------------------------------------------------
    def admit(self, block: IQBlock, stop: threading.Event, timeout_s: float | None = None) -> bool:
        """Wait until ``block`` may be handed over (True), or until ``stop`` is set, the pacer is closed or
        ``timeout_s`` has passed (False: the block was not admitted). Call ``delivered`` once it is queued."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            me = self._paced.setdefault(block.receiver_id, _Paced())
            if me.position_ns is None:
                me.position_ns = block.t0_ns  # arrived: the others no longer wait for it to show up
                self._cond.notify_all()
            self._waiting.add(block.receiver_id)
            try:
                while not (self._closed or stop.is_set()):
                    me = self._paced.get(block.receiver_id)
                    if me is None:  # settled away while waiting (a reload removed it): nothing to keep in step
                        return True
                    if self._may_go(me, block):
                        me.queued += len(block.samples)
                        return True
                    wait_s = STOP_POLL_S if deadline is None else min(STOP_POLL_S, deadline - time.monotonic())
                    if wait_s <= 0:
                        break
                    self._cond.wait(wait_s)
                return False
            finally:
                self._waiting.discard(block.receiver_id)

    def delivered(self, block: IQBlock) -> None:
        """``block`` is in the queue: its receiver's position is now the block's end."""
        with self._cond:
            me = self._paced.get(block.receiver_id)
            if me is not None:
                me.position_ns = _end_ns(block)
                self._cond.notify_all()

    def leave(self, receiver_id: str) -> None:
        """The receiver's source ended, failed or is real-time: the others stop waiting for it."""
        with self._cond:
            if self._paced.pop(receiver_id, None) is not None:
                self._cond.notify_all()

    def _may_go(self, me: _Paced, block: IQBlock) -> bool:
        others = [p.position_ns for rid, p in self._paced.items() if rid != block.receiver_id]
        if any(pos is None for pos in others):
            return False  # an expected receiver has not arrived yet
        in_flight = me.queued + me.held
        if in_flight > 0 and in_flight + len(block.samples) > self.budget_s * _rate(block):
            return False
        if not others:
            return True
        slowest = min(others)
        assert me.position_ns is not None
        return me.position_ns <= slowest or _end_ns(block) <= slowest + self.lead_ns

    # Pipeline thread ----------------------------------------------------------------------------------
    def taken(self, blocks: Iterable[IQBlock]) -> None:
        """The pipeline took these blocks from the queue: their samples move from queued to held."""
        with self._cond:
            for block in blocks:
                me = self._paced.get(block.receiver_id)
                if me is not None:
                    n = min(len(block.samples), me.queued)  # a real-time block of a receiver that was paced before
                    me.queued -= n
                    me.held += n

    def settle(self, held: Mapping[str, int], *, lead_s: float | None = None, budget_s: float | None = None) -> None:
        """After the pipeline cut its windows: ``held[rid]`` input samples are still in each receiver's lane.

        Receivers missing from ``held`` are no longer in the pipeline (a reload removed them) and are
        forgotten. ``lead_s`` and ``budget_s`` replace the limits when given (a reload may change them).
        """
        with self._cond:
            if lead_s is not None:
                self.lead_ns = int(round(lead_s * 1e9))
            if budget_s is not None:
                self.budget_s = float(budget_s)
            for rid in [rid for rid in self._paced if rid not in held]:
                del self._paced[rid]
            for rid, p in self._paced.items():
                p.held = int(held[rid])
            self._cond.notify_all()

    def close(self) -> None:
        """Shutting down: every waiting and later ``admit`` returns False."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
