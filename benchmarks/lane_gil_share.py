"""The share of one lane's block work spent in numpy kernels, which release the GIL: the part that
``pipeline.workers`` can run on a second core at once. Single thread, BLAS on one thread: ``Lane.push`` of a
10 ms block at 2.4 MS/s against the same kernels timed alone: the checks, then for the channelizer's cascade
the first stage (history append, mixing-decimating matrix product, diagonal sums, oscillator) and the final
polyphase stage (history append, matrix products) on its ``1/D1`` as many samples; for a single stage the
mixer and the polyphase products on the whole block. The rest is Python, which holds the GIL; it bounds the
speed-up of N workers at ``1 / (1 - share + share / N)``.

    python benchmarks/lane_gil_share.py
"""

from __future__ import annotations

import time

import numpy as np

from receivers.base import IQBlock
from streamer.daemon.lane import Lane, LaneSettings
from streamer.daemon.pipeline import limit_blas_threads
from streamer.tools.bench_pipeline import _input_signal

RATE_HZ = 2.4e6
BLOCK_N = 24_000
BLOCKS = 400


def main() -> None:
    limit_blas_threads()
    signal = _input_signal(BLOCK_N * 200, RATE_HZ, 50e3, seed=1)
    lane = Lane("a", LaneSettings(145.5e6, 24_000.0, 4.0, 0.05), lambda *a: None, lambda *a: None)

    def push(k0: int, k1: int) -> None:
        for k in range(k0, k1):
            samples = signal[(k % 200) * BLOCK_N : (k % 200 + 1) * BLOCK_N]
            t0_ns = 10**18 + int(k * BLOCK_N * 1e9 / RATE_HZ)
            lane.push(IQBlock("a", samples, k * BLOCK_N, t0_ns, "host", RATE_HZ, 145.45e6))

    push(0, 20)
    t = time.thread_time()
    push(20, 20 + BLOCKS)
    total = (time.thread_time() - t) / BLOCKS

    channelizer = lane.channelizer
    resampler = channelizer._resampler  # the final (or only) polyphase stage
    stage1 = channelizer._stage1  # the cascade's mixing decimator, or None
    d1 = channelizer.decimation1
    x = signal[:BLOCK_N]
    n2 = BLOCK_N // d1  # the final stage's input per block
    table = np.ones(n2 if stage1 is not None else BLOCK_N, np.complex64)
    rows = -(-n2 // resampler.down)
    span = np.zeros((2, rows, resampler.down), np.float32)
    branch = resampler._bank[0]
    hist1 = np.zeros(len(channelizer.taps1) if stage1 is not None else 0, np.complex64)

    def kernels() -> None:
        if stage1 is not None:
            buf = np.concatenate((hist1, x))
            partial = (buf[: (n2 + stage1._blocks - 1) * d1].view(np.float32).reshape(-1, 2 * d1) @ stage1._matrix)
            s = partial.view(np.complex64).strides
            np.ndarray((n2, stage1._blocks), np.complex64, partial.view(np.complex64), 0, (s[0], s[0] + s[1])).sum(-1)
            mixed = partial.view(np.complex64)[:n2, 0] * (table * np.complex64(1))
        else:
            mixed = x * (table * np.complex64(1))
        grown = np.empty((2, len(mixed) + 2000), np.float32)
        grown[0, 2000:] = mixed.real
        grown[1, 2000:] = mixed.imag
        for _ in range(resampler.up):
            np.ascontiguousarray(span @ branch.T).sum(axis=-1)
        parts = x.view(np.float32)
        parts.min(), parts.max()

    for _ in range(20):
        kernels()
    t = time.thread_time()
    for _ in range(BLOCKS):
        kernels()
    kern = (time.thread_time() - t) / BLOCKS
    share = kern / total
    print(f"up/down {channelizer.up}/{channelizer.down} (D1 {d1}): Lane.push {total * 1e6:.0f} us per 10 ms block; its numpy kernels "
          f"alone {kern * 1e6:.0f} us ({share:.0%}); speed-up bound 2 workers {1 / (1 - share / 2):.2f} x")


if __name__ == "__main__":
    main()
