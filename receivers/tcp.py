"""A TCP connection that another thread may close at any moment: shared by the socket-speaking adapters.

``Receiver.close()`` is called from the runner's thread while the adapter's own thread sits in a
``recv``; shutting the socket down wakes it, and ``closed`` tells it that the end was asked for.
"""

from __future__ import annotations

import socket
import threading

from streamer.core.errors import ReceiverTransientError


class ClosedWhileConnecting(ReceiverTransientError):
    """``close()`` came while the connection was being made."""


class ClosableConnection:
    """Owns at most one socket; ``connect`` from the adapter's thread, ``close`` from any thread."""

    def __init__(self) -> None:
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None

    def connect(self, host: str, port: int, *, timeout_s: float, poll_s: float, what: str) -> socket.socket:
        """Connect within ``timeout_s``; reads then time out every ``poll_s`` so the caller can check ``closed``."""
        try:
            sock = socket.create_connection((host, port), timeout=timeout_s)
        except OSError as exc:
            raise ReceiverTransientError(f"{what}: cannot connect to {host}:{port}: {exc}") from exc
        sock.settimeout(poll_s)
        with self._lock:
            if self.closed.is_set():
                sock.close()
                raise ClosedWhileConnecting(f"{what}: closed while connecting")
            self._sock = sock
        return sock

    def close(self) -> None:
        """Stop the connection (from any thread): wakes a blocked ``recv``."""
        self.closed.set()
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
