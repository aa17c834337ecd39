"""The `heimdall` command line: check, kinds, listen's line format, and errors that name what is wrong."""

from __future__ import annotations

import select
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from streamer.cli import main
from streamer.dsp.features import FeatureSpec
from streamer.tools.listen import format_localization
from tests.helpers.onnx_models import known_model, save

SITE = """
[pipeline]
min_receivers = 1
[estimator]
kind = "{kind}"
{model}
[[receivers]]
id = "a"
kind = "simulator"
lat = 45.0
lon = 7.0
"""


def write_site(tmp_path, kind="physics", model=None):
    path = tmp_path / "site.toml"
    path.write_text(SITE.format(kind=kind, model=f'model = "{model}"' if model else ""))
    return path


def test_check_accepts_a_valid_config(tmp_path, capsys):
    path = write_site(tmp_path)
    assert main(["check", "-c", str(path)]) == 0
    assert f"{path}: ok (1 receivers, estimator physics)" in capsys.readouterr().out


def test_check_accepts_a_config_with_a_contract_following_model(tmp_path, capsys):
    model = save(known_model(FeatureSpec(), max_receivers=4), tmp_path)
    assert main(["check", "-c", str(write_site(tmp_path, "onnx", model))]) == 0


@pytest.mark.parametrize(
    "make_model, message",
    [
        (lambda d: d / "absent.onnx", "missing"),
        (lambda d: (d / "corrupt.onnx").write_bytes(b"\x00\x01 not a protobuf" * 10) and d / "corrupt.onnx", "not a valid ONNX model"),
        (lambda d: save(known_model(FeatureSpec(n_mels=16), max_receivers=4), d, "other_spec.onnx"), "features.n_mels: model 16, config 32"),
        (lambda d: save(known_model(FeatureSpec(), max_receivers=4, meta=None), d, "no_meta.onnx"), "heimdall"),
    ],
)
def test_check_refuses_a_missing_corrupt_or_contract_breaking_model(tmp_path, capsys, make_model, message):
    path = write_site(tmp_path, "onnx", make_model(tmp_path))
    assert main(["check", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("heimdall: error: ") and message in err


def test_check_names_file_and_key_of_a_wrong_config(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('[pipeline]\nmin_receivers = "three"\n')
    assert main(["check", "-c", str(path)]) == 2
    assert f"{path}: pipeline.min_receivers: expected int, got str 'three'" in capsys.readouterr().err


def test_run_with_a_wrong_config_exits_non_zero_before_starting(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[metrics]\nport = 70000\n")
    proc = subprocess.run([sys.executable, "-m", "streamer", "run", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "metrics.port: expected 0..65535, got 70000" in proc.stderr


def test_kinds_lists_every_registered_adapter(capsys):
    assert main(["kinds"]) == 0
    out = capsys.readouterr().out
    for kind in ("simulator", "zmq", "gnuradio_zmq", "soapy", "pluto", "kiwisdr", "rtl_tcp"):
        assert kind in out


def test_listen_formats_one_line_per_localization():
    msg = {"t_end_ns": 1_790_000_000_500_000_000, "lat": 45.123456, "lon": 7.654321, "estimator": "physics",
           "ellipse": {"p": 0.95, "semi_major_m": 12_345.0, "semi_minor_m": 6_789.0, "azimuth_deg": 33.3},
           "receivers": ["a", "b", "c"], "latency_ms": {"processing": 12.34, "age": 600.0}}
    line = format_localization(msg)
    # a and b are the semi-axes; proc is the daemon's processing time, not the message's age (600 ms here)
    assert line == "2026-09-21T14:13:20.500Z 45.12346 7.65432 95% a=12.3 km b=6.8 km az 33 rx=a,b,c physics proc 12.3 ms"


def free_tcp_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def test_listen_with_no_publisher_says_so_on_stderr_and_keeps_waiting():
    endpoint = free_tcp_endpoint()  # nothing binds it: no daemon
    proc = subprocess.Popen([sys.executable, "-m", "streamer", "listen", endpoint, "--hint-after", "0.3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stderr], [], [], 30.0)
        assert ready, "no hint on stderr within 30 s"
        hint = proc.stderr.readline()
        assert hint == (f"heimdall listen: no message on topic 'loc' from {endpoint} in 0.3 s: is the daemon running "
                        f"(`heimdall run`), and is {endpoint} its output.endpoint? Still waiting.\n")
        assert proc.poll() is None  # still waiting after the hint
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out == "" and err == ""


def test_a_training_run_with_no_windows_per_network_is_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--windows-per-network", "0"])
    assert "--windows-per-network: expected a positive integer, got 0" in capsys.readouterr().err


NO_TORCH = "import sys; sys.modules['torch'] = None; from streamer.cli import main; raise SystemExit(main(sys.argv[1:]))"


def test_train_options_are_checked_and_a_missing_torch_is_named_with_the_install_command(tmp_path):
    """Without torch, `heimdall train --help` and a bad option still answer; a run says how to install torch."""
    def train(*options):
        return subprocess.run([sys.executable, "-c", NO_TORCH, "train", *options], capture_output=True, text=True,
                              timeout=120)

    help_run = train("--help")
    assert help_run.returncode == 0 and "--windows-per-network" in help_run.stdout
    bad = train("--windows-per-network", "0")
    assert bad.returncode == 2 and "--windows-per-network: expected a positive integer, got 0" in bad.stderr
    run = train("--out", str(tmp_path / "model.onnx"))
    assert run.returncode == 2
    assert run.stderr == "heimdall: error: heimdall train needs torch: pip install -e '.[train]'\n"


IMPORTS_AFTER = """import sys
from streamer.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(sorted(m for m in sys.modules if m == "torch" or m.startswith(("models.train", "streamer.tools."))))"""


@pytest.mark.parametrize("argv, tools", [(["--help"], []), (["check"], ["streamer.tools.check"])], ids=["help", "check"])
def test_help_and_check_import_no_trainer_and_only_their_own_command(argv, tools):
    """The command table imports a command's module only when it runs: never torch or models.train here."""
    proc = subprocess.run([sys.executable, "-c", IMPORTS_AFTER, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == repr(tools)


REPO = Path(__file__).resolve().parents[1]
TINY_SIMULATED = """
[estimator]
kind = "physics"

[[receivers]]
id = "a"
kind = "simulator"
lat = 45.0
lon = 7.0
realtime = false
sample_rate_hz = 48000.0
center_freq_hz = 145.49e6
"""


def heimdall_after_a_plain_install(*argv, timeout=120):
    """`heimdall ARGV` with only the base dependencies importable (tests/helpers/base_install.py)."""
    return subprocess.run([sys.executable, "-m", "tests.helpers.base_install", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("argv", [["calibrate", "--help"], ["record", "--help"], ["calibrate-ellipses", "--help"],
                                  ["check", "-c", "config/examples/sigmf.toml"]],
                         ids=["calibrate", "record", "calibrate-ellipses", "check-sigmf-example"])
def test_sigmf_commands_answer_after_the_readme_install(argv):
    proc = heimdall_after_a_plain_install(*argv)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


def test_record_writes_a_collection_after_the_readme_install(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_SIMULATED)
    proc = heimdall_after_a_plain_install("record", "-c", str(config), "--seconds", "0.2", str(tmp_path / "out"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == ["a.sigmf-data", "a.sigmf-meta", "default.sigmf-collection"]


@pytest.mark.parametrize("missing", ["sigmf", "jsonschema"])
def test_a_base_dependency_missing_from_the_venv_is_named_with_the_install_command(tmp_path, missing):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_SIMULATED)
    proc = heimdall_after_a_plain_install(f"--missing={missing}", "record", "-c", str(config), "--seconds", "0.2",
                                          str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.endswith(f"heimdall: error: heimdall record needs {missing!r}, a dependency of heimdall-streamer "
                                f"missing from {sys.prefix}: pip install -e .\n"), proc.stderr
    assert "Traceback" not in proc.stderr
    replay = heimdall_after_a_plain_install(f"--missing={missing}", "check", "-c", "config/examples/sigmf.toml")
    assert replay.returncode == 2
    assert replay.stderr == f"heimdall: error: receiver kind 'sigmf' needs {missing!r}: pip install -e .\n"


def test_heimdall_train_runs_the_trainer_that_its_options_were_parsed_for(monkeypatch):
    pytest.importorskip("torch", reason="the trainer needs torch: pip install -e '.[train]'")
    import models.train.train as trainer

    seen = []
    monkeypatch.setattr(trainer, "run", lambda args: seen.append(args.n_train) or 7)
    assert main(["train", "--n-train", "64"]) == 7
    assert seen == [64]
