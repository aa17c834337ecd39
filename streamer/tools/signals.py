"""SIGTERM and SIGINT as a ``threading.Event``: how the long-running commands (run, receiver, listen) learn
to stop. Installing the handlers is the caller's explicit act; importing this module changes nothing."""

from __future__ import annotations

import signal
import threading


def stop_on_signals() -> threading.Event:
    """Install SIGTERM and SIGINT handlers that set the returned event (main thread only)."""
    stop = threading.Event()

    def handler(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop
