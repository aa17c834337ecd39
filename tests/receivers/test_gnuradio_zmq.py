"""GnuRadioZmqReceiver: PMT parsing, hand-built gr-zeromq messages, and a real GNU Radio flowgraph.

Hand-built messages follow PEER-PROTOCOLS.md ("GNU Radio gr-zeromq sinks"); the PMT byte strings in
``GR310_SERIALISED`` were produced by ``pmt.serialize_str`` of GNU Radio 3.10.5, and the slow test
re-checks them against the installed GNU Radio.
"""

from __future__ import annotations

import os
import queue
import selectors
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from receivers import pmt
from receivers.base import Flags, IQBlock, ReceiverContext, TallyDropCounter
from receivers.gnuradio_zmq import MAX_PENDING_TAGS, GnuRadioZmqReceiver, Options, parse_tag_header
from streamer.config import from_dict
from streamer.core.errors import ConfigError
from streamer.daemon.lane import PIPELINE, Lane, LaneSettings
from tests.helpers.collect import Collector

TIMEOUT_S = 5.0
HOST_NS = 1_800_000_000_000_000_000
SYSTEM_PYTHON = "/usr/bin/python3"
FLOWGRAPH = Path(__file__).with_name("gnuradio_flowgraph.py")

# --- PMT ---------------------------------------------------------------------------------------------

GR310_SERIALISED = {
    "pmt.PMT_T": ("00", True),
    "pmt.PMT_F": ("01", False),
    "pmt.PMT_NIL": ("06", None),
    "pmt.intern('rx_rate')": ("02000772785f72617465", "rx_rate"),
    "pmt.from_long(5)": ("0300000005", 5),
    "pmt.from_long(-1)": ("03ffffffff", -1),
    "pmt.from_long(2**40)": ("0d0000010000000000", 2**40),
    "pmt.from_uint64(7)": ("0b0000000000000007", 7),
    "pmt.from_double(1.5)": ("043ff8000000000000", 1.5),
    "pmt.from_complex(1+2j)": ("053ff00000000000004000000000000000", 1 + 2j),
    "pmt.cons(pmt.intern('a'), pmt.from_long(1))": ("07020001610300000001", pmt.Pair("a", 1)),
    "pmt.make_tuple(pmt.from_uint64(10), pmt.from_double(0.25))": ("0c000000020b000000000000000a043fd0000000000000", (10, 0.25)),
    "pmt.make_tuple()": ("0c00000000", ()),
    "pmt.list2(pmt.from_long(1), pmt.from_long(2))": ("07030000000107030000000206", pmt.Pair(1, pmt.Pair(2, None))),
    "pmt.make_vector(2, pmt.from_long(1))": ("080000000203000000010300000001", [1, 1]),
    "pmt.dict_add(pmt.dict_add(pmt.make_dict(), pmt.intern('k'), pmt.from_double(2.0)), pmt.intern('j'), pmt.from_long(3))": (
        "09070200016a030000000309070200016b04400000000000000006", {"j": 3, "k": 2.0},
    ),
}  # fmt: skip

GR310_UNIFORM = {
    "pmt.init_u8vector(3, [1, 2, 3])": ("0a00000000030100010203", np.uint8, [1, 2, 3]),
    "pmt.init_u8vector(0, [])": ("0a00000000000100", np.uint8, []),
    "pmt.init_s16vector(2, [1, -2])": ("0a030000000201000001fffe", np.int16, [1, -2]),
    "pmt.init_u64vector(1, [3])": ("0a060000000101000000000000000003", np.uint64, [3]),
    "pmt.init_f32vector(2, [1.0, 2.0])": ("0a080000000201003f80000040000000", np.float32, [1.0, 2.0]),
    "pmt.init_f64vector(1, [1.0])": ("0a090000000101003ff0000000000000", np.float64, [1.0]),
    "pmt.init_c32vector(1, [1+1j])": ("0a0a0000000101003f8000003f800000", np.complex64, [1 + 1j]),
    "pmt.init_c64vector(1, [1+1j])": ("0a0b0000000101003ff00000000000003ff0000000000000", np.complex128, [1 + 1j]),
}


@pytest.mark.parametrize("expr", sorted(GR310_SERIALISED))
def test_pmt_reads_what_gnuradio_serialises(expr):
    hex_bytes, expected = GR310_SERIALISED[expr]
    value = pmt.loads(bytes.fromhex(hex_bytes))
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("expr", sorted(GR310_UNIFORM))
def test_pmt_reads_uniform_vectors_in_native_byte_order(expr):
    hex_bytes, dtype, expected = GR310_UNIFORM[expr]
    value = pmt.loads(bytes.fromhex(hex_bytes))
    assert value.dtype == np.dtype(dtype) and value.dtype.isnative
    assert value.tolist() == expected


def test_pmt_read_returns_the_position_after_the_object():
    data = bytes.fromhex("0a0300000002010000010002" + "06")  # s16 vector, then null
    value, pos = pmt.read(data)
    assert value.tolist() == [1, 2] and pos == len(data) - 1
    assert pmt.read(data, pos) == (None, len(data))


@pytest.mark.parametrize(
    "hex_bytes",
    [
        "",  # nothing
        "42",  # unknown type
        "0200",  # truncated symbol length
        "020005616263",  # symbol shorter than its length
        "0200026162ff",  # trailing byte
        "020001ff",  # not UTF-8
        "03000000",  # truncated int32
        "0c00000003" + "06" * 2,  # tuple missing an item
        "0cffffffff06",  # absurd count
        "0a0c000000010100" + "00" * 16,  # unknown uniform element type
        "0a0900000002010000000000000000",  # uniform vector shorter than its count
        "0906",  # dict entry that is not a pair
        "09070200016b0342",  # dict continues with an unknown byte
        "07" * 100 + "06" * 101,  # nested deeper than MAX_DEPTH
        "090708000000000606",  # unhashable (vector) dict key
    ],
)
def test_pmt_malformed_input_raises_pmt_error(hex_bytes):
    with pytest.raises(pmt.PmtError):
        pmt.loads(bytes.fromhex(hex_bytes))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 4))
def test_pmt_fuzz_raises_only_pmt_error(data, pos):
    try:
        pmt.read(data, pos)
    except pmt.PmtError:
        pass


# --- hand-built gr-zeromq messages ---------------------------------------------------------------------


