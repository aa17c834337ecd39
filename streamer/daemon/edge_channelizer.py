"""Channelizing on the edge: one receiver's IQ blocks through a daemon ``Lane`` (the same block checks, channelizer
and accounting), handed on as IQ blocks at the model rate (Hz) centred on the target (Hz), ``HAND_ON_S`` at a time.

``heimdall receiver ID --channelize`` publishes these, so that the central daemon receives the target channel at
``features.sample_rate_hz`` instead of the receiver's whole band. The daemon's lane for that receiver then finds
rate and centre already at the target, and its channelizer is the identity: the channelizing, the pipeline's
dearest per-receiver work, runs in the edge's process, on whichever core the edge has.

A handed-on block's ``sample_index`` counts output samples since the lane's last restart, and its ``t0_ns`` is the
time the daemon's own lane would have given that output sample. The first block after a restart (a gap, an
overflow, a retune, a refused block), and the very first, carries ``Flags.DISCONTINUITY``, so that the daemon
starts a new segment where the edge did. Accounting stays exact at the edge, in input samples:
``received == used + buffered + dropped``, ``used`` being the input samples that the handed-on outputs own. What
the edge holds when a restart comes is handed on first, so holding output costs no samples.
"""

from __future__ import annotations

from collections import Counter

from receivers.base import Flags, IQBlock
from streamer.daemon.lane import PIPELINE, SOURCE, Lane, LaneSettings

#: Output an edge holds before handing it on (s): the daemon's cost per block is mostly fixed, so blocks of this
#: length cost it a fraction of the 10 ms blocks receivers deliver; it delays the data by as much.
HAND_ON_S = 0.05


class EdgeChannelizer:
    """One receiver's blocks in, its target channel out (``push``), in blocks of at least ``hand_on_s`` seconds
    (0: whatever each input block made ready) and at every restart whatever was held before it."""

    def __init__(self, receiver_id: str, settings: LaneSettings, hand_on_s: float = HAND_ON_S) -> None:
        if not hand_on_s >= 0 or hand_on_s > settings.capacity_s / 2:
            raise ValueError(f"hand_on_s: expected 0 to half the ring ({settings.capacity_s / 2:g} s), got {hand_on_s}")
        self.settings = settings
        self._hand_on_n = max(1, int(round(hand_on_s * settings.model_rate_hz)))
        #: Blocks refused at the edge, by reason, as the daemon's ``heimdall_bad_frames_total`` counts them.
        self.bad_frames: Counter[str] = Counter()
        self.lane = Lane(receiver_id, settings, on_drop=lambda reason, stage, n: None, on_bad_frame=self._bad_frame,
                         before_restart=self._hand_on_before_restart)
        self._next_index: int | None = None
        self._ready: list[IQBlock] = []
        #: Output samples (at the model rate) handed on.
        self.samples_out = 0

    def _bad_frame(self, reason: str) -> None:
        self.bad_frames[reason] += 1

    def _hand_on_before_restart(self) -> None:
        self._ready.extend(self.flush())

    def push(self, block: IQBlock) -> list[IQBlock]:
        """Check and channelize ``block``; the output blocks it completed: what a restart cut off, and what is held
        once it reaches ``hand_on_s``."""
        self.lane.push(block)
        if len(self.lane.ring) >= self._hand_on_n:
            self._ready.extend(self.flush())
        ready, self._ready = self._ready, []
        return ready

    def flush(self) -> list[IQBlock]:
        """The output samples held now, however few (none or one block)."""
        held = self.lane.take_held()
        if held is None:
            return []
        first, t0_ns, samples = held
        flags = Flags.NONE if self._next_index == first else Flags.DISCONTINUITY
        self._next_index = first + len(samples)
        self.samples_out += len(samples)
        source = self.lane.last_block
        return [IQBlock(
            receiver_id=source.receiver_id,
            samples=samples,
            sample_index=first,
            t0_ns=t0_ns,
            time_source=source.time_source,
            sample_rate=self.settings.model_rate_hz,
            center_freq=self.settings.target_freq_hz,
            gain_db=source.gain_db,
            flags=flags,
        )]

    def accounting(self) -> dict:
        """For the edge's log: input samples ``received``, ``used`` (handed on), ``buffered`` (in the filter's
        history) and ``dropped`` by reason (``received == used + buffered + sum(dropped)``); input samples the source
        lost before delivery (``source_lost``, by reason), blocks refused (``bad_frames``, by reason) and output
        samples handed on (``samples_out``)."""
        lane = self.lane
        by_stage: dict[str, dict[str, int]] = {PIPELINE: {}, SOURCE: {}}
        for (reason, stage), n in sorted(lane.dropped.items()):
            by_stage[stage][reason] = n
        return {"received": lane.received, "used": lane.used, "buffered": lane.buffered,
                "dropped": by_stage[PIPELINE], "source_lost": by_stage[SOURCE],
                "bad_frames": dict(sorted(self.bad_frames.items())), "samples_out": self.samples_out}
