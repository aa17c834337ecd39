"""ZmqFramedReceiver and FramedPublisher over real ZeroMQ sockets on 127.0.0.1 (ephemeral ports)."""

from __future__ import annotations

import dataclasses
import queue
import re

import msgpack
import numpy as np
import pytest
import zmq

from receivers.base import Flags, IQBlock, ReceiverContext, TallyDropCounter
from receivers.framing import encode
from receivers import zmq_framed
from receivers.zmq_framed import MAX_GAP_S, FramedPublisher, Options, ZmqFramedReceiver
from streamer.config import from_dict
from streamer.core.boundedlog import BoundedLog
from streamer.daemon.lane import Lane, LaneSettings
from tests.helpers.collect import Collector

N = 1000
RATE = 1e6
T0 = 1_700_000_000_000_000_000
TIMEOUT_S = 5.0


def make_block(index: int, *, rid: str = "rx1", n: int = N, t0_ns: int | None = None, flags=Flags.NONE) -> IQBlock:
    samples = (np.arange(n, dtype=np.float32) + index).astype(np.complex64) * np.complex64(1e-6j)
    t0 = T0 + round(index * 1e9 / RATE) if t0_ns is None else t0_ns
    return IQBlock(rid, samples, index, t0, "gps", RATE, 145.5e6, 10.0, flags)




@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def publisher(context):
    with FramedPublisher("tcp://127.0.0.1:0", context=context) as pub:
        yield pub


def start_receiver(endpoint: str, drops, context, *, rid: str = "rx1", **options):
    rx = ZmqFramedReceiver(rid, Options(endpoint=endpoint, recv_timeout_s=0.05, **options), drops=drops, context=context)
    return Collector(rx)


@pytest.fixture
def drops():
    return TallyDropCounter()


@pytest.fixture
def connected(publisher, drops, context):
    collector = start_receiver(publisher.endpoint, drops, context)
    assert publisher.wait_for_subscriber("rx1", TIMEOUT_S)
    yield publisher, collector
    collector.stop()


def send_raw(publisher: FramedPublisher, frames: list[bytes]) -> None:
    publisher._sock.send_multipart(frames)


def test_good_blocks_pass_unchanged(connected, drops):
    publisher, rx = connected
    sent = [make_block(i * N) for i in range(3)]
    for block in sent:
        assert publisher.send(block)
    for block in sent:
        got = rx.get()
        np.testing.assert_array_equal(got.samples, block.samples)
        assert (got.receiver_id, got.sample_index, got.t0_ns, got.time_source) == ("rx1", block.sample_index, block.t0_ns, "gps")
        assert (got.sample_rate, got.center_freq, got.gain_db) == (RATE, 145.5e6, 10.0)
    assert not drops.bad_frames and not drops.dropped


def test_the_publisher_flags_its_first_block_as_a_discontinuity(connected):
    publisher, rx = connected
    publisher.send(make_block(0))
    publisher.send(make_block(N))
    assert rx.get().flags == Flags.DISCONTINUITY
    assert rx.get().flags == Flags.NONE


def test_bad_frames_are_counted_by_reason_and_skipped(connected, drops):
    publisher, rx = connected
    good = encode(make_block(0))
    header = msgpack.unpackb(good[1])
    bad = {
        "short_frame": [b"rx1", good[1]],
        "bad_header": [b"rx1", b"\xc1", good[2]],
        "unknown_version": [b"rx1", msgpack.packb({**header, "v": 2}), good[2]],
        "unknown_dtype": [b"rx1", msgpack.packb({**header, "dtype": "cs8"}), good[2]],
        "bad_length": [b"rx1", good[1], good[2][:-3]],
        "non_finite": [b"rx1", good[1], np.full(4, np.nan, np.complex64).tobytes()],
        "unknown_receiver": [b"rx1", msgpack.packb({**header, "receiver_id": "rx7"}), good[2]],
        "bad_rate": [b"rx1", msgpack.packb({**header, "sample_rate": -1.0}), good[2]],
    }
    for frames in bad.values():
        send_raw(publisher, frames)
    publisher.send(make_block(0))
    assert rx.get().sample_index == 0  # every bad one before it was skipped
    assert drops.bad_frames == {("rx1", reason): 1 for reason in bad}
    assert rx.queue.empty()


def test_another_receiver_sharing_our_prefix_is_ignored_without_counting(connected, drops):
    publisher, rx = connected
    publisher.send(make_block(0, rid="rx10"))
    publisher.send(make_block(0, rid="rx1"))
    assert rx.get().receiver_id == "rx1"
    assert not drops.bad_frames


