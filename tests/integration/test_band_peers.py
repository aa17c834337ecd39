"""Band watch against real peers: a GNU Radio 3.10 flowgraph keying tones on several channels of a band
(tests/integration/gnuradio_band_source.py: one 2.4 MS/s stream and two 240 kS/s ones, each on a gr-zeromq PUB
sink with tags) -> `heimdall run` -> one emission per burst, on the burst's channel, at its times, localized, with
the sample accounting exact; and the emission events in the JSON-lines archive.

GNU Radio runs under the system Python (/usr/bin/python3); the test skips, naming the apt package, without it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from streamer.config import from_dict, load
from tests.helpers.daemon import (
    check_localization_schema,
    collect_messages,
    running_daemon,
)

ROOT = Path(__file__).resolve().parents[2]
FLOWGRAPH = Path(__file__).with_name("gnuradio_band_source.py")
BAND_CONFIG = ROOT / "config" / "examples" / "band-2m.toml"

#: The band: eight 12.5 kHz channels, 145.4500 .. 145.5375 MHz, named by their centre in MHz.
BAND = {"start_hz": 145.45e6, "stop_hz": 145.5375e6, "spacing_hz": 12_500.0, "bandwidth_hz": 12_500.0}
STREAM_S = 7.0
NOISE_DENSITY = 0.01**2 / 2.4e6  # full scale squared per Hz, the same on every stream
BURST_AMPLITUDE = 0.01  # full scale at the 2.4 MS/s site: 22 dB over the noise in a 12.5 kHz channel; 16 and 12 dB at the others
#: A keyed carrier sits this far above its channel's centre: the mel bands the features read start above 0 Hz, so a
#: carrier exactly at the centre reads several dB below its power (an NBFM signal spreads over the bands).
CARRIER_OFFSET_HZ = 1_000.0
#: The keyed tones: channel name, its centre (Hz), on and off (s from the streams' item 0). The first 2 s are quiet:
#: the noise floors settle and a PUB's slow-joiner loss falls there. Channel 145.4625 keys twice; the others
#: overlap it in time.
BURSTS = (
    ("145.4625", 145.4625e6, 2.0, 3.0),
    ("145.5125", 145.5125e6, 2.5, 4.0),
    ("145.5375", 145.5375e6, 4.5, 5.25),
    ("145.4625", 145.4625e6, 5.0, 6.0),
)
#: The receiver sites: id, position (three sites of the default network), sample rate (Hz), gain of the bursts (dB).
SITES = (
    ("torino", 45.044, 7.672, 250.0, 2.4e6, 0.0),
    ("giaveno", 45.02, 7.29, 600.0, 240e3, -6.0),
    ("montanaro", 45.234, 7.857, 300.0, 240e3, -10.0),
)
CENTRE_HZ = 145.5e6
#: Start and end events are exact to about one mel frame (10.7 ms); allow two, and one more for the 1 ms keying grid.
EVENT_TOLERANCE_NS = 25_000_000


def gnuradio_available() -> bool:
    if not Path("/usr/bin/python3").exists():
        return False
    probe = subprocess.run(["/usr/bin/python3", "-c", "import gnuradio.zeromq, gnuradio.analog"], capture_output=True, check=False)
    return probe.returncode == 0


needs_gnuradio = pytest.mark.skipif(
    not gnuradio_available(), reason="GNU Radio 3.10 missing for /usr/bin/python3: apt-get install gnuradio")


def free_endpoint() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: dict[tuple[str, tuple], float], name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def accounting(samples: dict[tuple[str, tuple], float], rid: str) -> dict[str, float]:
    """One receiver's sample accounting (docs/metrics.md): received, used, buffered, pipeline and source drops."""
    return {
        "received": total(samples, "heimdall_samples_received_total", receiver=rid),
        "used": total(samples, "heimdall_samples_used_total", receiver=rid),
        "buffered": total(samples, "heimdall_samples_buffered", receiver=rid),
        "dropped": total(samples, "heimdall_samples_dropped_total", receiver=rid, stage="pipeline"),
        "source_dropped": total(samples, "heimdall_samples_dropped_total", receiver=rid, stage="source"),
    }


