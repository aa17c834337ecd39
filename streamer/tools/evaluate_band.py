"""``heimdall evaluate-band``: the band path's detection and accuracy on simulated band traffic, against its truth.

Runs a config's simulated receivers (default ``config/examples/band-2m.toml``) for ``--minutes`` of stream from a
fixed start (``--start-ns``) through the daemon's own ``streamer.daemon.band.BandPipeline``, offline: blocks are
rendered and handed over as fast as the CPU allows, every receiver's block of the same span together, on a clock
that follows the stream. What the pipeline publishes (loc and emission messages) is kept in memory, then scored
against the simulator's truth (``receivers.simulator.SimulatedWorld``):

- **Transmissions.** Each transmitter's keyed spans on its channel, bursts closer than the emission tracker's
  hangover joined into one (the tracker joins them too: a DMR transmission is one span). A span's SNR at a receiver
  is its received power at the span's middle (transmit power, path loss, shadowing, the receiver's hidden gain
  error) over the receiver's noise in the channel's bandwidth (dB); a receiver whose band misses the channel hears
  nothing.
- **Detection.** A span lasting at least ``DETECTION_MIN_S`` with SNR >= ``DETECTION_MIN_SNR_DB`` at
  ``DETECTION_MIN_RECEIVERS`` or more receivers, keyed after the first ``WARMUP_S`` of stream (the noise floors
  start from the first window) and ended before the stream did, is *found* when an emission on its channel
  overlaps it (``MATCH_SLACK_S`` either side: start and end are exact to about two frames).
- **Merged.** An emission that runs transmissions on its channel together: what it overlaps there, joined where the
  gaps are within the tracker's hangover and twice ``MATCH_SLACK_S``, is still more than one span. "Found" counts a
  transmission inside such an emission (one receiver's carrier holding a channel open would find them all); this
  counts the emissions.
- **False emissions.** An emission overlapping no keyed span on its channel (any transmitter, any length or SNR,
  second transmitters of a collision included), per channel-hour of stream. ``--noise-only`` runs the same world
  with no transmitter ever keyed (``key_up_mean_s`` 1 ns, ``key_down_mean_s`` ``NOISE_ONLY_KEY_DOWN_S``: no key-up
  in any span one can run), where every emission is false.
- **Accuracy.** Every interim and final localization is scored against its channel's transmitter at the middle of
  the message's span (``t_start_ns`` .. ``t_end_ns``: an interim estimate's window, a final one's emission), with
  ``streamer.tools.score_live``'s functions: error (m), and cov68 / cov95, the share of truths inside the published
  68 % / 95 % ellipses; rows per stage, estimator and window class (``score_live.WINDOW_CLASSES``). In a span where
  only a collision's second transmitter was on the channel, the truth is that one (class ``collision``). The gates
  pool the classes ``full`` and ``key-edge`` (a collision's truth does not say which transmitter the estimate found).
- **Final against interim.** Per emission and estimator: whether the final estimate's error is no larger than the
  smallest error of the emission's interim estimates (share of emissions that have both; the gate), and, printed
  beside it, no larger than the error of its most confident interim estimate (the smallest 95 % ellipse: the one
  the daemon itself would rate best, where the smallest error is picked by the truth).

It prints the gates beside the figures (met / not met) and the accuracy table; ``--json FILE`` writes the same
numbers. ``--archive FILE`` writes what the pipeline published as the daemon's archive does (JSON lines, one per
message), each localization preceded by its truth (a ``truth`` line at the middle of its span, with its ``channel``):
the input ``heimdall calibrate-ellipses`` fits a site's ellipse factors from (with ``--max-gap-s 0.001``, so each
localization takes its own truth line). ``--pool FILE...`` runs nothing: it pools the ``--json`` of several runs
(band traffic and noise-only apart) and prints their gates; a share is pooled weighted by its count, which is
exact, and medians, which cannot be pooled so, are left out. CPU is reported apart for rendering the receivers' IQ (the simulator's work, not the daemon's) and for
the pipeline.

Examples
--------
>>> merge_bursts([(0, 10), (15, 30), (200, 210)], max_gap_ns=10)
[(0, 30), (200, 210)]
>>> verdict(0.995, at_least=0.99), verdict(1.5, below=1.0), verdict(0.95, within=(0.93, 0.97))
('met', 'not met', 'met')
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamer.config import Config, load
from streamer.core.errors import HeimdallError
from streamer.tools import describe_with_module_doc
from streamer.tools.score_live import Scored, format_table, score_window, summarize

#: The configuration run when ``--config`` is not given (relative to the repository root).
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "examples" / "band-2m.toml"
#: Default first sample (Unix ns): a whole number of 0.5 s windows, as the band-watch measurements use.
DEFAULT_START_NS = 1_790_000_000_000_000_000
#: The detection gate's transmissions: at least this long (s), this SNR (dB) at this many receivers.
DETECTION_MIN_S = 0.5
DETECTION_MIN_SNR_DB = 10.0
DETECTION_MIN_RECEIVERS = 3
#: Share of those transmissions to find.
DETECTION_TARGET = 0.99
#: False emissions per channel-hour on noise alone: fewer than this.
FALSE_PER_CHANNEL_HOUR_MAX = 1.0
#: Honest ellipses: pooled cov95 within this range, for interim and final estimates alike.
COV95_RANGE = (0.93, 0.97)
#: Transmissions keyed in the stream's first seconds are not scored for detection (the floors start there).
WARMUP_S = 1.0
#: Slack (s) either side of a transmission when matching emissions to it: two frames of 10.7 ms and a little.
MATCH_SLACK_S = 0.025
#: Window classes pooled for the coverage gates (``score_live.WINDOW_CLASSES``).
GATED_CLASSES = ("full", "key-edge")
#: The gated rows split by traffic next door: nothing keyed on an adjacent channel during the span, or something.
ADJACENT_LABELS = ("adj-idle", "adj-keyed")
#: ``--noise-only``: the mean pause between transmissions (s), so long that no transmitter keys in any run.
NOISE_ONLY_KEY_DOWN_S = 1e15


class EvaluateBandError(HeimdallError):
    """A config this command cannot run: the message names the key or receiver and what was expected."""


# ----------------------------------------------------------------------------------------------------
# Configuration


def offline_config(config: Config, *, start_ns: int, seconds: float, seed: int | None = None,
                   noise_only: bool = False) -> Config:
    """``config`` with every receiver rendering ``seconds`` of stream from ``start_ns`` (Unix ns), not paced;
    ``seed`` (if given) as ``simulator.seed``; with ``noise_only``, no transmitter ever keys."""
    not_simulated = [f"receivers[{i}] (id {rx.id!r}, kind {rx.kind!r})" for i, rx in enumerate(config.receivers)
                     if rx.kind != "simulator"]
    if not_simulated:
        raise EvaluateBandError(f"evaluate-band scores against the simulator's truth; expected every receiver of kind "
                                f"'simulator', got {', '.join(not_simulated)}")
    if not config.has_channel_plan():
        raise EvaluateBandError("evaluate-band runs the band pipeline; expected a channel plan ([band] or "
                                "[[channels]]), the config has none")
    receivers = tuple(dataclasses.replace(rx, options=dataclasses.replace(
        rx.options, realtime=False, start_ns=int(start_ns), duration_s=float(seconds))) for rx in config.receivers)
    simulator = config.simulator
    if seed is not None:
        simulator = dataclasses.replace(simulator, seed=int(seed))
    if noise_only:
        simulator = dataclasses.replace(simulator, key_up_mean_s=1e-9, key_down_mean_s=NOISE_ONLY_KEY_DOWN_S)
    return dataclasses.replace(config, receivers=receivers, simulator=simulator)


# ----------------------------------------------------------------------------------------------------
# Running the band pipeline


@dataclass
class BandRun:
    """What one offline run published (``(topic, payload)`` in order) and what it cost (CPU s)."""

    sent: list[tuple[str, dict]]
    render_cpu_s: float
    pipeline_cpu_s: float
    hangover_ns: int
    blocks_refused: int

    def emission_ends(self) -> list[dict]:
        return [m for topic, m in self.sent if topic.startswith("emission") and m.get("event") == "end"]

    def localizations(self) -> list[dict]:
        return [m for topic, m in self.sent if topic.startswith("loc")]


def run_band(config: Config, *, progress: Callable[[float], None] | None = None) -> BandRun:
    """Every receiver of ``config`` (an ``offline_config``) through a ``BandPipeline`` until their streams end, then
    the emissions still on the air ended (``finish``). ``progress(seconds of stream done)`` is called each minute."""
    from prometheus_client import CollectorRegistry

    from receivers.base import ReceiverContext, TallyDropCounter
    from receivers.simulator import SimulatedReceiver
    from streamer.daemon.band import BandPipeline
    from streamer.daemon.metrics import Metrics
    from streamer.daemon.pipeline import limit_blas_threads
    from streamer.estimators.build import build_estimators

    limit_blas_threads()
    sent: list[tuple[str, dict]] = []
    start_ns = min(rx.options.start_ns for rx in config.receivers)
    clock = {"ns": start_ns}
    band = BandPipeline(config, metrics=Metrics(registry=CollectorRegistry()),
                        send=lambda topic, msg: sent.append((topic, msg)) or True,
                        estimators=build_estimators(config), clock_ns=lambda: clock["ns"])
    ctx = ReceiverContext(config, TallyDropCounter())
    render_s = pipeline_s = 0.0
    refused = 0
    next_report_ns = start_ns + 60 * 10**9
    try:
        streams = [iter(SimulatedReceiver.from_config(rx, ctx)) for rx in config.receivers]
        while True:
            t = time.process_time()
            batch = [block for block in (next(s, None) for s in streams) if block is not None]
            render_s += time.process_time() - t
            if not batch:
                break
            t = time.process_time()
            clock["ns"] = max(b.t0_ns + b.duration_ns for b in batch)
            refused += len(band.push_many(batch, arrival_ns=clock["ns"]))
            band.poll()
            pipeline_s += time.process_time() - t
            if progress is not None and clock["ns"] >= next_report_ns:
                progress((clock["ns"] - start_ns) / 1e9)
                next_report_ns += 60 * 10**9
        t = time.process_time()
        clock["ns"] += int((config.pipeline.late_tolerance_s + 2 * config.features.window_s) * 1e9)
        band.poll()  # the late tolerance has passed: the last windows go out
        band.finish()
        pipeline_s += time.process_time() - t
    finally:
        band.close()
    return BandRun(sent, render_s, pipeline_s, band.tracker.hangover_ns, refused)


# ----------------------------------------------------------------------------------------------------
# Truth


def merge_bursts(spans: Iterable[tuple[int, int]], max_gap_ns: int) -> list[tuple[int, int]]:
    """Sorted ``(start, end)`` spans (ns) with those less than ``max_gap_ns`` apart joined into one."""
    out: list[tuple[int, int]] = []
    for a, b in sorted((int(a), int(b)) for a, b in spans):
        if out and a - out[-1][1] < max_gap_ns:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


@dataclass(frozen=True)
class KeyedSpan:
    """One transmission as the tracker should see it: transmitter ``transmitter`` keyed on ``channel`` over
    ``[start_ns, end_ns)`` (Unix ns), its SNR at each receiver (dB; -inf where the receiver misses the channel)."""

    transmitter: int
    channel: str
    start_ns: int
    end_ns: int
    snr_db: tuple[float, ...]

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9

    def heard_by(self, min_snr_db: float) -> int:
        return sum(s >= min_snr_db for s in self.snr_db)


def keyed_spans(world, config: Config, start_ns: int, end_ns: int, hangover_ns: int) -> list[KeyedSpan]:
    """Every transmitter's keyed spans overlapping ``[start_ns, end_ns)`` (bursts joined as the tracker joins them),
    each with its SNR at every receiver (module doc)."""
    from streamer.daemon.coverage import channel_coverage

    plan = {ch.name: ch for ch in config.channel_plan()}
    covered = {cov.channel.name: set(cov.covered_by) for cov in channel_coverage(config)}
    out = []
    for k, channel in enumerate(world.transmitter_channels):
        transmissions = world.transmissions(start_ns, end_ns, k)
        bandwidth_hz = plan[channel.name].bandwidth_hz if channel.name in plan else config.network.channel_bandwidth_hz
        for a, b in merge_bursts(((tx.start_ns, tx.end_ns) for tx in transmissions), hangover_ns):
            mid = (a + b) // 2
            power_dbm = max(tx.power_dbm for tx in transmissions if tx.end_ns > a and tx.start_ns < b)
            antenna_dbm = world.received_power_dbm(world.position_en_m(mid, k), power_dbm)
            # The hidden gain error scales the signal, not the receiver's own noise (receivers.simulator).
            in_samples_dbm = antenna_dbm - world.calibration_error_db_at(mid)
            snr = tuple(float(p - world.noise_dbm(r, bandwidth_hz)) if rid in covered.get(channel.name, ()) else -math.inf
                        for r, (rid, p) in enumerate(zip(world.receiver_ids, in_samples_dbm)))
            out.append(KeyedSpan(k, channel.name, a, b, snr))
    return out


def busy_spans(world, start_ns: int, end_ns: int) -> dict[str, list[tuple[int, int]]]:
    """Per channel, every span in which anything keyed on it: the transmitters' and their collisions' (Unix ns)."""
    out: dict[str, list[tuple[int, int]]] = {}
    for k, channel in enumerate(world.transmitter_channels):
        txs = world.transmissions(start_ns, end_ns, k) + world.second_transmitters(start_ns, end_ns, k)
        out.setdefault(channel.name, []).extend((tx.start_ns, tx.end_ns) for tx in txs)
    return out


def _overlaps(a: int, b: int, spans: Iterable[tuple[int, int]], slack_ns: int) -> bool:
    return any(a <= e + slack_ns and s - slack_ns <= b for s, e in spans)


# ----------------------------------------------------------------------------------------------------
# Scoring


def score_detection(spans: list[KeyedSpan], busy: dict[str, list[tuple[int, int]]], ends: list[dict], *,
                    start_ns: int, end_ns: int, n_channels: int, hangover_ns: int = 0) -> dict:
    """Detection and false emissions (module doc) from the truth and the emission end events; and the emissions
    that ran two or more transmissions together (``merged``: what it overlaps on its channel, joined where the gaps
    are within ``hangover_ns`` and twice the slack, is still more than one span), which "found" alone cannot see. The
    slack counts twice because a frame's window smears both edges of a gap: packet bursts 0.13 s apart are one
    emission to a tracker with a 0.1 s hangover."""
    slack = int(MATCH_SLACK_S * 1e9)
    by_channel: dict[str, list[tuple[int, int]]] = {}
    for e in ends:
        by_channel.setdefault(e["channel"], []).append((int(e["start_ns"]), int(e["end_ns"])))
    eligible = [s for s in spans if s.duration_s >= DETECTION_MIN_S and s.start_ns >= start_ns + WARMUP_S * 1e9
                and s.end_ns <= end_ns and s.heard_by(DETECTION_MIN_SNR_DB) >= DETECTION_MIN_RECEIVERS]
    missed = [s for s in eligible if not _overlaps(s.start_ns, s.end_ns, by_channel.get(s.channel, ()), slack)]
    false = [e for e in ends if not _overlaps(int(e["start_ns"]), int(e["end_ns"]), busy.get(e["channel"], ()), slack)]
    merged = [e for e in ends if len(merge_bursts(
        sorted((a, b) for a, b in busy.get(e["channel"], ()) if a <= int(e["end_ns"]) + slack and int(e["start_ns"]) - slack <= b),
        max_gap_ns=hangover_ns + 2 * slack)) > 1]
    channel_hours = n_channels * (end_ns - start_ns) / 3.6e12
    return {
        "transmissions": len(spans),
        "eligible": len(eligible),
        "found": len(eligible) - len(missed),
        "found_share": (len(eligible) - len(missed)) / len(eligible) if eligible else math.nan,
        "missed": [{"transmitter": s.transmitter, "channel": s.channel, "start_ns": s.start_ns,
                    "duration_s": round(s.duration_s, 3), "snr_db": [round(x, 1) for x in s.snr_db]} for s in missed],
        "emissions": len(ends),
        "false_emissions": len(false),
        "channel_hours": channel_hours,
        "false_per_channel_hour": len(false) / channel_hours,
        "false": [{"channel": e["channel"], "start_ns": int(e["start_ns"]), "end_ns": int(e["end_ns"])} for e in false],
        "merged_emissions": len(merged),
        "merged": [{"channel": e["channel"], "start_ns": int(e["start_ns"]), "end_ns": int(e["end_ns"])} for e in merged],
    }


def _truth_wire(world, loc: dict) -> dict:
    """The truth of ``loc``'s channel over its span, as a ``truth`` message's dict: the transmitter on that channel
    keyed longest in the span; while none of them was, the second transmitter of a collision keyed longest in it
    (at its fixed position, ``collision`` true); ``keyed_fraction`` 0 when nothing was on the channel."""
    from streamer.core.geodesy import enu_to_geodetic

    start, end = int(loc["t_start_ns"]), int(loc["t_end_ns"]) + 1
    on_channel = [k for k, ch in enumerate(world.transmitter_channels) if ch.name == loc.get("channel")]
    candidates = [world.truth_over(start, end, k) for k in on_channel]
    best = max(candidates, key=lambda t: t.keyed_fraction, default=None)
    if best is not None and best.keyed_fraction > 0:
        return {"lat": best.lat, "lon": best.lon, "keyed_fraction": best.keyed_fraction,
                "collision": best.collision or sum(t.keyed_fraction > 0 for t in candidates) > 1}
    seconds = [tx for k in on_channel for tx in world.second_transmitters(start, end, k)]
    if not seconds:
        return {"lat": math.nan, "lon": math.nan, "keyed_fraction": 0.0, "collision": False}
    other = max(seconds, key=lambda tx: min(tx.end_ns, end) - max(tx.start_ns, start))
    lat, lon, _ = enu_to_geodetic(*other.position_en_m, 0.0, world.origin)
    return {"lat": float(lat), "lon": float(lon), "keyed_fraction": (min(other.end_ns, end) - max(other.start_ns, start))
            / (end - start), "collision": True}


def adjacent_channels(plan) -> dict[str, tuple[str, ...]]:
    """Each channel's neighbours in a plan (``ChannelConfig``s): the channels with the nearest centre below and above it.

    >>> from streamer.config import ChannelConfig
    >>> adjacent_channels([ChannelConfig("b", 2e6, 1e4), ChannelConfig("a", 1e6, 1e4), ChannelConfig("c", 3e6, 1e4)])
    {'a': ('b',), 'b': ('a', 'c'), 'c': ('b',)}
    """
    order = sorted(plan, key=lambda ch: ch.centre_hz)
    return {ch.name: tuple(order[j].name for j in (i - 1, i + 1) if 0 <= j < len(order)) for i, ch in enumerate(order)}


def _summary_by_label(rows_by_label: dict[str, list[Scored]]) -> dict[str, dict[str, dict[str, float]]]:
    """estimator -> label -> ``summarize``'s figures, each label's rows pooled into one class."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for label, rows in rows_by_label.items():
        for estimator, classes in summarize(dataclasses.replace(r, window="full") for r in rows).items():
            out.setdefault(estimator, {})[label] = classes["full"]
    return out


