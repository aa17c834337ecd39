"""The band path: a daemon watching a plan of channels finds every emission on them and localizes each one.

Chosen by ``daemon.app.build`` when the config has a channel plan of its own (``[[channels]]`` or ``[band]``);
a config without one keeps ``daemon.pipeline.Pipeline``'s single-channel path. ``BandPipeline`` is that
pipeline with the band lanes and aligner (``daemon.band_lane``) in place of the single-channel ones, and this in
place of its window step:

- the mel features ``[R, C, M, T]`` of every channel of every receiver (``dsp.features``, the one implementation),
  read from the band lanes' rings in place (``BandWindow.rows``); those of the window the aligner cuts next, and
  their per-frame levels, are computed a few frames at a time as each receiver's samples arrive (``poll`` ->
  ``_stream_frames``), so the tick that completes a window has only its last frames left;
  each channel's per-frame SNR and noise by its own detection rule (``channel_frame_levels``; the channel's
  bandwidth, the config's threshold) into one ``dsp.emissions.EmissionTracker``; a channel a receiver does not cover
  is masked for it and counted (``heimdall_channel_masked_windows_total``); a receiver the tracker leaves out of a
  channel (a carrier only it hears: ``EmissionTracker.left_out``) is left out of its estimates too, counted
  (``heimdall_channel_lone_carrier_windows_total``) and logged;
- for each emission active in the window an **interim** estimate over its active frames
  (``EstimatorInputs.active_frames``): the frames the detection rule finds active (``DetectionRule.active_frames`` of
  the per-frame SNRs above, the decision ``frame_activity`` makes for the single-channel pipeline and the trainer)
  within the span the tracker's hysteresis gives the emission;
  when an emission ends, a **final** estimate over those frames gathered from its whole length (``EmissionFrames``:
  at most ``T`` per receiver, evenly spread). Both estimators run on each, all of a window's together
  (``estimate_batch`` where an estimator has it).

What is published (docs/protocol.md): on the loc topic, ``Localization`` messages that name the channel
(``channel``, ``channel_hz``), the ``emission_id`` and the ``stage`` (``interim`` or ``final``); on topic
``emission`` (``emission.<network>`` for a named network, as loc), an ``EmissionEvent`` when an emission starts
and when it ends. Within one window: start events, then interim localizations, then each ended emission's final
localization followed by its end event. ``finish()`` (shutdown, reload) ends the emissions still on the air.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from streamer.config import Config
from streamer.core.boundedlog import BoundedLog
from streamer.daemon.aligner import WindowAligner
from streamer.daemon.band_lane import BandAligner, BandLane, BandWindow
from streamer.daemon.lane import Lane, LaneSettings
from streamer.daemon.messages import EmissionEvent, EstimateOut, Localization
from streamer.daemon.pipeline import Pipeline
from streamer.dsp.detection import DetectionRule
from streamer.dsp.emissions import (
    Channel,
    EmissionEnd,
    EmissionStart,
    EmissionTracker,
    channel_frame_levels,
    frame_times_ns,
)
from streamer.dsp.features import mel_frames_dbm
from streamer.estimators.base import Estimate, EstimateRejected, EstimatorInputs

log = logging.getLogger(__name__)
_log = BoundedLog(log)

class EmissionFrames:
    """The mel frames a final estimate of one emission is made from: per receiver, at most ``2*T`` of the frames the
    emission was active in, evenly spread over it (every ``stride``-th kept; when full, every other one is dropped
    and the stride doubles), so memory is fixed however long the emission lasts."""

    def __init__(self, n_receivers: int, n_mels: int, n_frames: int) -> None:
        self.n_frames = n_frames
        self._kept = np.zeros((n_receivers, 2 * n_frames, n_mels), dtype=np.float32)
        self._count = np.zeros(n_receivers, dtype=np.int64)
        self._seen = np.zeros(n_receivers, dtype=np.int64)
        self._stride = np.ones(n_receivers, dtype=np.int64)

    def add(self, receiver: int, frames_dbm: np.ndarray) -> None:
        """Append one receiver's active frames of a window (``[M, k]`` dBm, in time order)."""
        for column in np.asarray(frames_dbm).T:
            if self._seen[receiver] % self._stride[receiver] == 0:
                self._kept[receiver, self._count[receiver]] = column
                self._count[receiver] += 1
                if self._count[receiver] == 2 * self.n_frames:
                    self._kept[receiver, : self.n_frames] = self._kept[receiver, ::2]
                    self._count[receiver] = self.n_frames
                    self._stride[receiver] *= 2
            self._seen[receiver] += 1

    def window(self) -> tuple[np.ndarray, np.ndarray]:
        """``(frames_dbm [R, M, T], present [R])``: each receiver's kept frames spread over the ``T`` frames (picked
        evenly when more are kept, repeated evenly when fewer); zeros and not present for a receiver with none."""
        n_rx, _, n_mels = self._kept.shape
        out = np.zeros((n_rx, n_mels, self.n_frames), dtype=np.float32)
        present = self._count > 0
        for r in np.flatnonzero(present):
            picks = (np.arange(self.n_frames) * self._count[r]) // self.n_frames
            out[r] = self._kept[r, picks].T
        return out, present


