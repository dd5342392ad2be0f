"""The gradient pieces of the GW and symmetry terms, without any N x N matrix.

- GW: with :math:`C^q = 11^\\top - K`, :math:`C^p T C^q = (C^p p) 1^\\top - C^p T K`, so the
  varying part of the gradient is T filtered with the δ_min disc over the source grid and the
  δ_max disc over the target grid (:mod:`semcorr.matchers.gridfilter`).
- Symmetry: :math:`\\sum_l ŝ_{jl} T_{kl}` is a cumulative sum of row k's column-mass profile, and
  only the rows of the symmetric source cells are touched.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch

from semcorr.matchers.gridfilter import filter_leading, filter_trailing


def gw_filter(t: torch.Tensor, src_grid, trg_grid, delta_min: float, delta_max: float,
              out: Optional[torch.Tensor] = None, tmp: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(C^p T K) for T (B, Ns, Nt): δ_min-disc (strict) over the source grid, δ_max-disc (closed)
    over the target grid.

    ``out``, ``tmp``: optional (B, Ns, Nt) buffers for the result and the target-filtered T,
    reused across steps when no gradient is recorded.
    """
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


def gw_row_term(p: torch.Tensor, src_grid, delta_min: float) -> torch.Tensor:
    """(B, Ns) (C^p p)_i: the source-neighbourhood mass."""
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