def test_index_going_backwards_drops_the_block_and_counts_its_samples(connected, drops):
    publisher, rx = connected
    for index in (0, N, 2 * N, N // 2, N, 3 * N):  # N // 2 overlaps, second N duplicates
        publisher.send(make_block(index))
    assert [rx.get().sample_index for _ in range(4)] == [0, N, 2 * N, 3 * N]
    assert drops.bad_frames == {("rx1", "index_backwards"): 2}
    assert drops.dropped == {("rx1", "index_backwards"): 2 * N}


def test_forward_gap_passes_without_counting(connected, drops):
    publisher, rx = connected
    publisher.send(make_block(0))
    publisher.send(make_block(10 * N))
    assert [rx.get().sample_index, rx.get().sample_index] == [0, 10 * N]
    assert not drops.bad_frames and not drops.dropped


def test_restart_without_flag_costs_one_block_then_resumes(connected, drops):
    publisher, rx = connected
    later = T0 + 10**9 * 60
    for index in (0, N, 2 * N):
        publisher.send(make_block(index))
    for index in (0, N, 2 * N):  # a publisher restarted from 0 whose flagged first block was lost
        publisher.send(make_block(index, t0_ns=later + round(index * 1e9 / RATE)))
    got = [rx.get() for _ in range(5)]
    assert [b.sample_index for b in got] == [0, N, 2 * N, N, 2 * N]
    assert got[3].flags & Flags.DISCONTINUITY
    assert drops.bad_frames == {("rx1", "index_backwards"): 1}
    assert drops.dropped == {("rx1", "index_backwards"): N}


def test_a_clock_step_is_passed_on_and_counted_once_by_the_pipeline(connected, drops):
    publisher, rx = connected
    publisher.send(make_block(0))
    publisher.send(make_block(N, t0_ns=T0 + 1_000_000 + 30_000_000))  # 30 ms late: within 50 ms
    publisher.send(make_block(2 * N, t0_ns=T0 + 2_000_000 + 30_000_000 + 200_000_000))  # +200 ms jump
    publisher.send(make_block(3 * N, t0_ns=T0 + 3_000_000 + 230_000_000))  # continuous after re-anchoring
    got = [rx.get() for _ in range(4)]
    assert [b.sample_index for b in got] == [0, N, 2 * N, 3 * N]
    assert got[2].t0_ns == T0 + 232_000_000
    assert not drops.bad_frames and not drops.dropped, "the adapter leaves clock steps to the pipeline"
    # The lane behind it (same DropCounter, as in the daemon) counts the step once, not twice.
    lane = Lane("rx1", LaneSettings(145.5e6, 24_000.0, 4.0, clock_jump_tolerance_s=0.05),
                lambda reason, stage, n: drops.samples_dropped("rx1", reason, n), lambda reason: drops.bad_frame("rx1", reason))
    for block in got:
        lane.push(block)
    assert drops.bad_frames == {("rx1", "clock_jump"): 1}


def test_publisher_that_stops_and_comes_back_is_picked_up_again(drops, context):
    first_ctx = zmq.Context()
    first = FramedPublisher("tcp://127.0.0.1:0", context=first_ctx)
    endpoint = first.endpoint
    rx = start_receiver(endpoint, drops, context)
    try:
        assert first.wait_for_subscriber("rx1", TIMEOUT_S)
        first.send(make_block(0))
        assert rx.get().sample_index == 0
        first.close()
        first_ctx.term()  # returns once the listening socket is really closed
        with pytest.raises(queue.Empty):
            rx.get(timeout=0.3)
        assert rx.thread.is_alive()  # still waiting, not failed
        with FramedPublisher(endpoint, context=context) as second:
            assert second.wait_for_subscriber("rx1", TIMEOUT_S)  # the SUB reconnected by itself
            later = T0 + 10**10
            for index in (0, N):
                assert second.send(make_block(index, t0_ns=later + index * 1000))
            got = [rx.get(), rx.get()]
    finally:
        rx.stop()
    assert [b.sample_index for b in got] == [0, N]
    assert got[0].flags & Flags.DISCONTINUITY
    assert not drops.bad_frames


def test_receiver_can_bind_and_publishers_connect(drops, context):
    rx = start_receiver("tcp://127.0.0.1:0", drops, context, bind=True)
    try:
        with FramedPublisher(rx.receiver.endpoint, bind=False, context=context) as pub:
            assert pub.wait_for_subscriber("rx1", TIMEOUT_S)
            pub.send(make_block(0))
            assert rx.get().sample_index == 0
    finally:
        rx.stop()


def test_close_from_another_thread_stops_a_waiting_receiver(drops, context):
    rx = start_receiver("tcp://127.0.0.1:9", drops, context)  # nothing ever answers there
    with pytest.raises(queue.Empty):
        rx.get(timeout=0.1)
    rx.stop()  # asserts the thread ended
    assert list(rx.receiver) == []  # a closed receiver yields nothing


def test_publisher_counts_blocks_dropped_at_the_high_water_mark(context):
    with FramedPublisher("tcp://127.0.0.1:0", sndhwm=1, context=context) as pub:
        sub = context.socket(zmq.SUB)
        sub.rcvhwm = 1
        sub.connect(pub.endpoint)
        sub.setsockopt(zmq.SUBSCRIBE, b"rx1")  # subscribed but never reading
        assert pub.wait_for_subscriber("rx1", TIMEOUT_S)
        big = make_block(0, n=64 * 1024)
        results = []
        while len(results) < 2000 and results.count(False) < 3:
            results.append(pub.send(big))
        sub.close(linger=0)
    assert results[0] is True
    assert results.count(False) == 3
    assert pub.dropped == results.count(False) and pub.sent == results.count(True)
    assert pub.dropped_samples == pub.dropped * 64 * 1024


def test_from_config_uses_the_options(publisher, drops, context):
    cfg = from_dict(
        {
            "pipeline": {"clock_jump_tolerance_s": 0.5},
            "receivers": [{"id": "rx1", "kind": "zmq", "lat": 45.0, "lon": 7.0, "endpoint": publisher.endpoint, "rcvhwm": 50}],
        },
        source="test.toml",
    )
    rx = ZmqFramedReceiver.from_config(cfg.receivers[0], ReceiverContext(config=cfg, drops=drops))
    assert rx.options == Options(endpoint=publisher.endpoint, rcvhwm=50)
    collector = Collector(rx)
    try:
        assert publisher.wait_for_subscriber("rx1", TIMEOUT_S)
        publisher.send(make_block(0))
        publisher.send(make_block(N, t0_ns=T0 + 1_000_000 + 300_000_000))  # a clock step: the pipeline's business
        assert [collector.get().sample_index, collector.get().sample_index] == [0, N]
    finally:
        collector.stop()
    assert not drops.bad_frames


def test_config_requires_an_endpoint():
    from streamer.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"receivers\[0\]\.endpoint: required key is missing"):
        from_dict({"receivers": [{"id": "rx1", "kind": "zmq", "lat": 45.0, "lon": 7.0}]}, source="t.toml")


