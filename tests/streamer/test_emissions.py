"""EmissionTracker: emissions found on synthetic per-frame levels drawn as the detection rule measures white noise (the
draw checked against real mel frames of noise), and end to end on real mel frames of rendered IQ."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from streamer.dsp.detection import DetectionRule, frame_snr_db
from streamer.dsp.emissions import (
    Channel,
    EmissionEnd,
    EmissionStart,
    EmissionTracker,
    channel_frame_levels,
    frame_times_ns,
)
from streamer.dsp.features import (
    FeatureSpec,
    band_frame_power_mw,
    hann_periodic,
    mel_frames_dbm,
)

SPEC = FeatureSpec()
RULE = DetectionRule(channel_bandwidth_hz=12_500.0, snr_db=6.0)
BANDS = RULE.bands(SPEC)
TOP_HZ = RULE.noise_max_offset_hz(SPEC)
WINDOW_NS = round(SPEC.window_s * 1e9)
T0_NS = 1_767_225_600 * 10**9
FRAME_NS = SPEC.hop / SPEC.sample_rate_hz * 1e9
NOISE_DBM = -110.0
CHANNELS = (Channel("ch-a", 446_006_250.0), Channel("ch-b", 446_018_750.0))
RECEIVERS = ("rx0", "rx1", "rx2")


# ----------------------------------------------------------------------------------------------------
# The rule's per-frame levels on noise, drawn without rendering IQ


def in_and_out_power_mw(frames_dbm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame power (mW) of the rule's in-channel bands and of its noise bands."""
    half = 0.5 * BANDS.channel_bandwidth_hz
    outside = band_frame_power_mw(frames_dbm, SPEC, half, TOP_HZ) + band_frame_power_mw(frames_dbm, SPEC, -TOP_HZ, -half)
    return band_frame_power_mw(frames_dbm, SPEC, -half, half), outside


def noise_iq(rng: np.random.Generator, n_samples: int, channel_noise_dbm: float) -> np.ndarray:
    """White complex noise whose power over the channel bandwidth is ``channel_noise_dbm``."""
    power_mw = 10.0 ** (channel_noise_dbm / 10.0) * SPEC.sample_rate_hz / BANDS.channel_bandwidth_hz
    scale = np.sqrt(power_mw / 2.0)
    return (scale * (rng.standard_normal(n_samples) + 1j * rng.standard_normal(n_samples))).astype(np.complex64)


@pytest.fixture(scope="module")
def real_noise_frames() -> np.ndarray:
    """dBm mel frames [W, M, T] of 200 windows of white noise."""
    iq = noise_iq(np.random.default_rng(11), 200 * SPEC.n_samples, NOISE_DBM).reshape(200, SPEC.n_samples)
    return mel_frames_dbm(iq, SPEC)


class RuleNoiseDraw:
    """The rule's per-frame SNR (dB) and noise (dBm) of white noise plus an optional in-channel signal, drawn fast.

    A frame's in-channel and noise-band powers are gamma distributed with the degrees of freedom measured on real
    mel frames of noise (mean^2 / variance); frames and the two powers are drawn independently (their measured
    correlations are a few hundredths). Then the rule's arithmetic: density from the noise bands, signal = in-channel
    power minus density x in-channel bandwidth (floored at 1e-20 mW), noise = density x channel bandwidth.
    """

    def __init__(self, frames_dbm: np.ndarray, channel_noise_dbm: float = NOISE_DBM) -> None:
        in_mw, out_mw = in_and_out_power_mw(frames_dbm)
        self.dof_in = in_mw.mean() ** 2 / in_mw.var()
        self.dof_out = out_mw.mean() ** 2 / out_mw.var()
        self.density_mw_hz = 10.0 ** (channel_noise_dbm / 10.0) / BANDS.channel_bandwidth_hz

    def draw(self, rng: np.random.Generator, shape: tuple[int, ...],
             signal_snr_db: np.ndarray | float = -np.inf) -> tuple[np.ndarray, np.ndarray]:
        """(snr_db, noise_dbm) of ``shape``; ``signal_snr_db`` (broadcast to ``shape``) adds a signal that much over
        the channel's noise."""
        in_mw = rng.gamma(self.dof_in, 1.0 / self.dof_in, shape) * self.density_mw_hz * BANDS.in_bandwidth_hz
        out_mw = rng.gamma(self.dof_out, 1.0 / self.dof_out, shape) * self.density_mw_hz * BANDS.noise_bandwidth_hz
        in_mw = in_mw + 10.0 ** (np.asarray(signal_snr_db) / 10.0) * self.density_mw_hz * BANDS.channel_bandwidth_hz
        density = out_mw / BANDS.noise_bandwidth_hz
        signal_mw = np.maximum(in_mw - density * BANDS.in_bandwidth_hz, 1e-20)
        noise_mw = density * BANDS.channel_bandwidth_hz
        return 10.0 * np.log10(signal_mw / noise_mw), 10.0 * np.log10(noise_mw)


