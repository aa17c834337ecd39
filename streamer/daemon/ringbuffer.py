"""RingBuffer: one receiver's recent channelized samples, pinned to time, of fixed capacity.

It holds one contiguous segment at a fixed rate: sample ``j`` of the segment (counted from the first
sample since the last ``clear``) is at ``t_start_ns + j / rate``. A gap or clock jump is not patched
over: the owner clears the buffer and starts a new segment. Capacity is in samples; ``append`` overwrites
the oldest and returns how many it dropped.

Examples
--------
>>> import numpy as np
>>> rb = RingBuffer(capacity=8, sample_rate_hz=1e9)
>>> rb.append(np.arange(6, dtype=np.complex64), t0_ns=100)
0
>>> rb.append(np.arange(6, dtype=np.complex64), t0_ns=106)
4
>>> rb.start_index, rb.end_index, rb.time_of(rb.start_index)
(4, 12, 104)
"""

from __future__ import annotations

import numpy as np


class RingBuffer:
    """Fixed-capacity complex64 store with absolute segment indices and a time anchor."""

    def __init__(self, capacity: int, sample_rate_hz: float) -> None:
        if capacity < 1:
            raise ValueError(f"ring buffer capacity must be >= 1 sample, got {capacity}")
        self.capacity = int(capacity)
        self.sample_rate_hz = float(sample_rate_hz)
        self._data = np.zeros(self.capacity, dtype=np.complex64)
        self.t_anchor_ns: int | None = None  # time of segment index 0
        self.start_index = 0  # oldest index held
        self.end_index = 0  # one past the newest index held

    def __len__(self) -> int:
        return self.end_index - self.start_index

    @property
    def fill_ratio(self) -> float:
        return len(self) / self.capacity

    def time_of(self, index: int) -> int:
        """Time (Unix ns) of segment sample ``index``."""
        if self.t_anchor_ns is None:
            raise ValueError("empty ring buffer has no time anchor")
        return self.t_anchor_ns + int(round(index * 1e9 / self.sample_rate_hz))

    def _write(self, pos: int, head: int, samples: np.ndarray) -> None:
        """Store ``samples`` from ring position ``pos``: the first ``head`` up to the end, the rest from the start."""
        self._data[pos : pos + head] = samples[:head]
        self._data[: len(samples) - head] = samples[head:]

    def index_at(self, t_ns: int) -> int:
        """Segment index of the sample nearest to time ``t_ns``."""
        if self.t_anchor_ns is None:
            raise ValueError("empty ring buffer has no time anchor")
        return int(round((t_ns - self.t_anchor_ns) * self.sample_rate_hz / 1e9))

    def append(self, samples: np.ndarray, t0_ns: int) -> int:
        """Add samples; ``t0_ns`` anchors time only for the first samples of a segment. Returns samples overwritten."""
        n = len(samples)
        if n == 0:
            return 0
        if self.t_anchor_ns is None:
            self.t_anchor_ns = int(t0_ns)
        overwritten = max(0, len(self) + n - self.capacity)
        if n >= self.capacity:
            samples = samples[-self.capacity :]
            first = self.end_index + n - self.capacity
        else:
            first = self.end_index
        pos = first % self.capacity
        k = len(samples)
        head = min(k, self.capacity - pos)
        self._write(pos, head, samples)
        self.end_index += n
        self.start_index = max(self.start_index, self.end_index - self.capacity)
        return overwritten

    def read(self, start: int, n: int) -> np.ndarray:
        """Copy of ``n`` samples from segment index ``start``; they must be held."""
        if start < self.start_index or start + n > self.end_index:
            raise IndexError(f"[{start}, {start + n}) not held in [{self.start_index}, {self.end_index})")
        pos = start % self.capacity
        head = min(n, self.capacity - pos)
        out = np.empty(n, dtype=np.complex64)
        out[:head] = self._data[pos : pos + head]
        out[head:] = self._data[: n - head]
        return out

    def discard_before(self, index: int) -> int:
        """Forget samples before segment ``index``; returns how many were forgotten."""
        index = min(max(index, self.start_index), self.end_index)
        removed = index - self.start_index
        self.start_index = index
        return removed

    def clear(self) -> int:
        """Forget everything, including the time anchor; returns how many samples were held."""
        held = len(self)
        self.t_anchor_ns = None
        self.start_index = self.end_index = 0
        return held
