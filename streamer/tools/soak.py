"""``heimdall soak``: run the daemon in-process under a realistic load and check that it stays healthy.

The load: ``--receivers`` simulated receivers (default 16) spread over the default network's area, each
delivering ``--rate`` samples/s (default 48000, a 12.5 kHz channel with margin) in real time, hearing a
transmitter that is keyed almost all the time (so every window can be localized and the localization
rate measures the pipeline, not the traffic). The daemon is ``streamer.daemon.app.Daemon`` with the physics
estimator; this module subscribes to its output and reads its ``Metrics`` object every ``--interval-s``.

Checks (after ``--warmup-minutes``):

- memory: resident set size (``/proc/self/status`` VmRSS) at the end within 5 % of the start of the
  measured period (medians of three samples each);
- exact sample accounting: with the sources stopped and the queue drained, for every receiver
  ``received == used + buffered + dropped{stage="pipeline"}``;
- steady localization rate, counted by the time of the signal each localization is about (its window's
  ``t_start_ns``), in ``--interval-s`` slices: overall at least 90 % of one per window, no slice under 70 %,
  and no gap in ``seq`` at the subscriber. A window localized late still counts for its own slice: a stall
  that delays localizations without losing any is the latency check's business (the arrival rate per
  interval and the worst end-to-end age are reported beside it), while a window that is lost (dropped
  data, too few receivers) leaves a hole in its slice;
- steady latency: p99 of the processing latency in the second half of the measured period at most
  1.5 x the first half's + 5 ms.

The report (printed, and written to ``--report`` if given) has one row per sample and the verdicts.
Exit status 0 when every check passes, 1 otherwise.

Examples
--------
>>> args = parse_args(["--minutes", "0.5", "--receivers", "4"])
>>> args.receivers, args.rate, args.minutes
(4, 48000.0, 0.5)
>>> cfg = soak_config(4, 48000.0, seed=1)
>>> len(cfg.receivers), cfg.receivers[0].kind, cfg.receivers[0].options.sample_rate_hz
(4, 'simulator', 48000.0)
>>> quantile_from_buckets([(0.01, 0), (0.02, 50), (0.05, 100), (float("inf"), 100)], 0.99)
0.0494
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import math
import resource
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import msgpack
import zmq

from streamer import config as config_mod
from streamer.config import Config

log = logging.getLogger(__name__)

RSS_GROWTH_LIMIT = 0.05
RATE_FLOOR_OVERALL = 0.90
RATE_FLOOR_INTERVAL = 0.70
P99_GROWTH_FACTOR = 1.5
P99_SLACK_S = 0.005
DRAIN_TIMEOUT_S = 20.0
#: Slices of signal ending later than this before the last sample are not judged (their windows may be in flight).
SLICE_MARGIN_S = 2.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parsed and checked options of ``heimdall soak`` (``checked``); a bad combination is a usage error."""
    p = argparse.ArgumentParser(prog="heimdall soak")
    add_arguments(p)
    try:
        return checked(p.parse_args(argv))
    except argparse.ArgumentError as exc:
        p.error(str(exc))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``heimdall soak``; ``checked`` completes them."""
    p.description = __doc__.split("\n\n")[0]
    p.add_argument("--receivers", type=int, default=16, help="simulated receivers (default 16)")
    p.add_argument("--minutes", type=float, default=5.0, help="length of the run, warm-up included (default 5)")
    p.add_argument("--rate", type=float, default=48_000.0, help="samples/s per receiver (default 48000)")
    p.add_argument("--report", type=Path, default=None, help="write the report here (.json: machine-readable)")
    p.add_argument("--warmup-minutes", type=float, default=None,
                   help="not judged: the first part of the run (default: 20 %% of it, at most 2 minutes)")
    p.add_argument("--interval-s", type=float, default=5.0, help="sampling period (default 5 s)")
    p.add_argument("--seed", type=int, default=1, help="simulated world seed (default 1)")


def checked(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the warm-up default filled in; ``argparse.ArgumentError`` for out-of-range options (the
    command line prints it as a usage error)."""
    if args.receivers < 3 or args.minutes <= 0 or args.rate <= 0 or args.interval_s <= 0:
        raise argparse.ArgumentError(None, "--receivers >= 3, --minutes, --rate and --interval-s > 0 expected")
    if args.warmup_minutes is None:
        args.warmup_minutes = min(2.0, 0.2 * args.minutes)
    return args


