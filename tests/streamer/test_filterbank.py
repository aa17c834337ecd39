"""Filter bank: each channel equals the mix-and-resample_poly reference but for what that reference's decimation
aliases in from the stopband; tones land in their channel only; block boundaries leave no trace; indices and times
follow the input's; the step to the feature rate keeps the accounting; channel powers agree with
GNU Radio's pfb_channelizer_ccf where it is installed."""

from __future__ import annotations

import argparse
import subprocess
import textwrap

import numpy as np
import pytest
from scipy.signal import freqz, resample_poly, welch

from receivers.base import Flags, IQBlock
from streamer.dsp.filterbank import (
    ChannelBlock,
    FeatureRateResampler,
    FilterBank,
    channel_count,
    channel_number,
    covered_channels,
    design_prototype,
    feature_grid,
    feature_rate_channelizers,
)
from streamer.tools import bench_filterbank

IN_RATE_HZ = 2.4e6
SPACING_HZ = 12_500.0
N_CHANNELS = 192
CENTER_HZ = 145.0e6
T0_NS = 1_700_000_000_123_456_789
#: A large absolute start index: the mixer's phase must come from it, not from the position in the stream.
ORIGIN = 10**12 + 7
#: Channels that exercise DC, both neighbours of DC, both band edges and one in between.
SOME_CHANNELS = [-96, -1, 0, 1, 37, 95]
GR_PYTHON = "/usr/bin/python3"


def _block(samples, index, *, rid="rx1", flags=Flags.NONE, center_hz=CENTER_HZ, fs=IN_RATE_HZ):
    """An IQBlock whose t0_ns is consistent with its index (index ORIGIN at T0_NS)."""
    t0_ns = T0_NS + round((index - ORIGIN) * 10**9 / fs)
    return IQBlock(rid, np.asarray(samples, np.complex64), index, t0_ns, "gps", fs, center_hz, 30.0, flags)


def _noise(n, seed, scale=0.1):
    rng = np.random.default_rng(seed)
    return ((rng.standard_normal(n) + 1j * rng.standard_normal(n)) * scale).astype(np.complex64)


def _bank(channels=SOME_CHANNELS, **kw):
    return FilterBank(IN_RATE_HZ, CENTER_HZ, SPACING_HZ, channels, **kw)


def _reference(x, k, origin, bank):
    """Channel k by the module doc's formula: mix by k*spacing from the absolute index, resample_poly by 1/M."""
    cycles = (k % bank.n_channels) * ((origin + np.arange(len(x))) % bank.n_channels) / bank.n_channels
    return resample_poly(x * np.exp(-2j * np.pi * cycles), 1, bank.decimation, window=bank.taps)


def _alias_share(bank):
    """RMS of what the reference's decimation folds onto a channel from beyond the bank's output band (the
    ``folded_bands*out_rate_hz`` centred on the channel) relative to the channel's own, for white noise: the
    prototype's energy there over its energy inside. The bank's fast convolution leaves that out, so for white
    noise this is the RMS difference between bank and reference: the prototype's stopband at work, below
    ``10**(-attenuation_db/20)``."""
    response = np.fft.fft(bank.taps, 1 << 18)
    freqs = np.fft.fftfreq(1 << 18, 1 / bank.in_rate_hz)
    beyond = np.abs(freqs) >= bank.folded_bands * bank.out_rate_hz / 2
    return float(np.sqrt(np.sum(np.abs(response[beyond]) ** 2) / np.sum(np.abs(response[~beyond]) ** 2)))


def _assert_equals_reference(got, ref, bank, what):
    """``got`` equals the reference but for the stopband's aliases (``_alias_share``; 25 % for the noise's own
    spread over a few thousand samples) and float32 rounding. A wrong phase, delay or gain is off by order 1."""
    assert len(got) == len(ref)
    share = np.sqrt(np.mean(np.abs(got - ref) ** 2) / np.mean(np.abs(ref) ** 2))
    assert share < 1.25 * _alias_share(bank) + 2e-6, f"{what}: RMS difference {share:.2e} of the reference's"


def _stream(bank, x, sizes, first_index=ORIGIN):
    outs, pos = [], 0
    for size in sizes:
        out = bank.process(_block(x[pos : pos + size], first_index + pos, fs=bank.in_rate_hz))
        pos += size
        if out is not None:
            outs.append(out)
    return outs


#: More channels, not in bin order.
MANY_CHANNELS = SOME_CHANNELS + list(range(13, 1, -1))


