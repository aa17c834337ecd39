"""Channelizer CPU time per second of input, the cascade against the single-stage path, in one process.

For each input rate (-> 24 kS/s, target 300 kHz or a quarter of the rate off centre) one second of noise goes
through ``Channelizer.process`` in 10 ms blocks, five times; the best CPU time (``time.process_time``; BLAS on
one thread) is printed for

- ``single``: the single-stage path the channelizer had before the cascade (mixer, then one polyphase
  resampler with ``design_taps(up, down)``): a ``Channelizer`` whose cascade is switched off, so both run the
  same ``process`` code around their filters;
- ``now``: ``Channelizer`` as it is (a cascade where ``cascade_decimation`` finds one);

and their ratio. Rates that stay single-stage (``D1 = 1``) are the control: their ratio should be 1.

    python benchmarks/bench_channelizer.py [--seconds 1.0] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import time
from fractions import Fraction

import numpy as np

from receivers.base import IQBlock
from streamer.daemon.pipeline import limit_blas_threads
from streamer.dsp.channelizer import Channelizer, Mixer, PolyphaseResampler, design_taps

RATES_HZ = (240_000.0, 2.048e6, 2.4e6, 10e6)
OUT_RATE_HZ = 24_000.0
CENTER_HZ = 145.0e6


class SingleStageChannelizer(Channelizer):
    """``Channelizer`` with the cascade switched off: the mixer and one resampler over the whole ratio."""

    def __init__(self, in_rate_hz: float, center_freq_hz: float, target_freq_hz: float, out_rate_hz: float) -> None:
        super().__init__(in_rate_hz, center_freq_hz, target_freq_hz, out_rate_hz)
        self.decimation1, self.taps1, self._stage1 = 1, None, None
        self.taps = design_taps(self.up, self.down)
        self._mixer = Mixer(Fraction(target_freq_hz) - Fraction(center_freq_hz), in_rate_hz)
        self._resampler = PolyphaseResampler(self.up, self.down, self.taps)
        self.reset()


def cpu_per_second(ch: Channelizer, blocks: list[IQBlock], repeats: int) -> float:
    """Best CPU seconds over ``repeats`` passes of ``blocks`` through a reset ``ch``."""
    best = float("inf")
    for _ in range(repeats):
        ch.reset()
        start = time.process_time()
        for block in blocks:
            ch.process(block)
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="input seconds per pass (default 1.0)")
    parser.add_argument("--repeats", type=int, default=5, help="passes; the best is kept (default 5)")
    args = parser.parse_args()
    blas = limit_blas_threads()  # after scipy's import (the channelizer's): it loads an OpenBLAS of its own
    print(f"bench channelizer: -> {OUT_RATE_HZ:.0f} S/s, {args.seconds} s of input in 10 ms blocks,"
          f" best of {args.repeats}")
    print(f"  load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} at start ({os.cpu_count()} CPUs); {blas}")
    header = f"{'input rate':>12} {'up/down':>9} {'D1':>4} {'single ms':>10} {'now ms':>8} {'single/now':>10}"
    print(f"  {header}  (CPU ms per s of input)")
    rng = np.random.default_rng(0)
    for fs in RATES_HZ:
        n = int(fs * args.seconds)
        x = ((rng.standard_normal(n) + 1j * rng.standard_normal(n)) * 0.3).astype(np.complex64)
        step = int(fs // 100)
        blocks = [IQBlock("rx", x[i : i + step], i, 10**18, "host", fs, CENTER_HZ) for i in range(0, n, step)]
        target = CENTER_HZ + min(300_000.0, fs / 4)
        single = cpu_per_second(SingleStageChannelizer(fs, CENTER_HZ, target, OUT_RATE_HZ), blocks, args.repeats)
        now_ch = Channelizer(fs, CENTER_HZ, target, OUT_RATE_HZ)
        now = cpu_per_second(now_ch, blocks, args.repeats)
        per_s = 1e3 / args.seconds
        print(f"  {fs / 1e6:>8.3f} MS/s {now_ch.up:>4}/{now_ch.down:<4} {now_ch.decimation1:>4} {single * per_s:>10.2f}"
              f" {now * per_s:>8.2f} {single / now:>9.2f}x")
    print(f"  load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} at end")


if __name__ == "__main__":
    main()