# Config ----------------------------------------------------------------------------------------------
def receiver_positions(n: int, base: Config) -> list[tuple[float, float, float]]:
    """``n`` positions spread evenly (golden-angle spiral) over the bounding box of ``base``'s receivers."""
    lats = [rx.lat for rx in base.receivers]
    lons = [rx.lon for rx in base.receivers]
    lat0, lon0 = (min(lats) + max(lats)) / 2, (min(lons) + max(lons)) / 2
    half_lat, half_lon = (max(lats) - min(lats)) / 2, (max(lons) - min(lons)) / 2
    golden = math.pi * (3.0 - math.sqrt(5.0))
    out = []
    for i in range(n):
        r = math.sqrt((i + 0.5) / n)
        out.append((lat0 + half_lat * r * math.sin(i * golden), lon0 + half_lon * r * math.cos(i * golden), 200.0))
    return out


def soak_config(receivers: int, rate_hz: float, *, seed: int = 1) -> Config:
    """The embedded default network, with ``receivers`` simulated real-time receivers and a steady transmitter."""
    base = config_mod.load()
    offset_hz = min(50e3, 0.2 * rate_hz)  # the channel sits off the receivers' centre, as with real tuners
    rx_tables = [
        {"id": f"rx{i:02d}", "kind": "simulator", "lat": lat, "lon": lon, "alt_m": alt, "sample_rate_hz": float(rate_hz),
         "center_freq_hz": base.network.target_freq_hz - offset_hz, "realtime": True}  # fmt: skip
        for i, (lat, lon, alt) in enumerate(receiver_positions(receivers, base))
    ]
    data = {
        "network": {"name": "default", "target_freq_hz": base.network.target_freq_hz},
        "output": {"endpoint": "tcp://127.0.0.1:*", "status_interval_s": 2.0, "publish_truth": False},
        "metrics": {"enabled": False},  # read from the Metrics object directly
        # Keyed > 99.9 % of the time (key_up_mean_s must stay under the simulator's 600 s keying chunk).
        "simulator": {"seed": seed, "key_up_mean_s": 60.0, "key_down_mean_s": 0.05},
        "receivers": rx_tables,
    }
    return config_mod.from_dict(data, source=f"<soak: {receivers} x {rate_hz:g} S/s>")


# Measuring -------------------------------------------------------------------------------------------
def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; elsewhere the peak, from getrusage)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def quantile_from_buckets(buckets: Sequence[tuple[float, float]], q: float) -> float:
    """Prometheus ``histogram_quantile``: cumulative ``(le, count)`` pairs -> the q-quantile, interpolated."""
    total = buckets[-1][1]
    if total <= 0:
        return math.nan
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            return round(prev_le + (le - prev_le) * (rank - prev_count) / max(count - prev_count, 1e-12), 6)
        prev_le, prev_count = le, count
    return prev_le


def _histogram_buckets(registry, name: str) -> list[tuple[float, float]]:
    out = []
    for metric in registry.collect():
        for s in metric.samples:
            if s.name == f"{name}_bucket":
                out.append((float(s.labels["le"]), s.value))
    return sorted(out)


def _sum_samples(registry, name: str, **labels: str) -> float:
    total = 0.0
    for metric in registry.collect():
        for s in metric.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def _window_outcomes(registry) -> dict[str, float]:
    """heimdall_windows_total by outcome (cumulative)."""
    out: dict[str, float] = {}
    for metric in registry.collect():
        for s in metric.samples:
            if s.name == "heimdall_windows_total":
                out[s.labels["outcome"]] = out.get(s.labels["outcome"], 0.0) + s.value
    return out


def accounting_residuals(registry, receiver_ids: Sequence[str]) -> dict[str, float]:
    """received - used - buffered - dropped{stage=pipeline} per receiver, from the live registry."""
    return {
        rid: _sum_samples(registry, "heimdall_samples_received_total", receiver=rid)
        - _sum_samples(registry, "heimdall_samples_used_total", receiver=rid)
        - _sum_samples(registry, "heimdall_samples_buffered", receiver=rid)
        - _sum_samples(registry, "heimdall_samples_dropped_total", receiver=rid, stage="pipeline")
        for rid in receiver_ids
    }


