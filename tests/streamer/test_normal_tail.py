"""log Phi by table (the physics posterior's censoring term) against scipy's log_ndtr."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import log_ndtr

from streamer.estimators.normal_tail import MAX_ERROR_NATS, TABLE_STEP, TABLE_Z_MAX, TABLE_Z_MIN, add_log_ndtr_outer


def _table_log_phi(z: np.ndarray) -> np.ndarray:
    """The table's log Phi at each of ``z``: one cell per value, one power point at 0, weight 1."""
    acc = np.zeros((z.size, 1))
    add_log_ndtr_outer(acc, z, np.zeros(1), 1.0)
    return acc[:, 0]


def test_the_table_is_within_its_bound_of_log_ndtr_everywhere_and_exact_below_it():
    knots = TABLE_Z_MIN + TABLE_STEP * np.arange(0, 50_000, 7)
    z = np.concatenate([np.linspace(-90.0, 15.0, 1_000_003), knots + TABLE_STEP / 2,
                        np.random.default_rng(1).uniform(TABLE_Z_MIN, TABLE_Z_MAX, 300_000)])
    error = np.abs(_table_log_phi(z) - log_ndtr(z))
    assert error.max() <= MAX_ERROR_NATS
    assert error.max() > MAX_ERROR_NATS / 2  # the bound is what linear interpolation gives, not a loose one
    below = z < TABLE_Z_MIN
    np.testing.assert_allclose(_table_log_phi(z[below]), log_ndtr(z[below]), rtol=1e-13)
    assert np.abs(_table_log_phi(z[z > TABLE_Z_MAX])).max() < 1e-16


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
    empty = np.zeros((0, power.size))
    add_log_ndtr_outer(empty, np.zeros(0), power, 1.0)  # no cells: nothing to do, no error


@pytest.mark.parametrize("acc, offset, weight, message", [
    (np.zeros((2, 3)), np.array([np.nan, 1.0]), 1.0, "must be finite"),
    (np.zeros((2, 3)), np.array([0.0, 1.0]), np.array([1.0, 0.0]), "weight finite and > 0"),
    (np.zeros((2, 3)), np.array([0.0, 1.0, 2.0]), 1.0, r"expected offset \[2\] and points \[3\]"),
    (np.zeros((3, 2)).T, np.array([0.0, 1.0]), 1.0, "acc must be C-contiguous float64"),
    (np.zeros((2, 3), np.float32), np.array([0.0, 1.0]), 1.0, "acc must be C-contiguous float64"),
])
def test_the_outer_form_refuses_what_it_cannot_compute(acc, offset, weight, message):
    with pytest.raises(ValueError, match=message):
        add_log_ndtr_outer(acc, offset, np.zeros(3), weight)
