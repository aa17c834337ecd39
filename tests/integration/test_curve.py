"""End to end with CURVE on both sides: `heimdall run` (subprocess) with [security] curve_ingest and
curve_output; an edge FramedPublisher with an allowed key delivers IQ, one with a stranger's key is refused
and counted; a subscriber with an allowed key receives localizations, one without does not and is counted."""

from __future__ import annotations

import os
import time
import urllib.request

import msgpack
import numpy as np
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from receivers.base import IQBlock
from receivers.zmq_framed import FramedPublisher
from streamer.core import security
from tests.helpers.daemon import default_receivers, running_daemon

TIMEOUT_S = 60.0
RATE = 48_000.0


def unpaced_receivers():
    rxs = default_receivers()
    for rx in rxs:
        rx.update(realtime=False, sample_rate_hz=RATE, center_freq_hz=145.49e6)
    return rxs


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def curve_subscriber(ctx, endpoint: str, keys: security.KeyPair, server_key: bytes) -> zmq.Socket:
    sock = ctx.socket(zmq.SUB)
    sock.linger = 0
    security.make_curve_client(sock, keys, server_key)
    sock.setsockopt(zmq.SUBSCRIBE, b"loc")
    sock.connect(endpoint)
    return sock


@pytest.mark.slow
def test_curve_admits_the_right_keys_and_refuses_and_counts_the_others(tmp_path):
    own, ingest_ok, output_ok = tmp_path / "own", tmp_path / "ingest-allowed", tmp_path / "output-allowed"
    ingest_ok.mkdir()
    output_ok.mkdir()
    paths = {name: security.generate_keys(own, name) for name in ("daemon", "edge", "intruder", "sub", "eavesdropper")}
    os.link(paths["edge"][0], ingest_ok / "edge.key")
    os.link(paths["sub"][0], output_ok / "sub.key")
    keys = {name: security.load_secret_key(secret, key=name) for name, (_, secret) in paths.items()}
    server_key = keys["daemon"].public

    ctx = zmq.Context()
    edges = {name: FramedPublisher("tcp://127.0.0.1:*", context=ctx, curve_keys=keys[name], server_key=server_key)
             for name in ("edge", "intruder")}
    extra = [{"id": name, "kind": "zmq", "lat": 45.1, "lon": 7.5, "alt_m": 300.0, "endpoint": pub.endpoint}
             for name, pub in edges.items()]
    overrides = {
        "receivers": unpaced_receivers() + extra,
        "output": {"status_interval_s": 0.5},
        "security": {"curve_ingest": True, "curve_output": True, "secret_key": str(paths["daemon"][1]),
                     "ingest_clients_dir": str(ingest_ok), "output_clients_dir": str(output_ok)},
    }
    try:
        with running_daemon(tmp_path, overrides=overrides) as d:
            sub = curve_subscriber(ctx, d.pub_endpoint, keys["sub"], server_key)
            spy = curve_subscriber(ctx, d.pub_endpoint, keys["eavesdropper"], server_key)
            try:
                assert edges["edge"].wait_for_subscriber("edge", TIMEOUT_S), "the daemon never subscribed to the allowed edge"
                index = 0
                deadline = time.monotonic() + TIMEOUT_S
                locs, samples = [], {}
                while time.monotonic() < deadline:
                    n = 4800
                    t0 = time.time_ns()
                    edges["edge"].send(IQBlock("edge", np.full(n, 1e-3 + 0j, np.complex64), index, t0, "host", RATE, 145.49e6))
                    edges["intruder"].send(IQBlock("intruder", np.zeros(n, np.complex64), index, t0, "host", RATE, 145.49e6))
                    index += n
                    if sub.poll(100):
                        topic, body = sub.recv_multipart()
                        locs.append(msgpack.unpackb(body, raw=False))
                    samples = scrape(d.metrics_url)
                    if (locs and value(samples, "heimdall_samples_received_total", receiver="edge") > 0
                            and value(samples, "heimdall_auth_failures_total", socket="output") > 0
                            and value(samples, "heimdall_auth_failures_total", socket="ingest:intruder") > 0):
                        break
                assert locs, "the subscriber with an allowed key received no localization"
                assert "lat" in locs[0] and "ellipse" in locs[0]
                assert value(samples, "heimdall_samples_received_total", receiver="edge") > 0, "no IQ from the allowed edge"
                assert value(samples, "heimdall_auth_failures_total", socket="ingest:intruder") > 0, "intruder not counted"
                assert value(samples, "heimdall_auth_failures_total", socket="output") > 0, "eavesdropper not counted"
                assert value(samples, "heimdall_samples_received_total", receiver="intruder") == 0
                assert value(samples, "heimdall_auth_failures_total", socket="ingest:edge") == 0
                assert not spy.poll(0), "a subscriber without an allowed key received a message"
                assert not edges["intruder"].wait_for_subscriber("intruder", 0.1)
            finally:
                sub.close()
                spy.close()
    finally:
        for pub in edges.values():
            pub.close()
        ctx.term()


def test_a_loose_secret_key_stops_the_daemon_with_the_fix(tmp_path):
    import subprocess
    import sys

    from tests.helpers.daemon import ROOT, write_config

    allowed = tmp_path / "allowed"
    allowed.mkdir()
    security.generate_keys(allowed, "sub")
    _, secret = security.generate_keys(tmp_path, "daemon")
    secret.chmod(0o644)
    cfg = write_config(tmp_path, {"security": {"curve_output": True, "secret_key": str(secret),
                                               "output_clients_dir": str(allowed)}})
    proc = subprocess.run([sys.executable, "-m", "streamer", "run", "-c", str(cfg)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "security.secret_key" in proc.stderr and f"chmod 600 {secret}" in proc.stderr