@pytest.fixture(scope="module")
def noise_draw(real_noise_frames) -> RuleNoiseDraw:
    return RuleNoiseDraw(real_noise_frames)


def test_the_noise_draw_matches_the_rule_on_real_noise_frames(real_noise_frames, noise_draw):
    real_snr = frame_snr_db(real_noise_frames, SPEC, BANDS, TOP_HZ)
    real_noise = channel_frame_levels(RULE, real_noise_frames, SPEC)[1]
    drawn_snr, drawn_noise = noise_draw.draw(np.random.default_rng(5), real_snr.shape)
    # About half of the frames read less in the channel than the noise bands predict: the signal floors there.
    assert np.mean(drawn_snr < -100) == pytest.approx(np.mean(real_snr < -100), abs=0.03)
    for percentile in (90.0, 99.0, 99.9):
        assert np.percentile(drawn_snr, percentile) == pytest.approx(np.percentile(real_snr, percentile), abs=0.6)
    assert np.median(drawn_noise) == pytest.approx(np.median(real_noise), abs=0.05)
    assert np.median(real_noise) == pytest.approx(NOISE_DBM, abs=0.2)
    assert drawn_noise.std() == pytest.approx(real_noise.std(), rel=0.1)


# ----------------------------------------------------------------------------------------------------
# Synthetic band: windows of drawn levels with bursts


def frame_cover(times_ns: np.ndarray, start_ns: int, end_ns: int) -> np.ndarray:
    """Share of each frame's window energy (Hann squared, frames centred at ``times_ns``) inside [start_ns, end_ns)."""
    offsets_ns = (np.arange(SPEC.n_fft) - SPEC.n_fft / 2) / SPEC.sample_rate_hz * 1e9
    weights = hann_periodic(SPEC.n_fft) ** 2
    sample_ns = times_ns[:, None] + offsets_ns[None, :]
    inside = (sample_ns >= start_ns) & (sample_ns < end_ns)
    return (inside * weights).sum(axis=1) / weights.sum()


def burst_snr_db(times_ns: np.ndarray, bursts) -> np.ndarray:
    """Signal over noise (dB, ``[C, R, T]``) of ``bursts``: (channel index, receiver indices, start s, end s, dB),
    times in s after T0_NS; -inf where nothing is keyed."""
    signal = np.zeros((len(CHANNELS), len(RECEIVERS), times_ns.size))
    for channel, receivers, start_s, end_s, snr_db in bursts:
        cover = frame_cover(times_ns, T0_NS + int(start_s * 1e9), T0_NS + int(end_s * 1e9))
        signal[channel, list(receivers)] += 10.0 ** (snr_db / 10.0) * cover
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(signal)


