"""streamer.daemon.preflight: `heimdall check` and `heimdall run` give the same verdict on every config.

Each bad config is written to a file and fed to both commands through ``streamer.cli.main``; both must
exit 2 with the same error line, naming the file, the key (receivers by id), the value and what was expected.
"""

from __future__ import annotations

import socket
import sys

import pytest
import zmq

from streamer.daemon import preflight as preflight_mod
from streamer.config import from_dict
from streamer.core.errors import ConfigError, MissingDependencyError
from tests.helpers.verdicts import RX, assert_both_refuse, check_and_run, merged, write_config

NAN, INF = float("nan"), float("inf")
ZMQ_RX = {"id": "edge1", "kind": "zmq", "lat": 45.0, "lon": 7.0, "endpoint": "tcp://127.0.0.1:5599"}
PLUTO_RX = {"id": "p1", "kind": "pluto", "lat": 45.0, "lon": 7.0, "uri": "ip:192.168.2.1", "rx_lo_hz": 433.9e6}
SOAPY_RX = {"id": "s1", "kind": "soapy", "lat": 45.0, "lon": 7.0}

BAD_CONFIGS = [
    # pass `check`, then crash `run` with a traceback
    ("buffer_inf", {"pipeline": {"buffer_s": INF}}, ["pipeline.buffer_s: expected a finite number, got inf"]),
    ("buffer_1e7", {"pipeline": {"buffer_s": 1e7}},
     ["pipeline.buffer_s: 10000000.0 s at features.sample_rate_hz 24000 Hz needs", "expected at most"]),
    ("workers_negative", {"pipeline": {"workers": -1}}, ["pipeline.workers: expected >= 0 (0 = one per CPU core), got -1"]),
    ("fft_unknown", {"pipeline": {"fft": "pocketfft"}}, ["pipeline.fft: expected one of 'scipy', 'fftw', got 'pocketfft'"]),
    ("fft_number", {"pipeline": {"fft": 1}}, ["pipeline.fft: expected a string, got int 1"]),
    ("sim_dc_offset_nan", {"receivers": [{**RX, "dc_offset_db": NAN}]},
     ["receivers[0].dc_offset_db: expected a finite number, got nan"]),
    ("lone_carrier_zero", {"pipeline": {"lone_carrier_s": 0}}, ["pipeline.lone_carrier_s: expected a finite duration > 0 s, got 0"]),
    ("lone_carrier_inf", {"pipeline": {"lone_carrier_s": INF}}, ["pipeline.lone_carrier_s: expected a finite number, got inf"]),
    ("send_hwm", {"output": {"send_hwm": -5}}, ["output.send_hwm: expected 1 to 2147483647 messages", "got -5"]),
    ("endpoint", {"output": {"endpoint": "garbage"}},
     ["output.endpoint: expected tcp://HOST:PORT (PORT 0..65535 or *), ipc://PATH or inproc://NAME, got 'garbage'"]),
    ("endpoint_port", {"output": {"endpoint": "tcp://127.0.0.1:99999"}}, ["output.endpoint: expected tcp://HOST:PORT"]),
    ("metrics_host", {"metrics": {"host": "no-such-host.invalid"}},
     ["metrics.host: cannot resolve 'no-such-host.invalid'", "expected an IP address or a resolvable host name"]),
    ("area_1e5", {"network": {"area_margin_km": 1e5}},
     ["estimator.physics.grid_step_km = 2.0 over network.area_margin_km = 100000.0", "expected at most"]),
    ("grid_step", {"estimator": {"physics": {"grid_step_km": 0.001}}},
     ["estimator.physics.grid_step_km = 0.001 over network.area_margin_km = 30.0", "expected at most"]),
    ("no_receivers", {"receivers": []}, ["receivers: expected at least one [[receivers]] table, got none"]),
    # accepted and silently broken
    ("rate_limit_nan", {"receivers": [{**ZMQ_RX, "rate_limit_factor": NAN}]},
     ["receivers[0].rate_limit_factor: expected a finite number, got nan (receiver id 'edge1', kind 'zmq')"]),
    ("max_rate_nan", {"receivers": [{**ZMQ_RX, "max_rate_sps": NAN}]},
     ["receivers[0].max_rate_sps: expected a finite number, got nan (receiver id 'edge1'"]),
    ("recv_timeout_nan", {"receivers": [{**ZMQ_RX, "recv_timeout_s": NAN}]},
     ["receivers[0].recv_timeout_s: expected a finite number, got nan (receiver id 'edge1'"]),
    ("recv_timeout_0", {"receivers": [{**ZMQ_RX, "recv_timeout_s": 0.0}]},
     ["receivers[0]: recv_timeout_s: expected > 0 and <= 10 s, got 0.0 (receiver id 'edge1'"]),
    ("buffer_1e5", {"pipeline": {"buffer_s": 1e5}}, ["pipeline.buffer_s: 100000.0 s", "17.9 GiB of ring buffer per receiver"]),
    ("target_nan", {"network": {"target_freq_hz": NAN}}, ["network.target_freq_hz: expected a finite number, got nan"]),
    ("target_negative", {"network": {"target_freq_hz": -1.0}}, ["network.target_freq_hz: expected a frequency > 0 Hz, got -1.0"]),
    ("margin_negative", {"network": {"area_margin_km": -5.0}}, ["network.area_margin_km: expected > 0 km, got -5.0"]),
    ("status_nan", {"output": {"status_interval_s": NAN}}, ["output.status_interval_s: expected a finite number, got nan"]),
    ("status_0", {"output": {"status_interval_s": 0.0}}, ["output.status_interval_s: expected >= 0.1 s, got 0.0"]),
    ("clock_jump_nan", {"pipeline": {"clock_jump_tolerance_s": NAN}},
     ["pipeline.clock_jump_tolerance_s: expected a finite number, got nan"]),
    ("snr_nan", {"pipeline": {"detection_snr_db": NAN}}, ["pipeline.detection_snr_db: expected a finite number, got nan"]),
    ("offline_negative", {"pipeline": {"offline_after_s": -1.0}}, ["pipeline.offline_after_s: expected > 0 s, got -1.0"]),
    ("min_receivers", {"pipeline": {"min_receivers": 2}},
     ["pipeline.min_receivers: expected at most the number of receivers (1), got 2: the daemon would never localize"]),
    ("calibration_inf", {"receivers": [{**RX, "calibration_db": INF}]},
     ["receivers[0].calibration_db: expected a finite number, got inf (receiver id 'a', kind 'simulator')"]),
    # a band that cannot reach the target: every block would be dropped as untunable
    ("simulator_48k", {"receivers": [{**RX, "sample_rate_hz": 48_000.0}]},
     ["receivers[0] (id 'a', kind 'simulator'): centre 1.4545e+08 Hz at 48000 S/s cannot be channelized to "
      "network.target_freq_hz = 1.455e+08 Hz", "outside the band", "expected the target within centre ± rate/2"]),
    ("soapy_elsewhere", {"receivers": [{**SOAPY_RX, "center_freq_hz": 433.9e6}]},
     ["receivers[0] (id 's1', kind 'soapy'): centre 4.339e+08 Hz at 2.048e+06 S/s cannot be channelized"]),
    ("pluto_elsewhere", {"receivers": [PLUTO_RX]},
     ["receivers[0] (id 'p1', kind 'pluto'): centre 4.339e+08 Hz at 1e+06 S/s cannot be channelized"]),
    # values libzmq cannot take passed check and raised OverflowError in run
    ("send_hwm_2_31", {"output": {"send_hwm": 2**31}}, ["output.send_hwm: expected 1 to 2147483647 messages"]),
    ("send_buffer_2_40", {"output": {"send_buffer_bytes": 2**40}}, ["output.send_buffer_bytes: expected 0 to 2147483647"]),
    ("window_1e6", {"features": {"window_s": 1e6}},
     ["pipeline.buffer_s: expected more than two windows (2 x features.window_s = 2e+06 s)"]),
    # calibration age: a drift that is not a number or negative, a date that is not one, a drift without dates
    ("drift_nan", {"estimator": {"physics": {"calibration_drift_db_per_sqrt_day": NAN}}},
     ["estimator.physics.calibration_drift_db_per_sqrt_day: expected a finite number, got nan"]),
    ("drift_negative", {"estimator": {"physics": {"calibration_drift_db_per_sqrt_day": -0.1}}},
     ["estimator.physics.calibration_drift_db_per_sqrt_day: expected a finite drift >= 0 (0 = none), got -0.1"]),
    ("seasonal_negative", {"estimator": {"physics": {"calibration_seasonal_db": -1.0}}},
     ["estimator.physics.calibration_seasonal_db: expected a finite drift >= 0 (0 = none), got -1.0"]),
    ("calibrated_at_malformed", {"receivers": [{**RX, "calibrated_at": "2026-02-30"}]},
     ["receivers[0].calibrated_at: expected an ISO-8601 date (2026-03-01) or date-time (2026-03-01T10:00:00Z), "
      "got '2026-02-30' (receiver id 'a')"]),
    ("calibrated_at_missing", {"estimator": {"physics": {"calibration_seasonal_db": 1.5}}},
     ["receivers[0].calibrated_at: required when estimator.physics.calibration_drift_db_per_sqrt_day or "
      "calibration_seasonal_db is > 0", "(receiver id 'a')"]),
    # channel plan ([band]; the [[channels]] cases are in test_channel_plan.py): bad values, and channels that no
    # pipeline.min_receivers receivers' bands hold, so they could never be localized
    ("band_spacing_tiny", {"band": {"start_hz": 145.45e6, "stop_hz": 145.55e6, "spacing_hz": 0.5}},
     ["band.spacing_hz: expected >= 1 Hz (band channels are named by their centre to the Hz), got 0.5"]),
    ("band_too_many", {"band": {"start_hz": 144e6, "stop_hz": 146e6, "spacing_hz": 1_000.0}},
     ["band.spacing_hz: expected a spacing that gives at most 1024 channels", "(this one gives 2001), got 1000.0"]),
    ("band_bandwidth_over_spacing", {"band": {"start_hz": 145.45e6, "stop_hz": 145.55e6, "spacing_hz": 12_500.0,
                                              "bandwidth_hz": 25_000.0}},
     ["band.bandwidth_hz: expected > 0 Hz and at most band.spacing_hz (12500 Hz), got 25000.0"]),
    ("band_outside_every_receiver", {"band": {"start_hz": 146.0e6, "stop_hz": 146.0875e6, "spacing_hz": 12_500.0}},
     [("band: channel '146' (146000000 Hz ± 6250 Hz) lies inside the band of 0 receivers (none) (and 7 more channels); "
       "expected at least pipeline.min_receivers = 1: it could never be localized"), "a 145.330000-145.570000 MHz"]),
    # 145.5625 MHz +- 6.25 kHz still fits under the receiver's 145.57 MHz edge; 145.575 is the first that does not
    ("band_past_the_receivers_edge", {"band": {"start_hz": 145.5e6, "stop_hz": 145.5875e6, "spacing_hz": 12_500.0}},
     [("band: channel '145.575' (145575000 Hz ± 6250 Hz) lies inside the band of 0 receivers (none) (and 1 more "
       "channel); expected at least pipeline.min_receivers = 1")]),
]


