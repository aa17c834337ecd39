"""The localization model: dataset path, network properties, loss, export contract, and a short training run."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch", reason="training needs torch: pip install -e '.[train]'")

import streamer.dsp.features  # noqa: E402
from models.train import dataset  # noqa: E402
from models.train.scoring import run_centroid, scores  # noqa: E402
from models import MAX_MODEL_BYTES  # noqa: E402
from models.train.export import export_model, onnx_vs_torch  # noqa: E402
from models.train.network import LocalizerNet, fit_covariance_scale, gaussian_nll, log_normal_cdf  # noqa: E402
from models.train.train import NORMALISATION, fit, loss_of, metadata, rotate_area, to_tensors  # noqa: E402
from streamer.dsp.features import FeatureSpec  # noqa: E402
from streamer.estimators.onnx import OnnxSession  # noqa: E402
from streamer.core.geodesy import network_geometry  # noqa: E402
from streamer.estimators.contract import check_model, read_metadata, search_area_row, site_propagation  # noqa: E402

SPEC = FeatureSpec()
R = dataset.MAX_RECEIVERS


def random_inputs(batch: int, seed: int = 0, present_min: int = 3):
    rng = np.random.default_rng(seed)
    feats = rng.normal(-0.5, 0.6, (batch, R, SPEC.n_mels, SPEC.n_frames)).astype(np.float32)
    enu = np.zeros((batch, R, 3), np.float32)
    mask = np.zeros((batch, R), np.float32)
    for b in range(batch):
        k = int(rng.integers(present_min, R + 1))
        slots = rng.permutation(R)[:k]
        mask[b, slots] = 1.0
        enu[b, slots, :2] = rng.uniform(-1, 1, (k, 2)) * 10 ** rng.uniform(0.3, 2.0)
        enu[b, slots, 2] = rng.uniform(-0.3, 0.3, k)
    feats *= mask[..., None, None]
    return feats, enu, mask


@pytest.fixture(scope="module", params=["direct", "grid"])
def tiny_model(request):
    """Both output heads: every contract test below runs on each."""
    torch.manual_seed(0)
    model = LocalizerNet(n_mels=SPEC.n_mels, dim=32, n_layers=1, heads=2, head=request.param).eval()
    if request.param == "grid":  # non-zero head weights, so the learned corrections are exercised too
        with torch.no_grad():
            for layer in (model.grid.receiver, model.grid.scene[-1]):
                layer.weight.normal_(0.0, 0.05)
    return model


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    export_model(tiny_model, path, metadata(SPEC, {"test": True}))
    return path


def test_dataset_features_come_from_streamer_features(monkeypatch):
    calls = []
    real = streamer.dsp.features.mel_frames_dbm

    def sentinel(samples, spec, calibration_db=0.0):
        calls.append(np.shape(samples))
        return real(samples, spec, calibration_db) * 0.0 - 77.25  # -77.25 dBm everywhere: only this path gives it

    monkeypatch.setattr(streamer.dsp.features, "mel_frames_dbm", sentinel)
    cfg = dataset.random_network_config(np.random.default_rng(5), n_rx=4, extent_km=10.0, seed=5)
    # The sentinel makes every receiver look equally strong, so ask for no hearing receivers at all.
    data = dataset.draw_windows(cfg, 2, np.random.default_rng(1), SPEC, min_heard=0)
    assert calls and all(shape[-1] == SPEC.n_samples for shape in calls)
    present = data.rx_mask > 0
    assert np.all(data.features_dbm[present] == np.float32(-77.25))
    assert np.all(data.features_dbm[~present] == 0.0)


def test_channelized_training_windows_go_through_the_daemons_channelizer(monkeypatch):
    """``heimdall train --channelized`` (oversampling=2): every rendered receiver window passes through
    streamer.dsp.channelizer.Channelizer, from twice the model rate down to it."""
    import streamer.dsp.channelizer

    calls = []
    real = streamer.dsp.channelizer.Channelizer.process

    def spy(self, block):
        calls.append((block.sample_rate, self.out_rate_hz))
        return real(self, block)

    monkeypatch.setattr(streamer.dsp.channelizer.Channelizer, "process", spy)
    cfg = dataset.random_network_config(np.random.default_rng(5), n_rx=4, extent_km=10.0, seed=5)
    data = dataset.draw_windows(cfg, 2, np.random.default_rng(1), SPEC, min_heard=0, oversampling=2)
    assert len(data) == 2
    assert calls and set(calls) == {(2 * SPEC.sample_rate_hz, SPEC.sample_rate_hz)}
    assert len(calls) == int(data.rx_mask.sum())  # one per present receiver window, none skipped
    assert dataset._spec_tag(SPEC, 2) != dataset._spec_tag(SPEC)  # cached apart from unchannelized data


def test_dataset_is_seeded_and_padded():
    a = dataset.generate(3, seed=11, spec=SPEC, windows_per_world=3)
    b = dataset.generate(3, seed=11, spec=SPEC, windows_per_world=3)
    assert np.array_equal(a.features_dbm, b.features_dbm) and np.array_equal(a.tx_enu_km, b.tx_enu_km)
    assert a.features_dbm.shape == (3, R, SPEC.n_mels, SPEC.n_frames)
    assert np.all(a.heard.sum(axis=1) >= 3) and np.all(a.heard <= a.rx_mask)
    # The transmitter lies within the world's search area: rx bounding box + margin, so within a few extents.
    extent = np.ptp(a.rx_enu_km[0][a.rx_mask[0] > 0][:, :2], axis=0).max()
    assert np.all(np.abs(a.tx_enu_km[0]) < 3 * extent + 1)


def test_permutation_invariant(tiny_model):
    feats, enu, mask = random_inputs(6, seed=1)
    perm = np.random.default_rng(2).permutation(R)
    with torch.no_grad():
        p1, c1, *_ = tiny_model(*map(torch.from_numpy, (feats, enu, mask)))
        p2, c2, *_ = tiny_model(*map(torch.from_numpy, (feats[:, perm], enu[:, perm], mask[:, perm])))
    assert torch.allclose(p1, p2, atol=1e-4) and torch.allclose(c1, c2, rtol=1e-4, atol=1e-6)


def test_masked_slots_are_ignored(tiny_model):
    feats, enu, mask = random_inputs(4, seed=3)
    junk_f, junk_e = feats.copy(), enu.copy()
    junk_f[mask == 0] = 3.0  # the estimator zero-fills, but the graph must not depend on it
    junk_e[mask == 0] = 500.0
    with torch.no_grad():
        p1, c1, *_ = tiny_model(*map(torch.from_numpy, (feats, enu, mask)))
        p2, c2, *_ = tiny_model(*map(torch.from_numpy, (junk_f, junk_e, mask)))
    assert torch.allclose(p1, p2, atol=1e-4) and torch.allclose(c1, c2, rtol=1e-4, atol=1e-6)


def test_a_window_does_not_depend_on_its_batch(tiny_model):
    """The network evaluates only the slots some window of the batch uses (``used_slots``): alone, a 3-receiver
    window has fewer of them than inside a batch with a 16-receiver one, and must give the same answer."""
    feats, enu, mask = random_inputs(6, seed=5)
    mask[0] = 0.0
    mask[0, [2, 7, 11]] = 1.0
    mask[1] = 1.0
    feats *= mask[..., None, None]
    with torch.no_grad():
        pos, cov, *_ = tiny_model(*map(torch.from_numpy, (feats, enu, mask)))
        for b in range(len(mask)):
            alone_pos, alone_cov, *_ = tiny_model(*(torch.from_numpy(a[b:b + 1]) for a in (feats, enu, mask)))
            assert torch.allclose(pos[b], alone_pos[0], atol=1e-4), b
            assert torch.allclose(cov[b], alone_cov[0], rtol=1e-4, atol=1e-6), b


def test_heard_logits_cover_every_slot_when_the_batch_leaves_some_unused():
    """Training's heard loss reads a logit per slot: the network runs on the used slots only and puts their logits
    back in place (slots no window uses get 0; masked slots are kept out of the loss by the mask either way)."""
    from models.train.network import used_slots

    model = perturbed_grid_model()
    feats, enu, mask = random_inputs(3, seed=9)
    mask[:, 10:] = 0.0
    mask[:, 0] = 0.0  # slot 0 unused too: it is kept anyway, so the receiver axis is never empty
    assert used_slots(torch.from_numpy(mask)).tolist() == list(range(10))
    pooled = model.pool_time(torch.from_numpy(feats * mask[..., None, None]))
    with torch.no_grad():
        *_, heard_logit, _ = model.normalised_pooled_and_heard(pooled, torch.from_numpy(enu), torch.from_numpy(mask))
        *_, used_logit, _ = model.normalised_pooled_and_heard(pooled[:, 1:10], torch.from_numpy(enu[:, 1:10]),
                                                              torch.from_numpy(mask[:, 1:10]))
    assert heard_logit.shape == (3, R) and (heard_logit[:, 10:] == 0).all() and torch.isfinite(heard_logit[:, 0]).all()
    assert torch.allclose(heard_logit[:, 1:10], used_logit, atol=1e-5)


def test_a_batch_with_no_receiver_present_gives_an_answer_of_the_right_shape(tiny_model, exported):
    """Slot 0 is always kept (``used_slots``), so an all-masked batch still runs, in torch and in ONNX Runtime
    (the daemon never sends one: fewer than ``pipeline.min_receivers`` receivers is not localized)."""
    feats, enu, mask = random_inputs(2, seed=4)
    mask[:] = 0.0
    with torch.no_grad():
        pos, cov, *_ = tiny_model(*map(torch.from_numpy, (feats * 0, enu * 0, mask)))
    assert pos.shape == (2, 2) and cov.shape == (2, 2, 2)
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    feeds = {"features": feats * 0, "rx_enu_km": enu * 0, "rx_mask": mask}
    feeds.update({i.name: np.zeros((2, 5), np.float32) for i in session.get_inputs() if i.name not in feeds})
    out = session.run(None, feeds)
    assert out[0].shape == (2, 2) and out[1].shape == (2, 2, 2)


def test_covariance_is_spd_and_scales_with_the_network(tiny_model):
    feats, enu, mask = random_inputs(32, seed=4)
    with torch.no_grad():
        pos, cov, *_ = tiny_model(*map(torch.from_numpy, (feats, enu, mask)))
        pos10, cov10, *_ = tiny_model(torch.from_numpy(feats), torch.from_numpy(enu * np.float32(10.0)), torch.from_numpy(mask))
    cov = cov.double().numpy()
    assert np.allclose(cov, np.swapaxes(cov, 1, 2))
    assert np.all(np.linalg.eigvalsh(cov) > 0)
    assert np.all(np.abs(cov[:, 0, 1]) > 0)  # full covariance, not axis-aligned
    # Normalised coordinates: 10x the network gives outputs in the new km (not equal, since ln(scale) is an input).
    assert torch.all(torch.isfinite(pos10)) and torch.all(torch.isfinite(cov10))


def test_log_normal_cdf_matches_scipy_and_stays_finite():
    from scipy.stats import norm

    z = torch.linspace(-40.0, 8.0, 2001, dtype=torch.float64, requires_grad=True)
    got = log_normal_cdf(z)
    want = norm.logcdf(z.detach().numpy())
    assert np.allclose(got.detach().numpy(), want, rtol=2e-3, atol=2e-3)
    got.sum().backward()
    assert torch.all(torch.isfinite(z.grad))


def test_unknown_head_is_refused():
    with pytest.raises(ValueError, match="head must be 'direct' or 'grid'"):
        LocalizerNet(head="mlp")


def test_gaussian_nll_matches_closed_form():
    rng = np.random.default_rng(6)
    centre = torch.tensor(rng.normal(0, 5, (5, 2)))
    scale = torch.tensor(rng.uniform(0.5, 20, (5, 1)))
    pos = torch.tensor(rng.normal(0, 1, (5, 2)))
    chol = torch.tensor(np.c_[rng.uniform(0.1, 2, 5), rng.normal(0, 1, 5), rng.uniform(0.1, 2, 5)])
    target = torch.tensor(rng.normal(0, 30, (5, 2)))
    got = gaussian_nll(centre, scale, pos, chol, target).numpy()
    for b in range(5):
        L = np.array([[chol[b, 0], 0.0], [chol[b, 1], chol[b, 2]]])
        C = L @ L.T
        r = (target[b].numpy() - centre[b].numpy()) / scale[b, 0].item() - pos[b].numpy()
        want = 0.5 * r @ np.linalg.solve(C, r) + 0.5 * np.log(np.linalg.det(C)) + math.log(2 * math.pi)
        assert got[b] == pytest.approx(want, rel=1e-9)


def test_export_follows_the_contract(exported):
    meta = check_model(exported)
    assert meta.max_receivers == R and meta.features == SPEC
    assert meta.normalisation == NORMALISATION
    assert exported.stat().st_size < MAX_MODEL_BYTES
    import onnx

    proto = onnx.load(str(exported))
    assert proto.opset_import[0].version == 17
    assert read_metadata(proto) == meta


def test_onnx_equals_torch(tiny_model, exported):
    feats, enu, mask = random_inputs(16, seed=7)
    diff = onnx_vs_torch(tiny_model, exported, feats, enu, mask)
    assert diff["position_max_abs_diff_km"] < 1e-3
    assert diff["covariance_max_rel_diff"] < 1e-3


def test_onnx_estimator_runs_the_exported_model(tiny_model, exported):
    feats, enu, mask = random_inputs(3, seed=8)
    dbm = feats * NORMALISATION.scale_db + NORMALISATION.offset_db
    n = 9  # the daemon passes its own receiver count; the estimator pads to max_receivers
    order = np.argsort(-mask, axis=1, kind="stable")[:, :n]
    take = np.take_along_axis
    out = OnnxSession(exported, providers=("CPUExecutionProvider",)).run(
        take(dbm, order[..., None, None], 1), take(enu, order[..., None], 1), take(mask, order, 1))
    keep = take(mask, order, 1)
    with torch.no_grad():
        pos, cov, *_ = tiny_model(torch.from_numpy(np.where(keep[..., None, None] > 0, take(feats, order[..., None, None], 1), 0)),
                                  torch.from_numpy(take(enu, order[..., None], 1) * keep[..., None]), torch.from_numpy(keep))
    assert out.valid.all()
    assert np.allclose(out.position_enu_km, pos.numpy(), atol=1e-3)


def test_scores_of_a_calibrated_gaussian():
    rng = np.random.default_rng(9)
    cov = np.array([[4.0, 1.5], [1.5, 1.0]]) * 1e6
    truth = rng.multivariate_normal([0, 0], cov, 20000)
    s = scores(np.zeros_like(truth), np.broadcast_to(cov, (len(truth), 2, 2)), truth)
    assert s["cov68"] == pytest.approx(0.68, abs=0.01) and s["cov95"] == pytest.approx(0.95, abs=0.01)


@pytest.mark.parametrize("head", ["direct", "grid"])
def test_the_fitted_covariance_scale_is_the_least_nll_factor_and_is_in_the_exported_graph(head, tmp_path):
    """Truths drawn from N(position, 2 C) around a model's own outputs: the fitted k is 2, it minimises the NLL,
    every covariance the model reports is k times the unscaled one, and ONNX Runtime reports the same."""
    torch.manual_seed(0)
    model = LocalizerNet(n_mels=SPEC.n_mels, dim=32, n_layers=1, heads=2, head=head).eval()
    feats, enu, mask = random_inputs(256, seed=5)
    pooled = LocalizerNet.pool_time(torch.from_numpy(feats)).repeat(16, 1, 1)  # 4096 draws, 16 per window
    enu_t, mask_t = torch.from_numpy(enu).repeat(16, 1, 1), torch.from_numpy(mask).repeat(16, 1)
    with torch.no_grad():
        centre, scale, position, chol = model.normalised_pooled(pooled, enu_t, mask_t)
        _, cov_before, *_ = model(torch.from_numpy(feats), torch.from_numpy(enu), torch.from_numpy(mask))
    z = torch.from_numpy(np.random.default_rng(6).standard_normal((pooled.shape[0], 2)).astype(np.float32))
    offset = torch.stack([chol[:, 0] * z[:, 0], chol[:, 1] * z[:, 0] + chol[:, 2] * z[:, 1]], dim=-1) * math.sqrt(2.0)
    target = centre + scale * (position + offset)

    k = fit_covariance_scale(model, pooled, enu_t, mask_t, target)
    assert k == pytest.approx(2.0, abs=0.15)  # mean of a chi-square(2) over 4096 draws: sd 0.03

    def mean_nll(factor: float) -> float:
        model.covariance_scale.fill_(factor)
        with torch.no_grad():
            return float(gaussian_nll(*model.normalised_pooled(pooled, enu_t, mask_t), target).mean())

    assert mean_nll(k) < min(mean_nll(0.8 * k), mean_nll(1.25 * k), mean_nll(1.0))
    model.covariance_scale.fill_(k)
    with torch.no_grad():
        _, cov_after, *_ = model(torch.from_numpy(feats), torch.from_numpy(enu), torch.from_numpy(mask))
    np.testing.assert_allclose(cov_after.numpy(), k * cov_before.numpy(), rtol=1e-4)
    path = tmp_path / "scaled.onnx"
    export_model(model, path, metadata(SPEC, {"covariance_scale": k}))
    diff = onnx_vs_torch(model, path, feats, enu, mask)
    assert diff["covariance_max_abs_diff_km2"] <= 1e-4 * float(cov_after.abs().max())


def test_a_covariance_scale_from_non_finite_truths_is_refused():
    torch.manual_seed(0)
    model = LocalizerNet(n_mels=SPEC.n_mels, dim=32, n_layers=1, heads=2, head="grid")
    feats, enu, mask = random_inputs(4, seed=7)
    target = torch.full((4, 2), float("nan"))
    with pytest.raises(ValueError, match="covariance scale must come out finite and > 0, got nan from 4 windows"):
        fit_covariance_scale(model, LocalizerNet.pool_time(torch.from_numpy(feats)), torch.from_numpy(enu),
                             torch.from_numpy(mask), target)


@pytest.mark.slow
def test_short_training_beats_the_receiver_centroid():
    """About two minutes on two cores: a small model of the shipped kind (the channel-power grid head) trained on ~2000
    simulated windows halves the centroid's error."""
    torch.manual_seed(0)
    train = dataset.generate(1536, seed=101, spec=SPEC, windows_per_world=48, workers=2)
    held_out = dataset.generate(384, seed=202, spec=SPEC, windows_per_world=48, workers=2)  # other networks
    model = LocalizerNet(n_mels=SPEC.n_mels, dim=64, n_layers=2, channel_power_spec=SPEC)  # the shipped head
    held_out_sites = dataset.world_sites(held_out, 202)
    fit(model, to_tensors(train, sites=dataset.world_sites(train, 101)),
        to_tensors(held_out.subset(slice(0, 128)), sites=held_out_sites[:128]), steps=400, batch_size=64, lr=2e-3,
        drop_prob=0.1, seed=0, deadline=time.monotonic() + 240, heard_weight=0.3, log=lambda *a: None)
    test = held_out.subset(slice(128, None))
    feats = (test.features_dbm - NORMALISATION.offset_db) / NORMALISATION.scale_db * test.rx_mask[..., None, None]
    with torch.no_grad():
        pos, *_ = model.eval()(torch.from_numpy(feats), torch.from_numpy(test.rx_enu_km), torch.from_numpy(test.rx_mask),
                               torch.from_numpy(held_out_sites[128:]))
    err_model = np.linalg.norm(pos.numpy() - test.tx_enu_km, axis=-1)
    centroid, _, _ = run_centroid(test)
    err_centroid = np.linalg.norm(centroid / 1e3 - test.tx_enu_km, axis=-1)
    # Networks span 3-200 km, so compare errors relative to each network's size.
    size = np.array([np.ptp(test.rx_enu_km[b][test.rx_mask[b] > 0][:, :2], axis=0).max() for b in range(len(test))])
    ratio = np.median(err_model / size) / np.median(err_centroid / size)
    assert ratio < 0.7, f"model / centroid median relative error = {ratio:.2f}"


