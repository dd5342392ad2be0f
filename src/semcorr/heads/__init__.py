"""Heads: modules between the backbone and the matcher (feature enhancement, consensus)."""

from dataclasses import dataclass

from torch import nn

from semcorr.config import GroupConfig, build, register


@dataclass
class NoHeadConfig(GroupConfig):
    pass


class Head(nn.Module):
    """Base class. ``forward(src, trg)`` maps the two :class:`FeatureMap` s to new ones."""

    def forward(self, src, trg):
        raise NotImplementedError


@register("head", "none", NoHeadConfig)
class NoHead(Head):
    """No head: backbone features go straight to the matcher."""

    def forward(self, src, trg):
        return src, trg


def build_head(cfg) -> nn.Module:
    return build("head", cfg)
