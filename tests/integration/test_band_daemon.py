"""End to end, band watch: `heimdall run` on config/examples/band-2m.toml (eight channels, five simulated
transmitters) -> SUB socket -> emissions on the transmitters' channels, each with interim and final localizations,
and the band series on /metrics."""

from __future__ import annotations

import tomllib
import urllib.request
from pathlib import Path

import pytest

from receivers.simulator import SimulatedWorld
from streamer import config as config_mod
from tests.helpers.daemon import (
    START_NS,
    check_localization_schema,
    collect_messages,
    running_daemon,
)

ROOT = Path(__file__).resolve().parents[2]
BAND_CONFIG = ROOT / "config" / "examples" / "band-2m.toml"
#: Seconds of stream listened to: from START_NS the seeded world keys four of the five transmitters in it, one of
#: them for over 5 s (tests/streamer/test_band_pipeline.py checks the emissions against the truth offline).
LISTEN_S = 25.0


def _band_overrides() -> dict:
    """band-2m.toml, its receivers paced in real time from START_NS (the same world every run), on the test's
    ephemeral output endpoint and metrics port."""
    with BAND_CONFIG.open("rb") as f:
        cfg = tomllib.load(f)
    cfg.pop("output", None)
    for rx in cfg["receivers"]:
        rx.update(realtime=True, start_ns=START_NS, duration_s=LISTEN_S + 30.0)
    return cfg


@pytest.mark.slow
def test_band_daemon_publishes_emissions_on_the_transmitters_channels_with_interim_and_final_estimates(tmp_path):
    overrides = _band_overrides()
    with running_daemon(tmp_path, overrides=overrides, start_timeout_s=60.0, stop_timeout_s=10.0) as d:
        got = collect_messages(d.pub_endpoint, n_loc=10**6, timeout_s=LISTEN_S)
        metrics_text = urllib.request.urlopen(d.metrics_url, timeout=5).read().decode()
        written = config_mod.load(str(d.config_path))
    plan = {ch.name: ch.centre_hz for ch in written.channel_plan()}
    on_air = {ch.name for ch in SimulatedWorld(written).transmitter_channels}
    events = got.get("emission.band-2m", [])
    locs = got.get("loc.band-2m", [])
    starts = [e for e in events if e["event"] == "start"]
    ends = [e for e in events if e["event"] == "end"]
    print(f"{len(starts)} starts, {len(ends)} ends on {sorted({e['channel'] for e in events})}; {len(locs)} loc "
          f"({sum(m['stage'] == 'final' for m in locs)} final); transmitters on {sorted(on_air)}")
    assert len(ends) >= 3, f"only {len(ends)} emissions ended in {LISTEN_S} s"
    assert len({e["channel"] for e in events}) >= 2, "emissions on one channel only"
    for event in events:
        assert event["channel"] in on_air, f"an emission on {event['channel']}, where no transmitter keys"
        assert event["channel_hz"] == plan[event["channel"]]
    for msg in locs:
        check_localization_schema(msg)
        assert msg["stage"] in ("interim", "final") and msg["channel_hz"] == plan[msg["channel"]]
    by_id = {}
    for msg in locs:
        by_id.setdefault(msg["emission_id"], []).append(msg)
    started = {e["emission_id"] for e in starts}
    for end in ends:
        mine = by_id.get(end["emission_id"], [])
        finals = [m for m in mine if m["stage"] == "final"]
        assert len(finals) == 1, f"emission {end['emission_id']}: {len(finals)} final estimates"
        assert finals[0]["channel"] == end["channel"]
        assert (finals[0]["t_start_ns"], finals[0]["t_end_ns"]) == (end["start_ns"], end["end_ns"])
        if end["emission_id"] in started and end["end_ns"] - end["start_ns"] > 1.5e9:
            assert any(m["stage"] == "interim" for m in mine), f"emission {end['emission_id']}: no interim estimate"
    for name in ("heimdall_emissions_started_total", "heimdall_emissions_ended_total",
                 "heimdall_emission_localizations_total", "heimdall_channel_masked_windows_total"):
        assert name in metrics_text, f"{name} not exposed"
    # milano's 96 kHz band misses the lowest channel: masked for it, counted.
    masked = [line for line in metrics_text.splitlines()
              if line.startswith("heimdall_channel_masked_windows_total{") and 'receiver="milano"' in line
              and 'channel="145.45"' in line]
    assert masked and float(masked[0].rsplit(" ", 1)[1]) > 0
