"""ReplayPacer (streamer.daemon.pacing): admission of blocks from sources that are not real-time, rule by rule,
and threads delivering as fast as they are let staying within the lead of one another."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np

from receivers.base import IQBlock
from streamer.daemon.pacing import RING_MARGIN_S, ReplayPacer, limits
from streamer.config import from_dict

RATE_HZ = 1000.0
BLOCK = 100  # samples: 0.1 s
T0_NS = 1_700_000_000 * 10**9
NOW = 0.01  # s: how long a check that must not pass waits


def block(rid: str, k: int, n: int = BLOCK) -> IQBlock:
    """Receiver ``rid``'s ``k``-th block of 0.1 s."""
    return IQBlock(rid, np.zeros(n, np.complex64), k * BLOCK, T0_NS + k * 100_000_000, "host", RATE_HZ, 0.0)


def go(pacer: ReplayPacer, b: IQBlock, stop: threading.Event | None = None) -> bool:
    """Admit without waiting; when admitted, hand it over as the daemon does."""
    ok = pacer.admit(b, stop or threading.Event(), timeout_s=NOW)
    if ok:
        pacer.delivered(b)
    return ok


def test_a_receiver_may_not_run_more_than_the_lead_ahead_of_the_slowest_other():
    pacer = ReplayPacer(expected=["a", "b"], lead_s=0.25, budget_s=100.0)
    assert not go(pacer, block("a", 0))  # b has not arrived yet
    assert go(pacer, block("b", 0)) and go(pacer, block("a", 0))  # both at 0.1 s
    assert go(pacer, block("a", 1)) and go(pacer, block("a", 2))  # a ends at 0.3 s: within 0.25 s of b's 0.1 s
    assert not go(pacer, block("a", 3))  # would end at 0.4 s
    assert go(pacer, block("b", 1))  # b is the slowest: it may always go
    assert go(pacer, block("a", 3))


def test_the_slowest_receiver_goes_even_past_a_recorded_gap():
    pacer = ReplayPacer(expected=["a", "b"], lead_s=0.0, budget_s=100.0)
    assert not go(pacer, block("a", 0))
    assert go(pacer, block("b", 0)) and go(pacer, block("a", 0))
    assert go(pacer, block("a", 50))  # a recorded gap of 4.9 s: a was the slowest (tied), so it goes
    assert not go(pacer, block("a", 51))
    assert all(go(pacer, block("b", k)) for k in range(1, 52))  # b catches up to a, then may lead by one block
    assert go(pacer, block("a", 51))


def test_others_wait_until_every_expected_receiver_arrived_or_left():
    pacer = ReplayPacer(expected=["a", "b", "c"], lead_s=10.0, budget_s=100.0)
    assert not go(pacer, block("a", 0))  # a has arrived; b and c have not shown up
    assert not go(pacer, block("b", 0))  # b too; c has not
    pacer.leave("c")  # c's source failed to open
    assert go(pacer, block("a", 0)) and go(pacer, block("b", 0)) and pacer.paced() == ["a", "b"]


def test_samples_in_flight_are_bounded_by_the_budget_and_released_by_settle():
    pacer = ReplayPacer(expected=["a"], lead_s=0.0, budget_s=0.35)  # 350 samples
    assert [go(pacer, block("a", k)) for k in range(4)] == [True, True, True, False]
    pacer.taken([block("a", 0), block("a", 1)])  # taken by the pipeline: still in flight, in its lane
    assert not go(pacer, block("a", 3))
    pacer.settle({"a": 100})  # the windows cut took all but 100 of the 200 in the lane
    assert go(pacer, block("a", 3)) and not go(pacer, block("a", 4))
    pacer.settle({"a": 0}, budget_s=10.0)
    assert go(pacer, block("a", 4))


def test_a_block_larger_than_the_budget_goes_when_nothing_is_in_flight():
    pacer = ReplayPacer(expected=["a"], lead_s=0.0, budget_s=0.05)
    assert go(pacer, block("a", 0, n=1000))
    assert not go(pacer, block("a", 10))
    pacer.taken([block("a", 0, n=1000)])
    pacer.settle({"a": 0})
    assert go(pacer, block("a", 10))


def test_a_block_with_a_rate_the_lane_refuses_is_admitted_not_raised():
    pacer = ReplayPacer(expected=["a"], lead_s=0.0, budget_s=0.05)
    for rate in (0.0, float("nan"), float("inf"), -1.0):
        b = dataclasses.replace(block("a", 0), sample_rate=rate)
        assert go(pacer, b)