@pytest.mark.parametrize("channels", [SOME_CHANNELS, MANY_CHANNELS, list(range(-96, 96))], ids=["few", "many", "all"])
def test_each_channel_equals_the_mix_and_resample_poly_reference(channels):
    """Equal but for what resample_poly's decimation aliases in from beyond the output band, where the prototype is
    in its stopband (``_alias_share``: 1.4e-4 of the RMS here, the prototype being 69 dB down there)."""
    bank = _bank(channels=channels)
    assert _alias_share(bank) < 10 ** (-69 / 20)
    x = _noise(int(IN_RATE_HZ) // 10, seed=1)
    out = bank.process(_block(x, ORIGIN))
    n_out = out.samples.shape[1]
    assert n_out == bank.ready(len(x))
    for row, k in enumerate(channels):
        if k not in SOME_CHANNELS:
            continue
        _assert_equals_reference(out.samples[row], _reference(x, k, ORIGIN, bank)[:n_out], bank, f"channel {k}")


@pytest.mark.parametrize(
    ("in_rate_hz", "spacing_hz", "oversampling"),
    [(2.4e6, 12_500.0, 1), (2.048e6, 16_000.0, 4), (240_000.0, 16_000.0, 3), (250_000.0, 12_500.0, 2)],
)
def test_other_grids_and_oversampling_equal_the_reference_too(in_rate_hz, spacing_hz, oversampling):
    """Critically sampled (its stopband, at the neighbour's centre, reaches past the output's Nyquist: two output
    bands are folded), 4x oversampled, an odd channel count (15: an even-length prototype, half a sample of group
    delay), a small bank (20)."""
    n_channels = channel_count(in_rate_hz, spacing_hz)
    lo, hi = -(n_channels // 2), (n_channels - 1) // 2
    channels = sorted({lo, -1, 0, 1, hi, lo + 3})
    bank = FilterBank(in_rate_hz, CENTER_HZ, spacing_hz, channels, oversampling=oversampling)
    assert bank.out_rate_hz == pytest.approx(oversampling * spacing_hz)
    x = _noise(40_000, seed=7)
    outs = _stream(bank, x, [9_999, 1, 30_000])
    got = np.concatenate([o.samples for o in outs], axis=1)
    for row, k in enumerate(channels):
        cycles = (k % n_channels) * ((ORIGIN + np.arange(len(x))) % n_channels) / n_channels
        ref = resample_poly(x * np.exp(-2j * np.pi * cycles), 1, bank.decimation, window=bank.taps)[: got.shape[1]]
        _assert_equals_reference(got[row], ref, bank, f"channel {k}")
    assert bank.folded_bands == (2 if oversampling == 1 else 1)


def test_state_stays_bounded_over_a_long_stream():
    """The carried history never reaches one FFT segment, however many blocks pass."""
    bank = _bank()
    x = _noise(bank.decimation * 40, seed=8)
    for i in range(300):
        bank.process(_block(x[(i * 777) % 1000 :][:777], ORIGIN + i * 777))
        assert bank._held < bank.fft_len and len(bank._buf) <= 2 * bank.fft_len


def test_each_channel_psd_within_0_1_db_of_an_independent_filter_and_decimate_over_80_percent():
    """White noise through the bank and through resample_poly's own default filter (firwin, Kaiser 5.0)."""
    bank = _bank()
    x = _noise(int(IN_RATE_HZ * 0.5), seed=2)
    out = bank.process(_block(x, ORIGIN))
    skip = 2 * bank.branch_taps * bank.oversampling  # the filters' ramp-in from the zeros before the stream
    for row, k in enumerate(SOME_CHANNELS):
        cycles = (k % N_CHANNELS) * ((ORIGIN + np.arange(len(x))) % N_CHANNELS) / N_CHANNELS
        ref = resample_poly(x * np.exp(-2j * np.pi * cycles), 1, bank.decimation)[: out.samples.shape[1]]
        f, p_bank = welch(out.samples[row, skip:], fs=bank.out_rate_hz, nperseg=256, return_onesided=False)
        _, p_ref = welch(ref[skip:], fs=bank.out_rate_hz, nperseg=256, return_onesided=False)
        inside = np.abs(f) <= 0.4 * SPACING_HZ
        diff_db = 10 * np.log10(p_bank[inside] / p_ref[inside])
        assert np.max(np.abs(diff_db)) < 0.1, f"channel {k}: PSD differs by up to {np.max(np.abs(diff_db)):.3f} dB"


def test_a_tone_at_a_channel_centre_appears_in_that_channel_only():
    """Adjacent channels reject it by at least 70 dB, every other channel by at least 68 dB (the prototype's
    stopband is nominally 70 dB from the neighbour's centre outward; the Kaiser estimate falls ~1 dB short)."""
    bank = _bank(channels=list(range(-96, 96)))
    k_tone = 10
    n = int(IN_RATE_HZ) // 10
    tone = np.exp(2j * np.pi * k_tone * SPACING_HZ * np.arange(n) / IN_RATE_HZ).astype(np.complex64)
    out = bank.process(_block(tone, 0))
    settled = out.samples[:, 4 * bank.branch_taps :]
    power_db = 10 * np.log10(np.mean(np.abs(settled) ** 2, axis=1) + 1e-30)
    row = {k: i for i, k in enumerate(bank.channels)}
    assert abs(power_db[row[k_tone]]) < 0.01  # unit gain at the centre
    rejection_db = power_db[row[k_tone]] - power_db
    assert min(rejection_db[row[k_tone - 1]], rejection_db[row[k_tone + 1]]) > 70.0
    others = np.delete(rejection_db, row[k_tone])
    assert np.min(others) > 68.0


def test_prototype_is_flat_over_the_channel_and_attenuates_from_the_neighbours_centre():
    taps = design_prototype(N_CHANNELS, attenuation_db=70.0)
    assert len(taps) % 2 == 1 and (len(taps) + 1) % N_CHANNELS == 0
    _, h_pass = freqz(taps, worN=np.linspace(0, SPACING_HZ / 2, 500), fs=IN_RATE_HZ)
    _, h_stop = freqz(taps, worN=np.linspace(SPACING_HZ, IN_RATE_HZ / 2, 20_000), fs=IN_RATE_HZ)
    assert np.max(np.abs(20 * np.log10(np.abs(h_pass)))) < 0.01
    assert np.max(20 * np.log10(np.abs(h_stop))) < -68.0


@pytest.mark.parametrize(("seed", "channels"), [(0, SOME_CHANNELS), (1, SOME_CHANNELS), (2, MANY_CHANNELS)])
def test_block_boundaries_anywhere_give_the_one_block_output(seed, channels):
    rng = np.random.default_rng(seed)
    x = _noise(60_000, seed=10 + seed)
    whole = _bank(channels).process(_block(x, ORIGIN))
    sizes = []
    while sum(sizes) < len(x):
        roll = rng.random()
        size = 0 if roll < 0.1 else 1 if roll < 0.2 else int(rng.integers(2, 30_000))
        sizes.append(min(size, len(x) - sum(sizes)))
    outs = _stream(_bank(channels), x, sizes)
    joined = np.concatenate([o.samples for o in outs], axis=1)
    assert np.array_equal(joined, whole.samples)  # each segment from the same operations, whatever the blocks
    assert [o.sample_index for o in outs] == list(np.cumsum([0] + [o.samples.shape[1] for o in outs[:-1]]))


def test_output_index_and_time_follow_the_input():
    bank = _bank()
    x = _noise(50_000, seed=3)
    outs = _stream(bank, x, [7_000, 1, 13_001, 29_998])
    for out in outs:
        # output m sits at input position m*M (from the stream's first input, which is at T0_NS)
        expected_ns = T0_NS + round(out.sample_index * bank.decimation * 10**9 / IN_RATE_HZ)
        assert abs(out.t0_ns - expected_ns) <= 1
        assert out.sample_rate == 25_000.0 and out.channels == tuple(SOME_CHANNELS)
    assert bank.samples_in == len(x)
    assert bank.samples_out == bank.ready(len(x)) == sum(o.samples.shape[1] for o in outs)
    # Outputs come a segment at a time: what is held past the last output's instant is at most the latency.
    held = bank.samples_in - bank.input_samples_represented(bank.samples_out)
    latency = round(bank.max_latency_s * IN_RATE_HZ)
    assert latency - bank.hop < held <= latency
    assert bank.samples_out % bank.outputs_per_hop == 0
    assert bank.group_delay_s == pytest.approx(bank.half_len / IN_RATE_HZ)


def test_outputs_are_ready_a_segment_at_a_time_once_its_last_input_is_in():
    bank = _bank()
    first_end = round(bank.max_latency_s * IN_RATE_HZ)  # output 0's instant is input 0
    assert bank.ready(first_end - 1) == 0
    assert bank.ready(first_end) == bank.outputs_per_hop == bank.hop // bank.decimation
    assert bank.ready(first_end + bank.hop - 1) == bank.outputs_per_hop
    assert bank.ready(first_end + bank.hop) == 2 * bank.outputs_per_hop
    x = _noise(first_end + bank.hop, seed=12)
    assert bank.process(_block(x[: first_end - 1], ORIGIN)) is None
    out = bank.process(_block(x[first_end - 1 : first_end], ORIGIN + first_end - 1))
    assert out.samples.shape == (len(SOME_CHANNELS), bank.outputs_per_hop)
    # the segment overlaps the next by the prototype's length, at most a quarter of the forward FFT
    assert len(bank.taps) - 1 <= bank.overlap <= bank.fft_len / 4 and bank.hop == bank.fft_len - bank.overlap


def test_group_delay_is_compensated_an_impulse_peaks_at_its_own_output_time():
    bank = _bank(channels=[0, 3])
    x = np.zeros(200 * bank.decimation + bank.fft_len, np.complex64)
    at = 120 * bank.decimation
    x[at] = 1.0
    out = bank.process(_block(x, 0))
    assert out.samples.shape[1] > 200
    assert list(np.argmax(np.abs(out.samples), axis=1)) == [120, 120]


def test_flags_are_carried_to_the_next_output_block():
    bank = _bank()
    assert bank.process(_block(np.zeros(100, np.complex64), ORIGIN, flags=Flags.CLIPPED)) is None
    out = bank.process(_block(np.zeros(20_000, np.complex64), ORIGIN + 100, flags=Flags.AGC))
    assert out.flags == Flags.CLIPPED | Flags.AGC


@pytest.mark.parametrize("in_rate_hz", [IN_RATE_HZ, 240_000.0], ids=["2.4M", "240k"])
def test_the_feature_rate_resampler_equals_one_channelizer_per_channel(in_rate_hz):
    """All channels at once, across uneven blocks: each channel's samples as its own Channelizer gives them (to
    float32 rounding), the same t0_ns, and the same accounting."""
    spacing_hz = 12_500.0 if in_rate_hz == IN_RATE_HZ else 2_500.0
    channels = [-40, -3, 0, 1, 7, 39] if in_rate_hz == IN_RATE_HZ else [-20, 0, 5, 10]
    oversampling = 2 if in_rate_hz == IN_RATE_HZ else 12  # feature_grid's: 25 and 30 kS/s out
    bank = FilterBank(in_rate_hz, CENTER_HZ, spacing_hz, channels, oversampling=oversampling, passband_hz=11_000.0,
                      stopband_hz=oversampling * spacing_hz / 2)
    together, one_each = FeatureRateResampler(bank, 24_000.0), feature_rate_channelizers(bank, 24_000.0)
    x = _noise(int(in_rate_hz * 0.3), 3)
    index, got, want = ORIGIN, [], []
    for n in (100, 7, 9_000, 61_000, 3, 50_000, len(x)):
        piece = x[index - ORIGIN : index - ORIGIN + n]
        index += len(piece)
        out = bank.process(_block(piece, index - len(piece), fs=in_rate_hz)) if len(piece) else None
        if out is None:
            continue
        rows = together.process(out)
        singles = [c.process(out.channel_block(i)) for i, c in enumerate(one_each)]
        assert (rows is None) == (singles[0] is None)
        if rows is not None:
            assert rows[1] == singles[0].t0_ns
            got.append(rows[0])
            want.append(np.stack([s.samples for s in singles], axis=1))
    assert len(got) >= 3
    np.testing.assert_allclose(np.concatenate(got), np.concatenate(want), rtol=0, atol=1e-6)
    assert (together.samples_in, together.samples_out) == (one_each[0].samples_in, one_each[0].samples_out)
    assert together.input_samples_represented(77) == one_each[0].input_samples_represented(77)
    together.reset()
    assert (together.samples_in, together.samples_out) == (0, 0)


def test_a_bank_far_above_the_feature_rate_resamples_through_the_channelizers_cascade():
    """Two 1.2 MHz channels at 2.4 MS/s (out rate 2.4 MS/s, 100 x the feature rate): the Channelizer's two-stage
    cascade, one per channel, with the same outputs and accounting as the resampler's other path gives."""
    bank = FilterBank(IN_RATE_HZ, CENTER_HZ, 1.2e6, [0, -1], oversampling=2)
    together = FeatureRateResampler(bank, 24_000.0)
    assert together.per_channel and together.per_channel[0].decimation1 > 1
    reference = feature_rate_channelizers(bank, 24_000.0)
    x = _noise(48_000, 9)
    got, want = [], []
    for i in range(0, len(x), 7_000):
        out = bank.process(_block(x[i : i + 7_000], ORIGIN + i))
        rows = together.process(out)
        singles = [c.process(out.channel_block(k)) for k, c in enumerate(reference)]
        if rows is not None:
            assert rows[1] == singles[0].t0_ns
            got.append(rows[0])
            want.append(np.stack([s.samples for s in singles], axis=1))
    np.testing.assert_array_equal(np.concatenate(got), np.concatenate(want))
    assert together.samples_out == reference[0].samples_out > 0


def test_feature_rate_step_keeps_the_accounting_and_the_tone():
    """Bank channel (25 kS/s) -> Channelizer 24/25: output j sits at input position j*100 at 2.4 MS/s."""
    k, offset_hz = 5, 3_000.0
    bank = _bank(channels=[k, -2])
    steps = feature_rate_channelizers(bank, 24_000.0)
    assert [(s.up, s.down) for s in steps] == [(24, 25), (24, 25)]
    n = int(IN_RATE_HZ * 0.2)
    tone = np.exp(2j * np.pi * (k * SPACING_HZ + offset_hz) * np.arange(n) / IN_RATE_HZ).astype(np.complex64)
    feature_blocks = []
    for piece in np.array_split(np.arange(n), 7):
        out = bank.process(_block(tone[piece], ORIGIN + piece[0]))
        if out is not None:
            feature_blocks.append(steps[0].process(out.channel_block(0)))
            steps[1].process(out.channel_block(1))
    feature_blocks = [b for b in feature_blocks if b is not None]
    assert feature_blocks[0].center_freq == CENTER_HZ + k * SPACING_HZ
    for b in feature_blocks:
        assert b.sample_rate == 24_000.0
        expected_ns = T0_NS + round(b.sample_index * 100 * 10**9 / IN_RATE_HZ)
        assert abs(b.t0_ns - expected_ns) <= 1
    assert [b.sample_index for b in feature_blocks[1:]] == [
        a.sample_index + len(a.samples) for a in feature_blocks[:-1]
    ]
    y = np.concatenate([b.samples for b in feature_blocks])[200:]
    spectrum = np.abs(np.fft.fft(y[:2400]))
    peak_hz = np.fft.fftfreq(2400, 1 / 24_000.0)[np.argmax(spectrum)]
    assert peak_hz == pytest.approx(offset_hz, abs=10.0)


def test_channel_block_rows_are_iq_blocks_on_their_channel():
    out = _bank(channels=[-3, 4]).process(_block(_noise(20_000, seed=4), ORIGIN))
    assert isinstance(out, ChannelBlock)
    row = out.channel_block(1)
    assert row.center_freq == CENTER_HZ + 4 * SPACING_HZ
    assert row.sample_rate == out.sample_rate and np.shares_memory(row.samples, out.samples)


def test_channel_numbers_and_coverage():
    assert channel_count(IN_RATE_HZ, SPACING_HZ) == 192
    assert channel_number(144.9875e6, center_freq_hz=CENTER_HZ, in_rate_hz=IN_RATE_HZ,
                          channel_spacing_hz=SPACING_HZ) == -1
    band = [CENTER_HZ + k * SPACING_HZ for k in (-96, -95, 0, 95, 96, 200)]
    assert covered_channels(band, center_freq_hz=CENTER_HZ, in_rate_hz=IN_RATE_HZ,
                            channel_spacing_hz=SPACING_HZ) == (None, -95, 0, 95, None, None)
    # a 200 kHz guard leaves 1.0 MHz - 6.25 kHz each side: channels -79..79
    guarded = covered_channels([CENTER_HZ + k * SPACING_HZ for k in (-80, -79, 79, 80)], center_freq_hz=CENTER_HZ,
                               in_rate_hz=IN_RATE_HZ, channel_spacing_hz=SPACING_HZ, guard_hz=200_000.0)
    assert guarded == (None, -79, 79, None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"in_rate_hz": -2.4e6}, "in_rate_hz must be a positive number of Hz"),
        ({"in_rate_hz": float("nan")}, "in_rate_hz must be a positive number of Hz"),
        ({"channel_spacing_hz": 0.0}, "channel_spacing_hz must be a positive number of Hz"),
        ({"channel_spacing_hz": 7_000.0}, "channel_spacing_hz=7000.0 does not divide in_rate_hz=2400000.0"),
        ({"in_rate_hz": 1e9}, "above MAX_SAMPLE_RATE_HZ"),
        ({"channels": [96]}, "channel 96 is outside the band: channels are the integers -96..95"),
        ({"channels": []}, "channels is empty"),
        ({"channels": 5}, "channels must be a list of channel numbers, got 5"),
        ({"channels": [1, 1]}, "repeat a channel"),
        ({"channels": [1.5]}, "channel 1.5 is outside the band"),
        ({"oversampling": 5}, "oversampling must be an integer >= 1 dividing the 192 channels"),
        ({"attenuation_db": 200.0}, "attenuation_db must be in"),
        ({"center_freq_hz": float("inf")}, "center_freq_hz must be a finite number"),
    ],
)
def test_bad_configuration_is_a_clear_error(kwargs, message):
    args = {"in_rate_hz": IN_RATE_HZ, "center_freq_hz": CENTER_HZ, "channel_spacing_hz": SPACING_HZ, "channels": [0]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        FilterBank(**args)


def test_off_grid_and_out_of_band_frequencies_are_clear_errors():
    with pytest.raises(ValueError, match="not a multiple of channel_spacing_hz=12500.0"):
        channel_number(145.003e6, center_freq_hz=CENTER_HZ, in_rate_hz=IN_RATE_HZ, channel_spacing_hz=SPACING_HZ)
    with pytest.raises(ValueError, match=r"channel 100\) is outside the band"):
        channel_number(CENTER_HZ + 100 * SPACING_HZ, center_freq_hz=CENTER_HZ, in_rate_hz=IN_RATE_HZ,
                       channel_spacing_hz=SPACING_HZ)
    with pytest.raises(ValueError, match="tune the receiver onto the channel grid"):  # tuned between channels
        covered_channels([CENTER_HZ], center_freq_hz=CENTER_HZ + 3_000.0, in_rate_hz=IN_RATE_HZ,
                         channel_spacing_hz=SPACING_HZ)
    with pytest.raises(ValueError, match="channel frequency must be a finite number of Hz, got nan"):
        channel_number(float("nan"), center_freq_hz=CENTER_HZ, in_rate_hz=IN_RATE_HZ, channel_spacing_hz=SPACING_HZ)
    with pytest.raises(ValueError, match="guard_hz must be in"):
        covered_channels([CENTER_HZ], center_freq_hz=CENTER_HZ, in_rate_hz=IN_RATE_HZ, channel_spacing_hz=SPACING_HZ,
                         guard_hz=-1.0)


def test_blocks_that_do_not_fit_the_stream_are_refused_with_the_reason():
    bank = _bank()
    bank.process(_block(np.zeros(1000, np.complex64), ORIGIN))
    with pytest.raises(ValueError, match=r"starts at sample_index 1000000001008, expected 1000000001007"):
        bank.process(_block(np.zeros(10, np.complex64), ORIGIN + 1001))
    with pytest.raises(ValueError, match="carries"):
        bank.process(_block(np.zeros(10, np.complex64), ORIGIN + 1000, flags=Flags.DISCONTINUITY))
    with pytest.raises(ValueError, match="receiver 'rx2' in the stream of 'rx1'"):
        bank.process(_block(np.zeros(10, np.complex64), ORIGIN + 1000, rid="rx2"))
    with pytest.raises(ValueError, match="block center_freq 146000000.0 Hz, configured center_freq_hz 145000000.0"):
        bank.process(_block(np.zeros(10, np.complex64), ORIGIN + 1000, center_hz=146e6))
    with pytest.raises(ValueError, match="block sample_rate 2048000.0 Hz, configured in_rate_hz 2400000.0"):
        bank.process(_block(np.zeros(10, np.complex64), ORIGIN + 1000, fs=2.048e6))
    assert not bank.follows(_block(np.zeros(10, np.complex64), ORIGIN + 1000, flags=Flags.RETUNE))
    bank.reset()
    out = bank.process(_block(np.zeros(20_000, np.complex64), ORIGIN + 5000, flags=Flags.RETUNE))
    assert out.sample_index == 0 and out.flags == Flags.RETUNE


GR_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from gnuradio import blocks, gr
    from gnuradio.filter import pfb

    x_path, taps_path, n_channels, oversampling, out_path = sys.argv[1:6]
    x, taps, n_channels = np.load(x_path), np.load(taps_path), int(n_channels)
    tb = gr.top_block()
    src = blocks.vector_source_c(x.tolist(), False)
    bank = pfb.channelizer_ccf(n_channels, taps.tolist(), float(oversampling))
    sinks = [blocks.vector_sink_c() for _ in range(n_channels)]
    tb.connect(src, bank)
    for i, sink in enumerate(sinks):
        tb.connect((bank, i), sink)
    tb.run()
    outs = [np.asarray(s.data(), dtype=np.complex64) for s in sinks]
    n = min(len(o) for o in outs)
    np.save(out_path, np.stack([o[:n] for o in outs]))
    """
)


def _gnuradio_available() -> bool:
    try:
        probe = subprocess.run([GR_PYTHON, "-c", "from gnuradio import filter"], check=False, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def test_channel_powers_agree_with_gnuradio_pfb_channelizer(tmp_path):
    """Same taps, same input. GNU Radio's output i is FFT bin i, i.e. our channel k with k mod N == i (0 at the
    centre, then upward, then the negative channels from -N/2); its outputs are not delay-compensated, so only
    powers are compared, over the settled part of both. They agree to 0.1 dB but for what GNU Radio's polyphase
    decimation folds onto a channel from beyond its output band (the tones of channels two or more away, and the
    one exactly at the band's upper edge, through the prototype's stopband; the noise's share is negligible): the
    bank leaves that out (module doc), which moves the quiet channels' power by up to about 0.1 dB here."""
    if not _gnuradio_available():
        pytest.skip(f"{GR_PYTHON} cannot import gnuradio.filter: apt-get install gnuradio")
    n = N_CHANNELS * 2000
    x = _noise(n, seed=5, scale=1e-3)
    levels = {5: 1.0, -7: 0.3, 40: 0.1, -96: 0.05}
    for k, amplitude in levels.items():
        x += (amplitude * np.exp(2j * np.pi * k * np.arange(n) / N_CHANNELS)).astype(np.complex64)
    bank = _bank(channels=list(range(-96, 96)))
    ours = bank.process(_block(x, 0)).samples
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "taps.npy", bank.taps)
    (tmp_path / "gr_pfb.py").write_text(GR_SCRIPT)
    subprocess.run([GR_PYTHON, str(tmp_path / "gr_pfb.py"), str(tmp_path / "x.npy"), str(tmp_path / "taps.npy"),
                    str(N_CHANNELS), "2", str(tmp_path / "out.npy")], check=True, capture_output=True, timeout=300)
    theirs = np.load(tmp_path / "out.npy")
    skip = 4 * bank.branch_taps
    ours_mw = np.mean(np.abs(ours[:, skip:]) ** 2, axis=1)
    theirs_mw = np.mean(np.abs(theirs[:, skip:]) ** 2, axis=1)
    for row, k in enumerate(bank.channels):
        # the tones' offsets from this channel's centre, wrapped to +-in_rate/2; beyond the output band unless in
        # [-out_rate/2, out_rate/2), the bins the bank reads
        offsets = np.array([k_tone - k for k_tone in levels]) * SPACING_HZ
        offsets = (offsets + IN_RATE_HZ / 2) % IN_RATE_HZ - IN_RATE_HZ / 2
        _, response = freqz(bank.taps, worN=offsets, fs=IN_RATE_HZ)
        beyond = (offsets < -bank.out_rate_hz / 2) | (offsets >= bank.out_rate_hz / 2)
        folded_mw = np.sum((np.array(list(levels.values())) * np.abs(response))[beyond] ** 2)
        theirs_k = theirs_mw[k % N_CHANNELS]
        assert abs(ours_mw[row] - theirs_k) <= (10 ** 0.01 - 1) * theirs_k + 1.2 * folded_mw, (
            f"channel {k} (GNU Radio output {k % N_CHANNELS}): {10 * np.log10(ours_mw[row]):.3f} against"
            f" {10 * np.log10(theirs_k):.3f} dB, {10 * np.log10(folded_mw + 1e-30):.1f} dB folded in there")
    theirs_db = 10 * np.log10(theirs_mw)
    for k, amplitude in levels.items():
        assert theirs_db[k % N_CHANNELS] == pytest.approx(20 * np.log10(amplitude), abs=0.05)


