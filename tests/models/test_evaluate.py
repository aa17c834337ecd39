"""``heimdall evaluate``: a missing or malformed split file is refused by name, before any scoring; option checks;
the site-calibrated ellipses of ``<model>+site``; the hidden-state realizations of a random network."""

from __future__ import annotations

import numpy as np
import pytest

from models.train import evaluate, scoring
from streamer.cli import main


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "cannot read the POWDER split file"),
        ("{", "not a POWDER split file: not JSON"),
        ("[1, 2]", "not a POWDER split file: expected a non-empty JSON object"),
        ('{"2022-04-25 14:15:11": {"rx_data": 3}}', """sample '2022-04-25 14:15:11': expected {"rx_data": [[rss, lat, lon, name]"""),
    ],
)
def test_a_missing_or_malformed_split_file_is_named_before_scoring(tmp_path, monkeypatch, capsys, content, message):
    path = tmp_path / "my_split.json"
    if content is not None:
        path.write_text(content)
    monkeypatch.setattr(evaluate, "simulated_sets", lambda *a, **k: pytest.fail("scored before checking the split file"))
    assert main(["evaluate", "--n", "0", "--n-random", "0", "--test-split", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"heimdall: error: {path}: ") and message in err, err


def test_test_split_and_powder_split_are_exclusive(capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["--powder-split", "grid", "--test-split", "x.json"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_negative_network_count_is_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["--n-networks", "-1"])
    assert "--n-networks: expected an integer >= 0, got -1" in capsys.readouterr().err


@pytest.mark.parametrize("option, value, message", [("--realizations", "-1", "expected an integer >= 0, got -1"),
                                                    ("--realization-draws", "0", "expected a positive integer, got 0")])
def test_a_bad_realization_option_is_refused_by_name(capsys, option, value, message):
    with pytest.raises(SystemExit):
        evaluate.main([option, value])
    assert f"{option}: {message}" in capsys.readouterr().err


def test_ellipse_size_leaves_out_unusable_covariances():
    cov = np.array([np.eye(2) * 4e6, np.full((2, 2), np.nan), np.zeros((2, 2)), np.eye(2) * 4e6])
    assert scoring.ellipse_size_m(cov) == pytest.approx(2e3)
    assert np.isnan(scoring.ellipse_size_m(cov[1:3]))


def test_a_realization_redraws_only_the_networks_hidden_state():
    """``random-<k>-realizations``: the same receivers, configured gains and propagation as ``random-<k>`` (so the
    oracle is told the same), another simulator seed, so other hidden calibration errors; deterministic."""
    from dataclasses import replace

    from receivers.simulator import SimulatedWorld
    from streamer.dsp.features import FeatureSpec

    base, _ = evaluate.random_network(0)
    sets = evaluate.realizations(0, 2, 3, FeatureSpec())
    again = evaluate.realizations(0, 2, 3, FeatureSpec())
    errors = [SimulatedWorld(base).calibration_error_db]
    for (config, physics, data), (_, _, data_again) in zip(sets, again):
        assert config.simulator.seed != base.simulator.seed
        assert replace(config, simulator=replace(config.simulator, seed=base.simulator.seed)) == base
        assert physics == evaluate.physics_config_for(base)
        assert len(data) == 3 and np.array_equal(data.features_dbm, data_again.features_dbm)
        errors.append(SimulatedWorld(config).calibration_error_db)
    assert len({tuple(np.round(e, 6)) for e in errors}) == 3


def _pooled_set(spreads_m, ellipse_sd_m=1e3, draws=400):
    """``score_many`` of one method on networks whose errors have the given spreads (m) and covariance
    ``ellipse_sd_m``^2 I, with random-0's config for each and 4 receivers heard on every draw."""
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    config, _ = evaluate.random_network(0)
    estimates, networks = [], []
    for sd in spreads_m:
        truth = rng.standard_normal((draws, 2)) * sd
        estimates.append((np.zeros((draws, 2)), np.tile(np.eye(2) * ellipse_sd_m**2, (draws, 1, 1)), None))
        heard = np.zeros((draws, 16), bool)
        heard[:, :4] = True
        networks.append((config, None, SimpleNamespace(tx_enu_km=truth / 1e3, heard=heard)))
    return evaluate.score_many(networks, estimates)


def test_per_network_spread_counts_the_networks_inside_each_gate():
    pooled = _pooled_set((1e3, 1e3, 3e3))  # two networks whose covariance is right, one whose errors are 3 times wider
    assert pooled["cov95_networks_in_gate"] == pytest.approx(2 / 3)
    assert pooled["cov68_networks_in_gate"] == pytest.approx(2 / 3)
    assert pooled["cov95_networks"][0] < 0.5 < pooled["cov95_networks"][2]
    rows = pooled["networks"]
    assert [r["receivers"] for r in rows] == [5, 5, 5] and all(r["heard"] == 4.0 and r["n"] == 400 for r in rows)
    assert rows[2]["cov68"] < 0.2 and rows[0]["cov68"] > 0.6 and rows[0]["ellipse_m"] == pytest.approx(1e3)


def test_coverage_spread_separates_what_the_networks_make_from_binomial_sampling():
    rng = np.random.default_rng(3)
    n = 1000
    same = [{"cov68": rng.binomial(n, 0.68) / n, "n": n} for _ in range(400)]  # one true coverage: sampling alone
    spread = scoring.coverage_spread(same, "cov68")
    assert spread["sampling_sd"] == pytest.approx(np.sqrt(0.68 * 0.32 / n), rel=0.02)
    assert spread["observed_sd"] == pytest.approx(spread["sampling_sd"], rel=0.1)
    assert spread["beyond_sampling_sd"] < 0.5 * spread["sampling_sd"]
    true = rng.normal(0.68, 0.05, 400)  # each network its own true coverage, sd 0.05
    differ = [{"cov68": rng.binomial(n, p) / n, "n": n} for p in true]
    assert scoring.coverage_spread(differ, "cov68")["beyond_sampling_sd"] == pytest.approx(0.05, rel=0.1)
    assert scoring.coverage_spread(same[:1], "cov68") is None
    line = scoring._network_spread_lines({"m": _pooled_set((1e3, 1e3, 3e3))}, "")[0]
    assert "; sd over networks cov68 " in line and "(sampling " in line and "beyond it " in line


def test_per_network_table_compares_each_models_ellipses_with_the_physics_posteriors():
    table = {"m": _pooled_set((1e3, 1e3), ellipse_sd_m=800.0), "m+site": _pooled_set((1e3, 1e3)),
             "physics": _pooled_set((1e3, 1e3)), "centroid": _pooled_set((1e3, 1e3), ellipse_sd_m=5e3)}
    text = scoring.format_per_network("random-many", table)
    lines = text.splitlines()
    assert lines[2] == "| network | receivers | side km | heard | m cov68 / cov95 | physics cov68 / cov95 | m ellipse / physics |"
    assert len(lines) == 6 and lines[4].startswith("| 0 | 5 | ") and lines[4].endswith(" | 0.800 |")
    assert scoring.format_per_network("default", {"physics": {"cov68": 0.7}}) == ""


def test_site_calibration_scales_each_half_by_the_factor_fitted_on_the_other_half():
    rng = np.random.default_rng(2)
    n = 4000
    cov = np.tile(np.diag([1e6, 4e6]), (n, 1, 1))
    factor = np.where(np.arange(n) % 2 == 0, 1.0, 4.0)  # odd draws err twice as far as their covariance says
    truth = rng.standard_normal((n, 2)) * np.sqrt(np.array([1e6, 4e6]) * factor[:, None])
    scaled = scoring.site_calibrated(np.zeros((n, 2)), cov, truth)
    ratio = scaled[:, 0, 0] / cov[:, 0, 0]
    assert ratio[0::2] == pytest.approx(np.full(n // 2, 4.0), rel=0.08)  # the even half gets the odd half's factor
    assert ratio[1::2] == pytest.approx(np.full(n // 2, 1.0), rel=0.08)
    one = scoring.site_calibrated(np.zeros((1, 2)), cov[:1], truth[:1])
    assert np.isnan(one).all()  # a single draw: no other half to fit on


def _scores(median, mean, p90, cov68, cov95):
    return {"median_m": median, "mean_m": mean, "p90_m": p90, "cov68": cov68, "cov95": cov95, "nll": 1.0, "n": 10}


def test_gates_compare_each_model_with_the_physics_posterior_and_check_both_coverages(tmp_path, capsys):
    results = {
        "default": {"physics": _scores(90, 100, 200, 0.70, 0.95), "centroid": _scores(1, 1, 1, 0.1, 0.1),
                    "m": _scores(95, 105, 209, 0.70, 0.95), "far": _scores(95, 106, 211, 0.77, 0.92)},
        "powder-grid": {"physics": _scores(138, 180, 300, 0.8, 0.95), "m": _scores(151, 200, 400, 0.6, 0.90)},
    }
    rows = {(r["dataset"], r["method"]): r for r in scoring.gate_rows(results)}
    assert set(rows) == {("default", "m"), ("default", "far"), ("powder-grid", "m"), ("default", "physics"),
                         ("powder-grid", "physics")}  # not centroid
    assert rows["default", "physics"]["met"] == {"cov68": True, "cov95": True}  # its coverage, not its errors
    assert "mean_vs_physics" not in rows["default", "physics"]
    assert rows["powder-grid", "physics"]["met"] == {"median": True, "cov95": True}
    assert rows["default", "m"]["mean_vs_physics"] == pytest.approx(0.05) and all(rows["default", "m"]["met"].values())
    assert [k for k, ok in rows["default", "far"]["met"].items() if not ok] == ["cov68", "cov95", "mean", "p90"]
    assert rows["powder-grid", "m"]["met"] == {"median": False, "cov95": True}
    path = tmp_path / "results.json"
    import json

    path.write_text(json.dumps(results))
    assert evaluate.main(["--from-json", str(path), "--gates"]) == 0
    out = capsys.readouterr().out
    assert "| default | m | 95 | +5.0 % | +4.5 % | 0.700 | 0.950 | none |" in out
    assert "| powder-grid | m | 151 |  |  | 0.600 | 0.900 | median |" in out


def test_gate_summary_states_the_seeded_and_the_hidden_state_reading():
    """A network's seeded realization graded alone, or replaced by its realizations; POWDER by its better method."""
    results = {
        "default": {"physics": _scores(90, 100, 200, 0.70, 0.95), "m": _scores(95, 101, 201, 0.70, 0.95),
                    "m+site": _scores(95, 101, 201, 0.50, 0.95)},
        "random-0": {"physics": _scores(90, 100, 200, 0.64, 0.975), "m": _scores(95, 101, 201, 0.61, 0.96)},
        "random-0-realizations": {"physics": _scores(90, 100, 200, 0.70, 0.96), "m": _scores(95, 101, 201, 0.67, 0.96)},
        "powder-grid": {"physics": _scores(130, 180, 300, 0.8, 0.97), "m": _scores(175, 200, 400, 0.6, 0.87)},
    }
    assert scoring.gate_readings(results) == {
        "seeded": ["default", "random-0", "powder-grid"],
        "hidden state": ["default", "powder-grid", "random-0-realizations"]}
    seeded, hidden = scoring.gate_summary(results)
    assert seeded == ("- seeded (default, random-0, powder-grid): m misses random-0 cov68; physics misses random-0 cov95; "
                      "powder-grid gates met by physics")  # +site rows are not graded here
    assert hidden.endswith(": m misses none; physics misses none; powder-grid gates met by physics")
    assert list(scoring.gate_readings(["default", "random-0"])) == ["seeded"]
    assert scoring.gate_readings(["random-0-realizations"]) == {"hidden state": ["random-0-realizations"]}
    assert "- seeded (" in scoring.format_gates(results)


def test_reproduction_compares_a_second_run_with_the_shipped_model_on_the_datasets_both_were_scored_on(tmp_path, capsys):
    results = {
        "default": {"shipped": _scores(100, 120, 200, 0.70, 0.95), "rerun": _scores(104, 118, 209, 0.71, 0.95)},
        "random-0": {"shipped": _scores(100, 100, 100, 0.70, 0.95), "rerun": _scores(100, 100, 100, 0.70, 0.89)},
        "powder-grid": {"shipped": _scores(150, 200, 400, 0.6, 0.9)},  # the rerun was not scored here
    }
    rows = scoring.reproduction_rows(results, "shipped", "rerun")
    assert [r["dataset"] for r in rows] == ["default", "random-0"]
    assert rows[0]["relative"]["median_m"] == pytest.approx(0.04) and rows[0]["within"]
    assert rows[0]["relative"]["p90_m"] == pytest.approx(0.045)
    assert not rows[1]["within"]  # cov95 0.89 against 0.95: 6.3 % off
    with pytest.raises(KeyError, match="'other' is in no dataset"):
        scoring.reproduction_rows(results, "shipped", "other")
    path = tmp_path / "results.json"
    import json

    path.write_text(json.dumps(results))
    assert evaluate.main(["--from-json", str(path), "--reproduces", "shipped", "rerun"]) == 0
    out = capsys.readouterr().out
    assert "| default | 10 | +4.0 % | -1.7 % | +4.5 % | +1.4 % | +0.0 % | yes |" in out
    assert "| random-0 | 10 | +0.0 % | +0.0 % | +0.0 % | +0.0 % | -6.3 % | no |" in out


@pytest.mark.parametrize("content, message", [(None, "No such file"), ("", "expected the JSON that --json printed"),
                                               ("[1]", "expected {dataset: {method: scores}}")])
def test_from_json_names_the_file_it_cannot_read(tmp_path, content, message):
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit, match=message) as raised:
        evaluate.main(["--from-json", str(path)])
    assert str(path) in str(raised.value)


def test_reproduces_names_a_method_the_results_do_not_hold(tmp_path):
    path = tmp_path / "results.json"
    path.write_text('{"default": {"shipped": {"median_m": 1, "mean_m": 1, "p90_m": 1, "cov68": 0, "cov95": 1, "nll": 1, "n": 1}}}')
    with pytest.raises(SystemExit, match="method 'rerun' is in no dataset of these results \\(methods: shipped\\)"):
        evaluate.main(["--from-json", str(path), "--reproduces", "shipped", "rerun"])
    results = {"default": {"a": _scores(1, 1, 1, 0.0, 0.9), "b": _scores(1, 1, 1, 0.0, 0.9), "c": _scores(1, 1, 1, 0.1, 0.9)}}
    assert scoring.reproduction_rows(results, "a", "b")[0]["within"]  # coverage 0 against 0: no division by zero
    assert not scoring.reproduction_rows(results, "a", "c")[0]["within"]


# --- traffic, seeds, a network config and the traffic scenario sets ------------------------------------------------


def test_evaluate_scores_partly_keyed_windows_and_prints_both_estimators_gates(capsys):
    from models import shipped_model_path

    assert main(["evaluate", "--traffic", "partial", "--n", "40", "--n-random", "0", "--gates"]) == 0
    out = capsys.readouterr().out
    stem = shipped_model_path().stem
    assert f"| default | {stem} |" in out and "| default | physics |" in out
    assert "- seeded (default): " in out


def test_a_bad_traffic_name_is_refused(capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["--traffic", "loud"])
    assert "--traffic: invalid choice: 'loud'" in capsys.readouterr().err


def test_seed_and_traffic_decide_the_draws():
    from streamer.dsp.features import FeatureSpec

    spec = FeatureSpec()
    first = evaluate.simulated_sets(3, 0, spec, seed=11)["default"][2]
    again = evaluate.simulated_sets(3, 0, spec, seed=11)["default"][2]
    other = evaluate.simulated_sets(3, 0, spec, seed=12)["default"][2]
    partial = evaluate.simulated_sets(3, 0, spec, seed=11, traffic="partial")["default"][2]
    assert np.array_equal(first.features_dbm, again.features_dbm)
    assert not np.array_equal(first.tx_enu_km, other.tx_enu_km)
    assert np.all(first.keyed_fraction == 1.0) and np.all(partial.keyed_fraction < 1.0)
    assert evaluate.random_network(0, 12)[0] != evaluate.random_network(0)[0]


SITE_TOML = """
[network]
target_freq_hz = 433.5e6
area_margin_km = 5.0

[simulator]
seed = 77
shadowing_db = 4.0

[estimator.physics]
shadowing_db = 4.0

[[receivers]]
id = "a"
kind = "simulator"
lat = 45.00
lon = 7.60

[[receivers]]
id = "b"
kind = "simulator"
lat = 45.10
lon = 7.70

[[receivers]]
id = "c"
kind = "simulator"
lat = 45.05
lon = 7.80

[[receivers]]
id = "d"
kind = "simulator"
lat = 44.98
lon = 7.75
"""


def test_config_scores_a_given_network_in_the_default_networks_place(tmp_path, capsys):
    import json

    path = tmp_path / "site-a.toml"
    path.write_text(SITE_TOML)
    network = evaluate.read_network(path)
    sets = evaluate.simulated_sets(4, 0, evaluate.FeatureSpec(), network=network, network_name="site-a")
    config, physics, data = sets["site-a"]
    assert config is network and physics == network.estimator.physics and physics.shadowing_db == 4.0
    assert np.all(data.rx_mask.sum(axis=1) <= 4) and np.all(data.rx_mask[:, 4:] == 0)
    assert main(["evaluate", "--config", str(path), "--n", "6", "--n-random", "0", "--no-physics", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert list(results) == ["site-a"] and all(s["n"] == 6 for s in results["site-a"].values())


@pytest.mark.parametrize("edit, message", [
    (("[simulator]", "[pipeline]\ndetection_snr_db = 9.0\n\n[simulator]"),
     ("network.channel_bandwidth_hz and pipeline.detection_snr_db must be the defaults the draws are judged by "
      "(snr_db: 9 against 6)")),
    (("area_margin_km = 5.0", "area_margin_km = 5.0\nbogus = 1"), "network.bogus"),
])
def test_a_config_the_draws_cannot_score_is_refused_by_file_and_key(tmp_path, edit, message):
    import re

    path = tmp_path / "odd.toml"
    path.write_text(SITE_TOML.replace(*edit))
    with pytest.raises(SystemExit, match=re.escape(f"heimdall evaluate: --config {path}: ") + ".*" + re.escape(message)):
        evaluate.read_network(path)


def test_scenario_sets_pool_the_default_and_three_unseen_networks_over_their_hidden_state():
    from streamer.dsp.features import FeatureSpec

    spec = FeatureSpec()
    partial = evaluate.scenario_networks("partial", 2, 2, spec)
    bursts = evaluate.scenario_networks("bursts", 2, 2, spec)
    assert len(partial) == 8  # 4 networks x 2 realizations
    receivers = [len(c.receivers) for c, _, _ in partial]
    assert receivers == [7, 7, 5, 5, 10, 10, 16, 16]
    seeds = [c.simulator.seed for c, _, _ in partial]
    assert len(set(seeds)) == 8 and seeds == [c.simulator.seed for c, _, _ in bursts]  # the same hidden states
    assert all(np.all(d.keyed_fraction < 1.0) for _, _, d in partial)
    assert all(np.all(d.keyed_fraction < 0.9) for _, _, d in bursts)


def test_scenario_sets_are_graded_as_their_own_reading():
    results = {
        "default": {"physics": _scores(90, 100, 200, 0.70, 0.95), "m": _scores(95, 101, 201, 0.70, 0.95)},
        "traffic-partial": {"physics": _scores(90, 100, 200, 0.70, 0.99), "m": _scores(95, 110, 201, 0.70, 0.95)},
    }
    assert scoring.gate_readings(results) == {"seeded": ["default"], "traffic scenarios": ["traffic-partial"]}
    _, scenarios = scoring.gate_summary(results)
    assert scenarios == "- traffic scenarios (traffic-partial): m misses traffic-partial mean; physics misses traffic-partial cov95"


def test_the_model_is_fed_each_draws_active_frames(monkeypatch):
    from models import shipped_model_path
    from streamer.estimators.onnx import OnnxSession

    data = evaluate.simulated_sets(3, 0, evaluate.FeatureSpec(), traffic="partial")["default"][2]
    seen = []
    real_run = OnnxSession.run

    def run(self, *args, frame_mask=None, **kwargs):
        seen.append(frame_mask)
        return real_run(self, *args, frame_mask=frame_mask, **kwargs)

    monkeypatch.setattr(OnnxSession, "run", run)
    scoring.run_onnx(shipped_model_path(), data)
    assert len(seen) == 1 and np.array_equal(seen[0], data.active_frames) and not data.active_frames.all()


def test_two_configs_of_one_stem_do_not_share_cached_draws(tmp_path):
    first, second = tmp_path / "a" / "site.toml", tmp_path / "b" / "site.toml"
    for path, seed in ((first, 77), (second, 78)):
        path.parent.mkdir()
        path.write_text(SITE_TOML.replace("seed = 77", f"seed = {seed}"))
    cache = tmp_path / "cache"
    drawn = [evaluate.simulated_sets(2, 0, evaluate.FeatureSpec(), cache, network=evaluate.read_network(p),
                                     network_name="site")["site"][2] for p in (first, second)]
    assert len(list(cache.glob("*.npz"))) == 2
    assert not np.array_equal(drawn[0].features_dbm, drawn[1].features_dbm)


def test_every_frame_scores_the_same_windows_over_all_their_frames():
    data = evaluate.simulated_sets(3, 0, evaluate.FeatureSpec(), traffic="partial")["default"][2]
    every = evaluate.over_every_frame(data)
    assert every.active_frames.all() and not data.active_frames.all()
    assert np.array_equal(every.features_dbm, data.features_dbm) and np.array_equal(every.heard, data.heard)
    config = evaluate.load()
    physics = config.estimator.physics
    moved = evaluate.run_physics(config, physics, every, evaluate.FeatureSpec())[0] - \
        evaluate.run_physics(config, physics, data, evaluate.FeatureSpec())[0]
    assert np.abs(moved).max() > 1.0  # a partly keyed window measured over every frame reads a lower power
