"""Heads: trainable modules between the backbone and the matcher (contract: :class:`Head`).

Kinds: ``none``, ``resnet_bottleneck`` (feature head), ``neighbourhood_consensus`` (score
refiner) and ``compose`` (a list of heads: ``kind: compose``, ``heads: [...]``). Importing this
package registers them.
"""

from torch import nn

from semcorr.heads import bottleneck, compose, consensus  # noqa: F401  (register the kinds)
from semcorr.heads.base import Head, NoHead
from semcorr.registry import build


def build_head(cfg, dim: int = 0) -> nn.Module:
    """The head of a ``head`` config section for backbone features of dimension ``dim``."""
    return build("head", cfg, dim=dim)


__all__ = ["Head", "NoHead", "build_head"]
