"""Features: known input -> expected output (STYLE habit 9), with librosa as the filterbank reference."""

from __future__ import annotations

import librosa
import numpy as np
import pytest

from streamer.dsp.frame_fft import available_backends
from streamer.dsp.features import FeatureSpec, band_centres_hz, bin_frequencies_hz, hann_periodic, mel_filterbank, mel_frames_dbm, one_sided_mel, stft_power

SPECS = [
    FeatureSpec(),  # the daemon default: 24 kS/s, n_fft 512, hop 256, 32 mels, 0.5 s
    FeatureSpec(sample_rate_hz=48_000.0, n_fft=1024, hop=300, n_mels=64, window_s=0.25),
    FeatureSpec(sample_rate_hz=12_000.0, n_fft=256, hop=256, n_mels=16, window_s=0.1),
]


def _tone(freq_hz, power_dbfs, spec, phase=0.3):
    n = np.arange(spec.n_samples)
    amplitude = 10 ** (power_dbfs / 20)
    return (amplitude * np.exp(1j * (2 * np.pi * freq_hz * n / spec.sample_rate_hz + phase))).astype(np.complex64)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"fs{s.sample_rate_hz:g}-nfft{s.n_fft}-mels{s.n_mels}")
def test_one_sided_bank_equals_librosa_mel_htk_unnormalised(spec):
    """HTK mel scale, norm=None (triangles peak at 1): the exact librosa call DESIGN.md names."""
    fs, half = spec.sample_rate_hz, spec.n_mels // 2
    reference = librosa.filters.mel(sr=fs, n_fft=spec.n_fft, n_mels=half, fmin=0.0, fmax=fs / 2, htk=True, norm=None)
    np.testing.assert_allclose(one_sided_mel(fs, spec.n_fft, half), reference, rtol=0, atol=1e-6)
    # The symmetric bank's positive side is that same matrix on the fft-shifted bins 0 .. fs/2 (exclusive).
    centre = spec.n_fft // 2
    np.testing.assert_allclose(mel_filterbank(spec)[half:, centre:], reference[:, :centre], rtol=0, atol=1e-6)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"nfft{s.n_fft}")
def test_negative_side_mirrors_positive_side(spec):
    bank, half, centre = mel_filterbank(spec), spec.n_mels // 2, spec.n_fft // 2
    # Band half-1-i at offset -k has the weight of band half+i at +k (k = 1 .. n_fft/2 - 1).
    negative = bank[:half, centre - 1 : 0 : -1]  # columns at -1, -2, ... bins
    positive = bank[half:, centre + 1 :]  # columns at +1, +2, ... bins
    np.testing.assert_array_equal(negative[::-1], positive)
    # DC belongs to no band (every triangle starts at 0 Hz with weight 0), and each side has its own bands.
    assert not bank[:, centre].any()
    assert not bank[:half, centre:].any() and not bank[half:, :centre].any()
    np.testing.assert_allclose(band_centres_hz(spec)[:half], -band_centres_hz(spec)[half:][::-1])


@pytest.mark.parametrize("band_from_carrier", [9, 12, 15])
def test_tone_of_known_dbm_reads_that_dbm_in_the_band_it_sits_on(band_from_carrier):
    spec = FeatureSpec()
    power_dbm, calibration_db = -73.0, -12.5
    band = spec.n_mels // 2 + band_from_carrier
    freq_hz = band_centres_hz(spec)[band]
    # dBm at the antenna = dBFS + calibration_db, so the samples carry P_dBm - calibration_db dBFS.
    frames = mel_frames_dbm(_tone(freq_hz, power_dbm - calibration_db, spec), spec, calibration_db)
    assert frames.shape == (spec.n_mels, spec.n_frames) and frames.dtype == np.float32
    # The triangle peaks at 1 on the band centre; the Hann main lobe (+-2 bins) loses a little to the slopes.
    np.testing.assert_allclose(frames[band], power_dbm, atol=0.5)
    assert np.all(np.argmax(frames, axis=0) == band)


