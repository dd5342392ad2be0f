"""Neighbourhood consensus: 4-D convolutions on the correlation volume (NC-Net, Rocco et al. 2018).

The similarity of source cell (i, j) and target cell (k, l) is a 4-D tensor C[i, j, k, l]. A stack
of 4-D convolutions (channels 1 -> 16 -> 8 -> 1 by default, kernels 3^4 as in the survey's smaller
variant, ReLU between) refines it, applied symmetrically: ``N(C) + N(C^T)^T`` where C^T swaps the
source and target axes, so exchanging the two images transposes the output. Optional soft mutual
filtering (``C_ijkl * C_ijkl / max_kl C_ij.. * C_ijkl / max_ij C_..kl``) before and after, as in
NC-Net. Padded target cells are zeroed going in and -inf coming out.

Memory (float32, per pair, training): with N = h_s w_s h_t w_t cells, the autograd graph keeps
each layer's (padded) input and ReLU output for both directions, about
``4 * 2 * N * (1 + 16 + 8 + 16 + 8 + 1) = 400 N`` bytes for channels (16, 8) plus the mutual
filters' few N: at 60x60 grids (N = 12.96 M) about 5.2 GB (+ ~10 %) per pair, so a batch of 8
pairs fits an 80 GB GPU. :func:`nc_activation_bytes` gives the estimate for any setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from semcorr.backbones.base import FeatureMap
from semcorr.checks import numbers
from semcorr.registry import GroupConfig, configured, register
from semcorr.heads.base import Head


@dataclass
class NeighbourhoodConsensusConfig(GroupConfig):
    channels: List[int] = field(default_factory=lambda: [16, 8])
    kernel_sizes: List[int] = field(default_factory=lambda: [3, 3, 3])
    mutual: bool = True
    symmetric: bool = True

    def __post_init__(self) -> None:
        numbers(self, "channels", gt=0, non_empty=False)
        numbers(self, "kernel_sizes", gt=0)
        if any(int(k) != k or k % 2 == 0 for k in self.kernel_sizes):
            raise ValueError(f"kernel_sizes must be odd integers, got {list(self.kernel_sizes)}")
        if len(self.kernel_sizes) != len(self.channels) + 1:
            raise ValueError(f"kernel_sizes must hold len(channels) + 1 = {len(self.channels) + 1} "
                             f"sizes (one per layer), got {list(self.kernel_sizes)}")


def conv4d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """'Same'-padded 4-D convolution as a sum of 3-D convolutions over the first axis.

    The input is laid out once as (H1 + 2p, B, C, W1, H2, W2), so each of the k shifted slices is
    a view and autograd keeps a single padded copy of the input per layer.

    Args:
        x: (B, C, H1, W1, H2, W2); weight: (C_out, C, k, k, k, k) with odd k; bias: (C_out,).
    Returns:
        (B, C_out, H1, W1, H2, W2).
    """
    b, c, h1, w1, h2, w2 = x.shape
    co, k = weight.shape[0], weight.shape[2]
    p = k // 2
    xp = F.pad(x.permute(2, 0, 1, 3, 4, 5), (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, p, p)).contiguous()
    out = None
    for a in range(k):
        sl = xp[a:a + h1].view(h1 * b, c, w1, h2, w2)
        o = F.conv3d(sl, weight[:, :, a], padding=p)
        out = o if out is None else out + o
    out = out.view(h1, b, co, w1, h2, w2).permute(1, 2, 0, 3, 4, 5)
    if bias is not None:
        out = out + bias.view(1, co, 1, 1, 1, 1)
    return out


class Conv4d(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"Conv4d kernel_size must be odd, got {kernel_size}")
        self.weight = nn.Parameter(torch.empty(c_out, c_in, *(kernel_size,) * 4))
        self.bias = nn.Parameter(torch.zeros(c_out))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv4d(x, self.weight, self.bias)


def mutual_filter(corr: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Soft mutual nearest-neighbour filtering of a (B, 1, H1, W1, H2, W2) volume."""
    b, c, h1, w1, h2, w2 = corr.shape
    flat = corr.reshape(b, c, h1 * w1, h2 * w2)
    row_max = flat.max(dim=3, keepdim=True).values
    col_max = flat.max(dim=2, keepdim=True).values
    return (flat * (flat / (row_max + eps)) * (flat / (col_max + eps))).reshape(corr.shape)


