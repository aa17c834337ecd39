"""``heimdall bench map``: what the live map (``heimdall map``) costs, measured in a headless Chromium (Debian's
``chromium``) driven over the DevTools protocol. One of three modes per run, each printed beside a baseline taken
in the same run:

``--first-ellipse``
    The daemon on the simulated default network (or the one at ENDPOINT) and ``heimdall map``; once the map server
    holds an estimate, the page is loaded ``--loads`` times, each in a new tab with the browser's cache off, and the
    time from navigation start to the page's ``heimdall:first-ellipse`` performance mark (set in the animation
    frame after the first ellipse joined the map) is read from the page, beside the same load's
    DOMContentLoaded and load events (the baseline). Milliseconds; median and max.
``--soak SECONDS --rate R``
    A real daemon's ``loc`` and ``status`` messages are recorded for ``--record-s`` seconds, then replayed to
    ``heimdall map`` through the daemon's own publisher (``streamer.daemon.publish.ZmqPublisher``) at ``R``
    localizations per second, each with a fresh ``seq`` and window times (``status`` every ``--status-s``).
    One page stays open; every ``--sample-s`` seconds the page's garbage is collected (``HeapProfiler.
    collectGarbage``) and its JS heap in use (``Runtime.getHeapUsage``, bytes), DOM node count and event
    listeners (``Performance.getMetrics``) and the localizations in the last picture it drew are sampled.
    Printed: the samples, the mean heap of the last ``--window-s`` seconds over the mean of the first
    ``--window-s`` after ``--warmup-s`` (the baseline; windows shortened to half of what follows the warm-up when
    the soak is shorter), and whether the page kept up (localizations sent, received by the map server, drawn).
``--browsers N``
    The daemon on the simulated default network and ``heimdall map``; phases alternate 0 and N clients open on
    the map (``--phases``, default 0,N,0,N). ``--clients browsers``: each client its own headless Chromium and
    profile showing the page, as separate users; ``--clients streams``: readers of the
    map server's ``/events`` that parse each picture and draw nothing (the map server's work without the
    browsers'). A phase opens its clients, waits until each has a picture and ``--settle-s`` more, then measures
    ``--phase-s`` seconds: the daemon's windows and the p50 and p99 of its per-window processing time (ms), from
    the difference of its ``heimdall_processing_seconds`` histogram (docs/metrics.md) over those seconds,
    interpolated within a bucket as Prometheus' ``histogram_quantile`` does. Printed: p50, p99 and the 1-minute
    load average per phase, mean p99 (and p50) with N clients over without, and the load average at start and end.
    ``--daemon-cpus LIST`` pins the daemon to those CPUs and everything else (map server, clients, the bench) to
    the rest, in every phase: the browsers' own CPU use leaves the comparison, as when they run on other machines.

Without Chromium the bench says how to install it and exits 0 (nothing measured). The processes it starts (the
daemon, ``heimdall map``, Chromium) bind loopback on ports the OS chooses and are stopped when it ends.

Examples (shell)
----------------
``heimdall bench map --first-ellipse``
``heimdall bench map --soak 3600 --rate 20``
``heimdall bench map --browsers 10 --phase-s 60``
``heimdall bench map --browsers 10 --clients streams``
``heimdall bench map --browsers 10 --daemon-cpus 0``
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streamer.core.errors import HeimdallError
from streamer.tools.soak import quantile_from_buckets

CHROMIUM_INSTALL = "apt-get install -y chromium"
MAP_INSTALL = "pip install -e '.[map]'"
TARGET_FIRST_ELLIPSE_MS = 2000.0
TARGET_HEAP_FLAT = 0.10  # |last window / first window - 1|
FIRST_ELLIPSE_MARK = "heimdall:first-ellipse"
WINDOW_SIZE = (1280, 860)
PROCESSING_HISTOGRAM = "heimdall_processing_seconds"

METRICS_RE = r"metrics on (http://\S+/metrics)"
PUBLISH_RE = r"publishing on (\S+://\S+?)(?:\s|$)"
SERVING_RE = r"serving (http://\S+/)"
DEVTOOLS_RE = r"DevTools listening on ws://127\.0\.0\.1:(\d+)/"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``heimdall bench map``."""
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--first-ellipse", action="store_true", help="page load to the first ellipse drawn (ms)")
    mode.add_argument("--soak", type=float, metavar="SECONDS", help="keep one page open this long at --rate")
    mode.add_argument("--browsers", type=int, metavar="N", help="daemon p99 with 0 and N browsers open")
    parser.add_argument("endpoint", nargs="?", default=None,
                        help="--first-ellipse: a running daemon's PUB endpoint (default: start one on the simulated default)")
    parser.add_argument("-c", "--config", default=None,
                        help="with ENDPOINT: that daemon's config, for the receiver positions (default: embedded default)")
    parser.add_argument("--loads", type=int, default=10, help="--first-ellipse: page loads (default 10)")
    parser.add_argument("--rate", type=float, default=20.0, help="--soak: localizations per second (default 20)")
    parser.add_argument("--record-s", type=float, default=30.0,
                        help="--soak: seconds of the daemon's output recorded for the replay (default 30)")
    parser.add_argument("--status-s", type=float, default=2.0, help="--soak: a status message this often (s, default 2)")
    parser.add_argument("--sample-s", type=float, default=15.0, help="--soak: sample the page this often (s, default 15)")
    parser.add_argument("--warmup-s", type=float, default=120.0,
                        help="--soak: seconds before the first heap window (default 120)")
    parser.add_argument("--window-s", type=float, default=600.0,
                        help="--soak: length of the first and last heap windows (s, default 600)")
    parser.add_argument("--phase-s", type=float, default=60.0, help="--browsers: seconds measured per phase (default 60)")
    parser.add_argument("--settle-s", type=float, default=10.0,
                        help="--browsers: seconds left out once a phase's clients drew, before its measurement (default 10)")
    parser.add_argument("--clients", choices=("browsers", "streams"), default="browsers",
                        help="--browsers: what is opened: headless Chromiums showing the page (default), or readers of "
                             "the map server's event stream that draw nothing (the map server's work alone)")
    parser.add_argument("--daemon-cpus", default=None, metavar="LIST",
                        help="--browsers: run the daemon on these CPUs (comma-separated ids) and the map server, the "
                             "clients and the bench on the others, as when the browsers are on the operators' own "
                             "machines (default: everything shares every CPU)")
    parser.add_argument("--phases", default=None, metavar="LIST",
                        help="--browsers: browsers open per phase, comma-separated (default 0,N,0,N)")
    parser.add_argument("--chromium", default=None, help="the Chromium binary (default: chromium on PATH)")


