"""Framed IQ over ZeroMQ (kind ``zmq``): the central side of ``heimdall receiver`` and the KiwiSDR bridge.

Wire format: receivers.framing (three frames: topic = receiver id, msgpack header, payload). The
adapter is a SUB socket that connects (or binds, ``bind = true``) and subscribes to its receiver id.
ZeroMQ matches topics by prefix, so a message whose topic is only *prefixed* by the id (``rx1`` vs
``rx10`` on a shared publisher) is another receiver's and is ignored without counting.

Every unusable message is counted with ``drops.bad_frame(id, reason)`` and skipped; the reasons are
``framing.REASONS`` plus two stream checks made here:

- ``index_backwards``: the block starts before the end of the previous one (a duplicate, reordering
  or overlap). The block is dropped and its samples counted as ``samples_dropped(id,
  "index_backwards", n)``. A restarted publisher is *not* a duplicate: a block flagged
  ``DISCONTINUITY`` (``FramedPublisher`` flags its first block) starts the stream afresh, and so does
  the second of two consecutive backwards blocks that are contiguous with each other (the first one
  is the only loss when the flagged block did not reach us).
- ``clock_jump``: ``t0_ns`` disagrees with the previous block's ``t0_ns`` advanced by the sample count
  at the previous block's rate by more than ``pipeline.clock_jump_tolerance_s``. The block is still
  yielded: the pipeline re-anchors its time on it.

Forward index jumps are not counted here: the gap is visible in ``sample_index`` for the pipeline.
Silence is not an error: the adapter keeps polling (``recv_timeout_s`` at a time, checking whether
``close()`` was called from another thread) and resumes when a publisher comes back; ZeroMQ
reconnects by itself.
"""

from __future__ import annotations

import dataclasses
import errno
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import zmq

from receivers.base import DropCounter, Flags, IQBlock, ReceiverBase, ReceiverContext
from receivers.framing import FrameError, decode, encode
from streamer.errors import ReceiverFatalError, ReceiverTransientError


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class Options:
    endpoint: str = field(metadata=_doc("ZeroMQ endpoint of the edge publisher, e.g. 'tcp://edge1:5560'"))
    bind: bool = field(default=False, metadata=_doc("bind the SUB socket instead of connecting (publishers connect)"))
    rcvhwm: int = field(default=1000, metadata=_doc("messages queued in ZeroMQ before it drops (receive high-water mark)"))
    recv_timeout_s: float = field(default=0.2, metadata=_doc("one poll's wait before checking for close() (s)"))
    max_message_bytes: int = field(default=64 << 20, metadata=_doc("larger inbound messages are refused by ZeroMQ"))


def open_socket(context: zmq.Context, socket_type: int, endpoint: str, *, bind: bool) -> zmq.Socket:
    """Create, bind or connect a socket; ZeroMQ setup errors become ReceiverFatal/TransientError."""
    sock = context.socket(socket_type)
    sock.linger = 0
    try:
        (sock.bind if bind else sock.connect)(endpoint)
    except zmq.ZMQError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ReceiverTransientError(f"cannot bind {endpoint}: {exc.strerror}") from exc
        raise ReceiverFatalError(f"cannot {'bind' if bind else 'connect'} {endpoint!r}: {exc.strerror}") from exc
    return sock


class PolledSocket:
    """A socket read by one thread with a bounded poll, closed promptly when ``close()`` comes from another.

    ``messages()`` yields multipart messages until ``close()``; the socket is closed by whichever side
    finishes last (the iterating thread if it is inside ``messages()``, else ``close()`` itself).
    """

    def __init__(self, sock: zmq.Socket, timeout_s: float) -> None:
        self._sock = sock
        self._timeout_ms = max(1, int(timeout_s * 1000))
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._iterating = False

    @property
    def socket(self) -> zmq.Socket:
        return self._sock

    def messages(self) -> Iterator[list[bytes]]:
        with self._lock:
            if self._closed.is_set() or self._iterating:
                return
            self._iterating = True
        try:
            yield from self._poll_loop()
        finally:
            with self._lock:
                self._iterating = False
                if self._closed.is_set():
                    self._sock.close(linger=0)

    def _poll_loop(self) -> Iterator[list[bytes]]:
        while not self._closed.is_set():
            try:
                if not self._sock.poll(self._timeout_ms, zmq.POLLIN):
                    continue
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                continue
            except zmq.ZMQError as exc:
                if self._closed.is_set():
                    return
                raise ReceiverTransientError(f"receive failed: {exc.strerror}") from exc
            yield frames

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            if not self._iterating:
                self._sock.close(linger=0)


class StreamContinuity:
    """The stream-level checks of one receiver's framed blocks (see the module docstring)."""

    def __init__(self, clock_jump_tolerance_s: float) -> None:
        self._tolerance_ns = clock_jump_tolerance_s * 1e9
        self._last: IQBlock | None = None
        self._behind_end: int | None = None

    def check(self, block: IQBlock) -> tuple[str | None, IQBlock | None]:
        """Return ``(reason or None, block to yield or None)``."""
        prev = self._last
        if prev is None or block.flags & Flags.DISCONTINUITY:
            return self._accept(block, None)
        if block.sample_index < prev.end_index:
            if block.sample_index == self._behind_end:
                restarted = dataclasses.replace(block, flags=block.flags | Flags.DISCONTINUITY)
                return self._accept(restarted, None)
            self._behind_end = block.end_index
            return "index_backwards", None
        expected_ns = prev.t0_ns + (block.sample_index - prev.sample_index) * 1e9 / prev.sample_rate
        jumped = abs(block.t0_ns - expected_ns) > self._tolerance_ns
        return self._accept(block, "clock_jump" if jumped else None)

    def _accept(self, block: IQBlock, reason: str | None) -> tuple[str | None, IQBlock]:
        self._last = block
        self._behind_end = None
        return reason, block


