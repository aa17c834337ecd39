"""Daemon.shutdown: all runners are told to stop before any is waited for, and the wait has one deadline,
so adapters that are slow to notice (or never do) cost that deadline once, not once per receiver."""

from __future__ import annotations

import logging
import threading
import time

from prometheus_client import CollectorRegistry

from receivers.base import ReceiverBase
from streamer.daemon import runner as runner_mod
from streamer.daemon.app import Daemon
from streamer.config import from_dict

RECEIVERS = 5


class SlowToClose(ReceiverBase):
    """Blocks in ``__iter__`` like a vendor read; ``close()`` lets it go only ``delay_s`` later, or never."""

    def __init__(self, delay_s: float | None) -> None:
        self.delay_s = delay_s
        self.opened = threading.Event()
        self._released = threading.Event()

    def __iter__(self):
        self.opened.set()
        self._released.wait()
        return iter(())

    def close(self) -> None:
        if self.delay_s is not None:
            threading.Timer(self.delay_s, self._released.set).start()


def daemon_with(adapters, monkeypatch) -> Daemon:
    rxs = [{"id": f"rx{k}", "kind": "simulator", "lat": 45.0 + 0.05 * k, "lon": 7.0, "sample_rate_hz": 48_000.0,
            "center_freq_hz": 145.49e6} for k in range(len(adapters))]
    cfg = from_dict({"receivers": rxs, "output": {"endpoint": "tcp://127.0.0.1:*"}, "metrics": {"enabled": False},
                     "estimator": {"kind": "physics"}})
    by_id = {rx["id"]: a for rx, a in zip(rxs, adapters)}
    monkeypatch.setattr(runner_mod, "open_receiver", lambda rx, ctx: by_id[rx.id])
    daemon = Daemon(cfg, registry=CollectorRegistry())
    daemon.start()
    for a in adapters:
        assert a.opened.wait(10.0)
    return daemon


def test_adapters_slow_to_close_cost_the_wait_once_not_once_per_receiver(monkeypatch):
    adapters = [SlowToClose(0.4) for _ in range(RECEIVERS)]  # each needs 0.4 s after close(): 2 s one after another
    daemon = daemon_with(adapters, monkeypatch)
    t0 = time.monotonic()
    daemon.shutdown()
    elapsed = time.monotonic() - t0
    assert elapsed < 1.5, f"shutdown took {elapsed:.2f} s"
    assert all(r.join(0.0) for r in daemon.runners.values()), "a runner outlived shutdown"


def test_an_adapter_that_never_lets_go_is_left_behind_after_the_deadline_and_named(monkeypatch, caplog):
    adapters = [SlowToClose(None)] + [SlowToClose(0.0) for _ in range(RECEIVERS - 1)]
    daemon = daemon_with(adapters, monkeypatch)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="streamer.daemon.app"):
        daemon.shutdown(wait_s=0.3)
    elapsed = time.monotonic() - t0
    assert elapsed < 1.5, f"shutdown took {elapsed:.2f} s"
    assert [r.rx.id for r in daemon.runners.values() if not r.join(0.0)] == ["rx0"]
    assert "rx0 still running after 0.3 s" in caplog.text
    adapters[0]._released.set()  # let the thread end


def test_the_daemon_s_sockets_share_its_own_zmq_context_and_shutdown_terminates_it(monkeypatch):
    """The publisher and every receiver get the daemon's context (the one its CURVE authenticator would answer
    on), not pyzmq's global one; shutdown terminates it after the sockets are closed."""
    import zmq

    adapters = [SlowToClose(0.0) for _ in range(RECEIVERS)]
    daemon = daemon_with(adapters, monkeypatch)
    context = daemon.zmq_context
    assert context is not zmq.Context.instance()
    assert daemon.publisher._sock.context is context
    assert all(runner.ctx.zmq_context is context for runner in daemon.runners.values())
    t0 = time.monotonic()
    daemon.shutdown()
    assert time.monotonic() - t0 < 1.5
    assert context.closed
