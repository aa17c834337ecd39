"""Scores of one method's estimates on a set of draws, and the tables and gates made of them.

Owns ``scores`` (error percentiles in m, 68 % / 95 % ellipse coverage, mean NLL of the truth in metres), the two
methods every dataset scores alike (an ONNX model through ``OnnxSession.run``, the receivers' centroid), the
site-calibrated covariance, and the text, Markdown, gate and reproduction tables of ``{dataset: {method: scores}}``
results. ``models.train.evaluate`` (simulated sets) and ``models.train.powder`` (POWDER rows) both score through it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from models.train.dataset import Windows
from streamer.core.geodesy import mahalanobis_sq
from streamer.estimators.contract import OPTIONAL_INPUT_NAMES
from streamer.tools.calibrate_ellipses import coverage, least_nll_scale

#: One method's answers on a dataset: positions [N, 2] (m), covariances [N, 2, 2] (m^2), and the 68 % / 95 % ellipse
#: radii [N, 2] (standard deviations; ``None``: a Gaussian's).
Estimates = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]


def ellipse_size_m(cov_m2: np.ndarray) -> float:
    """Median over the draws of det(C)^(1/4) (m): the geometric mean of the covariance's two standard deviations,
    a size in which two methods' ellipses on the same draws compare as a ratio (NaN covariances left out)."""
    cov = np.asarray(cov_m2, dtype=np.float64)
    det = np.linalg.det(cov[np.isfinite(cov).all(axis=(1, 2))])
    det = det[det > 0]
    return float(np.median(det**0.25)) if len(det) else math.nan


def scores(position_m: np.ndarray, cov_m2: np.ndarray, truth_m: np.ndarray, ellipse_scales: np.ndarray | None = None) -> dict:
    """Error percentiles (m), ellipse coverage and mean NLL of a batch of estimates ``[N, 2]``, ``[N, 2, 2]``.

    ``ellipse_scales`` ``[N, 2]``: each estimate's 68 % and 95 % ellipse radii (standard deviations of its
    covariance, ``streamer.estimators.credible``), as the daemon publishes them; ``None``: a Gaussian's, 1.515 and 2.448."""
    r = truth_m - position_m
    err = np.linalg.norm(r, axis=-1)
    maha2 = mahalanobis_sq(r, cov_m2)
    _, logdet = np.linalg.slogdet(0.5 * (cov_m2 + np.swapaxes(cov_m2, -1, -2)))
    nll = 0.5 * maha2 + 0.5 * logdet + math.log(2 * math.pi)
    radius_sq = None if ellipse_scales is None else np.asarray(ellipse_scales, dtype=np.float64) ** 2
    return {"median_m": float(np.median(err)), "mean_m": float(err.mean()), "p90_m": float(np.percentile(err, 90)),
            **dict(zip(("cov68", "cov95"), coverage(maha2, radius_sq=radius_sq))), "nll": float(nll.mean()), "n": len(err)}


def scored(estimates: Estimates, truth_m: np.ndarray) -> dict:
    """``scores`` of one method's ``Estimates`` (positions, covariances, ellipse radii or ``None``)."""
    position_m, cov_m2, ellipse_scales = estimates
    return scores(position_m, cov_m2, truth_m, ellipse_scales)


def site_calibrated(position_m: np.ndarray, cov_m2: np.ndarray, truth_m: np.ndarray) -> np.ndarray:
    """``cov_m2`` [N, 2, 2] with each half of the draws (by index parity) scaled by the ellipse factor fitted on the
    other half, as ``heimdall calibrate-ellipses`` fits it from a site's known transmissions (module doc).

    A half whose other half has no usable estimate (a set of one draw) gets NaN covariances: scored as not covered.
    """
    ok = np.isfinite(position_m).all(axis=1) & np.isfinite(cov_m2).all(axis=(1, 2))
    m2 = np.full(len(truth_m), np.nan)
    m2[ok] = mahalanobis_sq(truth_m[ok] - position_m[ok], cov_m2[ok])
    half = np.arange(len(truth_m)) % 2
    out = np.array(cov_m2, dtype=np.float64, copy=True)
    for h in (0, 1):
        other = m2[(half != h) & ok]
        out[half == h] *= least_nll_scale(other) if len(other) else np.nan
    return out