def run_windows(tracker: EmissionTracker, draw: RuleNoiseDraw, n_windows: int, bursts=(), seed: int = 1,
                noise_rise_db=None, present=None):
    """Feed ``n_windows`` windows from T0_NS; return (events, active emissions) of all of them and the flush.

    noise_rise_db : optional function of frame times (ns) -> dB added to the rule's noise estimate of every receiver
        and channel, with the signal level kept (sidebands reaching the noise bands)."""
    rng = np.random.default_rng(seed)
    events, active = [], []
    shape = (len(CHANNELS), len(RECEIVERS), SPEC.n_frames)
    for index in range(n_windows):
        times = frame_times_ns(T0_NS + index * WINDOW_NS, SPEC)
        snr, noise = draw.draw(rng, shape, burst_snr_db(times, bursts))
        if noise_rise_db is not None:
            rise = noise_rise_db(times)
            snr, noise = snr - rise, noise + rise
        result = tracker.update(snr, noise, np.ones(len(RECEIVERS), bool) if present is None else present, times)
        events += result.events
        active += result.active
    return events + list(tracker.flush().events), active


def starts_and_ends(events):
    return [e for e in events if isinstance(e, EmissionStart)], [e for e in events if isinstance(e, EmissionEnd)]


def frames_between(n_windows: int, start_s: float, end_s: float) -> int:
    """How many frames of the first ``n_windows`` windows have their centres in [start_s, end_s] after T0_NS."""
    times = np.concatenate([frame_times_ns(T0_NS + index * WINDOW_NS, SPEC) for index in range(n_windows)])
    return int(np.sum((times >= T0_NS + start_s * 1e9) & (times <= T0_NS + end_s * 1e9)))


def at_s(t_ns: int) -> float:
    return (t_ns - T0_NS) / 1e9


def tracker(**options) -> EmissionTracker:
    return EmissionTracker.from_rule(RULE, CHANNELS, RECEIVERS, **options)


# ----------------------------------------------------------------------------------------------------
# Bursts


def test_a_burst_across_two_windows_is_one_emission_with_its_start_and_end(noise_draw):
    band = tracker()
    events, active = run_windows(band, noise_draw, 3, bursts=[(0, (0, 1), 0.3, 0.9, 10.0)])
    starts, ends = starts_and_ends(events)
    assert len(starts) == 1 and len(ends) == 1
    end = ends[0]
    assert (end.emission_id, end.channel, end.start_ns) == (starts[0].emission_id, "ch-a", starts[0].start_ns)
    assert abs(at_s(end.start_ns) - 0.3) * 1e9 <= FRAME_NS
    assert abs(at_s(end.end_ns) - 0.9) * 1e9 <= FRAME_NS
    assert end.receivers == ("rx0", "rx1")
    for peak_db in end.peak_snr_db.values():
        assert 10.0 <= peak_db <= 12.0
    assert abs(end.active_frames - frames_between(3, 0.3, 0.9)) <= 2
    # Reported window by window: the same emission, every active frame once.
    assert {a.emission_id for a in active} == {end.emission_id}
    assert sum(int(a.frames.sum()) for a in active) == end.active_frames
    assert len(active) == 2
    assert band.dropped_short.tolist() == [0, 0]


def test_a_dropout_shorter_than_the_hangover_keeps_one_emission(noise_draw):
    keyed = [(0, (0,), 0.2, 0.6, 10.0), (0, (0,), 0.63, 1.1, 10.0)]
    _, ends = starts_and_ends(run_windows(tracker(), noise_draw, 3, bursts=keyed)[0])
    assert len(ends) == 1
    assert abs(at_s(ends[0].start_ns) - 0.2) * 1e9 <= FRAME_NS and abs(at_s(ends[0].end_ns) - 1.1) * 1e9 <= FRAME_NS
    # The frames of the dropout are not active.
    assert ends[0].active_frames <= frames_between(3, 0.2, 1.1) - 2