def test_evaluate_json_has_every_dataset_and_method(exported, capsys, tmp_path):
    from models.train.evaluate import main as evaluate_main

    assert evaluate_main([str(exported), "--n", "4", "--n-random", "3", "--n-networks", "2", "--realizations", "2",
                          "--realization-draws", "3", "--json", "--cache-dir", str(tmp_path)]) == 0
    import json

    results = json.loads(capsys.readouterr().out)
    realized = {f"random-{k}-realizations" for k in range(3)}
    assert set(results) == {"default", "random-0", "random-1", "random-2", "random-many"} | realized
    keys = {"median_m", "mean_m", "p90_m", "cov68", "cov95", "nll", "n"}
    for name, table in results.items():
        # the tiny model takes the site: scored told it (as the daemon runs it) and blind
        assert set(table) == {exported.stem, f"{exported.stem}+site", f"{exported.stem}-blind", f"{exported.stem}-blind+site",
                              "physics", "centroid"}
        model, site = table[exported.stem], table[f"{exported.stem}+site"]  # the same positions, other ellipses
        assert all(site[k] == model[k] for k in ("median_m", "mean_m", "p90_m", "n")) and site["nll"] != model["nll"]
        for s in table.values():
            if name == "random-many" or name in realized:  # pooled over 2 networks, with the per-network spread
                assert set(s) == keys | {"cov68_networks", "cov95_networks", "cov68_networks_in_gate",
                                         "cov95_networks_in_gate", "networks"}
                assert s["n"] == (128 if name == "random-many" else 6) and len(s["networks"]) == 2
                assert len(s["cov68_networks"]) == 3 and s["cov68_networks"] == sorted(s["cov68_networks"])
            else:
                assert set(s) == keys and s["n"] >= 1
    assert evaluate_main([str(exported), "--n", "4", "--n-random", "0", "--gates", "--cache-dir", str(tmp_path)]) == 0
    gates = capsys.readouterr().out
    assert gates.startswith("| dataset | method | median m | mean vs physics |") and f"| default | {exported.stem}-blind |" in gates
    saved = tmp_path / "scores.json"
    saved.write_text(json.dumps(results))
    assert evaluate_main(["--from-json", str(saved), "--per-network"]) == 0
    per_network = capsys.readouterr().out
    assert {"**random-many, per network**", "**random-2-realizations, per network**"} <= set(per_network.splitlines())
    assert f"| {exported.stem} cov68 / cov95 | physics cov68 / cov95 | {exported.stem} ellipse / physics |" in per_network


