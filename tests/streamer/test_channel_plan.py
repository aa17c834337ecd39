"""The channel plan: ``[[channels]]``, ``[band]`` and the one-channel form, their errors, and the coverage report."""

from __future__ import annotations

import dataclasses

import pytest

from streamer import cli
from streamer.config import MAX_CHANNELS, ChannelConfig, channel_name, from_dict
from streamer.core.errors import ConfigError
from streamer.daemon.coverage import channel_coverage, channel_in_band, coverage_verdict
from tests.helpers.verdicts import (
    RX,
    assert_both_refuse,
    merged,
    toml_text,
    write_config,
)

ZMQ_RX = {"id": "edge1", "kind": "zmq", "lat": 45.0, "lon": 7.0, "endpoint": "tcp://127.0.0.1:5599"}

BAND_8 = {"start_hz": 145_456_250.0, "stop_hz": 145_543_750.0, "spacing_hz": 12_500.0}


def test_without_a_plan_the_target_frequency_is_the_one_channel():
    cfg = from_dict({"network": {"target_freq_hz": 433.92e6, "channel_bandwidth_hz": 25_000.0}})
    assert not cfg.has_channel_plan()
    assert cfg.channel_plan() == (ChannelConfig("433.92", 433.92e6, 25_000.0),)


def test_channels_tables_keep_their_order_and_take_the_network_bandwidth_when_unset():
    cfg = from_dict({"network": {"channel_bandwidth_hz": 6_250.0},
                     "channels": [{"name": "calling", "centre_hz": 145.5e6},
                                  {"name": "repeater-in", "centre_hz": 145.0e6, "bandwidth_hz": 25_000.0}]})
    assert cfg.has_channel_plan()
    assert cfg.channel_plan() == (ChannelConfig("calling", 145.5e6, 6_250.0), ChannelConfig("repeater-in", 145.0e6, 25_000.0))


def test_band_expands_from_start_to_stop_inclusive_named_by_centre_in_mhz():
    plan = from_dict({"band": BAND_8}).channel_plan()
    assert [ch.name for ch in plan] == ["145.45625", "145.46875", "145.48125", "145.49375",
                                        "145.50625", "145.51875", "145.53125", "145.54375"]
    assert [ch.centre_hz for ch in plan] == pytest.approx([145_456_250.0 + 12_500.0 * k for k in range(8)], abs=1e-6)
    assert {ch.bandwidth_hz for ch in plan} == {12_500.0}  # unset: the spacing


def test_band_bandwidth_below_the_spacing_is_kept_and_a_stop_between_centres_is_not_reached():
    plan = from_dict({"band": {"start_hz": 462.5625e6, "stop_hz": 462.72e6, "spacing_hz": 25_000.0,
                               "bandwidth_hz": 12_500.0}}).channel_plan()
    assert [ch.name for ch in plan] == ["462.5625", "462.5875", "462.6125", "462.6375", "462.6625", "462.6875", "462.7125"]
    assert {ch.bandwidth_hz for ch in plan} == {12_500.0}


def test_channel_names_drop_trailing_zeros():
    assert channel_name(446e6) == "446"
    assert channel_name(446_006_250.0) == "446.00625"


def test_a_band_of_exactly_the_maximum_is_accepted():
    band = {"start_hz": 100e6, "stop_hz": 100e6 + (MAX_CHANNELS - 1) * 1_000.0, "spacing_hz": 1_000.0}
    assert len(from_dict({"band": band}).channel_plan()) == MAX_CHANNELS


