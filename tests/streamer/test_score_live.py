"""``heimdall score-live``: matching localizations to their window's truth, the scores, and a live run end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from streamer import cli
from streamer.core.geodesy import Origin, enu_to_geodetic
from streamer.tools.score_live import (
    Matcher,
    format_table,
    score_window,
    summarize,
    window_class,
)
from tests.helpers.daemon import reproducible_receivers, running_daemon

ORIGIN = Origin(45.0, 7.5, 0.0)
START_NS = 1_800_000_000_000_000_000


def _at(east_m: float, north_m: float) -> tuple[float, float]:
    lat, lon, _ = enu_to_geodetic(east_m, north_m, 0.0, ORIGIN)
    return float(lat), float(lon)


def estimate(name: str, east_m: float, north_m: float, sigma_m: float, scales=(1.515, 2.448)) -> dict:
    lat, lon = _at(east_m, north_m)
    return {"estimator": name, "lat": lat, "lon": lon, "cov_en_m2": [[sigma_m**2, 0.0], [0.0, sigma_m**2]],
            "ellipses": [{"p": 0.68, "scale": scales[0]}, {"p": 0.95, "scale": scales[1]}]}


def loc(start_ns: int, primary: dict, *alternatives: dict) -> dict:
    return {"seq": 0, "t_start_ns": start_ns, "t_end_ns": start_ns + 500_000_000, **primary, "alternatives": list(alternatives)}


def truth(start_ns: int, keyed_fraction: float, collision: bool = False, east_m: float = 0.0, north_m: float = 0.0) -> dict:
    lat, lon = _at(east_m, north_m)
    return {"t_ns": start_ns + 250_000_000, "lat": lat, "lon": lon, "window_start_ns": start_ns,
            "window_end_ns": start_ns + 500_000_000, "keyed_fraction": keyed_fraction, "collision": collision}


def test_window_classes_follow_the_keyed_fraction_and_collisions():
    assert window_class(1.0, False) == "full"
    assert window_class(0.9995, False) == "full"
    assert window_class(0.99, False) == "key-edge"
    assert window_class(1e-6, False) == "key-edge"
    assert window_class(0.0, False) == "unkeyed"
    assert window_class(1.0, True) == "collision"


def test_a_window_scores_each_estimator_by_distance_and_by_its_published_ellipses():
    msg = loc(START_NS, estimate("onnx", 1000.0, 0.0, 1000.0), estimate("physics", 0.0, 3000.0, 1000.0, scales=(1.0, 2.0)))
    onnx, physics = score_window(msg, truth(START_NS, 1.0))
    assert onnx.estimator == "onnx" and onnx.window == "full"
    assert onnx.error_m == pytest.approx(1000.0, rel=1e-3)
    assert onnx.m2 == pytest.approx(1.0, rel=1e-3)
    assert physics.error_m == pytest.approx(3000.0, rel=1e-3) and physics.m2 == pytest.approx(9.0, rel=1e-3)
    assert physics.radius_sq == (1.0, 4.0)
    summary = summarize([onnx, physics])
    assert summary["onnx"]["full"]["cov68"] == 1.0 and summary["onnx"]["full"]["cov95"] == 1.0  # 1 sigma < 1.515
    assert summary["physics"]["full"]["cov68"] == 0.0 and summary["physics"]["full"]["cov95"] == 0.0  # 3 sigma > 2
    no_scales = estimate("onnx", 2000.0, 0.0, 1000.0)
    del no_scales["ellipses"]
    (gaussian,) = score_window(loc(START_NS, no_scales), truth(START_NS, 0.5))
    assert all(math.isnan(r) for r in gaussian.radius_sq)  # a Gaussian's radii: 2 sigma is inside 95 %, not 68 %
    assert summarize([gaussian])["onnx"]["key-edge"] == pytest.approx(
        {"n": 1, "median_error_m": 2000.0, "p90_error_m": 2000.0, "cov68": 0.0, "cov95": 1.0}, rel=1e-3)


def test_the_matcher_pairs_by_window_start_whichever_message_comes_first():
    matcher = Matcher.empty()
    matcher.add("truth", truth(START_NS, 1.0))
    matcher.add("loc", loc(START_NS, estimate("physics", 0.0, 500.0, 1000.0)))
    matcher.add("loc.west", loc(START_NS + 500_000_000, estimate("physics", 0.0, 0.0, 1000.0)))
    matcher.add("truth", truth(START_NS + 500_000_000, 0.3))
    matcher.add("loc", loc(START_NS + 10**9, estimate("physics", 0.0, 0.0, 1000.0)))  # its truth never comes
    matcher.add("truth", {"t_ns": START_NS, "lat": 45.0, "lon": 7.5})  # an older daemon's truth: no window
    matcher.add("status", {"t_ns": START_NS})
    assert matcher.matched == 2
    assert [s.window for s in matcher.scored] == ["full", "key-edge"]
    assert [round(s.error_m) for s in matcher.scored] == [500, 0]
    table = format_table(summarize(matcher.scored))
    assert table.splitlines()[1].split()[:3] == ["physics", "full", "1"]
    assert table.splitlines()[2].split()[:3] == ["physics", "key-edge", "1"]


def test_a_band_daemon_s_localizations_meet_the_truth_of_their_own_channel_and_finals_are_left_out():
    matcher = Matcher.empty()
    for channel, east, keyed in (("145.5", 0.0, 1.0), ("145.525", 20_000.0, 0.4)):
        matcher.add("truth", {**truth(START_NS, keyed, east_m=east), "transmitter": 0, "channel": channel,
                              "channel_hz": float(channel) * 1e6})
    # A second transmitter on 145.525, keyed for less of the window: the one keyed longest is the truth.
    matcher.add("truth", {**truth(START_NS, 0.1, east_m=-50_000.0), "transmitter": 1, "channel": "145.525"})
    on = {"stage": "interim", "emission_id": 3}
    matcher.add("loc.band", {**loc(START_NS, estimate("onnx", 20_100.0, 0.0, 1000.0)), **on, "channel": "145.525"})
    matcher.add("loc.band", {**loc(START_NS, estimate("onnx", 300.0, 0.0, 1000.0)), **on, "channel": "145.5"})
    final = {**loc(START_NS, estimate("onnx", 0.0, 0.0, 1000.0)), "stage": "final", "emission_id": 3, "channel": "145.5"}
    matcher.add("loc.band", final)
    assert matcher.matched == 2 and not matcher.waiting
    assert [(round(s.error_m), s.window) for s in matcher.scored] == [(100, "key-edge"), (300, "full")]


@pytest.mark.parametrize("topic, msg", [
    ("truth", {**truth(START_NS, 1.0), "channel": ["a"]}),
    ("truth", {**truth(START_NS, 1.0), "window_start_ns": "soon"}),
    ("loc", {**loc(START_NS, estimate("onnx", 0.0, 0.0, 1.0)), "t_start_ns": None}),
    ("loc", {**loc(START_NS, estimate("onnx", 0.0, 0.0, 1.0)), "lat": "north"}),
])
def test_a_malformed_message_is_counted_and_skipped_and_the_rest_still_scores(topic, msg):
    matcher = Matcher.empty()
    matcher.add("truth", truth(START_NS, 1.0))
    matcher.add(topic, msg)
    matcher.add("loc", loc(START_NS, estimate("onnx", 0.0, 0.0, 1000.0)))
    matcher.add("truth", truth(START_NS + 500_000_000, 1.0))
    matcher.add("loc", loc(START_NS + 500_000_000, estimate("onnx", 0.0, 0.0, 1000.0)))
    assert matcher.malformed == 1 and matcher.matched >= 1 and len(matcher.scored) == matcher.matched


def test_nothing_to_score_is_an_error_naming_the_endpoint(capsys):
    rc = cli.main(["score-live", "tcp://127.0.0.1:9", "--duration", "0.3"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "tcp://127.0.0.1:9: nothing to score after 0.3 s (0 localizations, 0 truth messages)" in err


def test_duration_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        cli.main(["score-live", "--duration", "0"])
    assert "--duration: expected seconds > 0, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_a_live_run_with_push_to_talk_and_bursts_scores_full_and_key_edge_windows(tmp_path, capsys):
    """The simulated default network with short push-to-talk periods, some DMR and packet traffic and jittered
    host stamps: the daemon still aligns its windows (most of the run's windows are localized and matched), and
    score-live reports full and key-edge windows for both estimators with plausible errors and coverage."""
    overrides = {
        "receivers": reproducible_receivers(),
        "simulator": {"key_up_mean_s": 4.0, "key_down_mean_s": 1.0, "traffic_voice_weight": 0.8, "traffic_dmr_weight": 0.1,
                      "traffic_packet_weight": 0.1, "clock_jitter_ms": 1.0, "tx_power_min_dbm": 40.0},
    }
    duration_s = 30.0
    report = tmp_path / "score.json"
    with running_daemon(tmp_path, overrides=overrides) as d:
        rc = cli.main(["score-live", d.pub_endpoint, "--duration", str(duration_s), "--json", str(report)])
    out = capsys.readouterr().out
    print(out)
    assert rc == 0
    result = json.loads(report.read_text())
    assert result["messages"]["truth"] >= 0.8 * duration_s / 0.5  # one truth per window: windows were aligned
    assert set(result["estimators"]) == {"onnx", "physics"}
    for name, classes in result["estimators"].items():
        assert {"full", "key-edge"} <= set(classes), f"{name}: classes {sorted(classes)}"
        full = classes["full"]
        assert full["n"] >= 8
        # The default network spans about 150 km: a median error of half that would mean the truth is not matched.
        assert 0 < full["median_error_m"] < 60_000, f"{name}: full windows' median error {full['median_error_m']:.0f} m"
        assert full["cov95"] >= 0.6, f"{name}: cov95 {full['cov95']:.2f} on full windows"
        for stats in classes.values():
            assert 0.0 <= stats["cov68"] <= stats["cov95"] <= 1.0
            assert np.isfinite(stats["median_error_m"]) and stats["p90_error_m"] >= stats["median_error_m"]
    assert "key-edge" in out and "full" in out
