"""heimdall calibrate-ellipses: the least-NLL factor, truth tracks, the files it reads and the config it writes;
and the daemon's estimators applying the factors."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from streamer.config import load
from streamer.tools.calibrate_ellipses import MIN_WINDOWS, LocalizationFileError, Track, coverage, least_nll_scale, main
from streamer.core.errors import ConfigError
from streamer.estimators.base import EstimatorInputs
from streamer.estimators.onnx import OnnxModel
from streamer.estimators.physics import PhysicsPosterior
from streamer.core.geodesy import enu_to_geodetic, mahalanobis_sq, network_geometry
from tests.helpers.daemon import write_config


def random_covariances(rng, n: int) -> np.ndarray:
    """[n, 2, 2] covariances (m^2) of random size (100 m to 10 km), shape and orientation."""
    a = rng.normal(size=(n, 2, 2)) * 10 ** rng.uniform(2, 4, size=(n, 1, 1))
    return a @ np.swapaxes(a, -1, -2) + 1e2 * np.eye(2)


def truths_around(rng, cov: np.ndarray, factor) -> np.ndarray:
    """Residuals drawn from N(0, factor * cov) (``factor``: one number, or one per row)."""
    scaled = np.reshape(np.asarray(factor, dtype=np.float64), (-1, 1, 1)) * cov
    return np.einsum("nij,nj->ni", np.linalg.cholesky(scaled), rng.standard_normal((len(cov), 2)))


def test_the_least_nll_scale_recovers_how_much_too_small_the_covariances_are_and_minimises_the_nll():
    rng = np.random.default_rng(4)
    cov = random_covariances(rng, 20_000)
    r = truths_around(rng, cov, 3.0)
    m2 = mahalanobis_sq(r, cov)
    k = least_nll_scale(m2)
    assert k == pytest.approx(3.0, rel=0.03)
    assert coverage(m2) < (0.4, 0.8)
    after = coverage(m2, k)
    assert after[0] == pytest.approx(0.68, abs=0.015) and after[1] == pytest.approx(0.95, abs=0.01)

    def mean_nll(scale):
        return float(np.mean(0.5 * m2 / scale + math.log(scale)))

    assert mean_nll(k) < min(mean_nll(k * 1.05), mean_nll(k / 1.05))


@pytest.mark.parametrize("m2, why", [(np.array([]), "no windows"), (np.array([np.nan, 1.0]), "got nan from 2 windows"),
                                     (np.zeros(3), "got 0.0 from 3 windows")])
def test_a_scale_that_cannot_be_fitted_is_refused_by_reason(m2, why):
    with pytest.raises(ValueError, match=why):
        least_nll_scale(m2)


def test_the_track_interpolates_between_fixes_within_the_gap_and_never_across_an_unkeyed_one():
    s = 10**9
    track = Track(np.array([0, 2 * s, 4 * s, 10 * s, 12 * s]), np.array([[0.0, 0.0], [200.0, 100.0], [400.0, 0.0],
                                                                           [0.0, 0.0], [0.0, 0.0]]),
                  np.array([True, True, False, True, True]))
    pos, ok = track.at(np.array([s, 2 * s, 3 * s, 7 * s, 11 * s, 13 * s]), max_gap_ns=2 * s)
    assert ok.tolist() == [True, True, False, False, True, False]
    np.testing.assert_allclose(pos[:2], [[100.0, 50.0], [200.0, 100.0]])


# --- the command on files -----------------------------------------------------------------------------

@pytest.fixture
def site(tmp_path):
    """A config of the default network and the (lat, lon) of points given in its ENU plane (m)."""
    cfg = write_config(tmp_path, {"estimator": {"model_covariance_scale": 2.0}}, name="site.toml")
    config = load(cfg)
    origin, _, _ = network_geometry(config)

    def geodetic(en_m):
        lat, lon, _ = enu_to_geodetic(en_m[:, 0], en_m[:, 1], np.zeros(len(en_m)), origin)
        return lat, lon

    return cfg, geodetic


def write_run(path, geodetic, *, n: int, onnx_factor: float, physics_factor: float, seed: int = 0, onnx_applied=None,
              t0: int = 1_790_000_000_000_000_000) -> None:
    """A ``heimdall listen --topic "" --json`` file: one truth fix and one localization per 0.5 s window, the
    onnx and physics estimates' errors drawn from ``factor`` x their published covariance, status lines between.
    ``onnx_applied`` [n]: the site factor each onnx estimate says it carries (default: the key is absent)."""
    rng = np.random.default_rng(seed)
    truth_en = np.cumsum(rng.normal(0, 300.0, (n, 2)), axis=0)
    cov = {"onnx": random_covariances(rng, n), "physics": random_covariances(rng, n)}
    est = {"onnx": truth_en - truths_around(rng, cov["onnx"], onnx_factor),
           "physics": truth_en - truths_around(rng, cov["physics"], physics_factor)}
    lat_t, lon_t = geodetic(truth_en)
    lines = []
    for i in range(n):
        start, end = t0 + i * 500_000_000, t0 + (i + 1) * 500_000_000
        lines.append({"topic": "truth", "v": 1, "t_ns": (start + end) // 2, "lat": lat_t[i], "lon": lon_t[i], "keyed": True})
        out = {}
        for name in ("onnx", "physics"):
            lat, lon = geodetic(est[name][i : i + 1])
            out[name] = {"estimator": name, "lat": float(lat[0]), "lon": float(lon[0]), "cov_en_m2": cov[name][i].tolist()}
        if onnx_applied is not None:
            out["onnx"]["covariance_scale"] = float(onnx_applied[i])
        lines.append({"topic": "loc", "v": 1, "seq": i, "t_start_ns": start, "t_end_ns": end, **out["onnx"],
                      "alternatives": [out["physics"]]})
        lines.append({"topic": "status", "v": 1, "t_ns": end})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_the_fitted_factors_are_written_times_the_config_s_own_and_the_daemon_s_config_loads(site, tmp_path, capsys):
    cfg, geodetic = site
    run = tmp_path / "run.jsonl"
    write_run(run, geodetic, n=4000, onnx_factor=0.5, physics_factor=2.0)
    out = tmp_path / "calibrated.toml"
    assert main(["-c", str(cfg), str(run), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    onnx, physics = report["estimators"]["onnx"], report["estimators"]["physics"]
    assert onnx["n"] == physics["n"] == 4000 and report["other_lines"] == 4000 and report["written"] == str(out)
    # The messages do not say which factor they carry: the config's (onnx 2.0, physics 1.0) is taken as applied.
    assert (onnx["applied_min"], physics["applied_max"]) == (2.0, 1.0)
    assert onnx["factor"] == pytest.approx(2.0 * 0.5, rel=0.05) and physics["factor"] == pytest.approx(2.0, rel=0.05)
    assert onnx["cov68_after"] == pytest.approx(0.68, abs=0.03) and physics["cov95_after"] == pytest.approx(0.95, abs=0.02)
    written = load(out).estimator
    assert written.model_covariance_scale == round(onnx["factor"], 4)
    assert written.physics.covariance_scale == round(physics["factor"], 4)
    assert load(cfg).estimator.model_covariance_scale == 2.0  # --out leaves the given config alone


def test_estimates_with_null_or_singular_covariances_are_skipped_and_counted(site, tmp_path, capsys):
    cfg, geodetic = site
    run = tmp_path / "run.jsonl"
    write_run(run, geodetic, n=60, onnx_factor=1.0, physics_factor=1.0)
    lines = run.read_text().splitlines()
    locs = [i for i, line in enumerate(lines) if '"topic": "loc"' in line]
    for i, cov in zip(locs[:2], ([[None, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]])):
        msg = json.loads(lines[i])
        msg["cov_en_m2"] = cov
        lines[i] = json.dumps(msg)
    run.write_text("\n".join(lines) + "\n")
    assert main(["-c", str(cfg), str(run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["estimators"]
    assert (report["onnx"]["n"], report["onnx"]["skipped"]) == (58, 2)
    assert (report["physics"]["n"], report["physics"]["skipped"]) == (60, 0)


def test_the_factor_each_message_carries_is_divided_out_so_runs_across_a_reload_mix(site, tmp_path, capsys):
    """Half the run published under a site factor of 1, half under 3 (a reload between), the estimator's own
    covariances 1.5 x too small throughout: 1.5 is fitted, whatever the config says now (2.0)."""
    cfg, geodetic = site
    run = tmp_path / "run.jsonl"
    n = 4000
    applied = np.where(np.arange(n) < n // 2, 1.0, 3.0)
    # Published = applied x own, errors from 1.5 x own = (1.5 / applied) x published.
    write_run(run, geodetic, n=n, onnx_factor=1.5 / applied, physics_factor=1.0, onnx_applied=applied)
    assert main(["-c", str(cfg), str(run), "--json"]) == 0
    onnx = json.loads(capsys.readouterr().out)["estimators"]["onnx"]
    assert (onnx["applied_min"], onnx["applied_max"]) == (1.0, 3.0)
    assert onnx["factor"] == pytest.approx(1.5, rel=0.05)
    assert onnx["cov68_after"] == pytest.approx(0.68, abs=0.03) and onnx["cov95_after"] == pytest.approx(0.95, abs=0.02)


def test_a_csv_track_gives_the_truth_and_too_few_windows_are_reported_not_written(site, tmp_path, capsys):
    cfg, geodetic = site
    run = tmp_path / "run.jsonl"
    n = MIN_WINDOWS - 1
    write_run(run, geodetic, n=n, onnx_factor=1.0, physics_factor=1.0)
    truths = [json.loads(line) for line in run.read_text().splitlines() if '"truth"' in line]
    # Float seconds round the fixes' times by ~0.1 us: a fix 0.5 s beyond each end keeps the end windows inside.
    truths = [{**truths[0], "t_ns": truths[0]["t_ns"] - 500_000_000}, *truths, {**truths[-1], "t_ns": truths[-1]["t_ns"] + 500_000_000}]
    track = tmp_path / "track.csv"
    track.write_text("# GPS logger\nt_unix_s,lat,lon\n" + "".join(f"{t['t_ns'] / 1e9!r},{t['lat']!r},{t['lon']!r}\n" for t in truths))
    locs_only = tmp_path / "locs.jsonl"
    locs_only.write_text("".join(line + "\n" for line in run.read_text().splitlines() if '"truth"' not in line))
    out = tmp_path / "calibrated.toml"
    assert main(["-c", str(cfg), str(locs_only), "--truth", str(track), "--out", str(out), "--json"]) == 1
    printed = capsys.readouterr()
    assert f"estimator 'onnx': {n} windows with a truth, need at least {MIN_WINDOWS}" in printed.err
    report = json.loads(printed.out)
    assert report["estimators"]["onnx"]["n"] == n and report["estimators"]["onnx"]["skipped"] == 0
    assert report["written"] is None and not out.exists()


@pytest.mark.parametrize("content, message", [
    ('{"topic": "status"}\nnot json\n', "run.jsonl:2: not a JSON line"),
    ('[1, 2]\n', "run.jsonl:1: expected a JSON object, got list"),
    ('{"topic": "loc", "t_start_ns": 0, "t_end_ns": 1, "estimator": "onnx", "lat": 45, "lon": 7, "cov_en_m2": [1, 2]}\n',
     "run.jsonl:1: the primary estimate.cov_en_m2: expected [[ee, en], [ne, nn]] (m^2), got [1, 2]"),
    ('{"topic": "loc", "t_start_ns": "x"}\n', "run.jsonl:1: t_start_ns: expected a number, got 'x'"),
    ('{"topic": "status"}\n', "no localizations (topic 'loc') in"),
    ('{"topic": "truth", "t_ns": 1, "lat": 45, "lon": 7, "channel": 5}\n',
     "run.jsonl:1: channel: expected a channel name (string), got 5"),
])
def test_malformed_files_are_refused_naming_file_and_line(site, tmp_path, content, message):
    cfg, _ = site
    run = tmp_path / "run.jsonl"
    run.write_text(content)
    with pytest.raises(LocalizationFileError) as exc:
        main(["-c", str(cfg), str(run)])
    assert message in str(exc.value)


def test_a_track_that_does_not_overlap_the_localizations_is_refused(site, tmp_path):
    cfg, geodetic = site
    run = tmp_path / "run.jsonl"
    write_run(run, geodetic, n=40, onnx_factor=1.0, physics_factor=1.0)
    track = tmp_path / "track.csv"
    track.write_text("t_unix_s,lat,lon\n0,45.0,7.5\n1,45.0,7.5\n")
    with pytest.raises(LocalizationFileError, match="no localization has a keyed truth fix within 2 s"):
        main(["-c", str(cfg), str(run), "--truth", str(track)])
    track.write_text("time,lat,lon\n")
    with pytest.raises(LocalizationFileError, match="expected the header t_unix_s,lat,lon, got \\['time', 'lat', 'lon'\\]"):
        main(["-c", str(cfg), str(run), "--truth", str(track)])


def on_channel(path, channel: str, **changes) -> list[dict]:
    """The lines of ``path`` with ``channel`` set on its truth and loc lines (``changes`` too, on truth lines)."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [{**line, "channel": channel, **(changes if line["topic"] == "truth" else {})} if line["topic"] in ("truth", "loc")
            else line for line in lines]