def test_a_dropout_longer_than_the_hangover_splits_the_emission(noise_draw):
    keyed = [(0, (0,), 0.2, 0.6, 10.0), (0, (0,), 0.8, 1.1, 10.0)]
    starts, ends = starts_and_ends(run_windows(tracker(hangover_s=0.1), noise_draw, 3, bursts=keyed)[0])
    assert [e.emission_id for e in starts] == [0, 1]
    assert [round(at_s(e.end_ns), 2) for e in ends] == [pytest.approx(0.6, abs=0.011), pytest.approx(1.1, abs=0.011)]


def test_a_blip_shorter_than_the_minimum_duration_is_dropped_and_counted(noise_draw):
    band = tracker(min_duration_s=0.05)
    events, active = run_windows(band, noise_draw, 2, bursts=[(1, (0, 1, 2), 0.7, 0.72, 15.0)])
    assert events == [] and active == []
    assert band.dropped_short.tolist() == [0, 1]


def test_two_channels_keyed_independently_give_independent_emissions(noise_draw):
    keyed = [(0, (0, 2), 0.2, 0.7, 12.0), (1, (1,), 0.35, 1.3, 9.0)]
    events, active = run_windows(tracker(), noise_draw, 4, bursts=keyed)
    starts, ends = starts_and_ends(events)
    by_channel = {e.channel: e for e in ends}
    assert sorted(by_channel) == ["ch-a", "ch-b"] and len(ends) == 2
    assert [e.emission_id for e in starts] == [0, 1] and [e.channel for e in starts] == ["ch-a", "ch-b"]
    for name, (start_s, end_s, receivers) in {"ch-a": (0.2, 0.7, ("rx0", "rx2")), "ch-b": (0.35, 1.3, ("rx1",))}.items():
        end = by_channel[name]
        assert abs(at_s(end.start_ns) - start_s) * 1e9 <= FRAME_NS and abs(at_s(end.end_ns) - end_s) * 1e9 <= FRAME_NS
        assert end.receivers == receivers
        assert sum(int(a.frames.sum()) for a in active if a.channel == name) == end.active_frames
    # Window 0 holds both, each over its own frames.
    first_window = active[:2]
    assert [a.channel for a in first_window] == ["ch-a", "ch-b"]
    assert first_window[0].frames.sum() > first_window[1].frames.sum() > 0


def test_frames_before_the_window_that_confirms_an_emission_are_not_reported(noise_draw):
    keyed = [(0, (0,), 0.47, 0.8, 10.0)]   # its first 50 ms span the boundary of windows 0 and 1
    events, active = run_windows(tracker(min_duration_s=0.05), noise_draw, 2, bursts=keyed)
    _, ends = starts_and_ends(events)
    assert len(ends) == 1 and [a.emission_id for a in active] == [ends[0].emission_id]
    assert 0 < ends[0].active_frames - int(active[0].frames.sum()) <= 0.05e9 / FRAME_NS


def test_min_receivers_needs_that_many_in_the_same_frames(noise_draw):
    one_heard = [(0, (1,), 0.2, 0.7, 12.0)]
    assert run_windows(tracker(min_receivers=2), noise_draw, 2, bursts=one_heard) == ([], [])
    two_heard = [(0, (0, 1), 0.2, 0.7, 12.0)]
    _, ends = starts_and_ends(run_windows(tracker(min_receivers=2), noise_draw, 2, bursts=two_heard)[0])
    assert len(ends) == 1 and ends[0].receivers == ("rx0", "rx1")


def test_ids_increase_across_channels_and_flush_closes_what_is_open(noise_draw):
    keyed = [(index % 2, (0,), 0.3 + 0.4 * index, 0.5 + 0.4 * index, 10.0) for index in range(10)]
    keyed.append((0, (2,), 4.7, 6.0, 10.0))   # still keyed when the last window (ending at 5.0 s) is fed
    band = tracker()
    events, _ = run_windows(band, noise_draw, 10, bursts=keyed)
    starts, ends = starts_and_ends(events)
    assert [e.emission_id for e in starts] == list(range(11))
    assert sorted(e.emission_id for e in ends) == list(range(11))
    last = max(ends, key=lambda e: e.emission_id)
    assert abs(at_s(last.start_ns) - 4.7) * 1e9 <= FRAME_NS and at_s(last.end_ns) > 4.95
    assert band.flush().events == ()


