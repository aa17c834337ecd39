"""config/systemd/heimdall.service: the directives operations rely on, and `systemd-analyze verify` finds
nothing to complain about."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "config" / "systemd" / "heimdall.service"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_service_directives():
    service = _unit()["Service"]
    assert service["ExecStart"] == "/opt/heimdall/.venv/bin/heimdall run -c /etc/heimdall/heimdall.toml"
    expected = {
        "Restart": "on-failure",
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "StateDirectory": "heimdall",
        "KillSignal": "SIGTERM",
    }
    for key, value in expected.items():
        assert service.get(key) == value, f"{key}={service.get(key)!r}, expected {value!r}"
    assert _unit()["Install"]["WantedBy"] == "multi-user.target"


def test_reload_matches_what_the_daemon_implements():
    """ExecReload sends SIGHUP: only offer it once the daemon handles SIGHUP (otherwise reload kills it)."""
    handles_hup = "signal.SIGHUP" in (ROOT / "streamer" / "tools" / "daemon.py").read_text()  # `heimdall run`
    has_reload = "ExecReload" in _unit()["Service"]
    assert has_reload == handles_hup, (
        "streamer/ now handles SIGHUP: enable ExecReload=/bin/kill -HUP $MAINPID and update docs/operations.md"
        if handles_hup
        else "ExecReload would send SIGHUP, which ends the daemon (not handled in streamer/tools/daemon.py)"
    )


def test_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not found: apt-get install systemd to verify the unit file")
    # The venv under /opt does not exist here: verify every directive with an executable that does.
    text = re.sub(r"^ExecStart=\S+", "ExecStart=/bin/true", UNIT.read_text(), flags=re.MULTILINE)
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and output == "", output


def test_verify_catches_a_bad_directive(tmp_path):
    """systemd-analyze reports unknown keys on stderr (with exit status 0): the check above relies on that."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not found: apt-get install systemd to verify the unit file")
    unit = tmp_path / "bad.service"
    unit.write_text("[Service]\nExecStart=/bin/true\nProtectSystm=strict\n")
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "ProtectSystm" in result.stdout + result.stderr


EDGE_UNIT = ROOT / "config" / "systemd" / "heimdall-receiver@.service"


def test_the_edge_template_runs_heimdall_receiver_with_its_instance_at_the_lowest_priority():
    from streamer.cli import build_parser

    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str
    parser.read_string(EDGE_UNIT.read_text())
    service = parser["Service"]
    assert service["Nice"] == "19" and service["DynamicUser"] == "yes" and service["Restart"] == "on-failure"
    # The command line as systemd expands it for instance torino with EDGE_ARGS=--channelize, parsed by the CLI.
    line = (service["ExecStart"].replace("%i", "torino").replace("${PUBLISH}", "tcp://*:5561")
            .replace("$EDGE_ARGS", "--channelize"))
    program, *argv = line.split()
    assert program == "/opt/heimdall/.venv/bin/heimdall"
    args = build_parser("receiver").parse_args(argv)
    assert (args.id, args.config, args.publish, args.channelize) == ("torino", "/etc/heimdall/edge.toml", "tcp://*:5561", True)


def test_systemd_analyze_verifies_an_instance_of_the_edge_template(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not found: apt-get install systemd to verify the unit file")
    text = re.sub(r"^ExecStart=\S+", "ExecStart=/bin/true", EDGE_UNIT.read_text(), flags=re.MULTILINE)
    unit = tmp_path / "heimdall-receiver@torino.service"
    unit.write_text(text)
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and output == "", output
