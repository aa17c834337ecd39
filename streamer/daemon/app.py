"""The running daemon: ``build(config, daemon)`` wires its parts, ``Daemon.run()`` is the main loop with clean shutdown.

``build`` is the one place parts are made, at start-up and again by each reload (SIGHUP). The daemon owns one
ZeroMQ context for all its sockets (output, ZeroMQ receivers, the CURVE authenticator) and terminates it on
shutdown. Threads: one per receiver (streamer.daemon.runner), the Prometheus HTTP server, and the main loop,
which owns the pipeline and the publisher (ZeroMQ sockets are not thread-safe, so only this thread touches them);
the pipeline's workers (``pipeline.workers``) run per-receiver work while the main loop waits for them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections import Counter

import zmq
from prometheus_client import CollectorRegistry, start_http_server

from receivers.base import IQBlock, ReceiverContext
from streamer import config as config_mod
from streamer.config import Config
from streamer.core import security
from streamer.core.errors import ConfigError, HeimdallError
from streamer.daemon.archive import JsonlArchive
from streamer.daemon.band import BandPipeline
from streamer.daemon.handoff import BlockQueue, coalesce_blocks
from streamer.daemon.metrics import AdapterCounters, Metrics
from streamer.daemon.pacing import ReplayPacer
from streamer.daemon.pacing import limits as pace_limits
from streamer.daemon.pipeline import Pipeline, limit_blas_threads
from streamer.daemon.preflight import preflight
from streamer.daemon.publish import ZmqPublisher
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


@dataclasses.dataclass
class Outputs:
    """What lives as long as the daemon: opened by the start-up ``build``, kept by every reload.

    ``zmq_context`` is the daemon's own ZeroMQ context. The publisher and every ZeroMQ receiver open their
    sockets in it, and the CURVE authenticator answers on it (a ZAP handler serves only its own context's
    sockets); ``Daemon.shutdown`` terminates it once they are closed.
    """

    zmq_context: zmq.Context
    authenticator: security.CurveAuthenticator | None
    archive: JsonlArchive | None
    publisher: ZmqPublisher

    def close(self, deadline: float | None = None) -> None:
        """Close the publisher and the archive, stop the authenticator, then terminate the ZeroMQ context.

        ``term()`` waits for every socket of the context to close: for ``deadline`` (time.monotonic, s) at
        most, after which it goes on in the background (a receiver thread left behind may still hold one);
        None waits for it.
        """
        self.publisher.close()
        if self.archive is not None:
            self.archive.close()
        if self.authenticator is not None:
            self.authenticator.stop()
        if self.zmq_context.closed:
            return
        if deadline is None:
            self.zmq_context.term()
            return
        ender = threading.Thread(target=self.zmq_context.term, name="zmq-term", daemon=True)
        ender.start()
        ender.join(max(0.0, deadline - time.monotonic()))


def _open_outputs(config: Config, metrics: Metrics) -> Outputs:
    """The daemon's ZeroMQ context, CURVE authenticator, archive and publisher; all closed again on failure."""
    sec = config.security
    keys = None
    if sec.curve_output or sec.curve_ingest:  # preflight checked the key and the allow-lists
        keys = security.load_secret_key(sec.secret_key, key=f"{config.source}: security.secret_key")
    _warn_exposed(config)
    context = zmq.Context()
    authenticator = archive = None
    try:
        authenticator = _start_authenticator(config, context, metrics)  # before any CURVE socket exists
        spec = config.output.archive
        archive = None if spec.dir is None else JsonlArchive(
            spec.dir, max_bytes=spec.max_bytes, keep_files=spec.keep_files,
            on_error=lambda reason: metrics.archive_errors.labels(reason).inc(),
        )
        try:
            publisher = ZmqPublisher(
                config.output.endpoint,
                send_hwm=config.output.send_hwm,
                send_buffer_bytes=config.output.send_buffer_bytes,
                context=context,
                on_sent=lambda topic: metrics.messages_published.labels(topic).inc(),
                on_dropped=lambda topic: metrics.subscriber_drops.labels(topic).inc(),
                on_subscribers=metrics.subscriptions.set,
                curve_keys=keys if sec.curve_output else None,
                on_auth_failure=lambda socket: metrics.auth_failures.labels(socket).inc(),
            )
        except OSError as exc:  # busy port, missing ipc folder: exit 2 naming the key, not a traceback
            raise ConfigError(f"{config.source}: output.endpoint {config.output.endpoint}: {_reason(exc)}") from None
    except BaseException:
        if archive is not None:
            archive.close()
        if authenticator is not None:
            authenticator.stop()
        context.term()  # no socket of it is open any more
        raise
    return Outputs(zmq_context=context, authenticator=authenticator, archive=archive, publisher=publisher)


