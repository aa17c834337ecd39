"""The per-window path's shortcuts against the code they replace: the message's scalar latitude/longitude against
geodesy.enu_to_geodetic, the physics posterior's cached per-receiver-set constants against the direct sums, and
the aligner's rows of absent receivers (zeros)."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.config import PhysicsConfig
from streamer.core.geodesy import Origin, SearchArea, enu_to_geodetic
from streamer.daemon.messages import _lat_lon
from streamer.estimators.physics import SUBSET_CACHE_SIZE, PhysicsGrid


@pytest.mark.parametrize("origin", [Origin(59.3, 18.1, 20.0), Origin(-33.9, 151.2), Origin(0.0, 0.0),
                                    Origin(89.9, -170.0, 300.0), Origin(45.0, 179.99)])
def test_message_lat_lon_is_enu_to_geodetic(origin):
    rng = np.random.default_rng(1)
    for east, north in [(0.0, 0.0), *rng.uniform(-300e3, 300e3, (200, 2))]:
        lat, lon = _lat_lon(float(east), float(north), origin)
        want_lat, want_lon, _ = enu_to_geodetic(east, north, 0.0, origin)
        assert abs(lat - float(want_lat)) < 1e-12 and abs(lon - float(want_lon)) < 1e-12


def _grid(n_rx=12):
    rng = np.random.default_rng(2)
    rx = rng.uniform(-20e3, 60e3, (n_rx, 2))
    return PhysicsGrid(PhysicsConfig(grid_step_km=2.0), rx, np.full(n_rx, 100.0), SearchArea(-30e3, 70e3, -30e3, 70e3))


def test_implied_power_mean_and_scatter_equal_the_direct_sums():
    est = _grid()
    rng = np.random.default_rng(3)
    for _ in range(10):
        power = rng.uniform(-115.0, -70.0, 12)
        used = rng.random(12) < 0.7
        k, mu, scatter = est._implied_power(power, used)
        y = power[used] + est._path_loss_db[:, used]
        assert k == used.sum()
        np.testing.assert_allclose(mu, y.mean(axis=1), rtol=0, atol=1e-10)
        np.testing.assert_allclose(scatter, ((y - y.mean(axis=1)[:, None]) ** 2).sum(axis=1), rtol=1e-10, atol=1e-8)


def test_subset_cache_is_bounded_and_answers_the_same_after_eviction():
    est = _grid()
    rng = np.random.default_rng(4)
    power = rng.uniform(-115.0, -70.0, 12)
    masks = [rng.random(12) < 0.8 for _ in range(SUBSET_CACHE_SIZE + 3)]
    first = [est.estimate(power, m, np.ones(12, bool), np.full(12, -110.0)).position_en_m for m in masks]
    assert len(est._subset_cache) <= SUBSET_CACHE_SIZE
    again = [est.estimate(power, m, np.ones(12, bool), np.full(12, -110.0)).position_en_m for m in masks]
    np.testing.assert_array_equal(np.array(first), np.array(again))
