"""SigMF replay (receivers.sigmf_file) and recording (streamer.tools.record), against files the real ``sigmf``
package writes and reads back.

Needs ``sigmf``, a base dependency (pip install -e .).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

sigmf = pytest.importorskip("sigmf", reason="needs the sigmf package, a base dependency: pip install -e .")

from prometheus_client import CollectorRegistry  # noqa: E402

from receivers.base import Flags, ReceiverContext, TallyDropCounter  # noqa: E402
from receivers.sigmf_file import SigmfReceiver, format_datetime_ns, parse_datetime_ns  # noqa: E402
from receivers.simulator import SimulatedReceiver, SimulatedWorld  # noqa: E402
from streamer.config import from_dict  # noqa: E402
from streamer.core.errors import ReceiverFatalError  # noqa: E402
from streamer.estimators.build import build_estimators  # noqa: E402
from streamer.daemon.metrics import Metrics  # noqa: E402
from streamer.daemon.pipeline import Pipeline  # noqa: E402
from streamer.tools.record import RecordingError, main, record  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
T0_NS = 1_714_564_800_123_456_789  # 2024-05-01T12:00:00.123456789Z
RATE_HZ = 10_000.0
FREQ_HZ = 145.45e6


def write_recording(base: Path, datatype: str, raw: np.ndarray, captures: list[tuple[int, dict]], **global_info) -> Path:
    """Write ``raw`` (already in the file's layout) as ``base``.sigmf-data and its .sigmf-meta via sigmf.SigMFFile."""
    data_path = base.with_name(base.name + sigmf.SIGMF_DATASET_EXT)
    raw.tofile(data_path)
    meta = sigmf.SigMFFile(
        data_file=data_path,
        global_info={sigmf.DATATYPE_KEY: datatype, sigmf.SAMPLE_RATE_KEY: RATE_HZ,
                     sigmf.EXTENSIONS_KEY: [{"name": "heimdall", "version": "1.0.0", "optional": True}], **global_info},
    )
    for start, capture in captures:
        meta.add_capture(start, metadata=dict(capture))
    meta.tofile(base)
    return base


def one_receiver_config(path, **options) -> object:
    return from_dict({"receivers": [{"id": "rx1", "kind": "sigmf", "lat": 45.0, "lon": 7.0, "path": str(path),
                                     "realtime": False, **options}]})


def replay(path, drops=None, **options) -> list:
    cfg = one_receiver_config(path, **options)
    with SigmfReceiver.from_config(cfg.receivers[0], ReceiverContext(cfg, drops or TallyDropCounter())) as rx:
        return list(rx)


# Replay ---------------------------------------------------------------------------------------------
def _cf32(n, rng):
    x = (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(np.complex64) * np.float32(0.3)
    return x, x


def _ci16(n, rng):
    raw = rng.integers(-32768, 32768, size=(n, 2), dtype=np.int16)
    return raw, (raw[:, 0].astype(np.float32) + 1j * raw[:, 1].astype(np.float32)) / np.float32(32768)


def _cu8(n, rng):
    raw = rng.integers(0, 256, size=(n, 2), dtype=np.uint8)
    return raw, ((raw[:, 0].astype(np.float32) - 128) + 1j * (raw[:, 1].astype(np.float32) - 128)) / np.float32(128)


@pytest.mark.parametrize("datatype, make", [("cf32_le", _cf32), ("ci16_le", _ci16), ("cu8", _cu8)])
def test_replay_gives_exact_samples_indices_times_and_frequency(tmp_path, datatype, make):
    raw, expected = make(1234, np.random.default_rng(7))
    base = write_recording(tmp_path / "rec", datatype, raw, [
        (0, {sigmf.FREQUENCY_KEY: FREQ_HZ, sigmf.DATETIME_KEY: format_datetime_ns(T0_NS), sigmf.GLOBAL_INDEX_KEY: 5000,
             "heimdall:time_source": "gps", "heimdall:gain_db": 20.0}),
    ])
    blocks = replay(base, block_s=0.03)  # 300 samples: 4 full blocks and one of 34
    assert [len(b.samples) for b in blocks] == [300, 300, 300, 300, 34]
    got = np.concatenate([b.samples for b in blocks])
    assert got.dtype == np.complex64
    np.testing.assert_array_equal(got, expected.astype(np.complex64))
    assert [b.sample_index for b in blocks] == [5000, 5300, 5600, 5900, 6200]
    assert [b.t0_ns for b in blocks] == [T0_NS + k * 30_000_000 for k in range(5)]
    assert {(b.center_freq, b.sample_rate, b.time_source, b.gain_db, b.flags) for b in blocks} == {
        (FREQ_HZ, RATE_HZ, "gps", 20.0, Flags.NONE)}


def test_gap_between_captures_comes_back_as_index_jump_with_its_own_time(tmp_path):
    x, _ = _cf32(1000, np.random.default_rng(1))
    t1 = T0_NS + 3 * 10**9 + 17  # 3 s later: 7000 samples (0.7 s) missing plus a clock step
    base = write_recording(tmp_path / "gap", "cf32_le", x, [
        (0, {sigmf.FREQUENCY_KEY: FREQ_HZ, sigmf.DATETIME_KEY: format_datetime_ns(T0_NS), sigmf.GLOBAL_INDEX_KEY: 0}),
        (400, {sigmf.FREQUENCY_KEY: FREQ_HZ, sigmf.DATETIME_KEY: format_datetime_ns(t1), sigmf.GLOBAL_INDEX_KEY: 7400}),
        (700, {sigmf.FREQUENCY_KEY: FREQ_HZ + 25e3, sigmf.GLOBAL_INDEX_KEY: 7700}),  # retune, no datetime
    ])
    blocks = replay(base, block_s=0.025)
    assert [(b.sample_index, len(b.samples)) for b in blocks] == [(0, 250), (250, 150), (7400, 250), (7650, 50), (7700, 250), (7950, 50)]
    assert [b.t0_ns for b in blocks] == [T0_NS, T0_NS + 25_000_000, t1, t1 + 25_000_000, t1 + 30_000_000, t1 + 55_000_000]
    assert [b.center_freq for b in blocks] == [FREQ_HZ] * 4 + [FREQ_HZ + 25e3] * 2
    assert [b.flags for b in blocks] == [Flags.NONE] * 4 + [Flags.RETUNE, Flags.NONE]
    np.testing.assert_array_equal(np.concatenate([b.samples for b in blocks]), x)


def test_recorded_overflow_flag_is_replayed_and_its_loss_counted(tmp_path):
    x, _ = _cf32(600, np.random.default_rng(2))
    base = write_recording(tmp_path / "ovf", "cf32_le", x, [
        (0, {sigmf.FREQUENCY_KEY: FREQ_HZ, sigmf.DATETIME_KEY: format_datetime_ns(T0_NS)}),
        (300, {sigmf.GLOBAL_INDEX_KEY: 1000, "heimdall:flags": ["OVERFLOW", "CLIPPED"]}),
    ])
    drops = TallyDropCounter()
    blocks = replay(base, drops=drops, block_s=0.02)
    assert [(b.sample_index, b.flags) for b in blocks] == [
        (0, Flags.NONE), (200, Flags.NONE), (1000, Flags.OVERFLOW | Flags.CLIPPED), (1200, Flags.CLIPPED)]
    assert blocks[2].t0_ns == T0_NS + 100_000_000  # carried on from the first capture by the index
    assert drops.dropped == {("rx1", "overflow"): 700}


def test_loop_continues_index_and_time_and_flags_each_new_pass(tmp_path):
    x, _ = _cf32(500, np.random.default_rng(3))
    base = write_recording(tmp_path / "loop", "cf32_le", x, [
        (0, {sigmf.FREQUENCY_KEY: FREQ_HZ, sigmf.DATETIME_KEY: format_datetime_ns(T0_NS)})])
    cfg = one_receiver_config(base, loop=True, block_s=0.025)
    with SigmfReceiver.from_config(cfg.receivers[0], ReceiverContext(cfg, TallyDropCounter())) as rx:
        blocks = list(itertools.islice(rx, 5))
    assert [b.sample_index for b in blocks] == [0, 250, 500, 750, 1000]
    assert [b.t0_ns - T0_NS for b in blocks] == [0, 25_000_000, 50_000_000, 75_000_000, 100_000_000]
    assert [bool(b.flags & Flags.DISCONTINUITY) for b in blocks] == [False, False, True, False, True]
    np.testing.assert_array_equal(blocks[2].samples, x[:250])


def test_realtime_replay_is_paced_and_close_interrupts_it(tmp_path):
    x, _ = _cf32(3000, np.random.default_rng(4))  # 0.3 s
    base = write_recording(tmp_path / "rt", "cf32_le", x, [
        (0, {sigmf.FREQUENCY_KEY: FREQ_HZ, sigmf.DATETIME_KEY: format_datetime_ns(T0_NS)})])
    started = time.monotonic()
    blocks = replay(base, realtime=True, block_s=0.05)
    assert len(blocks) == 6 and time.monotonic() - started >= 0.29
    cfg = one_receiver_config(base, realtime=True, block_s=0.05, loop=True)
    rx = SigmfReceiver.from_config(cfg.receivers[0], ReceiverContext(cfg, TallyDropCounter()))
    got = []
    thread = threading.Thread(target=lambda: got.extend(rx), daemon=True)
    thread.start()
    while not got:
        time.sleep(0.01)
    rx.close()
    thread.join(1.0)
    assert not thread.is_alive() and 1 <= len(got) <= 3


def test_datetime_round_trips_with_nanoseconds():
    for t in (T0_NS, 0, -2_401_454, 1_999_999_999_999_999_999):
        assert parse_datetime_ns(format_datetime_ns(t)) == t
    assert parse_datetime_ns("2024-05-01T14:00:00.5+02:00") == T0_NS - 123_456_789 + 500_000_000


# Bad files ------------------------------------------------------------------------------------------
def _good(tmp_path, name="bad", **capture):
    x, _ = _cf32(100, np.random.default_rng(5))
    return write_recording(tmp_path / name, "cf32_le", x, [(0, {sigmf.FREQUENCY_KEY: FREQ_HZ, **capture})])


def _edit_meta(base: Path, edit) -> None:
    meta_path = base.with_name(base.name + ".sigmf-meta")
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))