@pytest.mark.parametrize("doc, fragment", [
    pytest.param({"channels": [{"name": "a", "centre_hz": 145.5e6}], "band": BAND_8},
                 "x.toml: band: given together with [[channels]]; expected one channel plan", id="both"),
    pytest.param({"channels": [{"name": "a", "centre_hz": 145.5e6}, {"name": "a", "centre_hz": 145.6e6}]},
                 "x.toml: channels[1].name: duplicate channel name 'a' (also channel 0); expected unique names", id="dup-name"),
    pytest.param({"channels": [{"name": "a", "centre_hz": 145.5e6}, {"name": "b", "centre_hz": 145.5e6}]},
                 "x.toml: channels[1].centre_hz: duplicate centre 145500000.0 Hz (also channel 0); expected distinct",
                 id="dup-centre"),
    pytest.param({"channels": [{"name": "a", "centre_hz": 0.0}]},
                 "x.toml: channels[0].centre_hz: expected a frequency > 0 Hz, got 0.0", id="centre-zero"),
    pytest.param({"channels": [{"name": "a", "centre_hz": float("inf")}]},
                 "x.toml: channels[0].centre_hz: expected a finite number, got inf", id="centre-inf"),
    pytest.param({"channels": [{"name": "a", "centre_hz": 145.5e6, "bandwidth_hz": -1.0}]},
                 "x.toml: channels[0].bandwidth_hz: expected > 0 Hz, got -1.0", id="bandwidth-negative"),
    pytest.param({"channels": [{"name": " ", "centre_hz": 145.5e6}]},
                 "x.toml: channels[0].name: expected a non-empty name, got ' '", id="name-blank"),
    pytest.param({"channels": [{"centre_hz": 145.5e6}]}, "x.toml: channels[0].name: required key is missing", id="name-missing"),
    pytest.param({"channels": [{"name": "a", "centre_hz": 145.5e6, "width_hz": 1.0}]},
                 "x.toml: channels[0].width_hz: unknown key; expected one of: bandwidth_hz, centre_hz, name", id="unknown-key"),
    pytest.param({"channels": {"name": "a"}}, "x.toml: channels: expected an array, got dict", id="not-an-array"),
    pytest.param({"band": {**BAND_8, "stop_hz": 145.0e6}},
                 "x.toml: band.stop_hz: expected a frequency above band.start_hz (145456250.0 Hz), got 145000000.0",
                 id="stop-below-start"),
    pytest.param({"band": {**BAND_8, "start_hz": -5.0}}, "x.toml: band.start_hz: expected a frequency > 0 Hz", id="start-negative"),
    pytest.param({"band": {**BAND_8, "spacing_hz": 0.5}},
                 "x.toml: band.spacing_hz: expected >= 1 Hz (band channels are named by their centre to the Hz), got 0.5",
                 id="spacing-tiny"),
    pytest.param({"band": {**BAND_8, "bandwidth_hz": 25_000.0}},
                 "x.toml: band.bandwidth_hz: expected > 0 Hz and at most band.spacing_hz (12500 Hz), got 25000.0",
                 id="bandwidth-over-spacing"),
    pytest.param({"band": {"start_hz": 100e6, "stop_hz": 200e6, "spacing_hz": 12_500.0}},
                 f"x.toml: band.spacing_hz: expected a spacing that gives at most {MAX_CHANNELS} channels from band.start_hz "
                 "to band.stop_hz (this one gives 8001), got 12500.0", id="too-many"),
    pytest.param({"band": {"start_hz": 100e6, "spacing_hz": 12_500.0}}, "x.toml: band.stop_hz: required key is missing",
                 id="stop-missing"),
    pytest.param({"simulator": {"transmitters": 0}}, "x.toml: simulator: transmitters: expected 1..64, got 0",
                 id="transmitters-zero"),
])
def test_a_bad_plan_is_refused_naming_the_key_and_the_expectation(doc, fragment):
    with pytest.raises(ConfigError) as info:
        from_dict(doc, source="x.toml")
    assert fragment in str(info.value)


def test_too_many_channels_tables_are_refused():
    tables = [{"name": f"c{k}", "centre_hz": 100e6 + 1e3 * k} for k in range(MAX_CHANNELS + 1)]
    with pytest.raises(ConfigError, match=rf"channels: expected at most {MAX_CHANNELS} \[\[channels\]\] tables, got 1025"):
        from_dict({"channels": tables}, source="x.toml")


