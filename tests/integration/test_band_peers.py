"""Band watch against real peers, through `heimdall run`.

- GNU Radio: a 3.10 flowgraph (tests/integration/gnuradio_band_source.py) keys carriers and an NBFM burst on four
  channels of a band and publishes them as one 2.4 MS/s and two 240 kS/s tagged streams on gr-zeromq PUB sinks,
  one per receiver site: one emission per burst, on the burst's channel, at its times, heard by every site,
  localized (interim and final, the final ones nearest the loudest site), the received power of each site set, and
  the sample accounting exact.
  GNU Radio runs under the system Python (/usr/bin/python3); without it the test skips, naming the apt package.
- SigMF: `heimdall record` of config/examples/band-2m.toml, replayed (kind sigmf) by the daemon, gives the same
  emission events and localizations as the band pipeline on the live simulated stream, message by message.
- The archive holds a band daemon's emission events beside its localizations.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from pathlib import Path

import msgpack
import pytest
import zmq
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from receivers.base import ReceiverContext, TallyDropCounter
from receivers.simulator import SimulatedReceiver
from streamer.config import from_dict, load
from streamer.core.geodesy import Origin, geodetic_to_enu_m
from streamer.daemon.app import Daemon
from streamer.daemon.archive import FILE_NAME
from streamer.daemon.band import BandPipeline
from streamer.daemon.metrics import Metrics
from streamer.estimators.build import build_estimators
from tests.helpers.daemon import (
    check_localization_schema,
    collect_messages,
    default_config,
    merge,
    running_daemon,
    to_toml,
)

ROOT = Path(__file__).resolve().parents[2]
FLOWGRAPH = Path(__file__).with_name("gnuradio_band_source.py")
BAND_CONFIG = ROOT / "config" / "examples" / "band-2m.toml"

#: The band: eight 12.5 kHz channels, 145.4500 .. 145.5375 MHz, named by their centre in MHz.
BAND = {"start_hz": 145.45e6, "stop_hz": 145.5375e6, "spacing_hz": 12_500.0, "bandwidth_hz": 12_500.0}
STREAM_S = 7.0
NOISE_DENSITY = 0.01**2 / 2.4e6  # full scale squared per Hz, the same on every stream
BURST_AMPLITUDE = 0.01  # full scale at the 2.4 MS/s site: 22 dB over the noise in a 12.5 kHz channel; 16 and 12 dB at the others
NBFM_CHANNEL = "145.5125"
NBFM = {"deviation_hz": 2_500.0, "tone_hz": 1_000.0}
#: A keyed carrier sits this far above its channel's centre: the mel bands the features read start above 0 Hz, so a
#: carrier exactly at the centre reads several dB below its power (an NBFM signal spreads over the bands).
CARRIER_OFFSET_HZ = 1_000.0
#: The bursts: channel name, its centre (Hz), on and off (s from the streams' item 0). The first 2 s are quiet: the
#: noise floors settle and a PUB's slow-joiner loss falls there. Channel 145.4625 keys twice; the others overlap it
#: in time. The one on NBFM_CHANNEL is NBFM on the channel's centre; the others are keyed carriers.
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


def km_between(lat_a: float, lon_a: float, lat_b: float, lon_b: float) -> float:
    east_m, north_m, _ = geodetic_to_enu_m(lat_a, lon_a, 0.0, Origin(lat_b, lon_b, 0.0))
    return math.hypot(east_m, north_m) / 1e3


def flowgraph_spec(endpoints: dict[str, str]) -> dict:
    return {
        "duration_s": STREAM_S,
        "keying_rate_hz": 1000.0,
        "streams": [{"endpoint": endpoints[rid], "rate_hz": rate, "freq_hz": CENTRE_HZ,
                     "noise_amplitude": math.sqrt(NOISE_DENSITY * rate), "gain_db": gain}
                    for rid, _, _, _, rate, gain in SITES],
        "bursts": [{"freq_hz": freq, "start_s": on, "stop_s": off, "amplitude": BURST_AMPLITUDE, **NBFM}
                   if channel == NBFM_CHANNEL else
                   {"freq_hz": freq + CARRIER_OFFSET_HZ, "start_s": on, "stop_s": off, "amplitude": BURST_AMPLITUDE}
                   for channel, freq, on, off in BURSTS],
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
    # Every site hears every burst with the same gain: the loudest site (torino) is the nearest to each final
    # estimate, and the four estimates of each estimator agree.
    finals = [est for msgs in by_emission.values() for msg in msgs if msg["stage"] == "final"
              for est in (msg, *msg["alternatives"])]
    for est in finals:
        distance_km = {rid: km_between(est["lat"], est["lon"], lat, lon) for rid, lat, lon, *_ in SITES}
        assert min(distance_km, key=distance_km.get) == "torino", (est["estimator"], distance_km)
    for name in {est["estimator"] for est in finals}:
        mine = [est for est in finals if est["estimator"] == name]
        spread_km = max(km_between(a["lat"], a["lon"], b["lat"], b["lon"]) for a in mine for b in mine)
        assert spread_km < 2.0, f"{name}: final estimates of the same transmitter {spread_km:.1f} km apart"
    for channel, count in {"145.4625": 2, "145.5125": 1, "145.5375": 1, "145.45": 0}.items():
        assert total(m, "heimdall_emissions_started_total", channel=channel) == count, channel
        assert total(m, "heimdall_emissions_ended_total", channel=channel) == count, channel
    # The last window with an emission holds the second 145.4625 burst alone: each site's in-channel power is the
    # tone's, dBFS + calibration_db (0 here).
    for rid, *_, gain in SITES:
        expected_dbm = 20 * math.log10(BURST_AMPLITUDE) + gain
        assert total(m, "heimdall_received_power_dbm", receiver=rid) == pytest.approx(expected_dbm, abs=1.0), rid


def test_the_band_daemon_archives_emission_events_beside_localizations_and_status(tmp_path):
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
    receivers = [{"id": rid, "kind": "gnuradio_zmq", "lat": lat, "lon": lon, "alt_m": alt, "endpoint": free_endpoint(),
                  "socket_type": "sub", "pass_tags": True} for rid, lat, lon, alt, _, _ in SITES]
    cfg = from_dict(merge(default_config(), {"band": BAND, "receivers": receivers}))
    plan = {ch.name: ch.centre_hz for ch in cfg.channel_plan()}
    assert all(plan[name] == freq for name, freq, _, _ in BURSTS)


# A SigMF recording of a band ------------------------------------------------------------------------------------
#: band-2m.toml from a fixed start (on the 0.5 s window grid): its seeded transmitters key on several channels here.
BAND_START_NS = 1_790_000_000_000_000_000
BAND_SECONDS = 10.0
#: Messages about the last 1.5 s are left out of the comparison: the daemon cuts the final window when the ended
#: recordings go offline (masked), and the emissions on the air then end at shutdown, not in a window.
TAIL_NS = 1_500_000_000
#: Fields that depend on when and how fast the messages were made, not on the samples.
TIMING_FIELDS = ("latency_ms",)


def band_receivers(**options) -> list[dict]:
    """band-2m.toml's ``[[receivers]]`` with ``options`` set on each."""
    receivers = _band_example()["receivers"]
    for rx in receivers:
        rx.update(options)
    return receivers