class ZmqFramedReceiver(ReceiverBase):
    """SUB socket -> framing.decode -> stream checks -> IQBlock.

    Examples
    --------
    >>> import zmq
    >>> from receivers.base import TallyDropCounter
    >>> rx = ZmqFramedReceiver("rx1", Options(endpoint="tcp://127.0.0.1:0", bind=True), drops=TallyDropCounter())
    >>> rx.endpoint.startswith("tcp://127.0.0.1:")
    True
    >>> rx.close()
    """

    Options = Options
    realtime = True

    def __init__(
        self,
        receiver_id: str,
        options: Options,
        *,
        drops: DropCounter,
        clock_jump_tolerance_s: float = 0.05,
        context: zmq.Context | None = None,
    ) -> None:
        self.receiver_id = receiver_id
        self.options = options
        self._drops = drops
        self._topic = receiver_id.encode("utf-8")
        self._continuity = StreamContinuity(clock_jump_tolerance_s)
        sock = open_socket(context or zmq.Context.instance(), zmq.SUB, options.endpoint, bind=options.bind)
        sock.rcvhwm = options.rcvhwm
        sock.setsockopt(zmq.MAXMSGSIZE, options.max_message_bytes)
        sock.setsockopt(zmq.SUBSCRIBE, self._topic)
        self._polled = PolledSocket(sock, options.recv_timeout_s)

    @classmethod
    def from_config(cls, rx, ctx: ReceiverContext) -> "ZmqFramedReceiver":
        return cls(rx.id, rx.options, drops=ctx.drops, clock_jump_tolerance_s=ctx.config.pipeline.clock_jump_tolerance_s)

    @property
    def endpoint(self) -> str:
        """The endpoint actually bound or connected (the real port when bound to port 0)."""
        return self._polled.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def __iter__(self) -> Iterator[IQBlock]:
        for frames in self._polled.messages():
            if not frames or frames[0] != self._topic:
                continue  # another receiver whose id starts with ours
            block = self._decode(frames)
            if block is not None:
                yield block

    def _decode(self, frames: list[bytes]) -> IQBlock | None:
        rid = self.receiver_id
        try:
            block = decode(frames, expected_receiver_id=rid)
        except FrameError as exc:
            self._drops.bad_frame(rid, exc.reason)
            return None
        reason, accepted = self._continuity.check(block)
        if reason is not None:
            self._drops.bad_frame(rid, reason)
        if accepted is None:
            self._drops.samples_dropped(rid, reason, len(block.samples))
        return accepted

    def close(self) -> None:
        """Stop iteration (from any thread, within ``recv_timeout_s``) and release the socket."""
        self._polled.close()


class FramedPublisher:
    """The edge side: an XPUB socket that sends each IQBlock as one framed message, never blocking.

    At the send high-water mark (a subscriber too slow) the block is dropped: ``send`` returns False
    and ``dropped`` / ``dropped_samples`` count it. The first block sent carries ``Flags.DISCONTINUITY``
    so a central streamer starts the stream afresh after a restart of this side. It behaves as a PUB
    socket for subscribers; being an XPUB, it also sees their subscriptions, so ``wait_for_subscriber``
    can tell when sending starts to reach someone.

    Examples
    --------
    >>> import numpy as np
    >>> with FramedPublisher("tcp://127.0.0.1:0") as pub:
    ...     ok = pub.send(IQBlock("rx1", np.zeros(4, np.complex64), 0, 0, "host", 1e6, 1e8))
    ...     ok, pub.sent, pub.dropped, pub.wait_for_subscriber("rx1", timeout_s=0.01)
    (True, 1, 0, False)
    """

    def __init__(
        self,
        endpoint: str,
        *,
        bind: bool = True,
        sndhwm: int = 1000,
        dtype: str = "cf32",
        context: zmq.Context | None = None,
    ) -> None:
        self.dtype = dtype
        self.sent = 0
        self.dropped = 0
        self.dropped_samples = 0
        self._first = True
        self._subscriptions: set[bytes] = set()
        self._sock = open_socket(context or zmq.Context.instance(), zmq.XPUB, endpoint, bind=bind)
        self._sock.sndhwm = sndhwm
        self._sock.setsockopt(zmq.XPUB_NODROP, 1)  # at the HWM, send raises Again instead of dropping silently

    @property
    def endpoint(self) -> str:
        return self._sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def send(self, block: IQBlock) -> bool:
        """Publish ``block``; False when it was dropped because a subscriber is at the high-water mark."""
        self._read_subscriptions(0)
        if self._first:
            block = dataclasses.replace(block, flags=block.flags | Flags.DISCONTINUITY)
        try:
            self._sock.send_multipart(encode(block, self.dtype), zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            self.dropped_samples += len(block.samples)
            return False
        self._first = False
        self.sent += 1
        return True

    def wait_for_subscriber(self, receiver_id: str, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until some subscriber's subscription covers ``receiver_id``'s topic."""
        topic = receiver_id.encode("utf-8")
        deadline = time.monotonic() + timeout_s
        while not any(topic.startswith(s) for s in self._subscriptions):
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                return False
            self._read_subscriptions(remaining_ms)
        return True

    def _read_subscriptions(self, timeout_ms: int) -> None:
        while self._sock.poll(timeout_ms, zmq.POLLIN):
            message = self._sock.recv()
            if message[:1] == b"\x01":
                self._subscriptions.add(message[1:])
            elif message[:1] == b"\x00":
                self._subscriptions.discard(message[1:])
            timeout_ms = 0

    def close(self) -> None:
        self._sock.close(linger=0)

    def __enter__(self) -> "FramedPublisher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
