"""On-air traffic in the training and evaluation draws: keying kinds, where the daemon's rule finds the transmitter
in a partly keyed window, seeded draws and the cache tag."""

from __future__ import annotations

import numpy as np
import pytest

from models.train import dataset, traffic
from models.train.render import render_windows
from models.train.traffic import TRAFFIC, Keying, Traffic, traffic_named
from receivers.simulator import SimulatedWorld
from streamer.config import load
from streamer.dsp.features import FeatureSpec, mel_frames_dbm

SPEC = FeatureSpec()
WINDOW_S = SPEC.window_s


def keyings(name: str, n: int = 400) -> list[Keying]:
    rng = np.random.default_rng(7)
    return [TRAFFIC[name].draw(rng, WINDOW_S) for _ in range(n)]


def test_partial_windows_are_keyed_for_a_fraction_uniform_from_a_tenth_to_all_with_an_edge_inside():
    drawn = keyings("partial")
    fractions = np.array([k.keyed_fraction(WINDOW_S) for k in drawn])
    assert fractions.min() >= 0.1 - 1e-12 and fractions.max() <= 1.0
    assert abs(np.median(fractions) - 0.55) < 0.05  # uniform on [0.1, 1]
    assert {k.kind for k in drawn} == {"starts", "ends", "inside"}
    for k in drawn:
        (start, end), = k.intervals_s
        assert 0.0 <= start <= WINDOW_S or 0.0 <= end <= WINDOW_S  # at least one edge inside the window


def test_dmr_bursts_are_slots_every_period_and_packet_bursts_lie_inside_the_window():
    drawn = keyings("bursts")
    dmr = [k for k in drawn if k.kind == "dmr"]
    packet = [k for k in drawn if k.kind == "packet"]
    assert 0.4 < len(dmr) / len(drawn) < 0.6
    for k in dmr:
        starts = np.array([s for s, _ in k.intervals_s])
        assert np.allclose(np.diff(starts), traffic.DMR_PERIOD_S)
        assert np.allclose([e - s for s, e in k.intervals_s], traffic.DMR_SLOT_S)
        assert abs(k.keyed_fraction(WINDOW_S) - traffic.DMR_SLOT_S / traffic.DMR_PERIOD_S) < 0.07
    for k in packet:
        lengths = np.array([e - s for s, e in k.intervals_s])
        assert np.all((lengths >= traffic.PACKET_BURST_S[0]) & (lengths <= traffic.PACKET_BURST_S[1]))
        assert 0 < lengths.sum() <= traffic.PACKET_MAX_SHARE * WINDOW_S
        assert k.intervals_s[0][0] >= 0.0 and k.intervals_s[-1][1] <= WINDOW_S
        assert all(a[1] <= b[0] for a, b in zip(k.intervals_s, k.intervals_s[1:]))


def test_the_onair_mix_draws_each_kind_in_its_share():
    kinds = [k.kind for k in keyings("onair", 2000)]
    share = {name: np.mean([kind in group for kind in kinds]) for name, group in
             {"full": ("full",), "partial": ("starts", "ends", "inside"), "bursts": ("dmr", "packet")}.items()}
    onair = TRAFFIC["onair"]
    for name, expected in (("full", onair.full_share), ("partial", onair.partial_share), ("bursts", onair.burst_share)):
        assert abs(share[name] - expected) < 0.04, (name, share)


def test_full_traffic_takes_nothing_from_the_generator():
    rng = np.random.default_rng(3)
    state = rng.bit_generator.state
    assert TRAFFIC["full"].draw(rng, WINDOW_S) == Keying.full(WINDOW_S)
    assert rng.bit_generator.state == state


def test_a_bad_traffic_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown name 'onair2'; expected one of full, partial, bursts, onair"):
        traffic_named("onair2")
    with pytest.raises(ValueError, match="traffic 'odd': expected shares >= 0 summing to 1"):
        Traffic("odd", 0.5, 0.6, 0.0)


