"""``heimdall calibrate``: each receiver's ``calibration_db`` (and the path-loss exponent) from known transmissions.

Observations file (CSV, one row per transmission; lines starting with ``#`` and blank lines are skipped)::

    # transmitter lat/lon (deg, WGS84), antenna altitude (m), transmit power (dBm), then dBm per receiver
    lat,lon,alt_m,tx_power_dbm,giaveno,torino,milano
    45.101,7.512,200,37.0,-81.25,-77.90,
    44.873,8.204,200,40.0,-95.10,,-99.42

- ``lat``, ``lon`` (required): the transmitter position in degrees.
- ``alt_m`` (optional): its antenna altitude above the ellipsoid (m); default ``estimator.physics.tx_alt_m``.
- ``tx_power_dbm`` (optional): its transmit power (dBm). Without it a common transmit level is fitted and the
  offsets are only relative: their mean is constrained to 0, so the calibration values keep their mean.
- every other column is a receiver id of the config, holding the power (dBm) the daemon reads with the
  receiver's *current* ``calibration_db``; an empty cell = not heard. Use transmissions well above each
  receiver's noise floor: weak ones that go unheard are missing, which biases the fit upwards.

Or a SigMF recording of the network (``heimdall record``) with each transmission annotated with the
transmitter's position (``signal:emitter``): ``streamer.tools.observations`` replays it through the daemon's
pipeline and reads the same powers; ``--observations-out`` writes them as this CSV.

Model (the daemon's, ``streamer.estimators.physics``): ``measured_ir = P_i - PL(d_ir) + offset_r + shadowing``, with
``PL = ref_loss_db + 10 n log10(d / 1 km)`` (``log_distance_path_loss_db``), d the 3-D distance
(``slant_distance_m``, ENU from ``network_geometry``), ``ref_loss_db`` and n from ``estimator.physics``
(n fitted with ``--fit-exponent``). Least squares gives ``offset_r``; the new ``calibration_db = old - offset``.
``--fit-sigma`` also writes the residuals' standard deviation as ``estimator.physics.shadowing_db``: with the
exponent, what the physics estimator and the model (its ``site_propagation`` input) are told about the site.
A receiver with fewer than ``MIN_OBSERVATIONS`` readings is left unchanged and named in an error line.

The fit itself is ``streamer.core.propagation.fit_path_loss`` (its doctest is there), the one implementation,
which ``models/train/powder.py`` also runs on POWDER.

Calibration age: ``--calibrated-at DATE`` (ISO-8601; default: today, UTC) is written as each calibrated
receiver's ``calibrated_at``. ``--drift-survey DATE=FILE``, given two or more times, fits how fast the
calibrations drift instead (``streamer.core.calibration_drift.fit_drift``): each FILE is an observations file
(or SigMF collection) of the same network at DATE, read with the same ``calibration_db``; the per-receiver
offsets of each survey, relative to the other receivers, and their changes versus the time between surveys
give ``estimator.physics.calibration_drift_db_per_sqrt_day`` (and ``calibration_seasonal_db`` when the
surveys' separations spread over a month or more), printed with their standard errors as config lines to paste.
"""


from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamer.core.errors import ConfigError
from streamer.core.propagation import (
    MIN_OBSERVATIONS,
    PathLossFit,
    fit_path_loss,
    log_distance_path_loss_db,
    slant_distance_m,
)
from streamer.tools import describe_with_module_doc
from streamer.tools.observations import Observations, ObservationsError, observations_csv, read_observations

# ----------------------------------------------------------------------------------------------------
# Config in, corrections out


@dataclass(frozen=True)
class Calibration:
    """Result per configured receiver (config order) plus the fit; ``new_db`` equals ``old_db`` where unchanged."""

    receiver_ids: tuple[str, ...]
    old_db: np.ndarray
    new_db: np.ndarray
    fit: PathLossFit          # per-receiver arrays in config order (receivers without a column: n_obs 0)
    fit_exponent: bool
    refused: dict[str, str]   # receiver id -> why it is left unchanged (it has a column, too few readings)
    absent: tuple[str, ...]   # receivers without a column in the observations: left unchanged
    fit_sigma: bool = False   # write the residual sigma as estimator.physics.shadowing_db
    calibrated_at: str | None = None  # ISO-8601, written as each calibrated receiver's calibrated_at


