"""``heimdall bench pipeline``: the processing path (lanes: checks, channelizer, ring buffer; aligner;
features; estimators; messages) on R receivers at a given input rate, as fast as possible, against the
best single-thread FFT this machine has over the same input samples, measured in the same run.

Input is simulated NBFM plus noise, different for every receiver, generated before the clock starts
(generation is not the daemon's work). To keep memory bounded it comes from a pool of distinct signals of
one window each (at most ``POOL_BYTES`` in all): where receivers outnumber the pool, receivers that share
a signal read it at different offsets. Each receiver's input is fed in 10 ms blocks, every receiver's
block of the same 10 ms handed over together (``Pipeline.push_many``), as the daemon's main loop does.

Rates are input samples per second; "CPU" is the process's CPU time (every thread of it), "wall" the
elapsed time; "per real-time second" divides by the seconds of signal processed. ``--workers`` sets
``pipeline.workers``; ``--scaling`` runs the same input with 1, 2, 4, ... workers (up to the CPU count).

``--edge-processes N`` runs the same input a second way: the block checks and the channelizer of every receiver
in N forked processes (receivers dealt round-robin), each an ``EdgeChannelizer`` as ``heimdall receiver ID
--channelize`` runs it, handing each 10 ms step's channelized blocks to this process over a pipe; this process
runs the pipeline on them (its lanes' channelizers are then the identity). The edges run at ``EDGE_NICE``. CPU is
then every process's.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import time
from typing import Callable

import numpy as np

from receivers.base import IQBlock
from streamer import config as config_mod
from streamer.core.errors import ModelMismatchError
from streamer.daemon.edge_channelizer import EdgeChannelizer
from streamer.daemon.lane import LaneSettings
from streamer.daemon.metrics import Metrics
from streamer.daemon.pipeline import Pipeline, limit_blas_threads, resolve_workers
from streamer.dsp.frame_fft import measured_fftw
from streamer.estimators.build import build_estimators
from streamer.tools.argtypes import whole_number_at_least_one

#: Most bytes of distinct input signal held in memory.
POOL_BYTES = 256 * 2**20
#: Block length handed to the pipeline (s), as an adapter delivers them.
BLOCK_S = 0.01
#: Per-window latency target (s).
TARGET_P99_S = 0.020
T0_NS = 1_700_000_000_000_000_000
#: Niceness of the edge processes: the lowest priority, so that a window's work is not queued behind channelizing
#: (the edges have buffers, the window a deadline); docs/operations.md recommends it for edges on the daemon's host.
EDGE_NICE = 19


def _input_signal(n: int, rate_hz: float, offset_hz: float, seed: int) -> np.ndarray:
    """NBFM at ``offset_hz`` from the centre (1 kHz tone, 2.5 kHz deviation) plus noise; complex64."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate_hz
    tone_hz = 1000.0 + 37.0 * (seed % 11)  # a different audio tone per signal
    phase = 2 * np.pi * offset_hz * t + (2500.0 / tone_hz) * np.sin(2 * np.pi * tone_hz * t + seed)
    noise = (rng.standard_normal(n) + 1j * rng.standard_normal(n)) * 1e-4
    return (1e-2 * np.exp(1j * phase) + noise).astype(np.complex64)