def test_stop_close_and_settle_end_a_wait():
    pacer = ReplayPacer(expected=["a", "b"], lead_s=0.0, budget_s=100.0)
    stop = threading.Event()
    stop.set()
    assert not pacer.admit(block("a", 0), stop)  # returns at once: stopping
    results = []
    waiter = threading.Thread(target=lambda: results.append(pacer.admit(block("a", 0), threading.Event())))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # waiting for b
    pacer.settle({"a": 0})  # a reload removed b: nobody to wait for
    waiter.join(5.0)
    assert results == [True] and pacer.paced() == ["a"]
    pacer.close()
    assert not pacer.admit(block("a", 2), threading.Event())


def test_limits_follow_the_pipeline_config():
    cfg = from_dict({"pipeline": {"late_tolerance_s": 0.4, "buffer_s": 3.0},
                     "receivers": [{"id": "a", "kind": "simulator", "lat": 45.0, "lon": 7.0, "realtime": False},
                                   {"id": "b", "kind": "simulator", "lat": 45.1, "lon": 7.0}]})
    assert limits(cfg) == {"lead_s": 0.2, "budget_s": 3.0 - RING_MARGIN_S}
    pacer = ReplayPacer.for_config(cfg)
    assert pacer.paced() == ["a"] and pacer.lead_ns == 200_000_000


def test_threads_delivering_as_fast_as_they_may_stay_within_the_lead():
    """Three unpaced sources of different block lengths, one consumer: at every hand-over, no receiver's
    newest sample is further than the lead (or its own block, for the slowest) ahead of the slowest's."""
    lead_s = 0.15
    pacer = ReplayPacer(expected=["a", "b", "c"], lead_s=lead_s, budget_s=1.0)
    lengths = {"a": 100, "b": 30, "c": 70}  # samples per block
    ends: dict[str, int] = {}
    worst = [0]
    queue: list[IQBlock] = []
    lock = threading.Lock()
    stop = threading.Event()

    def source(rid: str) -> None:
        n = lengths[rid]
        for k in range(3000 // n):
            b = IQBlock(rid, np.zeros(n, np.complex64), k * n, T0_NS + k * n * 1_000_000, "host", RATE_HZ, 0.0)
            if not pacer.admit(b, stop):
                return
            with lock:
                ends[rid] = b.t0_ns + b.duration_ns
                if len(ends) == 3:
                    worst[0] = max(worst[0], max(ends.values()) - min(ends.values()))
                queue.append(b)
            pacer.delivered(b)
        pacer.leave(rid)

    threads = [threading.Thread(target=source, args=(rid,)) for rid in lengths]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60.0
    # The pipeline: takes everything, keeps nothing.
    while time.monotonic() < deadline and any(t.is_alive() for t in threads):
        with lock:
            taken, queue[:] = list(queue), []
        pacer.taken(taken)
        pacer.settle({rid: 0 for rid in lengths})
        for t in threads:
            t.join(0.001)
    stop.set()
    for t in threads:
        t.join(5.0)
    assert ends == {rid: T0_NS + (3000 // n) * n * 1_000_000 for rid, n in lengths.items()}
    assert worst[0] <= max(lead_s * 1e9, 100 * 1_000_000), worst[0]


def test_a_runner_stopped_while_held_back_ends_at_once_and_what_it_handed_over_stays_counted():
    """As a reload stops a receiver: its thread, blocked on back-pressure (the pacer, or a full queue), must
    end on its own runner's stop, not only on the daemon's; every sample counted received is still queued."""
    from prometheus_client import CollectorRegistry

    from streamer.daemon.app import Daemon

    rxs = [{"id": rid, "kind": "simulator", "lat": 45.0 + 0.1 * k, "lon": 7.0, "realtime": False,
            "start_ns": T0_NS, "sample_rate_hz": 48_000.0, "center_freq_hz": 145.49e6}
           for k, rid in enumerate(("a", "b", "c"))]
    cfg = from_dict({"receivers": rxs, "pipeline": {"queue_blocks": 4, "min_receivers": 2},
                     "output": {"endpoint": "tcp://127.0.0.1:*"}, "metrics": {"enabled": False},
                     "estimator": {"kind": "physics"}})
    registry = CollectorRegistry()
    daemon = Daemon(cfg, registry=registry)
    try:
        runner = daemon.runners["a"]
        runner.start()  # b and c never start: a waits for them (before: it filled the queue, then waited for room)
        deadline = time.monotonic() + 30.0
        while len(daemon.queue) < 4 and daemon.pacer.waiting() != ["a"] and time.monotonic() < deadline:
            runner.stopping.wait(0.01)  # polling the daemon's state; nothing sets this event yet
        t0 = time.monotonic()
        runner.stop(timeout_s=5.0)
        assert runner.join(0.0), "the runner's thread is still blocked after its stop"
        assert time.monotonic() - t0 < 2.0
        received = registry.get_sample_value("heimdall_samples_received_total", {"receiver": "a"}) or 0.0
        queued = sum(len(b.samples) for b in daemon.queue.get_many(0.0, 100))
        assert received == queued == daemon._queued_samples("a")
    finally:
        daemon.shutdown()
