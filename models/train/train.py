"""``heimdall train``: train the localization network from scratch on simulated networks, export it, score it.

Steps (each one printed as it finishes):

1. Data: ``models.train.dataset.generate_cached`` draws ``--n-train`` windows from random networks (seed
   ``--seed``) and ``--n-val`` from other random networks (seed ``--seed + 1``), through
   ``models.train.render.render_windows`` and ``streamer.dsp.features.mel_frames_dbm``.
2. Training: AdamW, cosine learning rate, full 2-D Gaussian NLL (``network.gaussian_nll``) plus, for the grid
   head, ``--heard-weight`` x the cross-entropy of its heard weights (``loss_of``). Each batch is
   rotated by a random multiple of 90 degrees and mirrored with probability 1/2 about the origin (propagation is
   isotropic, so this is exact, and a search area's box stays axis-aligned), and present receivers are dropped with probability ``--drop-prob`` as extra outages (never
   below three that heard). Each window is told its network's true propagation (``dataset.world_sites``) with
   an operator's fitting error (``SITE_ERROR``), or nothing (probability ``SITE_UNKNOWN_PROB``); validation
   windows are told it exactly. Each window is also told its world's search area (``dataset.world_areas``), or
   nothing (probability ``AREA_UNKNOWN_PROB``). The weights with the lowest validation NLL are kept. ``--budget-minutes`` caps the
   wall time of the whole command: training stops early (and says so) if it would overrun. Then one factor on
   every covariance is fitted on the validation windows (``network.fit_covariance_scale``: the k in C -> k C
   with the least NLL there) and stored in the weights.
3. Export (``export.export_model``): ONNX opset 17, one file, metadata per streamer/estimators/contract.py;
   ONNX Runtime is compared with torch on validation inputs and the max abs differences printed.
4. Scoring (``models.train.evaluate``): the exported model on the seeded held-out sets; the numbers go into
   the metadata's ``accuracy`` and ``calibration``.

Examples (shell)
----------------
``heimdall train --out models/heimdall-0.5.0.onnx`` (the defaults are the shipped model's settings; see models/MODEL_CARD.md)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from models import SHIPPED_VERSION as VERSION
from models.train.commands import add_train_arguments as add_arguments, default_out
from models.train.dataset import DETECTION, MAX_RECEIVERS, Windows, generate_cached, world_areas, world_sites
from models.train.network import LocalizerNet, fit_covariance_scale, gaussian_nll
from streamer.dsp.features import FeatureSpec
from streamer.estimators.contract import SEARCH_AREA_WIDTH, SITE_PROPAGATION_WIDTH, ModelMetadata, Normalisation

NORMALISATION = Normalisation(offset_db=-100.0, scale_db=20.0)
# In training a window's site propagation (its world's truth) is hidden with this probability, so that the
# model also works where the operator has not measured it, and otherwise given with errors of about an
# operator's fit (sd of exponent, of ln sigma, of level in dB).
SITE_UNKNOWN_PROB = 0.25
SITE_ERROR = (0.1, 0.1, 2.0)
# The search area (what the physics estimator's uniform prior covers) is hidden in this share of training windows,
# so that the model also works when it is not told one.
AREA_UNKNOWN_PROB = 0.25
FREQ_RANGE_HZ = (144e6, 440e6)
# TRAINING_DATA and the "render" note are the metadata text of the shipped model, word for word: they name the
# modules as they were called when it was trained (streamer.features, streamer.channelizer, render_windows in
# receivers/simulator.py; now streamer.dsp.features, streamer.dsp.channelizer, models/train/render.py), so that
# `heimdall train` with the defaults still writes the shipped file byte for byte.
TRAINING_DATA = (
    "receivers/simulator.py render_windows -> streamer.features.mel_frames_dbm, random networks: 3-16 receivers, "
    "bounding box 3-200 km, 144-148 MHz or 430-440 MHz, path-loss exponent 2-4, 1 km loss free space -3..+25 dB, "
    "correlated shadowing 3-9 dB, calibration error sigma 0-4 dB, noise figure 3-12 dB with a spread of 0-4 dB over "
    "the receivers (noise referred to the receiver: the gain error scales the signal only), transmit power 15-60 dBm, "
    "outages; windows heard by >= 3 receivers (6 dB in 12.5 kHz)"
)


def to_tensors(data: Windows, batch: int = 1024, sites: np.ndarray | None = None,
               areas: np.ndarray | None = None, frame_mask: bool = False) -> dict[str, torch.Tensor]:
    """Model inputs and targets; features normalised with ``NORMALISATION`` (absent slots zero) and pooled
    over time once (``LocalizerNet.pool_time``, the graph's own first step; over each window's active frames,
    ``Windows.active_frames``, for a model that takes the frame mask). ``sites`` [N, 5]: each window's
    ``site_propagation`` (``dataset.world_sites``), ``areas`` [N, 5] its ``search_area_row``
    (``dataset.world_areas``); ``None``: unknown (zeros)."""
    pooled = []
    for i in range(0, len(data), batch):
        feats = (data.features_dbm[i : i + batch] - NORMALISATION.offset_db) / NORMALISATION.scale_db
        feats *= data.rx_mask[i : i + batch, :, None, None]
        mask = torch.from_numpy(np.ascontiguousarray(data.active_frames[i : i + batch], np.float32)) if frame_mask else None
        pooled.append(LocalizerNet.pool_time(torch.from_numpy(np.ascontiguousarray(feats, np.float32)), mask))
    return {
        "pooled": torch.cat(pooled) if pooled else torch.zeros(0, data.rx_mask.shape[1], 2 * data.features_dbm.shape[2]),
        "rx_enu_km": torch.from_numpy(data.rx_enu_km * data.rx_mask[..., None]),
        "rx_mask": torch.from_numpy(data.rx_mask),
        "heard": torch.from_numpy(data.heard),
        "target": torch.from_numpy(data.tx_enu_km),
        "site": torch.from_numpy(np.zeros((len(data), SITE_PROPAGATION_WIDTH), np.float32) if sites is None
                                 else np.ascontiguousarray(sites, np.float32)),
        "area": torch.from_numpy(np.zeros((len(data), SEARCH_AREA_WIDTH), np.float32) if areas is None
                                 else np.ascontiguousarray(areas, np.float32)),
    }


def rotate_area(area: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Search-area rows [B, 5] (km) under [B, 2, 2] rotations by multiples of 90 degrees (and mirrors): the
    bounding box of the turned corners, which is the turned box exactly. Unknown rows stay zero."""
    e0, e1, n0, n1 = area[:, 0], area[:, 1], area[:, 2], area[:, 3]
    corners = torch.stack([torch.stack([e0, n0], -1), torch.stack([e0, n1], -1), torch.stack([e1, n0], -1),
                           torch.stack([e1, n1], -1)], 1)  # [B, 4, 2]
    turned = torch.einsum("bij,bkj->bki", rot, corners)
    lo, hi = turned.min(dim=1).values, turned.max(dim=1).values
    return torch.stack([lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1], area[:, 4]], -1) * area[:, 4:5]