def test_bench_filterbank_times_every_path_and_prints_the_ratios_beside_their_targets(capsys):
    """A tiny run of `heimdall bench filterbank`: distinct input blocks, every path timed, the ratios printed."""
    blocks = bench_filterbank.input_blocks(IN_RATE_HZ, SPACING_HZ, seconds=0.02, block_ms=5.0, seed=0)
    assert len(blocks) == 4 and [b.sample_index for b in blocks] == [0, 12_000, 24_000, 36_000]
    assert not np.array_equal(blocks[0].samples, blocks[1].samples)
    parser = argparse.ArgumentParser()
    bench_filterbank.add_arguments(parser)
    assert bench_filterbank.run(parser.parse_args(["--seconds", "0.02", "--repeats", "1", "--channelizers", "2"])) == 0
    text = capsys.readouterr().out
    for expected in ("bank, all 192 channels", "raw FFT 192-pt frames", "the bank's own: 12288-pt every 10560, 192 x 128-pt inverse",
                     "192 Channelizers (timed 2, scaled)", "bank / raw FFT", "(target >= 0.5:",
                     "bank / 192 channelizers", "(target >= 20:", "load average", "at end"):
        assert expected in text
    from streamer.dsp.frame_fft import available_backends

    assert ("per call, FFTW" in text) == ("fftw" in available_backends())  # FFTW joins the baselines where installed
    res = bench_filterbank.bench_filterbank(seconds=0.02, repeats=1, channelizers=2)
    assert res["bank"]["best_msps"] > 0 and res["bank_over_channelizers"] > 0
    assert res["channelizers_timed"] == [-96, 0]


