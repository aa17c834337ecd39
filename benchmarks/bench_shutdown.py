"""How long `heimdall run` takes to exit after SIGTERM: the default config (seven simulated real-time receivers,
the shipped model), metrics and output on ephemeral ports, with ``--load`` busy processes beside it and
``--edges`` more receivers of kind ``zmq`` whose edges are silent (each adapter waits in a 0.2 s poll, as a
networked receiver does between messages).

Each round starts the daemon, lets it run ``--run-s`` seconds after it has logged its addresses, sends SIGTERM
and times the exit (signal to process end, as systemd sees it); the daemon's own "stopped in" log line says
where its part went. Exit status 0 when every round exited 0.

    .venv/bin/python benchmarks/bench_shutdown.py --rounds 5 --load 2 --edges 7
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.daemon import PUBLISH_RE, default_receivers, write_config  # noqa: E402

STOPPED_RE = re.compile(r"stopped in [^\n]*")


def silent_edges(n: int) -> list[dict]:
    """``n`` receivers of kind zmq connecting to a local port where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = default_receivers()
    return [{"id": f"edge{k}", "kind": "zmq", "lat": base[k % len(base)]["lat"] + 0.01,
             "lon": base[k % len(base)]["lon"], "endpoint": f"tcp://127.0.0.1:{port}"} for k in range(n)]


def burn() -> None:
    """One busy core's worth of load (pure Python, holds no locks the daemon needs)."""
    x = 0
    while True:
        x += 1


def one_round(config: Path, run_s: float, timeout_s: float) -> tuple[float, int, str]:
    """Seconds from SIGTERM to exit, the exit status, and the daemon's "stopped in" line (or its last log)."""
    proc = subprocess.Popen([sys.executable, "-m", "streamer", "run", "-c", str(config)], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    arrived: list[float] = []  # perf_counter when each line was read
    started = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            arrived.append(time.perf_counter())
            if PUBLISH_RE.search(line):
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not started.wait(timeout_s):
        proc.kill()
        raise SystemExit(f"daemon did not start in {timeout_s} s:\n{''.join(lines[-20:])}")
    time.sleep(run_s)  # the daemon runs under load for a while: that is what is measured
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    elapsed = time.perf_counter() - t0
    reader.join(5.0)
    stopped = [(m.group(0), at - t0) for line, at in zip(lines, arrived) if (m := STOPPED_RE.search(line))]
    if not stopped:
        return elapsed, rc, lines[-1].strip() if lines else ""
    line, at = stopped[-1]
    return elapsed, rc, f"{line}, logged {at:.2f} s after SIGTERM"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--load", type=int, default=2, help="busy processes running beside the daemon")
    p.add_argument("--run-s", type=float, default=5.0, help="seconds the daemon runs before SIGTERM")
    p.add_argument("--edges", type=int, default=0, help="silent receivers of kind zmq added to the default seven")
    p.add_argument("--timeout-s", type=float, default=60.0)
    args = p.parse_args()
    burners = [multiprocessing.Process(target=burn, daemon=True) for _ in range(args.load)]
    for b in burners:
        b.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            overrides = {"receivers": default_receivers() + silent_edges(args.edges)} if args.edges else {}
            config = write_config(Path(tmp), overrides)
            print(f"bench shutdown: default config + {args.edges} silent zmq receivers, {args.load} busy processes, "
                  f"{os.cpu_count()} CPUs, "
                  f"SIGTERM after {args.run_s:g} s, {args.rounds} rounds")
            results = []
            for k in range(args.rounds):
                elapsed, rc, stopped = one_round(config, args.run_s, args.timeout_s)
                results.append((elapsed, rc))
                print(f"  round {k + 1}: exit {rc} after {elapsed:.2f} s   ({stopped})", flush=True)
    finally:
        for b in burners:
            b.terminate()
            b.join()
    times = [e for e, _ in results]
    print(f"  SIGTERM to exit: median {statistics.median(times):.2f} s, max {max(times):.2f} s, min {min(times):.2f} s")
    return 0 if all(rc == 0 for _, rc in results) else 1


if __name__ == "__main__":
    sys.exit(main())
