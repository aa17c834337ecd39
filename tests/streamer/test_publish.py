"""The output socket: msgpack topic/payload frames, subscriptions counted, and a subscriber that never reads
cannot block the daemon or starve the others."""

from __future__ import annotations

import time

import msgpack
import pytest
import zmq

from streamer.daemon.publish import ZmqPublisher


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.term()


def wait_until(predicate, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def sub(ctx, endpoint, topic=b"", rcvhwm=1000):
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVHWM, rcvhwm)
    s.setsockopt(zmq.SUBSCRIBE, topic)
    s.connect(endpoint)
    return s


def test_messages_are_topic_then_msgpack_and_subscriptions_are_counted(ctx):
    counts = []
    pub = ZmqPublisher("tcp://127.0.0.1:*", context=ctx, on_subscribers=counts.append)
    listener = sub(ctx, pub.endpoint, b"loc")
    try:
        wait_until(lambda: pub.send("status", {"v": 1}) and counts and counts[-1] == 1)
        wait_until(lambda: pub.send("loc", {"v": 1, "seq": 7}) and listener.poll(50))
        topic, body = listener.recv_multipart()
        assert topic == b"loc" and msgpack.unpackb(body) == {"v": 1, "seq": 7}
    finally:
        listener.close()
        pub.close()


def test_a_subscriber_that_never_reads_does_not_block_or_starve_the_others(ctx):
    sent_topics = []
    pub = ZmqPublisher("tcp://127.0.0.1:*", context=ctx, send_hwm=10, on_sent=sent_topics.append)
    stuck = sub(ctx, pub.endpoint, rcvhwm=10)  # connected, subscribed, never reads
    reader = sub(ctx, pub.endpoint)
    try:
        wait_until(lambda: pub.send("status", {"warmup": True}) and reader.poll(50))
        while reader.poll(0):
            reader.recv_multipart()
        payload = {"v": 1, "blob": b"x" * 4096}
        received = 0
        for seq in range(2000):  # 200 x the stuck subscriber's queue
            assert pub.send("loc", {**payload, "seq": seq}) is True  # never refused, never blocks
            assert reader.poll(2000), f"message {seq} did not reach the reading subscriber"
            topic, body = reader.recv_multipart()
            assert msgpack.unpackb(body)["seq"] == seq
            received += 1
        assert received == 2000
        assert sent_topics.count("loc") == 2000
    finally:
        stuck.close()
        reader.close()
        pub.close()


def test_binding_an_endpoint_in_use_is_a_clear_error(ctx):
    first = ZmqPublisher("tcp://127.0.0.1:*", context=ctx)
    try:
        with pytest.raises(OSError, match=r"output.endpoint: cannot bind 'tcp://127.0.0.1:\d+'"):
            ZmqPublisher(first.endpoint, context=ctx)
    finally:
        first.close()
