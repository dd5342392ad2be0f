"""What the losses share: which keypoints count, and where they fall on the feature grids."""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F

from semcorr.backbones.base import FeatureMap
from semcorr.matchers.transfer import cell_index


def in_grid(points: torch.Tensor, fmap: FeatureMap) -> torch.Tensor:
    """(B, K) True where (x, y) network-frame points lie on the map's grid."""
    h, w = fmap.grid
    s = fmap.stride
    x, y = points[..., 0], points[..., 1]
    return (x >= -0.5) & (y >= -0.5) & (x < w * s - 0.5) & (y < h * s - 0.5)


def cell_valid(fmap: FeatureMap, idx: torch.Tensor) -> torch.Tensor:
    """(B, K) validity of the cells ``idx`` (B, K) (True where the map has no mask)."""
    if fmap.valid is None:
        return torch.ones_like(idx, dtype=torch.bool)
    return torch.gather(fmap.valid.flatten(1), 1, idx)


def keypoint_cells(batch: Dict[str, Any], src: FeatureMap,
                   trg: FeatureMap) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source and target cells of the annotated keypoints, and which keypoints count.

    Returns:
        src_idx, trg_idx: (B, K) long, row-major cell indices in the source / target grid.
        mask: (B, K) bool: the keypoint is visible in both images (``kps_valid``: padding and
            invisible keypoints are False), lies on both grids, and both cells are content.
    """
    src_kps, trg_kps = batch["src_kps"], batch["trg_kps"]
    src_idx = cell_index(src_kps, src.grid, src.stride)
    trg_idx = cell_index(trg_kps, trg.grid, trg.stride)
    mask = batch["kps_valid"].bool() & in_grid(src_kps, src) & in_grid(trg_kps, trg)
    mask = mask & cell_valid(src, src_idx) & cell_valid(trg, trg_idx)
    return src_idx, trg_idx, mask


def sample_features(fmap: FeatureMap, points: torch.Tensor) -> torch.Tensor:
    """(B, K, D) features bilinearly interpolated at (B, K, 2) network-frame (x, y) points.

    Cell c's feature sits at its centre, pixel ``c * stride + (stride - 1) / 2``; points beyond
    the outermost centres take the border value.
    """
    h, w = fmap.grid
    s = fmap.stride
    norm = torch.stack([(points[..., 0] + 0.5) / (w * s), (points[..., 1] + 0.5) / (h * s)], -1)
    grid = (norm * 2 - 1)[:, :, None, :].to(fmap.features.dtype)  # (B, K, 1, 2)
    out = F.grid_sample(fmap.features, grid, mode="bilinear", padding_mode="border",
                        align_corners=False)  # (B, D, K, 1)
    return out[..., 0].transpose(1, 2)


def gather_rows(scores: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(B, K, Nt) rows ``idx`` (B, K) of a (B, Ns, Nt) score matrix."""
    return torch.gather(scores, 1, idx[..., None].expand(-1, -1, scores.shape[-1]))


def masked_mean(values: torch.Tensor, mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask``; a zero still attached to ``like``'s graph when empty
    (NaN when ``like`` holds NaN).

    ``mask`` must come from the annotations and the grids (which keypoints count), never from the
    values: a NaN value under the mask gives a NaN mean, so a non-finite plan or feature is never
    turned into a finite loss by dropping the keypoint.
    """
    if mask.any():
        return values[mask].mean()
    return like.sum() * 0.0
