"""receivers/soapy.py against a real SoapySDR: the Debian binding driving a software device.

The device (tests/receivers/soapy_device/heimdall_test_device.cpp, driver "heimdalltest") is
compiled here with g++ and loaded alone (SOAPY_SDR_ROOT=/nonexistent, SOAPY_SDR_PLUGIN_PATH=<dir>).
Sample k of its tone is ``amplitude * exp(2j*pi*tone_hz*(channel+1)*k/rate)``, k counting from
activation including the samples an overflow "loses", so every block can be checked sample by
sample against its ``sample_index``.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from receivers.base import Flags, ReceiverContext, TallyDropCounter
from receivers.registry import open_receiver
from receivers.soapy import SoapyOptions, SoapyReceiver
from streamer import config as config_mod
from streamer.core.errors import ConfigError, MissingDependencyError, ReceiverFatalError, ReceiverTransientError

DEVICE_DIR = Path(__file__).resolve().parent / "soapy_device"
RATE = 1e6
TONE_HZ = 31_250.0  # 32 samples per cycle: an exact FFT bin
AMPLITUDE = 0.9
BLOCK_WAIT_S = 10.0


def _load_build_helper():
    spec = importlib.util.spec_from_file_location("heimdall_soapy_device_build", DEVICE_DIR / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build_helper()


@pytest.fixture(scope="session")
def soapy():
    """The real SoapySDR binding with only the heimdalltest module loaded."""
    try:
        import SoapySDR
    except ImportError:
        pytest.skip(f"SoapySDR Python binding not importable: {build.ENABLE}")
    reason = build.missing_prerequisites()
    if reason:
        pytest.skip(f"cannot build the SoapySDR test device ({reason}): {build.ENABLE}")
    folder = build.build_device()
    with pytest.MonkeyPatch.context() as mp:
        # read when SoapySDR first loads its modules (the first enumerate/make in this process)
        mp.setenv("SOAPY_SDR_ROOT", "/nonexistent")
        mp.setenv("SOAPY_SDR_PLUGIN_PATH", str(folder))
        if not SoapySDR.Device.enumerate("driver=heimdalltest"):
            SoapySDR.loadModule(str(folder / build.LIBRARY))  # modules were loaded earlier in this process
        assert SoapySDR.Device.enumerate("driver=heimdalltest"), "heimdalltest module did not register"
        yield SoapySDR


def device_args(serial: str, **kw) -> str:
    args = {"driver": "heimdalltest", "serial": serial, "tone_hz": TONE_HZ, "amplitude": AMPLITUDE, "paced": 0, **kw}
    return ",".join(f"{k}={v}" for k, v in args.items())


def make_rx(soapy, args: str, drops=None, **options) -> SoapyReceiver:
    options.setdefault("sample_rate_hz", RATE)
    options.setdefault("center_freq_hz", 145.5e6)
    options.setdefault("timeout_s", 0.2)
    return SoapyReceiver(
        "rx1", SoapyOptions(device_args=args, **options), soapy=soapy, drops=drops if drops is not None else TallyDropCounter()
    )


def take(rx: SoapyReceiver, n_blocks: int) -> list:
    blocks = []
    with rx:
        for block in rx:
            blocks.append(block)
            if len(blocks) == n_blocks:
                break
    return blocks


def expected_tone(block, tone_hz=TONE_HZ, amplitude=AMPLITUDE):
    k = block.sample_index + np.arange(len(block.samples), dtype=np.float64)
    return amplitude * np.exp(2j * np.pi * np.mod(k * tone_hz / RATE, 1.0))


def live_devices(soapy) -> int:
    probe = soapy.Device({"driver": "heimdalltest", "serial": "probe"})
    try:
        return int(probe.readSetting("live_devices")) - 1
    finally:
        probe.close()


# --- the stream itself ---------------------------------------------------------------------


@pytest.mark.parametrize("stream_format, tolerance", [("CF32", 1e-5), ("CS16", 1.0 / 2048)])
def test_tone_arrives_with_its_frequency_and_full_scale_amplitude(soapy, stream_format, tolerance):
    blocks = take(make_rx(soapy, device_args(f"tone-{stream_format}"), stream_format=stream_format, read_size=4096), 20)
    samples = np.concatenate([b.samples for b in blocks])
    assert samples.dtype == np.complex64
    spectrum = np.abs(np.fft.fft(samples[:65536]))
    peak_hz = np.fft.fftfreq(65536, 1 / RATE)[np.argmax(spectrum)]
    assert peak_hz == TONE_HZ
    np.testing.assert_allclose(np.abs(samples), AMPLITUDE, atol=tolerance)
    for block in blocks:  # sample by sample, at the absolute index the block claims
        np.testing.assert_allclose(block.samples, expected_tone(block), atol=tolerance)
    first = blocks[0]
    assert (first.sample_rate, first.center_freq, first.gain_db, first.time_source) == (RATE, 145.5e6, None, "host")
    assert all(b.flags == Flags.AGC for b in blocks)


def test_sample_counts_are_exact_and_contiguous(soapy):
    rx = make_rx(soapy, device_args("count"), read_size=1000)
    blocks, counter = [], None
    with rx:
        for block in rx:
            blocks.append(block)
            if len(blocks) == 50:
                counter = int(rx._device.readSetting("sample_counter"))
                break
    assert [len(b.samples) for b in blocks] == [1000] * 50
    assert [b.sample_index for b in blocks] == list(range(0, 50_000, 1000))
    assert counter == blocks[-1].end_index == 50_000


def test_read_size_zero_uses_the_stream_mtu_set_by_stream_args(soapy):
    blocks = take(make_rx(soapy, device_args("mtu"), stream_args={"mtu": "2500"}), 3)
    assert [len(b.samples) for b in blocks] == [2500, 2500, 2500]


def test_paced_device_delivers_at_the_sample_rate(soapy):
    blocks = take(make_rx(soapy, device_args("paced", paced=1), sample_rate_hz=100_000.0, read_size=4000), 10)
    elapsed_s = (blocks[-1].t0_ns - blocks[0].t0_ns) / 1e9
    assert blocks[-1].sample_index == 36_000
    assert 0.3 < elapsed_s < 1.5  # 0.36 s of samples between the two block starts (host clock)


def test_second_channel_manual_gain_and_antenna(soapy):
    blocks = take(make_rx(soapy, device_args("ch1"), channel=1, gain_db=20.0, antenna="LOOP", read_size=2048), 3)
    for block in blocks:
        np.testing.assert_allclose(block.samples, expected_tone(block, tone_hz=2 * TONE_HZ), atol=1e-5)
        assert block.gain_db == 20.0 and block.flags == Flags.NONE


# --- overflow, timeouts, loss of the device --------------------------------------------------


def test_overflow_with_device_time_moves_sample_index_by_the_lost_samples(soapy):
    drops = TallyDropCounter()
    t0 = 1_700_000_000_000_000_000
    args = device_args("ovf-time", has_time=1, time_ns0=t0, overflow_every=4, overflow_skip=12345)
    blocks = take(make_rx(soapy, args, drops, read_size=1000), 30)
    flagged = [(prev, b) for prev, b in zip(blocks, blocks[1:]) if b.flags & Flags.OVERFLOW]
    assert len(flagged) == 9  # reads 4, 8, …, 36 overflow; 30 blocks span 39 reads
    assert all(b.sample_index - prev.end_index == 12345 for prev, b in flagged)
    unflagged = [(prev, b) for prev, b in zip(blocks, blocks[1:]) if not b.flags & Flags.OVERFLOW]
    assert all(b.sample_index == prev.end_index for prev, b in unflagged)
    assert drops.dropped == {("rx1", "overflow"): 12345 * len(flagged)}
    assert not drops.bad_frames
    for block in blocks:
        assert block.time_source == "device"
        assert block.t0_ns == t0 + round(block.sample_index * 1e9 / RATE)
        np.testing.assert_allclose(block.samples, expected_tone(block), atol=1e-5)


def test_device_time_false_keeps_gap_detection_but_uses_host_time(soapy):
    drops = TallyDropCounter()
    args = device_args("ovf-hosttime", has_time=1, time_ns0=5, overflow_every=3, overflow_skip=777)
    blocks = take(make_rx(soapy, args, drops, read_size=1000, device_time=False), 10)
    assert {b.time_source for b in blocks} == {"host"}
    assert drops.dropped[("rx1", "overflow")] == 777 * sum(bool(b.flags & Flags.OVERFLOW) for b in blocks) > 0


def test_overflow_without_time_is_counted_as_an_event(soapy):
    drops = TallyDropCounter()
    blocks = take(make_rx(soapy, device_args("ovf-notime", overflow_every=5), drops, read_size=1000), 24)
    n_flagged = sum(bool(b.flags & Flags.OVERFLOW) for b in blocks)
    assert n_flagged == 5  # reads 5, 10, …, 30 overflow; 24 blocks span 30 reads
    assert drops.bad_frames == {("rx1", "overflow"): n_flagged}
    assert not drops.dropped
    assert [b.sample_index for b in blocks] == list(range(0, 24_000, 1000))  # size of the loss unknown


def test_timeouts_are_not_errors(soapy):
    drops = TallyDropCounter()
    blocks = take(make_rx(soapy, device_args("timeouts", timeout_every=3), drops, read_size=1000), 20)
    assert [b.sample_index for b in blocks] == list(range(0, 20_000, 1000))
    assert all(b.flags == Flags.AGC for b in blocks)
    assert not drops.bad_frames and not drops.dropped


def test_only_timeouts_for_stall_s_is_a_transient_error(soapy):
    rx = make_rx(soapy, device_args("stall", timeout_every=1), timeout_s=0.01, stall_s=0.2)
    with pytest.raises(ReceiverTransientError, match="no samples for 0.2 s"):
        take(rx, 1)
    assert live_devices(soapy) == 0


@pytest.mark.parametrize("mode", ["error", "throw"])
def test_device_that_disappears_raises_transient_and_a_fresh_adapter_reopens(soapy, mode):
    args = device_args(f"gone-{mode}", disappear_after=25_000, disappear_mode=mode)
    with pytest.raises(ReceiverTransientError) as info:
        take(make_rx(soapy, args, read_size=4096), 1000)
    assert "rx1" in str(info.value)
    assert live_devices(soapy) == 0  # close() released it: SoapySDR's cache holds nothing
    seen = []
    rx = make_rx(soapy, args, read_size=4096)
    with rx:
        with pytest.raises(ReceiverTransientError):
            for block in rx:
                seen.append(block)
    assert sum(len(b.samples) for b in seen) == 25_000  # a fresh device: it streamed again from 0
    assert seen[0].sample_index == 0
    np.testing.assert_allclose(seen[0].samples, expected_tone(seen[0]), atol=1e-5)


def test_close_from_another_thread_stops_iteration_and_releases_the_device(soapy):
    rx = make_rx(soapy, device_args("threaded", paced=1), sample_rate_hz=100_000.0, read_size=1000)
    first_block, finished = threading.Event(), threading.Event()
    errors = []

    def consume():
        try:
            for _ in rx:
                first_block.set()
        except Exception as exc:  # pragma: no cover - reported by the assertion below
            errors.append(exc)
        finally:
            finished.set()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    assert first_block.wait(BLOCK_WAIT_S)
    rx.close()
    assert finished.wait(BLOCK_WAIT_S)
    thread.join(BLOCK_WAIT_S)
    assert errors == []
    assert live_devices(soapy) == 0


# --- configuration and errors at the edge ----------------------------------------------------


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"channel": 5}, ReceiverFatalError, "channel 5 does not exist"),
        ({"antenna": "DISH"}, ReceiverFatalError, "antenna 'DISH' not found"),
        ({"stream_args": {"mtu": "lots"}}, ReceiverFatalError, "SoapySDR error while opening the device: ValueError"),
    ],
)
def test_configuration_the_device_rejects_is_translated(soapy, options, error, match):
    with pytest.raises(error, match=match):
        take(make_rx(soapy, device_args("bad-config"), **options), 1)
    assert live_devices(soapy) == 0


def test_no_matching_device_is_transient_and_names_what_is_visible(soapy):
    with pytest.raises(ReceiverTransientError, match="no SoapySDR device matches 'driver=rtlsdr'.*heimdalltest"):
        take(make_rx(soapy, "driver=rtlsdr"), 1)


def test_open_receiver_from_a_config_table(soapy):
    cfg = config_mod.from_dict(
        {
            "receivers": [
                {
                    "id": "roof",
                    "kind": "soapy",
                    "lat": 45.0,
                    "lon": 7.0,
                    "device_args": device_args("from-config"),
                    "sample_rate_hz": RATE,
                    "stream_format": "CS16",
                    "gain_db": 10.0,
                    "read_size": 512,
                }
            ]
        },
        source="test.toml",
    )
    ctx = ReceiverContext(config=cfg, drops=TallyDropCounter())
    blocks = take(open_receiver(cfg.receivers[0], ctx), 2)
    assert [(b.receiver_id, b.sample_index, len(b.samples), b.gain_db) for b in blocks] == [
        ("roof", 0, 512, 10.0),
        ("roof", 512, 512, 10.0),
    ]


# --- without the peer ------------------------------------------------------------------------


def test_missing_binding_raises_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "SoapySDR", None)  # `import SoapySDR` now fails as if absent
    cfg = config_mod.from_dict({"receivers": [{"id": "a", "kind": "soapy", "lat": 1.0, "lon": 2.0}]})
    ctx = ReceiverContext(config=cfg, drops=TallyDropCounter())
    with pytest.raises(MissingDependencyError, match=r"apt-get install python3-soapysdr .*scripts/link-soapysdr \.venv"):
        open_receiver(cfg.receivers[0], ctx)


@pytest.mark.parametrize(
    "table, message",
    [
        ({"stream_format": "CS8"}, "receivers[0]: stream_format: expected 'CF32' or 'CS16', got 'CS8'"),
        ({"stream_args": {"buffers": 15}}, "receivers[0]: stream_args.buffers: expected a string, got int 15"),
        ({"stream_args": "buffers=15"}, "receivers[0]: stream_args: expected a table of strings"),
        ({"sample_rate_hz": 0}, "receivers[0]: sample_rate_hz: expected > 0, got 0.0"),
        ({"gain": 3}, "receivers[0].gain: unknown key"),
    ],
)
def test_bad_options_are_config_errors_naming_the_key(table, message):
    with pytest.raises(ConfigError) as info:
        config_mod.from_dict({"receivers": [{"id": "a", "kind": "soapy", "lat": 1.0, "lon": 2.0, **table}]}, source="x.toml")
    assert message in str(info.value)


def test_example_config_loads():
    cfg = config_mod.load(Path(__file__).resolve().parents[2] / "config" / "examples" / "soapy.toml")
    kinds = {rx.kind for rx in cfg.receivers}
    assert kinds == {"soapy"} and len(cfg.receivers) >= 3
    assert all(isinstance(rx.options, SoapyOptions) for rx in cfg.receivers)
