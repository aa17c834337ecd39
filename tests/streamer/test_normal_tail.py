"""log Phi by table (the physics posterior's censoring term) against scipy's log_ndtr."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import log_ndtr

from streamer.estimators.normal_tail import (
    MAX_ERROR_NATS,
    TABLE_STEP,
    TABLE_Z_MAX,
    TABLE_Z_MIN,
    add_log_ndtr_outer,
    log_ndtr_table,
)


def test_the_table_is_within_its_bound_of_log_ndtr_everywhere_and_exact_below_it():
    knots = TABLE_Z_MIN + TABLE_STEP * np.arange(0, 50_000, 7)
    z = np.concatenate([np.linspace(-90.0, 15.0, 1_000_003), knots + TABLE_STEP / 2,
                        np.random.default_rng(1).uniform(TABLE_Z_MIN, TABLE_Z_MAX, 300_000)])
    error = np.abs(log_ndtr_table(z) - log_ndtr(z))
    assert error.max() <= MAX_ERROR_NATS
    assert error.max() > MAX_ERROR_NATS / 2  # the bound is what linear interpolation gives, not a loose one
    below = z < TABLE_Z_MIN
    np.testing.assert_array_equal(log_ndtr_table(z[below]), log_ndtr(z[below]))
    assert np.abs(log_ndtr_table(z[z > TABLE_Z_MAX])).max() < 1e-16


def test_adding_in_place_equals_adding_the_values_and_nan_stays_nan():
    rng = np.random.default_rng(2)
    z = rng.uniform(-80.0, 12.0, (301, 34))  # a [G, P] grid, more elements than one chunk, cells below the table
    z[5, 7] = np.nan
    base = rng.normal(0.0, 50.0, z.shape)
    summed = log_ndtr_table(z, add_to=base.copy())
    expected = base + log_ndtr(z)
    assert np.isnan(summed[5, 7]) and np.isnan(log_ndtr_table(z)[5, 7])
    finite = ~np.isnan(z)
    np.testing.assert_allclose(summed[finite], expected[finite], rtol=0, atol=MAX_ERROR_NATS + 1e-9)
    # z broadcast from a cell column and a bin row, as the posterior builds it
    cells, bins = rng.uniform(-30, 5, (50, 1)), -0.1 * np.arange(34)[None, :]
    np.testing.assert_allclose(log_ndtr_table(cells + bins), log_ndtr(cells + bins), rtol=0, atol=MAX_ERROR_NATS)


def test_an_accumulator_it_cannot_update_in_place_is_refused():
    z = np.zeros((4, 3))
    for bad in (np.zeros((3, 4)), np.zeros((4, 3), np.float32), np.zeros((3, 4)).T):
        with pytest.raises(ValueError, match=r"add_to must be C-contiguous float64 of shape \(4, 3\)"):
            log_ndtr_table(z, add_to=bad)


@pytest.mark.parametrize("per_cell_weight", [False, True])
def test_the_outer_form_adds_log_phi_of_every_cell_and_bin_without_building_z(per_cell_weight):
    rng = np.random.default_rng(3)
    n_cells, power = 1237, np.arange(30.0, 47.0, 0.5)  # more rows than one chunk, a ragged last chunk
    offset = rng.uniform(-450.0, 120.0, n_cells)  # detection level + path loss (dB)
    weight = rng.uniform(0.05, 1.5, n_cells) if per_cell_weight else 1 / 6.3
    acc = rng.normal(0.0, 10.0, (n_cells, power.size))
    z = (offset[:, None] - power[None, :]) * np.broadcast_to(weight, (n_cells,))[:, None]
    assert (z < TABLE_Z_MIN).any() and (z > TABLE_Z_MAX).any()  # both ends of the table are exercised
    expected = acc + log_ndtr(z)
    add_log_ndtr_outer(acc, offset, power, weight)
    np.testing.assert_allclose(acc, expected, rtol=1e-12, atol=MAX_ERROR_NATS)


@pytest.mark.parametrize("offset, weight, message", [
    (np.array([np.nan, 1.0]), 1.0, "must be finite"),
    (np.array([0.0, 1.0]), np.array([1.0, 0.0]), "weight finite and > 0"),
    (np.array([0.0, 1.0, 2.0]), 1.0, r"expected offset \[2\] and points \[3\]"),
])
def test_the_outer_form_refuses_what_it_cannot_compute(offset, weight, message):
    with pytest.raises(ValueError, match=message):
        add_log_ndtr_outer(np.zeros((2, 3)), offset, np.zeros(3), weight)
