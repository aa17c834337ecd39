"""POWDER real received power (462.7 MHz, University of Utah campus) as receiver IQ, scored like the simulated sets.

Data: ../shared/localization-data/powder-rss-462mhz beside the checkout (``POWDER_DIR`` overrides), ``single_tx.csv`` (RSS in
uncalibrated dB per receiver, -101 = not heard; 29 fixed receivers, 11 shuttle buses with per-sample
positions; GPS truth). The test rows are those of a split file (``{timestamp: {"rx_data": [[rss, lat, lon,
name], ...], "tx_coords": [[lat, lon]], ...}}``, any of ``Separated_Dataset_JSON/train_test_splits``):
``grid`` (default) is shorthand for ``grid_split/grid_test.json``, ``random`` for ``random_split/random_test.json``.
A test timestamp found in ``single_tx.csv`` is read from there; one that is not (the ``stationary*`` special
cases, 13 of ``november.json``) is read from the split file itself (same RSS and positions: the two agree on
every heard link of the grid split), and must have one transmitter. The fitting set is every row of
``single_tx.csv`` not in the split file, minus ``unused.json``, ``special_test_cases/indoor.json`` and
``off_campus.json`` (the folder's README recipe).

From measured RSS to IQ, exactly:

1. Offsets (fitting set only, links with RSS > -95 dB, the README's reference rule): least squares of
   ``RSS_ir = A - 10 n log10(d_ir / 1 km) + o_r`` over a common A, exponent n and one offset o_r per receiver
   (sum of o_r = 0); d is the horizontal distance (ENU from the fixed receivers' centroid, pymap3d),
   at least 10 m. The residual standard deviation is the fitted shadowing sigma. The fit is
   ``streamer.calibrate.fit_path_loss``, the same one ``heimdall calibrate`` runs on an operator's receivers.
2. Calibrated power: ``P_ir = RSS_ir - o_r - A + (P_TX_DBM - FSPL_1km(462.7 MHz))`` dBm, i.e. levels as a
   1 W transmitter with a free-space 1 km loss and the fitted exponent would give. Receivers never seen in the
   fitting set keep o_r = 0.
3. IQ: for each test sample a simulated world (``receivers.simulator.SimulatedWorld``) is built with the
   sample's receivers at their measured positions, shadowing 0 dB, calibration error 0 dB, the fitted exponent,
   the free-space 1 km loss and the simulator's defaults otherwise (noise figure 6 dB, oscillator errors).
   Receiver r is rendered alone by ``render_windows`` with transmit power ``P_ir + PL(d_ir)`` (the world's own
   path loss at the true position), so it receives exactly ``P_ir`` dBm plus thermal noise. All receivers of
   a sample share the window id, hence the same FM audio. Frames: ``streamer.features.mel_frames_dbm``.
4. Receivers per sample: RSS -101 ("not received or missing") is treated as absent, not as "heard nothing":
   in the data many -101 receivers sit closer to the transmitter than receivers that heard it well (e.g. the
   first grid-test sample: four -101 receivers at 0.8-1.5 km while one at 1.5 km reads -60 dBm calibrated),
   so they are mostly missing data, and rendering them as noise-only windows would feed both estimators a
   false "too weak here" (the physics estimator's censoring term then drags its estimate away; measured:
   median 1.6 km on the first 40 grid-test samples). The model takes at most 16 receivers, POWDER has up to
   25 heard: both methods get the same subset, the heard receivers by decreasing measured RSS, up to 16.
   Receivers reported more than 5 km from the fixed receivers' centroid (bogus bus GPS fixes) are left out,
   here and in the fit.
5. A sample is scored only if at least three of those receivers hear by the daemon's rule
   (``dataset.heard_mask``); the count left out is reported as ``skipped``.

Physics estimator: ``PhysicsEstimator`` with the fitted exponent and sigma, the free-space 1 km loss,
calibration sigma 1 dB, transmit power prior [27, 33] dBm, search area = the receivers' bounding box + 0.3 km,
grid step 25 m; transmitter at 1.5 m, receivers at 0 m (heights are not in the data).
"""

