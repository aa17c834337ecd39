"""``heimdall bench band``: the band path (``daemon.band.BandPipeline``: band lanes with their filter bank, ring and
accounting; the band aligner; mel features and the detection rule per channel; the emission tracker; interim and
final estimates; messages) on R receivers at a given input rate, as fast as possible, on one worker thread, against
the filter bank alone and the best single-thread FFT of the same samples, measured in the same run.

Input: for each receiver its own seeded complex64 noise plus ``--active`` keyed NBFM carriers, one per channel on
channels spread over the band, each keyed on for ``ON_FRACTION`` of a ``LOOP_S`` cycle at its own phase (so up
to ``--active`` channels carry an emission at once) and heard at each receiver with its own SNR in the channel
(``MIN_SNR_DB`` to ``MIN_SNR_DB`` + 20 dB). Generated before the clock starts (generation is not the daemon's
work), ``LOOP_S`` seconds per receiver, fed in a loop in 10 ms blocks, every receiver's block of the same 10 ms
handed over together (``Pipeline.push_many``), as the daemon's main loop does. The plan is a ``[band]`` of
``--channels`` channels of ``--spacing`` Hz centred on the receivers' tuning; a channel whose edge reaches past a
receiver's band is masked for it, as in the daemon.

Printed: CPU seconds per second of stream (every thread of the process; below 1: real time on one core), the
per-tick wall time, once the rings have filled (one tick: one 10 ms block of every receiver pushed, then ``poll``, as ``Daemon.step`` does;
p50, p99, max) and per window, peak RSS of the process (``ru_maxrss``, the input included), the load average at
start and end, and the baselines in CPU seconds per second of stream: the filter bank alone on the same blocks,
and the best FFT this machine has of the same samples cut in ``N``-point frames (``N``: the bank's channel count).

Examples (shell)
----------------
``heimdall bench band``
``heimdall bench band --receivers 3 --channels 16 --active 4 --seconds 2``
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import time

import numpy as np

from receivers.base import IQBlock
from streamer import config as config_mod
from streamer.config import BandConfig
from streamer.daemon.band import BandPipeline
from streamer.daemon.band_lane import BandFrontEnd
from streamer.daemon.metrics import Metrics
from streamer.daemon.pipeline import limit_blas_threads
from streamer.estimators.build import build_estimators
from streamer.tools.bench_pipeline import BLOCK_S, T0_NS, InputPool, _fft_rates

#: Seconds of distinct input per receiver, fed in a loop.
LOOP_S = 2.0
#: Share of each ``LOOP_S`` cycle a carrier is keyed on.
ON_FRACTION = 0.6
#: Lowest in-channel SNR (dB over the noise in the channel) a carrier has at a receiver.
MIN_SNR_DB = 10.0
#: Targets of the band path (docs/performance.md, Band watch): CPU per stream second, per-tick p99 (s), RSS (bytes).
TARGET_CPU_PER_S = 1.0
TARGET_TICK_P99_S = 0.100
TARGET_RSS_BYTES = 1.5 * 2**30
CENTER_HZ = 145.0e6


def band_plan(rate_hz: float, spacing_hz: float, n_channels: int) -> BandConfig:
    """``n_channels`` channels of ``spacing_hz`` (Hz) centred on ``CENTER_HZ`` (the lowest half a channel lower when
    the count is even, as the filter bank numbers them: ``-(N//2) .. (N-1)//2``)."""
    if n_channels < 1 or n_channels * spacing_hz > rate_hz:
        raise ValueError(f"bench band: --channels {n_channels} x --spacing {spacing_hz} Hz must fit in --rate "
                         f"{rate_hz} Hz (at least one channel)")
    start = CENTER_HZ - (n_channels // 2) * spacing_hz
    return BandConfig(start_hz=start, stop_hz=start + (n_channels - 1) * spacing_hz, spacing_hz=spacing_hz)


def active_channels(n_channels: int, n_active: int) -> np.ndarray:
    """Indices of ``n_active`` channels spread evenly over the plan, away from its edges."""
    if not 0 <= n_active <= max(0, n_channels - 2):
        raise ValueError(f"bench band: --active {n_active} must be in [0, {max(0, n_channels - 2)}] for "
                         f"{n_channels} channels")
    return np.linspace(1, n_channels - 2, n_active).round().astype(int) if n_active else np.zeros(0, int)


def receiver_signals(n_receivers: int, n: int, rate_hz: float, offsets_hz: np.ndarray, spacing_hz: float,
                     ) -> list[np.ndarray]:
    """Each receiver's input: its own noise (1 per sample, complex) plus a keyed NBFM carrier at each of
    ``offsets_hz`` (Hz from the centre), whose amplitude is drawn per receiver (``MIN_SNR_DB`` .. +20 dB in
    ``spacing_hz``)."""
    rngs = [np.random.default_rng(1000 + rx) for rx in range(n_receivers)]
    signals = [(rng.standard_normal(n, dtype=np.float32) + 1j * rng.standard_normal(n, dtype=np.float32))
               .astype(np.complex64) for rng in rngs]
    t = np.arange(n) / rate_hz
    noise_in_channel = 2.0 * spacing_hz / rate_hz  # the noise's power (2 per sample) over the channel's share
    for i, offset in enumerate(offsets_hz):
        tone_hz = 700.0 + 53.0 * i
        phase = 2 * np.pi * offset * t + (2500.0 / tone_hz) * np.sin(2 * np.pi * tone_hz * t + i)
        keyed = ((t / LOOP_S + i / len(offsets_hz)) % 1.0) < ON_FRACTION
        carrier = np.where(keyed, np.exp(1j * phase), 0).astype(np.complex64)
        for rng, x in zip(rngs, signals):
            x += np.float32(np.sqrt(noise_in_channel * 10 ** ((MIN_SNR_DB + 20.0 * rng.random()) / 10))) * carrier
    return signals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``heimdall bench band``."""
    parser.add_argument("--receivers", type=int, default=7)
    parser.add_argument("--rate", type=float, default=2.4e6, help="input rate per receiver (samples/s)")
    parser.add_argument("--channels", type=int, default=192, help="channels in the plan")
    parser.add_argument("--spacing", type=float, default=12_500.0, help="channel spacing (Hz)")
    parser.add_argument("--active", type=int, default=16, help="keyed carriers, one per channel")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of stream timed (after the rings fill)")
    parser.add_argument("--buffer-s", type=float, default=None,
                        help="pipeline.buffer_s, the ring buffer per receiver (s; default: the config's)")
    parser.add_argument("-c", "--config", help="config whose features, rule and estimators to use (default: embedded)")


def _config(args) -> config_mod.Config:
    """The config for R receivers (positions repeat the config's), the band plan, one worker, no metrics server."""
    base = config_mod.load(args.config)
    receivers = tuple(dataclasses.replace(base.receivers[i % len(base.receivers)], id=f"rx{i}")
                      for i in range(args.receivers))
    return dataclasses.replace(
        base, receivers=receivers, channels=(), band=band_plan(args.rate, args.spacing, args.channels),
        metrics=dataclasses.replace(base.metrics, enabled=False),
        pipeline=dataclasses.replace(base.pipeline, workers=1, min_receivers=min(base.pipeline.min_receivers, args.receivers),
                                     buffer_s=base.pipeline.buffer_s if args.buffer_s is None else args.buffer_s))


def _pipeline_run(cfg, pool: InputPool, rate: float, n_blocks: int, settle_blocks: int) -> dict:
    """The band pipeline over ``settle_blocks + n_blocks`` ticks; times the last ``n_blocks``."""
    ids = [rx.id for rx in cfg.receivers]
    clock = {"ns": T0_NS}
    pipeline = BandPipeline(cfg, metrics=Metrics(), send=lambda topic, msg: True, estimators=build_estimators(cfg),
                            clock_ns=lambda: clock["ns"])
    tick_wall, window_wall, locs, windows = [], [], 0, 0
    try:
        for k in range(settle_blocks + n_blocks):
            if k == settle_blocks:
                cpu0, wall0 = time.process_time(), time.perf_counter()
            index = k * pool.block_n
            t0 = T0_NS + round(index * 1e9 / rate)
            clock["ns"] = t0
            blocks = [IQBlock(rid, pool.block(i, k), index, t0, "host", rate, CENTER_HZ) for i, rid in enumerate(ids)]
            w0 = time.perf_counter()
            pipeline.push_many(blocks, arrival_ns=t0)
            w1, windows_before = time.perf_counter(), pipeline.windows
            published = pipeline.poll()
            w2 = time.perf_counter()
            if k >= settle_blocks:
                tick_wall.append(w2 - w0)
                locs += len(published)
                if pipeline.windows > windows_before:
                    window_wall.append(w2 - w1)
                    windows += pipeline.windows - windows_before
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        pipeline.close()
    return {"cpu": cpu, "wall": wall, "seconds": n_blocks * BLOCK_S, "tick_wall": tick_wall, "window_wall": window_wall,
                "locs": locs, "windows": windows}


def _bank_cpu(cfg, pool: InputPool, rate: float, n_blocks: int) -> float:
    """CPU seconds of every receiver's band front end alone (filter bank and resamplers) over the same blocks."""
    fronts = [BandFrontEnd(rate, CENTER_HZ, cfg.channel_plan(), cfg.features.sample_rate_hz) for _ in cfg.receivers]
    cpu0 = time.process_time()
    for k in range(n_blocks):
        for i, front in enumerate(fronts):
            front.process(IQBlock(f"rx{i}", pool.block(i, k), k * pool.block_n, T0_NS, "host", rate, CENTER_HZ))
    return time.process_time() - cpu0


def _checked(args) -> tuple[config_mod.Config, np.ndarray]:
    """The config and the keyed channels, or a usage error naming the option (argparse.ArgumentError)."""
    try:
        for name in ("receivers", "channels"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}")
        if not args.seconds > 0:
            raise ValueError(f"--seconds must be positive, got {args.seconds}")
        cfg = _config(args)
        if not cfg.pipeline.buffer_s > 2 * cfg.features.window_s:
            raise ValueError(f"--buffer-s must exceed two windows ({2 * cfg.features.window_s:g} s), got "
                             f"{cfg.pipeline.buffer_s}")
        return cfg, active_channels(len(cfg.channel_plan()), args.active)
    except ValueError as exc:
        raise argparse.ArgumentError(None, str(exc).removeprefix("bench band: ")) from None


def bench_band(args) -> int:
    cfg, chosen = _checked(args)
    ncpu = os.cpu_count() or 1
    load0 = os.getloadavg()
    blas = limit_blas_threads()
    rate = float(args.rate)
    block_n = round(BLOCK_S * rate)
    loop_n = round(LOOP_S * rate) // block_n * block_n
    plan = cfg.channel_plan()
    offsets = np.array([plan[c].centre_hz - CENTER_HZ for c in chosen])
    pool = InputPool(receiver_signals(args.receivers, loop_n, rate, offsets, args.spacing), block_n)
    n_blocks = max(1, round(args.seconds / BLOCK_S))
    # Timing starts once every ring buffer has filled (pipeline.buffer_s) and a window more: steady state, every
    # page of the rings touched, as in a daemon that has run a while.
    settle_s = cfg.pipeline.buffer_s + cfg.features.window_s
    settle = round(settle_s / BLOCK_S)
    print(f"bench band: {args.receivers} receivers x {rate / 1e6:g} MS/s, {len(plan)} channels of "
          f"{args.spacing / 1e3:g} kHz, {args.active} keyed carriers ({ON_FRACTION:.0%} of each {LOOP_S:g} s), "
          f"{args.seconds:g} s timed after {settle_s:g} s; estimator {cfg.estimator.kind}")
    print(f"  load average             {' '.join(f'{x:.2f}' for x in load0)} at start ({ncpu} CPUs, shared)")
    print(f"  input                    {len(pool.signals)} distinct {LOOP_S:g} s signals ({pool.nbytes / 2**20:.0f} MiB), "
          f"one per receiver; {BLOCK_S * 1e3:g} ms blocks; pipeline.workers 1, buffer_s {cfg.pipeline.buffer_s:g}; {blas}")
    r = _pipeline_run(cfg, pool, rate, n_blocks, settle)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    pct = lambda xs, q: 1e3 * float(np.percentile(xs, q)) if xs else float("nan")
    cpu_per_s = r["cpu"] / r["seconds"]
    tick_p99 = pct(r["tick_wall"], 99)
    print(f"  CPU per stream second    {cpu_per_s:8.3f} s (all threads; wall {r['wall'] / r['seconds']:.3f} s): "
          f"{'in' if cpu_per_s < TARGET_CPU_PER_S else 'NOT in'} real time on one core")
    print(f"  per tick (10 ms block)   p50 {pct(r['tick_wall'], 50):.1f} ms  p99 {tick_p99:.1f} ms  "
          f"max {1e3 * max(r['tick_wall']):.1f} ms wall; target p99 < {TARGET_TICK_P99_S * 1e3:.0f} ms: "
          f"{'met' if tick_p99 < TARGET_TICK_P99_S * 1e3 else 'NOT met'}")
    print(f"  per window (poll)        p50 {pct(r['window_wall'], 50):.1f} ms  p99 {pct(r['window_wall'], 99):.1f} ms "
          f"wall; {r['windows']} windows and {r['locs']} localizations while timed")
    print(f"  peak RSS                 {rss / 2**20:8.0f} MiB (input included: {pool.nbytes / 2**20:.0f} MiB); target < "
          f"{TARGET_RSS_BYTES / 2**30:g} GiB: {'met' if rss < TARGET_RSS_BYTES else 'NOT met'}")
    bank_per_s = _bank_cpu(cfg, pool, rate, n_blocks) / r["seconds"]
    print(f"  baseline: band front end {bank_per_s:8.3f} s CPU per stream second (filter bank + resamplers alone, "
          f"same blocks)")
    n_fft = BandFrontEnd(rate, CENTER_HZ, plan, cfg.features.sample_rate_hz).bank.n_channels
    rates = _fft_rates(pool, n_fft)
    best = max(rates, key=rates.get)
    fft_per_s = args.receivers * rate / rates[best]
    print(f"  baseline: best FFT       {fft_per_s:8.3f} s CPU per stream second ({best}, {n_fft}-point frames of the "
          f"same samples, one thread; {', '.join(f'{k} {v / 1e6:.1f}' for k, v in rates.items())} MS/s)")
    print(f"  pipeline / front end     {cpu_per_s / bank_per_s:8.2f} x;  pipeline / FFT {cpu_per_s / fft_per_s:.1f} x")
    print(f"  load average             {' '.join(f'{x:.2f}' for x in os.getloadavg())} at end")
    return 0


run = bench_band  # the name streamer/tools/bench.py calls
