"""pipeline.workers: the same blocks give the same estimates, counters and accounting with 1 or 2 workers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from receivers.base import ReceiverContext, TallyDropCounter
from receivers.simulator import SimulatedReceiver
from streamer import config as config_mod
from streamer.daemon.metrics import Metrics
from streamer.daemon.pipeline import FEATURE_CHUNK_RECEIVERS, LanePool, Pipeline, resolve_workers
from streamer.dsp.frame_fft import available_backends
from streamer.estimators.build import build_estimators

START_NS = 1_790_000_000_000_000_000
N_RX = FEATURE_CHUNK_RECEIVERS + 3  # more than one chunk of features


def _config(workers: int, fft: str = "scipy"):
    base = config_mod.load()
    rxs = []
    for i in range(N_RX):
        rx = base.receivers[i % len(base.receivers)]
        opts = dataclasses.replace(rx.options, realtime=False, sample_rate_hz=48_000.0, center_freq_hz=145.49e6,
                                   start_ns=START_NS, duration_s=3.0)
        rxs.append(dataclasses.replace(rx, id=f"rx{i}", lat=rx.lat + 0.01 * (i // len(base.receivers)), options=opts))
    return dataclasses.replace(
        base, receivers=tuple(rxs),
        estimator=dataclasses.replace(base.estimator, kind="physics"),
        pipeline=dataclasses.replace(base.pipeline, workers=workers, fft=fft),
    )


def _streams(cfg):
    ctx = ReceiverContext(cfg, TallyDropCounter())
    streams = [list(SimulatedReceiver.from_config(rx, ctx)) for rx in cfg.receivers]
    # Faults, so that the counters have something to count: a NaN in rx1's 5th block (imaginary part), rx2's
    # blocks 8..9 lost (a gap), and a block for a receiver the config does not know.
    streams[1][5] = dataclasses.replace(streams[1][5], samples=streams[1][5].samples.copy())
    streams[1][5].samples[3] = complex(0.0, np.nan)
    del streams[2][8:10]
    streams[0].insert(3, dataclasses.replace(streams[0][3], receiver_id="stranger"))
    return streams


def _run(workers: int, fft: str = "scipy"):
    cfg = _config(workers, fft)
    metrics = Metrics()
    sent = []
    clock = {"ns": START_NS}
    pipeline = Pipeline(cfg, metrics=metrics, send=lambda t, m: sent.append((t, m)) or True,
                        estimators=build_estimators(cfg), clock_ns=lambda: clock["ns"])
    streams = _streams(cfg)
    try:
        for k in range(max(len(s) for s in streams)):
            batch = [s[k] for s in streams if k < len(s)]
            clock["ns"] = max(b.t0_ns for b in batch)
            assert pipeline.push_many(batch, arrival_ns=clock["ns"]) == []
            pipeline.poll()
    finally:
        pipeline.close()
    for _topic, payload in sent:
        payload.pop("latency_ms", None)  # processing time is measured, not computed
    counters = {
        (m.name, s.name, tuple(sorted(s.labels.items()))): s.value
        for m in metrics.registry.collect() if not m.name.endswith("_seconds")
        for s in m.samples if not s.name.endswith("_created")
    }
    lanes = {rid: (lane.received, lane.used, lane.buffered, dict(lane.dropped)) for rid, lane in pipeline.lanes.items()}
    return pipeline.pool.workers, sent, counters, lanes


def test_one_and_two_workers_publish_the_same_estimates_counters_and_accounting_bit_for_bit():
    w1, sent1, counters1, lanes1 = _run(1)
    w2, sent2, counters2, lanes2 = _run(2)
    assert (w1, w2) == (1, 2)
    assert len([m for t, m in sent1 if t.startswith("loc")]) >= 3, "the run must localize"
    assert repr(sent1) == repr(sent2)  # repr: every float to the last bit, and NaN equal to NaN
    assert counters1 == counters2
    assert lanes1 == lanes2
    assert lanes1["rx1"][3].get(("non_finite", "pipeline"), 0) > 0 and lanes1["rx2"][3].get(("gap", "source"), 0) > 0
    for received, used, buffered, dropped in lanes1.values():
        assert received == used + buffered + sum(n for (reason, stage), n in dropped.items() if stage == "pipeline")


def test_the_pool_runs_each_group_in_order_and_raises_a_task_error_after_every_group_ended():
    pool = LanePool(2)
    try:
        order: list[tuple[int, int]] = []
        results = pool.run([[lambda k=k: order.append((0, k)) or k for k in range(5)],
                            [lambda k=k: order.append((1, k)) or -k for k in range(5)]])
        assert results == [[0, 1, 2, 3, 4], [0, -1, -2, -3, -4]]
        assert [k for g, k in order if g == 1] == [0, 1, 2, 3, 4]
        finished = []

        def boom():
            raise RuntimeError("bug")

        with pytest.raises(RuntimeError, match="bug"):
            pool.run([[boom], [lambda: finished.append(1)]])
        assert finished == [1]
    finally:
        pool.close()


def test_workers_zero_means_one_per_cpu_core_and_a_pipeline_never_has_more_than_its_receivers(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    assert resolve_workers(0) == 3 and resolve_workers(2) == 2
    cfg = _config(0)
    cfg = dataclasses.replace(cfg, receivers=cfg.receivers[:2])
    pipeline = Pipeline(cfg, metrics=Metrics(), send=lambda t, m: True, estimators=build_estimators(cfg))
    try:
        assert pipeline.pool.workers == 2
    finally:
        pipeline.close()


@pytest.mark.skipif("fftw" not in available_backends(), reason="needs pyFFTW: pip install -e '.[fftw]'")
def test_features_on_fftw_give_the_same_windows_and_positions_as_on_scipy():
    """pipeline.fft = "fftw": the same windows, receivers and accounting, positions within 1e-8 degrees (the
    features differ in their last bits, not more)."""
    _, on_scipy, _, lanes_scipy = _run(1, "scipy")
    _, on_fftw, _, lanes_fftw = _run(1, "fftw")
    assert lanes_fftw == lanes_scipy
    locs = [[m for t, m in sent if t.startswith("loc")] for sent in (on_scipy, on_fftw)]
    assert len(locs[0]) == len(locs[1]) >= 4
    for a, b in zip(*locs):
        assert (a["t_start_ns"], a["receivers"]) == (b["t_start_ns"], b["receivers"])
        assert a["lat"] == pytest.approx(b["lat"], abs=1e-8) and a["lon"] == pytest.approx(b["lon"], abs=1e-8)