def offline_band_messages(config) -> list[tuple[str, dict]]:
    """(topic, payload) of every message a BandPipeline publishes over ``config``'s simulated receivers, fed block by
    block with every receiver's k-th block together (no receiver ever late), emissions still on the air left open."""
    ctx = ReceiverContext(config, TallyDropCounter())
    streams = [list(SimulatedReceiver.from_config(rx, ctx)) for rx in config.receivers]
    sent: list[tuple[str, dict]] = []
    clock = {"ns": BAND_START_NS}
    band = BandPipeline(config, metrics=Metrics(registry=CollectorRegistry()),
                        send=lambda topic, msg: sent.append((topic, msg)) or True,
                        estimators=build_estimators(config), clock_ns=lambda: clock["ns"])
    for k in range(max(len(s) for s in streams)):
        batch = [s[k] for s in streams if k < len(s)]
        clock["ns"] = max(b.t0_ns + b.duration_ns for b in batch)
        band.push_many(batch, arrival_ns=clock["ns"])
        band.poll()
    return sent


def data_time_ns(topic: str, msg: dict) -> int:
    """The latest sample time a message depends on (Unix ns)."""
    if topic.startswith("emission"):
        return msg["end_ns"] if msg["event"] == "end" else msg["start_ns"]
    return msg["t_end_ns"]


def comparable(sent: list[tuple[str, dict]], cutoff_ns: int) -> list[tuple[str, dict]]:
    return [(topic, {k: v for k, v in msg.items() if k not in TIMING_FIELDS}) for topic, msg in sent
            if topic.startswith(("emission", "loc")) and data_time_ns(topic, msg) < cutoff_ns]


