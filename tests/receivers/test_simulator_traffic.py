"""The simulator's on-air traffic (kinds, collisions), its truth over a window, calibration drift and clock jitter."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter

import numpy as np
import pytest

from receivers.simulator import (
    DMR_BURST_NS,
    DMR_FRAME_NS,
    PACKET_BURST_S,
    SECONDS_PER_DAY,
    SECONDS_PER_YEAR,
    SimulatedWorld,
)
from streamer.core.errors import ConfigError
from tests.receivers.test_simulator import T_REF_NS, network_config, open_sim

MIX = {"traffic_voice_weight": 1.0, "traffic_dmr_weight": 1.0, "traffic_packet_weight": 1.0, "traffic_carrier_weight": 1.0}
HOUR_NS = 3600 * 10**9


def test_default_traffic_is_voice_alone_without_collisions_drift_or_jitter():
    world = SimulatedWorld(network_config(seed=3))
    assert {tx.kind for tx in world.transmissions(T_REF_NS, T_REF_NS + HOUR_NS)} == {"voice"}
    assert world.second_transmitters(T_REF_NS, T_REF_NS + HOUR_NS) == []
    t = np.array([T_REF_NS, T_REF_NS + 400 * 86_400 * 10**9])
    np.testing.assert_array_equal(world.calibration_error_db_at(t), np.stack([world.calibration_error_db] * 2))


def test_traffic_kinds_follow_the_weights_and_stay_inside_the_same_on_periods():
    """The on/off process does not depend on the mix: every burst of the mixed world lies inside an on period of
    the voice-only world with the same seed, and each period's kind is drawn with the configured weights."""
    voice = SimulatedWorld(network_config(seed=4)).transmissions(T_REF_NS, T_REF_NS + HOUR_NS)
    mixed = SimulatedWorld(network_config(seed=4, **MIX)).transmissions(T_REF_NS, T_REF_NS + HOUR_NS)
    starts = np.array([tx.start_ns for tx in voice])
    periods = Counter()
    for tx in mixed:
        i = int(np.searchsorted(starts, tx.start_ns, side="right")) - 1
        assert i >= 0 and voice[i].start_ns <= tx.start_ns < tx.end_ns <= voice[i].end_ns, tx.kind
        periods[(i, tx.kind)] += 1
    kinds = Counter(kind for _, kind in periods)
    # Each on period is one kind; one at either end of the hour may have no burst inside it.
    assert len(voice) - 2 <= sum(kinds.values()) <= len(voice)
    for kind in ("voice", "dmr", "packet", "carrier"):
        assert kinds[kind] == pytest.approx(len(voice) / 4, rel=0.35), kinds


def test_dmr_bursts_packets_and_carriers_have_their_shapes():
    txs = SimulatedWorld(network_config(seed=4, **MIX)).transmissions(T_REF_NS, T_REF_NS + HOUR_NS)
    dmr = [tx for tx in txs if tx.kind == "dmr"]
    lengths = np.array([tx.end_ns - tx.start_ns for tx in dmr])
    assert np.mean(lengths == DMR_BURST_NS) > 0.9  # the last burst of a transmission may be cut short
    assert lengths.max() == DMR_BURST_NS
    spacing = np.diff([tx.start_ns for tx in dmr])
    assert np.mean(spacing == DMR_FRAME_NS) > 0.9  # consecutive bursts of one transmission, one frame apart
    packets = np.array([(tx.end_ns - tx.start_ns) / 1e9 for tx in txs if tx.kind == "packet"])
    assert packets.max() <= PACKET_BURST_S[1] + 1e-9
    assert np.mean(packets >= PACKET_BURST_S[0] - 1e-9) > 0.9  # a burst at the end of its period may be cut short
    carriers = [tx for tx in txs if tx.kind == "carrier"]
    assert carriers and all(tx.ctcss_dev_hz == 0 and not tx.tone_dev_hz.any() for tx in carriers)
    t = np.linspace(0.01, 0.2, 50)
    np.testing.assert_array_equal(carriers[0].phase_rad(t), 0.0)  # unmodulated


