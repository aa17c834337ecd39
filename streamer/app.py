"""build(config) wires every object explicitly; Daemon.run() is the main loop with clean shutdown.

Threads: one per receiver (streamer.runner), the Prometheus HTTP server, and the main loop, which owns
the pipeline and the publisher (ZeroMQ sockets are not thread-safe, so only this thread touches them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from prometheus_client import CollectorRegistry, start_http_server

from receivers.base import IQBlock, ReceiverContext
from streamer.config import Config
from streamer.estimators import build_estimators
from streamer.metrics import AdapterCounters, Metrics
from streamer.pipeline import Pipeline
from streamer.publish import ZmqPublisher
from streamer.runner import BlockQueue, ReceiverRunner

log = logging.getLogger(__name__)


def _truth_source(config: Config):
    """The simulated world, when the receivers are simulated (its ground truth goes out on topic 'truth')."""
    if not any(rx.kind == "simulator" for rx in config.receivers):
        return None
    from receivers.simulator import SimulatedWorld

    return SimulatedWorld(config)


class Daemon:
    """The running service. ``run(stop)`` blocks until ``stop`` is set, then shuts everything down."""

    def __init__(self, config: Config, *, registry: CollectorRegistry | None = None) -> None:
        if not config.receivers:
            raise ValueError(f"{config.source}: no [[receivers]] configured")
        self.config = config
        self.metrics = Metrics(registry)
        self.estimators = build_estimators(config)
        self.publisher = ZmqPublisher(
            config.output.endpoint,
            send_hwm=config.output.send_hwm,
            on_sent=lambda topic: self.metrics.messages_published.labels(topic).inc(),
            on_dropped=lambda topic: self.metrics.subscriber_drops.labels(topic).inc(),
            on_subscribers=self.metrics.subscriptions.set,
        )
        self._queued: Counter[str] = Counter()
        self._queued_lock = threading.Lock()
        self.pipeline = Pipeline(
            config,
            metrics=self.metrics,
            send=self.publisher.send,
            estimators=self.estimators,
            truth_source=_truth_source(config) if config.output.publish_truth else None,
            queued_samples=self._queued_samples,
        )
        self.queue = BlockQueue(config.pipeline.queue_blocks, on_full=self._on_queue_full)
        counters = AdapterCounters(self.metrics)
        ctx = ReceiverContext(config=config, drops=counters, gauge=counters.gauge)
        self._stop = threading.Event()
        self.runners = [ReceiverRunner(rx, ctx, self._on_block, on_state=self._on_state) for rx in config.receivers]
        self.metrics_server = None
        self.metrics_url: str | None = None

    # Adapter threads ----------------------------------------------------------------------------------
    def _on_block(self, block: IQBlock, realtime: bool) -> None:
        n = len(block.samples)
        self.metrics.samples_received.labels(block.receiver_id).inc(n)
        with self._queued_lock:
            self._queued[block.receiver_id] += n
        self.queue.put(block, realtime=realtime, stop=self._stop)

    def _on_queue_full(self, block: IQBlock) -> None:
        n = len(block.samples)
        with self._queued_lock:
            self._queued[block.receiver_id] -= n
        self.metrics.samples_dropped.labels(block.receiver_id, "queue_full", "pipeline").inc(n)

    def _queued_samples(self, receiver_id: str) -> int:
        with self._queued_lock:
            return self._queued[receiver_id]

    def _on_state(self, receiver_id: str, up: bool) -> None:
        if not up:
            self.metrics.receiver_up.labels(receiver_id).set(0)

    # Main loop ----------------------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.config
        if cfg.metrics.enabled:
            server, _thread = start_http_server(cfg.metrics.port, addr=cfg.metrics.host, registry=self.metrics.registry)
            self.metrics_server = server
            host, port = server.server_address[:2]
            self.metrics_url = f"http://{cfg.metrics.host}:{port}/metrics"
            log.info("metrics on %s", self.metrics_url)
        log.info("publishing on %s (topics %s, status%s)", self.publisher.endpoint, self.pipeline.topic,
                 ", truth" if self.pipeline.has_truth else "")
        for runner in self.runners:
            runner.start()

    def step(self, timeout_s: float = 0.05) -> None:
        """Move queued blocks into the pipeline and emit what is ready."""
        deadline = time.monotonic() + timeout_s
        while True:
            block = self.queue.get(max(0.0, deadline - time.monotonic()))
            if block is None:
                break
            with self._queued_lock:
                self._queued[block.receiver_id] -= len(block.samples)
            try:
                self.pipeline.push(block)
            except Exception:  # a bug must cost one block, never the daemon
                log.exception("receiver %s: block dropped by an internal error", block.receiver_id)
                self.metrics.bad_frames.labels(block.receiver_id, "internal_error").inc()
            if time.monotonic() >= deadline:
                break
        try:
            self.pipeline.poll()
        except Exception:
            log.exception("window processing failed")
            self.metrics.windows.labels("internal_error").inc()

    def run(self, stop: threading.Event) -> None:
        self.start()
        next_status = time.monotonic()
        try:
            while not stop.is_set():
                self.step()
                if time.monotonic() >= next_status:
                    self.publisher.send("status", self.pipeline.status().to_wire())
                    next_status += self.config.output.status_interval_s
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        self._stop.set()
        for runner in self.runners:
            runner.stop(timeout_s=0.5)
        self.publisher.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        log.info("stopped")
