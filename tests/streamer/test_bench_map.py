"""``heimdall bench map``'s parts that need no browser and no timing: its option checks, the heap-window and
histogram arithmetic on given numbers, the replayed message's new stamps, its config, and its skip without
Chromium. The bench itself is run by hand (docs/map.md, Performance)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from streamer import config as config_module
from streamer.cli import main
from streamer.tools import bench_map
from streamer.tools.bench_map import (
    bucket_difference,
    heap_windows,
    histogram_quantile,
    processing_buckets,
    restamp,
)


@pytest.mark.parametrize("argv, expected", [
    (["bench", "map"], "one of the arguments --first-ellipse --soak --browsers is required"),
    (["bench", "map", "--first-ellipse", "--browsers", "10"], "not allowed with argument"),
    (["bench", "map", "--first-ellipse", "--loads", "0"], "--loads 0: expected a whole number >= 1"),
    (["bench", "map", "--soak", "3600", "--rate", "0"], "--rate 0.0: expected localizations per second"),
    (["bench", "map", "--soak", "60"], "--soak 60: expected at least --warmup-s + 2 x --sample-s = 150 s"),
    (["bench", "map", "--soak", "600", "--sample-s", "-1"], "--sample-s -1.0: expected seconds > 0"),
    (["bench", "map", "--browsers", "0"], "--browsers 0: expected a whole number in 1..50"),
    (["bench", "map", "--browsers", "10", "--phases", "10,10"], "--phases '10,10': expected comma-separated"),
    (["bench", "map", "--browsers", "10", "--phases", "0,x"], "--phases '0,x': expected comma-separated"),
    (["bench", "map", "--browsers", "10", "--settle-s", "-1"], "--settle-s -1.0: expected seconds >= 0"),
    (["bench", "map", "--browsers", "10", "--clients", "tabs"], "argument --clients: invalid choice"),
    (["bench", "map", "--soak", "3600", "tcp://127.0.0.1:5557"], "ENDPOINT goes with --first-ellipse only"),
    (["bench", "map", "--browsers", "10", "--daemon-cpus", "x"], "--daemon-cpus 'x': expected comma-separated CPU ids"),
    (["bench", "map", "--browsers", "10", "--daemon-cpus", "4096"], "--daemon-cpus '4096': expected comma-separated"),
    (["bench", "map", "--browsers", "10", "--daemon-cpus", ",".join(map(str, sorted(os.sched_getaffinity(0))))],
     "leaving at least one for the clients"),
])
def test_bench_map_refuses_bad_options_naming_them(argv, expected, capsys):
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's usage error
        status = exc.code
    assert status == 2
    assert expected in capsys.readouterr().err


def test_bench_map_skips_with_the_install_command_when_chromium_is_missing(monkeypatch, capsys):
    monkeypatch.setattr(bench_map.shutil, "which", lambda name: None)
    assert main(["bench", "map", "--first-ellipse"]) == 0
    assert "bench map: skipped, needs Chromium: apt-get install -y chromium" in capsys.readouterr().out


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin apart")
def test_a_child_started_on_cpus_runs_there_and_the_caller_keeps_its_own():
    mine = os.sched_getaffinity(0)
    chosen = {min(mine)}
    with bench_map.child("probe", [sys.executable, "-c", "import os, sys; "
                                   "print(sorted(os.sched_getaffinity(0)), file=sys.stderr)"], chosen) as probe:
        assert probe.wait_for(r"\[[\d, ]+\]", 30).group(0) == str(sorted(chosen))
    assert os.sched_getaffinity(0) == mine
    with bench_map.on_cpus(mine - chosen):
        assert subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                              capture_output=True, text=True, check=True).stdout.strip() == str(sorted(mine - chosen))
    assert os.sched_getaffinity(0) == mine


def test_heap_windows_compare_the_last_window_with_the_first_after_the_warm_up():
    # every 15 s for an hour: 10 during the warm-up, 11 until 50 min, then 12
    samples = [(float(t), 10.0 if t < 120 else 11.0 if t < 3000 else 12.0) for t in range(0, 3601, 15)]
    result = heap_windows(samples, warmup_s=120, window_s=600)
    assert result["window_s"] == 600
    assert (result["first_n"], result["first_mean"]) == (40, 11.0)  # 120 <= t < 720
    assert (result["last_n"], result["last_mean"]) == (40, 12.0)  # 3000 < t <= 3600
    assert result["ratio"] == pytest.approx(12.0 / 11.0)


def test_heap_windows_halve_what_follows_a_short_warm_up_and_refuse_too_few_samples():
    result = heap_windows([(t, float(t)) for t in (10, 20, 30, 40, 50)], warmup_s=10, window_s=600)
    assert result["window_s"] == 20 and (result["first_mean"], result["last_mean"]) == (15.0, 45.0)
    with pytest.raises(ValueError, match="not after the warm-up of 60 s"):
        heap_windows([(10, 1.0), (50, 1.0)], warmup_s=60, window_s=600)
    with pytest.raises(ValueError, match="samples too sparse"):
        heap_windows([(0, 1.0), (100, 1.0)], warmup_s=10, window_s=30)


def test_histogram_quantile_interpolates_within_the_bucket_as_prometheus_does():
    buckets = [(0.001, 0), (0.002, 0), (0.005, 50), (0.01, 98), (0.02, 100), (math.inf, 100)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.005)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.015)  # 1 of the 2 in (10, 20] ms
    assert histogram_quantile(0.99, [(0.01, 0), (math.inf, 5)]) == 0.01  # in +Inf: the highest finite bound
    assert histogram_quantile(0.99, [(0.01, 0), (math.inf, 0)]) is None


def test_processing_buckets_read_the_daemons_histogram_and_differences_give_one_phase():
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    registry = CollectorRegistry()
    histogram = Histogram("heimdall_processing_seconds", "per window", registry=registry, buckets=(0.01, 0.05, 0.1))
    for seconds in (0.004, 0.03):
        histogram.observe(seconds)
    start = processing_buckets(generate_latest(registry).decode())
    for seconds in (0.02, 0.03, 0.07):
        histogram.observe(seconds)
    end = processing_buckets(generate_latest(registry).decode())
    assert start == [(0.01, 1.0), (0.05, 2.0), (0.1, 2.0), (math.inf, 2.0)]
    assert bucket_difference(end, start) == [(0.01, 0.0), (0.05, 2.0), (0.1, 3.0), (math.inf, 3.0)]
    with pytest.raises(bench_map.HeimdallError, match="no heimdall_processing_seconds histogram"):
        processing_buckets("# nothing here\n")


def test_restamp_moves_the_window_and_keeps_the_rest_of_the_message():
    msg = {"seq": 3, "t_start_ns": 1_000, "t_end_ns": 501_000, "lat": 45.0, "ellipses": [{"p": 0.95}]}
    again = restamp(msg, 77, 9_000_000)
    assert again == {**msg, "seq": 77, "t_start_ns": 8_500_000, "t_end_ns": 9_000_000}
    assert msg["seq"] == 3  # the recording is not changed


def test_bench_config_is_the_default_network_on_ports_the_os_chooses(tmp_path):
    cfg = config_module.load(bench_map.bench_config(tmp_path))
    default = config_module.load(None)
    assert cfg.output.endpoint == "tcp://127.0.0.1:*" and cfg.metrics.port == 0
    assert [rx.id for rx in cfg.receivers] == [rx.id for rx in default.receivers]