def test_heard_loss_teaches_the_grid_head_only():
    """``--heard-weight`` adds the grid head's heard/not-heard cross-entropy; the direct head has no such output."""
    feats, enu, mask = random_inputs(8, seed=11)
    pooled = LocalizerNet.pool_time(torch.from_numpy(feats))
    heard = torch.from_numpy(mask) * (torch.arange(R) % 2 == 0)
    batch = {"pooled": pooled, "rx_enu_km": torch.from_numpy(enu), "rx_mask": torch.from_numpy(mask),
             "heard": heard, "target": torch.zeros(8, 2)}
    for head, adds in (("grid", True), ("direct", False)):
        torch.manual_seed(0)
        model = LocalizerNet(n_mels=SPEC.n_mels, dim=32, n_layers=1, heads=2, head=head)
        plain, with_heard = loss_of(model, batch, 0.0), loss_of(model, batch, 0.5)
        assert torch.isfinite(with_heard)
        assert (with_heard > plain + 1e-3) if adds else torch.equal(with_heard, plain)


def test_untrained_grid_head_is_the_log_distance_posterior():
    """With its heads at their initial zeros, the grid head is the textbook posterior (exponent 3): powers that
    follow the log-distance law from a transmitter put its mean on the transmitter once sigma is small (at the
    initial 6 dB five receivers leave a posterior tens of km wide, whose mean is not the truth)."""
    torch.manual_seed(0)
    model = LocalizerNet(n_mels=SPEC.n_mels, dim=32, n_layers=1, heads=2, head="grid").eval()
    with torch.no_grad():
        model.grid.scene[-1].bias[1] = -10.0  # sigma = 1 + 7.2 softplus(-10) dB = 1.0 dB
    pooled, enu, mask, tx = _log_distance_scene()
    assert (pooled[0, :, 5] > 8.0 / 20.0).tolist() == [True] * 5 + [False]  # the far receiver hears nothing
    with torch.no_grad():
        centre, scale, position, _ = model.normalised_pooled(pooled, enu, mask)
    estimate = (centre + scale * position)[0].numpy()
    # Within a cell (5/32 of the scale) of the truth.
    assert np.linalg.norm(estimate - tx) < 0.15 * float(scale), (estimate, tx, float(scale))


