"""Throughput and CPU of the rtl_tcp and KiwiSDR adapters against their fake servers on loopback.

The fake servers run in a child process, so the CPU figures are the adapters' alone (socket reads,
websocket framing, parsing, conversion to complex64, IQBlock construction). Four numbers, each also
given as a ratio to the typical load (rtl_tcp 2.4 MS/s; KiwiSDR 16 channels at 12 kHz):

* rtl_tcp, unpaced: samples/s one adapter takes from a server sending as fast as loopback allows.
* KiwiSDR, unpaced: frames/s one adapter takes with no seq gap (drops counted), and the equivalent
  number of 12 kHz channels (one channel = 12000 / 512 = 23.4 frames/s).
* The unpaced rates are bounded by whichever side is slower (the fake server is Python too) and by
  other load on the machine; "per core" divides each by the adapter's own CPU use.
* CPU at the typical load: process CPU seconds per wall second (1.0 = one core) for one rtl_tcp
  adapter at 2.4 MS/s, and for 16 KiwiSDR adapters (one thread each) at 12 kHz each.

    .venv/bin/python benchmarks/bench_net_receivers.py --seconds 5
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from receivers.base import ReceiverContext, TallyDropCounter  # noqa: E402
from receivers.kiwisdr import FRAME_SAMPLES, KiwiSdrReceiver  # noqa: E402
from receivers.rtl_tcp import RtlTcpReceiver  # noqa: E402
from streamer.config import from_dict  # noqa: E402
from streamer.core.errors import ReceiverError  # noqa: E402
from tests.helpers.fake_servers import FakeKiwiServer, FakeRtlTcpServer  # noqa: E402

RTL_TYPICAL_HZ = 2_400_000.0
KIWI_RATE_HZ = 12_000.0
KIWI_TYPICAL_CHANNELS = 16


def serve(conn, kind: str, count: int, kwargs: dict) -> None:
    """Child process: ``count`` fake servers until told to stop."""
    cls = FakeRtlTcpServer if kind == "rtl_tcp" else FakeKiwiServer
    servers = [cls(**kwargs).__enter__() for _ in range(count)]
    conn.send([s.address for s in servers])
    conn.recv()
    for s in servers:
        s.stop()


def receivers(kind: str, addresses, ctx_drops: TallyDropCounter, options: dict):
    tables = [
        {"id": f"{kind}{i}", "kind": kind, "lat": 45.0, "lon": 7.0, "host": host, "port": port, **options}
        for i, (host, port) in enumerate(addresses)
    ]
    cfg = from_dict({"receivers": tables}, source="bench")
    ctx = ReceiverContext(config=cfg, drops=ctx_drops)
    cls = RtlTcpReceiver if kind == "rtl_tcp" else KiwiSdrReceiver
    return [cls.from_config(rx, ctx) for rx in cfg.receivers]


def measure(kind: str, count: int, server_kwargs: dict, options: dict, seconds: float, warmup_s: float = 1.0) -> dict:
    """Run ``count`` adapters against ``count`` fake servers; samples and CPU inside the timed window."""
    parent, child = mp.Pipe()
    proc = mp.Process(target=serve, args=(child, kind, count, server_kwargs), daemon=True)
    proc.start()
    addresses = parent.recv()
    drops = TallyDropCounter()
    rxs = receivers(kind, addresses, drops, options)
    counts = [0] * count
    errors: list[BaseException] = []

    def consume(i: int, rx) -> None:
        try:
            for block in rx:
                counts[i] += len(block.samples)
        except ReceiverError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=(i, rx), daemon=True) for i, rx in enumerate(rxs)]
    for t in threads:
        t.start()
    time.sleep(warmup_s)  # benchmark warm-up (connect, handshake), not synchronisation
    n0, c0, w0 = sum(counts), time.process_time(), time.perf_counter()
    time.sleep(seconds)
    n1, c1, w1 = sum(counts), time.process_time(), time.perf_counter()
    for rx in rxs:
        rx.close()
    for t in threads:
        t.join(5)
    parent.send("stop")
    proc.join(10)
    wall = w1 - w0
    return {
        "samples_per_s": (n1 - n0) / wall,
        "cpu_per_s": (c1 - c0) / wall,
        "dropped": sum(drops.dropped.values()),
        "bad_frames": sum(drops.bad_frames.values()),
        "errors": [str(e) for e in errors],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="timed window per measurement (s)")
    args = ap.parse_args(argv)
    s = args.seconds

    rtl_max = measure(
        "rtl_tcp", 1, {"fs": 2_400_000.0, "tone_hz": 37_500.0, "n_samples": None, "chunk_bytes": (1 << 18,)},
        {"sample_rate_hz": RTL_TYPICAL_HZ, "center_freq_hz": 100e6}, s,
    )
    rtl_typ = measure(
        "rtl_tcp", 1,
        {"fs": 2_400_000.0, "tone_hz": 37_500.0, "n_samples": None, "chunk_bytes": (16_384,), "pace_hz": RTL_TYPICAL_HZ},
        {"sample_rate_hz": RTL_TYPICAL_HZ, "center_freq_hz": 100e6}, s,
    )
    kiwi_opts = {"center_freq_hz": 7_074_000.0}
    kiwi_max = measure(
        "kiwisdr", 1, {"fs": KIWI_RATE_HZ, "n_frames": None, "iq_cache_frames": 64}, kiwi_opts, s,
    )
    kiwi_typ = measure(
        "kiwisdr", KIWI_TYPICAL_CHANNELS, {"fs": KIWI_RATE_HZ, "n_frames": None, "pace": True, "iq_cache_frames": 64},
        kiwi_opts, s,
    )

    frames_per_channel = KIWI_RATE_HZ / FRAME_SAMPLES
    kiwi_fps = kiwi_max["samples_per_s"] / FRAME_SAMPLES
    channels = kiwi_fps / frames_per_channel
    print(f"rtl_tcp unpaced      : {rtl_max['samples_per_s'] / 1e6:8.2f} MS/s  = {rtl_max['samples_per_s'] / RTL_TYPICAL_HZ:6.1f} x 2.4 MS/s"
          f"  (cpu {rtl_max['cpu_per_s']:.2f} core)")
    print(f"rtl_tcp at 2.4 MS/s  : {rtl_typ['samples_per_s'] / 1e6:8.2f} MS/s received, cpu {rtl_typ['cpu_per_s']:.3f} core"
          f"  = headroom {1 / max(rtl_typ['cpu_per_s'], 1e-9):6.1f} x")
    print(f"kiwisdr unpaced      : {kiwi_fps:8.0f} frames/s = {channels:6.0f} channels at 12 kHz"
          f" = {channels / KIWI_TYPICAL_CHANNELS:6.1f} x 16 channels  (cpu {kiwi_max['cpu_per_s']:.2f} core, dropped {kiwi_max['dropped']}, bad {kiwi_max['bad_frames']})")
    print(f"kiwisdr 16 x 12 kHz  : {kiwi_typ['samples_per_s'] / FRAME_SAMPLES:8.1f} frames/s received, cpu {kiwi_typ['cpu_per_s']:.3f} core"
          f"  = headroom {1 / max(kiwi_typ['cpu_per_s'], 1e-9):6.1f} x  (dropped {kiwi_typ['dropped']}, bad {kiwi_typ['bad_frames']})")
    rtl_core = rtl_max["samples_per_s"] / max(rtl_max["cpu_per_s"], 1e-9)
    kiwi_core = kiwi_fps / max(kiwi_max["cpu_per_s"], 1e-9)
    print(f"per core of adapter CPU: rtl_tcp {rtl_core / 1e6:.0f} MS/s = {rtl_core / RTL_TYPICAL_HZ:.0f} x 2.4 MS/s; "
          f"kiwisdr {kiwi_core:.0f} frames/s = {kiwi_core / frames_per_channel / KIWI_TYPICAL_CHANNELS:.0f} x 16 channels")
    errors = [e for r in (rtl_max, rtl_typ, kiwi_max, kiwi_typ) for e in r["errors"]]
    if errors:
        print("errors:", *errors, sep="\n  ")
    return 0 if not errors and kiwi_max["dropped"] == kiwi_typ["dropped"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
