"""Run one Receiver: in a thread feeding the pipeline, or on its own publishing framed IQ (``heimdall receiver``).

The adapter code is the same either way. A ``ReceiverTransientError`` (device lost, socket stalled) makes
the runner close the adapter, mark the receiver down, wait (exponential backoff) and open it again with
``Flags.DISCONTINUITY`` on the next block; a ``ReceiverFatalError`` stops that receiver only. The daemon
never dies because one receiver did.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from typing import Callable, Sequence

import numpy as np

from receivers.base import Flags, IQBlock, ReceiverContext, plausible_rate
from receivers.registry import open_receiver
from streamer.config import ReceiverConfig
from streamer.core.errors import HeimdallError, MissingDependencyError, ReceiverFatalError, ReceiverTransientError
from streamer.daemon.lane import samples_problem

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Reconnect delays (s): ``initial_s`` doubling up to ``max_s``."""

    initial_s: float = 0.25
    max_s: float = 10.0

    def delays(self):
        delay = self.initial_s
        while True:
            yield delay
            delay = min(delay * 2, self.max_s)


class ReceiverRunner:
    """Iterate one adapter in a thread, handing blocks to ``sink``; reconnect on transient errors."""

    def __init__(
        self,
        rx: ReceiverConfig,
        ctx: ReceiverContext,
        sink: Callable[[IQBlock, bool], None],
        *,
        on_state: Callable[[str, bool], None] = lambda rid, up: None,
        backoff: Backoff = Backoff(),
    ) -> None:
        self.rx = rx
        self.ctx = ctx
        self._sink = sink
        self._on_state = on_state
        self._backoff = backoff
        self._stop = threading.Event()
        self._adapter = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.run, name=f"rx-{rx.id}", daemon=True)
        self.fatal: str | None = None

    def start(self) -> None:
        self._thread.start()

    @property
    def stopping(self) -> threading.Event:
        """Set once ``stop`` (or ``request_stop``) was called: a sink blocked on back-pressure gives up on it."""
        return self._stop

    def stop(self, timeout_s: float = 1.0) -> None:
        """``request_stop`` then ``join`` (s): for one runner; to stop several, request all first, then join."""
        self.request_stop()
        self.join(timeout_s)

    def request_stop(self) -> None:
        """Set the stop flag and close the adapter (which interrupts a blocking read); does not wait."""
        self._stop.set()
        with self._lock:
            adapter = self._adapter
        if adapter is not None:
            try:
                adapter.close()
            except Exception:  # closing from another thread is best effort; the loop exits on the flag
                log.debug("receiver %s: close raised", self.rx.id, exc_info=True)

    def join(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the thread to end; True when it has (or never started)."""
        if self._thread.ident is None:  # a daemon whose start failed part-way stops the runners it never started
            return True
        self._thread.join(max(0.0, timeout_s))
        return not self._thread.is_alive()

    def run(self) -> None:
        delays = self._backoff.delays()
        discontinuity = False
        while not self._stop.is_set():
            try:
                adapter = open_receiver(self.rx, self.ctx)
                with self._lock:
                    self._adapter = adapter
                with adapter:
                    for block in adapter:
                        if self._stop.is_set():
                            return
                        if discontinuity:
                            block = dataclasses.replace(block, flags=block.flags | Flags.DISCONTINUITY)
                            discontinuity = False
                        self._on_state(self.rx.id, True)
                        self._sink(block, adapter.realtime)
                        delays = self._backoff.delays()
                if self._stop.is_set():
                    return
                log.info("receiver %s: source ended", self.rx.id)
                self._on_state(self.rx.id, False)
                return
            except (ReceiverFatalError, MissingDependencyError) as exc:  # retrying cannot install a package
                self.fatal = str(exc)
                log.error("receiver %s stopped: %s", self.rx.id, exc)
                self._on_state(self.rx.id, False)
                return
            except (ReceiverTransientError, HeimdallError, OSError) as exc:
                log.warning("receiver %s: %s; reconnecting", self.rx.id, exc)
            except Exception:  # an adapter bug must not take the daemon down: log it loudly, retry
                log.exception("receiver %s: unexpected error; reconnecting", self.rx.id)
            finally:
                with self._lock:
                    self._adapter = None
            self._on_state(self.rx.id, False)
            discontinuity = True
            if self._stop.wait(next(delays)):
                return


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