@pytest.mark.parametrize("delta_hz", [2_343.75, 468.75, 9_000.0])
def test_positive_offset_lands_above_the_carrier_and_negative_below(delta_hz):
    spec = FeatureSpec()
    bank = mel_filterbank(spec)
    half = spec.n_mels // 2
    for sign in (+1, -1):
        frames = mel_frames_dbm(_tone(sign * delta_hz, -20.0, spec), spec)
        peak_bands = np.argmax(frames, axis=0)
        expected = int(np.argmax(bank[:, np.argmin(np.abs(bin_frequencies_hz(spec) - sign * delta_hz))]))
        assert np.all(peak_bands == expected)
        assert (expected >= half) if sign > 0 else (expected < half)
    # And the two land on mirrored bands.
    up = np.argmax(mel_frames_dbm(_tone(delta_hz, -20.0, spec), spec)[:, 0])
    down = np.argmax(mel_frames_dbm(_tone(-delta_hz, -20.0, spec), spec)[:, 0])
    assert up + down == spec.n_mels - 1


def test_mel_coverage_misses_only_the_ends_near_dc_and_nyquist():
    spec = FeatureSpec()
    bank, fs = mel_filterbank(spec), spec.sample_rate_hz
    # Fraction of white-noise power the bands see: triangles sum to 1 between the first and last centre on
    # each side and ramp to 0 towards DC and towards +-fs/2, so half of each end region is missed.
    coverage = bank.sum() / spec.n_fft
    centres = band_centres_hz(spec)[spec.n_mels // 2 :]
    analytic = 1.0 - (centres[0] + (fs / 2 - centres[-1])) / fs
    assert coverage == pytest.approx(analytic, rel=0.01)
    assert 0.85 < coverage < 0.99  # default spec: about 7 % of the band is outside the mel coverage


def test_white_noise_of_known_power_reads_that_power_over_the_bands():
    spec = FeatureSpec()
    power_dbm, calibration_db = -95.0, 7.0
    power_fs = 10 ** ((power_dbm - calibration_db) / 10)
    rng = np.random.default_rng(11)
    noise = np.sqrt(power_fs / 2) * (rng.standard_normal(spec.n_samples) + 1j * rng.standard_normal(spec.n_samples))
    frames = mel_frames_dbm(noise.astype(np.complex64), spec, calibration_db)
    band_mw = (10 ** (frames.astype(np.float64) / 10)).mean(axis=-1)
    bank = mel_filterbank(spec)
    # Each bin of white noise holds power/n_fft on average; each band sums its bins with its triangle weights.
    expected_band_mw = 10 ** (power_dbm / 10) / spec.n_fft * bank.sum(axis=1)
    np.testing.assert_allclose(10 * np.log10(band_mw), 10 * np.log10(expected_band_mw), atol=1.0)
    total_dbm = 10 * np.log10(band_mw.sum())
    coverage = bank.sum() / spec.n_fft  # see test_mel_coverage_misses_only_the_ends_near_dc_and_nyquist
    assert total_dbm == pytest.approx(power_dbm + 10 * np.log10(coverage), abs=0.25)
    assert total_dbm == pytest.approx(power_dbm, abs=0.5)  # and the miss is under half a dB


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"nfft{s.n_fft}-hop{s.hop}")
def test_frame_count_is_one_plus_floor_of_samples_minus_nfft_over_hop(spec):
    expected = 1 + (round(spec.window_s * spec.sample_rate_hz) - spec.n_fft) // spec.hop
    assert spec.n_frames == expected
    samples = np.zeros(spec.n_samples, np.complex64)
    assert stft_power(samples, spec).shape == (expected, spec.n_fft)
    assert mel_frames_dbm(np.stack([samples, samples]), spec).shape == (2, spec.n_mels, expected)
    assert stft_power(samples[: spec.n_fft], spec).shape == (1, spec.n_fft)
    with pytest.raises(ValueError, match=f"fewer than n_fft={spec.n_fft}"):
        stft_power(samples[: spec.n_fft - 1], spec)


def test_frame_count_examples():
    # 0.5 s at 24 kS/s = 12000 samples: 1 + (12000 - 512) // 256 = 45.
    assert FeatureSpec().n_frames == 45
    assert FeatureSpec(sample_rate_hz=12_000.0, n_fft=256, hop=256, window_s=0.1).n_frames == 1 + (1200 - 256) // 256