def score_accuracy(world, locs: list[dict], adjacent: dict[str, tuple[str, ...]] | None = None,
                   busy: dict[str, list[tuple[int, int]]] | None = None) -> dict:
    """Errors and coverage of interim and final estimates (module doc); and each final against its best interim.

    With ``adjacent`` (``adjacent_channels``) and ``busy`` (``busy_spans``) the gated rows are also split by whether
    anything was keyed on an adjacent channel during the message's span (``by_adjacent``)."""
    scored: dict[str, list[Scored]] = {"interim": [], "final": []}
    by_adjacent: dict[str, dict[str, list[Scored]]] = {stage: {label: [] for label in ADJACENT_LABELS} for stage in scored}
    unkeyed = {"interim": 0, "final": 0}
    errors: dict[tuple[int, str], dict[str, list[float]]] = {}
    for loc in locs:
        stage = loc.get("stage")
        if stage not in scored:
            continue
        truth = _truth_wire(world, loc)
        if not truth["keyed_fraction"]:  # nothing on the channel to score against: a false emission's estimate
            unkeyed[stage] += 1
            continue
        rows = score_window(loc, truth)
        scored[stage].extend(rows)
        if rows[0].window in GATED_CLASSES and adjacent is not None and busy is not None:
            start, end = int(loc["t_start_ns"]), int(loc["t_end_ns"])
            keyed = any(_overlaps(start, end, busy.get(name, ()), 0) for name in adjacent.get(loc.get("channel"), ()))
            by_adjacent[stage][ADJACENT_LABELS[keyed]].extend(rows)
        if rows[0].window in GATED_CLASSES:
            for row, est in zip(rows, [loc, *loc.get("alternatives", [])]):
                errors.setdefault((int(loc["emission_id"]), row.estimator), {"interim": [], "final": []})[stage].append(
                    (row.error_m, ellipse_area_m2(est, row.radius_sq[1])))
    return {
        "by_class": {stage: summarize(rows) for stage, rows in scored.items()},
        "pooled": {stage: summarize(dataclasses.replace(r, window="full") for r in rows if r.window in GATED_CLASSES)
                   for stage, rows in scored.items()},
        "final_vs_best_interim": _final_vs_best(errors),
        "unkeyed": unkeyed,
        "by_adjacent": {stage: _summary_by_label(groups) for stage, groups in by_adjacent.items()},
    }