def sym(text: str) -> bytes:
    raw = text.encode()
    return b"\x02" + struct.pack(">H", len(raw)) + raw


def dbl(value: float) -> bytes:
    return b"\x04" + struct.pack(">d", value)


def u64(value: int) -> bytes:
    return b"\x0b" + struct.pack(">Q", value)


def tup(*items: bytes) -> bytes:
    return b"\x0c" + struct.pack(">I", len(items)) + b"".join(items)


def tag(offset: int, key: str, value: bytes) -> bytes:
    return struct.pack("<Q", offset) + sym(key) + value + sym("usrp_source0")


def tagged(offset: int, samples: np.ndarray, *tags: bytes, magic: int = 0x5FF0, version: int = 1) -> bytes:
    header = struct.pack("<HBQQ", magic, version, offset, len(tags)) + b"".join(tags)
    return header + samples.astype("<c8").tobytes()


def items(start: int, n: int) -> np.ndarray:
    return (np.arange(start, start + n) * (1 - 0.5j) / 4096).astype(np.complex64)


RX_SECS, RX_FRAC = 1_700_000_000, 0.25
RX_NS = RX_SECS * 10**9 + 250_000_000


def test_tag_header_layout_matches_the_documented_offsets():
    data = tagged(1000, items(0, 2), tag(1001, "rx_rate", dbl(2e6)))
    assert data[:3] == b"\xf0\x5f\x01" and struct.unpack_from("<QQ", data, 3) == (1000, 1)
    offset, tags, payload = parse_tag_header(data)
    assert offset == 1000
    assert tags == [(1001, "rx_rate", 2e6, "usrp_source0")]
    assert bytes(payload) == items(0, 2).tobytes()




@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def drops():
    return TallyDropCounter()


@pytest.fixture
def push(context):
    """A PUSH socket standing in for gr-zeromq's push_sink (binds; messages wait for the PULL peer)."""
    sock = context.socket(zmq.PUSH)
    sock.linger = 0
    sock.bind("tcp://127.0.0.1:0")
    yield sock
    sock.close()


@pytest.fixture
def adapter(push, drops, context):
    """Start a PULL adapter on ``push``: ``adapter(**options) -> Collector``."""
    started = []

    def start(**options) -> Collector:
        opts = Options(endpoint=push.getsockopt_string(zmq.LAST_ENDPOINT), socket_type="pull", recv_timeout_s=0.05, **options)
        rx = GnuRadioZmqReceiver("gr1", opts, drops=drops, context=context, clock=lambda: HOST_NS)
        started.append(Collector(rx))
        return started[-1]

    yield start
    for collector in started:
        collector.stop()


def test_raw_items_become_blocks_counted_from_zero_with_host_time(push, adapter, drops):
    rx = adapter(sample_rate_hz=1e6, center_freq_hz=433.92e6, gain_db=12.0)
    push.send(items(0, 3).tobytes())
    push.send(items(3, 5).tobytes())
    first, second = rx.get(), rx.get()
    np.testing.assert_array_equal(first.samples, items(0, 3))
    np.testing.assert_array_equal(second.samples, items(3, 5))
    assert (first.sample_index, second.sample_index) == (0, 3)
    assert first.time_source == "host"
    assert first.t0_ns == HOST_NS - 3000  # receipt time minus duration
    assert second.t0_ns == first.t0_ns + 3000  # then from the sample count (receivers.hostclock)
    assert (first.sample_rate, first.center_freq, first.gain_db, first.flags) == (1e6, 433.92e6, 12.0, Flags.NONE)
    assert not drops.bad_frames


def test_raw_bad_messages_are_counted_and_received_items_still_advance_the_index(push, adapter, drops):
    rx = adapter(sample_rate_hz=1e6, center_freq_hz=1e8)
    push.send(b"\x00" * 12)  # 1.5 items
    push.send(np.array([1, np.nan, 2], np.complex64).tobytes())
    push.send_multipart([b"key", items(0, 2).tobytes()])  # a key frame nobody configured
    push.send(items(0, 2).tobytes())
    assert rx.get().sample_index == 3  # the three non-finite items were received, then dropped
    assert drops.bad_frames == {("gr1", "bad_length"): 1, ("gr1", "non_finite"): 1, ("gr1", "short_frame"): 1}


def test_tags_set_rate_frequency_and_device_time(push, adapter, drops):
    rx = adapter(pass_tags=True)
    first_tags = (tag(1000, "rx_rate", dbl(2e6)), tag(1000, "rx_freq", dbl(145.5e6)),
                  tag(1000, "rx_time", tup(u64(RX_SECS), dbl(RX_FRAC))), tag(1001, "other", b"\x06"))  # fmt: skip
    push.send(tagged(1000, items(0, 4), *first_tags))
    push.send(tagged(1004, items(4, 4), tag(1006, "rx_freq", dbl(146e6))))
    blocks = [rx.get() for _ in range(3)]
    assert [(b.sample_index, len(b.samples)) for b in blocks] == [(1000, 4), (1004, 2), (1006, 2)]
    assert all(b.sample_rate == 2e6 and b.time_source == "device" for b in blocks)
    assert [b.center_freq for b in blocks] == [145.5e6, 145.5e6, 146e6]
    assert [b.t0_ns for b in blocks] == [RX_NS, RX_NS + 2000, RX_NS + 3000]
    assert [b.flags for b in blocks] == [Flags.NONE, Flags.NONE, Flags.RETUNE]
    np.testing.assert_array_equal(np.concatenate([b.samples for b in blocks]), items(0, 8))
    assert not drops.bad_frames and not drops.dropped  # the stream began (rx_time) long before we opened: joined late


def test_offset_jump_is_an_overflow_and_offset_going_back_a_restart(push, adapter, drops):
    rx = adapter(pass_tags=True, sample_rate_hz=1e3, center_freq_hz=1e8)
    push.send(tagged(0, items(0, 10), tag(0, "rx_time", tup(u64(RX_SECS), dbl(RX_FRAC)))))
    push.send(tagged(500, items(0, 10)))  # a PUB dropped 490 items
    push.send(tagged(0, items(0, 10)))  # the flowgraph restarted
    first, gap, restart = rx.get(), rx.get(), rx.get()
    assert (first.sample_index, first.flags, first.t0_ns) == (0, Flags.NONE, RX_NS)
    assert (gap.sample_index, gap.flags, gap.t0_ns, gap.time_source) == (500, Flags.OVERFLOW, RX_NS + 500 * 10**6, "device")
    assert (restart.sample_index, restart.flags, restart.time_source) == (0, Flags.DISCONTINUITY, "host")
    assert restart.t0_ns == HOST_NS - 10 * 10**6
    assert not drops.bad_frames