def test_stft_power_bins_add_up_to_the_window_weighted_mean_power():
    """Parseval scaling: |X|^2 / (n_fft * sum(w^2)) makes each frame's bins sum to that frame's mean power."""
    spec = FeatureSpec()
    rng = np.random.default_rng(2)
    # Non-stationary on purpose (a power ramp), so "mean power" is per frame and window-weighted.
    ramp = np.linspace(0.1, 2.0, spec.n_samples)
    x = (ramp * (rng.standard_normal(spec.n_samples) + 1j * rng.standard_normal(spec.n_samples))).astype(np.complex64)
    power = stft_power(x, spec)
    w2 = hann_periodic(spec.n_fft) ** 2
    starts = np.arange(spec.n_frames) * spec.hop
    expected = np.array([np.sum(np.abs(x[s : s + spec.n_fft]) ** 2 * w2) / w2.sum() for s in starts])
    np.testing.assert_allclose(power.sum(axis=-1), expected, rtol=1e-5)
    # A full-scale tone is 1.0 (0 dBFS) per frame, on a bin or between bins alike.
    for freq_hz in (1_500.0, 1_523.4):
        np.testing.assert_allclose(stft_power(_tone(freq_hz, 0.0, spec), spec).sum(axis=-1), 1.0, rtol=1e-5)


def test_stft_bins_run_from_minus_to_plus_half_the_sample_rate():
    spec = FeatureSpec()
    freqs = bin_frequencies_hz(spec)
    assert freqs[0] == -spec.sample_rate_hz / 2 and freqs[spec.n_fft // 2] == 0.0
    k = 37  # a tone on bin +37 peaks at shifted index n_fft/2 + 37, and -37 at n_fft/2 - 37
    for sign in (+1, -1):
        f = sign * k * spec.sample_rate_hz / spec.n_fft
        assert np.argmax(stft_power(_tone(f, 0.0, spec), spec)[0]) == spec.n_fft // 2 + sign * k


def test_calibration_broadcasts_per_receiver():
    spec = FeatureSpec()
    x = np.stack([_tone(3_000.0, -30.0, spec)] * 3)
    frames = mel_frames_dbm(x, spec, calibration_db=np.array([0.0, -10.0, 5.0]))
    # Bands the tone reaches, well above the eps floor (which calibration does not move).
    heard = frames[0, :, 0] > -150.0
    assert heard.sum() >= 2
    np.testing.assert_allclose(frames[1, heard] - frames[0, heard], -10.0, atol=1e-3)
    np.testing.assert_allclose(frames[2, heard] - frames[0, heard], 5.0, atol=1e-3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"window": "hamming"}, r"features.window: only 'hann' is supported, got 'hamming'"),
        ({"mel_scale": "slaney"}, r"features.mel_scale: only 'htk' is supported, got 'slaney'"),
        ({"n_mels": 31}, r"features.n_mels: expected an even number >= 2, got 31"),
        ({"n_mels": 0}, r"features.n_mels: expected an even number >= 2, got 0"),
        ({"n_fft": 511}, r"expected even n_fft >= 16 and 0 < hop <= n_fft, got 511, 256"),
        ({"n_fft": 8, "hop": 4}, r"expected even n_fft >= 16"),
        ({"hop": 0}, r"0 < hop <= n_fft, got 512, 0"),
        ({"hop": 513}, r"0 < hop <= n_fft, got 512, 513"),
        ({"window_s": 0.01}, r"features.window_s: 0.01 s holds fewer than n_fft=512 samples"),
        ({"window_s": -1.0}, r"features.window_s: expected a positive number, got -1.0"),
        ({"sample_rate_hz": -24_000.0}, r"features.sample_rate_hz: expected a positive number, got -24000.0"),
        ({"sample_rate_hz": float("inf")}, r"features.sample_rate_hz: expected a positive number, got inf"),
        ({"eps": 0.0}, r"features.eps: expected a positive number, got 0.0"),
    ],
)
def test_feature_spec_rejects_bad_values_with_the_key_and_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FeatureSpec(**kwargs)