def test_world_sites_are_each_windows_own_world():
    data = dataset.generate(24, seed=303, spec=SPEC, windows_per_world=8)
    sites = dataset.world_sites(data, 303)
    for i in range(len(data)):
        config, _ = dataset.world_config(303, int(data.world[i]))
        np.testing.assert_array_equal(sites[i], site_propagation(dataset.physics_config_for(config)))
    assert len({tuple(row) for row in sites}) == len(set(data.world.tolist()))
    with pytest.raises(ValueError, match="match no world of seed 304"):
        dataset.window_worlds(data, 304, max_top_up=1)


def _log_distance_scene(level_at_1km_db: float = 60.0, exponent: float = 3.0):
    """Six receivers, five of which hear a transmitter at (3, 4) km with log-distance powers (no shadowing)."""
    rx = np.array([[-20.0, -15.0], [25.0, -10.0], [5.0, 30.0], [-30.0, 20.0], [15.0, 5.0], [-50.0, -45.0]])
    tx = np.array([3.0, 4.0])
    level_db = level_at_1km_db - 10.0 * exponent * np.log10(np.linalg.norm(rx - tx, axis=-1))  # dB above -100 dBm
    bands = np.zeros((1, len(rx), SPEC.n_mels))  # -100 dBm noise in every band
    heard = level_db > 8.0
    bands[0, heard, 5] = level_db[heard]
    pooled = torch.from_numpy(np.concatenate([bands / 20.0, np.full_like(bands, 0.01)], axis=-1).astype(np.float32))
    enu = torch.from_numpy(np.c_[rx, np.zeros(len(rx))][None].astype(np.float32))
    return pooled, enu, torch.ones(1, len(rx)), tx


