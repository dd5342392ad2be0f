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
radius 3, which is the 5x5 box) is the single term; the closed disc of radius 5 has four.

Both filters apply it with shifted sums, O(W + R) adds per element, never an (h*w) x (h*w)
matrix and no matrix products (with 0/1 band matrices a GEMM does 10-50x the arithmetic), in
cache-sized blocks (:data:`CPU_CHUNK_ELEMS` values on a CPU; the whole tensor on a GPU): the
tensor is read and written once from memory, and the 2 R_x + 2 R_y passes of the sums run over a
block that stays in cache. They record no autograd graph (the GW filter's autograd function,
:func:`semcorr.matchers.gwot.terms.gw_filter`, uses them for its forward and its backward).

The ``gpu`` formulation (:mod:`semcorr.matchers.static`) filters with whole-tensor operations
instead: :func:`disc_kernel` is the disc as a 0/1 stencil, :func:`conv_filter_trailing` one
``conv2d`` over the (h, w) images of the trailing axis, :func:`conv_filter_leading` one ``conv3d``
over the (h, w) grid of axis 1 (the trailing axis riding along as a width-1 kernel axis). One
kernel each, no Python loop, no host synchronisation, and autograd-able (both are correlations
with a point-symmetric kernel, so their adjoint is the same filter).
"""

from __future__ import annotations

import functools
import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

# Elements per work buffer of the chunked CPU filters: a few such buffers stay in L2 / L3.
CPU_CHUNK_ELEMS = 1 << 18


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


def _groups(delta: float, strict: bool) -> List[Tuple[int, List[int]]]:
    """Disc rows grouped by half-width, widest last: [(W, [dy, ...]), ...]."""
    rows = disc_rows(delta, strict)
    return [(wd, [dy for dy, wr in rows if wr == wd]) for wd in sorted({wd for _, wd in rows})]


def _chunk_elems(x: torch.Tensor) -> int:
    """Elements per work buffer: cache-sized on CPU (L2/L3), everything at once on a GPU."""
    return CPU_CHUNK_ELEMS if x.device.type == "cpu" else 1 << 62


def filter_trailing(x: torch.Tensor, grid: Tuple[int, int], delta: float, strict: bool,
                    out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Disc-filter the trailing grid axis: x (..., h*w) -> (..., h*w), without autograd.
    ``out``: optional contiguous result buffer.

    Rows of x are processed in cache-sized chunks. A chunk is copied into a zero-padded flat
    buffer (each cell's grid followed by R_x zero columns per row and R_y zero rows, shared with
    the next cell), in which a grid shift (dy, dx) is a shift of the flat axis by dy*pitch + dx:
    every shifted sum is one contiguous pass, with no edge cases. The horizontal box of each
    half-width is built incrementally (2 adds per unit of width) and each disc row dy adds the
    box of its width shifted by dy rows: about 2 R_x + 2 R_y + 1 passes per chunk, all in cache
    (21 for the closed disc of radius 5), the last one writing the result.
    """
    h, w = grid
    groups = _groups(delta, strict)
    shape = x.shape
    if out is None:
        out = torch.empty(shape, dtype=x.dtype, device=x.device)
    if not groups or x.numel() == 0:
        return out.zero_()
    xs = x.reshape(-1, h * w)
    os_ = out.view(-1, h * w)
    rx = groups[-1][0]
    ry = max(abs(dy) for _, dys in groups for dy in dys)
    pitch, rows = w + rx, h + ry
    cell = rows * pitch
    margin = ry * pitch + rx
    k = max(1, min(xs.shape[0], _chunk_elems(x) // cell))
    n = k * cell
    pad = x.new_zeros(2 * margin + n)  # pads stay zero: only data positions are ever written
    box = torch.empty_like(pad)
    acc = x.new_empty(n)
    data_in = pad[margin:margin + n].view(k, rows, pitch)[:, :h, :w]
    data_out = acc.view(k, rows, pitch)[:, :h, :w]
    ops = _trailing_program(pad, box, acc, groups, margin, pitch)
    for r0 in range(0, xs.shape[0], k):
        kk = min(k, xs.shape[0] - r0)
        data_in[:kk].copy_(xs[r0:r0 + kk].view(kk, h, w))
        if kk < k:  # the last, partial chunk: clear the cells left from the previous one
            data_in[kk:].zero_()
        for op in ops[:-1]:
            op()
        last = ops[-1]  # the last sum writes the data cells straight into the result
        dst = os_[r0:r0 + kk].view(kk, h, w)
        if last.func is torch.add:
            torch.add(*(v.view(k, rows, pitch)[:kk, :h, :w] for v in last.args), out=dst)
        else:  # acc.add_(v) or acc.copy_(v)
            last()
            dst.copy_(data_out[:kk])
    return out


def _trailing_program(pad, box, acc, groups, margin: int, pitch: int):
    """The passes of :func:`filter_trailing` on one chunk, as calls on fixed views (built once
    per call, so the loop over chunks does no slicing)."""
    n = acc.numel()
    rx = groups[-1][0]
    lo, hi = rx, pad.numel() - rx  # the range of the boxes that the disc rows read
    b = box[lo:hi]
    ops = []
    src, cur = pad, 0  # the box of the current half-width (width 0: the data itself)
    first = True
    for wd, dys in groups:
        if wd > cur:
            if src is pad:  # the first box: the data plus its first two shifts, in one pass
                ops.append(functools.partial(torch.add, pad[lo - 1:hi - 1], pad[lo + 1:hi + 1], out=b))
                ops.append(functools.partial(b.add_, pad[lo:hi]))
                src, cur = box, 1
            for s in range(cur + 1, wd + 1):
                ops.append(functools.partial(b.add_, pad[lo - s:hi - s]))
                ops.append(functools.partial(b.add_, pad[lo + s:hi + s]))
            cur = wd
        views = [src[margin + dy * pitch:margin + dy * pitch + n] for dy in dys]
        if first:  # start the sum with the first one or two rows, without a copy
            first = False
            if len(views) >= 2:
                ops.append(functools.partial(torch.add, views[0], views[1], out=acc))
                views = views[2:]
            else:
                ops.append(functools.partial(acc.copy_, views[0]))
                views = views[1:]
        ops.extend(functools.partial(acc.add_, v) for v in views)
    if ops[-1].func == acc.add_:  # the last sum as acc + v, so that it can write elsewhere
        ops[-1] = functools.partial(torch.add, acc, ops[-1].args[0], out=acc)
    return ops


def filter_leading(x: torch.Tensor, grid: Tuple[int, int], delta: float, strict: bool,
                   out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Disc-filter axis 1: x (B, h*w, M) -> (B, h*w, M), without autograd. ``out``: optional
    contiguous result buffer.

    One grid row of x is a (B, w, M) block; a shift along the grid is a shift by whole rows of
    M contiguous values. The grid is swept once, row by row: each input row's horizontal boxes
    (one per half-width) go into a ring of the last 2 R_y + 1 rows (cache-sized), and each output
    row is the sum of the ring rows its disc rows name. About 2 R_x + 1 + |disc rows| passes over
    cached blocks; x is read once and the result written once.
    """
    h, w = grid
    b, _, m = x.shape
    groups = _groups(delta, strict)
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if not groups or x.numel() == 0:
        return out.zero_()
    xv = x.reshape(b, h, w, m)
    ov = out.view(b, h, w, m)
    ry = max(abs(dy) for _, dys in groups for dy in dys)
    span = 2 * ry + 1
    widths = [wd for wd, _ in groups]
    ring = x.new_empty(len(widths), span, b, w, m)
    terms = [(dy, a) for a, (_, dys) in enumerate(groups) for dy in dys]

    def boxes(y):
        row = xv[:, y]
        cur = -1
        for a, wd in enumerate(widths):
            dst = ring[a, y % span]
            if cur < 0:
                if wd > 0 and w > 1:  # the row plus its left neighbour, then its right one
                    torch.add(row[:, 1:], row[:, :-1], out=dst[:, 1:])
                    dst[:, 0] = row[:, 0]
                    dst[:, :-1].add_(row[:, 1:])
                    start = 2
                else:
                    dst.copy_(row)
                    start = 1
            else:
                dst.copy_(ring[a - 1, y % span])
                start = cur + 1
            for s in range(start, min(wd, w - 1) + 1):
                dst[:, s:].add_(row[:, :-s])
                dst[:, :-s].add_(row[:, s:])
            cur = wd

    for y in range(min(ry, h)):
        boxes(y)
    for y in range(h):
        if y + ry < h:
            boxes(y + ry)
        dst = ov[:, y]
        srcs = [ring[a, (y + dy) % span] for dy, a in terms if 0 <= y + dy < h]
        if len(srcs) >= 2:
            torch.add(srcs[0], srcs[1], out=dst)
        elif srcs:
            dst.copy_(srcs[0])
        else:
            dst.zero_()
        for src in srcs[2:]:
            dst.add_(src)
    return out


def disc_r2_limit(delta: float, strict: bool) -> int:
    """The largest integer dx^2 + dy^2 inside the disc (-1 when it is empty): the disc is
    {dx^2 + dy^2 <= limit}, decided on the host with :func:`disc_rows`' predicate."""
    d2 = float(delta) ** 2
    return (math.ceil(d2) - 1) if strict else math.floor(d2 + 1e-9)


def disc_kernel(delta: float, strict: bool, like: torch.Tensor) -> Optional[torch.Tensor]:
    """(2 R_y + 1, 2 R_x + 1) 0/1 stencil of the disc (:func:`disc_rows`), in ``like``'s dtype and
    on its device, built there from ``arange`` (no host-to-device copy). None for an empty disc."""
    rows = disc_rows(delta, strict)
    if not rows:
        return None
    ry = max(abs(dy) for dy, _ in rows)
    rx = max(wd for _, wd in rows)
    dy = torch.arange(-ry, ry + 1, device=like.device)[:, None]
    dx = torch.arange(-rx, rx + 1, device=like.device)[None, :]
    return (dy * dy + dx * dx <= disc_r2_limit(delta, strict)).to(like.dtype)


def conv_filter_trailing(x: torch.Tensor, grid: Tuple[int, int], weight: Optional[torch.Tensor]) -> torch.Tensor:
    """Disc-filter the trailing grid axis with one ``conv2d``: x (..., h*w) -> (..., h*w).

    ``weight``: (1, 1, kh, kw) :func:`disc_kernel` (None: the empty disc, zeros). x is read as
    a batch of (h, w) images, zero-padded: out[..., y, x] = sum over the disc of x[..., y+dy, x+dx].
    """
    if weight is None:
        return torch.zeros_like(x)
    h, w = grid
    kh, kw = weight.shape[-2:]
    out = F.conv2d(x.reshape(-1, 1, h, w), weight, padding=((kh - 1) // 2, (kw - 1) // 2))
    return out.view(x.shape)


def conv_filter_leading(x: torch.Tensor, grid: Tuple[int, int], weight: Optional[torch.Tensor]) -> torch.Tensor:
    """Disc-filter axis 1 with one ``conv3d``: x (B, h*w, M) -> (B, h*w, M).

    ``weight``: (1, 1, kh, kw, 1) :func:`disc_kernel` (None: zeros). x is read as one (h, w, M)
    volume per pair; the kernel spans the grid and is 1 wide along M, so every column m is
    filtered over the grid, zero-padded, without a transposed copy.
    """
    if weight is None:
        return torch.zeros_like(x)
    h, w = grid
    b, _, m = x.shape
    kh, kw = weight.shape[-3:-1]
    out = F.conv3d(x.reshape(b, 1, h, w, m), weight, padding=((kh - 1) // 2, (kw - 1) // 2, 0))
    return out.view(x.shape)
