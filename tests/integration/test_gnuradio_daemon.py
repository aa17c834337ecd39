"""GNU Radio as a real external producer of the daemon: the example flowgraph (config/examples/
gnuradio_source.py) publishes tagged IQ on a gr-zeromq PUSH sink, `heimdall run` ingests it, and every
item the flowgraph produced is counted as received, none dropped, and the rate and frequency come from
the tags."""

from __future__ import annotations

import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.daemon import default_receivers, running_daemon

ROOT = Path(__file__).resolve().parents[2]
FLOWGRAPH = ROOT / "config" / "examples" / "gnuradio_source.py"
ITEMS = 480_000  # 2 s at 240 kS/s


def gnuradio_available() -> bool:
    if not Path("/usr/bin/python3").exists():
        return False
    probe = subprocess.run(["/usr/bin/python3", "-c", "import gnuradio.zeromq"], capture_output=True)
    return probe.returncode == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.slow
@pytest.mark.skipif(not gnuradio_available(), reason="GNU Radio missing: apt-get install gnuradio")
def test_daemon_ingests_every_item_of_a_real_gnuradio_flowgraph(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    gr_rx = {"id": "gnuradio", "kind": "gnuradio_zmq", "lat": 45.044, "lon": 7.672, "alt_m": 250.0,
             "endpoint": endpoint, "socket_type": "pull", "pass_tags": True}
    receivers = [rx for rx in default_receivers() if rx["id"] in ("giaveno", "montanaro", "giovi")] + [gr_rx]
    flowgraph = subprocess.Popen(
        ["/usr/bin/python3", str(FLOWGRAPH), "--endpoint", endpoint, "--sink", "push", "--items", str(ITEMS)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert flowgraph.stdout.readline().strip() == "started"
        with running_daemon(tmp_path, overrides={"receivers": receivers}) as d:
            deadline = time.monotonic() + 60
            received = 0.0
            while time.monotonic() < deadline:
                text = urllib.request.urlopen(d.metrics_url, timeout=5).read().decode()
                received = metric(text, "heimdall_samples_received_total", receiver="gnuradio")
                if received >= ITEMS:
                    break
                time.sleep(0.2)  # polling a counter, not synchronising: the loop ends on the condition
            assert received == ITEMS
            assert metric(text, "heimdall_bad_frames_total", receiver="gnuradio") == 0
            assert metric(text, "heimdall_samples_dropped_total", receiver="gnuradio", stage="source") == 0
            assert metric(text, "heimdall_sample_rate_hertz", receiver="gnuradio") == 240e3  # from the rx_rate tag
        assert re.search(r"done", flowgraph.stdout.readline())
    finally:
        flowgraph.stdin.close()
        try:
            flowgraph.wait(timeout=5)
        except subprocess.TimeoutExpired:
            flowgraph.kill()
            flowgraph.wait()
        flowgraph.stdout.close()
        flowgraph.stderr.close()