def _start_authenticator(config: Config, context: zmq.Context, metrics: Metrics) -> security.CurveAuthenticator | None:
    """The ZAP handler on ``context`` with the configured allow-lists; None without CURVE. Without it, libzmq
    admits any client to a CURVE server socket, so it starts before any such socket exists."""
    sec = config.security
    if not (sec.curve_output or sec.curve_ingest):
        return None
    auth = security.CurveAuthenticator(context)
    try:
        if sec.curve_output:
            auth.allow(security.OUTPUT_DOMAIN, sec.output_clients_dir, key=f"{config.source}: security.output_clients_dir")
        if sec.curve_ingest:
            auth.allow(security.INGEST_DOMAIN, sec.ingest_clients_dir, key=f"{config.source}: security.ingest_clients_dir")
    except BaseException:
        auth.stop()
        raise
    for label in (["output"] if sec.curve_output else []) + [f"ingest:{rx.id}" for rx in config.receivers
                                                            if sec.curve_ingest and rx.kind == "zmq"]:
        metrics.auth_failures.labels(label)  # at zero from the start, for alerts
    return auth


@dataclasses.dataclass
class Parts:
    """What ``build`` wires for one config, swapped into the daemon at start-up and by each reload."""

    config: Config
    estimators: list
    pipeline: Pipeline
    #: ``ReplayPacer.settle``'s ``lead_s`` and ``budget_s`` (s) for this config.
    pace_limits: dict[str, float]
    #: Runners, not started: for every receiver at start-up; on reload, for the added and changed ones only.
    runners: dict[str, ReceiverRunner]
    #: Opened at start-up; None on reload (the running ones stay).
    outputs: Outputs | None


def build(config: Config, daemon: Daemon, *, running: Config | None = None) -> Parts:
    """Wire ``daemon``'s parts for ``config``; nothing running is touched.

    In order: the preflight checks (``heimdall check`` makes the same; notes are logged, errors raise), the
    estimators, at start-up (``running`` None) the outputs (ZeroMQ context, CURVE authenticator, archive,
    publisher), the pipeline (sending through ``daemon``), the pacing limits and the receiver runners. For
    a reload, ``running`` is the config in use: the outputs stay, and runners are made only for receivers
    whose section is new or differs from it. Whatever fails raises, with anything opened here closed again.
    """
    for note in preflight(config):  # ConfigError / MissingDependencyError
        log.warning("reload: %s" if running is not None else "%s", note)
    estimators = build_estimators(config)
    outputs = _open_outputs(config, daemon.metrics) if running is None else None
    context = outputs.zmq_context if outputs is not None else daemon.zmq_context
    try:
        # A channel plan of the config's own takes the band path; without one, today's single-channel path.
        pipeline_class = BandPipeline if config.has_channel_plan() else Pipeline
        pipeline = pipeline_class(
            config,
            metrics=daemon.metrics,
            send=daemon._publish,
            estimators=estimators,
            truth_source=_truth_source(config) if config.output.publish_truth else None,
            queued_samples=daemon._queued_samples,
            paced=daemon.pacer.paced,
        )
        running_rx = {} if running is None else {rx.id: rx for rx in running.receivers}
        runners = {rx.id: daemon._runner(rx, config, context) for rx in config.receivers if running_rx.get(rx.id) != rx}
    except BaseException:
        if outputs is not None:
            outputs.close()
        raise
    return Parts(config=config, estimators=estimators, pipeline=pipeline, pace_limits=pace_limits(config),
                 runners=runners, outputs=outputs)


