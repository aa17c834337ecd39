"""The ``heimdall`` commands (streamer.cli's table names each one's module) and the tools behind them: run, check,
listen, the edge receiver, keys, kinds, calibrate, calibrate-ellipses, record, soak and the benches, built on the
daemon's parts. Nothing in the daemon imports them."""

from __future__ import annotations

import argparse


def describe_with_module_doc(parser: argparse.ArgumentParser, module_doc: str) -> None:
    """A command's ``--help`` from its module docstring: the first line as the description, the rest (up to an
    ``Examples`` section) after the options, line breaks kept."""
    text = module_doc.split("Examples\n")[0]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description, parser.epilog = text.split("\n")[0], text.split("\n", 2)[2]