@dataclasses.dataclass
class InputPool:
    """Distinct signals, each ``n`` samples; receiver ``i`` reads signal ``i % len(signals)`` from an offset."""

    signals: list[np.ndarray]
    block_n: int

    @classmethod
    def make(cls, n_rx: int, n: int, block_n: int, rate_hz: float, offset_hz: float) -> InputPool:
        n = max(block_n, n // block_n * block_n)
        count = max(1, min(n_rx, POOL_BYTES // (n * 8)))
        return cls([_input_signal(n, rate_hz, offset_hz, seed=1 + k) for k in range(count)], block_n)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.signals)

    def block(self, rx: int, k: int) -> np.ndarray:
        """Receiver ``rx``'s ``k``-th block (a view)."""
        signal = self.signals[rx % len(self.signals)]
        blocks = len(signal) // self.block_n
        start = ((k + (rx // len(self.signals)) * 7) % blocks) * self.block_n  # another offset per sharer
        return signal[start : start + self.block_n]


def _fft_rates(pool: InputPool, n_fft: int, repeats: int = 3) -> dict[str, float]:
    """Input samples per CPU second of one thread for each FFT available, over the pool's signals cut in
    ``n_fft``-point frames a block at a time (best of ``repeats``; NaN when a signal is shorter than a frame)."""
    import scipy.fft

    ffts: dict[str, Callable[[np.ndarray], object]] = {
        "scipy.fft": lambda f: scipy.fft.fft(f, axis=-1, workers=1),
        "numpy.fft": lambda f: np.fft.fft(f, axis=-1),
    }
    fftw = measured_fftw()  # where pyFFTW is installed: its plan is made by the untimed first call below
    if fftw is not None:
        ffts["pyfftw"] = fftw
    step = max(1, pool.block_n // n_fft) * n_fft  # a block's whole frames (one frame at least)
    chunks = [s[k : k + step].reshape(-1, n_fft) for s in pool.signals for k in range(0, len(s) - step + 1, step)]
    total = sum(c.size for c in chunks)
    rates = {}
    if not total:
        return {name: float("nan") for name in ffts}
    for name, fft in ffts.items():
        fft(chunks[0])  # plans (FFTW) and first-call costs outside the timing
        best = np.inf
        for _ in range(repeats):
            t = time.thread_time()
            for chunk in chunks:
                fft(chunk)
            best = min(best, time.thread_time() - t)
        rates[name] = total / max(best, 1e-9)
    return rates


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``heimdall bench pipeline``."""
    parser.add_argument("--receivers", type=int, default=7)
    parser.add_argument("--rate", type=float, default=2.4e6, help="input rate per receiver (samples/s)")
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("-c", "--config", help="config whose features and estimator to use (default: embedded)")
    parser.add_argument("--workers", type=int, default=None,
                        help="pipeline.workers (0 = one per CPU core; default: the config's)")
    parser.add_argument("--scaling", action="store_true",
                        help="run with 1, 2, 4, ... workers (up to the CPU count) and print the speed-up")
    parser.add_argument("--edge-processes", type=whole_number_at_least_one("processes"), action="append", default=[], metavar="N",
                        help="also run with the checks and channelizers in N processes, as channelizing edges"
                             " (repeatable); prints the speed-up against the first in-process run")


def _config(args):
    """The config for R receivers (positions repeat the config's), and a note when the estimator changed."""
    base = config_mod.load(args.config)
    receivers = tuple(dataclasses.replace(base.receivers[i % len(base.receivers)], id=f"rx{i}")
                      for i in range(args.receivers))
    cfg = dataclasses.replace(base, receivers=receivers, metrics=dataclasses.replace(base.metrics, enabled=False))
    try:
        build_estimators(cfg)
        return cfg, ""
    except ModelMismatchError as exc:  # the model takes fewer receivers: the physics posterior alone
        cfg = dataclasses.replace(cfg, estimator=dataclasses.replace(cfg.estimator, kind="physics"))
        return cfg, f" (the model cannot: {str(exc).split(': ', 1)[-1]})"


def _run(cfg, pool: InputPool, rate: float, n_windows: int, workers: int) -> dict:
    """One pipeline over ``n_windows`` + 2 windows of input (the first two fill the filters and the aligner)."""
    cfg = dataclasses.replace(cfg, pipeline=dataclasses.replace(cfg.pipeline, workers=workers))
    spec = cfg.features
    window_n = int(round(spec.window_s * rate))
    ids = [rx.id for rx in cfg.receivers]
    center = cfg.network.target_freq_hz - _offset_hz(rate)
    clock = {"ns": T0_NS}
    pipeline = Pipeline(cfg, metrics=Metrics(), send=lambda topic, msg: True, estimators=build_estimators(cfg),
                        clock_ns=lambda: clock["ns"])
    try:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        fed = _drive(pipeline, clock, rate, window_n, pool.block_n, n_windows,
                     lambda k, index, t0: [IQBlock(rid, pool.block(i, k), index, t0, "host", rate, center)
                                           for i, rid in enumerate(ids)])
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        pipeline.close()
    return dict(workers=pipeline.pool.workers, cpu=cpu, wall=wall, seconds=fed["index"] / rate,
                samples=len(ids) * fed["index"], windows_published=pipeline.windows, **fed["times"])


def _drive(pipeline: Pipeline, clock: dict, rate: float, window_n: int, block_n: int, n_windows: int,
           blocks_at: Callable[[int, int, int], list[IQBlock]]) -> dict:
    """Hand ``pipeline`` ``n_windows`` + 2 windows of input, step ``k`` being ``blocks_at(k, sample index, t0 ns)``,
    and poll it after each window; the first two windows (filters and aligner filling) are not timed."""
    ingest_cpu, window_cpu, window_wall = [], [], []
    index = k = 0
    for w in range(n_windows + 2):
        c0 = time.process_time()
        while index < (w + 1) * window_n:
            t0 = T0_NS + int(round(index * 1e9 / rate))
            pipeline.push_many(blocks_at(k, index, t0), arrival_ns=t0)
            index += block_n
            k += 1
            clock["ns"] = t0
        c1, t1 = time.process_time(), time.perf_counter()
        published = pipeline.poll()
        c2, t2 = time.process_time(), time.perf_counter()
        if w >= 2:
            ingest_cpu.append(c1 - c0)
            if published:
                window_cpu.append(c2 - c1)
                window_wall.append(t2 - t1)
    return {"index": index, "steps": k,
            "times": dict(ingest_cpu=float(np.sum(ingest_cpu)), ingest_seconds=len(ingest_cpu) * pipeline.config.features.window_s,
                          window_cpu=window_cpu, window_wall=window_wall)}


def _edge_process(conn, go, cfg, pool: InputPool, rx_indices: list[int], rate: float, n_blocks: int) -> None:
    """A forked process: once ``go`` is set, channelize receivers ``rx_indices``' blocks, send each step's outputs,
    then its CPU time and the input samples it dropped."""
    limit_blas_threads()
    os.nice(EDGE_NICE)
    ids = [cfg.receivers[i].id for i in rx_indices]
    center = cfg.network.target_freq_hz - _offset_hz(rate)
    edges = [EdgeChannelizer(rid, LaneSettings.of(cfg)) for rid in ids]
    go.wait()
    cpu0 = time.process_time()
    for k in range(n_blocks):
        index = k * pool.block_n
        t0 = T0_NS + int(round(index * 1e9 / rate))
        conn.send([out for i, rid, edge in zip(rx_indices, ids, edges)
                   for out in edge.push(IQBlock(rid, pool.block(i, k), index, t0, "host", rate, center))])
    dropped = sum(sum(edge.accounting()["dropped"].values()) for edge in edges)
    conn.send((time.process_time() - cpu0, dropped))
    conn.close()


def _run_edges(cfg, pool: InputPool, rate: float, n_windows: int, processes: int) -> dict:
    """As ``_run`` with one worker, with every receiver's checks and channelizer in ``processes`` forked processes."""
    cfg = dataclasses.replace(cfg, pipeline=dataclasses.replace(cfg.pipeline, workers=1))
    spec = cfg.features
    window_n = int(round(spec.window_s * rate))
    n_blocks = -(-(n_windows + 2) * window_n // pool.block_n)
    fork = multiprocessing.get_context("fork")  # the children share the input pool's pages, uncopied
    n_rx = len(cfg.receivers)
    links, children = [], []
    go = fork.Event()  # the clock starts once every process is ready, as _run's starts after the pipeline is built
    for p in range(processes):
        parent_end, child_end = fork.Pipe(duplex=False)
        child = fork.Process(target=_edge_process, args=(child_end, go, cfg, pool, list(range(p, n_rx, processes)),
                                                          rate, n_blocks), daemon=True)
        child.start()
        child_end.close()
        links.append(parent_end)
        children.append(child)
    clock = {"ns": T0_NS}
    pipeline = Pipeline(cfg, metrics=Metrics(), send=lambda topic, msg: True, estimators=build_estimators(cfg),
                        clock_ns=lambda: clock["ns"])
    try:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        go.set()
        fed = _drive(pipeline, clock, rate, window_n, pool.block_n, n_windows,
                     lambda k, index, t0: [block for link in links for block in link.recv()])
        for _ in range(n_blocks - fed["steps"]):  # steps the children sent past the last window
            for link in links:
                link.recv()
        edge_cpu, edge_dropped = 0.0, 0
        for link in links:
            cpu, dropped = link.recv()
            edge_cpu += cpu
            edge_dropped += dropped
        cpu, wall = time.process_time() - cpu0 + edge_cpu, time.perf_counter() - wall0
    finally:
        pipeline.close()
        for child in children:
            child.join(10)
            if child.is_alive():
                child.kill()
    return dict(workers=f"1 + {processes} edge process{'es' if processes > 1 else ''}", cpu=cpu, wall=wall,
                seconds=fed["index"] / rate, samples=n_rx * fed["index"], windows_published=pipeline.windows,
                edge_cpu=edge_cpu, edge_dropped=edge_dropped, **fed["times"])


def _offset_hz(rate: float) -> float:
    return 50_000.0 if rate >= 200_000 else 0.0


def _print_run(r: dict, n_rx: int, rate: float) -> None:
    pct = lambda xs, q: 1e3 * float(np.percentile(xs, q)) if xs else float("nan")
    p99_wall = pct(r["window_wall"], 99)
    wall_per_s = r["wall"] / r["seconds"]
    print(f"  workers {r['workers']}:")
    if "edge_cpu" in r:
        print(f"  edge processes           {r['edge_cpu'] / r['seconds']:8.3f} cores of the total below (checks,"
              f" channelizer), {r['edge_dropped']} input samples dropped there")
    print(f"  input processed          {r['samples'] / r['cpu'] / 1e6:8.2f} MS/s per CPU second "
          f"({r['samples'] / r['wall'] / 1e6:.2f} MS/s wall)")
    print(f"  CPU per real-time second {r['cpu'] / r['seconds']:8.3f} cores, all threads "
          f"(ingest: checks, channelizer, ring buffer: {r['ingest_cpu'] / r['ingest_seconds']:.3f})")
    print(f"  wall per real-time second {wall_per_s:7.3f} s: {n_rx} x {rate / 1e6:g} MS/s "
          f"{'in' if wall_per_s < 1 else 'NOT in'} real time here")
    print(f"  per-window processing    p50 {pct(r['window_cpu'], 50):.1f} ms  p99 {pct(r['window_cpu'], 99):.1f} ms CPU; "
          f"p50 {pct(r['window_wall'], 50):.1f} ms  p99 {p99_wall:.1f} ms wall "
          f"(aligner, features, estimator, message)")
    print(f"  p99 wall against target  {p99_wall:.1f} ms vs {TARGET_P99_S * 1e3:.0f} ms: "
          f"{'met' if p99_wall < TARGET_P99_S * 1e3 else 'NOT met'}")


def bench_pipeline(args) -> int:
    ncpu = os.cpu_count() or 1
    load0 = os.getloadavg()
    blas = limit_blas_threads()  # as the daemon does when it starts
    cfg, note = _config(args)
    spec = cfg.features
    rate = float(args.rate)
    n_rx = args.receivers
    block_n = int(round(BLOCK_S * rate))
    window_n = int(round(spec.window_s * rate))
    if args.scaling:
        workers_list = sorted({w for w in (1, 2, 4, 8, 16, 32, 64) if w <= ncpu} | {ncpu})
    else:
        workers_list = [resolve_workers(cfg.pipeline.workers if args.workers is None else args.workers)]
    pool = InputPool.make(n_rx, window_n, block_n, rate, _offset_hz(rate))
    print(f"bench pipeline: {n_rx} receivers x {rate / 1e6:g} MS/s, {args.windows} windows of {spec.window_s} s, "
          f"estimator {cfg.estimator.kind}{note}")
    print(f"  load average             {' '.join(f'{x:.2f}' for x in load0)} at start ({ncpu} CPUs, shared)")
    shared = -(-n_rx // len(pool.signals))
    print(f"  input                    {len(pool.signals)} distinct {len(pool.signals[0]) / rate:g} s signals "
          f"({pool.nbytes / 2**20:.0f} MiB)" + (f", each read by up to {shared} receivers at different offsets"
                                               if shared > 1 else ", one per receiver")
          + f"; {BLOCK_S * 1e3:g} ms blocks; {blas}")
    runs = []
    for workers in workers_list:
        runs.append(_run(cfg, pool, rate, args.windows, workers))
        _print_run(runs[-1], n_rx, rate)
    edge_runs = []
    for processes in args.edge_processes:
        edge_runs.append(_run_edges(cfg, pool, rate, args.windows, processes))
        _print_run(edge_runs[-1], n_rx, rate)
    rates = _fft_rates(pool, spec.n_fft)
    best_name = max(rates, key=rates.get)
    others = ", ".join(f"{k} {v / 1e6:.1f}" for k, v in rates.items() if k != best_name)
    print(f"  best single-thread FFT   {rates[best_name] / 1e6:8.2f} MS/s per CPU second, {best_name} ({others}), "
          f"{spec.n_fft}-point frames of the same input, a {BLOCK_S * 1e3:g} ms block per call")
    for r in runs:
        each = ", ".join(f"{k} {r['samples'] / r['cpu'] / v:.3f}" for k, v in rates.items() if k != best_name)
        print(f"  pipeline / best FFT      {r['samples'] / r['cpu'] / rates[best_name]:8.3f} per CPU second "
              f"(workers {r['workers']}; against {each})")
    if len(runs) > 1:
        for r in runs[1:]:
            print(f"  speed-up, workers {r['workers']} vs 1  {runs[0]['wall'] / r['wall']:6.2f} x wall "
                  f"(per-window p99 wall {1e3 * np.percentile(runs[0]['window_wall'], 99):.1f} -> "
                  f"{1e3 * np.percentile(r['window_wall'], 99):.1f} ms; CPU {runs[0]['cpu'] / r['cpu']:.2f} x)")
    for r in edge_runs:
        print(f"  speed-up, {r['workers']} vs workers {runs[0]['workers']}  {runs[0]['wall'] / r['wall']:6.2f} x wall "
              f"(per-window p99 wall {1e3 * np.percentile(runs[0]['window_wall'], 99):.1f} -> "
              f"{1e3 * np.percentile(r['window_wall'], 99):.1f} ms; CPU {runs[0]['cpu'] / r['cpu']:.2f} x)")
    print(f"  load average             {' '.join(f'{x:.2f}' for x in os.getloadavg())} at end")
    return 0


run = bench_pipeline  # the name streamer/tools/bench.py calls
