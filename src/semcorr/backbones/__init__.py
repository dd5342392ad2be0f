"""Backbones: images -> patch-feature maps (contract: :class:`Backbone`). Kinds: ``dinov2``
(timm, official DINOv2 behaviour), ``dsift`` and ``precomputed`` (feature files read by image
id); importing this package registers them."""

from semcorr.backbones import dinov2, dsift, precomputed  # noqa: F401  (register the kinds)
from semcorr.backbones.base import Backbone, FeatureMap, valid_cells
from semcorr.registry import build


def build_backbone(cfg) -> Backbone:
    """The backbone of a ``backbone`` config section."""
    return build("backbone", cfg)


__all__ = ["Backbone", "FeatureMap", "build_backbone", "valid_cells"]
