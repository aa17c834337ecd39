"""``heimdall bench model`` on a small exported model: all three paths timed, numbers sane, CUDA fallback reported."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="exporting a test model needs torch: pip install -e '.[train]'")

from models.train.export import export_model  # noqa: E402
from models.train.network import LocalizerNet  # noqa: E402
from models.train.train import metadata  # noqa: E402
from streamer.tools.bench_model import bench_model, bound_runner, example_window, main, raw_feeds  # noqa: E402
from streamer.estimators.onnx import OnnxSession  # noqa: E402
from streamer.estimators.contract import OUTPUT_NAMES  # noqa: E402
from streamer.dsp.features import FeatureSpec  # noqa: E402


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bench") / "m.onnx"
    export_model(LocalizerNet(dim=32, n_layers=1, heads=2), path, metadata(FeatureSpec(), {}))
    return path


def test_bench_times_estimator_and_raw_session(model_path):
    res = bench_model(model_path, iterations=30, warmup=5, receivers=5)
    for key in ("estimator_run", "raw_session_run", "io_binding"):
        assert res[key]["n"] == 30
        assert 0 < res[key]["p50_ms"] <= res[key]["p99_ms"] <= res[key]["max_ms"]
    assert res["provider"] == "CPUExecutionProvider"
    assert res["io_binding_device"] == "cpu:0"


def test_bound_runner_reuses_its_buffers_and_returns_what_session_run_returns(model_path):
    estimator = OnnxSession(model_path, providers=("CPUExecutionProvider",))
    feeds = raw_feeds(estimator, *example_window(estimator, 6, seed=1))
    run = bound_runner(estimator.session, feeds, "cpu")
    expected = estimator.session.run(list(OUTPUT_NAMES), feeds)
    first = run()
    for got, want in zip(first, expected):
        assert got.shape == want.shape
        assert (got == want).all()
    # A new window copied into the same buffers gives that window's answer, not the old one.
    other = raw_feeds(estimator, *example_window(estimator, 4, seed=2))
    for name, array in other.items():
        feeds[name][...] = array
    second = run()
    for got, want in zip(second, estimator.session.run(list(OUTPUT_NAMES), other)):
        assert (got == want).all()
    assert not (second[0] == first[0]).all()


def test_bench_cuda_request_reports_what_ran(model_path, capsys):
    assert main(["--model", str(model_path), "--provider", "cuda", "--iterations", "10", "--warmup", "2"]) == 0
    out = capsys.readouterr().out
    assert "raw_session_run" in out and "estimator_run" in out and "io_binding" in out
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "CUDA requested but ONNX Runtime runs on CPUExecutionProvider" in out


def test_cli_facing_modules_do_not_import_torch():
    import subprocess
    import sys

    code = ("import argparse, sys\n"
            "import models.train.commands as c, models.train.evaluate as e, streamer.tools.bench_model as b\n"
            "for add in (c.add_train_arguments, e.add_arguments, b.add_arguments): add(argparse.ArgumentParser())\n"
            "print('torch' in sys.modules)")
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "False"


def test_several_models_are_timed_in_one_run_with_the_frame_mask_fed_as_each_takes_it(model_path, tmp_path, capsys):
    torch.manual_seed(1)
    masked = tmp_path / "masked.onnx"
    export_model(LocalizerNet(dim=32, n_layers=1, heads=2, frame_mask_input=True), masked, metadata(FeatureSpec(), {}))
    assert main(["--model", str(model_path), "--model", str(masked), "--iterations", "20", "--warmup", "2",
                 "--rounds", "4"]) == 0
    out = capsys.readouterr().out
    assert "4 interleaved rounds" in out
    assert "active frames repeated (no frame_mask input)" in out and "frame_mask input" in out
    assert out.count("p99 of the first model") == 3  # every path of the second model, as a ratio of the first's
    frames, enu, mask = example_window(OnnxSession(masked), 5)
    from streamer.tools.bench_model import example_frame_mask

    active = example_frame_mask(frames)
    assert 0 < active.sum() < active.size  # keyed for half the window: the mask is exercised
    assert raw_feeds(OnnxSession(masked), frames, enu, mask, active)["frame_mask"].sum() == active.sum()
    with pytest.raises(ValueError, match="--rounds"):
        main(["--model", str(model_path), "--iterations", "3", "--rounds", "5"])


def test_batches_are_timed_per_window_against_batch_1_on_distinct_windows(model_path, capsys):
    from streamer.tools.bench_model import bench_models

    (res,) = bench_models([model_path], iterations=6, warmup=1, receivers=5, rounds=2, batches=[4, 2, 4])
    assert [row["estimator_run"]["batch"] for row in res["batches"]] == [1, 4, 2]  # batch 1 first, no repeats
    for row in res["batches"]:
        for path in ("estimator_run", "raw_session_run", "io_binding"):
            s = row[path]
            assert s["n"] == 6 and s["per_window_p50_ms"] == pytest.approx(s["p50_ms"] / s["batch"])
            assert s["per_window_vs_batch_1"] == pytest.approx(s["per_window_p50_ms"] / res["batches"][0][path]["p50_ms"])
    assert res["estimator_run"] == {k: v for k, v in res["batches"][0]["estimator_run"].items()
                                    if k not in ("batch", "per_window_p50_ms", "per_window_vs_batch_1")}
    estimator = OnnxSession(model_path, providers=("CPUExecutionProvider",))
    frames, enu, _ = example_window(estimator, 5, batch=3)
    assert frames.shape[0] == 3 and not np.array_equal(frames[0], frames[1]) and not np.array_equal(enu[1], enu[2])
    np.testing.assert_array_equal(frames[1:2], example_window(estimator, 5, seed=1)[0])
    with pytest.raises(ValueError, match="--batch"):
        bench_models([model_path], iterations=2, warmup=0, batches=[0])


def test_bound_runner_of_a_batch_returns_what_session_run_returns(model_path):
    from streamer.tools.bench_model import BENCH_AREA, BENCH_SITE, example_frame_mask

    estimator = OnnxSession(model_path, providers=("CPUExecutionProvider",))
    frames, enu, mask = example_window(estimator, 6, seed=3, batch=4)
    feeds = raw_feeds(estimator, frames, enu, mask, example_frame_mask(frames))
    got = bound_runner(estimator.session, feeds, "cpu")()
    for g, want in zip(got, estimator.session.run(list(OUTPUT_NAMES), feeds)):
        assert g.shape[0] == 4
        np.testing.assert_array_equal(g, want)
    # The session's own batched run (with its I/O binding on) gives the same rows.
    bound = OnnxSession(model_path, providers=("CPUExecutionProvider",), io_binding=True)
    out = bound.run(frames, enu, mask, BENCH_SITE, BENCH_AREA, frame_mask=example_frame_mask(frames))
    np.testing.assert_allclose(out.position_enu_km, got[0], rtol=0, atol=0)


def test_cli_batches_and_physics_in_one_run(model_path, capsys):
    assert main(["--model", str(model_path), "--batch", "1", "--batch", "3", "--iterations", "4", "--warmup", "1",
                 "--physics", "--physics-iterations", "2"]) == 0
    out = capsys.readouterr().out
    assert "batch 1, 3," in out and out.count("of batch 1 per window") == 6  # three paths x two batch sizes
    assert "physics posterior, default network (7 receivers" in out
    assert "batch   3 (" in out and "x estimate" in out and "of single calls" in out
    assert "load average" in out.splitlines()[-1]


def test_physics_windows_and_bench_physics():
    from streamer.config import load
    from streamer.estimators.physics import PhysicsGrid
    from streamer.tools.bench_model import bench_physics, physics_windows

    grid = PhysicsGrid.from_config(load())
    power, heard, present, detection = physics_windows(grid, 40)
    assert power.shape == heard.shape == present.shape == detection.shape == (40, 7)
    assert present.all() and ((power >= detection) == heard).all()
    assert 0 < (~heard).any(axis=1).sum() < 40  # both every-receiver-heard and censored windows
    res = bench_physics([2], iterations=1, warmup=0)
    assert [row["estimate_batch"]["batch"] for row in res["batches"]] == [1, 2]
    row = res["batches"][1]
    assert row["batch_vs_single_calls"] == pytest.approx(row["estimate_batch"]["p50_ms"] / row["single_calls"]["p50_ms"])


@pytest.mark.parametrize("value", ["0", "-3", "eight"])
def test_a_batch_that_is_not_a_positive_whole_number_is_a_usage_error(model_path, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--model", str(model_path), "--batch", value])
    assert exc.value.code == 2
    assert f"argument --batch: expected a whole number of windows >= 1, got '{value}'" in capsys.readouterr().err
