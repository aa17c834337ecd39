"""POWDER real data -> receiver IQ: the rendered windows carry the calibrated measured power."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.train import evaluate, powder
from streamer.dsp.features import FeatureSpec
from streamer.config import load
from streamer.dsp.detection import DetectionRule

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
    power = DetectionRule.from_config(load()).apply(data.features_dbm[0, :k], spec)  # the daemon's rule
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


def test_fit_correlation_recovers_a_known_two_scale_correlation():
    rng = np.random.default_rng(4)
    seps = rng.uniform(0.0, 3000.0, 200_000)
    rho = 0.4 * np.exp(-seps / 40.0) + 0.25 * np.exp(-seps / 500.0)
    a = rng.normal(size=seps.size)
    b = rho * a + np.sqrt(1 - rho**2) * rng.normal(size=seps.size)
    components = powder.fit_correlation((seps, 6.0 * np.stack([a, b], -1)))
    assert sum(w for w, _ in components) <= 1.0
    d = np.array([25.0, 75.0, 150.0, 300.0, 600.0, 1200.0])
    fitted = sum(w * np.exp(-d / length) for w, length in components)
    np.testing.assert_allclose(fitted, 0.4 * np.exp(-d / 40.0) + 0.25 * np.exp(-d / 500.0), atol=0.04)


def test_choose_options_takes_the_smallest_calibrated_scale_then_the_smallest_median():
    o = powder.PhysicsOptions
    cv = {o(16, False, False, 1.0): {"cov95": 0.90, "median_m": 100.0}, o(16, False, False, 1.5): {"cov95": 0.96, "median_m": 150.0},
          o(16, False, False, 2.0): {"cov95": 0.99, "median_m": 120.0},
          o(None, True, True, 1.0): {"cov95": 0.95, "median_m": 140.0}, o(None, True, True, 1.5): {"cov95": 0.99, "median_m": 90.0},
          o(None, False, True, 1.0): {"cov95": 0.80, "median_m": 50.0}, o(None, False, True, 1.2): {"cov95": 0.85, "median_m": 145.0}}
    # 16/iid: 1.5 (first >= 0.95, 150 m); all/per-rx/corr: 1.0 (140 m); all/common/corr: none reaches 0.95 -> 1.2 (145 m)
    assert powder.choose_options(cv) == o(None, True, True, 1.0)


def test_stored_options_are_keyed_by_the_test_file(tmp_path):
    path = tmp_path / "options.json"
    assert powder.options_for("grid", path) == powder.BASELINE_OPTIONS
    chosen = powder.PhysicsOptions(None, True, True, 1.3)
    path.write_text(json.dumps({powder.split_key("grid"): {"options": {"max_receivers": None, "per_receiver_sigma": True,
                                                                      "correlated": True, "sigma_scale": 1.3}}}))
    assert powder.options_for("grid", path) == chosen
    assert powder.options_for(SPLITS / "grid_split" / "grid_test.json", path) == chosen
    assert powder.options_for("random", path) == powder.BASELINE_OPTIONS


def test_cross_validation_scores_held_out_fitting_rows_only(rows):
    fit_rows, test_rows = powder.split_rows(rows, "grid")
    origin = powder.origin_of(rows)
    folds = powder._spatial_folds(fit_rows, origin, 5, 200.0, 0)
    assert set(folds) == {0, 1, 2, 3, 4}
    cells = {}
    for r, f in zip(fit_rows, folds):  # a 200 m block is never split between folds
        cells.setdefault(tuple(np.floor(powder._enu(*r["tx"], origin) / 200.0).astype(int)), set()).add(f)
    assert all(len(v) == 1 for v in cells.values())
    candidates = [powder.BASELINE_OPTIONS, powder.PhysicsOptions(None, True, True, 1.2)]
    cv = powder.cross_validate(fit_rows, origin, FeatureSpec(), folds=2, per_fold=2, candidates=candidates)
    assert set(cv) == set(candidates) and all(s["n"] >= 1 for s in cv.values())
    # compare_variants walks the same folds and rows (one generator, _held_out_samples): the same count scored.
    variants = powder.compare_variants(fit_rows, origin, FeatureSpec(), powder.BASELINE_OPTIONS, folds=2, per_fold=2)
    assert len(variants) == 5 and {s["n"] for s in variants.values()} == {cv[powder.BASELINE_OPTIONS]["n"]}


def test_shadowing_maps_predict_held_out_fitting_links(rows):
    """Kriged maps fitted on 4 of 5 spatial folds of the fitting rows predict the 5th fold's residuals."""
    fit_rows, _ = powder.split_rows(rows, "grid")
    origin = powder.origin_of(rows)
    folds = powder._spatial_folds(fit_rows, origin, 5, 200.0, 1)
    fit = powder.fit_model([r for r, f in zip(fit_rows, folds) if f != 0], origin)
    maps = fit["maps"]
    names = sorted(maps.unit_mean)
    sigma = np.array([fit["rx_sigma_db"].get(n, fit["sigma_db"]) for n in names])
    predicted, observed = [], []
    for r in (r for r, f in zip(fit_rows, folds) if f == 0):
        tx = powder._enu(*r["tx"], origin)
        mean, sd = maps.for_receivers(names, sigma)(tx[None])
        for j, n in enumerate(names):
            rss, lat, lon = r["rx"].get(n, (powder.NOT_HEARD, 0, 0))
            if rss > powder.FIT_THRESHOLD_DB:
                d = max(float(np.linalg.norm(powder._enu(lat, lon, origin) - tx)), 10.0)
                observed.append(rss - (fit["A_db"] - 10 * fit["n"] * np.log10(d / 1000) + fit["offsets_db"][n]))
                predicted.append(mean[0, j])
                assert 0.0 < sd[0, j] <= np.hypot(sigma[j], powder.CALIBRATION_SIGMA_DB) + 1e-9
    assert np.corrcoef(predicted, observed)[0, 1] > 0.3
    assert np.std(np.subtract(observed, predicted)) < np.std(observed)
    far = maps.for_receivers(names, sigma)(np.array([[4000.0, 4000.0]]))  # beyond the map: the prior
    np.testing.assert_allclose(far[0], 0.0)
    np.testing.assert_allclose(far[1][0], np.hypot(sigma, powder.CALIBRATION_SIGMA_DB))