# --- The implementation before the single-precision rewrite, kept as the reference the fast path must match. ---


def _legacy_mel_frames_dbm(samples, spec, calibration_db=0.0):
    """numpy FFT, fftshift, float64 einsum over the dense bank: the features the shipped model was trained on."""
    samples = np.asarray(samples)
    n_frames = 1 + (samples.shape[-1] - spec.n_fft) // spec.hop
    w = hann_periodic(spec.n_fft)
    frames = np.lib.stride_tricks.sliding_window_view(samples, spec.n_fft, axis=-1)[..., :: spec.hop, :][..., :n_frames, :]
    spectrum = np.fft.fftshift(np.fft.fft(frames * w.astype(np.float32), axis=-1), axes=-1)
    power = (spectrum.real**2 + spectrum.imag**2) / (spec.n_fft * float(np.sum(w**2)))
    mel = np.einsum("mk,...tk->...mt", mel_filterbank(spec), power)
    cal = np.asarray(calibration_db, dtype=np.float64)[..., None, None]
    return (10.0 * np.log10(mel * 10.0 ** (cal / 10.0) + spec.eps)).astype(np.float32)


def _noise_and_tones(shape, spec, seed):
    """complex64 noise at -60 dBFS plus, per row, two tones at random offsets and -10 .. -50 dBFS."""
    rng = np.random.default_rng(seed)
    n = shape[-1]
    x = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * np.sqrt(0.5e-6)
    t = np.arange(n) / spec.sample_rate_hz
    for _ in range(2):
        offset = rng.uniform(-0.45, 0.45, (*shape[:-1], 1)) * spec.sample_rate_hz
        level = 10 ** (rng.uniform(-50.0, -10.0, (*shape[:-1], 1)) / 20)
        x = x + level * np.exp(2j * np.pi * offset * t)
    return x.astype(np.complex64)


WIDE = FeatureSpec(sample_rate_hz=2.4e6, n_fft=1024, hop=512, n_mels=128, window_s=0.02)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"fs{s.sample_rate_hz:g}-nfft{s.n_fft}-hop{s.hop}-mels{s.n_mels}")
@pytest.mark.parametrize("shape", ["N", "RN", "BRN"])
def test_mel_frames_match_the_previous_implementation_within_a_thousandth_of_a_db(spec, shape):
    dims = {"N": (), "RN": (5,), "BRN": (3, 4)}[shape]
    x = _noise_and_tones((*dims, spec.n_samples), spec, seed=spec.n_fft + len(dims))
    cal = np.linspace(-20.0, 10.0, dims[-1]) if dims else -7.5
    new, old = mel_frames_dbm(x, spec, cal), _legacy_mel_frames_dbm(x, spec, cal)
    assert new.shape == old.shape == (*dims, spec.n_mels, spec.n_frames) and new.dtype == old.dtype == np.float32
    np.testing.assert_allclose(new, old, rtol=0, atol=1e-3)


def test_wideband_matches_within_a_thousandth_of_a_db_down_to_60_db_below_the_frame_peak():
    """Where the old and new single-precision FFTs part: bands far below a strong tone.

    Near DC the wideband spec's bands are narrower than a bin (small weights on one bin), so with a tone at up to
    -10 dBFS some bands sit 100 dB or more below the frame's strongest band. There each single-precision FFT's
    rounding (numpy's before, scipy's now) shows at the 1e-3 .. 1e-2 dB level: the old features are themselves
    that far from a double-precision transform, and the new ones are no further from it.
    """
    dims = (3, 4)
    x = _noise_and_tones((*dims, WIDE.n_samples), WIDE, seed=WIDE.n_fft + len(dims))
    new, old, truth = mel_frames_dbm(x, WIDE), _legacy_mel_frames_dbm(x, WIDE), _legacy_mel_frames_dbm(x.astype(np.complex128), WIDE)
    assert new.shape == old.shape == (*dims, WIDE.n_mels, WIDE.n_frames)
    near = truth.max(axis=-2, keepdims=True) - truth < 60.0  # bands within 60 dB of their frame's strongest band
    assert near.mean() > 0.4  # a tone at up to -10 dBFS puts the noise bands of its frames 60 dB or more below it
    np.testing.assert_allclose(new[near], old[near], rtol=0, atol=1e-3)
    np.testing.assert_allclose(new, old, rtol=0, atol=2e-2)
    np.testing.assert_allclose(new, truth, rtol=0, atol=2e-2)
    assert np.abs(old - truth).max() > 1e-3  # the old single-precision features were not exact there either


