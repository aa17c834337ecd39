"""``heimdall kinds``: the receiver kinds of receivers/registry.py, one ``kind module:Class`` line each,
without importing any adapter."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``heimdall kinds`` takes no options."""


def run(args: argparse.Namespace) -> int:
    from receivers.registry import KINDS

    for kind, target in sorted(KINDS.items()):
        print(f"{kind:14s} {target}")
    return 0
