"""``heimdall bench filterbank``: the filter bank (``streamer.dsp.filterbank.FilterBank``) against the
machine's raw FFT of the same samples and against today's path, one ``Channelizer`` per channel, timed in the
same process.

Input: ``--seconds`` of one receiver at ``--rate`` (2.4 MS/s by default), seeded complex64 noise whose level is
drawn per channel (a crowded band), distinct throughout (no block repeats), cut into ``--block-ms`` blocks as a
receiver delivers them. Memory is bounded by that input (8 bytes a sample) and one block's output.

Paths timed on that input, best and median of ``--repeats`` (CPU seconds of this process, ``time.process_time``):

* ``bank``: ``FilterBank`` with every channel of the ``--spacing`` grid (192 x 12.5 kHz, oversampling 2, 25 kS/s
  each), block by block; and the same bank asked for ``FEW_CHANNELS`` channels;
* ``raw FFT``: ``scipy.fft.fft(workers=1)`` of the same samples as ``N``-point frames, ``FRAMES_PER_CALL`` per
  call and as one batch per block, and pyFFTW (one thread, a measured plan per shape) where it is installed; the
  best is the reference. Also printed: the FFTs the bank itself computes
  (a forward FFT of ``fft_len`` inputs every ``hop``, and one inverse FFT of ``fft_len/M`` points per channel
  each time), which the bank cannot go below;
* ``channelizers``: today's path, one ``Channelizer`` (mixer + polyphase resampler to the same 25 kS/s) per
  channel: ``--channelizers`` channels spread over the band are timed over the whole input and the time is
  scaled to all channels (each costs the same: only its mixer's offset differs).

Rates are input samples per CPU second (MS/s). Targets printed beside the ratios: bank / raw FFT >= 0.5 and
bank / all channelizers >= 20. FFTs run on one thread (``workers=1``) and BLAS (the DFT path and the
channelizers' matrix products) is held to one thread (threadpoolctl), so every path runs on one core.

Examples (shell)
----------------
``heimdall bench filterbank``
``heimdall bench filterbank --seconds 2 --repeats 5 --json``
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import scipy.fft

from receivers.base import IQBlock
from streamer.dsp import filterbank
from streamer.dsp.channelizer import Channelizer
from streamer.dsp.filterbank import FilterBank, channel_range
from streamer.dsp.frame_fft import measured_fftw
from streamer.tools.bench_features import blas_one_thread

#: Channels of the bank's second timed run (spread over the band): a receiver watching a few channels.
FEW_CHANNELS = 16
#: N-point frames per FFT call in the chunked raw-FFT run.
FRAMES_PER_CALL = 128
#: Targets (docs/performance.md), printed beside the measured ratios.
TARGET_BANK_OVER_RAW_FFT = 0.5
TARGET_BANK_OVER_CHANNELIZERS = 20.0
CENTER_HZ = 145.0e6
T0_NS = 1_700_000_000_000_000_000


def input_blocks(rate_hz: float, spacing_hz: float, seconds: float, block_ms: float, seed: int) -> list[IQBlock]:
    """Consecutive blocks of one receiver: noise whose level is drawn per channel (-70 to -20 dBFS), a crowded band."""
    block_len = round(rate_hz * block_ms / 1000)
    if block_len < 1:
        raise ValueError(f"bench filterbank: --block-ms {block_ms} gives blocks of no sample at {rate_hz} Hz")
    n = block_len * max(1, round(seconds * 1000 / block_ms))
    n_channels = filterbank.channel_count(rate_hz, spacing_hz)
    rng = np.random.default_rng(seed)
    spectrum = rng.standard_normal(n) + 1j * rng.standard_normal(n)
    channel_of_bin = np.round(np.fft.fftfreq(n, 1 / n_channels)).astype(int) % n_channels
    level = 10 ** (rng.uniform(-70.0, -20.0, n_channels) / 20)
    x = np.fft.ifft(spectrum * level[channel_of_bin]).astype(np.complex64) * np.float32(np.sqrt(n))
    return [
        IQBlock("bench", x[i : i + block_len], i, T0_NS + round(i * 1e9 / rate_hz), "gps", rate_hz, CENTER_HZ)
        for i in range(0, n, block_len)
    ]


def timed_cpu(fn, repeats: int) -> dict:
    """Best and median CPU seconds (``time.process_time``) of ``repeats`` calls, after one warm-up call."""
    fn()
    seconds = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        seconds.append(time.process_time() - t0)
    return {"best_s": min(seconds), "median_s": float(np.median(seconds)), "repeats": repeats}


def bank_runner(blocks: list[IQBlock], rate_hz: float, spacing_hz: float, channels: list[int], **prototype):
    """A call that streams ``blocks`` through a fresh-state ``FilterBank`` for ``channels`` (``prototype``: its
    ``passband_hz`` and ``stopband_hz``)."""
    bank = FilterBank(rate_hz, CENTER_HZ, spacing_hz, channels, **prototype)

    def run():
        bank.reset()
        for block in blocks:
            bank.process(block)

    return run


def raw_fft_runners(blocks: list[IQBlock], bank: FilterBank) -> dict:
    """Name -> call that FFTs the blocks' samples on one thread: ``N``-point frames; and the bank's own transforms,
    a forward FFT of ``fft_len`` inputs every ``hop`` and an inverse FFT of ``fft_len/M`` points per channel each."""
    rows, n_channels = FRAMES_PER_CALL, bank.n_channels
    stream = np.concatenate([block.samples for block in blocks])
    count = max(0, (len(stream) - bank.fft_len) // bank.hop + 1)
    step = stream.strides[0]
    segments = np.ndarray((count, bank.fft_len), np.complex64, stream, 0, (bank.hop * step, step))
    bins = bank.fft_len // bank.decimation
    channel_bands = np.resize(stream, (len(bank.channels), bins))  # the inverse FFTs' input (its values do not matter)

    def frames(block: IQBlock, step: int) -> np.ndarray:
        x = block.samples
        count = (len(x) - n_channels) // step + 1
        return np.ndarray((count, n_channels), np.complex64, x, 0, (step * x.strides[0], x.strides[0]))

    def chunked():
        for block in blocks:
            f = frames(block, n_channels)
            for i in range(0, len(f), rows):
                scipy.fft.fft(f[i : i + rows], axis=-1, workers=1)

    def whole():
        for block in blocks:
            scipy.fft.fft(frames(block, n_channels), axis=-1, workers=1)

    def own():
        for segment in segments:
            scipy.fft.fft(segment, workers=1)
            scipy.fft.ifft(channel_bands, axis=-1, workers=1)

    runners = {
        f"{n_channels}-pt frames, {rows} per call": chunked,
        f"{n_channels}-pt frames, one batch per block": whole,
    }
    transform = measured_fftw()  # where pyFFTW is installed: its plans are made in the untimed warm-up call
    if transform is not None:

        def fftw():
            for block in blocks:
                f = frames(block, n_channels)
                for i in range(0, len(f), rows):
                    transform(f[i : i + rows])

        runners[f"{n_channels}-pt frames, {rows} per call, FFTW"] = fftw
    runners[f"the bank's own: {bank.fft_len}-pt every {bank.hop}, {len(bank.channels)} x {bins}-pt inverse"] = own
    return runners


def channelizer_runner(blocks: list[IQBlock], rate_hz: float, spacing_hz: float, out_rate_hz: float,
                       channels: list[int]):
    """A call that streams ``blocks`` through one fresh-state ``Channelizer`` per channel of ``channels``."""
    stages = [Channelizer(rate_hz, CENTER_HZ, CENTER_HZ + k * spacing_hz, out_rate_hz) for k in channels]

    def run():
        for stage in stages:
            stage.reset()
            for block in blocks:
                stage.process(block)

    return run


def bench_filterbank(*, rate_hz: float = 2.4e6, spacing_hz: float = 12_500.0, seconds: float = 1.0,
                     block_ms: float = 10.0, repeats: int = 3, channelizers: int = 4, seed: int = 0,
                     passband_hz: float | None = None, stopband_hz: float | None = None) -> dict:
    """Every path on the same input; see the module doc. ``passband_hz``, ``stopband_hz``: the prototype's
    (``FilterBank``'s; None: its defaults, the channel and the neighbour's centre)."""
    prototype = {"passband_hz": passband_hz, "stopband_hz": stopband_hz}
    limit, blas = blas_one_thread()
    result = {"load_average_start": list(os.getloadavg()), "blas": blas}
    blocks = input_blocks(rate_hz, spacing_hz, seconds, block_ms, seed)
    n_in = sum(len(b.samples) for b in blocks)
    all_channels = list(range(channel_range(filterbank.channel_count(rate_hz, spacing_hz))[0],
                              channel_range(filterbank.channel_count(rate_hz, spacing_hz))[1] + 1))
    probe = FilterBank(rate_hz, CENTER_HZ, spacing_hz, all_channels, **prototype)
    count = min(FEW_CHANNELS, len(all_channels))
    few = [all_channels[i * len(all_channels) // count] for i in range(count)]
    sampled = [all_channels[i * len(all_channels) // channelizers] for i in range(channelizers)]
    result.update({"rate_hz": rate_hz, "spacing_hz": spacing_hz, "channels": len(all_channels),
                   "oversampling": probe.oversampling, "out_rate_hz": probe.out_rate_hz,
                   "taps": len(probe.taps), "passband_hz": probe.passband_hz,
                   "stopband_hz": probe.stopband_hz, "fft_len": probe.fft_len, "hop": probe.hop, "input_samples": n_in,
                   "blocks": len(blocks),
                   "block_samples": len(blocks[0].samples), "channelizers_timed": sampled})

    def rate(t: dict, scale: float = 1.0) -> dict:
        best_s, median_s = t["best_s"] * scale, t["median_s"] * scale
        return {**t, "best_s": best_s, "median_s": median_s, "best_msps": n_in / best_s / 1e6,
                "median_msps": n_in / median_s / 1e6}

    with limit:
        result["bank"] = rate(timed_cpu(bank_runner(blocks, rate_hz, spacing_hz, all_channels, **prototype), repeats))
        result["bank_few"] = rate(timed_cpu(bank_runner(blocks, rate_hz, spacing_hz, few, **prototype), repeats))
        result["bank_few"]["channels"] = few
        raw = {label: rate(timed_cpu(fn, repeats))
               for label, fn in raw_fft_runners(blocks, probe).items()}
        plain = [label for label in raw if "bank's own" not in label]
        best = max(plain, key=lambda label: raw[label]["best_msps"])
        result["raw_fft"], result["raw_fft_best"] = raw, best
        scale = len(all_channels) / len(sampled)
        result["channelizers"] = rate(timed_cpu(
            channelizer_runner(blocks, rate_hz, spacing_hz, probe.out_rate_hz, sampled), repeats), scale)
    result["bank_over_raw_fft"] = result["bank"]["best_msps"] / raw[best]["best_msps"]
    own = next(label for label in raw if "bank's own" in label)
    result["bank_over_own_ffts"] = result["bank"]["best_msps"] / raw[own]["best_msps"]
    result["bank_over_channelizers"] = result["bank"]["best_msps"] / result["channelizers"]["best_msps"]
    result["load_average_end"] = list(os.getloadavg())
    return result


def _met(value: float, target: float) -> str:
    return f"(target >= {target:g}: {'met' if value >= target else 'not met'})"


def format_lines(res: dict) -> list[str]:
    """The human-readable report of ``bench_filterbank``'s result."""
    load = "load average {:.2f} {:.2f} {:.2f}"
    lines = [f"bench filterbank: {res['blas']}; FFTs single-thread (workers=1); "
             + load.format(*res["load_average_start"]) + " at start",
             (f"input: {res['rate_hz'] / 1e6:g} MS/s, {res['input_samples'] / res['rate_hz']:g} s in {res['blocks']} "
             f"blocks of {res['block_samples']} samples; {res['channels']} channels x {res['spacing_hz'] / 1e3:g} kHz, "
             f"oversampling {res['oversampling']} ({res['out_rate_hz'] / 1e3:g} kS/s each), a {res['taps']}-tap "
             f"prototype (flat to {res['passband_hz'] / 1e3:g} kHz, stopband from {res['stopband_hz'] / 1e3:g} kHz) by "
             f"{res['fft_len']}-pt FFTs every {res['hop']} samples; MS/s of input per CPU second, best / median of "
             f"{res['bank']['repeats']}")]

    def row(label: str, r: dict) -> str:
        return f"  {label:<68}{r['best_msps']:9.2f} / {r['median_msps']:9.2f} MS/s"

    lines.append(row(f"bank, all {res['channels']} channels", res["bank"]))
    lines.append(row(f"bank, {len(res['bank_few']['channels'])} channels", res["bank_few"]))
    for label, r in res["raw_fft"].items():
        lines.append(row(f"raw FFT {label}", r))
    sampled = res["channelizers_timed"]
    lines.append(row(f"{res['channels']} Channelizers (timed {len(sampled)}, scaled)", res["channelizers"]))
    ratio = res["bank_over_raw_fft"]
    lines.append(f"  bank / raw FFT          {ratio:7.3f}  {_met(ratio, TARGET_BANK_OVER_RAW_FFT)}, against "
                 f"{res['raw_fft_best']}")
    lines.append(f"  bank / its own FFTs     {res['bank_over_own_ffts']:7.3f}  (its forward and inverse FFTs alone)")
    ratio = res["bank_over_channelizers"]
    lines.append(f"  bank / {res['channels']} channelizers {ratio:7.1f}  {_met(ratio, TARGET_BANK_OVER_CHANNELIZERS)}; "
                 f"channelizers timed: channels {sampled}, scaled x{res['channels'] / len(sampled):g}")
    lines.append(load.format(*res["load_average_end"]) + " at end")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``heimdall bench filterbank``."""
    parser.add_argument("--rate", type=float, default=2.4e6, help="input sample rate (Hz)")
    parser.add_argument("--spacing", type=float, default=12_500.0, help="channel spacing (Hz); must divide --rate")
    parser.add_argument("--passband-hz", type=float, default=None,
                        help="the prototype's flat band from a channel's centre (Hz; default half the spacing)")
    parser.add_argument("--stopband-hz", type=float, default=None,
                        help="where the prototype's stopband starts from a channel's centre (Hz; default the spacing)")
    parser.add_argument("--seconds", type=float, default=1.0, help="input length (s)")
    parser.add_argument("--block-ms", type=float, default=10.0, help="block length as a receiver delivers it (ms)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each path (best and median)")
    parser.add_argument("--channelizers", type=int, default=4,
                        help="channelizers timed (spread over the band) and scaled to all channels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    """Run ``heimdall bench filterbank`` with parsed arguments."""
    if args.repeats < 1 or args.channelizers < 1 or args.seconds <= 0 or args.block_ms <= 0:
        raise argparse.ArgumentError(None, "--repeats and --channelizers must be >= 1, --seconds and --block-ms > 0")
    try:
        res = bench_filterbank(rate_hz=args.rate, spacing_hz=args.spacing, seconds=args.seconds, block_ms=args.block_ms,
                               passband_hz=args.passband_hz, stopband_hz=args.stopband_hz,
                               repeats=args.repeats, channelizers=args.channelizers, seed=args.seed)
    except ValueError as exc:  # the bank's own checks (a spacing that does not divide the rate, ...)
        raise argparse.ArgumentError(None, str(exc)) from exc
    print(json.dumps(res, indent=2) if args.json else "\n".join(format_lines(res)))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``heimdall bench filterbank`` entry point (also ``python -m streamer.tools.bench_filterbank``)."""
    parser = argparse.ArgumentParser(prog="heimdall bench filterbank", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
