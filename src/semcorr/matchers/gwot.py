"""Gromov-Wasserstein optimal transport (GW-OT) matcher.

Snelgar et al., "Gromov Wasserstein Optimal Transport for Semantic Correspondences",
arXiv 2602.03105, Eq. 4-6. Source cells i at grid coordinates x_i, target cells j at x̂_j,
L2-normalised features y, ŷ; p, q uniform over the valid cells (n_s, n_t of them):

.. math::
    T^* = \\arg\\min_{T \\ge 0,\\ T 1 = p}\\ \\mathcal F(T) - \\varepsilon H(T),

    \\mathcal F(T) = \\lambda \\langle C, T\\rangle
        + \\lambda_{gw} \\nu \\langle C^p T C^{q\\top}, T\\rangle
        + \\lambda_{sym} \\nu F_{sym}(T)
        + \\lambda_{ub} \\mathrm{KL}(T^\\top 1 \\,\\|\\, q),

with :math:`C = 1 - y ŷ^\\top`, :math:`C^p_{ik} = 1[\\|x_i - x_k\\| < \\delta_{min}]`,
:math:`C^q_{jl} = 1[\\|x̂_j - x̂_l\\| > \\delta_{max}]` (grid units),
:math:`F_{sym}(T) = -\\sum_{(i,k) \\in G} \\sum_{j,l} s_{ik} ŝ_{jl} T_{ij} T_{kl}`,
:math:`s_{ik} = \\mathrm{sign}(x_{i,x} - x_{k,x})` (ŝ likewise in the target), G the unordered
left/right symmetric pairs of source cells, and :math:`H(T) = -\\sum T \\log T`.

**Normalisation** ν. Row i of T carries mass 1/n_s, so the GW gradient
:math:`2 (C^p T C^q)_{ij} \\le 2 |\\mathcal N_{\\delta_{min}}| / n_s` and the symmetry gradient
(:math:`\\le 1/n_s`) shrink as the grid grows, while the linear, KL and entropy gradients do not.
With ``normalize=True`` (default) ν = n_s / ``ref_cells``: λ_gw and λ_sym are stated at the
reference grid (``ref_cells`` = 3600, the paper's 60x60 DINOv2-B/14 grid at 840 px, where ν = 1
and the paper's Tab. 5 values apply unchanged) and keep the same strength relative to the other
terms at every resolution. ``normalize=False`` is the paper's raw form (ν = 1). δ are in cells.

**Solver**: projected mirror descent on log T (entropic mirror map). With the objective gradient
:math:`g_t = \\nabla \\mathcal F(T_t)` and step η,

.. math::
    \\log T_{t+1} = \\Pi_p\\big((1 - \\eta\\varepsilon) \\log T_t - \\eta g_t\\big),

where :math:`\\Pi_p` is the exact KL projection onto {T 1 = p}: a row-wise log-softmax plus
log p (``balanced`` instead projects onto {T1 = p, Tᵀ1 = q} with warm-started Sinkhorn). η is
per pair: η = ``step`` / r_0 with r_0 the largest within-row range of g_0 over valid cells
(row-constant parts of g cancel in the projection, so the range is the step that matters: the
first step moves any row's log-odds by at most ``step`` nats), capped at 1/ε so the entropy
factor 1 - ηε stays in [0, 1). ηε = 1 is the classic fixed-point iteration of entropic GW
(Peyré et al. 2016; POT's ``PGD``).

**Fast gradient**. :math:`C^q = 11^\\top - K` with :math:`K_{jl} = 1[\\|x̂_j - x̂_l\\| \\le
\\delta_{max}]`, so :math:`C^p T C^q = (C^p p) 1^\\top - C^p T K`: a row term (dropped by the
projection) minus T filtered with the δ_min disc over the source grid and the δ_max disc over
the target grid (:mod:`semcorr.matchers.gridfilter`). The symmetry gradient touches only the
rows of cells in G: :math:`\\sum_l ŝ_{jl} T_{kl}` is a cumulative sum of row k's column-mass
profile along x. Padded cells have zero mass, so they drop out of marginals and filters.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from semcorr.backbones.base import FeatureMap
from semcorr.config import register
from semcorr.matchers import MatcherConfig
from semcorr.matchers.base import Matcher, MatchResult
from semcorr.matchers.gridfilter import filter_leading, filter_trailing
from semcorr.matchers.ot import (
    MARGINALS,
    NEG,
    _per_pair,
    cosine_cost,
    masks,
    similarity_cost,
    sinkhorn_log,
    uniform_log_marginals,
)

GRAD_MODES = ("unroll", "checkpoint", "detach")
REF_CELLS = 3600  # the paper's 60 x 60 grid


class GWOTResult(NamedTuple):
    """log_plan (B, Ns, Nt): log T, -inf at invalid target cells. objective (B, n) or None: the
    objective (with the entropy term) after each step. step_size (B,): η used."""

    log_plan: torch.Tensor
    objective: Optional[torch.Tensor]
    step_size: torch.Tensor


# --------------------------------------------------------------------------------------------
# Gradient pieces
# --------------------------------------------------------------------------------------------
def gw_filter(t: torch.Tensor, src_grid, trg_grid, delta_min: float, delta_max: float) -> torch.Tensor:
    """(C^p T K) for T (B, Ns, Nt): δ_min-disc (strict) over the source grid, δ_max-disc (closed)
    over the target grid."""
    out = filter_trailing(t, trg_grid, delta_max, strict=False)
    return filter_leading(out, src_grid, delta_min, strict=True)


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


def _order_profile(rows: torch.Tensor, trg_grid) -> torch.Tensor:
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
    vals = torch.cat([-s * _order_profile(tb, trg_grid), s * _order_profile(ta, trg_grid)], 1)
    base = torch.arange(bsz, device=t.device)[:, None] * ns
    idx = torch.cat([pairs.a + base, pairs.b + base], 1)
    return idx.reshape(-1), vals.reshape(-1, nt)


def sym_value(t: torch.Tensor, pairs: SymPairs, trg_grid) -> torch.Tensor:
    """(B,) F_sym(T) = -sum_pairs s_ab <T_a, u_b>."""
    nt = t.shape[-1]
    ta = torch.gather(t, 1, pairs.a[..., None].expand(-1, -1, nt))
    tb = torch.gather(t, 1, pairs.b[..., None].expand(-1, -1, nt))
    return -(pairs.sign * (ta * _order_profile(tb, trg_grid)).sum(-1)).sum(-1)


# --------------------------------------------------------------------------------------------
# Solver
# --------------------------------------------------------------------------------------------
class _Problem(NamedTuple):
    cost: torch.Tensor  # (B, Ns, Nt)
    src_grid: Tuple[int, int]
    trg_grid: Tuple[int, int]
    src_valid: torch.Tensor  # (B, Ns)
    trg_valid: torch.Tensor  # (B, Nt)
    p: torch.Tensor  # (B, Ns) 1/n_s at valid cells, 0 elsewhere
    log_p: torch.Tensor  # (B, Ns) NEG outside
    log_q: torch.Tensor  # (B, Nt) NEG outside
    n_s: torch.Tensor  # (B,)
    lam: torch.Tensor  # (B,) each
    lam_gw: torch.Tensor  # effective: times ν
    lam_sym: torch.Tensor  # effective: times ν
    lam_ub: torch.Tensor
    eps: torch.Tensor
    delta_min: float
    delta_max: float
    pairs: Optional[SymPairs]
    balanced: bool
    sinkhorn_iters: int


def _plan(pb: _Problem, z: torch.Tensor, g: torch.Tensor, need_log: bool = True):
    """Project exp(z) (logits, NEG at invalid targets) onto the constraint set.

    Returns T (padded source rows at zero mass), log T (None unless ``need_log``; unbalanced) and
    the column potential (balanced).
    """
    if pb.balanced:
        f, g = sinkhorn_log(z, pb.log_p, pb.log_q, pb.trg_valid, pb.sinkhorn_iters, 1.0, g)
        log_t = z + f[:, :, None] + g[:, None, :]
        return log_t.exp(), log_t, g
    if not need_log:
        return torch.softmax(z, dim=2) * pb.p[:, :, None], None, g
    log_t = torch.log_softmax(z, dim=2) + pb.log_p[:, :, None]
    return log_t.exp(), log_t, g


def _parts(pb: _Problem, t: torch.Tensor):
    """Pieces shared by the gradient and the objective at plan T."""
    filt = gw_filter(t, pb.src_grid, pb.trg_grid, pb.delta_min, pb.delta_max)
    col = t.sum(1)  # (B, Nt)
    log_ratio = torch.where(
        pb.trg_valid, col.clamp_min(torch.finfo(t.dtype).tiny).log() - pb.log_q, torch.zeros_like(col)
    )
    sym = None
    if pb.pairs is not None:
        sym = sym_gradient(t, pb.pairs, pb.trg_grid)
    return filt, col, log_ratio, sym


def _objective(pb: _Problem, t, log_t, filt, col, log_ratio) -> torch.Tensor:
    """(B,) F(T) - ε H(T)."""
    lin = (pb.cost * t).sum((1, 2))
    row_term = gw_row_term(pb.p, pb.src_grid, pb.delta_min)
    gw = (row_term * pb.p).sum(1) - (filt * t).sum((1, 2))
    kl = (col * log_ratio).sum(1)  # sum q̃ log(q̃ / q) (both sum to 1)
    ent = (t * log_t).sum((1, 2))  # -H(T); T = 0 where log T = NEG
    obj = pb.lam * lin + pb.lam_gw * gw + pb.lam_ub * kl + pb.eps * ent
    if pb.pairs is not None:
        obj = obj + pb.lam_sym * sym_value(t, pb.pairs, pb.trg_grid)
    return obj


def _full_gradient(pb: _Problem, t: torch.Tensor) -> torch.Tensor:
    """(B, Ns, Nt) ∇F(T) (without the entropy term), used for the automatic step size."""
    filt, _, log_ratio, sym = _parts(pb, t)
    row_term = gw_row_term(pb.p, pb.src_grid, pb.delta_min)
    g = pb.lam[:, None, None] * pb.cost + 2 * pb.lam_gw[:, None, None] * (row_term[:, :, None] - filt)
    g = g + pb.lam_ub[:, None, None] * log_ratio[:, None, :]
    if sym is not None:
        idx, vals = sym
        bsz, ns, nt = g.shape
        g = g.reshape(-1, nt).index_add(0, idx, vals * pb.lam_sym.repeat_interleave(vals.shape[0] // bsz)[:, None])
        g = g.reshape(bsz, ns, nt)
    return g


def auto_step_size(pb: _Problem, t: torch.Tensor, step: float) -> torch.Tensor:
    """(B,) η = step / (largest within-row range of ∇F over valid cells), capped at 1/ε."""
    with torch.no_grad():
        g = _full_gradient(pb, t)
        big = torch.finfo(g.dtype).max
        vt = pb.trg_valid[:, None, :]
        rng = g.masked_fill(~vt, -big).amax(2) - g.masked_fill(~vt, big).amin(2)  # (B, Ns)
        rng = torch.where(pb.src_valid, rng, torch.zeros_like(rng)).amax(1)
        eta = torch.where(rng > 0, step / rng.clamp_min(torch.finfo(g.dtype).tiny), 1.0 / pb.eps)
        return torch.minimum(eta, 1.0 / pb.eps)


def _step(pb: _Problem, z, g_pot, eta, a, c_eta, want_obj: bool):
    """One mirror-descent step from logits z. Returns the new logits, the column potential and
    (optionally) the objective of the plan at z."""
    t, log_t, g_pot = _plan(pb, z, g_pot, need_log=want_obj)
    filt, col, log_ratio, sym = _parts(pb, t)
    obj = _objective(pb, t, log_t, filt, col, log_ratio).detach() if want_obj else None
    beta = (2 * eta * pb.lam_gw)[:, None, None]
    # z' = (1 - ηε) z - η (λC + 2 λgw (row - F) + λub log(q̃/q) + λsym U); row constants dropped.
    z_new = torch.addcmul(torch.addcmul(c_eta, a, z), beta, filt)
    z_new = z_new - (eta * pb.lam_ub)[:, None, None] * log_ratio[:, None, :]
    if sym is not None:
        idx, vals = sym
        bsz, ns, nt = z.shape
        w = (eta * pb.lam_sym).repeat_interleave(vals.shape[0] // bsz)[:, None]
        z_new = z_new.reshape(-1, nt).index_add(0, idx, -w * vals).reshape(bsz, ns, nt)
    return z_new, g_pot, obj


def solve_gwot(
    cost: torch.Tensor,
    src_grid: Tuple[int, int],
    trg_grid: Tuple[int, int],
    src_valid: Optional[torch.Tensor] = None,
    trg_valid: Optional[torch.Tensor] = None,
    lam=1.0,
    lam_gw=0.0,
    lam_sym=0.0,
    lam_ub=0.05,
    eps=0.01,
    delta_min=3.0,
    delta_max=5.0,
    sym_pairs: Optional[torch.Tensor] = None,
    n_steps: int = 50,
    step: float = 4.0,
    step_size=None,
    marginal: str = "unbalanced",
    sinkhorn_iters: int = 10,
    normalize: bool = True,
    ref_cells: int = REF_CELLS,
    grad: str = "unroll",
    checkpoint_every: int = 5,
    tol: float = 0.0,
    return_objective: bool = False,
) -> GWOTResult:
    """Solve GW-OT (module docstring) for a batch of pairs.

    Args:
        cost: (B, Ns, Nt) C, Ns = h*w and Nt = h'*w' row-major cells.
        src_grid, trg_grid: (h, w), (h', w').
        src_valid, trg_valid: (B, Ns), (B, Nt) bool; False cells get no mass (None: all valid).
        lam, lam_gw, lam_sym, lam_ub, eps: floats or (B,) / 0-d tensors (differentiable).
        delta_min, delta_max: neighbourhood radii in cells (float or 0-d tensor).
        sym_pairs: (B, S, 2) long source cell indices of unordered symmetric pairs, -1 padding.
        n_steps: maximum number of mirror-descent steps.
        step: first-step size in nats (η = step / row range of ∇F at T_0, capped at 1/ε).
        step_size: a fixed η instead (float or (B,) tensor); no cap.
        marginal: ``unbalanced`` (KL column penalty) or ``balanced`` (Tᵀ1 = q; λ_ub unused).
        sinkhorn_iters: Sinkhorn iterations per step for ``balanced`` (warm-started).
        normalize, ref_cells: ν = n_s / ref_cells on λ_gw and λ_sym (else ν = 1).
        grad: ``unroll`` (autograd through every step), ``checkpoint`` (recompute each block of
            ``checkpoint_every`` steps in backward: memory ~ n_steps / k states + k steps) or
            ``detach`` (no gradient).
        tol: > 0 stops after a block in which the plan moved by less than ``tol`` per step
            (L1 over the plan, whose total mass is 1).
        return_objective: also return the objective after each step (one extra filter pass).
    Returns:
        :class:`GWOTResult`. Rows of padded source cells are filled with the row they would
        have at mass 1/n_s (they take no part in the marginals or the filters).
    """
    if grad not in GRAD_MODES:
        raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
    if marginal not in MARGINALS:
        raise ValueError(f"marginal must be one of {MARGINALS}, got {marginal!r}")
    bsz, ns, nt = cost.shape
    if ns != src_grid[0] * src_grid[1] or nt != trg_grid[0] * trg_grid[1]:
        raise ValueError(f"cost {tuple(cost.shape)} does not match grids {src_grid}, {trg_grid}")
    dev, dt = cost.device, cost.dtype
    if src_valid is None:
        src_valid = torch.ones(bsz, ns, dtype=torch.bool, device=dev)
    if trg_valid is None:
        trg_valid = torch.ones(bsz, nt, dtype=torch.bool, device=dev)
    src_valid, trg_valid = src_valid.reshape(bsz, ns).bool(), trg_valid.reshape(bsz, nt).bool()
    log_p, log_q, n_s, _ = uniform_log_marginals(src_valid, trg_valid, dt)
    nu = n_s / ref_cells if normalize else torch.ones_like(n_s)
    lam_sym_t = _per_pair(lam_sym, bsz, cost)
    pairs = None
    if sym_pairs is not None and sym_pairs.numel() > 0 and bool((lam_sym_t != 0).any()):
        pairs = sym_setup(sym_pairs.to(dev), src_grid, dt)
    pb = _Problem(
        cost=cost,
        src_grid=tuple(src_grid),
        trg_grid=tuple(trg_grid),
        src_valid=src_valid,
        trg_valid=trg_valid,
        p=log_p.exp(),
        log_p=log_p,
        log_q=log_q,
        n_s=n_s,
        lam=_per_pair(lam, bsz, cost),
        lam_gw=_per_pair(lam_gw, bsz, cost) * nu,
        lam_sym=lam_sym_t * nu,
        lam_ub=_per_pair(lam_ub, bsz, cost) if marginal == "unbalanced" else cost.new_zeros(bsz),
        eps=_per_pair(eps, bsz, cost),
        delta_min=float(delta_min),
        delta_max=float(delta_max),
        pairs=pairs,
        balanced=marginal == "balanced",
        sinkhorn_iters=sinkhorn_iters,
    )
    ctx = torch.no_grad() if grad == "detach" else contextlib.nullcontext()
    with ctx:
        return _run(pb, n_steps, step, step_size, grad, checkpoint_every, tol, return_objective)


def _run(pb: _Problem, n_steps, step, step_size, grad, every, tol, want_obj) -> GWOTResult:
    bsz, ns, nt = pb.cost.shape
    z = pb.cost.new_zeros(bsz, ns, nt).masked_fill(~pb.trg_valid[:, None, :], NEG)
    g_pot = pb.cost.new_zeros(bsz, nt)
    if step_size is None:
        eta = auto_step_size(pb, _plan(pb, z.detach(), g_pot, need_log=False)[0], step)
    else:
        eta = _per_pair(step_size, bsz, pb.cost).detach()
    a = (1 - eta * pb.eps)[:, None, None]
    # Constant part of the step: -η λ C, with NEG at invalid targets (keeps them at zero mass).
    c_eta = (-(eta * pb.lam)[:, None, None] * pb.cost).masked_fill(~pb.trg_valid[:, None, :], NEG)

    def block(z_in, g_in, k):
        objs = []
        for _ in range(k):
            z_in, g_in, o = _step(pb, z_in, g_in, eta, a, c_eta, want_obj)
            objs.append(o)
        return z_in, g_in, objs

    objectives = []
    done = 0
    prev_t = None
    every = max(1, int(every))
    while done < n_steps:
        k = min(every, n_steps - done)
        if grad == "checkpoint" and torch.is_grad_enabled():
            out = checkpoint(
                lambda zz, gg, k=k: _pack(block(zz, gg, k)), z, g_pot, use_reentrant=False
            )
            z, g_pot = out[0], out[1]
            objs = list(out[2:]) if want_obj else [None] * k
        else:
            z, g_pot, objs = block(z, g_pot, k)
        # objs[i] is the objective of the plan at the start of step done + i; shift by one below.
        objectives.extend(objs)
        done += k
        if tol > 0:
            with torch.no_grad():
                t_now = _plan(pb, z.detach(), g_pot.detach(), need_log=False)[0]
                if prev_t is not None:
                    moved = (t_now - prev_t).abs().sum((1, 2)).max() / k
                    if float(moved) < tol:
                        break
                prev_t = t_now
    if want_obj or pb.balanced:  # balanced: the last projection also updates the potential
        t, log_t, g_pot = _plan(pb, z, g_pot)
    objective = None
    if want_obj:
        with torch.no_grad():
            filt, col, log_ratio, _ = _parts(pb, t)
            last = _objective(pb, t, log_t, filt, col, log_ratio)
        objective = torch.stack(objectives[1:] + [last], dim=1)
    # Output rows: every row at mass 1/n_s ("virtual" rows for padded source cells).
    log_plan = _output_log_plan(pb, z, g_pot)
    return GWOTResult(log_plan, objective, eta)


def _pack(res):
    z, g, objs = res
    return (z, g, *[o for o in objs if o is not None])


def _output_log_plan(pb: _Problem, z: torch.Tensor, g_pot: torch.Tensor) -> torch.Tensor:
    log_p_all = (-pb.n_s.log())[:, None, None]
    if pb.balanced:
        f = -torch.logsumexp(z + g_pot[:, None, :], dim=2, keepdim=True)
        log_plan = z + g_pot[:, None, :] + f + log_p_all
    else:
        log_plan = torch.log_softmax(z, dim=2) + log_p_all
    return log_plan.masked_fill(~pb.trg_valid[:, None, :], float("-inf"))


# --------------------------------------------------------------------------------------------
# Cropping padded batches
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Module
# --------------------------------------------------------------------------------------------
@dataclass
class GWOTConfig(MatcherConfig):
    """GW-OT matcher (see :mod:`semcorr.matchers.gwot`). Defaults: the paper's TSS preset."""

    lam: float = 0.2
    lam_gw: float = 0.2
    lam_sym: float = 0.0
    lam_ub: float = 0.05
    eps: float = 0.01
    delta_min: float = 3.0
    delta_max: float = 5.0
    n_steps: int = 50
    step: float = 4.0
    marginal: str = "unbalanced"
    sinkhorn_iters: int = 10
    normalize: bool = True
    ref_cells: int = REF_CELLS
    grad: str = "checkpoint"
    checkpoint_every: int = 5
    tol: float = 0.0
    learnable: bool = False
    return_objective: bool = False