def _missing(tmp_path):
    return tmp_path / "nothing-here", "no such SigMF recording"


def _not_json(tmp_path):
    base = _good(tmp_path)
    base.with_name("bad.sigmf-meta").write_text("{ not json")
    return base, "not valid JSON"


def _no_rate(tmp_path):
    base = _good(tmp_path)
    _edit_meta(base, lambda m: m["global"].pop("core:sample_rate"))
    return base, "core:sample_rate must be a positive number"


def _real_valued(tmp_path):
    x = np.zeros(10, np.float32)
    base = write_recording(tmp_path / "bad", "rf32_le", x, [(0, {sigmf.FREQUENCY_KEY: FREQ_HZ})])
    return base, "real-valued"


def _no_frequency(tmp_path):
    x, _ = _cf32(10, np.random.default_rng(0))
    return write_recording(tmp_path / "bad", "cf32_le", x, [(0, {})]), "core:frequency is missing"


def _capture_past_end(tmp_path):
    base = _good(tmp_path)
    _edit_meta(base, lambda m: m["captures"].append({"core:sample_start": 500}))
    return base, "captures[1] starts at sample 500 but the data file holds only 100 samples"


def _data_missing(tmp_path):
    base = _good(tmp_path)
    base.with_name("bad.sigmf-data").unlink()
    return base, "data file bad.sigmf-data is missing"


