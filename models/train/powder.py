"""POWDER real received power (462.7 MHz, University of Utah campus) as receiver IQ, scored like the simulated sets.

Owns reading the POWDER data folder (``POWDER_DIR`` overrides its place) and its split files, fitting the
path-loss offsets on the fitting rows only, rendering each test row as per-receiver IQ that receives the
calibrated power in dBm, the calibration's age (the drift of the offsets between the fitting rows' months, for
which both estimators widen: ``fit_calibration_age``), the physics estimator's options for real data
(``PhysicsOptions``) and their choice by spatial cross-validation:
``python -m models.train.powder select|select-point|residuals|variants --split grid|random|PATH``.
Distances are in metres, powers in dBm (RSS in the data's uncalibrated dB). The recipe step by step and why:
docs/evaluation.md, "POWDER real data".
"""

from __future__ import annotations

import ast
import csv
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from models.train.dataset import DETECTION, MAX_RECEIVERS, Windows, free_space_loss_1km_db, heard_mask
from models.train.scoring import format_table, model_methods, run_centroid, run_onnx, scored, scores, site_calibrated
from streamer.dsp import features as feature_module
from streamer.core.calibration_drift import DriftFit, Survey, epoch_days, fit_drift, parse_calibrated_at
from streamer.core.propagation import fit_path_loss
from streamer.config import PhysicsConfig, from_dict
from streamer.estimators.credible import ELLIPSE_PROBABILITIES
from streamer.core.errors import HeimdallError
from streamer.dsp.features import FeatureSpec
from streamer.core.geodesy import Origin, geodetic_to_enu_m, search_area
from streamer.estimators.contract import search_area_row, site_propagation
from streamer.estimators.physics import POINT_ESTIMATES, PhysicsGrid, correlated_error_cov
from streamer.core.propagation import log_distance_path_loss_db, slant_distance_m
from streamer.estimators.survey import CORR_BINS_M, correlation_table, fit_correlation, pair_residuals
from streamer.estimators.survey import ShadowingMaps as _KrigedMaps

#: The project keeps its external data in ``shared/`` beside the repository checkout (as CI lays it out).
DEFAULT_POWDER_DIR = Path(__file__).resolve().parents[3] / "shared" / "localization-data" / "powder-rss-462mhz"
POWDER_DIR = Path(os.environ.get("POWDER_DIR", DEFAULT_POWDER_DIR))
FREQ_HZ = 462.7e6
P_TX_DBM = 30.0
NOT_HEARD = -101.0
FIT_THRESHOLD_DB = -95.0
TX_ALT_M = 1.5
SPLIT_DIR = Path("Separated_Dataset_JSON") / "train_test_splits"
#: ``--powder-split`` shorthands: split name -> test file under ``SPLIT_DIR``.
SPLITS = {"grid": Path("grid_split") / "grid_test.json", "random": Path("random_split") / "random_test.json"}
#: Receiver positions farther than this from the fixed receivers' centroid are GPS errors (the campus is ~3 km).
MAX_RX_RANGE_M = 5_000.0
#: A receiver's own residual sigma is used (``PhysicsOptions.per_receiver_sigma``) only with this many fitted links.
MIN_LINKS_RX_SIGMA = 30
#: Calibration sigma (dB) given to the physics estimator on POWDER (the recipe's; offsets fitted on ~75k links).
CALIBRATION_SIGMA_DB = 1.0
#: Search-area margin around a sample's receivers (km): the physics estimator's prior and what the model is told.
AREA_MARGIN_KM = 0.3


class SplitFileError(HeimdallError):
    """A POWDER split file is missing or malformed; the message names the file."""


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def load_rows(root: Path = POWDER_DIR) -> list[dict]:
    """``single_tx.csv`` as dicts: timestamp, tx (lat, lon), receivers {name: (rss_db, lat, lon)} (heard or not)."""
    fixed = ast.literal_eval((root / "Separated_Dataset_CSV" / "location_coordinates.json").read_text())
    fixed_pos = {}
    for name, value in (fixed.items() if isinstance(fixed, dict) else []):
        if isinstance(value, (list, tuple)) and len(value) >= 2 and value[0] is not None:
            fixed_pos[name] = (float(value[0]), float(value[1]))
    with open(root / "receivers_stationary_DERIVED.csv", newline="") as f:
        for row in csv.DictReader(f):
            fixed_pos.setdefault(row["name"], (float(row["latitude"]), float(row["longitude"])))
    rows = []
    with open(root / "Separated_Dataset_CSV" / "single_tx.csv", newline="") as f:
        for row in csv.DictReader(f):
            rx = {}
            for key, value in row.items():
                if key in fixed_pos:
                    rx[key] = (float(value), *fixed_pos[key])
                elif key.endswith("_rss"):
                    name = key[:-4]
                    lat, lon = float(row[f"{name}_x"]), float(row[f"{name}_y"])
                    if lat != -1 and lon != -1:
                        rx[name] = (float(value), lat, lon)
            rows.append({"timestamp": row["timestamp"], "tx": (float(row["tx_x_coord"]), float(row["tx_y_coord"])), "rx": rx})
    return rows


def split_path(split: str | Path, root: Path = POWDER_DIR) -> Path:
    """The test file of a split: a shorthand in ``SPLITS`` (``grid``, ``random``) under ``root``, else ``split`` as a path."""
    if isinstance(split, str) and split in SPLITS:
        return root / SPLIT_DIR / SPLITS[split]
    return Path(split)


def split_name(split: str | Path) -> str:
    """Dataset name in ``heimdall evaluate``'s results: ``powder-grid`` for a shorthand, ``powder-<file stem>`` else."""
    return f"powder-{split}" if isinstance(split, str) and split in SPLITS else f"powder-{Path(split).stem}"


