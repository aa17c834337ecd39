"""The band path: a band lane's exact sample accounting and channel flatness, and the window step on synthetic IQ
(two keyed carriers on two channels -> two emissions on the right channels, interim and final localizations,
start and end events, a channel outside every receiver's band masked and counted)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from receivers.base import IQBlock
from receivers.simulator import SimulatedWorld
from streamer import config as config_mod
from streamer.config import ChannelConfig
from streamer.core.geodesy import Origin, geodetic_to_enu_m, mahalanobis_sq
from streamer.daemon.band import BandPipeline, EmissionFrames
from streamer.daemon.band_lane import PASSBAND_HZ, BandFrontEnd, BandLane, BandWindow
from streamer.daemon.lane import PIPELINE, LaneSettings
from streamer.daemon.messages import SCHEMA_VERSION, EstimateOut, Localization
from streamer.daemon.metrics import Metrics
from streamer.dsp.emissions import channel_frame_levels
from streamer.dsp.channelizer import Channelizer
from streamer.estimators.base import Estimate, EstimateRejected
from streamer.estimators.build import build_estimators

IN_RATE_HZ = 240_000.0
CENTER_HZ = 145.525e6
FEATURE_RATE_HZ = 24_000.0
T0_NS = 1_790_000_000_000_000_000  # a multiple of the 0.5 s window
PLAN = (
    ChannelConfig("A", 145.5e6, 12_500.0),
    ChannelConfig("B", 145.55e6, 12_500.0),
    ChannelConfig("far", 146.5e6, 12_500.0),  # outside every receiver's 240 kHz band: masked for all
)
BLOCK = 12_000  # 50 ms at 240 kHz


def _settings(capacity_s=4.0):
    return LaneSettings(PLAN[0].centre_hz, FEATURE_RATE_HZ, capacity_s, clock_jump_tolerance_s=0.05)


def _lane(drops, capacity_s=4.0):
    return BandLane("rx0", _settings(capacity_s), PLAN, lambda reason, stage, n: drops.append((reason, stage, n)),
                    lambda reason: drops.append((reason, "bad_frame", 0)))


def _block(samples, index, *, center_hz=CENTER_HZ, rate=IN_RATE_HZ, rid="rx0", flags=0):
    return IQBlock(rid, np.asarray(samples, np.complex64), index, T0_NS + round(index * 1e9 / rate), "gps", rate,
                   center_hz, flags=flags)


def _noise(n, seed, scale=0.01):
    rng = np.random.default_rng(seed)
    return ((rng.standard_normal(n) + 1j * rng.standard_normal(n)) * scale).astype(np.complex64)


def _accounting_holds(lane):
    dropped = sum(n for (reason, stage), n in lane.dropped.items() if stage == PIPELINE)
    return lane.received == lane.used + lane.buffered + dropped


# Band lane ------------------------------------------------------------------------------------------------------

def test_band_lane_keeps_the_sample_accounting_through_windows_gaps_overwrites_and_a_retune():
    drops = []
    lane = _lane(drops, capacity_s=0.4)  # 0.5 s of blocks between windows through a 0.4 s ring: overwrites
    window_ns, window_n = 200_000_000, 4_800  # 0.2 s windows at 24 kHz
    index = 0
    for k in range(60):
        if k == 20:
            index += 5_000  # a gap: counted at the source, the held samples dropped
        if k == 40:
            lane.push(_block(_noise(BLOCK, k), index, center_hz=CENTER_HZ + 5_000.0))  # retune
        else:
            lane.push(_block(_noise(BLOCK, k), index))
        index += BLOCK
        assert _accounting_holds(lane), (k, lane.received, lane.used, lane.buffered, dict(lane.dropped))
        if k % 10 == 9:
            t_start = lane.span_ns()[0] + window_ns
            t_start -= t_start % window_ns
            assert lane.covers(t_start, window_n)
            window = lane.take(t_start, window_n, None)
            assert window.shape == (window_n, 2)  # A and B are covered, "far" is not
            assert _accounting_holds(lane)
    assert lane.covered.tolist() == [True, True, False]
    assert lane.used > 0
    reasons = {reason for reason, _stage in lane.dropped}
    assert {"gap", "retune", "overwrite", "alignment"} <= reasons
    assert ("gap", "source") in lane.dropped


def test_band_lane_refuses_a_band_that_holds_no_channel_as_untunable():
    drops = []
    lane = _lane(drops)
    lane.push(_block(_noise(BLOCK, 1), 0, center_hz=150.0e6))
    assert lane.dropped[("untunable", PIPELINE)] == BLOCK
    assert "no channel of the plan" in lane.untunable_reason and _accounting_holds(lane)


@pytest.mark.parametrize(("rate_hz", "center_hz"), [(IN_RATE_HZ, CENTER_HZ), (2.4e6, 145.5e6)], ids=["240k", "2.4M"])
def test_each_channel_reads_a_tone_as_todays_channelizer_does_out_to_11_khz(rate_hz, center_hz):
    """A tone up to +-11 kHz from a channel's centre comes out of the band front end at the power today's
    single-channel Channelizer gives it (to 0.02 dB; both are flat to +-9.6 kHz, where the features read noise),
    and 50 kHz away, in the other channel, more than 60 dB down."""
    front = BandFrontEnd(rate_hz, center_hz, PLAN, FEATURE_RATE_HZ)
    assert front.bank.passband_hz == PASSBAND_HZ and front.bank.stopband_hz == front.bank.out_rate_hz / 2
    n = np.arange(int(rate_hz))
    for offset_hz in (-11_000.0, -9_600.0, -4_000.0, 0.0, 6_000.0, 9_600.0, 10_500.0):
        front.reset()
        today = Channelizer(rate_hz, center_hz, PLAN[1].centre_hz, FEATURE_RATE_HZ)
        freq = PLAN[1].centre_hz - center_hz + offset_hz
        block = _block((0.1 * np.exp(2j * np.pi * freq * n / rate_hz)).astype(np.complex64), 0, center_hz=center_hz,
                       rate=rate_hz)
        band = front.process(block).samples
        single = today.process(block).samples
        band_db = 10 * np.log10(np.mean(np.abs(band[len(band) // 4 :]) ** 2, axis=0))
        single_db = 10 * np.log10(np.mean(np.abs(single[len(single) // 4 :]) ** 2))
        assert band_db[1] == pytest.approx(single_db, abs=0.02), offset_hz
        if abs(offset_hz) <= 9_600.0:
            assert band_db[1] == pytest.approx(-20.0, abs=0.05), offset_hz
        assert band_db[0] < -80.0, offset_hz


def test_emission_frames_keep_at_most_twice_t_frames_evenly_spread():
    frames = EmissionFrames(n_receivers=2, n_mels=3, n_frames=4)
    for start in range(0, 100, 5):  # 100 frames of receiver 0, valued by their index
        frames.add(0, np.tile(np.arange(start, start + 5, dtype=np.float32), (3, 1)))
    frames.add(1, np.full((3, 1), 7.0, np.float32))
    window, present = frames.window()
    assert present.tolist() == [True, True]
    kept = window[0, 0]
    assert len(set(kept.tolist())) == 4 and kept[0] == 0.0 and kept[-1] >= 64  # spread over the emission
    np.testing.assert_array_equal(window[1], 7.0)  # one frame, repeated over T


# The window step ------------------------------------------------------------------------------------------------

N_RX = 5
#: (channel, key-up s, key-down s, transmitter east/north m relative to the origin, power dBm)
CARRIERS = ((0, 1.0, 3.0, (8_000.0, 5_000.0), 40.0), (1, 2.0, 4.5, (-6_000.0, 12_000.0), 43.0))
DURATION_S = 6.0


def _band_config():
    base = config_mod.load()
    rxs = tuple(dataclasses.replace(rx, options=dataclasses.replace(rx.options, center_freq_hz=CENTER_HZ))
                for rx in base.receivers[:N_RX])
    return dataclasses.replace(base, receivers=rxs, channels=PLAN,
                               estimator=dataclasses.replace(base.estimator, kind="physics"))


def _synthetic_blocks(cfg, carriers=CARRIERS):
    """Each receiver's blocks: its own noise, plus each carrier at the power the simulated world's path loss gives
    it, keyed on [key-up, key-down)."""
    world = SimulatedWorld(cfg)
    n_total = int(DURATION_S * IN_RATE_HZ)
    t_s = np.arange(n_total) / IN_RATE_HZ
    streams = []
    for r, rx in enumerate(cfg.receivers):
        noise_dbfs = world.noise_dbm(r, IN_RATE_HZ) - rx.calibration_db
        iq = _noise(n_total, 100 + r, scale=np.sqrt(10 ** (noise_dbfs / 10) / 2)).astype(np.complex128)
        for c, on_s, off_s, tx_en, power_dbm in carriers:
            rx_dbm = world.received_power_dbm(np.array(tx_en), power_dbm)[r]
            amplitude = 10 ** ((rx_dbm - rx.calibration_db) / 20)
            keyed = (t_s >= on_s) & (t_s < off_s)
            freq = PLAN[c].centre_hz - CENTER_HZ + 700.0
            iq += keyed * amplitude * np.exp(2j * np.pi * freq * t_s)
        streams.append([_block(iq[i : i + BLOCK], i, rid=rx.id) for i in range(0, n_total, BLOCK)])
    return world, streams


def _run_band(cfg, carriers=CARRIERS, silent_from_s=None):
    """Feed every receiver's blocks in step; receiver 0 stops at ``silent_from_s`` (s), if given."""
    metrics, sent, clock = Metrics(), [], {"ns": T0_NS}
    pipeline = BandPipeline(cfg, metrics=metrics, send=lambda topic, msg: sent.append((topic, msg)) or True,
                            estimators=build_estimators(cfg), clock_ns=lambda: clock["ns"])
    world, streams = _synthetic_blocks(cfg, carriers)
    try:
        for k in range(len(streams[0])):
            batch = [s[k] for s in streams]
            clock["ns"] = batch[0].t0_ns + batch[0].duration_ns
            if silent_from_s is not None and batch[0].t0_ns >= T0_NS + silent_from_s * 1e9:
                batch = batch[1:]
            assert pipeline.push_many(batch, arrival_ns=clock["ns"]) == []
            pipeline.poll()
        clock["ns"] += 2 * 10**9  # late tolerance passes: the last windows go out
        pipeline.poll()
    finally:
        pipeline.close()
    return pipeline, metrics, sent, world


