"""``heimdall evaluate-band``: simulated band traffic through the band pipeline, scored against the simulator's truth.

The scoring is checked on hand-made truth and emissions (a missed transmission, a false emission, the slack), the
noise-only world on its truth (nothing keys), the refusals on configs it cannot run, and the whole command on a few
seconds of ``config/examples/band-2m.toml`` chosen so that a loud transmission lies inside them."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest

from receivers.simulator import SimulatedWorld
from streamer.cli import main
from streamer.config import load
from streamer.core.geodesy import enu_to_geodetic
from streamer.tools import evaluate_band as eb

T0_NS = eb.DEFAULT_START_NS
S = 10**9


def _span(channel, start_s, end_s, snr_db=(20.0, 20.0, 20.0, 0.0)):
    return eb.KeyedSpan(0, channel, T0_NS + int(start_s * S), T0_NS + int(end_s * S), tuple(snr_db))


def _end(channel, start_s, end_s):
    return {"channel": channel, "start_ns": T0_NS + int(start_s * S), "end_ns": T0_NS + int(end_s * S)}


def test_detection_counts_a_missed_transmission_and_a_false_emission_and_ignores_what_the_gate_leaves_out():
    spans = [
        _span("A", 2.0, 4.0),  # found: an emission on A overlaps it
        _span("B", 5.0, 6.0),  # missed: the emission on B is elsewhere
        _span("A", 7.0, 7.3),  # shorter than 0.5 s: not in the gate
        _span("B", 8.0, 9.0, snr_db=(20.0, 20.0, 9.0, 0.0)),  # 10 dB at two receivers only: not in the gate
        _span("A", 0.2, 1.5),  # keyed in the warm-up: not in the gate
    ]
    busy = {"A": [(s.start_ns, s.end_ns) for s in spans if s.channel == "A"],
            "B": [(s.start_ns, s.end_ns) for s in spans if s.channel == "B"]}
    ends = [_end("A", 2.01, 3.99), _end("B", 8.1, 8.9), _end("B", 12.0, 12.5),
            _end("A", 4.02, 4.5)]  # 20 ms after A's first transmission ended: within the slack, not false
    det = eb.score_detection(spans, busy, ends, start_ns=T0_NS, end_ns=T0_NS + 3600 * S, n_channels=2)
    assert (det["eligible"], det["found"]) == (2, 1)
    assert det["found_share"] == 0.5
    assert [m["channel"] for m in det["missed"]] == ["B"]
    assert det["false"] == [{"channel": "B", "start_ns": T0_NS + 12 * S, "end_ns": T0_NS + 12 * S + S // 2}]
    assert det["channel_hours"] == pytest.approx(2.0)
    assert det["false_per_channel_hour"] == pytest.approx(0.5)


def test_bursts_closer_than_the_hangover_are_one_transmission():
    assert eb.merge_bursts([(0, 27), (60, 87), (120, 147)], max_gap_ns=100) == [(0, 147)]
    assert eb.merge_bursts([(0, 27), (200, 227)], max_gap_ns=100) == [(0, 27), (200, 227)]


def test_a_span_only_a_collisions_second_transmitter_keyed_in_is_scored_against_that_one():
    world = SimulatedWorld(eb.offline_config(load(eb.DEFAULT_CONFIG), start_ns=T0_NS, seconds=60.0))
    # band-2m, seed 1: transmitter 0 keys on 145.45 until 25.7 s; a second transmitter there is on from 25.1 s to 33.5 s.
    (k,) = [k for k, ch in enumerate(world.transmitter_channels) if ch.name == "145.45"]
    start, end = T0_NS + 26 * S, T0_NS + 26 * S + S // 2
    assert world.truth_over(start, end, k).keyed_fraction == 0
    (other,) = world.second_transmitters(start, end, k)
    truth = eb._truth_wire(world, {"t_start_ns": start, "t_end_ns": end, "channel": "145.45"})
    assert truth["collision"] and truth["keyed_fraction"] == pytest.approx(1.0, abs=1e-8)
    lat, lon, _ = enu_to_geodetic(*other.position_en_m, 0.0, world.origin)
    assert (truth["lat"], truth["lon"]) == pytest.approx((float(lat), float(lon)))
    keyed = eb._truth_wire(world, {"t_start_ns": T0_NS + 25 * S, "t_end_ns": T0_NS + 25 * S + S // 2, "channel": "145.45"})
    wanted = world.truth_over(T0_NS + 25 * S, T0_NS + 25 * S + S // 2 + 1, k)
    assert (keyed["lat"], keyed["lon"], keyed["keyed_fraction"]) == (wanted.lat, wanted.lon, wanted.keyed_fraction)
    unused = sorted({ch.name for ch in world.config.channel_plan()} - {ch.name for ch in world.transmitter_channels})
    assert unused, "band-2m has more channels than transmitters"
    nothing = eb._truth_wire(world, {"t_start_ns": start, "t_end_ns": end, "channel": unused[0]})
    assert nothing["keyed_fraction"] == 0.0 and not nothing["collision"]


def test_noise_only_world_never_keys():
    cfg = eb.offline_config(load(eb.DEFAULT_CONFIG), start_ns=T0_NS, seconds=3600.0, noise_only=True)
    world = SimulatedWorld(cfg)
    assert len(world.transmitter_channels) == 5
    assert all(world.transmissions(T0_NS, T0_NS + 3600 * S, k) == [] for k in range(5))
    traffic = SimulatedWorld(eb.offline_config(load(eb.DEFAULT_CONFIG), start_ns=T0_NS, seconds=60.0))
    assert any(traffic.transmissions(T0_NS, T0_NS + 60 * S, k) for k in range(5)), "the same world with traffic keys"


def test_configs_it_cannot_score_are_refused_naming_the_receiver_or_the_plan():
    cfg = load(eb.DEFAULT_CONFIG)
    receivers = list(cfg.receivers)
    receivers[2] = dataclasses.replace(receivers[2], kind="soapy")
    with pytest.raises(eb.EvaluateBandError, match=r"receivers\[2\] \(id 'torino', kind 'soapy'\)"):
        eb.offline_config(dataclasses.replace(cfg, receivers=tuple(receivers)), start_ns=T0_NS, seconds=1.0)
    with pytest.raises(eb.EvaluateBandError, match="expected a channel plan"):
        eb.offline_config(load(), start_ns=T0_NS, seconds=1.0)


def test_minutes_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate-band", "--minutes", "0"])
    assert exc.value.code == 2
    assert "--minutes: expected minutes > 0, got 0" in capsys.readouterr().err


def _loud_transmission_start(cfg, seconds):
    """A window-aligned start from which a transmission of >= 0.5 s, 20 dB at >= 3 receivers, lies inside the
    stream after the warm-up; and that transmission."""
    world = SimulatedWorld(eb.offline_config(cfg, start_ns=T0_NS, seconds=600.0))
    spans = eb.keyed_spans(world, cfg, T0_NS, T0_NS + 600 * S, hangover_ns=S // 10)
    for span in spans:
        start = (span.start_ns - int((eb.WARMUP_S + 0.5) * S)) // (S // 2) * (S // 2)
        if (0.5 <= span.duration_s and span.end_ns <= start + int((seconds - 0.5) * S)
                and span.heard_by(20.0) >= 3 and start >= T0_NS):
            return start, span
    raise AssertionError("no loud transmission short enough in the first 10 minutes of band-2m")


def test_a_few_seconds_of_band_traffic_find_the_loud_transmission_and_print_every_gate(tmp_path, capsys):
    seconds = 5.0
    start, _span_found = _loud_transmission_start(load(eb.DEFAULT_CONFIG), seconds)
    out, archive = tmp_path / "band.json", tmp_path / "band.jsonl"
    assert main(["evaluate-band", "--minutes", str(seconds / 60), "--start-ns", str(start), "--json", str(out),
                 "--archive", str(archive)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    det = result["detection"]
    assert det["eligible"] >= 1 and det["found"] == det["eligible"] and det["missed"] == []
    assert result["localizations"]["final"] >= 1 and result["localizations"]["interim"] >= 1
    gate_names = [g["gate"] for g in result["gates"]]
    assert gate_names[0].startswith("found: transmissions >= 0.5 s at >= 10 dB at >= 3 receivers")
    assert any(name.startswith("cov95, interim onnx") for name in gate_names)
    assert any(name.startswith("cov95, final physics") for name in gate_names)
    assert any(name.startswith("final no worse than the best interim, onnx") for name in gate_names)
    assert {g["verdict"] for g in result["gates"]} <= {"met", "not met", "n/a", "see --noise-only"}
    assert result["gates"][0]["verdict"] == "met"
    for g in result["gates"]:
        assert g["gate"] in printed
    assert "interim estimates:" in printed and "final estimates:" in printed
    assert printed.splitlines()[0].startswith(f"{seconds:g} s of stream")

    # The archive: every message, each localization after its truth, which calibrate-ellipses matches exactly.
    lines = [json.loads(line) for line in archive.read_text().splitlines()]
    locs = [(i, m) for i, m in enumerate(lines) if m["topic"].startswith("loc")]
    assert len(locs) == result["localizations"]["interim"] + result["localizations"]["final"]
    assert sum(m["topic"].startswith("emission") for m in lines) >= 2
    truths = []
    for i, loc in locs:
        truth = lines[i - 1]
        if truth["topic"] == "truth":
            assert truth["channel"] == loc["channel"] and truth["t_ns"] == (loc["t_start_ns"] + loc["t_end_ns"]) // 2
            truths.append(truth)
    assert len(truths) >= result["accuracy"]["pooled"]["interim"]["onnx"]["full"]["n"]
    clean = [t for t in truths if not t["collision"]]
    assert main(["calibrate-ellipses", "-c", str(eb.DEFAULT_CONFIG), str(archive), "--max-gap-s", "0.001", "--json"]) in (0, 1)
    fits = json.loads(capsys.readouterr().out)["estimators"]
    # Interim and final localizations are fitted apart (a final spans its emission: its own factor).
    n = {name: fits.get(name, {}).get("n", 0) for name in ("onnx", "onnx final", "physics", "physics final")}
    assert n["onnx"] + n["onnx final"] == n["physics"] + n["physics final"] == len(clean)


def test_final_against_interim_compares_with_the_smallest_error_and_with_the_most_confident_interim():
    from streamer.tools.evaluate_band import _final_vs_best, ellipse_area_m2

    errors = {  # (error m, 95 % ellipse area m^2)
        (1, "onnx"): {"final": [(100.0, 5.0)], "interim": [(80.0, 9.0), (150.0, 2.0)]},   # confident one: 150 m
        (2, "onnx"): {"final": [(300.0, 5.0)], "interim": [(200.0, 1.0), (400.0, 3.0)]},  # confident one: 200 m
        (3, "onnx"): {"final": [], "interim": [(10.0, 1.0)]},  # no final: left out
    }
    s = _final_vs_best(errors)["onnx"]
    assert s["n"] == 2
    assert s["share_no_worse"] == 0.0  # 100 > 80, 300 > 200
    assert s["share_no_worse_than_confident"] == 0.5  # 100 <= 150, 300 > 200
    assert (s["median_final_m"], s["median_best_interim_m"], s["median_confident_interim_m"]) == (200.0, 140.0, 175.0)
    # a 3 x 2 km ellipse (standard deviations) at the Gaussian 95 % scale, and at a published scale of 2
    cov = [[9e6, 0.0], [0.0, 4e6]]
    assert ellipse_area_m2({"cov_en_m2": cov}, float("nan")) == pytest.approx(math.pi * 6e6 * -2 * math.log(0.05))
    assert ellipse_area_m2({"cov_en_m2": cov}, 4.0) == pytest.approx(math.pi * 6e6 * 4.0)


def test_gated_rows_are_also_split_by_traffic_on_an_adjacent_channel():
    world = SimulatedWorld(eb.offline_config(load(eb.DEFAULT_CONFIG), start_ns=T0_NS, seconds=300.0))
    adjacent = eb.adjacent_channels(world.config.channel_plan())
    busy = eb.busy_spans(world, T0_NS, T0_NS + 300 * S)
    found = {}
    for k, channel in enumerate(world.transmitter_channels):
        for start in range(T0_NS, T0_NS + 300 * S, S // 2):
            end = start + S // 2
            truth = world.truth_over(start, end + 1, k)
            if truth.keyed_fraction < 1 or truth.collision:
                continue
            keyed = any(a <= end and start <= b for name in adjacent[channel.name] for a, b in busy.get(name, ()))
            found.setdefault(keyed, (channel.name, start, end, truth))
    assert set(found) == {False, True}, "band-2m keys a channel both beside a busy neighbour and beside idle ones"
    locs = [{"stage": "interim", "channel": name, "emission_id": i, "t_start_ns": start, "t_end_ns": end,
             "estimator": "onnx", "lat": truth.lat, "lon": truth.lon, "cov_en_m2": [[1e6, 0.0], [0.0, 1e6]],
             "ellipses": [{"p": 0.68, "scale": 1.515}, {"p": 0.95, "scale": 2.448}]}
            for i, (name, start, end, truth) in enumerate(found.values())]
    split = eb.score_accuracy(world, locs, adjacent, busy)["by_adjacent"]["interim"]["onnx"]
    assert (split["adj-idle"]["n"], split["adj-keyed"]["n"]) == (1, 1)
    assert eb.score_accuracy(world, locs)["by_adjacent"]["interim"] == {}  # no split without the plan's neighbours


def test_a_plan_heimdall_run_would_refuse_is_refused_here_too(tmp_path, capsys):
    text = (eb.DEFAULT_CONFIG.read_text().replace("stop_hz = 145.5375e6", "stop_hz = 145.6e6"))
    assert "stop_hz = 145.6e6" in text
    path = tmp_path / "wide.toml"
    path.write_text(text)
    assert main(["check", "-c", str(path)]) == 2
    refused = capsys.readouterr().err
    assert main(["evaluate-band", "-c", str(path), "--minutes", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "channel '145.575'" in err and "expected at least pipeline.min_receivers = 3" in err
    assert err.split("error: ", 1)[1] == refused.split("error: ", 1)[1]


def test_a_plan_wider_than_one_receivers_band_raises_no_false_emission(tmp_path, capsys):
    """band-25k: milano (96 kS/s) covers three of the seven channels; the transmitters on the others must not reach
    its samples folded onto the channels it does cover (the simulator filters them out, as a device does)."""
    config = eb.DEFAULT_CONFIG.parent / "band-25k.toml"
    assert main(["check", "-c", str(config)]) == 0
    assert "milano" in capsys.readouterr().out
    result = eb.evaluate(load(config), seconds=30.0)
    assert result["detection"]["emissions"] >= 3
    assert result["detection"]["false_emissions"] == 0, result["detection"]["false"]


def test_a_dc_offset_at_one_receiver_holds_its_channel_for_lone_carrier_s_not_for_ever(tmp_path, caplog):
    """milano is tuned to 145.5 MHz, a channel's centre: with a DC offset 20 dB over its noise there, it alone hears a
    carrier on that channel. The tracker leaves it out of the channel after ``pipeline.lone_carrier_s`` (10 s by
    default), says so, and the channel's emissions come back."""
    text = eb.DEFAULT_CONFIG.read_text().replace("center_freq_hz = 145.5e6", "center_freq_hz = 145.5e6\ndc_offset_db = 20.0")
    path = tmp_path / "dc.toml"
    path.write_text(text)
    cfg = load(path)
    assert cfg.receiver("milano").options.dc_offset_db == 20.0 and cfg.pipeline.lone_carrier_s == 10.0
    with caplog.at_level("WARNING"):
        result = eb.evaluate(cfg, seconds=40.0)
    (false,) = result["detection"]["false"]
    assert false["channel"] == "145.5"
    # 10 s of frames in which milano alone hears it (others' frames at or above the off threshold pause the count);
    # without leaving it out the emission would last the whole 40 s.
    assert 10.0 <= (false["end_ns"] - false["start_ns"]) / 1e9 <= 20.0
    assert "receiver milano has heard a carrier on channel 145.5 that no other receiver hears for 10 s" in caplog.text