def test_rate_change_keeps_device_time_continuous(push, adapter):
    rx = adapter(pass_tags=True, center_freq_hz=1e8)
    push.send(tagged(0, items(0, 1000), tag(0, "rx_rate", dbl(1000.0)), tag(0, "rx_time", tup(u64(RX_SECS), dbl(0.0))),
                     tag(500, "rx_rate", dbl(2000.0))))  # fmt: skip
    push.send(tagged(1000, items(0, 10)))
    blocks = [rx.get() for _ in range(3)]
    assert [(b.sample_index, b.sample_rate) for b in blocks] == [(0, 1000.0), (500, 2000.0), (1000, 2000.0)]
    assert [b.t0_ns - RX_SECS * 10**9 for b in blocks] == [0, 500_000_000, 750_000_000]
    assert blocks[1].flags == Flags.RETUNE


def test_items_before_rate_and_frequency_are_known_are_dropped_and_counted(push, adapter, drops):
    rx = adapter(pass_tags=True)
    push.send(tagged(0, items(0, 6), tag(4, "rx_rate", dbl(1e6)), tag(4, "rx_freq", dbl(1e8))))
    block = rx.get()
    assert (block.sample_index, len(block.samples), block.time_source) == (4, 2, "host")
    assert drops.dropped == {("gr1", "no_metadata"): 4}


def test_tags_past_the_message_apply_when_their_item_arrives(push, adapter):
    rx = adapter(pass_tags=True, sample_rate_hz=1e3, center_freq_hz=1e8)
    push.send(tagged(0, items(0, 4), tag(6, "rx_freq", dbl(2e8))))
    push.send(tagged(4, items(4, 4)))
    blocks = [rx.get() for _ in range(3)]
    assert [(b.sample_index, b.center_freq) for b in blocks] == [(0, 1e8), (4, 1e8), (6, 2e8)]


@pytest.mark.parametrize(
    "message, reason",
    [
        (b"\xf0\x5f\x01" + b"\x00" * 10, "bad_tag_header"),  # shorter than 19 bytes
        (tagged(0, items(0, 2), magic=0x1234), "bad_tag_header"),
        (tagged(0, items(0, 2), version=2), "bad_tag_header"),
        (struct.pack("<HBQQ", 0x5FF0, 1, 0, 10**9) + items(0, 4).tobytes(), "bad_tag_header"),  # impossible count
        (struct.pack("<HBQQ", 0x5FF0, 1, 0, 2) + tag(0, "rx_rate", dbl(1.0)) + b"\x00" * 6, "bad_tag_header"),
        (tagged(0, items(0, 2), struct.pack("<Q", 0) + b"\x42" + sym("v") + sym("s")), "bad_pmt"),
        (struct.pack("<HBQQ", 0x5FF0, 1, 0, 1) + struct.pack("<Q", 0) + sym("rx_rate") + b"\x04\x00\x00", "bad_pmt"),
        (tagged(0, items(0, 2)) + b"\x00", "bad_length"),
        (tagged(0, np.array([1, np.inf], np.complex64)), "non_finite"),
    ],
    ids=["short", "magic", "version", "count", "truncated-tags", "pmt-type", "pmt-truncated", "length", "non-finite"],
)
def test_bad_tagged_messages_are_counted_and_skipped(push, adapter, drops, message, reason):
    rx = adapter(pass_tags=True, sample_rate_hz=1e3, center_freq_hz=1e8)
    push.send(message)
    push.send(tagged(100, items(0, 3)))
    assert rx.get().sample_index == 100
    assert drops.bad_frames == {("gr1", reason): 1}


def test_tags_with_unusable_values_are_ignored_and_counted(push, adapter, drops):
    rx = adapter(pass_tags=True, sample_rate_hz=1e3, center_freq_hz=1e8)
    push.send(tagged(0, items(0, 3), tag(0, "rx_rate", sym("fast")), tag(0, "rx_rate", dbl(-5.0)),
                     tag(0, "rx_freq", b"\x00"), tag(0, "rx_time", dbl(1.0))))  # fmt: skip
    block = rx.get()
    assert (block.sample_rate, block.center_freq, block.time_source) == (1e3, 1e8, "host")
    assert drops.bad_frames == {("gr1", "bad_tag_value"): 4}


def test_sub_with_key_reads_only_that_key(drops, context):
    xpub = context.socket(zmq.XPUB)
    xpub.linger = 0
    port = xpub.bind_to_random_port("tcp://127.0.0.1")
    opts = Options(endpoint=f"tcp://127.0.0.1:{port}", key="iq", sample_rate_hz=1e3, center_freq_hz=1e8, recv_timeout_s=0.05)
    rx = Collector(GnuRadioZmqReceiver("gr1", opts, drops=drops, context=context))
    try:
        assert xpub.poll(TIMEOUT_S * 1000) and xpub.recv() == b"\x01iq"  # the subscription reached us
        xpub.send_multipart([b"iqx", items(0, 4).tobytes()])  # another sink's key
        xpub.send(b"iq" + b"\x00" * 6)  # one frame that happens to start with the key
        xpub.send_multipart([b"iq", items(0, 2).tobytes()])
        block = rx.get()
    finally:
        rx.stop()
        xpub.close()
    np.testing.assert_array_equal(block.samples, items(0, 2))
    assert block.sample_index == 0
    assert drops.bad_frames == {("gr1", "short_frame"): 1}


def test_close_from_another_thread_stops_a_waiting_receiver(adapter):
    rx = adapter(sample_rate_hz=1e3, center_freq_hz=1e8)
    with pytest.raises(queue.Empty):
        rx.get(timeout=0.1)
    rx.stop()


