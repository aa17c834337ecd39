"""Channelizer: streamed output equals resample_poly of the whole mixed signal (one stage or the cascade); tones land
where predicted; the cascade keeps the single-stage filter's passband and alias rejection."""

from __future__ import annotations

import hashlib
import time
import tracemalloc
from fractions import Fraction

import numpy as np
import pytest
from scipy.signal import freqz, resample_poly

from receivers.base import Flags, IQBlock
from streamer.dsp.channelizer import (
    MAX_BANK_COEFFS,
    MAX_UPSAMPLING,
    Channelizer,
    Mixer,
    cascade_decimation,
    check_tunable,
    design_taps,
    rational_ratio,
)

CENTER_HZ = 145.0e6
T0_NS = 1_700_000_000_123_456_789

# (in_rate_hz, out_rate_hz, up, down): the receiver rates the daemon meets, down to the 24 kS/s model rate.
RATES = [
    (240_000.0, 24_000.0, 1, 10),
    (2.4e6, 24_000.0, 1, 100),
    (250_000.0, 24_000.0, 12, 125),
    (2.048e6, 24_000.0, 3, 256),
    (10e6, 24_000.0, 3, 1250),
]


def _block(samples, index, fs, *, flags=Flags.NONE, rid="rx1", t0_ns=None, gain_db=30.0):
    """An IQBlock whose t0_ns is consistent with its index (stream starts at T0_NS at index 0)."""
    if t0_ns is None:
        t0_ns = T0_NS + round(index * 10**9 / fs)
    return IQBlock(rid, np.asarray(samples, np.complex64), index, t0_ns, "gps", fs, CENTER_HZ, gain_db, flags)


def _random_sizes(rng, n_total, max_size):
    """Block sizes adding up to n_total, with plenty of 0- and 1-sample blocks among them."""
    sizes = []
    while sum(sizes) < n_total:
        roll = rng.random()
        size = 0 if roll < 0.1 else 1 if roll < 0.25 else int(rng.integers(2, max_size))
        sizes.append(min(size, n_total - sum(sizes)))
    return sizes


def _stream(ch, x, first_index, fs, sizes):
    """Feed x in blocks of the given sizes; return the output blocks."""
    outs, pos = [], 0
    for size in sizes:
        out = ch.process(_block(x[pos : pos + size], first_index + pos, fs))
        pos += size
        if out is not None:
            outs.append(out)
    return outs


def _mixed_reference(x, first_index, offset_hz, fs):
    n = first_index + np.arange(len(x), dtype=np.float64)
    return x.astype(np.complex128) * np.exp(-2j * np.pi * (offset_hz / fs) * n)