def augment(batch: dict[str, torch.Tensor], gen: torch.Generator, drop_prob: float,
            site_unknown_prob: float = SITE_UNKNOWN_PROB) -> dict[str, torch.Tensor]:
    """Rotation of the scene by a multiple of 90 degrees + mirror (search areas are axis-aligned boxes, and stay
    so), extra receiver outages, the site's propagation hidden (``site_unknown_prob``) or given with an
    operator's calibration error, and the search area hidden (``AREA_UNKNOWN_PROB``) (module doc, step 2)."""
    b = batch["target"].shape[0]
    theta = torch.randint(0, 4, (b,), generator=gen).to(torch.float32) * (math.pi / 2)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    cos, sin = torch.round(torch.cos(theta)), torch.round(torch.sin(theta))
    rot = torch.stack([torch.stack([cos, -sin * flip], -1), torch.stack([sin, cos * flip], -1)], -2)  # [B, 2, 2]
    enu = batch["rx_enu_km"].clone()
    enu[..., :2] = torch.einsum("bij,brj->bri", rot, enu[..., :2])
    target = torch.einsum("bij,bj->bi", rot, batch["target"])
    area = rotate_area(batch["area"], rot)
    area = torch.where((torch.rand(b, generator=gen) < AREA_UNKNOWN_PROB)[:, None], torch.zeros_like(area), area)
    mask, heard = batch["rx_mask"], batch["heard"]
    drop = (torch.rand(mask.shape, generator=gen) < drop_prob) & (mask > 0)
    keep_all = ((heard * ~drop).sum(dim=1) < 3).unsqueeze(-1)
    drop = drop & ~keep_all
    new_mask = mask * ~drop
    absent = LocalizerNet.pool_time(torch.zeros(1, 1, batch["pooled"].shape[-1] // 2, 1))[0, 0]  # a zero-filled slot
    pooled = torch.where(new_mask[..., None] > 0, batch["pooled"], absent)
    site = batch["site"].clone()
    noise = torch.randn(b, 3, generator=gen)
    site[:, 0] += SITE_ERROR[0] * noise[:, 0]
    site[:, 1] *= torch.exp(SITE_ERROR[1] * noise[:, 1])
    site[:, 2] += SITE_ERROR[2] * noise[:, 2]
    hidden = (torch.rand(b, generator=gen) < site_unknown_prob) | (site[:, 4] < 0.5)
    site = torch.where(hidden[:, None], torch.zeros_like(site), site)
    return {"pooled": pooled, "rx_enu_km": enu * new_mask[..., None],
            "rx_mask": new_mask, "heard": heard * new_mask, "target": target, "site": site, "area": area}


def loss_of(model: LocalizerNet, batch: dict[str, torch.Tensor], heard_weight: float = 0.0) -> torch.Tensor:
    """Mean Gaussian NLL of a batch, plus ``heard_weight`` x the grid head's heard/not-heard cross-entropy.

    The auxiliary term tells the grid head which present receivers heard by the daemon's rule, so its
    censoring term starts from the right receivers; the direct head has no such output and ignores it.
    """
    centre, scale, position, chol, heard_logit, _ = model.normalised_pooled_and_heard(batch["pooled"], batch["rx_enu_km"],
                                                                                   batch["rx_mask"], batch.get("site"),
                                                                                   batch.get("area"))
    loss = gaussian_nll(centre, scale, position, chol, batch["target"]).mean()
    if heard_weight and heard_logit is not None:
        mask = batch["rx_mask"]
        bce = F.binary_cross_entropy_with_logits(heard_logit, batch["heard"], reduction="none")
        loss = loss + heard_weight * (bce * mask).sum() / mask.sum().clamp(min=1.0)
    return loss


def evaluate_nll(model: LocalizerNet, data: dict[str, torch.Tensor], batch_size: int = 512) -> tuple[float, float]:
    """Mean normalised NLL and median error (km) on a whole set, without augmentation."""
    model.eval()
    nlls, errs = [], []
    with torch.no_grad():
        for i in range(0, data["target"].shape[0], batch_size):
            part = {k: v[i : i + batch_size] for k, v in data.items()}
            centre, scale, position, chol = model.normalised_pooled(part["pooled"], part["rx_enu_km"], part["rx_mask"],
                                                                    part["site"], part["area"])
            nlls.append(gaussian_nll(centre, scale, position, chol, part["target"]))
            errs.append(torch.linalg.norm(centre + scale * position - part["target"], dim=-1))
    model.train()
    return float(torch.cat(nlls).mean()), float(torch.cat(errs).median())


def fit(model: LocalizerNet, train: dict[str, torch.Tensor], val: dict[str, torch.Tensor], *, steps: int,
        batch_size: int, lr: float, drop_prob: float, seed: int, deadline: float, heard_weight: float = 0.0,
        log=print) -> dict:
    """Train ``model`` in place; restores the weights with the best validation NLL. Returns a summary."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 20)

    def lr_factor(i: int) -> float:  # linear warm-up, then cosine down to 1 % of lr
        if i < warmup:
            return (i + 1) / warmup
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * (i - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    n = train["target"].shape[0]
    best = (math.inf, None, 0)
    history = []
    eval_every = max(50, steps // 20)
    started = time.monotonic()
    step = 0
    for step in range(1, steps + 1):
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        batch = augment({k: v[idx] for k, v in train.items()}, gen, drop_prob)
        loss = loss_of(model, batch, heard_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % eval_every == 0 or step == steps or time.monotonic() > deadline:
            val_nll, val_med = evaluate_nll(model, val)
            history.append({"step": step, "train_nll": loss.item(), "val_nll": val_nll, "val_median_km": val_med})
            log(f"step {step}/{steps}  train NLL {loss.item():.3f}  val NLL {val_nll:.3f}  val median {val_med:.3f} km"
                f"  ({time.monotonic() - started:.0f} s)")
            if val_nll < best[0]:
                best = (val_nll, {k: v.clone() for k, v in model.state_dict().items()}, step)
            if time.monotonic() > deadline:
                log(f"budget reached: stopped at step {step} of {steps}")
                break
    if best[1] is not None:
        model.load_state_dict(best[1])
    return {"steps_run": step, "steps_planned": steps, "best_step": best[2], "best_val_nll": best[0],
            "train_seconds": time.monotonic() - started, "history": history}


def metadata(spec: FeatureSpec, args_summary: dict) -> ModelMetadata:
    """The exported model's metadata: its features, normalisation, training recipe and detection rule."""
    return ModelMetadata(detection=DETECTION,
        name="heimdall-localizer", version=VERSION, features=spec, normalisation=NORMALISATION,
        max_receivers=MAX_RECEIVERS, freq_range_hz=FREQ_RANGE_HZ,
        training_data=f"{TRAINING_DATA}; {json.dumps(args_summary, sort_keys=True)}",
        extent_scaling="centre = mean of present receivers' east/north, scale = their RMS distance from it "
                       "(>= 0.2 km); the network works in (xy - centre) / scale and returns km",
    )


def train(*, out: Path, budget_minutes: float = 30.0, n_train: int = 16384, n_val: int = 2048, steps: int = 3000,
          windows_per_network: int = 64,
          batch_size: int = 128, lr: float = 1e-3, dim: int = 128, layers: int = 3, drop_prob: float = 0.1,
          head: str = "grid", heard_weight: float = 0.3, channel_power: bool = True,
          seed: int = 1, workers: int = 2, threads: int = 2, cache_dir: Path | None = None, eval_n: int = 1000,
          spec: FeatureSpec | None = None, oversampling: int = 1, traffic: str = "onair", frame_mask: bool = True,
          log=print) -> dict:
    """Generate data, train, export to ``out`` and score; returns the report (also stored in the metadata).

    ``oversampling`` > 1 renders every window through the daemon's channelizer (``--channelized``). ``traffic``
    names how the drawn windows are keyed (``models.train.dataset``); ``frame_mask`` gives the model the
    contract's ``frame_mask`` input, so it pools each window over its active frames."""
    t0 = time.monotonic()
    deadline = t0 + 60.0 * budget_minutes
    spec = spec or FeatureSpec()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    train_data = generate_cached(n_train, seed=seed, spec=spec, cache_dir=cache_dir, workers=workers, oversampling=oversampling,
                                 windows_per_world=windows_per_network, traffic=traffic,
                                 progress=lambda k: log(f"train data: {k}/{n_train} windows ({time.monotonic() - t0:.0f} s)"))
    val_data = generate_cached(n_val, seed=seed + 1, spec=spec, cache_dir=cache_dir, workers=workers, oversampling=oversampling,
                               traffic=traffic,
                               progress=lambda k: log(f"validation data: {k}/{n_val} windows ({time.monotonic() - t0:.0f} s)"))
    data_seconds = time.monotonic() - t0
    model = LocalizerNet(n_mels=spec.n_mels, dim=dim, n_layers=layers, head=head,
                         channel_power_spec=spec if channel_power else None, frame_mask_input=frame_mask)
    # Keep time for export and scoring: about 1.5 s per scored draw-set of 100 on this kind of CPU.
    reserve = 60.0 + (0.02 * eval_n * 4 if eval_n else 0.0)
    val = to_tensors(val_data, sites=world_sites(val_data, seed + 1), areas=world_areas(val_data, seed + 1), frame_mask=frame_mask)
    summary = fit(model, to_tensors(train_data, sites=world_sites(train_data, seed), areas=world_areas(train_data, seed),
                                    frame_mask=frame_mask),
                  val, steps=steps, batch_size=batch_size, lr=lr,
                  drop_prob=drop_prob, seed=seed, deadline=deadline - reserve, heard_weight=heard_weight, log=log)
    summary["covariance_scale"] = fit_covariance_scale(model, val["pooled"], val["rx_enu_km"], val["rx_mask"], val["target"],
                                                       site=val["site"], area=val["area"])
    log(f"covariance scale fitted on the {len(val_data)} validation windows: {summary['covariance_scale']:.4f}"
        f" (the least-NLL k in C -> k C; validation NLL {evaluate_nll(model, val)[0]:.3f} after, {summary['best_val_nll']:.3f} before)")
    args_summary = {"n_train": n_train, "n_val": n_val, "steps": summary["steps_run"], "batch_size": batch_size,
                    "lr": lr, "dim": dim, "layers": layers, "drop_prob": drop_prob, "seed": seed, "head": head,
                    "covariance_scale": round(summary["covariance_scale"], 4)}
    if head == "grid":
        args_summary.update(grid_cells=model.config["grid_cells"], heard_weight=heard_weight)
        if channel_power:
            args_summary["channel_power"] = True
    args_summary["traffic"] = traffic
    if frame_mask:
        args_summary["frame_mask"] = True
    if windows_per_network != 64:
        args_summary["windows_per_network"] = windows_per_network
    if oversampling != 1:
        args_summary["render"] = f"through streamer.channelizer from {oversampling} x {spec.sample_rate_hz:g} Hz"
    meta = metadata(spec, args_summary)
    from models import MAX_MODEL_BYTES
    from models.train.export import export_model, onnx_vs_torch, set_metadata

    export_model(model, out, meta)
    check = val_data.subset(slice(0, 256))
    feats = (check.features_dbm - NORMALISATION.offset_db) / NORMALISATION.scale_db * check.rx_mask[..., None, None]
    diff = onnx_vs_torch(model, out, feats, check.rx_enu_km * check.rx_mask[..., None], check.rx_mask,
                         val["site"][:256].numpy(), val["area"][:256].numpy(), check.active_frames if frame_mask else None)
    log(f"ONNX Runtime vs torch on {diff['n']} validation windows: position max abs diff "
        f"{diff['position_max_abs_diff_km']:.2e} km, covariance max abs diff {diff['covariance_max_abs_diff_km2']:.2e} km^2"
        + (f", ellipse scale max abs diff {diff['ellipse_scale_max_abs_diff']:.2e}" if "ellipse_scale_max_abs_diff" in diff else ""))
    size = out.stat().st_size
    log(f"wrote {out} ({size / 1e6:.2f} MB)")
    if size > MAX_MODEL_BYTES:
        raise RuntimeError(f"{out} is {size} bytes, over the {MAX_MODEL_BYTES} byte limit")
    report = {"data_seconds": data_seconds, **{k: v for k, v in summary.items() if k != "history"},
              "onnx_vs_torch": diff, "model_bytes": size, "history": summary["history"]}
    if eval_n:
        from models.train.evaluate import evaluate
        from models.train.scoring import summary_for_metadata

        results = evaluate([out], n_default=eval_n, n_random=eval_n // 2, cache_dir=cache_dir, powder=False,
                           oversampling=oversampling, log=log)
        accuracy, calibration = summary_for_metadata(results, method=out.stem)
        meta = replace(meta, accuracy=accuracy, calibration={**calibration, "onnx_vs_torch": diff})
        set_metadata(out, meta)
        report["evaluation"] = results
    report["total_seconds"] = time.monotonic() - t0
    log(f"done in {report['total_seconds']:.0f} s (data {data_seconds:.0f} s, training {summary['train_seconds']:.0f} s)")
    return report


def main(argv: list[str] | None = None) -> int:
    """``heimdall train`` entry point (also ``python -m models.train.train``)."""
    parser = argparse.ArgumentParser(prog="heimdall train", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run ``heimdall train`` with parsed arguments (see ``add_arguments``)."""
    report = train(out=args.out, budget_minutes=args.budget_minutes, n_train=args.n_train, n_val=args.n_val,
                   windows_per_network=args.windows_per_network,
                   steps=args.steps, batch_size=args.batch_size, lr=args.lr, dim=args.dim, layers=args.layers,
                   drop_prob=args.drop_prob, head=args.head, heard_weight=args.heard_weight,
                   channel_power=args.channel_power, seed=args.seed,
                   workers=args.workers, threads=args.threads,
                   cache_dir=args.cache_dir, eval_n=args.eval_n, oversampling=2 if args.channelized else 1,
                   traffic=args.traffic, frame_mask=args.frame_mask)
    if args.report is not None:
        args.report.write_text(json.dumps(report, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