def ellipse_area_m2(estimate: dict, radius_sq_95: float) -> float:
    """Area (m^2) of the 95 % ellipse ``estimate`` publishes, pi * semi-major * semi-minor of its ``cov_en_m2`` at
    the scale ``sqrt(radius_sq_95)``, or the Gaussian's where it publishes none (``radius_sq_95`` NaN)."""
    from streamer.core.geodesy import ellipse_from_covariance

    scale = math.sqrt(radius_sq_95) if math.isfinite(radius_sq_95) else None
    ellipse = ellipse_from_covariance(np.asarray(estimate["cov_en_m2"], dtype=np.float64).reshape(2, 2), 0.95, scale)
    return math.pi * ellipse.semi_major_m * ellipse.semi_minor_m


def _final_vs_best(errors: dict[tuple[int, str], dict[str, list[tuple[float, float]]]]) -> dict[str, dict[str, float]]:
    """Per estimator, over the emissions with a final and interim estimates (each an (error m, 95 % ellipse area m^2)
    pair): the share whose final error is no larger than their smallest interim error (an oracle: chosen by the
    truth), the share no larger than the error of their most confident interim (the smallest 95 % ellipse: what the
    daemon itself rates best), and the medians of the final, smallest and most confident interim errors (m)."""
    per: dict[str, list[tuple[float, float, float]]] = {}
    for (_emission, estimator), stages in sorted(errors.items()):
        if stages["final"] and stages["interim"]:
            confident = min(stages["interim"], key=lambda pair: pair[1])[0]
            per.setdefault(estimator, []).append((stages["final"][0][0], min(e for e, _ in stages["interim"]), confident))
    return {estimator: {"n": len(rows), "share_no_worse": float(np.mean([f <= b for f, b, _ in rows])),
                        "share_no_worse_than_confident": float(np.mean([f <= c for f, _, c in rows])),
                        "median_final_m": float(np.median([f for f, _, _ in rows])),
                        "median_best_interim_m": float(np.median([b for _, b, _ in rows])),
                        "median_confident_interim_m": float(np.median([c for _, _, c in rows]))}
            for estimator, rows in per.items()}