def test_an_invalid_endpoint_is_a_fatal_receiver_error(drops):
    from streamer.core.errors import ReceiverFatalError

    with pytest.raises(ReceiverFatalError, match="cannot connect 'tcp://no-port'"):
        ZmqFramedReceiver("rx1", Options(endpoint="tcp://no-port"), drops=drops)


# --- hostile or broken headers (each once crashed, flooded or miscounted) ---------------------------------


def test_blocks_declaring_a_subnormal_rate_are_counted_bad_rate_and_logged_at_a_bounded_rate(
    connected, drops, caplog, monkeypatch
):
    # Two of them in one pipeline step overflowed the time arithmetic that joins blocks, outside the daemon's
    # per-block try; under the default rate limit they cost a traceback each in the log instead.
    monkeypatch.setattr(zmq_framed, "_bounded", BoundedLog(zmq_framed.log))  # a fresh budget of lines
    publisher, rx = connected
    with caplog.at_level("WARNING", logger="receivers.zmq_framed"):
        for i in range(200):
            send_raw(publisher, encode(dataclasses.replace(make_block(i * N), sample_rate=5e-324)))
        publisher.send(make_block(200 * N))
        assert rx.get().sample_index == 200 * N
    assert drops.bad_frames == {("rx1", "bad_rate"): 200}
    assert rx.queue.empty()
    lines = [r for r in caplog.records if r.name == "receivers.zmq_framed"]
    assert len(lines) == 5 and "bad_rate" in lines[0].getMessage()


def test_an_index_near_2_to_the_64_is_one_bad_index_not_a_giant_gap(connected, drops):
    publisher, rx = connected
    publisher.send(make_block(0))
    publisher.send(make_block(2**64 - 2 * N, t0_ns=T0 + 1_000_000))  # same time as a continuing block
    publisher.send(make_block(N))
    assert [rx.get().sample_index, rx.get().sample_index] == [0, N]
    assert drops.bad_frames == {("rx1", "bad_index"): 1}
    assert drops.dropped == {("rx1", "bad_index"): N}
    assert rx.queue.empty()