#: How many frames of the next window are computed together as a receiver's samples arrive (``_stream_frames``); the
#: chunks start at multiples of it from the window's first frame. Fewer costs more calls, more leaves more frames to
#: the tick that completes the window.
STREAM_FRAMES = 8


class _LaneFrames:
    """One receiver's mel frames and per-frame levels of one window, as far as they are computed: the window starting
    at ``t0_ns``, at index ``first`` of ``ring`` (whose segment is anchored at ``anchor_ns``), its ``covered`` channels
    (bool ``[C]``, plan order). ``features`` ``[covered, M, T]`` float32 dBm, ``snr``/``noise`` ``[covered, T]``;
    frames ``0 .. done - 1`` are filled; ``seconds`` spent on them."""

    def __init__(self, t0_ns: int, ring, anchor_ns: int, first: int, covered: np.ndarray, spec) -> None:
        self.t0_ns, self.ring, self.anchor_ns, self.first = t0_ns, ring, anchor_ns, first
        self.covered = np.array(covered, dtype=bool)
        n = int(self.covered.sum())
        self.features = np.empty((n, spec.n_mels, spec.n_frames), dtype=np.float32)
        self.snr = np.empty((n, spec.n_frames))
        self.noise = np.empty((n, spec.n_frames))
        self.done = 0
        self.seconds = 0.0
        self._rule_positions: list | None = None

    def holds(self, t0_ns: int, ring, first: int) -> bool:
        """Whether these are the frames of the window at ``t0_ns`` read from ``ring``'s current segment at ``first``."""
        return (self.t0_ns == t0_ns and self.ring is ring and self.anchor_ns == ring.t_anchor_ns
                and self.first == first)

    def rule_positions(self, rule_groups):
        """``(rule, positions)`` for each rule that has covered channels: their rows in ``features`` (a slice when they
        are all of them, so the frames are not copied). Worked out once: ``covered`` does not change."""
        if self._rule_positions is None:
            channels = np.flatnonzero(self.covered)
            self._rule_positions = []
            for rule, group in rule_groups:
                positions = np.flatnonzero(np.isin(channels, group))
                if len(positions) == len(channels):
                    positions = slice(None)
                if len(channels) and (isinstance(positions, slice) or len(positions)):
                    self._rule_positions.append((rule, positions))
        return self._rule_positions


@dataclass
class _Request:
    """One estimate to make: its inputs and what its message needs."""

    inputs: EstimatorInputs
    channel: int
    emission_id: int
    stage: str
    t_start_ns: int
    t_end_ns: int
    rx_power_dbm: np.ndarray


