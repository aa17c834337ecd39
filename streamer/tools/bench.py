"""``heimdall bench pipeline|band|model|censoring|features|filterbank|map|receivers``: the benchmarks. ``pipeline``,
``band``, ``model``, ``censoring``, ``features``, ``filterbank`` and ``map`` are streamer.tools.bench_<name>; ``receivers`` runs benchmarks/bench_receivers.py
of a source checkout with the options given after it."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from streamer.core.errors import HeimdallError

#: The source checkout's adapter benchmark (its peers live in tests/, so an installed package lacks it).
RECEIVERS_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_receivers.py"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommands of ``heimdall bench`` and their options."""
    from streamer.tools import (
        bench_band,
        bench_censoring,
        bench_features,
        bench_filterbank,
        bench_map,
        bench_model,
        bench_pipeline,
    )

    bench_sub = parser.add_subparsers(dest="bench", required=True)
    for name, module, text in (("pipeline", bench_pipeline, "channelizer + features + estimator as fast as possible"),
                               ("band", bench_band, "band pipeline (filter bank, emissions, estimates) as fast as possible"),
                               ("model", bench_model, "batch-1 model latency: OnnxSession vs raw ONNX Runtime"),
                               ("censoring", bench_censoring, "physics posterior with silent receivers: censoring where it matters vs everywhere"),
                               ("features", bench_features, "mel features vs scipy stft + librosa mel and raw FFT"),
                               ("filterbank", bench_filterbank, "channel filter bank vs raw FFT and one channelizer per channel"),
                               ("map", bench_map, "the live map in headless Chromium: first ellipse, heap soak, daemon p99 with pages open")):
        sub = bench_sub.add_parser(name, help=text, description=module.__doc__.split("\n")[0])
        module.add_arguments(sub)
        sub.set_defaults(bench_run=module.run, usage_error=sub.error)
    receivers = bench_sub.add_parser("receivers", help="each adapter against its peer (needs a source checkout)",
                                     add_help=False)
    # The script parses its own options (`heimdall bench receivers --help`): the CLI hands it the rest unread.
    receivers.set_defaults(bench_run=run_receivers, forward_unknown=True, usage_error=receivers.error)


def run_receivers(args: argparse.Namespace) -> int:
    if not RECEIVERS_SCRIPT.is_file():
        raise HeimdallError(f"{RECEIVERS_SCRIPT} not found: `heimdall bench receivers` needs a source checkout "
                            "(its peers live in tests/)")
    return subprocess.call([sys.executable, str(RECEIVERS_SCRIPT), *args.rest])


def run(args: argparse.Namespace) -> int:
    return args.bench_run(args)
