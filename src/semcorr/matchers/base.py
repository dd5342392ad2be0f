"""The matcher contract: two feature maps in, a (B, Ns, Nt) score matrix out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
from torch import nn

from semcorr.backbones.base import FeatureMap


@dataclass
class MatchResult:
    """Scores between every source cell i and target cell j.

    Attributes:
        scores: (B, Ns, Nt). Larger is better. For ``nn`` these are cosine similarities; for the
            OT family they are log of the transport plan (rows sum to the source marginal).
            Invalid (padded) target cells hold ``-inf``.
        extras: matcher-specific diagnostics (e.g. ``objective`` per solver step).
    """

    scores: torch.Tensor
    extras: Dict[str, Any] = field(default_factory=dict)


class Matcher(nn.Module):
    """Base class of matchers.

    ``forward(src, trg, sym_pairs=None)``:
        src, trg: :class:`FeatureMap` of the source and target images (same batch size B).
        sym_pairs: optional (B, S, 2) long, pairs of *source cell indices* (row-major in the
            source grid) that are left/right symmetric; -1 marks padding. Matchers without a
            symmetry term ignore it.
    returns :class:`MatchResult`.
    """

    def forward(
        self, src: FeatureMap, trg: FeatureMap, sym_pairs: Optional[torch.Tensor] = None
    ) -> MatchResult:
        raise NotImplementedError


def cosine_similarity(src: FeatureMap, trg: FeatureMap) -> torch.Tensor:
    """(B, Ns, Nt) cosine similarity of L2-normalised features; -inf at invalid target cells."""
    a = nn.functional.normalize(src.flat(), dim=-1)
    b = nn.functional.normalize(trg.flat(), dim=-1)
    sim = a @ b.transpose(1, 2)
    if trg.valid is not None:
        sim = sim.masked_fill(~trg.valid.flatten(1)[:, None, :], float("-inf"))
    return sim
