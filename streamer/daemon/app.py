"""build(config) wires every object explicitly; Daemon.run() is the main loop with clean shutdown.

Threads: one per receiver (streamer.daemon.runner), the Prometheus HTTP server, and the main loop, which owns
the pipeline and the publisher (ZeroMQ sockets are not thread-safe, so only this thread touches them).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections import Counter

from prometheus_client import CollectorRegistry, start_http_server

from receivers.base import IQBlock, ReceiverContext
from streamer import config as config_mod
from streamer.config import Config
from streamer.core import security
from streamer.core.errors import ConfigError, HeimdallError
from streamer.daemon.archive import JsonlArchive
from streamer.daemon.metrics import AdapterCounters, Metrics
from streamer.daemon.pacing import ReplayPacer
from streamer.daemon.pacing import limits as pace_limits
from streamer.daemon.pipeline import Pipeline
from streamer.daemon.preflight import preflight
from streamer.daemon.publish import ZmqPublisher
from streamer.daemon.handoff import BlockQueue, coalesce_blocks
from streamer.daemon.runner import ReceiverRunner
from streamer.estimators.build import build_estimators

log = logging.getLogger(__name__)

#: Most queued blocks taken in one go by ``Daemon.step`` (then coalesced per receiver).
STEP_MAX_BLOCKS = 256
#: How long shutdown waits, in all, for the receiver threads and the metrics server (s). A thread still
#: blocked then (a vendor call that ignores close()) is left behind: it is a daemon thread, the process exits.
SHUTDOWN_WAIT_S = 1.0


class _DaemonCounters(AdapterCounters):
    """AdapterCounters plus ``auth_failure(socket)``, which framed-IQ ingest uses for refused peers."""

    def auth_failure(self, socket: str) -> None:
        self._m.auth_failures.labels(socket).inc()


def _warn_exposed(config: Config) -> None:
    """A warning for every socket bound beyond loopback without CURVE (docs/security.md)."""
    sec = config.security
    security.warn_if_exposed("output.endpoint", config.output.endpoint, curve=sec.curve_output)
    if config.metrics.enabled and not security.is_loopback_host(config.metrics.host):
        log.warning("metrics.host %s is not loopback: metrics are served to anyone who can reach port %d "
                    "(no authentication; firewall it)", config.metrics.host, config.metrics.port)
    for i, rx in enumerate(config.receivers):
        if rx.kind == "zmq" and rx.options.bind:
            security.warn_if_exposed(f"receivers[{i}] ({rx.id}, kind zmq)", rx.options.endpoint, curve=sec.curve_ingest)


def _reason(exc: OSError) -> str:
    """'address already in use' from an OSError or the ZMQError it wraps."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    code = getattr(cause, "errno", None)
    # The errno's own text: pyzmq appends "(addr='...')" to its strerror, and the key already names the address.
    text = os.strerror(code) if isinstance(code, int) and 0 < code < 1000 else (getattr(cause, "strerror", None) or str(cause))
    return text[:1].lower() + text[1:]


def _truth_source(config: Config):
    """The simulated world, when the receivers are simulated (its ground truth goes out on topic 'truth')."""
    if not any(rx.kind == "simulator" for rx in config.receivers):
        return None
    from receivers.simulator import SimulatedWorld

    return SimulatedWorld(config)


def _stop_http_server(server, deadline: float) -> None:
    """``server.shutdown()`` without waiting out its poll interval: by ``deadline`` (time.monotonic, s) at most.

    ``serve_forever`` (prometheus_client starts it with the default 0.5 s poll) looks at the shutdown flag
    only when its poll returns; a connection to the server makes it return at once. Such a connection sends
    nothing and is closed: the handler sees an empty request and ends.
    """
    stopper = threading.Thread(target=server.shutdown, name="metrics-shutdown-wait", daemon=True)
    stopper.start()
    host, port = server.server_address[:2]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    while stopper.is_alive() and time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.1):
                pass
        except OSError:
            pass  # not reachable from here: the poll interval it is
        stopper.join(min(0.02, max(0.0, deadline - time.monotonic())))