def test_config_builds_options_and_checks_them():
    def rx(**keys):
        table = {"id": "g", "kind": "gnuradio_zmq", "lat": 45.0, "lon": 7.0, "endpoint": "tcp://127.0.0.1:5555", **keys}
        return from_dict({"receivers": [table]}, source="t.toml").receivers[0].options

    assert rx(sample_rate_hz=2e6, center_freq_hz=1e8) == Options("tcp://127.0.0.1:5555", sample_rate_hz=2e6, center_freq_hz=1e8)
    assert rx(pass_tags=True, socket_type="pull").socket_type == "pull"
    with pytest.raises(ConfigError, match=r"receivers\[0\]: sample_rate_hz and center_freq_hz are required when pass_tags"):
        rx(sample_rate_hz=2e6)
    with pytest.raises(ConfigError, match="socket_type: expected 'sub' or 'pull', got 'req'"):
        rx(pass_tags=True, socket_type="req")
    with pytest.raises(ConfigError, match="key: only a pub_sink"):
        rx(pass_tags=True, socket_type="pull", key="iq")
    with pytest.raises(ConfigError, match="sample_rate_hz: expected a positive number"):
        rx(sample_rate_hz=0.0, center_freq_hz=1e8)
    with pytest.raises(ConfigError, match=r"recv_timeout_s: expected > 0 and <= 10 s, got 0.0"):
        rx(pass_tags=True, recv_timeout_s=0.0)  # a busy loop with no wait
    with pytest.raises(ConfigError, match=r"max_message_bytes: expected 1 to 2\*\*63 - 1 bytes, got 0"):
        rx(pass_tags=True, max_message_bytes=0)


# --- a real GNU Radio flowgraph (subprocess under the system Python) --------------------------------------

N_ITEMS = 50_000
GR_RATE_HZ, GR_FREQ_HZ, GR_RETUNE_HZ = 250e3, 433.92e6, 434.0e6  # gnuradio_flowgraph.py
GR_RX_NS = 1_700_000_000 * 10**9 + 250_000_000
PROBE = np.complex64(-1 - 1j)


def payload(n: int) -> np.ndarray:
    k = np.arange(n)
    return (k % 1000 + 1j * (k // 1000)).astype(np.complex64)


@pytest.fixture(scope="module")
def gnuradio_python() -> str:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} not found; GNU Radio tests need: apt-get install gnuradio")
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "from gnuradio import gr, blocks, zeromq; import pmt"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"GNU Radio does not import under {SYSTEM_PYTHON}; install it with: apt-get install gnuradio")
    return SYSTEM_PYTHON


