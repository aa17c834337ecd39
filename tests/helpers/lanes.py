"""Lane test fixtures: a ``Recorder`` that builds lanes and tallies their drops and bad frames, tone blocks at a
fixed input rate and timeline (``tone_block``), and the lane's exact sample accounting check (``assert_accounting``)."""

from __future__ import annotations

import numpy as np

from receivers.base import Flags, IQBlock
from streamer.daemon.lane import PIPELINE, Lane, LaneSettings

IN_RATE = 240_000.0
MODEL_RATE = 24_000.0
TARGET = 145.5e6
T0_NS = 1_700_000_000_000_000_000  # a multiple of the window length


class Recorder:
    def __init__(self):
        self.drops = {}
        self.bad = {}

    def lane(self, rid: str, capacity_s: float = 4.0) -> Lane:
        settings = LaneSettings(TARGET, MODEL_RATE, capacity_s, clock_jump_tolerance_s=0.05)

        def drop(reason, stage, n):
            self.drops[(rid, reason, stage)] = self.drops.get((rid, reason, stage), 0) + n

        def bad(reason):
            self.bad[(rid, reason)] = self.bad.get((rid, reason), 0) + 1

        return Lane(rid, settings, drop, bad)


def tone_block(rid: str, index: int, n: int, *, t_offset_ns: int = 0, flags=Flags.NONE, rate=IN_RATE) -> IQBlock:
    t = (index + np.arange(n)) / rate
    samples = (0.01 * np.exp(2j * np.pi * 1000.0 * t)).astype(np.complex64)
    t0 = T0_NS + int(round(index * 1e9 / rate)) + t_offset_ns
    return IQBlock(rid, samples, index, t0, "host", rate, TARGET - 25_000.0, flags=flags)


def assert_accounting(lane: Lane) -> None:
    dropped = sum(n for (reason, stage), n in lane.dropped.items() if stage == PIPELINE)
    assert lane.received == lane.used + lane.buffered + dropped, (lane.receiver_id, lane.received, lane.used, lane.buffered, dict(lane.dropped))
