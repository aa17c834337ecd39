"""Preflight: everything the daemon needs from a loaded config before it starts, checked in one place.

``heimdall check``, ``heimdall run`` (``Daemon.__init__``) and a reload all call ``preflight(config)``,
so the three give the same verdict on every config. ``config.load`` has already checked types, finite
numbers and value ranges; this adds what depends on several keys, the host or installed packages:

- at least one receiver, and no more ``pipeline.min_receivers`` than receivers;
- ZeroMQ endpoints that parse (``output.endpoint``, receivers' ``endpoint``) and a ``metrics.host`` that
  resolves;
- memory: ring buffers (receivers x ``pipeline.buffer_s`` x ``features.sample_rate_hz`` x 8 bytes) and
  the physics posterior grid (``streamer.estimators.physics.grid_bytes``) each within ``memory_limit_bytes()``;
- CURVE key files and allow-lists, read by the same functions the daemon uses (``streamer.core.security``);
- each receiver kind's optional dependencies (the adapter's ``check_dependencies()``), and, where the
  config fixes a receiver's band (the adapter's ``configured_band_hz()``, or a SigMF recording's metadata),
  that the channelizer can reach ``network.target_freq_hz`` from it (``streamer.dsp.channelizer.check_tunable``);
- with a channel plan (``[[channels]]`` or ``[band]``) instead of that target check: every channel inside the bands
  of at least ``pipeline.min_receivers`` receivers, a warning per receiver that misses some channels
  (``streamer.daemon.coverage``), and one naming ``[[channels]]`` that overlap.

It raises ``ConfigError`` or ``MissingDependencyError`` (file, key, value, expectation) and returns notes:
warnings that do not stop the daemon. It opens no sockets and loads no model, so a reload can afford it.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import itertools
import math
import os
import socket

from streamer.config import Config
from streamer.core.errors import ConfigError, MissingDependencyError
from streamer.daemon.coverage import centre_in_channel_notes

#: Most memory one structure (all ring buffers together, or the posterior grid) may take (bytes); less
#: on a host with under four times this much physical memory (``memory_limit_bytes``).
MAX_STRUCTURE_BYTES = 2 << 30
#: Bytes per ring-buffer sample: complex64 (``streamer.daemon.ringbuffer.RingBuffer``).
RING_SAMPLE_BYTES = 8
GPU_FIX = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'onnxruntime-gpu>=1.17'"


def preflight(config: Config) -> list[str]:
    """Check what ``heimdall run`` needs beyond ``config.load``; returns warnings, raises on what would fail.

    Examples
    --------
    >>> from streamer.config import from_dict
    >>> preflight(from_dict({}, source="empty.toml"))
    Traceback (most recent call last):
    ...
    streamer.core.errors.ConfigError: empty.toml: receivers: expected at least one [[receivers]] table, got none
    """
    _check_receiver_count(config)
    _check_endpoints(config)
    _check_memory(config)
    _check_security(config)
    notes: list[str] = []
    for i, rx in enumerate(config.receivers):
        notes += _check_receiver(config, i, rx)
    if config.has_channel_plan():
        notes += _check_channel_plan(config)
    notes += centre_in_channel_notes(config)
    if config.estimator.kind == "onnx":
        notes += onnxruntime_notes()
    return notes


def preflight_edge(config: Config, receiver_id: str, *, channelize: bool = False) -> list[str]:
    """What ``heimdall receiver ID`` needs: the receiver exists, its endpoint parses, its packages are installed,
    and under ``curve_ingest`` this edge's key pair and the daemon's public key load. The network keys
    (``min_receivers``, the target, the grid) are the central daemon's business, not the edge's, except with
    ``channelize`` (``--channelize``): then the config must be a single-channel one (no ``[[channels]]`` or
    ``[band]``) and the receiver's configured band must reach ``network.target_freq_hz``, as the daemon requires."""
    from streamer.core.security import edge_curve

    rx = config.receiver(receiver_id)
    i = config.receivers.index(rx)
    edge_only = dataclasses.replace(config, receivers=(rx,))
    _check_endpoints(dataclasses.replace(edge_only, metrics=dataclasses.replace(config.metrics, enabled=False)))
    edge_curve(config)
    if not channelize:
        _check_dependencies(config, i, rx)
        return []
    if config.has_channel_plan():
        raise ConfigError(f"{config.source}: --channelize publishes one channel, network.target_freq_hz; this config has a "
                          "channel plan ([[channels]] or [band]): expected a single-channel config, or run the edge "
                          "without --channelize")
    return _check_receiver(config, i, rx)


def _label(i: int, rx) -> str:
    return f"receivers[{i}] (id {rx.id!r}, kind {rx.kind!r})"


