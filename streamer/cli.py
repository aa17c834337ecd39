"""``heimdall`` command line: a table of commands, each a module with ``add_arguments(parser)`` and
``run(args) -> int``, imported only when that command runs (so ``heimdall --help`` imports none of them).

Examples
--------
>>> build_parser("run").parse_args(["run", "-c", "site.toml"]).config
'site.toml'
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NamedTuple

from streamer import __version__
from streamer.core.errors import HeimdallError

TRAIN_INSTALL = "pip install -e '.[train]'"
BASE_INSTALL = "pip install -e ."
#: Foreign modules that daemon-side commands import lazily, all base dependencies in pyproject.toml.
BASE_FOREIGN_MODULES = ("sigmf", "jsonschema")


class Command(NamedTuple):
    """Where a command lives: ``module`` exposes ``add_arguments``, which builds its options on the subparser,
    and ``run_module`` (default: ``module``) exposes ``run``, which runs it with the parsed namespace and returns
    the exit status. ``run_module`` is imported only when the command runs, so a command's ``--help`` needs only
    what its options module imports."""

    module: str
    help: str
    add_arguments: str = "add_arguments"
    run: str = "run"
    run_module: str | None = None

    def runner(self):
        """The command's ``run`` function, importing its module on the first call."""
        def run(args: argparse.Namespace) -> int:
            return getattr(importlib.import_module(self.run_module or self.module), self.run)(args)
        return run


#: command -> its module and one-line help, in the order ``heimdall --help`` lists them.
COMMANDS: dict[str, Command] = {
    "run": Command("streamer.tools.daemon", "run the daemon (embedded default config: a simulated 7-receiver network)"),
    "listen": Command("streamer.tools.listen", "subscribe and print localizations"),
    "map": Command("streamer.tools.map", "serve a live web map of the daemon's output (needs the [map] extra)"),
    "cot": Command("streamer.tools.cot", "send each localization as a Cursor-on-Target event to TAK (UDP or TCP)"),
    "check": Command("streamer.tools.check", "validate a config (and its model)"),
    "receiver": Command("streamer.tools.edge", "run one configured receiver alone, publishing framed IQ over ZeroMQ"),
    "bench": Command("streamer.tools.bench", "benchmarks"),
    "record": Command("streamer.tools.record", "record what the configured receivers hear as a SigMF collection"),
    "train": Command("models.train.commands", "train the localization model (needs the [train] extra: torch)",
                     add_arguments="add_train_arguments", run_module="models.train.train"),
    "evaluate": Command("models.train.evaluate", "score models and the physics estimator on simulated and real data"),
    "evaluate-band": Command("streamer.tools.evaluate_band",
                             "run simulated band traffic through the band pipeline offline; detection and accuracy gates"),
    "calibrate": Command("streamer.tools.calibrate",
                         "fit receivers' calibration_db (and the path-loss exponent) from transmissions at known positions"),
    "calibrate-ellipses": Command("streamer.tools.calibrate_ellipses",
                                  "fit each estimator's ellipse size from its localizations of transmitters at known positions"),
    "score-live": Command("streamer.tools.score_live",
                          "score a running simulated network's localizations against its truth, by window class"),
    "soak": Command("streamer.tools.soak", "run the daemon under load and check memory, accounting, rate and latency"),
    "kinds": Command("streamer.tools.kinds", "list receiver kinds"),
    "keys": Command("streamer.tools.keys", "CURVE key files (docs/security.md)"),
}


def build_parser(*commands: str) -> argparse.ArgumentParser:
    """The ``heimdall`` parser: every command with its help line, and the options of ``commands`` (their
    modules imported). The namespace parsed for one of them carries ``run``, its function, and ``usage_error``,
    its subparser's ``error``."""
    parser = argparse.ArgumentParser(prog="heimdall", description="Heimdall streamer: IQ from many receivers -> transmitter positions")
    parser.add_argument("--version", action="version", version=f"heimdall {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        command_parser = sub.add_parser(name, help=command.help, description=command.help)
        if name in commands:
            module = importlib.import_module(command.module)
            getattr(module, command.add_arguments)(command_parser)
            command_parser.set_defaults(run=command.runner(), usage_error=command_parser.error)
    return parser


def command_name(argv: list[str]) -> str | None:
    """The command ``argv`` names: its first word that is not an option (``heimdall`` has no option taking a value)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    name = command_name(argv)
    try:
        parser = build_parser(*([name] if name in COMMANDS else []))
        args, rest = parser.parse_known_args(argv)
        if getattr(args, "forward_unknown", False):  # a command that hands its options to another program
            args.rest = rest
        elif rest:
            args.usage_error(f"unrecognized arguments: {' '.join(rest)}")
        level = logging.WARNING if args.verbose == 0 and args.command == "listen" else logging.INFO
        if args.verbose >= 2:
            level = logging.DEBUG
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        try:
            return args.run(args)
        except argparse.ArgumentError as exc:  # options the parser alone cannot judge (their combination)
            args.usage_error(str(exc))
    except HeimdallError as exc:
        print(f"heimdall: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing == "torch":
            print(f"heimdall: error: heimdall {name} needs torch: {TRAIN_INSTALL}", file=sys.stderr)
            return 2
        if missing not in BASE_FOREIGN_MODULES:
            raise
        # A base dependency gone from the environment is a broken install, not a bug: say how to repair it.
        print(f"heimdall: error: heimdall {name} needs {missing!r}, a dependency of heimdall-streamer "
              f"missing from {sys.prefix}: {BASE_INSTALL}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