def _whole_signal_reference(ch, mixed):
    """The module docstring's whole-signal equivalent: one resample_poly, or the cascade's two."""
    d1 = ch.decimation1
    if d1 > 1:
        mixed = resample_poly(mixed, 1, d1, window=ch.taps1)
    return resample_poly(mixed, ch.up, ch.down // d1, window=ch.taps)


def test_large_decimations_run_as_a_cascade_and_small_ones_as_one_stage():
    # (fs_in, D1): 48 k, 240 k and 250 kS/s keep the single-stage path; 2.048, 2.4 and 10 MS/s cascade.
    for fs_in, d1 in [(48_000.0, 1), (240_000.0, 1), (250_000.0, 1), (2.048e6, 8), (2.4e6, 10), (10e6, 50)]:
        ch = Channelizer(fs_in, CENTER_HZ, CENTER_HZ, 24_000.0)
        assert ch.decimation1 == d1 == cascade_decimation(ch.up, ch.down)
        assert (ch.taps1 is None) == (d1 == 1)
        if d1 > 1:
            # Odd, linear phase, unit gain at 0 Hz; the intermediate rate is >= 8x the output rate.
            assert len(ch.taps1) % 2 == 1 and ch.taps1.sum() == pytest.approx(1.0)
            np.testing.assert_allclose(ch.taps1, ch.taps1[::-1])
            assert fs_in / d1 >= 8 * 24_000.0


@pytest.mark.parametrize("fs_in, fs_out, up, down", RATES)
def test_stream_in_random_blocks_equals_resample_poly_of_whole_signal(fs_in, fs_out, up, down):
    rng = np.random.default_rng(up * 1000 + down)
    offset_hz = 0.173 * fs_in
    ch = Channelizer(fs_in, CENTER_HZ, CENTER_HZ + offset_hz, fs_out)
    n = int(0.05 * fs_in)
    x = (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(np.complex64) * 0.5
    first_index = 123_456_789
    outs = _stream(ch, x, first_index, fs_in, _random_sizes(rng, n, max_size=max(3, n // 20)))

    y = np.concatenate([o.samples for o in outs])
    ref = _whole_signal_reference(ch, _mixed_reference(x, first_index, offset_hz, fs_in))
    # Every output whose newest input has arrived is out, and no other: output j's newest input is
    # (j*d2 + half_len)//up of the final stage's input, which is the first stage's output m, whose newest
    # input is m*D1 + half_len1.
    d1, d2, half_len = ch.decimation1, down // ch.decimation1, (len(ch.taps) - 1) // 2
    m = n if d1 == 1 else (n - (len(ch.taps1) - 1) // 2 - 1) // d1 + 1
    assert len(y) == (up * m - half_len - 1) // d2 + 1 == ch.ready(n)
    assert len(y) < len(ref)
    assert y.dtype == np.complex64
    np.testing.assert_allclose(y, ref[: len(y)], rtol=0, atol=1e-4)


@pytest.mark.parametrize("fs_in, fs_out, up, down", RATES)
def test_rational_ratio_and_taps_match_resample_poly_default(fs_in, fs_out, up, down):
    ch = Channelizer(fs_in, CENTER_HZ, CENTER_HZ, fs_out)
    assert (ch.up, ch.down) == (up, down) == rational_ratio(fs_in, fs_out)
    d2 = down // ch.decimation1  # the final stage's decimation
    assert len(ch.taps) == 20 * max(up, d2) + 1
    # resample_poly's own default design and ours give the same output.
    x = np.random.default_rng(5).standard_normal(4 * len(ch.taps))
    np.testing.assert_allclose(resample_poly(x, up, d2, window=ch.taps), resample_poly(x, up, d2), atol=1e-12)


def _peak_hz(samples, fs):
    """Frequency of the strongest bin; 0.2 s of samples so that whole multiples of 5 Hz fall on a bin."""
    samples = samples[-int(0.2 * fs) :]
    spectrum = np.abs(np.fft.fftshift(np.fft.fft(samples * np.hanning(len(samples)))))
    freqs = np.fft.fftshift(np.fft.fftfreq(len(samples), 1 / fs))
    return freqs[np.argmax(spectrum)]


def _channelize_tone(tone_offset_hz, *, fs_in=2.4e6, fs_out=24_000.0, target_offset_hz=300_000.0, seconds=0.25):
    """Tone at CENTER + tone_offset_hz through a channelizer targeting CENTER + target_offset_hz; settled output."""
    ch = Channelizer(fs_in, CENTER_HZ, CENTER_HZ + target_offset_hz, fs_out)
    first_index = 987_654_321
    n = int(seconds * fs_in)
    k = first_index + np.arange(n)
    x = np.exp(2j * np.pi * (tone_offset_hz / fs_in) * k).astype(np.complex64)
    sizes = _random_sizes(np.random.default_rng(1), n, max_size=40_000)
    y = np.concatenate([o.samples for o in _stream(ch, x, first_index, fs_in, sizes)])
    # Drop the filters' start-up transient (zeros before the first input): outputs within the cascade's length.
    stage1_len = 0 if ch.taps1 is None else len(ch.taps1) // ch.decimation1
    return y[(len(ch.taps) + ch.up * stage1_len) * ch.decimation1 // ch.down :]


def test_tone_at_target_comes_out_at_0_hz_with_unit_amplitude_and_steady_phase():
    y = _channelize_tone(300_000.0)
    assert _peak_hz(y, 24_000.0) == 0.0
    # Absolute-index mixing: the target tone becomes the constant exp(j*0) = 1, across every block boundary.
    np.testing.assert_allclose(y, np.ones_like(y), atol=1e-3)


@pytest.mark.parametrize("delta_hz", [2_000.0, -2_000.0, 7_500.0])
def test_tone_at_target_plus_delta_comes_out_at_delta(delta_hz):
    y = _channelize_tone(300_000.0 + delta_hz)
    assert _peak_hz(y, 24_000.0) == delta_hz
    assert np.mean(np.abs(y) ** 2) == pytest.approx(1.0, abs=0.01)  # passband gain 1 (0 dBFS in, 0 dBFS out)


def test_tone_outside_the_output_band_is_filtered_not_aliased():
    # +30 kHz would alias to +6 kHz at 24 kS/s without the anti-alias filter; Kaiser(5) leaves < -40 dB.
    y = _channelize_tone(330_000.0)
    assert 10 * np.log10(np.mean(np.abs(y) ** 2)) < -40.0


def test_output_blocks_carry_contiguous_indices_and_times_from_the_input_anchor():
    fs_in, fs_out = 2.048e6, 24_000.0
    ch = Channelizer(fs_in, CENTER_HZ, CENTER_HZ + 50_000.0, fs_out)
    rng = np.random.default_rng(3)
    n = int(0.1 * fs_in)
    x = (rng.standard_normal(n) + 0j).astype(np.complex64)
    first_index = 5_000_000  # the stream (since reset) starts here, at T0_NS + first_index/fs
    outs = _stream(ch, x, first_index, fs_in, _random_sizes(rng, n, max_size=30_000))
    assert len(outs) > 5
    stream_t0_ns = T0_NS + round(first_index * 10**9 / fs_in)
    expected_index = 0
    for out in outs:
        assert out.sample_index == expected_index
        expected_index += len(out.samples)
        # Output j sits at input position j*down/up after the stream's first sample.
        position_s = Fraction(out.sample_index * ch.down, ch.up) / Fraction(fs_in)
        assert abs(out.t0_ns - (stream_t0_ns + round(position_s * 10**9))) <= 1  # integer ns: floats lose 256 ns here
        assert (out.receiver_id, out.time_source, out.gain_db) == ("rx1", "gps", 30.0)
        assert (out.sample_rate, out.center_freq) == (fs_out, CENTER_HZ + 50_000.0)
    assert expected_index == ch.samples_out


def test_flags_of_blocks_without_output_are_carried_to_the_next_output():
    ch = Channelizer(240_000.0, CENTER_HZ, CENTER_HZ, 24_000.0)
    assert ch.process(_block(np.zeros(5), 0, 240_000.0, flags=Flags.OVERFLOW)) is None
    out = ch.process(_block(np.zeros(2000), 5, 240_000.0, flags=Flags.AGC))
    assert out.flags == Flags.OVERFLOW | Flags.AGC
    assert ch.process(_block(np.zeros(2000), 2005, 240_000.0)).flags == Flags.NONE


@pytest.mark.parametrize("fs_in, fs_out, up, down", RATES)
def test_input_samples_represented_accounts_for_every_input_sample(fs_in, fs_out, up, down):
    ch = Channelizer(fs_in, CENTER_HZ, CENTER_HZ, fs_out)
    assert ch.input_samples_represented(0) == 0
    assert ch.input_samples_represented(up) == down  # exactly `down` inputs per `up` outputs
    assert ch.input_samples_represented(1) == -(-down // up)
    rng = np.random.default_rng(up + down)
    d1, half_len = ch.decimation1, (len(ch.taps) - 1) // 2
    half_len1 = 0 if ch.taps1 is None else (len(ch.taps1) - 1) // 2
    # The look-ahead of the final stage plus one output step, in first-stage outputs of D1 inputs each, plus
    # the first stage's look-ahead and one step (for one stage: (half_len + down)//up + 1 as before).
    max_held = d1 * ((half_len + down // d1) // up + 1) + (half_len1 + d1 - 1 if d1 > 1 else 0)
    max_seen = 0
    owned = 0
    pos = 0
    for size in _random_sizes(rng, int(0.05 * fs_in), max_size=20_000):
        out = ch.process(_block(np.zeros(size), 777 + pos, fs_in))
        pos += size
        if out is not None:
            # Each output block owns the inputs between the represented counts at its two ends ...
            owned += ch.input_samples_represented(out.sample_index + len(out.samples))
            owned -= ch.input_samples_represented(out.sample_index)
        held = ch.samples_in - ch.input_samples_represented(ch.samples_out)
        # ... so owned + held is every input sample accepted, at every step (no drift, no double count),
        assert owned + held == ch.samples_in == pos
        # and what is held is never more than the filters' look-ahead plus one output step.
        assert 0 <= held <= max_held
        max_seen = max(max_seen, held)
    assert ch.samples_out > 0 and max_seen > max_held // 2


def test_gap_or_restart_is_refused_until_reset_and_reset_restarts_the_stream():
    fs = 240_000.0
    x = np.exp(2j * np.pi * 0.01 * np.arange(6000)).astype(np.complex64)
    ch = Channelizer(fs, CENTER_HZ, CENTER_HZ, 24_000.0)
    first = ch.process(_block(x[:3000], 1000, fs))
    gap = _block(x[3000:], 4100, fs)  # 100 samples missing
    assert not ch.follows(gap)
    with pytest.raises(ValueError, match="sample_index 4100, expected 4000.*reset"):
        ch.process(gap)
    restart = _block(x[3000:], 4000, fs, flags=Flags.DISCONTINUITY)
    assert not ch.follows(restart)
    with pytest.raises(ValueError, match="DISCONTINUITY"):
        ch.process(restart)
    ch.reset()
    assert ch.follows(gap) and ch.next_input_index is None and ch.samples_in == ch.samples_out == 0
    # After reset the same input gives the same output as a fresh channelizer: no state survived.
    again = ch.process(_block(x[:3000], 1000, fs))
    assert again.sample_index == 0
    np.testing.assert_array_equal(again.samples, first.samples)


def test_blocks_that_do_not_match_the_configuration_are_refused():
    ch = Channelizer(240_000.0, CENTER_HZ, CENTER_HZ, 24_000.0)
    with pytest.raises(ValueError, match="sample_rate 250000.0 Hz, configured in_rate_hz 240000.0"):
        ch.process(_block(np.zeros(10), 0, 250_000.0))
    retuned = IQBlock("rx1", np.zeros(10, np.complex64), 0, 0, "gps", 240_000.0, CENTER_HZ + 1e3)
    with pytest.raises(ValueError, match="center_freq"):
        ch.process(retuned)
    ch.process(_block(np.zeros(10), 0, 240_000.0))
    with pytest.raises(ValueError, match="receiver 'rx2' in the stream of 'rx1'"):
        ch.process(_block(np.zeros(10), 10, 240_000.0, rid="rx2"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"out_rate_hz": 24_001.0}, r"out_rate_hz=24001.0 / in_rate_hz=2400000.0 is not a ratio"),
        ({"out_rate_hz": 0.0}, "out_rate_hz must be a positive number"),
        ({"in_rate_hz": float("nan")}, "in_rate_hz must be a positive number"),
        ({"target_freq_hz": CENTER_HZ + 1.3e6}, "outside the band"),
        ({"taps_per_phase": 1}, "taps_per_phase must be an integer >= 2"),
    ],
)
def test_bad_configuration_gives_a_clear_error(kwargs, message):
    args = {"in_rate_hz": 2.4e6, "center_freq_hz": CENTER_HZ, "target_freq_hz": CENTER_HZ, "out_rate_hz": 24_000.0}
    with pytest.raises(ValueError, match=message):
        Channelizer(**{**args, **kwargs})


def test_mixer_phase_is_exact_at_large_absolute_indices():
    # 3e11 samples is ~35 h at 2.4 MS/s: float64 phase accumulation would be off by ~1e-5 rad by then.
    offset_hz, fs = 123_456.7, 2.4e6
    first_index = 300_000_000_017
    n = 40_000  # longer than one oscillator table, so the chunked path runs too
    cycles = Fraction(offset_hz) / Fraction(fs)
    phase = np.array([float(cycles * (first_index + i) % 1) for i in range(n)])
    expected = np.exp(-2j * np.pi * phase)
    got = Mixer(offset_hz, fs).mix(np.ones(n, np.complex64), first_index)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)


def test_2p4_msps_to_24_ksps_runs_far_faster_than_real_time():
    fs_in = 2.4e6
    ch = Channelizer(fs_in, CENTER_HZ, CENTER_HZ + 300_000.0, 24_000.0)
    x = (np.random.default_rng(0).standard_normal(int(fs_in)) * (1 + 1j)).astype(np.complex64)
    blocks = [_block(x[i : i + 16_384], i, fs_in) for i in range(0, len(x), 16_384)]
    best_s = float("inf")
    for _ in range(3):
        ch.reset()
        start = time.perf_counter()
        for block in blocks:
            ch.process(block)
        best_s = min(best_s, time.perf_counter() - start)
    # One second of input; measured ~0.013 s on one core. 10x real time leaves room for a loaded machine
    # but fails for a per-sample Python loop.
    assert best_s < 0.1, f"1 s of 2.4 MS/s input took {best_s:.3f} s"


def test_a_rate_needing_a_huge_filter_is_refused_before_any_filter_is_built():
    # 23997.6 Hz -> 24 kHz is 10000/9999: a 10,000-branch bank of 9,999 coefficients each (~400 MB) once.
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"10000/9999 needs a filter bank of 99990000 coefficients"):
            Channelizer(23_997.6, CENTER_HZ, CENTER_HZ, 24_000.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"refusing it allocated {peak} bytes"


@pytest.mark.parametrize("fs_in", [2.4e6, 2.048e6, 250_000.0, 10e6, 61.44e6, 56e6, 20_250.0, 12_000.0, 48_000.0])
def test_the_rates_real_receivers_use_fit_the_filter_budget_and_keep_their_exact_output_rate(fs_in):
    ch = Channelizer(fs_in, CENTER_HZ, CENTER_HZ, 24_000.0)
    assert (ch.up, ch.down) == check_tunable(fs_in, CENTER_HZ, CENTER_HZ, 24_000.0)
    assert ch._resampler._bank.size <= MAX_BANK_COEFFS
    assert Fraction(ch.up, ch.down) == Fraction(24_000.0) / Fraction(fs_in)
    n = int(fs_in // 10)
    out = ch.process(_block(np.zeros(n), 0, fs_in))
    assert out.sample_rate == 24_000.0 and len(out.samples) == ch.ready(n)


@pytest.mark.parametrize("fs_in, why", [(5e-324, "outside"), (5_999.0, "outside"), (100.5e6, "outside"), (float("nan"), "positive")])
def test_input_rates_the_channelizer_cannot_serve_are_refused(fs_in, why):
    # Below out_rate / MAX_UPSAMPLING each input sample would cost more than MAX_UPSAMPLING outputs.
    assert MAX_UPSAMPLING == 4
    with pytest.raises(ValueError, match=why):
        Channelizer(fs_in, CENTER_HZ, CENTER_HZ, 24_000.0)


def _render_digest(fs_in, fs_out=24_000.0, n=9600):
    """Length and SHA-256 of the output of a fixed signal in fixed blocks (including 0- and 1-sample ones)."""
    rng = np.random.default_rng(2024)
    x = (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(np.complex64)
    ch = Channelizer(fs_in, CENTER_HZ, CENTER_HZ + fs_out / 4, fs_out)
    outs, pos, first_index = [], 0, 1_234_567
    for size in (1, 0, 2047, 3000, 553, 3999):
        out = ch.process(IQBlock("rx", x[pos : pos + size], first_index + pos, 10**18, "host", fs_in, CENTER_HZ))
        pos += size
        if out is not None:
            outs.append(out.samples)
    y = np.concatenate(outs)
    return len(y), hashlib.sha256(y.tobytes()).hexdigest()


#: Digests of the single-stage channelizer before the cascade existed (commit 93a148a), one set per OpenBLAS
#: float32 kernel family (numpy's wheel picks one for the CPU at load; they sum in different orders, so the last
#: bits differ between them). Both sets were taken at 93a148a with OPENBLAS_CORETYPE forcing the kernel.
PRE_CASCADE_DIGESTS = {
    "Haswell": {48_000.0: (4790, "bd65d520a9ff9dee10de4eaefad2c352ff9c2130d616227abbb904e23a186c34"),
                240_000.0: (950, "5be7ae87f1018e2a2e4d1d411922991335d4a9c9e71fa7128eaeb8b5ee4dee19"),
                250_000.0: (912, "7e6af6bf749ff91a8c13ee2913baebfca497f611de1e3fc7e572943b4f8f321e")},
    "SkylakeX": {48_000.0: (4790, "bd65d520a9ff9dee10de4eaefad2c352ff9c2130d616227abbb904e23a186c34"),
                 240_000.0: (950, "f2fb7b4ec952b05b86a6c787fe56edeb42ba9f56a13261c1599794959078c470"),
                 250_000.0: (912, "79337264182d1f56e6f9c12cc6c3808ca3bc5734346ecb2b2d5faa7df296dfe3")},
}

_DIGESTS_UNDER_KERNEL = """
import json, sys
from threadpoolctl import threadpool_info
sys.path.insert(0, sys.argv[1])
from test_channelizer import _render_digest
blas = [(i["internal_api"], i.get("architecture")) for i in threadpool_info() if i["user_api"] == "blas"]
print(json.dumps({"blas": blas, "digests": {str(fs): _render_digest(fs) for fs in (48000.0, 240000.0, 250000.0)}}))
"""


@pytest.mark.parametrize("kernel", sorted(PRE_CASCADE_DIGESTS))
def test_single_stage_rates_give_the_bits_they_gave_before_the_cascade(kernel):
    """The cascade must leave the single-stage rates' path untouched, bit for bit: each kernel family's digests,
    in a process whose OpenBLAS is made to use that family (where the CPU and numpy's BLAS allow it)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "OPENBLAS_CORETYPE": kernel}
    run = subprocess.run([sys.executable, "-c", _DIGESTS_UNDER_KERNEL, str(Path(__file__).parent)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    if {tuple(b) for b in result["blas"]} != {("openblas", kernel)}:
        pytest.skip(f"numpy's BLAS here is {result['blas']}, not OpenBLAS on its {kernel} kernels (the CPU or the "
                    "BLAS build cannot run them), so these digests do not apply")
    for fs_in, digest in PRE_CASCADE_DIGESTS[kernel].items():
        assert tuple(result["digests"][str(fs_in)]) == digest, fs_in


def _single_stage_and_cascade_gain(fs_in, freqs_hz):
    """|H| at input frequencies freqs_hz (Hz from the target) of the single-stage filter and of the cascade.

    A resampling filter runs at ``up`` times its input rate. The cascade's response at input frequency f is
    taps1's at f times taps' at f folded into the intermediate band (where the first stage's decimation puts it).
    """
    ch = Channelizer(fs_in, CENTER_HZ, CENTER_HZ, 24_000.0)
    assert ch.decimation1 > 1
    _, single = freqz(design_taps(ch.up, ch.down), 1, worN=freqs_hz, fs=fs_in * ch.up)
    fs1 = fs_in / ch.decimation1
    _, h1 = freqz(ch.taps1, 1, worN=freqs_hz, fs=fs_in)
    _, h2 = freqz(ch.taps, 1, worN=np.abs((freqs_hz + fs1 / 2) % fs1 - fs1 / 2), fs=fs1 * ch.up)
    return np.abs(single), np.abs(h1) * np.abs(h2)


@pytest.mark.parametrize("fs_in", [2.4e6, 2.048e6, 10e6])
def test_the_cascade_keeps_the_single_stage_passband(fs_in):
    freqs = np.linspace(0.0, 12_000.0, 2401)  # the whole output band (real filters: symmetric in f)
    single, cascade = _single_stage_and_cascade_gain(fs_in, freqs)
    # Within the first stage's ripple (10**(-65/20) = 5.6e-4) of the old filter, whose own ripple is ~1.8e-3.
    np.testing.assert_allclose(cascade, single, rtol=0, atol=6e-4)


@pytest.mark.parametrize("fs_in", [2.4e6, 2.048e6, 10e6])
def test_the_cascade_rejects_aliases_as_well_as_the_single_stage_filter(fs_in):
    # Every input frequency from 14 kHz (past the transition band: it folds onto |f| <= 10 kHz at 24 kS/s)
    # up to the input Nyquist frequency, 10 Hz apart.
    freqs = np.arange(14_000.0, fs_in / 2, 10.0)
    single, cascade = _single_stage_and_cascade_gain(fs_in, freqs)
    worst_single_db, worst_cascade_db = 20 * np.log10(single.max()), 20 * np.log10(cascade.max())
    assert worst_cascade_db <= worst_single_db + 0.1, (worst_cascade_db, worst_single_db)
    assert worst_cascade_db < -50.0
