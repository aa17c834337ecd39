"""Hostile and faulty gr-zeromq input fed to ``GnuRadioZmqReceiver`` message by message, with what it costs and
what is counted: the figures in docs/reliability.md ("GNU Radio path").

Scenarios (``--only`` picks one):

- ``tags``: 100 tagged messages of 4,096 items, each with 20,000 ``rx_freq`` tags for items far ahead.
  Prints RSS (VmRSS) before and after, the time taken and the counts.
- ``nan``: a tagged stream of 1,920,000 items in messages of 4,000 with a burst of 120,000 NaN items
  (30 messages). Prints what was yielded and counted, and whether items in = yielded + counted.
- ``jitter``: a host-timed (untagged) stream, 48 kS/s in 20 ms messages for 60 s, each message arriving
  late by 0 to 80 ms (the host clock injected), fed to a pipeline ``Lane`` with the default 50 ms
  ``clock_jump_tolerance_s``. Prints the clock jumps and the samples they cost.

``--root`` runs another checkout's code (e.g. an older commit unpacked with ``git archive``)::

    .venv/bin/python benchmarks/bench_gnuradio_faults.py
    .venv/bin/python benchmarks/bench_gnuradio_faults.py --root /tmp/old
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from pathlib import Path

import numpy as np

HOST_NS = 1_800_000_000_000_000_000


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sym(text: str) -> bytes:
    return b"\x02" + struct.pack(">H", len(text)) + text.encode()


def tag(offset: int, key: str, value: bytes) -> bytes:
    return struct.pack("<Q", offset) + sym(key) + value + sym("src")


def dbl(x: float) -> bytes:
    return b"\x04" + struct.pack(">d", x)


def tagged(offset: int, samples: np.ndarray, tags: list[bytes]) -> bytes:
    return struct.pack("<HBQQ", 0x5FF0, 1, offset, len(tags)) + b"".join(tags) + samples.astype("<c8").tobytes()


def feed(rx, data: bytes, drops) -> list:
    from receivers.framing import FrameError

    try:
        return list(rx._blocks(data))
    except FrameError as exc:  # what the adapter's __iter__ does with it
        drops.bad_frame(rx.receiver_id, exc.reason)
        return []


def receiver(drops, clock=lambda: HOST_NS, **options):
    from receivers.gnuradio_zmq import GnuRadioZmqReceiver, Options

    return GnuRadioZmqReceiver("gr1", Options(endpoint="tcp://127.0.0.1:1", **options), drops=drops, clock=clock)


def scenario_tags() -> None:
    from receivers.base import TallyDropCounter

    drops = TallyDropCounter()
    rx = receiver(drops, pass_tags=True, sample_rate_hz=1e6, center_freq_hz=1e8)
    samples = np.zeros(4096, np.complex64)
    before, start = rss_mb(), time.perf_counter()
    per_message = []
    for m in range(100):
        tags = [tag(10**9 + m * 20_000 + i, "rx_freq", dbl(1e8 + i)) for i in range(20_000)]
        t = time.perf_counter()
        feed(rx, tagged(m * 4096, samples, tags), drops)
        per_message.append(time.perf_counter() - t)
    rx.close()
    print(f"tags: RSS {before:.0f} -> {rss_mb():.0f} MB, {time.perf_counter() - start:.1f} s; per message "
          f"first 10 {1e3 * np.mean(per_message[:10]):.0f} ms, last 10 {1e3 * np.mean(per_message[-10:]):.0f} ms; "
          f"bad frames {dict(drops.bad_frames)}")


def scenario_nan() -> None:
    from receivers.base import TallyDropCounter

    drops = TallyDropCounter()
    rx = receiver(drops, pass_tags=True, sample_rate_hz=1e6, center_freq_hz=1e8)
    n, total, yielded = 4000, 1_920_000, 0
    rx_time = tag(0, "rx_time", b"\x0c" + struct.pack(">I", 2) + b"\x0b" + struct.pack(">Q", 1_700_000_000) + dbl(0.25))
    for k in range(total // n):
        samples = np.full(n, 0.1 + 0.1j, np.complex64)
        if 200 <= k < 230:
            samples[:] = np.nan
        yielded += sum(len(b.samples) for b in feed(rx, tagged(k * n, samples, [rx_time] if k == 0 else []), drops))
    rx.close()
    dropped = {reason: count for (_rid, reason), count in drops.dropped.items()}
    print(f"nan: {total:,} items in, {yielded:,} yielded, dropped {dropped}, bad frames {dict(drops.bad_frames)}; "
          f"in = yielded + dropped: {total == yielded + sum(dropped.values())}")


def scenario_jitter() -> None:
    from receivers.base import TallyDropCounter
    from streamer.daemon.lane import Lane, LaneSettings

    drops, lane_drops, bad = TallyDropCounter(), {}, {}
    lane = Lane("gr1", LaneSettings(145.5e6, 24_000.0, 4.0, 0.05),
                lambda reason, stage, k: lane_drops.__setitem__((reason, stage), lane_drops.get((reason, stage), 0) + k),
                lambda reason: bad.__setitem__(reason, bad.get(reason, 0) + 1))
    now = [HOST_NS]
    rx = receiver(drops, clock=lambda: now[0], sample_rate_hz=48e3, center_freq_hz=145.49e6)
    rng = np.random.default_rng(1)
    n, last = 960, 0
    t = np.arange(n) / 48e3
    for k in range(3000):
        last = max(last, HOST_NS + (k + 1) * 20_000_000 + int(rng.integers(0, 80_000_000)))
        now[0] = last
        for block in feed(rx, (0.01 * np.exp(2j * np.pi * 1000 * (t + k * n / 48e3))).astype(np.complex64).tobytes(), drops):
            lane.push(block)
    rx.close()
    lost = lane_drops.get(("clock_jump", "pipeline"), 0)
    print(f"jitter: {lane.received:,} samples received, clock jumps {bad.get('clock_jump', 0)}, "
          f"{lost:,} samples dropped as clock_jump ({100 * lost / max(lane.received, 1):.1f} %)")


SCENARIOS = {"tags": scenario_tags, "nan": scenario_nan, "jitter": scenario_jitter}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help="checkout whose code runs")
    parser.add_argument("--only", choices=sorted(SCENARIOS))
    args = parser.parse_args()
    sys.path.insert(0, str(args.root))
    for name, run in SCENARIOS.items():
        if args.only in (None, name):
            run()


if __name__ == "__main__":
    main()