#: The band pipeline's channel read: flat to +-11 kHz (the features' noise bands reach +-9.6 kHz), stopping at the
#: 25 kHz output's Nyquist.
WIDE_PASS_HZ, WIDE_STOP_HZ = 11_000.0, 12_500.0


def test_a_wide_passband_prototype_is_flat_to_it_and_stops_at_the_output_nyquist():
    bank = _bank(channels=[0], passband_hz=WIDE_PASS_HZ, stopband_hz=WIDE_STOP_HZ)
    assert bank.out_rate_hz / 2 == WIDE_STOP_HZ
    _, h_pass = freqz(bank.taps, worN=np.linspace(0, WIDE_PASS_HZ, 400), fs=IN_RATE_HZ)
    _, h_stop = freqz(bank.taps, worN=np.linspace(WIDE_STOP_HZ, IN_RATE_HZ / 2, 40_000), fs=IN_RATE_HZ)
    ripple_db = 20 * np.log10(np.abs(h_pass))
    assert np.max(np.abs(ripple_db)) < 0.01, f"passband ripple {np.max(np.abs(ripple_db)):.4f} dB"
    assert 20 * np.log10(np.max(np.abs(h_stop))) < -69.0


def test_a_wide_passband_channel_equals_the_reference_and_passes_a_tone_at_10_khz_unchanged():
    channels = [-3, 0, 40]
    bank = _bank(channels=channels, passband_hz=WIDE_PASS_HZ, stopband_hz=WIDE_STOP_HZ)
    x = _noise(int(IN_RATE_HZ) // 10, seed=5)
    out = bank.process(_block(x, ORIGIN))
    for row, k in enumerate(channels):
        ref = _reference(x, k, ORIGIN, bank)[: out.samples.shape[1]]
        _assert_equals_reference(out.samples[row], ref, bank, f"channel {k}")
    # A tone 10 kHz above channel 40's centre: inside the wide passband, so at full amplitude in channel 40 only.
    bank.reset()
    n = np.arange(int(IN_RATE_HZ) // 10)
    tone = (0.5 * np.exp(2j * np.pi * (40 * SPACING_HZ + 10_000.0) * (ORIGIN + n) / IN_RATE_HZ)).astype(np.complex64)
    settled = bank.process(_block(tone, ORIGIN)).samples[:, 4 * bank.branch_taps :]
    amplitude = np.abs(settled).mean(axis=1)
    assert amplitude[2] == pytest.approx(0.5, rel=1e-3)
    assert np.all(amplitude[:2] < 0.5 * 10 ** (-60 / 20))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"passband_hz": 13_000.0, "stopband_hz": 12_500.0}, "0 < passband_hz < stopband_hz"),
    ({"passband_hz": float("nan")}, "passband_hz must be a finite number"),
    ({"passband_hz": 1_000.0, "stopband_hz": 2e6}, "in_rate_hz/2"),
])
def test_bad_pass_and_stop_bands_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _bank(**kwargs)


