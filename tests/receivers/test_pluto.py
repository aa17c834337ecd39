"""The Pluto adapter with the real pyadi-iio and libiio against a fake iiod on 127.0.0.1:0."""

from __future__ import annotations

import builtins
import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest

from receivers.base import Flags, ReceiverContext, TallyDropCounter
from receivers.pluto import FULL_SCALE_COUNTS, PlutoOptions, PlutoReceiver, import_adi
from streamer.config import from_dict, load
from streamer.core.errors import ConfigError, MissingDependencyError, ReceiverTransientError

SKIP_REASON = "needs libiio and pyadi-iio: apt-get install libiio0 && pip install -e '.[pluto]'"


def _stack_available() -> bool:
    if importlib.util.find_spec("adi") is None or importlib.util.find_spec("iio") is None:
        return False
    try:
        import iio  # noqa: F401 - loads libiio.so
    except (ImportError, OSError, AttributeError):  # AttributeError: no libiio.so at all (receivers.pluto.import_adi)
        return False
    return True


needs_stack = pytest.mark.skipif(not _stack_available(), reason=SKIP_REASON)

if _stack_available():
    from tests.helpers.fake_iiod import FakeIiod
else:  # pragma: no cover - the fake needs nothing, but every test using it needs the stack
    FakeIiod = None

RATE_HZ = 1_000_000.0
BLOCK = 8192
TONE_HZ = 125_000.0
AMPLITUDE_COUNTS = 1024


def _config(uri: str, **options):
    table = {"id": "pluto1", "kind": "pluto", "lat": 45.0, "lon": 7.0, "uri": uri,
             "rx_lo_hz": 433.92e6, "sample_rate_hz": RATE_HZ, "rf_bandwidth_hz": 800e3,
             "gain_mode": "manual", "gain_db": 32.0, "buffer_size": BLOCK, **options}
    cfg = from_dict({"receivers": [table]}, source="<test>")
    return cfg, cfg.receivers[0]


def _open(uri: str, drops: TallyDropCounter, **options) -> PlutoReceiver:
    cfg, rx = _config(uri, **options)
    return PlutoReceiver.from_config(rx, ReceiverContext(config=cfg, drops=drops))


@pytest.fixture
def fake():
    with FakeIiod(tone_hz=TONE_HZ, amplitude_counts=AMPLITUDE_COUNTS) as server:
        yield server


@needs_stack
def test_configuration_is_written_to_the_device(fake):
    drops = TallyDropCounter()
    with _open(fake.uri, drops, kernel_buffers=20) as rx:
        next(iter(rx))
        assert fake.written("ad9361-phy", "output", "altvoltage0", "frequency")[-1] == "433920000"
        assert fake.written("ad9361-phy", "input", "voltage0", "sampling_frequency")[-1] == "1000000"
        assert fake.written("ad9361-phy", "input", "voltage0", "rf_bandwidth")[-1] == "800000"
        assert fake.written("ad9361-phy", "input", "voltage0", "gain_control_mode")[-1] == "manual"
        assert float(fake.written("ad9361-phy", "input", "voltage0", "hardwaregain")[-1]) == 32.0
        assert fake.buffers_count == {"iio:device2": 20}
        opens = [c for c in fake.commands if c.startswith("OPEN ")]
        assert opens == ["OPEN iio:device2 8192 00000003"]  # I and Q enabled, one block per rx()
        assert (rx.center_freq_hz, rx.sample_rate_hz, rx.gain_db) == (433.92e6, RATE_HZ, 32.0)
    assert any(c == "CLOSE iio:device2" for c in fake.commands)


@needs_stack
def test_agc_mode_writes_no_gain_and_flags_blocks(fake):
    with _open(fake.uri, TallyDropCounter(), gain_mode="slow_attack") as rx:
        block = next(iter(rx))
    assert fake.written("ad9361-phy", "input", "voltage0", "gain_control_mode")[-1] == "slow_attack"
    assert fake.written("ad9361-phy", "input", "voltage0", "hardwaregain") == []
    assert block.gain_db is None and block.flags & Flags.AGC


@needs_stack
def test_tone_comes_out_at_its_frequency_and_full_scale_amplitude(fake):
    drops = TallyDropCounter()
    with _open(fake.uri, drops, drop_tolerance_s=0.5) as rx:
        blocks = list(itertools.islice(iter(rx), 12))
    indices = [b.sample_index for b in blocks]
    assert indices == [i * BLOCK for i in range(12)]  # exact counts, contiguous
    assert all(len(b.samples) == BLOCK and b.samples.dtype == np.complex64 for b in blocks)
    assert all(b.flags == Flags.NONE and b.time_source == "host" for b in blocks)
    assert not drops.dropped
    samples = np.concatenate([b.samples for b in blocks])
    expected = fake.tone(0, len(samples)) / FULL_SCALE_COUNTS
    np.testing.assert_allclose(samples, expected, atol=1e-6)
    assert np.abs(samples).mean() == pytest.approx(AMPLITUDE_COUNTS / 2048, rel=1e-3)  # 0.5 = -6 dBFS
    spectrum = np.abs(np.fft.fftshift(np.fft.fft(samples[:65536])))
    freqs = np.fft.fftshift(np.fft.fftfreq(65536, 1 / RATE_HZ))
    assert freqs[np.argmax(spectrum)] == pytest.approx(TONE_HZ, abs=RATE_HZ / 65536)
    steps = np.diff([b.t0_ns for b in blocks])
    assert set(steps.tolist()) <= {round(BLOCK * 1e9 / RATE_HZ)}  # t0 follows the sample clock


