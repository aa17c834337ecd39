"""The localization network (torch): receivers as a set, coordinates normalised by the network's extent.

Inputs and outputs follow the model contract (streamer/estimators/contract.py): ``features`` [B, R, M, T]
normalised mel frames, ``rx_enu_km`` [B, R, 3], ``rx_mask`` [B, R] and (``site_input``, the default) the optional
``site_propagation`` [B, 5] -> ``position_enu_km`` [B, 2] and ``covariance_km2`` [B, 2, 2].

1. Per receiver, the frames are summarised over time: mean and standard deviation of each mel band.
2. Geometry is normalised inside the graph: centre c = mean of the present receivers' east/north, scale
   s = their RMS distance from c (at least ``MIN_SCALE_KM``). Each receiver's token is
   [band means, band stds, (xy - c) / s, tanh(up / 0.5 km), (ln s - 3) / 2, site, area]: (ln s - 3) / 2 tells the
   network the absolute size of the network (path loss depends on distance in km, not in units of s); site is
   the ``site_propagation`` row scaled to order 1 (``site_token``; zeros and flag 0 where not told); area the
   search area in the same normalised frame, / 4 (``area_in_units``; zeros and flag 0 where not told).
3. A token MLP, then ``n_layers`` pre-norm self-attention blocks with absent receivers masked out of the
   keys: the output is the same whatever order the receivers come in (permutation invariant).
4. Output, by ``head``:

   - ``"grid"`` (the shipped model): the tokens set the parameters of a log-distance posterior over a 32 x 32
     grid of candidate positions spanning the told search area (``area_input``, the optional
     ``search_area_enu_km``; uniform prior over it, as the physics estimator's), or +-2.5 s where none is told
     (``GridPosterior``): per receiver a received power, a heard
     weight and a detection floor; per scene a path-loss exponent, a shadowing sigma, a level prior and a prior
     outside the receivers' box. The output is that posterior's mean and covariance (scaled by a learned
     factor). The physics is in the graph; where the site's propagation is told, its exponent, sigma and level
     prior are used (sigma combined with a learned one for the network's own power-estimation error), and where
     it is not, the network infers them from the window (which one window does poorly: models/MODEL_CARD.md).
   - ``"direct"``: a softmax weighting over present receivers of their normalised positions plus an offset
     from the pooled set (mean and max over present tokens); covariance from a Cholesky factor
     L = [[softplus(a) + e, 0], [b, softplus(d) + e]] in normalised units.

   Either way C = k s^2 L L^T km^2 (symmetric positive definite, any orientation) and position = c + s * p.
   k (``covariance_scale``) is 1 while training; ``fit_covariance_scale`` then sets it on held-out windows.
5. The grid head also gives the optional contract output ``ellipse_scale`` [B, 2] (``ellipse_output``, the default):
   the radii, in standard deviations, inside which its grid posterior holds 68 % and 95 % of its mass under that
   posterior's own mean and covariance (``credible_radius_sq``, the twin of ``streamer.estimators.credible``, which the
   physics estimator uses). The published ellipses are C's, scaled by these radii instead of a Gaussian's
   1.515 / 2.448. Training never computes them: the loss is on position and covariance only.

The loss (``gaussian_nll``) is the full 2-D Gaussian negative log-likelihood in normalised coordinates,
1/2 r^T C^-1 r + 1/2 log|C|, which differs from the one in km by the constant log s^2 per draw.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.train.dataset import DETECTION
from streamer.estimators.credible import ELLIPSE_PROBABILITIES, SUBDIVISIONS, subcell_offsets
from streamer.tools.calibrate_ellipses import least_nll_scale
from streamer.estimators.contract import SEARCH_AREA_WIDTH, SITE_PROPAGATION_WIDTH

MIN_SCALE_KM = 0.2
AREA_TOKEN_WIDTH = SEARCH_AREA_WIDTH  # the area in the normalised frame / 4, and its flag
CHOL_FLOOR = 1e-3  # smallest Cholesky diagonal, in units of s
NEG = -1e4  # logit for an absent receiver


def used_slots(rx_mask: torch.Tensor) -> torch.Tensor:
    """Indices of the receiver slots some window of the batch uses (``rx_mask`` [B, R] > 0 in any row).

    A slot no window uses weighs nothing anywhere (it is masked out of attention's keys, of every pooled sum and
    of the grid's terms), so the network runs on these alone: the same answer for less work (the daemon's
    7-receiver default fills 7 of the model's 16 slots). Slot 0 is always kept, so a batch with no receiver at all
    still has a receiver axis to reduce over (and gets the answer it got before slots were chosen)."""
    first = torch.arange(rx_mask.shape[1], device=rx_mask.device) == 0
    return torch.nonzero((rx_mask.amax(dim=0) > 0) | first).squeeze(-1)


class MaskedSelfAttention(nn.Module):
    """Multi-head self-attention over receiver tokens; absent receivers are not attended to."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, h: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        b, r, d = h.shape
        qkv = self.qkv(h).reshape(b, r, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + key_bias[:, None, None, :]
        att = torch.softmax(logits, dim=-1)
        return self.out((att @ v).transpose(1, 2).reshape(b, r, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = MaskedSelfAttention(dim, heads)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, h: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm1(h), key_bias)
        return h + self.ff(self.norm2(h))


_TAIL_SCALE = math.exp(-8.0) / math.sqrt(2.0 * math.pi)  # phi(-4) = exp(-8) / sqrt(2 pi)


def log_normal_cdf(z: torch.Tensor) -> torch.Tensor:
    """log Phi(z), finite and with finite gradients for any z.

    Above z = -4 through erf (in float32, 1 + erf keeps Phi to about 0.2 % there); below, the asymptotic series
    log(phi(z) / -z * (1 - z^-2 + 3 z^-4 - 15 z^-6)), whose next term is under 0.2 % at z = -4. Both branches
    share one Log: below -4, exp(-z^2 / 2) is split as exp(-8) exp(-(z^2 - 16) / 2), the first factor kept
    inside the Log and the second added outside it (it is 0 above -4). The grid head evaluates this on every
    [receiver, cell] pair, so each elementwise op here is a measurable part of the model's latency.
    """
    upper = torch.clamp(z, min=-4.0)
    lower = torch.clamp(z, max=-4.0)
    lower_sq = lower * lower
    inv2 = 1.0 / lower_sq
    series = 1.0 + inv2 * (-1.0 + inv2 * (3.0 - 15.0 * inv2))
    inside_log = torch.where(z > -4.0, 0.5 + 0.5 * torch.erf(upper * (1.0 / math.sqrt(2.0))),
                             series * (-_TAIL_SCALE / lower))
    return torch.log(torch.clamp(inside_log, min=1e-30)) - 0.5 * (lower_sq - 16.0)


def credible_radius_sq(post: torch.Tensor, cells: torch.Tensor, cell_size: torch.Tensor, mean: torch.Tensor,
                       cov: torch.Tensor, offsets: torch.Tensor,
                       masses: tuple[float, ...] = ELLIPSE_PROBABILITIES) -> torch.Tensor:
    """[B, P] squared Mahalanobis radii (under ``cov`` [B, 2, 2], about ``mean`` [B, 2]) holding each of ``masses``
    of a grid posterior ``post`` [B, G] over ``cells`` [B, 2, G] (east row, north row) of size ``cell_size`` [B, 2].

    The torch twin of ``streamer.estimators.credible.credible_scales`` (squared, every cell kept): each cell's mass spread over
    the points ``offsets`` [S, 2] (``streamer.estimators.credible.subcell_offsets``, in units of a cell), the cumulative
    distribution read between the midpoints of its steps. The points are laid out [B, 2, S, G], cells innermost,
    so every elementwise op runs along G rather than over a trailing axis of 2 (which ONNX Runtime broadcasts
    two floats at a time: several times slower at batch 1)."""
    b = post.shape[0]
    s = offsets.shape[0]
    points = cells[:, :, None, :] + offsets.t()[None, :, :, None] * cell_size[:, :, None, None]  # [B, 2, S, G]
    d = points.reshape(b, 2, -1) - mean[:, :, None]  # [B, 2, S * G]
    dx, dy = d[:, 0], d[:, 1]
    a, c, o = cov[:, 0, 0:1], cov[:, 1, 1:2], cov[:, 0, 1:2]
    r2 = (c * dx * dx - 2.0 * o * dx * dy + a * dy * dy) / (a * c - o * o)
    w = (post / s)[:, None, :].expand(-1, s, -1).reshape(b, -1)
    r2_sorted, order = torch.sort(r2, dim=-1)
    w_sorted = torch.gather(w, 1, order)
    mid = torch.cumsum(w_sorted, dim=-1) - 0.5 * w_sorted
    n = r2_sorted.shape[1]
    out = []
    for p in masses:  # np.interp(p, mid, r2_sorted), row by row
        hi = torch.clamp((mid < p).sum(dim=-1, keepdim=True), 1, n - 1)
        lo = hi - 1
        m0, m1 = torch.gather(mid, 1, lo), torch.gather(mid, 1, hi)
        r0, r1 = torch.gather(r2_sorted, 1, lo), torch.gather(r2_sorted, 1, hi)
        t = torch.clamp((p - m0) / torch.clamp(m1 - m0, min=1e-12), 0.0, 1.0)
        out.append(r0 + t * (r1 - r0))
    return torch.cat(out, dim=-1)


class GridPosterior(nn.Module):
    """A log-distance posterior over a grid of candidate positions, with parameters the network infers.

    Cells cover [-half_width, half_width]^2 in units of the network scale s. Per receiver the encoder gives a
    received power (dB, a correction to the strongest band's level), a heard weight and a detection floor
    (dB, a correction to the quietest band plus 6 dB); per scene a path-loss exponent (2-4), a shadowing sigma
    (dB), a Gaussian prior over the transmitter's level (EIRP minus the 1 km loss) and the steepness of a
    prior that falls off outside the receivers' box plus 35 % margin. Receivers that heard contribute a
    Gaussian term with the level marginalised under its prior (closed form); receivers that did not, the
    censoring term log Phi((floor - predicted) / sigma) at the level's posterior mean. The output is
    the posterior's mean and covariance (plus the cell's own variance), in units of s, like the direct head's.
    With ``bands`` (``heimdall train --channel-power``) the received power, the floor and the heard logit start
    from ``streamer.dsp.detection.channel_power``'s signal, noise + detection threshold and SNR instead (``channel_power_db``).
    """

    def __init__(self, dim: int, n_mels: int, cells: int = 32, half_width: float = 2.5, bands=None) -> None:
        super().__init__()
        self.n_mels = n_mels
        # ``bands`` (``streamer.dsp.detection.ChannelBands``): measure each receiver's in-channel power, noise and SNR the
        # daemon's way (``channel_power``) from the pooled band statistics, and learn only small corrections to them,
        # instead of reading power off the strongest band and the floor off the quietest with ten-times-wider ones.
        self.bands = bands
        if bands is not None:
            self.register_buffer("in_channel", torch.tensor(bands.in_channel.astype(np.float32)), persistent=False)
            self.register_buffer("noise_bands", torch.tensor(bands.noise.astype(np.float32)), persistent=False)
        self.half_width = half_width
        step = 1.0 / cells
        self.cell_step = step  # a cell's side, in units of the grid's extent
        self.register_buffer("subcell_offsets", torch.as_tensor(subcell_offsets(SUBDIVISIONS), dtype=torch.float32),
                             persistent=False)
        axis = torch.linspace(step / 2, 1.0 - step / 2, cells)
        gy, gx = torch.meshgrid(axis, axis, indexing="ij")
        # Cell centres in the unit square, an east row and a north row (cells innermost: ``credible_radius_sq``);
        # each window maps them onto its grid's extent (``forward``).
        self.register_buffer("unit_cells", torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=0))  # [2, G]
        self.cell_fraction_variance = step * step / 12.0  # a cell's own variance, in units of the extent squared
        self.receiver = nn.Linear(dim, 3)  # power correction (x 10 dB), heard logit, floor correction (x 10 dB)
        self.scene = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, 9))
        for layer in (self.receiver, self.scene[-1]):  # start from the heuristics in the class doc
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def channel_power_db(self, band_mean_db: torch.Tensor, band_std_db: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``streamer.dsp.detection.channel_power``'s signal and noise (dB, relative to the normalisation offset) [B, R] from
        each band's mean and standard deviation over the frames of its dB level [B, R, M].

        The daemon averages each band's linear power over the frames; the graph has the mean and spread of its dB,
        so it takes the mean of a log-normal power with them, 10^(mean/10) exp((spread ln10/10)^2 / 2)."""
        to_neper = math.log(10.0) / 10.0
        linear = torch.exp(to_neper * band_mean_db + 0.5 * (to_neper * band_std_db) ** 2)
        in_power = (linear * self.in_channel).sum(-1)
        density = (linear * self.noise_bands).sum(-1) / self.bands.noise_bandwidth_hz
        signal = torch.clamp(in_power - density * self.bands.in_bandwidth_hz, min=1e-10)
        noise = torch.clamp(density * self.bands.channel_bandwidth_hz, min=1e-10)
        return torch.log(signal) / to_neper, torch.log(noise) / to_neper

    def forward(self, h, pooled, p, up_km, scale, mask, scene_token, site=None, area=None, credible: bool = False):
        """Position [B, 2] and covariance [B, 2, 2] in units of ``scale``, the per-receiver heard logit [B, R], and
        (``credible``) the ellipse scales [B, P] (else ``None``).

        The receiver axis R holds only the slots some window of the batch uses (``used_slots``).
        ``site`` [B, 5] (``streamer.estimators.contract.site_propagation``): where its last column is 1, the site's
        path-loss exponent, sigma (dB) and level prior (dBm) replace the inferred ones; the network adds only
        a learned sigma for its own power-estimation error.
        ``area`` [B, 5]: the search area in the normalised frame ((km - centre) / scale: east min, east max, north
        min, north max) and a flag; where the flag is 1 the grid spans exactly that area and the prior is uniform
        over it (the physics estimator's prior), elsewhere the grid spans +-``half_width`` and the prior falls
        off outside the receivers' box at a learned rate.

        The ellipse scales are the Mahalanobis radii holding ``ELLIPSE_PROBABILITIES`` of the grid posterior under
        its own mean and covariance (``credible_radius_sq``): the posterior's shape, which the output covariance
        keeps while the learned factor widens or narrows it."""
        band_db = 20.0 * pooled[..., : self.n_mels]  # dB relative to the normalisation offset
        rx = self.receiver(h)
        if self.bands is None:
            strongest = band_db.max(dim=-1).values
            quietest = band_db.min(dim=-1).values
            power_db = strongest + 10.0 * rx[..., 0]
            heard_logit = rx[..., 1] + (strongest - quietest - 8.0) / 2.0
            floor_db = quietest + 6.0 + 10.0 * rx[..., 2]
        else:
            signal_db, noise_db = self.channel_power_db(band_db, 20.0 * pooled[..., self.n_mels :])
            power_db = signal_db + 3.0 * rx[..., 0]
            heard_logit = rx[..., 1] + (signal_db - noise_db - DETECTION.snr_db) / 2.0
            floor_db = noise_db + DETECTION.snr_db + 3.0 * rx[..., 2]
        scene = self.scene(scene_token)
        exponent = 2.0 + 2.0 * torch.sigmoid(scene[:, 0:1])  # [B, 1]
        sigma_db = 1.0 + 7.2 * F.softplus(scene[:, 1:2])
        prior_steepness = 20.0 * F.softplus(scene[:, 2:3] + 0.55)
        # Prior over the level a transmitter implies (EIRP minus the 1 km loss, dB above -100 dBm): mean and
        # spread inferred per scene, starting broad (30 dB) about 50 dB.
        level_mean = 50.0 + 20.0 * scene[:, 6:7]
        level_var = (3.0 + (27.0 / math.log(2.0)) * F.softplus(scene[:, 7:8])) ** 2
        if site is not None:
            known = site[:, 4:5] > 0.5
            own_sigma_db = 3.0 * F.softplus(scene[:, 8:9] - 1.0)
            exponent = torch.where(known, site[:, 0:1], exponent)
            sigma_db = torch.where(known, torch.sqrt(site[:, 1:2] ** 2 + own_sigma_db**2), sigma_db)
            level_mean = torch.where(known, site[:, 2:3] + 100.0, level_mean)
            level_var = torch.where(known, site[:, 3:4] ** 2 + 1.0, level_var)

        heard = torch.sigmoid(heard_logit) * mask
        missed = mask - heard
        # The grid: [lo, hi] per axis, the told area or +-half_width; cells [B, 2, G] in units of scale.
        lo = torch.full_like(p[:, 0, :], -self.half_width)
        hi = torch.full_like(p[:, 0, :], self.half_width)
        area_known = torch.zeros_like(scale)  # [B, 1]
        if area is not None:
            area_known = (area[:, 4:5] > 0.5).to(p.dtype)
            lo = torch.where(area_known > 0, area[:, 0:4:2], lo)
            hi = torch.where(area_known > 0, area[:, 1:4:2], hi)
        extent = hi - lo
        cells = lo[:, :, None] + self.unit_cells[None] * extent[:, :, None]  # [B, 2, G]

        rx_km = p * scale[:, :, None]  # [B, R, 2]
        cells_km = cells * scale[:, :, None]  # [B, 2, G]
        # |cell - receiver|^2 + up^2 + (50 m)^2 as one matmul of augmented vectors (no [B, R, G, 2] tensor),
        # floored at (50 m)^2 against rounding.
        rx_aug = torch.cat([rx_km, torch.ones_like(up_km)[..., None],
                            ((rx_km * rx_km).sum(-1) + up_km * up_km + 0.05**2)[..., None]], dim=-1)  # [B, R, 4]
        cell_aug = torch.cat([-2.0 * cells_km, (cells_km * cells_km).sum(1, keepdim=True),
                              torch.ones_like(cells_km[:, :1])], dim=1)  # [B, 4, G]
        dist_sq_km2 = torch.clamp(rx_aug @ cell_aug, min=0.05**2)
        loss_db = ((5.0 / math.log(10.0)) * exponent)[:, :, None] * torch.log(dist_sq_km2)  # 10 n log10(d), [B, R, G]
        # The level (EIRP - 1 km loss) receiver r implies at cell g is power_r + loss_rg; sums over receivers
        # weighted by the heard weights are matrix products.
        total = heard.sum(1, keepdim=True) + 1e-3  # [B, 1]
        weighted_power = (heard * power_db).sum(1, keepdim=True)  # [B, 1]
        weighted_loss = (heard[:, None, :] @ loss_db).squeeze(1)  # [B, G]
        mean_level = (weighted_power + weighted_loss) / total
        deviation = loss_db + (power_db - weighted_power / total)[:, :, None] - (weighted_loss / total)[:, None, :]
        var = sigma_db**2  # [B, 1]
        # The level marginalised under its Gaussian prior: the spread about the weighted mean, plus how far
        # that mean is from the prior's given both variances.
        spread = var / total + level_var
        log_like = ((-0.5 / var) * (heard[:, None, :] @ (deviation * deviation)).squeeze(1)
                    - 0.5 * (mean_level - level_mean) ** 2 / spread - 0.5 * torch.log(spread))
        level = (mean_level * total / var + level_mean / level_var) / (total / var + 1.0 / level_var)
        # (floor - predicted) / sigma with predicted = level - loss
        below_floor = (loss_db + floor_db[:, :, None] - level[:, None, :]) * (1.0 / sigma_db)[:, :, None]
        log_like = log_like + (missed[:, None, :] @ log_normal_cdf(below_floor)).squeeze(1)

        # Where the area is not told: a prior falling off outside the present receivers' box plus 35 %.
        inside = mask[..., None] > 0
        box_lo = torch.where(inside, p, torch.full_like(p, 1e4)).min(dim=1).values  # [B, 2]
        box_hi = torch.where(inside, p, torch.full_like(p, -1e4)).max(dim=1).values
        margin = 0.35 * (box_hi - box_lo) + 0.05
        before = F.relu(box_lo[:, :, None] - margin[:, :, None] - cells)  # [B, 2, G]
        beyond = F.relu(cells - box_hi[:, :, None] - margin[:, :, None])
        outside = (before + beyond).sum(1) * (1.0 - area_known)
        log_post = log_like - prior_steepness * outside
        post = torch.softmax(log_post, dim=-1)  # [B, G]
        # The two matmuls over cells take their operands in [B, G, 2] memory order (the contiguous copies), as
        # before the grid was laid out [B, 2, G]: torch's matmul then rounds as it did when the shipped model was
        # trained, so ``heimdall train`` still writes it bit for bit. ONNX Runtime folds the transposes away.
        mean = (post[:, None, :] @ cells.transpose(1, 2).contiguous()).squeeze(1)  # [B, 2]
        centred = cells - mean[:, :, None]  # [B, 2, G]
        weighted = (centred * post[:, None, :]).transpose(1, 2).contiguous().transpose(1, 2)
        cov = weighted @ centred.transpose(1, 2).contiguous()  # [B, 2, 2]
        eye = torch.eye(2, dtype=cov.dtype, device=cov.device)
        cell_var = (self.cell_fraction_variance * extent * extent)[:, :, None] * eye  # [B, 2, 2], diagonal
        scales = None
        if credible:
            scales = torch.sqrt(credible_radius_sq(post, cells, extent * self.cell_step, mean, cov + cell_var,
                                                   self.subcell_offsets))
        cov = cov * torch.exp(2.0 * scene[:, 3])[:, None, None] + cell_var
        return mean + 0.1 * scene[:, 4:6], cov, heard_logit, scales


class LocalizerNet(nn.Module):
    """Set encoder over receivers -> position and full 2-D covariance (module doc).

    ``head="direct"``: position and Cholesky factor straight from the pooled tokens (step 4 of the module doc).
    ``head="grid"``: the tokens set the parameters of a ``GridPosterior`` whose mean and covariance are the output.
    """

    def __init__(self, n_mels: int = 32, dim: int = 128, n_layers: int = 3, heads: int = 4, head: str = "grid",
                 grid_cells: int = 32, site_input: bool = True, area_input: bool = True, ellipse_output: bool = True,
                 channel_power_spec=None, frame_mask_input: bool = False) -> None:
        super().__init__()
        if head not in ("direct", "grid"):
            raise ValueError(f"head must be 'direct' or 'grid', not {head!r}")
        self.config = {"n_mels": n_mels, "dim": dim, "n_layers": n_layers, "heads": heads, "head": head}
        if head == "grid":
            self.config["grid_cells"] = grid_cells
        self.config["site_input"] = site_input
        if head == "grid" and area_input:  # the direct head has no prior to put the area into
            self.config["area_input"] = True
        if head == "grid" and ellipse_output:  # nor a posterior whose shape could scale its ellipses
            self.config["ellipse_output"] = True
        if frame_mask_input:
            if not (site_input and self.config.get("area_input")):  # forward's inputs are positional in the export
                raise ValueError("a model that takes the frame mask must also take the site and the search area")
            self.config["frame_mask_input"] = True
        token_in = 2 * n_mels + 4 + (SITE_PROPAGATION_WIDTH if site_input else 0) + (AREA_TOKEN_WIDTH if self.config.get("area_input") else 0)
        self.embed = nn.Sequential(nn.Linear(token_in, dim), nn.GELU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(n_layers))
        self.norm = nn.LayerNorm(dim)
        bands = None
        if head == "grid" and channel_power_spec is not None:  # the FeatureSpec the frames are made with
            bands = DETECTION.bands(channel_power_spec)
            self.config["channel_power"] = True
        if head == "grid":
            self.grid = GridPosterior(dim, n_mels, cells=grid_cells, bands=bands)
        else:
            self.weight_logit = nn.Linear(dim, 1)
            self.head = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, 5))
        # Every covariance is multiplied by this (1 while training; then set by fit_covariance_scale on
        # held-out windows). A buffer, so it is saved with the weights and exported as a constant.
        self.register_buffer("covariance_scale", torch.ones(()))

    @staticmethod
    def pool_time(features: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, R, M, T] -> [B, R, 2M]: mean and standard deviation of each band over the frames; with ``frame_mask``
        ([B, T], 1 = the frame carried the transmission), over those frames only (a row of zeros counts none, and
        gives zeros: the daemon never sends one, it marks every frame of a window without activity)."""
        if frame_mask is None:
            mean = features.mean(dim=-1)
            std = torch.sqrt(((features - mean.unsqueeze(-1)) ** 2).mean(dim=-1) + 1e-6)
            return torch.cat([mean, std], dim=-1)
        weights = frame_mask[:, None, None, :]
        count = torch.clamp(frame_mask.sum(dim=-1), min=1.0)[:, None, None]
        mean = (features * weights).sum(dim=-1) / count
        std = torch.sqrt((((features - mean.unsqueeze(-1)) ** 2) * weights).sum(dim=-1) / count + 1e-6)
        return torch.cat([mean, std], dim=-1)

    def normalised(self, features: torch.Tensor, rx_enu_km: torch.Tensor, rx_mask: torch.Tensor, site=None, area=None):
        """Centre [B, 2] (km), scale [B, 1] (km), position [B, 2] and Cholesky entries [B, 3] in units of scale."""
        return self.normalised_pooled(self.pool_time(features), rx_enu_km, rx_mask, site, area)

    def normalised_pooled(self, pooled: torch.Tensor, rx_enu_km: torch.Tensor, rx_mask: torch.Tensor, site=None, area=None):
        """``normalised`` after ``pool_time`` (training pools each window once, up front)."""
        return self.normalised_pooled_and_heard(pooled, rx_enu_km, rx_mask, site, area)[:4]

    @staticmethod
    def site_token(site: torch.Tensor) -> torch.Tensor:
        """[B, 5] site propagation -> [B, 5] token features of order 1 (zeros but the flag where unknown)."""
        known = site[:, 4:5]
        scaled = torch.cat([site[:, 0:1] - 3.0, (site[:, 1:2] - 6.0) / 3.0, (site[:, 2:3] + 50.0) / 20.0,
                            (site[:, 3:4] - 5.0) / 5.0], dim=-1)
        return torch.cat([scaled * known, known], dim=-1)

    @staticmethod
    def area_in_units(area: torch.Tensor, centre: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """[B, 5] search area rows (km) -> the same in the normalised frame ((km - centre) / scale), flag kept."""
        offset = torch.stack([centre[:, 0], centre[:, 0], centre[:, 1], centre[:, 1]], dim=-1)
        known = area[:, 4:5]
        return torch.cat([(area[:, :4] - offset) / scale * known, known], dim=-1)

    def normalised_pooled_and_heard(self, pooled: torch.Tensor, rx_enu_km: torch.Tensor, rx_mask: torch.Tensor,
                                    site=None, area=None, credible: bool = False, slots_chosen: bool = False):
        """``normalised_pooled`` plus the grid head's per-receiver heard logits [B, R] (``None`` for the direct head),
        for ``train.loss_of``'s auxiliary term (not a contract output: the exported graph leaves them out), and, with
        ``credible``, the grid head's ellipse scales [B, P] (``GridPosterior.forward``; else ``None``).

        ``site`` [B, 5]: the site's propagation (``streamer.estimators.contract.site_propagation``); ``None`` = unknown.
        ``area`` [B, 5]: the search area (``streamer.estimators.contract.search_area_row``, km); ``None`` = unknown.
        ``slots_chosen``: the inputs hold only used slots already (``forward`` chooses them before pooling)."""
        all_slots_mask = rx_mask
        if not slots_chosen:
            used = used_slots(rx_mask)
            pooled, rx_enu_km, rx_mask = (x.index_select(1, used) for x in (pooled, rx_enu_km, rx_mask))
        mask = rx_mask.unsqueeze(-1)  # [B, R, 1]
        count = mask.sum(dim=1).clamp(min=1.0)  # [B, 1]
        xy = rx_enu_km[..., :2]
        centre = (xy * mask).sum(dim=1) / count  # [B, 2]
        rel = (xy - centre.unsqueeze(1)) * mask
        scale = torch.sqrt((rel * rel).sum(dim=(1, 2)).unsqueeze(-1) / count).clamp(min=MIN_SCALE_KM)  # [B, 1]
        p = rel / scale.unsqueeze(1)  # [B, R, 2]
        up = torch.tanh(rx_enu_km[..., 2:3] / 0.5)
        log_scale = ((torch.log(scale) - 3.0) / 2.0).unsqueeze(1).expand(-1, p.shape[1], -1)
        token = [pooled, p, up, log_scale]
        if self.config["site_input"]:
            if site is None:
                site = torch.zeros(pooled.shape[0], SITE_PROPAGATION_WIDTH, dtype=pooled.dtype, device=pooled.device)
            token.append(self.site_token(site).unsqueeze(1).expand(-1, p.shape[1], -1))
        else:
            site = None
        area_units = None
        if self.config.get("area_input"):
            if area is None:
                area = torch.zeros(pooled.shape[0], SEARCH_AREA_WIDTH, dtype=pooled.dtype, device=pooled.device)
            area_units = self.area_in_units(area, centre, scale)
            token.append((area_units / 4.0).unsqueeze(1).expand(-1, p.shape[1], -1))  # edges at ~+-2 s -> order 1
        h = self.embed(torch.cat(token, dim=-1))
        key_bias = (1.0 - rx_mask) * NEG
        for block in self.blocks:
            h = block(h, key_bias)
        h = self.norm(h)
        pooled_mean = (h * mask).sum(dim=1) / count
        pooled_max = (h + (1.0 - mask) * NEG).max(dim=1).values
        if self.config["head"] == "grid":
            position, cov, heard_logit, scales = self.grid(
                h, pooled, p, rx_enu_km[..., 2] * rx_mask, scale, rx_mask, torch.cat([pooled_mean, pooled_max], dim=-1), site,
                area_units, credible=credible)
            l11 = torch.sqrt(cov[:, 0, 0])
            l21 = cov[:, 1, 0] / l11
            l22 = torch.sqrt(torch.clamp(cov[:, 1, 1] - l21 * l21, min=CHOL_FLOOR**2))
            chol = torch.stack([l11, l21, l22], dim=-1) * torch.sqrt(self.covariance_scale)
            if not slots_chosen:  # back onto every slot, for the heard loss (unused slots: 0, masked out of it)
                heard_logit = torch.zeros_like(all_slots_mask).index_copy(1, used, heard_logit)
            return centre, scale, position, chol, heard_logit, scales
        w = torch.softmax(self.weight_logit(h).squeeze(-1) + key_bias, dim=-1)  # [B, R]
        anchor = (w.unsqueeze(-1) * p).sum(dim=1)  # [B, 2]
        out = self.head(torch.cat([pooled_mean, pooled_max], dim=-1))
        position = anchor + out[:, :2]
        chol = torch.stack([F.softplus(out[:, 2]) + CHOL_FLOOR, out[:, 3], F.softplus(out[:, 4]) + CHOL_FLOOR], dim=-1)
        return centre, scale, position, chol * torch.sqrt(self.covariance_scale), None, None

    def forward(self, features: torch.Tensor, rx_enu_km: torch.Tensor, rx_mask: torch.Tensor, site=None, area=None,
                frame_mask=None):
        """Contract outputs: position_enu_km [B, 2] and covariance_km2 [B, 2, 2], and, for a model with
        ``ellipse_output``, the optional ellipse_scale [B, 2] (standard deviations of the covariance spanned by the
        ellipses holding ``ELLIPSE_PROBABILITIES``); ``site`` and ``area`` are the optional ``site_propagation`` and
        ``search_area_enu_km`` inputs [B, 5] (``None``: unknown), ``frame_mask`` the optional [B, T] input (``None``:
        every frame)."""
        used = used_slots(rx_mask)
        features, rx_enu_km, rx_mask = (x.index_select(1, used) for x in (features, rx_enu_km, rx_mask))
        centre, scale, position, chol, _, scales = self.normalised_pooled_and_heard(
            self.pool_time(features, frame_mask), rx_enu_km, rx_mask, site, area,
            credible=self.config.get("ellipse_output", False), slots_chosen=True)
        l11, l21, l22 = chol[:, 0], chol[:, 1], chol[:, 2]
        s2 = (scale * scale).squeeze(-1)
        c11 = l11 * l11 * s2
        c12 = l11 * l21 * s2
        c22 = (l21 * l21 + l22 * l22) * s2
        cov = torch.stack([torch.stack([c11, c12], dim=-1), torch.stack([c12, c22], dim=-1)], dim=-2)
        if scales is None:
            return centre + scale * position, cov
        return centre + scale * position, cov, scales


def mahalanobis_sq(centre, scale, position, chol, target_km) -> torch.Tensor:
    """Per-draw r^T C^-1 r of the truth under the reported Gaussian (unitless; chi-square, 2 dof, when calibrated)."""
    r = (target_km - centre) / scale - position
    l11, l21, l22 = chol[:, 0], chol[:, 1], chol[:, 2]
    z1 = r[:, 0] / l11
    z2 = (r[:, 1] - l21 * z1) / l22
    return z1 * z1 + z2 * z2


def gaussian_nll(centre, scale, position, chol, target_km) -> torch.Tensor:
    """Per-draw 2-D Gaussian NLL 1/2 r^T C^-1 r + 1/2 log|C| (+ log 2 pi), in units of the network scale."""
    m2 = mahalanobis_sq(centre, scale, position, chol, target_km)
    return 0.5 * m2 + torch.log(chol[:, 0]) + torch.log(chol[:, 2]) + math.log(2 * math.pi)


def fit_covariance_scale(model: LocalizerNet, pooled: torch.Tensor, rx_enu_km: torch.Tensor, rx_mask: torch.Tensor,
                         target_km: torch.Tensor, batch_size: int = 512, site: torch.Tensor | None = None,
                         area: torch.Tensor | None = None) -> float:
    """Set ``model.covariance_scale`` to the factor k on every covariance that minimises the mean Gaussian NLL of
    the given held-out windows (inputs as for ``normalised_pooled``; ``target_km`` [N, 2]; ``site`` [N, 5] or
    ``None``); returns k.

    With C -> k C a draw's NLL is 1/2 m^2 / k + ln k + const (m^2 = r^T C^-1 r), so the mean is least at
    k = mean(m^2) / 2, a closed form. Training fits the NLL with augmented batches (rotations, extra outages)
    and picks the step by validation NLL; this one number corrects the covariance's overall size for what
    that leaves, as temperature scaling does for a classifier. (``streamer.tools.calibrate_ellipses.least_nll_scale``:
    the same fit ``heimdall calibrate-ellipses`` makes for one site from its localizations.)
    """
    was_training = model.training
    model.eval()
    model.covariance_scale.fill_(1.0)
    m2 = []
    with torch.no_grad():
        for i in range(0, target_km.shape[0], batch_size):
            part = slice(i, i + batch_size)
            out = model.normalised_pooled(pooled[part], rx_enu_km[part], rx_mask[part], None if site is None else site[part],
                                          None if area is None else area[part])
            m2.append(mahalanobis_sq(*out, target_km[i : i + batch_size]))
    k = least_nll_scale(torch.cat(m2).double().numpy())
    model.covariance_scale.fill_(k)
    model.train(was_training)
    return k