class Daemon:
    """The running service. ``run(stop)`` blocks until ``stop`` is set, then shuts everything down."""

    def __init__(self, config: Config, *, registry: CollectorRegistry | None = None,
                 reload_requested: threading.Event | None = None) -> None:
        self.metrics = Metrics(registry)
        self._queued: Counter[str] = Counter()
        self._queued_lock = threading.Lock()
        self._counters = _DaemonCounters(self.metrics)
        self._stop = threading.Event()
        self.reload_requested = reload_requested if reload_requested is not None else threading.Event()
        self.metrics_server = None
        self.metrics_url: str | None = None
        self.queue = BlockQueue(config.pipeline.queue_blocks, on_full=self._on_queue_full,
                                max_bytes=max(1, int(config.pipeline.queue_mb * 2**20)))
        self.pacer = ReplayPacer.for_config(config)  # keeps sources that are not real-time in step
        parts = build(config, self)
        assert parts.outputs is not None
        self.outputs: Outputs = parts.outputs
        self.config, self.estimators, self.pipeline, self.pace_limits = (
            parts.config, parts.estimators, parts.pipeline, parts.pace_limits)
        self.runners = parts.runners

    # The outputs, by name: the publisher, the archive (None when not configured), the CURVE authenticator (None
    # without CURVE) and the ZeroMQ context of all the daemon's sockets.
    @property
    def publisher(self) -> ZmqPublisher:
        return self.outputs.publisher

    @property
    def archive(self) -> JsonlArchive | None:
        return self.outputs.archive

    @property
    def authenticator(self) -> security.CurveAuthenticator | None:
        return self.outputs.authenticator

    @property
    def zmq_context(self) -> zmq.Context:
        return self.outputs.zmq_context

    def _runner(self, rx, config: Config, zmq_context: zmq.Context) -> ReceiverRunner:
        ctx = ReceiverContext(config=config, drops=self._counters, gauge=self._counters.gauge, zmq_context=zmq_context)
        # The sink gets the runner's own stop event: a runner stopped by a reload must not stay blocked in
        # back-pressure (pacer or queue) while the daemon goes on.
        runner = ReceiverRunner(rx, ctx, lambda block, realtime: self._on_block(block, realtime, runner.stopping),
                                on_state=self._on_state)
        return runner

    def _publish(self, topic: str, payload: dict) -> bool:
        """Send on the output socket; localizations, emission events (band watch) and status also go to the archive,
        if configured."""
        sent = self.publisher.send(topic, payload)
        archived = ("status", self.pipeline.topic, getattr(self.pipeline, "emission_topic", None))
        if self.archive is not None and topic in archived:
            self.archive.write(topic, payload)  # errors are counted inside; publication goes on
        return sent

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
        log.info("pipeline: %d worker(s); %s", self.pipeline.pool.workers, limit_blas_threads())
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
            # A bug must cost one block, never the daemon: push_many hands back the blocks whose lane raised.
            for block, exc in self.pipeline.push_many(coalesce_blocks(blocks)):
                log.error("receiver %s: block dropped by an internal error", block.receiver_id, exc_info=exc)
                self.metrics.bad_frames.labels(block.receiver_id, "internal_error").inc()
            if time.monotonic() >= deadline:
                break
        try:
            self.pipeline.poll()
        except Exception:
            log.exception("window processing failed")
            self.metrics.windows.labels("internal_error").inc()
        # What each lane still holds, now that the windows are cut: paced sources may send that much more.
        self.pacer.settle({rid: lane.buffered for rid, lane in self.pipeline.lanes.items()}, **self.pace_limits)

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

    def _finish_pipeline(self) -> None:
        """``Pipeline.finish``; a failure there is logged, never in the way of a shutdown or reload."""
        try:
            self.pipeline.finish()
        except Exception:
            log.exception("pipeline: could not finish (emissions on the air are not ended)")

    def reload(self, path: str | None = None) -> bool:
        """Re-read the config (SIGHUP): receivers that did not change keep running, untouched.

        Added receivers start, removed ones stop, changed ones restart; the pipeline is rebuilt with the
        new receivers, estimator and pipeline settings (what it held is counted as dropped, reason
        ``reload``). ``output``, ``metrics`` and ``security`` need a restart: changes there are logged and
        ignored. Everything new is built (``build``) before anything running is touched, so a config, model
        or pipeline that does not load, for whatever reason, leaves everything as it was.
        """
        path = path or self.config.source
        try:
            parts = self._prepare(path)
        except HeimdallError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            self.metrics.reloads.labels("refused").inc()
            return False
        except Exception:  # a config the checks missed must never take the running daemon down
            log.exception("reload refused, keeping the running config: %s could not be applied", path)
            self.metrics.reloads.labels("refused").inc()
            return False
        old, new = self.config, parts.config
        old_rx = {rx.id: rx for rx in old.receivers}
        new_rx = {rx.id: rx for rx in new.receivers}
        changed = [rid for rid in self.runners if new_rx.get(rid) != old_rx[rid]]
        for rid in changed:
            self.runners.pop(rid).stop(timeout_s=1.0)
        self._finish_pipeline()
        self.pipeline.flush_as_dropped("reload")
        self.pipeline.close()
        self.config, self.estimators, self.pipeline, self.pace_limits = (
            new, parts.estimators, parts.pipeline, parts.pace_limits)
        for rid in set(old_rx) - set(new_rx):
            self.metrics.forget_receiver(rid, self._counters.reading_names.pop(rid, ()))
        started = []
        for rid, runner in parts.runners.items():  # the added and changed receivers' (build made no others)
            self.runners[rid] = runner
            runner.start()
            started.append(rid)
        kept = sorted(set(self.runners) - set(started))
        log.info("reloaded %s: kept %s, (re)started %s, stopped %s", path, ", ".join(kept) or "none",
                 ", ".join(sorted(started)) or "none", ", ".join(sorted(set(old_rx) - set(new_rx))) or "none")
        self.metrics.reloads.labels("applied").inc()
        return True

    def _prepare(self, path: str) -> Parts:
        """The reloaded config's parts, built and checked by ``build``; nothing running is touched."""
        new = config_mod.load(path)
        old = self.config
        for section in ("output", "metrics", "security"):
            if getattr(new, section) != getattr(old, section):
                log.warning("reload: [%s] changed; that needs a restart, the running values stay", section)
        new = dataclasses.replace(new, output=old.output, metrics=old.metrics, security=old.security)
        return build(new, self, running=old)

    def shutdown(self, wait_s: float = SHUTDOWN_WAIT_S) -> None:
        """Stop everything, waiting at most ``wait_s`` (s) in all for the threads.

        Everything that has to wind down is told first (every runner's flag set and adapter closed, which
        interrupts blocking reads; the metrics server's poll loop), then all are waited for against one
        deadline, so the waits overlap instead of adding up. The output socket closes without linger; the
        ZeroMQ context is terminated last, once its sockets are closed (in the background if a receiver
        thread left behind still holds one).
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
        self._finish_pipeline()  # while the outputs are open: a band's emissions on the air end now
        self.outputs.close(deadline)
        self.pipeline.close()  # its worker threads are idle between steps: they end at once
        if server_stopped is not None:
            server_stopped.join(max(0.0, deadline - time.monotonic()))
            if not server_stopped.is_alive():
                self.metrics_server.server_close()
        log.info("stopped in %.2f s (receivers %.2f s)", time.monotonic() - started, receivers_s)
