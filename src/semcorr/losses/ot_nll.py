"""Negative log-likelihood through the OT / GW-OT transport plan.

``result.scores`` of the OT family hold log P (B, Ns, Nt). For annotated keypoint k with source
cell i_k and ground-truth target cell j_k, the row-normalised plan is
``p_k = P[i_k] / sum_j P[i_k, j]`` (``log_softmax`` of the row), and

    L = w_pos * mean_k -log p_k(j_k)  +  w_neg * mean_{k, j in N_k} -log(1 - p_k(j))

where N_k are ``n_negatives`` content cells farther than ``neg_radius`` cells (Chebyshev) from
j_k: the ones with the most mass (``negatives: hardest``), uniformly drawn (``random``, seeded by
the batch's pair ids so runs and resumed runs draw the same), or all of them (``all``). With
``pos_radius`` r > 0 the positive is the mass of the (2r+1)^2 block around j_k.
This is the positive/negative part of the Lightspeed/GECO objective; keypoints visible in only one
image carry no label in our schema, so there is no unmatched set.

Gradients flow into the scores, so through the matcher's solver (unrolled or checkpointed).
``temperature`` divides the scores first: keep 1 for log plans; with ``matcher=nn`` (cosine
scores) a small temperature turns this into an InfoNCE-style loss.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from semcorr.backbones.base import FeatureMap, grid_rows_cols
from semcorr.checks import number, one_of
from semcorr.registry import GroupConfig, configured, register
from semcorr.losses.common import gather_rows, keypoint_cells, masked_mean
from semcorr.matchers.base import MatchResult

NEGATIVES = ("hardest", "random", "all")


@dataclass
class OTNLLConfig(GroupConfig):
    pos_weight: float = 1.0
    neg_weight: float = 1.0
    n_negatives: int = 16
    negatives: str = "hardest"  # hardest | random | all
    neg_radius: int = 1  # cells around the ground truth that are never negatives
    pos_radius: int = 0  # 0: the ground-truth cell only
    temperature: float = 1.0
    eps: float = 1e-6

    def __post_init__(self) -> None:
        number(self, "pos_weight", ge=0)
        number(self, "neg_weight", ge=0)
        number(self, "n_negatives", ge=1, integer=True)
        one_of(self, "negatives", NEGATIVES)
        number(self, "neg_radius", ge=0, integer=True)
        number(self, "pos_radius", ge=0, integer=True)
        number(self, "temperature", gt=0)
        number(self, "eps", gt=0, le=0.5)


def _chebyshev(idx: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """(B, K, Nt) Chebyshev distance in cells from the cells ``idx`` (B, K) to every cell."""
    w = grid[1]
    rows, cols = grid_rows_cols(grid, idx.device)
    r, c = idx // w, idx % w
    return torch.maximum((rows - r[..., None]).abs(), (cols - c[..., None]).abs())


def _batch_generator(batch: Dict[str, Any], device: torch.device) -> torch.Generator:
    key = "|".join(map(str, batch.get("pair_id", batch.get("src_id", []))))
    gen = torch.Generator(device=device)
    gen.manual_seed(zlib.crc32(key.encode()))
    return gen


@register("loss", "ot_nll", OTNLLConfig)
class OTNLLLoss(nn.Module):
    """See the module docstring. ``forward(batch, src, trg, result) -> (loss, logs)``."""

    def __init__(self, cfg: Optional[OTNLLConfig] = None, **overrides) -> None:
        super().__init__()
        cfg = configured(OTNLLConfig, cfg, **overrides)
        self.pos_weight, self.neg_weight = cfg.pos_weight, cfg.neg_weight
        self.n_negatives, self.negatives = cfg.n_negatives, cfg.negatives
        self.neg_radius, self.pos_radius = cfg.neg_radius, cfg.pos_radius
        self.temperature, self.eps = cfg.temperature, cfg.eps

    def forward(self, batch: Dict[str, Any], src: FeatureMap, trg: FeatureMap,
                result: MatchResult) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        src_idx, trg_idx, mask = keypoint_cells(batch, src, trg)
        rows = gather_rows(result.scores, src_idx).float() / self.temperature  # (B, K, Nt)
        logp = torch.log_softmax(rows, dim=-1)  # row-normalised plan; -inf at padding
        # -inf is the one non-finite value with a meaning (no mass: a padded cell); NaN and +inf
        # are kept, so a non-finite plan row gives a non-finite loss, never a dropped keypoint
        content = logp != float("-inf")
        mask = mask & content.any(-1)
        dist = _chebyshev(trg_idx, trg.grid)
        finite = logp.masked_fill(~content, -1e4)
        # positives: -log of the mass at (or around) the ground-truth cell
        if self.pos_radius > 0:
            pos_lp = torch.logsumexp(finite.masked_fill(dist > self.pos_radius, -1e4), dim=-1)
        else:
            pos_lp = torch.gather(finite, 2, trg_idx[..., None])[..., 0]
        mask = mask & ~(pos_lp <= -1e3)  # the ground-truth cell lies in content (NaN stays)
        pos = masked_mean(-pos_lp, mask, rows.masked_fill(~content, 0.0))
        # negatives: -log(1 - p) on cells away from the ground truth
        eligible = content & (dist > self.neg_radius) & mask[..., None]
        neg_p = finite.exp().clamp(max=1 - self.eps)
        neg_nll = -torch.log1p(-neg_p)  # (B, K, Nt)
        chosen = self._choose(batch, finite, eligible)
        per_kp = (neg_nll * chosen).sum(-1) / chosen.sum(-1).clamp_min(1)
        neg = masked_mean(per_kp, mask & chosen.any(-1), rows.masked_fill(~content, 0.0))
        loss = self.pos_weight * pos + self.neg_weight * neg
        return loss, {"pos_nll": pos.detach(), "neg_nll": neg.detach(),
                      "n_keypoints": mask.sum().float()}

    def _choose(self, batch: Dict[str, Any], logp: torch.Tensor,
                eligible: torch.Tensor) -> torch.Tensor:
        """(B, K, Nt) float selection of negative cells among ``eligible``."""
        if self.negatives == "all" or self.n_negatives >= logp.shape[-1]:
            return eligible.float()
        if self.negatives == "hardest":
            key = logp.detach()
        else:
            gen = _batch_generator(batch, logp.device)
            key = torch.rand(logp.shape, generator=gen, device=logp.device)
        key = key.masked_fill(~eligible, float("-inf"))
        top = key.topk(self.n_negatives, dim=-1).indices
        chosen = torch.zeros_like(logp).scatter_(-1, top, 1.0)
        return chosen * eligible