def mismatch(expected: list[tuple[str, dict]], replayed: list[tuple[str, dict]], metrics: dict) -> str:
    """What differs between the live run's messages and the replay's (a line per message: topic, event or stage,
    emission, channel, data time), and the daemon's counters of masked receivers and dropped samples."""
    def line(topic: str, msg: dict) -> str:
        return (f"{topic} {msg.get('event') or msg.get('stage')} emission {msg.get('emission_id')} {msg.get('channel')} "
                f"t {(data_time_ns(topic, msg) - BAND_START_NS) / 1e9:.3f} s")

    diff = difflib.unified_diff([line(*m) for m in expected], [line(*m) for m in replayed], "live", "replay",
                                lineterm="", n=1)
    counters = [f"{name}{dict(labels)} {value:g}" for (name, labels), value in sorted(metrics.items())
                if value and name in ("heimdall_window_masked_receivers_total", "heimdall_samples_dropped_total")]
    return "\n".join(["messages:", *diff, "daemon counters:", *counters])


@pytest.mark.slow
def test_a_recorded_band_replays_through_the_daemon_to_the_same_emissions_and_localizations(tmp_path):
    live = merge(default_config(), {
        "network": {"name": "band-2m"}, "band": _band_table(),
        "simulator": _band_simulator_table(),
        "estimator": {"kind": "onnx"}, "pipeline": {"min_receivers": 3},
        "receivers": band_receivers(realtime=False, start_ns=BAND_START_NS, duration_s=BAND_SECONDS + 5.0),
    })
    live_path = tmp_path / "live.toml"
    live_path.write_text(to_toml(live))
    out = tmp_path / "recording"
    subprocess.run([sys.executable, "-m", "streamer", "record", "-c", str(live_path), "--seconds", str(BAND_SECONDS),
                    str(out)], cwd=ROOT, check=True, capture_output=True, timeout=300)
    collection = out / "band-2m.sigmf-collection"
    assert collection.exists(), sorted(p.name for p in out.iterdir())

    live_cfg = load(live_path)
    live_cfg = dataclasses.replace(live_cfg, receivers=tuple(dataclasses.replace(rx, options=dataclasses.replace(
        rx.options, duration_s=BAND_SECONDS)) for rx in live_cfg.receivers))
    cutoff_ns = BAND_START_NS + int(BAND_SECONDS * 1e9) - TAIL_NS
    expected = comparable(offline_band_messages(live_cfg), cutoff_ns)

    replay = {k: v for k, v in live.items() if k not in ("receivers", "output", "metrics")}
    replay["receivers"] = [{"id": rx["id"], "kind": "sigmf", "lat": rx["lat"], "lon": rx["lon"], "alt_m": rx["alt_m"],
                            "path": str(collection), "realtime": False} for rx in live["receivers"]]
    got: list[tuple[str, dict]] = []
    stop = threading.Event()
    with running_daemon(tmp_path, overrides=replay, start_timeout_s=60.0, stop_timeout_s=10.0) as d:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.linger = 0
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(d.pub_endpoint)

        def listen() -> None:
            while not stop.is_set():
                if sub.poll(100):
                    topic, body = sub.recv_multipart()
                    got.append((topic.decode(), msgpack.unpackb(body, raw=False)))

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        expected_windows = int(BAND_SECONDS / 0.5) - 1  # the last one is cut when the recordings end
        deadline = time.monotonic() + 120.0
        while total(scrape(d.metrics_url), "heimdall_windows_total", outcome="band") < expected_windows:
            assert time.monotonic() < deadline, f"replay did not finish; stderr:\n{d.stderr[-3000:]}"
            time.sleep(0.2)  # polling a counter; the loop ends on the condition
        m = scrape(d.metrics_url)
    stop.set()
    listener.join(5.0)
    sub.close()

    replayed = comparable(got, cutoff_ns)
    ends = [msg for topic, msg in expected if topic.startswith("emission") and msg["event"] == "end"]
    print(f"{len(expected)} messages compared, {len(ends)} emissions ended on {sorted({e['channel'] for e in ends})}")
    assert len(ends) >= 3 and len({e["channel"] for e in ends}) >= 2, "too little band traffic to compare"
    assert [t for t, _ in replayed] == [t for t, _ in expected], mismatch(expected, replayed, m)
    for (topic, a), (_, b) in zip(expected, replayed):
        assert a == b, f"{topic}: live {a}\nreplay {b}"
    for rx in live["receivers"]:
        residual = (total(m, "heimdall_samples_received_total", receiver=rx["id"])
                    - total(m, "heimdall_samples_used_total", receiver=rx["id"])
                    - total(m, "heimdall_samples_buffered", receiver=rx["id"])
                    - total(m, "heimdall_samples_dropped_total", receiver=rx["id"], stage="pipeline"))
        assert residual == 0, (rx["id"], residual)


def _band_example() -> dict:
    with BAND_CONFIG.open("rb") as f:
        return tomllib.load(f)


def _band_table() -> dict:
    return _band_example()["band"]


def _band_simulator_table() -> dict:
    return _band_example()["simulator"]