def read_split(path: Path) -> dict[str, dict]:
    """A split file as ``{timestamp: sample}``; a missing or malformed file is a ``SplitFileError`` naming it."""
    try:
        data = json.loads(Path(path).read_text())  # the files hold -Infinity, which Python's json accepts
    except OSError as exc:
        raise SplitFileError(f"{path}: cannot read the POWDER split file: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SplitFileError(f"{path}: not a POWDER split file: not JSON ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise SplitFileError(f"{path}: not a POWDER split file: expected a non-empty JSON object "
                             f"{{timestamp: {{\"rx_data\": [...], \"tx_coords\": [...]}}}}, got {type(data).__name__}")
    for timestamp, sample in data.items():
        if not (isinstance(sample, dict) and isinstance(sample.get("rx_data"), list) and isinstance(sample.get("tx_coords"), list)):
            raise SplitFileError(f"{path}: sample {timestamp!r}: expected {{\"rx_data\": [[rss, lat, lon, name], ...], "
                                 f"\"tx_coords\": [[lat, lon]], ...}}")
    return data


def _row_from_split(timestamp: str, sample: dict, path: Path) -> dict:
    """A test row from the split file itself (its timestamp is not in ``single_tx.csv``), shaped like ``load_rows``'."""
    where = f"{path}: sample {timestamp!r}"
    if len(sample["tx_coords"]) != 1:
        raise SplitFileError(f"{where}: {len(sample['tx_coords'])} transmitters; only one-transmitter samples can be scored")
    try:
        tx = (float(sample["tx_coords"][0][0]), float(sample["tx_coords"][0][1]))
        rx = {str(name): (float(rss) if math.isfinite(float(rss)) else NOT_HEARD, float(lat), float(lon))
              for rss, lat, lon, name in sample["rx_data"]}
    except (TypeError, ValueError, IndexError) as exc:
        raise SplitFileError(f"{where}: expected tx_coords [[lat, lon]] and rx_data [[rss, lat, lon, name], ...] ({exc})") from None
    return {"timestamp": timestamp, "tx": tx, "rx": rx}


def split_rows(rows: list[dict], split: str | Path = "grid", root: Path = POWDER_DIR) -> tuple[list[dict], list[dict]]:
    """(fitting rows, test rows) for a split shorthand or split file (module doc)."""
    path = split_path(split, root)
    test = read_split(path)
    base = root / "Separated_Dataset_JSON"
    excluded = set(_json(base / "unused.json"))
    for name in ("indoor", "off_campus"):
        excluded |= set(_json(base / "train_test_splits" / "special_test_cases" / f"{name}.json"))
    fit = [r for r in rows if r["timestamp"] not in test and r["timestamp"] not in excluded]
    known = {r["timestamp"] for r in rows}
    only_in_split = [_row_from_split(t, sample, path) for t, sample in test.items() if t not in known]
    return fit, [r for r in rows if r["timestamp"] in test] + only_in_split


def origin_of(rows: list[dict]) -> Origin:
    """Centroid of the fixed receivers (bus positions vary per sample)."""
    pts = {name: (lat, lon) for r in rows for name, (_, lat, lon) in r["rx"].items() if not name.startswith("bus-")}
    lat = np.mean([p[0] for p in pts.values()])
    lon = np.mean([p[1] for p in pts.values()])
    return Origin(float(lat), float(lon), 0.0)


def _enu(lat, lon, origin: Origin) -> np.ndarray:
    return geodetic_to_enu_m(np.asarray(lat, float), np.asarray(lon, float), 0.0, origin)[..., :2]


def _on_campus(lat: float, lon: float, origin: Origin) -> bool:
    """A receiver position within ``MAX_RX_RANGE_M`` of the fixed receivers' centroid (some bus fixes are bogus)."""
    return bool(np.linalg.norm(_enu(lat, lon, origin)) <= MAX_RX_RANGE_M)


def fit_offsets(rows: list[dict], origin: Origin) -> dict:
    """Least-squares log-distance fit with per-receiver offsets (module doc, step 1; ``streamer.core.propagation.fit_path_loss``)."""
    names = sorted({n for r in rows for n, (rss, _, _) in r["rx"].items() if rss > FIT_THRESHOLD_DB})
    index = {n: i for i, n in enumerate(names)}
    dist_m = np.ones((len(rows), len(names)))
    rss_db = np.zeros((len(rows), len(names)))
    used = np.zeros((len(rows), len(names)), bool)
    for i, r in enumerate(rows):
        tx = _enu(*r["tx"], origin)
        for name, (rss, lat, lon) in r["rx"].items():
            if rss <= FIT_THRESHOLD_DB or not _on_campus(lat, lon, origin):
                continue
            j = index[name]
            dist_m[i, j], rss_db[i, j], used[i, j] = float(np.linalg.norm(_enu(lat, lon, origin) - tx)), rss, True
    # No transmit power given: a common A is fitted and sum(o_r) = 0; distances clamped at 10 m.
    fit = fit_path_loss(dist_m, rss_db, used, min_distance_m=10.0)
    return {"A_db": fit.level_db, "n": fit.exponent, "sigma_db": fit.sigma_db,
            "offsets_db": {n: float(fit.offsets_db[i]) for n, i in index.items() if fit.fitted[i]}, "links": fit.links,
            "offsets_se_db": {n: float(fit.offset_se_db[i]) for n, i in index.items() if fit.fitted[i]},
            "rx_sigma_db": {n: float(fit.residual_sigma_db[i]) for n, i in index.items()
                            if fit.fitted[i] and fit.n_obs[i] >= MIN_LINKS_RX_SIGMA},
            "residuals": _residual_pairs(rows, fit, index, origin)}


def _residual_pairs(rows: list[dict], fit, index: dict, origin: Origin) -> tuple[np.ndarray, np.ndarray]:
    """(separation m, residual pair [2]) for every pair of fitted links sharing a transmission (for the correlation fit)."""
    seps, pairs = [], []
    for r in rows:
        tx = _enu(*r["tx"], origin)
        pos, res = [], []
        for name, (rss, lat, lon) in r["rx"].items():
            if rss <= FIT_THRESHOLD_DB or name not in index or not fit.fitted[index[name]] or not _on_campus(lat, lon, origin):
                continue
            p = _enu(lat, lon, origin)
            d = max(float(np.linalg.norm(p - tx)), 10.0)
            res.append(rss - (fit.level_db - 10.0 * fit.exponent * math.log10(d / 1000.0) + fit.offsets_db[index[name]]))
            pos.append(p)
        if len(res) < 2:
            continue
        pos, res = np.array(pos), np.array(res)
        i, j = np.triu_indices(len(res), 1)
        seps.append(np.linalg.norm(pos[i] - pos[j], axis=1))
        pairs.append(np.stack([res[i], res[j]], -1))
    return np.concatenate(seps), np.concatenate(pairs)


def calibrated_dbm(rss: float, name: str, fit: dict) -> float:
    """Measured RSS (dB, uncalibrated) -> dBm at the antenna (module doc, step 2)."""
    return rss - fit["offsets_db"].get(name, 0.0) - fit["A_db"] + P_TX_DBM - free_space_loss_1km_db(FREQ_HZ)


#: ``cross_validate``'s candidates (``python -m models.train.powder select``): receivers used, error structure, and a sigma scale grid.
SELECT_RECEIVERS = (MAX_RECEIVERS, None)
#: (per_receiver_sigma, correlated, mapped)
SELECT_STRUCTURES = ((False, False, False), (True, False, False), (False, True, False), (True, True, False),
                     (False, False, True), (True, False, True))
SELECT_SCALES = (1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.75, 2.0, 2.5)
SELECT_FOLDS, SELECT_BLOCK_M, SELECT_PER_FOLD, SELECT_SEED = 5, 200.0, 120, 462


@dataclass(frozen=True)
class PhysicsOptions:
    """How POWDER is fed to the physics estimator (module doc, "Physics estimator").

    max_receivers : the heard receivers used, strongest first; ``None`` = all of them.
    per_receiver_sigma : each receiver's own fitted residual sigma (``fit["rx_sigma_db"]``) instead of the common one.
    correlated : shadowing correlated between receivers by their separation (``fit["correlation"]``).
    mapped : the fixed receivers' shadowing maps kriged from the fitting links (``fit["maps"]``, ``ShadowingMaps``);
        receivers then independent (not with ``correlated``).
    sigma_scale : factor on the whole error covariance's standard deviations (shadowing and calibration).
    point : the posterior's point estimate (``streamer.estimators.physics.POINT_ESTIMATES``; ``choose_point``).
    """

    max_receivers: int | None = MAX_RECEIVERS
    per_receiver_sigma: bool = False
    correlated: bool = False
    sigma_scale: float = 1.0
    mapped: bool = False
    point: str = "mean"

    def label(self) -> str:
        return (f"rx={self.max_receivers or 'all'} sigma={'per-rx' if self.per_receiver_sigma else 'common'} "
                f"{'map' if self.mapped else 'corr=yes' if self.correlated else 'corr=no'} scale={self.sigma_scale:g}"
                + ("" if self.point == "mean" else f" point={self.point}"))


#: The recipe before ``select_physics_options`` (16 strongest, i.i.d. errors of the fitted sigma): the baseline.
BASELINE_OPTIONS = PhysicsOptions()


@dataclass
class RenderedSample:
    """One POWDER sample rendered as IQ -> mel frames: every heard receiver, strongest first."""

    frames_dbm: np.ndarray  # [k, M, T]
    rx_enu_m: np.ndarray  # [k, 2]
    names: list
    tx_enu_m: np.ndarray  # [2]
    heard: np.ndarray  # [k] the daemon's detection rule on the frames


def render_sample(row: dict, fit: dict, origin: Origin, spec: FeatureSpec, sample_id: int) -> RenderedSample | None:
    """Every heard receiver of a POWDER sample as mel frames (module doc, steps 2-4); None when none heard."""
    from models.train.render import render_windows
    from receivers.simulator import SimulatedWorld

    heard = sorted([it for it in row["rx"].items() if it[1][0] > NOT_HEARD and _on_campus(it[1][1], it[1][2], origin)],
                   key=lambda it: -it[1][0])
    if not heard:
        return None
    config = from_dict({
        "network": {"target_freq_hz": FREQ_HZ, "origin": [origin.lat, origin.lon, 0.0], "area_margin_km": AREA_MARGIN_KM},
        "simulator": {"seed": 462 + sample_id, "shadowing_db": 0.0, "calibration_sigma_db": 0.0, "noise_figure_sigma_db": 0.0,
                      "path_loss_exponent": fit["n"], "ref_loss_db": free_space_loss_1km_db(FREQ_HZ), "tx_alt_m": TX_ALT_M},
        "receivers": [{"id": f"r{i}", "kind": "simulator", "lat": lat, "lon": lon, "alt_m": 0.0}
                      for i, (_, (_, lat, lon)) in enumerate(heard)],
    }, source="<powder>")
    world = SimulatedWorld(config)
    tx_m = _enu(*row["tx"], origin)
    dist = slant_distance_m(tx_m, TX_ALT_M, world.rx_enu_m, world.rx_alt_m)
    path_loss = log_distance_path_loss_db(dist, world.sim.ref_loss_db, world.sim.path_loss_exponent)
    frames = np.empty((len(heard), spec.n_mels, spec.n_frames), np.float32)
    start_ns = 1_650_000_000 * 10**9 + sample_id * 10**9
    for r, (name, (rss, _, _)) in enumerate(heard):
        p_rx = calibrated_dbm(rss, name, fit)
        iq = render_windows(world, tx_m, p_rx + path_loss[r], start_ns, sample_rate_hz=spec.sample_rate_hz,
                            n_samples=spec.n_samples, window_ids=[sample_id], receivers=[r])
        frames[r] = feature_module.mel_frames_dbm(iq[0, 0], spec, world.calibration_db[r])
    return RenderedSample(frames, np.asarray(world.rx_enu_m[:, :2], np.float64), [name for name, _ in heard], tx_m,
                          heard_mask(frames, spec).astype(bool))


def model_windows(sample: RenderedSample) -> Windows:
    """The model's input for a rendered sample: its ``MAX_RECEIVERS`` strongest receivers (the model's slots)."""
    k = min(len(sample.names), MAX_RECEIVERS)
    spec_shape = sample.frames_dbm.shape[1:]
    feats = np.zeros((1, MAX_RECEIVERS, *spec_shape), np.float32)
    enu = np.zeros((1, MAX_RECEIVERS, 3), np.float32)
    mask = np.zeros((1, MAX_RECEIVERS), np.float32)
    heard_slots = np.zeros((1, MAX_RECEIVERS), np.float32)
    feats[0, :k] = sample.frames_dbm[:k]
    enu[0, :k, :2] = sample.rx_enu_m[:k] / 1000.0
    mask[0, :k] = 1.0
    heard_slots[0, :k] = sample.heard[:k]
    return Windows(feats, enu, mask, (sample.tx_enu_m / 1000.0).astype(np.float32)[None], np.zeros((1, MAX_RECEIVERS), np.float32),
                   np.zeros(1, np.int32), heard_slots)


def sample_windows(row: dict, fit: dict, origin: Origin, spec: FeatureSpec, sample_id: int) -> tuple[Windows | None, list[str]]:
    """One POWDER sample as a ``Windows`` of one draw (the model's receivers, step 4) and those receivers' names."""
    sample = render_sample(row, fit, origin, spec, sample_id)
    if sample is None:
        return None, []
    return model_windows(sample), sample.names[:MAX_RECEIVERS]


def scorable(sample: RenderedSample | None) -> bool:
    """Step 5: at least three of the model's receivers hear (the same samples are scored for every method)."""
    return sample is not None and int(sample.heard[:MAX_RECEIVERS].sum()) >= 3


def physics_config(fit: dict, power_halfwidth_db: float = 3.0) -> PhysicsConfig:
    """The physics estimator's parameters for a fit (module doc); transmit power prior P_TX_DBM +- ``power_halfwidth_db``."""
    return PhysicsConfig(path_loss_exponent=fit["n"], ref_loss_db=free_space_loss_1km_db(FREQ_HZ),
                         shadowing_db=fit["sigma_db"], calibration_sigma_db=CALIBRATION_SIGMA_DB,
                         tx_power_min_dbm=P_TX_DBM - power_halfwidth_db, tx_power_max_dbm=P_TX_DBM + power_halfwidth_db,
                         grid_step_km=0.025, tx_alt_m=TX_ALT_M)


def _channel_power(sample: RenderedSample, spec: FeatureSpec):
    return DETECTION.apply(sample.frames_dbm, spec)


def physics_estimate(sample: RenderedSample, fit: dict, options: PhysicsOptions, spec: FeatureSpec,
                     power=None, drift_var_db2: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Position (m), covariance (m^2) and 68 % / 95 % credible ellipse radii (standard deviations) of the physics
    estimator on one rendered sample, fed as ``options`` say; ``drift_var_db2``: the calibration's drift since the
    fitting rows (dB^2, ``CalibrationAge.variance_db2``), added to every receiver's error variance."""
    power = power if power is not None else _channel_power(sample, spec)
    est, k = physics_estimator(sample, fit, options)
    if drift_var_db2 > 0:
        est.widen_calibration(np.full(k, drift_var_db2))
    res = est.estimate(power.signal_dbm[:k], power.heard[:k], np.ones(k, bool), power.detection_level_dbm[:k])
    return res.position_en_m, res.cov_en_m2, res.ellipse_scales


def physics_estimator(sample: RenderedSample, fit: dict, options: PhysicsOptions, power_halfwidth_db: float = 3.0,
                      area_margin_km: float = AREA_MARGIN_KM) -> tuple[PhysicsGrid, int]:
    """The estimator ``physics_estimate`` uses for a sample, and the number of (strongest) receivers it takes."""
    k = len(sample.names) if options.max_receivers is None else min(len(sample.names), options.max_receivers)
    rx = sample.rx_enu_m[:k]
    physics = physics_config(fit, power_halfwidth_db)
    error_cov = shadowing_map = None
    if options.mapped:
        sigma = np.array([fit["rx_sigma_db"].get(n, fit["sigma_db"]) if options.per_receiver_sigma else fit["sigma_db"]
                          for n in sample.names[:k]])
        shadowing_map = fit["maps"].for_receivers(sample.names[:k], sigma, options.sigma_scale)
    elif replace(options, point=BASELINE_OPTIONS.point) != BASELINE_OPTIONS:
        sigma = np.array([fit["rx_sigma_db"].get(n, fit["sigma_db"]) if options.per_receiver_sigma else fit["sigma_db"]
                          for n in sample.names[:k]])
        components = fit["correlation"] if options.correlated else ()
        error_cov = options.sigma_scale**2 * correlated_error_cov(rx, sigma, components, CALIBRATION_SIGMA_DB)
    return PhysicsGrid(physics, rx, np.zeros(k), search_area(rx, area_margin_km), error_cov_db2=error_cov,
                       shadowing_map=shadowing_map, point_estimate=options.point), k


def compare_variants(fit_rows: list[dict], origin: Origin, spec: FeatureSpec, options: PhysicsOptions, *,
                     folds: int = SELECT_FOLDS, block_m: float = SELECT_BLOCK_M, per_fold: int = SELECT_PER_FOLD,
                     seed: int = SELECT_SEED, log=None) -> dict:
    """Cross-validated scores (the same folds and rows as ``cross_validate``) of variants of one ``options``: each
    point estimate of ``POINT_ESTIMATES`` (the estimator's own, with its second moment and ellipses about the
    point), the transmit power prior (+-3 dB, +-6 dB around the calibrated 30 dBm) and the search-area margin
    (0.3 km, 0.6 km), these two with ``options.point``."""
    variants = [(point, 3.0, 0.3) for point in POINT_ESTIMATES] + [(options.point, 6.0, 0.3), (options.point, 3.0, 0.6)]
    got = {v: ([], [], []) for v in variants}
    truth = []

    def on_fold(f, train, pick, fit):
        if log:
            log(f"fold {f}: fit on {len(train)} rows; scoring {len(pick)} rows")

    for fit, sample, power in _held_out_samples(fit_rows, origin, spec, folds=folds, block_m=block_m, per_fold=per_fold,
                                                seed=seed, maps=options.mapped, on_fold=on_fold):  # fmt: skip
        truth.append(sample.tx_enu_m)
        for point, halfwidth, margin in variants:
            est, k = physics_estimator(sample, fit, replace(options, point=point), halfwidth, margin)
            res = est.estimate(power.signal_dbm[:k], power.heard[:k], np.ones(k, bool), power.detection_level_dbm[:k])
            positions, covs, radii = got[(point, halfwidth, margin)]
            positions.append(res.position_en_m)
            covs.append(res.cov_en_m2)
            radii.append(res.ellipse_scales)
    truth = np.array(truth)
    return {f"point={p} power=30+-{h:g}dBm margin={m:g}km": scores(*(np.array(a) for a in got[(p, h, m)][:2]), truth,
                                                                    np.array(got[(p, h, m)][2]))
            for p, h, m in variants}


def choose_point(cv: dict) -> str:
    """The point estimate with the smallest cross-validated median error (``{point: scores}``, fitting rows only): the
    metric the evaluation reports first. Ties go to the earlier of ``POINT_ESTIMATES`` (the mean first)."""
    return min(POINT_ESTIMATES, key=lambda p: (cv[p]["median_m"], POINT_ESTIMATES.index(p)))


def cross_validate_points(fit_rows: list[dict], origin: Origin, spec: FeatureSpec, options: PhysicsOptions,
                          per_fold: int = SELECT_PER_FOLD, log=None) -> dict:
    """``{point: scores}``: ``options`` with each of ``POINT_ESTIMATES``, on ``compare_variants``' folds and rows."""
    table = compare_variants(fit_rows, origin, spec, options, per_fold=per_fold, log=log)
    return {p: table[f"point={p} power=30+-3dBm margin=0.3km"] for p in POINT_ESTIMATES}


def fit_model(fit_rows: list[dict], origin: Origin, maps: bool = True) -> dict:
    """Offsets (``fit_offsets``), the shadowing correlation between receivers (``fit_correlation``) and, with
    ``maps``, the fixed receivers' shadowing maps (``ShadowingMaps.fit``)."""
    fit = fit_offsets(fit_rows, origin)
    fit["correlation"] = fit_correlation(fit.pop("residuals"))
    if maps:
        fit["maps"] = ShadowingMaps.fit(fit_rows, fit, origin)
    return fit


#: Shadowing maps: links are averaged in squares of ``MAP_BIN_M`` before kriging; maps are computed on a grid of
#: ``MAP_STEP_M`` over the fitting transmitters' bounding box + ``MAP_MARGIN_M`` and interpolated linearly.
MAP_BIN_M, MAP_STEP_M, MAP_MARGIN_M = 25.0, 50.0, 500.0
#: Random link pairs per receiver for the fit of the shadowing's spatial correlation (``ShadowingMaps.fit``).
MAP_PAIRS_PER_RX = 30_000


class ShadowingMaps(_KrigedMaps):
    """Each fixed receiver's shadowing field, kriged (Gaussian-process regression) from the fitting links' residuals.

    The kriging is ``streamer.estimators.survey``'s (its module doc: the model), the one the daemon's survey maps use; here
    the links are POWDER's fitting rows. Shadowing correlates 0.45 at 50-100 m of transmitter separation on
    POWDER (LOCALIZATION-FACTS). Links are averaged in ``MAP_BIN_M`` squares; receivers without a map (buses:
    they move) get mean 0 and sd sigma_r.
    """

    @classmethod
    def fit(cls, rows: list[dict], fit: dict, origin: Origin) -> "ShadowingMaps":
        links: dict[str, list] = {}
        for r in rows:
            tx = _enu(*r["tx"], origin)
            for name, (rss, lat, lon) in r["rx"].items():
                if rss <= FIT_THRESHOLD_DB or name.startswith("bus-") or name not in fit["offsets_db"] or not _on_campus(lat, lon, origin):
                    continue
                d = max(float(np.linalg.norm(_enu(lat, lon, origin) - tx)), 10.0)
                e = rss - (fit["A_db"] - 10.0 * fit["n"] * math.log10(d / 1000.0) + fit["offsets_db"][name])
                links.setdefault(name, []).append((tx[0], tx[1], e))
        links = {n: np.array(v) for n, v in links.items() if len(v) >= MIN_LINKS_RX_SIGMA}
        along = pair_residuals(links, MAP_PAIRS_PER_RX, seed=0)
        correlation = fit_correlation(along)
        txs = np.concatenate([v[:, :2] for v in links.values()])
        lo, hi = txs.min(axis=0) - MAP_MARGIN_M, txs.max(axis=0) + MAP_MARGIN_M
        east = np.arange(lo[0], hi[0] + MAP_STEP_M, MAP_STEP_M)
        north = np.arange(lo[1], hi[1] + MAP_STEP_M, MAP_STEP_M)
        sigma = {name: fit["rx_sigma_db"].get(name, fit["sigma_db"]) for name in links}
        maps = cls.krige(links, sigma, correlation, east, north, MAP_BIN_M)
        maps.table = correlation_table(along)
        return maps

    def for_receivers(self, names: list, sigma_db: np.ndarray, scale: float = 1.0,
                      calibration_sigma_db: float = CALIBRATION_SIGMA_DB):
        """``shadowing_map`` callable for ``PhysicsGrid`` (``streamer.estimators.survey.ShadowingMaps.for_receivers``) with
        POWDER's calibration sigma ``CALIBRATION_SIGMA_DB`` added."""
        return super().for_receivers(names, sigma_db, scale, calibration_sigma_db)


def _components(correlation) -> tuple:
    return tuple((round(w, 3), round(length)) for w, length in correlation)


def _spatial_folds(rows: list[dict], origin: Origin, folds: int, block_m: float, seed: int) -> np.ndarray:
    """Fold index of each row: square blocks of ``block_m`` of the transmitter position, blocks dealt to folds at random."""
    cells = [tuple(np.floor(_enu(*r["tx"], origin) / block_m).astype(int)) for r in rows]
    unique = sorted(set(cells))
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {c: int(order[i] % folds) for i, c in enumerate(unique)}
    return np.array([fold_of[c] for c in cells])


def _held_out_samples(fit_rows: list[dict], origin: Origin, spec: FeatureSpec, *, folds: int, block_m: float,
                      per_fold: int, seed: int, maps: bool, on_fold=None):
    """The spatial folds of ``cross_validate``: for each fold, fit on the other folds (``fit_model``), then yield
    ``(fit, sample, channel power)`` for up to ``per_fold`` random scorable rows of the fold, rendered like test rows.
    ``on_fold(f, train_rows, picked, fit)`` is called before each fold's rows."""
    fold = _spatial_folds(fit_rows, origin, folds, block_m, seed)
    rng = np.random.default_rng(seed)
    for f in range(folds):
        train = [r for r, g in zip(fit_rows, fold) if g != f]
        held = [i for i, g in enumerate(fold) if g == f]
        pick = rng.choice(held, size=min(per_fold, len(held)), replace=False)
        fit = fit_model(train, origin, maps=maps)
        if on_fold is not None:
            on_fold(f, train, pick, fit)
        for i in pick:
            sample = render_sample(fit_rows[i], fit, origin, spec, 100_000 + int(i))
            if scorable(sample):
                yield fit, sample, _channel_power(sample, spec)


def cross_validate(fit_rows: list[dict], origin: Origin, spec: FeatureSpec, *, folds: int = SELECT_FOLDS,
                   block_m: float = SELECT_BLOCK_M, per_fold: int = SELECT_PER_FOLD, seed: int = SELECT_SEED,
                   candidates=None, log=None) -> dict:
    """Spatial cross-validation over the fitting rows only: ``{options: scores}`` for every candidate.

    The fitting rows' transmitter positions are cut into ``block_m`` squares dealt to ``folds`` folds (whole
    blocks held out, like the grid split's cells); for each fold the offsets, sigmas and correlation are fitted
    on the other folds (``fit_model``) and ``per_fold`` random rows of the fold are rendered and scored exactly
    as the test rows are. The test split's rows are never read here.
    """
    candidates = candidates or [PhysicsOptions(m, per, cor, sc, mp) for m in SELECT_RECEIVERS for per, cor, mp in SELECT_STRUCTURES
                                for sc in SELECT_SCALES]
    pos = {c: [] for c in candidates}
    cov = {c: [] for c in candidates}
    radii = {c: [] for c in candidates}
    truth = []

    def on_fold(f, train, pick, fit):
        if log:
            log(f"fold {f}: fit on {len(train)} rows: n = {fit['n']:.2f}, sigma = {fit['sigma_db']:.2f} dB, "
                f"correlation {_components(fit['correlation'])}" + (f", map correlation {_components(fit['maps'].correlation)}"
                                                                      if "maps" in fit else "") + f"; scoring {len(pick)} rows")

    for fit, sample, power in _held_out_samples(fit_rows, origin, spec, folds=folds, block_m=block_m, per_fold=per_fold, seed=seed,
                                                maps=any(c.mapped for c in candidates), on_fold=on_fold):  # fmt: skip
        truth.append(sample.tx_enu_m)
        for c in candidates:
            p, v, k = physics_estimate(sample, fit, c, spec, power)
            pos[c].append(p)
            cov[c].append(v)
            radii[c].append(k)
    truth = np.array(truth)
    return {c: scores(np.array(pos[c]), np.array(cov[c]), truth, np.array(radii[c])) for c in candidates}


def choose_options(cv: dict) -> PhysicsOptions:
    """The selection rule on cross-validated scores (fitting rows only).

    For each (receivers, error structure), the smallest sigma scale whose 95 % ellipse covers at least 95 % of
    the held-out truths (the nominal rate; the largest scale if none does); among those, the smallest median error.
    """
    groups: dict = {}
    for c in sorted(cv, key=lambda c: c.sigma_scale):
        groups.setdefault((c.max_receivers, c.per_receiver_sigma, c.correlated, c.mapped), []).append(c)
    picked = [next((c for c in group if cv[c]["cov95"] >= 0.95), group[-1]) for group in groups.values()]
    return min(picked, key=lambda c: cv[c]["median_m"])


@dataclass(frozen=True)
class CalibrationAge:
    """The drift of the receivers' offsets fitted on the fitting rows' surveys (calendar months: the data's
    measurement campaigns), and what it implies for a row at another time.

    ``epochs_days`` / ``weights``: each survey's mean time (days since the Unix epoch) and its share of the fitted
    links: the pooled offsets are about that weighted mean of the surveys' offsets.
    """

    fit: DriftFit
    surveys: tuple[str, ...]
    epochs_days: np.ndarray
    weights: np.ndarray

    def variance_db2(self, timestamp: str) -> float:
        """Variance (dB^2) of the pooled offsets' error for a row at ``timestamp`` (``streamer.core.calibration_drift``)."""
        at = epoch_days(parse_calibrated_at(timestamp))
        return self.fit.drift.prediction_variance_db2(at, self.epochs_days, self.weights)

    def describe(self) -> str:
        d = self.fit.drift
        season = (f", seasonal {d.seasonal_db:.2f} +- {self.fit.seasonal_se:.2f} dB" if self.fit.seasonal_fitted
                  else ", seasonal not fitted (one separation)")
        return (f"calibration drift from surveys {', '.join(self.surveys)} ({self.fit.receivers} receivers in two or "
                f"more): random walk {d.random_walk_db_per_sqrt_day:.3f} +- {self.fit.random_walk_se:.3f} dB/sqrt(day)"
                + season)


def fit_calibration_age(fit_rows: list[dict], origin: Origin) -> CalibrationAge | None:
    """Per-month offsets of the fitting rows (``fit_offsets`` on each month's rows) and the drift they imply
    (``fit_drift``); ``None`` when the fitting rows hold fewer than two months. Test rows are never read."""
    months: dict[str, list[dict]] = {}
    for r in fit_rows:
        months.setdefault(r["timestamp"][:7], []).append(r)
    if len(months) < 2:
        return None
    fits = {m: fit_offsets(rs, origin) for m, rs in sorted(months.items())}
    names = sorted({n for f in fits.values() for n in f["offsets_db"]})
    surveys, epochs, links = [], [], []
    for m, f in fits.items():
        epochs.append(float(np.mean([epoch_days(parse_calibrated_at(r["timestamp"])) for r in months[m]])))
        links.append(f["links"])
        surveys.append(Survey(epochs[-1], np.array([f["offsets_db"].get(n, np.nan) for n in names]),
                              np.array([f["offsets_se_db"].get(n, np.nan) for n in names]), m))
    return CalibrationAge(fit_drift(surveys), tuple(fits), np.array(epochs), np.array(links, dtype=np.float64))


def evaluate_powder(models: list, *, split: str | Path = "grid", spec: FeatureSpec | None = None, limit: int | None = None,
                    root: Path = POWDER_DIR, options: PhysicsOptions | None = None, log=None,
                    calibration_age: bool = True) -> dict:
    """``{method: scores}`` on a POWDER split (shorthand or file) for each ONNX model, ``physics`` and ``centroid``.

    ``limit`` scores only the first ``limit`` test rows (quick checks); ``skipped`` counts within them.
    ``options`` feeds the physics estimator (default: ``options_for(split)``, the choice ``select`` stored for this
    split's test file, else ``BASELINE_OPTIONS``). ``calibration_age``: both estimators widen for the drift of the
    offsets between the fitting rows' months and each test row's time (``fit_calibration_age``).
    """
    spec = spec or FeatureSpec()
    options = options or options_for(split, root=root)
    rows = load_rows(root)
    fit_rows, test_rows = split_rows(rows, split, root)
    origin = origin_of(rows)
    fit = fit_model(fit_rows, origin, maps=options.mapped)
    if log:
        log(f"POWDER {split_path(split, root)}: fit on {len(fit_rows)} rows ({fit['links']} links): n = {fit['n']:.2f}, "
            f"sigma = {fit['sigma_db']:.2f} dB; test rows {len(test_rows)}" + (f", scoring the first {limit}" if limit else ""))
        log(f"physics fed as: {options.label()}; shadowing correlation between receivers {_components(fit['correlation'])}"
            + (f", along transmitter positions (maps) {_components(fit['maps'].correlation)}" if "maps" in fit else ""))
    age = fit_calibration_age(fit_rows, origin) if calibration_age else None
    if log and age is not None:
        log(age.describe())
    samples, drift_var = [], []
    for i, row in enumerate(test_rows[:limit] if limit else test_rows):
        sample = render_sample(row, fit, origin, spec, i)
        if scorable(sample):
            samples.append(sample)
            drift_var.append(0.0 if age is None else age.variance_db2(row["timestamp"]))
    if log and age is not None:
        log(f"calibration sigma widened for the test rows' age: {CALIBRATION_SIGMA_DB:.1f} dB -> "
            f"{math.sqrt(CALIBRATION_SIGMA_DB**2 + float(np.median(drift_var))):.2f} dB (median)")
    data = Windows.concat([model_windows(sm) for sm in samples])
    truth = data.tx_enu_km.astype(np.float64) * 1e3
    table = {}
    sites = np.stack([site_propagation(physics_config(fit), math.sqrt(CALIBRATION_SIGMA_DB**2 + v)) for v in drift_var])
    for path in models:  # a model that takes the site is told the fitted exponent and sigma, as by heimdall calibrate
        for method, told in model_methods(path).items():
            # One batch: run_onnx slices the area rows per batch but feeds the site rows whole.
            position, cov, scales = run_onnx(Path(path), data, batch=max(len(data), 1), site=sites if told else None,
                                             area=np.stack([search_area_row(search_area(sm.rx_enu_m[:MAX_RECEIVERS], AREA_MARGIN_KM))
                                                            for sm in samples]) if told else None)
            table[method] = scores(position, cov, truth, scales)
            table[f"{method}+site"] = scores(position, site_calibrated(position, cov, truth), truth, scales)
    pos = np.empty((len(samples), 2))
    cov = np.empty((len(samples), 2, 2))
    radii = np.empty((len(samples), len(ELLIPSE_PROBABILITIES)))
    for b, sample in enumerate(samples):
        pos[b], cov[b], radii[b] = physics_estimate(sample, fit, options, spec, drift_var_db2=drift_var[b])
    table["physics"] = scores(pos, cov, truth, radii)
    table["centroid"] = scored(run_centroid(data), truth)
    skipped = (min(limit, len(test_rows)) if limit else len(test_rows)) - len(data)
    for s in table.values():
        s["skipped"] = int(skipped)
    return table


#: Where ``python -m models.train.powder select`` stores its choice, per split; ``evaluate_powder`` reads it.
OPTIONS_FILE = Path(__file__).with_name("powder_physics_options.json")


def split_key(split: str | Path, root: Path = POWDER_DIR) -> str:
    """The key of a split in ``OPTIONS_FILE``: its test file's path under ``SPLIT_DIR`` (shorthand or path alike)."""
    path = Path(split_path(split, root)).resolve()
    try:
        return path.relative_to((root / SPLIT_DIR).resolve()).as_posix()
    except ValueError:
        return path.name


def options_for(split: str | Path, path: Path = OPTIONS_FILE, root: Path = POWDER_DIR) -> PhysicsOptions:
    """The physics options ``select`` stored for ``split`` in ``path``; ``BASELINE_OPTIONS`` when none is stored."""
    if not path.is_file():
        return BASELINE_OPTIONS
    stored = json.loads(path.read_text()).get(split_key(split, root))
    return PhysicsOptions(**stored["options"]) if stored else BASELINE_OPTIONS


def main(argv: list[str] | None = None) -> int:
    """``python -m models.train.powder select [--split grid|random|PATH]``: choose the physics options by CV (fitting rows only)."""
    import argparse
    from dataclasses import asdict

    parser = argparse.ArgumentParser(prog="python -m models.train.powder", description=main.__doc__)
    parser.add_argument("command", choices=("select", "select-point", "residuals", "variants"),
                        help="select: choose the physics options by CV; select-point: choose the stored options' point "
                             "estimate by CV (BASELINE_OPTIONS' for a split without stored options) and store it; "
                             "residuals: print the fitting links' residual correlations (between receivers, and along "
                             "transmitter positions) and their fits; variants: CV scores of the stored choice's point "
                             "estimate, power prior and area margin")
    parser.add_argument("--split", default="grid", help="grid, random or a split file: its test rows are left out of everything")
    parser.add_argument("--per-fold", type=int, default=SELECT_PER_FOLD, help="held-out rows scored per fold")
    parser.add_argument("--out", type=Path, default=OPTIONS_FILE, help="JSON file to store the choice in (merged by split)")
    args = parser.parse_args(argv)
    split = args.split if args.split in SPLITS else Path(args.split)
    rows = load_rows()
    fit_rows, _ = split_rows(rows, split)
    origin = origin_of(rows)
    if args.command == "residuals":
        fit = fit_offsets(fit_rows, origin)
        between = fit.pop("residuals")
        fit["correlation"] = fit_correlation(between)
        maps = ShadowingMaps.fit(fit_rows, fit, origin)
        print(f"fit on {len(fit_rows)} rows of {split_name(split)} ({fit['links']} links): n = {fit['n']:.2f}, "
              f"sigma = {fit['sigma_db']:.2f} dB; per-receiver sigma (>= {MIN_LINKS_RX_SIGMA} links) median "
              f"{np.median(list(fit['rx_sigma_db'].values())):.2f} dB, range {min(fit['rx_sigma_db'].values()):.2f}-"
              f"{max(fit['rx_sigma_db'].values()):.2f} dB")
        for title, table, comps in (("two receivers, one transmission, vs receiver separation", correlation_table(between),
                                     fit["correlation"]),
                                    ("one receiver, two transmissions, vs transmitter separation", maps.table, maps.correlation)):
            print(f"residual correlation, {title}: fit {_components(comps)}")
            bins = list(zip(CORR_BINS_M[:-1], CORR_BINS_M[1:]))
            for centre, rho, count in table:
                lo, hi = next((lo, hi) for lo, hi in bins if lo <= centre < hi)
                print(f"  {lo:>6.0f}-{hi:<6.0f} m  pairs {count:>8.0f}  correlation {rho:+.3f}")
        return 0
    if args.command == "select-point":
        options = options_for(split)
        cv = cross_validate_points(fit_rows, origin, FeatureSpec(), options, per_fold=args.per_fold, log=print)
        print(format_table(f"cross-validation on the fitting rows of {split_name(split)}, {options.label()}",
                           {f"point={p}": s for p, s in cv.items()}))
        chosen = replace(options, point=choose_point(cv))
        best = cv[chosen.point]
        print(f"chosen: point={chosen.point} (CV {best['median_m']:.0f} m median, cov95 {best['cov95']:.3f})")
        stored = json.loads(args.out.read_text()) if args.out.is_file() else {}
        entry = stored.setdefault(split_key(split), {})
        command = f"python -m models.train.powder select-point --split {args.split} --per-fold {args.per_fold}"
        entry.update({"options": asdict(chosen), "point_cv": cv, "point_command": command})
        args.out.write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")
        return 0
    if args.command == "variants":
        options = options_for(split)
        table = compare_variants(fit_rows, origin, FeatureSpec(), options, per_fold=args.per_fold, log=print)
        print(format_table(f"cross-validation on the fitting rows of {split_name(split)}, {options.label()}", table))
        return 0
    cv = cross_validate(fit_rows, origin, FeatureSpec(), per_fold=args.per_fold, log=print)
    print(format_table(f"cross-validation on the fitting rows of {split_name(split)}", {c.label(): s for c, s in cv.items()}))
    chosen = choose_options(cv)
    print(f"chosen: {chosen.label()} (CV {cv[chosen]['median_m']:.0f} m median, cov68 {cv[chosen]['cov68']:.3f}, "
          f"cov95 {cv[chosen]['cov95']:.3f}); baseline {BASELINE_OPTIONS.label()}: CV {cv[BASELINE_OPTIONS]['median_m']:.0f} m, "
          f"cov95 {cv[BASELINE_OPTIONS]['cov95']:.3f}")
    stored = json.loads(args.out.read_text()) if args.out.is_file() else {}
    stored[split_key(split)] = {"options": asdict(chosen), "cv": cv[chosen], "baseline_cv": cv[BASELINE_OPTIONS],
                                 "command": f"python -m models.train.powder select --split {args.split} --per-fold {args.per_fold}"}
    args.out.write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
