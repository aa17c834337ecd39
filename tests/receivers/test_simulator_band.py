"""Band traffic in the simulator: several transmitters on several channels of the plan, each keying on its own,
each with its truth; and the one-channel world left exactly as it was."""

from __future__ import annotations

import hashlib
from itertools import pairwise

import numpy as np
import pytest

from receivers.base import ReceiverContext, TallyDropCounter
from receivers.simulator import SimulatedReceiver, SimulatedWorld, in_sampled_band, transmitter_channels
from streamer.config import from_dict

T0_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00Z
RX_CENTRE_HZ = 145.49e6
#: Six channels 25 kHz apart (12.5 kHz wide): a keyed neighbour's FM sidebands stay out of the channel measured.
BAND = {"start_hz": 145.4375e6, "stop_hz": 145.5625e6, "spacing_hz": 25_000.0, "bandwidth_hz": 12_500.0}
#: Half the width over which a channel's power is read: NBFM of 2.5 kHz peak deviation and audio to 2.7 kHz.
READ_HALF_WIDTH_HZ = 4_000.0
NOISE_REFERENCE_HZ = 145.40e6  # inside every receiver's band, outside every channel


def band_config(transmitters: int = 3, *, band: dict | None = BAND, seed: int = 5, duration_s: float | None = None,
                sample_rate_hz: float = 240_000.0, **receiver_options):
    """Three receivers a few km apart around (45.0, 7.0), tuned to ``RX_CENTRE_HZ`` at 240 kS/s, not real time."""
    options = {"start_ns": T0_NS, "realtime": False, "center_freq_hz": RX_CENTRE_HZ, "sample_rate_hz": sample_rate_hz,
               **receiver_options}
    if duration_s is not None:
        options["duration_s"] = duration_s
    receivers = [{"id": f"r{k}", "kind": "simulator", "lat": 45.0 + 0.02 * k, "lon": 7.0 + 0.03 * (k % 2), **options}
                 for k in range(3)]
    doc = {"receivers": receivers, "network": {"area_margin_km": 2.0}, "pipeline": {"min_receivers": 2},
           "simulator": {"seed": seed, "transmitters": transmitters}}
    if band is not None:
        doc["band"] = band
    return from_dict(doc, source="band.toml")


def open_receiver(cfg, index: int = 0) -> SimulatedReceiver:
    return SimulatedReceiver.from_config(cfg.receivers[index], ReceiverContext(cfg, TallyDropCounter()))


# --- the one-channel world is what it was -------------------------------------------------------------------------


def one_channel_digest(sim: dict) -> str:
    """SHA-256 over three receivers' first second of blocks (samples and stamps), a float64 reference baseband and
    a window's truth, for a world without a channel plan."""
    receivers = [{"id": i, "kind": "simulator", "lat": 45.0 + 0.1 * k, "lon": 7.0 + 0.13 * (k % 2), "start_ns": T0_NS,
                  "realtime": False, "duration_s": 1.0} for k, i in enumerate("abc")]
    cfg = from_dict({"receivers": receivers, "simulator": sim, "pipeline": {"min_receivers": 2}})
    digest = hashlib.sha256()
    for rx in cfg.receivers:
        with SimulatedReceiver.from_config(rx, ReceiverContext(cfg, TallyDropCounter())) as receiver:
            for block in receiver:
                digest.update(block.samples.tobytes())
                digest.update(str(block.t0_ns).encode())
    world = SimulatedWorld(cfg)
    digest.update(world.received_baseband(1, T0_NS, np.arange(2400) / 24_000.0, 145.45e6).tobytes())
    truth = world.truth_over(T0_NS, T0_NS + 10**9)
    digest.update(repr((truth.t_ns, truth.lat, truth.lon, truth.power_dbm, truth.keyed_intervals_ns, truth.collision,
                        truth.kinds)).encode())
    return digest.hexdigest()