def test_choose_point_takes_the_smallest_cross_validated_median_error():
    cv = {"mean": {"median_m": 130.0}, "geometric_median": {"median_m": 121.0}, "map": {"median_m": 150.0}}
    assert powder.choose_point(cv) == "geometric_median"
    assert powder.choose_point({**cv, "geometric_median": {"median_m": 130.0}}) == "mean"  # a tie keeps the mean


def test_stored_point_feeds_the_estimator(tmp_path, fitted):
    fit, test_rows, origin = fitted
    path = tmp_path / "options.json"
    path.write_text(json.dumps({powder.split_key("grid"): {"options": {"point": "geometric_median"}}}))
    options = powder.options_for("grid", path)
    assert options == powder.PhysicsOptions(point="geometric_median") and "point=geometric_median" in options.label()
    samples = (powder.render_sample(row, fit, origin, FeatureSpec(), i) for i, row in enumerate(test_rows))
    est, _ = powder.physics_estimator(next(s for s in samples if powder.scorable(s)), fit, options)
    assert est.point_estimate == "geometric_median" and est.error_cov_db2 is None  # still the baseline's i.i.d. errors


def test_calibration_age_is_fitted_on_the_fitting_months_only(rows):
    origin = powder.origin_of(rows)
    fit_rows, test_rows = powder.split_rows(rows, SPLITS / "seasonal_split" / "november.json")
    age = powder.fit_calibration_age(fit_rows, origin)
    assert age.surveys == ("2022-04", "2022-07") and {r["timestamp"][:7] for r in test_rows} == {"2022-11"}
    assert not age.fit.seasonal_fitted and age.fit.drift.random_walk_db_per_sqrt_day > 0
    # November is further from the pooled (mostly July) offsets than a July day is: it widens more.
    assert age.variance_db2("2022-11-23 13:30:00") > 2 * age.variance_db2("2022-07-08 12:00:00") > 0
    assert powder.fit_calibration_age([r for r in fit_rows if r["timestamp"].startswith("2022-07")], origin) is None


def test_the_physics_posterior_widens_for_the_calibration_drift(fitted):
    fit, test_rows, origin = fitted
    spec = FeatureSpec()
    sample = next(s for i, row in enumerate(test_rows) if powder.scorable(s := powder.render_sample(row, fit, origin, spec, i)))
    _, fresh, _ = powder.physics_estimate(sample, fit, powder.BASELINE_OPTIONS, spec)
    _, aged, _ = powder.physics_estimate(sample, fit, powder.BASELINE_OPTIONS, spec, drift_var_db2=40.0)
    assert np.linalg.det(aged) > 1.5 * np.linalg.det(fresh)
