"""Heads: trainable modules between the backbone and the matcher.

Two kinds of head, composable in one list (``kind: compose``, ``heads: [...]``):

- *feature heads* map the two feature maps to new ones:
  ``forward(src: FeatureMap, trg: FeatureMap) -> (FeatureMap, FeatureMap)``
  (``resnet_bottleneck``);
- *score refiners* refine the (B, Ns, Nt) cosine-similarity volume before the matcher uses it:
  ``refine(similarity, src, trg) -> similarity`` (``neighbourhood_consensus``). A head with a
  ``refine`` method makes the pipeline hand the refined similarity to the matcher (see
  :func:`semcorr.heads.consensus.match_with_refiner`): ``nn`` returns it as the scores, matchers
  whose ``forward`` takes a ``similarity`` argument (the OT family) build their cost from it.

Every head's ``__init__`` takes ``dim``, the backbone's feature dimension (passed by
:func:`build_head`), whether or not it uses it.
"""

from dataclasses import dataclass
from typing import Any, Optional

from torch import nn

from semcorr.config import GroupConfig, build, register


@dataclass
class NoHeadConfig(GroupConfig):
    pass


class Head(nn.Module):
    """Base class. ``forward(src, trg)`` maps the two :class:`FeatureMap` s to new ones.

    ``refine``: None, or ``refine(similarity (B, Ns, Nt), src, trg) -> (B, Ns, Nt)`` for heads
    that refine the similarity volume.
    """

    refine: Optional[Any] = None

    def forward(self, src, trg):
        return src, trg


@register("head", "none", NoHeadConfig)
class NoHead(Head):
    """No head: backbone features go straight to the matcher."""

    def __init__(self, dim: int = 0) -> None:
        super().__init__()


def build_head(cfg, dim: int = 0) -> nn.Module:
    """The head of a ``head`` config section for backbone features of dimension ``dim``."""
    return build("head", cfg, dim=dim)


from semcorr.heads import bottleneck, compose, consensus  # noqa: E402,F401

__all__ = ["Head", "NoHead", "build_head"]