@pytest.mark.parametrize("sim, expected", [
    pytest.param({}, "26298921a0bee150606cd39c4388aa79511a503ddd6f616e516a4ebf1a698480", id="default"),
    pytest.param({"traffic_dmr_weight": 1.0, "traffic_packet_weight": 1.0, "traffic_carrier_weight": 0.5,
                  "collision_probability": 0.7, "key_up_mean_s": 0.4, "key_down_mean_s": 0.3},
                 "613cfc0d5269dde7808ecc5a6d1276340788a9cae26a9aea0f16263bc0d1c889", id="traffic-and-collisions"),
])
def test_a_world_without_a_channel_plan_renders_the_bytes_it_did_before_band_traffic(sim, expected):
    """The digests were taken on the simulator before it had transmitters and channels (x86-64, numpy 2.4)."""
    assert one_channel_digest(sim) == expected


# --- which channel each transmitter keys on -----------------------------------------------------------------------


def test_without_a_plan_every_transmitter_is_on_the_target_frequency():
    cfg = band_config(2, band=None)
    assert [(ch.name, ch.centre_hz) for ch in transmitter_channels(cfg)] == [("145.5", 145.5e6)] * 2


def test_transmitters_take_distinct_channels_while_there_are_enough_then_share():
    three = transmitter_channels(band_config(3))
    assert len({ch.name for ch in three}) == 3
    assert {ch.name for ch in three} <= {ch.name for ch in band_config(3).channel_plan()}
    eight = transmitter_channels(band_config(8))
    assert len({ch.name for ch in eight[:6]}) == 6 and eight[6:] == eight[:2]  # the deal goes round again
    assert transmitter_channels(band_config(3)) == three  # from the seed
    assert transmitter_channels(band_config(3, seed=6)) != three


# --- truth per transmitter ----------------------------------------------------------------------------------------


def test_band_truth_lists_each_transmitter_with_its_channel_track_and_keying():
    cfg = band_config(3)
    world = SimulatedWorld(cfg)
    start, end = T0_NS + 10**9, T0_NS + 3 * 10**9
    truths = world.band_truth_over(start, end)
    assert [t.transmitter for t in truths] == [0, 1, 2]
    assert [(t.channel, t.channel_hz) for t in truths] == [(ch.name, ch.centre_hz) for ch in world.transmitter_channels]
    assert len({(round(t.east_m), round(t.north_m)) for t in truths}) == 3  # a track each
    for k, truth in enumerate(truths):
        assert truth == world.truth_over(start, end, k)
        spans = [(max(tx.start_ns, start), min(tx.end_ns, end)) for tx in world.transmissions(start, end, k)]
        assert truth.keyed_intervals_ns == tuple(spans)
        frames = np.arange(start, end, 10_666_667)
        expected = np.array([any(a <= t < b for a, b in spans) for t in frames])
        np.testing.assert_array_equal(truth.keyed_at(frames), expected)
    with pytest.raises(ValueError, match="truth_over: no transmitter 3; simulator.transmitters = 3"):
        world.truth_over(start, end, 3)


def test_transmitters_key_independently_and_sometimes_at_once():
    world = SimulatedWorld(band_config(3))
    end = T0_NS + 600 * 10**9
    schedules = [[(tx.start_ns, tx.end_ns) for tx in world.transmissions(T0_NS, end, k)] for k in range(3)]
    assert all(len(s) > 20 for s in schedules)
    assert len({tuple(s[:3]) for s in schedules}) == 3
    seconds = np.arange(T0_NS, end, 10**8)
    keyed = np.array([world.truth_over(T0_NS, end, k).keyed_at(seconds) for k in range(3)])
    on_together = keyed.sum(axis=0)
    assert (on_together >= 2).mean() > 0.1 and (on_together == 1).mean() > 0.1
    # independent: how often two are on together is close to the product of how often each is on
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert (keyed[a] & keyed[b]).mean() == pytest.approx(keyed[a].mean() * keyed[b].mean(), abs=0.12)


# --- the receivers' IQ --------------------------------------------------------------------------------------------


