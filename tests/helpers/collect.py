"""Iterate a receiver adapter in a thread so a test can take its blocks with a timeout: block by block
(``Collector``) or all at once until it ends (``collect``)."""

from __future__ import annotations

import queue
import threading

import pytest

from receivers.base import IQBlock

TIMEOUT_S = 5.0


class Collector:
    """Runs ``for block in receiver`` in a thread. ``queue`` holds the blocks and, last, the exception
    that ended the iteration (if any); ``get`` returns the next block or raises that exception."""

    def __init__(self, receiver) -> None:
        self.receiver = receiver
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for block in self.receiver:
                self.queue.put(block)
        except BaseException as exc:  # surfaced by get(), or read from queue by the test
            self.queue.put(exc)

    def get(self, timeout: float = TIMEOUT_S) -> IQBlock:
        item = self.queue.get(timeout=timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        self.receiver.close()
        self.thread.join(TIMEOUT_S)
        assert not self.thread.is_alive(), "receiver did not stop after close()"


def collect(rx, *, max_blocks: int | None = None, timeout: float = 10.0):
    """Iterate in a thread; return (blocks, exception or None). Fails the test if iteration hangs."""
    blocks, error = [], []

    def run():
        try:
            for block in rx:
                blocks.append(block)
                if max_blocks is not None and len(blocks) >= max_blocks:
                    break
        except Exception as exc:  # noqa: BLE001 - handed to the test
            error.append(exc)
        finally:
            rx.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        rx.close()
        t.join(2)
        pytest.fail(f"iteration did not end within {timeout} s")
    return blocks, (error[0] if error else None)
