"""A residual bottleneck block on the patch features (the survey's "feature enhancement").

``y = x + W_3 n(relu(n(W_2 relu(n(W_1 x)))))`` with 1x1 convolutions W_1: D -> D/r, W_3: D/r -> D,
a 3x3 convolution W_2 in between, GroupNorm n (batch-size independent), and the last norm's scale
zero-initialised so the block starts as the identity (training starts from the zero-shot
features). The same weights process source and target (a Siamese head). ``n_blocks`` stacks blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from semcorr.backbones.base import FeatureMap
from semcorr.checks import number
from semcorr.registry import GroupConfig, configured, register
from semcorr.heads.base import Head


@dataclass
class ResNetBottleneckConfig(GroupConfig):
    reduction: int = 4  # D -> D / reduction -> D (768 -> 192 -> 768 for ViT-B)
    n_blocks: int = 1
    groups: int = 32  # GroupNorm groups (reduced to a divisor of the channels)
    zero_init: bool = True

    def __post_init__(self) -> None:
        number(self, "reduction", ge=1, integer=True)
        number(self, "n_blocks", ge=1, integer=True)
        number(self, "groups", ge=1, integer=True)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    g = max(d for d in range(1, min(groups, channels) + 1) if channels % d == 0)
    return nn.GroupNorm(g, channels)


class Bottleneck(nn.Module):
    """One residual bottleneck: (B, D, h, w) -> (B, D, h, w)."""

    def __init__(self, dim: int, reduction: int, groups: int, zero_init: bool):
        super().__init__()
        mid = max(dim // reduction, 1)
        self.body = nn.Sequential(
            nn.Conv2d(dim, mid, 1, bias=False), _norm(mid, groups), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False), _norm(mid, groups), nn.ReLU(inplace=True),
            nn.Conv2d(mid, dim, 1, bias=False), _norm(dim, groups),
        )
        if zero_init:
            nn.init.zeros_(self.body[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@register("head", "resnet_bottleneck", ResNetBottleneckConfig)
class ResNetBottleneckHead(Head):
    """Residual bottleneck(s) applied to both maps; keeps stride and ``valid``."""

    def __init__(self, cfg: Optional[ResNetBottleneckConfig] = None, dim: int = 0,
                 **overrides) -> None:
        super().__init__()
        cfg = configured(ResNetBottleneckConfig, cfg, **overrides)
        if dim <= 0:
            raise ValueError("resnet_bottleneck needs the backbone's feature dimension (dim > 0)")
        self.blocks = nn.Sequential(*[Bottleneck(dim, cfg.reduction, cfg.groups, cfg.zero_init)
                                      for _ in range(cfg.n_blocks)])

    def forward(self, src: FeatureMap, trg: FeatureMap):
        """(B, D, h, w) maps in, the same shapes out."""
        return src.with_features(self.blocks(src.features)), trg.with_features(self.blocks(trg.features))