def verdict(value: float, *, at_least: float | None = None, below: float | None = None,
            within: tuple[float, float] | None = None) -> str:
    """``met`` / ``not met`` for one gate (``n/a`` when the figure is NaN: nothing to measure)."""
    if value is None or not math.isfinite(value):
        return "n/a"
    ok = ((at_least is None or value >= at_least) and (below is None or value < below)
          and (within is None or within[0] <= value <= within[1]))
    return "met" if ok else "not met"


def gates(result: dict) -> list[dict]:
    """The band-watch gates (detection, false emissions, coverage, final against interim) beside this run's
    figures: name, figure, target, verdict."""
    det, noise_only = result["detection"], result["noise_only"]
    rows = []
    if not noise_only:
        rows.append({"gate": f"found: transmissions >= {DETECTION_MIN_S:g} s at >= {DETECTION_MIN_SNR_DB:g} dB at "
                             f">= {DETECTION_MIN_RECEIVERS} receivers (n={det['eligible']})",
                     "figure": det["found_share"], "target": f">= {DETECTION_TARGET:g}",
                     "verdict": verdict(det["found_share"], at_least=DETECTION_TARGET)})
    rows.append({"gate": "false emissions per channel-hour" + (" (noise alone)" if noise_only else " (with traffic)"),
                 "figure": det["false_per_channel_hour"], "target": f"< {FALSE_PER_CHANNEL_HOUR_MAX:g} on noise alone",
                 "verdict": verdict(det["false_per_channel_hour"], below=FALSE_PER_CHANNEL_HOUR_MAX)
                 if noise_only else "see --noise-only"})
    for stage, per_estimator in result["accuracy"]["pooled"].items():
        for estimator, classes in per_estimator.items():
            s = classes["full"]
            rows.append({"gate": f"cov95, {stage} {estimator} (n={s['n']})", "figure": s["cov95"],
                         "target": f"{COV95_RANGE[0]:g}..{COV95_RANGE[1]:g}",
                         "verdict": verdict(s["cov95"], within=COV95_RANGE)})
    for estimator, s in result["accuracy"]["final_vs_best_interim"].items():
        rows.append({"gate": f"final no worse than the best interim, {estimator} (n={s['n']} emissions)",
                     "figure": s["share_no_worse"], "target": "1 (every emission)",
                     "verdict": verdict(s["share_no_worse"], at_least=1.0)})
    return rows


