"""Framed IQ over ZeroMQ (kind ``zmq``): the central side of ``heimdall receiver`` on an edge host.

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
  the second of two consecutive refused blocks that are contiguous with each other (the first one
  is the only loss when the flagged block did not reach us).
- ``bad_index``: the block ends beyond ``MAX_INDEX`` (2**63 - 1), or jumps forward by more than
  ``MAX_GAP_S`` seconds of samples: a loss no one can size (a corrupt header, or a publisher restarted
  without the flag), so it is not passed on as a gap. The block is dropped and its samples counted as
  ``samples_dropped(id, "bad_index", n)``; a next block contiguous with it restarts the stream.

Forward index jumps up to ``MAX_GAP_S`` are not counted here: the gap is visible in ``sample_index`` and the
pipeline counts it. Clock steps are left to the pipeline too, which counts each one once (``clock_jump``).
The samples a publisher sent before the first block this adapter sees are counted as ``samples_dropped(id,
"before_join", sample_index)`` when that block is not flagged ``DISCONTINUITY`` and its stream began
(``t0_ns - sample_index / sample_rate``) after this adapter subscribed: they were published to us and lost
(e.g. the flagged first block sent before the subscription reached the publisher). A stream that began
earlier was joined late: its earlier samples were never ours and are not counted.

Limits (docs/security.md): ZeroMQ refuses a frame over ``max_message_bytes`` (ZMQ_MAXMSGSIZE) by closing
the connection. When this side connects, libzmq does not reconnect after that: the adapter sees the link
close without a reconnect, counts ``bad_frame(id, "link_error")`` and raises ReceiverTransientError so the
runner opens a fresh socket. (When this side binds, the edge reconnects by itself; the lost message shows
as a gap.) A message whose frames *together* exceed the limit is counted ``oversize``. A token bucket
limits the samples accepted per second to ``max_rate_sps`` (unset: ``rate_limit_factor`` times the
configured ``sample_rate_hz``, or without it times the rate the first block declares), with
``rate_burst_s`` seconds of burst; blocks over it are dropped and counted ``samples_dropped(id,
"rate_limit", n)``, and the next block passed on carries ``Flags.OVERFLOW``. The limit never follows a
rate declared later, so a publisher cannot lift it or refill the bucket by declaring another rate.
With ``[security] curve_ingest`` the socket is a CURVE server (streamer.core.security) and peers it refuses
are counted through ``drops.auth_failure("ingest:<id>")`` when the DropCounter has that method.
Silence is not an error: the adapter keeps polling (``recv_timeout_s`` at a time, checking whether
``close()`` was called from another thread) and resumes when a publisher comes back; ZeroMQ
reconnects by itself.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import zmq

from receivers.base import (MAX_SAMPLE_RATE_HZ, MIN_SAMPLE_RATE_HZ, DropCounter, Flags, IQBlock, ReceiverBase, ReceiverContext,
                            check_socket_options, plausible_rate)
from receivers.framing import FrameError, decode, encode
from streamer.core.boundedlog import BoundedLog
from streamer.core.docs import doc as _doc
from streamer.core.errors import ReceiverFatalError, ReceiverTransientError
from streamer.core.security import INGEST_DOMAIN, KeyPair, SocketEvents, load_secret_key, make_curve_client, make_curve_server

log = logging.getLogger(__name__)
_bounded = BoundedLog(log)  # bad input from a peer: counted always, logged a few lines a minute per reason


@dataclass(frozen=True)
class Options:
    endpoint: str = field(metadata=_doc("ZeroMQ endpoint of the edge publisher, e.g. 'tcp://edge1:5560'"))
    bind: bool = field(default=False, metadata=_doc("bind the SUB socket instead of connecting (publishers connect)"))
    rcvhwm: int = field(default=1000, metadata=_doc("messages queued in ZeroMQ before it drops (receive high-water mark)"))
    recv_timeout_s: float = field(default=0.2, metadata=_doc("one poll's wait before checking for close() (s)"))
    max_message_bytes: int = field(default=64 << 20, metadata=_doc("larger inbound messages are refused by ZeroMQ"))
    sample_rate_hz: float | None = field(
        default=None, metadata=_doc("rate the edge publishes (Hz): sets the rate limit; unset: the first block's declared rate")
    )
    max_rate_sps: float | None = field(
        default=None, metadata=_doc("samples/s accepted; more is dropped (rate_limit); unset: rate_limit_factor x sample_rate_hz")
    )
    rate_limit_factor: float = field(
        default=2.0, metadata=_doc("without max_rate_sps: limit = this x sample_rate_hz, never a later declared rate (0 = no limit)")
    )
    rate_burst_s: float = field(default=1.0, metadata=_doc("seconds of samples at the limit accepted in one burst (s)"))

    def __post_init__(self) -> None:
        if self.max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes: expected > 0, got {self.max_message_bytes}")
        if self.max_rate_sps is not None and self.max_rate_sps <= 0:
            raise ValueError(f"max_rate_sps: expected > 0 (or unset), got {self.max_rate_sps}")
        if self.sample_rate_hz is not None and not plausible_rate(self.sample_rate_hz):
            raise ValueError(
                f"sample_rate_hz: expected {MIN_SAMPLE_RATE_HZ:g} to {MAX_SAMPLE_RATE_HZ:g} Hz (or unset), got {self.sample_rate_hz}"
            )
        if self.rate_limit_factor < 0 or self.rate_burst_s <= 0:
            raise ValueError(f"rate_limit_factor >= 0 and rate_burst_s > 0 expected, got {self.rate_limit_factor}, {self.rate_burst_s}")
        check_socket_options(self.rcvhwm, self.recv_timeout_s, self.max_message_bytes)


def open_socket(
    context: zmq.Context,
    socket_type: int,
    endpoint: str,
    *,
    bind: bool,
    configure: Callable[[zmq.Socket], None] = lambda sock: None,
) -> zmq.Socket:
    """Create, bind or connect a socket; ZeroMQ setup errors become ReceiverFatal/TransientError.

    ``configure(sock)`` runs before bind/connect: options such as ZMQ_MAXMSGSIZE, the high-water marks and
    the CURVE keys are copied into a connection when it is set up, so setting them later has no effect.
    """
    sock = context.socket(socket_type)
    sock.linger = 0
    try:
        configure(sock)
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
    With ``events`` (a monitor on the socket), after every poll (so at least every ``timeout_s``) the
    pending monitor events go to ``on_events`` (an empty list if none), in the iterating thread; it may
    raise to end the iteration.
    """

    def __init__(
        self,
        sock: zmq.Socket,
        timeout_s: float,
        *,
        events: SocketEvents | None = None,
        on_events: Callable[[list[tuple[int, int]]], None] = lambda events: None,
    ) -> None:
        self._sock = sock
        self._events = events
        self._on_events = on_events
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
                    self._release()

    def _poll_loop(self) -> Iterator[list[bytes]]:
        while not self._closed.is_set():
            try:
                readable = self._sock.poll(self._timeout_ms, zmq.POLLIN)
                if self._events is not None:
                    self._on_events(self._events.drain())
                if not readable:
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
                self._release()

    def _release(self) -> None:
        if self._events is not None:
            self._events.close()
        self._sock.close(linger=0)


