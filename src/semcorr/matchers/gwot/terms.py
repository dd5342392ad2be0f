"""The gradient pieces of the GW and symmetry terms, without any N x N matrix.

- GW: with :math:`C^q = 11^\\top - K`, :math:`C^p T C^q = (C^p p) 1^\\top - C^p T K`, so the
  varying part of the gradient is T filtered with the δ_min disc over the source grid and the
  δ_max disc over the target grid (:mod:`semcorr.matchers.gridfilter`).
- Symmetry: :math:`\\sum_l ŝ_{jl} T_{kl}` is a cumulative sum of row k's column-mass profile, and
  only the rows of the symmetric source cells are touched.

The ``gpu`` formulation (:mod:`semcorr.matchers.static`) passes :class:`DiscKernels` to
:func:`gw_filter` and :func:`gw_row_term`: the filters are then one convolution per grid
(:func:`~semcorr.matchers.gridfilter.conv_filter_trailing`, ``conv_filter_leading``).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch

from semcorr.matchers.gridfilter import (conv_filter_leading, conv_filter_trailing, disc_kernel,
                                         filter_leading, filter_trailing)


class DiscKernels(NamedTuple):
    """The gpu formulation's stencils (:func:`disc_kernels`); None for an empty disc."""

    src: Optional[torch.Tensor]  # (1, 1, kh, kw, 1) δ_min disc (strict), for conv3d over axis 1
    trg: Optional[torch.Tensor]  # (1, 1, kh, kw) δ_max disc (closed), for conv2d over the last axis


def disc_kernels(delta_min: float, delta_max: float, like: torch.Tensor) -> DiscKernels:
    """The two disc stencils of C^p and K in ``like``'s dtype, on its device (built there)."""
    src = disc_kernel(delta_min, True, like)
    trg = disc_kernel(delta_max, False, like)
    return DiscKernels(None if src is None else src[None, None, :, :, None],
                       None if trg is None else trg[None, None])


def gw_filter(t: torch.Tensor, src_grid, trg_grid, delta_min: float, delta_max: float,
              out: Optional[torch.Tensor] = None, tmp: Optional[torch.Tensor] = None,
              kernels: Optional[DiscKernels] = None) -> torch.Tensor:
    """(C^p T K) for T (B, Ns, Nt): δ_min-disc (strict) over the source grid, δ_max-disc (closed)
    over the target grid.

    ``out``, ``tmp``: optional (B, Ns, Nt) buffers for the result and the target-filtered T,
    reused across steps when no gradient is recorded (cpu formulation).
    ``kernels``: the gpu formulation: two convolutions with these stencils (δ, ``out`` and
    ``tmp`` unused).
    """
    if kernels is not None:
        if torch.is_grad_enabled() and t.requires_grad:
            return _ConvGWFilter.apply(t, tuple(src_grid), tuple(trg_grid), kernels.src, kernels.trg)
        return conv_filter_leading(conv_filter_trailing(t, trg_grid, kernels.trg), src_grid, kernels.src)
    if torch.is_grad_enabled() and t.requires_grad:
        return _GWFilter.apply(t, tuple(src_grid), tuple(trg_grid), float(delta_min), float(delta_max))
    mid = filter_trailing(t, trg_grid, delta_max, strict=False, out=tmp)
    return filter_leading(mid, src_grid, delta_min, strict=True, out=out)


class _GWFilter(torch.autograd.Function):
    """T -> C^p T K as an autograd function: both disc matrices are symmetric, so the backward
    pass is the same filter applied to the incoming gradient (nothing is saved)."""

    @staticmethod
    def forward(ctx, t, src_grid, trg_grid, delta_min, delta_max):
        ctx.args = (src_grid, trg_grid, delta_min, delta_max)
        with torch.no_grad():
            return gw_filter(t, src_grid, trg_grid, delta_min, delta_max)

    @staticmethod
    def backward(ctx, grad):
        return (gw_filter(grad.contiguous(), *ctx.args), None, None, None, None)


class _ConvGWFilter(torch.autograd.Function):
    """The gpu formulation's T -> C^p T K (two convolutions) as an autograd function: the
    stencils are point-symmetric, so the backward pass is the same filter (nothing is saved but
    the stencils)."""

    @staticmethod
    def forward(ctx, t, src_grid, trg_grid, k_src, k_trg):
        ctx.grids = (src_grid, trg_grid)
        ctx.save_for_backward(k_src, k_trg)
        return conv_filter_leading(conv_filter_trailing(t, trg_grid, k_trg), src_grid, k_src)

    @staticmethod
    def backward(ctx, grad):
        k_src, k_trg = ctx.saved_tensors
        src_grid, trg_grid = ctx.grids
        return (conv_filter_leading(conv_filter_trailing(grad.contiguous(), trg_grid, k_trg), src_grid, k_src),
                None, None, None, None)


def gw_row_term(p: torch.Tensor, src_grid, delta_min: float,
                kernels: Optional[DiscKernels] = None) -> torch.Tensor:
    """(B, Ns) (C^p p)_i: the source-neighbourhood mass (``kernels``: by convolution)."""
    if kernels is not None:
        return conv_filter_leading(p[:, :, None], src_grid, kernels.src)[..., 0]
    return filter_leading(p[:, :, None], src_grid, delta_min, strict=True)[..., 0]


