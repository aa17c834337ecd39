"""Edge processes for integration tests: ``heimdall receiver ID`` subprocesses that publish framed IQ from the
default network's receivers, simulated in real time under a steady transmitter, and the receiver tables that a
daemon (or an edge) uses to simulate a receiver or subscribe to one."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from tests.helpers.daemon import ROOT, default_receivers, write_config

RATE_HZ = 48_000.0
CENTER_HZ = 145.49e6
BLOCK_S = 0.05
EDGE_LOG_RE = re.compile(r"publishing framed IQ on (\S+)")


def simulated_receiver(rid: str, **extra) -> dict:
    """The default network's receiver ``rid`` as a real-time simulated receiver at 48 kHz."""
    rx = next(r for r in default_receivers() if r["id"] == rid)
    return {**rx, "kind": "simulator", "sample_rate_hz": RATE_HZ, "center_freq_hz": CENTER_HZ, "block_s": BLOCK_S,
            "realtime": True, **extra}  # fmt: skip


def zmq_receiver(rid: str, endpoint: str) -> dict:
    rx = next(r for r in default_receivers() if r["id"] == rid)
    return {"id": rid, "kind": "zmq", "lat": rx["lat"], "lon": rx["lon"], "alt_m": rx["alt_m"], "endpoint": endpoint}


# A transmitter that is keyed >99.9 % of the time and loud, so that every window can be localized and a
# returning receiver is heard in the first window it is present in. (key_up_mean_s must stay well under
# the simulator's 600 s keying chunk: a longer transmission hides the next chunk's.)
STEADY_TRANSMITTER = {"key_up_mean_s": 60.0, "key_down_mean_s": 0.05, "tx_power_min_dbm": 44.0, "tx_power_max_dbm": 47.0}


def edge_config(directory: Path, receiver_ids: Sequence[str], name: str = "edge.toml", extra: dict | None = None) -> Path:
    overrides = {"simulator": STEADY_TRANSMITTER, "metrics": {"enabled": False},
                 "receivers": [simulated_receiver(rid) for rid in receiver_ids], **(extra or {})}  # fmt: skip
    return write_config(directory, overrides, name=name)


@dataclass
class Edge:
    """One ``heimdall receiver ID`` process."""

    receiver_id: str
    endpoint: str  # where it binds
    config: Path
    prefix: tuple[str, ...] = ()  # e.g. ("ip", "netns", "exec", NS)
    args: tuple[str, ...] = ()  # after the command's own, e.g. ("--channelize",)
    proc: subprocess.Popen | None = None
    log: list[str] = field(default_factory=list)

    def start(self, timeout_s: float = 30.0) -> None:
        cmd = [*self.prefix, sys.executable, "-m", "streamer", "receiver", self.receiver_id, "-c", str(self.config),
               "--publish", self.endpoint, *self.args]  # fmt: skip
        self.log = []
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        started = threading.Event()
        threading.Thread(target=self._drain, args=(self.proc, started), daemon=True).start()
        if not started.wait(timeout_s):
            raise AssertionError(f"edge {self.receiver_id} did not start within {timeout_s} s:\n{''.join(self.log)[-2000:]}")

    def _drain(self, proc: subprocess.Popen, started: threading.Event) -> None:
        for line in proc.stderr:
            self.log.append(line)
            if EDGE_LOG_RE.search(line):
                started.set()
        proc.stderr.close()

    def kill(self) -> None:
        """SIGKILL: the edge vanishes without closing anything (a crash or a power cut)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"edge {self.receiver_id} ignored SIGTERM for {timeout_s} s") from None


@contextlib.contextmanager
def running_edges(edges: Sequence[Edge]) -> Iterator[Sequence[Edge]]:
    try:
        for edge in edges:
            edge.start()
        yield edges
    finally:
        for edge in edges:
            edge.kill()
