"""heimdall bench pipeline: distinct inputs per receiver, the FFT baseline and the scaling run, on a small case."""

from __future__ import annotations

import argparse
import re

import numpy as np

from streamer.tools import bench_pipeline


def test_every_receiver_gets_its_own_input_even_when_they_share_a_pool_signal(monkeypatch):
    monkeypatch.setattr(bench_pipeline, "POOL_BYTES", 3 * 4800 * 8)  # room for three signals: five receivers share
    pool = bench_pipeline.InputPool.make(5, 4800, 480, 48_000.0, 0.0)
    assert len(pool.signals) == 3
    blocks = [pool.block(rx, 2) for rx in range(5)]
    for i in range(5):
        for j in range(i):
            assert not np.array_equal(blocks[i], blocks[j]), (i, j)
    assert pool.block(0, 0).base is pool.signals[0], "a view: no copy per block"


def test_the_scaling_run_prints_each_worker_count_the_baseline_and_the_speed_up(capsys):
    parser = argparse.ArgumentParser()
    bench_pipeline.add_arguments(parser)
    args = parser.parse_args(["--receivers", "3", "--rate", "48000", "--windows", "2", "--scaling"])
    assert bench_pipeline.run(args) == 0
    out = capsys.readouterr().out
    assert "workers 1:" in out and "load average" in out and "distinct" in out
    assert "best single-thread FFT" in out and "pipeline / best FFT" in out
    assert re.search(r"pipeline / best FFT .*against (scipy|numpy)\.fft \d", out)
    assert ("speed-up, workers 2 vs 1" in out) == ("workers 2:" in out)
    assert "per real-time second" in out and "p99 wall against target" in out


def test_the_edge_process_run_channelizes_in_other_processes_and_localizes_the_same_windows(capsys):
    parser = argparse.ArgumentParser()
    bench_pipeline.add_arguments(parser)
    args = parser.parse_args(["--receivers", "3", "--rate", "240000", "--windows", "3", "--workers", "1",
                              "--edge-processes", "2"])
    assert bench_pipeline.run(args) == 0
    out = capsys.readouterr().out
    assert "workers 1 + 2 edge processes:" in out
    assert "0 input samples dropped there" in out
    assert "speed-up, 1 + 2 edge processes vs workers 1" in out
    cfg, _ = bench_pipeline._config(args)
    pool = bench_pipeline.InputPool.make(3, 120_000, 2400, 240_000.0, bench_pipeline._offset_hz(240_000.0))
    in_process = bench_pipeline._run(cfg, pool, 240_000.0, 3, 1)
    edges = bench_pipeline._run_edges(cfg, pool, 240_000.0, 3, 2)
    # The same windows published, and the edges' own CPU counted in the total.
    assert edges["windows_published"] == in_process["windows_published"] > 0
    assert edges["cpu"] > edges["edge_cpu"] > 0


def test_a_process_count_below_one_is_refused_by_name():
    parser = argparse.ArgumentParser()
    bench_pipeline.add_arguments(parser)
    for bad in ("0", "-1", "two"):
        try:
            parser.parse_args(["--edge-processes", bad])
        except SystemExit as exc:
            assert exc.code == 2
        else:
            raise AssertionError(f"--edge-processes {bad} was accepted")