def test_flush_drops_and_counts_a_short_open_candidate(noise_draw):
    band = tracker(min_duration_s=0.1)
    events, _ = run_windows(band, noise_draw, 1, bursts=[(0, (0,), 0.46, 0.6, 10.0)])
    assert events == [] and band.dropped_short.tolist() == [1, 0]


def test_an_absent_receiver_hears_nothing(noise_draw):
    present = np.array([False, True, True])
    _, ends = starts_and_ends(run_windows(tracker(), noise_draw, 2, bursts=[(0, (0,), 0.2, 0.7, 15.0)],
                                          present=present)[0])
    assert ends == []


# ----------------------------------------------------------------------------------------------------
# Noise floor and false emissions


@pytest.mark.parametrize("on_snr_db", [RULE.snr_db, -2.0])
def test_noise_alone_for_an_hour_gives_under_one_false_emission_per_channel_hour(noise_draw, on_snr_db):
    # At the rule's threshold no frame of noise comes near; 8 dB lower, single frames cross it hundreds of times an
    # hour, and the minimum duration and hysteresis have to keep them from becoming emissions.
    band = EmissionTracker(CHANNELS, RECEIVERS, on_snr_db=on_snr_db)
    n_windows = 3600 * 2
    events, _ = run_windows(band, noise_draw, n_windows, seed=7)
    channel_hours = len(CHANNELS) * n_windows * SPEC.window_s / 3600.0
    assert len(starts_and_ends(events)[0]) / channel_hours < 1.0
    if on_snr_db < RULE.snr_db:
        assert band.dropped_short.sum() > 0
    assert np.all(np.abs(band.floor_dbm - NOISE_DBM) < 0.2)


def test_the_floor_does_not_follow_a_long_carrier(noise_draw):
    carrier_start_s, carrier_end_s = 6.2, 65.9
    band = tracker(floor_time_constant_s=2.0)

    def sidebands(times_ns):   # the carrier's sidebands raise the rule's noise estimate by 3 dB while it is on
        keyed = (times_ns >= T0_NS + carrier_start_s * 1e9) & (times_ns < T0_NS + carrier_end_s * 1e9)
        return np.where(keyed, 3.0, 0.0)

    events, _ = run_windows(band, noise_draw, 132,
                            bursts=[(0, (0, 1, 2), carrier_start_s, carrier_end_s, 10.0)], noise_rise_db=sidebands)
    _, ends = starts_and_ends(events)
    assert len(ends) == 1
    assert abs(at_s(ends[0].start_ns) - carrier_start_s) * 1e9 <= FRAME_NS
    assert abs(at_s(ends[0].end_ns) - carrier_end_s) * 1e9 <= FRAME_NS
    for peak_db in ends[0].peak_snr_db.values():
        assert 10.0 <= peak_db <= 12.0   # judged against the floor from before the carrier, not the raised estimate
    # The carrier's channel kept its floor; the idle channel followed the raised noise estimate (and has fallen back
    # for the last 0.1 s, a twentieth of the time constant).
    assert np.all(np.abs(band.floor_dbm[0] - NOISE_DBM) < 0.2)
    assert np.all(np.abs(band.floor_dbm[1] - (NOISE_DBM + 3.0)) < 0.3)


LONE_BURSTS = [
    (0, (0,), 1.0, 30.0, 15.0),      # rx0 alone hears a carrier on ch-a for 29 s (a DC offset, a birdie)
    (0, (1, 2), 12.0, 14.0, 12.0),   # two transmissions the other two hear meanwhile
    (0, (1, 2), 20.0, 22.0, 12.0),
    (0, (0, 1, 2), 35.0, 37.0, 12.0),  # and one all three hear, after rx0's carrier has gone
]