def _bad_datetime(tmp_path):
    return _good(tmp_path, **{sigmf.DATETIME_KEY: "2024-13-45 noon"}), "core:datetime"


def _bad_checksum(tmp_path):
    base = _good(tmp_path)
    with open(base.with_name("bad.sigmf-data"), "r+b") as f:
        f.write(b"\x01\x02\x03\x04")
    return base, "hash"


def _bad_time_source(tmp_path):
    return _good(tmp_path, **{"heimdall:time_source": "sundial"}), "heimdall:time_source must be one of"


def _schema_violation(tmp_path):
    base = _good(tmp_path)
    _edit_meta(base, lambda m: m["captures"][0].update({"core:frequency": "145 MHz"}))
    return base, "does not follow the SigMF schema"


@pytest.mark.parametrize("make", [_missing, _not_json, _no_rate, _real_valued, _no_frequency, _capture_past_end,
                                  _data_missing, _bad_datetime, _bad_checksum, _bad_time_source, _schema_violation])
def test_bad_recording_is_fatal_with_file_and_reason(tmp_path, make):
    path, reason = make(tmp_path)
    cfg = one_receiver_config(path)  # the config validates: the file is only opened by the adapter
    with pytest.raises(ReceiverFatalError) as info:
        SigmfReceiver.from_config(cfg.receivers[0], ReceiverContext(cfg, TallyDropCounter()))
    message = str(info.value)
    assert str(path.parent) in message and reason in message, message


