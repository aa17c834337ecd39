"""Run the real daemon (``python -m streamer run -c CFG``) as a subprocess for integration tests.

The config starts from config/default.toml (the simulated seven-receiver network) with the metrics port
at 0 and the output endpoint on an ephemeral port, so tests never collide; ``overrides`` is merged into it
table by table (a list, such as ``receivers``, replaces the default one). The daemon logs the bound
addresses on stderr; they are read from there, with a timeout, not guessed.

Examples
--------
A test (``tmp_path`` is pytest's)::

    with running_daemon(tmp_path, overrides={"pipeline": {"min_receivers": 2}}) as d:
        body = urllib.request.urlopen(d.metrics_url).read()
        sub.connect(d.pub_endpoint)

Leaving the block sends SIGTERM and fails the test unless the daemon exits with status 0 within
``stop_timeout_s``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import msgpack
import numpy as np
import pytest
import zmq

from streamer.daemon.messages import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "config" / "default.toml"

METRICS_RE = re.compile(r"metrics on (http://\S+/metrics)")
PUBLISH_RE = re.compile(r"publishing on (\S+://\S+?)(?:\s|$)")


class DaemonError(AssertionError):
    """The daemon did not start, did not log its addresses in time, or did not stop cleanly."""


# Config ----------------------------------------------------------------------------------------------
def default_config() -> dict[str, Any]:
    """config/default.toml as a dict, with the metrics port and the output endpoint made ephemeral."""
    with DEFAULT_CONFIG.open("rb") as f:
        cfg = tomllib.load(f)
    cfg.setdefault("metrics", {})["port"] = 0
    cfg["metrics"].setdefault("host", "127.0.0.1")
    cfg.setdefault("output", {})["endpoint"] = "tcp://127.0.0.1:*"
    return cfg


def default_receivers() -> list[dict[str, Any]]:
    """The default network's ``[[receivers]]`` tables (to extend, e.g. with one extra receiver)."""
    return default_config()["receivers"]


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in: tables recursively, everything else (lists too) replaced."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _toml_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list) and not any(isinstance(v, dict) for v in value):
        return "[" + ", ".join(_toml_value(v, where) for v in value) + "]"
    raise TypeError(f"{where}: cannot write {type(value).__name__} to TOML")


def to_toml(cfg: dict[str, Any]) -> str:
    """Write a config dict as TOML: top-level scalars, tables, sub-tables and arrays of tables."""
    lines: list[str] = []

    def table(data: dict[str, Any], path: str, header: str | None) -> None:
        scalars = {k: v for k, v in data.items() if not _is_table(v) and not _is_table_array(v) and v is not None}
        if header is not None:
            lines.append("")
            lines.append(header)
        for key, value in scalars.items():
            lines.append(f"{key} = {_toml_value(value, f'{path}{key}')}")
        for key, value in data.items():
            if _is_table(value):
                table(value, f"{path}{key}.", f"[{path}{key}]")
            elif _is_table_array(value):
                for item in value:
                    table(item, f"{path}{key}.", f"[[{path}{key}]]")

    table(cfg, "", None)
    text = "\n".join(lines).lstrip("\n") + "\n"
    tomllib.loads(text)  # what we wrote must read back
    return text


def _is_table(value: Any) -> bool:
    return isinstance(value, dict)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def write_config(directory: Path, overrides: dict[str, Any] | None = None, name: str = "heimdall-test.toml") -> Path:
    """Write ``default_config()`` merged with ``overrides`` to ``directory/name``; returns the path."""
    path = Path(directory) / name
    path.write_text(to_toml(merge(default_config(), overrides or {})))
    return path


# Process ---------------------------------------------------------------------------------------------
@dataclass
class RunningDaemon:
    """A started daemon: its process, config and the addresses it logged."""

    proc: subprocess.Popen
    config_path: Path
    metrics_url: str | None = None
    pub_endpoint: str | None = None
    _lines: list[str] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _eof: bool = False

    @property
    def stderr(self) -> str:
        """Everything the daemon has logged so far."""
        with self._cond:
            return "".join(self._lines)

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self._lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for_log(self, pattern: re.Pattern[str] | str, timeout_s: float) -> re.Match[str]:
        """First match of ``pattern`` in the log, waiting up to ``timeout_s``; DaemonError if none comes."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                match = regex.search("".join(self._lines))
                if match:
                    return match
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    break
                self._cond.wait(left)
        state = "exited" if self._eof else f"still running after {timeout_s:.0f} s"
        raise DaemonError(f"daemon {state} without logging {regex.pattern!r}; stderr:\n{self.stderr[-4000:]}")

    def stop(self, timeout_s: float = 2.0) -> int:
        """SIGTERM, then wait; DaemonError unless it exits with status 0 within ``timeout_s``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise DaemonError(f"daemon ignored SIGTERM for {timeout_s} s (killed); stderr:\n{self.stderr[-4000:]}") from None
        if rc != 0:
            raise DaemonError(f"daemon exited with status {rc}; stderr:\n{self.stderr[-4000:]}")
        return rc