def nc_activation_bytes(src_grid: Sequence[int], trg_grid: Sequence[int],
                        cfg: Optional[NeighbourhoodConsensusConfig] = None,
                        bytes_per_value: int = 4) -> int:
    """Estimated bytes of the activations the 4-D convolutions keep for backward, per pair, for
    the head ``cfg`` describes (default: the schema's defaults).

    Each layer keeps its input padded along the first source axis (C_in N (h1 + 2p) / h1 values,
    N = h1 w1 h2 w2) and its ReLU output (C_out N); twice with ``symmetric``. The mutual filters
    add a few single-channel volumes on top (measured: see ``tests/test_heads.py``).
    """
    cfg = configured(NeighbourhoodConsensusConfig, cfg)
    h1 = src_grid[0]
    n = src_grid[0] * src_grid[1] * trg_grid[0] * trg_grid[1]
    chans = [1, *cfg.channels, 1]
    values = sum(chans[i] * n * (h1 + 2 * (k // 2)) / h1 + chans[i + 1] * n
                 for i, k in enumerate(cfg.kernel_sizes))
    return int(values * bytes_per_value * (2 if cfg.symmetric else 1))


@register("head", "neighbourhood_consensus", NeighbourhoodConsensusConfig)
class NeighbourhoodConsensus(Head):
    """A score refiner (see :class:`semcorr.heads.base.Head`): features pass through unchanged."""

    refines_similarity = True

    def __init__(self, cfg: Optional[NeighbourhoodConsensusConfig] = None, dim: int = 0,
                 **overrides) -> None:
        super().__init__()
        cfg = configured(NeighbourhoodConsensusConfig, cfg, **overrides)
        chans = [1, *cfg.channels, 1]
        layers: List[nn.Module] = []
        for i, k in enumerate(cfg.kernel_sizes):
            layers += [Conv4d(chans[i], chans[i + 1], k), nn.ReLU(inplace=False)]
        self.net = nn.Sequential(*layers)
        self.mutual, self.symmetric = cfg.mutual, cfg.symmetric

    def refine(self, similarity: torch.Tensor, src: FeatureMap, trg: FeatureMap) -> torch.Tensor:
        """(B, Ns, Nt) similarity (-inf at padded target cells) -> refined (B, Ns, Nt) float32.

        Precision (docs/backbones.md, "Precision"): the input similarity is float32 (the pipeline
        computes it with autocast off); the 4-D convolutions are learned layers and follow an
        active autocast (bf16 under ``bf16-mixed`` halves their activations); their outputs are
        upcast, so both directions are summed, mutually filtered and returned in float32 (float64
        for a float64 input)."""
        (h1, w1), (h2, w2) = src.grid, trg.grid
        b = similarity.shape[0]
        corr = similarity.masked_fill(torch.isinf(similarity), 0.0)
        if src.valid is not None:
            corr = corr * src.valid.flatten(1)[:, :, None]
        corr = corr.view(b, 1, h1, w1, h2, w2)
        if self.mutual:
            corr = mutual_filter(corr)
        dt = torch.float64 if corr.dtype == torch.float64 else torch.float32
        out = self.net(corr).to(dt)
        if self.symmetric:
            swapped = corr.permute(0, 1, 4, 5, 2, 3)
            out = out + self.net(swapped).permute(0, 1, 4, 5, 2, 3).to(dt)
        if self.mutual:
            out = mutual_filter(out)
        out = out.reshape(b, h1 * w1, h2 * w2)
        if trg.valid is not None:
            out = out.masked_fill(~trg.valid.flatten(1)[:, None, :], float("-inf"))
        return out
