"""heimdall bench band: a tiny run prints every figure the issue's targets are checked against, and the band plan and
input it builds are what they claim."""

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
