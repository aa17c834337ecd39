"""Pipeline: blocks in, localizations out. Lanes -> aligner -> features -> estimators -> messages.

It is driven from one thread (the daemon's main loop) and owns no sockets: the publisher, metrics and
estimators are passed in, so tests drive it block by block. The per-receiver work (a lane's block checks,
channelizer and ring buffer; the mel features of each receiver's row of a window) may run on a pool of
``pipeline.workers`` threads (``LanePool``); the calling thread waits for it, so the aligner, the
estimators, the messages and every gauge see the same state, in the same order, whatever the number of
workers. A receiver's blocks always go to one task, in order. numpy and scipy release the GIL in their
kernels (FFTs, matrix products, element-wise work); the Python around them holds it, which bounds what
more workers can give (docs/performance.md). ``close()`` stops the pool.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Callable, Collection, Iterable, Sequence, TypeVar

import numpy as np

from receivers.base import IQBlock, plausible_rate
from streamer.config import Config
from streamer.core.boundedlog import BoundedLog
from streamer.core.geodesy import network_geometry
from streamer.daemon.aligner import Window, WindowAligner
from streamer.daemon.lane import PIPELINE, Lane, LaneSettings
from streamer.daemon.messages import EstimateOut, Localization, ReceiverHealth, Status, Truth
from streamer.daemon.metrics import Metrics
from streamer.dsp.detection import DetectionRule
from streamer.dsp.emissions import LoneCarriers, frame_times_ns
from streamer.dsp.features import mel_frames_dbm
from streamer.dsp.frame_fft import frame_fft
from streamer.estimators.base import Estimate, EstimateRejected, Estimator, EstimatorInputs

log = logging.getLogger(__name__)
_log = BoundedLog(log)

Send = Callable[[str, dict], bool]

#: Receivers whose mel features are computed in one call. Fixed, so that the calls (and their floating-point
#: results) are the same whatever the number of workers.
FEATURE_CHUNK_RECEIVERS = 8

T = TypeVar("T")


def resolve_workers(workers: int) -> int:
    """``pipeline.workers`` as a thread count: 0 means one per CPU core."""
    return workers if workers > 0 else max(1, os.cpu_count() or 1)


def limit_blas_threads() -> str:
    """Keep the BLAS library (OpenBLAS under numpy and scipy) to one thread in this process; returns what was done.

    The pipeline's matrix products are small and come from every worker: BLAS threads of their own add
    cores' worth of busy-waiting and contend with the workers and the receivers' threads. The daemon calls
    this when it starts.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    return "BLAS kept to one thread (threadpoolctl)"


def _run_group(tasks: Sequence[Callable[[], T]]) -> list[T]:
    return [task() for task in tasks]