def test_config_resolves_relative_path_from_config_file(tmp_path):
    base = _good(tmp_path, name="rel", **{sigmf.DATETIME_KEY: format_datetime_ns(T0_NS)})
    toml = tmp_path / "replay.toml"
    toml.write_text('[[receivers]]\nid = "rx1"\nkind = "sigmf"\nlat = 45.0\nlon = 7.0\npath = "rel.sigmf-meta"\nrealtime = false\n')
    from streamer.config import load

    cfg = load(toml)
    with SigmfReceiver.from_config(cfg.receivers[0], ReceiverContext(cfg, TallyDropCounter())) as rx:
        assert rx.meta_path == base.with_name("rel.sigmf-meta") and sum(len(b.samples) for b in rx) == 100


def test_example_config_validates_without_the_recording():
    from streamer.config import load

    cfg = load(ROOT / "config" / "examples" / "sigmf.toml")
    assert {rx.kind for rx in cfg.receivers} == {"sigmf"}


def test_example_config_replays_what_the_record_command_in_its_header_writes():
    """No placeholder path: every receiver of config/examples/sigmf.toml reads, by its own id, the collection that
    the `heimdall record` line of its header writes (record names it after network.name)."""
    from streamer.config import load

    example = ROOT / "config" / "examples" / "sigmf.toml"
    assert "#   heimdall record -c config/default.toml --seconds 30 recordings/turin " in example.read_text()
    recorded = load(ROOT / "config" / "default.toml")
    collection = ROOT / "recordings" / "turin" / f"{recorded.network.name}.sigmf-collection"
    cfg = load(example)
    for rx in cfg.receivers:
        assert (example.parent / rx.options.path).resolve() == collection, rx.id
    assert {rx.id for rx in cfg.receivers} <= {rx.id for rx in recorded.receivers}


# Recording ------------------------------------------------------------------------------------------
START_NS = 1_700_000_003 * 10**9  # the seed-1 transmitter is keyed from about 2 s to 9 s after 1_700_000_000
SECONDS = 2.0


def network_dict(**receiver_options) -> dict:
    with open(ROOT / "config" / "default.toml", "rb") as f:
        cfg = tomllib.load(f)
    for rx in cfg["receivers"]:
        rx.update(receiver_options)
    return cfg


def simulated_network():
    return from_dict(network_dict(realtime=False, sample_rate_hz=48_000.0, center_freq_hz=145.49e6, start_ns=START_NS))


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    cfg = simulated_network()
    out = tmp_path_factory.mktemp("recording")
    return cfg, record(cfg, SECONDS, out)


