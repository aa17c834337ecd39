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

``--batch N`` (repeatable) times every path on batches of N distinct windows (seeds 0 .. N-1), batch 1 always
among them as the baseline, ``--iterations`` calls per batch size, interleaved in the same rounds: per call p50
and p99, the cost per window (p50 / N) and that as a ratio of batch 1's. ``OnnxSession.run`` takes the batch as
the daemon's ``OnnxModel.estimate_batch`` hands it over (one call per tick for every active channel's window); on
CUDA it runs through its own I/O binding (``OnnxSession.io_binding``). ``--physics`` also times the physics
posterior on the default network (``config/default.toml``) at the same batch sizes: N calls of
``PhysicsGrid.estimate`` against one ``PhysicsGrid.estimate_batch`` of the same N windows (transmitters at
seeded places and powers within the prior, seeded shadowing; receivers below the detection level censored).

Examples (shell)
----------------
``heimdall bench model --model models/heimdall-0.6.0.onnx --iterations 2000``
``heimdall bench model --model OLD.onnx --model models/heimdall-0.6.0.onnx --iterations 4000``
``heimdall bench model --batch 1 --batch 8 --batch 32 --iterations 300 --physics``
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
from streamer.tools.argtypes import whole_number_at_least_one

CUDA = "CUDAExecutionProvider"


def default_model() -> Path:
    """The shipped model (what the daemon runs when ``estimator.model`` is not set)."""
    from models import shipped_model_path

    return shipped_model_path()


def example_window(estimator: OnnxSession, n_rx: int, seed: int = 0, batch: int = 1):
    """``batch`` windows ``[batch, n_rx, M, T]`` dBm, receiver positions ``[batch, n_rx, 3]`` km and mask: window b
    is ``_one_window`` of seed ``seed + b``, so no two windows of a batch share their frames or positions."""
    windows = [_one_window(estimator, n_rx, seed + b) for b in range(batch)]
    return tuple(np.concatenate(parts) for parts in zip(*windows))


