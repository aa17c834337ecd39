"""Run ``heimdall check`` and ``heimdall run`` on the same config file in-process and compare their verdicts.

``run`` goes through ``streamer.cli.main`` as an operator's would (config load, ``Daemon`` construction,
``Daemon.start``) with its stop event already set, so an accepted config starts, stops at once and exits 0,
and a refused one exits 2 with the error line ``check`` printed. Signal handlers are left alone.

Configs are dicts written as TOML (``write_config``); ``BASE`` is one simulated receiver on ephemeral ports.
"""

from __future__ import annotations

import math
import signal
import threading
from pathlib import Path
from typing import Any

from streamer import cli
from streamer.tools import daemon as daemon_command

RX = {"id": "a", "kind": "simulator", "lat": 45.0, "lon": 7.0}
BASE: dict[str, Any] = {
    "pipeline": {"min_receivers": 1},
    "estimator": {"kind": "physics"},
    "output": {"endpoint": "tcp://127.0.0.1:*", "publish_truth": False},
    "metrics": {"port": 0},
    "receivers": [RX],
}


def merged(overrides: dict[str, Any], base: dict[str, Any] = BASE) -> dict[str, Any]:
    """``base`` with ``overrides`` merged table by table (a list, such as ``receivers``, replaces)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(value, out[key])
        else:
            out[key] = value
    return out


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {v!r}")


def toml_text(doc: dict[str, Any]) -> str:
    """A small TOML writer: scalars, arrays, nested tables and ``[[receivers]]``."""
    lines: list[str] = []

    def table(prefix: str, d: dict[str, Any]) -> None:
        for k, v in d.items():
            if not isinstance(v, dict):
                lines.append(f"{k} = {_value(v)}")
        for k, v in d.items():
            if isinstance(v, dict):
                lines.append(f"[{prefix}{k}]")
                table(f"{prefix}{k}.", v)

    receivers = doc.get("receivers", [])
    table("", {k: v for k, v in doc.items() if k != "receivers"})
    if not receivers:
        lines.insert(0, "receivers = []")
    for rx in receivers:
        lines.append("[[receivers]]")
        lines.extend(f"{k} = {_value(v)}" for k, v in rx.items())
    return "\n".join(lines) + "\n"


def write_config(folder: Path, doc: dict[str, Any], name: str = "site.toml") -> Path:
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(toml_text(doc))
    return path


def error_line(stderr: str) -> str | None:
    """The ``heimdall: error: ...`` line of a run's stderr, or None."""
    return next((line for line in stderr.splitlines() if line.startswith("heimdall: error: ")), None)


def check_and_run(path: Path, capsys, monkeypatch) -> dict[str, tuple[int, str | None]]:
    """``{"check": (exit code, error line), "run": (...)}`` for the same config file."""
    monkeypatch.setattr(signal, "signal", lambda *args: None)

    def already_stopped() -> threading.Event:
        stop = threading.Event()
        stop.set()
        return stop

    monkeypatch.setattr(daemon_command, "stop_on_signals", already_stopped)
    verdicts = {}
    for command in ("check", "run"):
        code = cli.main([command, "-c", str(path)])
        verdicts[command] = (code, error_line(capsys.readouterr().err))
    return verdicts


def assert_both_refuse(path: Path, capsys, monkeypatch, *fragments: str) -> str:
    """Both exit 2 with the same error line, which names the file and holds every fragment; returns it."""
    verdicts = check_and_run(path, capsys, monkeypatch)
    (check_code, check_line), (run_code, run_line) = verdicts["check"], verdicts["run"]
    assert (check_code, run_code) == (2, 2), verdicts
    assert check_line == run_line, verdicts
    assert check_line.startswith(f"heimdall: error: {path}: "), check_line
    for fragment in fragments:
        assert fragment in check_line, (fragment, check_line)
    return check_line