def test_untrained_grid_head_uses_the_site_it_is_told():
    """Told the site (exponent 3, sigma 1 dB, the level at 1 km), the untrained grid head puts the posterior mean
    on the transmitter, and a larger told sigma widens its covariance; told nothing, it stays at its guesses."""
    torch.manual_seed(0)
    model = LocalizerNet(n_mels=SPEC.n_mels, dim=32, n_layers=1, heads=2, head="grid").eval()
    pooled, enu, mask, tx = _log_distance_scene()

    def run(site):
        with torch.no_grad():
            centre, scale, position, chol = model.normalised_pooled(pooled, enu, mask, None if site is None else
                                                                    torch.tensor([site], dtype=torch.float32))
        return (centre + scale * position)[0].numpy(), chol[0].numpy(), float(scale)

    told, chol_sharp, scale = run([3.0, 1.0, -40.0, 3.0, 1.0])
    assert np.linalg.norm(told - tx) < 0.15 * scale, (told, tx, scale)
    _, chol_wide, _ = run([3.0, 8.0, -40.0, 3.0, 1.0])
    assert chol_wide[0] * chol_wide[2] > 4.0 * chol_sharp[0] * chol_sharp[2]  # |C|^(1/2) at least 4 x larger
    blind, _, _ = run(None)
    np.testing.assert_allclose(run([0.0, 0.0, 0.0, 0.0, 0.0])[0], blind)  # the zero row is "unknown"
    assert np.linalg.norm(blind - tx) > np.linalg.norm(told - tx)


