"""Training losses on matcher outputs."""

from dataclasses import dataclass

from semcorr.config import GroupConfig, build, register


@dataclass
class NoLossConfig(GroupConfig):
    pass


@register("loss", "none", NoLossConfig)
class NoLoss:
    """No loss: evaluation only. ``train.py`` refuses to train with it."""


def build_loss(cfg):
    return build("loss", cfg)
