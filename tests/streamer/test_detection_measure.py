"""``DetectionRule.measure`` (one conversion of a window's mel frames to mW) against the rule as it was written before
it: each band group converted from dBm on its own, per frame for the SNR (``band_frame_power_mw``) and per window
for the powers (``band_power_dbm``, then back to mW). The wrappers the trainer and the estimators call
(``frame_activity``, ``apply``, ``frame_snr_db``, ``channel_power``, ``channel_frame_levels``) must be exactly
``measure``'s results."""

from __future__ import annotations

import numpy as np
import pytest

from models.train.dataset import DETECTION, heard_mask
from streamer.dsp.detection import (
    DetectionRule,
    channel_bands,
    channel_power,
    frame_snr_db,
)
from streamer.dsp.emissions import channel_frame_levels
from streamer.dsp.features import (
    FeatureSpec,
    band_frame_power_mw,
    band_power_dbm,
    mel_filterbank,
)

SPEC = FeatureSpec()
RULE = DetectionRule(channel_bandwidth_hz=12_500.0, snr_db=6.0)
FLOOR_MW = 1e-20
#: How far (dB) one conversion to mW may move a level from the per-group conversions (float64 rounding only).
TOLERANCE_DB = 1e-9


# The rule as written before ``measure``: the reference -----------------------------------------------------------

def reference_frame_snr_db(frames, spec, rule):
    bands, top = rule.bands(spec), rule.noise_max_offset_hz(spec)
    half = 0.5 * rule.channel_bandwidth_hz
    in_mw = band_frame_power_mw(frames, spec, -half, half)
    out_mw = band_frame_power_mw(frames, spec, half, top) + band_frame_power_mw(frames, spec, -top, -half)
    density = out_mw / bands.noise_bandwidth_hz
    signal = np.maximum(in_mw - density * bands.in_bandwidth_hz, FLOOR_MW)
    noise = np.maximum(density * bands.channel_bandwidth_hz, FLOOR_MW)
    return 10.0 * np.log10(signal / noise)


def reference_activity(frames, spec, rule, present=None):
    loud = np.nan_to_num(reference_frame_snr_db(frames, spec, rule), nan=-np.inf) >= rule.snr_db
    if present is not None:
        loud &= np.asarray(present, dtype=bool)[..., None]
    return loud.any(axis=-2)


def reference_power(frames, spec, rule, active=None, top=None):
    """(signal_dbm, noise_dbm, snr_db) of each receiver, averaged over the ``active`` frames."""
    top = rule.noise_max_offset_hz(spec) if top is None else top
    bands = channel_bands(spec, rule.channel_bandwidth_hz, None if np.isinf(top) else top)
    half = 0.5 * rule.channel_bandwidth_hz
    weights = None
    if active is not None:
        none = ~active.any(axis=-1, keepdims=True)
        weights = (active | none)[..., None, :].astype(np.float64)
    in_mw = 10.0 ** (band_power_dbm(frames, spec, -half, half, weights) / 10.0)
    out_mw = 10.0 ** (band_power_dbm(frames, spec, half, top, weights) / 10.0) + 10.0 ** (
        band_power_dbm(frames, spec, -top, -half, weights) / 10.0)
    density = out_mw / bands.noise_bandwidth_hz
    signal = 10.0 * np.log10(np.maximum(in_mw - density * bands.in_bandwidth_hz, FLOOR_MW))
    noise = 10.0 * np.log10(np.maximum(density * bands.channel_bandwidth_hz, FLOOR_MW))
    return signal, noise, signal - noise


# Inputs --------------------------------------------------------------------------------------------------------

def random_frames(seed, shape=(3, 5), keyed=True):
    """``[*shape, M, T]`` float32 dBm frames: white noise of -150 dBm/Hz read through each band's noise bandwidth,
    +-1 dB per band and frame, and (``keyed``) bursts in the channel's bands of some receivers and frames, 0 to 30 dB
    over it."""
    rng = np.random.default_rng(seed)
    bandwidth_hz = mel_filterbank(SPEC).sum(axis=-1) * SPEC.sample_rate_hz / SPEC.n_fft  # [M]
    noise_dbm = -150.0 + 10.0 * np.log10(bandwidth_hz)
    frames = noise_dbm[:, None] + rng.uniform(-1.0, 1.0, (*shape, SPEC.n_mels, SPEC.n_frames))
    if keyed:
        in_channel = RULE.bands(SPEC).in_channel
        for index in np.ndindex(*shape):
            if rng.random() < 0.7:
                start = rng.integers(0, SPEC.n_frames - 5)
                stop = rng.integers(start + 1, SPEC.n_frames + 1)
                frames[(*index, in_channel, slice(start, stop))] += rng.uniform(0.0, 30.0)
    return frames.astype(np.float32)


def assert_levels_close(power, reference):
    signal, noise, snr = reference
    np.testing.assert_allclose(power.signal_dbm, signal, rtol=0, atol=TOLERANCE_DB)
    np.testing.assert_allclose(power.noise_dbm, noise, rtol=0, atol=TOLERANCE_DB)
    np.testing.assert_allclose(power.snr_db, snr, rtol=0, atol=TOLERANCE_DB)
    np.testing.assert_allclose(power.detection_level_dbm, noise + RULE.snr_db, rtol=0, atol=TOLERANCE_DB)
    near_threshold = np.abs(snr - RULE.snr_db) < TOLERANCE_DB
    np.testing.assert_array_equal(power.heard[~near_threshold], (snr >= RULE.snr_db)[~near_threshold])