@pytest.fixture(scope="module")
def band_run():
    return _run_band(_band_config())


def test_two_keyed_carriers_give_two_emissions_on_their_channels_with_start_and_end_events(band_run):
    pipeline, _metrics, sent, _world = band_run
    events = [msg for topic, msg in sent if topic == "emission"]
    starts = [e for e in events if e["event"] == "start"]
    ends = [e for e in events if e["event"] == "end"]
    assert [(e["channel"], e["channel_hz"]) for e in starts] == [("A", 145.5e6), ("B", 145.55e6)]
    assert [e["channel"] for e in ends] == ["A", "B"]
    for end, (c, on_s, off_s, _tx, _p) in zip(ends, CARRIERS):
        assert abs(end["start_ns"] - (T0_NS + on_s * 1e9)) < 30e6, "start within about two frames"
        assert abs(end["end_ns"] - (T0_NS + off_s * 1e9)) < 30e6, "end within about two frames"
        assert len(end["receivers"]) >= 3 and set(end["peak_snr_db"]) == set(end["receivers"])
        assert end["v"] == SCHEMA_VERSION and end["active_frames"] > 150
    assert {e["emission_id"] for e in starts} == {e["emission_id"] for e in ends}
    for lane in pipeline.lanes.values():
        assert _accounting_holds(lane)