def test_the_daemons_rule_finds_a_partly_keyed_transmitter_within_a_frame_or_two_of_its_edges():
    world = SimulatedWorld(load())
    start_ns = dataset.UNIX_2026_NS
    cases = [Keying("starts", ((0.3, 1.5),)), Keying("ends", ((-1.0, 0.12),)), Keying("inside", ((0.2, 0.33),))]
    iq = render_windows(world, [[0.0, 0.0]] * len(cases), [45.0] * len(cases), [start_ns] * len(cases),
                        sample_rate_hz=SPEC.sample_rate_hz, n_samples=SPEC.n_samples, keyings=cases)
    centres_s = (np.arange(SPEC.n_frames) * SPEC.hop + SPEC.n_fft / 2) / SPEC.sample_rate_hz
    for keying, window in zip(cases, iq):
        active = dataset.DETECTION.frame_activity(mel_frames_dbm(window, SPEC, world.calibration_db), SPEC)
        (on_s, off_s), = keying.intervals_s
        keyed = (centres_s >= on_s) & (centres_s < off_s)
        assert np.sum(active != keyed) <= 4, (keying, np.flatnonzero(active), np.flatnonzero(keyed))
        assert abs(active.mean() - keying.keyed_fraction(WINDOW_S)) <= 2.5 / SPEC.n_frames


def test_partial_draws_record_keyed_fraction_and_active_frames_that_agree():
    data = dataset.draw_windows(load(), 12, np.random.default_rng(5), SPEC, shuffle_slots=False, traffic="partial")
    assert data.active_frames.shape == (len(data), SPEC.n_frames) and data.active_frames.dtype == bool
    assert data.keyed_fraction.min() < 0.6 < data.keyed_fraction.max()
    on_frames = data.keyed_fraction * WINDOW_S * SPEC.sample_rate_hz / SPEC.hop  # frame starts inside the keyed time
    # A weak window shows fewer active frames than it was keyed for; none shows more than the frames overlapping
    # each edge (a frame spans two hops).
    assert np.all(data.active_frames.sum(axis=1) <= on_frames + 3)
    assert np.median(np.abs(data.active_frames.sum(axis=1) - on_frames)) <= 2.5
    # heard is the daemon's rule over the active frames.
    rx = data.rx_mask[0] > 0.5
    heard = dataset.heard_mask(data.features_dbm[0][rx], SPEC, data.active_frames[0])
    assert np.array_equal(heard, data.heard[0][rx] > 0.5)


def test_full_draws_are_fully_keyed_and_measured_over_every_frame_they_carried():
    data = dataset.draw_windows(load(), 4, np.random.default_rng(5), SPEC, shuffle_slots=False)
    assert np.all(data.keyed_fraction == 1.0)
    assert data.active_frames.mean() > 0.9


def test_the_same_seed_gives_the_same_arrays_whatever_the_worker_count():
    one = dataset.generate(6, seed=4, spec=SPEC, windows_per_world=3, traffic="onair")
    two = dataset.generate(6, seed=4, spec=SPEC, windows_per_world=3, traffic="onair", workers=2)
    for field in dataset.Windows.__dataclass_fields__:
        assert np.array_equal(getattr(one, field), getattr(two, field)), field
    other = dataset.generate(6, seed=4, spec=SPEC, windows_per_world=3, traffic="partial")
    assert not np.array_equal(one.keyed_fraction, other.keyed_fraction)


def test_traffic_is_part_of_the_cache_tag_and_old_caches_are_refused_by_name(tmp_path):
    tags = {name: dataset._spec_tag(SPEC, 1, name) for name in TRAFFIC}
    assert len(set(tags.values())) == len(TRAFFIC)
    assert dataset._spec_tag(SPEC) == tags["full"]
    dataset.generate_cached(2, seed=4, spec=SPEC, cache_dir=tmp_path, windows_per_world=2, worlds_per_chunk=1,
                            traffic="partial")
    dataset.generate_cached(2, seed=4, spec=SPEC, cache_dir=tmp_path, windows_per_world=2, worlds_per_chunk=1)
    names = sorted(p.name for p in tmp_path.glob("*.npz"))
    assert len(names) == 2 and any(tags["partial"] in n for n in names) and any(tags["full"] in n for n in names)
    old = tmp_path / "old.npz"
    np.savez(old, **{f: np.zeros(1) for f in list(dataset.Windows.__dataclass_fields__)[:7]})
    with pytest.raises(ValueError, match="old.npz: no active_frames, keyed_fraction: written before"):
        dataset.Windows.load(old)