def takes_optional_inputs(path: Path) -> bool:
    """Whether the ONNX model at ``path`` declares one of the contract's optional inputs (the site's propagation,
    the search area): such a model is scored told them and told nothing."""
    import onnx

    names = {i.name for i in onnx.load(str(path), load_external_data=False).graph.input}
    return bool(names & set(OPTIONAL_INPUT_NAMES))


def run_onnx(path: Path, data: Windows, batch: int = 256, site: np.ndarray | None = None,
             area: np.ndarray | None = None) -> Estimates:
    """Positions (m), covariances (m^2) and ellipse scales (``None`` for a model without the optional output) of an
    ONNX model through ``OnnxSession.run``; ``site``: the
    ``site_propagation`` row it is fed (``None``: unknown), as the daemon feeds ``estimator.physics``'s; ``area``:
    the ``search_area_row`` ([5], or [N, 5] one per draw; ``None``: unknown), the physics estimator's area. Each
    draw's ``active_frames`` (the daemon's decision) go in as its ``frame_mask``, as the daemon feeds them."""
    from streamer.estimators.onnx import OnnxSession

    est = OnnxSession(path, providers=("CPUExecutionProvider",))
    pos, cov, scales = [], [], []
    for i in range(0, len(data), batch):
        rows = area if area is None or np.ndim(area) == 1 else area[i : i + batch]
        out = est.run(data.features_dbm[i : i + batch], data.rx_enu_km[i : i + batch], data.rx_mask[i : i + batch], site, rows,
                      frame_mask=data.active_frames[i : i + batch])
        bad = ~out.valid
        pos.append(np.where(bad[:, None], np.nan, out.position_enu_km))
        cov.append(np.where(bad[:, None, None], np.nan, out.covariance_km2))
        if out.ellipse_scale is not None:
            scales.append(np.where(bad[:, None], np.nan, out.ellipse_scale))
    return 1e3 * np.concatenate(pos), 1e6 * np.concatenate(cov), np.concatenate(scales) if est.gives_ellipse_scale else None


def model_methods(path: Path) -> dict[str, bool]:
    """``{method name: told the site}`` to score a model as: ``<stem>``, told the dataset's site propagation and
    search area (the physics estimator's parameters and prior, as the daemon feeds ``estimator.physics``'s and the
    configured area), and, for a model that takes them, also ``<stem>-blind``, told nothing (it infers them from
    each window)."""
    stem = Path(path).stem
    return {stem: True, f"{stem}-blind": False} if takes_optional_inputs(Path(path)) else {stem: False}


def run_centroid(data: Windows) -> Estimates:
    """Mean of the receivers that heard; covariance = their spread + (100 m)^2 I."""
    w = data.heard[..., None]
    xy = data.rx_enu_km[..., :2] * 1e3
    count = w.sum(axis=1)
    centre = (xy * w).sum(axis=1) / count
    d = (xy - centre[:, None]) * w
    cov = np.einsum("nri,nrj->nij", d, d) / count[..., None] + 1e4 * np.eye(2)
    return centre, cov, None


def format_table(dataset: str, table: dict) -> str:
    lines = [f"{dataset}:", f"  {'method':<24}{'median_m':>10}{'mean_m':>10}{'p90_m':>10}{'cov68':>7}{'cov95':>7}{'nll':>8}{'n':>6}"]
    for method, s in table.items():
        lines.append(f"  {method:<24}{s['median_m']:>10.0f}{s['mean_m']:>10.0f}{s['p90_m']:>10.0f}{s['cov68']:>7.3f}"
                     f"{s['cov95']:>7.3f}{s['nll']:>8.2f}{s['n']:>6d}")
    lines += _network_spread_lines(table, "  ")
    return "\n".join(lines)