def test_feature_grid_puts_every_channel_on_the_grid_at_the_smallest_rate_that_holds_it():
    spacing, oversampling = feature_grid(240_000.0, 145.45e6, [145.5e6, 145.5125e6, 145.4375e6], 25_000.0)
    assert (spacing, oversampling) == (2_500.0, 12)
    bank = FilterBank(240_000.0, 145.45e6, spacing, [20, 25, -5], oversampling=oversampling)
    assert bank.out_rate_hz == 30_000.0
    # One channel 500 kHz off: a coarse grid, and no oversampling needed for 100 kHz >= 25 kHz.
    assert feature_grid(2.4e6, 145.0e6, [145.5e6], 25_000.0) == (100_000.0, 1)
    with pytest.raises(ValueError, match="whole Hz"):
        feature_grid(240_000.0, 145.45e6, [145.5e6 + 0.5], 25_000.0)
    with pytest.raises(ValueError, match="at most 65536"):
        feature_grid(2.4e6, 145.0e6, [145.0e6 + 7.0], 25_000.0)


@pytest.mark.parametrize("options, fragment", [
    (["--repeats", "0"], "--repeats and --channelizers must be >= 1"),
    (["--spacing", "7000", "--seconds", "0.01"], "channel_spacing_hz=7000.0 does not divide in_rate_hz=2400000.0"),
])
def test_bench_filterbank_refuses_bad_options_with_a_usage_error(options, fragment, capsys):
    from streamer import cli

    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "filterbank", *options])
    assert info.value.code == 2
    assert fragment in capsys.readouterr().err