#: Longest forward jump of ``sample_index`` passed on as a gap (seconds of samples at the block's rate): an
#: edge that lost more than a minute has restarted or been replaced, and a larger jump is more likely a corrupt
#: index than a loss anyone can size.
MAX_GAP_S = 60.0
#: Largest ``end_index`` accepted: beyond int64, counters and indices lose meaning.
MAX_INDEX = 2**63 - 1


class StreamContinuity:
    """The stream-level checks of one receiver's framed blocks (see the module docstring); counts what it refuses.

    ``opened_ns`` is the Unix time (ns) at which the adapter subscribed: the ``before_join`` rule compares it
    with the start of the first stream it sees.
    """

    def __init__(self, receiver_id: str, drops: DropCounter, opened_ns: int) -> None:
        self._rid = receiver_id
        self._drops = drops
        self._opened_ns = opened_ns
        self._last: IQBlock | None = None
        self._refused_end: int | None = None  # end of the last block refused as backwards or far ahead
        self._joined = False

    def check(self, block: IQBlock) -> IQBlock | None:
        """The block to yield (possibly flagged ``DISCONTINUITY``), or None when it was refused and counted."""
        if block.end_index > MAX_INDEX:
            return self._refuse(block, "bad_index")
        prev = self._last
        if prev is None:
            return self._accept(block)
        if block.flags & Flags.DISCONTINUITY:
            return self._accept(block)
        if block.sample_index != prev.end_index and block.sample_index == self._refused_end:
            return self._accept(dataclasses.replace(block, flags=block.flags | Flags.DISCONTINUITY))
        if block.sample_index < prev.end_index:
            return self._refuse(block, "index_backwards")
        if block.sample_index - prev.end_index > MAX_GAP_S * prev.sample_rate:
            return self._refuse(block, "bad_index")
        return self._accept(block)

    def join(self, block: IQBlock) -> None:
        """Call with every decoded block, before any check that may refuse it: the first one counts
        ``before_join`` (what precedes it), whether or not it is refused afterwards."""
        if self._joined:
            return
        self._joined = True
        if block.flags & Flags.DISCONTINUITY or block.sample_index == 0:
            return
        if block.sample_index > MAX_GAP_S * block.sample_rate:
            return  # a stream older than any gap we count: joined late, not lost
        stream_start_ns = block.t0_ns - block.sample_index * 1e9 / block.sample_rate
        if stream_start_ns >= self._opened_ns:
            self._drops.samples_dropped(self._rid, "before_join", block.sample_index)
            _bounded.warning((self._rid, "before_join"), "receiver %s: the first block received starts at sample"
                             " %d of a stream that began after we subscribed: %d samples counted as before_join",
                             self._rid, block.sample_index, block.sample_index)

    def _refuse(self, block: IQBlock, reason: str) -> None:
        self._drops.bad_frame(self._rid, reason)
        _bounded.warning(
            (self._rid, reason), "receiver %s: block refused (%s): it starts at sample_index %d, the stream ends at %d",
            self._rid, reason, block.sample_index, self._last.end_index if self._last else 0,
        )
        self._drops.samples_dropped(self._rid, reason, len(block.samples))
        if reason != "bad_index" or block.end_index <= MAX_INDEX:
            self._refused_end = block.end_index
        return None

    def _accept(self, block: IQBlock) -> IQBlock:
        self._last = block
        self._refused_end = None
        return block


