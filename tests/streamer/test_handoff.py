"""The hand-off from adapter threads to the pipeline: BlockQueue and coalesce_blocks.

A pipeline that fell behind takes every queued block at once and pushes each receiver's consecutive blocks as
one. That must change nothing the lanes compute: the same samples held, the same drops and bad frames by
reason, the same clock jumps found.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from receivers.base import Flags, IQBlock
from streamer.daemon.handoff import COALESCE_TIME_TOLERANCE_NS, BlockQueue, coalesce_blocks
from tests.helpers.lanes import IN_RATE, Recorder, assert_accounting, tone_block

BLOCK_N = 12_000  # 50 ms at 240 kS/s


def fault_stream() -> list[list[IQBlock]]:
    """Steps of 50 ms; in each, one block per receiver (or none, or extra), with every fault the lanes handle."""
    rng = np.random.default_rng(7)
    steps = []
    for k in range(70):
        idx = k * BLOCK_N
        step = [tone_block("ok", idx, BLOCK_N)]
        if k != 30:  # one block lost at the source
            step.append(tone_block("gappy", idx, BLOCK_N))
        step.append(tone_block("jumpy", idx, BLOCK_N, t_offset_ns=200_000_000 if k >= 40 else 0))
        # Host timestamps with jitter: under 1 ms (joins), and 5 ms each way (within the lane's tolerance, but
        # more than coalescing accepts: never joins).
        step.append(tone_block("jitter-small", idx, BLOCK_N, t_offset_ns=int(rng.integers(-400_000, 400_000))))
        step.append(tone_block("jitter-large", idx, BLOCK_N, t_offset_ns=5_000_000 * (k % 2)))
        b = tone_block("broken", idx, BLOCK_N)
        if k == 20:
            b = dataclasses.replace(b, samples=b.samples.copy())
            b.samples[5] = np.nan
        step.append(b)
        if k == 50:  # a stale block replayed
            step.append(tone_block("broken", idx - BLOCK_N, BLOCK_N))
        if k == 60:  # wrong dtype
            bad = tone_block("broken", idx + BLOCK_N, 10)
            step.append(dataclasses.replace(bad, samples=bad.samples.astype(np.complex128)))
        if k == 25:
            step.append(tone_block("flagged", idx, BLOCK_N, flags=Flags.OVERFLOW))
        else:
            step.append(tone_block("flagged", idx, BLOCK_N))
        steps.append(step)
    return steps


def run_lanes(batches: list[list[IQBlock]]):
    rec = Recorder()
    lanes = {}
    pushes = {}
    for batch in batches:
        for block in batch:
            lane = lanes.setdefault(block.receiver_id, rec.lane(block.receiver_id, capacity_s=8.0))
            lane.push(block)
            pushes[block.receiver_id] = pushes.get(block.receiver_id, 0) + 1
    return rec, lanes, pushes


@pytest.mark.parametrize("steps_per_batch", [2, 7, 70])
def test_coalesced_blocks_give_the_lanes_the_same_samples_drops_and_clock_jumps(steps_per_batch):
    steps = fault_stream()
    one_by_one = run_lanes(steps)
    batches = [coalesce_blocks([b for step in steps[i : i + steps_per_batch] for b in step])
               for i in range(0, len(steps), steps_per_batch)]  # fmt: skip
    coalesced = run_lanes(batches)
    (rec_a, lanes_a, pushes_a), (rec_b, lanes_b, pushes_b) = one_by_one, coalesced
    assert rec_b.drops == rec_a.drops and rec_b.bad == rec_a.bad
    assert rec_a.bad[("jumpy", "clock_jump")] == 1 and rec_a.bad[("broken", "non_finite")] == 1
    for rid, a in lanes_a.items():
        b = lanes_b[rid]
        assert (b.received, b.used, b.buffered) == (a.received, a.used, a.buffered), rid
        assert (b.ring.start_index, b.ring.end_index, b.ring.t_anchor_ns) == (a.ring.start_index, a.ring.end_index, a.ring.t_anchor_ns), rid
        n = a.ring.end_index - a.ring.start_index
        # The mixer rotates its table per pushed block: the same signal to float32 rounding.
        np.testing.assert_allclose(b.ring.read(b.ring.start_index, n), a.ring.read(a.ring.start_index, n), rtol=0, atol=2e-7)
        assert_accounting(b)
    # Joined where the stream continues: fewer pushes; never where the lane must see the block alone.
    assert pushes_b["ok"] == -(-len(steps) // steps_per_batch)
    assert pushes_b["jitter-small"] == pushes_b["ok"]
    assert pushes_b["jitter-large"] == pushes_a["jitter-large"] == len(steps)
    assert pushes_b["jumpy"] > pushes_b["ok"] or steps_per_batch == 2


def test_blocks_that_do_not_continue_one_another_are_not_joined():
    a = tone_block("x", 0, 100)
    cases = {
        "gap": tone_block("x", 101, 100),
        "flag": tone_block("x", 100, 100, flags=Flags.DISCONTINUITY),
        "clock": tone_block("x", 100, 100, t_offset_ns=COALESCE_TIME_TOLERANCE_NS + 1),
        "rate": dataclasses.replace(tone_block("x", 100, 100), sample_rate=IN_RATE / 2),
        "centre": dataclasses.replace(tone_block("x", 100, 100), center_freq=a.center_freq + 1.0),
        "gain": dataclasses.replace(tone_block("x", 100, 100), gain_db=10.0),
        "time source": dataclasses.replace(tone_block("x", 100, 100), time_source="gps"),
        "dtype": dataclasses.replace(tone_block("x", 100, 100), samples=tone_block("x", 100, 100).samples.astype(np.complex128)),
        "nan": dataclasses.replace(tone_block("x", 100, 100), samples=np.full(100, np.nan, dtype=np.complex64)),
        "out of range": dataclasses.replace(tone_block("x", 100, 100), samples=np.full(100, 3e38, dtype=np.complex64)),
        "empty": tone_block("x", 100, 0),
        "not an array": dataclasses.replace(tone_block("x", 100, 100), samples=[0j] * 100),
    }
    for name, b in cases.items():
        assert len(coalesce_blocks([a, b])) == 2, name
    joined = coalesce_blocks([a, tone_block("y", 0, 5), tone_block("x", 100, 100, t_offset_ns=COALESCE_TIME_TOLERANCE_NS)])
    assert [(b.receiver_id, len(b.samples), b.t0_ns) for b in joined] == [("x", 200, a.t0_ns), ("y", 5, tone_block("y", 0, 5).t0_ns)]
    assert len(coalesce_blocks([a, tone_block("x", 100, 100)], max_samples=150)) == 2


@pytest.mark.parametrize("rate", [5e-324, float("nan"), 0.0, -1.0, 1e300])
def test_blocks_with_an_absurd_rate_are_left_alone_for_the_lane_to_count_not_raised(rate):
    # Two subnormal-rate blocks in one step raised OverflowError here, outside the daemon's per-block try.
    blocks = [dataclasses.replace(tone_block("x", i * 100, 100), sample_rate=rate) for i in range(2)]
    out = coalesce_blocks(blocks)
    assert len(out) == 2
    rec = Recorder()
    lane = rec.lane("x")
    for block in out:
        lane.push(block)
    assert rec.bad == {("x", "bad_rate"): 2} and rec.drops == {("x", "bad_rate", "pipeline"): 200}
    assert_accounting(lane)


def test_get_many_waits_for_one_block_then_takes_what_is_queued_up_to_the_limit():
    dropped = []
    q = BlockQueue(8, on_full=dropped.append)
    assert q.get_many(0.01, 4) == []
    blocks = [tone_block("x", i * 10, 10) for i in range(10)]
    for b in blocks:
        q.put(b, realtime=True)
    assert dropped == blocks[8:]  # full: counted by the caller's on_full, never waited for
    assert q.get_many(0.01, 5) == blocks[:5]
    assert q.get_many(0.01, 5) == blocks[5:8]
    late = threading.Timer(0.05, q.put, args=(blocks[0],), kwargs={"realtime": False})
    late.start()
    assert q.get_many(2.0, 5) == [blocks[0]]
    late.join()


def test_the_queue_is_bounded_in_bytes_as_well_as_blocks():
    dropped = []
    block_bytes = tone_block("x", 0, 100).samples.nbytes  # 800
    q = BlockQueue(100, on_full=dropped.append, max_bytes=3 * block_bytes)
    blocks = [tone_block("x", i * 100, 100) for i in range(5)]
    for b in blocks:
        q.put(b, realtime=True)
    assert len(q) == 3 and q.nbytes == 3 * block_bytes and dropped == blocks[3:]
    assert q.get_many(0.01, 10) == blocks[:3] and q.nbytes == 0
    huge = tone_block("x", 500, 1000)  # larger than the whole bound: still taken when nothing else is queued
    q.put(huge, realtime=True)
    assert q.get(0.01) is huge
    # A source that is not real-time waits for room instead of dropping.
    for b in blocks[:3]:
        q.put(b, realtime=False)
    later = threading.Thread(target=q.put, args=(blocks[3],), kwargs={"realtime": False})
    later.start()
    later.join(0.2)
    assert later.is_alive() and len(q) == 3
    assert q.get(0.01) is blocks[0]
    later.join(2.0)
    assert not later.is_alive() and q.get_many(0.01, 10) == blocks[1:4]
    with pytest.raises(ValueError, match="max_blocks and max_bytes must be >= 1"):
        BlockQueue(0, on_full=dropped.append)
