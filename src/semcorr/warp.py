"""Dense warps through a score matrix: the target image carried into the source frame."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F

from semcorr.backbones.base import cell_centers
from semcorr.matchers.transfer import cell_index


def warp_to_source(trg_img: torch.Tensor, scores: torch.Tensor, src_grid: Tuple[int, int],
                   src_stride: int, trg_grid: Tuple[int, int], trg_stride: int,
                   src_hw: Tuple[int, int]) -> torch.Tensor:
    """The target warped back into the source frame through a score matrix.

    Each source cell i takes the target cell j* = argmax_j scores[i, j] (for OT matchers the
    largest entry of row i of the plan) and copies the target's ``stride`` x ``stride`` pixels
    around j*'s centre, i.e. every source pixel p in cell i reads the target at
    ``p + (c_t(j*) - c_s(i))`` (nearest pixel). A perfect matcher reproduces the source.

    Args:
        trg_img: (3, H', W') network-frame target.
        scores: (Ns, Nt) scores of one pair (``MatchResult.scores[b]``).
        src_hw: (H, W) of the source network frame.
    Returns:
        (3, H, W) warped image; pixels in source cells whose row is all -inf are 0.
    """
    h, w = src_hw
    best, idx = scores.max(dim=-1)  # (Ns,)
    shift = (cell_centers(trg_grid, trg_stride, scores.device)[idx]
             - cell_centers(src_grid, src_stride, scores.device))  # (Ns, 2)
    ys, xs = torch.meshgrid(torch.arange(h, device=scores.device, dtype=torch.float32),
                            torch.arange(w, device=scores.device, dtype=torch.float32), indexing="ij")
    pix = torch.stack([xs, ys], dim=-1).reshape(1, -1, 2)
    cell = cell_index(pix, src_grid, src_stride)[0]  # (H*W,)
    target = pix[0] + shift[cell]
    th, tw = trg_img.shape[-2:]
    grid = (target + 0.5) / torch.tensor([tw, th], device=scores.device) * 2 - 1
    out = F.grid_sample(trg_img[None].float(), grid.view(1, h, w, 2), mode="nearest",
                        padding_mode="zeros", align_corners=False)[0]
    return out * torch.isfinite(best)[cell].view(1, h, w)


def warp_match(batch: Mapping[str, Any], out: Any, scores: Optional[torch.Tensor] = None,
               index: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source, target and warped target of pair ``index`` of a pipeline output, cropped to the
    image content (no padding). ``batch`` / ``out``: a :class:`~semcorr.net.CorrespondenceNet`'s
    input and :class:`~semcorr.net.MatchOutput`; ``scores`` (Ns, Nt) replaces the output's.
    """
    src, trg = out.src, out.trg
    scores = out.result.scores[index] if scores is None else scores
    sh, sw = (int(v) for v in batch["src_content_hw"][index])
    th, tw = (int(v) for v in batch["trg_content_hw"][index])
    sy, sx = _top_left(batch, "src", index)
    ty, tx = _top_left(batch, "trg", index)
    warped = warp_to_source(batch["trg_img"][index], scores, src.grid, src.stride, trg.grid,
                            trg.stride, tuple(batch["src_img"].shape[-2:]))
    return (batch["src_img"][index, :, sy:sy + sh, sx:sx + sw].cpu(),
            batch["trg_img"][index, :, ty:ty + th, tx:tx + tw].cpu(),
            warped[:, sy:sy + sh, sx:sx + sw].cpu())


def _top_left(batch: Mapping[str, Any], side: str, index: int) -> Tuple[int, int]:
    """Row and column of the content's top-left pixel (0, 0 when the batch does not say)."""
    yx = batch.get(f"{side}_content_yx")
    return (0, 0) if yx is None else (int(yx[index][0]), int(yx[index][1]))