def flowgraph_spec(endpoints: dict[str, str]) -> dict:
    return {
        "duration_s": STREAM_S,
        "keying_rate_hz": 1000.0,
        "streams": [{"endpoint": endpoints[rid], "rate_hz": rate, "freq_hz": CENTRE_HZ,
                     "noise_amplitude": math.sqrt(NOISE_DENSITY * rate), "gain_db": gain}
                    for rid, _, _, _, rate, gain in SITES],
        "bursts": [{"freq_hz": freq + CARRIER_OFFSET_HZ, "start_s": on, "stop_s": off, "amplitude": BURST_AMPLITUDE}
                   for _, freq, on, off in BURSTS],
    }


@pytest.mark.slow
@needs_gnuradio
def test_a_gnuradio_band_of_keyed_tones_gives_one_emission_per_burst_on_its_channel_with_exact_accounting(tmp_path):
    endpoints = {rid: free_endpoint() for rid, *_ in SITES}
    spec_path = tmp_path / "flowgraph.json"
    spec_path.write_text(json.dumps(flowgraph_spec(endpoints)))
    receivers = [{"id": rid, "kind": "gnuradio_zmq", "lat": lat, "lon": lon, "alt_m": alt, "endpoint": endpoints[rid],
                  "socket_type": "sub", "pass_tags": True} for rid, lat, lon, alt, _, _ in SITES]
    # Waiting up to 3 s for a late receiver, with the whole stream in the rings: on a loaded host the 2.4 MS/s
    # stream (and the flowgraph's own threads) can fall behind real time for a while; no window is then masked.
    overrides = {"network": {"name": "default"}, "band": BAND, "receivers": receivers,
                 "pipeline": {"min_receivers": 3, "late_tolerance_s": 3.0, "buffer_s": STREAM_S + 3.0}}
    items = {rid: round(STREAM_S * rate) for rid, _, _, _, rate, _ in SITES}
    with running_daemon(tmp_path, overrides=overrides, start_timeout_s=60.0, stop_timeout_s=10.0) as d:
        flowgraph = subprocess.Popen(["/usr/bin/python3", str(FLOWGRAPH), str(spec_path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            started = flowgraph.stdout.readline().split()
            assert started[:1] == ["started"], f"flowgraph: {started} {flowgraph.stderr.read()[-2000:]}"
            t0_ns = int(started[1])
            got = collect_messages(d.pub_endpoint, n_loc=10**6, timeout_s=STREAM_S + 8.0)
            assert flowgraph.stdout.readline().strip() == "done"
            deadline = time.monotonic() + 30.0
            while True:  # until every item is counted and the pipeline has settled (nothing left to use)
                m = scrape(d.metrics_url)
                books = {rid: accounting(m, rid) for rid in items}
                if all(b["received"] + b["source_dropped"] == items[rid]
                       and b["received"] == b["used"] + b["buffered"] + b["dropped"] for rid, b in books.items()):
                    break
                assert time.monotonic() < deadline, f"accounting did not settle: {books}; items sent {items}"
                time.sleep(0.2)  # polling counters; the loop ends on the condition
        finally:
            flowgraph.stdin.close()
            try:
                flowgraph.wait(timeout=10)
            except subprocess.TimeoutExpired:
                flowgraph.kill()
                flowgraph.wait()
            flowgraph.stdout.close()
            flowgraph.stderr.close()

    events = got.get("emission", [])
    locs = got.get("loc", [])
    starts = [e for e in events if e["event"] == "start"]
    ends = sorted((e for e in events if e["event"] == "end"), key=lambda e: (e["start_ns"], e["channel"]))
    print("emissions:", [(e["channel"], (e["start_ns"] - t0_ns) / 1e9, (e["end_ns"] - t0_ns) / 1e9, e["peak_snr_db"])
                         for e in ends])
    print("accounting:", books)
    assert len(starts) == len(ends) == len(BURSTS), f"{len(starts)} starts, {len(ends)} ends for {len(BURSTS)} bursts"
    for end, (channel, freq, on_s, off_s) in zip(ends, sorted(BURSTS, key=lambda b: b[2])):
        assert (end["channel"], end["channel_hz"]) == (channel, freq)
        assert abs(end["start_ns"] - (t0_ns + on_s * 1e9)) <= EVENT_TOLERANCE_NS, (channel, on_s, end)
        assert abs(end["end_ns"] - (t0_ns + off_s * 1e9)) <= EVENT_TOLERANCE_NS, (channel, off_s, end)
        assert set(end["peak_snr_db"]) == {rid for rid, *_ in SITES}, end
    for rid in items:
        dropped = {(dict(lab)["stage"], dict(lab)["reason"]) for (n, lab), v in m.items()
                   if n == "heimdall_samples_dropped_total" and dict(lab)["receiver"] == rid and v}
        # Before the first whole window (alignment, or late while the streams start) and after the last (offline);
        # with tags, a PUB's slow-joiner loss is counted as before_join. Nothing lost in between.
        allowed = {("source", "before_join"), ("pipeline", "alignment"), ("pipeline", "late"), ("pipeline", "offline")}
        assert dropped <= allowed, f"{rid}: samples dropped for {sorted(dropped - allowed)}"
        assert total(m, "heimdall_bad_frames_total", receiver=rid) == 0
        assert total(m, "heimdall_sample_rate_hertz", receiver=rid) == {s[0]: s[4] for s in SITES}[rid]

    by_emission: dict[int, list[dict]] = {}
    for msg in locs:
        check_localization_schema(msg)
        by_emission.setdefault(msg["emission_id"], []).append(msg)
    for end in ends:
        mine = by_emission.get(end["emission_id"], [])
        finals = [msg for msg in mine if msg["stage"] == "final"]
        assert len(finals) == 1, f"emission {end['emission_id']} on {end['channel']}: {len(finals)} final estimates"
        assert (finals[0]["t_start_ns"], finals[0]["t_end_ns"]) == (end["start_ns"], end["end_ns"])
        assert any(msg["stage"] == "interim" for msg in mine), f"emission {end['emission_id']}: no interim estimate"
    for channel, count in {"145.4625": 2, "145.5125": 1, "145.5375": 1, "145.45": 0}.items():
        assert total(m, "heimdall_emissions_started_total", channel=channel) == count, channel
        assert total(m, "heimdall_emissions_ended_total", channel=channel) == count, channel
    # The last window with an emission holds the second 145.4625 burst alone: each site's in-channel power is the
    # tone's, dBFS + calibration_db (0 here).
    for rid, *_, gain in SITES:
        expected_dbm = 20 * math.log10(BURST_AMPLITUDE) + gain
        assert total(m, "heimdall_received_power_dbm", receiver=rid) == pytest.approx(expected_dbm, abs=1.0), rid


def test_the_band_daemon_archives_emission_events_beside_localizations_and_status(tmp_path):
    from streamer.daemon.app import Daemon
    from streamer.daemon.archive import FILE_NAME

    base = load(BAND_CONFIG)
    config = dataclasses.replace(
        base,
        output=dataclasses.replace(base.output, endpoint="tcp://127.0.0.1:*", archive=dataclasses.replace(
            base.output.archive, dir=str(tmp_path / "archive"))),
        metrics=dataclasses.replace(base.metrics, enabled=False),
    )
    daemon = Daemon(config, registry=CollectorRegistry())
    try:
        emission_topic = daemon.pipeline.emission_topic
        assert emission_topic == "emission.band-2m"
        daemon._publish(emission_topic, {"event": "start", "emission_id": 0, "channel": "145.5"})
        daemon._publish(daemon.pipeline.topic, {"seq": 0, "emission_id": 0})
        daemon._publish("truth", {"t_ns": 1})  # simulator ground truth: not archived
    finally:
        daemon.shutdown()
    archived = [json.loads(line) for line in (tmp_path / "archive" / FILE_NAME).read_text().splitlines()]
    assert [m["topic"] for m in archived] == [emission_topic, "loc.band-2m"]
    assert archived[0]["event"] == "start" and archived[0]["channel"] == "145.5"


def test_overrides_form_a_valid_band_config():
    """The GNU Radio test's band and receivers make a config the daemon accepts, with the plan the bursts use."""
    from tests.helpers.daemon import default_config, merge

    receivers = [{"id": rid, "kind": "gnuradio_zmq", "lat": lat, "lon": lon, "alt_m": alt, "endpoint": free_endpoint(),
                  "socket_type": "sub", "pass_tags": True} for rid, lat, lon, alt, _, _ in SITES]
    cfg = from_dict(merge(default_config(), {"band": BAND, "receivers": receivers}))
    plan = {ch.name: ch.centre_hz for ch in cfg.channel_plan()}
    assert all(plan[name] == freq for name, freq, _, _ in BURSTS)
