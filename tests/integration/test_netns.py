"""Two hosts on one machine: edge receivers in one network namespace, the daemon in another, a veth link
between them with CURVE on the ingest, and a partition injected by taking the link down.

    netns hmdl-edge-PID  10.200.0.1/24 --veth-- 10.200.0.2/24  netns hmdl-core-PID
      3 x `heimdall receiver` (simulated,          `heimdall run`: 3 remote receivers (kind zmq, CURVE
      real time, framed IQ, CURVE clients)          server) + 3 local simulated ones; observer process

Addresses exist only inside the two namespaces this test creates (and deletes in a finally block). The
observer runs in the daemon's namespace (its loopback is not reachable from here) and prints what it sees
as JSON lines: localizations (which receivers) and, four times a second, ``heimdall_receiver_up``.

Needs root and iproute2 (`ip netns`); otherwise the test skips and says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from streamer.core.security import generate_keys
from tests.helpers.daemon import ROOT, write_config
from tests.helpers.edges import Edge, edge_config, simulated_receiver, zmq_receiver
from tests.helpers.polling import wait_for

REMOTE_IDS = ("torino", "montanaro", "giovi")
LOCAL_IDS = ("giaveno", "milano", "genova")
EDGE_ADDR, CORE_ADDR = "10.200.0.1", "10.200.0.2"
METRICS_PORT, OUTPUT_PORT = 9108, 5557  # inside the daemon's own namespace: nothing else binds there
RESUME_LIMIT_S = 30.0


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces): run the integration tests as root"
    if shutil.which("ip") is None:
        return "needs iproute2: apt-get install iproute2"
    probe = f"hmdl-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed ({made.stderr.strip()}): needs CAP_SYS_ADMIN"
    subprocess.run(["ip", "netns", "del", probe], check=False)
    return None


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def two_hosts() -> Iterator[tuple[str, str, str]]:
    """(edge netns, core netns, edge-side veth name); both namespaces are deleted on exit."""
    tag = os.getpid() % 100000
    edge_ns, core_ns = f"hmdl-edge-{tag}", f"hmdl-core-{tag}"
    edge_if, core_if = f"hme{tag}", f"hmc{tag}"
    try:
        ip("netns", "add", edge_ns)
        ip("netns", "add", core_ns)
        ip("link", "add", edge_if, "type", "veth", "peer", "name", core_if)
        ip("link", "set", edge_if, "netns", edge_ns)
        ip("link", "set", core_if, "netns", core_ns)
        for ns, dev, addr in ((edge_ns, edge_if, EDGE_ADDR), (core_ns, core_if, CORE_ADDR)):
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield edge_ns, core_ns, edge_if
    finally:
        for ns in (edge_ns, core_ns):  # deleting a namespace deletes its end of the veth pair too
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


OBSERVER = r"""
import json, sys, time, urllib.request, msgpack, zmq
endpoint, metrics_url = sys.argv[1], sys.argv[2]
sock = zmq.Context.instance().socket(zmq.SUB)
sock.setsockopt(zmq.SUBSCRIBE, b"loc")
sock.connect(endpoint)
next_scrape = 0.0
while True:
    if sock.poll(50):
        topic, body = sock.recv_multipart()
        msg = msgpack.unpackb(body, raw=False)
        print(json.dumps({"t": time.monotonic(), "loc": msg["receivers"], "seq": msg["seq"]}), flush=True)
    if time.monotonic() >= next_scrape:
        next_scrape = time.monotonic() + 0.25
        try:
            text = urllib.request.urlopen(metrics_url, timeout=2).read().decode()
        except OSError:
            continue
        up, counts = {}, {}
        for line in text.splitlines():
            if line.startswith("heimdall_receiver_up{"):
                rid = line.split('receiver="', 1)[1].split('"', 1)[0]
                up[rid] = float(line.rsplit(" ", 1)[1])
            elif line.startswith(("heimdall_windows_total{", "heimdall_window_masked_receivers_total{")):
                name, value = line.rsplit(" ", 1)
                counts[name] = float(value)
        print(json.dumps({"t": time.monotonic(), "up": up, "counts": counts}), flush=True)
"""


class Observer:
    """The observer process in the daemon's namespace, its JSON lines collected by a thread."""

    def __init__(self, core_ns: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", core_ns, sys.executable, "-c", OBSERVER, f"tcp://127.0.0.1:{OUTPUT_PORT}",
             f"http://127.0.0.1:{METRICS_PORT}/metrics"],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self.locs: list[tuple[float, list[str]]] = []
        self.up: list[tuple[float, dict[str, float]]] = []
        self.counts: dict[str, float] = {}  # window outcomes and masked receivers, as of the latest scrape
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            event = json.loads(line)
            with self._lock:
                if "loc" in event:
                    self.locs.append((event["t"], event["loc"]))
                else:
                    self.up.append((event["t"], event["up"]))
                    self.counts = event["counts"]

    def locs_since(self, t: float) -> list[list[str]]:
        with self._lock:
            return [rx for at, rx in self.locs if at >= t]

    def first_loc_with(self, t: float, ids) -> float | None:
        with self._lock:
            return next((at for at, rx in self.locs if at >= t and set(ids) <= set(rx)), None)

    def latest_up(self) -> dict[str, float]:
        with self._lock:
            return dict(self.up[-1][1]) if self.up else {}

    def summary(self) -> str:
        """What the daemon was doing, for a failure message."""
        now = time.monotonic()
        with self._lock:
            recent = [(round(now - at, 1), rx) for at, rx in self.locs[-8:]]
            up = self.up[-1][1] if self.up else {}
            counts = dict(self.counts)
        return f"last localizations (age s, receivers): {recent}\nreceiver_up: {up}\ncounters: {counts}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.proc.stdout.close()