@needs_stack
def test_server_pause_is_counted_as_overflow_close_to_the_true_loss(fake):
    drops = TallyDropCounter()
    pause_s = 1.5
    with _open(fake.uri, drops, drop_tolerance_s=0.1) as rx:
        it = iter(rx)
        before = [next(it) for _ in range(4)]
        fake.pause(pause_s)
        after = [next(it) for _ in range(24)]  # 16 queued blocks, then fresh ones
    counted = drops.dropped[("pluto1", "overflow")]
    truth = fake.lost_samples
    assert truth > 0.8 * pause_s * RATE_HZ  # the fake really lost most of the pause
    # estimate within one block + the tolerance + scheduling noise of the truth
    assert abs(counted - truth) <= BLOCK + 0.1 * RATE_HZ + 2 * BLOCK
    flagged = [b for b in after if b.flags & Flags.OVERFLOW]
    assert flagged, "no block carries Flags.OVERFLOW"
    blocks = before + after
    jumps = sum(b.sample_index - a.end_index for a, b in zip(blocks, blocks[1:]))
    assert jumps == counted  # sample_index advanced by exactly what was counted


@needs_stack
def test_disconnect_raises_transient_and_a_fresh_adapter_reconnects(fake):
    drops = TallyDropCounter()
    rx = _open(fake.uri, drops, drop_tolerance_s=0.5, timeout_ms=2000)
    it = iter(rx)
    next(it)
    fake.disconnect_mid_buffer()
    with pytest.raises(ReceiverTransientError):
        for _ in range(10):
            next(it)
    rx.close()
    with _open(fake.uri, drops, drop_tolerance_s=0.5) as again:
        block = next(iter(again))
    assert block.sample_index == 0 and len(block.samples) == BLOCK


@needs_stack
def test_stalled_device_times_out_as_transient(fake):
    with _open(fake.uri, TallyDropCounter(), timeout_ms=600) as rx:
        it = iter(rx)
        next(it)
        fake.stall()
        with pytest.raises(ReceiverTransientError, match="rx"):
            next(it)


@needs_stack
def test_unreachable_uri_is_transient():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ReceiverTransientError, match="open"):
        _open(f"ip:127.0.0.1:{port}", TallyDropCounter())


def test_missing_pyadi_iio_names_the_install_command(monkeypatch):
    real_import = builtins.__import__

    def no_adi(name, *args, **kwargs):
        if name == "adi" or name.startswith("adi."):
            raise ModuleNotFoundError("No module named 'adi'", name="adi")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "adi", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_adi)
    with pytest.raises(MissingDependencyError, match=r"pip install -e '\.\[pluto\]'"):
        import_adi()
    cfg, rx = _config("ip:192.0.2.1")
    with pytest.raises(MissingDependencyError, match=r"pip install -e '\.\[pluto\]'"):
        PlutoReceiver.from_config(rx, ReceiverContext(config=cfg, drops=TallyDropCounter()))


def test_pyadi_iio_without_libiio_names_the_install_command(monkeypatch):
    """pylibiio without libiio.so loads the interpreter in its place and fails on its first symbol (AttributeError):
    the adapter says what to install, not that."""
    real_import = builtins.__import__

    def adi_without_libiio(name, *args, **kwargs):
        if name == "adi" or name.startswith("adi."):
            raise AttributeError("python3: undefined symbol: iio_get_backends_count")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "adi", raising=False)
    monkeypatch.setattr(builtins, "__import__", adi_without_libiio)
    with pytest.raises(MissingDependencyError, match=r"apt-get install libiio0.*iio_get_backends_count"):
        import_adi()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("sample_rate_hz", 250e3, "521e3"),
        ("gain_mode", "auto", "slow_attack"),
        ("uri", "", "explicit libiio URI"),
        ("uri", "pluto.local", "explicit libiio URI"),
        ("kernel_buffers", 0, "kernel_buffers"),
    ],
)
def test_bad_options_are_config_errors(key, value, message):
    options = {"uri": "ip:192.0.2.1", key: value}
    with pytest.raises(ConfigError, match=message):
        _config(**options)


def test_uri_is_required():
    table = {"id": "p", "kind": "pluto", "lat": 1.0, "lon": 2.0}
    with pytest.raises(ConfigError, match="uri: required"):
        from_dict({"receivers": [table]}, source="<test>")


def test_example_config_loads():
    path = Path(__file__).resolve().parents[2] / "config" / "examples" / "pluto.toml"
    cfg = load(path)
    plutos = [rx for rx in cfg.receivers if rx.kind == "pluto"]
    assert plutos and all(isinstance(rx.options, PlutoOptions) for rx in plutos)
    assert all(rx.options.uri.startswith("ip:") for rx in plutos)
