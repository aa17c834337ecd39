"""The channel plan: ``[[channels]]``, ``[band]`` and the one-channel form, their errors, and the coverage report."""

from __future__ import annotations

import pytest

from streamer.config import MAX_CHANNELS, ChannelConfig, channel_name, from_dict
from streamer.core.errors import ConfigError

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
