"""rtl_tcp adapter against a byte-exact fake rtl_tcp server on 127.0.0.1:0."""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from receivers.base import Flags, ReceiverContext, TallyDropCounter
from receivers.rtl_tcp import RtlTcpReceiver, u8_to_complex64
from streamer.config import from_dict
from streamer.core.errors import ConfigError, ReceiverFatalError, ReceiverTransientError
from tests.helpers.collect import collect
from tests.helpers.fake_servers import FakeRtlTcpServer


def make_rx(server: FakeRtlTcpServer, **options) -> RtlTcpReceiver:
    table = {"id": "rtl1", "kind": "rtl_tcp", "lat": 45.0, "lon": 7.0, "host": server.host, "port": server.port}
    cfg = from_dict({"receivers": [{**table, **options}]}, source="test")
    return RtlTcpReceiver.from_config(cfg.receivers[0], ReceiverContext(config=cfg, drops=TallyDropCounter()))


def test_setup_commands_are_5_byte_big_endian_in_order():
    with FakeRtlTcpServer(n_samples=65_536) as server:
        rx = make_rx(
            server, center_freq_hz=433_920_000.0, sample_rate_hz=2_400_000.0, gain_db=29.7, freq_correction_ppm=-3
        )
        collect(rx, max_blocks=1)
        cmds = server.wait_commands(5)
    assert cmds == [
        bytes([0x02]) + struct.pack(">I", 2_400_000),
        bytes([0x01]) + struct.pack(">I", 433_920_000),
        bytes.fromhex("05fffffffd"),  # -3 ppm, two's complement
        bytes.fromhex("0300000001"),  # manual gain mode
        bytes.fromhex("0400000129"),  # 297 tenths of dB
    ]


def test_auto_gain_sends_mode_0_only_and_flags_agc():
    with FakeRtlTcpServer(n_samples=65_536) as server:
        blocks, _ = collect(make_rx(server), max_blocks=1)
        cmds = server.wait_commands(4)
    assert [c[0] for c in cmds] == [0x02, 0x01, 0x05, 0x03]
    assert cmds[3] == bytes.fromhex("0300000000")
    assert cmds[1] == bytes([0x01]) + struct.pack(">I", 145_500_000)  # network.target_freq_hz default
    assert blocks[0].flags & Flags.AGC and blocks[0].gain_db is None
    assert blocks[0].center_freq == 145.5e6


def test_tone_round_trips_exactly_across_odd_sends():
    fs, n = 2_048_000.0, 200_000
    with FakeRtlTcpServer(fs=fs, tone_hz=32_000.0, amplitude=0.5, n_samples=n, chunk_bytes=(1, 3, 4097, 65_535, 2)) as s:
        blocks, err = collect(make_rx(s, sample_rate_hz=fs, block_samples=16_384))
    assert isinstance(err, ReceiverTransientError) and "closed" in str(err)
    assert sum(len(b.samples) for b in blocks) == n
    assert [b.sample_index for b in blocks] == list(np.cumsum([0] + [len(b.samples) for b in blocks[:-1]]))
    assert all(len(b.samples) == 16_384 for b in blocks[:-1]) and len(blocks[-1].samples) == n % 16_384
    x = np.concatenate([b.samples for b in blocks])
    assert x.dtype == np.complex64
    want = (s.expected_u8(0, n).astype(np.float32) - 127.5) / 127.5
    np.testing.assert_array_equal(x.view(np.float32), want)
    spectrum = np.abs(np.fft.fft(x[:65_536]))
    assert np.fft.fftfreq(65_536, 1 / fs)[np.argmax(spectrum)] == pytest.approx(32_000.0)
    assert np.sqrt(np.mean(np.abs(x) ** 2)) == pytest.approx(0.5, rel=0.01)
    assert blocks[0].flags & Flags.DISCONTINUITY and not blocks[1].flags & Flags.DISCONTINUITY
    assert {b.time_source for b in blocks} == {"host"}


