"""Highest sample rate the Pluto adapter sustains from the fake iiod without losing samples, and its CPU.

Runs the real pyadi-iio + libiio against tests/helpers/fake_iiod.py, served from a child process so the
CPU figure is the adapter's alone (libiio + pyadi-iio + scaling). For each rate it streams for
``--seconds`` and reports the samples the fake's DMA model lost, the adapter's overflow count and the
process CPU time per second of stream.

    .venv/bin/python benchmarks/bench_pluto.py --rates 1e6 2e6 4e6 8e6 12e6 16e6 --seconds 5
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from receivers.base import ReceiverContext, TallyDropCounter  # noqa: E402
from receivers.pluto import PlutoOptions, PlutoReceiver  # noqa: E402
from streamer.config import Config  # noqa: E402
from tests.helpers.fake_iiod import FakeIiod  # noqa: E402


def serve(conn, rate_hz: float) -> None:
    """Child process: run the fake iiod until told to stop, then report the samples it lost."""
    with FakeIiod(tone_hz=rate_hz / 8, amplitude_counts=1500) as fake:
        conn.send(fake.uri)
        conn.recv()
        conn.send(fake.lost_samples)


def run(rate_hz: float, seconds: float, buffer_size: int, kernel_buffers: int) -> dict:
    drops = TallyDropCounter()
    parent, child = mp.Pipe()
    server = mp.Process(target=serve, args=(child, rate_hz), daemon=True)
    server.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("fake iiod did not start")
        uri = parent.recv()
        opts = PlutoOptions(uri=uri, sample_rate_hz=rate_hz, rf_bandwidth_hz=min(rate_hz, 56e6),
                            buffer_size=buffer_size, kernel_buffers=kernel_buffers)
        with PlutoReceiver("bench", opts, ReceiverContext(config=Config(), drops=drops)) as rx:
            it = iter(rx)
            next(it)  # connection and buffer set-up are not part of the measurement
            cpu0, wall0, n = time.process_time(), time.monotonic(), 0
            while time.monotonic() - wall0 < seconds:
                n += len(next(it).samples)
            cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        parent.send("stop")
        lost = parent.recv() if parent.poll(30) else -1
    finally:
        server.join(timeout=10)
        if server.is_alive():
            server.terminate()
    return {"rate_hz": rate_hz, "delivered_per_s": n / wall, "cpu_per_s": cpu / wall,
            "fake_lost": lost, "counted_overflow": drops.dropped[("bench", "overflow")]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[1e6, 2e6, 4e6, 8e6, 12e6, 16e6])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--buffer-size", type=int, default=65536)
    parser.add_argument("--kernel-buffers", type=int, default=16)
    args = parser.parse_args()
    print(f"{'rate MS/s':>9} {'got MS/s':>9} {'x 4 MS/s':>8} {'CPU %':>6} {'lost(true)':>11} {'counted':>9}")
    for rate in args.rates:
        r = run(rate, args.seconds, args.buffer_size, args.kernel_buffers)
        print(f"{rate / 1e6:9.2f} {r['delivered_per_s'] / 1e6:9.3f} {rate / 4e6:8.2f} {100 * r['cpu_per_s']:6.1f}"
              f" {r['fake_lost']:11d} {r['counted_overflow']:9d}")


if __name__ == "__main__":
    main()
