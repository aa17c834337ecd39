"""How many samples/s receivers/soapy.py delivers from the unpaced heimdalltest device.

Usage: ``.venv/bin/python tests/receivers/soapy_device/throughput.py [SECONDS]`` (from the repo root).
The consumer only counts samples, so this is the adapter's ceiling (readStream + conversion +
IQBlock), including the device's own tone generation in the same thread. Drops must stay zero.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[3])]
from build import build_device  # noqa: E402  (this folder is sys.path[0] when run as a script)

os.environ.update(SOAPY_SDR_ROOT="/nonexistent", SOAPY_SDR_PLUGIN_PATH=str(build_device()))

import SoapySDR  # noqa: E402

from receivers.base import TallyDropCounter  # noqa: E402
from receivers.soapy import SoapyOptions, SoapyReceiver  # noqa: E402


def measure(stream_format: str, read_size: int, seconds: float, paced_rate_hz: float | None = None) -> tuple[float, float]:
    """(samples/s delivered, CPU seconds per wall second) through the adapter; unpaced unless ``paced_rate_hz``."""
    drops = TallyDropCounter()
    paced = 1 if paced_rate_hz else 0
    args = f"driver=heimdalltest,serial=bench-{stream_format}-{read_size}-{paced},paced={paced}"
    options = SoapyOptions(device_args=args, sample_rate_hz=paced_rate_hz or 10e6, stream_format=stream_format,
                           read_size=read_size, stream_args={"mtu": str(read_size)})
    n = 0
    with SoapyReceiver("bench", options, soapy=SoapySDR, drops=drops) as rx:
        start, cpu0 = time.perf_counter(), time.process_time()
        for block in rx:
            n += len(block.samples)
            if time.perf_counter() - start >= seconds:
                break
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    assert not drops.dropped and not drops.bad_frames, (drops.dropped, drops.bad_frames)
    return n / elapsed, cpu / elapsed


if __name__ == "__main__":
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    for read_size in (4096, 16384, 65536):
        for fmt in ("CF32", "CS16"):
            rate, _ = measure(fmt, read_size, seconds)
            print(f"{fmt} read_size={read_size:6d}: {rate / 1e6:7.1f} MS/s = {rate / 2.4e6:6.1f} x 2.4 MS/s, no drops")
    rate, cpu = measure("CS16", 16384, seconds, paced_rate_hz=2.4e6)
    print(f"CS16 paced at 2.4 MS/s: {rate / 1e6:.2f} MS/s delivered, CPU {cpu:.3f} of one core"
          " (adapter and the test device's tone generation together)")
