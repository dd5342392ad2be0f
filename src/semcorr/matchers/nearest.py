"""Nearest-neighbour matching: cosine similarity of patch features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from semcorr.backbones.base import FeatureMap
from semcorr.config import register
from semcorr.matchers import MatcherConfig
from semcorr.matchers.base import Matcher, MatchResult, cosine_similarity


@dataclass
class NNConfig(MatcherConfig):
    pass


@register("matcher", "nn", NNConfig)
class NearestNeighbourMatcher(Matcher):
    """scores[b, i, j] = <y_i, ŷ_j> / (|y_i| |ŷ_j|); the transfer step takes the row argmax."""

    def forward(
        self, src: FeatureMap, trg: FeatureMap, sym_pairs: Optional[torch.Tensor] = None
    ) -> MatchResult:
        return MatchResult(scores=cosine_similarity(src, trg))