def test_a_carrier_one_receiver_hears_alone_is_left_out_and_the_channel_still_finds_the_others(noise_draw):
    band = tracker(lone_carrier_s=5.0)
    events, _ = run_windows(band, noise_draw, 80, bursts=LONE_BURSTS)
    _, ends = starts_and_ends(events)
    spans = [(round(at_s(e.start_ns), 1), round(at_s(e.end_ns), 1), sorted(e.peak_snr_db)) for e in ends]
    assert len(ends) == 4, spans
    lone, first, second, after = ends
    assert at_s(lone.start_ns) == pytest.approx(1.0, abs=0.05) and 5.9 <= at_s(lone.end_ns) <= 7.1, spans
    assert sorted(lone.peak_snr_db) == ["rx0"]
    for end, (start_s, end_s) in ((first, (12.0, 14.0)), (second, (20.0, 22.0)), (after, (35.0, 37.0))):
        assert abs(at_s(end.start_ns) - start_s) * 1e9 <= 2 * FRAME_NS and abs(at_s(end.end_ns) - end_s) * 1e9 <= 2 * FRAME_NS
    assert sorted(first.peak_snr_db) == sorted(second.peak_snr_db) == ["rx1", "rx2"]  # rx0 is left out meanwhile
    assert sorted(after.peak_snr_db) == ["rx0", "rx1", "rx2"]  # and back once its carrier has gone
    assert not band.left_out.any()


def test_without_leaving_lone_carriers_out_one_receivers_carrier_swallows_the_channel(noise_draw):
    events, _ = run_windows(tracker(lone_carrier_s=None), noise_draw, 80, bursts=LONE_BURSTS)
    _, ends = starts_and_ends(events)
    assert at_s(ends[0].start_ns) == pytest.approx(1.0, abs=0.05) and at_s(ends[0].end_ns) == pytest.approx(30.0, abs=0.05)
    assert len(ends) == 2  # the transmissions at 12 s and 20 s are lost inside it


# ----------------------------------------------------------------------------------------------------
# End to end on real mel frames


def keyed_burst_iq(rng: np.random.Generator, n_samples: int, start: int, end: int, snr_db: float,
                   bandwidth_hz: float = 8_000.0) -> np.ndarray:
    """Noise-like burst of ``bandwidth_hz`` centred at 0 Hz, keyed over samples [start, end), ``snr_db`` over the
    channel's noise at NOISE_DBM."""
    spectrum = np.fft.fft(rng.standard_normal(n_samples) + 1j * rng.standard_normal(n_samples))
    spectrum[np.abs(np.fft.fftfreq(n_samples, 1.0 / SPEC.sample_rate_hz)) > bandwidth_hz / 2] = 0.0
    burst = np.fft.ifft(spectrum)
    burst *= np.sqrt(10.0 ** ((NOISE_DBM + snr_db) / 10.0) / np.mean(np.abs(burst) ** 2))
    keyed = np.zeros(n_samples, dtype=np.complex128)
    keyed[start:end] = burst[start:end]
    return keyed.astype(np.complex64)


def keyed_tone_iq(n_samples: int, start: int, end: int, snr_db: float, offset_hz: float = 2_000.0) -> np.ndarray:
    """A tone ``offset_hz`` from the channel centre, keyed over samples [start, end), ``snr_db`` over the channel's
    noise at NOISE_DBM."""
    amplitude = np.sqrt(10.0 ** ((NOISE_DBM + snr_db) / 10.0))
    keyed = np.zeros(n_samples, dtype=np.complex128)
    keyed[start:end] = amplitude * np.exp(2j * np.pi * offset_hz / SPEC.sample_rate_hz * np.arange(start, end))
    return keyed.astype(np.complex64)