class OutputReader:
    """Subscribes to the daemon's localizations in a thread: processing latency per message, seq gaps."""

    def __init__(self, endpoint: str, topic: str) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.linger = 0
        self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._sock.connect(endpoint)
        self._lock = threading.Lock()
        self._latencies_s: list[float] = []
        self._window_starts_ns: list[int] = []
        self._ages_s: list[float] = []
        self.received = 0
        self.seq_gaps = 0
        self._last_seq: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._sock.poll(200):
                continue
            _topic, body = self._sock.recv_multipart()
            msg = msgpack.unpackb(body, raw=False)
            with self._lock:
                self.received += 1
                if self._last_seq is not None and msg["seq"] != self._last_seq + 1:
                    self.seq_gaps += 1
                self._last_seq = msg["seq"]
                self._latencies_s.append(msg["latency_ms"]["processing"] / 1e3)
                self._window_starts_ns.append(int(msg["t_start_ns"]))
                self._ages_s.append(msg["latency_ms"]["age"] / 1e3)

    def window_starts(self) -> list[int]:
        with self._lock:
            return list(self._window_starts_ns)

    def take_latencies(self) -> tuple[list[float], list[float]]:
        """Processing latencies and end-to-end ages (s) of the localizations since the last call."""
        with self._lock:
            out = self._latencies_s, self._ages_s
            self._latencies_s, self._ages_s = [], []
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        self._ctx.term()


def localizations_per_slice(window_starts_ns: Sequence[int], start_unix_ns: int, interval_s: float,
                            first_slice: int, end_slice: int) -> dict[int, int]:
    """Localizations per ``interval_s`` slice of signal time (by window start), slices ``first_slice..end_slice-1``
    counted from ``start_unix_ns``; a slice nothing was localized in is there with 0."""
    slice_ns = int(round(interval_s * 1e9))
    counts = collections.Counter((int(t) - start_unix_ns) // slice_ns for t in window_starts_ns)
    return {k: counts.get(k, 0) for k in range(first_slice, end_slice)}


def exact_quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class Sample:
    t_s: float
    rss_mb: float
    localizations: int
    loc_per_s: float
    p99_ms: float  # exact, from the messages of this interval
    hist_p99_ms: float  # from heimdall_processing_seconds buckets (what Prometheus would say)
    max_residual: float  # largest |accounting residual| right now (in-flight blocks: up to one step)
    queue_full: float
    max_age_s: float  # worst end-to-end age (window end -> published) of this interval's localizations
    #: heimdall_windows_total by outcome, cumulative (so a dip in the rate says whether windows were not
    #: heard by enough receivers, rejected by an estimator, or never formed because data was dropped)
    windows: dict = field(default_factory=dict)


@dataclass
class SoakResult:
    args: dict
    samples: list[Sample] = field(default_factory=list)
    checks: dict[str, tuple[bool, str]] = field(default_factory=dict)
    final_residuals: dict[str, float] = field(default_factory=dict)
    start_unix_ns: int = 0  # wall clock when sampling began: slices of signal time count from here
    #: localizations per slice of signal time (index = slice since start_unix_ns), filled by the judge
    slices: dict[int, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(ok for ok, _ in self.checks.values())

    def text(self) -> str:
        a = self.args
        lines = [
            f"heimdall soak: {a['receivers']} receivers x {a['rate']:g} S/s, {a['minutes']:g} min "
            f"(warm-up {a['warmup_minutes']:g} min), sample every {a['interval_s']:g} s",
            f"{'t_s':>7} {'rss_MB':>8} {'locs':>6} {'loc/s':>6} {'p99_ms':>7} {'hist_p99':>8} {'resid':>7} {'q_full':>7} {'age_s':>6}"
            "  not localized (this interval)",
        ]
        previous: dict = {}
        for s in self.samples:
            missed = {k: int(v - previous.get(k, 0)) for k, v in s.windows.items() if k != "localized" and v > previous.get(k, 0)}
            previous = s.windows
            lines.append(f"{s.t_s:7.0f} {s.rss_mb:8.1f} {s.localizations:6d} {s.loc_per_s:6.2f} {s.p99_ms:7.1f} "
                         f"{s.hist_p99_ms:8.1f} {s.max_residual:7.0f} {s.queue_full:7.0f} {s.max_age_s:6.2f}  {missed or ''}")  # fmt: skip
        for name, (ok, detail) in self.checks.items():
            lines.append(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")
        lines.append("soak: " + ("passed" if self.ok else "FAILED"))
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"args": self.args, "samples": [dataclasses.asdict(s) for s in self.samples],
                           "checks": {k: {"ok": ok, "detail": d} for k, (ok, d) in self.checks.items()},
                           "final_residuals": self.final_residuals, "slices": self.slices, "ok": self.ok}, indent=2)  # fmt: skip


# Running ---------------------------------------------------------------------------------------------
def run_soak(args: argparse.Namespace) -> SoakResult:
    from streamer.daemon.app import Daemon

    cfg = soak_config(args.receivers, args.rate, seed=args.seed)
    ids = [rx.id for rx in cfg.receivers]
    # The options only: the command line also leaves its dispatch functions (run, usage_error) in the namespace.
    result = SoakResult(args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                              if k != "rest" and not callable(v)})
    daemon = Daemon(cfg)
    registry = daemon.metrics.registry
    stop = threading.Event()
    runner = threading.Thread(target=daemon.run, args=(stop,), name="soak-daemon", daemon=True)
    runner.start()
    reader = None
    try:
        reader = OutputReader(daemon.publisher.endpoint, daemon.pipeline.topic)
        _sample_loop(args, registry, reader, ids, result)
        runners = daemon.runners.values() if isinstance(daemon.runners, dict) else daemon.runners
        for r in list(runners):  # stop sending first, then let the daemon drain
            r.stop(timeout_s=2.0)
        result.final_residuals = _drained_residuals(registry, ids)
        result.checks = _judge(args, cfg, result, reader)
    finally:
        stop.set()
        runner.join(10)
        if reader is not None:
            reader.close()
    return result


