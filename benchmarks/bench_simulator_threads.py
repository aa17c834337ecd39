"""CPU that real-time simulated receivers cost when they run as threads of one process, as in the daemon.

Each receiver streams through its own ``SimulatedReceiver.__iter__`` in its own thread, paced to the wall
clock, for ``--seconds``; the process's CPU time (user + system) over that span is divided by the span.
Two variants alternate in the same run, ``--rounds`` times each: the adapters taking turns to render
(``SimulatedReceiver.render_lock``, what the code does) and the baseline with no lock (every thread in its
numpy calls at once). On a 2-core machine the CPU that the receivers burn is CPU the daemon's pipeline
thread does not get: what ``heimdall soak`` (16 x 48 kS/s) needs to keep up.

    .venv/bin/python benchmarks/bench_simulator_threads.py --receivers 16 --rate 48000 --seconds 20 --rounds 2
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from receivers.simulator import SimulatedReceiver, SimulatedWorld  # noqa: E402
from streamer.tools import soak  # noqa: E402


def cores_used(cfg, seconds: float, lock) -> tuple[float, int]:
    """CPU cores (process CPU s per wall s) while every receiver streams in real time; blocks delivered."""
    world = SimulatedWorld(cfg)
    for r in range(len(cfg.receivers)):
        world.shadowing(r)  # built before the receivers' clocks start, so they do not start behind
    receivers = [SimulatedReceiver(rx.id, world, rx.options) for rx in cfg.receivers]
    saved = SimulatedReceiver.render_lock
    SimulatedReceiver.render_lock = lock
    delivered = [0] * len(receivers)
    stop = time.monotonic() + seconds

    def stream(i: int) -> None:
        for _block in receivers[i]:
            delivered[i] += 1
            if time.monotonic() >= stop:
                return

    try:
        threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(receivers))]
        cpu0, wall0 = os.times(), time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        cpu1, wall1 = os.times(), time.monotonic()
    finally:
        SimulatedReceiver.render_lock = saved
    cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    return cpu / (wall1 - wall0), sum(delivered)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--receivers", type=int, default=16)
    p.add_argument("--rate", type=float, default=48_000.0, help="samples/s per receiver")
    p.add_argument("--block-s", type=float, default=0.05, help="seconds per block (the adapter's default 0.05)")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each measurement")
    p.add_argument("--rounds", type=int, default=2, help="measurements of each variant, alternating")
    args = p.parse_args(argv)
    cfg = soak.soak_config(args.receivers, args.rate)
    cfg = dataclasses.replace(cfg, receivers=tuple(
        dataclasses.replace(rx, options=dataclasses.replace(rx.options, block_s=args.block_s)) for rx in cfg.receivers))
    expected = args.receivers * args.seconds / args.block_s
    print(f"{args.receivers} simulated receivers x {args.rate:g} S/s, {args.block_s:g} s blocks, "
          f"{args.seconds:g} s per measurement (about {expected:.0f} blocks in real time)")
    results: dict[str, list[float]] = {"taking turns": [], "no lock (baseline)": []}
    for r in range(args.rounds):
        for name, lock in (("taking turns", threading.Lock()), ("no lock (baseline)", contextlib.nullcontext())):
            cores, blocks = cores_used(cfg, args.seconds, lock)
            results[name].append(cores)
            print(f"round {r + 1}  {name:<20} {cores:5.2f} cores  {blocks} blocks")
    turns, base = min(results["taking turns"]), min(results["no lock (baseline)"])
    print(f"best of {args.rounds}: taking turns {turns:.2f} cores, no lock {base:.2f} cores, ratio {turns / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