@pytest.mark.parametrize("kind", ["noise-like burst", "tone"])
def test_a_keyed_burst_in_real_mel_frames_is_one_emission_at_its_times(kind):
    rng = np.random.default_rng(21)
    n_windows = 4
    n_samples = n_windows * SPEC.n_samples
    start_s, end_s = 0.8, 1.4                      # window 1 and window 2
    start, end = int(start_s * SPEC.sample_rate_hz), int(end_s * SPEC.sample_rate_hz)
    if kind == "tone":
        signal = keyed_tone_iq(n_samples, start, end, 10.0)
    else:
        signal = keyed_burst_iq(rng, n_samples, start, end, 10.0)
    iq = noise_iq(rng, n_samples, NOISE_DBM) + signal
    receivers = np.stack([iq, noise_iq(rng, n_samples, NOISE_DBM)])   # rx1 hears only noise
    one_channel = EmissionTracker.from_rule(RULE, [Channel("ch-a", 446_006_250.0)], ["rx0", "rx1"])
    events = []
    for index in range(n_windows):
        frames = mel_frames_dbm(receivers[:, index * SPEC.n_samples:(index + 1) * SPEC.n_samples], SPEC)
        snr, noise = channel_frame_levels(RULE, frames, SPEC)
        assert np.median(noise) == pytest.approx(NOISE_DBM, abs=0.3)
        events += one_channel.update(snr[None], noise[None], np.array([True, True]),
                                     frame_times_ns(T0_NS + index * WINDOW_NS, SPEC)).events
    events += one_channel.flush().events
    starts, ends = starts_and_ends(events)
    assert len(starts) == 1 and len(ends) == 1
    assert abs(at_s(ends[0].start_ns) - start_s) * 1e9 <= FRAME_NS
    assert abs(at_s(ends[0].end_ns) - end_s) * 1e9 <= FRAME_NS
    assert ends[0].receivers == ("rx0",)
    assert ends[0].peak_snr_db["rx0"] == pytest.approx(10.0, abs=2.0)


def test_channel_frame_levels_snr_is_the_rules_frame_snr(real_noise_frames):
    frames = real_noise_frames[:3]
    snr, noise = channel_frame_levels(RULE, frames, SPEC)
    assert snr.shape == noise.shape == (3, SPEC.n_frames)
    np.testing.assert_array_equal(snr, frame_snr_db(frames, SPEC, BANDS, TOP_HZ))
    with pytest.raises(ValueError, match=r"expected \[\.\.\., 32, T\]"):
        channel_frame_levels(RULE, frames[:, :10], SPEC)


def test_frame_times_are_frame_centres():
    times = frame_times_ns(T0_NS, SPEC)
    assert times.shape == (SPEC.n_frames,)
    assert times[0] - T0_NS == round(SPEC.n_fft / 2 / SPEC.sample_rate_hz * 1e9)
    assert np.all(np.abs(np.diff(times) - FRAME_NS) <= 1)


# ----------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(("options", "message"), [
    ({"off_snr_db": 7.0}, "off_snr_db: expected at most on_snr_db"),
    ({"min_receivers": 0}, "min_receivers: expected an integer from 1 to 3"),
    ({"min_receivers": 4}, "min_receivers"),
    ({"hangover_s": -0.1}, "hangover_s: expected a finite duration >= 0 s"),
    ({"min_duration_s": float("nan")}, "min_duration_s"),
    ({"floor_time_constant_s": 0.0}, "floor_time_constant_s: expected a finite duration > 0 s"),
    ({"lone_carrier_s": 0.0}, "lone_carrier_s: expected a finite duration > 0 s"),
    ({"on_snr_db": "loud"}, "on_snr_db: expected a number"),
])
def test_bad_parameters_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        EmissionTracker(CHANNELS, RECEIVERS, **{"on_snr_db": 6.0, **options})


