"""The daemon under a real Prometheus: every Grafana panel query returns data, the documented sample
accounting balances, the alert rules load and evaluate, and a receiver that delivers nothing shows up
as pending HeimdallReceiverDown.

The network is the default simulated one plus one framed-IQ receiver ("edge", kind zmq) fed by this test
with malformed messages only, so that the bad-frame, masked and receiver-down views have something to show.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import signal
import socket
import subprocess
import time
import tomllib
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from tests.helpers.daemon import (
    default_config,
    default_receivers,
    merge,
    running_daemon,
    to_toml,
)
from tests.helpers.dashboard import load_dashboard, substitute, targets, variable_values
from tests.helpers.metrics_doc import METRICS_DOC, documented_series
from tests.helpers.promql import metric_names

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus" / "heimdall-alerts.yml"
DEADLINE_S = 50.0
EDGE = "edge"
#: band-2m's seeded transmitters key from the first seconds after this start (tests/integration/test_band_daemon.py).
BAND_START_NS = 1_790_000_000_000_000_000


def _prometheus_binary() -> str:
    path = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if path is None:
        pytest.skip("prometheus not found: apt-get install prometheus (Debian/Ubuntu) to run the Prometheus integration test")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def running_prometheus(directory: Path, target: str) -> Iterator[str]:
    """Prometheus scraping ``target`` (host:port) every second with the shipped alert rules; yields its base URL."""
    binary = _prometheus_binary()
    port = _free_port()
    config = directory / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {json.dumps(str(RULES))}\n"
        f"scrape_configs:\n  - job_name: heimdall\n    static_configs:\n      - targets: [{json.dumps(target)}]\n"
    )
    log_path = directory / "prometheus.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={directory / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20.0
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{base}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus not ready after 20 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def query(base: str, promql: str) -> list[dict]:
    """Instant query; the result vector (an error from Prometheus fails the test: the query is wrong)."""
    body = _get_json(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    assert body["status"] == "success", f"{promql}: {body}"
    assert body["data"]["resultType"] == "vector", promql
    return body["data"]["result"]


def _finite(result: list[dict]) -> bool:
    return any(math.isfinite(float(r["value"][1])) for r in result)


def documented_residual_query() -> str:
    """The PromQL of the sample accounting residual, as docs/metrics.md states it."""
    text = METRICS_DOC.read_text()
    match = re.search(r"In PromQL, the residual per receiver:\s*```\n(.*?)```", text, re.DOTALL)
    assert match, "docs/metrics.md: residual query not found"
    return match.group(1)


def band_series() -> set[str]:
    """Series only a daemon with a channel plan has: those labelled by channel (docs/metrics.md, Band watch)."""
    return {name for name, (_, labels) in documented_series().items() if "channel" in labels}


def _problems(base: str, rate_hz: float) -> dict[str, str]:
    """Everything not (yet) as expected, by check; empty when all is well."""
    problems: dict[str, str] = {}
    targets_now = _get_json(f"{base}/api/v1/targets")["data"]["activeTargets"]
    if not targets_now or targets_now[0]["health"] != "up":
        return {"target": f"not up yet: {[(t['health'], t.get('lastError')) for t in targets_now]}"}

    variables = variable_values(rate_interval="30s")
    for title, target in targets(load_dashboard()):
        if metric_names(target["expr"]) & band_series():
            continue  # a band daemon's panels: test_band_panels_return_data_from_a_live_band_daemon
        expr = substitute(target["expr"], variables)
        result = query(base, expr)
        if not _finite(result):
            problems[f"panel {title!r} {target['refId']}"] = f"no finite data from {expr}"

    received = query(base, "heimdall_samples_received_total")
    receivers = {r["metric"]["receiver"] for r in received}
    expected = {rx["id"] for rx in default_receivers()} | {EDGE}
    if receivers != expected:
        problems["received"] = f"heimdall_samples_received_total for {sorted(receivers)}, expected {sorted(expected)}"
    for series in ("heimdall_samples_used_total", "heimdall_samples_buffered",
                   'heimdall_samples_dropped_total{stage="pipeline"}', "heimdall_localizations_published_total"):
        if not query(base, series):
            problems[series] = "absent"

    residual = query(base, documented_residual_query())
    if {r["metric"]["receiver"] for r in residual} != expected:
        problems["accounting"] = f"residual query covers {sorted(r['metric']['receiver'] for r in residual)}"
    for r in residual:
        value = float(r["value"][1])
        if not abs(value) <= rate_hz:  # one second of input at most (docs: off by about one 50 ms step)
            problems[f"accounting {r['metric']['receiver']}"] = f"received - used - buffered - pipeline drops = {value:.0f}"

    if not query(base, f'heimdall_bad_frames_total{{receiver="{EDGE}", reason="short_frame"}} > 0'):
        problems["bad frames"] = "no short_frame counted for the edge receiver"

    groups = _get_json(f"{base}/api/v1/rules")["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    if len(rules) != 5 or any(rule["health"] != "ok" for rule in rules):
        problems["rules"] = str([(rule["name"], rule["health"], rule.get("lastError")) for rule in rules])
    alerts = _get_json(f"{base}/api/v1/alerts")["data"]["alerts"]
    down = {a["labels"].get("receiver"): a["state"] for a in alerts if a["labels"]["alertname"] == "HeimdallReceiverDown"}
    if down != {EDGE: "pending"}:
        problems["HeimdallReceiverDown"] = f"expected only {EDGE} pending, got {down}"
    return problems


@pytest.mark.slow
def test_dashboard_queries_return_data_from_a_live_daemon(tmp_path):
    _prometheus_binary()
    ctx = zmq.Context.instance()
    edge_pub = ctx.socket(zmq.PUB)
    edge_pub.linger = 0
    edge_pub.bind("tcp://127.0.0.1:*")
    edge_endpoint = edge_pub.getsockopt_string(zmq.LAST_ENDPOINT)
    edge = {"id": EDGE, "kind": "zmq", "lat": 45.1, "lon": 7.5, "alt_m": 300.0, "endpoint": edge_endpoint}
    rate_hz = float(default_config()["receivers"][0].get("sample_rate_hz", 240_000.0))
    try:
        with running_daemon(tmp_path, overrides={"receivers": default_receivers() + [edge]}) as daemon:
            host_port = urllib.parse.urlsplit(daemon.metrics_url).netloc
            with running_prometheus(tmp_path, host_port) as base:
                deadline = time.monotonic() + DEADLINE_S
                while True:
                    # Two frames instead of three: counted as bad_frames{reason="short_frame"} by the edge adapter.
                    edge_pub.send_multipart([EDGE.encode(), b"not a framed-IQ message"])
                    problems = _problems(base, rate_hz)
                    if not problems:
                        break
                    if time.monotonic() > deadline:
                        # What the daemon did with its windows, and what it logged, say why a panel is empty.
                        windows = {r["metric"].get("outcome"): r["value"][1] for r in query(base, "heimdall_windows_total")}
                        pytest.fail(f"after {DEADLINE_S:.0f} s:\n" + "\n".join(f"{k}: {v}" for k, v in problems.items())
                                    + f"\nheimdall_windows_total by outcome: {windows}\ndaemon log (tail):\n{daemon.stderr[-3000:]}")
                    time.sleep(0.5)
            assert daemon.proc.poll() is None, "the daemon died under scraping"
    finally:
        edge_pub.close()


def _band_problems(base: str, receivers: set[str]) -> dict[str, str]:
    """What a band daemon does not (yet) show: its dashboard panels, received power, the accounting residual."""
    targets_now = _get_json(f"{base}/api/v1/targets")["data"]["activeTargets"]
    if not targets_now or targets_now[0]["health"] != "up":
        return {"target": f"not up yet: {[(t['health'], t.get('lastError')) for t in targets_now]}"}
    problems: dict[str, str] = {}
    variables = variable_values(rate_interval="30s")
    for title, target in targets(load_dashboard()):
        if metric_names(target["expr"]) & (band_series() | {"heimdall_received_power_dbm"}):
            expr = substitute(target["expr"], variables)
            if not _finite(query(base, expr)):
                problems[f"panel {title!r} {target['refId']}"] = f"no finite data from {expr}"
    # The gauge starts at 0 dBm; the band path sets it from the emissions each receiver hears (min_receivers = 3).
    readings = query(base, "heimdall_received_power_dbm != 0")
    if len(readings) < 3:
        problems["received power"] = f"set for {sorted(r['metric']['receiver'] for r in readings)} only"
    started = query(base, "sum(heimdall_emissions_started_total)")
    if not started or float(started[0]["value"][1]) < 1:
        problems["emissions"] = "none started yet"
    residual = query(base, documented_residual_query())
    if {r["metric"]["receiver"] for r in residual} != receivers:
        problems["accounting"] = f"residual query covers {sorted(r['metric']['receiver'] for r in residual)}"
    for r in residual:
        value = float(r["value"][1])
        if not abs(value) <= 240e3:  # one second of input at most (docs: off by about one 50 ms step)
            problems[f"accounting {r['metric']['receiver']}"] = f"received - used - buffered - pipeline drops = {value:.0f}"
    return problems


@pytest.mark.slow
def test_band_panels_return_data_from_a_live_band_daemon(tmp_path):
    """config/examples/band-2m.toml (eight channels, five simulated transmitters) under a real Prometheus: the band
    watch panels, the received power the band path sets, and the accounting of every receiver."""
    _prometheus_binary()
    with (ROOT / "config" / "examples" / "band-2m.toml").open("rb") as f:
        band = tomllib.load(f)
    band.pop("output", None)
    for rx in band["receivers"]:
        rx.update(realtime=True, start_ns=BAND_START_NS)
        if rx["id"] == "milano":  # tuned to the 145.5 channel's centre: a DC offset it alone hears, left out in 2 s
            rx["dc_offset_db"] = 20.0
    band.setdefault("pipeline", {})["lone_carrier_s"] = 2.0
    receivers = {rx["id"] for rx in band["receivers"]}
    with running_daemon(tmp_path, overrides=band, start_timeout_s=60.0, stop_timeout_s=10.0) as daemon:
        host_port = urllib.parse.urlsplit(daemon.metrics_url).netloc
        with running_prometheus(tmp_path, host_port) as base:
            deadline = time.monotonic() + DEADLINE_S
            while problems := _band_problems(base, receivers):
                if time.monotonic() > deadline:
                    pytest.fail(f"after {DEADLINE_S:.0f} s:\n" + "\n".join(f"{k}: {v}" for k, v in problems.items())
                                + f"\ndaemon log (tail):\n{daemon.stderr[-3000:]}")
                time.sleep(0.5)  # polling Prometheus; the loop ends on the condition
        assert daemon.proc.poll() is None, "the daemon died under scraping"


def test_helper_config_round_trips(tmp_path):
    """The helper's TOML writer keeps what tests override (and the daemon's own parser accepts it)."""
    from streamer.config import load

    overrides = {"pipeline": {"min_receivers": 2}, "receivers": default_receivers()[:3]}
    text = to_toml(merge(default_config(), overrides))
    assert tomllib.loads(text) == merge(default_config(), overrides)
    path = tmp_path / "c.toml"
    path.write_text(text)
    cfg = load(path)
    assert cfg.pipeline.min_receivers == 2 and [rx.id for rx in cfg.receivers] == ["giaveno", "montanaro", "torino"]
    assert cfg.metrics.port == 0
