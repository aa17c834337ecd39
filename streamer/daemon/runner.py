"""Run one Receiver: in a thread feeding the pipeline, or on its own publishing framed IQ (``heimdall receiver``).

The adapter code is the same either way. A ``ReceiverTransientError`` (device lost, socket stalled) makes
the runner close the adapter, mark the receiver down, wait (exponential backoff) and open it again with
``Flags.DISCONTINUITY`` on the next block; a ``ReceiverFatalError`` stops that receiver only. The daemon
never dies because one receiver did.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Callable

from receivers.base import Flags, IQBlock, ReceiverContext
from receivers.registry import open_receiver
from streamer.config import ReceiverConfig
from streamer.core.errors import HeimdallError, MissingDependencyError, ReceiverFatalError, ReceiverTransientError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Reconnect delays (s): ``initial_s`` doubling up to ``max_s``."""

    initial_s: float = 0.25
    max_s: float = 10.0

    def delays(self):
        delay = self.initial_s
        while True:
            yield delay
            delay = min(delay * 2, self.max_s)


class ReceiverRunner:
    """Iterate one adapter in a thread, handing blocks to ``sink``; reconnect on transient errors."""

    def __init__(
        self,
        rx: ReceiverConfig,
        ctx: ReceiverContext,
        sink: Callable[[IQBlock, bool], None],
        *,
        on_state: Callable[[str, bool], None] = lambda rid, up: None,
        backoff: Backoff = Backoff(),
    ) -> None:
        self.rx = rx
        self.ctx = ctx
        self._sink = sink
        self._on_state = on_state
        self._backoff = backoff
        self._stop = threading.Event()
        self._adapter = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.run, name=f"rx-{rx.id}", daemon=True)
        self.fatal: str | None = None

    def start(self) -> None:
        self._thread.start()

    @property
    def stopping(self) -> threading.Event:
        """Set once ``stop`` (or ``request_stop``) was called: a sink blocked on back-pressure gives up on it."""
        return self._stop

    def stop(self, timeout_s: float = 1.0) -> None:
        """``request_stop`` then ``join`` (s): for one runner; to stop several, request all first, then join."""
        self.request_stop()
        self.join(timeout_s)

    def request_stop(self) -> None:
        """Set the stop flag and close the adapter (which interrupts a blocking read); does not wait."""
        self._stop.set()
        with self._lock:
            adapter = self._adapter
        if adapter is not None:
            try:
                adapter.close()
            except Exception:  # closing from another thread is best effort; the loop exits on the flag
                log.debug("receiver %s: close raised", self.rx.id, exc_info=True)

    def join(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the thread to end; True when it has (or never started)."""
        if self._thread.ident is None:  # a daemon whose start failed part-way stops the runners it never started
            return True
        self._thread.join(max(0.0, timeout_s))
        return not self._thread.is_alive()

    def run(self) -> None:
        delays = self._backoff.delays()
        discontinuity = False
        while not self._stop.is_set():
            try:
                adapter = open_receiver(self.rx, self.ctx)
                with self._lock:
                    self._adapter = adapter
                with adapter:
                    for block in adapter:
                        if self._stop.is_set():
                            return
                        if discontinuity:
                            block = dataclasses.replace(block, flags=block.flags | Flags.DISCONTINUITY)
                            discontinuity = False
                        self._on_state(self.rx.id, True)
                        self._sink(block, adapter.realtime)
                        delays = self._backoff.delays()
                if self._stop.is_set():
                    return
                log.info("receiver %s: source ended", self.rx.id)
                self._on_state(self.rx.id, False)
                return
            except (ReceiverFatalError, MissingDependencyError) as exc:  # retrying cannot install a package
                self.fatal = str(exc)
                log.error("receiver %s stopped: %s", self.rx.id, exc)
                self._on_state(self.rx.id, False)
                return
            except (ReceiverTransientError, HeimdallError, OSError) as exc:
                log.warning("receiver %s: %s; reconnecting", self.rx.id, exc)
            except Exception:  # an adapter bug must not take the daemon down: log it loudly, retry
                log.exception("receiver %s: unexpected error; reconnecting", self.rx.id)
            finally:
                with self._lock:
                    self._adapter = None
            self._on_state(self.rx.id, False)
            discontinuity = True
            if self._stop.wait(next(delays)):
                return
