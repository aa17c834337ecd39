"""GNU Radio gr-zeromq sinks (kind ``gnuradio_zmq``): a ``zeromq.pub_sink`` or ``push_sink`` of complex items.

Wire format (gr-zeromq 3.10, read from ``base_sink_impl.cc`` and ``tag_headers.cc``; docs/protocol.md):

- One ZeroMQ message per scheduler ``work()`` call, a variable number of items (often 4096). Items are
  raw host-order complex64 (two float32, little-endian on x86): the sink's ``itemsize`` must be 8, or
  8 x ``vlen`` for a vector stream (set ``vlen`` here to the sink's). Vectors are flattened: offsets
  count vectors, ``sample_index`` counts samples (offset x ``vlen``). There is no rate, frequency or
  time on the wire.
- A PUB sink with a ``key`` sends two frames ``[key][data]``; otherwise one frame ``[data]``. Set
  ``key`` here to the sink's key (we subscribe to it and skip other keys).
- With ``pass_tags`` on the sink (set ``pass_tags = true`` here too) ``data`` starts with a tag header,
  all little-endian except the PMTs:

  ======  =====  ========================================================================
  offset  size   field
  ======  =====  ========================================================================
  0       2      magic 0x5FF0 (bytes F0 5F)
  2       1      version, 1
  3       8      u64 absolute offset of the first item in this message
  11      8      u64 tag count
  19      ...    per tag: u64 absolute item offset, then key, value, srcid as serialised PMTs
                 (big-endian, receivers.pmt)
  ======  =====  ========================================================================

  then the items.

With tags, ``sample_index`` is the item offset (x ``vlen``), so a PUB that dropped messages at its high-water mark
shows as an index jump (the block after it carries ``Flags.OVERFLOW``), and an offset that goes back
(the flowgraph restarted) starts the stream afresh (``Flags.DISCONTINUITY``). The usual source tags
update the stream from the tagged item on (a message is split there): ``rx_rate`` (double, Hz),
``rx_freq`` (double, Hz; a change sets ``Flags.RETUNE``) and ``rx_time`` (tuple(uint64 seconds, double
fraction), Unix time of the tagged item: ``time_source`` becomes "device" and ``t0_ns`` follows from the
item count). ``sample_rate_hz`` / ``center_freq_hz`` are the values until the first tags; items for
which either is still unknown are dropped and counted as ``samples_dropped(id, "no_metadata", n)``.

Without tags, ``sample_rate_hz`` and ``center_freq_hz`` are required and ``sample_index`` counts the
items received. **Drops cannot be detected without tags**: a PUB sink silently drops at its high-water
mark and the count just continues.

Without ``rx_time`` (and always without tags) ``time_source`` is "host" and ``t0_ns`` comes from
``receivers.hostclock.HostClock``: from the sample count, pulled slowly towards the host clock at
receipt, so the daemon's own scheduling jitter does not show as clock jumps; a disagreement beyond
0.5 s that lasts 2 s (or beyond 10 s at once) steps the time, which the pipeline counts as one
``clock_jump``.

Everything unusable is counted and skipped, never raised:

- ``drops.bad_frame(id, reason)`` per message or event: ``short_frame`` (wrong frame count), ``bad_tag_header``,
  ``bad_pmt``, ``bad_length`` (not a multiple of the item size), ``non_finite`` (its items are also
  counted as ``samples_dropped(id, "non_finite", n)``), ``item_size_mismatch`` (below), and
  ``link_error``: ZeroMQ closed the link after a protocol error, most often a message over
  ``max_message_bytes``. libzmq does not reconnect after that, so the adapter opens a fresh socket
  and keeps its stream state: with tags, the lost items show as a ``gap`` on the next message.
- per tag: ``bad_tag_value`` (a known tag with an unusable value), ``bad_tag_key`` (a key that is not
  a symbol), ``tag_overflow`` (a tag for a future item beyond the ``MAX_PENDING_TAGS`` held; the
  earliest are kept). Tags other than ``rx_rate``, ``rx_freq`` and ``rx_time`` have no effect and are
  not kept.
- ``samples_dropped(id, "before_join", offset)``: with tags, the items a stream sent before its first
  message reached us, when the stream began after this receiver opened (a PUB's slow-joiner loss: it
  sent before our subscription arrived) or while we were receiving (the flowgraph restarted). When it
  began is ``rx_time`` taken back to item 0, else the first message's arrival less the stream's
  duration at its rate. A stream that began earlier was joined late: its earlier items were never
  ours and are only logged (info).
- ``item_size_mismatch``: with tags, the item offset advance between two messages against the payload
  bytes gives the bytes per item. When one pair shows more than 8 x ``vlen`` (the next offset lies
  inside the previous message: impossible with the right size), or three consecutive pairs show the
  same smaller size (a lost message can look like one such pair), the stream's items are not
  what this receiver reads: each message is refused (``bad_frame`` and ``samples_dropped(id,
  "item_size_mismatch", n)``, n the items as the stream's offsets count them, x ``vlen``), logged
  once, until a pair agrees again.
  The messages before the verdict are read as usual (a wrong size then shows as gaps or restarts).
"""