@pytest.mark.parametrize("spec", SPECS[:2], ids=lambda s: f"nfft{s.n_fft}")
def test_other_input_types_match_the_previous_implementation(spec):
    x = _noise_and_tones((2, spec.n_samples), spec, seed=5)
    # complex128 runs in double precision, as before; a strided view and a longer input with a ragged end too.
    for samples in (x.astype(np.complex128), np.repeat(x, 2, axis=-1)[:, ::2], np.concatenate([x, x[:, :17]], axis=-1)):
        np.testing.assert_allclose(mel_frames_dbm(samples, spec), _legacy_mel_frames_dbm(samples, spec), rtol=0, atol=1e-3)
    # Silence reads the eps floor, and an empty batch keeps its shape.
    np.testing.assert_array_equal(mel_frames_dbm(np.zeros(spec.n_samples, np.complex64), spec), 10 * np.log10(spec.eps))
    assert mel_frames_dbm(np.zeros((0, spec.n_samples), np.complex64), spec).shape == (0, spec.n_mels, spec.n_frames)


def test_long_rows_are_cut_into_chunks_without_changing_the_result(monkeypatch):
    """A row longer than one chunk is transformed in runs of frames; the result does not depend on the chunk size."""
    import streamer.dsp.features as features

    spec = SPECS[1]
    x = _noise_and_tones((3, spec.n_samples), spec, seed=9)
    whole = mel_frames_dbm(x, spec)
    monkeypatch.setattr(features, "CHUNK_BYTES", 7 * spec.n_fft * 8)  # 7 frames per step
    np.testing.assert_allclose(mel_frames_dbm(x, spec), whole, rtol=0, atol=1e-4)  # batch sizes round differently
    np.testing.assert_allclose(whole, _legacy_mel_frames_dbm(x, spec), rtol=0, atol=1e-3)


def test_bench_features_runs_on_a_tiny_case_and_prints_its_lines(capsys):
    """Not a timing test: the bench runs end to end and reports every path, ratio, target and load average."""
    from streamer.tools import bench_features

    assert bench_features.main(["--receivers", "2", "--seconds", "0.01", "--windows", "2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    print(out)
    for text in ("wideband:", "window:", "stage mel_frames_dbm, scipy.fft", "naive stft + librosa mel", "raw FFT scipy.fft",
                 "stage (scipy.fft) / naive", "stage (scipy.fft) / raw FFT", "(target >= 0.5:", "(target >= 4:",
                 "max |stage (scipy.fft) - naive|", "stage mel_frames_dbm, FFTW",
                 "load average", "at end"):
        assert text in out
    res = bench_features.bench_features(receivers=2, seconds=0.01, windows=2, repeats=1)
    for case in res["cases"]:
        assert set(case["stage"]) == set(available_backends())
        for backend in case["stage"]:  # the naive path computes the same features
            assert case["max_abs_diff_db"][backend] < 0.05


@pytest.mark.parametrize("spec", [*SPECS, WIDE], ids=lambda s: f"nfft{s.n_fft}-mels{s.n_mels}")
def test_projection_blocks_hold_every_weight_of_the_dense_bank_once(spec):
    from streamer.dsp.features import _power_scale, _projection

    dense = np.zeros((2 * spec.n_fft, spec.n_mels))
    for lo, hi, m0, m1, block in _projection(spec, np.dtype(np.float64)):
        assert not dense[2 * lo : 2 * hi, m0:m1].any()  # blocks do not overlap
        dense[2 * lo : 2 * hi, m0:m1] = block
    unshifted = np.fft.ifftshift(mel_filterbank(spec), axes=-1) * _power_scale(spec)
    np.testing.assert_array_equal(dense, np.repeat(unshifted.T, 2, axis=0))
