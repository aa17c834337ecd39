"""``heimdall calibrate-ellipses``: fit this site's ellipse size from localizations of transmitters at known positions.

An estimator's ellipses can be right on average over many networks and still too wide or too narrow on
one: the model cannot tell a site's shadowing and calibration spread from one window, so all its
ellipses on that network err together (models/MODEL_CARD.md, "Limits"). This measures that on the site
and corrects it with one factor per estimator, as ``heimdall calibrate`` corrects receiver gains.

Inputs
------
- Localizations: JSON lines as the daemon's archive (``[output.archive] dir``) or ``heimdall listen --json``
  writes them, one or more files (``heimdall.jsonl``, ``heimdall.jsonl.1``, ...). Lines of other topics
  are skipped; lines that are not JSON objects are errors naming file and line.
- Truth, one of:

  * a CSV track ``--truth FILE``: a header ``t_unix_s,lat,lon`` (seconds, degrees WGS84), then one row per
    fix (a GPS logger on the test transmitter; ``#`` lines and blank lines are skipped). The transmitter
    must be keyed from the track's first fix to its last: split a track where it was not.
  * ``truth`` lines in the same files (``heimdall listen --topic truth --json``, a simulated network's
    archive, or ``heimdall evaluate-band --archive``): fixes whose ``keyed`` is false mark the transmitter off,
    and so do those whose ``collision`` is true (which of two transmitters a window found is not known).

  A band daemon's localizations carry their ``channel``. Truth lines that carry one are the truth of that
  channel only (a simulated band daemon sends one per transmitter and window). A CSV track, or truth lines
  without a channel, is one transmitter's: with localizations on several channels, ``--channel`` must say
  which one it keyed on. ``--channel NAME`` (repeatable) keeps only the localizations
  on those channels.

  A window's truth is the track at its middle ``(t_start_ns + t_end_ns) / 2``, linearly interpolated
  (in the network's ENU plane) between the two fixes around it; a window with no fix within
  ``--max-gap-s`` on either side, or next to an unkeyed fix, is skipped and counted, as is an estimate
  whose position or covariance is not finite (``null`` in an archive) or not positive definite.

The fit (``least_nll_scale``)
-----------------------------
For each estimator (the primary and every alternative in the messages) and window, ``m^2 = r^T C^-1 r``
(``streamer.core.geodesy.mahalanobis_sq``) with r the truth minus the estimate and C the published ``cov_en_m2``,
both in the network's ENU plane (metres). Scaling every covariance by k changes a window's Gaussian NLL to ``m^2 / (2k) + ln k + const``;
the mean is least at ``k = mean(m^2) / 2``: the same closed form ``heimdall train`` uses on its validation
windows (``models.train.network.fit_covariance_scale``). Each message says which site factor its covariance
already carries (``covariance_scale``, docs/protocol.md); m^2 is taken under the estimator's own covariance
(that factor divided out, so localizations from before and after a reload mix correctly), and k written as
``estimator.model_covariance_scale`` for ``onnx``, ``estimator.physics.covariance_scale`` for ``physics``.
Messages without the key (older daemons) are taken to carry the factor of the config given.
A band daemon's final localizations (``stage`` ``final``, one over a whole emission) err differently from its
interim ones (one per window), so they are fitted apart, reported as ``onnx final`` and ``physics final``, and
written as ``estimator.model_final_covariance_scale`` and ``estimator.physics.final_covariance_scale``.
Coverage counts a truth inside the 68 % / 95 % ellipse as the message publishes it: within its ``ellipses``'
``scale`` standard deviations (the estimator's credible radius, docs/protocol.md), or a Gaussian's 1.515 / 2.448
for a message without them.

Consecutive windows of one transmission share most of their error: 200 windows from one parked car are
worth far fewer than 200 from a drive around the area. Below ``MIN_WINDOWS`` windows nothing is written.

Examples
--------
>>> m2 = np.array([0.5, 1.0, 4.5])
>>> least_nll_scale(m2)
1.0
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamer.core.errors import ConfigError, HeimdallError
from streamer.core.geodesy import geodetic_to_enu_m, mahalanobis_sq, network_geometry
from streamer.estimators.credible import ELLIPSE_PROBABILITIES
from streamer.tools import describe_with_module_doc

#: Fewer windows with a truth than this for an estimator: its factor is reported, not written.
MIN_WINDOWS = 30
#: Squared Mahalanobis radii of the 68 % and 95 % ellipses of a 2-D Gaussian: the chi-square (2 dof) quantile
#: -2 ln(1 - p), 2.279 and 5.991.
CHI2_68, CHI2_95 = (-2.0 * math.log(1.0 - p) for p in (0.68, 0.95))
SCALE_DECIMALS = 4
#: Config key of each estimator's factor (``streamer.estimators``: the ``estimator`` field of a message).
SCALE_KEYS = {"onnx": ("estimator", "model_covariance_scale"), "physics": ("estimator", "physics", "covariance_scale"),
              "onnx final": ("estimator", "model_final_covariance_scale"),
              "physics final": ("estimator", "physics", "final_covariance_scale")}
#: Appended to the estimator's name for a band daemon's final (whole-emission) localizations, fitted apart.
FINAL = " final"


class LocalizationFileError(HeimdallError):
    """A localization or truth file is malformed; the message names file, line and what was expected."""


# ----------------------------------------------------------------------------------------------------
# The fit: arrays in, numbers out


def least_nll_scale(m2: np.ndarray) -> float:
    """The factor k on every covariance that minimises the mean 2-D Gaussian NLL: ``mean(m^2) / 2``.

    ValueError when there is nothing to fit or the result is not a finite factor > 0.
    """
    m2 = np.asarray(m2, dtype=np.float64)
    if m2.size == 0:
        raise ValueError("covariance scale: no windows to fit it on")
    k = float(m2.mean() / 2.0)
    if not math.isfinite(k) or k <= 0:
        raise ValueError(f"covariance scale must come out finite and > 0, got {k} from {m2.size} windows")
    return k


def coverage(m2: np.ndarray, scale: float = 1.0, radius_sq: np.ndarray | None = None) -> tuple[float, float]:
    """Fractions of ``m2`` inside the 68 % and 95 % ellipses after every covariance is multiplied by ``scale``.

    ``radius_sq`` ``[N, 2]``: each window's squared ellipse radii (its credible scales squared; NaN = a Gaussian's);
    ``None``: a Gaussian's, ``CHI2_68`` and ``CHI2_95``, for every window."""
    m2 = np.asarray(m2, dtype=np.float64) / scale
    limits = np.broadcast_to(np.array([CHI2_68, CHI2_95]), (len(m2), 2))
    if radius_sq is not None:
        limits = np.where(np.isnan(radius_sq), limits, radius_sq)
    return float(np.mean(m2 <= limits[:, 0])), float(np.mean(m2 <= limits[:, 1]))