def perturbed_grid_model() -> LocalizerNet:
    """A small grid-head model whose heads are off their initial zeros (so every path of the head is exercised)."""
    torch.manual_seed(0)
    model = LocalizerNet(n_mels=SPEC.n_mels, dim=32, n_layers=1, heads=2, head="grid").eval()
    with torch.no_grad():
        for layer in (model.grid.receiver, model.grid.scene[-1]):
            layer.weight.normal_(0.0, 0.05)
    return model


def test_onnx_equals_torch_when_told_a_site(tmp_path):
    model = perturbed_grid_model()
    path = export_model(model, tmp_path / "site.onnx", metadata(SPEC, {"test": True}))
    feats, enu, mask = random_inputs(8, seed=12)
    rng = np.random.default_rng(13)
    site = np.c_[rng.uniform(2, 4, 8), rng.uniform(3, 9, 8), rng.uniform(-90, -20, 8), rng.uniform(1, 6, 8),
                 (np.arange(8) % 2)].astype(np.float32)
    assert onnx_vs_torch(model, path, feats, enu, mask, site)["position_max_abs_diff_km"] < 1e-3
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _, cov_ort, *_ = session.run(None, {"features": feats, "rx_enu_km": enu, "rx_mask": mask, "site_propagation": site,
                                        "search_area_enu_km": np.zeros((8, 5), np.float32)})  # area not told
    with torch.no_grad():
        _, cov, *_ = model(*(torch.from_numpy(a) for a in (feats, enu, mask, site)))
    # float32 rounding, relative to each window's own covariance (told sigmas make some ellipses small, others
    # span thousands of km^2)
    own = cov.abs().amax(dim=(1, 2)).numpy()
    assert np.all(np.abs(cov_ort - cov.numpy()).max(axis=(1, 2)) < 1e-4 * own)


def test_world_areas_are_each_windows_own_search_area_and_hold_its_transmitter():
    data = dataset.generate(24, seed=305, spec=SPEC, windows_per_world=8)
    areas = dataset.world_areas(data, 305)
    for i in range(len(data)):
        config, _ = dataset.world_config(305, int(data.world[i]))
        np.testing.assert_array_equal(areas[i], search_area_row(network_geometry(config)[2]))
        east, north = data.tx_enu_km[i]
        assert areas[i, 0] <= east <= areas[i, 1] and areas[i, 2] <= north <= areas[i, 3]


