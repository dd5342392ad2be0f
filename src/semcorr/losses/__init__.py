"""Training losses on the pipeline's outputs.

A loss is a callable ``loss(batch, src, trg, result) -> (loss, logs)``:

- ``batch``: the collated sample dict (see :mod:`semcorr.data.schema`);
- ``src``, ``trg``: the head's output :class:`~semcorr.backbones.base.FeatureMap` s, with
  ``valid`` (B, h, w) masks of the cells inside the image content;
- ``result``: the :class:`~semcorr.matchers.base.MatchResult` (scores (B, Ns, Nt));
- returns a scalar tensor and a dict of scalar tensors to log.

Kinds: ``none`` (evaluation only: builds no loss), ``gaussian_ce`` (survey baseline / SimSC),
``ot_nll`` (through the OT / GW-OT plan) and ``combined`` (a weighted sum of the others).
Importing this package registers them.
"""

from dataclasses import dataclass

from semcorr.losses import combined, gaussian_ce, ot_nll  # noqa: F401  (register the kinds)
from semcorr.registry import GroupConfig, build, register


@dataclass
class NoLossConfig(GroupConfig):
    pass


@register("loss", "none", NoLossConfig)
def no_loss(cfg: NoLossConfig | None = None) -> None:
    """``loss=none``: evaluation only (``train.py`` refuses to train without a loss)."""
    return None


def build_loss(cfg):
    """The loss of a ``loss`` config section; None for ``kind: none``."""
    return build("loss", cfg)


__all__ = ["build_loss"]