def test_a_jump_beyond_the_plausible_gap_is_refused_and_a_block_continuing_it_restarts_the_stream(connected, drops):
    publisher, rx = connected
    far = int(MAX_GAP_S * RATE) + 10 * N  # more than a minute of samples ahead
    for index in (0, far, far + N):
        publisher.send(make_block(index))
    got = [rx.get(), rx.get()]
    assert [b.sample_index for b in got] == [0, far + N]
    assert got[1].flags & Flags.DISCONTINUITY, "restarted: the pipeline counts no gap for it"
    assert drops.bad_frames == {("rx1", "bad_index"): 1} and drops.dropped == {("rx1", "bad_index"): N}


def joining_receiver(publisher, drops, context, subscribed_ns: int) -> Collector:
    rx = ZmqFramedReceiver("rx1", Options(endpoint=publisher.endpoint, recv_timeout_s=0.05), drops=drops,
                           context=context, wall_clock_ns=lambda: subscribed_ns)
    collector = Collector(rx)
    assert publisher.wait_for_subscriber("rx1", TIMEOUT_S)
    return collector


def test_samples_a_new_stream_sent_before_our_first_block_are_counted_before_join(publisher, drops, context):
    # The stream began (index 0) just after we subscribed; its first, flagged block never reached us.
    rx = joining_receiver(publisher, drops, context, subscribed_ns=T0 - 5_000_000)
    try:
        send_raw(publisher, encode(make_block(12 * N)))  # unflagged, as the publisher's second block is
        assert rx.get().sample_index == 12 * N
    finally:
        rx.stop()
    assert drops.dropped == {("rx1", "before_join"): 12 * N} and not drops.bad_frames


@pytest.mark.parametrize("case", ["stream began before we subscribed", "first block flagged"])
def test_joining_a_running_stream_or_at_its_flagged_start_counts_nothing(publisher, drops, context, case):
    subscribed_ns = T0 + 1_000_000_000 if case == "stream began before we subscribed" else T0 - 5_000_000
    rx = joining_receiver(publisher, drops, context, subscribed_ns)
    try:
        flags = Flags.DISCONTINUITY if case == "first block flagged" else Flags.NONE
        send_raw(publisher, encode(make_block(12 * N, flags=flags)))
        assert rx.get().sample_index == 12 * N
    finally:
        rx.stop()
    assert not drops.dropped and not drops.bad_frames


def test_a_first_block_refused_for_size_is_not_counted_again_as_before_join(publisher, drops, context):
    rx = ZmqFramedReceiver("rx1", Options(endpoint=publisher.endpoint, recv_timeout_s=0.05, max_message_bytes=1024),
                           drops=drops, context=context, wall_clock_ns=lambda: T0 - 5_000_000)
    collector = Collector(rx)
    try:
        assert publisher.wait_for_subscriber("rx1", TIMEOUT_S)
        send_raw(publisher, encode(make_block(12 * N, n=120)))  # 960 + ~200 bytes: each frame under 1024, not both
        send_raw(publisher, encode(make_block(12 * N + 120, n=10)))
        assert collector.get().sample_index == 12 * N + 120
    finally:
        collector.stop()
    assert drops.dropped == {("rx1", "before_join"): 12 * N, ("rx1", "oversize"): 120}


@pytest.mark.parametrize("key, value, message", [
    ("rcvhwm", -1, "rcvhwm: expected 0 to 2147483647 messages, got -1"),
    ("rcvhwm", 1 << 40, "rcvhwm: expected 0 to 2147483647 messages"),
    ("recv_timeout_s", 1e9, "recv_timeout_s: expected > 0 and <= 10 s, got 1000000000.0"),
])
def test_socket_options_libzmq_cannot_take_are_config_errors_naming_the_receiver(key, value, message):
    """Before, these passed the config and failed in the adapter's thread (EINVAL, OverflowError) on every retry."""
    from streamer.config import from_dict
    from streamer.core.errors import ConfigError

    table = {"id": "zrx", "kind": "zmq", "lat": 45.0, "lon": 7.0, "endpoint": "tcp://127.0.0.1:45999", key: value}
    with pytest.raises(ConfigError, match=rf"receivers\[0\].*{re.escape(message)}.*zrx|receivers\[0\].*zrx.*{re.escape(message)}"):
        from_dict({"receivers": [table]}, source="t.toml")
