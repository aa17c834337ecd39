"""POWDER real data -> receiver IQ: the rendered windows carry the calibrated measured power."""

from __future__ import annotations

import numpy as np
import pytest

from models.train import powder
from models.train.dataset import CHANNEL_BANDWIDTH_HZ, DETECTION_SNR_DB, NOISE_BAND_FRACTION
from streamer.features import FeatureSpec
from streamer.physics import channel_power

pytestmark = pytest.mark.skipif(not (powder.POWDER_DIR / "Separated_Dataset_CSV").is_dir(),
                                reason=f"POWDER data not found at {powder.POWDER_DIR} (set POWDER_DIR)")


@pytest.fixture(scope="module")
def fitted():
    rows = powder.load_rows()
    fit_rows, test_rows = powder.split_rows(rows, "grid")
    origin = powder.origin_of(rows)
    return powder.fit_offsets(fit_rows, origin), test_rows, origin


def test_grid_split_and_fit(fitted):
    fit, test_rows, _ = fitted
    assert len(test_rows) == 666
    assert 1.5 < fit["n"] < 3.5 and 4.0 < fit["sigma_db"] < 9.0
    assert abs(sum(fit["offsets_db"].values())) < 1e-3


def test_rendered_windows_carry_the_measured_power(fitted):
    fit, test_rows, origin = fitted
    spec = FeatureSpec()
    data, names = powder.sample_windows(test_rows[0], fit, origin, spec, 0)
    k = len(names)
    assert k == int(data.rx_mask.sum()) and all(test_rows[0]["rx"][n][0] > powder.NOT_HEARD for n in names)
    power = channel_power(data.features_dbm[0, :k], spec, channel_bandwidth_hz=CHANNEL_BANDWIDTH_HZ,
                          detection_snr_db=DETECTION_SNR_DB, noise_max_offset_hz=NOISE_BAND_FRACTION * spec.sample_rate_hz)
    want = np.array([powder.calibrated_dbm(test_rows[0]["rx"][n][0], n, fit) for n in names])
    strong = power.snr_db > 20
    assert strong.sum() >= 3
    assert np.allclose(power.signal_dbm[strong], want[strong], atol=1.5)
