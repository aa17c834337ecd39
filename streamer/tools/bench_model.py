"""``heimdall bench model``: batch-1 latency of an ONNX model: ``OnnxSession.run``, ``session.run``, I/O binding.

All three are timed in the same process on the same inputs, so the difference is what the estimator adds
(normalisation, zero-filling and padding to ``max_receivers``, output checks). The input is one window of
``--receivers`` receivers at seeded random positions (within 50 km), with dBm frames made by
``streamer.dsp.features.mel_frames_dbm`` from seeded complex noise plus a tone at a random level per receiver.

A third path, ``io_binding``, runs the raw session through ONNX Runtime's I/O binding with buffers on the
provider's device (``cuda:0`` with ``--provider cuda``, host memory on the CPU provider) allocated once and
reused on every call: each call copies the window into the bound input buffers (``OrtValue.update_inplace``,
host to device on a GPU), runs, and copies the outputs back to host arrays, which is what a daemon on a GPU
must do per window. ``--provider cuda`` asks for the CUDA execution provider; if it is not available the run
says so and reports the provider ONNX Runtime actually used.

The window is keyed for its second half only, and every path feeds the frame mask the daemon would
(``DetectionRule.frame_activity``): as the ``frame_mask`` input to a model that takes it, as the active frames
repeated (``fill_with_active_frames``) to one that does not.

With ``--model`` given more than once, the models are timed in the same process on the same window, their
iterations interleaved in rounds (``--rounds``) so that a change in the machine's load falls on all of them, and
each later model's p50 and p99 are printed as ratios of the first one's.

Examples (shell)
----------------
``heimdall bench model --model models/heimdall-0.6.0.onnx --iterations 2000``
``heimdall bench model --model OLD.onnx --model models/heimdall-0.6.0.onnx --iterations 4000``
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from streamer.config import PhysicsConfig
from streamer.core.geodesy import SearchArea
from streamer.dsp.features import mel_frames_dbm, normalise
from streamer.estimators.contract import (
    AREA_INPUT,
    ELLIPSE_OUTPUT,
    FRAME_MASK_INPUT,
    OUTPUT_NAMES,
    SITE_INPUT,
    search_area_row,
    site_propagation,
)
from streamer.estimators.onnx import CPU, OnnxSession, fill_with_active_frames

CUDA = "CUDAExecutionProvider"


def default_model() -> Path:
    """The shipped model (what the daemon runs when ``estimator.model`` is not set)."""
    from models import shipped_model_path

    return shipped_model_path()


def example_window(estimator: OnnxSession, n_rx: int, seed: int = 0):
    """One window ``[1, n_rx, M, T]`` dBm, receiver positions ``[1, n_rx, 3]`` km and mask, from seeded IQ: noise,
    and a tone at a random level per receiver keyed up halfway through the window."""
    spec = estimator.spec
    rng = np.random.default_rng(seed)
    n = spec.n_samples
    t = np.arange(n) / spec.sample_rate_hz
    iq = (rng.standard_normal((n_rx, n)) + 1j * rng.standard_normal((n_rx, n))) * 1e-3
    iq += (10 ** rng.uniform(-4, -1, (n_rx, 1))) * np.exp(2j * np.pi * 300.0 * t) * (t >= t[n // 2])
    frames = mel_frames_dbm(iq.astype(np.complex64), spec, calibration_db=-60.0)[None]
    enu = np.concatenate([rng.uniform(-50, 50, (1, n_rx, 2)), rng.uniform(-0.2, 0.5, (1, n_rx, 1))], axis=-1)
    return frames.astype(np.float32), enu.astype(np.float32), np.ones((1, n_rx), np.float32)


def _percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "max_ms": float(ms.max()), "n": int(ms.size)}


def _time(fn, iterations: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


#: The site row the benchmark feeds a model that takes one: the default config's ``estimator.physics``, as the daemon
#: would feed it.
BENCH_SITE = site_propagation(PhysicsConfig())
#: The search area it feeds a model that takes one: the example window's receivers (+-50 km) with a 30 km margin.
BENCH_AREA = search_area_row(SearchArea(-80e3, 80e3, -80e3, 80e3))


def example_frame_mask(frames: np.ndarray) -> np.ndarray:
    """The daemon's per-frame activity decision (``DetectionRule`` of the config defaults) on ``frames``: [1, T] bool."""
    from streamer.config import Config
    from streamer.dsp.detection import DetectionRule

    config = Config()
    return DetectionRule.from_config(config).frame_activity(frames, config.features)