def test_a_turned_search_area_is_the_turned_box_and_an_unknown_one_stays_unknown():
    area = torch.tensor([[-1.0, 3.0, -2.0, 5.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    quarter = torch.tensor([[0.0, -1.0], [1.0, 0.0]])  # 90 degrees anticlockwise: (e, n) -> (-n, e)
    mirror = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    turned = rotate_area(area, torch.stack([quarter, quarter]))
    torch.testing.assert_close(turned[0], torch.tensor([-5.0, 2.0, -1.0, 3.0, 1.0]))
    torch.testing.assert_close(turned[1], torch.zeros(5))
    torch.testing.assert_close(rotate_area(area, torch.stack([mirror, mirror]))[0], torch.tensor([-1.0, 3.0, -5.0, 2.0, 1.0]))


def test_untrained_grid_head_keeps_its_posterior_inside_the_area_it_is_told():
    """Told a search area, the grid spans exactly it and the prior is uniform over it (the physics estimator's
    prior): a transmitter beyond the receivers' box but inside a wide told area is found there, and a narrow
    told area holds the posterior mean and its ellipse inside it."""
    torch.manual_seed(0)
    model = LocalizerNet(n_mels=SPEC.n_mels, dim=32, n_layers=1, heads=2, head="grid").eval()
    rx = np.array([[-10.0, -10.0], [10.0, -10.0], [10.0, 10.0], [-10.0, 10.0], [0.0, 0.0]])
    tx = np.array([24.0, 3.0])  # 14 km east of the receivers' box
    level_db = 60.0 - 30.0 * np.log10(np.linalg.norm(rx - tx, axis=-1))
    bands = np.zeros((1, len(rx), SPEC.n_mels))
    bands[0, :, 5] = level_db
    pooled = torch.from_numpy(np.concatenate([bands / 20.0, np.full_like(bands, 0.01)], axis=-1).astype(np.float32))
    enu = torch.from_numpy(np.c_[rx, np.zeros(len(rx))][None].astype(np.float32))
    site = torch.tensor([[3.0, 1.0, -40.0, 3.0, 1.0]])

    def run(area):
        with torch.no_grad():
            centre, scale, position, chol = model.normalised_pooled(pooled, enu, torch.ones(1, len(rx)), site,
                                                                    None if area is None else torch.tensor([area]))
        return (centre + scale * position)[0].numpy(), chol[0].numpy(), float(scale)

    wide, _, scale = run([-40.0, 40.0, -40.0, 40.0, 1.0])
    assert np.linalg.norm(wide - tx) < 2.0, wide
    narrow, chol, _ = run([-12.0, 12.0, -12.0, 12.0, 1.0])
    assert narrow[0] <= 12.0 and abs(narrow[1] - tx[1]) < 3.0, narrow
    assert chol[0] * scale < 12.0  # east sd in km: inside the 24 km box, not spread past it
    np.testing.assert_allclose(run([0.0, 0.0, 0.0, 0.0, 0.0])[0], run(None)[0])  # the zero row is "unknown"


def test_onnx_equals_torch_when_told_an_area(tmp_path):
    model = perturbed_grid_model()
    path = export_model(model, tmp_path / "area.onnx", metadata(SPEC, {"test": True}))
    feats, enu, mask = random_inputs(8, seed=14)
    site = np.tile(np.array([3.0, 6.0, -40.0, 3.0, 1.0], np.float32), (8, 1))
    lo = enu[..., :2].min(axis=1) - 5.0
    hi = enu[..., :2].max(axis=1) + 5.0
    area = np.c_[lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1], np.arange(8) % 2].astype(np.float32)
    assert onnx_vs_torch(model, path, feats, enu, mask, site, area)["position_max_abs_diff_km"] < 1e-3
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _, cov_ort, *_ = session.run(None, {"features": feats, "rx_enu_km": enu, "rx_mask": mask, "site_propagation": site,
                                        "search_area_enu_km": area})
    with torch.no_grad():
        _, cov, *_ = model(*(torch.from_numpy(a) for a in (feats, enu, mask, site, area)))
    # float32 rounding, relative to each window's own covariance (areas from a few km to hundreds)
    own = cov.abs().amax(dim=(1, 2)).numpy()
    assert np.all(np.abs(cov_ort - cov.numpy()).max(axis=(1, 2)) < 1e-4 * own)


def test_a_model_that_takes_the_area_but_not_the_site_is_refused_at_export(tmp_path):
    model = LocalizerNet(n_mels=SPEC.n_mels, dim=32, n_layers=1, heads=2, head="grid", site_input=False).eval()
    with pytest.raises(ValueError, match="must also take the site input"):
        export_model(model, tmp_path / "area-only.onnx", metadata(SPEC, {"test": True}))


def test_the_grid_heads_credible_radii_are_those_of_the_daemons_credible_module():
    """models.train.network.credible_radius_sq (in the graph) against streamer.estimators.credible.credible_scales (numpy, the
    physics posterior's): the same radii for the same grid posteriors."""
    from models.train.network import credible_radius_sq
    from streamer.estimators.credible import ELLIPSE_PROBABILITIES, SUBDIVISIONS, credible_scales, subcell_offsets

    rng = np.random.default_rng(5)
    n, batch = 12, 3
    axis = (np.arange(n) + 0.5) / n
    unit = np.stack(np.meshgrid(axis, axis, indexing="xy"), axis=-1).reshape(-1, 2)
    extent = rng.uniform(0.5, 3.0, (batch, 2))
    cells = -0.5 * extent[:, None, :] + unit[None] * extent[:, None, :]
    post = rng.dirichlet(np.full(n * n, 0.3), size=batch)
    mean = np.einsum("bg,bgi->bi", post, cells)
    d = cells - mean[:, None]
    cov = np.einsum("bg,bgi,bgj->bij", post, d, d) + (extent**2 / (12 * n * n))[:, :, None] * np.eye(2)
    cells_by_axis = cells.transpose(0, 2, 1)  # [B, 2, G], the graph's layout
    got = credible_radius_sq(*(torch.tensor(a, dtype=torch.float64) for a in (post, cells_by_axis, extent / n, mean, cov)),
                             torch.tensor(subcell_offsets(SUBDIVISIONS), dtype=torch.float64)).numpy()
    want = np.stack([credible_scales(post[b], cells[b], extent[b] / n, mean[b], cov[b], min_weight=0.0) ** 2
                     for b in range(batch)])
    assert got.shape == (batch, len(ELLIPSE_PROBABILITIES))
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_an_exported_grid_model_gives_ellipse_scales_that_match_torch(tmp_path):
    from streamer.estimators.contract import ELLIPSE_OUTPUT

    model = LocalizerNet(n_mels=SPEC.n_mels, dim=32, n_layers=1, heads=2, grid_cells=8)
    path = export_model(model, tmp_path / "m.onnx", metadata(SPEC, {}))
    feats, enu, mask = random_inputs(4, seed=3)
    diff = onnx_vs_torch(model, path, feats, enu, mask)
    assert diff["ellipse_scale_max_abs_diff"] < 1e-3
    est = OnnxSession(path, providers=("CPUExecutionProvider",))
    assert est.gives_ellipse_scale and ELLIPSE_OUTPUT in est.output_names
    out = est.run(feats * NORMALISATION.scale_db + NORMALISATION.offset_db, enu, mask)
    assert out.ellipse_scale.shape == (4, 2) and (out.ellipse_scale[:, 1] > out.ellipse_scale[:, 0]).all()


def test_a_channel_power_grid_head_measures_power_and_noise_as_the_daemon_does():
    """``LocalizerNet(channel_power_spec=...)`` (``heimdall train --channel-power``): its in-graph in-channel signal and
    noise, from the pooled band statistics, are ``streamer.dsp.detection.channel_power``'s on the same simulated frames
    within a fraction of a dB (the graph sees each band's dB mean and spread, not its linear mean), so its heard
    rule is the daemon's; it exports, and ONNX Runtime agrees with torch."""
    from models.train.dataset import random_network_config
    from streamer.dsp.detection import DetectionRule

    config = random_network_config(np.random.default_rng(5), n_rx=8, extent_km=60.0, seed=5)
    data = dataset.draw_windows(config, 48, np.random.default_rng(6), SPEC, shuffle_slots=False)
    torch.manual_seed(0)
    model = LocalizerNet(n_mels=SPEC.n_mels, dim=32, n_layers=1, channel_power_spec=SPEC).eval()
    assert model.config["channel_power"] is True
    feats = (data.features_dbm - NORMALISATION.offset_db) / NORMALISATION.scale_db * data.rx_mask[..., None, None]
    pooled = LocalizerNet.pool_time(torch.from_numpy(feats.astype(np.float32)))
    with torch.no_grad():
        signal, noise = model.grid.channel_power_db(20.0 * pooled[..., : SPEC.n_mels], 20.0 * pooled[..., SPEC.n_mels :])
    n = len(config.receivers)
    signal, noise = signal[:, :n].numpy() + NORMALISATION.offset_db, noise[:, :n].numpy() + NORMALISATION.offset_db
    rule = DetectionRule.from_config(config)  # as the daemon builds it from the network's config
    daemon = rule.apply(data.features_dbm[:, :n], SPEC)
    heard = daemon.heard & (data.rx_mask[:, :n] > 0.5)
    assert heard.sum() > 100
    present = data.rx_mask[:, :n] > 0.5
    assert np.percentile(np.abs(noise - daemon.noise_dbm)[present], 90) < 0.05 and np.abs(noise - daemon.noise_dbm)[present].max() < 1.0
    assert abs(np.median(signal[heard] - daemon.signal_dbm[heard])) < 0.5 and np.percentile(
        np.abs(signal[heard] - daemon.signal_dbm[heard]), 90) < 1.0
    assert ((signal - noise >= rule.snr_db) == heard)[present].mean() > 0.98
    from models.train.dataset import physics_config_for
    from streamer.estimators.contract import network_search_area_row

    site = np.tile(site_propagation(physics_config_for(config)), (len(data), 1))
    area = np.tile(network_search_area_row(config), (len(data), 1))
    out = Path(tempfile.mkdtemp()) / "channel-power.onnx"
    export_model(model, out, metadata(SPEC, {"channel_power": True}))
    diff = onnx_vs_torch(model, out, feats.astype(np.float32), data.rx_enu_km * data.rx_mask[..., None], data.rx_mask, site, area)
    assert diff["position_max_abs_diff_km"] < 0.05 and diff["covariance_max_rel_diff"] < 1e-2


def test_pooling_over_a_frame_mask_is_pooling_the_active_frames_alone():
    rng = np.random.default_rng(21)
    feats = torch.from_numpy(rng.normal(0.0, 1.0, (2, 3, 4, 10)).astype(np.float32))
    mask = torch.zeros(2, 10)
    mask[0] = 1.0
    mask[1, 6:] = 1.0
    pooled = LocalizerNet.pool_time(feats, mask)
    torch.testing.assert_close(pooled[0], LocalizerNet.pool_time(feats[:1])[0])
    torch.testing.assert_close(pooled[1], LocalizerNet.pool_time(feats[1:, ..., 6:])[0])


def test_onnx_equals_torch_with_the_frame_mask_and_the_daemon_feeds_it(tmp_path):
    """An exported model with the contract's frame_mask input: ONNX Runtime matches torch; OnnxSession feeds the
    mask it is given, so a partly keyed window is pooled over its active frames (its answer then equals that of a
    window made of those frames alone, repeated, where they fill T a whole number of times)."""
    from streamer.estimators.onnx import fill_with_active_frames

    torch.manual_seed(0)
    model = perturbed_grid_model()
    model.config["frame_mask_input"] = True
    path = export_model(model, tmp_path / "mask.onnx", metadata(SPEC, {"test": True}))
    assert read_metadata(onnx.load(str(path))).detection == dataset.DETECTION
    feats, enu, mask = random_inputs(4, seed=22)
    frame_mask = np.ones((4, SPEC.n_frames), np.float32)
    frame_mask[1, :30] = 0.0  # 15 active frames, 9 in the next window: T = 45 holds each a whole number of times
    frame_mask[2, 9:] = 0.0
    site = np.tile(np.array([3.0, 6.0, -40.0, 3.0, 1.0], np.float32), (4, 1))
    assert onnx_vs_torch(model, path, feats, enu, mask, site, None, frame_mask)["position_max_abs_diff_km"] < 1e-3
    session = OnnxSession(path)
    assert session.takes_frame_mask
    dbm = feats * NORMALISATION.scale_db + NORMALISATION.offset_db
    masked = session.run(dbm, enu, mask, site, frame_mask=frame_mask > 0.5)
    filled = session.run(fill_with_active_frames(dbm, frame_mask > 0.5), enu, mask, site)
    np.testing.assert_allclose(masked.position_enu_km, filled.position_enu_km, atol=2e-3)
    whole = session.run(dbm, enu, mask, site)
    assert np.abs(masked.position_enu_km[1] - whole.position_enu_km[1]).max() > 1e-3
    np.testing.assert_allclose(masked.position_enu_km[[0, 3]], whole.position_enu_km[[0, 3]], atol=1e-6)
