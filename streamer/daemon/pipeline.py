"""Pipeline: blocks in, localizations out. Lanes -> aligner -> features -> estimators -> messages.

It runs in one thread (the daemon's main loop) and owns no sockets or threads of its own: the publisher,
metrics and estimators are passed in, so tests drive it block by block.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Callable, Sequence

import numpy as np

from receivers.base import IQBlock, plausible_rate
from streamer.config import Config
from streamer.core.geodesy import network_geometry
from streamer.daemon.aligner import Window, WindowAligner
from streamer.daemon.lane import PIPELINE, Lane, LaneSettings
from streamer.daemon.messages import EstimateOut, Localization, ReceiverHealth, Status, Truth
from streamer.daemon.metrics import Metrics
from streamer.dsp.detection import DetectionRule
from streamer.dsp.features import mel_frames_dbm
from streamer.estimators.base import Estimate, EstimateRejected, Estimator, EstimatorInputs

log = logging.getLogger(__name__)

Send = Callable[[str, dict], bool]


class Pipeline:
    """Per-receiver lanes, the window aligner, and what happens to each window."""

    def __init__(
        self,
        config: Config,
        *,
        metrics: Metrics,
        send: Send,
        estimators: Sequence[Estimator],
        truth_source=None,
        queued_samples: Callable[[str], int] = lambda receiver_id: 0,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if not estimators:
            raise ValueError("pipeline needs at least one estimator")
        self.config = config
        self.metrics = metrics
        self._send = send
        self.estimators = list(estimators)
        self._truth_source = truth_source
        self._queued_samples = queued_samples
        self._clock_ns = clock_ns
        self.origin, self.rx_enu_m, _ = network_geometry(config)
        self.receiver_ids = tuple(rx.id for rx in config.receivers)
        self.calibration_db = np.array([rx.calibration_db for rx in config.receivers])
        settings = LaneSettings(
            target_freq_hz=config.network.target_freq_hz,
            model_rate_hz=config.features.sample_rate_hz,
            capacity_s=config.pipeline.buffer_s,
            clock_jump_tolerance_s=config.pipeline.clock_jump_tolerance_s,
        )
        self.lanes = {rid: Lane(rid, settings, self._drop_counter(rid), self._bad_frame_counter(rid)) for rid in self.receiver_ids}
        self.aligner = WindowAligner(
            list(self.lanes.values()),
            window_s=config.features.window_s,
            sample_rate_hz=config.features.sample_rate_hz,
            late_tolerance_s=config.pipeline.late_tolerance_s,
            offline_after_s=config.pipeline.offline_after_s,
        )
        self.seq = 0
        self.windows = 0
        self._used_reported: Counter[str] = Counter()
        self._started_ns = clock_ns()
        for rid in self.receiver_ids:
            metrics.init_receiver(rid)
        primary = self.estimators[0]
        metrics.model_info.info(
            {"estimator": primary.name, "provider": getattr(primary, "provider", ""), **{k: str(v) for k, v in primary.info.items()}}
        )

    # Counting ---------------------------------------------------------------------------------------
    def _drop_counter(self, rid: str):
        def count(reason: str, stage: str, n: int) -> None:
            self.metrics.samples_dropped.labels(rid, reason, stage).inc(n)

        return count

    def _bad_frame_counter(self, rid: str):
        def count(reason: str) -> None:
            self.metrics.bad_frames.labels(rid, reason).inc()

        return count

    # Input ------------------------------------------------------------------------------------------
    def push(self, block: IQBlock, arrival_ns: int | None = None) -> None:
        """One block from an adapter (already counted as received by whoever dequeued it)."""
        lane = self.lanes.get(block.receiver_id)
        if lane is None:
            # A block for a receiver the config does not know (an adapter bug, or one removed by a reload):
            # it was counted as received, so count its samples as dropped too.
            self.metrics.bad_frames.labels(block.receiver_id, "unknown_receiver").inc()
            self.metrics.samples_dropped.labels(block.receiver_id, "unknown_receiver", PIPELINE).inc(len(block.samples))
            return
        arrival_ns = self._clock_ns() if arrival_ns is None else arrival_ns
        lane.push(block)
        self.aligner.mark_arrival(block.receiver_id, arrival_ns)
        m = self.metrics
        rid = block.receiver_id
        m.receiver_up.labels(rid).set(1)
        m.sample_rate.labels(rid).set(block.sample_rate)
        if plausible_rate(block.sample_rate):  # else refused (bad_rate): no duration
            end_ns = block.t0_ns + block.duration_ns
            m.clock_offset.labels(rid).set((end_ns - arrival_ns) / 1e9)
        m.buffer_fill.labels(rid).set(lane.ring.fill_ratio)

    # Output -----------------------------------------------------------------------------------------
    def poll(self) -> list[dict]:
        """Emit every window that is ready; returns the localization payloads published."""
        now = self._clock_ns()
        published = []
        for window in self.aligner.poll(now):
            payload = self._process(window, now)
            if payload is not None:
                published.append(payload)
        self._update_receiver_gauges(now)
        return published

    def flush_as_dropped(self, reason: str) -> None:
        """Hand over before this pipeline is replaced: report what was used, count what is held as dropped."""
        self._update_receiver_gauges(self._clock_ns())
        for rid, lane in self.lanes.items():
            if lane.buffered:
                self.metrics.samples_dropped.labels(rid, reason, PIPELINE).inc(lane.buffered)
            self.metrics.samples_buffered.labels(rid).set(self._queued_samples(rid))

    def _update_receiver_gauges(self, now: int) -> None:
        m = self.metrics
        for rid, lane in self.lanes.items():
            new_used = lane.used - self._used_reported[rid]
            if new_used:
                m.samples_used.labels(rid).inc(new_used)
                self._used_reported[rid] = lane.used
            m.samples_buffered.labels(rid).set(lane.buffered + self._queued_samples(rid))
            last = self.aligner.last_arrival_ns.get(rid)
            if last is not None:
                m.last_block_age.labels(rid).set((now - last) / 1e9)
            if not self.aligner.is_live(rid, now):
                m.receiver_up.labels(rid).set(0)

    def _process(self, window: Window, now_ns: int) -> dict | None:
        m = self.metrics
        self.windows += 1
        for rid, reason in window.mask_reasons.items():
            m.masked.labels(rid, reason).inc()
        if self.has_truth:
            self.publish_truth((window.t_start_ns + window.t_end_ns) // 2)
        started = time.perf_counter()
        spec = self.config.features
        features = mel_frames_dbm(window.samples, spec, self.calibration_db)
        power = DetectionRule.from_config(self.config).apply(features, spec)
        present = window.present
        features[~present] = 0.0
        heard = power.heard & present
        for i, rid in enumerate(self.receiver_ids):
            if present[i]:
                m.received_power.labels(rid).set(float(power.signal_dbm[i]))
        m.feature_seconds.observe(time.perf_counter() - started)
        if int(heard.sum()) < self.config.pipeline.min_receivers:
            m.windows.labels("too_few_receivers").inc()
            return None
        inputs = EstimatorInputs(
            features_dbm=features,
            rx_enu_m=self.rx_enu_m,
            present=present,
            heard=heard,
            rx_power_dbm=np.where(present, power.signal_dbm, np.nan),
            detection_level_dbm=power.detection_level_dbm,
        )
        results: list[Estimate] = []
        for estimator in self.estimators:
            t = time.perf_counter()
            try:
                results.append(estimator.estimate(inputs))
            except EstimateRejected as exc:
                log.debug("estimator %s rejected window %d: %s", estimator.name, window.t_start_ns, exc)
                m.windows.labels(f"{estimator.name}_rejected").inc()
                return None
            except Exception:  # a failing estimator costs this window, never the daemon
                log.exception("estimator %s failed on window %d", estimator.name, window.t_start_ns)
                m.windows.labels(f"{estimator.name}_error").inc()
                return None
            m.inference_seconds.labels(estimator.name).observe(time.perf_counter() - t)
        outs = [EstimateOut.from_estimate(r, self.origin) for r in results]
        processing_s = time.perf_counter() - started
        end_ns = self._clock_ns()
        loc = Localization(
            seq=self.seq,
            t_start_ns=window.t_start_ns,
            t_end_ns=window.t_end_ns,
            primary=outs[0],
            receivers=tuple(rid for rid, h in zip(self.receiver_ids, heard) if h),
            rx_power_dbm={rid: float(p) for rid, p, h in zip(self.receiver_ids, power.signal_dbm, heard) if h},
            model=self.estimators[0].info,
            processing_ms=processing_s * 1e3,
            age_ms=(end_ns - window.t_end_ns) / 1e6,
            network=self.config.network.name,
            alternatives=tuple(outs[1:]),
        )
        payload = loc.to_wire()
        self.seq += 1
        if self._send(self.topic, payload):
            m.published.labels(outs[0].estimator).inc()
        m.windows.labels("localized").inc()
        m.processing_seconds.observe(processing_s)
        m.age_seconds.observe(max(0.0, (end_ns - window.t_end_ns) / 1e9))
        return payload

    @property
    def has_truth(self) -> bool:
        return self._truth_source is not None

    @property
    def topic(self) -> str:
        name = self.config.network.name
        return "loc" if name == "default" else f"loc.{name}"

    def publish_truth(self, t_ns: int) -> None:
        truth = self._truth_source.truth(t_ns)
        msg = Truth(t_ns=t_ns, lat=truth.lat, lon=truth.lon, power_dbm=truth.power_dbm, keyed=truth.keyed)
        self._send("truth", msg.to_wire())

    # Heartbeat --------------------------------------------------------------------------------------
    def status(self, up: dict[str, bool] | None = None) -> Status:
        now = self._clock_ns()
        health = {}
        for rid, lane in self.lanes.items():
            last = self.aligner.last_arrival_ns.get(rid)
            block = lane.last_block
            health[rid] = ReceiverHealth(
                up=self.aligner.is_live(rid, now) if up is None else up.get(rid, False),
                last_block_age_s=None if last is None else (now - last) / 1e9,
                sample_rate_hz=None if block is None else block.sample_rate,
                time_source=None if block is None else block.time_source,
                samples_received=lane.received,
                samples_dropped=sum(n for (reason, stage), n in lane.dropped.items() if stage == PIPELINE),
                buffer_fill_ratio=lane.ring.fill_ratio,
            )
        return Status(
            t_ns=now,
            uptime_s=(now - self._started_ns) / 1e9,
            estimator=self.estimators[0].name,
            windows=self.windows,
            localizations=self.seq,
            receivers=health,
        )