def raw_feeds(estimator: OnnxSession, frames, enu, mask, frame_mask=None) -> dict[str, np.ndarray]:
    """What ``OnnxSession.run`` hands the session: normalised, padded to ``max_receivers``, ``BENCH_SITE`` and
    ``BENCH_AREA``, and ``frame_mask`` ([1, T] bool; ``None``: every frame) as the model takes it."""
    r = estimator.max_receivers
    n_rx = frames.shape[1]
    norm = estimator.metadata.normalisation
    if frame_mask is not None and not estimator.takes_frame_mask:
        frames = fill_with_active_frames(frames, frame_mask)
    feats = np.zeros((1, r, *frames.shape[2:]), np.float32)
    feats[:, :n_rx] = normalise(frames, norm.offset_db, norm.scale_db)
    pos = np.zeros((1, r, 3), np.float32)
    pos[:, :n_rx] = enu
    m = np.zeros((1, r), np.float32)
    m[:, :n_rx] = mask
    feeds = {"features": feats, "rx_enu_km": pos, "rx_mask": m}
    if estimator.takes_site:
        feeds[SITE_INPUT] = BENCH_SITE[None]
    if estimator.takes_area:
        feeds[AREA_INPUT] = BENCH_AREA[None]
    if estimator.takes_frame_mask:
        feeds[FRAME_MASK_INPUT] = (np.ones((1, frames.shape[-1]), np.float32) if frame_mask is None
                                   else frame_mask.astype(np.float32))
    return feeds


def bound_runner(session, feeds: dict[str, np.ndarray], device: str):
    """A call that runs ``session`` through I/O binding with input and output buffers on ``device``, allocated once.

    Each call copies ``feeds`` into the bound inputs and returns the outputs as host arrays, so the copies a
    deployment on that device pays per window are inside the timing; the buffers themselves are reused.
    """
    import onnxruntime as ort

    binding = session.io_binding()
    inputs = {name: ort.OrtValue.ortvalue_from_numpy(array, device, 0) for name, array in feeds.items()}
    for name, value in inputs.items():
        binding.bind_ortvalue_input(name, value)
    shapes = {o.name: [1, *o.shape[1:]] for o in session.get_outputs()}
    names = [name for name in (*OUTPUT_NAMES, ELLIPSE_OUTPUT) if name in shapes]  # what the daemon reads
    outputs = [ort.OrtValue.ortvalue_from_shape_and_type(shapes[name], np.float32, device, 0) for name in names]
    for name, value in zip(names, outputs):
        binding.bind_ortvalue_output(name, value)

    def run() -> list[np.ndarray]:
        for name, value in inputs.items():
            value.update_inplace(feeds[name])
        session.run_with_iobinding(binding)
        # On the CPU, numpy() is a view of the reused buffer; the copy keeps each call's answer its own.
        return [np.array(value.numpy()) for value in outputs]

    return run


PATHS = ("estimator_run", "raw_session_run", "io_binding")


