"""Fuzzing the ingest parsers and the adapters' per-message handling (hypothesis).

Targets: ``receivers.framing.decode`` (framed IQ: header + payload), ``ZmqFramedReceiver``'s per-message
path (decode + stream continuity), ``receivers.gnuradio_zmq.parse_tag_header`` and
``GnuRadioZmqReceiver``'s per-message path (key frame, tag header, PMTs, items, tags), and
``receivers.kiwisdr.parse_snd`` + ``SndDecoder``.

What is checked for every generated input:

- no exception escapes except the documented one (``FrameError`` from ``decode`` / ``parse_tag_header``,
  with a reason from the documented set; ``parse_snd`` and the adapters raise nothing at all);
- every message an adapter does not turn into a block is counted, by reason, exactly once, in a
  ``TallyDropCounter`` (messages for another receiver or key are the only silent skips, as documented);
- what is accepted is well formed (complex64, finite, indices and counts add up).

Inputs are structured (valid messages, then mutated field by field and byte by byte, reordered,
duplicated, truncated, with foreign topics and absurd values) rather than only random bytes, so that
most examples reach past the first length check.

Size: ``HEIMDALL_FUZZ_EXAMPLES`` is the total number of examples across this file (default 3000, a few
seconds); it is split over the tests by the weights in ``_WEIGHTS``. CI sets it to 100000 (about
4.5 minutes on 2 cores: see docs/reliability.md, which also gives a longer run).

The adapters are built on a ``NullContext`` (no ZeroMQ socket) and their polled message source
(``_polled``, the one private attribute touched here) is replaced by the generated list of messages;
everything from there on (topic or key check, decoding, stream checks, counting) is the adapter's own
code. tests/receivers/ covers the same adapters on real sockets.
"""

from __future__ import annotations

import math
import os
import struct

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from receivers.base import TIME_SOURCES, Flags, IQBlock, TallyDropCounter
from receivers.framing import ITEM_SIZES, REASONS, FrameError, decode, encode
from receivers.gnuradio_zmq import GnuRadioZmqReceiver, parse_tag_header
from receivers.gnuradio_zmq import Options as GrOptions
from receivers.kiwisdr import FRAME_BYTES, FRAME_SAMPLES, SndDecoder, SndFrame, parse_snd
from receivers.zmq_framed import Options as ZmqOptions
from receivers.zmq_framed import MAX_GAP_S, MAX_INDEX, ZmqFramedReceiver

TOTAL_EXAMPLES = int(os.environ.get("HEIMDALL_FUZZ_EXAMPLES", "3000"))
# Share of TOTAL_EXAMPLES per test (sums to 1).
_WEIGHTS = {  # cheap single-message targets get more examples than the (about 3x dearer) streams
    "decode": 0.30,
    "parse_snd": 0.20,
    "tag_header": 0.15,
    "framed_stream": 0.12,
    "gnuradio_stream": 0.12,
    "snd_stream": 0.11,
}
assert abs(sum(_WEIGHTS.values()) - 1.0) < 1e-9


