"""Training losses on the pipeline's outputs.

A loss is a callable ``loss(batch, src, trg, result) -> (loss, logs)``:

- ``batch``: the collated sample dict (see :mod:`semcorr.data.schema`);
- ``src``, ``trg``: the head's output :class:`~semcorr.backbones.base.FeatureMap` s, with
  ``valid`` (B, h, w) masks of the cells inside the image content;
- ``result``: the :class:`~semcorr.matchers.base.MatchResult` (scores (B, Ns, Nt));
- returns a scalar tensor and a dict of scalar tensors to log.

Kinds: ``none`` (evaluation only), ``gaussian_ce`` (survey baseline / SimSC), ``ot_nll`` (through
the OT / GW-OT plan) and ``combined`` (a weighted sum of the others).
"""

from dataclasses import dataclass

from semcorr.config import GroupConfig, build, register


@dataclass
class NoLossConfig(GroupConfig):
    pass


@register("loss", "none", NoLossConfig)
class NoLoss:
    """No loss: evaluation only. ``train.py`` refuses to train with it."""


def build_loss(cfg):
    """The loss of a ``loss`` config section; None for ``kind: none``."""
    if cfg.kind == "none":
        return None
    return build("loss", cfg)


from semcorr.losses import combined, gaussian_ce, ot_nll  # noqa: E402,F401

__all__ = ["build_loss", "NoLoss"]