def test_truth_over_a_window_gives_the_keyed_share_and_spans():
    world = SimulatedWorld(network_config(seed=5))
    txs = world.transmissions(T_REF_NS, T_REF_NS + HOUR_NS)
    tx = next(t for t in txs if t.end_ns - t.start_ns > 2 * 10**9 and t.start_ns > T_REF_NS)
    inside = world.truth_over(tx.start_ns + 10**9 // 2, tx.start_ns + 10**9)
    assert inside.keyed_fraction == 1.0 and inside.keyed_intervals_ns == ((inside.start_ns, inside.end_ns),)
    assert inside.keyed and inside.power_dbm == tx.power_dbm and inside.kinds == ("voice",)
    assert (inside.east_m, inside.north_m) == pytest.approx(tuple(world.position_en_m((inside.start_ns + inside.end_ns) // 2)))
    edge = world.truth_over(tx.end_ns - 100_000_000, tx.end_ns + 400_000_000)
    assert edge.keyed_fraction == pytest.approx(0.2)
    assert edge.keyed_intervals_ns == ((edge.start_ns, tx.end_ns),)
    following = txs[txs.index(tx) + 1]
    gap = world.truth_over(tx.end_ns + 1, following.start_ns)
    assert gap.keyed_fraction == 0.0 and gap.keyed_intervals_ns == () and not gap.keyed and gap.power_dbm is None
    with pytest.raises(ValueError, match="after its start"):
        world.truth_over(tx.end_ns, tx.end_ns)


def test_truth_over_a_dmr_window_lists_each_burst():
    world = SimulatedWorld(network_config(seed=4, traffic_voice_weight=0.0, traffic_dmr_weight=1.0))
    tx = next(t for t in world.transmissions(T_REF_NS, T_REF_NS + HOUR_NS) if t.start_ns > T_REF_NS + 10**9)
    truth = world.truth_over(tx.start_ns, tx.start_ns + 480_000_000)  # 8 frames, the first burst at the start
    assert truth.kinds == ("dmr",)
    assert len(truth.keyed_intervals_ns) == 8
    assert truth.keyed_fraction == pytest.approx(DMR_BURST_NS / DMR_FRAME_NS, abs=0.06)  # the last burst may be short


def test_the_live_stream_carries_the_signal_exactly_in_the_keyed_spans():
    """What truth says was keyed is what a receiver hears: 1 ms bins of a DMR window's samples are tens of dB
    above the noise inside the keyed spans and at the noise outside them."""
    cfg = network_config(seed=4, traffic_voice_weight=0.0, traffic_dmr_weight=1.0, tx_power_min_dbm=50.0, tx_power_max_dbm=50.0,
                         clock_offset_sigma_ms=0.0, clock_ppm_sigma=0.0)
    world = SimulatedWorld(cfg)
    tx = next(t for t in world.transmissions(T_REF_NS, T_REF_NS + HOUR_NS) if t.start_ns > T_REF_NS + 10**9)
    start_ns, end_ns = tx.start_ns - 100_000_000, tx.start_ns + 400_000_000
    truth = world.truth_over(start_ns, end_ns)
    r = int(np.argmin(np.hypot(*(world.rx_enu_m[:, :2] - [truth.east_m, truth.north_m]).T)))
    rx = open_sim(cfg, world.receiver_ids[r])
    fs = rx.sample_rate_hz
    first = int((start_ns - T_REF_NS) * fs / 1e9)
    x = rx.read(first, int(0.5 * fs))
    bin_n = int(fs / 1000)
    power = (np.abs(x[: len(x) // bin_n * bin_n]) ** 2).reshape(-1, bin_n).mean(axis=1)
    bin_start_ns = T_REF_NS + (first + np.arange(len(power)) * bin_n) * 1e9 / fs
    keyed = np.zeros(len(power), bool)
    clear = np.ones(len(power), bool)
    for a, b in truth.keyed_intervals_ns:  # 1 ms margins: ramps and the propagation delay
        keyed |= (bin_start_ns >= a + 1e6) & (bin_start_ns + 1e6 <= b - 1e6)
        clear &= (bin_start_ns + 2e6 <= a) | (bin_start_ns >= b + 1e6)
    assert keyed.sum() > 150 and clear.sum() > 150
    noise = np.median(power[clear])
    assert np.min(power[keyed]) > 100 * noise
    assert np.max(power[clear]) < 2 * noise


def test_a_second_transmitter_is_on_air_from_its_own_position_and_truth_says_so():
    cfg = network_config(seed=6, collision_probability=1.0)
    world = SimulatedWorld(cfg)
    others = world.second_transmitters(T_REF_NS, T_REF_NS + HOUR_NS)
    wanted = world.transmissions(T_REF_NS, T_REF_NS + HOUR_NS)
    assert len(others) == pytest.approx(len(wanted), rel=0.1)
    assert all(world.area.contains(np.array(tx.position_en_m)[None])[0] for tx in others)
    other = next(tx for tx in others if tx.start_ns > T_REF_NS + 10**9)
    window = (other.start_ns + 1_000_000, other.start_ns + 101_000_000)
    assert world.truth_over(*window).collision
    # The reference form hears it (from its own position) where the wanted transmitter alone would be silent.
    t_rel_s = np.arange(2400) / 24e3 + (window[0] - T_REF_NS) / 1e9
    both = world.received_baseband(0, T_REF_NS, t_rel_s, world.target_freq_hz)
    wanted_only = world.received_baseband(0, T_REF_NS, t_rel_s, world.target_freq_hz,
                                          transmissions=world.transmissions(window[0] - 10**9, window[1] + 10**9))
    assert np.abs(both - wanted_only).max() > 0
    quiet = SimulatedWorld(network_config(seed=6))
    assert not quiet.truth_over(*window).collision


def test_the_live_stream_and_the_reference_form_agree_with_a_second_transmitter():
    cfg = network_config(seed=6, collision_probability=1.0, options={"sample_rate_hz": 48_000.0, "center_freq_hz": 145.49e6})
    world = SimulatedWorld(cfg)
    other = next(tx for tx in world.second_transmitters(T_REF_NS, T_REF_NS + HOUR_NS) if tx.start_ns > T_REF_NS + 10**9)
    rx = open_sim(cfg, "torino")
    first = int((other.start_ns - T_REF_NS) * 48e3 / 1e9)
    live = np.zeros(4800, np.complex64)
    rx.add_signal(live, first)
    t_rel_s = np.arange(first, first + 4800) / rx.true_sample_rate_hz
    signal_scale, _ = world.full_scale_per_sqrt_mw(rx.index, T_REF_NS + int(first / rx.true_sample_rate_hz * 1e9))
    reference = signal_scale * world.received_baseband(rx.index, T_REF_NS, t_rel_s, rx.lo_freq_hz)
    assert np.abs(reference).max() > 0
    np.testing.assert_allclose(live, reference, atol=2e-3 * np.abs(reference).max())


def test_calibration_drift_is_a_daily_random_walk_plus_a_yearly_swing_deterministic_from_the_seed():
    walk = network_config(seed=7, calibration_drift_db_per_sqrt_day=0.2)
    world = SimulatedWorld(walk)
    epoch_ns = int(world.sim.calibration_epoch_unix_s * 1e9)
    days = np.arange(-1500, 1500)
    err = world.calibration_error_db_at(epoch_ns + days * int(SECONDS_PER_DAY * 1e9))  # [T, R]
    np.testing.assert_allclose(err[1500], world.calibration_error_db)  # no walk yet at the epoch
    steps = np.diff(err, axis=0)
    assert np.std(steps) == pytest.approx(0.2, rel=0.05)
    assert abs(np.mean(steps)) < 0.02
    half_day = world.calibration_error_db_at(epoch_ns + int(SECONDS_PER_DAY * 1e9) // 2)
    np.testing.assert_allclose(half_day, 0.5 * (err[1500] + err[1501]))  # linear between the daily knots
    again = SimulatedWorld(walk).calibration_error_db_at(epoch_ns + days[::-1] * int(SECONDS_PER_DAY * 1e9))
    np.testing.assert_array_equal(again, err[::-1])  # any order of queries, same walk
    seasonal = SimulatedWorld(network_config(seed=7, calibration_seasonal_db=1.5))
    t = epoch_ns + (np.arange(0, 365, 3) * SECONDS_PER_DAY * 1e9).astype(np.int64)
    swing = seasonal.calibration_error_db_at(t) - seasonal.calibration_error_db
    np.testing.assert_allclose(swing[0], 0.0, atol=1e-12)  # none yet when calibrated
    np.testing.assert_allclose(np.ptp(swing, axis=0), 3.0, rtol=0.01)  # a sine of amplitude 1.5 dB
    np.testing.assert_allclose(seasonal.calibration_error_db_at(t + int(SECONDS_PER_YEAR * 1e9)) - seasonal.calibration_error_db,
                               swing, atol=1e-6)
    assert np.ptp(np.argmax(swing, axis=0)) > 0  # each receiver its own phase


def test_a_receivers_calibrated_at_is_where_its_drift_starts():
    """The simulated error follows the model the physics posterior widens for: none at the receiver's own
    calibrated_at (the others' from the simulator's epoch), growing from there."""
    cfg = network_config(seed=7, calibration_drift_db_per_sqrt_day=0.3, calibration_seasonal_db=1.0)
    receivers = [dataclasses.replace(rx, calibrated_at="2026-06-01") if rx.id == "torino" else rx for rx in cfg.receivers]
    world = SimulatedWorld(dataclasses.replace(cfg, receivers=tuple(receivers)))
    r = world.receiver_index("torino")
    june_ns = int(dt.datetime(2026, 6, 1, tzinfo=dt.UTC).timestamp() * 1e9)
    assert world.calibrated_at_s[r] == june_ns / 1e9
    assert world.calibration_error_db_at(june_ns)[r] == pytest.approx(world.calibration_error_db[r], abs=1e-12)
    epoch_ns = int(world.sim.calibration_epoch_unix_s * 1e9)
    others = np.arange(len(receivers)) != r
    np.testing.assert_allclose(world.calibration_error_db_at(epoch_ns)[others], world.calibration_error_db[others], atol=1e-12)
    assert world.calibration_error_db_at(june_ns + 30 * 86_400 * 10**9)[r] != pytest.approx(world.calibration_error_db[r], abs=1e-3)


def test_the_drifted_gain_is_what_the_receivers_apply():
    cfg = network_config(seed=7, calibration_drift_db_per_sqrt_day=0.5, calibration_seasonal_db=2.0)
    world = SimulatedWorld(cfg)
    t_ns = T_REF_NS + 100 * 10**9
    scale, noise_scale = world.full_scale_per_sqrt_mw(2, t_ns)
    expected_db = world.calibration_db[2] + world.calibration_error_db_at(t_ns)[2]
    assert 20 * np.log10(scale) == pytest.approx(-expected_db)
    assert 20 * np.log10(noise_scale) == pytest.approx(-world.calibration_db[2])
    np.testing.assert_allclose(world.measured_offset_db(t_ns), -world.calibration_error_db_at(t_ns))
    assert not np.allclose(world.calibration_error_db_at(t_ns), world.calibration_error_db)


def test_clock_jitter_makes_each_block_stamp_late_by_a_reproducible_amount():
    cfg = network_config(seed=9, clock_jitter_ms=3.0, options={"duration_s": 2.0, "block_s": 0.01})
    lateness = []
    for _ in range(2):
        with open_sim(cfg, "torino") as rx:
            offset_ns = int(rx.world.clock_offset_ns[rx.index])
            lateness.append(np.array([b.t0_ns - (T_REF_NS + round(b.sample_index * 1e9 / 240e3)) - offset_ns for b in rx]))
    np.testing.assert_array_equal(lateness[0], lateness[1])
    assert len(lateness[0]) == 200 and lateness[0].min() >= 0
    assert np.mean(lateness[0]) / 1e6 == pytest.approx(3.0, rel=0.25)


@pytest.mark.parametrize("key, value, expected", [
    ("traffic_dmr_weight", -1.0, "traffic_dmr_weight: expected a finite weight >= 0"),
    ("traffic_voice_weight", 0.0, "traffic_\\*_weight: expected at least one weight > 0"),
    ("collision_probability", 1.5, "collision_probability: expected 0..1"),
    ("calibration_drift_db_per_sqrt_day", -0.1, "calibration_drift_db_per_sqrt_day: expected a finite value >= 0"),
    ("clock_jitter_ms", -2.0, "clock_jitter_ms: expected a finite value >= 0"),
])
def test_bad_traffic_keys_are_config_errors_naming_the_key(key, value, expected):
    with pytest.raises(ConfigError, match=f"simulator: {expected}"):
        network_config(**{key: value})
