"""``heimdall run``: the daemon in the foreground. SIGTERM and SIGINT stop it cleanly; SIGHUP asks it to
reload its config (streamer.daemon.app.Daemon)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from streamer.tools.signals import stop_on_signals

log = logging.getLogger("heimdall")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``heimdall run``."""
    parser.add_argument("-c", "--config", help="TOML config (default: the embedded config/default.toml)")


def run(args: argparse.Namespace) -> int:
    """Run until stopped; a config the daemon refuses raises ``HeimdallError`` before anything starts."""
    # Handlers before anything slow (imports, config, model): a SIGHUP or SIGTERM while the daemon starts must not
    # end the process with the default action.
    stop = stop_on_signals()
    reload_requested = threading.Event()
    signal.signal(signal.SIGHUP, lambda signum, frame: reload_requested.set())
    log.info("starting with %s", args.config or "the embedded default config")
    from streamer import config as config_mod
    from streamer.daemon.app import Daemon

    cfg = config_mod.load(args.config)
    daemon = Daemon(cfg, reload_requested=reload_requested)
    daemon.run(stop)
    return 0
