"""``heimdall evaluate``: score ONNX models, the physics estimator and a centroid baseline on the same seeded draws.

Owns the simulated evaluation sets (``default``, ``random-<k>``, ``random-many``, ``random-<k>-realizations``, the
traffic scenario sets ``traffic-<name>``), keyed as ``--traffic`` says (``models.train.traffic``), the command line
that scores them (and POWDER through ``models.train.powder``), and the printing of kept ``--json`` results
(``--from-json FILE`` with ``--markdown``, ``--gates``, ``--per-network``, ``--reproduces``).
Errors are in metres, powers in dBm, frequencies in Hz; scores and gates are ``models.train.scoring``'s.
What each set is, how to run it and how to read its gates: docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from models.train.commands import non_negative_int, positive_int
from models.train.dataset import (
    DETECTION,
    UNIX_2026_NS,
    WINDOW_START_NS_RANGE,
    Windows,
    _spec_tag,
    draw_windows,
    physics_config_for,
    random_network_config,
)
from models.train.scoring import (
    GATES,
    REPRODUCTION_TOLERANCE,
    SCENARIO_PREFIX,
    Estimates,
    ellipse_size_m,
    format_all_per_network,
    format_gates,
    format_markdown,
    format_reproduction,
    format_table,
    model_methods,
    run_centroid,
    run_onnx,
    scored,
    scores,
    site_calibrated,
)
from models.train.traffic import TRAFFIC, Traffic
from streamer.config import Config, PhysicsConfig, load
from streamer.core.calibration_drift import CalibrationDrift
from streamer.dsp.features import FeatureSpec
from streamer.estimators.contract import network_search_area_row, site_propagation
from streamer.estimators.credible import ELLIPSE_PROBABILITIES
from streamer.estimators.physics import CALIBRATION_AGE_REFRESH_S

EVAL_SEED = 20_260_001
RANDOM_NETWORKS = ((5, 8.0), (10, 60.0), (16, 180.0))  # (receivers, bounding-box side in km)
MANY_NETWORKS_KEY = 1000  # second entry of the random-many seeds; training uses (seed, world), seed 1 and 2
DRAWS_PER_NETWORK = 64
REALIZATIONS_KEY = 2000  # second entry of the random-<k>-realizations seeds
DRAWS_PER_REALIZATION = 250
SCENARIO_KEY = 3000  # second entry of the scenario sets' realization seeds
#: The size of a scenario set (``SCENARIOS``): hidden-state realizations per network, draws per realization.
SCENARIO_REALIZATIONS = 4
SCENARIO_DRAWS = 250


def _cached(cache_dir, name: str, make: Callable[[], Windows]) -> Windows:
    if cache_dir is None:
        return make()
    path = Path(cache_dir) / f"{name}.npz"
    if path.is_file():
        data = Windows.load(path)
    else:
        data = make()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        data.save(tmp)
        tmp.replace(path)
    return data


def _network_label(network: Config | None, network_name: str) -> str:
    """``network_name`` in a cached draw's file name, with a hash of the config given with ``--config`` (two files of
    one stem, or one file edited, never share draws)."""
    if network is None:
        return network_name
    import hashlib

    return f"{network_name}.{hashlib.sha256(repr(network).encode()).hexdigest()[:10]}"


def simulated_sets(n_default: int, n_random: int, spec: FeatureSpec, cache_dir=None, oversampling: int = 1, *,
                   traffic: Traffic | str = "full", seed: int = EVAL_SEED, network: Config | None = None,
                   network_name: str = "default") -> dict[str, tuple[Config, PhysicsConfig, Windows]]:
    """The ``default`` and ``random-<k>`` datasets: world config, physics parameters for it, draws (rendered
    through the daemon's channelizer when ``oversampling`` > 1, keyed as ``traffic`` draws it). ``network`` (a
    config read with ``--config``) takes the default network's place, under ``network_name``, scored with its own
    ``[simulator]`` section and ``estimator.physics`` settings."""
    sets = {}
    tag = _spec_tag(spec, oversampling, traffic)
    default = load() if network is None else network
    if n_default:
        sets[network_name] = (default, default.estimator.physics, _cached(
            cache_dir, f"eval-{_network_label(network, network_name)}-{seed}-{n_default}-{tag}", lambda: draw_windows(
                default, n_default, np.random.default_rng(seed), spec, shuffle_slots=False, max_tries=20,
                oversampling=oversampling, traffic=traffic)))
    for k in range(len(RANDOM_NETWORKS) if n_random else 0):
        config, rng = random_network(k, seed)
        sets[f"random-{k}"] = (config, physics_config_for(config), _cached(cache_dir, f"eval-random{k}-{seed}-{n_random}-{tag}", lambda config=config, rng=rng: draw_windows(
            config, n_random, rng, spec, shuffle_slots=False, max_tries=20, oversampling=oversampling, traffic=traffic)))
    return sets


def random_network(k: int, seed: int = EVAL_SEED) -> tuple[Config, np.random.Generator]:
    """Network ``random-<k>`` (``RANDOM_NETWORKS[k]``, seed ``seed + 1 + k``) and the generator its draws use."""
    n_rx, extent_km = RANDOM_NETWORKS[k]
    rng = np.random.default_rng(np.random.SeedSequence([seed + 1 + k]))
    return random_network_config(rng, n_rx=n_rx, extent_km=extent_km, seed=seed + 1 + k), rng


def hidden_state_realizations(base: Config, physics: PhysicsConfig, key: list[int], name: str, n_realizations: int,
                              draws: int, spec: FeatureSpec, cache_dir=None, oversampling: int = 1,
                              traffic: Traffic | str = "full", drifting: Scenario | None = None,
                              ) -> list[tuple[Config, PhysicsConfig, Windows]]:
    """Network ``base`` with ``n_realizations`` fresh simulator seeds (hidden calibration errors, noise figures,
    shadowing fields), each drawn from ``SeedSequence(key + [j])``, ``draws`` draws each; ``physics`` (the
    network's parameters: the seed is hidden state) for every one. ``name`` keys the cached draws. ``drifting`` (a
    ``Scenario`` with a drift): each realization's calibrations drift and its estimators are told so
    (``drifted``)."""
    tag = _spec_tag(spec, oversampling, traffic)
    out = []
    for j in range(n_realizations):
        rng = np.random.default_rng(np.random.SeedSequence(list(key) + [j]))
        config = replace(base, simulator=replace(base.simulator, seed=int(rng.integers(1, 2**31))))
        told, start_ns_range = physics, WINDOW_START_NS_RANGE
        if drifting is not None and drifting.drift is not None:
            config, told, start_ns_range = drifted(config, physics, drifting)
        data = _cached(cache_dir, f"{name}-realization{j}-{draws}-{tag}", lambda config=config, rng=rng, span=start_ns_range:
                       draw_windows(config, draws, rng, spec, shuffle_slots=False, max_tries=20, oversampling=oversampling,
                                    traffic=traffic, start_ns_range=span))
        out.append((config, told, data))
    return out


@dataclass(frozen=True)
class Scenario:
    """What a scenario set (``traffic-<name>``) holds fixed: the ``traffic`` (a ``models.train.traffic.TRAFFIC``
    name) every window is keyed by, and optionally a calibration ``drift`` (random walk in dB/sqrt(day), yearly
    swing in dB) that every receiver's hidden calibration error follows for ``calibration_age_days`` (days) since
    all were calibrated together; the estimators are told the drift and the calibration date (``drifted``)."""

    traffic: str
    drift: CalibrationDrift | None = None
    calibration_age_days: float = 0.0

    def cache_key(self) -> str:
        """What besides the traffic tag sets the draws (``""`` without drift)."""
        if self.drift is None:
            return ""
        return (f"-drift{self.drift.random_walk_db_per_sqrt_day:g}+{self.drift.seasonal_db:g}"
                f"@{self.calibration_age_days:g}d")


SCENARIOS = {
    "partial": Scenario("partial"),
    "bursts": Scenario("bursts"),
    # Half a year after calibration, a walk of 0.1 dB/sqrt(day) and a 1 dB yearly swing: an added calibration
    # error comparable to the calibration sigmas the random networks draw.
    "drift": Scenario("full", CalibrationDrift(random_walk_db_per_sqrt_day=0.1, seasonal_db=1.0), 180.0),
}
#: How long the windows of a drifting scenario span (s): the daemon re-measures the calibrations' age as often.
DRIFT_WINDOW_SPAN_S = CALIBRATION_AGE_REFRESH_S


def drifted(config: Config, physics: PhysicsConfig, scenario: Scenario) -> tuple[Config, PhysicsConfig, tuple[int, int]]:
    """``config``'s world with ``scenario``'s drift, what its estimators are told, and when its windows are drawn.

    Returns the config with the drift in ``[simulator]`` (walk and yearly swing from 2026-01-01, the calibration
    epoch), the same drift in ``estimator.physics`` and every receiver's ``calibrated_at`` at that epoch; the
    physics parameters the estimators get, their calibration sigma widened for the drift at the calibration's age
    exactly as the daemon widens it (``streamer.estimators.physics.drift_variance_db2``: all receivers were
    calibrated together, so one sigma, which is also what the model's ``site_propagation`` row takes); and the
    windows' start range (ns): ``scenario.calibration_age_days`` after the epoch, ``DRIFT_WINDOW_SPAN_S`` long.
    """
    import datetime as dt
    import math

    from streamer.estimators.physics import drift_variance_db2

    drift = scenario.drift
    epoch_s = UNIX_2026_NS / 1e9
    calibrated_at = dt.datetime.fromtimestamp(epoch_s, tz=dt.UTC).isoformat()
    keys = {"calibration_drift_db_per_sqrt_day": drift.random_walk_db_per_sqrt_day,
            "calibration_seasonal_db": drift.seasonal_db}
    config = replace(config, simulator=replace(config.simulator, calibration_epoch_unix_s=epoch_s, **keys),
                     estimator=replace(config.estimator, physics=replace(config.estimator.physics, **keys)),
                     receivers=type(config.receivers)(replace(rx, calibrated_at=calibrated_at) for rx in config.receivers))
    start_s = epoch_s + scenario.calibration_age_days * 86_400.0
    told = replace(config, estimator=replace(config.estimator, physics=replace(physics, **keys)))
    extra_db2 = drift_variance_db2(told, start_s + DRIFT_WINDOW_SPAN_S / 2)
    aged = replace(physics, calibration_sigma_db=math.sqrt(physics.calibration_sigma_db**2 + float(extra_db2.mean())))
    return config, aged, (int(start_s * 1e9), int((start_s + DRIFT_WINDOW_SPAN_S) * 1e9))


def realizations(k: int, n_realizations: int, draws: int, spec: FeatureSpec, cache_dir=None,
                 oversampling: int = 1, *, traffic: Traffic | str = "full",
                 seed: int = EVAL_SEED) -> list[tuple[Config, PhysicsConfig, Windows]]:
    """The ``random-<k>-realizations`` dataset (docs/evaluation.md): network ``random-<k>`` with ``n_realizations``
    fresh simulator seeds (seeds (``seed`` + 1 + k, ``REALIZATIONS_KEY``, j)), ``draws`` draws each."""
    base, _ = random_network(k, seed)
    return hidden_state_realizations(base, physics_config_for(base), [seed + 1 + k, REALIZATIONS_KEY],
                                     f"eval-random{k}-{seed}", n_realizations, draws, spec, cache_dir, oversampling,
                                     traffic)


def scenario_networks(scenario: Scenario | str, n_realizations: int, draws: int, spec: FeatureSpec, cache_dir=None,
                      oversampling: int = 1, *, seed: int = EVAL_SEED, network: Config | None = None,
                      network_name: str = "default") -> list[tuple[Config, PhysicsConfig, Windows]]:
    """A scenario set (``traffic-<name>``, ``SCENARIOS``): the default network (or ``network``) and the three unseen
    random networks ``random-<k>``, each with its hidden state drawn ``n_realizations`` times (seeds (``seed``,
    ``SCENARIO_KEY``, j) for the default, (``seed`` + 1 + k, ``SCENARIO_KEY``, j) for ``random-<k>``), ``draws``
    draws each, every window keyed as the scenario's traffic draws it, its calibrations drifted when it has a
    drift. Scenarios share their networks' realizations, so they differ in what the scenario sets only."""
    scenario = SCENARIOS[scenario] if isinstance(scenario, str) else scenario
    default = load() if network is None else network
    suffix = f"-scenario{scenario.cache_key()}"
    label = _network_label(network, network_name)
    bases = [(default, default.estimator.physics, [seed, SCENARIO_KEY], f"eval-{label}-{seed}{suffix}")]
    for k in range(len(RANDOM_NETWORKS)):
        config, _ = random_network(k, seed)
        bases.append((config, physics_config_for(config), [seed + 1 + k, SCENARIO_KEY], f"eval-random{k}-{seed}{suffix}"))
    return [net for base, physics, key, name in bases for net in hidden_state_realizations(
        base, physics, key, name, n_realizations, draws, spec, cache_dir, oversampling, scenario.traffic, scenario)]


def many_networks(n_networks: int, spec: FeatureSpec, cache_dir=None, oversampling: int = 1, *,
                  traffic: Traffic | str = "full", seed: int = EVAL_SEED) -> list[tuple[Config, PhysicsConfig, Windows]]:
    """The ``random-many`` dataset (docs/evaluation.md): per network its config, its physics parameters and its draws."""
    tag = _spec_tag(spec, oversampling, traffic)
    out = []
    for k in range(n_networks):
        rng = np.random.default_rng(np.random.SeedSequence([seed, MANY_NETWORKS_KEY, k]))
        config = random_network_config(rng, seed=int(rng.integers(1, 2**31)))
        data = _cached(cache_dir, f"eval-many{k}-{seed}-{DRAWS_PER_NETWORK}-{tag}", lambda config=config, rng=rng: draw_windows(
            config, DRAWS_PER_NETWORK, rng, spec, shuffle_slots=False, max_tries=20, oversampling=oversampling,
            traffic=traffic))
        out.append((config, physics_config_for(config), data))
    return out


def score_many(networks: list[tuple[Config, PhysicsConfig, Windows]], estimates: list[Estimates]) -> dict:
    """Pooled ``scores`` over several networks' draws, plus the 10/50/90th percentiles of per-network coverage
    (``cov68_networks``, ``cov95_networks``), the fraction of networks whose coverage is inside the coverage gate
    (``cov68_networks_in_gate``, ``cov95_networks_in_gate``) and ``networks``: per network its median error,
    coverage and n, ``describe_network`` and ``ellipse_size_m`` (``--per-network`` prints them)."""
    truths = [data.tx_enu_km.astype(np.float64) * 1e3 for _, _, data in networks]
    scales = None if any(e[2] is None for e in estimates) else np.concatenate([e[2] for e in estimates])
    pooled = scores(np.concatenate([e[0] for e in estimates]), np.concatenate([e[1] for e in estimates]), np.concatenate(truths),
                    scales)
    per, rows = [], []
    for (config, _, data), e, t in zip(networks, estimates, truths):
        if not len(t):
            continue
        s = scored(e, t)
        per.append(s)
        rows.append({**{k: s[k] for k in ("median_m", "cov68", "cov95", "n")}, **describe_network(config, data),
                     "ellipse_m": ellipse_size_m(e[1])})
    pooled["networks"] = rows
    for key in ("cov68", "cov95"):
        values = [s[key] for s in per]
        pooled[f"{key}_networks"] = [float(np.percentile(values, q)) for q in (10, 50, 90)]
        low, high = GATES[key]
        pooled[f"{key}_networks_in_gate"] = float(np.mean([low <= v <= high for v in values]))
    return pooled


def describe_network(config: Config, data: Windows) -> dict:
    """What tells networks apart in ``score_many``'s per-network rows: receivers, the search area's longer side (km)
    and the mean number of receivers that heard a draw."""
    from streamer.core.geodesy import network_geometry

    _, _, area = network_geometry(config)
    return {"receivers": len(config.receivers), "side_km": max(area.width_m, area.height_m) / 1e3,
            "heard": float(data.heard.sum(axis=1).mean())}


#: Unix time (s) the estimators of a simulated set run at: the middle of the draws' start range, the time a
#: configured calibration drift is aged to (``streamer.estimators.physics.drift_variance_db2``).
SCORED_AT_S = (WINDOW_START_NS_RANGE[0] + WINDOW_START_NS_RANGE[1]) / 2e9


def told_config(config: Config, physics: PhysicsConfig) -> Config:
    """``config`` with ``physics`` as its ``estimator.physics``: what the daemon's estimators are configured with."""
    return replace(config, estimator=replace(config.estimator, physics=physics))


def site_row(config: Config, physics: PhysicsConfig) -> np.ndarray:
    """The ``site_propagation`` row a model is told on ``config``'s network with ``physics``, as the daemon's
    ``OnnxModel`` forms it: the calibration sigma widened for the receivers' mean calibration drift at
    ``SCORED_AT_S`` (``estimator.physics`` drift keys and each receiver's ``calibrated_at``; none: as configured)."""
    import math

    from streamer.estimators.physics import drift_variance_db2

    extra_db2 = drift_variance_db2(told_config(config, physics), SCORED_AT_S)
    if not extra_db2.any():
        return site_propagation(physics)
    return site_propagation(physics, math.sqrt(physics.calibration_sigma_db**2 + float(extra_db2.mean())))


def run_physics(config: Config, physics: PhysicsConfig, data: Windows, spec: FeatureSpec) -> Estimates:
    """The daemon's physics estimator (``PhysicsPosterior``: its shadowing map, ellipse scale and calibration age
    at ``SCORED_AT_S`` included) configured with ``physics``, on every draw (receivers in config order, slots not
    shuffled), each measured over its active frames as the daemon measures it."""
    from streamer.core.geodesy import network_geometry
    from streamer.estimators.base import EstimatorInputs
    from streamer.estimators.physics import PhysicsPosterior

    _, rx_enu_m, _ = network_geometry(config)
    n_rx = rx_enu_m.shape[0]
    posterior = PhysicsPosterior(told_config(config, physics), clock=lambda: SCORED_AT_S)
    pos = np.empty((len(data), 2))
    cov = np.empty((len(data), 2, 2))
    scales = np.empty((len(data), len(ELLIPSE_PROBABILITIES)))
    for b in range(len(data)):
        frames = data.features_dbm[b, :n_rx]
        present = data.rx_mask[b, :n_rx] > 0.5
        active = data.active_frames[b]
        power = DETECTION.apply(frames, spec, active=active)
        res = posterior.estimate(EstimatorInputs(frames, rx_enu_m, present, power.heard & present,
                                                 np.where(present, power.signal_dbm, np.nan), power.detection_level_dbm,
                                                 active))
        pos[b], cov[b], scales[b] = res.position_en_m, res.cov_en_m2, res.ellipse_scales
    return pos, cov, scales


def evaluate(models: list[Path], *, n_default: int = 5000, n_random: int = 1000, n_networks: int = 0,
             n_realizations: int = 0, realization_draws: int = DRAWS_PER_REALIZATION, physics: bool = True,
             powder: bool = False, powder_split: str | Path = "grid", powder_max_samples: int | None = None,
             powder_baseline: bool = False, powder_calibration_age: bool = True, cache_dir=None,
             spec: FeatureSpec | None = None, oversampling: int = 1, traffic: Traffic | str = "full", seed: int = EVAL_SEED, network: Config | None = None,
             network_name: str = "default", scenarios: tuple[str, ...] = (),
             scenario_realizations: int = SCENARIO_REALIZATIONS, scenario_draws: int = SCENARIO_DRAWS,
             every_frame: bool = False, log=print) -> dict:
    """``{dataset: {method: scores}}`` for every model, ``physics`` and ``centroid`` (docs/evaluation.md).

    ``powder_split`` is a shorthand (``grid``, ``random``) or a split file's path; ``powder_max_samples`` scores
    only its first rows. A missing or malformed split file fails here, before any scoring. ``traffic`` keys the
    windows of the simulated sets, ``seed`` draws them and the random networks (``EVAL_SEED``: the sets of
    docs/evaluation.md); ``network`` replaces the default network (``simulated_sets``); ``scenarios`` (names of
    ``SCENARIOS``) adds a ``traffic-<name>`` set each (``scenario_networks``), scored pooled. ``every_frame``
    scores the simulated sets over every frame of each window (``over_every_frame``), as the estimators ran before
    the daemon decided which frames carried the transmission: the comparison that decision is measured against.
    """
    spec = spec or FeatureSpec()
    if powder:
        from models.train.powder import read_split, split_path

        read_split(split_path(powder_split))
    results: dict[str, dict] = {}
    for name, (config, physics_cfg, data) in simulated_sets(n_default, n_random, spec, cache_dir, oversampling, traffic=traffic,
                                                            seed=seed, network=network, network_name=network_name).items():
        data = over_every_frame(data) if every_frame else data
        truth = data.tx_enu_km.astype(np.float64) * 1e3
        table = {}
        for path in models:
            for method, told in model_methods(path).items():
                position, cov, scales = run_onnx(Path(path), data, site=site_row(config, physics_cfg) if told else None,
                                                 area=network_search_area_row(config) if told else None)
                table[method] = scores(position, cov, truth, scales)
                table[f"{method}+site"] = scores(position, site_calibrated(position, cov, truth), truth, scales)
        if physics:
            table["physics"] = scored(run_physics(config, physics_cfg, data, spec), truth)
        table["centroid"] = scored(run_centroid(data), truth)
        results[name] = table
        log(format_table(name, table))
    network_sets = {}
    if n_networks:
        network_sets["random-many"] = lambda: many_networks(n_networks, spec, cache_dir, oversampling, traffic=traffic, seed=seed)
    for k in range(len(RANDOM_NETWORKS) if n_realizations else 0):
        network_sets[f"random-{k}-realizations"] = lambda k=k: realizations(k, n_realizations, realization_draws, spec,
                                                                             cache_dir, oversampling, traffic=traffic,
                                                                             seed=seed)
    for scenario in scenarios:
        network_sets[f"{SCENARIO_PREFIX}{scenario}"] = lambda scenario=scenario: scenario_networks(
            scenario, scenario_realizations, scenario_draws, spec, cache_dir, oversampling, seed=seed,
            network=network, network_name=network_name)
    for name, make in network_sets.items():
        networks = [(c, ph, over_every_frame(d) if every_frame else d) for c, ph, d in make()]
        results[name] = score_networks(models, networks, spec, physics)
        log(format_table(name, results[name]))
    if powder:
        from models.train.powder import evaluate_powder, split_name

        name = split_name(powder_split)
        from models.train.powder import BASELINE_OPTIONS

        results[name] = evaluate_powder(models, split=powder_split, spec=spec, limit=powder_max_samples,
                                        options=BASELINE_OPTIONS if powder_baseline else None,
                                        calibration_age=powder_calibration_age, log=log)
        log(format_table(name, results[name]))
    return results


def over_every_frame(data: Windows) -> Windows:
    """``data`` with every frame of every window marked active: both estimators then measure and pool each window
    over all its frames (``heard`` stays the draws' own, so the same windows are scored)."""
    return replace(data, active_frames=np.ones_like(data.active_frames))


def score_networks(models: list[Path], networks: list[tuple[Config, PhysicsConfig, Windows]], spec: FeatureSpec,
                   physics: bool = True) -> dict:
    """``{method: score_many(...)}`` of every model (told and blind, each with ``+site``), ``physics`` and
    ``centroid`` on several networks' draws (``random-many``, ``random-<k>-realizations``); ``+site`` calibrates
    each network on its own draws."""
    table = {}
    for path in models:
        for method, told in model_methods(path).items():
            estimates = [run_onnx(Path(path), data, site=site_row(c, ph) if told else None,
                                  area=network_search_area_row(c) if told else None) for c, ph, data in networks]
            table[method] = score_many(networks, estimates)
            table[f"{method}+site"] = score_many(networks, [
                (p, site_calibrated(p, c, data.tx_enu_km.astype(np.float64) * 1e3), k)
                for (p, c, k), (_, _, data) in zip(estimates, networks)])
    if physics:
        table["physics"] = score_many(networks, [run_physics(c, ph, data, spec) for c, ph, data in networks])
    table["centroid"] = score_many(networks, [run_centroid(data) for _, _, data in networks])
    return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``heimdall evaluate``."""
    parser.add_argument("models", nargs="*", type=Path, help="ONNX models to score (default: the shipped model)")
    parser.add_argument("--n", type=int, default=5000, help="draws on the default network")
    parser.add_argument("--n-random", type=int, default=1000, help="draws on each of the three random networks")
    parser.add_argument("--n-networks", type=non_negative_int, default=0,
                        help=f"also score N more unseen random networks of {DRAWS_PER_NETWORK} draws each, pooled, with the "
                             "spread of per-network coverage (dataset random-many; default 0 = not scored)")
    parser.add_argument("--realizations", type=non_negative_int, default=0, metavar="K",
                        help="also score each random network with its hidden state (receivers' calibration errors, noise "
                             "figures, shadowing fields) drawn again K times, pooled, with the spread of per-realization "
                             "coverage (datasets random-<k>-realizations; default 0 = not scored)")
    parser.add_argument("--realization-draws", type=positive_int, default=DRAWS_PER_REALIZATION, metavar="N",
                        help=f"draws per realization with --realizations (default {DRAWS_PER_REALIZATION})")
    parser.add_argument("--seed", type=int, default=EVAL_SEED,
                        help="seed of the simulated draws and of the random networks (default %(default)s: the sets of "
                             "docs/evaluation.md; another seed gives other draws and other random networks of the same sizes)")
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="score this network config in the default network's place, as it is scored: its receivers, "
                             "its [simulator] section (the simulated world), its estimator settings (dataset named by the "
                             "file's stem)")
    parser.add_argument("--traffic", choices=tuple(TRAFFIC), default="full",
                        help="how the simulated windows are keyed: full (the whole window, default), partial (keyed for a "
                             "fraction uniform in [0.1, 1], an edge inside the window), bursts (DMR-like TDMA or packet "
                             "bursts), onair (the training mix); models.train.traffic")
    parser.add_argument("--scenarios", nargs="+", choices=tuple(SCENARIOS), default=(), metavar="NAME",
                        help="also score each scenario (" + ", ".join(SCENARIOS) + ": partly keyed windows, bursts, "
                             "calibrations drifted for half a year, told to the estimators): the default network (or "
                             "--config's) and the three unseen random networks, each with its hidden state drawn "
                             "--scenario-realizations times, pooled (datasets traffic-<name>; graded apart by --gates)")
    parser.add_argument("--scenario-realizations", type=positive_int, default=SCENARIO_REALIZATIONS, metavar="K",
                        help=f"hidden-state realizations per network of a scenario (default {SCENARIO_REALIZATIONS})")
    parser.add_argument("--scenario-draws", type=positive_int, default=SCENARIO_DRAWS, metavar="N",
                        help=f"draws per realization of a scenario (default {SCENARIO_DRAWS})")
    parser.add_argument("--every-frame", action="store_true",
                        help="score the simulated sets over every frame of each window, as the estimators ran before the "
                             "daemon decided which frames carried the transmission (compare with a run without it)")
    parser.add_argument("--no-physics", action="store_true", help="skip the physics estimator")
    parser.add_argument("--powder", action="store_true", help="also score on POWDER real data (the split of --powder-split)")
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--powder-split", default=None, choices=("grid", "random"),
                       help="with --powder: grid = grid_split/grid_test.json (default), random = random_split/random_test.json")
    split.add_argument("--test-split", type=Path, default=None, metavar="PATH",
                       help="score POWDER on the rows of this split file (implies --powder; e.g. .../train_test_splits/"
                            "special_test_cases/indoor.json); offsets are fitted on every other row minus unused/indoor/off_campus")
    parser.add_argument("--powder-max-samples", type=positive_int, default=None, metavar="N",
                        help="score only the first N POWDER test rows (quick checks)")
    parser.add_argument("--powder-baseline", action="store_true",
                        help="feed POWDER to the physics estimator by the old recipe (16 strongest, i.i.d. errors) instead of "
                             "the options `python -m models.train.powder select` stored for the split")
    parser.add_argument("--no-calibration-age", dest="calibration_age", action="store_false",
                        help="score POWDER without widening for the calibrations' age (how figures before the widening "
                             "were scored)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="reuse/store the generated draws here")
    parser.add_argument("--channelized", action="store_true",
                        help="render the simulated draws through the daemon's channelizer (as heimdall train --channelized)")
    parser.add_argument("--json", action="store_true", help="print {dataset: {method: scores}} as JSON")
    parser.add_argument("--from-json", type=Path, default=None, help="print the tables of a saved --json result (no scoring)")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown (for MODEL_CARD.md)")
    parser.add_argument("--per-network", action="store_true",
                        help="print, per network of random-many and random-<k>-realizations, what it is, each method's "
                             "coverage and the model's ellipse size relative to the physics posterior's (of the scores "
                             "just made, or of --from-json FILE) instead of the tables or JSON")
    parser.add_argument("--gates", action="store_true",
                        help="print each model's errors against the physics posterior and the gates it misses (of the "
                             "scores just made, or of --from-json FILE) instead of the tables or JSON")
    parser.add_argument("--reproduces", nargs=2, metavar=("REFERENCE", "CANDIDATE"), default=None,
                        help="print CANDIDATE's errors and coverage relative to REFERENCE's (two method names, e.g. the "
                             "shipped model and a second training run's file, scored on the same draws) and whether each "
                             f"dataset is within {100 * REPRODUCTION_TOLERANCE:.0f} %%, instead of the tables or JSON")


def run(args: argparse.Namespace) -> int:
    """Run ``heimdall evaluate`` with parsed arguments."""
    if args.from_json is not None:
        try:
            results = json.loads(args.from_json.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SystemExit(f"heimdall evaluate: --from-json {args.from_json}: expected the JSON that --json printed ({exc})")
        if not isinstance(results, dict) or not all(isinstance(t, dict) for t in results.values()):
            raise SystemExit(f"heimdall evaluate: --from-json {args.from_json}: expected {{dataset: {{method: scores}}}}")
        if args.reproduces:
            print(format_reproduction(results, *args.reproduces))
            return 0
        if args.gates:
            print(format_gates(results))
            return 0
        if args.per_network:
            print(format_all_per_network(results))
            return 0
        for name, table in results.items():
            print(format_markdown(name, table) if args.markdown else format_table(name, table))
        return 0
    models = list(args.models)
    if not models:
        from models.train.commands import default_out

        models = [default_out()]
    log = (lambda *a, **k: None) if args.json or args.gates or args.reproduces or args.per_network else print
    network = None if args.config is None else read_network(args.config)
    results = evaluate(models, n_default=args.n, n_random=args.n_random, n_networks=args.n_networks,
                       n_realizations=args.realizations, realization_draws=args.realization_draws, physics=not args.no_physics,
                       powder=args.powder or args.test_split is not None, powder_split=args.test_split or args.powder_split or "grid",
                       powder_max_samples=args.powder_max_samples, powder_baseline=args.powder_baseline,
                       powder_calibration_age=args.calibration_age, cache_dir=args.cache_dir,
                       oversampling=2 if args.channelized else 1, traffic=args.traffic, seed=args.seed, network=network,
                       network_name="default" if args.config is None else args.config.stem,
                       scenarios=tuple(dict.fromkeys(args.scenarios)), scenario_realizations=args.scenario_realizations,
                       scenario_draws=args.scenario_draws, every_frame=args.every_frame, log=log)
    if args.reproduces:
        print(format_reproduction(results, *args.reproduces))
    elif args.gates:
        print(format_gates(results))
    elif args.per_network:
        print(format_all_per_network(results))
    elif args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
    return 0


def read_network(path: Path) -> Config:
    """The network config ``--config`` names, checked for what scoring it needs: a file ``streamer.config.load``
    reads, at most ``MAX_RECEIVERS`` receivers (the model's slots), and the detection rule the draws are judged by
    (``dataset.DETECTION``, the config defaults'). Anything else exits naming the file and the key."""
    from models.train.dataset import MAX_RECEIVERS
    from streamer.core.errors import ConfigError
    from streamer.dsp.detection import DetectionRule

    try:
        config = load(path)
    except (ConfigError, OSError) as exc:
        raise SystemExit(f"heimdall evaluate: --config {path}: {exc}") from None
    if len(config.receivers) > MAX_RECEIVERS:
        raise SystemExit(f"heimdall evaluate: --config {path}: receivers: {len(config.receivers)}, expected at most "
                         f"{MAX_RECEIVERS} (the model's receiver slots)")
    differences = DetectionRule.from_config(config).differences(DETECTION)
    if differences:
        raise SystemExit(f"heimdall evaluate: --config {path}: network.channel_bandwidth_hz and "
                         f"pipeline.detection_snr_db must be the defaults the draws are judged by ({'; '.join(differences)})")
    return config


def main(argv: list[str] | None = None) -> int:
    """``heimdall evaluate`` entry point (also ``python -m models.train.evaluate``)."""
    parser = argparse.ArgumentParser(prog="heimdall evaluate", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