class Daemon:
    """The running service. ``run(stop)`` blocks until ``stop`` is set, then shuts everything down."""

    def __init__(self, config: Config, *, registry: CollectorRegistry | None = None,
                 reload_requested: threading.Event | None = None) -> None:
        for note in preflight(config):  # the checks `heimdall check` makes: ConfigError / MissingDependencyError
            log.warning("%s", note)
        self.config = config
        self.metrics = Metrics(registry)
        self.estimators = build_estimators(config)
        sec = config.security
        keys = None
        if sec.curve_output or sec.curve_ingest:  # preflight checked the key and the allow-lists
            keys = security.load_secret_key(sec.secret_key, key=f"{config.source}: security.secret_key")
        _warn_exposed(config)
        self.authenticator: security.CurveAuthenticator | None = None
        archive = config.output.archive
        self.archive = None if archive.dir is None else JsonlArchive(
            archive.dir, max_bytes=archive.max_bytes, keep_files=archive.keep_files,
            on_error=lambda reason: self.metrics.archive_errors.labels(reason).inc(),
        )
        self._start_authenticator()  # before any CURVE socket exists: without it libzmq admits any client
        try:
            self.publisher = ZmqPublisher(
                config.output.endpoint,
                send_hwm=config.output.send_hwm,
                send_buffer_bytes=config.output.send_buffer_bytes,
                on_sent=lambda topic: self.metrics.messages_published.labels(topic).inc(),
                on_dropped=lambda topic: self.metrics.subscriber_drops.labels(topic).inc(),
                on_subscribers=self.metrics.subscriptions.set,
                curve_keys=keys if sec.curve_output else None,
                on_auth_failure=lambda socket: self.metrics.auth_failures.labels(socket).inc(),
            )
        except OSError as exc:  # busy port, missing ipc folder: exit 2 naming the key, not a traceback
            if self.archive is not None:
                self.archive.close()
            if self.authenticator is not None:
                self.authenticator.stop()
            raise ConfigError(f"{config.source}: output.endpoint {config.output.endpoint}: {_reason(exc)}") from None
        self._queued: Counter[str] = Counter()
        self._queued_lock = threading.Lock()
        self.pipeline = Pipeline(
            config,
            metrics=self.metrics,
            send=self._publish,
            estimators=self.estimators,
            truth_source=_truth_source(config) if config.output.publish_truth else None,
            queued_samples=self._queued_samples,
        )
        self.queue = BlockQueue(config.pipeline.queue_blocks, on_full=self._on_queue_full,
                                max_bytes=max(1, int(config.pipeline.queue_mb * 2**20)))
        self._counters = _DaemonCounters(self.metrics)
        self._stop = threading.Event()
        self.pacer = ReplayPacer.for_config(config)  # keeps sources that are not real-time in step
        self.reload_requested = reload_requested if reload_requested is not None else threading.Event()
        self.runners = {rx.id: self._runner(rx, config) for rx in config.receivers}
        self.metrics_server = None
        self.metrics_url: str | None = None

    def _runner(self, rx, config: Config) -> ReceiverRunner:
        ctx = ReceiverContext(config=config, drops=self._counters, gauge=self._counters.gauge)
        # The sink gets the runner's own stop event: a runner stopped by a reload must not stay blocked in
        # back-pressure (pacer or queue) while the daemon goes on.
        runner = ReceiverRunner(rx, ctx, lambda block, realtime: self._on_block(block, realtime, runner.stopping),
                                on_state=self._on_state)
        return runner

    def _publish(self, topic: str, payload: dict) -> bool:
        """Send on the output socket; localizations and status also go to the archive, if configured."""
        sent = self.publisher.send(topic, payload)
        if self.archive is not None and (topic == "status" or topic == self.pipeline.topic):
            self.archive.write(topic, payload)  # errors are counted inside; publication goes on
        return sent

    def _start_authenticator(self) -> None:
        sec = self.config.security
        if not (sec.curve_output or sec.curve_ingest):
            return
        import zmq

        auth = security.CurveAuthenticator(zmq.Context.instance())  # the context of the publisher and adapters
        try:
            if sec.curve_output:
                auth.allow(security.OUTPUT_DOMAIN, sec.output_clients_dir, key=f"{self.config.source}: security.output_clients_dir")
            if sec.curve_ingest:
                auth.allow(security.INGEST_DOMAIN, sec.ingest_clients_dir, key=f"{self.config.source}: security.ingest_clients_dir")
        except BaseException:
            auth.stop()
            raise
        self.authenticator = auth
        for socket in (["output"] if sec.curve_output else []) + [f"ingest:{rx.id}" for rx in self.config.receivers
                                                                 if sec.curve_ingest and rx.kind == "zmq"]:
            self.metrics.auth_failures.labels(socket)  # at zero from the start, for alerts

    # Adapter threads ----------------------------------------------------------------------------------
    def _on_block(self, block: IQBlock, realtime: bool, stop: threading.Event | None = None) -> None:
        stop = self._stop if stop is None else stop
        if realtime:
            self.pacer.leave(block.receiver_id)  # configured as not real-time, but the adapter is: nobody waits for it
        elif not self.pacer.admit(block, stop):
            return  # stopping: the block was never handed over, so it is not counted as received either
        n = len(block.samples)
        self.metrics.samples_received.labels(block.receiver_id).inc(n)
        with self._queued_lock:
            self._queued[block.receiver_id] += n
        self.queue.put(block, realtime=realtime, stop=stop)
        if not realtime:
            self.pacer.delivered(block)

    def _on_queue_full(self, block: IQBlock) -> None:
        n = len(block.samples)
        with self._queued_lock:
            self._queued[block.receiver_id] -= n
        self.metrics.samples_dropped.labels(block.receiver_id, "queue_full", "pipeline").inc(n)

    def _queued_samples(self, receiver_id: str) -> int:
        with self._queued_lock:
            return self._queued[receiver_id]

    def _on_state(self, receiver_id: str, up: bool) -> None:
        if not up:  # ended, failed or reconnecting: paced receivers no longer wait for it
            self.pacer.leave(receiver_id)
        # A runner stopped by a reload that removed its receiver must not bring the receiver's series back.
        if not up and receiver_id in self.runners:
            self.metrics.receiver_up.labels(receiver_id).set(0)

    # Main loop ----------------------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.config
        if cfg.metrics.enabled:
            try:
                server, _thread = start_http_server(cfg.metrics.port, addr=cfg.metrics.host, registry=self.metrics.registry)
            except OSError as exc:  # busy port, address not on this host: exit 2 naming the key, not a traceback
                self.shutdown()
                raise ConfigError(f"{cfg.source}: metrics.port {cfg.metrics.port} on {cfg.metrics.host}: {_reason(exc)}") from None
            self.metrics_server = server
            host, port = server.server_address[:2]
            self.metrics_url = f"http://{cfg.metrics.host}:{port}/metrics"
            log.info("metrics on %s", self.metrics_url)
        log.info("publishing on %s (topics %s, status%s)", self.publisher.endpoint, self.pipeline.topic,
                 ", truth" if self.pipeline.has_truth else "")
        for runner in self.runners.values():
            runner.start()

    def step(self, timeout_s: float = 0.05) -> None:
        """Move queued blocks into the pipeline and emit what is ready."""
        deadline = time.monotonic() + timeout_s
        while True:
            # Everything queued at once: a receiver's consecutive blocks are pushed as one (coalesce_blocks).
            blocks = self.queue.get_many(max(0.0, deadline - time.monotonic()), STEP_MAX_BLOCKS)
            if not blocks:
                break
            with self._queued_lock:
                for block in blocks:
                    self._queued[block.receiver_id] -= len(block.samples)
            self.pacer.taken(blocks)
            for block in coalesce_blocks(blocks):
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
        # What each lane still holds, now that the windows are cut: paced sources may send that much more.
        self.pacer.settle({rid: lane.buffered for rid, lane in self.pipeline.lanes.items()}, **pace_limits(self.config))

    def run(self, stop: threading.Event) -> None:
        self.start()
        next_status = time.monotonic()
        try:
            while not stop.is_set():
                if self.reload_requested.is_set():
                    self.reload_requested.clear()
                    self.reload()
                self.step()
                if time.monotonic() >= next_status:
                    self._publish("status", self.pipeline.status().to_wire())
                    next_status += self.config.output.status_interval_s
        finally:
            self.shutdown()

    def reload(self, path: str | None = None) -> bool:
        """Re-read the config (SIGHUP): receivers that did not change keep running, untouched.

        Added receivers start, removed ones stop, changed ones restart; the pipeline is rebuilt with the
        new receivers, estimator and pipeline settings (what it held is counted as dropped, reason
        ``reload``). ``output``, ``metrics`` and ``security`` need a restart: changes there are logged and
        ignored. Everything new is built before anything running is touched, so a config, model or
        pipeline that does not load, for whatever reason, leaves everything as it was.
        """
        path = path or self.config.source
        try:
            new, estimators, pipeline = self._prepare(path)
        except HeimdallError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            self.metrics.reloads.labels("refused").inc()
            return False
        except Exception:  # a config the checks missed must never take the running daemon down
            log.exception("reload refused, keeping the running config: %s could not be applied", path)
            self.metrics.reloads.labels("refused").inc()
            return False
        old = self.config
        old_rx = {rx.id: rx for rx in old.receivers}
        new_rx = {rx.id: rx for rx in new.receivers}
        changed = [rid for rid in self.runners if new_rx.get(rid) != old_rx[rid]]
        for rid in changed:
            self.runners.pop(rid).stop(timeout_s=1.0)
        self.pipeline.flush_as_dropped("reload")
        self.config = new
        self.estimators = estimators
        self.pipeline = pipeline
        for rid in set(old_rx) - set(new_rx):
            self.metrics.forget_receiver(rid, self._counters.reading_names.pop(rid, ()))
        started = []
        for rid, rx in new_rx.items():
            if rid not in self.runners:
                self.runners[rid] = self._runner(rx, new)
                self.runners[rid].start()
                started.append(rid)
        kept = sorted(set(self.runners) - set(started))
        log.info("reloaded %s: kept %s, (re)started %s, stopped %s", path, ", ".join(kept) or "none",
                 ", ".join(sorted(started)) or "none", ", ".join(sorted(set(old_rx) - set(new_rx))) or "none")
        self.metrics.reloads.labels("applied").inc()
        return True

    def _prepare(self, path: str) -> tuple[Config, list, Pipeline]:
        """The reloaded config, its estimators and its pipeline, built and checked; nothing running is touched."""
        new = config_mod.load(path)
        old = self.config
        for section in ("output", "metrics", "security"):
            if getattr(new, section) != getattr(old, section):
                log.warning("reload: [%s] changed; that needs a restart, the running values stay", section)
        new = dataclasses.replace(new, output=old.output, metrics=old.metrics, security=old.security)
        for note in preflight(new):  # the checks heimdall check and the start make, so all three agree
            log.warning("reload: %s", note)
        estimators = build_estimators(new)
        pipeline = Pipeline(
            new,
            metrics=self.metrics,
            send=self._publish,
            estimators=estimators,
            truth_source=_truth_source(new) if new.output.publish_truth else None,
            queued_samples=self._queued_samples,
        )
        return new, estimators, pipeline

    def shutdown(self, wait_s: float = SHUTDOWN_WAIT_S) -> None:
        """Stop everything, waiting at most ``wait_s`` (s) in all for the threads.

        Everything that has to wind down is told first (every runner's flag set and adapter closed, which
        interrupts blocking reads; the metrics server's poll loop), then all are waited for against one
        deadline, so the waits overlap instead of adding up. The output socket closes without linger.
        """
        started = time.monotonic()
        deadline = started + wait_s
        self._stop.set()
        self.pacer.close()  # wakes adapter threads waiting to hand over a block
        runners = list(self.runners.values())
        for runner in runners:
            runner.request_stop()
        server_stopped = None
        if self.metrics_server is not None:  # winds down alongside the runners
            server_stopped = threading.Thread(target=_stop_http_server, args=(self.metrics_server, deadline),
                                              name="metrics-shutdown", daemon=True)
            server_stopped.start()
        stuck = [runner.rx.id for runner in runners if not runner.join(deadline - time.monotonic())]
        receivers_s = time.monotonic() - started
        if stuck:
            log.warning("receiver thread(s) %s still running after %.1f s; exiting without them",
                        ", ".join(stuck), wait_s)
        self.publisher.close()
        if self.archive is not None:
            self.archive.close()
        if self.authenticator is not None:
            self.authenticator.stop()
        if server_stopped is not None:
            server_stopped.join(max(0.0, deadline - time.monotonic()))
            if not server_stopped.is_alive():
                self.metrics_server.server_close()
        log.info("stopped in %.2f s (receivers %.2f s)", time.monotonic() - started, receivers_s)