from __future__ import annotations

import logging
import math
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
import zmq

from receivers import pmt
from receivers.base import DropCounter, Flags, IQBlock, ReceiverBase, ReceiverContext, check_socket_options
from receivers.framing import FrameError
from receivers.hostclock import HostClock
from receivers.zmq_framed import PolledSocket, open_socket
from streamer.core.boundedlog import BoundedLog
from streamer.core.docs import doc as _doc
from streamer.core.security import SocketEvents

log = logging.getLogger(__name__)
_log = BoundedLog(log)

TAG_MAGIC = 0x5FF0
TAG_VERSION = 1
_HEADER = struct.Struct("<HBQQ")  # magic, version, offset, tag count: 19 bytes
_TAG_OFFSET = struct.Struct("<Q")
_MIN_TAG_BYTES = _TAG_OFFSET.size + 3  # an offset and three one-byte PMTs
ITEM_BYTES = 8  # complex64
_SOCKET_TYPES = {"sub": zmq.SUB, "pull": zmq.PULL}
_SPLIT_TAGS = ("rx_rate", "rx_freq", "rx_time")
#: Tags for items not yet received that are held; beyond this the latest are discarded (``tag_overflow``).
#: A gr-zeromq sink sends a tag with the message holding its item, so real streams hold none.
MAX_PENDING_TAGS = 1024
_RECONNECT_GRACE_S = 1.0  # libzmq schedules a reconnect at once after an ordinary disconnect


@dataclass(frozen=True)
class Options:
    endpoint: str = field(metadata=_doc("address the gr-zeromq sink binds, e.g. 'tcp://gnuradio-host:5555'"))
    socket_type: str = field(default="sub", metadata=_doc("'sub' for a pub_sink, 'pull' for a push_sink"))
    key: str | None = field(default=None, metadata=_doc("the pub_sink's key: messages are [key][data] (sub only)"))
    pass_tags: bool = field(default=False, metadata=_doc("the sink has pass_tags on: each message starts with a tag header"))
    sample_rate_hz: float | None = field(default=None, metadata=_doc("sample rate (Hz); required without tags, else until rx_rate"))
    center_freq_hz: float | None = field(default=None, metadata=_doc("centre frequency (Hz); required without tags, else until rx_freq"))
    gain_db: float | None = field(default=None, metadata=_doc("receiver gain reported in IQBlock.gain_db (dB)"))
    rcvhwm: int = field(default=1000, metadata=_doc("messages queued in ZeroMQ before it drops (receive high-water mark)"))
    recv_timeout_s: float = field(default=0.2, metadata=_doc("one poll's wait before checking for close() (s)"))
    max_message_bytes: int = field(default=64 << 20, metadata=_doc("larger inbound messages are refused by ZeroMQ"))
    vlen: int = field(default=1, metadata=_doc("the sink's vlen: items are vectors of this many complex64 samples"))

    def __post_init__(self) -> None:
        if isinstance(self.vlen, bool) or not isinstance(self.vlen, int) or self.vlen < 1:
            raise ValueError(f"vlen: expected an integer >= 1, got {self.vlen!r}")
        if self.socket_type not in _SOCKET_TYPES:
            raise ValueError(f"socket_type: expected 'sub' or 'pull', got {self.socket_type!r}")
        if self.key is not None and self.socket_type != "sub":
            raise ValueError("key: only a pub_sink (socket_type 'sub') sends a key frame")
        if not self.pass_tags and (self.sample_rate_hz is None or self.center_freq_hz is None):
            raise ValueError("sample_rate_hz and center_freq_hz are required when pass_tags is false")
        if self.sample_rate_hz is not None and not (math.isfinite(self.sample_rate_hz) and self.sample_rate_hz > 0):
            raise ValueError(f"sample_rate_hz: expected a positive number, got {self.sample_rate_hz!r}")
        check_socket_options(self.rcvhwm, self.recv_timeout_s, self.max_message_bytes)