def channel_power_db(x: np.ndarray, fs: float, offset_hz: float) -> float:
    """Mean power (dB, arbitrary reference) of the Hann-windowed spectrum of ``x`` within ``offset_hz ±
    READ_HALF_WIDTH_HZ`` of the receiver's centre."""
    spectrum = np.abs(np.fft.fftshift(np.fft.fft(x * np.hanning(len(x))))) ** 2
    freqs = np.fft.fftshift(np.fft.fftfreq(len(x), 1.0 / fs))
    return float(10.0 * np.log10(spectrum[np.abs(freqs - offset_hz) <= READ_HALF_WIDTH_HZ].mean()))


def keyed_and_quiet_spans(world: SimulatedWorld, k: int, length_ns: int) -> tuple[int, int]:
    """Starts (Unix ns) of a span of ``length_ns`` in which transmitter ``k`` is on air throughout, and of one in
    which it is off throughout (50 ms clear of any key-up or key-down)."""
    margin = 50_000_000
    txs = world.transmissions(T0_NS, T0_NS + 300 * 10**9, k)
    keyed = next(tx.start_ns + margin for tx in txs if tx.start_ns > T0_NS and tx.end_ns - tx.start_ns > length_ns + 2 * margin)
    quiet = next(a.end_ns + margin for a, b in pairwise(txs) if b.start_ns - a.end_ns > length_ns + 2 * margin)
    return keyed, quiet


