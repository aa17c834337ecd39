"""Physics estimator: in-channel power from mel frames, the grid posterior, and its calibration on simulated IQ."""

from __future__ import annotations

import time

import numpy as np
import pytest

from models.train.render import render_windows
from receivers.simulator import SimulatedWorld
from tests.helpers.network import NETWORK
from streamer.config import PhysicsConfig, from_dict
from streamer.dsp.features import FeatureSpec, band_centres_hz, mel_frames_dbm
from streamer.core.geodesy import SearchArea, mahalanobis_sq
from streamer.core.propagation import MIN_DISTANCE_M, log_distance_path_loss_db
from streamer.estimators.physics import PhysicsGrid, correlated_error_cov
from streamer.dsp.detection import bands_noise_bandwidth_hz, channel_power

SPEC = FeatureSpec()
T_REF_NS = 1_700_000_000_000_000_000


def network_config(seed: int = 1):
    receivers = [{"id": i, "kind": "simulator", "lat": a, "lon": o, "alt_m": h} for i, a, o, h in NETWORK]
    return from_dict({"simulator": {"seed": seed}, "receivers": receivers}, source="<test>")


def test_path_loss_is_log_distance_and_clamped_near_the_antenna():
    d = np.array([1e3, 1e4, 1e5])
    np.testing.assert_allclose(log_distance_path_loss_db(d, 75.7, 3.0), [75.7, 105.7, 135.7])
    assert log_distance_path_loss_db(1.0, 75.7, 3.0) == log_distance_path_loss_db(MIN_DISTANCE_M, 75.7, 3.0)


def test_channel_power_reads_a_known_tone_over_known_noise():
    rng = np.random.default_rng(0)
    n = SPEC.n_samples
    noise_dbm_per_hz = -170.0
    noise_total_mw = 10 ** (noise_dbm_per_hz / 10) * SPEC.sample_rate_hz
    noise = np.sqrt(noise_total_mw / 2) * (rng.standard_normal(n) + 1j * rng.standard_normal(n))
    tone_dbm = -110.0
    tone = np.sqrt(10 ** (tone_dbm / 10)) * np.exp(2j * np.pi * 1_000.0 * np.arange(n) / SPEC.sample_rate_hz)
    frames = mel_frames_dbm(np.stack([noise + tone, noise, noise + 10 * tone]), SPEC)  # calibration 0: dBFS = dBm
    cp = channel_power(frames, SPEC, channel_bandwidth_hz=12_500.0, detection_snr_db=6.0)
    expected_noise = noise_dbm_per_hz + 10 * np.log10(12_500.0)
    np.testing.assert_allclose(cp.noise_dbm, expected_noise, atol=0.3)
    assert cp.signal_dbm[0] == pytest.approx(tone_dbm, abs=0.3)
    assert cp.signal_dbm[2] == pytest.approx(tone_dbm + 20, abs=0.1)
    assert cp.heard.tolist() == [True, False, True]
    assert cp.snr_db[1] < 0.0
    np.testing.assert_allclose(cp.detection_level_dbm, cp.noise_dbm + 6.0)
    # Bands past 9 kHz are left out when the channelizer's roll-off would spoil them: same answer here.
    cut = channel_power(frames, SPEC, channel_bandwidth_hz=12_500.0, detection_snr_db=6.0, noise_max_offset_hz=9_000.0)
    np.testing.assert_allclose(cut.noise_dbm, expected_noise, atol=0.4)


