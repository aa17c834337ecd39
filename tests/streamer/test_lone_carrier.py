"""A carrier one receiver hears alone on the target channel (a DC offset with the target at its centre frequency):
the single-channel pipeline leaves that receiver out once it has heard it alone for ``pipeline.lone_carrier_s``, so
that it no longer makes every frame of every window active (which would undo the active-frame decision that keeps
partly keyed windows honest) and no longer counts in the estimates."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from receivers.base import ReceiverContext, TallyDropCounter
from receivers.simulator import SimulatedReceiver, SimulatedWorld
from streamer import config as config_mod
from streamer.daemon.metrics import Metrics
from streamer.daemon.pipeline import Pipeline
from streamer.estimators.build import build_estimators

START_NS = 1_790_000_000_000_000_000
SECONDS = 20.0


def _config(dc_offset_db: float | None):
    base = config_mod.load()
    rxs = []
    for i, rx in enumerate(base.receivers):
        centre = base.network.target_freq_hz if i == 0 else 145.49e6  # rx 0 has the target at its DC
        opts = dataclasses.replace(rx.options, realtime=False, sample_rate_hz=48_000.0, center_freq_hz=centre,
                                   start_ns=START_NS, duration_s=SECONDS, dc_offset_db=dc_offset_db if i == 0 else None)
        rxs.append(dataclasses.replace(rx, options=opts))
    return dataclasses.replace(base, receivers=tuple(rxs), estimator=dataclasses.replace(base.estimator, kind="physics"),
                               pipeline=dataclasses.replace(base.pipeline, lone_carrier_s=2.0))


def _run(cfg):
    """Every window's [start (ns), active frames, published localization or None, receivers the rule was given];
    the metrics."""
    metrics = Metrics()
    clock = {"ns": START_NS}
    pipeline = Pipeline(cfg, metrics=metrics, send=lambda t, m: True, estimators=build_estimators(cfg),
                        clock_ns=lambda: clock["ns"])
    seen = []
    measure, process = pipeline._detection.measure, pipeline._process

    class Recording:  # the pipeline's rule, recording each window's active frames
        snr_db = pipeline._detection.snr_db

        def measure(self, features, spec, present):
            result = measure(features, spec, present)
            seen[-1][1], seen[-1][3] = result.active.copy(), present.copy()
            return result

    def recording_process(window, now_ns):
        seen.append([window.t_start_ns, None, None, None])
        seen[-1][2] = process(window, now_ns)
        return seen[-1][2]

    pipeline._detection, pipeline._process = Recording(), recording_process
    ctx = ReceiverContext(cfg, TallyDropCounter())
    streams = [list(SimulatedReceiver.from_config(rx, ctx)) for rx in cfg.receivers]
    try:
        for k in range(max(len(s) for s in streams)):
            batch = [s[k] for s in streams if k < len(s)]
            clock["ns"] = max(b.t0_ns + b.duration_ns for b in batch)
            pipeline.push_many(batch, arrival_ns=clock["ns"])
            pipeline.poll()
    finally:
        pipeline.close()
    return seen, metrics


def test_a_receivers_dc_offset_on_the_target_is_left_out_after_lone_carrier_s(caplog):
    cfg = _config(dc_offset_db=20.0)
    with caplog.at_level(logging.WARNING):
        seen, metrics = _run(cfg)
    rx0 = cfg.receivers[0].id
    assert metrics.registry.get_sample_value("heimdall_window_masked_receivers_total",
                                             {"receiver": rx0, "reason": "lone_carrier"}) >= 2
    assert f"receiver {rx0} has heard a carrier on the target channel that no other receiver hears for 2 s" in caplog.text
    world = SimulatedWorld(cfg)
    window_ns = round(cfg.features.window_s * 1e9)
    unkeyed = [(present[0], active) for t0, active, _, present in seen
               if world.truth_over(t0, t0 + window_ns).keyed_fraction == 0]
    with_rx0 = [active for counted, active in unkeyed if counted]
    without_rx0 = [active for counted, active in unkeyed if not counted]
    assert with_rx0 and without_rx0, "the run must hold unkeyed windows before and after rx0 is left out"
    assert all(active.all() for active in with_rx0)  # its carrier makes every frame of an unkeyed window active
    assert not any(active.any() for active in without_rx0)  # left out, nothing is active when nothing is keyed
    assert all(rx0 not in loc["receivers"] for _, _, loc, present in seen if loc is not None and not present[0])


def test_without_a_dc_offset_nobody_is_left_out():
    cfg = _config(dc_offset_db=None)
    seen, metrics = _run(cfg)
    assert not metrics.registry.get_sample_value("heimdall_window_masked_receivers_total",
                                                 {"receiver": cfg.receivers[0].id, "reason": "lone_carrier"})
    assert any(loc is not None for _, _, loc, _ in seen)