def _sample_loop(args, registry, reader: OutputReader, ids: Sequence[str], result: SoakResult) -> None:
    start = time.monotonic()
    result.start_unix_ns = time.time_ns()
    deadline = start + args.minutes * 60.0
    ticker = threading.Event()  # only ever waited on: the sampling period
    last_t, last_locs = start, reader.received
    last_buckets = _histogram_buckets(registry, "heimdall_processing_seconds")
    next_tick = start
    while time.monotonic() < deadline:
        # On a fixed schedule (start + k * interval), so the time each sample takes on a loaded machine does not
        # stretch the period and thin out the samples of a run; a tick already missed entirely is skipped.
        next_tick += args.interval_s
        while next_tick <= time.monotonic() and next_tick < deadline:
            next_tick += args.interval_s
        next_tick = min(next_tick, deadline)
        ticker.wait(max(0.0, next_tick - time.monotonic()))
        now = time.monotonic()
        locs = reader.received
        buckets = _histogram_buckets(registry, "heimdall_processing_seconds")
        delta = [(le, c - c0) for (le, c), (_, c0) in zip(buckets, last_buckets)] if last_buckets else buckets
        residuals = accounting_residuals(registry, ids)
        latencies, ages = reader.take_latencies()
        sample = Sample(
            t_s=now - start,
            rss_mb=rss_bytes() / 2**20,
            localizations=locs - last_locs,
            loc_per_s=(locs - last_locs) / max(now - last_t, 1e-9),
            p99_ms=exact_quantile(latencies, 0.99) * 1e3,
            hist_p99_ms=quantile_from_buckets(delta, 0.99) * 1e3 if delta else math.nan,
            max_residual=max(abs(v) for v in residuals.values()),
            queue_full=_sum_samples(registry, "heimdall_samples_dropped_total", reason="queue_full"),
            max_age_s=max(ages, default=math.nan),
            windows=_window_outcomes(registry),
        )
        result.samples.append(sample)
        not_localized = {k: int(v) for k, v in sample.windows.items() if k != "localized" and v}
        log.info("soak t=%.0f s rss=%.1f MB loc/s=%.2f p99=%.1f ms queue_full=%d not localized=%s", sample.t_s,
                 sample.rss_mb, sample.loc_per_s, sample.p99_ms, sample.queue_full, not_localized or 0)
        last_t, last_locs, last_buckets = now, locs, buckets