_RECONNECT_GRACE_S = 1.0  # libzmq schedules a reconnect at once after an ordinary disconnect


class RateLimit:
    """Token bucket over samples: ``admit(n, declared_rate)`` is False for a block over the limit.

    The limit (samples/s) is ``max_rate_sps``; else ``factor`` times ``expected_rate_hz`` (the configured
    rate); else ``factor`` times the rate the first block declares. Once set it never changes: a rate declared
    later neither lifts the limit nor refills the bucket. ``factor = 0`` and no ``max_rate_sps``: no limit.
    The bucket holds ``burst_s`` seconds at the limit and starts full; a block is admitted while the bucket is
    not empty, even if it takes it below zero, so one block larger than the bucket still passes.

    Examples
    --------
    >>> t = [0.0]
    >>> limit = RateLimit(max_rate_sps=1000.0, factor=2.0, burst_s=1.0, clock=lambda: t[0])
    >>> [limit.admit(400, 1e6) for _ in range(4)]
    [True, True, True, False]
    >>> t[0] = 1.0; limit.admit(400, 1e6)
    True
    """

    def __init__(self, max_rate_sps: float | None, factor: float, burst_s: float, *,
                 expected_rate_hz: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._factor = factor
        self._burst_s = burst_s
        self._clock = clock
        self._tokens = 0.0
        self._last = 0.0
        self._rate: float | None = None
        if max_rate_sps is not None:
            self._set(max_rate_sps)
        elif expected_rate_hz is not None:
            self._set(factor * expected_rate_hz)

    @property
    def limit_sps(self) -> float | None:
        """The limit in samples/s (0: none), or None until the first block sets it."""
        return self._rate

    def _set(self, rate: float) -> None:
        self._rate = rate
        self._tokens = rate * self._burst_s
        self._last = self._clock()

    def admit(self, n: int, declared_rate: float) -> bool:
        if self._rate is None:
            self._set(self._factor * declared_rate)
        rate = self._rate
        if rate <= 0:
            return True
        now = self._clock()
        self._tokens = min(rate * self._burst_s, self._tokens + (now - self._last) * rate)
        self._last = now
        if self._tokens <= 0:
            return False
        self._tokens -= n
        return True


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
        context: zmq.Context | None = None,
        curve_keys: KeyPair | None = None,
        on_auth_failure: Callable[[str], None] = lambda socket: None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.receiver_id = receiver_id
        self.options = options
        self._drops = drops
        self._topic = receiver_id.encode("utf-8")
        self._continuity = StreamContinuity(receiver_id, drops, wall_clock_ns())
        self._rate = RateLimit(options.max_rate_sps, options.rate_limit_factor, options.rate_burst_s,
                               expected_rate_hz=options.sample_rate_hz, clock=clock)
        self._after_drop = False
        self._clock = clock
        self._lost_at: float | None = None

        def configure(sock: zmq.Socket) -> None:
            sock.rcvhwm = options.rcvhwm
            sock.setsockopt(zmq.MAXMSGSIZE, options.max_message_bytes)
            if curve_keys is not None:  # CURVE server; the daemon's CurveAuthenticator checks the edges' keys
                make_curve_server(sock, curve_keys, INGEST_DOMAIN)

        sock = open_socket(context or zmq.Context.instance(), zmq.SUB, options.endpoint, bind=options.bind, configure=configure)
        sock.setsockopt(zmq.SUBSCRIBE, self._topic)
        events = None
        if isinstance(sock, zmq.Socket):  # a real one: tests may pass a context whose sockets are fakes
            events = SocketEvents(sock, f"ingest:{receiver_id}", on_auth_failure, curve=curve_keys is not None)
        self._polled = PolledSocket(sock, options.recv_timeout_s, events=events, on_events=self._on_events)

    @classmethod
    def from_config(cls, rx, ctx: ReceiverContext) -> "ZmqFramedReceiver":
        security = ctx.config.security
        curve_keys = None
        if security.curve_ingest:
            curve_keys = load_secret_key(security.secret_key, key=f"{ctx.config.source}: security.secret_key")
        return cls(
            rx.id,
            rx.options,
            drops=ctx.drops,
            context=ctx.zmq_context,
            curve_keys=curve_keys,
            on_auth_failure=getattr(ctx.drops, "auth_failure", lambda socket: None),
        )

    def _on_events(self, events: list[tuple[int, int]]) -> None:
        """Connecting side: a link closed without a reconnect was closed by libzmq for a protocol error."""
        if self.options.bind:
            return
        for event, _value in events:
            if event == zmq.EVENT_DISCONNECTED:
                self._lost_at = self._clock()
            elif event in (zmq.EVENT_CONNECT_RETRIED, zmq.EVENT_CONNECT_DELAYED, zmq.EVENT_CONNECTED):
                self._lost_at = None
        if self._lost_at is not None and self._clock() - self._lost_at > _RECONNECT_GRACE_S:
            self._lost_at = None
            self._drops.bad_frame(self.receiver_id, "link_error")
            raise ReceiverTransientError(
                f"{self.options.endpoint}: ZeroMQ closed the link after a protocol error and does not reconnect "
                f"(most often a frame over max_message_bytes = {self.options.max_message_bytes}); reopening"
            )

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
            _bounded.warning((rid, exc.reason), "receiver %s: framed message refused: %s", rid, exc)
            return None
        self._continuity.join(block)
        if sum(len(f) for f in frames) > self.options.max_message_bytes:
            self._drops.bad_frame(rid, "oversize")  # each frame was under ZMQ_MAXMSGSIZE, together they are not
            self._drops.samples_dropped(rid, "oversize", len(block.samples))
            self._after_drop = True
            return None
        if not self._rate.admit(len(block.samples), block.sample_rate):
            self._drops.samples_dropped(rid, "rate_limit", len(block.samples))
            self._after_drop = True
            return None
        if self._after_drop:  # the samples just dropped here are counted: the pipeline must not count a gap
            block = dataclasses.replace(block, flags=block.flags | Flags.OVERFLOW)
        accepted = self._continuity.check(block)
        if accepted is not None:
            self._after_drop = False
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
        curve_keys: KeyPair | None = None,
        server_key: bytes | None = None,
    ) -> None:
        """``curve_keys`` (this edge's pair) and ``server_key`` (the daemon's public key), both or neither:
        a CURVE client, which the daemon admits only if this edge's public key is on its ingest allow-list."""
        if (curve_keys is None) != (server_key is None):
            raise ValueError("FramedPublisher: CURVE needs both curve_keys and server_key")
        self.dtype = dtype
        self.sent = 0
        self.dropped = 0
        self.dropped_samples = 0
        self._first = True
        self._subscriptions: set[bytes] = set()

        def configure(sock: zmq.Socket) -> None:
            sock.sndhwm = sndhwm
            sock.setsockopt(zmq.XPUB_NODROP, 1)  # at the HWM, send raises Again instead of dropping silently
            if curve_keys is not None:
                make_curve_client(sock, curve_keys, server_key)

        self._sock = open_socket(context or zmq.Context.instance(), zmq.XPUB, endpoint, bind=bind, configure=configure)

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