def fuzz_settings(name: str):
    return settings(
        max_examples=max(10, int(TOTAL_EXAMPLES * _WEIGHTS[name])),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


# --- byte-level mutation (shared) ---------------------------------------------------------------------

@st.composite
def mutated_bytes(draw, data: bytes, max_ops: int = 3) -> bytes:
    """``data`` with up to ``max_ops`` random edits: bit flips, byte sets, inserts, deletes, truncation."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, max_ops))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "extend"]))
        pos = draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and buf:
            buf[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0xC0, 0xC1, 0xDE, 0x06, 0x09]))
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and buf:
            del buf[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del buf[pos:]
        elif op == "extend":
            buf += draw(st.binary(min_size=1, max_size=16))
    return bytes(buf)


# --- framed IQ (receivers.framing, receivers.zmq_framed) ----------------------------------------------

ENDPOINT = "tcp://edge.invalid:5560"  # never opened: the adapters get a NullContext
RATE = 48_000.0
T0 = 1_700_000_000_000_000_000

_WEIRD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.binary(max_size=6),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.sampled_from(["cf32", "ci16", "cu8", "cs8", "gps", "device", "host", "rx1", "rx10", ""]),
)


def _packable(value) -> bool:
    try:
        msgpack.packb(value, use_bin_type=True)
    except (OverflowError, TypeError, ValueError):
        return False
    return True


def _block(index: int, n: int, *, rid: str = "rx1", t0_ns: int | None = None, flags: Flags = Flags.NONE) -> IQBlock:
    samples = ((np.arange(n) % 7 - 3) * (0.1 - 0.05j)).astype(np.complex64)
    t0 = T0 + round((index % 2**40) * 1e9 / RATE) if t0_ns is None else t0_ns  # an int64 for any u64 index
    return IQBlock(rid, samples, index, t0, "gps", RATE, 145.49e6, 10.0, flags)


@st.composite
def framed_message(draw, block: IQBlock | None = None) -> list[bytes]:
    """A framed-IQ message: valid, or mutated in its header fields, header bytes, payload or frame count."""
    if block is None:
        block = _block(draw(st.integers(0, 10**6)), draw(st.integers(1, 40)))
    dtype = draw(st.sampled_from(sorted(ITEM_SIZES)))
    topic, header, payload = encode(block, dtype)
    kind = draw(st.sampled_from(["valid", "valid", "fields", "header_bytes", "payload", "frames", "nan", "topic"]))
    if kind == "fields":
        fields = msgpack.unpackb(header, raw=False)
        for key in draw(st.lists(st.sampled_from(sorted(fields) + ["extra"]), min_size=1, max_size=3)):
            if draw(st.booleans()):
                fields.pop(key, None)
            else:
                fields[key] = draw(_WEIRD_VALUES)
        header = msgpack.packb(fields, use_bin_type=True) if _packable(fields) else draw(st.binary(max_size=40))
    elif kind == "header_bytes":
        header = draw(mutated_bytes(header))
    elif kind == "payload":
        payload = draw(mutated_bytes(payload))
    elif kind == "nan":
        bad = block.samples.copy()
        bad[draw(st.integers(0, len(bad) - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf])) * (1 + 1j)
        payload = bad.astype("<c8").tobytes()
        header = encode(block, "cf32")[1]
    elif kind == "topic":
        topic = draw(st.sampled_from([b"", b"rx", b"rx10", b"\xff\xfe", b"RX1"]))
    frames = [topic, header, payload]
    if kind == "frames":
        frames = draw(st.sampled_from([[], frames[:1], frames[:2], frames + [b""], frames + [payload]]))
    return frames


def check_decoded(block: IQBlock, frames: list[bytes]) -> None:
    assert block.receiver_id == frames[0].decode("utf-8")
    assert isinstance(block.samples, np.ndarray) and block.samples.ndim == 1 and len(block.samples) > 0
    assert block.samples.dtype == np.complex64 and np.isfinite(block.samples).all()
    assert math.isfinite(block.sample_rate) and block.sample_rate > 0
    assert math.isfinite(block.center_freq)
    assert block.gain_db is None or math.isfinite(block.gain_db)
    assert block.sample_index >= 0 and int(block.flags) >= 0
    assert block.time_source in TIME_SOURCES


@fuzz_settings("decode")
@given(frames=st.one_of(framed_message(), st.lists(st.binary(max_size=48), max_size=4)), expected=st.sampled_from([None, "rx1"]))
def test_decode_raises_only_frame_error_with_a_documented_reason(frames, expected):
    try:
        block = decode(frames, expected_receiver_id=expected)
    except FrameError as exc:
        assert exc.reason in REASONS, exc.reason
        return
    check_decoded(block, frames)
    if expected is not None:
        assert block.receiver_id == expected
    # What decode accepts, encode writes back to the same samples (cf32 is lossless).
    again = decode(encode(block, "cf32"))
    assert np.array_equal(again.samples, block.samples) and again.sample_index == block.sample_index


class NullSocket:
    """Accepts the setup calls an adapter makes on its socket (options, connect, a monitor) and carries no traffic."""

    def __init__(self) -> None:
        self.subscriptions: list[bytes] = []
        self.closed = False

    def connect(self, endpoint: str) -> None:
        self.endpoint = endpoint

    bind = connect

    def setsockopt(self, option: int, value) -> None:
        if option == zmq.SUBSCRIBE:
            self.subscriptions.append(value)

    def get_monitor_socket(self, *args, **kwargs) -> "NullSocket":
        return NullSocket()

    def close(self, linger: int | None = None) -> None:
        self.closed = True


class NullContext:
    """Passed as an adapter's ``context=``: no ZeroMQ socket is created (a real one per example would hit
    libzmq's socket limit long before 100,000 examples)."""

    def __init__(self) -> None:
        self.sockets: list[NullSocket] = []

    def socket(self, socket_type: int) -> NullSocket:
        self.sockets.append(NullSocket())
        return self.sockets[-1]


class ListSource:
    """Stands in for the adapter's polled socket: yields the given messages, logging each one first."""

    def __init__(self, messages, log: list) -> None:
        self._messages = messages
        self._log = log

    def messages(self):
        for i, frames in enumerate(self._messages):
            self._log.append(("msg", i))
            yield frames

    def close(self) -> None:
        pass


class RecordingDrops(TallyDropCounter):
    """A TallyDropCounter that also logs each count in order next to the messages (per-message checks)."""

    def __init__(self, log: list) -> None:
        super().__init__()
        self._log = log

    def bad_frame(self, receiver_id: str, reason: str) -> None:
        super().bad_frame(receiver_id, reason)
        self._log.append(("bad", reason))

    def samples_dropped(self, receiver_id: str, reason: str, n: int) -> None:
        super().samples_dropped(receiver_id, reason, n)
        self._log.append(("dropped", reason, int(n)))


def per_message(log: list, n_messages: int) -> list[list]:
    """Split the event log into one list of events per message (what happened while handling it)."""
    out: list[list] = [[] for _ in range(n_messages)]
    current = None
    for event in log:
        if event[0] == "msg":
            current = event[1]
        else:
            assert current is not None, f"{event} before any message"
            out[current].append(event)
    return out


def run_adapter(adapter, messages, log: list) -> list[IQBlock]:
    """Iterate ``adapter`` over ``messages``, logging every block after the message that produced it."""
    adapter._polled = ListSource(messages, log)
    blocks = []
    for block in adapter:
        log.append(("block", block))
        blocks.append(block)
    return blocks


@st.composite
def framed_stream(draw) -> list[list[bytes]]:
    """A receiver's stream: contiguous blocks, with losses, duplicates, restarts, clock jumps and corrupt messages."""
    messages, index, t_shift_ns = [], draw(st.integers(0, 10**6)), 0
    for _ in range(draw(st.integers(1, 10))):
        n = draw(st.integers(1, 32))
        event = draw(st.sampled_from(["next"] * 4 + ["gap", "dup", "back", "restart", "jump", "bad", "foreign", "far"]))
        if event == "gap":
            index += draw(st.integers(1, 100))
        elif event == "far":  # beyond MAX_GAP_S of samples, or beyond int64
            index = min(draw(st.sampled_from([index + int(MAX_GAP_S * RATE) + 1, 2**63 - n + 1, 2**64])), 2**64 - 2**20)
        elif event == "back":
            index = max(0, index - draw(st.integers(1, 64)))
        elif event == "jump":
            t_shift_ns += draw(st.sampled_from([-1, 1])) * draw(st.integers(10**6, 10**11))
        flags = Flags.DISCONTINUITY if event == "restart" else Flags.NONE
        if event == "restart":
            index = draw(st.integers(0, 1000))
        block = _block(index, n, t0_ns=_block(index, 0).t0_ns + t_shift_ns, flags=flags)
        if event == "bad":
            messages.append(draw(framed_message(block)))
            continue
        if event == "foreign":
            messages.append(encode(_block(index, n, rid="rx10"), "cf32"))
            continue
        frames = encode(block, draw(st.sampled_from(sorted(ITEM_SIZES))))
        messages.append(frames)
        if event == "dup":
            messages.append(list(frames))
        index += n
    return messages


# decode's reasons plus the adapter's own (receivers/zmq_framed.py module docstring).
FRAMED_BAD_REASONS = set(REASONS) | {"index_backwards", "bad_index", "oversize"}
FRAMED_DROP_REASONS = {"index_backwards", "bad_index", "oversize", "rate_limit"}


@fuzz_settings("framed_stream")
@given(messages=framed_stream())
def test_framed_adapter_counts_every_refused_message_once_and_never_raises(messages):
    log: list = []
    drops = RecordingDrops(log)
    ctx = NullContext()
    rx = ZmqFramedReceiver("rx1", ZmqOptions(endpoint=ENDPOINT), drops=drops, context=ctx)
    blocks = run_adapter(rx, messages, log)
    assert ctx.sockets[0].subscriptions == [b"rx1"]
    last_end = None
    for frames, events in zip(messages, per_message(log, len(messages))):
        kinds = [e[0] for e in events]
        bad = [e[1] for e in events if e[0] == "bad"]
        dropped = [e for e in events if e[0] == "dropped"]
        assert set(bad) <= FRAMED_BAD_REASONS, bad
        assert {e[1] for e in dropped} <= FRAMED_DROP_REASONS, dropped
        if not frames or frames[0] != b"rx1":
            assert events == [], "another receiver's message is skipped without counting"
        elif "block" in kinds:
            # Passed on, counting nothing (clock steps are the pipeline's to count); a first block may count the
            # samples its stream sent before we joined.
            assert kinds == ["block"] or (kinds == ["dropped", "block"] and dropped[0][1] == "before_join"), events
            block = events[-1][1]
            check_decoded(block, frames)
            if last_end is not None and not block.flags & Flags.DISCONTINUITY:
                assert block.sample_index >= last_end, "a block overlapping the previous one was passed on"
                assert block.sample_index - last_end <= MAX_GAP_S * block.sample_rate, "an implausible gap was passed on"
            assert block.end_index <= MAX_INDEX
            last_end = block.end_index
        elif dropped:
            # A decodable block refused as a whole: its samples are counted, with one bad frame at most.
            assert len(dropped) == 1 and len(bad) <= 1 and dropped[0][2] == len(decode(frames).samples), events
        else:
            assert kinds == ["bad"] and bad[0] in REASONS, f"message handled as {events}"
    assert sum(drops.bad_frames.values()) == sum(1 for e in log if e[0] == "bad")
    assert len(blocks) == sum(1 for e in log if e[0] == "block")


# --- GNU Radio gr-zeromq (receivers.gnuradio_zmq) ----------------------------------------------------

def sym(text: str) -> bytes:
    raw = text.encode()
    return b"\x02" + struct.pack(">H", len(raw)) + raw


def pmt_value(kind: str, value) -> bytes:
    if kind == "double":
        return b"\x04" + struct.pack(">d", value)
    if kind == "u64":
        return b"\x0b" + struct.pack(">Q", value)
    if kind == "time":
        secs, frac = value
        return b"\x0c" + struct.pack(">I", 2) + b"\x0b" + struct.pack(">Q", secs) + b"\x04" + struct.pack(">d", frac)
    return sym(str(value))


@st.composite
def gr_tag(draw, offset: int, n: int) -> bytes:
    key = draw(st.sampled_from(["rx_rate", "rx_freq", "rx_time", "other"]))
    at = offset + draw(st.integers(-4, n + 8))
    at = max(at, 0)
    if key == "rx_rate":
        value = pmt_value("double", draw(st.sampled_from([48e3, 96e3, 0.0, -1.0, math.nan, math.inf])))
    elif key == "rx_freq":
        value = pmt_value("double", draw(st.sampled_from([145.49e6, 145.5e6, math.nan])))
    elif key == "rx_time":
        value = draw(st.one_of(
            st.just(pmt_value("time", (1_700_000_000, 0.25))),
            st.just(pmt_value("time", (1_700_000_000, math.nan))),
            st.just(pmt_value("double", 1.5)),
        ))  # fmt: skip
    else:
        value = draw(st.sampled_from([pmt_value("u64", 7), sym("x"), b"\x00", b"\x06"]))
    return struct.pack("<Q", at) + sym(key) + value + sym("src")


@st.composite
def gr_message(draw, offset: int, n: int, tagged: bool) -> bytes:
    samples = ((np.arange(n) % 5 - 2) * (0.2 + 0.1j)).astype(np.complex64)
    if n and draw(st.integers(0, 9)) == 0:
        samples[draw(st.integers(0, n - 1))] = np.nan
    items = samples.astype("<c8").tobytes()
    if not tagged:
        return items
    tags = [draw(gr_tag(offset, n)) for _ in range(draw(st.integers(0, 3)))]
    return struct.pack("<HBQQ", 0x5FF0, 1, offset, len(tags)) + b"".join(tags) + items


@st.composite
def gr_case(draw):
    """Options plus a message stream: contiguous, gaps, restarts, mutations, wrong frame counts, other keys."""
    tagged = draw(st.booleans())
    key = draw(st.sampled_from([None, "iq"]))
    known = draw(st.booleans()) or not tagged
    options = GrOptions(
        endpoint=ENDPOINT,
        socket_type="sub",
        key=key,
        pass_tags=tagged,
        sample_rate_hz=48e3 if known else None,
        center_freq_hz=145.49e6 if known else None,
    )
    messages, offset = [], draw(st.integers(0, 2**40))
    for _ in range(draw(st.integers(1, 8))):
        n = draw(st.integers(0, 24))
        event = draw(st.sampled_from(["next"] * 4 + ["gap", "back", "mutate", "frames", "foreign_key", "odd_length"]))
        if event == "gap":
            offset += draw(st.integers(1, 1000))
        elif event == "back":
            offset = max(0, offset - draw(st.integers(1, 1000)))
        data = draw(gr_message(offset, n, tagged))
        if event == "mutate":
            data = draw(mutated_bytes(data))
        elif event == "odd_length":
            data += b"\x01"
        frames = [data] if key is None else [key.encode(), data]
        if event == "frames":
            # ZeroMQ never delivers a message of zero frames, so the shortest is one frame.
            frames = draw(st.sampled_from([frames[-1:], frames + [b""], frames[-1:] * 3]))
        elif event == "foreign_key" and key is not None:
            frames = [b"iq2", data]
        messages.append(frames)
        offset += n
    return options, messages


TAG_HEADER_REASONS = {"bad_tag_header", "bad_pmt"}
GR_REASONS = {"short_frame", "bad_tag_header", "bad_pmt", "bad_length", "non_finite", "bad_tag_value", "bad_tag_key",
              "tag_overflow", "item_size_mismatch"}
GR_TAG_REASONS = {"bad_tag_value", "bad_tag_key", "tag_overflow"}  # per tag, beside the message's own fate


def _disagreeing_pair_before(messages: list[list[bytes]], upto: int, options: GrOptions) -> bool:
    """Some message up to ``upto`` carries payload bytes other than 8 x vlen x the next one's offset advance.

    Only messages the adapter reads count: one refused for its frame count or skipped for another key never
    reaches its item-size judgement."""
    parsed = []
    expected_frames = 1 if options.key is None else 2
    for frames in messages[: upto + 1]:
        if len(frames) != expected_frames or (options.key is not None and frames[0] != options.key.encode()):
            continue
        try:
            offset, _, payload = parse_tag_header(frames[-1])
        except FrameError:
            continue
        parsed.append((offset, len(payload)))
    return any(0 < b[0] - a[0] and a[1] and a[1] != 8 * options.vlen * (b[0] - a[0]) for a, b in zip(parsed, parsed[1:]))


@fuzz_settings("tag_header")
@given(data=st.one_of(
    st.binary(max_size=64),
    st.builds(lambda offset, n, tagged: (offset, n, tagged), st.integers(0, 2**63), st.integers(0, 8), st.just(True)).flatmap(
        lambda a: gr_message(*a).flatmap(lambda m: st.one_of(st.just(m), mutated_bytes(m, max_ops=4)))
    ),
))  # fmt: skip
def test_parse_tag_header_raises_only_frame_error_and_accounts_for_every_byte(data):
    try:
        offset, tags, payload = parse_tag_header(data)
    except FrameError as exc:
        assert exc.reason in TAG_HEADER_REASONS, exc.reason
        return
    assert data[:3] == b"\xf0\x5f\x01" and offset == struct.unpack_from("<Q", data, 3)[0]
    assert len(tags) == struct.unpack_from("<Q", data, 11)[0]
    assert bytes(payload) == data[len(data) - len(payload) :]
    assert all(isinstance(t.offset, int) and 0 <= t.offset < 2**64 for t in tags)


def _item_count(frames: list[bytes], options: GrOptions) -> int | None:
    """Items a well-formed message carries (None when the message is refused as a whole)."""
    data = frames[-1]
    if options.pass_tags:
        try:
            _, _, data = parse_tag_header(data)
        except FrameError:
            return None
    if len(data) % 8:
        return None
    items = np.frombuffer(bytes(data), dtype="<c8")
    return len(items) if np.isfinite(items).all() else None


@fuzz_settings("gnuradio_stream")
@given(case=gr_case())
@example(case=(  # a short message between two read ones is no evidence on the item size (found by a CI-size run)
    GrOptions("tcp://edge.invalid:5560", key="iq", pass_tags=True),
    [[b"iq", b"\xf0_\x01" + bytes(16) + np.array([np.nan, 0.1, 0.2], np.complex64)[:2].tobytes()],
     [b"\xf0_\x01\x02" + bytes(15) + np.complex64(0.3).tobytes()],
     [b"iq", b"\xf0_\x01\x01" + bytes(15)]],
))
def test_gnuradio_adapter_counts_every_refused_message_and_accounts_for_every_item(case):
    options, messages = case
    log: list = []
    drops = RecordingDrops(log)
    rx = GnuRadioZmqReceiver("gr1", options, drops=drops, context=NullContext(), clock=lambda: T0)
    run_adapter(rx, messages, log)
    expected_frames = 1 if options.key is None else 2
    for i, (frames, events) in enumerate(zip(messages, per_message(log, len(messages)))):
        reasons = [e[1] for e in events if e[0] == "bad"]
        assert set(reasons) <= GR_REASONS, reasons
        if options.key is not None and len(frames) == 2 and frames[0] != b"iq":
            assert events == [], "another key's message is skipped without counting"
            continue
        if len(frames) != expected_frames:
            assert reasons == ["short_frame"] and len(events) == 1
            continue
        if "item_size_mismatch" in reasons:
            # The adapter judged the stream's item size from the offsets: only where a pair disagrees.
            assert reasons == ["item_size_mismatch"] and not any(e[0] == "block" for e in events), events
            assert _disagreeing_pair_before(messages, i, options)
            continue
        items = _item_count(frames, options)
        if items is None:
            # Refused as a whole: exactly one message-level reason (tags read before it may add per-tag reasons).
            whole = [r for r in reasons if r not in GR_TAG_REASONS]
            assert len(whole) == 1, events
            assert not any(e[0] == "block" for e in events)
            continue
        assert set(reasons) <= GR_TAG_REASONS
        yielded = sum(len(e[1].samples) for e in events if e[0] == "block")
        no_metadata = sum(e[2] for e in events if e[0] == "dropped" and e[1] == "no_metadata")
        assert yielded + no_metadata == items, f"{items} items, {yielded} yielded, {no_metadata} dropped: {events}"
        for e in events:
            if e[0] == "block":
                b = e[1]
                assert b.samples.dtype == np.complex64 and len(b.samples) > 0 and np.isfinite(b.samples).all()
                assert b.sample_rate > 0 and math.isfinite(b.sample_rate) and math.isfinite(b.center_freq)


# --- KiwiSDR SND frames (receivers.kiwisdr) ----------------------------------------------------------

SND_REASONS = {"truncated", "oversize", "bad_tag", "not_iq", "compressed"}


def snd_frame(flags: int, seq: int, *, smeter: int = 1270, lgs: int = 255, tow: int = 0, ns: int = 0, body: bytes | None = None) -> bytes:
    head = b"SND" + bytes([flags]) + struct.pack("<I", seq) + struct.pack(">H", smeter) + bytes([lgs, 0])
    head += struct.pack("<II", tow, ns)
    return head + (body if body is not None else bytes(range(256)) * 8)


# Random sample bytes from a drawn seed: drawing 2048 bytes one by one would dominate the run time.
_RANDOM_BODY = st.integers(0, 2**32 - 1).map(lambda seed: np.random.default_rng(seed).bytes(2048))


@st.composite
def snd_message(draw, seq: int) -> bytes:
    flags = draw(st.one_of(st.just(0x08), st.integers(0, 255)))
    gps = draw(st.booleans())
    frame = snd_frame(
        flags, seq,
        smeter=draw(st.integers(0, 65535)),
        lgs=draw(st.integers(0, 255)) if gps else 255,
        tow=draw(st.integers(0, 2**32 - 1)) if gps else 0,
        ns=draw(st.integers(0, 2**32 - 1)) if gps else 0,
        body=draw(st.one_of(st.none(), _RANDOM_BODY)),
    )  # fmt: skip
    kind = draw(st.sampled_from(["valid"] * 3 + ["mutate", "msg", "short"]))
    if kind == "mutate":
        return draw(mutated_bytes(frame))
    if kind == "msg":
        return b"MSG audio_rate=12000 sample_rate=12001.135"
    if kind == "short":
        return frame[: draw(st.integers(0, FRAME_BYTES - 1))]
    return frame


@fuzz_settings("parse_snd")
@given(data=st.one_of(st.binary(max_size=64), st.integers(0, 2**32 - 1).flatmap(snd_message)))
def test_parse_snd_never_raises_and_returns_a_frame_or_a_documented_reason(data):
    result = parse_snd(data)
    if isinstance(result, str):
        assert result in SND_REASONS, result
        return
    assert isinstance(result, SndFrame) and len(data) == FRAME_BYTES and data[:3] == b"SND"
    assert result.samples.dtype == np.complex64 and len(result.samples) == FRAME_SAMPLES
    assert np.all(np.abs(result.samples.view(np.float32)) <= 1.0)


@st.composite
def snd_stream(draw) -> list[bytes]:
    seq, messages = draw(st.integers(0, 2**32 - 1)), []
    for _ in range(draw(st.integers(1, 10))):
        step = draw(st.sampled_from([1, 1, 1, 2, 5, 0, -1, 2**31]))
        seq = (seq + step) & 0xFFFFFFFF
        messages.append(draw(snd_message(seq)))
    return messages


@fuzz_settings("snd_stream")
@given(messages=snd_stream(), agc=st.booleans())
def test_snd_decoder_counts_every_dropped_frame_and_keeps_the_index_exact(messages, agc):
    log: list = []
    drops = RecordingDrops(log)
    dec = SndDecoder(
        "k", drops=drops, gauge=lambda *a: None, center_freq_hz=7.1e6, sample_rate_hz=12_000.0,
        gain_db=None if agc else 50.0, clock_ns=lambda: T0,
    )  # fmt: skip
    produced = 0
    for i, message in enumerate(messages):
        log.append(("msg", i))
        block = dec.decode(message)
        if block is not None:
            log.append(("block", block))
    last_index = -1
    for message, events in zip(messages, per_message(log, len(messages))):
        parsed = parse_snd(message)
        blocks = [e[1] for e in events if e[0] == "block"]
        bad = [e[1] for e in events if e[0] == "bad"]
        masked = [e for e in events if e[0] == "dropped" and e[1] == "masked"]
        if isinstance(parsed, str):
            assert bad == [parsed] and not blocks
        elif parsed.flags & 0x40:
            assert not blocks and not bad and len(masked) == 1 and masked[0][2] == FRAME_SAMPLES
        else:
            assert len(blocks) == 1 and not bad
            b = blocks[0]
            produced += 1
            assert b.samples.dtype == np.complex64 and len(b.samples) == FRAME_SAMPLES
            assert b.sample_index > last_index and b.time_source in ("gps", "host")
            assert bool(b.flags & Flags.AGC) == agc
            last_index = b.sample_index
    # Every index the decoder advanced over is a block, a masked frame or a counted sequence gap.
    dropped = drops.dropped[("k", "masked")] + drops.dropped[("k", "seq_gap")]
    assert dec.next_index == FRAME_SAMPLES * produced + dropped


def test_gnuradio_rx_time_with_a_huge_fraction_is_counted_not_raised():
    """Found by the 100,000-example run: a finite rx_time fraction such as 1e300 overflowed round(frac * 1e9)."""
    data = struct.pack("<HBQQ", 0x5FF0, 1, 0, 1) + struct.pack("<Q", 0) + sym("rx_time")
    data += pmt_value("time", (1_700_000_000, 1e300)) + sym("src") + np.zeros(4, "<c8").tobytes()
    log: list = []
    drops = RecordingDrops(log)
    options = GrOptions(endpoint=ENDPOINT, pass_tags=True, sample_rate_hz=48e3, center_freq_hz=145.49e6)
    rx = GnuRadioZmqReceiver("gr1", options, drops=drops, context=NullContext(), clock=lambda: T0)
    blocks = run_adapter(rx, [[data]], log)
    assert drops.bad_frames[("gr1", "bad_tag_value")] == 1
    assert sum(len(b.samples) for b in blocks) == 4