@contextlib.contextmanager
def daemon_in(core_ns: str, config: Path) -> Iterator[tuple[subprocess.Popen, list[str]]]:
    """`heimdall run` inside ``core_ns`` (``ip netns exec`` execs it: signals reach the daemon itself), and
    its stderr lines as they come."""
    proc = subprocess.Popen(["ip", "netns", "exec", core_ns, sys.executable, "-m", "streamer", "run", "-c", str(config)],
                            cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        yield proc, log
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(10)
        assert rc == 0, f"daemon exited with {rc}:\n{''.join(log)[-3000:]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        reader.join(5)
        proc.stderr.close()


@contextlib.contextmanager
def explained(observer: Observer, log: list[str]) -> Iterator[None]:
    """Add what the daemon was doing to a failure inside the block."""
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{observer.summary()}\ndaemon log:\n{''.join(log)[-3000:]}") from None


@pytest.mark.slow
def test_partition_between_edge_and_daemon_namespaces_masks_then_resumes(tmp_path):
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    keys = tmp_path / "keys"
    daemon_pub, daemon_secret = generate_keys(keys, "daemon")
    edge_pub, edge_secret = generate_keys(keys, "edge")
    allowed = tmp_path / "ingest-clients"
    allowed.mkdir()
    shutil.copy(edge_pub, allowed / "edge.key")
    ports = {rid: 5601 + i for i, rid in enumerate(REMOTE_IDS)}
    edge_cfg = edge_config(tmp_path, REMOTE_IDS, extra={
        "security": {"curve_ingest": True, "secret_key": str(edge_secret), "server_key": str(daemon_pub)}})  # fmt: skip
    core_cfg = write_config(tmp_path, {
        "receivers": [zmq_receiver(rid, f"tcp://{EDGE_ADDR}:{ports[rid]}") for rid in REMOTE_IDS]
        + [simulated_receiver(rid) for rid in LOCAL_IDS],
        "simulator": {"key_up_mean_s": 60.0, "key_down_mean_s": 0.05, "tx_power_min_dbm": 44.0, "tx_power_max_dbm": 47.0},
        "pipeline": {"min_receivers": 3, "offline_after_s": 1.0},
        "output": {"endpoint": f"tcp://127.0.0.1:{OUTPUT_PORT}", "publish_truth": False},
        "metrics": {"host": "127.0.0.1", "port": METRICS_PORT},
        "security": {"curve_ingest": True, "secret_key": str(daemon_secret), "ingest_clients_dir": str(allowed)},
    }, name="core.toml")  # fmt: skip

    with two_hosts() as (edge_ns, core_ns, edge_if):
        edges = [Edge(rid, f"tcp://{EDGE_ADDR}:{ports[rid]}", edge_cfg, prefix=("ip", "netns", "exec", edge_ns))
                 for rid in REMOTE_IDS]  # fmt: skip
        observer = None
        try:
            for edge in edges:
                edge.start()
            with daemon_in(core_ns, core_cfg) as (daemon, log):
                observer = Observer(core_ns)
                with explained(observer, log):
                    t0 = time.monotonic()
                    wait_for(lambda: observer.first_loc_with(t0, REMOTE_IDS), 90, "a localization using the three remote receivers")

                    ip("-n", edge_ns, "link", "set", edge_if, "down")
                    cut = time.monotonic()
                    wait_for(lambda: all(observer.latest_up().get(r) == 0 for r in REMOTE_IDS), 10, "remote receivers down")
                    # The daemon keeps running and localizing with the receivers on its side of the partition.
                    wait_for(lambda: len([rx for rx in observer.locs_since(cut + 1.5) if not set(rx) & set(REMOTE_IDS)]) >= 4,
                             15, "localizations from the local receivers during the partition")  # fmt: skip
                    assert daemon.poll() is None, "the daemon exited during the partition"
                    partition_s = time.monotonic() - cut

                    ip("-n", edge_ns, "link", "set", edge_if, "up")
                    healed = time.monotonic()
                    back = wait_for(lambda: observer.first_loc_with(healed, REMOTE_IDS), RESUME_LIMIT_S,
                                    "a localization using the remote receivers after the link came back")  # fmt: skip
                    wait_for(lambda: all(observer.latest_up().get(r) == 1 for r in REMOTE_IDS), 5, "remote receivers up")
                    print(f"partition {partition_s:.1f} s; remote receivers back in a localization {back - healed:.2f} s "
                          f"after the link came up")  # fmt: skip
                    for edge in edges:
                        edge.stop()
        finally:
            if observer is not None:
                observer.close()
            for edge in edges:
                edge.kill()
