"""Daemon.reload (SIGHUP) in process: a config that cannot be applied, for whatever reason, leaves the
running receivers, pipeline and config exactly as they were; a removed receiver takes its gauges along."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from prometheus_client import CollectorRegistry

from streamer.daemon import app as app_mod
from streamer.daemon.app import Daemon
from streamer.config import load
from tests.helpers.daemon import ROOT, default_config, merge, to_toml


def _write(path, cfg: dict) -> str:
    path.write_text(to_toml(cfg))
    return str(path)


@pytest.fixture
def daemon(tmp_path):
    cfg = merge(default_config(), {"metrics": {"enabled": False}, "estimator": {"kind": "physics"}})
    path = _write(tmp_path / "site.toml", cfg)
    registry = CollectorRegistry()
    d = Daemon(load(path), registry=registry)  # runners built, not started: reload's bookkeeping is what is tested
    d.registry = registry
    d.base_config = cfg
    yield d
    d.shutdown()


def _snapshot(d: Daemon):
    return dict(d.runners), d.pipeline, d.config, list(d.estimators)


BROKEN = {
    "alt_m nan": lambda cfg: merge(cfg, {"receivers": [{**cfg["receivers"][0], "alt_m": float("nan")}, *cfg["receivers"][1:]]}),
    "buffer_s inf": lambda cfg: merge(cfg, {"pipeline": {"buffer_s": float("inf")}}),
    "buffer_s 1e7": lambda cfg: merge(cfg, {"pipeline": {"buffer_s": 1e7}}),
    "min_receivers a string": lambda cfg: merge(cfg, {"pipeline": {"min_receivers": "three"}}),
    "no receivers": lambda cfg: {k: v for k, v in cfg.items() if k != "receivers"},
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_reload_to_a_broken_config_is_refused_and_changes_nothing(daemon, tmp_path, name):
    before = _snapshot(daemon)
    path = _write(tmp_path / "site.toml", BROKEN[name](daemon.base_config))
    assert daemon.reload(path) is False
    assert _snapshot(daemon) == before
    assert daemon.registry.get_sample_value("heimdall_config_reloads_total", {"result": "refused"}) == 1


def test_a_reload_to_a_file_that_is_not_utf8_is_refused(daemon, tmp_path):
    before = _snapshot(daemon)
    path = tmp_path / "site.toml"
    path.write_bytes(b"[network]\nname = \"\xff\xfe\"\n")
    assert daemon.reload(str(path)) is False
    assert _snapshot(daemon) == before


def test_a_reload_whose_pipeline_fails_to_build_stops_nothing(daemon, tmp_path, monkeypatch, caplog):
    """Anything that fails while the new pipeline is built (not only HeimdallError) is a refusal, before any
    runner is stopped."""
    changed = merge(daemon.base_config, {"receivers": daemon.base_config["receivers"][1:]})
    path = _write(tmp_path / "site.toml", changed)
    stopped = []
    for runner in daemon.runners.values():
        monkeypatch.setattr(runner, "stop", lambda timeout_s=1.0, rid=runner.rx.id: stopped.append(rid))

    def broken_pipeline(*args, **kwargs):
        raise MemoryError("ring buffer")

    monkeypatch.setattr(app_mod, "Pipeline", broken_pipeline)
    before = _snapshot(daemon)
    assert daemon.reload(path) is False
    assert stopped == [] and _snapshot(daemon) == before
    assert "reload refused, keeping the running config" in caplog.text


def test_a_receiver_removed_by_reload_takes_its_gauges_along(daemon, tmp_path):
    gone = daemon.base_config["receivers"][0]["id"]
    daemon.metrics.receiver_up.labels(gone).set(1)  # as the pipeline sets it while the receiver delivers
    daemon._counters.gauge(gone, "smeter_dbm", -90.0)
    daemon.metrics.samples_received.labels(gone).inc(1000)
    path = _write(tmp_path / "site.toml", merge(daemon.base_config, {"receivers": daemon.base_config["receivers"][1:]}))
    assert daemon.reload(path) is True
    value = daemon.registry.get_sample_value
    assert value("heimdall_receiver_up", {"receiver": gone}) is None
    assert value("heimdall_receiver_reading", {"receiver": gone, "name": "smeter_dbm"}) is None
    assert value("heimdall_samples_received_total", {"receiver": gone}) == 1000  # totals stay
    assert gone not in daemon.runners
    daemon._on_state(gone, False)  # its runner's last word arrives after the reload
    assert value("heimdall_receiver_up", {"receiver": gone}) is None


def test_sighup_and_sigterm_while_the_daemon_is_still_starting_do_not_kill_it(tmp_path):
    """The handlers are installed before the config and model load: SIGHUP then is a reload, not death."""
    path = _write(tmp_path / "site.toml", default_config())
    proc = subprocess.Popen([sys.executable, "-m", "streamer", "run", "-c", path], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []

    def read_until(marker: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                return
            lines.append(line)
            if marker in line:
                return

    try:
        read_until("starting with")  # the handlers are in place; the config, estimators and sockets are not
        assert "model" not in "".join(lines) and "publishing on" not in "".join(lines)
        proc.send_signal(signal.SIGHUP)
        proc.send_signal(signal.SIGHUP)
        read_until("reloaded")
        assert proc.poll() is None, "".join(lines)
        assert any("reloaded" in line for line in lines), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_a_reload_brings_the_pacing_limits_of_the_new_pipeline_section(daemon, tmp_path):
    """Daemon.step settles the pacer with limits computed once per config (by build), not every step."""
    from streamer.daemon.pacing import limits

    assert daemon.pace_limits == limits(daemon.config)
    tolerance = daemon.config.pipeline.late_tolerance_s / 2
    path = _write(tmp_path / "site.toml", merge(daemon.base_config, {"pipeline": {"late_tolerance_s": tolerance}}))
    assert daemon.reload(path) is True
    assert daemon.pace_limits == limits(daemon.config)
    assert daemon.pace_limits["lead_s"] == tolerance / 2
