"""The head contract: trainable modules between the backbone and the matcher."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from semcorr.backbones.base import FeatureMap
from semcorr.registry import GroupConfig, register


class Head(nn.Module):
    """Base class: the identity on both feature maps and on the similarity volume.

    - ``forward(src, trg) -> (src, trg)``: a *feature head* maps the two :class:`FeatureMap` s to
      new ones (``resnet_bottleneck``).
    - ``refine(similarity, src, trg) -> similarity``: a *score refiner* refines the (B, Ns, Nt)
      cosine-similarity volume (-inf at padded target cells) before the matcher uses it
      (``neighbourhood_consensus``); such heads set ``refines_similarity = True``, and the
      pipeline then hands the refined volume to the matcher's ``similarity`` argument.

    Every head's ``__init__`` takes its config object (or keyword overrides of its fields, see
    :func:`semcorr.registry.configured`) and ``dim``, the backbone's feature dimension (passed by
    :func:`semcorr.heads.build_head`), whether or not it uses it.
    """

    refines_similarity: bool = False

    def forward(self, src: FeatureMap, trg: FeatureMap) -> tuple[FeatureMap, FeatureMap]:
        return src, trg

    def refine(self, similarity: torch.Tensor, src: FeatureMap, trg: FeatureMap) -> torch.Tensor:
        return similarity


@dataclass
class NoHeadConfig(GroupConfig):
    pass


@register("head", "none", NoHeadConfig)
class NoHead(Head):
    """No head: backbone features go straight to the matcher."""

    def __init__(self, cfg: Optional[NoHeadConfig] = None, dim: int = 0) -> None:
        super().__init__()