def _check_receiver_count(config: Config) -> None:
    n = len(config.receivers)
    if n == 0:
        raise ConfigError(f"{config.source}: receivers: expected at least one [[receivers]] table, got none")
    if config.pipeline.min_receivers > n:
        raise ConfigError(
            f"{config.source}: pipeline.min_receivers: expected at most the number of receivers ({n}), "
            f"got {config.pipeline.min_receivers}: the daemon would never localize (a config for `heimdall receiver` "
            "on an edge host is checked with `heimdall check --receiver ID -c FILE`)"
        )


def _check_endpoints(config: Config) -> None:
    from streamer.core.security import parse_endpoint

    endpoints = [("output.endpoint", config.output.endpoint)]
    endpoints += [(f"{_label(i, rx)}.endpoint", rx.options.endpoint) for i, rx in enumerate(config.receivers)
                  if isinstance(getattr(rx.options, "endpoint", None), str)]
    for key, endpoint in endpoints:
        try:
            parse_endpoint(endpoint)
        except ValueError as exc:
            raise ConfigError(f"{config.source}: {key}: {exc}") from None
    metrics = config.metrics
    if metrics.enabled:
        try:
            socket.getaddrinfo(metrics.host, metrics.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(f"{config.source}: metrics.host: cannot resolve {metrics.host!r} ({reason}); "
                              "expected an IP address or a resolvable host name") from None


def memory_limit_bytes() -> int:
    """``MAX_STRUCTURE_BYTES``, or a quarter of physical memory where that is less."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return MAX_STRUCTURE_BYTES
    return min(MAX_STRUCTURE_BYTES, max(1, physical // 4))


def format_bytes(n: float) -> str:
    """``1.5 GiB``-style text."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _check_memory(config: Config) -> None:
    from streamer.core.geodesy import network_geometry
    from streamer.estimators.physics import grid_bytes

    limit = memory_limit_bytes()
    p, rate, n = config.pipeline, config.features.sample_rate_hz, len(config.receivers)
    per_ring = math.ceil(p.buffer_s * rate) * RING_SAMPLE_BYTES  # as streamer.daemon.lane.Lane sizes each ring
    if per_ring * n > limit:
        raise ConfigError(
            f"{config.source}: pipeline.buffer_s: {p.buffer_s!r} s at features.sample_rate_hz {rate:g} Hz needs "
            f"{format_bytes(per_ring)} of ring buffer per receiver, {format_bytes(per_ring * n)} for {n} receivers; "
            f"expected at most {format_bytes(limit)} in all: lower pipeline.buffer_s"
        )
    try:
        _, _, area = network_geometry(config)
    except ValueError as exc:
        raise ConfigError(f"{config.source}: receivers: {exc}") from None
    ph = config.estimator.physics
    cells, size = grid_bytes(ph, area, n)
    if size > limit:
        raise ConfigError(
            f"{config.source}: estimator.physics.grid_step_km = {ph.grid_step_km!r} over network.area_margin_km = "
            f"{config.network.area_margin_km!r} ({area.width_m / 1e3:.0f} x {area.height_m / 1e3:.0f} km): the posterior "
            f"grid would hold {cells:.3g} cells and take {format_bytes(size)}; expected at most {format_bytes(limit)}: "
            "raise grid_step_km or lower area_margin_km"
        )


def _check_security(config: Config) -> None:
    from streamer.core import security

    sec, src = config.security, config.source
    if sec.curve_output or sec.curve_ingest:
        security.load_secret_key(sec.secret_key, key=f"{src}: security.secret_key")
    for on, directory, name in ((sec.curve_output, sec.output_clients_dir, "output_clients_dir"),
                                (sec.curve_ingest, sec.ingest_clients_dir, "ingest_clients_dir")):
        if on:
            security.load_allow_list(directory, key=f"{src}: security.{name}")
    if sec.curve_ingest and sec.server_key is not None:  # used by `heimdall receiver` on an edge
        security.load_public_key(sec.server_key, key=f"{src}: security.server_key")


def _check_dependencies(config: Config, i: int, rx):
    """The receiver's adapter class, once its optional packages are known to import."""
    from receivers.registry import adapter_class

    try:
        cls = adapter_class(rx.kind)
        probe = getattr(cls, "check_dependencies", None)
        if probe is not None:
            probe()
    except MissingDependencyError as exc:
        raise MissingDependencyError(f"{config.source}: {_label(i, rx)}: {exc}") from None
    return cls


def _check_channel_plan(config: Config) -> list[str]:
    """Every channel of the plan inside the bands of at least ``pipeline.min_receivers`` receivers (an error
    otherwise); a warning for each receiver that misses some (``streamer.daemon.coverage``)."""
    from streamer.daemon.coverage import channel_coverage, coverage_verdict

    return coverage_verdict(config, channel_coverage(config)) + _overlap_notes(config)


def _overlap_notes(config: Config) -> list[str]:
    """A warning naming ``[[channels]]`` that overlap (centres closer than half their bandwidths together): one
    transmission would show in both. A ``[band]`` cannot overlap (its bandwidth is at most its spacing)."""
    plan = sorted(enumerate(config.channel_plan()), key=lambda item: item[1].centre_hz)
    pairs = []
    for (i, a), (j, b) in itertools.pairwise(plan):
        overlap_hz = (a.bandwidth_hz + b.bandwidth_hz) / 2 - (b.centre_hz - a.centre_hz)
        if overlap_hz > 0:
            pairs.append(f"channels[{i}] {a.name!r} and channels[{j}] {b.name!r} by {overlap_hz:g} Hz")
    if not pairs:
        return []
    listed = "; ".join(pairs[:6]) + (f"; and {len(pairs) - 6} more pairs" if len(pairs) > 6 else "")
    counted = "1 pair" if len(pairs) == 1 else f"{len(pairs)} pairs"
    return [(f"{config.source}: channels: {counted} of neighbouring channels overlap ({listed}): a transmission "
             "in the overlap shows in both")]


def _check_receiver(config: Config, i: int, rx) -> list[str]:
    from streamer.daemon.coverage import receiver_bands
    from streamer.dsp.channelizer import check_tunable

    label = _label(i, rx)
    _check_dependencies(config, i, rx)
    if config.has_channel_plan():
        return []  # a channel plan is checked channel by channel (_check_channel_plan), not against the target
    bands = receiver_bands(config, rx)
    if not bands:
        return []  # the band is known only from the stream: the lane logs an untunable one at run time
    target = config.network.target_freq_hz
    refused = []
    for center, rate in bands:
        try:
            check_tunable(rate, center, target, config.features.sample_rate_hz)
        except ValueError as exc:
            refused.append(f"centre {center:g} Hz at {rate:g} S/s cannot be channelized to network.target_freq_hz = "
                           f"{target:g} Hz ({exc})")
    if len(refused) == len(bands):
        raise ConfigError(f"{config.source}: {label}: {refused[0]}; expected the target within centre ± rate/2 and a rate "
                          "in a small ratio to features.sample_rate_hz: every block would be dropped as untunable")
    return [f"{config.source}: {label}: {text}: those recorded captures will be dropped as untunable" for text in refused]


def busy_port_notes(config: Config) -> list[str]:
    """Warnings for TCP ports that are taken right now (``heimdall check`` only: by start-up they may be free,
    and ``heimdall run`` then refuses a busy one by name anyway)."""
    from streamer.core.security import parse_endpoint

    wanted = []
    if config.metrics.enabled and config.metrics.port:
        wanted.append((f"metrics.port {config.metrics.port} on {config.metrics.host}", config.metrics.host, config.metrics.port))
    scheme, host, port = parse_endpoint(config.output.endpoint)
    if scheme == "tcp" and port.isdigit() and int(port) and host != "*":
        wanted.append((f"output.endpoint {config.output.endpoint}", host.strip("[]"), int(port)))
    notes = []
    for what, host, port in wanted:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            continue  # an interface name or the like: binding will tell
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is not busy
            try:
                probe.bind(address)
            except OSError as exc:
                notes.append(f"{config.source}: {what}: {os.strerror(exc.errno).lower() if exc.errno else exc} right now; "
                             "heimdall run would stop there")
    return notes


def onnxruntime_notes() -> list[str]:
    """A warning when both the CPU and the GPU ONNX Runtime distributions are installed (they share a folder)."""
    installed = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            installed.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    if len(installed) < 2:
        return []
    return [f"both {' and '.join(installed)} are installed; they share the package folder 'onnxruntime', so "
            f"which one runs depends on install order. Keep one: {GPU_FIX} (or only onnxruntime for CPU)"]


def provider_summary(config: Config, providers_available: list[str] | None = None, running: str | None = None) -> str:
    """Which ONNX Runtime provider runs the model: ``running`` (the session's own first provider) when known, else
    the first of ``estimator.providers`` available here, with CPU as the fallback. onnxruntime-gpu lists CUDA as
    available even where CUDA does not load, so ``heimdall check`` passes the session's answer."""
    if providers_available is None:
        import onnxruntime

        providers_available = list(onnxruntime.get_available_providers())
    chosen = running or next((p for p in config.estimator.providers if p in providers_available), "CPUExecutionProvider")
    return (f"ONNX Runtime provider {chosen} runs the model (estimator.providers: {', '.join(config.estimator.providers)}; "
            f"available here: {', '.join(providers_available)})")
