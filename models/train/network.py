"""The localization network (torch): receivers as a set, coordinates normalised by the network's extent.

Inputs and outputs follow the model contract (streamer/model_contract.py): ``features`` [B, R, M, T]
normalised mel frames, ``rx_enu_km`` [B, R, 3], ``rx_mask`` [B, R] -> ``position_enu_km`` [B, 2] and
``covariance_km2`` [B, 2, 2].

1. Per receiver, the frames are summarised over time: mean and standard deviation of each mel band.
2. Geometry is normalised inside the graph: centre c = mean of the present receivers' east/north, scale
   s = their RMS distance from c (at least ``MIN_SCALE_KM``). Each receiver's token is
   [band means, band stds, (xy - c) / s, tanh(up / 0.5 km), (ln s - 3) / 2]: the last term tells the
   network the absolute size of the network (path loss depends on distance in km, not in units of s).
3. A token MLP, then ``n_layers`` pre-norm self-attention blocks with absent receivers masked out of the
   keys: the output is the same whatever order the receivers come in (permutation invariant).
4. Position: a softmax weighting over present receivers of their normalised positions plus an offset
   from the pooled set (mean and max over present tokens); covariance: a Cholesky factor
   L = [[softplus(a) + e, 0], [b, softplus(d) + e]] in normalised units, C = s^2 L L^T km^2 (symmetric
   positive definite by construction, any orientation); position = c + s * p.

The loss (``gaussian_nll``) is the full 2-D Gaussian negative log-likelihood in normalised coordinates,
1/2 r^T C^-1 r + 1/2 log|C|, which differs from the one in km by the constant log s^2 per draw.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

MIN_SCALE_KM = 0.2
CHOL_FLOOR = 1e-3  # smallest Cholesky diagonal, in units of s
NEG = -1e4  # logit for an absent receiver


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


class LocalizerNet(nn.Module):
    """Set encoder over receivers -> position and full 2-D covariance (module doc)."""

    def __init__(self, n_mels: int = 32, dim: int = 128, n_layers: int = 3, heads: int = 4) -> None:
        super().__init__()
        self.config = {"n_mels": n_mels, "dim": dim, "n_layers": n_layers, "heads": heads}
        token_in = 2 * n_mels + 4
        self.embed = nn.Sequential(nn.Linear(token_in, dim), nn.GELU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(n_layers))
        self.norm = nn.LayerNorm(dim)
        self.weight_logit = nn.Linear(dim, 1)
        self.head = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, 5))

    @staticmethod
    def pool_time(features: torch.Tensor) -> torch.Tensor:
        """[B, R, M, T] -> [B, R, 2M]: mean and standard deviation of each band over the frames."""
        mean = features.mean(dim=-1)
        std = torch.sqrt(((features - mean.unsqueeze(-1)) ** 2).mean(dim=-1) + 1e-6)
        return torch.cat([mean, std], dim=-1)

    def normalised(self, features: torch.Tensor, rx_enu_km: torch.Tensor, rx_mask: torch.Tensor):
        """Centre [B, 2] (km), scale [B, 1] (km), position [B, 2] and Cholesky entries [B, 3] in units of scale."""
        return self.normalised_pooled(self.pool_time(features), rx_enu_km, rx_mask)

    def normalised_pooled(self, pooled: torch.Tensor, rx_enu_km: torch.Tensor, rx_mask: torch.Tensor):
        """``normalised`` after ``pool_time`` (training pools each window once, up front)."""
        mask = rx_mask.unsqueeze(-1)  # [B, R, 1]
        count = mask.sum(dim=1).clamp(min=1.0)  # [B, 1]
        xy = rx_enu_km[..., :2]
        centre = (xy * mask).sum(dim=1) / count  # [B, 2]
        rel = (xy - centre.unsqueeze(1)) * mask
        scale = torch.sqrt((rel * rel).sum(dim=(1, 2)).unsqueeze(-1) / count).clamp(min=MIN_SCALE_KM)  # [B, 1]
        p = rel / scale.unsqueeze(1)  # [B, R, 2]
        up = torch.tanh(rx_enu_km[..., 2:3] / 0.5)
        log_scale = ((torch.log(scale) - 3.0) / 2.0).unsqueeze(1).expand(-1, p.shape[1], -1)
        h = self.embed(torch.cat([pooled, p, up, log_scale], dim=-1))
        key_bias = (1.0 - rx_mask) * NEG
        for block in self.blocks:
            h = block(h, key_bias)
        h = self.norm(h)
        w = torch.softmax(self.weight_logit(h).squeeze(-1) + key_bias, dim=-1)  # [B, R]
        anchor = (w.unsqueeze(-1) * p).sum(dim=1)  # [B, 2]
        pooled_mean = (h * mask).sum(dim=1) / count
        pooled_max = (h + (1.0 - mask) * NEG).max(dim=1).values
        out = self.head(torch.cat([pooled_mean, pooled_max], dim=-1))
        position = anchor + out[:, :2]
        chol = torch.stack([F.softplus(out[:, 2]) + CHOL_FLOOR, out[:, 3], F.softplus(out[:, 4]) + CHOL_FLOOR], dim=-1)
        return centre, scale, position, chol

    def forward(self, features: torch.Tensor, rx_enu_km: torch.Tensor, rx_mask: torch.Tensor):
        """Contract outputs: position_enu_km [B, 2] and covariance_km2 [B, 2, 2]."""
        centre, scale, position, chol = self.normalised(features, rx_enu_km, rx_mask)
        l11, l21, l22 = chol[:, 0], chol[:, 1], chol[:, 2]
        s2 = (scale * scale).squeeze(-1)
        c11 = l11 * l11 * s2
        c12 = l11 * l21 * s2
        c22 = (l21 * l21 + l22 * l22) * s2
        cov = torch.stack([torch.stack([c11, c12], dim=-1), torch.stack([c12, c22], dim=-1)], dim=-2)
        return centre + scale * position, cov


def gaussian_nll(centre, scale, position, chol, target_km) -> torch.Tensor:
    """Per-draw 2-D Gaussian NLL 1/2 r^T C^-1 r + 1/2 log|C| (+ log 2 pi), in units of the network scale."""
    r = (target_km - centre) / scale - position
    l11, l21, l22 = chol[:, 0], chol[:, 1], chol[:, 2]
    z1 = r[:, 0] / l11
    z2 = (r[:, 1] - l21 * z1) / l22
    return 0.5 * (z1 * z1 + z2 * z2) + torch.log(l11) + torch.log(l22) + math.log(2 * math.pi)