def check_arguments(args: argparse.Namespace) -> None:
    """Reject options out of range, naming the option and what it expects (``argparse.ArgumentError``)."""
    def need(ok: bool, text: str) -> None:
        if not ok:
            raise argparse.ArgumentError(None, text)

    need(args.endpoint is None or args.first_ellipse, "ENDPOINT goes with --first-ellipse only (the other modes start their own daemon)")
    need(args.loads >= 1, f"--loads {args.loads}: expected a whole number >= 1")
    if args.soak is not None:
        need(math.isfinite(args.soak) and args.soak > 0, f"--soak {args.soak}: expected seconds > 0")
        need(math.isfinite(args.rate) and 0 < args.rate <= 1000, f"--rate {args.rate}: expected localizations per second in (0, 1000]")
        for name in ("record_s", "status_s", "sample_s", "window_s"):
            value = getattr(args, name)
            need(math.isfinite(value) and value > 0, f"--{name.replace('_', '-')} {value}: expected seconds > 0")
        need(math.isfinite(args.warmup_s) and args.warmup_s >= 0, f"--warmup-s {args.warmup_s}: expected seconds >= 0")
        need(args.soak >= args.warmup_s + 2 * args.sample_s,
             f"--soak {args.soak:g}: expected at least --warmup-s + 2 x --sample-s = {args.warmup_s + 2 * args.sample_s:g} s "
             "(two heap samples after the warm-up)")
    if args.browsers is not None:
        need(1 <= args.browsers <= 50, f"--browsers {args.browsers}: expected a whole number in 1..50")
        need(math.isfinite(args.phase_s) and args.phase_s > 0, f"--phase-s {args.phase_s}: expected seconds > 0")
        need(math.isfinite(args.settle_s) and args.settle_s >= 0, f"--settle-s {args.settle_s}: expected seconds >= 0")
        phases(args)  # raises on a bad --phases
        daemon_cpus(args)  # raises on a bad --daemon-cpus