def test_record_writes_a_valid_collection_holding_exactly_the_simulated_samples(recording):
    cfg, path = recording
    assert path.name == "default.sigmf-collection"
    collection = sigmf.fromfile(path)  # checks every stream's meta hash
    assert sorted(collection.get_stream_names()) == sorted(rx.id for rx in cfg.receivers)
    world = SimulatedWorld(cfg)
    n = int(SECONDS * 48_000)
    for rx in cfg.receivers:
        meta = collection.get_SigMFFile(stream_name=rx.id)
        meta.validate()
        glob = meta.get_global_info()
        assert glob[sigmf.DATATYPE_KEY] == "cf32_le" and glob[sigmf.SAMPLE_RATE_KEY] == 48_000.0
        assert glob[sigmf.DESCRIPTION_KEY] == rx.id
        assert glob[sigmf.GEOLOCATION_KEY] == {"type": "Point", "coordinates": [rx.lon, rx.lat, rx.alt_m]}
        assert glob["heimdall:calibration_db"] == rx.calibration_db and glob["heimdall:samples_dropped"] == {}
        assert "simulator" in glob[sigmf.HW_KEY] and glob[sigmf.RECORDER_KEY].startswith("heimdall-streamer")
        live = SimulatedReceiver(rx.id, world, rx.options)
        assert meta.get_captures() == [{
            sigmf.SAMPLE_START_KEY: 0, sigmf.GLOBAL_INDEX_KEY: 0, sigmf.FREQUENCY_KEY: 145.49e6,
            sigmf.DATETIME_KEY: format_datetime_ns(live.block_t0_ns(0)), "heimdall:time_source": "host"}]
        assert meta.sample_count == n
        np.testing.assert_array_equal(meta.read_samples(0, n), live.read(0, n))


def test_record_refuses_to_overwrite_and_main_takes_argparse_args(recording, tmp_path, capsys):
    cfg, path = recording
    with pytest.raises(RecordingError, match="already exists"):
        record(cfg, 0.1, path.parent)
    toml = tmp_path / "two.toml"
    toml.write_text("\n".join(
        f'[[receivers]]\nid = "{rid}"\nkind = "simulator"\nlat = {lat}\nlon = 7.0\nrealtime = false\n'
        f'sample_rate_hz = 48000.0\nstart_ns = {START_NS}\n' for rid, lat in (("a/1", 45.0), ("b", 45.2))))
    import argparse

    assert main(argparse.Namespace(config=str(toml), seconds=0.25, out=str(tmp_path / "out"))) == 0
    written = Path(capsys.readouterr().out.strip())
    assert written == tmp_path / "out" / "default.sigmf-collection"
    meta = sigmf.fromfile(tmp_path / "out" / "a_1.sigmf-meta")  # id sanitised for the file name, kept in the meta
    assert meta.get_global_field("heimdall:receiver_id") == "a/1" and meta.sample_count == 12_000


