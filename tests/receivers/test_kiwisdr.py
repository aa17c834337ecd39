"""KiwiSDR adapter against a fake Kiwi (its own RFC 6455 server side) on 127.0.0.1:0, plus the pure parts."""

from __future__ import annotations

import re
import struct
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receivers.base import Flags, ReceiverContext, TallyDropCounter
from receivers.kiwisdr import (
    FRAME_BYTES,
    KiwiSdrReceiver,
    SndDecoder,
    gps_to_unix_ns,
    parse_msg,
    parse_snd,
    ws_accept,
    ws_frame,
)
from streamer.config import from_dict
from streamer.core.errors import ConfigError, ReceiverFatalError, ReceiverTransientError
from tests.helpers.collect import collect
from tests.helpers.fake_servers import FakeKiwiServer, expected_i16

FS = 12_001.135


class Recorder:
    """ReceiverContext parts a test can read back."""

    def __init__(self) -> None:
        self.drops = TallyDropCounter()
        self.gauges: list[tuple[str, str, float]] = []

    def gauge(self, receiver_id: str, name: str, value: float) -> None:
        self.gauges.append((receiver_id, name, value))


def make_rx(server: FakeKiwiServer, rec: Recorder | None = None, *, clock_ns=None, **options) -> KiwiSdrReceiver:
    table = {"id": "kiwi1", "kind": "kiwisdr", "lat": 45.0, "lon": 7.0, "host": server.host, "port": server.port}
    table.setdefault("center_freq_hz", 7_074_000.0)
    cfg = from_dict({"receivers": [{**table, **options}]}, source="test")
    rec = rec or Recorder()
    rx_cfg = cfg.receivers[0]
    if clock_ns is None:
        return KiwiSdrReceiver.from_config(rx_cfg, ReceiverContext(config=cfg, drops=rec.drops, gauge=rec.gauge))
    return KiwiSdrReceiver(
        rx_cfg.id, rx_cfg.options, center_freq_hz=7_074_000.0, drops=rec.drops, gauge=rec.gauge, clock_ns=clock_ns
    )


def assert_tone(blocks, server: FakeKiwiServer) -> None:
    """Every block holds exactly the samples the server generated at its sample_index."""
    for b in blocks:
        want = expected_i16(b.sample_index, len(b.samples), fs=server.fs, tone_hz=server.tone_hz, amplitude=server.amplitude)
        np.testing.assert_array_equal(b.samples.view(np.float32), want.astype(np.float32) / 32768)


# -- against the fake Kiwi -------------------------------------------------------------------------


def test_sends_the_documented_set_commands_in_order_over_a_masked_websocket():
    with FakeKiwiServer(password="s3cret", n_frames=3) as server:
        collect(make_rx(server, password="s3cret"))
        # The client sends its last SETs while the frames stream; stop() would discard what the server has not
        # read yet, so wait for the reader thread to record them (a loaded machine lags here).
        server.wait_for(lambda: len(server.messages) >= 6)
    assert server.errors == []
    assert re.fullmatch(r"/\d+/SND", server.paths[0])
    assert server.messages[:6] == [
        "SET auth t=kiwi p=s3cret",
        "SET AR OK in=12000 out=44100",
        "SET mod=iq low_cut=-5000 high_cut=5000 freq=7074.000",
        "SET agc=0 hang=0 thresh=-100 slope=6 decay=1000 manGain=50",
        "SET compression=0",
        "SET keepalive",
    ]


def test_wideband_path_agc_and_little_endian_options():
    with FakeKiwiServer(n_frames=3) as server:
        blocks, _ = collect(make_rx(server, wideband=True, agc=True, little_endian=True, gain_db=30))
        # As above: the last SETs may still be in the server's reader when the stream ends on a loaded machine.
        server.wait_for(lambda: "SET little_endian" in server.messages and any("agc=1" in m for m in server.messages))
    assert re.fullmatch(r"/wb/\d+/SND", server.paths[0])
    assert "SET agc=1 hang=0 thresh=-100 slope=6 decay=1000 manGain=30" in server.messages
    assert "SET little_endian" in server.messages
    assert all(b.flags & Flags.AGC and b.gain_db is None for b in blocks)
    assert_tone(blocks, server)  # the server switched to little-endian (flag 0x80) and values still match


