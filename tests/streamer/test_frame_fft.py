"""The feature stage's FFT backends: FFTW (pyFFTW) against numpy's double-precision FFT, a frame's spectrum
independent of where it sits in a batch, threads, the features on FFTW, and ``pipeline.fft`` (the daemon on
FFTW: tests/streamer/test_pipeline_workers.py)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from streamer import config as config_mod
from streamer.core.errors import ConfigError
from streamer.dsp import frame_fft as frame_fft_mod
from streamer.dsp.features import FeatureSpec, mel_frames_dbm
from streamer.dsp.frame_fft import BLOCK_FRAMES, frame_fft

needs_fftw = pytest.mark.skipif("fftw" not in frame_fft_mod.available_backends(),
                                reason="needs pyFFTW: pip install -e '.[fftw]'")


def _frames(k: int, n_fft: int, dtype, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((k, n_fft)) + 1j * rng.standard_normal((k, n_fft))
    x[:, :3] += 300.0 * np.exp(2j * np.pi * 0.123 * np.arange(3))  # a strong component beside weak ones
    return x.astype(dtype)


@needs_fftw
@pytest.mark.parametrize("dtype, tol", [(np.complex64, 2e-6), (np.complex128, 1e-13)])
@pytest.mark.parametrize("n_fft", [16, 18, 512, 1024])
def test_fftw_and_scipy_give_numpy_s_double_precision_spectrum(n_fft, dtype, tol):
    for k in (0, 1, 5, BLOCK_FRAMES - 1, BLOCK_FRAMES, BLOCK_FRAMES + 1, 2 * BLOCK_FRAMES + 7):
        x = _frames(k, n_fft, dtype, seed=k)
        truth = np.fft.fft(x.astype(np.complex128), axis=-1)
        scale = max(np.abs(truth).max(initial=0.0), 1.0)
        for backend in ("scipy", "fftw"):
            transform = frame_fft(n_fft, dtype, backend)
            buffer = transform.empty(k)
            buffer[...] = x
            got = transform.forward(buffer)
            assert got.shape == (k, n_fft) and got.dtype == dtype
            assert np.abs(got - truth).max(initial=0.0) <= tol * scale, (backend, k)


@needs_fftw
def test_a_frame_s_fftw_spectrum_does_not_depend_on_its_place_in_a_batch():
    """One plan of BLOCK_FRAMES frames serves every frame, in place or through the scratch: the same bits."""
    n_fft = 512
    transform = frame_fft(n_fft, np.complex64, "fftw")
    x = _frames(3 * BLOCK_FRAMES + 5, n_fft, np.complex64, seed=1)
    whole = transform.forward(_copy_into(transform, x))
    alone = np.concatenate([transform.forward(_copy_into(transform, x[i : i + 1])) for i in range(len(x))])
    shifted = transform.forward(_copy_into(transform, x[7:]))
    unaligned = np.empty(x.size + 1, np.complex64)[1:].reshape(x.shape)  # 8 bytes off FFTW's alignment
    unaligned[...] = x
    np.testing.assert_array_equal(alone, whole)
    np.testing.assert_array_equal(shifted, whole[7:])
    np.testing.assert_array_equal(transform.forward(unaligned), whole)


def _copy_into(transform, x):
    buffer = transform.empty(len(x))
    buffer[...] = x
    return buffer


@needs_fftw
def test_fftw_refuses_frames_of_another_length_or_type_naming_both():
    transform = frame_fft(512, np.complex64, "fftw")
    for bad in (np.zeros((4, 256), np.complex64), np.zeros((4, 512), np.complex128), np.zeros(512, np.complex64)):
        with pytest.raises(ValueError, match=r"frame_fft: expected \[k, 512\] complex64 frames, got"):
            transform.forward(bad)


@needs_fftw
def test_the_benches_fftw_baseline_transforms_any_shape_and_keeps_its_input():
    transform = frame_fft_mod.measured_fftw()
    for shape in ((7, 192), (3, 4, 512), (1, 1024)):
        x = _frames(int(np.prod(shape[:-1])), shape[-1], np.complex64, seed=3).reshape(shape)
        kept = x.copy()
        got = transform(x)
        np.testing.assert_array_equal(x, kept)
        truth = np.fft.fft(x.astype(np.complex128), axis=-1)
        assert np.abs(got - truth).max() <= 2e-6 * np.abs(truth).max()


def test_without_pyfftw_the_benches_have_no_fftw_baseline(monkeypatch):
    monkeypatch.setattr(frame_fft_mod, "pyfftw", None)
    assert frame_fft_mod.measured_fftw() is None


@needs_fftw
def test_threads_transform_at_once_each_with_its_own_plans():
    n_fft, x = 1024, _frames(100, 1024, np.complex64, seed=2)
    expected = frame_fft(n_fft, np.complex64, "fftw").forward(x.copy())
    results, plans = [None] * 4, [None] * 4

    def work(i):
        transform = frame_fft(n_fft, np.complex64, "fftw")
        plans[i] = transform
        for _ in range(20):
            results[i] = transform.forward(x.copy())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(p) for p in plans}) == 4
    for got in results:
        np.testing.assert_array_equal(got, expected)  # the same problem, the same machine: FFTW's wisdom gives one plan


def test_a_backend_that_does_not_exist_or_is_not_installed_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="expected one of 'scipy', 'fftw', got 'fastest'"):
        frame_fft(512, np.complex64, "fastest")
    monkeypatch.setattr(frame_fft_mod, "pyfftw", None)
    with pytest.raises(ValueError, match=r"'fftw' needs pyFFTW, which is not installed \(pip install -e '\.\[fftw\]'\)"):
        frame_fft(512, np.complex64, "fftw")


@needs_fftw
@pytest.mark.parametrize("spec", [FeatureSpec(), FeatureSpec(sample_rate_hz=2.4e6, n_fft=1024, hop=512, n_mels=128,
                                                              window_s=0.02)], ids=["daemon", "wideband"])
def test_features_on_fftw_match_scipy_s_within_a_thousandth_of_a_db_where_single_precision_can(spec):
    """Bands within 60 dB of their frame's strongest: within 1e-3 dB; the rest (where any single-precision FFT's
    rounding shows) within 2e-2 dB of a double-precision transform, as scipy's are."""
    rng = np.random.default_rng(4)
    n = spec.n_samples
    x = (rng.standard_normal((6, n)) + 1j * rng.standard_normal((6, n))) * np.sqrt(0.5e-6)
    x += 10 ** (rng.uniform(-50, -10, (6, 1)) / 20) * np.exp(2j * np.pi * rng.uniform(-0.45, 0.45, (6, 1)) * np.arange(n))
    x = x.astype(np.complex64)
    cal = np.linspace(-20.0, 10.0, 6)
    truth = mel_frames_dbm(x.astype(np.complex128), spec, cal)
    on_scipy, on_fftw = (mel_frames_dbm(x, spec, cal, fft_backend=b) for b in ("scipy", "fftw"))
    near = truth.max(axis=-2, keepdims=True) - truth < 60.0
    np.testing.assert_allclose(on_fftw[near], on_scipy[near], rtol=0, atol=1e-3)
    np.testing.assert_allclose(on_fftw, truth, rtol=0, atol=2e-2)
    np.testing.assert_allclose(on_scipy, truth, rtol=0, atol=2e-2)


