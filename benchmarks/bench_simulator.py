"""Whether the simulated network keeps up in real time: the delivered fraction of real time and the CPU it costs.

For each receiver count, the embedded default network (``streamer.tools.soak.soak_config``: a transmitter keyed
nearly all the time) streams through ``SimulatedReceiver.__iter__``, one thread per receiver paced to the wall
clock, as in the daemon, for ``--seconds``. Printed per count: samples delivered / (receivers x rate x wall
time) (1.00 = real time; a block is due once its last sample has been taken, so a short run reads a little
under 1), the process's CPU time over the wall time (cores), and the load average before and after (the
machine is shared: CPU time is the figure to trust, the delivered fraction says whether it was enough).

    .venv/bin/python benchmarks/bench_simulator.py --receivers 8 32 64 --rate 240000 --seconds 10
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from receivers.simulator import SimulatedReceiver, SimulatedWorld  # noqa: E402
from streamer.tools import soak  # noqa: E402


def measure(receivers: int, rate_hz: float, seconds: float) -> tuple[float, float]:
    """(delivered fraction of real time, CPU cores) for ``receivers`` real-time simulated receivers."""
    cfg = soak.soak_config(receivers, rate_hz)
    world = SimulatedWorld(cfg)
    for r in range(receivers):
        world.shadowing(r)  # built before the receivers' clocks start, so they do not start behind
    streams = [SimulatedReceiver(rx.id, world, rx.options) for rx in cfg.receivers]
    delivered = [0] * receivers
    stop = threading.Event()

    def run(i: int) -> None:
        for block in streams[i]:
            if stop.is_set():
                return
            delivered[i] += len(block.samples)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(receivers)]
    cpu0, wall0 = os.times(), time.monotonic()
    for t in threads:
        t.start()
    time.sleep(seconds)
    total, wall1, cpu1 = sum(delivered), time.monotonic(), os.times()
    stop.set()
    for s in streams:
        s.close()
    for t in threads:
        t.join()
    wall = wall1 - wall0
    return total / (receivers * rate_hz * wall), ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / wall


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--receivers", type=int, nargs="+", default=[8, 32, 64])
    p.add_argument("--rate", type=float, default=240_000.0, help="samples/s per receiver (the adapter's default)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each measurement")
    args = p.parse_args(argv)
    print(f"simulated receivers x {args.rate:g} S/s, {args.seconds:g} s each; load average at start "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())} ({os.cpu_count()} cores)")
    print(f"{'receivers':>9}  {'real time':>9}  {'cores':>6}  {'cores/receiver':>14}")
    for n in args.receivers:
        fraction, cores = measure(n, args.rate, args.seconds)
        print(f"{n:>9}  {fraction:>9.2f}  {cores:>6.2f}  {cores / n:>14.4f}", flush=True)
    print(f"load average at end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
