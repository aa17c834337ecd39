"""Soak: `heimdall soak` (the daemon in its own process) with 16 simulated real-time receivers at 48 kS/s.

``HEIMDALL_SOAK_MINUTES`` sets the length (default 5, what CI runs; warm-up is 20 % of it). For a long
run use the command line, e.g. ``heimdall soak --minutes 240 --report soak.json`` (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from streamer.tools import soak

SOAK_MINUTES = float(os.environ.get("HEIMDALL_SOAK_MINUTES", "5"))


@pytest.mark.slow
@pytest.mark.soak
def test_soak_keeps_memory_accounting_rate_and_latency_steady(tmp_path):
    report = tmp_path / "soak.json"
    # Its own process, as an operator runs it: the test process carries every earlier test's state.
    command = [sys.executable, "-m", "streamer", "soak", "--minutes", str(SOAK_MINUTES), "--report", str(report)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=SOAK_MINUTES * 60 + 300)
    print(proc.stdout[-8000:])
    rc = proc.returncode
    if rc != 0:  # the daemon's and the soak's log lines (queue drops, window outcomes, errors) say why
        print(proc.stderr[-12000:], file=sys.stderr)
    result = json.loads(report.read_text())
    failed = {k: v["detail"] for k, v in result["checks"].items() if not v["ok"]}
    assert rc == 0 and result["ok"], f"soak checks failed: {failed}"
    assert set(result["checks"]) == {"memory", "accounting", "localization rate", "latency p99"}
    assert len(result["samples"]) >= SOAK_MINUTES * 60 / 5 - 1


def test_soak_network_spreads_distinct_receivers_over_the_default_area():
    cfg = soak.soak_config(16, 48_000.0)
    positions = {(rx.lat, rx.lon) for rx in cfg.receivers}
    assert len(cfg.receivers) == len(positions) == 16
    default = soak.config_mod.load()
    assert all(min(r.lat for r in default.receivers) <= lat <= max(r.lat for r in default.receivers) for lat, _ in positions)
    assert all(rx.options.realtime and rx.options.sample_rate_hz == 48_000.0 for rx in cfg.receivers)


def test_p99_from_histogram_buckets_interpolates_like_prometheus():
    # 100 observations: 90 under 10 ms, 9 in (10, 20], 1 in (20, 50] ms.
    buckets = [(0.01, 90), (0.02, 99), (0.05, 100), (float("inf"), 100)]
    assert soak.quantile_from_buckets(buckets, 0.99) == pytest.approx(0.02)
    assert soak.quantile_from_buckets(buckets, 0.5) == pytest.approx(0.01 * 50 / 90, rel=1e-4)
    assert soak.quantile_from_buckets([(0.01, 0), (float("inf"), 0)], 0.99) != soak.quantile_from_buckets(buckets, 0.99)


def test_the_rate_is_counted_by_the_signal_time_a_localization_is_about_not_when_it_arrived():
    start = 1_700_000_000 * 10**9
    half_s = 5 * 10**8
    # Windows every 0.5 s for 20 s; the window at 7.5 s is lost; slice 3 (15-20 s) holds 10.
    starts = [start + k * half_s for k in range(40) if k != 15]
    slices = soak.localizations_per_slice(starts[::-1], start, 5.0, 1, 5)  # arrival order does not matter
    assert slices == {1: 9, 2: 10, 3: 10, 4: 0}  # slice 4 (20-25 s) had no signal localized: a hole, not absent


def test_a_run_too_short_to_judge_fails_instead_of_passing(tmp_path):
    args = soak.parse_args(["--minutes", "0.05", "--receivers", "3", "--interval-s", "1"])
    result = soak.run_soak(args)
    assert not result.ok and "enough samples" in result.checks


def test_the_report_json_is_written_when_run_through_the_command_line(tmp_path):
    from streamer.cli import main

    report = tmp_path / "short.json"
    assert main(["soak", "--minutes", "0.05", "--receivers", "3", "--interval-s", "1", "--report", str(report)]) == 1
    written = json.loads(report.read_text())
    assert written["args"]["receivers"] == 3 and written["ok"] is False