def test_u8_conversion_full_scale():
    x = u8_to_complex64(bytes([0, 255, 127, 128]))
    np.testing.assert_array_equal(x, np.array([-1 + 1j, -0.5 / 127.5 + 0.5j / 127.5], dtype=np.complex64))


def test_t0_is_receive_time_minus_block_duration():
    with FakeRtlTcpServer(n_samples=65_536) as server:
        opts = make_rx(server).options
        rx = RtlTcpReceiver("rtl1", opts, center_freq_hz=100e6, clock_ns=lambda: 10**18)
        blocks, _ = collect(rx, max_blocks=1)
    assert blocks[0].t0_ns == 10**18 - 32_000_000  # 65536 samples at 2.048 MS/s = 32 ms


def test_bad_magic_is_fatal_and_names_what_arrived():
    with FakeRtlTcpServer(magic=b"HTTP") as server:
        blocks, err = collect(make_rx(server))
    assert blocks == []
    assert isinstance(err, ReceiverFatalError) and "HTTP" in str(err)


def test_stall_yields_buffered_samples_then_raises_transient():
    with FakeRtlTcpServer(n_samples=1_000, after="stall") as server:
        t = time.monotonic()
        blocks, err = collect(make_rx(server, timeout_s=0.3))
        elapsed = time.monotonic() - t
    assert isinstance(err, ReceiverTransientError) and "nothing for 0.3 s" in str(err)
    assert [len(b.samples) for b in blocks] == [1_000]
    assert 0.3 <= elapsed < 3.0


def test_close_from_another_thread_stops_iteration_promptly():
    with FakeRtlTcpServer(n_samples=10, after="stall") as server:
        rx = make_rx(server, timeout_s=60.0)
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("out", collect(rx, timeout=30)), daemon=True)
        t.start()
        assert server.wait_for(lambda: len(server.commands) >= 4)
        start = time.monotonic()
        rx.close()
        t.join(5)
        assert not t.is_alive() and time.monotonic() - start < 1.0
    assert result["out"][1] is None  # a requested close ends iteration without an error


def test_fresh_receiver_reconnects_after_the_server_drops():
    with FakeRtlTcpServer(n_samples=70_000) as server:
        first, err = collect(make_rx(server))
        assert isinstance(err, ReceiverTransientError)
        second, _ = collect(make_rx(server), max_blocks=1)
        assert server.connections == 2
    assert sum(len(b.samples) for b in first) == 70_000
    assert second[0].sample_index == 0 and second[0].flags & Flags.DISCONTINUITY
    np.testing.assert_array_equal(second[0].samples, first[0].samples)


def test_connection_refused_is_transient():
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    cfg = from_dict({"receivers": [{"id": "r", "kind": "rtl_tcp", "lat": 0.0, "lon": 0.0, "port": port}]})
    rx = RtlTcpReceiver.from_config(cfg.receivers[0], ReceiverContext(config=cfg, drops=TallyDropCounter()))
    with pytest.raises(ReceiverTransientError, match="cannot connect"):
        next(iter(rx))


@pytest.mark.parametrize("rate", [250_000.0, 2_400_000.0, 3_200_000.0])
def test_valid_sample_rates_are_accepted(rate):
    cfg = from_dict({"receivers": [{"id": "r", "kind": "rtl_tcp", "lat": 0.0, "lon": 0.0, "sample_rate_hz": rate}]})
    assert cfg.receivers[0].options.sample_rate_hz == rate


@pytest.mark.parametrize("rate", [500_000.0, 3_300_000.0])
def test_sample_rates_librtlsdr_refuses_are_config_errors(rate):
    with pytest.raises(ConfigError, match="sample_rate_hz"):
        from_dict({"receivers": [{"id": "r", "kind": "rtl_tcp", "lat": 0.0, "lon": 0.0, "sample_rate_hz": rate}]})


def test_example_config_loads():
    from streamer.config import load

    cfg = load(Path(__file__).resolve().parents[2] / "config/examples/rtl_tcp.toml")
    assert {rx.kind for rx in cfg.receivers} == {"rtl_tcp"} and len(cfg.receivers) == 3
