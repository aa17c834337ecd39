"""How fast the daemon works off a backlog: the hand-off queue pre-filled with ``--backlog-s`` seconds of blocks
from ``--receivers`` receivers, drained by ``Daemon.step`` (blocks coalesced per receiver, as the daemon runs)
and, in the same run, by the same daemon taking one block at a time (the baseline, as before coalescing).

A real-time source that outruns the pipeline loses samples once the queue is full (``queue_full``), so after a
stall what matters is how many seconds of input the pipeline gets through per second of its own time.

    .venv/bin/python benchmarks/bench_catchup.py --receivers 16 --rate 48000 --block-s 0.05 --backlog-s 10
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from receivers.base import IQBlock  # noqa: E402
from streamer.daemon import app, soak  # noqa: E402


def blocks(cfg, rate_hz: float, block_s: float, backlog_s: float, t0_ns: int) -> list[IQBlock]:
    """Interleaved blocks (receiver after receiver, as the adapters deliver them) of a tone in noise."""
    n = int(round(block_s * rate_hz))
    rng = np.random.default_rng(1)
    offset_hz = cfg.network.target_freq_hz - cfg.receivers[0].options.center_freq_hz
    t = np.arange(n) / rate_hz
    out = []
    for k in range(int(round(backlog_s / block_s))):
        for rx in cfg.receivers:
            phase = 2 * np.pi * offset_hz * (t + k * block_s) + 2.5 * np.sin(2 * np.pi * 1000.0 * (t + k * block_s))
            x = 1e-2 * np.exp(1j * phase) + 1e-4 * (rng.standard_normal(n) + 1j * rng.standard_normal(n))
            out.append(IQBlock(rx.id, x.astype(np.complex64), k * n, t0_ns + int(round(k * n * 1e9 / rate_hz)),
                               "host", rate_hz, rx.options.center_freq_hz))  # fmt: skip
    return out


def drain(cfg, backlog: list[IQBlock], max_blocks: int) -> tuple[float, float, int]:
    """Seconds (wall, CPU of this thread) for Daemon.step to empty the queue; localizations published."""
    saved = app.STEP_MAX_BLOCKS
    app.STEP_MAX_BLOCKS = max_blocks
    try:
        daemon = app.Daemon(cfg)
        try:
            for block in backlog:
                daemon.queue.put(block, realtime=False)
            wall0, cpu0 = time.perf_counter(), time.thread_time()
            while len(daemon.queue):
                daemon.step(timeout_s=0.05)
            wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
            localized = daemon.metrics.registry.get_sample_value("heimdall_windows_total", {"outcome": "localized"}) or 0
            return wall, cpu, int(localized)
        finally:
            daemon.shutdown()
    finally:
        app.STEP_MAX_BLOCKS = saved


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--receivers", type=int, default=16)
    p.add_argument("--rate", type=float, default=48_000.0, help="samples/s per receiver")
    p.add_argument("--block-s", type=float, default=0.05, help="seconds per block")
    p.add_argument("--backlog-s", type=float, default=10.0, help="seconds of input queued")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each; the best is reported")
    args = p.parse_args()
    base = soak.soak_config(args.receivers, args.rate)
    n_blocks = int(round(args.backlog_s / args.block_s)) * args.receivers
    cfg = dataclasses.replace(base, pipeline=dataclasses.replace(base.pipeline, queue_blocks=n_blocks + 1),
                              metrics=dataclasses.replace(base.metrics, enabled=False))  # fmt: skip
    t0_ns = (time.time_ns() // 10**9 - int(args.backlog_s) - 5) * 10**9
    backlog = blocks(cfg, args.rate, args.block_s, args.backlog_s, t0_ns)
    results = {"coalesced": [], "one block at a time": []}
    for _ in range(args.repeats):
        for name, max_blocks in (("coalesced", app.STEP_MAX_BLOCKS), ("one block at a time", 1)):
            results[name].append(drain(cfg, backlog, max_blocks))
    print(f"bench catchup: {args.receivers} receivers x {args.rate:g} S/s in {args.block_s * 1e3:g} ms blocks, "
          f"{args.backlog_s:g} s of backlog ({n_blocks} blocks), best of {args.repeats}")
    best = {}
    for name, runs in results.items():
        wall, cpu, locs = min(runs)
        best[name] = wall
        print(f"  {name:20s} drained in {wall:6.2f} s wall ({cpu:6.2f} s CPU): {args.backlog_s / wall:5.1f} x real time, "
              f"{locs} localizations")
    print(f"  speed-up             {best['one block at a time'] / best['coalesced']:5.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