def _runners(model: Path, provider: str, receivers: int, threads: int) -> tuple[dict, dict]:
    """The result header of ``model`` and its three timed calls (``PATHS``) on the example window."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    providers = (CUDA, CPU) if provider == "cuda" else (CPU,)
    estimator = OnnxSession(model, providers=providers, session_options=options)
    frames, enu, mask = example_window(estimator, receivers)
    frame_mask = example_frame_mask(frames)
    feeds = raw_feeds(estimator, frames, enu, mask, frame_mask)
    session = estimator.session
    device = "cuda" if estimator.provider == CUDA else "cpu"
    result = {"model": str(model), "provider_requested": provider, "provider": estimator.provider,
              "receivers": receivers, "max_receivers": estimator.max_receivers, "threads": threads,
              "onnxruntime": ort.__version__, "frame_mask_input": estimator.takes_frame_mask,
              "active_frames": int(frame_mask.sum()), "frames": int(frame_mask.size), "io_binding_device": f"{device}:0"}
    if provider == "cuda" and estimator.provider != CUDA:
        result["note"] = f"CUDA requested but ONNX Runtime runs on {estimator.provider}"
    calls = {"estimator_run": lambda: estimator.run(frames, enu, mask, BENCH_SITE, BENCH_AREA, frame_mask=frame_mask),
             "raw_session_run": lambda: session.run(estimator.output_names, feeds),
             "io_binding": bound_runner(session, feeds, device)}
    return result, calls


def bench_models(models: list[Path], *, provider: str = "cpu", receivers: int = 7, iterations: int = 2000,
                 warmup: int = 200, threads: int = 1, rounds: int = 1) -> list[dict]:
    """Latency percentiles (ms) of ``OnnxSession.run``, raw ``session.run`` and ``bound_runner`` on one batch-1
    window, for each model; ``iterations`` per path and model, split into ``rounds`` that take the models in turn."""
    if rounds < 1 or iterations < rounds:
        raise ValueError(f"--rounds: expected 1 <= rounds <= iterations ({iterations}), got {rounds}")
    load_start = list(os.getloadavg())
    prepared = [_runners(model, provider, receivers, threads) for model in models]
    samples = [{path: [] for path in PATHS} for _ in models]
    for k in range(rounds):
        count = iterations // rounds + (1 if k < iterations % rounds else 0)
        for (_, calls), timed in zip(prepared, samples):
            for path in PATHS:
                timed[path] += _time(calls[path], count, warmup if k == 0 else 0)
    load_end = list(os.getloadavg())
    results = []
    for (result, _), timed in zip(prepared, samples):
        result.update({path: _percentiles(timed[path]) for path in PATHS})
        result.update(load_average_start=load_start, load_average_end=load_end, rounds=rounds)
        results.append(result)
    return results


def bench_model(model: Path, *, provider: str = "cpu", receivers: int = 7, iterations: int = 2000,
                warmup: int = 200, threads: int = 1) -> dict:
    """``bench_models`` of one model."""
    return bench_models([model], provider=provider, receivers=receivers, iterations=iterations, warmup=warmup,
                        threads=threads)[0]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``heimdall bench model``."""
    parser.add_argument("--model", type=Path, action="append", default=None,
                        help="ONNX model (default: the shipped one); give it more than once to compare models in one run")
    parser.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--receivers", type=int, default=7, help="receivers in the window (<= the model's max)")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds that take the models in turn (default: 1 for one model, 10 for several)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON (a list with several models)")


def run(args: argparse.Namespace) -> int:
    """Run ``heimdall bench model`` with parsed arguments."""
    models = args.model or [default_model()]
    rounds = args.rounds if args.rounds is not None else (1 if len(models) == 1 else 10)
    results = bench_models(models, provider=args.provider, receivers=args.receivers, iterations=args.iterations,
                           warmup=args.warmup, threads=args.threads, rounds=rounds)
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
        return 0
    first = results[0]
    print(f"load average {' '.join(f'{v:.2f}' for v in first['load_average_start'])} at start ({os.cpu_count()} CPUs); "
          f"batch 1, {first['receivers']} receivers, {first['active_frames']} of {first['frames']} frames active"
          + (f", {rounds} interleaved rounds" if len(results) > 1 else ""))
    for res in results:
        told = "frame_mask input" if res["frame_mask_input"] else "active frames repeated (no frame_mask input)"
        print(f"model {res['model']} on {res['provider']} ({res['threads']} thread(s)), {told}")
        for key in PATHS:
            s = res[key]
            line = f"  {key:<16} p50 {s['p50_ms']:.3f} ms  p99 {s['p99_ms']:.3f} ms  mean {s['mean_ms']:.3f} ms  (n={s['n']})"
            if res is not first:
                base = first[key]
                line += f"  x{s['p50_ms'] / base['p50_ms']:.2f} p50, x{s['p99_ms'] / base['p99_ms']:.2f} p99 of the first model"
            print(line)
        if "note" in res:
            print(f"  note: {res['note']}")
    print(f"  (io_binding: reused buffers on {first['io_binding_device']}, window copied in and results out each call)")
    print(f"load average {' '.join(f'{v:.2f}' for v in first['load_average_end'])} at end")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``heimdall bench model`` entry point (also ``python -m streamer.tools.bench_model``)."""
    parser = argparse.ArgumentParser(prog="heimdall bench model", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