def test_tone_round_trip_exact_samples_rate_and_frequency():
    with FakeKiwiServer(n_frames=24, tone_hz=1_500.0, amplitude=0.5) as server:
        blocks, err = collect(make_rx(server))
    assert isinstance(err, ReceiverTransientError) and "closed" in str(err)
    assert len(blocks) == 24 and [b.sample_index for b in blocks] == [512 * i for i in range(24)]
    assert_tone(blocks, server)
    assert {b.sample_rate for b in blocks} == {FS} and {b.center_freq for b in blocks} == {7_074_000.0}
    assert {b.gain_db for b in blocks} == {50.0}
    assert blocks[0].flags == Flags.DISCONTINUITY and all(b.flags == Flags.NONE for b in blocks[1:])
    x = np.concatenate([b.samples for b in blocks])
    spectrum = np.abs(np.fft.fft(x))
    assert np.fft.fftfreq(len(x), 1 / FS)[np.argmax(spectrum)] == pytest.approx(1_500.0, abs=FS / len(x))
    assert np.sqrt(np.mean(np.abs(x) ** 2)) == pytest.approx(0.5, rel=0.01)


def test_seq_gaps_are_counted_and_advance_sample_index():
    rec = Recorder()
    with FakeKiwiServer(n_frames=12, faults={4: "skip", 5: "skip", 9: "skip"}) as server:
        blocks, _ = collect(make_rx(server, rec))
    assert rec.drops.dropped == {("kiwi1", "seq_gap"): 3 * 512}
    assert [b.sample_index // 512 for b in blocks] == [0, 1, 2, 3, 6, 7, 8, 10, 11]
    assert_tone(blocks, server)  # sample_index stayed aligned with the stream across the gaps
    after_gap = [b.sample_index // 512 for b in blocks if b.flags & Flags.OVERFLOW]
    assert after_gap == [6, 10]


def test_truncated_and_bad_tag_frames_are_counted_not_raised():
    rec = Recorder()
    with FakeKiwiServer(n_frames=10, faults={3: "truncate", 7: "bad_tag"}) as server:
        blocks, err = collect(make_rx(server, rec))
    assert isinstance(err, ReceiverTransientError)
    assert rec.drops.bad_frames == {("kiwi1", "truncated"): 1, ("kiwi1", "bad_tag"): 1}
    assert rec.drops.dropped == {("kiwi1", "seq_gap"): 2 * 512}  # each bad frame consumed a seq number
    assert [b.sample_index // 512 for b in blocks] == [0, 1, 2, 4, 5, 6, 8, 9]
    assert_tone(blocks, server)


def test_overflow_new_frequency_and_masked_flags():
    rec = Recorder()
    with FakeKiwiServer(n_frames=6, faults={1: "overflow", 2: "new_freq", 4: "masked"}) as server:
        blocks, _ = collect(make_rx(server, rec))
    by_frame = {b.sample_index // 512: b for b in blocks}
    assert by_frame[1].flags == Flags.CLIPPED and by_frame[2].flags == Flags.RETUNE  # ADC overload is not loss
    assert by_frame[3].flags == Flags.NONE and 4 not in by_frame and by_frame[5].sample_index == 5 * 512
    assert by_frame[5].flags == Flags.OVERFLOW  # the masked frame's samples were dropped before it
    assert rec.drops.dropped == {("kiwi1", "masked"): 512}


def test_smeter_goes_to_the_gauge():
    rec = Recorder()
    with FakeKiwiServer(n_frames=3, smeter_raw=634) as server:
        collect(make_rx(server, rec))
    smeter = [v for rid, name, v in rec.gauges if name == "smeter_dbm" and rid == "kiwi1"]
    assert smeter == [pytest.approx(-63.6)] * 3


def test_gps_time_of_week_becomes_unix_ns():
    # 2024-01-01T00:00:00Z is GPS week 2295, time of week 86418 s (18 leap seconds)
    t = datetime(2024, 1, 1, tzinfo=timezone.utc)
    unix_ns = int(t.timestamp()) * 10**9 + 250_000_000
    host_ns = unix_ns + 2 * 86400 * 10**9  # host clock two days later: still the nearest week
    rec = Recorder()
    with FakeKiwiServer(n_frames=3, gps=(7, 86_418, 250_000_000)) as server:
        blocks, _ = collect(make_rx(server, rec, clock_ns=lambda: host_ns))
    assert [b.time_source for b in blocks] == ["gps"] * 3
    assert blocks[0].t0_ns == unix_ns
    assert blocks[2].t0_ns == unix_ns + round(2 * 512 * 1e9 / FS)
    assert ("kiwi1", "gps_fix_age_s", 7.0) in rec.gauges


def test_gps_clock_not_running_falls_back_to_host_time():
    with FakeKiwiServer(n_frames=2, gps=None) as server:  # last_gps_solution = 255
        blocks, _ = collect(make_rx(server, clock_ns=lambda: 10**18))
    assert [b.time_source for b in blocks] == ["host", "host"]
    assert blocks[0].t0_ns == 10**18 - round(512 * 1e9 / FS)


def test_bad_password_is_fatal():
    with FakeKiwiServer(password="right") as server:
        blocks, err = collect(make_rx(server, password="wrong"))
    assert blocks == [] and isinstance(err, ReceiverFatalError) and "password" in str(err)


def test_too_busy_is_transient():
    with FakeKiwiServer(too_busy=True) as server:
        _, err = collect(make_rx(server))
    assert isinstance(err, ReceiverTransientError) and "too busy" in str(err)


def test_stall_raises_transient_and_keepalives_come_from_the_iterating_thread():
    with FakeKiwiServer(n_frames=2, after="stall") as server:
        t = time.monotonic()
        blocks, err = collect(make_rx(server, keepalive_s=0.05, timeout_s=0.6))
        elapsed = time.monotonic() - t
        keepalives = server.count("SET keepalive")
    assert len(blocks) == 2
    assert isinstance(err, ReceiverTransientError) and "no IQ frame for 0.6 s" in str(err)
    assert 0.6 <= elapsed < 3.0
    assert keepalives >= 5


def test_close_from_another_thread_stops_iteration_promptly():
    with FakeKiwiServer(n_frames=1, after="stall") as server:
        rx = make_rx(server, timeout_s=60.0)
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("r", collect(rx, timeout=30)), daemon=True)
        t.start()
        assert server.wait_for(lambda: server.frames_sent >= 1)
        start = time.monotonic()
        rx.close()
        t.join(5)
        assert not t.is_alive() and time.monotonic() - start < 1.0
    assert out["r"][1] is None


def test_fresh_receiver_reconnects_after_the_server_drops():
    with FakeKiwiServer(n_frames=4) as server:
        first, err = collect(make_rx(server))
        assert isinstance(err, ReceiverTransientError)
        second, _ = collect(make_rx(server))
        assert server.connections == 2
    assert len(first) == len(second) == 4
    assert second[0].flags & Flags.DISCONTINUITY and second[0].sample_index == 0


def test_text_msg_frames_and_pings_are_handled():
    with FakeKiwiServer(n_frames=2, msg_opcode=0x1, send_ping=True) as server:
        blocks, _ = collect(make_rx(server))
    assert len(blocks) == 2 and server.pongs == [b"are you there"]


def test_frequency_outside_the_kiwi_range_is_a_config_error():
    cfg = from_dict({"receivers": [{"id": "k", "kind": "kiwisdr", "lat": 0.0, "lon": 0.0, "host": "x"}]})
    with pytest.raises(ConfigError, match="0-32 MHz"):  # network.target_freq_hz defaults to 145.5 MHz
        KiwiSdrReceiver.from_config(cfg.receivers[0], ReceiverContext(config=cfg, drops=TallyDropCounter()))


# -- pure parts ------------------------------------------------------------------------------------


def test_websocket_vectors_from_rfc_6455():
    assert ws_accept("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # section 1.3
    assert ws_frame(0x1, b"Hello", bytes.fromhex("37fa213d")) == bytes.fromhex("818537fa213d7f9f4d5158")  # 5.7
    assert ws_frame(0x2, bytes(256))[:4] == bytes.fromhex("827e0100")  # 16-bit length
    assert ws_frame(0x2, bytes(65536))[:10] == bytes.fromhex("827f0000000000010000")  # 64-bit length


def snd(flags: int, seq: int, iq: np.ndarray, *, little: bool = False) -> bytes:
    head = b"SND" + struct.pack("<BI", flags, seq) + struct.pack(">H", 1270) + struct.pack("<BBII", 255, 0, 0, 0)
    return head + iq.astype("<i2" if little else ">i2").tobytes()


def test_endianness_flag_selects_the_byte_order():
    iq = np.arange(-512, 512, dtype=np.int16) * 31
    big, little = parse_snd(snd(0x08, 1, iq)), parse_snd(snd(0x88, 1, iq, little=True))
    np.testing.assert_array_equal(big.samples, little.samples)
    np.testing.assert_array_equal(big.samples.view(np.float32), iq.astype(np.float32) / 32768)
    swapped = parse_snd(snd(0x08, 1, iq, little=True))  # little-endian bytes without the flag
    assert not np.array_equal(swapped.samples, big.samples)


def test_parse_msg_decodes_values():
    assert parse_msg(" load_cfg=%7B%22rx_gps%22%3A1%7D badp=0") == {"load_cfg": '{"rx_gps":1}', "badp": "0"}


@pytest.mark.parametrize(
    "data, reason",
    [(b"SN", "truncated"), (b"W/F" + bytes(2069), "bad_tag"), (bytes(FRAME_BYTES + 1), "bad_tag")],
)
def test_parse_snd_reasons(data, reason):
    assert parse_snd(data) == reason


def test_parse_snd_flag_reasons():
    iq = np.zeros(1024, dtype=np.int16)
    assert parse_snd(snd(0x00, 1, iq)) == "not_iq"
    assert parse_snd(snd(0x18, 1, iq)) == "compressed"
    assert parse_snd(snd(0x08, 1, iq) + b"\0") == "oversize"


def test_seq_wraps_around_without_a_gap():
    dec = SndDecoder("k", drops=TallyDropCounter(), gauge=lambda *a: None, center_freq_hz=1e6, sample_rate_hz=FS, gain_db=0.0)
    iq = np.zeros(1024, dtype=np.int16)
    blocks = [dec.decode(snd(0x08, s, iq)) for s in (0xFFFFFFFE, 0xFFFFFFFF, 0, 2)]
    assert [b.sample_index for b in blocks] == [0, 512, 1024, 2048]
    assert dec.drops.dropped == {("k", "seq_gap"): 512}
    assert [bool(b.flags & Flags.OVERFLOW) for b in blocks] == [False, False, False, True]


@given(host_offset_s=st.integers(-3 * 86400, 3 * 86400), unix_ns=st.integers(10**18, 3 * 10**18))
@settings(max_examples=300, deadline=None)
def test_gps_week_is_resolved_from_a_host_clock_within_three_days(host_offset_s, unix_ns):
    gps_ns = unix_ns - (315_964_800 - 18) * 10**9
    tow_s, ns = (gps_ns // 10**9) % 604_800, gps_ns % 10**9
    assert gps_to_unix_ns(tow_s, ns, unix_ns + host_offset_s * 10**9) == unix_ns


def _frames():
    header = st.builds(
        lambda flags, seq, rest: b"SND" + bytes([flags]) + struct.pack("<I", seq) + rest,
        st.integers(0, 255),
        st.integers(0, 2**32 - 1),
        st.binary(min_size=0, max_size=12),
    )
    body = st.one_of(st.binary(max_size=64), st.just(bytes(2048)), st.binary(min_size=2040, max_size=2056))
    structured = st.builds(lambda h, b: (h + bytes(12))[:20] + b if len(h) >= 8 else h + b, header, body)
    return st.lists(st.one_of(st.binary(max_size=64), structured), min_size=1, max_size=8)


@given(messages=_frames())
@settings(max_examples=2000, deadline=None)
def test_fuzzed_frames_never_raise_and_every_rejection_is_counted(messages):
    drops = TallyDropCounter()
    dec = SndDecoder("k", drops=drops, gauge=lambda *a: None, center_freq_hz=1e6, sample_rate_hz=FS, gain_db=0.0)
    produced = 0
    for m in messages:
        before = sum(drops.bad_frames.values()) + drops.dropped[("k", "masked")]
        block = dec.decode(m)
        after = sum(drops.bad_frames.values()) + drops.dropped[("k", "masked")]
        if block is None:
            assert after > before  # dropped frames are always counted
        else:
            produced += 1
            assert after == before and block.samples.dtype == np.complex64 and len(block.samples) == 512
            assert np.all(np.abs(block.samples.view(np.float32)) <= 1.0)
    assert dec.next_index >= 512 * produced


def test_example_config_loads_and_opens():
    from streamer.config import load

    cfg = load(Path(__file__).resolve().parents[2] / "config/examples/kiwisdr.toml")
    ctx = ReceiverContext(config=cfg, drops=TallyDropCounter())
    rxs = [KiwiSdrReceiver.from_config(rx, ctx) for rx in cfg.receivers]  # no I/O until iterated
    assert [rx.center_freq_hz for rx in rxs] == [7.1e6] * 3 and rxs[2].path.startswith("/wb/")
