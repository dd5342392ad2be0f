"""Cross-entropy to a Gaussian around the ground-truth target (the survey baseline, after SimSC).

For each annotated source keypoint k with feature f_k (bilinearly sampled from the source map),
the logits over the target cells j are ``cos(f_k, g_j) / T``; the target distribution q_k is a
Gaussian of std ``sigma`` cells around the ground-truth target point, truncated to a
``window`` x ``window`` block of cells around its cell and renormalised over content cells:

    L = - mean_k sum_j q_kj log softmax_j(cos(f_k, g_j) / T)

``logits_from: scores`` uses the matcher's score rows (at the keypoint's source cell) as the logits instead
(divided by T), so a score refiner such as neighbourhood consensus is trained through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from semcorr.backbones.base import FeatureMap, grid_rows_cols
from semcorr.checks import number, one_of
from semcorr.registry import GroupConfig, configured, register
from semcorr.losses.common import gather_rows, keypoint_cells, masked_mean, sample_features
from semcorr.matchers.base import MatchResult, score_dtype
from semcorr.precision import autocast_off


@dataclass
class GaussianCEConfig(GroupConfig):
    temperature: float = 0.03
    sigma: float = 1.5  # cells
    window: int = 7  # cells (odd)
    logits_from: str = "features"  # features | scores

    def __post_init__(self) -> None:
        number(self, "temperature", gt=0)
        number(self, "sigma", gt=0)
        number(self, "window", ge=1, integer=True)
        if self.window % 2 == 0:
            raise ValueError(f"window must be an odd integer >= 1, got {self.window}")
        one_of(self, "logits_from", ("features", "scores"))


def gaussian_targets(trg_kps: torch.Tensor, trg: FeatureMap, sigma: float,
                     window: int) -> torch.Tensor:
    """(B, K, Nt) Gaussian target distributions over the target cells.

    Args:
        trg_kps: (B, K, 2) ground-truth target points, network frame.
    Rows whose window holds no content cell are all zero.
    """
    h, w = trg.grid
    s = trg.stride
    gx = (trg_kps[..., 0] + 0.5) / s - 0.5  # continuous column of the point
    gy = (trg_kps[..., 1] + 0.5) / s - 0.5
    rows, cols = (v.float() for v in grid_rows_cols(trg.grid, trg_kps.device))  # (Nt,) each
    dx = cols - gx[..., None]
    dy = rows - gy[..., None]
    weight = torch.exp(-(dx ** 2 + dy ** 2) / (2 * sigma ** 2))
    half = window // 2
    inside = ((cols - gx.round().clamp(0, w - 1)[..., None]).abs() <= half) & (
        (rows - gy.round().clamp(0, h - 1)[..., None]).abs() <= half)
    if trg.valid is not None:
        inside = inside & trg.valid.flatten(1)[:, None, :]
    weight = weight * inside
    return weight / weight.sum(-1, keepdim=True).clamp_min(1e-12)


@register("loss", "gaussian_ce", GaussianCEConfig)
class GaussianCELoss(nn.Module):
    """See the module docstring. ``forward(batch, src, trg, result) -> (loss, logs)``."""

    def __init__(self, cfg: Optional[GaussianCEConfig] = None, **overrides) -> None:
        super().__init__()
        cfg = configured(GaussianCEConfig, cfg, **overrides)
        self.temperature, self.sigma, self.window = cfg.temperature, cfg.sigma, cfg.window
        self.logits_from = cfg.logits_from

    def logits(self, batch: Dict[str, Any], src: FeatureMap, trg: FeatureMap,
               result: MatchResult, src_idx: torch.Tensor) -> torch.Tensor:
        """(B, K, Nt) logits of the keypoints against every target cell (-inf at padding).

        Float32 (float64 for float64 features) with autocast off: the cosine similarities and the
        bilinear sampling of the query features are never computed in bf16 / fp16."""
        if self.logits_from == "scores":
            rows = gather_rows(result.scores, src_idx)
        else:
            dt = score_dtype(src.features)
            with autocast_off(src.features.device):
                src32, trg32 = src.with_features(src.features.to(dt)), trg.with_features(trg.features.to(dt))
                query = F.normalize(sample_features(src32, batch["src_kps"]), dim=-1)  # (B, K, D)
                keys = F.normalize(trg32.flat(), dim=-1)  # (B, Nt, D)
                rows = query @ keys.transpose(1, 2)
            if trg.valid is not None:
                rows = rows.masked_fill(~trg.valid.flatten(1)[:, None, :], float("-inf"))
        return rows.float() / self.temperature

    def forward(self, batch: Dict[str, Any], src: FeatureMap, trg: FeatureMap,
                result: MatchResult) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        src_idx, _, mask = keypoint_cells(batch, src, trg)
        logits = self.logits(batch, src, trg, result, src_idx)
        target = gaussian_targets(batch["trg_kps"], trg, self.sigma, self.window)
        mask = mask & (target.sum(-1) > 0)
        logp = torch.log_softmax(logits, dim=-1)
        ce = -(target * logp.masked_fill(target == 0, 0.0)).sum(-1)  # (B, K)
        loss = masked_mean(ce, mask, logits.masked_fill(torch.isinf(logits), 0.0))
        return loss, {"n_keypoints": mask.sum().float()}