from __future__ import annotations

import ast
import csv
import json
import math
import os
from pathlib import Path

import numpy as np

from models.train.dataset import (CHANNEL_BANDWIDTH_HZ, DETECTION_SNR_DB, MAX_RECEIVERS, NOISE_BAND_FRACTION, Windows,
                                  free_space_loss_1km_db, heard_mask)
from streamer import features as feature_module
from streamer.calibrate import fit_path_loss
from streamer.config import PhysicsConfig, from_dict
from streamer.errors import HeimdallError
from streamer.features import FeatureSpec
from streamer.geodesy import Origin, geodetic_to_enu_m, search_area
from streamer.physics import PhysicsEstimator, channel_power, log_distance_path_loss_db, slant_distance_m

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
    """Least-squares log-distance fit with per-receiver offsets (module doc, step 1; ``streamer.calibrate.fit_path_loss``)."""
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
            "offsets_db": {n: float(fit.offsets_db[i]) for n, i in index.items() if fit.fitted[i]}, "links": fit.links}


def calibrated_dbm(rss: float, name: str, fit: dict) -> float:
    """Measured RSS (dB, uncalibrated) -> dBm at the antenna (module doc, step 2)."""
    return rss - fit["offsets_db"].get(name, 0.0) - fit["A_db"] + P_TX_DBM - free_space_loss_1km_db(FREQ_HZ)


def sample_windows(row: dict, fit: dict, origin: Origin, spec: FeatureSpec, sample_id: int) -> tuple[Windows | None, list[str]]:
    """One POWDER sample as a ``Windows`` of one draw (receivers chosen per step 4) and the receiver names."""
    from receivers.simulator import SimulatedWorld, render_windows

    heard = sorted([it for it in row["rx"].items() if it[1][0] > NOT_HEARD and _on_campus(it[1][1], it[1][2], origin)],
                   key=lambda it: -it[1][0])
    chosen = heard[:MAX_RECEIVERS]
    if not chosen:
        return None, []
    config = from_dict({
        "network": {"target_freq_hz": FREQ_HZ, "origin": [origin.lat, origin.lon, 0.0], "area_margin_km": 0.3},
        "simulator": {"seed": 462 + sample_id, "shadowing_db": 0.0, "calibration_sigma_db": 0.0,
                      "path_loss_exponent": fit["n"], "ref_loss_db": free_space_loss_1km_db(FREQ_HZ), "tx_alt_m": TX_ALT_M},
        "receivers": [{"id": f"r{i}", "kind": "simulator", "lat": lat, "lon": lon, "alt_m": 0.0}
                      for i, (_, (_, lat, lon)) in enumerate(chosen)],
    }, source="<powder>")
    world = SimulatedWorld(config)
    tx_m = _enu(*row["tx"], origin)
    dist = slant_distance_m(tx_m, TX_ALT_M, world.rx_enu_m, world.rx_alt_m)
    path_loss = log_distance_path_loss_db(dist, world.sim.ref_loss_db, world.sim.path_loss_exponent)
    frames = np.empty((len(chosen), spec.n_mels, spec.n_frames), np.float32)
    start_ns = 1_650_000_000 * 10**9 + sample_id * 10**9
    for r, (name, (rss, _, _)) in enumerate(chosen):
        p_rx = calibrated_dbm(rss, name, fit)
        iq = render_windows(world, tx_m, p_rx + path_loss[r], start_ns, sample_rate_hz=spec.sample_rate_hz,
                            n_samples=spec.n_samples, window_ids=[sample_id], receivers=[r])
        frames[r] = feature_module.mel_frames_dbm(iq[0, 0], spec, world.calibration_db[r])
    k = len(chosen)
    feats = np.zeros((1, MAX_RECEIVERS, spec.n_mels, spec.n_frames), np.float32)
    enu = np.zeros((1, MAX_RECEIVERS, 3), np.float32)
    mask = np.zeros((1, MAX_RECEIVERS), np.float32)
    heard_slots = np.zeros((1, MAX_RECEIVERS), np.float32)
    feats[0, :k] = frames
    enu[0, :k] = world.rx_enu_m / 1000.0
    mask[0, :k] = 1.0
    heard_slots[0, :k] = heard_mask(frames, spec)
    return Windows(feats, enu, mask, (tx_m / 1000.0).astype(np.float32)[None], np.zeros((1, MAX_RECEIVERS), np.float32),
                   np.zeros(1, np.int32), heard_slots), [name for name, _ in chosen]


