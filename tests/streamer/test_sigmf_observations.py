"""heimdall calibrate from a SigMF recording of the network annotated with transmitter positions:
`heimdall record` of a simulated network, annotations with the simulator's truth, readings through the daemon's
pipeline compared with the power the simulator put at each antenna."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import sigmf

from receivers.simulator import SimulatedWorld
from streamer.tools.observations import ObservationsError, read_observations
from streamer.tools.calibrate import main as calibrate_main
from streamer.config import load
from streamer.tools.record import record
from streamer.tools.observations import EMITTER_KEY, observations_from_sigmf
from tests.helpers.daemon import START_NS, default_receivers, write_config

RATE_HZ = 48_000.0
SECONDS = 7.0
SPANS_S = ((1.0, 3.0), (3.0, 5.0), (5.0, 6.5))  # annotated transmissions, seconds after the start


def site_config(directory):
    receivers = []
    for rx in default_receivers():
        receivers.append({**rx, "realtime": False, "start_ns": START_NS, "sample_rate_hz": RATE_HZ,
                          "center_freq_hz": 145.49e6, "duration_s": SECONDS})
    # A slow, loud transmitter keyed throughout, so each annotated span is one place heard by most receivers.
    simulator = {"speed_mps": 1.0, "key_up_mean_s": 60.0, "key_down_mean_s": 0.05, "tx_power_min_dbm": 44.0, "tx_power_max_dbm": 47.0}
    return write_config(directory, {"receivers": receivers, "simulator": simulator}, name="site.toml")


def annotate(collection, annotations: list[dict], stream: str = "torino") -> None:
    """Add ``annotations`` to one stream's metadata and refresh the collection's stream hashes."""
    meta = collection.parent / f"{stream}.sigmf-meta"
    doc = json.loads(meta.read_text())
    doc["global"]["core:extensions"].append({"name": "signal", "version": "1.0.0", "optional": True})
    doc["annotations"] = annotations
    meta.write_text(json.dumps(doc, indent=2))
    coll = sigmf.fromfile(collection, skip_checksum=True)
    coll.set_streams([f"{name}.sigmf-meta" for name in coll.get_stream_names()])
    coll.tofile(collection, overwrite=True)


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """(config path, unannotated collection, the simulated world) for the whole module: recording takes seconds."""
    folder = tmp_path_factory.mktemp("site")
    cfg = site_config(folder)
    collection = record(load(cfg), SECONDS, folder / "rec")
    return cfg, collection, SimulatedWorld(load(cfg))


def truth_annotations(world, rate_hz=RATE_HZ, with_power=True) -> list[dict]:
    out = []
    for a, b in SPANS_S:
        truth = world.truth(START_NS + int((a + b) / 2 * 1e9))
        emitter = {"geolocation": {"type": "Point", "coordinates": [truth.lon, truth.lat, world.sim.tx_alt_m]}}
        if with_power:
            emitter["power_tx"] = truth.power_dbm
        out.append({"core:sample_start": int(a * rate_hz), "core:sample_count": int((b - a) * rate_hz), EMITTER_KEY: emitter})
    return out


@pytest.fixture
def annotated(recording, tmp_path):
    cfg, collection, world = recording
    copy = tmp_path / "rec"
    shutil.copytree(collection.parent, copy)
    return cfg, copy / collection.name, world


def test_readings_are_the_power_the_simulator_put_at_each_antenna_as_the_daemon_reads_it(annotated, tmp_path):
    cfg, collection, world = annotated
    annotate(collection, truth_annotations(world))
    obs = observations_from_sigmf(load(cfg), collection)
    assert obs.measured_dbm.shape == (len(SPANS_S), 7) and obs.receiver_ids == world.receiver_ids
    config = load(cfg)
    noise_dbm = np.array([world.noise_dbm(r, config.network.channel_bandwidth_hz) for r in range(7)])
    checked = 0
    for row, (a, b) in enumerate(SPANS_S):
        truth = world.truth(START_NS + int((a + b) / 2 * 1e9))
        assert obs.lat[row] == truth.lat and obs.tx_power_dbm[row] == truth.power_dbm
        # What the daemon reads = the antenna power + its calibration error (streamer.receivers.simulator).
        expected = world.received_power_dbm([truth.east_m, truth.north_m], truth.power_dbm) + world.measured_offset_db()
        for r in range(7):
            snr_db = expected[r] - noise_dbm[r]
            if snr_db > 20:
                assert obs.measured_dbm[row, r] == pytest.approx(expected[r], abs=1.0), (row, r, snr_db)
                checked += 1
            elif snr_db < 0:
                assert np.isnan(obs.measured_dbm[row, r]), (row, r, snr_db)
    assert checked >= 10
    # The CLI reads the same collection, reports, and writes the observations as a CSV that reads back.
    out_csv = tmp_path / "obs.csv"
    assert calibrate_main(["-c", str(cfg), str(collection), "--observations-out", str(out_csv), "--json"]) == 0
    back = read_observations(out_csv, world.receiver_ids)
    np.testing.assert_allclose(back.measured_dbm, np.round(obs.measured_dbm, 2), equal_nan=True)
    np.testing.assert_array_equal(back.lat, obs.lat)


@pytest.mark.parametrize("change, message", [
    (lambda a: a[0].pop("core:sample_count"), "annotations[0]: core:sample_count is needed"),
    (lambda a: a[1][EMITTER_KEY].update(geolocation={"type": "Point", "coordinates": [7.5]}),
     "annotations[1]: signal:emitter.geolocation: expected a GeoJSON point"),
    (lambda a: a[2][EMITTER_KEY].pop("power_tx"), "annotations[2]: signal:emitter.power_tx is missing but other annotations have it"),
    (lambda a: a[2].update({"core:sample_count": int(SECONDS * RATE_HZ)}), "annotations[2]: samples 240000..576000 are not all inside"),
    (lambda a: [x.pop(EMITTER_KEY) for x in a], "no annotation carries signal:emitter"),
    (lambda a: a[0][EMITTER_KEY]["geolocation"].update(coordinates=[7.5, 95.0]),
     "annotations[0]: signal:emitter.geolocation: lat 95.0 / lon 7.5 outside [-90, 90] / [-180, 180]"),
    (lambda a: a[1][EMITTER_KEY].update(power_tx="5 W"), "annotations[1]: signal:emitter.power_tx: expected the transmit power in dBm, got '5 W'"),
])
def test_bad_annotations_are_refused_naming_the_stream_and_the_annotation(annotated, change, message):
    cfg, collection, world = annotated
    annotations = truth_annotations(world)
    change(annotations)
    annotate(collection, annotations)
    with pytest.raises(ObservationsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        observations_from_sigmf(load(cfg), collection)


def test_an_annotation_edited_without_refreshing_the_collection_hashes_is_named(annotated):
    cfg, collection, world = annotated
    meta = collection.parent / "torino.sigmf-meta"
    doc = json.loads(meta.read_text())
    doc["annotations"] = truth_annotations(world)
    meta.write_text(json.dumps(doc))
    with pytest.raises(ObservationsError, match="receiver 'giaveno'.*does not match collection metadata"):
        observations_from_sigmf(load(cfg), collection)


def test_observations_that_cannot_be_written_are_an_error_naming_the_file(tmp_path):
    cfg = site_config(tmp_path)
    csv = tmp_path / "obs.csv"
    csv.write_text("lat,lon,giaveno\n45.0,7.5,-90.0\n45.1,7.6,-91.0\n45.2,7.4,-92.0\n")
    target = tmp_path / "missing-folder" / "out.csv"
    with pytest.raises(ObservationsError, match=f"{target}: cannot write the observations: No such file or directory"):
        calibrate_main(["-c", str(cfg), str(csv), "--observations-out", str(target)])