# ----------------------------------------------------------------------------------------------------
# Reading localizations and truth


@dataclass
class Track:
    """Truth fixes sorted by time: ``t_ns`` [N] (Unix ns), ``en_m`` [N, 2] (network ENU, m), ``keyed`` [N]."""

    t_ns: np.ndarray
    en_m: np.ndarray
    keyed: np.ndarray

    def at(self, t_ns: np.ndarray, max_gap_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Interpolated positions ``[M, 2]`` at ``t_ns`` [M] and whether each had keyed fixes within the gap."""
        t_ns = np.asarray(t_ns, dtype=np.int64)
        if len(self.t_ns) == 0:
            return np.full((len(t_ns), 2), np.nan), np.zeros(len(t_ns), bool)
        hi = np.clip(np.searchsorted(self.t_ns, t_ns, side="left"), 0, len(self.t_ns) - 1)
        lo = np.where(self.t_ns[hi] > t_ns, np.maximum(hi - 1, 0), hi)
        t_lo, t_hi = self.t_ns[lo], self.t_ns[hi]
        ok = (t_lo <= t_ns) & (t_ns <= t_hi) & (t_ns - t_lo <= max_gap_ns) & (t_hi - t_ns <= max_gap_ns)
        ok &= self.keyed[lo] & self.keyed[hi]
        span = np.maximum(t_hi - t_lo, 1).astype(np.float64)
        w = np.where(hi == lo, 0.0, (t_ns - t_lo) / span)[:, None]
        return (1.0 - w) * self.en_m[lo] + w * self.en_m[hi], ok


@dataclass
class Localizations:
    """Per estimator name: window middles ``t_ns`` [N], estimates ``en_m`` [N, 2] and ``cov_m2`` [N, 2, 2], and the
    site factor each message says its covariance already carries, ``applied`` [N] (NaN: the message does not say)."""

    t_ns: dict[str, list[int]] = field(default_factory=dict)
    en_m: dict[str, list[np.ndarray]] = field(default_factory=dict)
    cov_m2: dict[str, list[np.ndarray]] = field(default_factory=dict)
    applied: dict[str, list[float]] = field(default_factory=dict)
    scales: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # 68 % / 95 % radii; NaN: not said
    channel: dict[str, list[str | None]] = field(default_factory=dict)  # a band daemon's channel name; None: none

    def add(self, name: str, t_ns: int, en_m: np.ndarray, cov_m2: np.ndarray, applied: float,
            scales: tuple[float, float] = (math.nan, math.nan), channel: str | None = None) -> None:
        self.t_ns.setdefault(name, []).append(t_ns)
        self.en_m.setdefault(name, []).append(en_m)
        self.cov_m2.setdefault(name, []).append(cov_m2)
        self.applied.setdefault(name, []).append(applied)
        self.scales.setdefault(name, []).append(scales)
        self.channel.setdefault(name, []).append(channel)

    def channels(self) -> set[str | None]:
        """The channels the localizations are on (``None``: a single-channel daemon's)."""
        return {c for chans in self.channel.values() for c in chans}

    def on_channels(self, names: set[str]) -> Localizations:
        """Only the localizations on the channels ``names``."""
        out = Localizations()
        for est, chans in self.channel.items():
            for i, ch in enumerate(chans):
                if ch in names:
                    out.add(est, self.t_ns[est][i], self.en_m[est][i], self.cov_m2[est][i], self.applied[est][i],
                            self.scales[est][i], ch)
        return out


def _number(value, path: Path, line_no: int, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LocalizationFileError(f"{path}:{line_no}: {what}: expected a number, got {value!r}")
    return float(value)


def _time_ns(value, path: Path, line_no: int, what: str) -> int:
    """A Unix time in ns, exact: an integer is kept as is (a float carries only about 0.25 us at today's times)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = _number(value, path, line_no, what)
    if not math.isfinite(number):
        raise LocalizationFileError(f"{path}:{line_no}: {what}: expected a time in ns, got {value!r}")
    return int(number)


def _estimate(obj, path: Path, line_no: int, what: str) -> tuple[str, float, float, np.ndarray, float]:
    if not isinstance(obj, dict) or not isinstance(obj.get("estimator"), str):
        raise LocalizationFileError(f"{path}:{line_no}: {what}: expected an object with 'estimator', 'lat', 'lon', 'cov_en_m2'")
    lat = _number(obj.get("lat"), path, line_no, f"{what}.lat")
    lon = _number(obj.get("lon"), path, line_no, f"{what}.lon")
    cov = obj.get("cov_en_m2")
    try:
        cov_m2 = np.array(cov, dtype=np.float64)
    except (TypeError, ValueError):
        cov_m2 = np.empty(0)
    if cov_m2.shape != (2, 2):
        raise LocalizationFileError(f"{path}:{line_no}: {what}.cov_en_m2: expected [[ee, en], [ne, nn]] (m^2), got {cov!r}")
    applied = obj.get("covariance_scale")  # absent from messages of daemons before the key existed
    applied = math.nan if applied is None else _number(applied, path, line_no, f"{what}.covariance_scale")
    return obj["estimator"], lat, lon, cov_m2, applied, _ellipse_scales(obj.get("ellipses"), path, line_no, what)


def _ellipse_scales(ellipses, path: Path, line_no: int, what: str) -> tuple[float, float]:
    """The 68 % and 95 % ellipses' ``scale`` of a message's ``ellipses`` (NaN for one it does not carry)."""
    found = {}
    if ellipses is None:  # messages of daemons before the key existed
        ellipses = []
    if not isinstance(ellipses, list):
        raise LocalizationFileError(f"{path}:{line_no}: {what}.ellipses: expected a list of ellipses, got {ellipses!r}")
    for i, e in enumerate(ellipses):
        if not isinstance(e, dict):
            raise LocalizationFileError(f"{path}:{line_no}: {what}.ellipses[{i}]: expected an object, got {e!r}")
        p = _number(e.get("p"), path, line_no, f"{what}.ellipses[{i}].p")
        if "scale" in e:
            found[round(p, 6)] = _number(e["scale"], path, line_no, f"{what}.ellipses[{i}].scale")
    return tuple(found.get(round(p, 6), math.nan) for p in ELLIPSE_PROBABILITIES)


def _channel(msg: dict, path: Path, line_no: int) -> str | None:
    channel = msg.get("channel")
    if channel is not None and not isinstance(channel, str):
        raise LocalizationFileError(f"{path}:{line_no}: channel: expected a channel name (string), got {channel!r}")
    return channel


def read_messages(paths: list[Path], origin, loc_topic: str = "loc"):
    """(Localizations, truth Tracks by channel from ``truth`` lines, lines skipped as other topics) from JSON-lines
    files. The Tracks' key is the truth lines' ``channel``, ``None`` for lines without one."""
    locs = Localizations()
    raw_loc: list[tuple[str, int, float, float, np.ndarray, float, tuple[float, float], str | None]] = []
    truth: dict[str | None, list[tuple[int, float, float, bool]]] = {}
    other = 0
    for path in paths:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise LocalizationFileError(f"{path}: cannot read: {exc.strerror}") from None
        for line_no, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LocalizationFileError(f"{path}:{line_no}: not a JSON line ({exc.msg})") from None
            if not isinstance(msg, dict):
                raise LocalizationFileError(f"{path}:{line_no}: expected a JSON object, got {type(msg).__name__}")
            topic = msg.get("topic")
            if topic == loc_topic:
                t0 = _time_ns(msg.get("t_start_ns"), path, line_no, "t_start_ns")
                t1 = _time_ns(msg.get("t_end_ns"), path, line_no, "t_end_ns")
                middle = (t0 + t1) // 2
                estimates = [_estimate(msg, path, line_no, "the primary estimate")]
                estimates += [_estimate(alt, path, line_no, f"alternatives[{i}]")
                              for i, alt in enumerate(msg.get("alternatives") or [])]
                channel = _channel(msg, path, line_no)
                suffix = FINAL if msg.get("stage") == "final" else ""
                raw_loc += [(name + suffix, middle, lat, lon, cov, applied, scales, channel)
                            for name, lat, lon, cov, applied, scales in estimates]
            elif topic == "truth":
                t = _time_ns(msg.get("t_ns"), path, line_no, "t_ns")
                keyed = bool(msg.get("keyed", True)) and not bool(msg.get("collision", False))
                truth.setdefault(_channel(msg, path, line_no), []).append(
                    (t, _number(msg.get("lat"), path, line_no, "lat"), _number(msg.get("lon"), path, line_no, "lon"),
                     keyed))
            else:
                other += 1
    if raw_loc:
        lat = np.array([r[2] for r in raw_loc])
        lon = np.array([r[3] for r in raw_loc])
        en = geodetic_to_enu_m(lat, lon, np.zeros_like(lat), origin).reshape(-1, 3)[:, :2]
        for (name, middle, _, _, cov, applied, scales, channel), e in zip(raw_loc, en):
            locs.add(name, middle, e, cov, applied, scales, channel)
    return locs, {channel: track_of(fixes, origin) for channel, fixes in truth.items()}, other


def track_of(fixes: list[tuple[int, float, float, bool]], origin) -> Track:
    """A Track from (t_ns, lat, lon, keyed) fixes in any order."""
    fixes = sorted(fixes)
    if not fixes:
        return Track(np.empty(0, np.int64), np.empty((0, 2)), np.empty(0, bool))
    t, lat, lon, keyed = (np.array(v) for v in zip(*fixes))
    en = geodetic_to_enu_m(lat, lon, np.zeros_like(lat, dtype=np.float64), origin).reshape(-1, 3)[:, :2]
    return Track(t.astype(np.int64), en, keyed.astype(bool))


def read_track_csv(path: Path, origin) -> Track:
    """The ``--truth`` CSV (module doc): every fix keyed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise LocalizationFileError(f"{path}: cannot read: {exc.strerror}") from None
    rows = [(n, r) for n, r in enumerate(csv.reader(text.splitlines()), 1) if r and not r[0].lstrip().startswith("#")]
    if not rows or [c.strip() for c in rows[0][1]] != ["t_unix_s", "lat", "lon"]:
        got = rows[0][1] if rows else "nothing"
        raise LocalizationFileError(f"{path}: expected the header t_unix_s,lat,lon, got {got!r}")
    fixes = []
    for line_no, row in rows[1:]:
        if len(row) != 3:
            raise LocalizationFileError(f"{path}:{line_no}: expected 3 columns (t_unix_s,lat,lon), got {len(row)}")
        try:
            t_s, lat, lon = (float(c) for c in row)
        except ValueError:
            raise LocalizationFileError(f"{path}:{line_no}: expected numbers, got {row!r}") from None
        if not (math.isfinite(t_s) and -90 <= lat <= 90 and -180 <= lon <= 180):
            raise LocalizationFileError(f"{path}:{line_no}: expected a finite time, lat in -90..90, lon in -180..180, got {row!r}")
        fixes.append((int(round(t_s * 1e9)), lat, lon, True))
    return track_of(fixes, origin)


# ----------------------------------------------------------------------------------------------------
# Per estimator: match, fit, report


@dataclass(frozen=True)
class EllipseFit:
    """One estimator's windows with a truth: ``n``, median error (m), coverage as published and with the fitted factor."""

    estimator: str
    n: int
    skipped: int  # windows with no usable truth, or an estimate not finite or not positive definite
    median_error_m: float
    applied_min: float  # the site factors the published covariances carried (lowest, highest)
    applied_max: float
    cov68: float  # as published
    cov95: float
    factor: float  # the least-NLL factor on the estimator's own covariances (its site factor taken out)
    cov68_after: float  # with that factor instead of the published one
    cov95_after: float
    written_value: float  # factor, rounded to SCALE_DECIMALS


def truth_at(locs: Localizations, name: str, tracks: dict[str | None, Track], max_gap_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """Estimator ``name``'s windows' truths ``[N, 2]`` and whether each has one: a localization on a channel is
    matched to that channel's track, or to the track of no channel (a CSV, a single-channel daemon's truth)."""
    t_ns = np.array(locs.t_ns[name], dtype=np.int64)
    channels = locs.channel[name]
    truth, ok = np.full((len(t_ns), 2), np.nan), np.zeros(len(t_ns), bool)
    for channel in set(channels):
        track = tracks.get(channel, tracks.get(None))
        if track is not None:
            rows = np.array([c == channel for c in channels])
            truth[rows], ok[rows] = track.at(t_ns[rows], max_gap_ns)
    return truth, ok


def fit_ellipses(locs: Localizations, tracks: dict[str | None, Track], current: dict[str, float],
                 max_gap_s: float) -> dict[str, EllipseFit]:
    """An EllipseFit per estimator with at least one window that has a truth (others are left out).

    ``tracks``: the truth by channel (``truth_at``). ``current``: each estimator's factor in the config, taken as
    applied where a message does not say.
    """
    fits = {}
    for name in sorted(locs.t_ns):
        truth, ok = truth_at(locs, name, tracks, int(round(max_gap_s * 1e9)))
        est = np.array(locs.en_m[name])
        cov = np.array(locs.cov_m2[name])
        applied = np.array(locs.applied[name], dtype=np.float64)
        applied = np.where(np.isnan(applied), current.get(name, 1.0), applied)
        ok &= np.isfinite(est).all(axis=1) & np.isfinite(cov).all(axis=(1, 2)) & np.isfinite(applied) & (applied > 0)
        # An archive writes a non-finite number as null; the daemon never publishes a singular covariance.
        safe = np.where(ok[:, None, None], cov, np.eye(2))
        ok &= (safe[:, 0, 0] > 0) & (np.linalg.det(0.5 * (safe + np.swapaxes(safe, 1, 2))) > 0)
        if not ok.any():
            continue
        r = truth[ok] - est[ok]
        m2 = mahalanobis_sq(r, cov[ok])
        own = m2 * applied[ok]  # m^2 under the estimator's own covariance: the factors may differ across a reload
        radius_sq = np.array(locs.scales[name], dtype=np.float64)[ok] ** 2
        k = least_nll_scale(own)
        fits[name] = EllipseFit(name, int(ok.sum()), int((~ok).sum()), float(np.median(np.hypot(r[:, 0], r[:, 1]))),
                                float(applied[ok].min()), float(applied[ok].max()), *coverage(m2, radius_sq=radius_sq), k,
                                *coverage(own, k, radius_sq), round(k, SCALE_DECIMALS))
    return fits


def current_scales(config) -> dict[str, float]:
    """The factors of ``config`` by fit name (``SCALE_KEYS``)."""
    finals = {name + FINAL: k for name, k in config.estimator.covariance_scales("final").items()}
    return {**config.estimator.covariance_scales(), **finals}


def updated_toml(text: str, fits: dict[str, EllipseFit]) -> str:
    """``text`` with each fitted estimator's factor set (``SCALE_KEYS``); comments and layout kept."""
    import tomlkit

    doc = tomlkit.parse(text)
    for name, fit in fits.items():
        *tables, key = SCALE_KEYS[name]
        node = doc
        for t in tables:
            if t not in node:
                node.add(t, tomlkit.table(is_super_table=True))
            node = node[t]
        node[key] = fit.written_value
    return tomlkit.dumps(doc)


def format_report(fits: dict[str, EllipseFit], other_lines: int) -> str:
    lines = [f"{'estimator':<14}{'windows':>8}{'skipped':>8}{'median_m':>10}{'cov68':>7}{'cov95':>7}{'cov68':>7}{'cov95':>7}"
             "   site factor"]
    for f in fits.values():
        applied = f"{f.applied_min:g}" if f.applied_min == f.applied_max else f"{f.applied_min:g}..{f.applied_max:g}"
        lines.append(f"{f.estimator:<14}{f.n:>8}{f.skipped:>8}{f.median_error_m:>10.0f}{f.cov68:>7.3f}{f.cov95:>7.3f}"
                     f"{f.cov68_after:>7.3f}{f.cov95_after:>7.3f}   {applied} -> {f.written_value:g}")
    lines.append("(coverage as published, then with the fitted factor; a calibrated 2-D Gaussian covers 0.68 and 0.95 "
                 "of its truths)")
    if other_lines:
        lines.append(f"{other_lines} lines of other topics skipped")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m streamer.tools.calibrate_ellipses``."""
    parser = argparse.ArgumentParser(prog="heimdall calibrate-ellipses")
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``heimdall calibrate-ellipses`` (the file formats are the module doc, shown after them)."""
    describe_with_module_doc(parser, __doc__)
    parser.add_argument("-c", "--config", required=True, type=Path, help="the TOML config the localizations were made with")
    parser.add_argument("localizations", type=Path, nargs="+", help="JSON-lines files (archive or heimdall listen --json)")
    parser.add_argument("--truth", type=Path, help="CSV track t_unix_s,lat,lon (default: truth lines in the same files)")
    parser.add_argument("--max-gap-s", type=float, default=2.0, help="farthest truth fix from a window's middle (s; default 2)")
    parser.add_argument("--channel", action="append", metavar="NAME",
                        help="a band daemon's channel: only its localizations (repeatable; needed with --truth when "
                             "the localizations are on several channels)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, help="write the config with the fitted factors here (comments and layout kept)")
    where.add_argument("--in-place", action="store_true", help="rewrite the config given with -c")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def main(argv: list[str] | None = None) -> int:
    """``python -m streamer.tools.calibrate_ellipses`` and callers with an argument list: parse, then ``run``."""
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """``heimdall calibrate-ellipses`` entry point; errors are ``HeimdallError`` (the CLI prints them, exit status 2)."""
    from dataclasses import asdict

    from streamer.config import load
    from streamer.tools.calibrate import write_config

    if not (math.isfinite(args.max_gap_s) and args.max_gap_s > 0):
        raise ConfigError(f"--max-gap-s: expected seconds > 0, got {args.max_gap_s}")
    config = load(args.config)
    origin, _, _ = network_geometry(config)
    topic = "loc" if config.network.name == "default" else f"loc.{config.network.name}"
    locs, tracks, other = read_messages(args.localizations, origin, topic)
    if not locs.t_ns:
        raise LocalizationFileError(f"no localizations (topic {topic!r}) in {', '.join(map(str, args.localizations))}")
    channels = locs.channels()
    if args.channel:
        wanted = set(args.channel)
        locs = locs.on_channels(wanted)
        if not locs.t_ns:
            seen = ", ".join(sorted(c for c in channels if c is not None)) or "none: a single-channel daemon's"
            raise LocalizationFileError(f"--channel {', '.join(sorted(wanted))}: no localization on it; their channels: {seen}")
        channels = locs.channels()
    if args.truth is not None:
        tracks = {None: read_track_csv(args.truth, origin)}
    if None in tracks and len(channels) > 1:
        source = f"--truth {args.truth}" if args.truth is not None else "truth lines without a channel"
        raise LocalizationFileError(f"{source}: one transmitter's track, and the localizations are on {len(channels)} "
                                    f"channels ({', '.join(sorted(map(str, channels)))}): give --channel NAME, the one "
                                    "it keyed on")
    if not any(len(track.t_ns) for track in tracks.values()):
        raise LocalizationFileError("no truth: give --truth TRACK.csv, or files with truth lines")
    fits = fit_ellipses(locs, tracks, current_scales(config), args.max_gap_s)
    if not fits:
        raise LocalizationFileError(f"no localization has a keyed truth fix within {args.max_gap_s:g} s: do the times overlap?")
    unknown = sorted(set(fits) - set(SCALE_KEYS))
    few = {name: f.n for name, f in fits.items() if f.n < MIN_WINDOWS}
    writable = {name: f for name, f in fits.items() if name in SCALE_KEYS and name not in few}
    out = args.config if args.in_place else args.out
    if out is not None and writable:
        write_config(Path(out), updated_toml(Path(args.config).read_text(encoding="utf-8"), writable))
    for name, n in few.items():
        print(f"heimdall calibrate-ellipses: error: estimator {name!r}: {n} windows with a truth, need at least "
              f"{MIN_WINDOWS}; its factor is left unchanged", file=sys.stderr)
    for name in unknown:
        print(f"heimdall calibrate-ellipses: error: estimator {name!r} has no config key; left out", file=sys.stderr)
    written = str(out) if out is not None and writable else None
    if args.json:
        print(json.dumps({"estimators": {n: asdict(f) for n, f in fits.items()}, "other_lines": other, "written": written}, indent=2))
    else:
        print(format_report(fits, other))
        print(f"wrote {out}" if written else "nothing written (use --out FILE or --in-place)")
    return 0 if not few and not unknown else 1


if __name__ == "__main__":
    raise SystemExit(main())
