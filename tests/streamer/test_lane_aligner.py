"""Lanes and the window aligner: masking by reason, and exact sample accounting under every fault."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from receivers.base import Flags, IQBlock
from streamer.daemon.aligner import WindowAligner
from streamer.daemon.lane import PIPELINE, SOURCE
from tests.helpers.lanes import IN_RATE, MODEL_RATE, T0_NS, TARGET, Recorder, assert_accounting, tone_block

WINDOW_S = 0.5


def make_aligner(lanes, late_tolerance_s=0.25, offline_after_s=1.0):
    return WindowAligner(lanes, window_s=WINDOW_S, sample_rate_hz=MODEL_RATE, late_tolerance_s=late_tolerance_s, offline_after_s=offline_after_s)


def feed(lane, aligner, blocks, host_ns):
    for b in blocks:
        lane.push(b)
        aligner.mark_arrival(lane.receiver_id, host_ns)


def test_windows_cover_the_same_span_on_every_receiver_and_account_exactly():
    rec = Recorder()
    lanes = [rec.lane(r) for r in ("a", "b", "c")]
    aligner = make_aligner(lanes)
    rng = np.random.default_rng(1)
    index = {lane.receiver_id: 0 for lane in lanes}
    windows = []
    step_n = 24_000  # 100 ms per step, cut differently into blocks on each receiver
    for step in range(40):
        for lane in lanes:
            cuts = np.sort(rng.integers(0, step_n, size=int(rng.integers(0, 6))))
            for a, b in zip(np.r_[0, cuts], np.r_[cuts, step_n]):
                rid = lane.receiver_id
                feed(lane, aligner, [tone_block(rid, index[rid], int(b - a))], T0_NS + step * 10**8)
                index[rid] += int(b - a)
        windows += aligner.poll(T0_NS + step * 10**8)
    assert len(windows) >= 3
    for w in windows:
        assert w.present.all() and not w.mask_reasons
        assert w.t_end_ns - w.t_start_ns == int(WINDOW_S * 1e9) and w.t_start_ns % int(WINDOW_S * 1e9) == 0
        # The same tone on every receiver, cut at the same time: identical samples.
        np.testing.assert_allclose(w.samples[0], w.samples[1], atol=1e-6)
        # The tone sits at centre + 1 kHz = target - 24 kHz: outside the +-12 kHz model band, filtered out.
        assert np.mean(np.abs(w.samples[0]) ** 2) < 1e-8
    for lane in lanes:
        assert_accounting(lane)
        assert lane.used > 0


def test_faults_are_masked_counted_and_accounted():
    rec = Recorder()
    lanes = {r: rec.lane(r) for r in ("ok", "gappy", "jumpy", "broken")}
    aligner = make_aligner(list(lanes.values()))
    block_n = 12_000  # 50 ms
    host = T0_NS
    windows = []
    for k in range(80):
        host = T0_NS + k * 50_000_000
        idx = k * block_n
        feed(lanes["ok"], aligner, [tone_block("ok", idx, block_n)], host)
        if k != 30:  # one block missing: a gap of 50 ms
            feed(lanes["gappy"], aligner, [tone_block("gappy", idx, block_n)], host)
        jump = 200_000_000 if k >= 40 else 0  # the clock jumps 200 ms at block 40
        feed(lanes["jumpy"], aligner, [tone_block("jumpy", idx, block_n, t_offset_ns=jump)], host)
        b = tone_block("broken", idx, block_n)
        if k == 20:
            b = IQBlock("broken", b.samples.copy(), b.sample_index, b.t0_ns, "host", IN_RATE, b.center_freq)
            b.samples[5] = np.nan
        feed(lanes["broken"], aligner, [b], host)
        if k == 50:  # a stale block replayed: index going backwards
            feed(lanes["broken"], aligner, [tone_block("broken", idx - block_n, block_n)], host)
        if k == 60:  # wrong dtype
            bad = tone_block("broken", idx + block_n, 10)
            feed(lanes["broken"], aligner, [IQBlock("broken", bad.samples.astype(np.complex128), bad.sample_index, bad.t0_ns, "host", IN_RATE, bad.center_freq)], host)
        windows += aligner.poll(host)
    assert rec.bad[("broken", "non_finite")] == 1
    assert rec.bad[("broken", "index_backwards")] == 1
    assert rec.bad[("broken", "bad_dtype")] == 1
    assert rec.bad[("jumpy", "clock_jump")] == 1
    assert rec.drops[("gappy", "gap", SOURCE)] == block_n  # never received: counted at the source stage
    assert rec.drops[("gappy", "gap", PIPELINE)] > 0  # what it held when the gap showed
    assert rec.drops[("broken", "non_finite", PIPELINE)] >= block_n  # the block, and what was held before the hole
    assert ("broken", "gap", SOURCE) not in rec.drops  # the NaN block was received: not a source gap too
    reasons = [w.mask_reasons for w in windows]
    assert any(r.get("gappy") == "gap" for r in reasons)
    assert any(r.get("broken") == "gap" for r in reasons)  # the NaN block left a hole in its stream
    assert all(w.present[0] for w in windows)  # the healthy receiver is never masked
    assert all(not w.samples[~w.present].any() for w in windows)  # a masked receiver's row is zeros
    for lane in lanes.values():
        assert_accounting(lane)


def test_offline_receiver_is_masked_then_resumes_within_two_windows():
    rec = Recorder()
    lanes = {r: rec.lane(r) for r in ("a", "b", "c")}
    aligner = make_aligner(list(lanes.values()), offline_after_s=0.5)
    block_n = 12_000
    windows = []
    for k in range(120):
        host = T0_NS + k * 50_000_000
        idx = k * block_n
        for rid, lane in lanes.items():
            if rid == "c" and 30 <= k < 70:  # c goes silent for 2 s, then comes back (after a reconnect)
                continue
            flags = Flags.DISCONTINUITY if (rid == "c" and k == 70) else Flags.NONE
            feed(lane, aligner, [tone_block(rid, idx, block_n, flags=flags)], host)
        windows += aligner.poll(host)
    c_reasons = [w.mask_reasons.get("c") for w in windows]
    assert "offline" in c_reasons or "late" in c_reasons
    back = T0_NS + 70 * 50_000_000
    first_present_after = next(w for w in windows if w.t_start_ns >= back and w.present[2])
    assert first_present_after.t_start_ns - back <= 2 * int(WINDOW_S * 1e9)
    for lane in lanes.values():
        assert_accounting(lane)


def test_a_stall_of_the_daemon_itself_does_not_make_every_receiver_look_offline():
    """The process was suspended for 4 s (offline_after 3 s): on resuming, the first poll comes before the
    adapters' queued blocks. The receivers must not be masked offline for that; a receiver that stays
    silent while the daemon runs still is, after offline_after of running time."""
    rec = Recorder()
    lanes = {r: rec.lane(r) for r in ("a", "b", "c")}
    aligner = make_aligner(list(lanes.values()), offline_after_s=3.0)
    block_n = 12_000
    windows = []
    host = T0_NS
    for k in range(200):
        host = T0_NS + k * 50_000_000 + (4 * 10**9 if k >= 40 else 0)  # suspended between blocks 39 and 40
        if k == 40:
            windows += aligner.poll(host)  # resumed: polled before any block arrived
            assert aligner.is_live("a", host) and aligner.stalled_ns == 4 * 10**9 + 50_000_000
        for rid, lane in lanes.items():
            if rid == "c" and k >= 100:  # c stops for good at block 100, the daemon running on
                continue
            feed(lane, aligner, [tone_block(rid, k * block_n, block_n)], host)
        windows += aligner.poll(host)
    # (the window ending where c stopped lacks the filter delay's last samples of c: masked, rightly)
    before_c_stopped = [w for w in windows if w.t_end_ns < T0_NS + 100 * 50_000_000]
    assert len(before_c_stopped) >= 8 and all(w.present.all() and not w.mask_reasons for w in before_c_stopped)
    assert not aligner.is_live("c", host) and aligner.silence_ns("c", host) == 100 * 50_000_000
    assert "offline" in [w.mask_reasons.get("c") for w in windows]
    for lane in lanes.values():
        assert_accounting(lane)


def test_a_receiver_the_replay_pacer_holds_is_waited_for_however_long_it_is_silent_and_masked_once_it_left():
    """A replay the daemon paces (``realtime = false``) is silent while the pacer holds it back, for a slower
    receiver or a slow pipeline, on a loaded host for longer than offline_after; its samples are still to come.
    Windows wait for it, so a replay gives the same windows however loaded the host; once its source ended (it
    left the pacer) it is judged by its silence like any other."""
    rec = Recorder()
    lanes = {r: rec.lane(r) for r in ("a", "b", "c")}
    paced = {"a", "b", "c"}
    aligner = WindowAligner(list(lanes.values()), window_s=WINDOW_S, sample_rate_hz=MODEL_RATE, late_tolerance_s=0.25,
                            offline_after_s=0.5, paced=lambda: frozenset(paced))
    block_n = 12_000  # 50 ms at the input rate
    windows = []
    for k in range(60):  # the host polls every 50 ms; the pacer holds every receiver back for 1 s from poll 10 on
        host = T0_NS + k * 50_000_000
        if not 10 <= k < 30:
            j = k if k < 10 else k - 20  # their blocks, without a gap
            for rid, lane in lanes.items():
                feed(lane, aligner, [tone_block(rid, j * block_n, block_n)], host)
        if k == 29:
            assert aligner.is_live("c", host) and aligner.silence_ns("c", host) > aligner.offline_after_ns
        windows += aligner.poll(host)
    assert len(windows) >= 3 and all(w.present.all() and not w.mask_reasons for w in windows)
    n_before = len(windows)

    paced.discard("c")  # c's source ended: the others' windows go on without it, masked offline after 0.5 s
    for k in range(60, 100):
        host = T0_NS + k * 50_000_000
        for rid in ("a", "b"):
            feed(lanes[rid], aligner, [tone_block(rid, (k - 20) * block_n, block_n)], host)
        windows += aligner.poll(host)
    assert "offline" in [w.mask_reasons.get("c") for w in windows[n_before:]]
    for lane in lanes.values():
        assert_accounting(lane)


def test_late_samples_after_their_window_went_out_are_dropped_as_late():
    rec = Recorder()
    lanes = {r: rec.lane(r) for r in ("fast", "slow")}
    aligner = make_aligner(list(lanes.values()), late_tolerance_s=0.1, offline_after_s=10.0)
    block_n = 12_000
    for k in range(40):
        host = T0_NS + k * 50_000_000
        feed(lanes["fast"], aligner, [tone_block("fast", k * block_n, block_n)], host)
        if k >= 20:  # slow delivers its stream 1 s late, in a burst
            for j in (2 * (k - 20), 2 * (k - 20) + 1):
                feed(lanes["slow"], aligner, [tone_block("slow", j * block_n, block_n)], host)
        aligner.poll(host)
    assert rec.drops.get(("slow", "late", PIPELINE), 0) > 0
    for lane in lanes.values():
        assert_accounting(lane)


def test_ring_overwrite_is_counted_when_windows_cannot_go_out():
    rec = Recorder()
    lane = rec.lane("a", capacity_s=1.2)
    index = 0
    for _ in range(60):  # 3 s, never polled
        lane.push(tone_block("a", index, 12_000))
        index += 12_000
    assert rec.drops[("a", "overwrite", PIPELINE)] > 0
    assert_accounting(lane)


@pytest.mark.parametrize("rate", [240_000.0, 2_400_000.0, 250_000.0])
def test_accounting_holds_for_rational_resampling_ratios(rate):
    rec = Recorder()
    lane = rec.lane("a")
    aligner = make_aligner([lane])
    rng = np.random.default_rng(7)
    index = 0
    for step in range(30):
        n = int(rng.integers(1, int(rate // 10)))
        lane.push(tone_block("a", index, n, rate=rate))
        aligner.mark_arrival("a", T0_NS)
        index += n
        aligner.poll(T0_NS)
        assert_accounting(lane)


def test_a_block_the_channelizer_cannot_tune_is_counted_not_raised():
    rec = Recorder()
    lane = rec.lane("a")
    far = tone_block("a", 0, 1000, rate=48_000.0)  # centre 25 kHz below the target, band only +-24 kHz
    lane.push(far)
    assert rec.bad[("a", "untunable")] == 1
    assert rec.drops[("a", "untunable", PIPELINE)] == 1000
    assert "outside the band" in lane.untunable_reason
    lane.push(tone_block("a", 0, 2400))  # a good block afterwards is taken
    assert lane.channelizer is not None
    assert_accounting(lane)


def test_one_receiver_whose_clock_jumps_ahead_does_not_make_the_others_late():
    rec = Recorder()
    lanes = {r: rec.lane(r) for r in ("a", "b", "c", "ahead")}
    aligner = make_aligner(list(lanes.values()), late_tolerance_s=0.25, offline_after_s=5.0)
    block_n = 12_000
    windows = []
    for k in range(80):
        host = T0_NS + k * 50_000_000
        for rid, lane in lanes.items():
            jump = 3_000_000_000 if (rid == "ahead" and k >= 20) else 0  # +3 s, and it stays there
            feed(lane, aligner, [tone_block(rid, k * block_n, block_n, t_offset_ns=jump)], host)
        windows += aligner.poll(host)
    assert rec.bad[("ahead", "clock_jump")] == 1
    later = [w for w in windows if w.t_start_ns >= T0_NS + 1_500_000_000]
    assert later and all(w.present[:3].all() for w in later), [w.mask_reasons for w in later]
    for lane in lanes.values():
        assert_accounting(lane)


def lanes_with_phase(ids, phase: float):
    """Lanes for ``ids``, their aligner (offline after 0.5 s), and a time offset of ``phase`` model-rate samples (ns)."""
    rec = Recorder()
    lanes = {r: rec.lane(r) for r in ids}
    return lanes, make_aligner(list(lanes.values()), offline_after_s=0.5), int(round(phase * 1e9 / MODEL_RATE))


@pytest.mark.parametrize("phase", [i / 8 for i in range(8)])
def test_receivers_left_alone_after_the_others_go_offline_are_waited_for_whatever_their_sample_phase(phase):
    """A receiver's samples need not sit on the window grid: its first sample of a window may lie up to
    half a sample after the window start. Such a lane is continuous, not restarted inside the window,
    and must still be waited for; when it was not, and the only other receivers went offline, every
    window was cut before it had arrived and masked it as "gap", for as long as the partition lasted."""
    lanes, aligner, offset_ns = lanes_with_phase(("remote", "local"), phase)
    block_n = 12_000  # 50 ms
    windows = []
    for k in range(160):
        host = T0_NS + k * 50_000_000
        if k < 40:  # the remote receiver's link goes down after 2 s
            feed(lanes["remote"], aligner, [tone_block("remote", k * block_n, block_n)], host)
        feed(lanes["local"], aligner, [tone_block("local", k * block_n, block_n, t_offset_ns=offset_ns)], host)
        windows += aligner.poll(host)
    after = [w for w in windows if w.t_start_ns >= T0_NS + 3 * 10**9]
    assert len(after) >= 8
    assert all(w.present[1] for w in after), [(w.t_start_ns - T0_NS, w.mask_reasons) for w in after]
    for lane in lanes.values():
        assert_accounting(lane)


@pytest.mark.parametrize("phase", [i / 8 for i in range(8)])
def test_a_receiver_whose_blocks_arrive_later_than_the_others_is_waited_for_whatever_its_sample_phase(phase):
    """The same with every receiver live: one whose blocks arrive one poll after the others' (a network
    hop further away) must be waited for, not masked "gap" in every window the others already cover."""
    lanes, aligner, offset_ns = lanes_with_phase(("near", "far"), phase)
    block_n = 12_000  # 50 ms
    windows = []
    for k in range(80):
        host = T0_NS + k * 50_000_000
        feed(lanes["near"], aligner, [tone_block("near", k * block_n, block_n)], host)
        windows += aligner.poll(host)
        feed(lanes["far"], aligner, [tone_block("far", k * block_n, block_n, t_offset_ns=offset_ns)], host + 10_000_000)
        windows += aligner.poll(host + 10_000_000)
    assert len(windows) >= 6
    assert all(w.present.all() for w in windows[1:]), [(w.t_start_ns - T0_NS, w.mask_reasons) for w in windows]
    for lane in lanes.values():
        assert_accounting(lane)


@pytest.mark.parametrize("value", [3e38, -3e38j, 1e3 + 1.5e3j])
def test_samples_beyond_any_adc_are_refused_as_out_of_range_and_the_stream_restarts(value):
    # |x| near 3e38 is finite, yet its power overflows float32: every window then went NaN (onnx_rejected).
    rec = Recorder()
    lane = rec.lane("a")
    lane.push(tone_block("a", 0, 2400))
    huge = tone_block("a", 2400, 2400)
    huge.samples[7] = value
    lane.push(huge)
    assert rec.bad == {("a", "out_of_range"): 1}
    assert rec.drops == {("a", "out_of_range", PIPELINE): 2400}
    lane.push(tone_block("a", 4800, 2400))  # the next good block is taken, without counting a gap
    assert rec.drops[("a", "out_of_range", PIPELINE)] > 2400, "and what was held before the hole is dropped"
    assert set(rec.drops) == {("a", "out_of_range", PIPELINE)}
    assert lane.ring.end_index > 0
    assert_accounting(lane)


@pytest.mark.parametrize("value", [complex(np.nan, 0.1), complex(0.1, np.nan), complex(np.inf, 0), complex(0, -np.inf),
                                   complex(-np.inf, np.nan)])
def test_nan_or_inf_in_either_part_is_refused_as_non_finite_and_the_stream_restarts(value):
    rec = Recorder()
    lane = rec.lane("a")
    lane.push(tone_block("a", 0, 2400))
    broken = tone_block("a", 2400, 2400)
    broken.samples[2399] = value  # the last sample: the check looks at every value of the block
    lane.push(broken)
    assert rec.bad == {("a", "non_finite"): 1}
    assert rec.drops == {("a", "non_finite", PIPELINE): 2400}
    lane.push(tone_block("a", 4800, 2400))
    assert rec.drops[("a", "non_finite", PIPELINE)] > 2400, "and what was held before the hole is dropped"
    assert set(rec.drops) == {("a", "non_finite", PIPELINE)}
    assert_accounting(lane)


def test_a_receiver_that_cannot_reach_the_target_is_logged_once_with_its_centre_rate_and_the_target(caplog):
    rec = Recorder()
    lane = rec.lane("sim-48k")
    with caplog.at_level("WARNING", logger="streamer.daemon.lane"):
        for k in range(3):  # a 48 kS/s receiver 25 kHz from the target: every block is untunable
            lane.push(tone_block("sim-48k", k * 1000, 1000, rate=48_000.0))
    assert rec.bad == {("sim-48k", "untunable"): 3}
    lines = [r.getMessage() for r in caplog.records if r.name == "streamer.daemon.lane"]
    assert len(lines) == 1, lines
    assert all(text in lines[0] for text in ("sim-48k", "145475000", "48000", "145500000")), lines[0]


def test_a_block_declaring_a_rate_that_needs_a_huge_filter_costs_no_memory():
    # 23997.6 Hz -> 24 kHz is 10000/9999: one such block built a ~400 MB filter bank that stayed.
    rec = Recorder()
    lane = rec.lane("a")
    block = tone_block("a", 0, 1000, rate=23_997.6)
    block = IQBlock("a", block.samples, 0, block.t0_ns, "host", 23_997.6, TARGET)
    tracemalloc.start()
    try:
        lane.push(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rec.bad == {("a", "untunable"): 1} and rec.drops == {("a", "untunable", PIPELINE): 1000}
    assert "filter bank" in lane.untunable_reason
    assert peak < 1 << 20, f"{peak} bytes"
    assert_accounting(lane)
