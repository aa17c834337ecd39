"""The shipped Prometheus config and alert rules are valid, and promtool's unit tests prove each alert fires
on failing input and stays quiet on healthy input (config/prometheus/heimdall-alerts.test.yml)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.metrics_doc import exposed_series
from tests.helpers.promql import metric_names

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "config" / "prometheus"
RULES = PROM_DIR / "heimdall-alerts.yml"
RULE_TESTS = PROM_DIR / "heimdall-alerts.test.yml"

EXPECTED_ALERTS = {
    "HeimdallReceiverDown",
    "HeimdallSampleDropsHigh",
    "HeimdallNoLocalizations",
    "HeimdallNoLocalizationsSinceStart",
    "HeimdallProcessingSlow",
}


def _promtool() -> str:
    path = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if path is None:
        pytest.skip("promtool not found: apt-get install prometheus (Debian/Ubuntu) to check the alert rules")
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=PROM_DIR, capture_output=True, text=True, timeout=60)


def test_promtool_check_rules():
    result = _run(_promtool(), "check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout


def test_promtool_check_config():
    result = _run(_promtool(), "check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass():
    result = _run(_promtool(), "test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _rules() -> list[dict]:
    """The rules file read as far as these tests need (no YAML library in the test dependencies):
    alert name, ``for``, ``expr`` (inline or a ``|`` block), ``severity``, and which annotations are set."""
    rules: list[dict] = []
    lines = RULES.read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)- alert: (\w+)\s*$", line)
        if m:
            rules.append({"alert": m.group(2), "annotations": set()})
            continue
        if not rules:
            continue
        rule = rules[-1]
        key = re.match(r"^(\s*)(expr|for|severity|summary|description):\s*(.*)$", line)
        if not key:
            continue
        indent, name, value = len(key.group(1)), key.group(2), key.group(3).strip()
        if name == "expr" and value in ("|", ">", "|-", ">-"):
            block = []
            for more in lines[i + 1 :]:
                if more.strip() and len(more) - len(more.lstrip()) <= indent:
                    break
                block.append(more.strip())
            value = " ".join(block).strip()
        if name in ("summary", "description"):
            rule["annotations"].add(name)
        else:
            rule[name] = value
    return rules


def _unit_test_checks() -> list[tuple[str, bool]]:
    """(alertname, expects an alert) for every alert_rule_test check in the promtool unit tests."""
    text = RULE_TESTS.read_text()
    return [(name, rest.strip() != "[]") for name, rest in re.findall(r"alertname: (\w+)\s*\n\s*exp_alerts:([^\n]*)", text)]


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    fired, quiet = set(), set()
    for name, expects_alert in _unit_test_checks():
        (fired if expects_alert else quiet).add(name)
    names = {rule["alert"] for rule in _rules()}
    assert names == EXPECTED_ALERTS
    assert fired == names, f"no test shows these firing: {sorted(names - fired)}"
    assert quiet == names, f"no test shows these quiet: {sorted(names - quiet)}"


def test_rules_only_use_series_the_daemon_exports():
    known = exposed_series()
    for rule in _rules():
        used = metric_names(rule["expr"])
        assert used, f"{rule['alert']}: no metric found in {rule['expr']!r}"
        assert used <= known, f"{rule['alert']}: unknown series {sorted(used - known)}"


def test_alerts_have_severity_summary_and_description():
    for rule in _rules():
        assert rule.get("severity") in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"] == {"summary", "description"}, rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s")), rule["alert"]