def _one_window(estimator: OnnxSession, n_rx: int, seed: int):
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
    """What ``OnnxSession.run`` hands the session for a batch ``[B, ...]``: normalised, padded to ``max_receivers``,
    ``BENCH_SITE`` and ``BENCH_AREA`` on every row, and ``frame_mask`` ([B, T] bool; ``None``: every frame) as the
    model takes it."""
    r = estimator.max_receivers
    batch, n_rx = frames.shape[:2]
    norm = estimator.metadata.normalisation
    if frame_mask is not None and not estimator.takes_frame_mask:
        frames = fill_with_active_frames(frames, frame_mask)
    feats = np.zeros((batch, r, *frames.shape[2:]), np.float32)
    feats[:, :n_rx] = normalise(frames, norm.offset_db, norm.scale_db)
    pos = np.zeros((batch, r, 3), np.float32)
    pos[:, :n_rx] = enu
    m = np.zeros((batch, r), np.float32)
    m[:, :n_rx] = mask
    feeds = {"features": feats, "rx_enu_km": pos, "rx_mask": m}
    if estimator.takes_site:
        feeds[SITE_INPUT] = np.repeat(BENCH_SITE[None], batch, axis=0)
    if estimator.takes_area:
        feeds[AREA_INPUT] = np.repeat(BENCH_AREA[None], batch, axis=0)
    if estimator.takes_frame_mask:
        feeds[FRAME_MASK_INPUT] = (np.ones((batch, frames.shape[-1]), np.float32) if frame_mask is None
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
    batch = feeds["features"].shape[0]
    shapes = {o.name: [batch, *o.shape[1:]] for o in session.get_outputs()}
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


def _runners(model: Path, provider: str, receivers: int, threads: int, batch: int = 1) -> tuple[dict, dict]:
    """The result header of ``model`` and its three timed calls (``PATHS``) on ``batch`` example windows."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    providers = (CUDA, CPU) if provider == "cuda" else (CPU,)
    estimator = OnnxSession(model, providers=providers, session_options=options)
    frames, enu, mask = example_window(estimator, receivers, batch=batch)
    frame_mask = example_frame_mask(frames)
    feeds = raw_feeds(estimator, frames, enu, mask, frame_mask)
    session = estimator.session
    device = "cuda" if estimator.provider == CUDA else "cpu"
    result = {"model": str(model), "provider_requested": provider, "provider": estimator.provider,
              "receivers": receivers, "max_receivers": estimator.max_receivers, "threads": threads,
              "onnxruntime": ort.__version__, "frame_mask_input": estimator.takes_frame_mask,
              "active_frames": int(frame_mask[0].sum()), "frames": int(frame_mask.shape[-1]),
              "io_binding_device": f"{device}:0", "estimator_io_binding": estimator.io_binding}
    if provider == "cuda" and estimator.provider != CUDA:
        result["note"] = f"CUDA requested but ONNX Runtime runs on {estimator.provider}"
    site, area = np.repeat(BENCH_SITE[None], batch, axis=0), np.repeat(BENCH_AREA[None], batch, axis=0)
    calls = {"estimator_run": lambda: estimator.run(frames, enu, mask, site, area, frame_mask=frame_mask),
             "raw_session_run": lambda: session.run(estimator.output_names, feeds),
             "io_binding": bound_runner(session, feeds, device)}
    return result, calls


def _interleaved(calls: list[dict], iterations: int, warmup: int, rounds: int) -> list[dict[str, list[float]]]:
    """Seconds per call of every ``calls[i][name]``, ``iterations`` each, split into ``rounds`` that take them in turn."""
    if rounds < 1 or iterations < rounds:
        raise ValueError(f"--rounds: expected 1 <= rounds <= iterations ({iterations}), got {rounds}")
    samples = [{name: [] for name in group} for group in calls]
    for k in range(rounds):
        count = iterations // rounds + (1 if k < iterations % rounds else 0)
        for group, timed in zip(calls, samples):
            for name, fn in group.items():
                timed[name] += _time(fn, count, warmup if k == 0 else 0)
    return samples


def _batch_sizes(batches) -> list[int]:
    """``batches`` in order without repeats, batch 1 (the baseline) first."""
    sizes = [int(b) for b in batches]
    if any(b < 1 for b in sizes):
        raise ValueError(f"--batch: expected batch sizes >= 1, got {sizes}")
    return list(dict.fromkeys([1, *sizes]))


def _per_window(stats: dict, batch: int, baseline: dict | None) -> dict:
    """``stats`` of calls of ``batch`` windows with the cost per window (p50 / batch, ms) and its ratio to
    ``baseline``'s (batch 1)."""
    per_window = stats["p50_ms"] / batch
    out = dict(stats, batch=batch, per_window_p50_ms=per_window)
    if baseline is not None:
        out["per_window_vs_batch_1"] = per_window / baseline["p50_ms"]
    return out


def bench_models(models: list[Path], *, provider: str = "cpu", receivers: int = 7, iterations: int = 2000,
                 warmup: int = 200, threads: int = 1, rounds: int = 1, batches=(1,)) -> list[dict]:
    """Latency percentiles (ms) of ``OnnxSession.run``, raw ``session.run`` and ``bound_runner`` for each model and
    batch size (batch 1 always), ``iterations`` calls per path, model and batch size, split into ``rounds`` that
    take them in turn. Each result holds batch 1's percentiles under the path names and every batch size's, with
    the cost per window, under ``"batches"``."""
    sizes = _batch_sizes(batches)
    load_start = list(os.getloadavg())
    prepared = [[_runners(model, provider, receivers, threads, batch) for batch in sizes] for model in models]
    samples = _interleaved([calls for per_model in prepared for _, calls in per_model], iterations, warmup, rounds)
    load_end = list(os.getloadavg())
    results = []
    for m, per_model in enumerate(prepared):
        timed = samples[m * len(sizes) : (m + 1) * len(sizes)]
        result = dict(per_model[0][0])
        by_batch = [{path: _percentiles(t[path]) for path in PATHS} for t in timed]
        result.update(by_batch[0])
        if len(sizes) > 1:
            result["batches"] = [{path: _per_window(stats[path], batch, by_batch[0][path]) for path in PATHS}
                                 for batch, stats in zip(sizes, by_batch)]
        result.update(load_average_start=load_start, load_average_end=load_end, rounds=rounds)
        results.append(result)
    return results


def bench_model(model: Path, *, provider: str = "cpu", receivers: int = 7, iterations: int = 2000,
                warmup: int = 200, threads: int = 1, batches=(1,)) -> dict:
    """``bench_models`` of one model."""
    return bench_models([model], provider=provider, receivers=receivers, iterations=iterations, warmup=warmup,
                        threads=threads, batches=batches)[0]


def physics_windows(grid, batch: int, seed: int = 0):
    """``batch`` windows for ``PhysicsGrid.estimate_batch`` (``[batch, R]`` received power dBm, heard, present,
    detection level dBm): transmitters at seeded places in the search area with seeded powers within the transmit
    power prior, the median path loss plus seeded shadowing (``shadowing_db``), every receiver present, heard where
    the received power reaches a seeded detection level (-124 .. -112 dBm) and censored below it."""
    from streamer.core.propagation import log_distance_path_loss_db, slant_distance_m

    physics, area = grid.physics, grid.area
    rng = np.random.default_rng(seed)
    n_rx = grid.rx_en_m.shape[0]
    tx = np.stack([rng.uniform(area.east_min_m, area.east_max_m, batch),
                   rng.uniform(area.north_min_m, area.north_max_m, batch)], axis=-1)
    loss = log_distance_path_loss_db(slant_distance_m(tx, physics.tx_alt_m, grid.rx_en_m, grid.rx_alt_m),
                                     physics.ref_loss_db, physics.path_loss_exponent)
    power = (rng.uniform(physics.tx_power_min_dbm, physics.tx_power_max_dbm, (batch, 1)) - loss
             + rng.normal(0.0, physics.shadowing_db, (batch, n_rx)))
    detection = rng.uniform(-124.0, -112.0, (batch, n_rx))
    return power, power >= detection, np.ones((batch, n_rx), bool), detection


def bench_physics(batches=(1,), *, iterations: int = 20, warmup: int = 2, rounds: int = 1) -> dict:
    """Per-call percentiles (ms) of ``batch`` single ``PhysicsGrid.estimate`` calls against one
    ``PhysicsGrid.estimate_batch`` of the same windows (``physics_windows``), for each batch size (batch 1 always),
    on the default network; ``iterations`` calls of each, in ``rounds`` that take the batch sizes in turn, with BLAS
    held to one thread (``bench_features.blas_one_thread``) so both paths run on one core."""
    from streamer.config import load
    from streamer.estimators.physics import PhysicsGrid
    from streamer.tools.bench_features import blas_one_thread

    grid = PhysicsGrid.from_config(load())
    sizes = _batch_sizes(batches)
    windows = {batch: physics_windows(grid, batch) for batch in sizes}

    def singles(power, heard, present, detection):
        return lambda: [grid.estimate(power[b], heard[b], present[b], detection[b]) for b in range(len(power))]

    calls = [{"single_calls": singles(*windows[batch]), "estimate_batch": lambda w=windows[batch]: grid.estimate_batch(*w)}
             for batch in sizes]
    limit, blas = blas_one_thread()
    with limit:
        samples = _interleaved(calls, iterations, warmup, rounds)
    stats = [{name: _percentiles(t[name]) for name in ("single_calls", "estimate_batch")} for t in samples]
    rows = []
    for batch, s in zip(sizes, stats):
        row = {name: _per_window(s[name], batch, stats[0][name]) for name in s}
        row["censored_windows"] = int((~windows[batch][1]).any(axis=1).sum())
        row["batch_vs_single_calls"] = s["estimate_batch"]["p50_ms"] / s["single_calls"]["p50_ms"]
        rows.append(row)
    return {"blas": blas, "receivers": int(grid.rx_en_m.shape[0]), "cells": int(grid.grid_en_m.shape[0]),
            "power_bins": int(grid.power_grid_dbm.shape[0]), "batches": rows}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``heimdall bench model``."""
    parser.add_argument("--model", type=Path, action="append", default=None,
                        help="ONNX model (default: the shipped one); give it more than once to compare models in one run")
    parser.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--receivers", type=int, default=7, help="receivers in the window (<= the model's max)")
    parser.add_argument("--iterations", type=int, default=2000, help="calls per path, model and batch size")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds that take the models and batch sizes in turn (default: 1 for one model at batch 1, else 10)")
    parser.add_argument("--batch", type=whole_number_at_least_one("windows"), action="append", default=None,
                        help="windows per call; give it more than once (batch 1 is always timed, as the baseline)")
    parser.add_argument("--physics", action="store_true",
                        help="also time the physics posterior: single estimate calls against estimate_batch, per batch size")
    parser.add_argument("--physics-iterations", type=int, default=20, help="calls per batch size of each physics path")
    parser.add_argument("--json", action="store_true", help="print the result as JSON (a list with several models)")


def _print_batches(res: dict) -> None:
    for path in PATHS:
        for row in res["batches"]:
            s = row[path]
            print(f"  {path:<16} batch {row[path]['batch']:>3}  p50 {s['p50_ms']:.3f} ms  p99 {s['p99_ms']:.3f} ms per call  "
                  f"{s['per_window_p50_ms']:.4f} ms/window  x{s['per_window_vs_batch_1']:.2f} of batch 1 per window")


def _print_physics(physics: dict) -> None:
    print(f"physics posterior, default network ({physics['receivers']} receivers, {physics['cells']} cells x "
          f"{physics['power_bins']} power bins; {physics['blas']})")
    for row in physics["batches"]:
        single, batched = row["single_calls"], row["estimate_batch"]
        print(f"  batch {single['batch']:>3} ({row['censored_windows']} censored): {single['batch']} x estimate "
              f"p50 {single['p50_ms']:.2f} ms p99 {single['p99_ms']:.2f} ms, estimate_batch p50 {batched['p50_ms']:.2f} ms "
              f"p99 {batched['p99_ms']:.2f} ms; {batched['per_window_p50_ms']:.3f} ms/window batched, "
              f"x{row['batch_vs_single_calls']:.2f} of single calls (n={batched['n']})")


def run(args: argparse.Namespace) -> int:
    """Run ``heimdall bench model`` with parsed arguments."""
    models = args.model or [default_model()]
    batches = _batch_sizes(args.batch or [1])
    several = len(models) > 1 or len(batches) > 1
    rounds = args.rounds if args.rounds is not None else (min(10, args.iterations) if several else 1)
    results = bench_models(models, provider=args.provider, receivers=args.receivers, iterations=args.iterations,
                           warmup=args.warmup, threads=args.threads, rounds=rounds, batches=batches)
    physics = None
    if args.physics:
        physics = bench_physics(batches, iterations=args.physics_iterations,
                                rounds=min(rounds, args.physics_iterations))
        load_end = list(os.getloadavg())
        for res in results:
            res["physics"], res["load_average_end"] = physics, load_end
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
        return 0
    first = results[0]
    print(f"load average {' '.join(f'{v:.2f}' for v in first['load_average_start'])} at start ({os.cpu_count()} CPUs); "
          f"batch {', '.join(str(b) for b in batches)}, {first['receivers']} receivers, {first['active_frames']} of "
          f"{first['frames']} frames active" + (f", {rounds} interleaved rounds" if several else ""))
    for res in results:
        told = "frame_mask input" if res["frame_mask_input"] else "active frames repeated (no frame_mask input)"
        bound = ", OnnxSession.run through its I/O binding" if res["estimator_io_binding"] else ""
        print(f"model {res['model']} on {res['provider']} ({res['threads']} thread(s)), {told}{bound}")
        if "batches" in res:
            _print_batches(res)
        else:
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
    if physics is not None:
        _print_physics(physics)
    print(f"load average {' '.join(f'{v:.2f}' for v in first['load_average_end'])} at end")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``heimdall bench model`` entry point (also ``python -m streamer.tools.bench_model``)."""
    parser = argparse.ArgumentParser(prog="heimdall bench model", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