class SymPairs(NamedTuple):
    a: torch.Tensor  # (B, S) row of the first cell of each pair (0 for padding)
    b: torch.Tensor  # (B, S)
    sign: torch.Tensor  # (B, S) s_ab = sign(x_a - x_b); 0 for padding


def sym_setup(sym_pairs: torch.Tensor, src_grid, dtype) -> SymPairs:
    """Parse (B, S, 2) pairs of source cell indices (-1 = padding)."""
    w = src_grid[1]
    a, b = sym_pairs[..., 0].long(), sym_pairs[..., 1].long()
    ok = (a >= 0) & (b >= 0)
    a, b = a.clamp_min(0), b.clamp_min(0)
    sign = torch.sign((a % w) - (b % w)).to(dtype) * ok.to(dtype)
    return SymPairs(a, b, sign)


def order_profile(rows: torch.Tensor, trg_grid) -> torch.Tensor:
    """u_k(j) = sum_l sign(x̂_j - x̂_l) T_kl for rows (B, S, Nt) -> (B, S, Nt)."""
    h, w = trg_grid
    m = rows.reshape(*rows.shape[:-1], h, w).sum(-2)  # column-mass profile (B, S, w)
    cs = m.cumsum(-1)
    u = 2 * cs - m - m.sum(-1, keepdim=True)  # mass left of x minus mass right of x
    return u[..., None, :].expand(*u.shape[:-1], h, w).reshape(rows.shape)


def sym_gradient(t: torch.Tensor, pairs: SymPairs, trg_grid) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rows of ∂F_sym/∂T: returns flat row indices (2 B S,) into (B Ns) and values (2 B S, Nt).

    ∂F_sym/∂T_aj = -s_ab u_b(j),  ∂F_sym/∂T_bj = +s_ab u_a(j);  F_sym = ½ <∂F_sym/∂T, T>.
    """
    bsz, ns, nt = t.shape
    ta = torch.gather(t, 1, pairs.a[..., None].expand(-1, -1, nt))
    tb = torch.gather(t, 1, pairs.b[..., None].expand(-1, -1, nt))
    s = pairs.sign[..., None]
    vals = torch.cat([-s * order_profile(tb, trg_grid), s * order_profile(ta, trg_grid)], 1)
    base = torch.arange(bsz, device=t.device)[:, None] * ns
    idx = torch.cat([pairs.a + base, pairs.b + base], 1)
    return idx.reshape(-1), vals.reshape(-1, nt)


def sym_value(t: torch.Tensor, pairs: SymPairs, trg_grid) -> torch.Tensor:
    """(B,) F_sym(T) = -sum_pairs s_ab <T_a, u_b>."""
    nt = t.shape[-1]
    ta = torch.gather(t, 1, pairs.a[..., None].expand(-1, -1, nt))
    tb = torch.gather(t, 1, pairs.b[..., None].expand(-1, -1, nt))
    return -(pairs.sign * (ta * order_profile(tb, trg_grid)).sum(-1)).sum(-1)


class SymRows(NamedTuple):
    """The symmetry term in the gpu formulation's form (:func:`sym_rows`): gather the rows of
    both cells of every pair at once, add the update to both at once."""

    gather: torch.Tensor  # (B, 2S, Nt) long: the rows [b; a] of each pair (an expanded index)
    rows: torch.Tensor  # (2 B S,) flat rows [a; b] into (B Ns): where the update goes
    sign: torch.Tensor  # (B, 2S, 1) [s_ab; -s_ab]
    sign_x: torch.Tensor  # (w', w') sign(x - l) over the target columns


def sym_rows(pairs: SymPairs, shape, trg_grid, like: torch.Tensor) -> SymRows:
    """:class:`SymRows` of parsed pairs for a (B, Ns, Nt) plan (built on ``like``'s device)."""
    bsz, ns, nt = shape
    base = torch.arange(bsz, device=like.device)[:, None] * ns
    xs = torch.arange(trg_grid[1], device=like.device)
    return SymRows(
        gather=torch.cat([pairs.b, pairs.a], 1)[:, :, None].expand(-1, -1, nt),
        rows=torch.cat([pairs.a + base, pairs.b + base], 1).reshape(-1),
        sign=torch.cat([pairs.sign, -pairs.sign], 1)[:, :, None].to(like.dtype),
        sign_x=torch.sign(xs[:, None] - xs[None, :]).to(like.dtype),
    )


def sym_step(t: torch.Tensor, gather: torch.Tensor, sign_x: torch.Tensor, weight: torch.Tensor,
             trg_grid) -> torch.Tensor:
    """(2 B S, Nt) rows to add to rows [a; b] of the logits: -η c_sym ∂F_sym/∂T there, i.e.
    ``weight`` (B, 2S, 1) = η c_sym [s_ab; -s_ab] times [u_b; u_a] (:func:`order_profile`,
    here as a product with sign_x (w', w') instead of a cumulative sum: a fixed few ops)."""
    bsz, _, nt = t.shape
    h, w = trg_grid
    rows = torch.gather(t, 1, gather)  # (B, 2S, Nt): rows [b; a]
    mass = rows.view(bsz, -1, h, w).sum(2)  # (B, 2S, w') column-mass profiles
    u = (mass[:, :, None, :] * sign_x).sum(-1)  # u(x) = sum_l sign(x - l) m_l
    return (u * weight)[:, :, None, :].expand(-1, -1, h, -1).reshape(-1, nt)