def link_geometry(config, obs: Observations) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Transmitter positions ``[N, 2]`` (config's ENU, m), slant distances ``[N, R]`` (m) and readings ``[N, R]``
    (dBm, NaN = not heard) in config receiver order."""
    from streamer.core.geodesy import geodetic_to_enu_m, network_geometry

    ids = tuple(rx.id for rx in config.receivers)
    origin, rx_enu_m, _ = network_geometry(config)
    rx_alt_m = np.array([rx.alt_m for rx in config.receivers], dtype=np.float64)
    tx_alt_m = obs.alt_m if obs.alt_m is not None else np.full(len(obs.lat), config.estimator.physics.tx_alt_m)
    tx_en_m = geodetic_to_enu_m(obs.lat, obs.lon, tx_alt_m, origin).reshape(-1, 3)[:, :2]
    measured = np.full((len(obs.lat), len(ids)), np.nan)
    for k, rx_id in enumerate(obs.receiver_ids):
        measured[:, ids.index(rx_id)] = obs.measured_dbm[:, k]
    return tx_en_m, slant_distance_m(tx_en_m, tx_alt_m, rx_enu_m, rx_alt_m), measured


def residuals_db(cal: "Calibration", obs: Observations, distance_m: np.ndarray, measured: np.ndarray,
                 ref_loss_db: float) -> np.ndarray:
    """``[N, R]`` readings minus the fitted model (offsets included; NaN where not heard or not fitted), dB."""
    fit = cal.fit
    level = (obs.tx_power_dbm[:, None] - ref_loss_db) if not fit.relative else fit.level_db
    model = level - log_distance_path_loss_db(distance_m, 0.0, fit.exponent) + fit.offsets_db[None, :]
    return np.where(fit.fitted[None, :], measured - model, np.nan)


def calibrate(config, obs: Observations, *, fit_exponent: bool = False, fit_sigma: bool = False,
              calibrated_at: str | None = None) -> Calibration:
    """Fit offsets (and n) from ``obs`` against ``config``'s receivers and ``estimator.physics`` (module doc);
    ``fit_sigma``: the written config also gets the residual sigma as ``shadowing_db``; ``calibrated_at``: when
    the observations were taken (ISO-8601), written as each calibrated receiver's ``calibrated_at``."""
    physics = config.estimator.physics
    ids = tuple(rx.id for rx in config.receivers)
    _, distance_m, measured = link_geometry(config, obs)
    mask = np.isfinite(measured)
    try:
        fit = fit_path_loss(distance_m, np.nan_to_num(measured), mask,
                            tx_power_dbm=obs.tx_power_dbm, ref_loss_db=physics.ref_loss_db,
                            exponent=None if fit_exponent else physics.path_loss_exponent)
    except ValueError as exc:
        raise ObservationsError(f"{obs.source}: cannot calibrate: {exc}") from None
    old = np.array([rx.calibration_db for rx in config.receivers], dtype=np.float64)
    new = np.where(fit.fitted, old - np.nan_to_num(fit.offsets_db), old)
    absent = tuple(rx_id for rx_id in ids if rx_id not in obs.receiver_ids)
    refused = {rx_id: f"{fit.n_obs[r]} observation(s), need at least {MIN_OBSERVATIONS}"
               for r, rx_id in enumerate(ids) if not fit.fitted[r] and rx_id not in absent}
    if fit_sigma and not fit.sigma_db >= MIN_SIGMA_DB:
        raise ObservationsError(f"{obs.source}: cannot fit the shadowing sigma: the residuals' standard deviation is "
                                f"{fit.sigma_db:.3f} dB over {fit.links} readings (expected >= {MIN_SIGMA_DB} dB; too few "
                                "readings for the unknowns?)")
    return Calibration(ids, old, new, fit, fit_exponent, refused, absent, fit_sigma, calibrated_at)


#: Decimals written for ``calibration_db`` (dB) and a fitted ``path_loss_exponent``.
CALIBRATION_DECIMALS, EXPONENT_DECIMALS = 2, 3
#: Smallest residual sigma ``--fit-sigma`` writes (dB): below it the readings cannot have measured shadowing.
MIN_SIGMA_DB = 0.1


def written_values(calibration: Calibration) -> tuple[np.ndarray, float | None]:
    """What ``updated_toml`` writes: each receiver's ``calibration_db`` (rounded where fitted, unchanged elsewhere),
    in receiver order, and the rounded exponent when it was fitted (else None)."""
    fit = calibration.fit
    values = np.array([round(float(new), CALIBRATION_DECIMALS) if ok else float(old)
                       for new, old, ok in zip(calibration.new_db, calibration.old_db, fit.fitted)])
    return values, (round(fit.exponent, EXPONENT_DECIMALS) if calibration.fit_exponent else None)


def updated_toml(text: str, calibration: Calibration) -> str:
    """``text`` with each calibrated receiver's ``calibration_db`` (and a fitted exponent) replaced; comments kept."""
    import tomlkit

    doc = tomlkit.parse(text)
    values, exponent = written_values(calibration)
    new = {rx_id: value for rx_id, value, ok in zip(calibration.receiver_ids, values, calibration.fit.fitted) if ok}
    for table in doc.get("receivers", []):
        rx_id = table.get("id")
        if rx_id in new:
            table["calibration_db"] = float(new[rx_id])
            if calibration.calibrated_at is not None:
                table["calibrated_at"] = calibration.calibrated_at
    physics_keys = {}
    if exponent is not None:
        physics_keys["path_loss_exponent"] = exponent
    if calibration.fit_sigma:
        physics_keys["shadowing_db"] = round(calibration.fit.sigma_db, CALIBRATION_DECIMALS)
    if physics_keys:
        estimator = doc.get("estimator")
        if estimator is None:
            estimator = tomlkit.table(is_super_table=True)
            doc.add("estimator", estimator)
        physics = estimator.get("physics")
        if physics is None:
            physics = tomlkit.table()
            estimator.add("physics", physics)
        for key, value in physics_keys.items():
            physics[key] = value
    return tomlkit.dumps(doc)


# ----------------------------------------------------------------------------------------------------
# Report and command line


def report_dict(cal: Calibration, written: str | None) -> dict:
    """The report as plain JSON-ready data."""
    fit = cal.fit

    def num(x) -> float | None:
        return None if not math.isfinite(float(x)) else round(float(x), 4)

    receivers = {}
    for r, rx_id in enumerate(cal.receiver_ids):
        why = "no column in the observations" if rx_id in cal.absent else cal.refused.get(rx_id)
        receivers[rx_id] = {"n": int(fit.n_obs[r]), "offset_db": num(fit.offsets_db[r]), "offset_se_db": num(fit.offset_se_db[r]),
                            "residual_sigma_db": num(fit.residual_sigma_db[r]), "calibration_db_old": float(cal.old_db[r]),
                            "calibration_db_new": num(cal.new_db[r]), "unchanged_because": why}
    return {"receivers": receivers, "path_loss_exponent": num(fit.exponent), "path_loss_exponent_se": num(fit.exponent_se),
            "exponent_fitted": cal.fit_exponent, "relative": fit.relative, "common_level_db": num(fit.level_db),
            "sigma_db": num(fit.sigma_db), "sigma_fitted": cal.fit_sigma, "links": fit.links,
            "calibrated_at": cal.calibrated_at, "written": written}


def format_report(cal: Calibration, ref_loss_db: float) -> str:
    """Human-readable report: one line per receiver, then the exponent and the residual sigma."""
    fit = cal.fit
    lines = [f"{'receiver':<20}{'n':>6}{'offset_db':>11}{'se_db':>8}{'sigma_db':>10}   calibration_db"]
    for r, rx_id in enumerate(cal.receiver_ids):
        if not fit.fitted[r]:
            why = "no column in the observations" if rx_id in cal.absent else cal.refused[rx_id]
            lines.append(f"{rx_id:<20}{fit.n_obs[r]:>6}{'-':>11}{'-':>8}{'-':>10}   {cal.old_db[r]:.2f} unchanged ({why})")
        else:
            lines.append(f"{rx_id:<20}{fit.n_obs[r]:>6}{fit.offsets_db[r]:>11.2f}{fit.offset_se_db[r]:>8.2f}"
                         f"{fit.residual_sigma_db[r]:>10.2f}   {cal.old_db[r]:.2f} -> {cal.new_db[r]:.2f}")
    if cal.fit_exponent:
        lines.append(f"path-loss exponent: {fit.exponent:.3f} +- {fit.exponent_se:.3f} (fitted)")
    else:
        lines.append(f"path-loss exponent: {fit.exponent:.3f} (estimator.physics, fixed)")
    if fit.relative:
        lines.append(f"no tx_power_dbm column: a common transmit power was fitted ({fit.level_db + ref_loss_db:.1f} "
                     f"+- {fit.level_se_db:.1f} dBm), so the offsets are relative (constrained to mean 0)")
    lines.append(f"residual sigma {fit.sigma_db:.2f} dB over {fit.links} readings"
                 + (" (written as estimator.physics.shadowing_db)" if cal.fit_sigma else ""))
    if cal.calibrated_at is not None:
        lines.append(f"calibrated_at = {cal.calibrated_at!r} (each calibrated receiver's; the estimators widen for "
                     "the drift since then where estimator.physics sets one)")
    return "\n".join(lines)


def write_config(path: Path, text: str) -> None:
    """Write ``text`` atomically, then prove it loads (``streamer.config.load``)."""
    from streamer.config import load

    tmp = path.with_name(f".{path.name}.calibrate.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the calibrated config: {exc.strerror}") from None
    try:
        load(tmp)
    except ConfigError:
        tmp.unlink()
        raise
    os.replace(tmp, path)
    load(path)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m streamer.tools.calibrate``."""
    parser = argparse.ArgumentParser(prog="heimdall calibrate")
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``heimdall calibrate`` (the observations format is the module doc, shown after them)."""
    describe_with_module_doc(parser, __doc__)
    parser.add_argument("-c", "--config", required=True, type=Path, help="TOML config whose receivers to calibrate")
    parser.add_argument("observations", type=Path, nargs="?",
                        help="CSV of transmissions at known positions (format below), or a .sigmf-collection of the "
                             "network annotated with them (streamer.tools.observations; docs/operations.md)")
    parser.add_argument("--calibrated-at", metavar="DATE",
                        help="when the observations were taken (ISO-8601 date or date-time, UTC unless an offset is "
                             "given; default today, UTC): written as each calibrated receiver's calibrated_at")
    parser.add_argument("--drift-survey", action="append", default=[], metavar="DATE=FILE",
                        help="instead of calibrating, fit the calibration drift from two or more surveys (observations "
                             "files or SigMF collections of the same network, each taken at DATE): prints the "
                             "estimator.physics lines to paste (module doc, Calibration age)")
    parser.add_argument("--observations-out", type=Path, metavar="CSV",
                        help="also write the observations read (from either input) as a CSV in the format below")
    parser.add_argument("--fit-exponent", action="store_true", help="also fit estimator.physics.path_loss_exponent")
    parser.add_argument("--fit-sigma", action="store_true",
                        help="also write the residual sigma as estimator.physics.shadowing_db (what the physics "
                             "estimator and the model are told about the site's shadowing)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, help="write the calibrated config here (comments and layout kept)")
    where.add_argument("--in-place", action="store_true", help="rewrite the config given with -c")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--survey-map", type=Path, metavar="PATH.npz",
                        help="also krige each receiver's residuals into a shadowing map over the search area and "
                             "write it here (for estimator.physics.shadowing_map; streamer.estimators.survey)")


def write_survey_map(path: Path, config, obs: Observations, cal: Calibration) -> list[str]:
    """Krige the calibrated residuals into ``path`` (``streamer.estimators.survey``); returns the report lines."""
    from streamer.core.geodesy import network_geometry
    from streamer.estimators.survey import MIN_MAP_LINKS, save_map, survey_maps

    physics = config.estimator.physics
    tx_en_m, distance_m, measured = link_geometry(config, obs)
    resid = residuals_db(cal, obs, distance_m, measured, physics.ref_loss_db)
    fit = cal.fit
    sigma = np.where(fit.fitted, np.nan_to_num(fit.residual_sigma_db, nan=physics.shadowing_db), physics.shadowing_db)
    try:
        maps, links = survey_maps(config, tx_en_m, resid, sigma)
    except ValueError as exc:
        raise ObservationsError(f"{obs.source}: cannot make a survey map: {exc}") from None
    mapped = [rx.id in maps.unit_mean for rx in config.receivers]
    sigma = np.where(mapped, sigma, physics.shadowing_db)  # receivers without a map: the estimator's prior sigma
    # What the written config holds, so that load_map accepts the pair.
    calibrated, exponent = written_values(cal)
    exponent = physics.path_loss_exponent if exponent is None else exponent
    try:
        save_map(path, maps, receiver_ids=cal.receiver_ids, sigma_db=sigma, links=links,
                 lat=[rx.lat for rx in config.receivers], lon=[rx.lon for rx in config.receivers],
                 origin=network_geometry(config)[0], calibration_db=calibrated, path_loss_exponent=exponent,
                 ref_loss_db=physics.ref_loss_db)
    except OSError as exc:
        raise ObservationsError(f"{path}: cannot write the survey map: {exc.strerror}") from None
    lines = [f"survey map {path}: {sum(mapped)} of {len(mapped)} receivers mapped on {len(maps.east_m)} x "
             f"{len(maps.north_m)} points ({maps.east_m[1] - maps.east_m[0]:.0f} m step); correlation "
             + " + ".join(f"{w:.2f} exp(-d/{length:.0f} m)" for w, length in maps.correlation)]
    for rx_id, n, ok, s in zip(cal.receiver_ids, links, mapped, sigma):
        lines.append(f"  {rx_id:<20}{int(n):>6} links  " + (f"mapped, sigma {s:.2f} dB" if ok else
                     f"no map (fewer than {MIN_MAP_LINKS} links): mean 0, sd {s:.2f} dB"))
    return lines


def main(argv: list[str] | None = None) -> int:
    """``python -m streamer.tools.calibrate`` and callers with an argument list: parse, then ``run``."""
    return run(build_parser().parse_args(argv))


def read_any_observations(config, path: Path) -> Observations:
    """An observations CSV or an annotated SigMF collection (module doc)."""
    from streamer.tools import observations as sigmf_observations

    if sigmf_observations.is_sigmf(path):
        return sigmf_observations.observations_from_sigmf(config, path)
    return read_observations(path, [rx.id for rx in config.receivers])


def checked_date(text: str, what: str) -> str:
    """``text`` when it is an ISO-8601 date or date-time (``parse_calibrated_at``), else an ``ObservationsError``."""
    from streamer.core.calibration_drift import parse_calibrated_at

    try:
        parse_calibrated_at(text)
    except ValueError as exc:
        raise ObservationsError(f"{what}: {exc}") from None
    return text


def drift_surveys(config, specs: list[str]) -> list:
    """``--drift-survey DATE=FILE`` values -> ``calibration_drift.Survey`` (offsets and standard errors in config
    receiver order, NaN where a receiver was not fitted)."""
    from streamer.core.calibration_drift import Survey, epoch_days, parse_calibrated_at

    surveys = []
    for spec in specs:
        date, sep, path = spec.partition("=")
        if not sep or not path:
            raise ObservationsError(f"--drift-survey {spec!r}: expected DATE=FILE, e.g. 2026-03-01=march.csv")
        when = parse_calibrated_at(checked_date(date, f"--drift-survey {spec!r}"))
        cal = calibrate(config, read_any_observations(config, Path(path)))
        fit = cal.fit
        surveys.append(Survey(epoch_days(when), np.where(fit.fitted, fit.offsets_db, np.nan),
                              np.where(fit.fitted, fit.offset_se_db, np.nan), f"{date} ({path})"))
    return surveys


def format_drift(fit, surveys: list) -> str:
    """The drift fit's report and the config lines to paste."""
    lags = ", ".join(f"{lag:.0f}" for lag in fit.lags_days)
    drift = fit.drift
    lines = [f"{len(surveys)} surveys: " + "; ".join(s.name for s in surveys),
             f"{fit.receivers} receivers seen in two surveys or more, {fit.changes} offset changes, separations {lags} days",
             f"random walk {drift.random_walk_db_per_sqrt_day:.4f} +- {fit.random_walk_se:.4f} dB/sqrt(day)",
             (f"seasonal amplitude {drift.seasonal_db:.3f} +- {fit.seasonal_se:.3f} dB" if fit.seasonal_fitted else
              "seasonal amplitude not fitted (the separations do not spread over a month: it cannot be told from the walk)"),
             "", "# paste into the config (docs/operations.md, Calibration age):", "[estimator.physics]",
             f"calibration_drift_db_per_sqrt_day = {drift.random_walk_db_per_sqrt_day:.4f}",
             f"calibration_seasonal_db = {drift.seasonal_db:.3f}",
             "# and each receiver's calibrated_at: the date of the survey its calibration_db comes from"]
    return "\n".join(lines)


def run_drift(config, args: argparse.Namespace) -> int:
    """``heimdall calibrate --drift-survey ...``: fit the drift and print it (module doc)."""
    from streamer.core.calibration_drift import fit_drift

    if len(args.drift_survey) < 2:
        raise ObservationsError(f"--drift-survey: given {len(args.drift_survey)} time(s); the drift is measured "
                                "between surveys: give two or more, each DATE=FILE")
    surveys = drift_surveys(config, args.drift_survey)
    try:
        fit = fit_drift(surveys)
    except ValueError as exc:
        raise ObservationsError(f"--drift-survey: cannot fit the drift: {exc}") from None
    if args.json:
        drift = fit.drift
        print(json.dumps({"calibration_drift_db_per_sqrt_day": drift.random_walk_db_per_sqrt_day,
                          "calibration_drift_se": fit.random_walk_se, "calibration_seasonal_db": drift.seasonal_db,
                          "calibration_seasonal_se": None if not fit.seasonal_fitted else fit.seasonal_se,
                          "seasonal_fitted": fit.seasonal_fitted, "receivers": fit.receivers, "changes": fit.changes,
                          "lags_days": list(fit.lags_days), "surveys": [s.name for s in surveys]}, indent=2))
    else:
        print(format_drift(fit, surveys))
    return 0


def run(args: argparse.Namespace) -> int:
    """``heimdall calibrate`` entry point; errors are ``HeimdallError`` (the CLI prints them, exit status 2)."""
    import datetime as dt

    from streamer.config import load

    config = load(args.config)
    if args.drift_survey:
        if args.observations is not None or args.out is not None or args.in_place:
            raise ObservationsError("--drift-survey fits the drift only: give no observations file, --out or --in-place")
        return run_drift(config, args)
    if args.observations is None:
        raise ObservationsError("give the observations file (or two or more --drift-survey DATE=FILE)")
    obs = read_any_observations(config, args.observations)
    calibrated_at = (checked_date(args.calibrated_at, "--calibrated-at") if args.calibrated_at is not None
                     else dt.datetime.now(dt.UTC).date().isoformat())
    if args.observations_out is not None:
        try:
            Path(args.observations_out).write_text(observations_csv(obs), encoding="utf-8")
        except OSError as exc:
            raise ObservationsError(f"{args.observations_out}: cannot write the observations: {exc.strerror}") from None
    cal = calibrate(config, obs, fit_exponent=args.fit_exponent, fit_sigma=args.fit_sigma, calibrated_at=calibrated_at)
    survey = write_survey_map(args.survey_map, config, obs, cal) if args.survey_map is not None else []
    out = args.config if args.in_place else args.out
    if out is not None:
        write_config(Path(out), updated_toml(Path(args.config).read_text(encoding="utf-8"), cal))
    for rx_id, why in cal.refused.items():
        print(f"heimdall calibrate: error: receiver {rx_id!r}: {why}; its calibration_db is left unchanged", file=sys.stderr)
    if args.json:
        print(json.dumps(report_dict(cal, str(out) if out else None), indent=2))
    else:
        print(format_report(cal, config.estimator.physics.ref_loss_db))
        print(f"wrote {out}" if out else "nothing written (use --out FILE or --in-place)")
    for line in survey:
        print(line, file=sys.stderr if args.json else sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
