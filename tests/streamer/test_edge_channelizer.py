"""heimdall receiver --channelize: the edge's channelized stream gives the daemon the same windows, and the edge
accounts for every input sample."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest

from receivers.base import Flags, IQBlock, ReceiverContext, TallyDropCounter
from receivers.simulator import SimulatedReceiver
from streamer import config as config_mod
from streamer.cli import main
from streamer.daemon.edge_channelizer import EdgeChannelizer
from streamer.daemon.lane import Lane, LaneSettings
from streamer.daemon.metrics import Metrics
from streamer.daemon.pipeline import Pipeline
from streamer.dsp.channelizer import Channelizer
from streamer.estimators.build import build_estimators

START_NS = 1_790_000_000_000_000_000


def _config(rate_hz: float, duration_s: float = 3.0):
    base = config_mod.load()
    rxs = tuple(dataclasses.replace(rx, options=dataclasses.replace(
        rx.options, realtime=False, sample_rate_hz=rate_hz, center_freq_hz=145.49e6, start_ns=START_NS,
        duration_s=duration_s)) for rx in base.receivers)
    return dataclasses.replace(base, receivers=rxs, estimator=dataclasses.replace(base.estimator, kind="physics"))


def _streams(cfg):
    ctx = ReceiverContext(cfg, TallyDropCounter())
    streams = [list(SimulatedReceiver.from_config(rx, ctx)) for rx in cfg.receivers]
    # Faults: a NaN in receiver 1's 5th block, receiver 2's blocks 8..9 lost (a gap), receiver 3's 12th block
    # flagged as an overflow.
    streams[1][5] = dataclasses.replace(streams[1][5], samples=streams[1][5].samples.copy())
    streams[1][5].samples[3] = complex(np.nan, 0.0)
    del streams[2][8:10]
    streams[3][12] = dataclasses.replace(streams[3][12], flags=Flags.OVERFLOW)
    return streams


def _localizations(cfg, streams, through_edges: bool, hand_on_s: float = 0.0):
    sent = []
    clock = {"ns": START_NS}
    pipeline = Pipeline(cfg, metrics=Metrics(), send=lambda t, m: sent.append((t, m)) or True,
                        estimators=build_estimators(cfg), clock_ns=lambda: clock["ns"])
    edges = {rx.id: EdgeChannelizer(rx.id, LaneSettings.of(cfg), hand_on_s) for rx in cfg.receivers}
    flagged = 0
    try:
        for k in range(max(len(s) for s in streams)):
            batch = [s[k] for s in streams if k < len(s)]
            clock["ns"] = max(b.t0_ns for b in batch)
            if through_edges:
                batch = [out for b in batch for out in edges[b.receiver_id].push(b)]
                flagged += sum(bool(b.flags & Flags.DISCONTINUITY) for b in batch)
                assert {(b.sample_rate, b.center_freq) for b in batch} <= {(24_000.0, 145.5e6)}
            assert pipeline.push_many(batch, arrival_ns=clock["ns"]) == []
            pipeline.poll()
    finally:
        pipeline.close()
    locs = [m for t, m in sent if t.startswith("loc")]
    for m in locs:
        m.pop("latency_ms", None)  # processing time is measured, not computed
    return locs, flagged


@pytest.mark.parametrize("hand_on_s", [0.0, 0.05])
def test_a_daemon_fed_channelized_edges_publishes_the_same_localizations_as_one_fed_the_raw_band_bit_for_bit(hand_on_s):
    cfg = _config(240_000.0)
    streams = _streams(cfg)
    raw, _ = _localizations(cfg, streams, through_edges=False)
    edged, flagged = _localizations(cfg, streams, through_edges=True, hand_on_s=hand_on_s)
    assert len(raw) >= 3, "the run must localize"
    # The first block of each of the 7 receivers, and the restarts after the NaN, the gap and the overflow.
    assert flagged == 7 + 3
    assert repr(edged) == repr(raw)  # repr: every float to the last bit


def _block(samples, index, *, rate=2.4e6, centre=145.49e6, flags=Flags.NONE, rid="rx"):
    return IQBlock(rid, samples, sample_index=index, t0_ns=START_NS + round(index * 1e9 / 2.4e6), time_source="gps",
                   sample_rate=rate, center_freq=centre, flags=flags)


def _balanced(edge: EdgeChannelizer) -> bool:
    state = edge.accounting()
    return state["received"] == state["used"] + state["buffered"] + sum(state["dropped"].values())


def _hostile_blocks():
    rng = np.random.default_rng(7)
    noise = lambda n: (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(np.complex64) * 0.01  # noqa: E731
    nan_block = noise(24_000)
    nan_block[100] = np.nan
    return [
        _block(noise(24_000), 0),
        _block(noise(24_000), 24_000),
        _block(nan_block, 48_000),  # refused whole: restart
        _block(noise(24_000), 72_000),
        _block(noise(24_000), 120_000),  # 24 000 lost before delivery: a gap, restart
        _block(noise(24_000).astype(np.complex128), 144_000),  # wrong dtype: refused, stream goes on
        _block(noise(24_000), 168_000, rate=float("nan")),  # refused
        _block(noise(24_000), 192_000, centre=140.0e6),  # a retune whose band misses the target: untunable
        _block(noise(24_000), 216_000),  # back on the band: a new channelizer
        _block(noise(24_000), 240_000, flags=Flags.DISCONTINUITY),
        _block(noise(24_000), 264_000),
    ]


def test_the_edge_accounts_for_every_input_sample_and_marks_each_restart_through_hostile_blocks():
    cfg = _config(2.4e6)
    edge = EdgeChannelizer("rx", LaneSettings.of(cfg), hand_on_s=0.0)
    blocks = _hostile_blocks()
    outs, held_before = [], []
    for block in blocks:
        held_before.append(edge.lane.buffered)
        out = edge.push(block)
        assert len(out) <= 1  # hand_on_s = 0: what each block made ready
        outs.append(out[0] if out else None)
        assert _balanced(edge), edge.accounting()
    state = edge.accounting()
    assert state["received"] == 24_000 * len(blocks)
    assert state["source_lost"] == {"gap": 24_000}
    assert state["bad_frames"] == {"bad_dtype": 1, "bad_rate": 1, "non_finite": 1, "untunable": 1}
    # A refused block's samples; the NaN also cuts off the filter history it held (the edge restarts there).
    assert {k: state["dropped"][k] for k in ("bad_dtype", "bad_rate", "non_finite", "untunable")} == {
        "bad_dtype": 24_000, "bad_rate": 24_000, "non_finite": 24_000 + held_before[2], "untunable": 24_000}
    assert held_before[2] > 0
    assert state["samples_out"] == sum(len(o.samples) for o in outs if o is not None)
    flagged = [i for i, o in enumerate(outs) if o is not None and o.flags & Flags.DISCONTINUITY]
    assert flagged == [0, 3, 4, 8, 9]
    # Between restarts the output is contiguous in index and time, at the model rate.
    for a, b in zip(outs, outs[1:]):
        if a is not None and b is not None and not b.flags & Flags.DISCONTINUITY:
            assert b.sample_index == a.sample_index + len(a.samples)
            assert abs(b.t0_ns - (a.t0_ns + len(a.samples) * 1e9 / 24_000)) <= 1


def test_an_edge_that_holds_its_output_hands_on_the_same_samples_and_drops_no_more():
    cfg = _config(2.4e6)
    each, held = (EdgeChannelizer("rx", LaneSettings.of(cfg), hand_on_s=h) for h in (0.0, 0.3))
    by_block = [out for block in _hostile_blocks() for out in each.push(block)]
    by_hold = [out for block in _hostile_blocks() for out in held.push(block)] + held.flush()
    assert len(by_hold) < len(by_block)
    assert np.array_equal(np.concatenate([b.samples for b in by_hold]), np.concatenate([b.samples for b in by_block]))
    # The same segments: each restart's first block is flagged, and starts where the per-block stream's does.
    starts = lambda blocks: [(b.sample_index, b.t0_ns) for b in blocks if b.flags & Flags.DISCONTINUITY]  # noqa: E731
    assert starts(by_hold) == starts(by_block)
    assert held.accounting()["dropped"] == each.accounting()["dropped"]
    assert _balanced(held) and held.accounting()["buffered"] == each.accounting()["buffered"]


def test_the_channelized_stream_is_the_channelizer_s_output_with_its_times():
    cfg = _config(2.4e6)
    rng = np.random.default_rng(3)
    signal = (rng.standard_normal(240_000) + 1j * rng.standard_normal(240_000)).astype(np.complex64)
    edge = EdgeChannelizer("rx", LaneSettings.of(cfg), hand_on_s=0.0)
    reference = Channelizer(in_rate_hz=2.4e6, center_freq_hz=145.49e6, target_freq_hz=145.5e6, out_rate_hz=24_000.0)
    cuts = [0, 1, 999, 24_000, 24_017, 100_000, 240_000]  # uneven blocks, one of a single sample
    got, want = [], []
    for a, b in zip(cuts, cuts[1:]):
        block = _block(signal[a:b], a)
        out, ref = edge.push(block), reference.process(block)
        assert len(out) == (ref is not None)
        if out:
            assert out[0].sample_index == ref.sample_index and abs(out[0].t0_ns - ref.t0_ns) <= 1
            got.append(out[0].samples)
            want.append(ref.samples)
    assert np.array_equal(np.concatenate(got), np.concatenate(want))
    # The daemon's lane then runs the 1:1 channelizer, which hands the samples on untouched.
    identity = Channelizer(in_rate_hz=24_000.0, center_freq_hz=145.5e6, target_freq_hz=145.5e6, out_rate_hz=24_000.0)
    stream = np.concatenate(got)
    again = identity.process(IQBlock("rx", stream, sample_index=0, t0_ns=START_NS, time_source="gps",
                                     sample_rate=24_000.0, center_freq=145.5e6))
    assert np.array_equal(again.samples, stream) and identity.samples_in == identity.samples_out == len(stream)


def test_check_and_the_edge_refuse_to_channelize_a_band_config_alike(capsys):
    assert main(["check", "--receiver", "milano", "--channelize"]) == 0
    assert "ok for heimdall receiver milano --channelize (145500000 Hz at 24000 Hz)" in capsys.readouterr().out
    band = "config/examples/band-2m.toml"
    rid = config_mod.load(band).receivers[0].id
    assert main(["check", "-c", band, "--receiver", rid, "--channelize"]) == 2
    refused = capsys.readouterr().err
    assert "--channelize publishes one channel" in refused and "band-2m.toml" in refused
    assert main(["receiver", rid, "-c", band, "--channelize"]) == 2
    assert "--channelize publishes one channel" in capsys.readouterr().err
    assert main(["check", "--channelize"]) == 2
    assert "expected --receiver ID" in capsys.readouterr().err
    assert main(["receiver", "milano", "--channelize", "--dtype", "cu8", "-c", "config/examples/edge.toml"]) == 2
    assert "expected --dtype cf32 or ci16" in capsys.readouterr().err


def test_an_edge_whose_band_misses_the_target_is_refused_before_it_publishes(tmp_path, capsys):
    edge = tmp_path / "edge.toml"
    edge.write_text(Path("config/examples/edge.toml").read_text() + "sample_rate_hz = 240000.0\ncenter_freq_hz = 144.0e6\n")
    assert main(["check", "-c", str(edge), "--receiver", "torino", "--channelize"]) == 2
    assert "cannot be channelized to network.target_freq_hz" in capsys.readouterr().err
    assert main(["receiver", "torino", "-c", str(edge), "--channelize"]) == 2
    assert "cannot be channelized to network.target_freq_hz" in capsys.readouterr().err
    assert main(["check", "-c", str(edge), "--receiver", "torino"]) == 0  # without --channelize: the daemon's business


def test_a_daemon_fed_an_edge_channelized_for_another_target_says_so(caplog):
    cfg = _config(240_000.0)
    edge_cfg = dataclasses.replace(cfg, network=dataclasses.replace(cfg.network, target_freq_hz=145.502e6))
    streams = _streams(cfg)
    rid = cfg.receivers[0].id
    edge = EdgeChannelizer(rid, LaneSettings.of(edge_cfg), hand_on_s=0.0)
    lane = Lane(rid, LaneSettings.of(cfg), on_drop=lambda *a: None, on_bad_frame=lambda reason: None)
    with caplog.at_level(logging.WARNING, logger="streamer.daemon.lane"):
        for block in streams[0][:20]:
            for out in edge.push(block):
                lane.push(out)
    warned = [r.getMessage() for r in caplog.records if "not on the target" in r.getMessage()]
    assert len(warned) == 1, warned
    assert "centred on 145502000 Hz, not on the target 145500000 Hz" in warned[0] and "shifted by -2000 Hz" in warned[0]
    caplog.clear()
    right = Lane(rid, LaneSettings.of(cfg), on_drop=lambda *a: None, on_bad_frame=lambda reason: None)
    matched = EdgeChannelizer(rid, LaneSettings.of(cfg), hand_on_s=0.0)
    with caplog.at_level(logging.WARNING, logger="streamer.daemon.lane"):
        for block in streams[0][:20]:
            for out in matched.push(block):
                right.push(out)
    assert not [r for r in caplog.records if "not on the target" in r.getMessage()]


@pytest.mark.parametrize("hand_on_s", [-0.1, float("nan"), 3.0])
def test_a_hold_that_is_negative_not_a_number_or_over_half_the_ring_is_refused(hand_on_s):
    settings = LaneSettings.of(_config(240_000.0))  # a 4 s ring
    with pytest.raises(ValueError, match=r"hand_on_s: expected 0 to half the ring \(2 s\)"):
        EdgeChannelizer("rx", settings, hand_on_s=hand_on_s)