def evaluate_powder(models: list, *, split: str | Path = "grid", spec: FeatureSpec | None = None, limit: int | None = None,
                    root: Path = POWDER_DIR, log=None) -> dict:
    """``{method: scores}`` on a POWDER split (shorthand or file) for each ONNX model, ``physics`` and ``centroid``.

    ``limit`` scores only the first ``limit`` test rows (quick checks); ``skipped`` counts within them.
    """
    from models.train.evaluate import run_centroid, run_onnx, scores

    spec = spec or FeatureSpec()
    rows = load_rows(root)
    fit_rows, test_rows = split_rows(rows, split, root)
    origin = origin_of(rows)
    fit = fit_offsets(fit_rows, origin)
    if log:
        log(f"POWDER {split_path(split, root)}: fit on {len(fit_rows)} rows ({fit['links']} links): n = {fit['n']:.2f}, "
            f"sigma = {fit['sigma_db']:.2f} dB; test rows {len(test_rows)}" + (f", scoring the first {limit}" if limit else ""))
    parts, names = [], []
    for i, row in enumerate(test_rows[:limit] if limit else test_rows):
        data, chosen = sample_windows(row, fit, origin, spec, i)
        if data is not None and data.heard.sum() >= 3:
            parts.append(data)
            names.append(chosen)
    data = Windows.concat(parts)
    truth = data.tx_enu_km.astype(np.float64) * 1e3
    table = {Path(p).stem: scores(*run_onnx(Path(p), data), truth) for p in models}
    pos = np.empty((len(data), 2))
    cov = np.empty((len(data), 2, 2))
    physics = PhysicsConfig(path_loss_exponent=fit["n"], ref_loss_db=free_space_loss_1km_db(FREQ_HZ),
                            shadowing_db=fit["sigma_db"], calibration_sigma_db=1.0, tx_power_min_dbm=P_TX_DBM - 3,
                            tx_power_max_dbm=P_TX_DBM + 3, grid_step_km=0.025, tx_alt_m=TX_ALT_M)
    for b in range(len(data)):
        k = int(data.rx_mask[b].sum())
        rx = data.rx_enu_km[b, :k].astype(np.float64) * 1e3
        est = PhysicsEstimator(physics, rx, np.zeros(k), search_area(rx, 0.3))
        power = channel_power(data.features_dbm[b, :k], spec, channel_bandwidth_hz=CHANNEL_BANDWIDTH_HZ,
                              detection_snr_db=DETECTION_SNR_DB, noise_max_offset_hz=NOISE_BAND_FRACTION * spec.sample_rate_hz)
        res = est.estimate(power.signal_dbm, power.heard, np.ones(k, bool), power.detection_level_dbm)
        pos[b], cov[b] = res.position_en_m, res.cov_en_m2
    table["physics"] = scores(pos, cov, truth)
    table["centroid"] = scores(*run_centroid(data), truth)
    skipped = (min(limit, len(test_rows)) if limit else len(test_rows)) - len(data)
    for s in table.values():
        s["skipped"] = int(skipped)
    return table