@contextlib.contextmanager
def running_daemon(
    directory: Path,
    overrides: dict[str, Any] | None = None,
    *,
    args: tuple[str, ...] = (),
    start_timeout_s: float = 30.0,
    stop_timeout_s: float = 2.0,
) -> Iterator[RunningDaemon]:
    """Write a test config into ``directory``, start the daemon, yield it once it has logged its addresses.

    ``args`` go before the subcommand (e.g. ``("-v",)``). On leaving, the daemon gets SIGTERM and must exit
    with status 0 within ``stop_timeout_s`` (checked only when the body did not already fail).
    """
    config_path = write_config(directory, overrides)
    cfg = tomllib.loads(config_path.read_text())
    metrics_enabled = cfg.get("metrics", {}).get("enabled", True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer", *args, "run", "-c", str(config_path)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    daemon = RunningDaemon(proc=proc, config_path=config_path)
    reader = threading.Thread(target=daemon._drain, name="daemon-stderr", daemon=True)
    reader.start()
    body_failed = False
    try:
        daemon.pub_endpoint = daemon.wait_for_log(PUBLISH_RE, start_timeout_s).group(1)
        if metrics_enabled:
            daemon.metrics_url = daemon.wait_for_log(METRICS_RE, start_timeout_s).group(1)
        yield daemon
    except BaseException:
        body_failed = True
        raise
    finally:
        try:
            if body_failed:
                with contextlib.suppress(DaemonError):
                    daemon.stop(stop_timeout_s)
            else:
                daemon.stop(stop_timeout_s)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(5.0)
            if proc.stderr is not None:
                proc.stderr.close()


# Output ----------------------------------------------------------------------------------------------
LOC_KEYS = {"v", "seq", "t_start_ns", "t_end_ns", "lat", "lon", "cov_en_m2", "ellipse", "ellipses", "estimator", "receivers",
            "rx_power_dbm", "model", "latency_ms"}


#: A fixed start makes the simulated world (track, keying, shadowing, noise) the same on every run: the
#: windows of one 40 s stretch of track are strongly correlated, so a coverage figure over them is only
#: repeatable, not a calibration measurement (that is tests/streamer/test_physics.py and MODEL_CARD.md).
START_NS = 1_790_000_000_000_000_000


def reproducible_receivers(duration_s: float | None = None) -> list[dict[str, Any]]:
    """The default network paced in real time from ``START_NS`` at 48 kS/s: the same simulated world every run."""
    rxs = default_receivers()
    for rx in rxs:
        rx["realtime"] = True  # paced: unpaced receivers in threads drift apart and get masked late
        rx["start_ns"] = START_NS
        rx["sample_rate_hz"] = 48_000.0  # cheaper to simulate; the channelizer still mixes and resamples (2:1)
        rx["center_freq_hz"] = 145.49e6
        if duration_s is not None:
            rx["duration_s"] = duration_s
    return rxs


def collect_messages(endpoint: str, *, n_loc: int, timeout_s: float) -> dict[str, list[dict]]:
    """Subscribe to ``endpoint`` and decode messages by topic until ``n_loc`` localizations or ``timeout_s``."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    got: dict[str, list[dict]] = {"loc": [], "truth": [], "status": []}
    end = time.monotonic() + timeout_s
    try:
        while time.monotonic() < end and len(got["loc"]) < n_loc:
            if sock.poll(200):
                topic, body = sock.recv_multipart()
                got.setdefault(topic.decode(), []).append(msgpack.unpackb(body, raw=False))
    finally:
        sock.close()
    return got


def check_localization_schema(msg: dict) -> None:
    """Assert that one ``loc`` message has every key of docs/protocol.md with consistent values."""
    assert LOC_KEYS <= set(msg), LOC_KEYS - set(msg)
    assert msg["v"] == SCHEMA_VERSION and msg["estimator"] in ("physics", "onnx")
    assert msg["t_end_ns"] > msg["t_start_ns"]
    assert -90 <= msg["lat"] <= 90 and -180 <= msg["lon"] <= 180
    cov = np.array(msg["cov_en_m2"])
    assert cov.shape == (2, 2) and np.allclose(cov, cov.T) and np.all(np.linalg.eigvalsh(cov) > 0)
    e = msg["ellipse"]
    assert e["p"] == pytest.approx(0.95)
    assert e["semi_major_m"] >= e["semi_minor_m"] > 0 and 0 <= e["azimuth_deg"] < 180
    # A credible ellipse: the covariance's axes, ``scale`` standard deviations long (docs/protocol.md).
    assert 0.5 < e["scale"] < 5.0
    assert e["semi_major_m"] == pytest.approx(e["scale"] * np.sqrt(np.linalg.eigvalsh(cov)[1]), rel=1e-3)
    assert [x["p"] for x in msg["ellipses"]] == [0.68, 0.95] and msg["ellipses"][1] == e
    assert msg["ellipses"][0]["scale"] < e["scale"]
    assert set(msg["rx_power_dbm"]) == set(msg["receivers"]) and len(msg["receivers"]) >= 3
    assert {"name", "version", "sha256"} <= set(msg["model"])
    assert msg["latency_ms"]["processing"] > 0