def test_bad_channels_and_receivers_are_named():
    with pytest.raises(ValueError, match="channels: expected unique names, got 'a'"):
        EmissionTracker([Channel("a", 1.0), Channel("a", 2.0)], RECEIVERS, on_snr_db=6.0)
    with pytest.raises(ValueError, match="receiver_ids: expected unique names, got 'rx0'"):
        EmissionTracker(CHANNELS, ["rx0", "rx0"], on_snr_db=6.0)
    with pytest.raises(ValueError, match=r"channels\[0\].centre_hz"):
        EmissionTracker([Channel("a", float("inf"))], RECEIVERS, on_snr_db=6.0)
    with pytest.raises(TypeError, match=r"channels\[0\]: expected a Channel"):
        EmissionTracker([("a", 1.0)], RECEIVERS, on_snr_db=6.0)


def test_bad_windows_are_named():
    band = tracker()
    times = frame_times_ns(T0_NS, SPEC)
    levels = np.zeros((2, 3, SPEC.n_frames))
    present = np.ones(3, bool)
    with pytest.raises(ValueError, match=r"snr_db: expected shape \[channels, receivers, frames\] = \[2, 3, 45\]"):
        band.update(levels[:, :2], levels, present, times)
    with pytest.raises(ValueError, match="present: expected a bool array of shape"):
        band.update(levels, levels, np.ones(2, bool), times)
    with pytest.raises(ValueError, match="frame_times_ns: expected strictly increasing"):
        band.update(levels, levels, present, times[::-1])
    with pytest.raises(ValueError, match="frame_times_ns: expected a non-empty 1-D integer array"):
        band.update(levels, levels, present, times.astype(float))
    band.update(levels - 120.0, levels - 110.0, present, times)
    with pytest.raises(ValueError, match="is not after the previous window's last"):
        band.update(levels, levels, present, times)


def test_non_finite_levels_are_not_heard_and_leave_the_floor_alone():
    band = EmissionTracker([Channel("ch-a", 446_006_250.0)], ["rx0", "rx1"], on_snr_db=6.0)
    snr = np.full((1, 2, SPEC.n_frames), -20.0)
    noise = np.full((1, 2, SPEC.n_frames), NOISE_DBM)
    snr[0, 0] = np.nan                           # rx0: nothing usable at all
    snr[0, 1, 5:25], noise[0, 1, 5:25] = np.inf, 1e300
    result = band.update(snr, noise, np.array([True, True]), frame_times_ns(T0_NS, SPEC))
    assert result == band.flush() == type(result)((), ())
    assert np.isnan(band.floor_dbm[0, 0]) and band.floor_dbm[0, 1] == pytest.approx(NOISE_DBM)
    assert band.dropped_short.tolist() == [0]


def test_memory_does_not_grow_with_the_number_of_emissions(noise_draw):
    band = tracker()
    rng = np.random.default_rng(4)
    shape = (len(CHANNELS), len(RECEIVERS), SPEC.n_frames)

    def feed(first: int, n_windows: int) -> int:
        """Windows with a 0.2 s burst on ch-a in each; returns how many emissions started."""
        started = 0
        for index in range(first, first + n_windows):
            times = frame_times_ns(T0_NS + index * WINDOW_NS, SPEC)
            keyed = [(0, (0, 1), index * 0.5 + 0.1, index * 0.5 + 0.3, 10.0)]
            snr, noise = noise_draw.draw(rng, shape, burst_snr_db(times, keyed))
            events = band.update(snr, noise, np.ones(len(RECEIVERS), bool), times).events
            started += sum(isinstance(event, EmissionStart) for event in events)
        return started

    tracemalloc.start()
    try:
        feed(0, 300)   # numpy's own caches fill up over the first few hundred calls (about 4 kB)
        before_bytes = tracemalloc.get_traced_memory()[0]
        assert feed(300, 300) == 300
        grown_bytes = tracemalloc.get_traced_memory()[0] - before_bytes
    finally:
        tracemalloc.stop()
    # An event kept per emission would take about 300 x 200 bytes (keeping ended emissions grew 153 000); in a full
    # test run other code's caches add a few hundred bytes of their own in between, so allow 8 kB (27 B per emission).
    assert grown_bytes < 8 * 1024
