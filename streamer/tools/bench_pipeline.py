"""``heimdall bench pipeline``: the processing path (lanes: channelizer + ring buffer; aligner; features;
estimator) on R receivers at a given input rate, as fast as possible, against the machine's raw FFT
throughput on the same samples measured in the same run.

Input is a simulated NBFM signal plus noise generated before the clock starts (generation is not the
daemon's work). Each window's input is fed in blocks of 10 ms, as an adapter would.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from receivers.base import IQBlock
from streamer import config as config_mod
from streamer.daemon.metrics import Metrics
from streamer.daemon.pipeline import Pipeline
from streamer.estimators.build import build_estimators


def _input_signal(n: int, rate_hz: float, offset_hz: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate_hz
    phase = 2 * np.pi * offset_hz * t + (2500.0 / 1000.0) * np.sin(2 * np.pi * 1000.0 * t)
    noise = (rng.standard_normal(n) + 1j * rng.standard_normal(n)) * 1e-4
    return (1e-2 * np.exp(1j * phase) + noise).astype(np.complex64)


def _raw_fft_rate(samples: np.ndarray, n_fft: int, repeats: int = 3) -> float:
    """Samples/s numpy's FFT gets through the same data cut in n_fft frames (best of ``repeats``)."""
    frames = samples[: len(samples) // n_fft * n_fft].reshape(-1, n_fft)
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        np.fft.fft(frames, axis=-1)
        best = min(best, time.perf_counter() - t)
    return frames.size / best


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``heimdall bench pipeline``."""
    parser.add_argument("--receivers", type=int, default=7)
    parser.add_argument("--rate", type=float, default=2.4e6, help="input rate per receiver (samples/s)")
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("-c", "--config", help="config whose features and estimator to use (default: embedded)")


def bench_pipeline(args) -> int:
    base = config_mod.load(args.config)
    rx_template = base.receivers
    n_rx = args.receivers
    receivers = tuple(
        dataclasses.replace(rx_template[i % len(rx_template)], id=f"rx{i}")
        for i in range(n_rx)
    )
    cfg = dataclasses.replace(base, receivers=receivers, metrics=dataclasses.replace(base.metrics, enabled=False))
    spec = cfg.features
    rate = float(args.rate)
    window_n = int(round(spec.window_s * rate))
    block_n = int(round(0.01 * rate))
    offset_hz = 50_000.0 if rate >= 200_000 else 0.0
    center = cfg.network.target_freq_hz - offset_hz
    signal = _input_signal(window_n * 2, rate, offset_hz, seed=1)

    clock = {"ns": 1_700_000_000_000_000_000}
    pipeline = Pipeline(cfg, metrics=Metrics(), send=lambda topic, msg: True, estimators=build_estimators(cfg), clock_ns=lambda: clock["ns"])
    ingest_cpu, window_cpu, window_wall = [], [], []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    index = 0
    n_windows = args.windows + 2  # the first two fill the filters and the aligner
    for w in range(n_windows):
        chunk = signal[(w % 2) * window_n : (w % 2 + 1) * window_n]
        c0 = time.thread_time()
        for k in range(0, window_n, block_n):
            piece = chunk[k : k + block_n]
            t0 = 1_700_000_000_000_000_000 + int(round(index * 1e9 / rate))
            for rx in receivers:
                pipeline.push(IQBlock(rx.id, piece, index, t0, "host", rate, center), arrival_ns=t0)
            index += len(piece)
            clock["ns"] = t0
        c1, t1 = time.thread_time(), time.perf_counter()
        published = pipeline.poll()
        c2, t2 = time.thread_time(), time.perf_counter()
        if w >= 2:
            ingest_cpu.append(c1 - c0)
            if published:
                window_cpu.append(c2 - c1)
                window_wall.append(t2 - t1)
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    total_in = n_rx * index
    fft_rate = _raw_fft_rate(np.tile(signal, max(1, n_rx // 2)), spec.n_fft)
    pipe_rate = total_in / cpu  # per CPU second: the machine is shared, CPU time is what the daemon costs
    pct = lambda xs, q: 1e3 * float(np.percentile(xs, q)) if xs else float("nan")  # noqa: E731
    print(f"bench pipeline: {n_rx} receivers x {rate / 1e6:g} MS/s, {args.windows} windows of {spec.window_s} s, "
          f"estimator {cfg.estimator.kind}, {len(window_cpu)} localized")
    print(f"  input processed          {pipe_rate / 1e6:8.2f} MS/s per CPU second ({total_in / wall / 1e6:.2f} MS/s wall)")
    print(f"  CPU per real-time second {cpu / (n_windows * spec.window_s):8.3f} of one core "
          f"(ingest: checks, channelizer, ring buffer: {np.mean(ingest_cpu) / spec.window_s:.3f})")
    print(f"  per-window processing    p50 {pct(window_cpu, 50):.1f} ms  p99 {pct(window_cpu, 99):.1f} ms CPU; "
          f"p50 {pct(window_wall, 50):.1f} ms  p99 {pct(window_wall, 99):.1f} ms wall "
          f"(aligner, features, estimator, message)")
    print(f"  raw numpy FFT            {fft_rate / 1e6:8.2f} MS/s on the same samples ({spec.n_fft}-point frames, wall)")
    print(f"  pipeline / raw FFT       {pipe_rate / fft_rate:8.3f}")
    return 0


run = bench_pipeline  # the name streamer/tools/bench.py calls
