"""GNU Radio gr-zeromq sinks (kind ``gnuradio_zmq``): a ``zeromq.pub_sink`` or ``push_sink`` of complex items.

Wire format (gr-zeromq 3.10, read from ``base_sink_impl.cc`` and ``tag_headers.cc``; docs/protocol.md):

- One ZeroMQ message per scheduler ``work()`` call, a variable number of items (often 4096). Items are
  raw host-order complex64 (two float32, little-endian on x86): the sink's ``itemsize`` must be 8 and
  ``vlen`` 1. There is no rate, frequency or time on the wire.
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

With tags, ``sample_index`` is the item offset, so a PUB that dropped messages at its high-water mark
shows as an index jump (the block after it carries ``Flags.OVERFLOW``), and an offset that goes back
(the flowgraph restarted) starts the stream afresh (``Flags.DISCONTINUITY``). The usual source tags
update the stream from the tagged item on (a message is split there): ``rx_rate`` (double, Hz),
``rx_freq`` (double, Hz; a change sets ``Flags.RETUNE``) and ``rx_time`` (tuple(uint64 seconds, double
fraction), Unix time of the tagged item: ``time_source`` becomes "device" and ``t0_ns`` follows from the
item count). ``sample_rate_hz`` / ``center_freq_hz`` are the values until the first tags; items for
which either is still unknown are dropped and counted as ``samples_dropped(id, "no_metadata", n)``.

Without tags, ``sample_rate_hz`` and ``center_freq_hz`` are required, ``sample_index`` counts the items
received, and ``t0_ns`` is the host clock at receipt minus the message's duration (``time_source``
"host": approximate, it carries the transport latency and its jitter). **Drops cannot be detected
without tags**: a PUB sink silently drops at its high-water mark and the count just continues.

Bad messages are counted with ``drops.bad_frame(id, reason)`` and skipped: ``short_frame`` (wrong frame
count), ``bad_tag_header``, ``bad_pmt``, ``bad_length`` (not a multiple of 8 bytes), ``non_finite``;
a known tag with an unusable value is ignored and counted as ``bad_tag_value``.
"""

from __future__ import annotations

import math
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
import zmq

from receivers import pmt
from receivers.base import DropCounter, Flags, IQBlock, ReceiverBase, ReceiverContext
from receivers.framing import FrameError
from receivers.zmq_framed import PolledSocket, open_socket

