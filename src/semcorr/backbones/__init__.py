"""Backbones: images -> patch-feature maps. Importing this package registers every kind."""

from semcorr.backbones.base import Backbone, FeatureMap, valid_cells
from semcorr.config import build


def build_backbone(cfg) -> Backbone:
    return build("backbone", cfg)


from semcorr.backbones import dinov2, dsift  # noqa: E402,F401

__all__ = ["Backbone", "FeatureMap", "build_backbone", "valid_cells"]
