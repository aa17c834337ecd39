"""heimdall bench band: a tiny run prints every figure the issue's targets are checked against, the band plan and
input it builds are what they claim; and the band aligner's reuse of window arrays (a speed change the bench led to)
cuts the same windows as fresh memory."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from streamer.tools import bench_band


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_band.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_a_tiny_run_prints_cpu_tick_rss_load_and_both_baselines(capsys):
    args = _args("--receivers", "3", "--rate", "240000", "--channels", "16", "--active", "3", "--seconds", "1")
    assert bench_band.run(args) == 0
    out = capsys.readouterr().out
    for line in ("CPU per stream second", "per tick (10 ms block)", "per window (poll)", "peak RSS",
                 "baseline: band front end", "baseline: best FFT", "pipeline / front end"):
        assert line in out, line
    assert out.count("load average") == 2 and "3 distinct" in out
    windows = int(out.split(" windows and ")[0].rsplit(" ", 1)[-1])
    localizations = int(out.split(" windows and ")[1].split(" ")[0])
    assert windows == 2 and localizations > 0, out  # one second timed: two windows, the keyed carriers localized


def test_the_plan_is_centred_on_the_receivers_and_the_carriers_sit_on_distinct_inner_channels():
    plan = bench_band.band_plan(2.4e6, 12_500.0, 192)
    assert (plan.start_hz, plan.stop_hz) == (bench_band.CENTER_HZ - 96 * 12_500.0, bench_band.CENTER_HZ + 95 * 12_500.0)
    chosen = bench_band.active_channels(192, 16)
    assert len(set(chosen.tolist())) == 16 and chosen.min() >= 1 and chosen.max() <= 190
    with pytest.raises(ValueError, match="--active 20"):
        bench_band.active_channels(16, 20)
    with pytest.raises(ValueError, match="--channels 300"):
        bench_band.band_plan(2.4e6, 12_500.0, 300)


def test_every_receiver_hears_the_carriers_on_their_channels_at_its_own_level():
    rate, n = 240_000.0, 48_000
    offsets = np.array([-25_000.0, 50_000.0])
    signals = bench_band.receiver_signals(3, n, rate, offsets, 12_500.0)
    assert not np.array_equal(signals[0], signals[1])
    spectrum = np.abs(np.fft.fft(signals[0][: n // 2])) ** 2  # the first half: both keyed on at the start
    freqs = np.fft.fftfreq(n // 2, 1 / rate)
    in_channel = [spectrum[np.abs(freqs - f) < 6_250.0].sum() for f in (*offsets, 0.0)]
    assert min(in_channel[:2]) > 10 * in_channel[2]  # >= 10 dB over the noise in an idle channel
    levels = [np.abs(np.fft.fft(x[: n // 2])[np.abs(freqs - offsets[0]) < 6_250.0]).sum() for x in signals]
    assert len({round(level, 3) for level in levels}) == 3  # each receiver hears its own level


def test_windows_read_in_place_from_the_rings_hold_their_samples_when_several_are_cut_in_one_poll():
    """The band aligner hands out each receiver's rows as views of its ring (no window-sized copy): windows cut
    together in one poll (the daemon polling late) hold the same samples as windows cut one per poll, zeros where a
    receiver stopped sending or a channel is outside its band."""
    from receivers.base import IQBlock
    from streamer.config import ChannelConfig
    from streamer.daemon.band_lane import BandAligner, BandLane
    from streamer.daemon.lane import LaneSettings

    rate, center, t0_ns, block_n = 240_000.0, 145.525e6, 1_790_000_000_000_000_000, 12_000
    plan = (ChannelConfig("A", 145.5e6, 12_500.0), ChannelConfig("B", 145.55e6, 12_500.0),
            ChannelConfig("far", 146.5e6, 12_500.0))
    settings = LaneSettings(plan[0].centre_hz, 24_000.0, 4.0, clock_jump_tolerance_s=0.05)
    options = {"window_s": 0.5, "sample_rate_hz": 24_000.0, "late_tolerance_s": 0.2, "offline_after_s": 0.4}
    rng = np.random.default_rng(5)
    streams = [(rng.standard_normal(60 * block_n) + 1j * rng.standard_normal(60 * block_n)).astype(np.complex64)
               for _ in range(2)]

    def windows(poll_every: int) -> tuple[list, int]:
        lanes = [BandLane(f"rx{i}", settings, plan, lambda *a: None, lambda *a: None) for i in range(2)]
        aligner = BandAligner(lanes, len(plan), **options)
        cut, most = [], 0
        for k in range(60):
            host_ns = t0_ns + round(k * block_n * 1e9 / rate)
            for i, lane in enumerate(lanes):
                if i == 0 or k < 30:  # rx1 falls silent half-way
                    lane.push(IQBlock(lane.receiver_id, streams[i][k * block_n : (k + 1) * block_n], k * block_n,
                                      host_ns, "gps", rate, center))
                    aligner.mark_arrival(lane.receiver_id, host_ns)
            if k % poll_every == poll_every - 1:
                ready = aligner.poll(host_ns)
                most = max(most, len(ready))
                cut += [(w.t_start_ns, w.samples, w.present.copy(), w.covered.copy()) for w in ready]
        return cut, most

    (each, _), (together, most) = windows(1), windows(20)
    assert most >= 2, "several windows cut in one poll"
    assert len(each) == len(together) >= 4
    assert any(not present.all() for _, _, present, _ in each), "rx1 masked in the later windows"
    for (t_a, a, present_a, covered_a), (t_b, b, present_b, covered_b) in zip(each, together):
        assert t_a == t_b
        np.testing.assert_array_equal(present_a, present_b)
        np.testing.assert_array_equal(covered_a, covered_b)
        np.testing.assert_array_equal(a, b)
        assert not a[~present_a].any() and not a[:, 2].any(), "zeros where absent and for the channel off the band"
        assert a[present_a][:, :2].all(), "the covered channels hold samples"


@pytest.mark.parametrize(("option", "value", "named"), [("--active", "300", "--active 300"),
                                                         ("--buffer-s", "0.8", "--buffer-s must exceed"),
                                                         ("--receivers", "0", "--receivers must be at least 1")])
def test_a_bad_option_is_a_usage_error_naming_it(option, value, named, capsys):
    from streamer import cli

    with pytest.raises(SystemExit) as exited:
        cli.main(["bench", "band", option, value])
    assert exited.value.code == 2 and named in capsys.readouterr().err