def test_writer_starts_captures_at_gaps_retunes_restarts_and_clock_steps(tmp_path):
    from receivers.base import IQBlock
    from streamer.tools.record import StreamWriter

    cfg = from_dict({"receivers": [{"id": "rx1", "kind": "simulator", "lat": 45.0, "lon": 7.0}]})
    writer = StreamWriter(cfg.receivers[0], tmp_path / "rx1.sigmf-data", seconds=1.0)
    rng = np.random.default_rng(9)

    def block(index, t0, freq=FREQ_HZ, flags=Flags.NONE, n=1000):
        x = (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(np.complex64)
        return IQBlock("rx1", x, index, t0, "gps", RATE_HZ, freq, 10.0, flags)

    ms = 1_000_000
    blocks = [
        block(0, T0_NS), block(1000, T0_NS + 100 * ms + 3),  # continuous (3 ns jitter: same capture)
        block(2500, T0_NS + 250 * ms),  # gap of 500 samples
        block(3500, T0_NS + 350 * ms, freq=FREQ_HZ + 1e3, flags=Flags.RETUNE),  # retune
        block(0, T0_NS + 450 * ms, freq=FREQ_HZ + 1e3, flags=Flags.DISCONTINUITY),  # reconnect restarted the count
        block(1000, T0_NS + 600 * ms, freq=FREQ_HZ + 1e3),  # clock step of 50 ms, same index run
        block(10, T0_NS + 700 * ms, freq=FREQ_HZ + 1e3),  # index backwards without DISCONTINUITY: refused, counted
        block(2000, T0_NS + 700 * ms, freq=FREQ_HZ + 1e3, n=8000),  # cut at 1 s = 10000 samples
    ]
    done = [writer.write(b) for b in blocks]
    writer.close()
    assert done == [False] * 7 + [True]
    assert writer.written == 10_000 and writer.dropped == {"gap": 500, "index_backwards": 1000}
    starts = [(c[sigmf.SAMPLE_START_KEY], c[sigmf.GLOBAL_INDEX_KEY]) for c in writer.captures]
    assert starts == [(0, 0), (2000, 2500), (3000, 3500), (4000, 4500), (5000, 5500)]
    assert writer.captures[3]["heimdall:flags"] == ["DISCONTINUITY"]
    assert writer.captures[4][sigmf.DATETIME_KEY] == format_datetime_ns(T0_NS + 600 * ms)
    meta = writer.metadata(TallyDropCounter().dropped, "c")
    meta.validate()
    meta.tofile(tmp_path / "rx1")
    # and the replay gives those indices and times back
    blocks_back = replay(tmp_path / "rx1", block_s=0.1)
    assert [b.sample_index for b in blocks_back][:6] == [0, 1000, 2500, 3500, 4500, 5500]
    assert blocks_back[5].t0_ns == T0_NS + 600 * ms and blocks_back[6].t0_ns == T0_NS + 700 * ms
    assert blocks_back[3].flags == Flags.RETUNE and blocks_back[4].flags == Flags.DISCONTINUITY


# Record -> replay -> the same localizations ---------------------------------------------------------
def _localize(cfg, receivers) -> list[dict]:
    clock_ns = START_NS + 60 * 10**9
    pipeline = Pipeline(cfg, metrics=Metrics(CollectorRegistry()), send=lambda topic, payload: True,
                        estimators=build_estimators(cfg), clock_ns=lambda: clock_ns)
    streams = [iter(rx) for rx in receivers]
    published = []
    for blocks in itertools.zip_longest(*streams):  # interleaved, as the runner threads would deliver them
        for b in blocks:
            if b is not None:
                pipeline.push(b)
        published += pipeline.poll()
    return published


def test_replay_of_a_recording_localizes_like_the_live_network(recording):
    cfg, path = recording
    world = SimulatedWorld(cfg)
    n = int(SECONDS * 48_000)
    live_rx = [SimulatedReceiver(rx.id, world, rx.options) for rx in cfg.receivers]
    for rx in live_rx:
        rx.total_samples = n  # the span that was recorded
    live = _localize(cfg, live_rx)

    replay_dict = network_dict(kind="sigmf", path=str(path), realtime=False, block_s=0.02)
    replay_cfg = from_dict(replay_dict)
    ctx = ReceiverContext(replay_cfg, TallyDropCounter())
    replayed = _localize(replay_cfg, [SigmfReceiver.from_config(rx, ctx) for rx in replay_cfg.receivers])

    assert len(live) >= 2, "the simulated transmitter should be heard in this span"
    assert len(replayed) == len(live)
    for a, b in zip(live, replayed):
        assert (a["seq"], a["t_start_ns"], a["t_end_ns"], a["receivers"]) == (b["seq"], b["t_start_ns"], b["t_end_ns"], b["receivers"])
        np.testing.assert_allclose([b["lat"], b["lon"]], [a["lat"], a["lon"]], rtol=1e-6)
        np.testing.assert_allclose(np.array(b["cov_en_m2"]), np.array(a["cov_en_m2"]), rtol=1e-6)