def _weighted(rows: list[dict], key: str) -> float:
    n = sum(r["n"] for r in rows)
    return sum(r[key] * r["n"] for r in rows) / n if n else math.nan


def pool(results: list[dict]) -> dict:
    """Several runs' results (``evaluate``'s dicts, all band traffic or all noise-only) as one: counts summed,
    shares weighted by their counts; what ``gates`` reads, and the runs' seeds and stream."""
    noise_only = {r["noise_only"] for r in results}
    if len(noise_only) != 1:
        raise EvaluateBandError("pool: band-traffic and noise-only runs are pooled apart")
    det = [r["detection"] for r in results]
    eligible, found = sum(d["eligible"] for d in det), sum(d["found"] for d in det)
    hours, false = sum(d["channel_hours"] for d in det), sum(d["false_emissions"] for d in det)
    pooled: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for stage in ("interim", "final"):
        estimators = sorted({e for r in results for e in r["accuracy"]["pooled"].get(stage, {})})
        for est in estimators:
            rows = [r["accuracy"]["pooled"][stage][est]["full"] for r in results if est in r["accuracy"]["pooled"].get(stage, {})]
            if not sum(x["n"] for x in rows):
                continue
            pooled.setdefault(stage, {})[est] = {"full": {"n": sum(x["n"] for x in rows), "cov68": _weighted(rows, "cov68"),
                                                          "cov95": _weighted(rows, "cov95")}}
    versus = {}
    for est in sorted({e for r in results for e in r["accuracy"]["final_vs_best_interim"]}):
        rows = [r["accuracy"]["final_vs_best_interim"][est] for r in results if est in r["accuracy"]["final_vs_best_interim"]]
        if not sum(x["n"] for x in rows):
            continue
        versus[est] = {"n": sum(x["n"] for x in rows), "share_no_worse": _weighted(rows, "share_no_worse"),
                       "share_no_worse_than_confident": _weighted(rows, "share_no_worse_than_confident")}
    out = {
        "runs": len(results), "seeds": [r["seed"] for r in results], "stream_s": sum(r["stream_s"] for r in results),
        "noise_only": noise_only.pop(),
        "detection": {"eligible": eligible, "found": found, "found_share": found / eligible if eligible else math.nan,
                      "false_emissions": false, "channel_hours": hours,
                      "false_per_channel_hour": false / hours if hours else math.nan,
                      "merged_emissions": sum(d.get("merged_emissions", 0) for d in det)},
        "accuracy": {"pooled": pooled, "final_vs_best_interim": versus},
    }
    out["gates"] = gates(out)
    return out


