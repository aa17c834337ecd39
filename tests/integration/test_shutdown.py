"""SIGTERM: `heimdall run` exits 0 promptly even when every receiver's adapter is blocked waiting for data.

Each receiver here is a framed-IQ subscriber (kind zmq) whose edge never sends: its adapter sits in a
0.45 s poll, as a networked receiver does between messages. Shutdown tells all runners to stop before
waiting for any, so the waits overlap (one poll, not one per receiver); figures: docs/operations.md.
"""

from __future__ import annotations

import socket
import time

from tests.helpers.daemon import default_receivers, running_daemon

N_EDGES = 16
POLL_S = 0.45
#: Generous for a shared machine; stopping the runners one after another took N_EDGES x POLL_S / 2 on average.
EXIT_WITHIN_S = 2.5


def silent_edges(n: int) -> list[dict]:
    with socket.socket() as s:  # a local port where nothing listens: the SUB sockets connect and wait
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = default_receivers()
    return [{"id": f"edge{k}", "kind": "zmq", "lat": base[k % len(base)]["lat"] + 0.01 * (k // len(base)),
             "lon": base[k % len(base)]["lon"], "endpoint": f"tcp://127.0.0.1:{port}", "recv_timeout_s": POLL_S}
            for k in range(n)]


def test_sigterm_exits_zero_promptly_with_every_adapter_blocked_in_a_poll(tmp_path):
    overrides = {"receivers": silent_edges(N_EDGES), "estimator": {"kind": "physics"}}
    with running_daemon(tmp_path, overrides=overrides, stop_timeout_s=30.0) as d:
        d.wait_for_log(r"publishing on", 30.0)
        time.sleep(1.0)  # every adapter is in its poll loop
        t0 = time.monotonic()
        assert d.stop(timeout_s=30.0) == 0
        elapsed = time.monotonic() - t0
    print(f"SIGTERM to exit: {elapsed:.2f} s; daemon: {[line for line in d.stderr.splitlines() if 'stopped' in line]}")
    assert elapsed < EXIT_WITHIN_S, f"exit took {elapsed:.2f} s; stderr:\n{d.stderr[-3000:]}"