def _drained_residuals(registry, ids: Sequence[str]) -> dict[str, float]:
    """Poll until the accounting is identical in two reads in a row (queue drained), then return it."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    previous = None
    poll = threading.Event()
    while True:
        now = accounting_residuals(registry, ids)
        received = {rid: _sum_samples(registry, "heimdall_samples_received_total", receiver=rid) for rid in ids}
        state = (now, received)
        if state == previous and all(v == 0 for v in now.values()) or time.monotonic() > deadline:
            return now
        previous = state
        poll.wait(0.2)


def _judge(args, cfg: Config, result: SoakResult, reader: OutputReader) -> dict[str, tuple[bool, str]]:
    measured = [s for s in result.samples if s.t_s > args.warmup_minutes * 60.0]
    checks: dict[str, tuple[bool, str]] = {}
    if len(measured) < 4:
        checks["enough samples"] = (False, f"{len(measured)} samples after the warm-up; need 4 (run longer)")
        return checks
    base = statistics.median(s.rss_mb for s in measured[:3])
    end = statistics.median(s.rss_mb for s in measured[-3:])
    growth = end / base - 1.0
    checks["memory"] = (growth < RSS_GROWTH_LIMIT, f"RSS {base:.1f} -> {end:.1f} MB ({growth * 100:+.2f} %, limit +{RSS_GROWTH_LIMIT * 100:.0f} %)")
    bad = {rid: v for rid, v in result.final_residuals.items() if v != 0}
    checks["accounting"] = (not bad, "exact for every receiver after draining" if not bad else f"residuals {bad}")
    expected = 1.0 / cfg.features.window_s
    first_slice = math.ceil(args.warmup_minutes * 60.0 / args.interval_s)
    end_slice = math.floor((result.samples[-1].t_s - SLICE_MARGIN_S) / args.interval_s)  # their windows are all out
    result.slices = localizations_per_slice(reader.window_starts(), result.start_unix_ns, args.interval_s, first_slice, end_slice)
    if not result.slices:
        checks["localization rate"] = (False, "no whole slice of signal after the warm-up (run longer)")
    else:
        per_s = [n / args.interval_s for n in result.slices.values()]
        overall = sum(per_s) / len(per_s)
        low = min(per_s)
        low_arrival = min(s.loc_per_s for s in measured)
        worst_age = max((s.max_age_s for s in measured if not math.isnan(s.max_age_s)), default=math.nan)
        rate_ok = overall >= RATE_FLOOR_OVERALL * expected and low >= RATE_FLOOR_INTERVAL * expected and reader.seq_gaps == 0
        checks["localization rate"] = (rate_ok, f"{overall:.2f}/s overall, lowest {args.interval_s:g} s of signal {low:.2f}/s "
                                                f"(window rate {expected:.2f}/s), {reader.seq_gaps} seq gaps; by arrival: lowest "
                                                f"interval {low_arrival:.2f}/s, worst end-to-end age {worst_age:.2f} s")  # fmt: skip
    half = len(measured) // 2
    first = statistics.median(s.p99_ms for s in measured[:half])
    second = statistics.median(s.p99_ms for s in measured[half:])
    limit = P99_GROWTH_FACTOR * first + P99_SLACK_S * 1e3
    checks["latency p99"] = (second <= limit, f"median interval p99 {first:.1f} ms (first half) -> {second:.1f} ms (second half), "
                                              f"limit {limit:.1f} ms; worst interval {max(s.p99_ms for s in measured):.1f} ms")  # fmt: skip
    return checks


def main(args: Sequence[str] | argparse.Namespace | None = None) -> int:
    """Entry point of ``python -m streamer.tools.soak`` (argument list, or an already parsed namespace)."""
    return run(args if isinstance(args, argparse.Namespace) else parse_args(args))


def run(args: argparse.Namespace) -> int:
    """Run ``heimdall soak``: exit status 0 when every check passes, 1 otherwise."""
    args = checked(args)
    result = run_soak(args)
    text = result.text()
    print(text, flush=True)
    if args.report is not None:
        path = Path(args.report)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(result.to_json() if path.suffix == ".json" else text + "\n", encoding="utf-8")
    return 0 if result.ok else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