def format_pooled(pooled: dict) -> str:
    """A pooled result (``pool``): what was pooled, the gates, cov68 beside cov95."""
    det = pooled["detection"]
    lines = [(f"{'noise only' if pooled['noise_only'] else 'band traffic'}: {pooled['runs']} runs, "
              f"{pooled['stream_s'] / 60:g} min of stream, seeds {', '.join(map(str, pooled['seeds']))}; found "
              f"{det['found']} of {det['eligible']}; false emissions {det['false_emissions']} in "
              f"{det['channel_hours']:.2f} channel-hours; running transmissions together {det['merged_emissions']}")]
    width = max(len(g["gate"]) for g in pooled["gates"])
    lines.append(f"{'gate':<{width}}  {'figure':>8}  {'target':<22} verdict")
    for g in pooled["gates"]:
        figure = "n/a" if not math.isfinite(g["figure"]) else f"{g['figure']:.3f}"
        lines.append(f"{g['gate']:<{width}}  {figure:>8}  {g['target']:<22} {g['verdict']}")
    for stage, per_estimator in pooled["accuracy"]["pooled"].items():
        for est, classes in per_estimator.items():
            s = classes["full"]
            lines.append(f"{stage} {est}: n {s['n']}, cov68 {s['cov68']:.3f}, cov95 {s['cov95']:.3f}")
    for est, s in pooled["accuracy"]["final_vs_best_interim"].items():
        lines.append(f"final no worse than the most confident interim, {est}: {s['share_no_worse_than_confident']:.3f} "
                     f"of {s['n']}")
    return "\n".join(lines)


