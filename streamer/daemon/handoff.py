"""The hand-off from adapter threads to the pipeline thread: BlockQueue, bounded in blocks and bytes, and
coalesce_blocks, which joins a receiver's consecutive queued blocks into one before the lane takes them.

Real-time sources never wait at the queue (a block that does not fit is a counted drop); sources that are
not real-time wait for room. Timestamps are Unix ns, rates Hz.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Callable, Sequence

import numpy as np

from receivers.base import IQBlock, plausible_rate
from streamer.daemon.lane import samples_problem


class BlockQueue:
    """Bounded hand-off from adapter threads to the pipeline thread: at most ``max_blocks`` blocks and
    ``max_bytes`` bytes of samples (a single larger block is still taken when the queue is empty).

    Real-time sources never wait: when the pipeline is behind, the block is dropped and counted
    (reason ``queue_full``). Sources that are not real-time (replay, unpaced simulation) wait instead.
    """

    def __init__(self, max_blocks: int, on_full: Callable[[IQBlock], None], max_bytes: int | None = None) -> None:
        if max_blocks < 1 or (max_bytes is not None and max_bytes < 1):
            raise ValueError(f"BlockQueue: max_blocks and max_bytes must be >= 1, got {max_blocks}, {max_bytes}")
        self.max_blocks = int(max_blocks)
        self.max_bytes = max_bytes
        self._blocks: collections.deque[IQBlock] = collections.deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._on_full = on_full

    def __len__(self) -> int:
        with self._cond:
            return len(self._blocks)

    @property
    def nbytes(self) -> int:
        """Bytes of samples queued now."""
        with self._cond:
            return self._bytes

    def _fits(self, nbytes: int) -> bool:
        if len(self._blocks) >= self.max_blocks:
            return False
        return self.max_bytes is None or not self._blocks or self._bytes + nbytes <= self.max_bytes

    def _append(self, block: IQBlock, nbytes: int) -> None:
        self._blocks.append(block)
        self._bytes += nbytes
        self._cond.notify_all()

    def put(self, block: IQBlock, *, realtime: bool, stop: threading.Event | None = None) -> None:
        nbytes = _nbytes(block)
        with self._cond:
            if realtime:
                if self._fits(nbytes):
                    self._append(block, nbytes)
                    return
            else:
                while stop is None or not stop.is_set():
                    if self._fits(nbytes):
                        self._append(block, nbytes)
                        return
                    self._cond.wait(0.1)
                # Stopping: queued anyway, one block past the bound, because the caller has counted it as
                # received; the pipeline uses or drops it, or it stays counted as buffered.
                self._append(block, nbytes)
                return
        self._on_full(block)  # outside the lock: it updates metrics

    def get(self, timeout_s: float) -> IQBlock | None:
        taken = self.get_many(timeout_s, 1)
        return taken[0] if taken else None

    def get_many(self, timeout_s: float, max_blocks: int) -> list[IQBlock]:
        """Wait up to ``timeout_s`` for a block, then take the ones already queued behind it (``max_blocks`` at most)."""
        with self._cond:
            if not self._blocks and not self._cond.wait_for(lambda: self._blocks, timeout=max(0.0, timeout_s)):
                return []
            taken = []
            while self._blocks and len(taken) < max_blocks:
                block = self._blocks.popleft()
                self._bytes -= _nbytes(block)
                taken.append(block)
            self._cond.notify_all()  # producers waiting for room (sources that are not real-time)
            return taken


def _nbytes(block: IQBlock) -> int:
    return int(getattr(block.samples, "nbytes", 0))


#: Largest timestamp disagreement (ns) with which two blocks are still joined by ``coalesce_blocks``.
COALESCE_TIME_TOLERANCE_NS = 1_000_000
#: Most samples in one joined block (bounds the copy).
COALESCE_MAX_SAMPLES = 1 << 20


def _joinable(block: IQBlock) -> bool:
    """Samples the lane takes as they are: joining a block it refuses would lose its neighbours with it."""
    s = block.samples
    return isinstance(s, np.ndarray) and s.ndim == 1 and s.dtype == np.complex64 and samples_problem(s) is None


def coalesce_blocks(blocks: Sequence[IQBlock], max_samples: int = COALESCE_MAX_SAMPLES) -> list[IQBlock]:
    """Join each receiver's blocks that continue one another into one block; other blocks pass unchanged.

    A pipeline that fell behind finds several blocks of each receiver queued; pushing them as one costs the
    per-block work (checks, mixer, resampler, ring buffer, gauges) once, so it catches up faster the further
    behind it is. Blocks join only where the pipeline would see one uninterrupted stream anyway: the same
    receiver, rate, centre, time source and gain, the next ``sample_index`` exactly, no flags on the later
    block, complex64 1-D finite samples, and a timestamp within ``COALESCE_TIME_TOLERANCE_NS`` (1 ms) of
    what the first block's timestamp and the sample count predict, so a clock jump still reaches the lane
    in the block where it happened. The order of each receiver's blocks is kept.
    """
    runs: dict[str, list[list[IQBlock]]] = {}
    for block in blocks:
        receiver_runs = runs.setdefault(block.receiver_id, [])
        run = receiver_runs[-1] if receiver_runs else None
        if run is not None and _continues(run, block, max_samples):
            run.append(block)
        else:
            receiver_runs.append([block])
    out = []
    for receiver_runs in runs.values():
        for run in receiver_runs:
            if len(run) == 1:
                out.append(run[0])
            else:
                first = run[0]
                out.append(dataclasses.replace(first, samples=np.concatenate([b.samples for b in run])))
    return out


def _continues(run: list[IQBlock], block: IQBlock, max_samples: int) -> bool:
    first, last = run[0], run[-1]
    if not (isinstance(first.samples, np.ndarray) and isinstance(block.samples, np.ndarray)):
        return False  # malformed: the lane counts it, alone
    if block.flags or block.sample_index != last.end_index or not len(block.samples):
        return False
    if (block.sample_rate, block.center_freq, block.time_source, block.gain_db) != (
        first.sample_rate, first.center_freq, first.time_source, first.gain_db
    ):
        return False
    if not plausible_rate(first.sample_rate):
        return False  # the lane refuses the rate (bad_rate), and time arithmetic on it may not be finite
    held = last.end_index - first.sample_index
    if held + len(block.samples) > max_samples:
        return False
    expected_t0_ns = first.t0_ns + round(held * 1e9 / first.sample_rate)
    if abs(block.t0_ns - expected_t0_ns) > COALESCE_TIME_TOLERANCE_NS:
        return False
    # Checked last (a pass over the samples); the first block of a run is checked once, when the second joins.
    return (len(run) > 1 or _joinable(first)) and _joinable(block)