class Tag(NamedTuple):
    """One stream tag: absolute item offset and the parsed PMTs."""

    offset: int
    key: Any
    value: Any
    srcid: Any


def parse_tag_header(data: bytes | memoryview) -> tuple[int, list[Tag], memoryview]:
    """Split a pass_tags message into ``(offset of the first item, tags, item bytes)``.

    Raises ``FrameError`` with reason ``bad_tag_header`` or ``bad_pmt``.
    """
    view = memoryview(data)
    if len(view) < _HEADER.size:
        raise FrameError("bad_tag_header", f"{len(view)} bytes, the tag header alone is {_HEADER.size}")
    magic, version, offset, count = _HEADER.unpack_from(view, 0)
    if magic != TAG_MAGIC or version != TAG_VERSION:
        raise FrameError("bad_tag_header", f"magic 0x{magic:04x} version {version}, expected 0x{TAG_MAGIC:04x} version 1")
    if count * _MIN_TAG_BYTES > len(view) - _HEADER.size:
        raise FrameError("bad_tag_header", f"{count} tags cannot fit in {len(view) - _HEADER.size} bytes")
    pos, tags = _HEADER.size, []
    for _ in range(count):
        if pos + _TAG_OFFSET.size > len(view):
            raise FrameError("bad_tag_header", f"tag offset truncated at byte {pos}")
        (tag_offset,) = _TAG_OFFSET.unpack_from(view, pos)
        objects = []
        pos += _TAG_OFFSET.size
        for _part in range(3):
            try:
                obj, pos = pmt.read(view, pos)
            except pmt.PmtError as exc:
                raise FrameError("bad_pmt", str(exc)) from None
            objects.append(obj)
        tags.append(Tag(tag_offset, *objects))
    return offset, tags, view[pos:]


MIN_RATE_HZ = 1.0
MAX_RATE_HZ = 1e11


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _rx_time_ns(value: Any) -> int | None:
    if not (isinstance(value, tuple) and len(value) == 2):
        return None
    secs, frac = value
    frac = _number(frac)
    # UHD's rx_time: whole seconds since the epoch (u64) and a fraction in [0, 1); anything else is a bad tag.
    if isinstance(secs, bool) or not isinstance(secs, int) or not 0 <= secs < 1 << 40 or frac is None or not 0.0 <= frac < 1.0:
        return None
    return secs * 1_000_000_000 + round(frac * 1e9)


class _StreamState:
    """Rate, frequency and time anchor of a tagged stream, updated by tags at absolute item offsets."""

    def __init__(self, rate: float | None, freq: float | None) -> None:
        self.rate, self.freq = rate, freq
        self.anchor: tuple[int, int] | None = None  # (item index, Unix ns) from rx_time

    def time_at(self, index: int) -> int | None:
        if self.anchor is None or self.rate is None:
            return None
        anchor_index, anchor_ns = self.anchor
        return anchor_ns + round((index - anchor_index) * 1e9 / self.rate)

    def apply(self, tag: Tag, at: int) -> str | None:
        """Apply one tag at item ``at``; return "retune", "bad" (unusable value) or None."""
        if tag.key == "rx_time":
            ns = _rx_time_ns(tag.value)
            if ns is None:
                return "bad"
            self.anchor = (at, ns)
            return None
        if tag.key not in ("rx_rate", "rx_freq"):
            return None
        value = _number(tag.value)
        # A sample rate outside 1 Hz .. 100 GHz is no radio's (and 1e-300 would make durations infinite).
        if value is None or (tag.key == "rx_rate" and not MIN_RATE_HZ <= value <= MAX_RATE_HZ):
            return "bad"
        old = self.rate if tag.key == "rx_rate" else self.freq
        if tag.key == "rx_rate":
            now_ns = self.time_at(at)
            if now_ns is not None:
                self.anchor = (at, now_ns)  # keep time continuous across the rate change
            self.rate = value
        else:
            self.freq = value
        return "retune" if old is not None and old != value else None