class Flowgraph:
    """gnuradio_flowgraph.py as a subprocess, driven over its stdin/stdout."""

    def __init__(self, python: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [python, str(FLOWGRAPH), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)

    def readline(self, timeout: float = 60.0) -> str:
        if not self._selector.select(timeout):
            raise TimeoutError(f"flowgraph printed nothing for {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"flowgraph exited with {self.proc.wait()}")
        return line.strip()

    def endpoint(self) -> str:
        word, endpoint = self.readline().split()
        assert word == "endpoint"
        return endpoint

    def tell(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        self._selector.close()
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


@pytest.fixture
def flowgraph(gnuradio_python):
    started = []

    def start(*args: str) -> Flowgraph:
        started.append(Flowgraph(gnuradio_python, *args))
        return started[-1]

    yield start
    for fg in started:
        fg.close()


def take_items(rx: Collector, n: int, skip_probes: bool = False) -> list[IQBlock]:
    """Collect blocks until ``n`` payload items arrived (probes before the payload are not counted)."""
    blocks, count = [], 0
    while count < n:
        block = rx.get(timeout=30)
        blocks.append(block)
        count += int(np.count_nonzero(block.samples != PROBE)) if skip_probes else len(block.samples)
    assert count == n
    with pytest.raises(queue.Empty):  # and nothing more
        rx.get(timeout=0.3)
    return blocks


def take_until_quiet(rx: Collector, quiet_s: float = 0.5) -> list[IQBlock]:
    blocks = []
    while True:
        try:
            blocks.append(rx.get(timeout=quiet_s))
        except queue.Empty:
            return blocks


def check_payload(blocks: list[IQBlock], probes_first: bool = False) -> np.ndarray:
    samples = np.concatenate([b.samples for b in blocks])
    if probes_first:
        n_probes = int(np.argmax(samples != PROBE))
        assert n_probes >= 1 and np.all(samples[:n_probes] == PROBE)
        samples = samples[n_probes:]
    np.testing.assert_array_equal(samples, payload(N_ITEMS))
    return samples


def check_tagged(blocks: list[IQBlock], first: int) -> None:
    """The payload's blocks take rate, frequency and time from the flowgraph's tags."""
    blocks = [b for b in blocks if b.sample_index >= first]
    assert blocks[0].sample_index == first
    assert all(b.sample_rate == GR_RATE_HZ and b.time_source == "device" for b in blocks)
    for prev, block in zip(blocks, blocks[1:]):
        assert block.sample_index == prev.end_index  # contiguous: no drops
    for block in blocks:
        assert block.t0_ns == GR_RX_NS + round((block.sample_index - first) * 1e9 / GR_RATE_HZ)
        retuned = block.sample_index >= first + N_ITEMS // 2
        assert block.center_freq == (GR_RETUNE_HZ if retuned else GR_FREQ_HZ)
    (retune,) = [b for b in blocks[1:] if b.flags & Flags.RETUNE]  # the first may differ from the options
    assert retune.sample_index == first + N_ITEMS // 2


def gr_receiver(endpoint: str, drops, context, receiver_id="gr1", **options) -> Collector:
    opts = Options(endpoint=endpoint, recv_timeout_s=0.05, **options)
    return Collector(GnuRadioZmqReceiver(receiver_id, opts, drops=drops, context=context))


@pytest.mark.slow
@pytest.mark.parametrize("with_tags", [False, True], ids=["raw", "tags"])
def test_real_push_sink_delivers_exactly_n_items(flowgraph, drops, context, with_tags):
    fg = flowgraph("--sink", "push", "--items", str(N_ITEMS), *(["--tags"] if with_tags else []))
    options = {"pass_tags": True} if with_tags else {"sample_rate_hz": 1e6, "center_freq_hz": 1e8}
    rx = gr_receiver(fg.endpoint(), drops, context, socket_type="pull", **options)
    try:
        blocks = take_items(rx, N_ITEMS)
    finally:
        rx.stop()
    check_payload(blocks)
    assert [b.sample_index for b in blocks] == list(np.cumsum([0] + [len(b.samples) for b in blocks[:-1]]))
    if with_tags:
        check_tagged(blocks, first=0)
    else:
        assert all(b.time_source == "host" and b.sample_rate == 1e6 for b in blocks)
    assert not drops.bad_frames and not drops.dropped


@pytest.mark.slow
@pytest.mark.parametrize("with_tags", [False, True], ids=["raw-key", "tags"])
def test_real_pub_sink_delivers_exactly_n_items_once_subscribed(flowgraph, drops, context, with_tags):
    key = [] if with_tags else ["--key", "iq"]
    fg = flowgraph("--sink", "pub", "--items", str(N_ITEMS), *key, *(["--tags"] if with_tags else []))
    options = {"pass_tags": with_tags, "sample_rate_hz": 1e6, "center_freq_hz": 1e8, "key": None if with_tags else "iq"}
    rx = gr_receiver(fg.endpoint(), drops, context, **options)
    try:
        probe = rx.get(timeout=60)  # a probe item got through: our subscription is in place
        assert probe.samples[0] == PROBE
        fg.tell("go")
        blocks = [probe] + take_items(rx, N_ITEMS, skip_probes=True)
        assert fg.readline() == "done"
    finally:
        rx.stop()
    check_payload(blocks, probes_first=True)
    if with_tags:
        first = next(b.sample_index for b in blocks if b.samples[0] != PROBE)
        assert blocks[0].time_source == "host" and blocks[0].sample_rate == 1e6  # probes: from the options
        check_tagged(blocks, first=first)
    # Probes the PUB sent before our subscription arrived are lost to us: with tags, counted as before_join.
    joined = blocks[0].sample_index if with_tags else 0
    assert not drops.bad_frames and drops.dropped == ({("gr1", "before_join"): joined} if joined else {})


@pytest.mark.slow
def test_real_push_sink_over_max_message_bytes_is_counted_and_reopened_each_time(flowgraph, drops, context):
    # Paced over 10 s: unpaced, the whole stream can sit in the first connection's queue when it dies, and a
    # loaded machine then leaves the reopened socket nothing to refuse.
    fg = flowgraph("--sink", "push", "--items", str(N_ITEMS), "--tags", "--throttle", str(N_ITEMS / 10))
    rx = gr_receiver(fg.endpoint(), drops, context, socket_type="pull", pass_tags=True, max_message_bytes=1024)
    try:
        # Each fresh socket takes the next message, which is over the limit again: counted, reopened, not dead.
        wait_for(lambda: drops.bad_frames[("gr1", "link_error")] >= 2, timeout_s=30)
    finally:
        rx.stop()
        fg.proc.kill()  # its push_sink would wait for a reader to take the rest of the paced stream
    assert set(drops.bad_frames) == {("gr1", "link_error")}


@pytest.mark.slow
def test_real_push_sink_of_complex_vectors_is_read_with_vlen(flowgraph, drops, context):
    fg = flowgraph("--sink", "push", "--items", str(N_ITEMS), "--tags", "--vlen", "4")
    rx = gr_receiver(fg.endpoint(), drops, context, socket_type="pull", pass_tags=True, vlen=4)
    try:
        blocks = take_items(rx, N_ITEMS)
    finally:
        rx.stop()
    check_payload(blocks)  # flattened, in order
    check_tagged(blocks, first=0)  # tag offsets counted vectors; sample indices count samples
    assert not drops.bad_frames and not drops.dropped


@pytest.mark.slow
def test_real_push_sink_of_float32_is_refused_by_name(flowgraph, drops, context, caplog):
    n_floats = 8 * N_ITEMS  # enough messages for the verdict
    fg = flowgraph("--sink", "push", "--items", str(n_floats), "--tags", "--float")
    rx = gr_receiver(fg.endpoint(), drops, context, receiver_id="gr-real-f32", socket_type="pull", pass_tags=True, sample_rate_hz=1e6,
                     center_freq_hz=1e8)
    try:
        assert fg.readline() == "done"
        blocks = take_until_quiet(rx)
    finally:
        rx.stop()
    # Read as usual until three pairs of messages agreed on 4 bytes per item (a float sink's odd item counts are
    # bad_length), then refused by name: nearly every float.
    assert set(drops.bad_frames) <= {("gr-real-f32", "item_size_mismatch"), ("gr-real-f32", "bad_length")}
    assert len(blocks) + drops.bad_frames[("gr-real-f32", "bad_length")] <= 5
    assert drops.dropped[("gr-real-f32", "item_size_mismatch")] > n_floats // 2
    (message,) = [r.getMessage() for r in caplog.records if "bytes per item" in r.getMessage()]
    assert "carries 4 bytes per item" in message


@pytest.mark.slow
def test_real_host_timed_stream_paced_by_the_flowgraph_has_no_clock_jump(flowgraph, context):
    """A flowgraph paced at 48 kS/s without tags, through a pipeline Lane: arrival jitter on this machine
    must not show as clock jumps. Printed (-s): how many the same arrivals would have made if each block
    were stamped with its own arrival time."""
    n_items = int(6 * LANE_RATE)
    fg = flowgraph("--sink", "push", "--items", str(n_items), "--throttle", str(LANE_RATE))
    arrivals: list[int] = []

    def clock() -> int:
        arrivals.append(time.time_ns())
        return arrivals[-1]

    drops = TallyDropCounter()
    opts = Options(endpoint=fg.endpoint(), socket_type="pull", recv_timeout_s=0.05, sample_rate_hz=LANE_RATE,
                   center_freq_hz=LANE_FREQ - 10e3)
    rx = Collector(GnuRadioZmqReceiver("gr1", opts, drops=drops, context=context, clock=clock))
    lane = LaneTally()
    try:
        blocks = take_items(rx, n_items)
    finally:
        rx.stop()
    lane.push(blocks)
    arrivals = arrivals[1:]  # the first call is the receiver opening
    by_arrival = [a - b.duration_ns for a, b in zip(arrivals, blocks)]
    jumps = sum(abs(t - (t_prev + p.duration_ns)) > 50_000_000 for t_prev, t, p in zip(by_arrival, by_arrival[1:], blocks))
    print(f"{len(blocks)} messages; stamped by arrival: {jumps} clock jumps; now: {lane.bad.get('clock_jump', 0)}")
    assert not lane.bad and lane.lane.received == n_items and not drops.bad_frames


@pytest.mark.slow
def test_pmt_matches_the_installed_gnuradio(gnuradio_python):
    exprs = sorted(GR310_SERIALISED) + sorted(GR310_UNIFORM)
    script = "import pmt, sys\nfor line in sys.stdin:\n    print(pmt.serialize_str(eval(line)).hex())\n"
    result = subprocess.run(
        [gnuradio_python, "-c", script], input="\n".join(exprs) + "\n", capture_output=True, text=True, timeout=60, check=True
    )
    produced = dict(zip(exprs, result.stdout.split()))
    expected = {e: (GR310_SERIALISED.get(e) or GR310_UNIFORM[e])[0] for e in exprs}
    assert produced == expected
    assert sys.byteorder == "little"  # raw items are host order: this adapter reads them as little-endian


def test_an_rx_rate_tag_outside_any_radio_range_is_a_counted_bad_tag():
    """Found by the CI fuzz run: rx_rate = 1e-300 made a duration infinite and the adapter raise."""
    import struct as _struct

    from receivers.base import TallyDropCounter
    from receivers.gnuradio_zmq import GnuRadioZmqReceiver, Options

    def symbol(text):
        return b"\x02" + _struct.pack(">H", len(text)) + text.encode()

    tag = _struct.pack("<Q", 0) + symbol("rx_rate") + b"\x04" + _struct.pack(">d", 1e-300) + symbol("src")
    header = b"\xf0\x5f\x01" + _struct.pack("<QQ", 0, 1) + tag
    payload = np.ones(8, np.complex64).tobytes()
    drops = TallyDropCounter()
    rx = GnuRadioZmqReceiver("gr1", Options(endpoint="tcp://127.0.0.1:1", pass_tags=True, sample_rate_hz=1e6,
                                            center_freq_hz=1e8), drops=drops)
    try:
        blocks = list(rx._blocks(header + payload))
    finally:
        rx.close()
    assert drops.bad_frames[("gr1", "bad_tag_value")] == 1
    assert sum(len(b.samples) for b in blocks) == 8 and blocks[0].sample_rate == 1e6


# --- faults and hostile input: every item accounted for ----------------------------------------------------

LANE_RATE, LANE_FREQ = 48_000.0, 145.5e6  # the lane channelizes to 24 kS/s at LANE_FREQ


class LaneTally:
    """A pipeline Lane fed with the adapter's blocks: it decides clock jumps and keeps the accounting."""

    def __init__(self, tolerance_s: float = 0.05) -> None:
        self.drops: dict[tuple[str, str], int] = {}
        self.bad: dict[str, int] = {}
        settings = LaneSettings(LANE_FREQ, 24_000.0, 4.0, clock_jump_tolerance_s=tolerance_s)
        self.lane = Lane("gr1", settings, self._drop, self._bad)

    def _drop(self, reason: str, stage: str, n: int) -> None:
        self.drops[(reason, stage)] = self.drops.get((reason, stage), 0) + n

    def _bad(self, reason: str) -> None:
        self.bad[reason] = self.bad.get(reason, 0) + 1

    def push(self, blocks) -> None:
        for block in blocks:
            self.lane.push(block)

    def balanced(self) -> bool:
        dropped = sum(n for (_reason, stage), n in self.drops.items() if stage == PIPELINE)
        return self.lane.received == self.lane.used + self.lane.buffered + dropped


def offline_receiver(drops, clock=lambda: HOST_NS, receiver_id="gr1", **options) -> GnuRadioZmqReceiver:
    """An adapter whose messages the test hands to ``_blocks`` (its socket connects to nothing).

    A test that checks a log line gives its own ``receiver_id``: the log is bounded per receiver and reason
    across the process."""
    opts = Options(endpoint="tcp://127.0.0.1:1", **options)
    return GnuRadioZmqReceiver(receiver_id, opts, drops=drops, clock=clock)


class MessageList:
    """Stands in for the adapter's polled socket: its own ``__iter__`` reads these messages, then ends."""

    def __init__(self, messages: list[bytes]) -> None:
        self._messages = messages

    def messages(self):
        for data in self._messages:
            yield [data]

    def close(self) -> None:
        pass


def wait_for(predicate, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_message_over_max_message_bytes_is_counted_and_a_pull_reconnects(push, adapter, drops):
    push.sndtimeo = int(TIMEOUT_S * 1000)  # a send that finds no peer must not hang the test
    rx = adapter(pass_tags=True, sample_rate_hz=1e3, center_freq_hz=1e8, max_message_bytes=1024)
    push.send(tagged(0, items(0, 10)))
    assert rx.get().sample_index == 0
    push.send(tagged(10, items(10, 200)))  # 1,619 bytes: libzmq drops the link
    wait_for(lambda: drops.bad_frames[("gr1", "link_error")] == 1)
    push.send(tagged(210, items(210, 10)))
    block = rx.get()
    assert (block.sample_index, block.flags) == (210, Flags.OVERFLOW)
    assert drops.dropped == {("gr1", "gap"): 200}  # the refused message's items, from the next offset
    assert drops.bad_frames == {("gr1", "link_error"): 1}


def test_a_message_over_max_message_bytes_is_counted_and_a_sub_resubscribes(drops, context):
    xpub = context.socket(zmq.XPUB)
    xpub.linger = 0
    xpub.rcvtimeo = int(TIMEOUT_S * 1000)
    xpub.setsockopt(zmq.XPUB_VERBOSE, 1)  # the refused link may linger here: show the fresh socket's subscription too
    port = xpub.bind_to_random_port("tcp://127.0.0.1")
    opts = Options(endpoint=f"tcp://127.0.0.1:{port}", sample_rate_hz=1e3, center_freq_hz=1e8, recv_timeout_s=0.05,
                   max_message_bytes=1024)
    rx = Collector(GnuRadioZmqReceiver("gr1", opts, drops=drops, context=context))
    try:
        assert xpub.poll(TIMEOUT_S * 1000) and xpub.recv() == b"\x01"
        xpub.send(items(0, 200).tobytes())  # 1,600 bytes
        wait_for(lambda: drops.bad_frames[("gr1", "link_error")] == 1)
        # The fresh socket subscribes; the refused link's unsubscription (b"\x00") may come first, as it is torn down.
        assert next(m for m in iter(xpub.recv, None) if m != b"\x00") == b"\x01"
        xpub.send(items(0, 4).tobytes())
        block = rx.get()
    finally:
        rx.stop()
        xpub.close()
    np.testing.assert_array_equal(block.samples, items(0, 4))
    assert drops.bad_frames == {("gr1", "link_error"): 1}


def test_tags_for_future_items_are_held_up_to_a_cap_and_the_rest_counted(drops):
    rx = offline_receiver(drops, pass_tags=True, sample_rate_hz=1e3, center_freq_hz=1e8)
    n_tags = MAX_PENDING_TAGS + 500
    try:
        for message in range(3):  # each holds n_tags rx_freq tags for items far ahead
            future = [tag(10_000 + message * n_tags + i, "rx_freq", dbl(2e8 + message * n_tags + i)) for i in range(n_tags)]
            rx._blocks(tagged(message * 10, items(0, 10), *future))
            assert len(rx._pending) == MAX_PENDING_TAGS
        blocks = rx._blocks(tagged(10_000, items(0, 2)))
    finally:
        rx.close()
    # The earliest were kept: the tag for item 10,000 applies to it.
    assert [(b.sample_index, b.center_freq) for b in blocks] == [(10_000, 2e8), (10_001, 2e8 + 1)]
    assert drops.bad_frames == {("gr1", "tag_overflow"): 3 * n_tags - MAX_PENDING_TAGS}


def test_a_tag_whose_key_is_a_uniform_vector_is_counted_and_the_stream_keeps_its_time(drops):
    u8vector_key = bytes.fromhex(GR310_UNIFORM["pmt.init_u8vector(3, [1, 2, 3])"][0])
    odd_tag = struct.pack("<Q", 0) + u8vector_key + dbl(1.0) + sym("src")
    rx = offline_receiver(drops, pass_tags=True, sample_rate_hz=1e3, center_freq_hz=1e8)
    try:
        first = rx._blocks(tagged(0, items(0, 4), tag(0, "rx_time", tup(u64(RX_SECS), dbl(RX_FRAC))), odd_tag))
        second = rx._blocks(tagged(4, items(4, 4), odd_tag))
    finally:
        rx.close()
    assert [(b.sample_index, b.time_source, b.t0_ns) for b in first + second] == [(0, "device", RX_NS), (4, "device", RX_NS + 4 * 10**6)]
    assert drops.bad_frames == {("gr1", "bad_tag_key"): 2}


def test_non_finite_messages_in_a_tagged_stream_are_counted_once_and_the_accounting_balances(drops):
    n, n_messages = 960, 400
    bad = set(range(100, 225)) | {300, 302, 399}  # a burst of 125 messages, then scattered ones
    messages = []
    for k in range(n_messages):
        samples = (0.01 * np.exp(2j * np.pi * 0.01 * np.arange(k * n, (k + 1) * n))).astype(np.complex64)
        if k in bad:
            samples[k % n] = np.nan
        rx_time = (tag(0, "rx_time", tup(u64(RX_SECS), dbl(RX_FRAC))),) if k == 0 else ()
        messages.append(tagged(k * n, samples, *rx_time))
    lane = LaneTally()
    rx = offline_receiver(drops, pass_tags=True, sample_rate_hz=LANE_RATE, center_freq_hz=LANE_FREQ - 10e3)
    polled, rx._polled = rx._polled, MessageList(messages)
    try:
        lane.push(rx)
    finally:
        polled.close()
    assert drops.dropped == {("gr1", "non_finite"): len(bad) * n}  # and no gap
    assert drops.bad_frames == {("gr1", "non_finite"): len(bad)}
    assert lane.lane.received + drops.dropped[("gr1", "non_finite")] == n_messages * n
    assert lane.balanced() and ("gap", "source") not in lane.drops and not lane.bad


def jittered_arrivals(n_messages: int, period_ns: int, jitter_ns: int, seed: int = 7) -> list[int]:
    """Arrival times of a message stream every ``period_ns``, each late by up to ``2 * jitter_ns`` (in order)."""
    rng = np.random.default_rng(seed)
    arrivals, last = [], 0
    for k in range(n_messages):
        last = max(last, HOST_NS + (k + 1) * period_ns + int(rng.integers(0, 2 * jitter_ns)))
        arrivals.append(last)
    return arrivals


def feed_host_timed(arrivals: list[int], n: int, **options) -> tuple[LaneTally, list[IQBlock], TallyDropCounter]:
    now = [0]
    drops = TallyDropCounter()
    lane, blocks = LaneTally(), []
    rx = offline_receiver(drops, clock=lambda: now[0], sample_rate_hz=LANE_RATE, center_freq_hz=LANE_FREQ - 10e3, **options)
    try:
        for k, arrival in enumerate(arrivals):
            now[0] = arrival
            samples = (0.01 * np.exp(2j * np.pi * 0.01 * np.arange(k * n, (k + 1) * n))).astype(np.complex64)
            message = tagged(k * n, samples) if options.get("pass_tags") else samples.tobytes()
            new = rx._blocks(message)
            lane.push(new)
            blocks += new
    finally:
        rx.close()
    return lane, blocks, drops


@pytest.mark.parametrize("pass_tags", [False, True], ids=["raw", "tags-without-rx_time"])
def test_host_time_does_not_jump_with_arrival_jitter_of_40_ms(pass_tags):
    n = 960  # 20 ms at 48 kS/s
    arrivals = jittered_arrivals(500, 20_000_000, 40_000_000)
    lane, blocks, _ = feed_host_timed(arrivals, n, pass_tags=pass_tags)
    assert all(b.time_source == "host" for b in blocks)
    assert not lane.bad and ("clock_jump", PIPELINE) not in lane.drops and lane.lane.received == 500 * n
    # Still host time: each block's end within the jitter of its arrival.
    assert max(abs(b.t0_ns + b.duration_ns - a) for b, a in zip(blocks, arrivals)) < 100_000_000
    assert lane.balanced()


def test_a_stall_of_the_daemon_with_its_backlog_arriving_at_once_is_not_a_clock_jump():
    n, period = 960, 20_000_000
    arrivals = [HOST_NS + (k + 1) * period for k in range(500)]
    stall_end = arrivals[200] + 3_000_000_000  # messages 200..349 were queued while the daemon stood still
    arrivals = arrivals[:200] + [stall_end] * 150 + arrivals[350:]
    lane, blocks, _ = feed_host_timed(arrivals, n)
    assert not lane.bad and lane.balanced()
    # The stamps follow the sample count; the backlog's late arrival pulls them, by at most a quarter of the
    # tolerance from one block to the next.
    steps = [b.t0_ns - a.t0_ns - round((b.sample_index - a.sample_index) * 1e9 / LANE_RATE) for a, b in zip(blocks, blocks[1:])]
    assert max(map(abs, steps)) <= 12_500_000


def test_host_time_steps_once_when_the_stream_stays_two_seconds_late():
    """The source paused for 2 s without a sign in the count: after persist_s the time steps, one clock jump."""
    n, period = 960, 20_000_000
    arrivals = [HOST_NS + (k + 1) * period + (2_000_000_000 if k >= 100 else 0) for k in range(400)]
    lane, blocks, _ = feed_host_timed(arrivals, n)
    assert lane.bad == {"clock_jump": 1}
    assert abs(blocks[-1].t0_ns + blocks[-1].duration_ns - arrivals[-1]) < 1_000_000
    assert lane.balanced()


def test_float32_items_in_a_tagged_stream_are_refused_by_name_and_logged_once(drops, caplog):
    n = 1000
    rx = offline_receiver(drops, receiver_id="gr-f32", pass_tags=True, sample_rate_hz=1e3, center_freq_hz=1e8)
    blocks = []
    try:
        for k in range(20):  # a float32 sink: 4 bytes per item
            blocks += rx._blocks(tagged(k * n, np.zeros(2 * n, np.float32).view(np.complex64)[: n // 2]))
    finally:
        rx.close()
    # Three pairs make the verdict (a lost message can look like one); the first three were read as usual.
    assert sum(len(b.samples) for b in blocks) == 3 * n // 2
    assert drops.bad_frames == {("gr-f32", "item_size_mismatch"): 17}
    assert drops.dropped[("gr-f32", "item_size_mismatch")] == 17 * n
    errors = [r.getMessage() for r in caplog.records if "item_size_mismatch" in r.getMessage() or "bytes per item" in r.getMessage()]
    assert len(errors) == 1 and "carries 4 bytes per item" in errors[0] and "reads 8" in errors[0]


def vectors(start: int, n: int, vlen: int) -> np.ndarray:
    return items(start * vlen, n * vlen)


def test_complex_vectors_without_vlen_are_refused_by_name_with_the_vlen_to_set(drops, caplog):
    rx = offline_receiver(drops, receiver_id="gr-v4", pass_tags=True, sample_rate_hz=1e3, center_freq_hz=1e8)
    blocks = []
    try:
        for k in range(10):  # vlen 4: 32 bytes per item, offsets count vectors
            blocks += rx._blocks(tagged(k * 100, vectors(k * 100, 100, 4)))
    finally:
        rx.close()
    assert [b.sample_index for b in blocks] == [0]  # the first message cannot be checked yet
    assert drops.bad_frames == {("gr-v4", "item_size_mismatch"): 9}
    assert "discontinuity" not in str(drops.dropped)
    (message,) = [r.getMessage() for r in caplog.records if "bytes per item" in r.getMessage()]
    assert "carries 32 bytes per item" in message and "set vlen = 4" in message


def test_complex_vectors_with_vlen_are_flattened_and_indexed_in_samples(drops):
    rx = offline_receiver(drops, pass_tags=True, center_freq_hz=1e8, vlen=4)
    try:
        first = rx._blocks(tagged(0, vectors(0, 100, 4), tag(0, "rx_rate", dbl(4e3)),
                                  tag(0, "rx_time", tup(u64(RX_SECS), dbl(RX_FRAC))), tag(50, "rx_freq", dbl(2e8))))  # fmt: skip
        second = rx._blocks(tagged(100, vectors(100, 100, 4)))
    finally:
        rx.close()
    blocks = first + second
    assert [(b.sample_index, len(b.samples), b.center_freq) for b in blocks] == [(0, 200, 1e8), (200, 200, 2e8), (400, 400, 2e8)]
    assert [b.t0_ns for b in blocks] == [RX_NS, RX_NS + 50_000_000, RX_NS + 100_000_000]
    np.testing.assert_array_equal(np.concatenate([b.samples for b in blocks]), vectors(0, 200, 4))
    assert not drops.bad_frames and not drops.dropped


def test_items_sent_before_the_first_message_of_a_stream_that_began_after_we_opened_are_before_join(drops):
    now = [HOST_NS]  # the receiver opens now
    rx = offline_receiver(drops, clock=lambda: now[0], pass_tags=True, sample_rate_hz=1e3, center_freq_hz=1e8)
    try:
        now[0] += 6 * 10**9  # 5,010 items at 1 kS/s end now: the stream began 0.99 s after we opened
        first = rx._blocks(tagged(5000, items(0, 10)))  # a PUB sent 5,000 items before our subscription arrived
        restart = rx._blocks(tagged(300, items(0, 10)))  # the flowgraph restarted; its first 300 never reached us
    finally:
        rx.close()
    assert [(b.sample_index, b.flags) for b in first + restart] == [(5000, Flags.NONE), (300, Flags.DISCONTINUITY)]
    assert drops.dropped == {("gr1", "before_join"): 5300}  # and no gap


@pytest.mark.parametrize("rx_time", [False, True], ids=["host", "rx_time"])
def test_joining_a_stream_that_began_before_we_opened_counts_nothing(drops, rx_time):
    now = [HOST_NS]
    rx = offline_receiver(drops, clock=lambda: now[0], pass_tags=True, sample_rate_hz=1e3, center_freq_hz=1e8)
    tags = (tag(5000, "rx_time", tup(u64(HOST_NS // 10**9 - 2), dbl(0.0))),) if rx_time else ()
    try:
        now[0] += 10**9  # 5,010 items at 1 kS/s end now: the stream began 4 s before we opened
        blocks = rx._blocks(tagged(5000, items(0, 10), *tags))
    finally:
        rx.close()
    assert [b.sample_index for b in blocks] == [5000]
    assert not drops.dropped


def test_from_config_takes_the_pipeline_clock_jump_tolerance_for_host_time():
    table = {"id": "g", "kind": "gnuradio_zmq", "lat": 45.0, "lon": 7.0, "endpoint": "tcp://127.0.0.1:1",
             "sample_rate_hz": 1e3, "center_freq_hz": 1e8}
    config = from_dict({"receivers": [table], "pipeline": {"clock_jump_tolerance_s": 0.2}}, source="t.toml")
    rx = GnuRadioZmqReceiver.from_config(config.receivers[0], ReceiverContext(config, TallyDropCounter()))
    try:
        assert rx._host._max_correction_ns == 0.05e9  # a quarter of the tolerance per message
    finally:
        rx.close()