# measure against the reference -----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_measure_matches_the_rule_as_written_per_group(seed):
    frames = random_frames(seed)
    present = np.random.default_rng(seed + 100).random(frames.shape[:2]) < 0.8
    measured = RULE.measure(frames, SPEC, present)

    reference_snr = reference_frame_snr_db(frames, SPEC, RULE)
    np.testing.assert_allclose(measured.levels.snr_db, reference_snr, rtol=0, atol=TOLERANCE_DB)
    assert not np.any(np.abs(reference_snr - RULE.snr_db) < TOLERANCE_DB)  # no tie the rounding could flip
    reference_active = reference_activity(frames, SPEC, RULE, present)
    np.testing.assert_array_equal(measured.active, reference_active)
    assert 0 < reference_active.sum() < reference_active.size  # partly keyed: the weighting is exercised
    assert_levels_close(measured.power, reference_power(frames, SPEC, RULE, reference_active))


def test_per_frame_noise_is_the_window_noise_of_a_one_frame_window():
    frames = random_frames(7, shape=(4,))  # one channel's [g, M, T], as the band path feeds it
    _, noise = channel_frame_levels(RULE, frames, SPEC)
    one_frame_windows = np.moveaxis(frames, -1, -2)[..., None]  # [g, T, M, 1]
    _, reference_noise, _ = reference_power(one_frame_windows, SPEC, RULE)
    np.testing.assert_allclose(noise, reference_noise, rtol=0, atol=TOLERANCE_DB)


def test_no_receiver_present_gives_no_active_frame_and_every_frame_averaged():
    frames = random_frames(11)
    present = np.zeros(frames.shape[:2], dtype=bool)
    measured = RULE.measure(frames, SPEC, present)
    assert not measured.active.any()
    assert_levels_close(measured.power, reference_power(frames, SPEC, RULE, None))


def test_a_window_with_no_active_frame_is_averaged_over_all_frames():
    frames = random_frames(12, keyed=False)
    measured = RULE.measure(frames, SPEC)
    assert not measured.active.any()
    assert_levels_close(measured.power, reference_power(frames, SPEC, RULE, None))


def test_frames_at_the_log_floor_and_absent_receivers_as_nan_or_zeros():
    frames = random_frames(13)
    frames[0, 1] = -200.0  # 10 log10(eps): a receiver whose power is all floor
    frames[1, 2] = np.nan  # absent receivers as the trainer and the band path leave them
    frames[2, 0] = 0.0
    present = np.ones(frames.shape[:2], dtype=bool)
    present[1, 2] = present[2, 0] = False
    measured = RULE.measure(frames, SPEC, present)
    np.testing.assert_array_equal(measured.active, reference_activity(frames, SPEC, RULE, present))
    np.testing.assert_allclose(measured.levels.snr_db, reference_frame_snr_db(frames, SPEC, RULE),
                               rtol=0, atol=TOLERANCE_DB, equal_nan=True)
    assert np.all(np.isfinite(measured.levels.snr_db[0, 1]))
    assert_levels_close(measured.power, reference_power(frames, SPEC, RULE, measured.active))


def test_a_bare_window_and_noise_from_every_out_of_channel_band():
    frames = random_frames(14)[0, 0]  # [M, T]
    power = channel_power(frames, SPEC, channel_bandwidth_hz=RULE.channel_bandwidth_hz, detection_snr_db=RULE.snr_db)
    assert_levels_close(power, reference_power(frames, SPEC, RULE, None, top=np.inf))


def test_frames_without_the_specs_bands_are_refused_naming_the_shape():
    with pytest.raises(ValueError, match=r"expected \[\.\.\., 32, T\] mel frames, got shape \[3, 5, 31, 45\]"):
        RULE.measure(np.zeros((3, 5, 31, 45)), SPEC)
    with pytest.raises(ValueError, match="frame_activity needs"):
        RULE.frame_activity(np.zeros((SPEC.n_mels, SPEC.n_frames)), SPEC)


# The wrappers are measure -----------------------------------------------------------------------------------------

def test_the_wrappers_give_exactly_what_measure_gives():
    frames = random_frames(21)
    present = np.random.default_rng(21).random(frames.shape[:2]) < 0.8
    measured = RULE.measure(frames, SPEC, present)
    np.testing.assert_array_equal(RULE.frame_activity(frames, SPEC, present), measured.active)
    applied = RULE.apply(frames, SPEC, active=measured.active)
    for field in ("signal_dbm", "noise_dbm", "snr_db", "heard", "detection_level_dbm"):
        np.testing.assert_array_equal(getattr(applied, field), getattr(measured.power, field))
    np.testing.assert_array_equal(
        frame_snr_db(frames, SPEC, RULE.bands(SPEC), RULE.noise_max_offset_hz(SPEC)), measured.levels.snr_db)
    snr, noise = channel_frame_levels(RULE, frames, SPEC)
    np.testing.assert_array_equal(snr, measured.levels.snr_db)
    np.testing.assert_array_equal(noise, measured.levels.noise_dbm)
    np.testing.assert_array_equal(RULE.active_frames(snr, present), measured.active)


def test_the_trainers_calls_are_measure():
    assert DETECTION == RULE  # the trainer's rule is the daemon's default one
    frames = random_frames(22)
    measured = DETECTION.measure(frames, SPEC)
    np.testing.assert_array_equal(DETECTION.frame_activity(frames, SPEC), measured.active)
    np.testing.assert_array_equal(heard_mask(frames, SPEC, measured.active), measured.power.heard)