def archive_lines(world, sent: list[tuple[str, dict]]) -> Iterable[bytes]:
    """What the pipeline sent, as archive lines (``streamer.daemon.archive.encode_line``), each localization after
    a ``truth`` line for its channel at the middle of its span (``_truth_wire``; none where nothing was keyed on the
    channel: a false emission's estimate has no truth)."""
    from streamer.daemon.archive import encode_line

    for topic, msg in sent:
        if topic.startswith("loc"):
            truth = _truth_wire(world, msg)
            if truth["keyed_fraction"]:
                start, end = int(msg["t_start_ns"]), int(msg["t_end_ns"])
                yield encode_line("truth", {"t_ns": (start + end) // 2, "lat": truth["lat"], "lon": truth["lon"],
                                            "keyed": True, "keyed_fraction": truth["keyed_fraction"],
                                            "collision": truth["collision"], "window_start_ns": start,
                                            "window_end_ns": end, "channel": msg.get("channel")})
        yield encode_line(topic, msg)


def evaluate(config: Config, *, start_ns: int = DEFAULT_START_NS, seconds: float, seed: int | None = None,
             noise_only: bool = False, progress: Callable[[float], None] | None = None,
             archive: Path | None = None) -> dict:
    """Run ``seconds`` of ``config``'s simulated band through the band pipeline and score it (module doc): a dict of
    plain numbers (what ``--json`` writes). ``archive``: also write ``archive_lines`` to this file."""
    from receivers.simulator import SimulatedWorld

    from streamer.daemon.coverage import channel_coverage, coverage_verdict

    cfg = offline_config(config, start_ns=start_ns, seconds=seconds, seed=seed, noise_only=noise_only)
    coverage_verdict(cfg, channel_coverage(cfg))  # the plan's check `heimdall check` and `heimdall run` make: raises
    run = run_band(cfg, progress=progress)
    world = SimulatedWorld(cfg)
    end_ns = start_ns + round(seconds * 1e9)
    spans = keyed_spans(world, cfg, start_ns, end_ns, run.hangover_ns)
    locs = run.localizations()
    if archive is not None:
        with open(archive, "wb") as out:
            out.writelines(archive_lines(world, run.sent))
    result = {
        "stream_s": seconds, "start_ns": start_ns, "seed": cfg.simulator.seed, "noise_only": noise_only,
        "receivers": len(cfg.receivers), "channels": len(cfg.channel_plan()),
        "transmitters": len(world.transmitter_channels),
        "cpu_s_per_stream_s": {"render": run.render_cpu_s / seconds, "pipeline": run.pipeline_cpu_s / seconds},
        "blocks_refused": run.blocks_refused,
        "localizations": {stage: sum(m.get("stage") == stage for m in locs) for stage in ("interim", "final")},
        "detection": score_detection(spans, busy_spans(world, start_ns, end_ns), run.emission_ends(),
                                     start_ns=start_ns, end_ns=end_ns, n_channels=len(cfg.channel_plan()),
                                     hangover_ns=run.hangover_ns),
        "accuracy": score_accuracy(world, locs, adjacent_channels(cfg.channel_plan()), busy_spans(world, start_ns, end_ns)),
    }
    result["gates"] = gates(result)
    return result


# ----------------------------------------------------------------------------------------------------
# Report


