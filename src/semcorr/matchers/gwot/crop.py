"""Solve on the bounding box of the valid cells: crop padded batches, and undo the crop.

Padded cells carry no mass, so cropping them away before the solve is exact (tested); the
output is padded back to the full grids. The crop synchronises with the host and changes shapes
per batch, so the ``gpu`` formulation solves on the full grids instead (exact for the same
reason) and gives the rows outside the box what the crop gives them with :func:`box_rows`,
computed on the device.
"""

from __future__ import annotations

from typing import Tuple

import torch

from semcorr.backbones.base import FeatureMap

Box = Tuple[int, int, int, int]  # r0, r1, c0, c1 (half-open)


def crop_to_valid(fm: FeatureMap) -> Tuple[FeatureMap, Box]:
    """Crop a feature map to the bounding box of cells valid in any pair of the batch."""
    h, w = fm.grid
    if fm.valid is None:
        return fm, (0, h, 0, w)
    any_valid = fm.valid.reshape(-1, h, w).any(0)
    rows = torch.nonzero(any_valid.any(1)).flatten()
    cols = torch.nonzero(any_valid.any(0)).flatten()
    if rows.numel() == 0:
        return fm, (0, h, 0, w)
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if (r0, r1, c0, c1) == (0, h, 0, w):
        return fm, (0, h, 0, w)
    feats = fm.features[..., r0:r1, c0:c1]
    return FeatureMap(feats, fm.stride, fm.valid[..., r0:r1, c0:c1]), (r0, r1, c0, c1)


def crop_pairwise(matrix: torch.Tensor, src_grid, s_box: Box, trg_grid, t_box: Box) -> torch.Tensor:
    """Crop a (B, h*w, h'*w') matrix to the source and target boxes of :func:`crop_to_valid`."""
    (h, w), (ht, wt) = src_grid, trg_grid
    r0, r1, c0, c1 = s_box
    q0, q1, d0, d1 = t_box
    m = matrix.reshape(-1, h, w, ht, wt)[:, r0:r1, c0:c1, q0:q1, d0:d1]
    return m.reshape(m.shape[0], (r1 - r0) * (c1 - c0), (q1 - q0) * (d1 - d0))


def remap_cells(cells: torch.Tensor, grid, box: Box) -> torch.Tensor:
    """Row-major cell indices of ``grid`` -> indices in the cropped grid (-1 outside / padding)."""
    r0, r1, c0, c1 = box
    w = grid[1]
    r, c = cells // w, cells % w
    inside = (cells >= 0) & (r >= r0) & (r < r1) & (c >= c0) & (c < c1)
    out = (r - r0) * (c1 - c0) + (c - c0)
    out = torch.where(inside, out, torch.full_like(out, -1))
    # A pair with one cell cropped away is dropped as a whole.
    if out.ndim >= 1 and out.shape[-1] == 2:
        out = torch.where((out < 0).any(-1, keepdim=True), torch.full_like(out, -1), out)
    return out


def uncrop(log_plan: torch.Tensor, src_grid, s_box: Box, trg_grid, t_box: Box) -> torch.Tensor:
    """(B, ns_c, nt_c) on the cropped grids -> (B, Ns, Nt): -inf at cropped-away target cells;
    a cropped-away source cell (padding in every pair) takes the row of the nearest cell kept."""
    b = log_plan.shape[0]
    (h, w), (ht, wt) = src_grid, trg_grid
    r0, r1, c0, c1 = s_box
    q0, q1, d0, d1 = t_box
    if (q0, q1, d0, d1) != (0, ht, 0, wt):
        full = log_plan.new_full((b, log_plan.shape[1], ht, wt), float("-inf"))
        full[:, :, q0:q1, d0:d1] = log_plan.reshape(b, -1, q1 - q0, d1 - d0)
        log_plan = full.reshape(b, -1, ht * wt)
    if (r0, r1, c0, c1) != (0, h, 0, w):
        dev = log_plan.device
        rr = torch.arange(h, device=dev).clamp(r0, r1 - 1) - r0
        cc = torch.arange(w, device=dev).clamp(c0, c1 - 1) - c0
        rows = (rr[:, None] * (c1 - c0) + cc[None, :]).reshape(-1)
        log_plan = log_plan[:, rows]
    return log_plan


def box_rows(valid: torch.Tensor, grid) -> torch.Tensor:
    """(h*w,) long: the source row each cell gets in :func:`uncrop` after :func:`crop_to_valid`:
    itself inside the bounding box of the cells valid in any pair, the nearest cell of the box
    outside it (the whole grid when no cell is valid). Computed on the device, without a host
    synchronisation: ``log_plan.index_select(1, box_rows(valid, grid))`` of a full-grid solve
    equals the uncropped cropped solve."""
    h, w = grid
    any_valid = valid.reshape(-1, h, w).any(0)

    def span(mask, n):  # first and last True (0 and n - 1 when none)
        m = mask.to(torch.uint8)
        return m.argmax(), (n - 1) - m.flip(0).argmax()

    r0, r1 = span(any_valid.any(1), h)
    c0, c1 = span(any_valid.any(0), w)
    rr = torch.arange(h, device=valid.device).clamp(r0, r1)
    cc = torch.arange(w, device=valid.device).clamp(c0, c1)
    return (rr[:, None] * w + cc[None, :]).reshape(-1)
