"""Argument tables of ``heimdall train`` and the shipped model's path, importable without torch.

streamer/cli.py takes ``heimdall train``'s options (``add_train_arguments``) from here, so its parser and
``--help`` work on an install without the ``train`` extra; it runs the command with ``models.train.train.run``,
which imports this module (the dependency runs one way).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from models import shipped_model_path

#: The window keyings ``heimdall train --traffic`` offers (``models.train.dataset``'s traffic presets).
TRAFFIC_CHOICES = ("onair", "full", "partial", "bursts")


def default_out() -> Path:
    return shipped_model_path()


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``heimdall train``."""
    parser.add_argument("--out", type=Path, default=default_out(), help="ONNX file to write (default %(default)s)")
    parser.add_argument("--budget-minutes", type=float, default=30.0, help="wall-time cap of the whole command (min)")
    parser.add_argument("--n-train", type=int, default=16384, help="simulated training windows")
    parser.add_argument("--n-val", type=int, default=2048, help="simulated validation windows (other networks)")
    parser.add_argument("--windows-per-network", type=positive_int, default=64,
                        help="training windows drawn from each random network (fewer = more networks for the same "
                             "--n-train; validation always 64)")
    parser.add_argument("--steps", type=int, default=3000, help="optimiser steps (the shipped model: 3000)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dim", type=int, default=128, help="token width")
    parser.add_argument("--layers", type=int, default=3, help="self-attention blocks")
    parser.add_argument("--head", choices=("grid", "direct"), default="grid",
                        help="output head: 'grid' (a posterior over a grid with inferred propagation parameters) or "
                             "'direct' (position and covariance straight from the pooled tokens)")
    parser.add_argument("--heard-weight", type=float, default=0.3,
                        help="weight of the auxiliary loss teaching the grid head which receivers heard")
    parser.add_argument("--channel-power", action=argparse.BooleanOptionalAction, default=True,
                        help="grid head: measure each receiver's in-channel power, noise and SNR as the daemon's "
                             "channel_power does and learn small corrections to them (the shipped model, since "
                             "0.5.0); --no-channel-power reads them off the strongest and quietest band with wide "
                             "learned corrections, as 0.4.0 did")
    parser.add_argument("--drop-prob", type=float, default=0.1, help="extra receiver outage probability per batch")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="processes generating data")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--cache-dir", type=Path, default=None, help="reuse/store generated data here (same seed = same data)")
    parser.add_argument("--eval-n", type=int, default=1000, help="draws per scored set written into the metadata (0: skip)")
    parser.add_argument("--report", type=Path, default=None, help="also write the training report as JSON here")
    parser.add_argument("--traffic", choices=TRAFFIC_CHOICES, default="onair",
                        help="how the drawn windows are keyed: on-air mix of full, partial and burst windows (default), "
                             "or one kind only (models/train/dataset.py)")
    parser.add_argument("--frame-mask", action=argparse.BooleanOptionalAction, default=True,
                        help="give the model the frame_mask input (pool each window over its active frames; default on)")
    parser.add_argument("--channelized", action=argparse.BooleanOptionalAction, default=True,
                        help="render windows at 2x the model rate through the daemon's channelizer, as live data "
                             "arrives (how the shipped model is trained); --no-channelized renders at the model "
                             "rate, about half the data time")