def test_each_transmitter_shows_in_its_channel_while_keyed_and_not_otherwise():
    cfg = band_config(3)
    world = SimulatedWorld(cfg)
    rx = open_receiver(cfg)
    fs, n = rx.sample_rate_hz, 24_000  # 0.1 s
    for k, channel in enumerate(world.transmitter_channels):
        offset_hz = channel.centre_hz - RX_CENTRE_HZ
        readings = {}
        for state, start_ns in zip(("keyed", "quiet"), keyed_and_quiet_spans(world, k, n * 10**9 // int(fs))):
            first = int((start_ns - T0_NS) * fs // 10**9)
            x = rx.read(first, n)
            readings[state] = (channel_power_db(x, fs, offset_hz), channel_power_db(x, fs, NOISE_REFERENCE_HZ - RX_CENTRE_HZ))
        (keyed, keyed_noise), (quiet, quiet_noise) = readings["keyed"], readings["quiet"]
        assert keyed - keyed_noise > 20.0, (k, channel.name, readings)
        assert abs(quiet - quiet_noise) < 1.5, (k, channel.name, readings)


def test_channels_no_transmitter_uses_stay_at_the_noise_floor():
    cfg = band_config(3)
    world = SimulatedWorld(cfg)
    used = {ch.name for ch in world.transmitter_channels}
    rx = open_receiver(cfg, 1)
    x = rx.read(int(2.0 * rx.sample_rate_hz), 48_000)
    noise = channel_power_db(x, rx.sample_rate_hz, NOISE_REFERENCE_HZ - RX_CENTRE_HZ)
    for channel in cfg.channel_plan():
        if channel.name not in used:
            assert abs(channel_power_db(x, rx.sample_rate_hz, channel.centre_hz - RX_CENTRE_HZ) - noise) < 1.5, channel.name


def test_live_stream_of_a_band_is_the_reference_baseband_to_float32_precision():
    """``SimulatedReceiver.add_signal`` (float32, all transmitters) against ``SimulatedWorld.received_baseband``
    (float64, every transmitter summed), over a second in which at least two transmitters are on air."""
    cfg = band_config(3)
    world = SimulatedWorld(cfg)
    rx = open_receiver(cfg, 2)
    fs = rx.true_sample_rate_hz
    seconds = np.arange(T0_NS, T0_NS + 120 * 10**9, 10**9)
    together = np.sum([world.truth_over(T0_NS, T0_NS + 120 * 10**9, k).keyed_at(seconds) for k in range(3)], axis=0)
    first = int((int(seconds[np.argmax(together >= 2)]) - T0_NS) * rx.sample_rate_hz // 10**9)
    count = 40_000
    live = np.zeros(count, dtype=np.complex64)
    rx.add_signal(live, first)
    scale, _ = world.full_scale_per_sqrt_mw(rx.index, rx.start_ns + int(first / fs * 1e9))
    reference = scale * world.received_baseband(rx.index, rx.start_ns, np.arange(first, first + count) / fs, rx.lo_freq_hz)
    peak = np.abs(reference).max()
    assert peak > 0
    assert np.abs(live - reference).max() < 1e-4 * peak


def test_band_stream_is_the_same_whatever_the_block_size():
    a = np.concatenate([b.samples for b in open_receiver(band_config(3, duration_s=0.3))])
    cfg = band_config(3, duration_s=0.3)
    small = SimulatedReceiver(cfg.receivers[0].id, SimulatedWorld(cfg), type(cfg.receivers[0].options)(
        **{**cfg.receivers[0].options.__dict__, "block_s": 0.0137}))
    b = np.concatenate([blk.samples for blk in small])
    np.testing.assert_array_equal(a, b)


def test_a_carrier_outside_a_receivers_sampled_band_is_filtered_out_not_folded_in():
    """At 96 kS/s the plan's outer channels lie past +-48 kHz: a device's filter removes them before it decimates, so
    the stream holds the channels inside the band and nothing of those outside, keyed or not."""
    cfg = band_config(6, sample_rate_hz=96_000.0)
    world = SimulatedWorld(cfg)
    rx = open_receiver(cfg)
    fs = rx.true_sample_rate_hz
    offsets = [ch.centre_hz - rx.lo_freq_hz for ch in world.transmitter_channels]
    outside = [k for k, off in enumerate(offsets) if not in_sampled_band(off, fs)]
    inside = [k for k, off in enumerate(offsets) if in_sampled_band(off, fs)]
    assert outside and inside, offsets
    seconds = np.arange(T0_NS, T0_NS + 120 * 10**9, 10**9)
    keyed = np.sum([world.truth_over(T0_NS, T0_NS + 120 * 10**9, k).keyed_at(seconds) for k in outside], axis=0)
    first = int((int(seconds[np.argmax(keyed >= 1)]) - T0_NS) * rx.sample_rate_hz // 10**9)
    count = 20_000
    live = np.zeros(count, dtype=np.complex64)
    rx.add_signal(live, first)
    scale, _ = world.full_scale_per_sqrt_mw(rx.index, rx.start_ns + int(first / fs * 1e9))
    t = np.arange(first, first + count) / fs
    kept = scale * sum(world.received_baseband(rx.index, rx.start_ns, t, rx.lo_freq_hz, transmitter=k) for k in inside)
    removed = scale * sum(world.received_baseband(rx.index, rx.start_ns, t, rx.lo_freq_hz, transmitter=k) for k in outside)
    assert np.abs(removed).max() > 0  # an outside transmitter was on the air at the antenna
    np.testing.assert_allclose(live, kept, rtol=0, atol=1e-4 * max(np.abs(kept).max(), np.abs(removed).max()))


def test_a_dc_offset_adds_a_constant_of_the_power_asked_for_and_nothing_else():
    plain, offset = open_receiver(band_config(3)), open_receiver(band_config(3, dc_offset_db=20.0))
    difference = offset.read(48_000, 24_000).astype(np.complex128) - plain.read(48_000, 24_000)
    world = plain.world
    _, noise_scale = world.full_scale_per_sqrt_mw(plain.index)
    expected_mw = 10.0 ** ((world.noise_dbm(plain.index, 12_500.0) + 20.0) / 10.0)
    np.testing.assert_allclose(difference, difference[0], rtol=0, atol=1e-3 * abs(difference[0]))
    assert abs(difference[0]) ** 2 / noise_scale**2 == pytest.approx(expected_mw, rel=1e-4)