def coverage_spread(rows: list[dict], key: str) -> dict | None:
    """How much of the spread of per-network coverage ``key`` (``cov68``, ``cov95``) over ``score_many``'s rows
    sampling explains: ``observed_sd`` (standard deviation over the networks), ``sampling_sd`` (what the binomial
    draw of each network's n alone gives, sqrt(mean p(1 - p) / n)) and ``beyond_sampling_sd``
    (sqrt(observed^2 - sampling^2), 0 if negative: the method-of-moments estimate of the spread the networks
    themselves make; on ``random-<k>-realizations``, that of the network's hidden state). ``None`` with fewer than
    two rows."""
    values = np.array([r[key] for r in rows], dtype=np.float64)
    n = np.array([r["n"] for r in rows], dtype=np.float64)
    if len(values) < 2:
        return None
    observed = float(values.std(ddof=1))
    sampling = float(np.sqrt(np.mean(values * (1.0 - values) / n)))
    return {"observed_sd": observed, "sampling_sd": sampling,
            "beyond_sampling_sd": float(np.sqrt(max(observed**2 - sampling**2, 0.0)))}


def _spread_text(rows: list[dict]) -> str:
    parts = []
    for key in ("cov68", "cov95"):
        spread = coverage_spread(rows, key)
        if spread is not None:
            parts.append(f"{key} {spread['observed_sd']:.3f} (sampling {spread['sampling_sd']:.3f}, "
                         f"beyond it {spread['beyond_sampling_sd']:.3f})")
    return "" if not parts else "; sd over networks " + ", ".join(parts)


def _network_spread_lines(table: dict, indent: str) -> list[str]:
    return [f"{indent}{method}: per-network cov68 p10/p50/p90 " + " / ".join(f"{v:.2f}" for v in s["cov68_networks"])
            + ", cov95 " + " / ".join(f"{v:.2f}" for v in s["cov95_networks"])
            + ("" if "cov68_networks_in_gate" not in s else
               f"; inside the gate: cov68 {s['cov68_networks_in_gate']:.2f}, cov95 {s['cov95_networks_in_gate']:.2f} of networks")
            + _spread_text(s.get("networks", []))
            for method, s in table.items() if "cov68_networks" in s]