class BandPipeline(Pipeline):
    """``Pipeline`` over a channel plan: band lanes, the band aligner, emissions and their localizations."""

    def __init__(self, config: Config, **kwargs) -> None:
        self.plan = config.channel_plan()
        super().__init__(config, **kwargs)
        spec = config.features
        self.rules = [DetectionRule(channel_bandwidth_hz=ch.bandwidth_hz, snr_db=config.pipeline.detection_snr_db)
                      for ch in self.plan]
        #: Channels that share a rule (a [band]: all of them), measured together: [(rule, channel indices)].
        self._rule_groups = [(rule, np.array([c for c, other in enumerate(self.rules) if other == rule]))
                             for rule in dict.fromkeys(self.rules)]
        self.tracker = EmissionTracker.from_rule(self.rules[0], [Channel(ch.name, ch.centre_hz) for ch in self.plan],
                                                 self.receiver_ids, lone_carrier_s=config.pipeline.lone_carrier_s)
        self._channel_index = {ch.name: c for c, ch in enumerate(self.plan)}
        self._frames: dict[int, EmissionFrames] = {}
        #: Confirmed emissions not yet ended: id -> channel index.
        self._open: dict[int, int] = {}
        self._dropped_reported = np.zeros(len(self.plan), dtype=np.int64)
        self._n_mels, self._n_frames = spec.n_mels, spec.n_frames
        #: Per receiver, the frames of the next window computed so far (``_stream_frames``), or None.
        self._lane_frames: list[_LaneFrames | None] = [None] * len(self.receiver_ids)
        for ch in self.plan:
            self.metrics.init_channel(ch.name, self.receiver_ids)

    # Parts ------------------------------------------------------------------------------------------
    def _make_lanes(self, settings: LaneSettings) -> dict[str, Lane]:
        return {rid: BandLane(rid, settings, self.plan, self._drop_counter(rid), self._bad_frame_counter(rid))
                for rid in self.receiver_ids}

    def _make_aligner(self) -> WindowAligner:
        return BandAligner(list(self.lanes.values()), len(self.plan), **self._aligner_options())

    @property
    def emission_topic(self) -> str:
        name = self.config.network.name
        return "emission" if name == "default" else f"emission.{name}"

    # Windows ----------------------------------------------------------------------------------------
    def _window_truths(self, window) -> list:
        """Every simulated transmitter's ``WindowTruth`` over the window, each with its channel."""
        return self._truth_source.band_truth_over(window.t_start_ns, window.t_end_ns)

    def _process(self, window: BandWindow, now_ns: int) -> list[dict]:
        m = self.metrics
        self._begin_window(window)
        started = time.perf_counter()
        spec = self.config.features
        features, snr, noise, streamed_s = self._window_frames(window)  # [C, R, M, T], [C, R, T], [C, R, T]
        listening = window.present[None, :] & window.covered.T  # [C, R]
        for c, r in zip(*np.nonzero(window.present[None, :] & ~window.covered.T)):
            m.channel_masked.labels(self.plan[c].name, self.receiver_ids[r]).inc()
        found = self.tracker.update(snr, noise, window.present, frame_times_ns(window.t_start_ns, spec))
        self._leave_out_lone_carriers(listening)
        m.feature_seconds.observe(time.perf_counter() - started + streamed_s)
        published: list[dict] = []
        for event in found.events:
            if isinstance(event, EmissionStart):
                m.emissions_started.labels(event.channel).inc()
                self._open[event.emission_id] = self._channel_index[event.channel]
                self._frames[event.emission_id] = EmissionFrames(len(self.receiver_ids), self._n_mels, self._n_frames)
                self._send_event("start", event)
        requests = []
        for emission in found.active:
            c = self._channel_index[emission.channel]
            active = self._active_frames(c, snr[c], listening[c], emission.frames)
            frames = self._frames.setdefault(emission.emission_id,
                                             EmissionFrames(len(self.receiver_ids), self._n_mels, self._n_frames))
            for r in np.flatnonzero(listening[c]):
                frames.add(int(r), features[c, r][:, active])
            request = self._request(c, emission.emission_id, "interim", features[c], listening[c], active,
                                    window.t_start_ns, window.t_end_ns)
            if request is not None:
                requests.append(request)
        self._set_received_power(requests)
        published += self._localize(requests, started)
        for event in found.events:
            if isinstance(event, EmissionEnd):
                published += self._end(event, started)
        self._count_dropped_short()
        self._set_active_gauges()
        m.windows.labels("band").inc()
        return published

    def _leave_out_lone_carriers(self, listening: np.ndarray) -> None:
        """Take the receivers the tracker left out of a channel this window (``EmissionTracker.left_out``: a carrier
        only they hear) out of ``listening`` (``[C, R]``, in place), count them, and say so when one is first left out."""
        left_out = listening & self.tracker.left_out
        for c, r in zip(*np.nonzero(left_out)):
            channel, receiver = self.plan[c].name, self.receiver_ids[r]
            self.metrics.channel_lone_carrier.labels(channel, receiver).inc()
            if self.tracker.left_out_starting[c, r]:
                _log.warning(("lone carrier", channel, receiver),
                             "receiver %s has heard a carrier on channel %s that no other receiver hears for %.0f s (a DC"
                             " offset at its centre frequency, a birdie, local interference?): left out of that"
                             " channel until it goes quiet", receiver, channel, self.tracker.lone_carrier_ns / 1e9)
        listening &= ~self.tracker.left_out

    def poll(self) -> list[dict]:
        """Emit every window that is ready; returns the localization payloads published (interim and final)."""
        now = self._clock_ns()
        self._stream_frames()
        published = []
        for window in self.aligner.poll(now):  # its rows are views of the rings: used before the next push
            published += self._process(window, now)
        self._update_receiver_gauges(now)
        return published

    def finish(self) -> list[dict]:
        """End every emission still on the air at its last active frame (``EmissionTracker.flush``): its final
        localization and end event, as if it had ended; one shorter than the minimum duration is counted as dropped."""
        started = time.perf_counter()
        published: list[dict] = []
        for event in self.tracker.flush().events:
            published += self._end(event, started)
        self._count_dropped_short()
        self._set_active_gauges()
        return published

    def _end(self, event: EmissionEnd, started: float) -> list[dict]:
        """An ended emission: its final localization (if enough receivers heard it), then its end event."""
        c = self._channel_index[event.channel]
        frames = self._frames.pop(event.emission_id, None)
        self._open.pop(event.emission_id, None)
        published = []
        if frames is not None:
            features, present = frames.window()
            request = self._request(c, event.emission_id, "final", features, present, None, event.start_ns, event.end_ns)
            if request is not None:
                self._set_received_power([request])
                published = self._localize([request], started)
        self.metrics.emissions_ended.labels(event.channel).inc()
        self._send_event("end", event)
        return published

    def _stream_frames(self) -> None:
        """Compute the mel frames and the rule's per-frame levels of the window the aligner cuts next, for each
        receiver, as its samples arrive (``_LaneFrames``), ``STREAM_FRAMES`` frames at a time: the tick that completes
        a window then has only its last few frames left, not all of them."""
        t0 = self.aligner.next_t_ns
        if t0 is None:
            return
        spec = self.config.features
        for r, lane in enumerate(self.lanes.values()):
            ring = lane.ring
            state = self._lane_frames[r]
            if ring.t_anchor_ns is None or not lane.covered.any():
                self._lane_frames[r] = None
                continue
            first = ring.index_at(t0)
            if state is None or not state.holds(t0, ring, first):
                if first < ring.start_index:
                    self._lane_frames[r] = None
                    continue
                state = self._lane_frames[r] = _LaneFrames(t0, ring, ring.t_anchor_ns, first, lane.covered.copy(), spec)
            if first + state.done * spec.hop < ring.start_index:  # overwritten meanwhile: the window step computes it
                self._lane_frames[r] = None
                continue
            ready = min(spec.n_frames, max(0, (ring.end_index - first - spec.n_fft) // spec.hop + 1))
            upto = ready if ready == spec.n_frames else ready - ready % STREAM_FRAMES  # whole chunks only
            if upto > state.done:
                started = time.perf_counter()
                length = (upto - state.done - 1) * spec.hop + spec.n_fft
                rows = ring.read(first + state.done * spec.hop, length).T  # [covered channels, length]
                self._frames_of(r, state, rows, upto)
                state.seconds += time.perf_counter() - started

    def _frames_of(self, r: int, state: _LaneFrames, rows: np.ndarray, upto: int) -> None:
        """Frames ``state.done .. upto - 1`` of receiver ``r``'s covered channels from ``rows`` (their samples from
        frame ``state.done``'s first on): mel frames (``mel_frames_dbm``) and each channel's per-frame SNR and noise by
        its rule (``channel_frame_levels``). Always in the same chunks of ``STREAM_FRAMES`` frames from the window's
        first, however the samples arrived, so that a window's frames come out the same to the last bit whether
        they were streamed or computed at once (a live run and its recording's replay agree)."""
        spec = self.config.features
        start = state.done
        while state.done < upto:
            stop = min(state.done + STREAM_FRAMES, upto)
            offset = (state.done - start) * spec.hop
            chunk = rows[:, offset : offset + (stop - state.done - 1) * spec.hop + spec.n_fft]
            frames = mel_frames_dbm(chunk, spec, self.calibration_db[r], fft_backend=self.config.pipeline.fft)
            state.features[:, :, state.done : stop] = frames
            for rule, positions in state.rule_positions(self._rule_groups):
                snr, noise = channel_frame_levels(rule, frames[positions], spec)  # [g, k]
                state.snr[positions, state.done : stop] = snr
                state.noise[positions, state.done : stop] = noise
            state.done = stop

    def _window_frames(self, window: BandWindow) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Every receiver's mel frames and the rule's per-frame levels of ``window``: float32 dBm features
        ``[C, R, M, T]`` (zeros where a receiver is not present or does not cover the channel), SNR (dB) and noise (dBm)
        ``[C, R, T]`` (NaN there), and the seconds spent on them in earlier ticks. A receiver's frames streamed in
        earlier ticks (``_stream_frames``) are used where they are of this window from the same ring segment; the rest
        are computed here from the window's rows, one call per receiver, spread over the pool's workers."""
        spec = self.config.features
        n_rx, n_ch = len(self.receiver_ids), len(self.plan)
        features = np.zeros((n_ch, n_rx, spec.n_mels, spec.n_frames), dtype=np.float32)
        snr = np.full((n_ch, n_rx, spec.n_frames), np.nan)
        noise = np.full_like(snr, np.nan)
        states = []
        for r, (lane, rows) in enumerate(zip(self.lanes.values(), window.rows)):
            if rows is None:
                continue
            state = self._lane_frames[r]
            if state is None or lane.ring.t_anchor_ns is None \
                    or not state.holds(window.t_start_ns, lane.ring, lane.ring.index_at(window.t_start_ns)) \
                    or not np.array_equal(state.covered, window.covered[r]):
                state = _LaneFrames(window.t_start_ns, lane.ring, lane.ring.t_anchor_ns, 0, window.covered[r], spec)
            states.append((r, state, rows))
        groups: list[list] = [[] for _ in range(self.pool.workers)]
        for k, (r, state, rows) in enumerate(states):
            if state.done < spec.n_frames:
                groups[k % self.pool.workers].append(
                    lambda r=r, state=state, rows=rows: self._frames_of(r, state, rows[:, state.done * spec.hop :],
                                                                          spec.n_frames))
        self.pool.run(groups)
        streamed_s = 0.0
        for r, state, _rows in states:
            features[state.covered, r] = state.features
            snr[state.covered, r] = state.snr
            noise[state.covered, r] = state.noise
            streamed_s += state.seconds
            self._lane_frames[r] = None
        return features, snr, noise, streamed_s

    def _active_frames(self, c: int, snr_db: np.ndarray, listening: np.ndarray, emission_frames: np.ndarray) -> np.ndarray:
        """The frames of a window the estimators measure an emission over (bool ``[T]``): those the detection rule finds
        active (``DetectionRule.active_frames`` of channel ``c``'s per-frame SNRs ``[R, T]``, the levels the tracker was
        fed, over the ``listening`` receivers: the decision ``frame_activity`` makes for the single-channel pipeline and
        the trainer), within the emission's span in this window (its first to its last frame the tracker held,
        ``emission_frames``). The tracker's hysteresis decides when the emission starts and ends; frames it holds below
        the rule's threshold are not active frames, because the model learnt the rule's per-frame decision."""
        held = np.flatnonzero(emission_frames)
        span = np.zeros(self._n_frames, dtype=bool)
        span[held[0] : held[-1] + 1] = True
        return self.rules[c].active_frames(snr_db, listening) & span

    def _request(self, c: int, emission_id: int, stage: str, features: np.ndarray, present: np.ndarray,
                 active: np.ndarray | None, t_start_ns: int, t_end_ns: int) -> _Request | None:
        """The estimator inputs of one emission over ``features`` ([R, M, T] dBm, zeros where not ``present``), or
        None (counted) when fewer than ``pipeline.min_receivers`` heard it."""
        power = self.rules[c].apply(features, self.config.features, active=active)
        heard = power.heard & present
        if int(heard.sum()) < self.config.pipeline.min_receivers:
            self.metrics.emission_localizations.labels(self.plan[c].name, stage, "too_few_receivers").inc()
            return None
        rx_power = np.where(present, power.signal_dbm, np.nan)
        inputs = EstimatorInputs(
            features_dbm=features, rx_enu_m=self.rx_enu_m, present=present, heard=heard, rx_power_dbm=rx_power,
            detection_level_dbm=power.detection_level_dbm,
            active_frames=np.ones(self._n_frames, dtype=bool) if active is None else active,
            t_ns=t_start_ns,
        )
        return _Request(inputs, c, emission_id, stage, t_start_ns, t_end_ns, np.where(heard, rx_power, np.nan))

    def _localize(self, requests: list[_Request], started: float) -> list[dict]:
        """Both estimators over ``requests`` (batched where they can be), one loc message per request they all
        answered."""
        if not requests:
            return []
        answers: list[list[Estimate | None]] = []
        for estimator in self.estimators:
            answers.append(self._run(estimator, requests))
        published = []
        final_scales = self.config.estimator.covariance_scales("final")
        for i, request in enumerate(requests):
            results = [answer[i] for answer in answers]
            failed = next((f"{est.name}_{why}" for est, why in zip(self.estimators, results) if isinstance(why, str)), None)
            channel = self.plan[request.channel]
            if failed is not None:
                self.metrics.emission_localizations.labels(channel.name, request.stage, failed).inc()
                continue
            if request.stage == "final":  # a whole emission's error is not a window's: the site factor fitted on finals
                results = [r.with_covariance_scale(final_scales[r.estimator]) if r.estimator in final_scales else r
                           for r in results]
            published.append(self._publish_loc(request, results, started))
        return published

    def _run(self, estimator, requests: list[_Request]) -> list[Estimate | str]:
        """One estimator over every request: an ``Estimate``, or ``"rejected"`` / ``"error"`` in its place."""
        t = time.perf_counter()
        inputs = [r.inputs for r in requests]
        try:
            if hasattr(estimator, "estimate_batch"):
                raw = list(estimator.estimate_batch(inputs))
            else:
                raw = []
                for one in inputs:
                    try:
                        raw.append(estimator.estimate(one))
                    except EstimateRejected as exc:
                        raw.append(exc)
        except EstimateRejected as exc:  # a batch refused as a whole
            log.debug("estimator %s rejected %d band estimates: %s", estimator.name, len(inputs), exc)
            return ["rejected"] * len(inputs)
        except Exception:  # a failing estimator costs these estimates, never the daemon
            log.exception("estimator %s failed on %d band estimates", estimator.name, len(inputs))
            return ["error"] * len(inputs)
        self.metrics.inference_seconds.labels(estimator.name).observe(time.perf_counter() - t)
        return ["rejected" if isinstance(r, EstimateRejected) else r for r in raw]

    def _publish_loc(self, request: _Request, results: list[Estimate], started: float) -> dict:
        m = self.metrics
        outs = [EstimateOut.from_estimate(r, self.origin) for r in results]
        channel = self.plan[request.channel]
        heard = ~np.isnan(request.rx_power_dbm)
        processing_s = time.perf_counter() - started
        end_ns = self._clock_ns()
        loc = Localization(
            seq=self.seq, t_start_ns=request.t_start_ns, t_end_ns=request.t_end_ns, primary=outs[0],
            receivers=tuple(rid for rid, h in zip(self.receiver_ids, heard) if h),
            rx_power_dbm={rid: float(p) for rid, p, h in zip(self.receiver_ids, request.rx_power_dbm, heard) if h},
            model=self.estimators[0].info, processing_ms=processing_s * 1e3, age_ms=(end_ns - request.t_end_ns) / 1e6,
            network=self.config.network.name, alternatives=tuple(outs[1:]), channel=channel.name,
            channel_hz=channel.centre_hz, emission_id=request.emission_id, stage=request.stage,
        )
        payload = loc.to_wire()
        self.seq += 1
        if self._send(self.topic, payload):
            m.published.labels(outs[0].estimator).inc()
        m.emission_localizations.labels(channel.name, request.stage, "localized").inc()
        m.processing_seconds.observe(processing_s)
        m.age_seconds.observe(max(0.0, (end_ns - request.t_end_ns) / 1e9))
        return payload

    def _send_event(self, kind: str, event: EmissionStart | EmissionEnd) -> None:
        channel = self.plan[self._channel_index[event.channel]]
        ended = isinstance(event, EmissionEnd)
        message = EmissionEvent(
            event=kind, emission_id=event.emission_id, channel=channel.name, channel_hz=channel.centre_hz,
            start_ns=event.start_ns, end_ns=event.end_ns if ended else None,
            peak_snr_db=dict(event.peak_snr_db) if ended else {}, active_frames=event.active_frames if ended else None,
            network=self.config.network.name,
        )
        self._send(self.emission_topic, message.to_wire())

    def _count_dropped_short(self) -> None:
        fresh = self.tracker.dropped_short - self._dropped_reported
        for c in np.flatnonzero(fresh):
            self.metrics.emissions_dropped_short.labels(self.plan[c].name).inc(int(fresh[c]))
        self._dropped_reported = self.tracker.dropped_short.copy()

    def _set_received_power(self, requests: list[_Request]) -> None:
        """``heimdall_received_power_dbm`` per receiver: the in-channel power (dBm) of the strongest of ``requests`` it
        heard, over their frames: a window's emissions (interim), then each one that ended over its whole span (final),
        so that an emission's last value is not that of the few frames it had left in its last window. A receiver
        that heard none keeps its last value, as a single-channel daemon's does while the receiver is absent."""
        if not requests:
            return
        powers = np.stack([r.rx_power_dbm for r in requests])  # [E, R], NaN where not heard
        heard = ~np.isnan(powers)
        strongest = np.max(np.where(heard, powers, -np.inf), axis=0)
        for r in np.flatnonzero(heard.any(axis=0)):
            self._series[self.receiver_ids[r]].received_power.set(float(strongest[r]))

    def _set_active_gauges(self) -> None:
        """Open (confirmed, not yet ended) emissions per channel."""
        per_channel = np.bincount(list(self._open.values()), minlength=len(self.plan))
        for c, ch in enumerate(self.plan):
            self.metrics.emissions_active.labels(ch.name).set(int(per_channel[c]))
