"""Disc filters on patch grids: the fast products with the GW structure matrices.

The GW-OT structure matrices are indicators of grid distances,

.. math::
    C^p_{ik} = 1[\\|x_i - x_k\\| < \\delta_{min}], \\qquad
    K_{jl} = 1[\\|\\hat x_j - \\hat x_l\\| \\le \\delta_{max}] = 1 - C^q_{jl},

so multiplying an (h*w)-indexed axis of a tensor by one of them is a sum over a disc of grid
offsets: a 2-D filter with zero padding. A disc is a union of horizontal segments; grouping the
rows of the disc by their half-width W gives the exact decomposition

.. math::
    D = \\sum_{W} B^y_W \\otimes B^x_W ,

with :math:`B^x_W` the band matrix :math:`1[|x - x'| \\le W]` and :math:`B^y_W` the 0/1 band
matrix of the vertical offsets whose segment has half-width W. A box (e.g. the strict disc of
radius 3, which is the 5x5 box) is the single term; the closed disc of radius 5 has four. Each
term is two small matrix products (used on leading axes, where they are large GEMMs); on the
trailing axes the same decomposition is applied with shifted-slice sums. Filtering costs
O(n_W (h + w)) or O(W + R) per element instead of O(h w) for a dense (h*w) x (h*w) matrix, and
never builds that matrix.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import List, Tuple

import torch


def disc_rows(delta: float, strict: bool) -> List[Tuple[int, int]]:
    """Rows of the integer disc {(dx, dy): dx^2 + dy^2 < delta^2 (strict) or <= delta^2}.

    Returns a list of (dy, W): the offsets with vertical offset dy are |dx| <= W. Empty when the
    disc holds no offset (strict and delta <= 0).
    """
    d2 = float(delta) ** 2
    inside = (lambda r2: r2 < d2) if strict else (lambda r2: r2 <= d2 + 1e-9)
    rows = []
    reach = int(math.floor(abs(float(delta)))) + 1
    for dy in range(-reach, reach + 1):
        if not inside(dy * dy):
            continue
        w = 0
        while inside((w + 1) ** 2 + dy * dy):
            w += 1
        rows.append((dy, w))
    return rows


def disc_size(delta: float, strict: bool) -> int:
    """Number of offsets in the disc (the neighbourhood size of an interior cell)."""
    return sum(2 * w + 1 for _, w in disc_rows(delta, strict))


@lru_cache(maxsize=64)
def _factors_cpu(h: int, w: int, delta: float, strict: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    rows = disc_rows(delta, strict)
    widths = sorted({wd for _, wd in rows})
    n = len(widths)
    by = torch.zeros(n, h, h, dtype=torch.float64)  # (W, y_out, y_in)
    bx = torch.zeros(n, w, w, dtype=torch.float64)  # (W, x_out, x_in)
    xs = torch.arange(w)
    ys = torch.arange(h)
    for a, wd in enumerate(widths):
        bx[a] = ((xs[:, None] - xs[None, :]).abs() <= wd).double()
        for dy, wr in rows:
            if wr == wd:
                by[a] += ((ys[None, :] - ys[:, None]) == dy).double()
    return by, bx


def disc_factors(
    grid: Tuple[int, int], delta: float, strict: bool, device=None, dtype=torch.float32
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Separable factors of the disc filter on an (h, w) grid.

    Returns ``by`` (n_W, h, h) and ``bx`` (n_W, w, w) with
    ``out[y, x] = sum_a sum_{y', x'} by[a, y, y'] bx[a, x, x'] in[y', x']`` (zero padding).
    """
    by, bx = _factors_cpu(int(grid[0]), int(grid[1]), float(delta), bool(strict))
    return by.to(device=device, dtype=dtype), bx.to(device=device, dtype=dtype)


def filter_trailing(x: torch.Tensor, grid: Tuple[int, int], delta: float, strict: bool) -> torch.Tensor:
    """Disc-filter the trailing grid axis: x (..., h*w) -> (..., h*w).

    Shifted-slice sums (cheaper than matrix products here, where w is the innermost axis):
    horizontal boxes of each half-width W are built incrementally (2 slice-adds per unit of
    width), then each disc row dy adds its box shifted by dy. About 2 max(W) + 2 R + 1 passes.
    """
    h, w = grid
    rows = disc_rows(delta, strict)
    if not rows:
        return torch.zeros_like(x)
    m = x.reshape(-1, h, w)
    boxes = {}
    cur, cur_w = m, 0
    for wd in sorted({wd for _, wd in rows}):
        if wd > cur_w:
            cur = cur.clone()
            for s in range(cur_w + 1, min(wd, w - 1) + 1):
                cur[..., s:] += m[..., :-s]
                cur[..., :-s] += m[..., s:]
            cur_w = wd
        boxes[wd] = cur
    widths = dict(rows)
    out = boxes[widths[0]].clone()  # every non-empty disc holds dy = 0
    for dy, wd in rows:
        if dy == 0 or abs(dy) >= h:
            continue
        if dy > 0:
            out[:, :-dy] += boxes[wd][:, dy:]
        else:
            out[:, -dy:] += boxes[wd][:, :dy]
    return out.reshape(x.shape)


def filter_leading(x: torch.Tensor, grid: Tuple[int, int], delta: float, strict: bool) -> torch.Tensor:
    """Disc-filter axis 1: x (B, h*w, M) -> (B, h*w, M).

    Each product acts on a leading axis with M contiguous columns, so it is one large GEMM.
    """
    h, w = grid
    b, _, m = x.shape
    by, bx = disc_factors(grid, delta, strict, x.device, x.dtype)
    n = by.shape[0]
    if n == 0:
        return torch.zeros_like(x)
    # (n_W w_out, w_in) @ (B h, w_in, M) -> (B, h_in, n_W, w_out, M) -> (B, h_in n_W, w_out M)
    y = torch.matmul(bx.reshape(n * w, w), x.reshape(b * h, w, m)).reshape(b, h * n, w * m)
    out = torch.matmul(by.permute(1, 2, 0).reshape(h, h * n), y)
    return out.reshape(b, h * w, m)
