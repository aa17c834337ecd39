"""WindowAligner: cut the same time span [t, t + W) out of every receiver's lane.

Windows sit on a fixed grid of Unix time (multiples of W), so every central streamer that sees the same
receivers cuts the same windows. A window goes out when every live receiver covers it, or when the
newest data of most receivers (the upper median over receivers, so that one receiver whose clock jumped
ahead cannot hurry the others) is ``late_tolerance`` past its end: receivers that do not cover it then are
masked, with a reason:

- ``offline``: no block arrived for ``offline_after_s`` (host time, not counting time the daemon itself
  was not running: see ``STALL_S``). A receiver the replay pacer holds in step (``paced``: a source that is
  not real-time, whose pace the daemon sets) is never offline while it is held: its silence is the daemon's
  doing (the pacer waits for a slower receiver or for the pipeline), and its samples are still to come, so
  a window waits for them however loaded the host is. It is judged as any other once its source ended or
  failed;
- ``gap``: its data starts inside the window (it came back, or its stream restarted after a gap);
- ``late``: its data has not reached the window's end yet.

A masked receiver's samples in the window are dropped under that reason, so the sample accounting of
streamer.daemon.lane stays exact.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np

from streamer.daemon.lane import Lane


@dataclass(frozen=True)
class Window:
    """One aligned window. ``samples[i]`` is zeros where ``present[i]`` is False."""

    t_start_ns: int
    t_end_ns: int
    receiver_ids: tuple[str, ...]
    samples: np.ndarray  # complex64 [R, N] at the model rate
    present: np.ndarray  # bool [R]
    mask_reasons: dict[str, str]


#: Polls come every few tens of ms while the daemon runs. A longer gap between two polls means the daemon
#: itself was not running (the process suspended, the host starved): that time is not counted as the
#: receivers' silence, or on resuming every receiver would look offline before its queued blocks arrive.
STALL_S = 0.5


class WindowAligner:
    """Decides when a window is complete and cuts it from the lanes."""

    def __init__(
        self,
        lanes: list[Lane],
        *,
        window_s: float,
        sample_rate_hz: float,
        late_tolerance_s: float,
        offline_after_s: float,
        paced: Callable[[], Collection[str]] = frozenset,
    ) -> None:
        self.lanes = lanes
        self._paced = paced  # the receivers the replay pacer holds in step now (ids)
        self._paced_now: frozenset[str] = frozenset()
        self.window_ns = int(round(window_s * 1e9))
        self.n_samples = int(round(window_s * sample_rate_hz))
        self.late_tolerance_ns = int(round(late_tolerance_s * 1e9))
        self.offline_after_ns = int(round(offline_after_s * 1e9))
        self.next_t_ns: int | None = None
        self.last_arrival_ns: dict[str, int] = {}
        self.stalled_ns = 0  # total time between polls further apart than STALL_S
        self._stalled_at_arrival: dict[str, int] = {}
        self._last_poll_ns: int | None = None

    def mark_arrival(self, receiver_id: str, host_ns: int) -> None:
        """Record host time of a receiver's latest block (liveness)."""
        self.last_arrival_ns[receiver_id] = host_ns
        self._stalled_at_arrival[receiver_id] = self.stalled_ns

    def silence_ns(self, receiver_id: str, host_ns: int) -> int | None:
        """Host time since the receiver's latest block, less the daemon's own stalls since then (None: never heard)."""
        last = self.last_arrival_ns.get(receiver_id)
        if last is None:
            return None
        return host_ns - last - (self.stalled_ns - self._stalled_at_arrival[receiver_id])

    def is_live(self, receiver_id: str, host_ns: int) -> bool:
        """Whether windows wait for the receiver: heard within ``offline_after_s``, or held in step by the pacer
        (as of the latest ``poll``) since its first block."""
        silence = self.silence_ns(receiver_id, host_ns)
        if silence is None:
            return False
        return receiver_id in self._paced_now or silence <= self.offline_after_ns

    def poll(self, host_ns: int) -> list[Window]:
        """Every window that is complete (or overdue) now."""
        if self._last_poll_ns is not None and host_ns - self._last_poll_ns > STALL_S * 1e9:
            self.stalled_ns += host_ns - self._last_poll_ns
        self._last_poll_ns = host_ns
        self._paced_now = frozenset(self._paced())
        windows = []
        while True:
            spans = {lane.receiver_id: lane.span_ns() for lane in self.lanes}
            held = [s for s in spans.values() if s is not None]
            if not held:
                return windows
            earliest = min(s[0] for s in held)
            if self.next_t_ns is None or self.next_t_ns + self.window_ns <= earliest:
                # Start, or resume after every receiver fell silent: the first window that data can cover.
                self.next_t_ns = -(-earliest // self.window_ns) * self.window_ns
            t0, t1 = self.next_t_ns, self.next_t_ns + self.window_ns
            # The data clock: the upper median of the receivers' newest samples, so that one receiver whose
            # clock jumped ahead cannot make every other receiver look late.
            ends = sorted(s[1] for s in held)
            newest = ends[len(ends) // 2]
            waiting = [
                lane
                for lane in self.lanes
                if self.is_live(lane.receiver_id, host_ns)
                and not lane.covers(t0, self.n_samples)
                and not lane.starts_after(t0)
            ]
            if waiting and newest < t1 + self.late_tolerance_ns:
                return windows
            windows.append(self._cut(t0, t1, host_ns))
            self.next_t_ns = t1

    def _cut(self, t0: int, t1: int, host_ns: int) -> Window:
        n_rx = len(self.lanes)
        samples = np.empty((n_rx, self.n_samples), dtype=np.complex64)  # rows not taken are zeroed below
        present = np.zeros(n_rx, dtype=bool)
        reasons = {}
        for i, lane in enumerate(self.lanes):
            rid = lane.receiver_id
            reason = None
            if not lane.covers(t0, self.n_samples):
                if not self.is_live(rid, host_ns):
                    reason = "offline"
                elif lane.starts_after(t0):
                    reason = "gap"
                else:
                    reason = "late"
                reasons[rid] = reason
            taken = lane.take(t0, self.n_samples, reason)
            if taken is not None:
                samples[i] = taken
                present[i] = True
            else:
                samples[i] = 0
        return Window(t0, t1, tuple(lane.receiver_id for lane in self.lanes), samples, present, reasons)