def format_per_network(dataset: str, table: dict) -> str:
    """Per network of a pooled set (``random-many``, ``random-<k>-realizations``): what it is, and for each model
    told the site (not ``-blind``, not ``+site``) and ``physics`` their coverage, and the model's ellipse size
    relative to the physics posterior's on the same draws (``ellipse_size_m``). Markdown; "" for a set without
    per-network rows."""
    methods = [m for m, s in table.items() if "networks" in s and m != "centroid" and not m.endswith(("+site", "-blind"))]
    if not methods:
        return ""
    models = [m for m in methods if m != "physics"]
    methods = models + [m for m in methods if m == "physics"]
    head = ["network", "receivers", "side km", "heard"] + [f"{m} cov68 / cov95" for m in methods]
    head += [f"{m} ellipse / physics" for m in models if "physics" in methods]
    lines = [f"**{dataset}, per network**", "", "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for i, row in enumerate(table[methods[0]]["networks"]):
        cells = [str(i), str(row["receivers"]), f"{row['side_km']:.1f}", f"{row['heard']:.1f}"]
        cells += [f"{table[m]['networks'][i]['cov68']:.2f} / {table[m]['networks'][i]['cov95']:.2f}" for m in methods]
        if "physics" in methods:
            cells += [f"{table[m]['networks'][i]['ellipse_m'] / table['physics']['networks'][i]['ellipse_m']:.3f}"
                      for m in models]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_all_per_network(results: dict) -> str:
    """``format_per_network`` of every pooled set in ``{dataset: {method: scores}}`` results."""
    return "\n".join(t for t in (format_per_network(name, table) for name, table in results.items()) if t)


def format_markdown(dataset: str, table: dict) -> str:
    lines = [f"**{dataset}**", "", "| method | median m | mean m | p90 m | cov68 | cov95 | NLL | n |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for method, s in table.items():
        lines.append(f"| {method} | {s['median_m']:.0f} | {s['mean_m']:.0f} | {s['p90_m']:.0f} | {s['cov68']:.3f} | "
                     f"{s['cov95']:.3f} | {s['nll']:.2f} | {s['n']} |")
    spread = _network_spread_lines(table, "- ")
    return "\n".join(lines + ([""] + spread if spread else [])) + "\n"


#: Issue 3's gates: errors within 5 % of the physics posterior's; coverage intervals (POWDER: median and cov95).
GATES = {"error_ratio": 1.05, "cov68": (0.64, 0.76), "cov95": (0.93, 0.97), "powder_median_m": 150.0,
         "powder_cov95": (0.90, 0.98)}


def gate_rows(results: dict) -> list[dict]:
    """Per dataset and method but ``centroid``: each gate met, and for a model its errors relative to ``physics``.

    The coverage gates hold for both estimators, so ``physics`` has its own row, without the error
    gates (it is their yardstick); on POWDER its row has the median gate too (the better method must meet it)."""
    rows = []
    for dataset, table in results.items():
        reference = table.get("physics")
        for method, s in table.items():
            if method == "centroid":
                continue
            row = {"dataset": dataset, "method": method, "cov68": s["cov68"], "cov95": s["cov95"]}
            if dataset.startswith("powder"):
                row["met"] = {"median": s["median_m"] <= GATES["powder_median_m"],
                              "cov95": GATES["powder_cov95"][0] <= s["cov95"] <= GATES["powder_cov95"][1]}
            else:
                row["met"] = {"cov68": GATES["cov68"][0] <= s["cov68"] <= GATES["cov68"][1],
                              "cov95": GATES["cov95"][0] <= s["cov95"] <= GATES["cov95"][1]}
                if reference is not None and method != "physics":
                    row["mean_vs_physics"] = s["mean_m"] / reference["mean_m"] - 1.0
                    row["p90_vs_physics"] = s["p90_m"] / reference["p90_m"] - 1.0
                    row["met"]["mean"] = s["mean_m"] <= GATES["error_ratio"] * reference["mean_m"]
                    row["met"]["p90"] = s["p90_m"] <= GATES["error_ratio"] * reference["p90_m"]
            rows.append(row)
    return rows


def format_gates(results: dict) -> str:
    """``gate_rows`` as a Markdown table (the gates a row misses, or "none")."""
    lines = ["| dataset | method | median m | mean vs physics | p90 vs physics | cov68 | cov95 | gates missed |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in gate_rows(results):
        ratios = [f"{100 * r[k]:+.1f} %" if k in r else "" for k in ("mean_vs_physics", "p90_vs_physics")]
        missed = ", ".join(k for k, ok in r["met"].items() if not ok) or "none"
        median = results[r["dataset"]][r["method"]]["median_m"]
        lines.append(f"| {r['dataset']} | {r['method']} | {median:.0f} | {ratios[0]} | {ratios[1]} | {r['cov68']:.3f} | "
                     f"{r['cov95']:.3f} | {missed} |")
    summary = gate_summary(results)
    return "\n".join(lines + ([""] + summary if summary else [])) + "\n"


#: Name prefix of the scenario sets of ``heimdall evaluate --scenarios`` (``traffic-partial``, ...).
SCENARIO_PREFIX = "traffic-"


def gate_readings(datasets) -> dict[str, list[str]]:
    """The datasets each reading of the per-network coverage gates grades, in order: ``seeded`` grades each random
    network on its one seeded realization (``random-<k>``); ``hidden state`` grades it over realizations of its
    hidden state (``random-<k>-realizations`` in place of ``random-<k>``), which no estimator is told, the oracle
    posterior included (module doc). Only ``seeded`` when no realizations were scored; only ``hidden state`` when
    nothing else was. The scenario sets (``SCENARIO_PREFIX``: the default and three unseen networks pooled over
    their hidden state, under one kind of traffic or drift) are graded apart, as ``traffic scenarios``."""
    datasets = list(datasets)
    scenarios = [d for d in datasets if d.startswith(SCENARIO_PREFIX)]
    datasets = [d for d in datasets if not d.startswith(SCENARIO_PREFIX)]
    seeded = [d for d in datasets if not d.endswith("-realizations")]
    readings = {"seeded": seeded} if seeded else {}
    if len(seeded) < len(datasets):
        readings["hidden state"] = [d for d in seeded if f"{d}-realizations" not in datasets] + \
                                   [d for d in datasets if d.endswith("-realizations")]
    if scenarios:
        readings["traffic scenarios"] = scenarios
    return readings


def gate_summary(results: dict) -> list[str]:
    """Per reading (``gate_readings``), the gates the shipped-kind methods (each model told the site, and
    ``physics``) miss, and for POWDER, whose gates the issue sets for the better of the two methods, which method
    meets them. Lines of Markdown; empty for results with no gate rows."""
    rows = [r for r in gate_rows(results) if not r["method"].endswith(("+site", "-blind"))]
    if not rows:
        return []
    lines = []
    for reading, datasets in gate_readings(results).items():
        graded = [r for r in rows if r["dataset"] in datasets]
        parts = []
        methods = dict.fromkeys(r["method"] for r in graded if not r["dataset"].startswith("powder"))
        for method in sorted(methods, key=lambda m: m == "physics"):  # the models first, the yardstick last
            missed = [f"{r['dataset']} {k}" for r in graded if r["method"] == method and not r["dataset"].startswith("powder")
                      for k, ok in r["met"].items() if not ok]
            parts.append(f"{method} misses {', '.join(missed) if missed else 'none'}")
        for dataset in dict.fromkeys(r["dataset"] for r in graded if r["dataset"].startswith("powder")):
            meeting = [r["method"] for r in graded if r["dataset"] == dataset and all(r["met"].values())]
            parts.append(f"{dataset} gates met by {', '.join(meeting) if meeting else 'no method'}")
        lines.append(f"- {reading} ({', '.join(datasets)}): " + "; ".join(parts))
    return lines


#: How close a second training run's scores must be to the shipped model's (within 5 %).
REPRODUCTION_TOLERANCE = 0.05
REPRODUCED_SCORES = ("median_m", "mean_m", "p90_m", "cov68", "cov95")


def reproduction_rows(results: dict, reference: str, candidate: str,
                      tolerance: float = REPRODUCTION_TOLERANCE) -> list[dict]:
    """Per dataset scored for both methods: ``candidate``'s ``REPRODUCED_SCORES`` relative to ``reference``'s
    (candidate / reference - 1) and whether every one is within ``tolerance``. Raises ``KeyError`` naming a
    method that no dataset holds."""
    for method in (reference, candidate):
        if not any(method in table for table in results.values()):
            held = sorted({m for table in results.values() for m in table})
            raise KeyError(f"method {method!r} is in no dataset of these results (methods: {', '.join(held)})")
    rows = []
    for dataset, table in results.items():
        if reference not in table or candidate not in table:
            continue
        ref, cand = table[reference], table[candidate]
        ratios = {k: _relative(cand[k], ref[k]) for k in REPRODUCED_SCORES}
        rows.append({"dataset": dataset, "n": cand["n"], "relative": ratios,
                     "within": all(abs(v) <= tolerance for v in ratios.values())})
    return rows


def _relative(value: float, reference: float) -> float:
    """value / reference - 1; a zero reference (a coverage of 0 on a tiny set) gives 0 when equal, else inf."""
    if reference == 0:
        return 0.0 if value == 0 else math.inf
    return value / reference - 1.0


def format_reproduction(results: dict, reference: str, candidate: str) -> str:
    """``reproduction_rows`` as a Markdown table."""
    lines = [(f"{candidate} against {reference} (candidate / reference - 1; tolerance "
              f"{100 * REPRODUCTION_TOLERANCE:.0f} %)"), "",
             "| dataset | n | " + " | ".join(REPRODUCED_SCORES) + " | within |",
             "|---|---:|" + "---:|" * len(REPRODUCED_SCORES) + "---|"]
    try:
        rows = reproduction_rows(results, reference, candidate)
    except KeyError as exc:
        raise SystemExit(f"heimdall evaluate --reproduces: {exc.args[0]}") from None
    for r in rows:
        cells = " | ".join(f"{100 * r['relative'][k]:+.1f} %" for k in REPRODUCED_SCORES)
        lines.append(f"| {r['dataset']} | {r['n']} | {cells} | {'yes' if r['within'] else 'no'} |")
    return "\n".join(lines) + "\n"


def summary_for_metadata(results: dict, method: str) -> tuple[dict, dict]:
    """(accuracy, calibration) dicts for ``ModelMetadata`` from ``evaluate``'s results for one model."""
    accuracy = {ds: {k: table[method][k] for k in ("median_m", "mean_m", "p90_m", "n")} for ds, table in results.items()}
    calibration = {ds: {k: table[method][k] for k in ("cov68", "cov95", "nll")} for ds, table in results.items()}
    return accuracy, calibration
