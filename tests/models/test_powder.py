"""POWDER real data -> receiver IQ: the rendered windows carry the calibrated measured power."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.train import evaluate, powder
from models.train.dataset import CHANNEL_BANDWIDTH_HZ, DETECTION_SNR_DB, NOISE_BAND_FRACTION
from streamer.features import FeatureSpec
from streamer.physics import channel_power

pytestmark = pytest.mark.skipif(not (powder.POWDER_DIR / "Separated_Dataset_CSV").is_dir(),
                                reason=f"POWDER data not found at {powder.POWDER_DIR} (set POWDER_DIR)")


SPLITS = powder.POWDER_DIR / powder.SPLIT_DIR


@pytest.fixture(scope="module")
def rows():
    return powder.load_rows()


@pytest.fixture(scope="module")
def fitted(rows):
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


def test_a_split_file_scores_like_its_shorthand(capsys):
    common = ["--n", "0", "--n-random", "0", "--powder-max-samples", "4", "--json"]
    assert evaluate.main([*common, "--powder", "--powder-split", "random"]) == 0
    shorthand = json.loads(capsys.readouterr().out)
    assert evaluate.main([*common, "--test-split", str(SPLITS / "random_split" / "random_test.json")]) == 0
    by_file = json.loads(capsys.readouterr().out)
    assert list(shorthand) == ["powder-random"] and list(by_file) == ["powder-random_test"]
    assert by_file["powder-random_test"] == shorthand["powder-random"]
    assert {s["n"] + s["skipped"] for s in shorthand["powder-random"].values()} == {4}


def test_split_file_rows_missing_from_single_tx_are_read_from_the_file(rows):
    indoor_fit, indoor_test = powder.split_rows(rows, SPLITS / "special_test_cases" / "indoor.json")
    still_fit, still_test = powder.split_rows(rows, SPLITS / "special_test_cases" / "stationary0.json")
    stationary = json.loads((SPLITS / "special_test_cases" / "stationary0.json").read_text())
    assert len(indoor_test) == 89 and [r["timestamp"] for r in still_test] == list(stationary)
    # indoor rows are never fitted on, stationary sessions are not in single_tx.csv: both leave the same fitting set
    assert [r["timestamp"] for r in indoor_fit] == [r["timestamp"] for r in still_fit]
    first = stationary[still_test[0]["timestamp"]]
    assert still_test[0]["tx"] == tuple(first["tx_coords"][0])
    assert {n: v[0] for n, v in still_test[0]["rx"].items()} == {x[3]: x[0] for x in first["rx_data"]}


def test_a_two_transmitter_file_is_refused_by_name(rows):
    path = powder.POWDER_DIR / "Separated_Dataset_JSON" / "all_data" / "two_tx.json"
    with pytest.raises(powder.SplitFileError, match=f"{path}: sample .*: 2 transmitters"):
        powder.split_rows(rows, path)
