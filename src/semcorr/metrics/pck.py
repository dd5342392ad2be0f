"""PCK: a predicted keypoint is correct if it lies within alpha * L of the ground truth.

The rule (which L, which frame, ``<`` or ``<=``, which average) is the run's
:class:`~semcorr.metrics.protocol.Protocol`, applied by :mod:`semcorr.metrics.functional`; this
module holds the torchmetrics object that sums it over batches and processes.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torchmetrics import Metric

from semcorr.metrics.functional import (KeypointScores, PCKStates, pck_scores, pck_summary,
                                        pck_update)
from semcorr.metrics.protocol import Protocol


class PCK(Metric):
    """PCK over many batches and processes, overall and per category, in percent.

    States are sums (``dist_reduce_fx="sum"``) that float64 holds exactly, so the result is the
    same bits however the pairs are split across batches and processes (sharded without padding,
    see :class:`semcorr.data.samplers.ShardSampler`), in whatever order they are added:
    ``kp_correct`` (C, A) / ``kp_total`` (C,) for per-keypoint averaging (counts), ``img_pck_sum``
    (C, A) / ``img_count`` (C,) for per-image averaging (pairs with no valid keypoint are not
    counted). Each pair's PCK is rounded to a multiple of 2^-32 (below 1.2e-8 percentage points)
    before it is summed, which keeps the sums exact up to 2^21 pairs per category.

    ``compute()`` returns :func:`~semcorr.metrics.functional.pck_summary`: ``{"pck": {alpha:
    value}, "pck_per_category": {name: {alpha: value}}, "pck_pooled": ..., "pck_category_mean":
    ..., "pck_per_keypoint": ..., "pck_per_image": ..., "n_pairs": int, "n_keypoints": int}``.

    Args:
        alphas: the thresholds (fractions of L).
        protocol: the :class:`Protocol` (default: ``Protocol()``, L by the target box, per image).
        categories: category names, indexed by ``category_idx`` in :meth:`update`.
    """

    full_state_update = False

    def __init__(self, alphas: Sequence[float] = (0.05, 0.1, 0.15),
                 protocol: Optional[Protocol] = None, categories: Sequence[str] = ("all",),
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.alphas = [float(a) for a in alphas]
        self.protocol = protocol if protocol is not None else Protocol()
        self.categories = list(categories)
        zeros = PCKStates.zeros(len(self.categories), len(self.alphas))
        for name in self.STATES:
            self.add_state(name, getattr(zeros, name), dist_reduce_fx="sum")

    STATES = ("kp_correct", "kp_total", "img_pck_sum", "img_count")

    def _apply(self, fn, exclude_state=()):
        """Move the states with the module, never change their dtype: they stay float64 (exact
        sums) when Lightning casts the whole module, e.g. ``trainer.precision=bf16-true`` /
        ``16-true`` (a bfloat16 count is not exact above 256)."""
        this = super()._apply(fn, exclude_state=(*exclude_state, *self.STATES))
        device = this.device  # where ``fn`` sends tensors (torchmetrics tracks it)
        for name in self.STATES:
            setattr(this, name, getattr(this, name).to(device=device, dtype=torch.float64))
            this._defaults[name] = this._defaults[name].to(device=device, dtype=torch.float64)
        return this

    def score(self, pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor,
              trg_bbox: Optional[torch.Tensor] = None,
              trg_imsize: Optional[torch.Tensor] = None) -> KeypointScores:
        """:func:`~semcorr.metrics.functional.pck_scores` under this metric's protocol and alphas
        (adds nothing; pass the result to :meth:`update`)."""
        return pck_scores(self.protocol, self.alphas, pred, gt, valid, trg_bbox, trg_imsize)

    def update(self, pred: Optional[torch.Tensor] = None, gt: Optional[torch.Tensor] = None,
               valid: Optional[torch.Tensor] = None, category_idx: Optional[torch.Tensor] = None,
               trg_bbox: Optional[torch.Tensor] = None, trg_imsize: Optional[torch.Tensor] = None,
               *, scores: Optional[KeypointScores] = None) -> None:
        """Add a batch: its predictions, or its ``scores`` already computed by :meth:`score`.

        Args:
            pred, gt: (B, K, 2) predicted / true target keypoints, original target frame.
            valid: (B, K) bool. category_idx: (B,) long (default 0).
            trg_bbox: (B, 4) for ``bbox``; trg_imsize: (B, 2) (h, w) for ``image`` / a frame.
        """
        if scores is None:
            scores = self.score(pred, gt, valid, trg_bbox, trg_imsize)
        n_correct, n_valid = scores.counts()
        if category_idx is None:
            category_idx = torch.zeros(n_valid.shape[0], dtype=torch.long)
        pck_update(self._states(), n_correct, n_valid, category_idx)

    def _states(self) -> PCKStates:
        return PCKStates(self.kp_correct, self.kp_total, self.img_pck_sum, self.img_count)

    def compute(self) -> Dict[str, object]:
        return pck_summary(self._states(), self.protocol, self.alphas, self.categories)
