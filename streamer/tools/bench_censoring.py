"""``heimdall bench censoring``: the physics posterior on windows where some receivers did not hear, three ways
on the same windows in interleaved rounds of one run:

* ``now``: as the daemon runs it, the censoring term only on the cells where it can matter
  (``physics.add_censoring``) and log Phi by table (``normal_tail.add_log_ndtr_outer``);
* ``log_ndtr``: the same cells with scipy's ``log_ndtr``;
* ``every entry``: every grid entry (``NEGLIGIBLE_NATS`` infinite) with scipy's ``log_ndtr``: the exact posterior
  the other two approximate.

It prints each path's per-window times, ``now``'s ratios to the other two, and the largest differences of
``now``'s and ``log_ndtr``'s estimates from ``every entry``'s.

The network is the config's receivers, repeated as needed, each copy moved by (0.05°, 0.03°) north and east
from the one before; the windows are ``bench_model.physics_windows`` (transmitters and powers drawn in the search
area and the power prior, heard where the received power reaches a drawn detection level), those with at least
one silent receiver kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np

from streamer import config as config_mod
from streamer.tools.argtypes import whole_number_at_least_one


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``heimdall bench censoring``."""
    parser.add_argument("--receivers", type=whole_number_at_least_one("receivers"), default=64)
    parser.add_argument("--windows", type=whole_number_at_least_one("windows"), default=40,
                        help="censored windows timed (each once per round and path)")
    parser.add_argument("--rounds", type=whole_number_at_least_one("rounds"), default=3)
    parser.add_argument("-c", "--config", help="config whose receivers and estimator.physics to use (default: embedded)")


def network(config, n_receivers: int):
    """``config`` with ``n_receivers`` receivers: its own, repeated, each copy moved by (0.05°, 0.03°)."""
    base = config.receivers
    receivers = tuple(dataclasses.replace(base[i % len(base)], id=f"rx{i}", lat=base[i % len(base)].lat + 0.05 * (i // len(base)),
                                          lon=base[i % len(base)].lon + 0.03 * (i // len(base)))
                      for i in range(n_receivers))
    return dataclasses.replace(config, receivers=receivers)


def censored_windows(grid, count: int) -> list[tuple]:
    """``count`` windows with at least one silent receiver, from ``physics_windows`` draws."""
    from streamer.tools.bench_model import physics_windows

    power, heard, present, detection = physics_windows(grid, 8 * count + 64)
    keep = np.flatnonzero((~heard).any(axis=1) & heard.any(axis=1))[:count]
    return [(np.where(heard[b], power[b], np.nan), heard[b], present[b], detection[b]) for b in keep]


def bench_censoring(args) -> int:
    from streamer.estimators import physics as physics_mod
    from streamer.estimators.physics import PhysicsGrid
    from streamer.tools.bench_features import blas_one_thread

    load0 = os.getloadavg()
    cfg = network(config_mod.load(args.config), args.receivers)
    grid = PhysicsGrid.from_config(cfg)
    windows = censored_windows(grid, args.windows)
    silent = np.array([int((~w[1]).sum()) for w in windows])
    table = physics_mod.add_log_ndtr_outer
    pruned = physics_mod.NEGLIGIBLE_NATS
    paths = {"now": (pruned, table), "log_ndtr": (pruned, exact_add_log_ndtr_outer),
             "every entry": (np.inf, exact_add_log_ndtr_outer)}
    times = {name: [] for name in paths}
    results = {}
    limit, blas = blas_one_thread()
    try:
        with limit:
            for _ in range(args.rounds):
                for name, (nats, log_phi) in paths.items():
                    physics_mod.NEGLIGIBLE_NATS, physics_mod.add_log_ndtr_outer = nats, log_phi
                    out = []
                    for window in windows:
                        t0 = time.perf_counter()
                        out.append(grid.estimate(*window))
                        times[name].append(time.perf_counter() - t0)
                    results[name] = out
    finally:
        physics_mod.NEGLIGIBLE_NATS, physics_mod.add_log_ndtr_outer = pruned, table
    print(f"bench censoring: physics posterior, {args.receivers} receivers, {grid.grid_en_m.shape[0]} cells x "
          f"{grid.power_grid_dbm.shape[0]} power bins, {len(windows)} censored windows x {args.rounds} rounds; {blas}")
    print(f"  load average             {' '.join(f'{x:.2f}' for x in load0)} at start ({os.cpu_count()} CPUs, shared)")
    print(f"  silent receivers         median {np.median(silent):.0f}, range {silent.min()}-{silent.max()} per window")
    ms = {name: 1e3 * np.asarray(t) for name, t in times.items()}
    for name, t in ms.items():
        print(f"  {name:<24} p50 {np.percentile(t, 50):7.2f} ms  p99 {np.percentile(t, 99):7.2f} ms per window"
              f"  ({PATH_DOCS[name]})")
    for base in ("log_ndtr", "every entry"):
        print(f"  {'now / ' + base:<24} x{np.percentile(ms['now'], 50) / np.percentile(ms[base], 50):.3f} p50, "
              f"x{np.percentile(ms['now'], 99) / np.percentile(ms[base], 99):.3f} p99")
    for name in ("now", "log_ndtr"):
        pairs = list(zip(results[name], results["every entry"]))
        moved = max(float(np.max(np.abs(a.position_en_m - b.position_en_m))) for a, b in pairs)
        cov = max(float(np.max(np.abs(a.cov_en_m2 - b.cov_en_m2) / np.abs(b.cov_en_m2).max())) for a, b in pairs)
        print(f"  {name + ' - every entry':<24} largest: position {moved:.2e} m, covariance {cov:.2e} of its largest entry")
    print(f"  load average             {' '.join(f'{x:.2f}' for x in os.getloadavg())} at end")
    return 0


#: What each timed path computes.
PATH_DOCS = {
    "now": "cells within reach, log Phi by table",
    "log_ndtr": "cells within reach, scipy's log_ndtr",
    "every entry": "every entry, scipy's log_ndtr",
}


def exact_add_log_ndtr_outer(acc: np.ndarray, offset: np.ndarray, points: np.ndarray, weight) -> None:
    """scipy's ``log_ndtr`` with ``normal_tail.add_log_ndtr_outer``'s signature (z built as a ``[G, P]`` array)."""
    from scipy.special import log_ndtr

    acc += log_ndtr((offset[:, None] - points[None, :]) * np.broadcast_to(weight, offset.shape)[:, None])


run = bench_censoring  # the name streamer/tools/bench.py calls
