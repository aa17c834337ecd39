"""``heimdall evaluate``: score ONNX models, the physics estimator and a centroid baseline on the same seeded draws.

Datasets (every method sees exactly the same windows; a draw is kept only when the daemon would localize
it, i.e. at least three receivers hear the transmitter by its detection rule):

``default``      the embedded default network (streamer/default.toml, 7 receivers, simulator defaults), the
                 transmitter uniform over its search area, power uniform in [30, 47] dBm. Seed ``EVAL_SEED``;
                 no training network is this one (training networks are random).
``random-<k>``   three random networks drawn from seeds that training never uses (``EVAL_SEED + 1 + k``):
                 5 receivers over 8 km (k=0), 10 over 60 km (k=1), 16 over 180 km (k=2); band, propagation,
                 noise and calibration errors random as in training.
``random-many``  only with ``--n-networks N``: N more unseen random networks drawn as in training (3-16
                 receivers, 3-200 km, every propagation and receiver parameter random; seeds
                 (``EVAL_SEED``, ``MANY_NETWORKS_KEY``, k)), ``DRAWS_PER_NETWORK`` draws each, scored pooled.
                 Beside the usual scores each method gets ``cov68_networks`` and ``cov95_networks``: the 10th,
                 50th and 90th percentile over networks of its per-network coverage. Three networks are too few
                 to tell a method whose coverage is right on average from one whose coverage is right on every
                 network; this set tells them apart.
``random-<k>-realizations``  only with ``--realizations K``: network ``random-<k>`` (the same receivers, band,
                 propagation parameters and configured gains) with its hidden state drawn again K times: each
                 realization has its own simulator seed, so its own receivers' calibration errors, noise figures
                 and shadowing fields (seeds (``EVAL_SEED`` + 1 + k, ``REALIZATIONS_KEY``, j)), and
                 ``--realization-draws`` draws. Scored pooled, with the per-realization coverage spread as
                 ``random-many``'s. One network's coverage is that of one draw of its hidden state: its receivers'
                 calibration errors are fixed for all its draws, and so are its shadowing fields, so their effect
                 does not average out over the draws, and even the oracle posterior's coverage moves with them.
                 This set measures what an estimator can be held to on that network, its coverage over the hidden
                 state it cannot know, and how far one realization strays from it.
``powder-grid``  POWDER real received power (462.7 MHz), see ``models.train.powder`` (only with ``--powder``):
                 the test rows of ``grid_split/grid_test.json``, offsets fitted on every other row (minus
                 unused, indoor and off-campus). ``--powder-split random`` scores ``random_split/random_test.json``
                 as ``powder-random``; ``--test-split PATH`` any split file of the data folder (e.g.
                 ``special_test_cases/indoor.json``) as ``powder-<file stem>``, by the same rule.

Methods: each ONNX model (named by its file stem) through ``streamer.estimators.onnx.OnnxSession.run``; a model
that takes the contract's optional inputs is told the dataset's propagation exactly as the physics estimator is
configured (``site_propagation`` of the same ``PhysicsConfig``, as the daemon feeds ``estimator.physics``'s) and
the search area the physics estimator's prior covers (``search_area_row``), and is scored a second time told
nothing as ``<model>-blind``;
``physics``: ``streamer.estimators.physics.PhysicsGrid`` on ``channel_power`` of the same frames, as the daemon
runs it, given the true propagation parameters of each simulated world (path-loss exponent, 1 km loss,
shadowing and calibration sigmas, power range, transmitter height: an oracle; a site-taking model is told
the same, a blind one nothing); on POWDER the parameters fitted on the fitting rows. Grid
step = the larger side of the search area / 100 (2 km on the default network, as configured there);
``centroid``: the mean of the receivers that heard, covariance = their spread + (0.1 km)^2 I.
``<model>+site``: the model with a site's ellipse calibration (``heimdall calibrate-ellipses``), each network
being a site: its draws are split by index parity, and each half's covariances are multiplied by the factor
``streamer.tools.calibrate_ellipses.least_nll_scale`` fits on the other half (never on the draws it is scored on).
Positions are the model's; only coverage and NLL change. On ``random-many`` each network is calibrated on
its own 32 + 32 draws; on POWDER the test rows are the site's.

Scores per method (``models.train.scoring``, shared with POWDER): median, mean and 90th-percentile error (m);
coverage of the 68 % and 95 % ellipses as the daemon publishes them (fraction with Mahalanobis^2 <= the estimate's
own credible radius squared, ``streamer.estimators.credible``, for the physics posterior and a model with the ``ellipse_scale`` output; <= 2.279 and
<= 5.991, a Gaussian's, for the centroid and a model without it); mean NLL of the truth under the reported Gaussian in
metres, 1/2 r^T C^-1 r + 1/2 ln|C| + ln 2 pi; and n.

``--gates`` (with scoring, or on ``--from-json FILE``) prints, per dataset and model method, its mean and p90 error relative to the
physics posterior's and whether it meets the accuracy gates (``GATES``: within 5 % of the posterior
in mean and p90 error, cov68 in [0.64, 0.76], cov95 in [0.93, 0.97]; on POWDER the median and cov95 gates), and
for ``physics`` the coverage gates (and on POWDER the median), which both estimators are held to. Under the
table, a line per reading of the per-network gates (``gate_readings``): ``seeded`` grades each random network on
its one seeded realization; ``hidden state`` (when realizations were scored) grades it over realizations of the
hidden state that no estimator is told. The per-realization spread lines split the spread of coverage into what
binomial sampling gives and what is beyond it (``coverage_spread``): how far one realization strays from a
network's coverage even for the oracle posterior.

``--reproduces REFERENCE CANDIDATE`` (likewise) prints, per dataset scored for both methods, CANDIDATE's median,
mean and p90 error and coverage relative to REFERENCE's and whether all are within ``REPRODUCTION_TOLERANCE``
(5 %): the check that a second ``heimdall train`` run reproduces the shipped model. Score both files in one
run, on the same draws (copy the second to another file stem first: methods are named by stem).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from models.train.commands import non_negative_int, positive_int
from models.train.dataset import (DETECTION, Windows, _spec_tag, draw_windows, physics_config_for, random_network_config)
from models.train.scoring import (GATES, REPRODUCTION_TOLERANCE, Estimates, ellipse_size_m, format_all_per_network,
                                  format_gates, format_markdown, format_reproduction, format_table, model_methods,
                                  run_centroid, run_onnx, scored, scores, site_calibrated)
from streamer.config import Config, PhysicsConfig, load
from streamer.estimators.credible import ELLIPSE_PROBABILITIES
from streamer.dsp.features import FeatureSpec
from streamer.estimators.contract import network_search_area_row, site_propagation
from streamer.estimators.physics import PhysicsGrid

EVAL_SEED = 20_260_001
RANDOM_NETWORKS = ((5, 8.0), (10, 60.0), (16, 180.0))  # (receivers, bounding-box side in km)
MANY_NETWORKS_KEY = 1000  # second entry of the random-many seeds; training uses (seed, world), seed 1 and 2
DRAWS_PER_NETWORK = 64
REALIZATIONS_KEY = 2000  # second entry of the random-<k>-realizations seeds
DRAWS_PER_REALIZATION = 250


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


def simulated_sets(n_default: int, n_random: int, spec: FeatureSpec, cache_dir=None,
                   oversampling: int = 1) -> dict[str, tuple[Config, PhysicsConfig, Windows]]:
    """The ``default`` and ``random-<k>`` datasets: world config, physics parameters for it, draws
    (rendered through the daemon's channelizer when ``oversampling`` > 1)."""
    sets = {}
    tag = _spec_tag(spec, oversampling)
    default = load()
    if n_default:
        sets["default"] = (default, default.estimator.physics, _cached(cache_dir, f"eval-default-{EVAL_SEED}-{n_default}-{tag}", lambda: draw_windows(
            default, n_default, np.random.default_rng(EVAL_SEED), spec, shuffle_slots=False, max_tries=20,
            oversampling=oversampling)))
    for k in range(len(RANDOM_NETWORKS) if n_random else 0):
        config, rng = random_network(k)
        sets[f"random-{k}"] = (config, physics_config_for(config), _cached(cache_dir, f"eval-random{k}-{EVAL_SEED}-{n_random}-{tag}", lambda: draw_windows(
            config, n_random, rng, spec, shuffle_slots=False, max_tries=20, oversampling=oversampling)))
    return sets


def random_network(k: int) -> tuple[Config, np.random.Generator]:
    """Network ``random-<k>`` (``RANDOM_NETWORKS[k]``, seed ``EVAL_SEED + 1 + k``) and the generator its draws use."""
    n_rx, extent_km = RANDOM_NETWORKS[k]
    rng = np.random.default_rng(np.random.SeedSequence([EVAL_SEED + 1 + k]))
    return random_network_config(rng, n_rx=n_rx, extent_km=extent_km, seed=EVAL_SEED + 1 + k), rng


def realizations(k: int, n_realizations: int, draws: int, spec: FeatureSpec, cache_dir=None,
                 oversampling: int = 1) -> list[tuple[Config, PhysicsConfig, Windows]]:
    """The ``random-<k>-realizations`` dataset (module doc): network ``random-<k>`` with ``n_realizations`` fresh
    simulator seeds (hidden calibration errors, noise figures, shadowing fields), ``draws`` draws each."""
    base, _ = random_network(k)
    physics = physics_config_for(base)  # the seed is hidden state: the oracle's parameters are the network's
    tag = _spec_tag(spec, oversampling)
    out = []
    for j in range(n_realizations):
        rng = np.random.default_rng(np.random.SeedSequence([EVAL_SEED + 1 + k, REALIZATIONS_KEY, j]))
        config = replace(base, simulator=replace(base.simulator, seed=int(rng.integers(1, 2**31))))
        data = _cached(cache_dir, f"eval-random{k}-realization{j}-{EVAL_SEED}-{draws}-{tag}", lambda: draw_windows(
            config, draws, rng, spec, shuffle_slots=False, max_tries=20, oversampling=oversampling))
        out.append((config, physics, data))
    return out


def many_networks(n_networks: int, spec: FeatureSpec, cache_dir=None,
                  oversampling: int = 1) -> list[tuple[Config, PhysicsConfig, Windows]]:
    """The ``random-many`` dataset (module doc): per network its config, its physics parameters and its draws."""
    tag = _spec_tag(spec, oversampling)
    out = []
    for k in range(n_networks):
        rng = np.random.default_rng(np.random.SeedSequence([EVAL_SEED, MANY_NETWORKS_KEY, k]))
        config = random_network_config(rng, seed=int(rng.integers(1, 2**31)))
        data = _cached(cache_dir, f"eval-many{k}-{EVAL_SEED}-{DRAWS_PER_NETWORK}-{tag}", lambda: draw_windows(
            config, DRAWS_PER_NETWORK, rng, spec, shuffle_slots=False, max_tries=20, oversampling=oversampling))
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


def run_physics(config: Config, physics: PhysicsConfig, data: Windows, spec: FeatureSpec) -> Estimates:
    """The daemon's physics estimator on every draw (receivers in config order, slots not shuffled)."""
    from streamer.core.geodesy import network_geometry

    _, rx_enu_m, area = network_geometry(config)
    n_rx = rx_enu_m.shape[0]
    alts = np.array([rx.alt_m for rx in config.receivers])
    est = PhysicsGrid(physics, rx_enu_m, alts, area)
    pos = np.empty((len(data), 2))
    cov = np.empty((len(data), 2, 2))
    scales = np.empty((len(data), len(ELLIPSE_PROBABILITIES)))
    for b in range(len(data)):
        frames = data.features_dbm[b, :n_rx]
        present = data.rx_mask[b, :n_rx] > 0.5
        power = DETECTION.apply(frames, spec)
        res = est.estimate(np.where(present, power.signal_dbm, np.nan), power.heard & present, present,
                           power.detection_level_dbm)
        pos[b], cov[b], scales[b] = res.position_en_m, res.cov_en_m2, res.ellipse_scales
    return pos, cov, scales


def evaluate(models: list[Path], *, n_default: int = 5000, n_random: int = 1000, n_networks: int = 0,
             n_realizations: int = 0, realization_draws: int = DRAWS_PER_REALIZATION, physics: bool = True,
             powder: bool = False, powder_split: str | Path = "grid", powder_max_samples: int | None = None,
             powder_baseline: bool = False, cache_dir=None, spec: FeatureSpec | None = None, oversampling: int = 1, log=print) -> dict:
    """``{dataset: {method: scores}}`` for every model, ``physics`` and ``centroid`` (module doc).

    ``powder_split`` is a shorthand (``grid``, ``random``) or a split file's path; ``powder_max_samples`` scores
    only its first rows. A missing or malformed split file fails here, before any scoring.
    """
    spec = spec or FeatureSpec()
    if powder:
        from models.train.powder import read_split, split_path

        read_split(split_path(powder_split))
    results: dict[str, dict] = {}
    for name, (config, physics_cfg, data) in simulated_sets(n_default, n_random, spec, cache_dir, oversampling).items():
        truth = data.tx_enu_km.astype(np.float64) * 1e3
        table = {}
        for path in models:
            for method, told in model_methods(path).items():
                position, cov, scales = run_onnx(Path(path), data, site=site_propagation(physics_cfg) if told else None,
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
        network_sets["random-many"] = lambda: many_networks(n_networks, spec, cache_dir, oversampling)
    for k in range(len(RANDOM_NETWORKS) if n_realizations else 0):
        network_sets[f"random-{k}-realizations"] = lambda k=k: realizations(k, n_realizations, realization_draws, spec,
                                                                             cache_dir, oversampling)
    for name, make in network_sets.items():
        results[name] = score_networks(models, make(), spec, physics)
        log(format_table(name, results[name]))
    if powder:
        from models.train.powder import evaluate_powder, split_name

        name = split_name(powder_split)
        from models.train.powder import BASELINE_OPTIONS

        results[name] = evaluate_powder(models, split=powder_split, spec=spec, limit=powder_max_samples,
                                        options=BASELINE_OPTIONS if powder_baseline else None, log=log)
        log(format_table(name, results[name]))
    return results


def score_networks(models: list[Path], networks: list[tuple[Config, PhysicsConfig, Windows]], spec: FeatureSpec,
                   physics: bool = True) -> dict:
    """``{method: score_many(...)}`` of every model (told and blind, each with ``+site``), ``physics`` and
    ``centroid`` on several networks' draws (``random-many``, ``random-<k>-realizations``); ``+site`` calibrates
    each network on its own draws."""
    table = {}
    for path in models:
        for method, told in model_methods(path).items():
            estimates = [run_onnx(Path(path), data, site=site_propagation(ph) if told else None,
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
    results = evaluate(models, n_default=args.n, n_random=args.n_random, n_networks=args.n_networks,
                       n_realizations=args.realizations, realization_draws=args.realization_draws, physics=not args.no_physics,
                       powder=args.powder or args.test_split is not None, powder_split=args.test_split or args.powder_split or "grid",
                       powder_max_samples=args.powder_max_samples, powder_baseline=args.powder_baseline, cache_dir=args.cache_dir,
                       oversampling=2 if args.channelized else 1, log=log)
    if args.reproduces:
        print(format_reproduction(results, *args.reproduces))
    elif args.gates:
        print(format_gates(results))
    elif args.per_network:
        print(format_all_per_network(results))
    elif args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``heimdall evaluate`` entry point (also ``python -m models.train.evaluate``)."""
    parser = argparse.ArgumentParser(prog="heimdall evaluate", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