def write_lines(path, lines) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_a_band_run_s_truth_lines_are_matched_on_their_own_channel_only_and_times_are_exact_to_the_ns(site, tmp_path, capsys):
    cfg, geodetic = site
    # Two transmitters at the same instants on two channels; odd ns times, which a float would round by ~100 ns.
    t0 = 1_790_000_000_000_000_001
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_run(a, geodetic, n=600, onnx_factor=1.0, physics_factor=1.0, seed=1, t0=t0)
    write_run(b, geodetic, n=600, onnx_factor=1.0, physics_factor=1.0, seed=2, t0=t0)
    band = tmp_path / "band.jsonl"
    write_lines(band, on_channel(a, "145.5") + on_channel(b, "145.525"))
    assert main(["-c", str(cfg), str(band), "--max-gap-s", "1e-9", "--json"]) == 0
    onnx = json.loads(capsys.readouterr().out)["estimators"]["onnx"]
    assert onnx["n"] == 1200 and onnx["skipped"] == 0
    assert onnx["factor"] == pytest.approx(2.0, rel=0.1)  # the config's 2.0 taken as applied, times the drawn 1.0

    # A collision's truth does not say which transmitter was found: those windows are skipped.
    write_lines(band, on_channel(a, "145.5", collision=True) + on_channel(b, "145.525"))
    assert main(["-c", str(cfg), str(band), "--max-gap-s", "1e-9", "--json"]) == 0
    onnx = json.loads(capsys.readouterr().out)["estimators"]["onnx"]
    assert (onnx["n"], onnx["skipped"]) == (600, 600)

    write_lines(band, on_channel(a, "145.5") + on_channel(b, "145.525"))
    assert main(["-c", str(cfg), str(band), "--channel", "145.525", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["estimators"]["onnx"]["n"] == 600
    with pytest.raises(LocalizationFileError, match=r"--channel 146: no localization on it; their channels: 145.5, 145.525"):
        main(["-c", str(cfg), str(band), "--channel", "146"])


def test_a_band_run_s_final_localizations_are_fitted_apart_and_written_to_their_own_keys(site, tmp_path, capsys):
    cfg, geodetic = site
    interim, final = tmp_path / "interim.jsonl", tmp_path / "final.jsonl"
    write_run(interim, geodetic, n=2000, onnx_factor=1.5, physics_factor=0.8, seed=3)
    write_run(final, geodetic, n=2000, onnx_factor=0.5, physics_factor=2.0, seed=4, t0=1_791_000_000_000_000_000)
    band = tmp_path / "band.jsonl"
    finals = [{**line, "stage": "final"} if line["topic"] == "loc" else line for line in on_channel(final, "145.5")]
    write_lines(band, on_channel(interim, "145.5") + finals)
    out = tmp_path / "calibrated.toml"
    assert main(["-c", str(cfg), str(band), "--out", str(out), "--json"]) == 0
    fits = json.loads(capsys.readouterr().out)["estimators"]
    assert {name: fits[name]["n"] for name in fits} == {"onnx": 2000, "onnx final": 2000, "physics": 2000, "physics final": 2000}
    # The config's onnx factor (2.0) is taken as applied on both stages, its physics one (1.0) too.
    for name, drawn in (("onnx", 2.0 * 1.5), ("onnx final", 2.0 * 0.5), ("physics", 0.8), ("physics final", 2.0)):
        assert fits[name]["factor"] == pytest.approx(drawn, rel=0.08), name
        assert fits[name]["cov95_after"] == pytest.approx(0.95, abs=0.02), name
    written = load(out).estimator
    assert (written.model_covariance_scale, written.model_final_covariance_scale) == (
        round(fits["onnx"]["factor"], 4), round(fits["onnx final"]["factor"], 4))
    assert written.covariance_scales("final") == {"onnx": round(fits["onnx final"]["factor"], 4),
                                                  "physics": round(fits["physics final"]["factor"], 4)}
    assert written.covariance_scales() == {"onnx": round(fits["onnx"]["factor"], 4),
                                           "physics": round(fits["physics"]["factor"], 4)}


def test_a_config_without_final_factors_uses_the_interim_ones_for_finals(tmp_path):
    estimator = load(write_config(tmp_path, {"estimator": {"model_covariance_scale": 1.7, "physics": {
        "covariance_scale": 0.6}}})).estimator
    assert estimator.covariance_scales("final") == estimator.covariance_scales("interim") == {"onnx": 1.7, "physics": 0.6}


def test_a_csv_track_on_a_band_run_needs_the_channel_it_keyed_on(site, tmp_path, capsys):
    cfg, geodetic = site
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_run(a, geodetic, n=100, onnx_factor=1.0, physics_factor=1.0, seed=1)
    write_run(b, geodetic, n=100, onnx_factor=1.0, physics_factor=1.0, seed=2)
    track = tmp_path / "track.csv"
    truths = [line for line in on_channel(a, "145.5") if line["topic"] == "truth"]
    track.write_text("t_unix_s,lat,lon\n" + "".join(f"{t['t_ns'] / 1e9!r},{t['lat']!r},{t['lon']!r}\n" for t in truths))
    locs = tmp_path / "locs.jsonl"
    write_lines(locs, [line for line in on_channel(a, "145.5") + on_channel(b, "145.525") if line["topic"] != "truth"])
    with pytest.raises(LocalizationFileError, match=r"one transmitter's track, and the localizations are on 2 channels "
                                                     r"\(145.5, 145.525\): give --channel NAME"):
        main(["-c", str(cfg), str(locs), "--truth", str(track)])
    # So are truth lines without a channel (a band daemon's truth topic follows one transmitter).
    untagged = [line for line in on_channel(a, "145.5") + on_channel(b, "145.525") if line["topic"] != "truth"]
    untagged += [{k: v for k, v in line.items() if k != "channel"} for line in on_channel(a, "145.5") if line["topic"] == "truth"]
    write_lines(tmp_path / "untagged.jsonl", untagged)
    with pytest.raises(LocalizationFileError, match=r"truth lines without a channel: one transmitter's track, and the "
                                                     r"localizations are on 2 channels"):
        main(["-c", str(cfg), str(tmp_path / "untagged.jsonl")])
    assert main(["-c", str(cfg), str(locs), "--truth", str(track), "--channel", "145.5", "--json"]) == 0
    onnx = json.loads(capsys.readouterr().out)["estimators"]["onnx"]
    assert onnx["n"] + onnx["skipped"] == 100 and onnx["n"] >= 98
    assert onnx["factor"] == pytest.approx(2.0, rel=0.25)


# --- the daemon applies the factors -------------------------------------------------------------------

@pytest.mark.parametrize("key", ["model_covariance_scale", "physics.covariance_scale", "model_final_covariance_scale",
                                 "physics.final_covariance_scale"])
@pytest.mark.parametrize("value", [0.0, -1.0, float("nan")])
def test_a_factor_that_is_not_finite_and_positive_is_a_config_error(tmp_path, key, value):
    table = {key: value} if "." not in key else {"physics": {key.split(".")[1]: value}}
    path = write_config(tmp_path, {"estimator": table}, name="bad.toml")
    expected = "a finite number, got nan" if value != value else "a finite factor > 0"  # NaN: refused as any non-finite number
    with pytest.raises(ConfigError, match=f"estimator.{key}: expected {expected}"):
        load(path)


def test_both_estimators_multiply_their_covariance_by_the_configured_factor(tmp_path):
    config = load(write_config(tmp_path, {}))
    _, rx_enu_m, _ = network_geometry(config)
    n_rx = len(config.receivers)
    rng = np.random.default_rng(1)
    power = np.array([-95.0, -88.0, -101.0, -92.0, -99.0, -90.0, -97.0])[:n_rx]
    inputs = EstimatorInputs(features_dbm=(rng.normal(-120, 3, (n_rx, config.features.n_mels, config.features.n_frames))).astype(np.float32),
                             rx_enu_m=rx_enu_m, present=np.ones(n_rx, bool), heard=np.ones(n_rx, bool),
                             rx_power_dbm=power, detection_level_dbm=np.full(n_rx, -110.0))
    scaled = dataclasses.replace(config, estimator=dataclasses.replace(
        config.estimator, model_covariance_scale=0.25, physics=dataclasses.replace(config.estimator.physics, covariance_scale=3.0)))
    for cls, factor in ((PhysicsPosterior, 3.0), (OnnxModel, 0.25)):
        plain, calibrated = cls(config).estimate(inputs), cls(scaled).estimate(inputs)
        np.testing.assert_array_equal(calibrated.position_en_m, plain.position_en_m)
        np.testing.assert_allclose(calibrated.cov_en_m2, factor * plain.cov_en_m2, rtol=1e-6)


@pytest.mark.parametrize("names", [("onnx", "physics"), ("physics",)])
def test_factors_are_written_into_a_config_without_an_estimator_table(names):
    import tomllib

    from streamer.tools.calibrate_ellipses import EllipseFit, updated_toml

    text = '# my site\n[[receivers]]\nid = "a"\nkind = "simulator"\nlat = 45.0\nlon = 7.0\n'
    fits = {n: EllipseFit(n, 40, 0, 1.0, 1.0, 1.0, 0.5, 0.9, 1.5, 0.68, 0.95, 1.5) for n in names}
    out = updated_toml(text, fits)
    assert out.startswith(text)
    estimator = tomllib.loads(out)["estimator"]
    assert estimator["physics"] == {"covariance_scale": 1.5}
    assert estimator.get("model_covariance_scale") == (1.5 if "onnx" in names else None)


@pytest.mark.parametrize("rows, message", [
    ("1790000000.0,45.0\n", "track.csv:2: expected 3 columns (t_unix_s,lat,lon), got 2"),
    ("1790000000.0,north,7.5\n", "track.csv:2: expected numbers, got ['1790000000.0', 'north', '7.5']"),
    ("1790000000.0,95.0,7.5\n", "track.csv:2: expected a finite time, lat in -90..90, lon in -180..180"),
    ("inf,45.0,7.5\n", "track.csv:2: expected a finite time"),
])
def test_bad_track_rows_are_refused_naming_the_line(site, tmp_path, rows, message):
    cfg, geodetic = site
    run = tmp_path / "run.jsonl"
    write_run(run, geodetic, n=40, onnx_factor=1.0, physics_factor=1.0)
    track = tmp_path / "track.csv"
    track.write_text("t_unix_s,lat,lon\n" + rows)
    with pytest.raises(LocalizationFileError) as exc:
        main(["-c", str(cfg), str(run), "--truth", str(track)])
    assert message in str(exc.value)


def test_a_non_numeric_factor_in_a_message_is_refused_and_a_non_positive_one_is_skipped(site, tmp_path, capsys):
    cfg, geodetic = site
    run = tmp_path / "run.jsonl"
    write_run(run, geodetic, n=60, onnx_factor=1.0, physics_factor=1.0, onnx_applied=np.r_[0.0, -1.0, np.ones(58)])
    assert main(["-c", str(cfg), str(run), "--json"]) == 0
    onnx = json.loads(capsys.readouterr().out)["estimators"]["onnx"]
    assert (onnx["n"], onnx["skipped"]) == (58, 2)
    lines = run.read_text().splitlines()
    i = next(k for k, line in enumerate(lines) if '"topic": "loc"' in line)
    lines[i] = lines[i].replace('"covariance_scale": 0.0', '"covariance_scale": "big"')
    run.write_text("\n".join(lines) + "\n")
    with pytest.raises(LocalizationFileError, match=r"run.jsonl:2: the primary estimate.covariance_scale: expected a number, got 'big'"):
        main(["-c", str(cfg), str(run)])


@pytest.mark.parametrize("gap", ["0", "-1", "nan"])
def test_a_max_gap_that_is_not_positive_seconds_is_refused(site, tmp_path, gap):
    cfg, geodetic = site
    run = tmp_path / "run.jsonl"
    write_run(run, geodetic, n=40, onnx_factor=1.0, physics_factor=1.0)
    with pytest.raises(ConfigError, match=f"--max-gap-s: expected seconds > 0, got {gap}"):
        main(["-c", str(cfg), str(run), "--max-gap-s", gap])


def test_coverage_counts_each_window_inside_its_own_published_radius():
    m2 = np.array([1.0, 2.0, 3.0, 5.0, 7.0])
    assert coverage(m2) == (0.4, 0.8)  # the Gaussian's 2.279 / 5.991
    radius_sq = np.array([[1.5, 4.0], [1.5, 1.8], [np.nan, np.nan], [4.0, 8.0], [4.0, 6.0]])
    assert coverage(m2, radius_sq=radius_sq) == (0.2, 0.6)  # window 2 has no radii: the Gaussian's


def test_the_published_ellipse_scales_are_read_from_the_messages(tmp_path):
    from streamer.tools.calibrate_ellipses import read_messages

    cfg = load(write_config(tmp_path, {}, name="site.toml"))
    origin, _, _ = network_geometry(cfg)
    base = {"topic": "loc", "t_start_ns": 0, "t_end_ns": 10, "estimator": "onnx", "lat": origin.lat, "lon": origin.lon,
            "cov_en_m2": [[1.0, 0.0], [0.0, 1.0]], "covariance_scale": 1.0}
    with_scales = dict(base, ellipses=[{"p": 0.68, "scale": 1.2}, {"p": 0.95, "scale": 2.1}],
                       alternatives=[dict(base, estimator="physics")])
    path = tmp_path / "locs.jsonl"
    path.write_text(json.dumps(with_scales) + "\n")
    locs, _, _ = read_messages([path], origin)
    assert locs.scales["onnx"] == [(1.2, 2.1)]
    assert all(math.isnan(v) for v in locs.scales["physics"][0])  # an older message: no ellipses key
    path.write_text(json.dumps(dict(base, ellipses=[{"p": 0.68, "scale": "wide"}])) + "\n")
    with pytest.raises(LocalizationFileError, match=r"locs.jsonl:1: the primary estimate.ellipses\[0\].scale: expected a number"):
        read_messages([path], origin)


@pytest.mark.parametrize("ellipses, why", [
    ({"p": 0.95}, r"the primary estimate.ellipses: expected a list of ellipses"),
    ([0.95], r"the primary estimate.ellipses\[0\]: expected an object"),
    ([{"scale": 2.0}], r"the primary estimate.ellipses\[0\].p: expected a number, got None"),
])
def test_malformed_ellipses_in_a_message_are_refused_with_file_line_and_key(tmp_path, ellipses, why):
    from streamer.tools.calibrate_ellipses import read_messages

    cfg = load(write_config(tmp_path, {}, name="site.toml"))
    origin, _, _ = network_geometry(cfg)
    msg = {"topic": "loc", "t_start_ns": 0, "t_end_ns": 10, "estimator": "onnx", "lat": origin.lat, "lon": origin.lon,
           "cov_en_m2": [[1.0, 0.0], [0.0, 1.0]], "ellipses": ellipses}
    path = tmp_path / "locs.jsonl"
    path.write_text(json.dumps(msg) + "\n")
    with pytest.raises(LocalizationFileError, match="locs.jsonl:1: " + why):
        read_messages([path], origin)