class ItemSizeCheck:
    """Bytes per item of a tagged stream, from the offset advance between consecutive messages.

    ``observe(offset, nbytes)`` is called for every tagged message, in order, before its items are read;
    it returns the bytes per item the stream appears to carry while that disagrees with ``item_bytes``
    (see the module docstring for when a disagreement counts), else None.

    Examples
    --------
    >>> check = ItemSizeCheck(8)
    >>> [check.observe(offset, 4 * 100) for offset in (0, 100, 200, 300, 400)]  # float32 items
    [None, None, None, 4, 4]
    """

    def __init__(self, item_bytes: int) -> None:
        self.item_bytes = item_bytes
        self.apparent: int | None = None
        self._prev: tuple[int, int] | None = None  # (offset, payload bytes) of the previous message
        self._candidate: int | None = None
        self._seen = 0

    def observe(self, offset: int, nbytes: int) -> int | None:
        prev, self._prev = self._prev, (offset, nbytes)
        if prev is None or offset <= prev[0] or prev[1] == 0:
            self._candidate, self._seen = None, 0  # nothing to compare: first message, restart or empty
            return self.apparent
        advance, size = offset - prev[0], prev[1]
        if size == self.item_bytes * advance:
            self.apparent, self._candidate, self._seen = None, None, 0
        elif size % advance == 0:
            apparent = size // advance
            self._seen = self._seen + 1 if apparent == self._candidate else 1
            self._candidate = apparent
            # More bytes than items: the next offset lies inside this message, which no loss explains. Fewer:
            # a lost message between two of the same size halves the ratio, so that must repeat to count.
            if apparent > self.item_bytes or self._seen >= 3:
                self.apparent = apparent
        else:
            self._candidate, self._seen = None, 0  # a loss that no item size explains
        return self.apparent


class _LinkLost(Exception):
    """ZeroMQ closed the link and will not reconnect: open a fresh socket."""


