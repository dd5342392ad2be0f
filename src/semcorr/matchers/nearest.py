"""Nearest-neighbour matching: cosine similarity of patch features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from semcorr.backbones.base import FeatureMap
from semcorr.matchers.base import Matcher, MatcherConfig, MatchResult, cosine_similarity
from semcorr.registry import register


@dataclass
class NNConfig(MatcherConfig):
    pass


@register("matcher", "nn", NNConfig)
class NearestNeighbourMatcher(Matcher):
    """scores[b, i, j] = <y_i, ŷ_j> / (|y_i| |ŷ_j|) (or the given ``similarity``, e.g. one refined
    by neighbourhood consensus); the transfer step takes the row argmax."""

    def __init__(self, cfg: Optional[NNConfig] = None) -> None:
        super().__init__()

    def forward(
        self, src: FeatureMap, trg: FeatureMap, sym_pairs: Optional[torch.Tensor] = None,
        similarity: Optional[torch.Tensor] = None,
    ) -> MatchResult:
        return MatchResult(scores=cosine_similarity(src, trg) if similarity is None else similarity)