def binding_missing(import_binding) -> str | None:
    """The adapter's install message when its binding does not import here, else None."""
    try:
        import_binding()
    except MissingDependencyError as exc:
        return str(exc)
    return None


def needs_binding(case: str) -> list:
    """The soapy and pluto cases reach the tunability check only once the adapter's binding imports: without it,
    both commands refuse the config for the missing binding (test_a_missing_receiver_dependency_...)."""
    from receivers.pluto import import_adi
    from receivers.soapy import import_soapysdr

    importer = {"soapy_elsewhere": import_soapysdr, "pluto_elsewhere": import_adi}.get(case)
    missing = importer and binding_missing(importer)
    return [pytest.mark.skip(reason=missing)] if missing else []


@pytest.mark.parametrize("overrides, fragments", [pytest.param(*c[1:], id=c[0], marks=needs_binding(c[0])) for c in BAD_CONFIGS])
def test_check_and_run_refuse_the_same_config_with_the_same_message(tmp_path, capsys, monkeypatch, overrides, fragments):
    assert_both_refuse(write_config(tmp_path, merged(overrides)), capsys, monkeypatch, *fragments)


def test_a_target_outside_every_band_is_refused_naming_the_target(tmp_path, capsys, monkeypatch):
    """target_freq_hz = -1 fails the range check first; a positive target no receiver reaches fails tunability."""
    path = write_config(tmp_path, merged({"network": {"target_freq_hz": 433.9e6},
                                          "receivers": [{**RX, "center_freq_hz": 145.45e6}]}))
    assert_both_refuse(path, capsys, monkeypatch, "receivers[0] (id 'a', kind 'simulator'): centre 1.4545e+08 Hz",
                       "network.target_freq_hz = 4.339e+08 Hz")