def test_noise_bandwidth_of_the_channel_bands():
    assert bands_noise_bandwidth_hz(SPEC, -6_250.0, 6_250.0) == pytest.approx(12_500.0, rel=0.02)
    every_band = bands_noise_bandwidth_hz(SPEC, -np.inf, np.inf)
    # Per side the triangles sum to 1 between the first and last centres and ramp to 0 at 0 Hz and fs/2:
    # fs/4 + (c_last - c_first)/2, i.e. fs/2 + c_last - c_first over both sides (up to the bin grid).
    centres = band_centres_hz(SPEC)
    first, last = centres[SPEC.n_mels // 2], centres[-1]
    assert every_band == pytest.approx(SPEC.sample_rate_hz / 2 + last - first, rel=2e-3)


def _square_network(physics: PhysicsConfig):
    rx = np.array([[0.0, 0.0], [60e3, 0.0], [0.0, 60e3], [60e3, 60e3], [30e3, 30e3]])
    area = SearchArea(-30e3, 90e3, -30e3, 90e3)
    return PhysicsGrid(physics, rx, np.full(len(rx), 200.0), area), rx


def test_estimator_finds_a_transmitter_when_the_model_is_nearly_exact():
    physics = PhysicsConfig(shadowing_db=0.5, calibration_sigma_db=0.1, grid_step_km=0.5)
    est, rx = _square_network(physics)
    truth = np.array([41e3, 17e3])
    d = np.hypot(*(rx - truth).T)
    power = 40.0 - log_distance_path_loss_db(d, physics.ref_loss_db, physics.path_loss_exponent)
    res = est.estimate(power, heard=np.ones(5, bool), present=np.ones(5, bool), detection_level_dbm=np.full(5, -121.0))
    assert np.hypot(*(res.position_en_m - truth)) < 1_000.0
    assert mahalanobis_sq(res.position_en_m - truth, res.cov_en_m2) < 5.991
    assert res.tx_power_dbm == pytest.approx(40.0, abs=1.0)
    assert np.all(np.linalg.eigvalsh(res.cov_en_m2) > 0)


def test_absent_receivers_are_ignored_and_silent_ones_push_the_posterior_away():
    physics = PhysicsConfig()
    est, rx = _square_network(physics)
    truth = np.array([5e3, 10e3])
    d = np.hypot(*(rx - truth).T)
    power = 38.0 - log_distance_path_loss_db(d, physics.ref_loss_db, physics.path_loss_exponent)
    heard = np.ones(5, bool)
    present = np.array([True, True, True, False, True])
    det = np.full(5, -121.0)
    a = est.estimate(power, heard, present, det)
    garbage = power.copy()
    garbage[3] = 0.0
    b = est.estimate(garbage, heard, present, det)
    np.testing.assert_array_equal(a.position_en_m, b.position_en_m)
    # Receiver 3 (at 60 km, 60 km) present but silent: the transmitter must be far from it.
    silent = heard.copy()
    silent[3] = False
    c = est.estimate(power, silent, np.ones(5, bool), np.full(5, -95.0))
    assert np.hypot(*(c.position_en_m - rx[3])) > np.hypot(*(a.position_en_m - rx[3]))
    assert c.n_censored == 1 and c.n_heard == 4 and a.n_heard == 4 and a.n_censored == 0


def test_estimate_is_fast_enough_on_the_default_network():
    est = PhysicsGrid.from_config(network_config())
    rng = np.random.default_rng(1)
    power = rng.uniform(-110, -80, 7)
    heard = np.array([True, True, True, True, True, False, True])
    args = (power, heard, np.ones(7, bool), np.full(7, -121.0))
    est.estimate(*args)
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        est.estimate(*args)
        times.append(time.perf_counter() - t0)
    assert np.median(times) < 0.08  # a few tens of ms; generous for a shared 2-core machine


def test_input_shapes_are_checked():
    est, _ = _square_network(PhysicsConfig())
    with pytest.raises(ValueError, match="rx_power_dbm"):
        est.estimate(np.zeros(4), np.ones(5, bool), np.ones(5, bool), np.zeros(5))


def test_posterior_is_calibrated_on_simulated_iq_through_the_feature_code(capsys):
    """The key test: 500 windows of the default network, IQ at the model rate -> features -> estimator.

    Positions are drawn uniformly over the search area (the estimator's prior) and powers uniformly over
    the prior's range; 20 worlds (seeds) of 25 windows each, so coverage is averaged over realisations of
    the shadowing fields and the hidden calibration errors too, as the posterior assumes.
    """
    m2, errors, radii = [], [], []
    detection_snr_db = 6.0
    for seed in range(1, 21):
        cfg = network_config(seed)
        world = SimulatedWorld(cfg)
        est = PhysicsGrid.from_config(cfg)
        assert est.area == world.area
        rng = np.random.default_rng(10_000 + seed)
        a = world.area
        n = 25
        pos = np.stack([rng.uniform(a.east_min_m, a.east_max_m, n), rng.uniform(a.north_min_m, a.north_max_m, n)], -1)
        power = rng.uniform(cfg.simulator.tx_power_min_dbm, cfg.simulator.tx_power_max_dbm, n)
        iq = render_windows(world, pos, power, T_REF_NS + np.arange(n) * 10**9, sample_rate_hz=SPEC.sample_rate_hz,
                            n_samples=SPEC.n_samples)
        # The daemon knows calibration_db only, never the world's hidden errors.
        frames = mel_frames_dbm(iq, SPEC, [rx.calibration_db for rx in cfg.receivers])
        for k in range(n):
            cp = channel_power(frames[k], SPEC, channel_bandwidth_hz=cfg.network.channel_bandwidth_hz,
                               detection_snr_db=detection_snr_db)
            res = est.estimate(cp.signal_dbm, cp.heard, np.ones(len(NETWORK), bool), cp.detection_level_dbm)
            delta = pos[k] - res.position_en_m
            m2.append(mahalanobis_sq(delta, res.cov_en_m2))
            errors.append(np.hypot(*delta) / 1e3)
            radii.append(res.ellipse_scales)
    m2, errors, radii = np.array(m2), np.array(errors), np.array(radii)
    cover68, cover95 = np.mean(m2 <= 2.279), np.mean(m2 <= 5.991)
    # The published (credible) ellipses: the covariance's shape, holding 68 % / 95 % of the posterior's own mass.
    credible68, credible95 = np.mean(m2 <= radii[:, 0] ** 2), np.mean(m2 <= radii[:, 1] ** 2)
    with capsys.disabled():
        print(f"\nphysics on {len(m2)} simulated windows: coverage of the credible ellipses 68% {credible68:.3f}, "
              f"95% {credible95:.3f} (Gaussian radii: {cover68:.3f}, {cover95:.3f}); error median {np.median(errors):.1f} km, "
              f"mean {errors.mean():.1f} km, p90 {np.percentile(errors, 90):.1f} km")
    assert 0.63 <= credible68 <= 0.73
    assert 0.92 <= credible95 <= 0.97
    assert 0.63 <= cover68 <= 0.77
    assert 0.92 <= cover95 <= 0.97
    # Much better than ~25 km would mean a leak (true offsets or SNR reaching the estimator).
    assert 10.0 <= np.median(errors) <= 45.0


def test_closed_form_power_marginal_equals_the_grid_over_transmit_power():
    """When every receiver heard, the posterior integrates the power prior in closed form; it must be the
    same posterior as the explicit grid over transmit power (up to that grid's 0.25 dB quadrature)."""
    from scipy.special import logsumexp

    from streamer.config import load

    est = PhysicsGrid.from_config(load())
    rng = np.random.default_rng(5)
    s, p = est.sigma_db, est.power_grid_dbm
    for _ in range(5):
        rx_power = rng.uniform(-115.0, -70.0, est.rx_en_m.shape[0])
        everyone = np.ones_like(rx_power, dtype=bool)
        fast = est.log_posterior(rx_power, everyone, everyone, np.full_like(rx_power, -130.0))
        y = rx_power + est._path_loss_db
        grid = logsumexp(-((p[None, None, :] - y[:, :, None]) ** 2).sum(axis=1) / (2 * s * s), axis=1)
        weight = np.exp(grid - grid.max())
        weight /= weight.sum()
        diff = (fast - fast.max()) - (grid - grid.max())
        assert np.abs(diff[weight > 1e-6]).max() < 0.01


def _all_heard_and_one_silent(rx, physics):
    """``log_posterior`` arguments for a transmitter at (12 km, 30 km) with 4 dB of noise on the readings: every
    receiver heard, then receiver 3 silent (detection level -100 dBm)."""
    truth = np.array([12e3, 30e3])
    power = 40.0 - log_distance_path_loss_db(np.hypot(*(rx - truth).T), physics.ref_loss_db, physics.path_loss_exponent)
    power += np.random.default_rng(3).normal(0.0, 4.0, len(rx))
    return [(power, heard, np.ones(len(rx), bool), np.full(len(rx), -100.0))
            for heard in (np.ones(len(rx), bool), np.array([True, True, True, False, True]))]


def test_a_diagonal_error_covariance_gives_the_iid_posterior():
    """error_cov_db2 = sigma^2 I is the i.i.d. model: same posterior, with and without silent receivers."""
    physics = PhysicsConfig(grid_step_km=2.0)
    est, rx = _square_network(physics)
    full = PhysicsGrid(physics, rx, np.full(len(rx), 200.0), est.area, error_cov_db2=est.sigma_db**2 * np.eye(len(rx)))
    for args in _all_heard_and_one_silent(rx, physics):
        a, b = est.log_posterior(*args), full.log_posterior(*args)
        np.testing.assert_allclose(a - a.max(), b - b.max(), atol=1e-6)
        np.testing.assert_allclose(est.estimate(*args).position_en_m, full.estimate(*args).position_en_m, atol=1e-6)


def test_fully_correlated_twin_receivers_count_once():
    """Two receivers at one spot whose errors are (almost) fully correlated carry one receiver's evidence."""
    physics = PhysicsConfig(grid_step_km=2.0)
    est, rx = _square_network(physics)
    twin_rx = np.vstack([rx, rx[:1]])
    sigma = est.sigma_db
    cov = correlated_error_cov(twin_rx, sigma, ((0.999, 100.0),))
    twins = PhysicsGrid(physics, twin_rx, np.full(len(twin_rx), 200.0), est.area, error_cov_db2=cov)
    independent = PhysicsGrid(physics, twin_rx, np.full(len(twin_rx), 200.0), est.area)
    truth = np.array([12e3, 30e3])
    power = 40.0 - log_distance_path_loss_db(np.hypot(*(rx - truth).T), physics.ref_loss_db, physics.path_loss_exponent)
    twin_power = np.append(power, power[0])
    one = est.estimate(power, np.ones(len(rx), bool), np.ones(len(rx), bool), np.full(len(rx), -130.0))
    every = np.ones(len(twin_rx), bool)
    corr = twins.estimate(twin_power, every, every, np.full(len(twin_rx), -130.0))
    naive = independent.estimate(twin_power, every, every, np.full(len(twin_rx), -130.0))
    assert np.linalg.det(corr.cov_en_m2) == pytest.approx(np.linalg.det(one.cov_en_m2), rel=0.02)
    np.testing.assert_allclose(corr.position_en_m, one.position_en_m, atol=100.0)
    assert np.linalg.det(naive.cov_en_m2) < 0.9 * np.linalg.det(one.cov_en_m2)


def test_correlated_error_cov_is_positive_definite_and_checked():
    rng = np.random.default_rng(0)
    rx = rng.uniform(0, 2000, (25, 2))
    cov = correlated_error_cov(rx, rng.uniform(3, 9, 25), ((0.4, 40.0), (0.25, 500.0)), 1.0)
    assert np.linalg.eigvalsh(cov).min() > 0
    np.testing.assert_allclose(np.diag(cov), np.diag(correlated_error_cov(rx, np.sqrt(np.diag(cov) - 1.0))) + 1.0)
    with pytest.raises(ValueError, match="summing to <= 1"):
        correlated_error_cov(rx, 6.0, ((0.8, 40.0), (0.3, 500.0)))
    with pytest.raises(ValueError, match="error_cov_db2"):
        PhysicsGrid(PhysicsConfig(), rx, np.zeros(25), SearchArea(0, 2000, 0, 2000), error_cov_db2=np.eye(3))


def test_a_flat_shadowing_map_gives_the_iid_posterior_and_a_mapped_bump_moves_it():
    physics = PhysicsConfig(grid_step_km=2.0)
    est, rx = _square_network(physics)
    alts = np.full(len(rx), 200.0)

    def flat(grid):
        return np.zeros((len(grid), len(rx))), np.full((len(grid), len(rx)), est.sigma_db)

    mapped = PhysicsGrid(physics, rx, alts, est.area, shadowing_map=flat)
    for args in _all_heard_and_one_silent(rx, physics):
        a, b = est.log_posterior(*args), mapped.log_posterior(*args)
        np.testing.assert_allclose(a - a.max(), b - b.max(), atol=1e-6)

    # A map that says receiver 0 reads 15 dB weaker (sd 1 dB) near (45 km, 45 km) pulls the estimate there
    # when receiver 0 reads 15 dB below the median model for that spot.
    spot = np.array([45e3, 45e3])

    def bump(grid):
        near = np.hypot(*(grid - spot).T) < 5e3
        mean = np.zeros((len(grid), len(rx)))
        sd = np.full((len(grid), len(rx)), est.sigma_db)
        mean[near, 0], sd[near, 0] = -15.0, 1.0
        return mean, sd

    bumped = PhysicsGrid(physics, rx, alts, est.area, shadowing_map=bump)
    power = 40.0 - log_distance_path_loss_db(np.hypot(*(rx - spot).T), physics.ref_loss_db, physics.path_loss_exponent)
    power[0] -= 15.0
    every = np.ones(len(rx), bool)
    plain = est.estimate(power, every, every, np.full(len(rx), -130.0))
    with_map = bumped.estimate(power, every, every, np.full(len(rx), -130.0))
    assert np.hypot(*(with_map.position_en_m - spot)) < 0.5 * np.hypot(*(plain.position_en_m - spot))
    with pytest.raises(ValueError, match="shadowing_map must return"):
        PhysicsGrid(physics, rx, alts, est.area, shadowing_map=lambda g: (np.zeros((len(g), 2)), np.ones((len(g), 2))))


def _many_silent_windows(grid, n: int, seed: int):
    """Windows whose weakest receivers (a seeded share, up to half) fell below a detection level just above them."""
    rng = np.random.default_rng(seed)
    n_rx = grid.rx_en_m.shape[0]
    out = []
    for _ in range(n):
        cell = rng.integers(grid.grid_en_m.shape[0])
        power = rng.uniform(grid.physics.tx_power_min_dbm, grid.physics.tx_power_max_dbm) - grid._path_loss_db[cell]
        power = power + rng.normal(0.0, grid.sigma_db, n_rx)
        silent = np.argsort(power)[: rng.integers(1, n_rx // 2 + 1)]
        detection = np.full(n_rx, power[silent].max() + rng.uniform(0.1, 3.0))
        heard = np.ones(n_rx, bool)
        heard[silent] = False
        out.append((np.where(heard, power, np.nan), heard, np.ones(n_rx, bool), detection))
    return out


def _grid_with_errors(errors: str) -> PhysicsGrid:
    """The test network's grid with i.i.d. errors, correlated ones, or a (random) shadowing map."""
    grid = PhysicsGrid.from_config(network_config())
    n_rx = grid.rx_en_m.shape[0]
    if errors == "correlated":
        return PhysicsGrid(grid.physics, grid.rx_en_m, grid.rx_alt_m, grid.area,
                           error_cov_db2=correlated_error_cov(grid.rx_en_m, grid.sigma_db, ((0.3, 20e3),)))
    if errors == "mapped":
        rng = np.random.default_rng(5)
        return PhysicsGrid(grid.physics, grid.rx_en_m, grid.rx_alt_m, grid.area, shadowing_map=lambda g: (
            rng.normal(0.0, 2.0, (len(g), n_rx)), rng.uniform(3.0, 8.0, (len(g), n_rx))))
    return grid


@pytest.mark.parametrize("errors", ["iid", "correlated", "mapped"])
def test_censoring_only_where_it_can_matter_gives_the_posterior_of_every_entry(monkeypatch, errors):
    """add_censoring leaves out cells far below the best: the estimates equal those with every entry computed
    (NEGLIGIBLE_NATS infinite)."""
    from streamer.estimators import physics as physics_mod

    grid = _grid_with_errors(errors)
    windows = _many_silent_windows(grid, 12, seed=3)
    pruned = [grid.estimate(*w) for w in windows]
    batch = grid.estimate_batch(*(np.array(a) for a in zip(*windows)))
    monkeypatch.setattr(physics_mod, "NEGLIGIBLE_NATS", np.inf)
    every = [grid.estimate(*w) for w in windows]
    every_batch = grid.estimate_batch(*(np.array(a) for a in zip(*windows)))
    for a, b in [*zip(pruned, every), *zip(batch, every_batch)]:
        np.testing.assert_allclose(a.position_en_m, b.position_en_m, rtol=0, atol=1e-6)
        np.testing.assert_allclose(a.cov_en_m2, b.cov_en_m2, rtol=1e-9, atol=1e-6)
        np.testing.assert_allclose(a.ellipse_scales, b.ellipse_scales, rtol=1e-9)


@pytest.mark.parametrize("errors", ["iid", "correlated", "mapped"])
def test_censoring_by_table_gives_the_posterior_of_scipy_s_log_ndtr(monkeypatch, errors):
    """The censoring term by table (normal_tail, within 1.2e-7 nats) against scipy's log_ndtr itself: the same
    estimates to a millimetre, covariances and ellipses to 1e-6."""
    from streamer.estimators import physics as physics_mod
    from streamer.tools.bench_censoring import exact_add_log_ndtr_outer

    grid = _grid_with_errors(errors)
    windows = _many_silent_windows(grid, 12, seed=4)
    by_table = [grid.estimate(*w) for w in windows]
    batch_by_table = grid.estimate_batch(*(np.array(a) for a in zip(*windows)))

    monkeypatch.setattr(physics_mod, "add_log_ndtr_outer", exact_add_log_ndtr_outer)
    by_scipy = [grid.estimate(*w) for w in windows]
    batch_by_scipy = grid.estimate_batch(*(np.array(a) for a in zip(*windows)))
    for a, b in [*zip(by_table, by_scipy), *zip(batch_by_table, batch_by_scipy)]:
        np.testing.assert_allclose(a.position_en_m, b.position_en_m, rtol=0, atol=1e-3)
        np.testing.assert_allclose(a.cov_en_m2, b.cov_en_m2, rtol=1e-6)
        np.testing.assert_allclose(a.ellipse_scales, b.ellipse_scales, rtol=1e-6)


def test_censoring_computes_a_small_part_of_the_grid_when_the_silent_receivers_agree_with_the_heard_ones(monkeypatch):
    from scipy.special import log_ndtr

    from streamer.estimators import physics as physics_mod
    from streamer.estimators.physics import NEGLIGIBLE_NATS, add_censoring

    grid = PhysicsGrid.from_config(network_config())
    rng = np.random.default_rng(9)
    p = grid.power_grid_dbm
    n_cells = grid.grid_en_m.shape[0]
    log_post = -0.5 * ((p[None, :] - 10.0) ** 2 + rng.uniform(0.0, 400.0, (n_cells, 1)))
    before = log_post.copy()
    calls = []
    outer = physics_mod.add_log_ndtr_outer

    def counted(acc, offset, points, weight):
        calls.append(acc.shape[0])
        outer(acc, offset, points, weight)

    monkeypatch.setattr(physics_mod, "add_log_ndtr_outer", counted)
    # z = (0.5 - 0) x 1 at every entry: a term of log Phi(0.5) = -0.37 everywhere, so the best entry stays the best
    add_censoring(log_post, np.zeros_like(p), lambda i: (np.full(n_cells, 0.5), 1.0), np.array([0, 1, 2]))
    computed = (log_post != before).all(axis=1)  # cells: every power bin or none
    assert not (log_post != before)[~computed].any()
    passes = [calls[k : k + 3] for k in range(0, len(calls), 3)]
    assert all(len(set(cells)) == 1 for cells in passes)  # each pass: every silent receiver on the same cells
    # The best fell by 3 x 0.37 nats, so a second pass took the cells that came within reach.
    assert len(passes) == 2 and sum(cells[0] for cells in passes) == computed.sum()
    assert computed.sum() < 0.25 * n_cells
    best = log_post.max()
    assert np.all(before[computed].max(axis=1) >= best - NEGLIGIBLE_NATS)
    assert np.all(before[~computed].max(axis=1) < best - NEGLIGIBLE_NATS)  # left out: still that far below the best
    np.testing.assert_allclose(log_post[computed], before[computed] + 3 * log_ndtr(0.5), rtol=0, atol=1e-6)


def test_censoring_refuses_a_grid_it_could_not_update_in_place():
    from streamer.estimators.physics import add_censoring

    strided = np.zeros((10, 8))[:, ::2]
    with pytest.raises(ValueError, match="log_post must be C-contiguous"):
        add_censoring(strided, np.zeros(4), lambda i: (np.zeros(10), 1.0), np.array([0]))