class GnuRadioZmqReceiver(ReceiverBase):
    """SUB or PULL socket on a gr-zeromq sink -> IQBlocks (see the module docstring).

    Examples
    --------
    >>> from receivers.base import TallyDropCounter
    >>> opts = Options(endpoint="tcp://127.0.0.1:5555", sample_rate_hz=1e6, center_freq_hz=1e8)
    >>> with GnuRadioZmqReceiver("gr1", opts, drops=TallyDropCounter()) as rx:
    ...     rx.receiver_id
    'gr1'
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
        clock: Callable[[], int] = time.time_ns,
        clock_jump_tolerance_s: float = 0.05,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock``: host Unix time in ns, for host-timed blocks. ``clock_jump_tolerance_s``: the pipeline's;
        host time is never pulled by more than a quarter of it between two blocks. ``monotonic``: seconds,
        for the link watch."""
        self.receiver_id = receiver_id
        self.options = options
        self._drops = drops
        self._monotonic = monotonic
        self._key = None if options.key is None else options.key.encode("utf-8")
        self._item_bytes = ITEM_BYTES * options.vlen
        self._state = _StreamState(options.sample_rate_hz, options.center_freq_hz)
        self._host = HostClock(clock, max_correction_s=clock_jump_tolerance_s / 4, on_step=self._host_stepped)
        self._wall = clock
        self._opened_ns = clock()  # a stream that began before this was joined late: its earlier items are not ours
        self._joining = False
        self._sizes = ItemSizeCheck(self._item_bytes)
        self._next_index: int | None = None
        self._pending: list[Tag] = []
        self._after_drop = False  # items were dropped here: the next block carries OVERFLOW
        self._size_logged = False  # the current item-size verdict has been logged
        self._context = context or zmq.Context.instance()
        self._lock = threading.Lock()
        self._closed = False
        self._lost_at: float | None = None
        self._polled = self._open()

    def _open(self) -> PolledSocket:
        options = self.options

        def configure(sock: zmq.Socket) -> None:  # before connect: later, these options have no effect
            sock.rcvhwm = options.rcvhwm
            sock.setsockopt(zmq.MAXMSGSIZE, options.max_message_bytes)

        sock = open_socket(self._context, _SOCKET_TYPES[options.socket_type], options.endpoint, bind=False,
                           configure=configure)
        if options.socket_type == "sub":
            sock.setsockopt(zmq.SUBSCRIBE, self._key or b"")
        events = None
        if isinstance(sock, zmq.Socket):  # a real one: tests may pass a context whose sockets are fakes
            events = SocketEvents(sock, f"ingest:{self.receiver_id}", lambda label: None, curve=False)
        self._lost_at = None
        return PolledSocket(sock, options.recv_timeout_s, events=events, on_events=self._on_events)

    @classmethod
    def from_config(cls, rx, ctx: ReceiverContext) -> "GnuRadioZmqReceiver":
        return cls(rx.id, rx.options, drops=ctx.drops, context=ctx.zmq_context,
                   clock_jump_tolerance_s=ctx.config.pipeline.clock_jump_tolerance_s)

    def __iter__(self) -> Iterator[IQBlock]:
        while True:
            try:
                for frames in self._polled.messages():
                    data = self._data_frame(frames)
                    if data is None:
                        continue
                    try:
                        yield from self._blocks(data)
                    except FrameError as exc:
                        self._drops.bad_frame(self.receiver_id, exc.reason)
                return  # closed
            except _LinkLost:
                if not self._reopen():
                    return

    def close(self) -> None:
        """Stop iteration (from any thread, within ``recv_timeout_s``) and release the socket."""
        with self._lock:
            self._closed = True
            polled = self._polled
        polled.close()

    def _on_events(self, events: list[tuple[int, int]]) -> None:
        """A link closed without a reconnect was closed by libzmq for a protocol error: count it, reopen."""
        for event, _value in events:
            if event == zmq.EVENT_DISCONNECTED:
                self._lost_at = self._monotonic()
            elif event in (zmq.EVENT_CONNECT_RETRIED, zmq.EVENT_CONNECT_DELAYED, zmq.EVENT_CONNECTED):
                self._lost_at = None
        if self._lost_at is not None and self._monotonic() - self._lost_at > _RECONNECT_GRACE_S:
            self._drops.bad_frame(self.receiver_id, "link_error")
            _log.warning((self.receiver_id, "link_error"),
                         "receiver %s: ZeroMQ closed the link to %s after a protocol error (most often a message over "
                         "max_message_bytes = %d); reopening", self.receiver_id, self.options.endpoint,
                         self.options.max_message_bytes)
            raise _LinkLost

    def _reopen(self) -> bool:
        fresh = self._open()
        with self._lock:
            if self._closed:
                fresh.close()
                return False
            old, self._polled = self._polled, fresh
        old.close()
        return True

    def _data_frame(self, frames: list[bytes]) -> bytes | None:
        expected = 1 if self._key is None else 2
        if self._key is not None and frames[0] != self._key and len(frames) == 2:
            return None  # another key that starts with ours
        if len(frames) != expected:
            self._drops.bad_frame(self.receiver_id, "short_frame")
            return None
        return frames[-1]

    def _blocks(self, data: bytes) -> list[IQBlock]:
        if not self.options.pass_tags:
            return self._untagged(self._items(data))
        offset, tags, payload = parse_tag_header(data)
        return self._tagged(offset, tags, payload)

    def _items(self, data: bytes | memoryview) -> np.ndarray:
        if len(data) % self._item_bytes:
            raise FrameError("bad_length", f"{len(data)} item bytes is not a multiple of {self._item_bytes} "
                                           f"(complex64 x vlen {self.options.vlen})")
        return np.frombuffer(data, dtype="<c8").astype(np.complex64)

    def _untagged(self, samples: np.ndarray) -> list[IQBlock]:
        start = self._next_index or 0
        self._next_index = start + len(samples)
        if len(samples) == 0:
            return []
        if not np.isfinite(samples).all():
            self._refuse_non_finite(len(samples))
            return []
        t0_ns = self._host.stamp(start, start + len(samples), self._state.rate)
        return [self._block(samples, start, t0_ns, "host", Flags.NONE)]

    def _tagged(self, raw_offset: int, tags: list[Tag], payload: memoryview) -> list[IQBlock]:
        vlen = self.options.vlen
        apparent = self._sizes.observe(raw_offset, len(payload))
        if apparent is None:
            self._size_logged = False
        else:
            refused = len(payload) // apparent * vlen  # the items as the stream's offsets count them
            self._refuse_item_size(apparent, refused)
            self._next_index = raw_offset * vlen + refused
            return []
        samples = self._items(payload)
        offset = raw_offset * vlen  # offsets count vectors; indices count samples
        end = offset + len(samples)
        flags = self._continuity_flags(offset)
        due = self._due_tags(tags, end)
        if len(samples) and not np.isfinite(samples).all():
            self._apply_all(due)  # the stream's metadata still changes at these items
            self._judge_join(offset, end)
            self._next_index = end
            self._refuse_non_finite(len(samples))
            return []
        self._next_index = end
        at_cut: dict[int, list[Tag]] = {}
        for t in due:
            at_cut.setdefault(max(t.offset, offset), []).append(t)
        cuts = sorted({offset} | at_cut.keys())
        blocks = []
        for a, b in zip(cuts, cuts[1:] + [end]):
            changed = self._apply_all(at_cut.get(a, []))
            block = self._segment(samples[a - offset : b - offset], a, end, flags | changed)
            if block is not None:
                blocks.append(block)
                flags = Flags.NONE
        self._judge_join(offset, end)
        return blocks

    def _due_tags(self, tags: list[Tag], end: int) -> list[Tag]:
        """The usable tags for items before ``end``, in order; later ones are held (at most MAX_PENDING_TAGS)."""
        vlen, usable = self.options.vlen, []
        for t in tags:
            if not isinstance(t.key, str):  # GNU Radio keys are symbols; e.g. a uniform vector cannot be compared
                self._drops.bad_frame(self.receiver_id, "bad_tag_key")
                _log.warning((self.receiver_id, "bad_tag_key"), "receiver %s: ignored a tag whose key is a %s, "
                             "not a symbol", self.receiver_id, type(t.key).__name__)
            elif t.key in _SPLIT_TAGS:
                usable.append(t if vlen == 1 else t._replace(offset=t.offset * vlen))
        merged = sorted(self._pending + usable, key=lambda t: t.offset)
        split = next((i for i, t in enumerate(merged) if t.offset >= end), len(merged))
        due, self._pending = merged[:split], merged[split:]
        if len(self._pending) > MAX_PENDING_TAGS:
            discarded = len(self._pending) - MAX_PENDING_TAGS
            del self._pending[MAX_PENDING_TAGS:]
            for _ in range(discarded):
                self._drops.bad_frame(self.receiver_id, "tag_overflow")
            _log.warning((self.receiver_id, "tag_overflow"), "receiver %s: discarded %d tags for items not yet "
                         "received (%d held at most)", self.receiver_id, discarded, MAX_PENDING_TAGS)
        return due

    def _continuity_flags(self, offset: int) -> Flags:
        expected = self._next_index
        if offset == expected:
            return Flags.NONE
        if expected is not None and offset > expected:
            # The PUB dropped messages (HWM) or items were lost upstream: the offset shows how many.
            self._count("gap", offset - expected)
            return Flags.OVERFLOW
        if expected is None:
            self._joining = True  # judged once this message's tags (rate, rx_time) are applied
            return Flags.NONE
        # The flowgraph restarted while we were receiving: whatever it sent before this reached us is lost.
        self._count("before_join", offset)
        self._state.anchor = None  # the old rx_time no longer applies
        self._pending = []
        self._host.reset()
        return Flags.DISCONTINUITY

    def _count(self, reason: str, n: int) -> None:
        if n > 0:
            self._drops.samples_dropped(self.receiver_id, reason, n)

    def _judge_join(self, offset: int, end: int) -> None:
        """The first message starts at item ``offset``: lost to us only if the stream began after we opened."""
        if not self._joining:
            return
        self._joining = False
        rate = self._state.rate
        if offset == 0 or rate is None:
            return
        began_ns = self._state.time_at(0)
        if began_ns is None:  # no rx_time: the arrival of this message's end, less the stream's duration
            began_ns = self._wall() - round(end * 1e9 / rate)
        if began_ns >= self._opened_ns:  # e.g. a PUB's slow joiner: it sent before our subscription arrived
            self._count("before_join", offset)
            _log.warning((self.receiver_id, "before_join"), "receiver %s: the stream began after this receiver "
                         "opened, and its first %d items never reached us (counted as before_join)",
                         self.receiver_id, offset)
        else:
            _log.log(logging.INFO, (self.receiver_id, "joined"), "receiver %s: joined a running stream at item %d "
                     "(it began before this receiver opened: not counted as lost)", self.receiver_id, offset)

    def _refuse_non_finite(self, n: int) -> None:
        # The items were received and are counted here, so the next block's index jump is not a gap.
        self._drops.bad_frame(self.receiver_id, "non_finite")
        self._count("non_finite", n)
        self._after_drop = True

    def _refuse_item_size(self, apparent: int, n: int) -> None:
        self._drops.bad_frame(self.receiver_id, "item_size_mismatch")
        self._count("item_size_mismatch", n)
        self._after_drop = True
        if self._size_logged:
            return
        self._size_logged = True  # once per verdict; BoundedLog still bounds a stream that flips back and forth
        _log.error((self.receiver_id, "item_size_mismatch"),
                  "receiver %s: the stream carries %d bytes per item (item offsets against payload bytes), "
                  "this receiver reads %d (complex64 x vlen %d); refusing its messages: check the sink's item "
                  "type and vlen%s", self.receiver_id, apparent, self._item_bytes, self.options.vlen,
                  f" (complex64 vectors of {apparent // ITEM_BYTES}: set vlen = {apparent // ITEM_BYTES})"
                  if apparent % ITEM_BYTES == 0 else "")

    def _host_stepped(self, disagreement_ns: int) -> None:
        _log.warning((self.receiver_id, "host_step"), "receiver %s: host-timed stream stepped by %+.3f s "
                     "(its sample count and the host clock disagreed for too long)", self.receiver_id,
                     disagreement_ns / 1e9)

    def _apply_all(self, tags: list[Tag]) -> Flags:
        flags = Flags.NONE
        for tag in tags:
            result = self._state.apply(tag, tag.offset)
            if result == "bad":
                self._drops.bad_frame(self.receiver_id, "bad_tag_value")
            elif result == "retune":
                flags |= Flags.RETUNE
        return flags

    def _segment(self, samples: np.ndarray, start: int, message_end: int, flags: Flags) -> IQBlock | None:
        state = self._state
        if len(samples) == 0:
            return None
        if state.rate is None or state.freq is None:
            self._count("no_metadata", len(samples))
            self._after_drop = True
            return None
        t0_ns = state.time_at(start)
        if t0_ns is not None:
            return self._block(samples, start, t0_ns, "device", flags)
        return self._block(samples, start, self._host.stamp(start, message_end, state.rate), "host", flags)

    def _block(self, samples: np.ndarray, start: int, t0_ns: int, source: str, flags: Flags) -> IQBlock:
        if self._after_drop:  # the samples just dropped here are counted: the pipeline must not count a gap
            flags |= Flags.OVERFLOW
            self._after_drop = False
        return IQBlock(
            receiver_id=self.receiver_id,
            samples=samples,
            sample_index=start,
            t0_ns=int(t0_ns),
            time_source=source,
            sample_rate=float(self._state.rate),
            center_freq=float(self._state.freq),
            gain_db=self.options.gain_db,
            flags=flags,
        )
