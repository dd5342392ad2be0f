"""Keypoint transfer: read target positions off the rows of a (B, Ns, Nt) score matrix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from semcorr.backbones.base import cell_centers, grid_rows_cols
from semcorr.checks import number, one_of
from semcorr.precision import autocast_off
from semcorr.registry import configured

TRANSFER_METHODS = ("argmax", "soft_argmax", "window_soft_argmax")


@dataclass
class TransferConfig:
    """How a keypoint is read off a row of the match scores (``matcher.transfer.*``).

    ``argmax``: centre of the best target cell. ``soft_argmax``: softmax-weighted mean of all cell
    centres. ``window_soft_argmax``: the same restricted to a ``window`` x ``window`` block of cells
    around the argmax. ``temperature`` divides the scores before the softmax.
    """

    method: str = "argmax"
    window: int = 5
    temperature: float = 0.02

    def __post_init__(self) -> None:
        one_of(self, "method", TRANSFER_METHODS)
        number(self, "window", ge=1, integer=True)
        number(self, "temperature", gt=0)


def cell_index(points: torch.Tensor, grid: Tuple[int, int], stride: int) -> torch.Tensor:
    """(B, K, 2) (x, y) network-frame points -> (B, K) row-major index of the containing cell.

    Points outside the grid are clamped to the nearest border cell.
    """
    h, w = grid
    col = torch.div(points[..., 0] + 0.5, stride, rounding_mode="floor").long().clamp_(0, w - 1)
    row = torch.div(points[..., 1] + 0.5, stride, rounding_mode="floor").long().clamp_(0, h - 1)
    return row * w + col


def transfer_rows(
    rows: torch.Tensor,
    trg_grid: Tuple[int, int],
    trg_stride: int,
    transfer: Optional[TransferConfig] = None,
    **overrides,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Target positions from score rows.

    Args:
        rows: (B, K, Nt) scores of K queries against the Nt = h' * w' target cells (-inf allowed).
        transfer: the :class:`TransferConfig` (default: its defaults); ``overrides`` replace its
            fields. ``method``: ``argmax`` (centre of the best cell), ``soft_argmax``
            (sum_j softmax(s/T)_j c_j over all cells) or ``window_soft_argmax`` (the same over a
            ``window`` x ``window`` block of cells centred on the argmax).
    Returns:
        points (B, K, 2) (x, y) in target network-frame pixels, and scores (B, K): the best score.
        The soft variants compute in float32 with autocast off (a bf16 product of the weights and
        the cell centres would round the coordinates to ~0.4 %).
    """
    t = configured(TransferConfig, transfer, **overrides)
    method, window, temperature = t.method, t.window, t.temperature
    h, w = trg_grid
    centers = cell_centers(trg_grid, trg_stride, rows.device, torch.float32)
    best, idx = rows.max(dim=-1)
    if method == "argmax":
        return centers[idx], best
    with autocast_off(rows.device):
        logits = rows.float() / temperature
        if method == "window_soft_argmax":
            r, c = idx // w, idx % w
            rr, cc = grid_rows_cols(trg_grid, rows.device)
            half = window // 2
            inside = ((rr - r[..., None]).abs() <= half) & ((cc - c[..., None]).abs() <= half)
            logits = logits.masked_fill(~inside, float("-inf"))
        prob = torch.softmax(logits, dim=-1)
        prob = torch.nan_to_num(prob, nan=0.0)
        return prob @ centers, best


def transfer_keypoints(
    scores: torch.Tensor,
    src_kps: torch.Tensor,
    src_grid: Tuple[int, int],
    src_stride: int,
    trg_grid: Tuple[int, int],
    trg_stride: int,
    transfer: Optional[TransferConfig] = None,
    **overrides,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Transfer source keypoints through a score matrix.

    Args:
        scores: (B, Ns, Nt) matcher scores (see :class:`semcorr.matchers.MatchResult`).
        src_kps: (B, K, 2) source keypoints, network frame.
        transfer, overrides: how a row is read (:func:`transfer_rows`).
    Returns:
        (B, K, 2) predicted target keypoints (network frame) and (B, K) scores.
    """
    transfer = configured(TransferConfig, transfer, **overrides)
    idx = cell_index(src_kps, src_grid, src_stride)
    if idx.shape[1] > scores.shape[1]:
        # dense queries (e.g. every foreground pixel, TSS): transfer each source cell once, then
        # look the K queries up -- the same result, with memory O(Ns * Nt) instead of O(K * Nt)
        pts, best = transfer_rows(scores, trg_grid, trg_stride, transfer)
        return (torch.gather(pts, 1, idx[..., None].expand(-1, -1, 2)),
                torch.gather(best, 1, idx))
    rows = torch.gather(scores, 1, idx[..., None].expand(-1, -1, scores.shape[-1]))
    return transfer_rows(rows, trg_grid, trg_stride, transfer)
