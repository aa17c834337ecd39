"""``heimdall score-live``: measure a running simulated network: every localization against the truth of its window.

Subscribes to a daemon's output (topics ``loc`` and ``truth``, docs/protocol.md) for ``--duration`` seconds and
matches each localization to the ``truth`` message of the same window (``t_start_ns`` = ``window_start_ns``). The
daemon publishes that truth only when its receivers are simulated and ``output.publish_truth`` is true.

It prints a table with a row per estimator (the message's primary and each of its ``alternatives``) and
window class, the class from the truth:

- ``full``: the transmitter was on the air for the whole window (``keyed_fraction`` >= 0.999);
- ``key-edge``: for part of it (a key-up or key-down inside the window, or bursty traffic);
- ``unkeyed``: not at all (the daemon heard something else, or noise);
- ``collision``: a second transmitter was on the channel (``collision``): the wanted transmitter's truth does
  not say which one the estimate found, so these windows are counted apart.

Each row: ``n``, the median and 90th-percentile error (m: the estimate's distance to the truth on the tangent
plane at the estimate, ``streamer.core.geodesy.geodetic_to_enu_m``) and cov68 / cov95: the share of truths inside
the message's 68 % / 95 % ellipse, each ellipse as the message publishes it (its ``scale`` standard deviations of
``cov_en_m2``; ``streamer.tools.calibrate_ellipses.coverage``). ``--json FILE`` writes the same numbers.

Examples
--------
>>> window_class(1.0, False), window_class(0.4, False), window_class(0.0, False), window_class(0.4, True)
('full', 'key-edge', 'unkeyed', 'collision')
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamer.core.errors import HeimdallError
from streamer.core.geodesy import Origin, geodetic_to_enu_m, mahalanobis_sq
from streamer.estimators.credible import ELLIPSE_PROBABILITIES
from streamer.tools import describe_with_module_doc
from streamer.tools.calibrate_ellipses import coverage
from streamer.tools.listen import DEFAULT_ENDPOINT, UndecodableMessage, decode_message
from streamer.tools.signals import stop_on_signals

#: A window keyed for at least this share counts as fully keyed (the 2 ms key ramps aside).
FULL_KEYED_FRACTION = 0.999
WINDOW_CLASSES = ("full", "key-edge", "unkeyed", "collision")
#: Truths kept while waiting for their localization (about 3 minutes of 0.5 s windows).
MAX_PENDING = 400


class ScoreLiveError(HeimdallError):
    """Nothing could be scored; the message names the endpoint and what was (not) received."""


def window_class(keyed_fraction: float, collision: bool) -> str:
    """The class (``WINDOW_CLASSES``) of a window from its truth's ``keyed_fraction`` (0..1) and ``collision``."""
    if collision:
        return "collision"
    if keyed_fraction >= FULL_KEYED_FRACTION:
        return "full"
    return "key-edge" if keyed_fraction > 0 else "unkeyed"


@dataclass(frozen=True)
class Scored:
    """One estimator's answer for one window: its class, error (m), squared Mahalanobis distance of the truth
    under the published covariance, and the squared radii of its 68 % and 95 % ellipses (NaN: not published)."""

    estimator: str
    window: str
    error_m: float
    m2: float
    radius_sq: tuple[float, float]


def _ellipse_radius_sq(estimate: dict) -> tuple[float, float]:
    """Squared ``scale`` of the 68 % and 95 % ellipses an estimate publishes (NaN for one it does not carry)."""
    scales = {round(float(e["p"]), 6): float(e["scale"]) for e in estimate.get("ellipses") or []
              if isinstance(e, dict) and "p" in e and "scale" in e}
    return tuple(scales.get(round(p, 6), math.nan) ** 2 for p in ELLIPSE_PROBABILITIES)


def score_window(loc: dict, truth: dict) -> list[Scored]:
    """Each estimator's answer in ``loc`` (primary, then ``alternatives``) scored against ``truth`` (wire dicts)."""
    klass = window_class(float(truth.get("keyed_fraction") or 0.0), bool(truth.get("collision")))
    out = []
    for est in [loc, *loc.get("alternatives", [])]:
        origin = Origin(float(est["lat"]), float(est["lon"]), 0.0)
        delta = geodetic_to_enu_m(float(truth["lat"]), float(truth["lon"]), 0.0, origin)[:2]
        out.append(Scored(str(est["estimator"]), klass, float(np.hypot(*delta)),
                          float(mahalanobis_sq(delta, est["cov_en_m2"])), _ellipse_radius_sq(est)))
    return out


def summarize(scored: Iterable[Scored]) -> dict[str, dict[str, dict[str, float]]]:
    """estimator -> window class -> ``n``, ``median_error_m``, ``p90_error_m``, ``cov68``, ``cov95`` (classes with
    no window left out)."""
    groups: dict[tuple[str, str], list[Scored]] = {}
    for s in scored:
        groups.setdefault((s.estimator, s.window), []).append(s)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (estimator, klass), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], WINDOW_CLASSES.index(kv[0][1]))):
        errors = np.array([r.error_m for r in rows])
        cov68, cov95 = coverage(np.array([r.m2 for r in rows]), radius_sq=np.array([r.radius_sq for r in rows]))
        out.setdefault(estimator, {})[klass] = {
            "n": len(rows),
            "median_error_m": float(np.median(errors)),
            "p90_error_m": float(np.percentile(errors, 90)),
            "cov68": cov68,
            "cov95": cov95,
        }
    return out