class LanePool:
    """Runs groups of tasks on ``workers`` threads: group 0 in the calling thread, the others on a pool.

    ``run(groups)`` returns when every group is done; each group's tasks run in order, in one thread.
    With one worker there is no pool and everything runs in the calling thread.
    """

    def __init__(self, workers: int) -> None:
        self.workers = max(1, int(workers))
        self._pool = (ThreadPoolExecutor(self.workers - 1, thread_name_prefix="lane")
                      if self.workers > 1 else None)

    def run(self, groups: Sequence[Sequence[Callable[[], T]]]) -> list[list[T]]:
        """Every group's results, in order; a task's exception propagates once every group has ended."""
        if self._pool is None:
            return [_run_group(g) for g in groups]
        futures = [self._pool.submit(_run_group, g) if g else None for g in groups[1:]]
        error: BaseException | None = None
        try:
            first = _run_group(groups[0]) if groups else []
        except BaseException as exc:  # the other groups still hold lanes: wait for them before raising
            error, first = exc, []
        results = [first]
        for future in futures:
            try:
                results.append([] if future is None else future.result())
            except BaseException as exc:
                error = error or exc
                results.append([])
        if error is not None:
            raise error
        return results

    def close(self) -> None:
        """Stop the threads (none is busy: ``run`` waits for its tasks)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


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
        paced: Callable[[], Collection[str]] = frozenset,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if not estimators:
            raise ValueError("pipeline needs at least one estimator")
        self.config = config
        self._detection = DetectionRule.from_config(config)
        self._lone = LoneCarriers(1, len(config.receivers), config.pipeline.lone_carrier_s)
        self.metrics = metrics
        self._send = send
        self.estimators = list(estimators)
        self._truth_source = truth_source
        self._queued_samples = queued_samples
        self._paced = paced
        self._clock_ns = clock_ns
        self.origin, self.rx_enu_m, _ = network_geometry(config)
        self.receiver_ids = tuple(rx.id for rx in config.receivers)
        self.calibration_db = np.array([rx.calibration_db for rx in config.receivers])
        self.lanes = self._make_lanes(LaneSettings.of(config))
        self.pool = LanePool(min(resolve_workers(config.pipeline.workers), max(1, len(self.receiver_ids))))
        # FFTW plans the features' transform on its first use in a thread: here, not in the first window.
        frame_fft(config.features.n_fft, np.complex64, config.pipeline.fft)
        #: Which of the pool's groups takes each receiver's blocks (the same group for the pipeline's life).
        self._group = {rid: i % self.pool.workers for i, rid in enumerate(self.receiver_ids)}
        self.aligner = self._make_aligner()
        self.seq = 0
        self.windows = 0
        self._used_reported: Counter[str] = Counter()
        self._started_ns = clock_ns()
        for rid in self.receiver_ids:
            metrics.init_receiver(rid)
        #: Each receiver's gauge and counter children, looked up once (``labels()`` per block and per window
        #: was a hash of the label values each time, hundreds of times per window with many receivers).
        self._series = {rid: _ReceiverSeries.of(metrics, rid) for rid in self.receiver_ids}
        #: Each receiver's latest block since the last poll: (rate Hz, clock offset s or None, ring fill 0..1).
        self._latest_block: dict[str, tuple[float, float | None, float]] = {}
        primary = self.estimators[0]
        metrics.model_info.info(
            {"estimator": primary.name, "provider": getattr(primary, "provider", ""), **{k: str(v) for k, v in primary.info.items()}}
        )

    # Parts (the band path, ``daemon.band.BandPipeline``, puts its own in) --------------------------
    def _make_lanes(self, settings: LaneSettings) -> dict[str, Lane]:
        return {rid: Lane(rid, settings, self._drop_counter(rid), self._bad_frame_counter(rid)) for rid in self.receiver_ids}

    def _aligner_options(self) -> dict:
        config = self.config
        return {"window_s": config.features.window_s, "sample_rate_hz": config.features.sample_rate_hz,
                "late_tolerance_s": config.pipeline.late_tolerance_s, "offline_after_s": config.pipeline.offline_after_s,
                "paced": self._paced}

    def _make_aligner(self) -> WindowAligner:
        return WindowAligner(list(self.lanes.values()), **self._aligner_options())

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
        """One block from an adapter (already counted as received by whoever dequeued it), in this thread."""
        lane = self._lane_for(block)
        if lane is None:
            return
        arrival_ns = self._clock_ns() if arrival_ns is None else arrival_ns
        lane.push(block)
        self._after_push(block, lane, arrival_ns)

    def push_many(self, blocks: Iterable[IQBlock], arrival_ns: int | None = None) -> list[tuple[IQBlock, Exception]]:
        """Blocks from adapters, each receiver's in the order given, the lanes' work spread over the pool.

        All get the same arrival time (``arrival_ns``, or the clock once). A block whose lane raised is
        returned with its exception (a bug costs that block, not the others); the rest are done exactly as
        ``push`` does them one by one.
        """
        arrival_ns = self._clock_ns() if arrival_ns is None else arrival_ns
        known = [(block, lane) for block in blocks if (lane := self._lane_for(block)) is not None]
        groups: list[list[Callable[[], Exception | None]]] = [[] for _ in range(self.pool.workers)]
        for block, lane in known:
            groups[self._group[block.receiver_id]].append(lambda block=block, lane=lane: _push_catching(lane, block))
        outcomes = _in_input_order(known, groups, self._group, self.pool.run(groups))
        failed = []
        for (block, lane), exc in zip(known, outcomes):
            if exc is None:
                self._after_push(block, lane, arrival_ns)
            else:
                failed.append((block, exc))
        return failed

    def _lane_for(self, block: IQBlock) -> Lane | None:
        lane = self.lanes.get(block.receiver_id)
        if lane is None:
            # A block for a receiver the config does not know (an adapter bug, or one removed by a reload):
            # it was counted as received, so count its samples as dropped too.
            self.metrics.bad_frames.labels(block.receiver_id, "unknown_receiver").inc()
            self.metrics.samples_dropped.labels(block.receiver_id, "unknown_receiver", PIPELINE).inc(len(block.samples))
        return lane

    def _after_push(self, block: IQBlock, lane: Lane, arrival_ns: int) -> None:
        self.aligner.mark_arrival(block.receiver_id, arrival_ns)
        # Kept for the next poll, which sets the gauges from each receiver's latest block: they are read at each
        # scrape, seconds apart, and a set per block (hundreds a second per receiver) is work nobody reads.
        offset_s = None
        if plausible_rate(block.sample_rate):  # else refused (bad_rate): no duration
            offset_s = (block.t0_ns + block.duration_ns - arrival_ns) / 1e9
        self._latest_block[block.receiver_id] = (block.sample_rate, offset_s, lane.ring.fill_ratio)

    def finish(self) -> list[dict]:
        """Say what is still open, once, when the pipeline stops taking data (shutdown, reload) and the outputs are
        still open; returns the localization payloads published. The single-channel path has nothing open."""
        return []

    def close(self) -> None:
        """Stop the worker threads; the pipeline takes no more blocks after this."""
        self.pool.close()

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
        for rid, (rate_hz, offset_s, fill) in self._latest_block.items():
            series = self._series[rid]
            series.receiver_up.set(1)
            series.sample_rate.set(rate_hz)
            if offset_s is not None:
                series.clock_offset.set(offset_s)
            series.buffer_fill.set(fill)
        self._latest_block.clear()
        for rid, lane in self.lanes.items():
            series = self._series[rid]
            new_used = lane.used - self._used_reported[rid]
            if new_used:
                series.samples_used.inc(new_used)
                self._used_reported[rid] = lane.used
            series.samples_buffered.set(lane.buffered + self._queued_samples(rid))
            last = self.aligner.last_arrival_ns.get(rid)
            if last is not None:
                series.last_block_age.set((now - last) / 1e9)
            if not self.aligner.is_live(rid, now):
                series.receiver_up.set(0)

    def _begin_window(self, window) -> None:
        """What every window does first, on either path: count it and its masked receivers, publish its truth."""
        self.windows += 1
        for rid, reason in window.mask_reasons.items():
            self.metrics.masked.labels(rid, reason).inc()
        if self.has_truth:
            self.publish_truth(window)

    def _process(self, window: Window, now_ns: int) -> dict | None:
        m = self.metrics
        self._begin_window(window)
        started = time.perf_counter()
        spec = self.config.features
        features = self._features(window.samples)
        present = self._leave_out_lone_carriers(window.present)
        measured = self._detection.measure(features, spec, present)  # frame_activity, then apply over those frames
        active, power = measured.active, measured.power
        loud = (np.nan_to_num(measured.levels.snr_db, nan=-np.inf) >= self._detection.snr_db) & window.present[:, None]
        self._lone.update(loud[None], np.broadcast_to(window.present[None, :, None], loud[None].shape),
                          frame_times_ns(window.t_start_ns, spec))
        features[~present] = 0.0
        heard = power.heard & present
        for i in np.flatnonzero(present).tolist():
            self._series[self.receiver_ids[i]].received_power.set(float(power.signal_dbm[i]))
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
            active_frames=active,
            t_ns=window.t_start_ns,
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

    def _leave_out_lone_carriers(self, present: np.ndarray) -> np.ndarray:
        """``present`` without the receivers ``LoneCarriers`` leaves out (a carrier in the channel only they hear: a
        DC offset with the target at their centre frequency, a birdie), so that it makes no frame active and counts
        in no estimate; each is counted as masked (reason ``lone_carrier``) and logged when first left out."""
        left_out = self._lone.left_out[0] & present
        for i in np.flatnonzero(left_out).tolist():
            rid = self.receiver_ids[i]
            self.metrics.masked.labels(rid, "lone_carrier").inc()
            if self._lone.starting[0, i]:
                _log.warning(("lone carrier", rid),
                             "receiver %s has heard a carrier on the target channel that no other receiver hears for"
                             " %.0f s (a DC offset at its centre frequency, a birdie, local interference?): left out"
                             " until it goes quiet", rid, self._lone.lone_carrier_ns / 1e9)
        return present & ~left_out

    def _features(self, samples: np.ndarray) -> np.ndarray:
        """``mel_frames_dbm`` of the window's rows (``[R, N]``, or ``[R, C, N]`` for a band: receiver first), in chunks of
        ``FEATURE_CHUNK_RECEIVERS`` receivers spread over the pool."""
        spec, fft = self.config.features, self.config.pipeline.fft
        cal = self.calibration_db.reshape((-1,) + (1,) * (samples.ndim - 2))  # one per receiver, over any channel axis
        starts = range(0, len(samples), FEATURE_CHUNK_RECEIVERS)
        groups: list[list[Callable[[], np.ndarray]]] = [[] for _ in range(self.pool.workers)]
        for c, a in enumerate(starts):
            b = a + FEATURE_CHUNK_RECEIVERS
            groups[c % self.pool.workers].append(lambda a=a, b=b: mel_frames_dbm(samples[a:b], spec, cal[a:b], fft_backend=fft))
        done = self.pool.run(groups)
        chunks = [done[c % self.pool.workers][c // self.pool.workers] for c in range(len(starts))]
        if len(chunks) <= 1:
            return chunks[0] if chunks else mel_frames_dbm(samples, spec, cal, fft_backend=fft)
        return np.concatenate(chunks)

    @property
    def has_truth(self) -> bool:
        return self._truth_source is not None

    @property
    def topic(self) -> str:
        name = self.config.network.name
        return "loc" if name == "default" else f"loc.{name}"

    def _window_truths(self, window: Window) -> list:
        """The truth source's ``WindowTruth`` of the wanted transmitter over the window (``BandPipeline``: of each)."""
        return [self._truth_source.truth_over(window.t_start_ns, window.t_end_ns)]

    def publish_truth(self, window: Window) -> None:
        """Publish the truth source's ``truth_over`` the window on topic ``truth``: position at its midpoint, the
        share and spans of it in which the transmitter was keyed, whether another one collided (docs/protocol.md);
        a band daemon one message per transmitter, with its channel."""
        band = self.config.has_channel_plan()
        for truth in self._window_truths(window):
            msg = Truth(t_ns=truth.t_ns, lat=truth.lat, lon=truth.lon, power_dbm=truth.power_dbm, keyed=truth.keyed,
                        window_start_ns=truth.start_ns, window_end_ns=truth.end_ns, keyed_fraction=truth.keyed_fraction,
                        keyed_intervals_ns=truth.keyed_intervals_ns, collision=truth.collision, kinds=truth.kinds,
                        **({"transmitter": truth.transmitter, "channel": truth.channel, "channel_hz": truth.channel_hz}
                           if band else {}))
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


@dataclass(frozen=True)
class _ReceiverSeries:
    """One receiver's children of the pipeline's per-receiver gauges and counters."""

    receiver_up: object
    sample_rate: object
    clock_offset: object
    buffer_fill: object
    samples_used: object
    samples_buffered: object
    last_block_age: object
    received_power: object

    @classmethod
    def of(cls, metrics: Metrics, rid: str) -> "_ReceiverSeries":
        return cls(**{f.name: getattr(metrics, f.name).labels(rid) for f in fields(cls)})


def _push_catching(lane: Lane, block: IQBlock) -> Exception | None:
    try:
        lane.push(block)
    except Exception as exc:  # returned to the caller, who counts it
        return exc
    return None


def _in_input_order(items: Sequence[tuple[IQBlock, Lane]], groups: Sequence[Sequence], group_of: dict[str, int],
                  results: Sequence[Sequence[T]]) -> list[T]:
    """The results of per-group tasks back in the order of ``items`` (each group's tasks were queued in that order)."""
    taken = [0] * len(groups)
    out = []
    for block, _lane in items:
        g = group_of[block.receiver_id]
        out.append(results[g][taken[g]])
        taken[g] += 1
    return out
