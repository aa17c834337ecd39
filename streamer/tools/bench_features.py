"""``heimdall bench features``: the feature stage (``streamer.dsp.features.mel_frames_dbm``) against the path a
user would write by hand and against the machine's raw FFT of the same frames, timed in the same process.

Two cases, each on distinct seeded signals per receiver (complex64 noise plus a tone at a random offset and level):

* ``wideband``: one call on ``--receivers`` receivers x ``--seconds`` of 2.4 MS/s input, n_fft 1024, hop 512,
  128 mels;
* ``window``: the daemon's case, the default ``FeatureSpec`` (24 kS/s, n_fft 512, hop 256, 32 mels, 0.5 s
  windows), one call per window of ``--receivers`` receivers, ``--windows`` windows.

Paths timed on the same input, best and median of ``--repeats``:

* ``stage``: ``mel_frames_dbm``, on each FFT backend this process has (``pipeline.fft``: scipy.fft, and FFTW
  where pyFFTW is installed), each with its ratios;
* ``naive``: ``scipy.signal.stft`` (two-sided, periodic Hann, no padding) then a mel filterbank built from
  ``librosa.filters.mel`` (HTK, unnormalised, one per side) applied as a matmul to the power, then dB; left out,
  with a line that says so, where librosa is not installed;
* ``raw FFT``: the single-thread FFT alone of the same frames, already cut and windowed:
  ``scipy.fft.fft(workers=1)`` on the whole batch and in the stage's chunks, and pyFFTW (one thread,
  ``FFTW_MEASURE``) in the same chunks where it is installed; the best of them is the reference.

Rates are input samples per second (MS/s): receivers x samples per receiver / seconds. Targets printed beside
the ratios: stage / naive >= 4 and stage / raw FFT >= 0.5. BLAS (the stage's and the naive path's matmuls) is
held to one thread (threadpoolctl), so every path runs on one core.

Examples (shell)
----------------
``heimdall bench features``
``heimdall bench features --repeats 9 --json``
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np
import scipy.fft

from streamer.dsp import features
from streamer.dsp.features import FeatureSpec, mel_frames_dbm
from streamer.dsp.frame_fft import FFTW_INSTALL_HINT, available_backends, measured_fftw

#: Targets (docs/performance.md), printed beside the measured ratios.
TARGET_STAGE_OVER_NAIVE = 4.0
TARGET_STAGE_OVER_RAW_FFT = 0.5

#: How the report names each ``pipeline.fft`` backend of the stage.
STAGE_LABELS = {"scipy": "scipy.fft", "fftw": "FFTW"}

WIDEBAND = dict(sample_rate_hz=2.4e6, n_fft=1024, hop=512, n_mels=128)


def signals(n_rows: int, n: int, spec: FeatureSpec, seed: int) -> np.ndarray:
    """``[n_rows, n]`` complex64: unit-power-ish noise at -60 dBFS plus a tone at a random offset and level per row."""
    rng = np.random.default_rng(seed)
    noise = (rng.standard_normal((n_rows, n)) + 1j * rng.standard_normal((n_rows, n))) * np.sqrt(0.5e-6)
    offset_hz = rng.uniform(-0.45, 0.45, (n_rows, 1)) * spec.sample_rate_hz
    level = 10 ** (rng.uniform(-50.0, -10.0, (n_rows, 1)) / 20)
    tone = level * np.exp(2j * np.pi * offset_hz * np.arange(n) / spec.sample_rate_hz)
    return (noise + tone).astype(np.complex64)


def naive_bank(spec: FeatureSpec) -> np.ndarray | None:
    """``[n_mels, n_fft]`` on unshifted bins from librosa's one-sided HTK bank (None without librosa)."""
    try:
        import librosa
    except ImportError:
        return None
    half, n_fft = spec.n_mels // 2, spec.n_fft
    with warnings.catch_warnings():  # wide specs have bands narrower than a bin near DC: librosa warns, rightly
        warnings.simplefilter("ignore", UserWarning)
        one = librosa.filters.mel(sr=spec.sample_rate_hz, n_fft=n_fft, n_mels=half, fmin=0.0,
                                  fmax=spec.sample_rate_hz / 2, htk=True, norm=None)  # [half, n_fft/2 + 1]
    bank = np.zeros((spec.n_mels, n_fft), np.float32)
    bank[half:, : n_fft // 2] = one[:, : n_fft // 2]  # bins 0 .. +fs/2 (exclusive)
    bank[:half, n_fft // 2 :] = one[::-1, n_fft // 2 : 0 : -1]  # bins -fs/2 .. -1, farthest band first
    return bank


def naive_mel_dbm(x: np.ndarray, spec: FeatureSpec, bank: np.ndarray) -> np.ndarray:
    """scipy.signal.stft, |Z|^2 rescaled to the stage's units (|X|^2 / (n_fft sum w^2)), bank @ power, dB."""
    import scipy.signal

    _, _, z = scipy.signal.stft(x, fs=spec.sample_rate_hz, window="hann", nperseg=spec.n_fft,
                                noverlap=spec.n_fft - spec.hop, return_onesided=False, boundary=None,
                                padded=False, scaling="spectrum")  # [..., n_fft, T], z = X / sum(w)
    w = scipy.signal.get_window("hann", spec.n_fft)
    power = np.abs(z) ** 2 * (w.sum() ** 2 / (spec.n_fft * np.sum(w**2)))
    return 10.0 * np.log10(bank @ power + spec.eps)


def windowed_frames(x: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """``[rows * T, n_fft]`` complex64: the stage's frames, cut and windowed, contiguous (made before timing)."""
    frames = np.lib.stride_tricks.sliding_window_view(x, spec.n_fft, axis=-1)[..., :: spec.hop, :][..., : spec.n_frames, :]
    return np.ascontiguousarray(frames * features.hann_periodic(spec.n_fft).astype(np.float32)).reshape(-1, spec.n_fft)


def chunk_frames(spec: FeatureSpec) -> int:
    """Frames per step in the stage (``features.CHUNK_BYTES`` of complex64)."""
    return max(1, features.CHUNK_BYTES // (spec.n_fft * 8))


def raw_fft_runners(frames: list[np.ndarray], step: int) -> dict:
    """Name -> call that transforms every array of ``frames`` (one per stage call) on one thread."""

    def whole():
        for f in frames:
            scipy.fft.fft(f, axis=-1, workers=1)

    def chunked():
        for f in frames:
            for i in range(0, len(f), step):
                scipy.fft.fft(f[i : i + step], axis=-1, workers=1)

    runners = {"scipy.fft whole batch": whole, "scipy.fft in stage chunks": chunked}
    transform = measured_fftw()
    if transform is None:
        return runners

    def fftw():
        for f in frames:
            for i in range(0, len(f), step):
                transform(f[i : i + step])

    fftw()  # plans made outside the timing
    runners["pyfftw in stage chunks"] = fftw
    return runners


def timed(fn, repeats: int) -> dict:
    """Best and median wall seconds of ``repeats`` calls (after one warm-up call)."""
    fn()
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return {"best_s": min(seconds), "median_s": float(np.median(seconds)), "repeats": repeats}


def bench_case(name: str, spec: FeatureSpec, calls: list[np.ndarray], repeats: int) -> dict:
    """Time stage, naive and raw FFT over ``calls`` (one array ``[R, n]`` per ``mel_frames_dbm`` call)."""
    n_in = sum(x.size for x in calls)
    res = {"case": name, "spec": spec.as_dict(), "calls": len(calls), "receivers": calls[0].shape[0],
           "samples_per_receiver_per_call": calls[0].shape[1], "input_samples": n_in}

    def rate(t: dict) -> dict:
        return {**t, "best_msps": n_in / t["best_s"] / 1e6, "median_msps": n_in / t["median_s"] / 1e6}

    backends = available_backends()
    res["stage"] = {b: rate(timed(lambda b=b: [mel_frames_dbm(x, spec, fft_backend=b) for x in calls], repeats))
                    for b in backends}
    bank = naive_bank(spec)
    if bank is None:
        res["naive"] = None
        res["naive_skipped"] = "librosa is not importable: pip install librosa to time the naive path"
    else:
        res["naive"] = rate(timed(lambda: [naive_mel_dbm(x, spec, bank) for x in calls], repeats))
        res["max_abs_diff_db"] = {b: float(max(np.max(np.abs(mel_frames_dbm(x, spec, fft_backend=b)
                                                             - naive_mel_dbm(x, spec, bank))) for x in calls))
                                  for b in backends}
        res["stage_over_naive"] = {b: res["stage"][b]["best_msps"] / res["naive"]["best_msps"] for b in backends}
    frames = [windowed_frames(x, spec) for x in calls]
    raw = {label: rate(timed(fn, repeats)) for label, fn in raw_fft_runners(frames, chunk_frames(spec)).items()}
    best = max(raw, key=lambda label: raw[label]["best_msps"])
    res["raw_fft"] = raw
    res["raw_fft_best"] = best
    res["stage_over_raw_fft"] = {b: res["stage"][b]["best_msps"] / raw[best]["best_msps"] for b in backends}
    return res


def blas_one_thread():
    """A context that holds BLAS to one thread (threadpoolctl), and a line saying so."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas"), "BLAS threads: 1 (threadpoolctl)"


def bench_features(*, receivers: int = 7, seconds: float = 0.5, windows: int = 20, repeats: int = 5,
                   seed: int = 0) -> dict:
    """Both cases; see the module doc."""
    limit, blas = blas_one_thread()
    result = {"load_average_start": list(os.getloadavg()), "blas": blas, "cases": []}
    with limit:
        wide = FeatureSpec(**WIDEBAND, window_s=seconds)
        result["cases"].append(bench_case("wideband", wide, [signals(receivers, wide.n_samples, wide, seed)], repeats))
        spec = FeatureSpec()
        calls = [signals(receivers, spec.n_samples, spec, seed + 1 + b) for b in range(windows)]
        result["cases"].append(bench_case("window", spec, calls, repeats))
    result["load_average_end"] = list(os.getloadavg())
    return result


def _met(value: float, target: float) -> str:
    return f"(target >= {target:g}: {'met' if value >= target else 'not met'})"


def format_lines(res: dict) -> list[str]:
    """The human-readable report of ``bench_features``'s result."""
    load = "load average {:.2f} {:.2f} {:.2f}"
    lines = [f"bench features: {res['blas']}; FFTs single-thread (workers=1); " + load.format(*res["load_average_start"])
             + " at start"]
    for case in res["cases"]:
        s = case["spec"]
        lines.append(f"{case['case']}: {s['sample_rate_hz'] / 1e6:g} MS/s, n_fft {s['n_fft']}, hop {s['hop']}, "
                     f"{s['n_mels']} mels; {case['calls']} call(s) of {case['receivers']} receivers x "
                     f"{case['samples_per_receiver_per_call']} samples; best / median of {case['stage']['scipy']['repeats']}")
        for b, r in case["stage"].items():
            lines.append(f"  stage mel_frames_dbm, {STAGE_LABELS[b]:<10}{r['best_msps']:9.2f} / {r['median_msps']:9.2f} MS/s")
        if "fftw" not in case["stage"]:
            lines.append(f"  stage mel_frames_dbm, FFTW: skipped: pyFFTW is not installed ({FFTW_INSTALL_HINT})")
        if case["naive"] is None:
            lines.append(f"  naive: skipped: {case['naive_skipped']}")
        else:
            lines.append(f"  naive stft + librosa mel    {case['naive']['best_msps']:9.2f} / {case['naive']['median_msps']:9.2f} MS/s")
        for label, r in case["raw_fft"].items():
            lines.append(f"  raw FFT {label:<26}{r['best_msps']:9.2f} / {r['median_msps']:9.2f} MS/s")
        for b in case["stage"]:
            label = f"stage ({STAGE_LABELS[b]})"
            if case["naive"] is not None:
                ratio = case["stage_over_naive"][b]
                lines.append(f"  {label + ' / naive':<28}{ratio:6.2f}  {_met(ratio, TARGET_STAGE_OVER_NAIVE)}")
            ratio = case["stage_over_raw_fft"][b]
            lines.append(f"  {label + ' / raw FFT':<28}{ratio:6.2f}  {_met(ratio, TARGET_STAGE_OVER_RAW_FFT)}, "
                         f"against {case['raw_fft_best']}")
            if case["naive"] is not None:
                lines.append(f"  {'max |' + label + ' - naive|':<28}{case['max_abs_diff_db'][b]:.2e} dB")
    lines.append(load.format(*res["load_average_end"]) + " at end")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``heimdall bench features``."""
    parser.add_argument("--receivers", type=int, default=7, help="receivers per call")
    parser.add_argument("--seconds", type=float, default=0.5, help="input per receiver in the wideband case (s)")
    parser.add_argument("--windows", type=int, default=20, help="windows (calls) in the daemon's case")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each path (best and median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    """Run ``heimdall bench features`` with parsed arguments."""
    res = bench_features(receivers=args.receivers, seconds=args.seconds, windows=args.windows,
                         repeats=args.repeats, seed=args.seed)
    print(json.dumps(res, indent=2) if args.json else "\n".join(format_lines(res)))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``heimdall bench features`` entry point (also ``python -m streamer.tools.bench_features``)."""
    parser = argparse.ArgumentParser(prog="heimdall bench features", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