def format_report(result: dict) -> str:
    """The gates table, then the accuracy table per stage (``score_live.format_table``)."""
    det = result["detection"]
    cpu = result["cpu_s_per_stream_s"]
    unkeyed = result["accuracy"]["unkeyed"]
    lines = [
        (f"{result['stream_s']:g} s of stream ({result['stream_s'] / 60:.1f} min) from {result['start_ns']} ns, seed "
         f"{result['seed']}, {'noise only' if result['noise_only'] else 'band traffic'}: {result['receivers']} receivers x "
         f"{result['channels']} channels, {result['transmitters']} transmitters"),
        (f"CPU s per s of stream: pipeline {cpu['pipeline']:.3f}, rendering the receivers' IQ {cpu['render']:.3f}; "
         f"blocks refused {result['blocks_refused']}"),
        (f"truth: {det['transmissions']} keyed spans; emissions ended: {det['emissions']}, false: "
         f"{det['false_emissions']} in {det['channel_hours']:.3f} channel-hours, running transmissions together: "
         f"{det.get('merged_emissions', 0)}"),
        (f"loc: interim {result['localizations']['interim']}, final {result['localizations']['final']}; on a channel "
         f"nothing keyed on (not scored): interim {unkeyed['interim']}, final {unkeyed['final']}"),
        "",
    ]
    width = max(len(g["gate"]) for g in result["gates"])
    lines.append(f"{'gate':<{width}}  {'figure':>8}  {'target':<22} verdict")
    for g in result["gates"]:
        figure = "n/a" if not math.isfinite(g["figure"]) else f"{g['figure']:.3f}"
        lines.append(f"{g['gate']:<{width}}  {figure:>8}  {g['target']:<22} {g['verdict']}")
    for s in result["detection"]["missed"][:10]:
        lines.append(f"missed: transmitter {s['transmitter']} on {s['channel']} at {s['start_ns']} ns, "
                     f"{s['duration_s']:.2f} s, SNR {s['snr_db']} dB")
    for estimator, s in result["accuracy"]["final_vs_best_interim"].items():
        lines.append(f"{estimator}: median error, final {s['median_final_m']:.0f} m, best interim of the same emission "
                     f"{s['median_best_interim_m']:.0f} m, most confident interim {s['median_confident_interim_m']:.0f} m; "
                     f"final no worse than the most confident interim in {s['share_no_worse_than_confident']:.3f} of "
                     f"{s['n']} emissions")
    for stage, summary in result["accuracy"]["by_class"].items():
        if summary:
            lines += ["", f"{stage} estimates:", format_table(summary)]
    for stage, summary in result["accuracy"].get("by_adjacent", {}).items():
        if summary:
            lines += ["", f"{stage} estimates, full and key-edge, by traffic on an adjacent channel:", format_table(summary)]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``heimdall evaluate-band``."""
    describe_with_module_doc(parser, __doc__)
    parser.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG,
                        help="band config with simulated receivers (default: config/examples/band-2m.toml)")
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of stream to run (default 10)")
    parser.add_argument("--seed", type=int, help="simulator.seed (default: the config's)")
    parser.add_argument("--start-ns", type=int, default=DEFAULT_START_NS, help="Unix time of the first sample (ns)")
    parser.add_argument("--noise-only", action="store_true", help="no transmitter keys: every emission is false")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every figure as JSON to FILE")
    parser.add_argument("--pool", type=Path, nargs="+", metavar="JSON",
                        help="run nothing: pool the --json files of several runs and print their gates")
    parser.add_argument("--archive", type=Path, metavar="FILE",
                        help="also write every published message, each localization after its truth, as JSON lines "
                             "(the input of heimdall calibrate-ellipses)")


def _run_pool(paths: list[Path]) -> int:
    results = []
    for path in paths:
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise EvaluateBandError(f"--pool: {path}: not a heimdall evaluate-band --json file ({exc})") from None
        if not isinstance(result, dict) or not {"detection", "accuracy", "noise_only", "seed"} <= set(result):
            raise EvaluateBandError(f"--pool: {path}: not a heimdall evaluate-band --json file (expected its keys "
                                    "detection, accuracy, noise_only, seed)")
        try:
            pool([result])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EvaluateBandError(f"--pool: {path}: not a heimdall evaluate-band --json file (bad or missing "
                                    f"{exc})") from None
        results.append(result)
    groups = [[r for r in results if not r["noise_only"]], [r for r in results if r["noise_only"]]]
    print("\n\n".join(format_pooled(pool(group)) for group in groups if group))
    return 0


def run(args: argparse.Namespace) -> int:
    """Run, score, print the report (and write ``--json``); exit status 0 whether or not the gates are met."""
    if args.pool:
        return _run_pool(args.pool)
    if not (math.isfinite(args.minutes) and args.minutes > 0):
        raise argparse.ArgumentError(None, f"--minutes: expected minutes > 0, got {args.minutes:g}")
    if not args.config.is_file():
        raise EvaluateBandError(f"--config: {args.config}: no such file")
    for option, path in (("--json", args.json), ("--archive", args.archive)):
        if path is not None and not path.parent.is_dir():
            raise EvaluateBandError(f"{option}: {path}: no such folder {path.parent}")
        try:  # before minutes of work, not after
            if path is not None:
                path.open("ab").close()
        except OSError as exc:
            raise EvaluateBandError(f"{option}: {path}: cannot write ({exc.strerror})") from None
    result = evaluate(load(args.config), start_ns=args.start_ns, seconds=args.minutes * 60.0, seed=args.seed,
                      noise_only=args.noise_only, archive=args.archive,
                      progress=lambda s: print(f"heimdall evaluate-band: {s / 60:.0f} min of stream done", file=sys.stderr))
    print(format_report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0