# --- coverage: which receivers' bands hold which channels (heimdall check, and the verdict check and run share) ---

NARROW_RX = {**RX, "id": "c", "lat": 45.1, "sample_rate_hz": 96_000.0, "center_freq_hz": 145.49375e6}
RAFT_8 = {"start_hz": 145.45e6, "stop_hz": 145.5375e6, "spacing_hz": 12_500.0}  # 145.45 .. 145.5375 MHz


def channels_toml(doc: dict, channels: list[dict]) -> str:
    """``doc`` as TOML with ``[[channels]]`` tables appended (the shared writer knows only ``[[receivers]]``)."""
    tables = "".join("[[channels]]\n" + "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in ch.items()) for ch in channels)
    return toml_text(doc) + tables


def test_channel_in_band_needs_the_whole_channel_inside_half_the_rate():
    assert channel_in_band(145.56375e6, 12_500.0, 145.45e6, 240_000.0)  # upper edge exactly at 145.57 MHz
    assert not channel_in_band(145.56376e6, 12_500.0, 145.45e6, 240_000.0)  # 10 mHz past it
    assert channel_in_band(145.33625e6, 12_500.0, 145.45e6, 240_000.0)  # lower edge exactly at 145.33 MHz
    assert not channel_in_band(145.45e6, 250_000.0, 145.45e6, 240_000.0)  # wider than the band itself


def test_coverage_lists_covering_masked_and_unknown_receivers_per_channel():
    cfg = from_dict(merged({"band": RAFT_8, "receivers": [RX, {**RX, "id": "b", "lat": 45.2}, NARROW_RX,
                                                          {**ZMQ_RX, "lat": 45.3}]}), source="x.toml")
    coverage = channel_coverage(cfg)
    assert [c.channel.name for c in coverage] == ["145.45", "145.4625", "145.475", "145.4875", "145.5", "145.5125",
                                                  "145.525", "145.5375"]
    # c receives 145.44575 .. 145.54175 MHz: the first and the last channel stick out of it
    assert [c.masked_for for c in coverage] == [("c",), (), (), (), (), (), (), ("c",)]
    assert coverage[0].covered_by == ("a", "b") and coverage[1].covered_by == ("a", "b", "c")
    assert {c.unknown for c in coverage} == {("edge1",)}
    assert coverage_verdict(cfg, coverage) == [
        ("x.toml: receivers[2] (id 'c', kind 'simulator'): channels outside its band, 2 of 8 (145.45, 145.5375): "
         "masked for this receiver")]


def test_receivers_whose_band_only_the_stream_tells_count_towards_min_receivers():
    doc = merged({"band": {"start_hz": 146e6, "stop_hz": 146.0125e6, "spacing_hz": 12_500.0},
                  "pipeline": {"min_receivers": 1}, "receivers": [RX, ZMQ_RX]})
    cfg = from_dict(doc, source="x.toml")
    assert coverage_verdict(cfg, channel_coverage(cfg)) == [
        ("x.toml: receivers[0] (id 'a', kind 'simulator'): channels outside its band, 2 of 2 (146, 146.0125): "
         "masked for this receiver")]
    with pytest.raises(ConfigError, match=r"band: channel '146' .* lies inside the band of 0 receivers \(none\) \(and 1 "
                                          r"more channel\); expected at least pipeline.min_receivers = 2"):
        coverage_verdict(dataclasses.replace(cfg, pipeline=dataclasses.replace(cfg.pipeline, min_receivers=2)),
                         channel_coverage(cfg))


def test_check_prints_which_receivers_cover_which_channels(tmp_path, capsys):
    doc = merged({"band": RAFT_8, "pipeline": {"min_receivers": 2},
                  "receivers": [RX, {**RX, "id": "b", "lat": 45.2}, NARROW_RX]})
    path = write_config(tmp_path, doc)
    assert cli.main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    coverage = [line for line in out if line.startswith(("channel ", "coverage: "))]
    assert coverage == [
        "channel 145.45: covered by 2 (a, b); masked for 1 (c)",
        "channel 145.4625 .. 145.525 (6): covered by 3 (a, b, c)",
        "channel 145.5375: covered by 2 (a, b); masked for 1 (c)",
        "coverage: 8 channels x 3 receivers; masked (channel, receiver) pairs: 2",
    ]
    assert f"warning: {path}: receivers[2] (id 'c', kind 'simulator'): channels outside its band, 2 of 8 " \
           "(145.45, 145.5375): masked for this receiver" in out


def test_check_without_a_plan_reports_the_target_channel(tmp_path, capsys):
    assert cli.main(["check", "-c", str(write_config(tmp_path, merged({})))]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "channel 145.5: covered by 1 (a)" in out
    assert "coverage: 1 channels x 1 receivers; masked (channel, receiver) pairs: 0" in out


@pytest.mark.parametrize("overrides, channels, fragment", [
    pytest.param({"band": RAFT_8}, [{"name": "a", "centre_hz": 145.5e6}],
                 "band: given together with [[channels]]; expected one channel plan", id="both"),
    pytest.param({}, [{"name": "in", "centre_hz": 145.5e6}, {"name": "far", "centre_hz": 146.5e6}],
                 "channels[1]: channel 'far' (146500000 Hz ± 6250 Hz) lies inside the band of 0 receivers (none); "
                 "expected at least pipeline.min_receivers = 1", id="outside"),
    pytest.param({}, [{"name": "in", "centre_hz": 145.5e6}, {"name": "in", "centre_hz": 145.4e6}],
                 "channels[1].name: duplicate channel name 'in' (also channel 0); expected unique names", id="dup"),
])
def test_check_and_run_refuse_a_bad_channels_table_alike(tmp_path, capsys, monkeypatch, overrides, channels, fragment):
    doc = merged(overrides)
    path = tmp_path / "site.toml"
    path.write_text(channels_toml(doc, channels))
    assert_both_refuse(path, capsys, monkeypatch, fragment)


def test_the_band_example_passes_the_start_up_checks_with_its_narrow_receiver_warned():
    from pathlib import Path

    from receivers.simulator import transmitter_channels
    from streamer.config import load
    from streamer.daemon.preflight import preflight

    cfg = load(Path(__file__).resolve().parents[2] / "config" / "examples" / "band-2m.toml")
    assert len(cfg.channel_plan()) == 8 and cfg.channel_plan()[4].name == "145.5"
    assert len({ch.name for ch in transmitter_channels(cfg)}) == cfg.simulator.transmitters == 5
    warnings = [note for note in preflight(cfg) if "masked" in note]
    assert len(warnings) == 1 and "(id 'milano', kind 'simulator'): channels outside its band, 1 of 8 (145.45)" in warnings[0]


def test_overlapping_channels_tables_are_a_warning_naming_both():
    from streamer.daemon.preflight import preflight

    cfg = from_dict(merged({"channels": [{"name": "wide", "centre_hz": 145.5e6, "bandwidth_hz": 25_000.0},
                                         {"name": "low", "centre_hz": 145.48e6},
                                         {"name": "high", "centre_hz": 145.52e6}]}), source="x.toml")
    # wide spans 145.4875 .. 145.5125 MHz; low reaches up to 145.48625, high down from 145.51375
    assert not any("overlap" in note for note in preflight(cfg))
    cfg = dataclasses.replace(cfg, channels=(*cfg.channels[:2], ChannelConfig("high", 145.51e6, None)))
    assert [note for note in preflight(cfg) if "overlap" in note] == [
        ("x.toml: channels: 1 pair of neighbouring channels overlap (channels[0] 'wide' and channels[2] 'high' by "
         "8750 Hz): a transmission in the overlap shows in both")]  # 145.5125 - (145.51 - 0.00625) MHz