TAG_MAGIC = 0x5FF0
TAG_VERSION = 1
_HEADER = struct.Struct("<HBQQ")  # magic, version, offset, tag count: 19 bytes
_TAG_OFFSET = struct.Struct("<Q")
_MIN_TAG_BYTES = _TAG_OFFSET.size + 3  # an offset and three one-byte PMTs
ITEM_BYTES = 8  # complex64
_SOCKET_TYPES = {"sub": zmq.SUB, "pull": zmq.PULL}
_SPLIT_TAGS = ("rx_rate", "rx_freq", "rx_time")


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


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

    def __post_init__(self) -> None:
        if self.socket_type not in _SOCKET_TYPES:
            raise ValueError(f"socket_type: expected 'sub' or 'pull', got {self.socket_type!r}")
        if self.key is not None and self.socket_type != "sub":
            raise ValueError("key: only a pub_sink (socket_type 'sub') sends a key frame")
        if not self.pass_tags and (self.sample_rate_hz is None or self.center_freq_hz is None):
            raise ValueError("sample_rate_hz and center_freq_hz are required when pass_tags is false")
        if self.sample_rate_hz is not None and not (math.isfinite(self.sample_rate_hz) and self.sample_rate_hz > 0):
            raise ValueError(f"sample_rate_hz: expected a positive number, got {self.sample_rate_hz!r}")


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
    ) -> None:
        self.receiver_id = receiver_id
        self.options = options
        self._drops = drops
        self._clock = clock
        self._key = None if options.key is None else options.key.encode("utf-8")
        self._state = _StreamState(options.sample_rate_hz, options.center_freq_hz)
        self._next_index: int | None = None
        self._pending: list[Tag] = []
        def configure(sock: zmq.Socket) -> None:  # before connect: later, these options have no effect
            sock.rcvhwm = options.rcvhwm
            sock.setsockopt(zmq.MAXMSGSIZE, options.max_message_bytes)

        sock = open_socket(context or zmq.Context.instance(), _SOCKET_TYPES[options.socket_type], options.endpoint,
                           bind=False, configure=configure)
        if options.socket_type == "sub":
            sock.setsockopt(zmq.SUBSCRIBE, self._key or b"")
        self._polled = PolledSocket(sock, options.recv_timeout_s)

    @classmethod
    def from_config(cls, rx, ctx: ReceiverContext) -> "GnuRadioZmqReceiver":
        return cls(rx.id, rx.options, drops=ctx.drops)

    def __iter__(self) -> Iterator[IQBlock]:
        for frames in self._polled.messages():
            data = self._data_frame(frames)
            if data is None:
                continue
            try:
                yield from self._blocks(data)
            except FrameError as exc:
                self._drops.bad_frame(self.receiver_id, exc.reason)

    def close(self) -> None:
        """Stop iteration (from any thread, within ``recv_timeout_s``) and release the socket."""
        self._polled.close()

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
            return self._untagged(_items(data))
        offset, tags, payload = parse_tag_header(data)
        return self._tagged(offset, tags, _items(payload))

    def _untagged(self, samples: np.ndarray) -> list[IQBlock]:
        start = self._next_index or 0
        self._next_index = start + len(samples)
        if len(samples) == 0:
            return []
        _check_finite(samples)
        rate = self._state.rate
        t0_ns = self._clock() - round(len(samples) * 1e9 / rate)
        return [self._block(samples, start, t0_ns, "host", Flags.NONE)]

    def _tagged(self, offset: int, tags: list[Tag], samples: np.ndarray) -> list[IQBlock]:
        end = offset + len(samples)
        flags = self._continuity_flags(offset)
        due = sorted(self._pending + tags, key=lambda t: t.offset)
        self._pending = [t for t in due if t.offset >= end]
        due = [t for t in due if t.offset < end]
        if len(samples) and not np.isfinite(samples).all():
            self._apply_all(due)
            raise FrameError("non_finite", "payload holds NaN or infinite samples")
        self._next_index = end
        cuts = sorted({offset} | {max(t.offset, offset) for t in due if t.key in _SPLIT_TAGS})
        blocks = []
        for a, b in zip(cuts, cuts[1:] + [end]):
            changed = self._apply_all([t for t in due if max(t.offset, offset) == a])
            block = self._segment(samples[a - offset : b - offset], a, end, flags | changed)
            flags = Flags.NONE
            if block is not None:
                blocks.append(block)
        return blocks

    def _continuity_flags(self, offset: int) -> Flags:
        expected = self._next_index
        if expected is None or offset == expected:
            return Flags.NONE
        if offset > expected:
            # The PUB dropped messages (HWM) or items were lost upstream: the offset shows how many.
            self._drops.samples_dropped(self.receiver_id, "gap", offset - expected)
            return Flags.OVERFLOW
        self._state.anchor = None  # the flowgraph restarted: its old rx_time no longer applies
        self._pending = []
        return Flags.DISCONTINUITY

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
            self._drops.samples_dropped(self.receiver_id, "no_metadata", len(samples))
            return None
        t0_ns = state.time_at(start)
        if t0_ns is not None:
            return self._block(samples, start, t0_ns, "device", flags)
        host_ns = self._clock() - round((message_end - start) * 1e9 / state.rate)
        return self._block(samples, start, host_ns, "host", flags)

    def _block(self, samples: np.ndarray, start: int, t0_ns: int, source: str, flags: Flags) -> IQBlock:
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


def _items(data: bytes | memoryview) -> np.ndarray:
    if len(data) % ITEM_BYTES:
        raise FrameError("bad_length", f"{len(data)} item bytes is not a multiple of {ITEM_BYTES} (complex64)")
    return np.frombuffer(data, dtype="<c8").astype(np.complex64)


def _check_finite(samples: np.ndarray) -> None:
    if not np.isfinite(samples).all():
        raise FrameError("non_finite", "payload holds NaN or infinite samples")
