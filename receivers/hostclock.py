"""Host time for a stream that carries none: the Unix time of a sample from its index, kept near the host clock.

A source without timestamps (a gr-zeromq sink without ``rx_time``) can only be timed by when its messages
reach the host. That arrival time carries the daemon's own scheduling and the transport's jitter, so
stamping each block with it makes consecutive blocks disagree by that jitter, and the pipeline reads the
disagreement as a clock jump (``pipeline.clock_jump_tolerance_s``) and throws held samples away.

``HostClock`` stamps from the sample count instead: ``t(index) = anchor_ns + (index - anchor_index) / rate``,
anchored on the first arrival. Each later arrival of item ``end`` is compared with ``t(end)``:

- within ``step_s``: the anchor moves by the disagreement times ``span / tau_s`` (``span``: seconds of
  samples since the last arrival), at most ``max_correction_s`` per message. Jitter averages out, the
  stamps follow the host clock's mean arrival time, and no two consecutive blocks differ from the sample
  count by more than ``max_correction_s``.
- beyond ``step_s`` for ``persist_s`` seconds of host time, or beyond ``hard_step_s`` at once: a real step
  (the source paused and lost samples without telling, or the host clock was set). The anchor jumps to
  the arrival and ``on_step(disagreement_ns)`` is called; the pipeline then sees one clock jump.
  A stall of the daemon itself shorter than ``hard_step_s`` is not one: its backlog arrives at once,
  and the disagreement falls back within ``step_s`` as the backlog drains, well before ``persist_s``.

Times are integer nanoseconds; ``clock`` returns the host's Unix time in ns (``time.time_ns``).

Examples
--------
>>> now = [10_000_000_000]
>>> hc = HostClock(lambda: now[0])
>>> hc.stamp(0, 1000, 1000.0)  # the first message: its last item arrived now
9000000000
>>> now[0] += 1_030_000_000  # the next second of samples arrived 30 ms late
>>> hc.stamp(1000, 2000, 1000.0)  # stamped from the count, pulled 1/10 of the 30 ms
10003000000
"""

from __future__ import annotations

from typing import Callable


class HostClock:
    """Sample-count time of one stream, re-anchored slowly to the host clock (see the module docstring)."""

    def __init__(
        self,
        clock: Callable[[], int],
        *,
        tau_s: float = 10.0,
        max_correction_s: float = 0.0125,
        step_s: float = 0.5,
        persist_s: float = 2.0,
        hard_step_s: float = 10.0,
        on_step: Callable[[int], None] = lambda disagreement_ns: None,
    ) -> None:
        self._clock = clock
        self._tau_ns = tau_s * 1e9
        self._max_correction_ns = max_correction_s * 1e9
        self._step_ns = step_s * 1e9
        self._persist_ns = persist_s * 1e9
        self._hard_step_ns = hard_step_s * 1e9
        self._on_step = on_step
        self.reset()

    def reset(self) -> None:
        """Forget the anchor (the stream restarted): the next message anchors afresh."""
        self._anchor: tuple[int, int] | None = None  # (item index, Unix ns): integers, as float64 has no ns at 1e18
        self._rate = 0.0
        self._observed = 0  # index one past the last item whose arrival was used
        self._outside_since: int | None = None

    def time_at(self, index: int) -> int:
        assert self._anchor is not None, "time_at before the first stamp"
        anchor_index, anchor_ns = self._anchor
        return anchor_ns + round((index - anchor_index) * 1e9 / self._rate)

    def stamp(self, start: int, end: int, rate_hz: float) -> int:
        """Unix ns of item ``start``, items up to ``end`` (exclusive) having just arrived at ``rate_hz``."""
        now = self._clock()
        if self._anchor is None:
            self._anchor, self._rate, self._observed = (end, now), rate_hz, end
            return self.time_at(start)
        if rate_hz != self._rate:  # keep time continuous across the rate change
            self._anchor, self._rate = (start, self.time_at(start)), rate_hz
        if end > self._observed:
            self._observe(end, now)
        return self.time_at(start)

    def _observe(self, end: int, now: int) -> None:
        span_ns = (end - self._observed) * 1e9 / self._rate
        self._observed = end
        disagreement = now - self.time_at(end)
        if abs(disagreement) > self._step_ns:
            if self._outside_since is None:
                self._outside_since = now
            if abs(disagreement) > self._hard_step_ns or now - self._outside_since >= self._persist_ns:
                self._anchor, self._outside_since = (end, now), None
                self._on_step(disagreement)
            return  # until then the count carries the time: a burst after a stall drains back within step_s
        self._outside_since = None
        correction = disagreement * min(1.0, span_ns / self._tau_ns)
        correction = max(-self._max_correction_ns, min(self._max_correction_ns, correction))
        anchor_index, anchor_ns = self._anchor
        self._anchor = (anchor_index, anchor_ns + round(correction))