_LEARNABLE = ("lam", "lam_gw", "lam_sym", "lam_ub", "eps")


@register("matcher", "gwot", GWOTConfig)
class GWOTMatcher(Matcher):
    """GW-OT between patch grids: ``scores`` = log of the plan, ``extras["objective"]`` (B, n)
    when ``return_objective``.

    With ``learnable=True`` every non-zero λ and ε is an ``nn.Parameter`` stored as its log
    (``log_lam``, ...); zero-valued terms stay switched off (buffers).
    """

    def __init__(
        self,
        lam=0.2,
        lam_gw=0.2,
        lam_sym=0.0,
        lam_ub=0.05,
        eps=0.01,
        delta_min=3.0,
        delta_max=5.0,
        n_steps=50,
        step=4.0,
        marginal="unbalanced",
        sinkhorn_iters=10,
        normalize=True,
        ref_cells=REF_CELLS,
        grad="checkpoint",
        checkpoint_every=5,
        tol=0.0,
        learnable=False,
        return_objective=False,
    ):
        super().__init__()
        if grad not in GRAD_MODES:
            raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
        if marginal not in MARGINALS:
            raise ValueError(f"marginal must be one of {MARGINALS}, got {marginal!r}")
        values = dict(lam=lam, lam_gw=lam_gw, lam_sym=lam_sym, lam_ub=lam_ub, eps=eps)
        for key, v in values.items():
            v = torch.as_tensor(float(v), dtype=torch.float32)
            if learnable and float(v) > 0:
                self.register_parameter("log_" + key, nn.Parameter(v.log()))
            else:
                self.register_buffer("log_" + key, v.log(), persistent=False)
        self.delta_min, self.delta_max = float(delta_min), float(delta_max)
        self.n_steps, self.step = int(n_steps), float(step)
        self.marginal, self.sinkhorn_iters = marginal, int(sinkhorn_iters)
        self.normalize, self.ref_cells = bool(normalize), int(ref_cells)
        self.grad, self.checkpoint_every, self.tol = grad, int(checkpoint_every), float(tol)
        self.return_objective = bool(return_objective)

    def weights(self) -> dict:
        """Current λ's and ε as tensors."""
        return {k: getattr(self, "log_" + k).exp() for k in _LEARNABLE}

    def forward(
        self, src: FeatureMap, trg: FeatureMap, sym_pairs: Optional[torch.Tensor] = None,
        similarity: Optional[torch.Tensor] = None,
    ) -> MatchResult:
        """Args:
            src, trg: feature maps, features (B, D, h, w) / (B, D, h', w'), optional valid masks.
            sym_pairs: optional (B, S, 2) source cell indices of left/right symmetric pairs.
            similarity: optional (B, h*w, h'*w'); the cost is ``1 - similarity`` instead of the
                cosine cost of the features (e.g. a neighbourhood-consensus-refined similarity).
        Returns:
            MatchResult: scores (B, h*w, h'*w') = log T (-inf at invalid target cells); extras
            ``objective`` (B, n_steps) if ``return_objective``, ``step_size`` (B,).
        """
        with torch.autocast(src.features.device.type, enabled=False):
            # Solve on the bounding box of the valid cells (exact: padded cells carry no mass).
            src_c, s_box = crop_to_valid(src)
            trg_c, t_box = crop_to_valid(trg)
            if similarity is None:
                cost = cosine_cost(src_c, trg_c)
            else:
                cost = crop_pairwise(similarity_cost(similarity), src.grid, s_box, trg.grid, t_box)
            sv, tv = masks(src_c, trg_c)
            if sym_pairs is not None:
                sym_pairs = remap_cells(sym_pairs, src.grid, s_box)
            w = {k: v.to(cost.dtype) for k, v in self.weights().items()}
            res = solve_gwot(
                cost,
                src_c.grid,
                trg_c.grid,
                sv,
                tv,
                delta_min=self.delta_min,
                delta_max=self.delta_max,
                sym_pairs=sym_pairs,
                n_steps=self.n_steps,
                step=self.step,
                marginal=self.marginal,
                sinkhorn_iters=self.sinkhorn_iters,
                normalize=self.normalize,
                ref_cells=self.ref_cells,
                grad=self.grad,
                checkpoint_every=self.checkpoint_every,
                tol=self.tol,
                return_objective=self.return_objective,
                **w,
            )
            scores = uncrop(res.log_plan, src.grid, s_box, trg.grid, t_box)
        extras = {"step_size": res.step_size}
        if res.objective is not None:
            extras["objective"] = res.objective
        return MatchResult(scores=scores, extras=extras)