def test_pipeline_fft_is_checked_at_load_naming_the_key(tmp_path, monkeypatch):
    path = tmp_path / "site.toml"
    if "fftw" in frame_fft_mod.available_backends():
        path.write_text('[pipeline]\nfft = "fftw"\n')
        assert config_mod.load(path).pipeline.fft == "fftw"
    path.write_text('[pipeline]\nfft = "pocketfft"\n')
    with pytest.raises(ConfigError, match=r"site.toml: pipeline.fft: expected one of 'scipy', 'fftw', got 'pocketfft'"):
        config_mod.load(path)
    monkeypatch.setattr(frame_fft_mod, "pyfftw", None)
    path.write_text('[pipeline]\nfft = "fftw"\n')
    with pytest.raises(ConfigError, match=r"pipeline.fft: 'fftw' needs pyFFTW, which is not installed"):
        config_mod.load(path)


def test_check_says_which_fft_the_features_use(tmp_path, capsys):
    from importlib.resources import files

    from streamer.cli import main

    assert main(["check"]) == 0
    assert 'features: FFT by scipy.fft (pipeline.fft = "scipy"' in capsys.readouterr().out
    if "fftw" in frame_fft_mod.available_backends():
        path = tmp_path / "fftw.toml"
        default = (files("streamer") / "default.toml").read_text()
        path.write_text(default.replace("[pipeline]\n", '[pipeline]\nfft = "fftw"\n', 1))
        assert main(["check", "-c", str(path)]) == 0
        assert f'features: FFT by FFTW (pyFFTW {frame_fft_mod.pyfftw.__version__}; pipeline.fft = "fftw")' \
            in capsys.readouterr().out