def test_each_emission_has_interim_estimates_per_window_and_one_final_over_its_whole_length(band_run):
    _pipeline, _metrics, sent, _world = band_run
    ends = {e["emission_id"]: e for topic, e in sent if topic == "emission" and e["event"] == "end"}
    locs = [msg for topic, msg in sent if topic == "loc"]
    for emission_id, end in ends.items():
        mine = [m for m in locs if m["emission_id"] == emission_id]
        interim = [m for m in mine if m["stage"] == "interim"]
        final = [m for m in mine if m["stage"] == "final"]
        assert all(m["channel"] == end["channel"] and m["channel_hz"] == end["channel_hz"] for m in mine)
        # 2 s and 2.5 s on the air: every window in between, less the one that only confirmed it.
        assert len(interim) >= 3, f"emission {emission_id}: {len(interim)} interim estimates"
        assert len(final) == 1
        assert (final[0]["t_start_ns"], final[0]["t_end_ns"]) == (end["start_ns"], end["end_ns"])
        assert all(end["start_ns"] - 10**9 // 2 <= m["t_start_ns"] <= end["end_ns"] for m in interim)
    # Interim messages come before their emission's final one, and the final before the end event.
    order = [(topic, msg.get("stage") or msg.get("event"), msg["emission_id"]) for topic, msg in sent
             if topic in ("loc", "emission")]
    for emission_id in ends:
        mine = [kind for _topic, kind, eid in order if eid == emission_id]
        assert mine[0] == "start" and mine[-2:] == ["final", "end"] and set(mine[1:-2]) == {"interim"}


def test_the_final_estimate_covers_its_transmitter(band_run):
    """The carriers' powers come from the world's own path-loss model: each final estimate's 99.9 % region holds
    the transmitter."""
    pipeline, _metrics, sent, _world = band_run
    finals = {m["channel"]: m for topic, m in sent if topic == "loc" and m["stage"] == "final"}
    for c, _on, _off, tx_en, _power in CARRIERS:
        final = finals[PLAN[c].name]
        east, north, _ = geodetic_to_enu_m(final["lat"], final["lon"], 0.0, pipeline.origin)
        delta = np.array(tx_en) - np.array([east, north])
        assert mahalanobis_sq(delta, final["cov_en_m2"]) <= 13.8, (PLAN[c].name, delta, final["cov_en_m2"])


def test_final_estimates_carry_their_own_site_factor_and_interim_ones_the_other(band_run):
    _pipeline, _metrics, plain, _world = band_run
    cfg = _band_config()
    physics = dataclasses.replace(cfg.estimator.physics, covariance_scale=2.0, final_covariance_scale=0.5)
    _pipeline, _metrics, scaled, _world = _run_band(dataclasses.replace(
        cfg, estimator=dataclasses.replace(cfg.estimator, physics=physics)))
    before = [m for topic, m in plain if topic == "loc"]
    after = [m for topic, m in scaled if topic == "loc"]
    assert [(m["emission_id"], m["stage"], m["lat"], m["lon"]) for m in after] == \
        [(m["emission_id"], m["stage"], m["lat"], m["lon"]) for m in before]
    assert {m["stage"] for m in after} == {"interim", "final"}
    for a, b in zip(after, before):
        factor = 0.5 if a["stage"] == "final" else 2.0
        assert a["covariance_scale"] == factor and b["covariance_scale"] == 1.0
        np.testing.assert_allclose(a["cov_en_m2"], np.multiply(factor, b["cov_en_m2"]), rtol=1e-9)
        assert [e["scale"] for e in a["ellipses"]] == [e["scale"] for e in b["ellipses"]]


def test_the_channel_outside_every_band_is_masked_and_counted_and_the_metrics_stay_bounded(band_run):
    pipeline, metrics, _sent, _world = band_run
    reg = metrics.registry

    def value(name, **labels):
        return reg.get_sample_value(name, labels) or 0.0

    windows = pipeline.windows
    assert windows >= 10
    for rid in pipeline.receiver_ids:
        assert value("heimdall_channel_masked_windows_total", channel="far", receiver=rid) >= windows - 2
        assert value("heimdall_channel_masked_windows_total", channel="A", receiver=rid) == 0
    assert value("heimdall_emissions_started_total", channel="A") == 1
    assert value("heimdall_emissions_ended_total", channel="B") == 1
    assert value("heimdall_emissions_started_total", channel="far") == 0
    assert value("heimdall_emissions_active", channel="A") == 0
    assert value("heimdall_emission_localizations_total", channel="A", stage="final", outcome="localized") == 1
    channels = {s.labels["channel"] for family in reg.collect() for s in family.samples if "channel" in s.labels}
    assert channels == {"A", "B", "far"}, "only configured channels label series"


def test_a_single_channel_config_keeps_todays_messages_apart_from_the_version():
    out = EstimateOut.from_estimate(Estimate("physics", np.zeros(2), np.eye(2) * 1e6), Origin(45.0, 7.0))
    plain = Localization(0, 1, 2, out, ("a",), {"a": -90.0}, {}, 1.0, 1.0, "default").to_wire()
    assert plain["v"] == 2 and not {"channel", "channel_hz", "emission_id", "stage"} & set(plain)
    band = dataclasses.replace(Localization(0, 1, 2, out, ("a",), {"a": -90.0}, {}, 1.0, 1.0, "default"),
                               channel="A", channel_hz=145.5e6, emission_id=3, stage="final").to_wire()
    assert {k: band[k] for k in ("channel", "channel_hz", "emission_id", "stage")} == {
        "channel": "A", "channel_hz": 145.5e6, "emission_id": 3, "stage": "final"}
    assert set(band) - set(plain) == {"channel", "channel_hz", "emission_id", "stage"}


def test_an_emission_on_the_air_at_shutdown_ends_with_its_final_estimate():
    still_on = ((1, 3.0, 99.0, (-6_000.0, 12_000.0), 43.0),)
    pipeline, metrics, sent, _world = _run_band(_band_config(), still_on)
    assert [m["event"] for topic, m in sent if topic == "emission"] == ["start"]
    assert metrics.registry.get_sample_value("heimdall_emissions_active", {"channel": "B"}) == 1
    published = pipeline.finish()
    assert [m["stage"] for m in published] == ["final"]
    end = [m for topic, m in sent if topic == "emission"][-1]
    assert end["event"] == "end" and end["channel"] == "B"
    last_window_end_ns = pipeline.aligner.next_t_ns  # the stream's tail, short of a window, was never cut
    assert last_window_end_ns - 30e6 < end["end_ns"] < last_window_end_ns, "ends at its last active frame"
    assert published[0]["t_end_ns"] == end["end_ns"]
    assert metrics.registry.get_sample_value("heimdall_emissions_active", {"channel": "B"}) == 0
    assert pipeline.finish() == [], "nothing is open any more"


def test_a_receiver_that_falls_silent_is_masked_and_the_others_still_localize():
    pipeline, metrics, sent, _world = _run_band(_band_config(), silent_from_s=2.5)
    silent = pipeline.receiver_ids[0]
    masked = sum(metrics.registry.get_sample_value("heimdall_window_masked_receivers_total",
                                                   {"receiver": silent, "reason": reason}) or 0.0
                 for reason in ("offline", "late", "gap"))
    assert masked >= 5, "every window after 2.5 s masks it"
    ends = [m for topic, m in sent if topic == "emission" and m["event"] == "end"]
    assert [e["channel"] for e in ends] == ["A", "B"]
    late_locs = [m for topic, m in sent if topic == "loc" and m["t_start_ns"] >= T0_NS + 3 * 10**9]
    assert late_locs and all(silent not in m["receivers"] for m in late_locs)
    for lane in pipeline.lanes.values():
        assert _accounting_holds(lane)


class _RecordingEstimator:
    """An estimator that keeps every ``EstimatorInputs`` it is given and answers as the one it wraps."""

    def __init__(self, inner):
        self.inner = inner
        self.seen = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def estimate(self, inputs):
        self.seen.append(inputs)
        return self.inner.estimate(inputs)

    def estimate_batch(self, inputs_list):
        self.seen.extend(inputs_list)
        if hasattr(self.inner, "estimate_batch"):
            return self.inner.estimate_batch(inputs_list)
        answers = []
        for inputs in inputs_list:
            try:
                answers.append(self.inner.estimate(inputs))
            except EstimateRejected as exc:
                answers.append(exc)
        return answers


def test_the_estimators_measure_an_emission_over_the_rules_active_frames_not_the_trackers_hysteresis():
    """Channel A carries a tone 20 dB over the in-channel noise, then 4.5 dB (between the tracker's off threshold,
    3 dB, and the rule's 6 dB) for the second half of a window, then 20 dB again: the tracker keeps the emission on
    through the weak stretch, but the frames passed to the estimators (and the power measured over them) are the
    detection rule's per-frame decision, ``DetectionRule.frame_activity``, as in the single-channel pipeline."""
    cfg = _band_config()
    spy = _RecordingEstimator(build_estimators(cfg)[0])
    pipeline = BandPipeline(cfg, metrics=Metrics(), send=lambda topic, msg: True, estimators=[spy],
                            clock_ns=lambda: T0_NS)
    spec = cfg.features
    n = spec.n_samples
    noise_var = 1e-6
    in_channel_noise = noise_var * PLAN[0].bandwidth_hz / FEATURE_RATE_HZ
    strong, weak = (np.sqrt(in_channel_noise * 10 ** (snr / 10)) for snr in (20.0, 4.5))
    tone = np.exp(2j * np.pi * 700.0 * np.arange(n) / FEATURE_RATE_HZ)
    envelopes = [np.zeros(n), np.zeros(n), np.full(n, strong), np.where(np.arange(n) < 20 * spec.hop, strong, weak),
                 np.full(n, strong), np.zeros(n), np.zeros(n)]
    covered = np.tile([True, True, False], (N_RX, 1))
    try:
        for k, envelope in enumerate(envelopes):
            iq = np.zeros((N_RX, len(PLAN), n), dtype=np.complex64)
            for r in range(N_RX):
                iq[r, :2] = _noise(2 * n, 1000 * k + r, scale=np.sqrt(noise_var / 2)).reshape(2, n)
                iq[r, 0] += (envelope * tone).astype(np.complex64)
            t0 = T0_NS + k * 10**9 // 2
            window = BandWindow(t0, t0 + 10**9 // 2, pipeline.receiver_ids, np.ones(N_RX, dtype=bool), {}, covered,
                                tuple(iq[r, covered[r]] for r in range(N_RX)))
            pipeline._process(window, t0)
        pipeline.finish()
    finally:
        pipeline.close()
    rule = pipeline.rules[0]
    interim = [inputs for inputs in spy.seen if inputs.t_ns % (10**9 // 2) == 0]
    assert len(interim) >= 3, "an interim estimate for each window the emission was on the air in"
    for inputs in interim:
        expected = rule.frame_activity(inputs.features_dbm, spec, inputs.present)
        assert np.array_equal(inputs.active_frames, expected), (inputs.t_ns, inputs.active_frames, expected)
    mixed = [inputs for inputs in interim if inputs.t_ns == T0_NS + 3 * 10**9 // 2]
    assert len(mixed) == 1 and 15 <= mixed[0].active_frames.sum() <= 22, "only the strong half's frames are active"


def test_features_read_from_the_rings_in_place_equal_those_of_a_copied_window():
    """``BandPipeline`` computes each receiver's features from its ring's rows in place (views whose rows are far
    apart in memory, as a ring's are): the same dBm as the pipeline's feature step gives the whole window copied
    into one ``[R, C, N]`` array; zeros where a receiver is absent or does not cover the channel."""
    cfg = _band_config()
    pipeline = BandPipeline(cfg, metrics=Metrics(), send=lambda topic, msg: True, estimators=build_estimators(cfg),
                            clock_ns=lambda: T0_NS)
    try:
        n = cfg.features.n_samples
        rng = np.random.default_rng(8)
        covered = np.tile([True, True, False], (N_RX, 1))
        covered[1] = [False, True, False]
        present = np.ones(N_RX, dtype=bool)
        present[2] = False
        ring = (rng.standard_normal((N_RX, len(PLAN), 3 * n)) + 1j * rng.standard_normal((N_RX, len(PLAN), 3 * n)))
        ring = (ring * 0.01).astype(np.complex64)
        rows = tuple(ring[r, covered[r], n : 2 * n] if present[r] else None for r in range(N_RX))
        window = BandWindow(T0_NS, T0_NS + 10**9 // 2, pipeline.receiver_ids, present, {}, covered, rows)
        features, snr, noise, _ = pipeline._window_frames(window)
        in_place = np.swapaxes(features, 0, 1)
        copied = pipeline._features(window.samples)
        listening = present[:, None] & covered
        np.testing.assert_allclose(in_place[listening], copied[listening], rtol=0, atol=1e-4)
        assert not in_place[~listening].any()
        snr_copied, noise_copied = channel_frame_levels(pipeline.rules[0], copied, cfg.features)
        np.testing.assert_allclose(np.swapaxes(snr, 0, 1)[listening], snr_copied[listening], rtol=0, atol=1e-6)
        np.testing.assert_allclose(np.swapaxes(noise, 0, 1)[listening], noise_copied[listening], rtol=0, atol=1e-6)
        assert np.isnan(np.swapaxes(snr, 0, 1)[~listening]).all()
    finally:
        pipeline.close()


def test_frames_streamed_as_samples_arrive_equal_those_of_the_whole_window(monkeypatch):
    """``BandPipeline`` computes the next window's mel frames and per-frame levels a few at a time as each receiver's
    samples arrive (``_stream_frames``), so the tick that completes a window has little left: for every window of a
    run they equal, bit for bit, those computed from the whole window at once, and most of each window was
    streamed."""
    checked = []
    original = BandPipeline._window_frames

    def compare(self, window):
        streamed_states = list(self._lane_frames)
        self._lane_frames = [None] * len(streamed_states)
        whole = original(self, window)
        self._lane_frames = streamed_states
        streamed = sum(state.done for state in streamed_states if state is not None)
        result = original(self, window)
        for got, want in zip(result[:3], whole[:3]):  # to the last bit: a live run and its replay must agree
            np.testing.assert_array_equal(got, want)
        checked.append(streamed / (window.present.sum() * self.config.features.n_frames))
        return result

    monkeypatch.setattr(BandPipeline, "_window_frames", compare)
    _pipeline, _metrics, sent, _world = _run_band(_band_config())
    assert len(checked) >= 10
    assert np.median(checked) > 0.5, f"share of each window's frames streamed before the window: {checked}"
    assert [m["event"] for topic, m in sent if topic == "emission"] == ["start", "start", "end", "end"]


def test_a_band_daemon_publishes_each_simulated_transmitter_s_truth_with_its_channel():
    from types import SimpleNamespace

    from streamer.daemon.pipeline import Pipeline
    from streamer.tools.evaluate_band import DEFAULT_CONFIG

    band_cfg = config_mod.load(DEFAULT_CONFIG)
    band_cfg = dataclasses.replace(band_cfg, estimator=dataclasses.replace(band_cfg.estimator, kind="physics"))
    world = SimulatedWorld(band_cfg)
    window = SimpleNamespace(t_start_ns=T0_NS, t_end_ns=T0_NS + 500_000_000)
    sent = []
    band = BandPipeline(band_cfg, metrics=Metrics(), send=lambda topic, msg: sent.append((topic, msg)) or True,
                        estimators=build_estimators(band_cfg), truth_source=world)
    try:
        band.publish_truth(window)
    finally:
        band.close()
    assert [topic for topic, _ in sent] == ["truth"] * len(world.transmitter_channels) and len(sent) > 1
    for k, (_, msg) in enumerate(sent):
        expected = world.truth_over(window.t_start_ns, window.t_end_ns, k)
        assert (msg["transmitter"], msg["channel"], msg["channel_hz"]) == (k, expected.channel, expected.channel_hz)
        assert (msg["lat"], msg["keyed_fraction"], msg["window_start_ns"]) == (expected.lat, expected.keyed_fraction, T0_NS)

    one_cfg = config_mod.load()
    sent.clear()
    single = Pipeline(one_cfg, metrics=Metrics(), send=lambda topic, msg: sent.append((topic, msg)) or True,
                      estimators=build_estimators(dataclasses.replace(
                          one_cfg, estimator=dataclasses.replace(one_cfg.estimator, kind="physics"))),
                      truth_source=SimulatedWorld(one_cfg))
    try:
        single.publish_truth(window)
    finally:
        single.close()
    ((topic, msg),) = sent
    assert topic == "truth" and not {"transmitter", "channel", "channel_hz"} & set(msg)