def phases(args: argparse.Namespace) -> list[int]:
    """Browsers open per phase: ``--phases`` or 0, N, 0, N; both 0 and another count must appear."""
    if args.phases is None:
        return [0, args.browsers, 0, args.browsers]
    try:
        counts = [int(part) for part in args.phases.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 0 or max(counts) > 50 or 0 not in counts or max(counts) == 0:
        raise argparse.ArgumentError(None, f"--phases {args.phases!r}: expected comma-separated browser counts in 0..50, "
                                           "with 0 and at least one other, e.g. 0,10,0,10")
    return counts


def daemon_cpus(args: argparse.Namespace) -> tuple[set[int], set[int]] | None:
    """``--daemon-cpus`` as (the daemon's CPUs, everyone else's), both non-empty and within this process's
    affinity; None without the option."""
    if args.daemon_cpus is None:
        return None
    available = os.sched_getaffinity(0)
    try:
        chosen = {int(part) for part in args.daemon_cpus.split(",")}
    except ValueError:
        chosen = set()
    if not chosen or not chosen <= available or chosen == available:
        raise argparse.ArgumentError(None, f"--daemon-cpus {args.daemon_cpus!r}: expected comma-separated CPU ids "
                                           f"from {sorted(available)}, leaving at least one for the clients")
    return chosen, available - chosen


# Arithmetic on what was measured ----------------------------------------------------------------------------
def heap_windows(samples: list[tuple[float, float]], warmup_s: float, window_s: float) -> dict[str, Any]:
    """Mean heap of the first ``window_s`` after ``warmup_s`` and of the last ``window_s`` of ``samples``
    (``(seconds since the start, bytes)``, in time order), and their ratio. When less than ``2 * window_s``
    follows the warm-up, each window is half of what follows it, so the two never overlap. ``ValueError`` when a
    window holds no sample.

    Examples
    --------
    >>> r = heap_windows([(t, 100.0 + (t >= 500) * 5) for t in range(0, 1000, 100)], warmup_s=200, window_s=300)
    >>> r["first_mean"], r["last_mean"], round(r["ratio"], 3), r["window_s"]
    (100.0, 105.0, 1.05, 300)
    """
    if not samples:
        raise ValueError("heap windows: no sample")
    end = samples[-1][0]
    window = min(window_s, (end - warmup_s) / 2.0)
    if window <= 0:
        raise ValueError(f"heap windows: the samples end at {end:g} s, not after the warm-up of {warmup_s:g} s")
    first = [v for t, v in samples if warmup_s <= t < warmup_s + window]
    last = [v for t, v in samples if t > end - window]
    if not first or not last:
        raise ValueError(f"heap windows: no sample in the first or the last {window:g} s after a warm-up of "
                         f"{warmup_s:g} s (samples too sparse)")
    first_mean, last_mean = statistics.fmean(first), statistics.fmean(last)
    return {"window_s": window, "first_n": len(first), "last_n": len(last), "first_mean": first_mean,
            "last_mean": last_mean, "ratio": last_mean / first_mean}


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a Prometheus histogram given as ``(upper bound, cumulative count)`` in bound order
    (the last bound ``inf``), as ``soak.quantile_from_buckets`` interpolates it; None for an empty histogram.

    Examples
    --------
    >>> histogram_quantile(0.5, [(0.01, 0), (0.02, 10), (0.05, 20), (math.inf, 20)])
    0.02
    >>> histogram_quantile(0.99, [(0.01, 0), (0.02, 10), (0.05, 20), (math.inf, 20)])
    0.0494
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    return quantile_from_buckets(buckets, q)


def processing_buckets(metrics_text: str) -> list[tuple[float, float]]:
    """The daemon's ``heimdall_processing_seconds`` buckets, ``(upper bound s, cumulative count)``, from its
    /metrics text, by prometheus_client's parser. ``HeimdallError`` when the histogram is not there."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets = sorted((float(s.labels["le"]), s.value)
                     for family in text_string_to_metric_families(metrics_text) if family.name == PROCESSING_HISTOGRAM
                     for s in family.samples if s.name == PROCESSING_HISTOGRAM + "_bucket")
    if not buckets:
        raise HeimdallError(f"the daemon's /metrics has no {PROCESSING_HISTOGRAM} histogram (docs/metrics.md)")
    return buckets


def bucket_difference(end: list[tuple[float, float]], start: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """What a cumulative histogram gained between two scrapes (same bounds)."""
    return [(le, count - before) for (le, count), (_, before) in zip(end, start)]


def restamp(msg: dict[str, Any], seq: int, now_ns: int) -> dict[str, Any]:
    """A recorded ``loc`` message sent again as the ``seq``-th: its window moved to end at ``now_ns`` (same length)."""
    length_ns = int(msg["t_end_ns"]) - int(msg["t_start_ns"])
    return {**msg, "seq": seq, "t_start_ns": now_ns - length_ns, "t_end_ns": now_ns}


# Processes ------------------------------------------------------------------------------------------------
class Child:
    """A started subprocess whose stderr is read by a thread (its first 200 and last 200 lines kept)."""

    def __init__(self, name: str, argv: list[str], cpus: set[int] | None = None):
        self.name = name
        with on_cpus(cpus):  # the child and every process it forks inherit the starting thread's CPUs
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.head: list[str] = []
        self.tail: collections.deque[str] = collections.deque(maxlen=200)
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, name=f"{name}-stderr", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self.cond:
                (self.head if len(self.head) < 200 else self.tail).append(line)
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def log(self) -> str:
        with self.cond:
            return "".join(self.head) + "".join(self.tail)

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        """The first match of ``pattern`` in its stderr; ``HeimdallError`` when it exits or the time runs out."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while True:
                match = re.search(pattern, "".join(self.head) + "".join(self.tail))
                if match:
                    return match
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    break
                self.cond.wait(0.2)
        state = f"exited with {self.proc.returncode}" if self.proc.poll() is not None else f"silent for {timeout_s:g} s"
        raise HeimdallError(f"bench map: {self.name} {state} before logging {pattern!r}:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(5)
        self.proc.stderr.close()


@contextlib.contextmanager
def on_cpus(cpus: set[int] | None) -> Iterator[None]:
    """The calling thread runs on ``cpus`` (Linux affinity; nothing changes for None) until the block ends."""
    if cpus is None:
        yield
        return
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


@contextlib.contextmanager
def child(name: str, argv: list[str], cpus: set[int] | None = None) -> Iterator[Child]:
    proc = Child(name, argv, cpus)
    try:
        yield proc
    finally:
        proc.stop()


def bench_config(directory: Path) -> Path:
    """The embedded default config (the simulated seven-receiver network) with the output endpoint and the
    metrics port left to the OS, so the bench never collides with a daemon already running."""
    from streamer.config import default_config_path

    text = default_config_path().read_text(encoding="utf-8")
    text, outputs = re.subn(r'(?m)^endpoint = "tcp://127\.0\.0\.1:\d+"$', 'endpoint = "tcp://127.0.0.1:*"', text)
    text, ports = re.subn(r"(?m)^port = \d+$", "port = 0", text)
    parsed = tomllib.loads(text)
    if (outputs, ports) != (1, 1) or parsed["output"]["endpoint"] != "tcp://127.0.0.1:*" or parsed["metrics"]["port"] != 0:
        raise HeimdallError("bench map: the embedded default config no longer has one output endpoint and one "
                            "metrics port line to make ephemeral")
    path = directory / "bench-map.toml"
    path.write_text(text, encoding="utf-8")
    return path


@contextlib.contextmanager
def daemon(config: Path, cpus: set[int] | None = None) -> Iterator[dict[str, str]]:
    """The daemon on ``config`` (on ``cpus`` when given): yields its PUB endpoint and metrics URL, as it logs them."""
    with child("the daemon", [sys.executable, "-m", "streamer", "run", "-c", str(config)], cpus) as proc:
        yield {"pub": proc.wait_for(PUBLISH_RE, 60).group(1), "metrics": proc.wait_for(METRICS_RE, 60).group(1)}


@contextlib.contextmanager
def map_server(endpoint: str, config: Path | None) -> Iterator[str]:
    """``heimdall map`` subscribed to ``endpoint`` (tiles off: the bench measures the map, not a tile server); yields
    the page's URL."""
    argv = [sys.executable, "-m", "streamer", "map", endpoint, "--http", "127.0.0.1:0", "--tiles", "none"]
    with child("heimdall map", argv + (["-c", str(config)] if config else [])) as proc:
        yield proc.wait_for(SERVING_RE, 30).group(1)


@contextlib.contextmanager
def chromium(binary: str) -> Iterator[int]:
    """A headless Chromium with a fresh profile; yields its DevTools port."""
    with tempfile.TemporaryDirectory(prefix="heimdall-bench-map-") as profile, \
            child("chromium", [binary, "--headless=new", "--remote-debugging-port=0", f"--user-data-dir={profile}",
                               "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
                               f"--window-size={WINDOW_SIZE[0]},{WINDOW_SIZE[1]}", "about:blank"]) as proc:
        yield int(proc.wait_for(DEVTOOLS_RE, 30).group(1))


def fetch(url: str, method: str = "GET") -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as response:
        return response.read()


def fetch_json(url: str, method: str = "GET") -> Any:
    return json.loads(fetch(url, method))


def wait_until(predicate, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise HeimdallError(f"bench map: timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.2)


def map_has_estimate(url: str) -> bool:
    return any(est["ellipses"] for est in fetch_json(url + "state")["estimates"])


class Tab:
    """One Chromium tab over the DevTools protocol (a websocket of JSON commands and replies; events ignored)."""

    def __init__(self, devtools_port: int, target: dict, session, ws):
        self.port, self.target, self.session, self.ws = devtools_port, target, session, ws
        self.ids = itertools.count(1)

    @classmethod
    async def open(cls, devtools_port: int, url: str = "about:blank") -> Tab:
        import aiohttp

        target = fetch_json(f"http://127.0.0.1:{devtools_port}/json/new?{url}", method="PUT")
        session = aiohttp.ClientSession()
        ws = await session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        return cls(devtools_port, target, session, ws)

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()
        fetch(f"http://127.0.0.1:{self.port}/json/close/{self.target['id']}")

    async def call(self, method: str, **params) -> dict:
        request_id = next(self.ids)
        await self.ws.send_json({"id": request_id, "method": method, "params": params})
        while True:
            reply = await self.ws.receive_json(timeout=60)
            if reply.get("id") == request_id:
                if "error" in reply:
                    raise HeimdallError(f"bench map: Chromium refused {method}: {reply['error']}")
                return reply["result"]

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise HeimdallError(f"bench map: the page could not evaluate {expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float, what: str) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise HeimdallError(f"bench map: timed out after {timeout_s:g} s waiting for {what}")
            await asyncio.sleep(0.05)


# --first-ellipse ---------------------------------------------------------------------------------------------
async def first_ellipse_loads(devtools_port: int, url: str, loads: int) -> list[dict[str, float]]:
    """Per load, in ms from navigation start: the first ellipse, DOMContentLoaded and the load event."""
    timings = []
    for _ in range(loads):
        tab = await Tab.open(devtools_port)
        try:
            await tab.call("Network.enable")
            await tab.call("Network.setCacheDisabled", cacheDisabled=True)
            await tab.call("Page.navigate", url=url)
            mark = await tab.wait_for(
                f"(performance.getEntriesByName({FIRST_ELLIPSE_MARK!r})[0] || {{}}).startTime", 30, "the first ellipse")
            nav = await tab.wait_for("(n => n && n.loadEventEnd > 0 && [n.domContentLoadedEventEnd, n.loadEventEnd])"
                                     "(performance.getEntriesByType('navigation')[0])", 30, "the load event")
            timings.append({"first_ellipse_ms": mark, "dom_content_loaded_ms": nav[0], "load_ms": nav[1]})
        finally:
            await tab.close()
    return timings


def bench_first_ellipse(args: argparse.Namespace, binary: str) -> list[str]:
    with contextlib.ExitStack() as stack:
        if args.endpoint:
            endpoint, config = args.endpoint, (Path(args.config) if args.config else None)
        else:
            config = bench_config(Path(stack.enter_context(tempfile.TemporaryDirectory())))
            endpoint = stack.enter_context(daemon(config))["pub"]
        url = stack.enter_context(map_server(endpoint, config))
        wait_until(lambda: map_has_estimate(url), 90, f"the map server to hold an estimate from {endpoint}")
        port = stack.enter_context(chromium(binary))
        load_avg = os.getloadavg()
        timings = asyncio.run(first_ellipse_loads(port, url, args.loads))
    lines = [(f"bench map --first-ellipse: {args.loads} loads of {url} (cache off, new tab each), daemon at {endpoint}; "
             f"load average {load_avg[0]:.2f} at start")]
    lines += [f"  load {i + 1}: first ellipse {t['first_ellipse_ms']:.0f} ms  (DOMContentLoaded "
              f"{t['dom_content_loaded_ms']:.0f} ms, load event {t['load_ms']:.0f} ms)" for i, t in enumerate(timings)]
    first = [t["first_ellipse_ms"] for t in timings]
    load = [t["load_ms"] for t in timings]
    met = "met" if max(first) < TARGET_FIRST_ELLIPSE_MS else "MISSED"
    lines.append(f"  first ellipse: median {statistics.median(first):.0f} ms, max {max(first):.0f} ms "
                 f"(target < {TARGET_FIRST_ELLIPSE_MS:.0f} ms: {met}); baseline, the load event: median "
                 f"{statistics.median(load):.0f} ms, max {max(load):.0f} ms; first ellipse / load event (medians) "
                 f"{statistics.median(first) / statistics.median(load):.2f}")
    return lines


# --soak -------------------------------------------------------------------------------------------------------
def record_output(endpoint: str, seconds: float) -> dict[str, list[dict]]:
    """The ``loc`` and ``status`` messages the daemon at ``endpoint`` publishes in ``seconds``, decoded."""
    import zmq

    from streamer.tools.listen import UndecodableMessage, decode_message

    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    for topic in ("loc", "status"):
        sock.setsockopt_string(zmq.SUBSCRIBE, topic)
    sock.connect(endpoint)
    recorded: dict[str, list[dict]] = {"loc": [], "status": []}
    end = time.monotonic() + seconds
    try:
        while (left := end - time.monotonic()) > 0:
            if sock.poll(int(left * 1000) + 1):
                try:
                    topic, msg = decode_message(sock.recv_multipart())
                except UndecodableMessage:
                    continue
                recorded["loc" if topic.startswith("loc") else "status"].append(msg)
    finally:
        sock.close()
    if not recorded["loc"] or not recorded["status"]:
        raise HeimdallError(f"bench map: the daemon at {endpoint} sent {len(recorded['loc'])} loc and "
                            f"{len(recorded['status'])} status messages in {seconds:g} s; the replay needs both "
                            "(a longer --record-s?)")
    return recorded


class Feed(threading.Thread):
    """Replays recorded messages through the daemon's publisher: ``loc`` at ``rate`` per second (fresh ``seq``
    and window), ``status`` every ``status_s`` (fresh ``t_ns``), until stopped."""

    def __init__(self, publisher, recorded: dict[str, list[dict]], rate: float, status_s: float):
        super().__init__(name="bench-map-feed", daemon=True)
        self.publisher, self.recorded, self.rate, self.status_s = publisher, recorded, rate, status_s
        self.sent = 0
        self.refused = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        next_status = start
        statuses = itertools.cycle(self.recorded["status"])
        locs = itertools.cycle(self.recorded["loc"])
        while not self.stopping.is_set():
            now = time.monotonic()
            if now >= next_status:
                self.publisher.send("status", {**next(statuses), "t_ns": time.time_ns()})
                next_status += self.status_s
            due = start + self.sent / self.rate
            if now >= due:
                if not self.publisher.send("loc", restamp(next(locs), self.sent, time.time_ns())):
                    self.refused += 1
                self.sent += 1
            else:
                self.stopping.wait(min(due, next_status) - now)


async def soak_samples(devtools_port: int, url: str, feed: Feed, seconds: float, sample_s: float,
                       print_line) -> tuple[list[dict], dict]:
    """Open the map, start ``feed``, sample the page every ``sample_s`` for ``seconds``; the samples and the
    final counts (after the feed stops and the page has had 3 s to catch up)."""
    tab = await Tab.open(devtools_port, url)
    samples = []
    try:
        await tab.wait_for("window.heimdallMap && heimdallMap.drawn.version >= 0", 30, "the map page")
        await tab.call("Performance.enable")
        start = time.monotonic()
        feed.start()
        for k in range(1, int(seconds // sample_s) + 1):
            await asyncio.sleep(max(0.0, start + k * sample_s - time.monotonic()))
            drawn = await tab.evaluate("heimdallMap.drawn.localizations")
            sent = feed.sent  # read after the page's count, so that "behind" never comes out below the true lag
            await tab.call("HeapProfiler.collectGarbage")
            heap = await tab.call("Runtime.getHeapUsage")
            metrics = {m["name"]: m["value"] for m in (await tab.call("Performance.getMetrics"))["metrics"]}
            sample = {"t_s": time.monotonic() - start, "heap_used": heap["usedSize"], "heap_total": heap["totalSize"],
                      "nodes": int(metrics.get("Nodes", -1)), "listeners": int(metrics.get("JSEventListeners", -1)),
                      "sent": sent, "drawn": drawn}
            samples.append(sample)
            print_line(f"  t {sample['t_s']:7.0f} s  heap {sample['heap_used'] / 1e6:7.2f} MB (total "
                       f"{sample['heap_total'] / 1e6:6.2f})  nodes {sample['nodes']:6d}  listeners "
                       f"{sample['listeners']:5d}  sent {sent:7d}  drawn {drawn:7d}  behind {sent - drawn:5d}")
        await asyncio.sleep(max(0.0, start + seconds - time.monotonic()))
        feed.stopping.set()
        feed.join(5)
        await asyncio.sleep(3.0)
        final = {"sent": feed.sent, "refused": feed.refused,
                 "received": fetch_json(url + "state")["counts"].get("loc", 0),
                 "drawn": await tab.evaluate("heimdallMap.drawn.localizations"),
                 "updates": await tab.evaluate("heimdallMap.drawn.updates")}
    finally:
        feed.stopping.set()
        await tab.close()
    return samples, final


def bench_soak(args: argparse.Namespace, binary: str, print_line) -> list[str]:
    import zmq

    from streamer.daemon.publish import ZmqPublisher

    with tempfile.TemporaryDirectory() as tmp:
        config = bench_config(Path(tmp))
        with daemon(config) as addresses:
            recorded = record_output(addresses["pub"], args.record_s)
        print_line(f"bench map --soak: recorded {len(recorded['loc'])} loc and {len(recorded['status'])} status "
                   f"messages of the daemon on the simulated default in {args.record_s:g} s; replaying at "
                   f"{args.rate:g} loc/s for {args.soak:g} s, a page sample every {args.sample_s:g} s "
                   f"(load average {os.getloadavg()[0]:.2f})")
        context = zmq.Context()
        publisher = ZmqPublisher("tcp://127.0.0.1:*", context=context, send_hwm=100_000)
        try:
            with map_server(publisher.endpoint, config) as url, chromium(binary) as port:
                feed = Feed(publisher, recorded, args.rate, args.status_s)
                samples, final = asyncio.run(soak_samples(port, url, feed, args.soak, args.sample_s, print_line))
        finally:
            publisher.close()
            context.destroy(linger=0)
    lines = []
    heap = heap_windows([(s["t_s"], s["heap_used"]) for s in samples], args.warmup_s, args.window_s)
    nodes = heap_windows([(s["t_s"], s["nodes"]) for s in samples], args.warmup_s, args.window_s)
    flat = "met" if abs(heap["ratio"] - 1.0) <= TARGET_HEAP_FLAT else "MISSED"
    lines.append(f"  JS heap after GC: first {heap['window_s']:.0f} s after a {args.warmup_s:g} s warm-up "
                 f"{heap['first_mean'] / 1e6:.2f} MB (mean of {heap['first_n']}), last {heap['window_s']:.0f} s "
                 f"{heap['last_mean'] / 1e6:.2f} MB (mean of {heap['last_n']}); last / first {heap['ratio']:.3f} "
                 f"(target flat within {TARGET_HEAP_FLAT:.0%}: {flat})")
    lines.append(f"  DOM nodes: first window {nodes['first_mean']:.0f}, last {nodes['last_mean']:.0f} "
                 f"(last / first {nodes['ratio']:.3f}); max {max(s['nodes'] for s in samples)}")
    behind = max(s["sent"] - s["drawn"] for s in samples)
    kept_up = final["drawn"] == final["sent"]
    lines.append(f"  kept up: sent {final['sent']} loc ({final['refused']} refused by the socket), the map server "
                 f"received {final['received']}, the page drew up to {final['drawn']} in {final['updates']} pictures "
                 f"({final['sent'] / args.soak:.1f} loc/s); at most {behind} behind at a sample "
                 f"({behind / args.rate:.1f} s of feed): {'yes' if kept_up else 'NO'}")
    return lines


# --browsers -----------------------------------------------------------------------------------------------------
class BrowserClients:
    """``count`` browsers on the map, each its own headless Chromium and profile (as separate users would be)."""

    kind = "browsers"

    def __init__(self, binary: str, url: str):
        self.binary, self.url = binary, url
        self.stack = contextlib.ExitStack()
        self.tabs: list[Tab] = []

    async def open(self, count: int) -> None:
        for _ in range(count):
            self.tabs.append(await Tab.open(self.stack.enter_context(chromium(self.binary)), self.url))
        for tab in self.tabs:
            await tab.wait_for("window.heimdallMap && heimdallMap.drawn.updates > 0", 60, "a map page to draw")

    async def pictures(self) -> list[int]:
        """Pictures each page has drawn so far."""
        return [await tab.evaluate("heimdallMap.drawn.updates") for tab in self.tabs]

    async def close(self) -> None:
        try:
            for tab in self.tabs:
                await tab.close()
        finally:
            self.tabs = []
            self.stack.close()


class StreamClients:
    """``count`` readers of the map server's ``/events`` that parse each picture and draw nothing: the map
    server's whole work for a browser, without the browser's."""

    kind = "event streams"

    def __init__(self, url: str):
        self.url = url
        self.tasks: list[asyncio.Task] = []
        self.counts: list[int] = []
        self.session = None

    async def open(self, count: int) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession()
        self.counts = [0] * count
        self.tasks = [asyncio.create_task(self._read(i)) for i in range(count)]
        deadline = time.monotonic() + 60
        while min(self.counts, default=1) == 0:
            if time.monotonic() > deadline or any(t.done() for t in self.tasks):
                raise HeimdallError(f"bench map: an event stream from {self.url}events gave no picture in 60 s")
            await asyncio.sleep(0.05)

    async def _read(self, index: int) -> None:
        async with self.session.get(self.url + "events", timeout=None) as response:
            async for line in response.content:
                if line.startswith(b"data: "):
                    json.loads(line[6:])
                    self.counts[index] += 1

    async def pictures(self) -> list[int]:
        return list(self.counts)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []
        if self.session is not None:
            await self.session.close()


async def client_phases(make_clients, metrics_url: str, counts: list[int], phase_s: float, settle_s: float,
                        print_line) -> list[dict]:
    """One phase per entry of ``counts``: that many clients (``make_clients()``) open on the map, then ``settle_s``
    left out, then the daemon's processing histogram over ``phase_s`` seconds."""
    results = []
    for clients_open in counts:
        clients = make_clients()
        try:
            await clients.open(clients_open)
            await asyncio.sleep(settle_s)
            before = await clients.pictures()
            start = processing_buckets(fetch(metrics_url).decode())
            measured_from = time.monotonic()
            await asyncio.sleep(phase_s)
            delta = bucket_difference(processing_buckets(fetch(metrics_url).decode()), start)
            measured_s = time.monotonic() - measured_from
            load_1min = os.getloadavg()[0]
            # a client that stopped taking pictures during the phase no longer loaded the map server
            gained = [after - b for after, b in zip(await clients.pictures(), before)]
        finally:
            await clients.close()
        p50, p99 = histogram_quantile(0.5, delta), histogram_quantile(0.99, delta)
        result = {"clients": clients_open, "windows": int(delta[-1][1]), "seconds": measured_s,
                  "p50_ms": None if p50 is None else p50 * 1e3, "p99_ms": None if p99 is None else p99 * 1e3,
                  "pictures_min": min(gained, default=0), "load_1min": load_1min}
        results.append(result)
        took = f" (each took >= {result['pictures_min']} pictures)" if clients_open else ""
        print_line(f"  phase {len(results)}: {clients_open:2d} {clients.kind}{took}, {result['windows']} windows in "
                   f"{measured_s:.0f} s, processing p50 {_ms(result['p50_ms'])}, p99 {_ms(result['p99_ms'])}; "
                   f"load average {load_1min:.2f}")
    return results


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def bench_browsers(args: argparse.Namespace, binary: str, print_line) -> list[str]:
    counts = phases(args)
    pinned = daemon_cpus(args)
    daemon_on, others_on = pinned if pinned else (None, None)
    placement = (f"daemon on CPUs {sorted(daemon_on)}, map server, clients and bench on {sorted(others_on)}"
                 if pinned else "every process on every CPU")
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, on_cpus(others_on):
        config = bench_config(Path(tmp))
        with daemon(config, daemon_on) as addresses, map_server(addresses["pub"], config) as url:
            wait_until(lambda: map_has_estimate(url), 90, "the daemon's first localization on the map")
            print_line(f"bench map --browsers {args.browsers} --clients {args.clients}: phases {counts} x "
                       f"{args.phase_s:g} s measured, each after its clients drew and {args.settle_s:g} s more; "
                       f"{placement}; load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} at start")
            if args.clients == "browsers":
                make_clients = lambda: BrowserClients(binary, url)
            else:
                make_clients = lambda: StreamClients(url)
            results = asyncio.run(client_phases(make_clients, addresses["metrics"], counts, args.phase_s,
                                                args.settle_s, print_line))
    load_end = os.getloadavg()
    without = [r["p99_ms"] for r in results if r["clients"] == 0 and r["p99_ms"] is not None]
    with_pages = [r["p99_ms"] for r in results if r["clients"] > 0 and r["p99_ms"] is not None]
    lines = []
    if without and with_pages:
        ratio = statistics.fmean(with_pages) / statistics.fmean(without)
        lines.append(f"  p99 mean with {args.clients} {statistics.fmean(with_pages):.1f} ms, without "
                     f"{statistics.fmean(without):.1f} ms: with / without {ratio:.2f}")
        p50_without = [r["p50_ms"] for r in results if r["clients"] == 0 and r["p50_ms"] is not None]
        p50_with = [r["p50_ms"] for r in results if r["clients"] > 0 and r["p50_ms"] is not None]
        lines.append(f"  p50 mean with {args.clients} {statistics.fmean(p50_with):.1f} ms, without "
                     f"{statistics.fmean(p50_without):.1f} ms: with / without "
                     f"{statistics.fmean(p50_with) / statistics.fmean(p50_without):.2f}")
    else:
        lines.append("  p99: a phase had no localized window; no ratio")
    lines.append(f"  load average {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} at end "
                 f"({os.cpu_count()} CPUs)")
    return lines


# Entry ------------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """Run ``heimdall bench map`` with parsed arguments; 0 also when Chromium is missing (nothing measured, said so)."""
    check_arguments(args)
    binary = args.chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        print(f"bench map: skipped, needs Chromium: {CHROMIUM_INSTALL}", flush=True)
        return 0
    try:
        import aiohttp  # noqa: F401  (the [map] extra: heimdall map and the DevTools socket)
    except ModuleNotFoundError:
        print(f"bench map: skipped, needs the [map] extra (aiohttp): {MAP_INSTALL}", flush=True)
        return 0

    def print_line(line: str) -> None:
        print(line, flush=True)

    if args.first_ellipse:
        lines = bench_first_ellipse(args, binary)
    elif args.soak is not None:
        lines = bench_soak(args, binary, print_line)
    else:
        lines = bench_browsers(args, binary, print_line)
    print("\n".join(lines), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``heimdall bench map`` entry point (also ``python -m streamer.tools.bench_map``)."""
    parser = argparse.ArgumentParser(prog="heimdall bench map", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except argparse.ArgumentError as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    raise SystemExit(main())