def test_a_good_config_is_accepted_by_check_and_run_alike(tmp_path, capsys, monkeypatch):
    verdicts = check_and_run(write_config(tmp_path, merged({})), capsys, monkeypatch)
    assert verdicts == {"check": (0, None), "run": (0, None)}


@pytest.mark.parametrize("module, rx, install", [
    ("adi", {**PLUTO_RX, "rx_lo_hz": 145.5e6}, "needs pyadi-iio and libiio: pip install"),
    ("SoapySDR", SOAPY_RX, "scripts/link-soapysdr .venv"),
])
def test_a_missing_receiver_dependency_is_refused_with_the_install_command(tmp_path, capsys, monkeypatch, module, rx, install):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError, as when it is not installed
    path = write_config(tmp_path, merged({"receivers": [rx]}))
    line = assert_both_refuse(path, capsys, monkeypatch, f"receivers[0] (id {rx['id']!r}, kind {rx['kind']!r}): "
                              f"receiver kind {rx['kind']!r} needs", install)
    assert "Traceback" not in line


def test_a_busy_metrics_port_exits_2_naming_key_port_and_host(tmp_path, capsys, monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = write_config(tmp_path, merged({"metrics": {"port": port}}))
        assert preflight_mod.busy_port_notes(from_dict(merged({"metrics": {"port": port}}), source="site.toml")) == [
            f"site.toml: metrics.port {port} on 127.0.0.1: address already in use right now; heimdall run would stop there"]
        verdicts = check_and_run(path, capsys, monkeypatch)
    assert verdicts["check"] == (0, None)  # a warning: free or busy is only known when binding
    assert verdicts["run"] == (2, f"heimdall: error: {path}: metrics.port {port} on 127.0.0.1: address already in use")


def test_a_busy_output_endpoint_exits_2_naming_key_and_endpoint(tmp_path, capsys, monkeypatch):
    ctx = zmq.Context()
    busy = ctx.socket(zmq.PUB)
    try:
        busy.bind("tcp://127.0.0.1:*")
        endpoint = busy.getsockopt_string(zmq.LAST_ENDPOINT)
        path = write_config(tmp_path, merged({"output": {"endpoint": endpoint}}))
        assert preflight_mod.busy_port_notes(from_dict(merged({"output": {"endpoint": endpoint}}), source="s.toml")) == [
            f"s.toml: output.endpoint {endpoint}: address already in use right now; heimdall run would stop there"]
        verdicts = check_and_run(path, capsys, monkeypatch)
    finally:
        busy.close(linger=0)
        ctx.term()
    assert verdicts["run"] == (2, f"heimdall: error: {path}: output.endpoint {endpoint}: address already in use")


def test_ring_and_grid_bounds_follow_the_structures_the_daemon_allocates(monkeypatch):
    """At the limit itself a config is accepted; one sample or cell more is refused (a limit, not a guess)."""
    cfg = from_dict(merged({}), source="site.toml")
    per_ring = (int(cfg.pipeline.buffer_s * cfg.features.sample_rate_hz)) * preflight_mod.RING_SAMPLE_BYTES
    monkeypatch.setattr(preflight_mod, "memory_limit_bytes", lambda: per_ring)
    preflight_mod._check_receiver_count(cfg)
    from streamer.core.geodesy import network_geometry
    from streamer.estimators.physics import PhysicsGrid, grid_bytes

    cells, size = grid_bytes(cfg.estimator.physics, network_geometry(cfg)[2], 1)
    assert cells == PhysicsGrid.from_config(cfg).grid_en_m.shape[0]
    monkeypatch.setattr(preflight_mod, "memory_limit_bytes", lambda: max(per_ring, size))
    assert preflight_mod.preflight(cfg) == []
    monkeypatch.setattr(preflight_mod, "memory_limit_bytes", lambda: per_ring - 1)
    with pytest.raises(ConfigError, match="site.toml: pipeline.buffer_s: 4.0 s"):
        preflight_mod.preflight(cfg)


def test_check_names_the_onnx_provider_that_will_run_and_warns_on_two_runtimes(monkeypatch):
    cfg = from_dict(merged({}), source="site.toml")
    text = preflight_mod.provider_summary(cfg, ["AzureExecutionProvider", "CPUExecutionProvider"])
    assert text.startswith("ONNX Runtime provider CPUExecutionProvider runs the model (estimator.providers: "
                           "CUDAExecutionProvider, CPUExecutionProvider; available here: AzureExecutionProvider, ")
    gpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert preflight_mod.provider_summary(cfg, gpu).startswith("ONNX Runtime provider CUDAExecutionProvider runs")
    # CUDA listed but not loading: the session's own first provider is what runs
    assert preflight_mod.provider_summary(cfg, gpu, running="CPUExecutionProvider").startswith(
        "ONNX Runtime provider CPUExecutionProvider runs")
    versions = {"onnxruntime": "1.18.0", "onnxruntime-gpu": "1.18.0"}
    monkeypatch.setattr(preflight_mod.importlib.metadata, "version", lambda dist: versions[dist])
    (note,) = preflight_mod.onnxruntime_notes()
    assert "both onnxruntime 1.18.0 and onnxruntime-gpu 1.18.0 are installed" in note
    assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'onnxruntime-gpu>=1.17'" in note


def test_check_prints_the_provider_that_runs_the_shipped_model(tmp_path, capsys):
    from streamer.cli import main

    path = write_config(tmp_path, merged({"estimator": {"kind": "onnx"}}))
    assert main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ONNX Runtime provider CPUExecutionProvider runs the model (estimator.providers: CUDAExecutionProvider, " \
           "CPUExecutionProvider; available here: " in out


def test_a_runner_whose_dependency_is_missing_stops_instead_of_retrying_forever(monkeypatch):
    from receivers.base import ReceiverContext, TallyDropCounter
    from streamer.daemon.runner import ReceiverRunner

    cfg = from_dict(merged({"receivers": [{**PLUTO_RX, "rx_lo_hz": 145.5e6}]}), source="site.toml")
    monkeypatch.setitem(sys.modules, "adi", None)
    runner = ReceiverRunner(cfg.receivers[0], ReceiverContext(config=cfg, drops=TallyDropCounter()), lambda b, r: None)
    runner.start()
    try:
        runner._thread.join(5.0)
        assert not runner._thread.is_alive(), "the runner still retries a missing package"
    finally:
        runner.stop(timeout_s=1.0)
    assert "receiver kind 'pluto' needs pyadi-iio and libiio" in runner.fatal


def _recording(base, rate_hz: float, centres_hz: list[float]):
    import numpy as np
    import sigmf

    data = base.with_name(base.name + sigmf.SIGMF_DATASET_EXT)
    np.zeros(1000 * len(centres_hz), np.complex64).tofile(data)
    meta = sigmf.SigMFFile(data_file=data, global_info={sigmf.DATATYPE_KEY: "cf32_le", sigmf.SAMPLE_RATE_KEY: rate_hz})
    for i, centre in enumerate(centres_hz):
        meta.add_capture(1000 * i, metadata={sigmf.FREQUENCY_KEY: centre})
    meta.tofile(base)
    return base.with_name(base.name + sigmf.SIGMF_METADATA_EXT)


def test_a_recording_whose_band_cannot_reach_the_target_is_refused_by_check_and_run(tmp_path, capsys, monkeypatch):
    meta = _recording(tmp_path / "rx", 48_000.0, [145.45e6])
    path = write_config(tmp_path, merged({"receivers": [{"id": "r1", "kind": "sigmf", "lat": 45.0, "lon": 7.0,
                                                         "path": meta.name}]}))
    assert_both_refuse(path, capsys, monkeypatch, "receivers[0] (id 'r1', kind 'sigmf'): centre 1.4545e+08 Hz at "
                       "48000 S/s cannot be channelized to network.target_freq_hz = 1.455e+08 Hz")


def test_a_recording_with_some_unreachable_captures_is_a_warning(tmp_path):
    meta = _recording(tmp_path / "rx", 48_000.0, [145.49e6, 145.45e6])
    cfg = from_dict(merged({"receivers": [{"id": "r1", "kind": "sigmf", "lat": 45.0, "lon": 7.0, "path": str(meta)}]}),
                    source="site.toml")
    (note,) = preflight_mod.preflight(cfg)
    assert note.startswith("site.toml: receivers[0] (id 'r1', kind 'sigmf'): centre 1.4545e+08 Hz at 48000 S/s")
    assert note.endswith("those recorded captures will be dropped as untunable")


def test_an_edge_config_is_checked_as_heimdall_receiver_uses_it(tmp_path, capsys):
    """A one-receiver edge config is no daemon config (min_receivers), and check says how to check it as an edge."""
    from streamer.cli import main

    assert main(["check", "-c", "config/examples/edge.toml"]) == 2
    assert "heimdall check --receiver ID -c FILE" in capsys.readouterr().err
    assert main(["check", "--receiver", "torino", "-c", "config/examples/edge.toml"]) == 0
    assert "ok for heimdall receiver torino" in capsys.readouterr().out
    edge = tmp_path / "edge.toml"
    edge.write_text('[security]\ncurve_ingest = true\nsecret_key = "edge.key_secret"\nserver_key = "daemon.key"\n'
                    '[[receivers]]\nid = "torino"\nkind = "simulator"\nlat = 45.0\nlon = 7.6\n')
    assert main(["check", "--receiver", "torino", "-c", str(edge)]) == 2
    err = capsys.readouterr().err
    assert f"{edge}: security.secret_key" in err and str(tmp_path / "edge.key_secret") in err
    assert main(["receiver", "torino", "-c", str(edge)]) == 2  # the edge itself gives the same verdict
    assert f"{edge}: security.secret_key" in capsys.readouterr().err



def test_a_receiver_tuned_inside_a_watched_channel_is_warned_of_its_dc_offset():
    def receivers(centres, kind="rtl_tcp", **extra):
        return [{"id": f"r{k}", "kind": kind, "lat": 45.0 + 0.1 * k, "lon": 7.0 + 0.1 * (k % 2), "center_freq_hz": c,
                 **({"host": "127.0.0.1", "port": 1234} if kind == "rtl_tcp" else {}), **extra}
                for k, c in enumerate(centres)]

    one = from_dict({"network": {"target_freq_hz": 145.5e6}, "receivers": receivers([145.503e6, 145.45e6, 145.25e6])},
                    source="one.toml")
    (note,) = [n for n in preflight_mod.preflight(one) if "DC offset" in n]
    assert note.startswith("one.toml: receivers[0] (id 'r0', kind 'rtl_tcp'): tuned to 145503000 Hz, inside channel '145.5'")
    band = from_dict({"band": {"start_hz": 145.45e6, "stop_hz": 145.5e6, "spacing_hz": 12_500.0},
                      "receivers": receivers([145.4e6, 145.4e6, 145.4625e6])}, source="band.toml")
    assert [n.split(": ", 2)[1] for n in preflight_mod.preflight(band) if "DC offset" in n] == ["receivers[2] (id 'r2', kind 'rtl_tcp')"]
    simulated = receivers([145.5e6, 145.45e6, 145.4e6], kind="simulator")
    assert not [n for n in preflight_mod.preflight(from_dict({"receivers": simulated})) if "DC offset" in n]
    simulated[0]["dc_offset_db"] = 20.0  # a simulated receiver has one only when told to
    assert [n for n in preflight_mod.preflight(from_dict({"receivers": simulated})) if "DC offset" in n]