def format_table(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    """The summary as one fixed-width table: a row per estimator and window class."""
    lines = [f"{'estimator':<10} {'window':<10} {'n':>6} {'median_m':>10} {'p90_m':>10} {'cov68':>6} {'cov95':>6}"]
    for estimator, classes in summary.items():
        for klass, s in classes.items():
            lines.append(f"{estimator:<10} {klass:<10} {s['n']:>6d} {s['median_error_m']:>10.0f} {s['p90_error_m']:>10.0f} "
                         f"{s['cov68']:>6.3f} {s['cov95']:>6.3f}")
    return "\n".join(lines)


def _channel(msg: dict) -> str | None:
    channel = msg.get("channel")
    if channel is not None and not isinstance(channel, str):
        raise TypeError(f"channel: expected a name, got {channel!r}")
    return channel


@dataclass
class Matcher:
    """Pairs each localization with the truth of its window, whichever arrives first (the daemon sends the truth
    first; a subscriber that joined between the two sees a localization without one: counted, not scored).

    A band daemon's messages carry a ``channel``: a localization is paired with the truth of its window on its
    channel (the daemon sends one per transmitter). Its ``final`` estimates span a whole emission, not a window:
    they are left out (``heimdall evaluate-band`` scores them)."""

    scored: list[Scored]
    truths: dict[tuple[int, str | None], dict]
    waiting: dict[tuple[int, str | None], dict]
    matched: int = 0  # localizations scored
    unmatched: int = 0  # localizations dropped waiting for a truth that never came
    malformed: int = 0  # messages of these topics that lack a key or carry a value of the wrong type: skipped

    @classmethod
    def empty(cls) -> Matcher:
        return cls([], {}, {})

    def add(self, topic: str, msg: dict) -> None:
        """Take one message (topic and decoded payload); messages of other topics and old truths are ignored, and a
        malformed one (a peer's bytes) is counted in ``malformed``."""
        try:
            self._add(topic, msg)
        except (KeyError, TypeError, ValueError, OverflowError):
            self.malformed += 1

    def _add(self, topic: str, msg: dict) -> None:
        if topic == "truth" and msg.get("window_start_ns") is not None:
            key = (int(msg["window_start_ns"]), _channel(msg))
            loc = self.waiting.pop(key, None)
            if loc is not None:
                self.scored.extend(score_window(loc, msg))
                self.matched += 1
            elif (msg.get("keyed_fraction") or 0.0) >= (self.truths.get(key, {}).get("keyed_fraction") or 0.0):
                self.truths[key] = msg  # two transmitters on one channel: the one keyed longest, as evaluate-band
        elif topic.startswith("loc") and "t_start_ns" in msg and msg.get("stage") != "final":
            key = (int(msg["t_start_ns"]), _channel(msg))
            truth = self.truths.pop(key, None)
            if truth is not None:
                self.scored.extend(score_window(msg, truth))
                self.matched += 1
            else:
                self.waiting[key] = msg
        for pending in (self.truths, self.waiting):
            while len(pending) > MAX_PENDING:
                pending.pop(next(iter(pending)))
                self.unmatched += pending is self.waiting


def messages(endpoint: str, topics: tuple[str, ...], until: Callable[[], bool]) -> Iterator[tuple[str, dict]]:
    """(topic, payload) of each message from ``endpoint`` on ``topics`` (prefixes) until ``until()`` is true; payloads
    that do not decode to a map are skipped with a line on stderr."""
    import zmq

    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        for topic in topics:
            sock.setsockopt_string(zmq.SUBSCRIBE, topic)
        while not until():
            if not sock.poll(200):
                continue
            try:
                topic, msg = decode_message(sock.recv_multipart())
            except UndecodableMessage as exc:  # a peer's bytes: say so and go on
                print(f"heimdall score-live: {exc}", file=sys.stderr)
                continue
            if isinstance(msg, dict):
                yield topic, msg
    finally:
        sock.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``heimdall score-live``."""
    describe_with_module_doc(parser, __doc__)
    parser.add_argument("endpoint", nargs="?", default=DEFAULT_ENDPOINT, help=f"PUB endpoint (default {DEFAULT_ENDPOINT})")
    parser.add_argument("--duration", type=float, required=True, metavar="S", help="listen for this many seconds")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the table as JSON to FILE")


def run(args: argparse.Namespace) -> int:
    """Listen, score, print the table (and write ``--json``); exit status 0, or ScoreLiveError when nothing matched."""
    if not (math.isfinite(args.duration) and args.duration > 0):
        raise argparse.ArgumentError(None, f"--duration: expected seconds > 0, got {args.duration:g}")
    stop = stop_on_signals()
    deadline = time.monotonic() + args.duration
    matcher = Matcher.empty()
    counts = {"loc": 0, "truth": 0}
    for topic, msg in messages(args.endpoint, ("loc", "truth"), lambda: stop.is_set() or time.monotonic() >= deadline):
        counts["truth" if topic == "truth" else "loc"] += topic == "truth" or topic.startswith("loc")
        matcher.add(topic, msg)
    if not matcher.scored:
        raise ScoreLiveError(
            f"score-live: {args.endpoint}: nothing to score after {args.duration:g} s ({counts['loc']} localizations, "
            f"{counts['truth']} truth messages): is the daemon running with simulated receivers and output.publish_truth?")
    summary = summarize(matcher.scored)
    print(f"{counts['loc']} localizations, {counts['truth']} truth messages, "
          f"{matcher.matched} localizations matched to their window's truth"
          + (f", {matcher.malformed} malformed messages skipped" if matcher.malformed else ""))
    print(format_table(summary))
    if args.json is not None:
        args.json.write_text(json.dumps({"endpoint": args.endpoint, "duration_s": args.duration, "messages": counts,
                                         "estimators": summary}, indent=2) + "\n")
    return 0