def test_an_emission_that_runs_two_transmissions_together_is_counted_as_merged():
    busy = {"A": [(T0_NS + 2 * S, T0_NS + 3 * S), (T0_NS + 4 * S, T0_NS + 5 * S),  # 1 s apart
                  (T0_NS + 10 * S, T0_NS + 12 * S), (T0_NS + 11 * S, T0_NS + 13 * S),  # a collision: overlapping
                  (T0_NS + 20 * S, T0_NS + 20 * S + 27_500_000), (T0_NS + 20 * S + 60_000_000, T0_NS + 21 * S),  # DMR
                  (T0_NS + 30 * S, T0_NS + 30 * S + S // 5), (T0_NS + 30 * S + 330_000_000, T0_NS + 31 * S)]}  # packets
    ends = [_end("A", 2.0, 5.0), _end("A", 10.0, 13.0), _end("A", 20.0, 21.0), _end("A", 30.0, 31.0)]
    det = eb.score_detection([], busy, ends, start_ns=T0_NS, end_ns=T0_NS + 60 * S, n_channels=1, hangover_ns=S // 10)
    assert det["merged_emissions"] == 1
    assert det["merged"] == [{"channel": "A", "start_ns": T0_NS + 2 * S, "end_ns": T0_NS + 5 * S}]
    split = eb.score_detection([], busy, [_end("A", 2.0, 3.0), _end("A", 4.0, 5.0)], start_ns=T0_NS,
                               end_ns=T0_NS + 60 * S, n_channels=1, hangover_ns=S // 10)
    assert split["merged_emissions"] == 0


def _result(seed, *, n, cov95, found, eligible, false=0, hours=1.0, noise_only=False):
    cell = {"full": {"n": n, "median_error_m": 1.0, "p90_error_m": 2.0, "cov68": 0.6, "cov95": cov95}}
    return {"seed": seed, "stream_s": 600.0, "noise_only": noise_only,
            "detection": {"eligible": eligible, "found": found, "found_share": found / max(eligible, 1),
                          "false_emissions": false, "channel_hours": hours, "merged_emissions": 0},
            "accuracy": {"pooled": {"interim": {"onnx": cell}, "final": {"onnx": cell}},
                         "final_vs_best_interim": {"onnx": {"n": n, "share_no_worse": 0.5,
                                                            "share_no_worse_than_confident": 0.5}}}}


def test_pooled_runs_weigh_each_share_by_its_count_and_keep_traffic_and_noise_apart(tmp_path, capsys):
    pooled = eb.pool([_result(1, n=100, cov95=0.9, found=9, eligible=10), _result(2, n=300, cov95=0.98, found=30, eligible=30)])
    assert pooled["accuracy"]["pooled"]["interim"]["onnx"]["full"] == {"n": 400, "cov68": pytest.approx(0.6),
                                                                       "cov95": pytest.approx(0.96)}
    assert pooled["detection"]["found_share"] == pytest.approx(39 / 40) and pooled["seeds"] == [1, 2]
    verdicts = {g["gate"]: g["verdict"] for g in pooled["gates"]}
    assert verdicts["cov95, interim onnx (n=400)"] == "met"
    assert verdicts["found: transmissions >= 0.5 s at >= 10 dB at >= 3 receivers (n=40)"] == "not met"
    with pytest.raises(eb.EvaluateBandError, match="pooled apart"):
        eb.pool([_result(1, n=1, cov95=1, found=0, eligible=0), _result(2, n=1, cov95=1, found=0, eligible=0, noise_only=True)])

    files = []
    for k, r in enumerate([_result(1, n=10, cov95=0.95, found=1, eligible=1),
                           _result(3, n=0, cov95=math.nan, found=0, eligible=0, false=1, hours=2.0, noise_only=True)]):
        files.append(tmp_path / f"r{k}.json")
        files[-1].write_text(json.dumps(r))
    assert main(["evaluate-band", "--pool", *map(str, files)]) == 0
    printed = capsys.readouterr().out
    assert "band traffic: 1 runs, 10 min of stream, seeds 1" in printed
    assert "noise only: 1 runs, 10 min of stream, seeds 3; found 0 of 0; false emissions 1 in 2.00 channel-hours" in printed
    assert re.search(r"false emissions per channel-hour \(noise alone\) +0\.500 ", printed)
    assert "nan" not in printed  # the noise-only run has no accuracy rows to print
    for bad in ("[1]", "{", json.dumps({**_result(1, n=1, cov95=1, found=1, eligible=1), "detection": {"found": 1}}),
                json.dumps({**_result(1, n=1, cov95=1, found=1, eligible=1), "accuracy": {"pooled": []}})):
        (tmp_path / "bad.json").write_text(bad)
        assert main(["evaluate-band", "--pool", str(tmp_path / "bad.json")]) == 2
        assert re.search(r"--pool: .*bad.json: not a heimdall evaluate-band --json file", capsys.readouterr().err)


def test_outputs_it_cannot_write_are_refused_before_the_run(tmp_path, capsys):
    assert main(["evaluate-band", "--minutes", "10", "--archive", str(tmp_path)]) == 2
    assert f"--archive: {tmp_path}: cannot write (Is a directory)" in capsys.readouterr().err
    assert main(["evaluate-band", "--minutes", "10", "--json", str(tmp_path / "no" / "r.json")]) == 2
    assert f"--json: {tmp_path / 'no' / 'r.json'}: no such folder {tmp_path / 'no'}" in capsys.readouterr().err
