"""Naive dense reference of GW-OT, for tests and the benchmark. O(N^3) per step, O(N^2) memory.

It builds C^p, C^q (and the symmetry sign matrices) as dense N x N matrices and runs the same
mirror-descent iteration as :func:`semcorr.matchers.gwot.solve_gwot` (a test and benchmark reference,
kept with the tests: it needs POT), written the plain way:

.. math::
    \\nabla \\mathcal F = \\lambda C + 2 \\lambda_{gw} \\nu\\, C^p T C^q
        - \\lambda_{sym} \\nu\\, G_s T \\hat S^\\top + \\lambda_{ub} \\log(T^\\top 1 / q) 1^\\top,

with :math:`G_s` the antisymmetric matrix holding :math:`s_{ik}` at each symmetric pair (i, k)
and :math:`s_{ki} = -s_{ik}` at (k, i), and :math:`\\hat S_{jl} = \\mathrm{sign}(x̂_j - x̂_l)`.
Also :func:`pot_entropic_fgw`, the same problem (balanced, no symmetry term) handed to POT.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

NEG = -1e20


def grid_coords(grid: Tuple[int, int], dtype=torch.float64, device=None) -> torch.Tensor:
    """(h*w, 2) (x, y) cell coordinates in grid units, row-major."""
    h, w = grid
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=dtype, device=device), torch.arange(w, dtype=dtype, device=device), indexing="ij"
    )
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)


def structure_matrices(src_grid, trg_grid, delta_min, delta_max, dtype=torch.float64, device=None):
    """Dense C^p = 1[d < δ_min] (Ns, Ns) and C^q = 1[d > δ_max] (Nt, Nt)."""
    xs = grid_coords(src_grid, dtype, device)
    xt = grid_coords(trg_grid, dtype, device)
    ds2 = ((xs[:, None] - xs[None]) ** 2).sum(-1)
    dt2 = ((xt[:, None] - xt[None]) ** 2).sum(-1)
    cp = (ds2 < float(delta_min) ** 2).to(dtype)
    cq = (dt2 > float(delta_max) ** 2 + 1e-9).to(dtype)
    return cp, cq


def sym_matrices(sym_pairs: torch.Tensor, src_grid, trg_grid, dtype=torch.float64):
    """(B, Ns, Ns) G_s and (Nt, Nt) Ŝ (see module docstring)."""
    ns = src_grid[0] * src_grid[1]
    xs = grid_coords(src_grid, dtype)[:, 0]
    xt = grid_coords(trg_grid, dtype)[:, 0]
    b = sym_pairs.shape[0]
    gs = torch.zeros(b, ns, ns, dtype=dtype)
    for bi in range(b):
        for i, k in sym_pairs[bi].tolist():
            if i < 0 or k < 0:
                continue
            s = float(torch.sign(xs[i] - xs[k]))
            gs[bi, i, k] += s
            gs[bi, k, i] -= s
    s_hat = torch.sign(xt[:, None] - xt[None, :])
    return gs, s_hat


def solve_gwot_dense(
    cost: torch.Tensor,
    src_grid,
    trg_grid,
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
    scale: str = "asot",
    ref_cells: int = 3600,
):
    """Dense reference; same arguments and results as ``solve_gwot`` (no grad modes, no tol).

    Returns (log_plan (B, Ns, Nt), objective (B, n_steps), step_size (B,)).
    """
    b, ns, nt = cost.shape
    dt, dev = cost.dtype, cost.device
    sv = torch.ones(b, ns, dtype=torch.bool, device=dev) if src_valid is None else src_valid.reshape(b, ns)
    tv = torch.ones(b, nt, dtype=torch.bool, device=dev) if trg_valid is None else trg_valid.reshape(b, nt)
    svf, tvf = sv.to(dt), tv.to(dt)
    n_s, n_t = svf.sum(1), tvf.sum(1)
    p = svf / n_s[:, None]
    q = tvf / n_t[:, None]

    def per(v):
        v = torch.as_tensor(v, dtype=dt, device=dev)
        return (v.expand(b) if v.ndim == 0 else v)[:, None, None]

    cp, cq = structure_matrices(src_grid, trg_grid, delta_min, delta_max, dt, dev)
    # The gradient is 2 lam_gw_eff C^p T C^q - lam_sym_eff G_s T S^T + ...: the scale conventions
    # of the solver (scale_coefficients), written out plainly.
    if scale in ("fraction", "asot"):
        # fraction: 2 lam_gw_eff = lam_gw n_s / |disc of radius delta_min, open|; asot: twice that
        r = int(abs(float(delta_min))) + 1
        offsets = torch.arange(-r, r + 1, dtype=dt)
        disc = int(((offsets[:, None] ** 2 + offsets[None, :] ** 2) < float(delta_min) ** 2).sum())
        gw_nu, sym_nu = n_s / (2 * max(disc, 1)), n_s
        if scale == "asot":
            gw_nu = 2 * gw_nu
    else:
        nu = n_s / ref_cells if scale == "grid" else torch.ones_like(n_s)
        gw_nu, sym_nu = nu, nu
    lam, eps = per(lam), per(eps)
    lam_gw = per(lam_gw) * gw_nu[:, None, None]
    lam_sym = per(lam_sym) * sym_nu[:, None, None]
    lam_ub = per(lam_ub) if marginal == "unbalanced" else torch.zeros_like(lam)
    if sym_pairs is not None and sym_pairs.numel():
        gs, s_hat = sym_matrices(sym_pairs.cpu(), src_grid, trg_grid, dt)
        gs, s_hat = gs.to(dev), s_hat.to(dev)
    else:
        gs = s_hat = None

    def gradient(t):
        g = lam * cost + 2 * lam_gw * (cp @ t @ cq)
        col = t.sum(1)
        ratio = torch.where(tv, torch.log(col.clamp_min(1e-300)) - torch.log(q.clamp_min(1e-300)), 0.0)
        g = g + lam_ub * ratio[:, None, :]
        if gs is not None:
            g = g - lam_sym * (gs @ t @ s_hat.T)
        return g

    def objective(t, log_t):
        val = (lam * cost * t).sum((1, 2), keepdim=True)
        val = val + lam_gw * ((cp @ t @ cq) * t).sum((1, 2), keepdim=True)
        col = t.sum(1)
        kl = torch.where(tv, col * (torch.log(col.clamp_min(1e-300)) - torch.log(q.clamp_min(1e-300))), 0.0)
        val = val + lam_ub * kl.sum(1)[:, None, None]
        if gs is not None:
            val = val - 0.5 * lam_sym * ((gs @ t @ s_hat.T) * t).sum((1, 2), keepdim=True)
        ent = torch.where(t > 0, t * log_t, torch.zeros_like(t)).sum((1, 2), keepdim=True)
        return (val + eps * ent)[:, 0, 0]

    log_p = torch.where(sv, torch.log(p.clamp_min(1e-300)), NEG)
    log_q = torch.where(tv, torch.log(q.clamp_min(1e-300)), NEG)
    colmask = torch.where(tv, 0.0, NEG).to(dt)[:, None, :]
    g_pot = torch.zeros(b, nt, dtype=dt, device=dev)

    def project(z, g_pot):
        if marginal == "balanced":
            f = log_p - torch.logsumexp(z + colmask + g_pot[:, None, :], 2)
            for _ in range(sinkhorn_iters):
                g_pot = torch.where(tv, log_q - torch.logsumexp(z + colmask + f[:, :, None], 1), 0.0)
                f = log_p - torch.logsumexp(z + colmask + g_pot[:, None, :], 2)
            log_t = z + colmask + f[:, :, None] + g_pot[:, None, :]
        else:
            log_t = z + colmask - torch.logsumexp(z + colmask, 2, keepdim=True) + log_p[:, :, None]
        return log_t, g_pot

    z = torch.zeros(b, ns, nt, dtype=dt, device=dev)
    log_t, g_pot = project(z, g_pot)
    t = log_t.exp()
    g0 = gradient(t)
    if step_size is None:
        big = torch.finfo(dt).max
        rng = g0.masked_fill(~tv[:, None, :], -big).amax(2) - g0.masked_fill(~tv[:, None, :], big).amin(2)
        rng = torch.where(sv, rng, 0.0).amax(1)
        eta = torch.minimum(step / rng, 2 / (2 * eps[:, 0, 0] + lam_ub[:, 0, 0]))  # solver.step_size_cap
    else:
        eta = torch.as_tensor(step_size, dtype=dt, device=dev).expand(b)
    eta = eta[:, None, None]
    objs = []
    for _ in range(n_steps):
        z = (1 - eta * eps) * z - eta * gradient(t)
        log_t, g_pot = project(z, g_pot)
        t = log_t.exp()
        objs.append(objective(t, log_t))
    # output: every row at mass 1/n_s, -inf at invalid targets
    if marginal == "balanced":
        f = -torch.logsumexp(z + colmask + g_pot[:, None, :], 2, keepdim=True)
        out = z + g_pot[:, None, :] + f
    else:
        out = z + colmask - torch.logsumexp(z + colmask, 2, keepdim=True)
    out = out - torch.log(n_s)[:, None, None]
    out = out.masked_fill(~tv[:, None, :], float("-inf"))
    return out, torch.stack(objs, 1), eta[:, 0, 0]


def pot_entropic_fgw(cost, src_grid, trg_grid, lam, lam_gw, eps, delta_min, delta_max, max_iter=1000, tol=1e-11,
                     log=False):
    """Balanced GW-OT without symmetry (one pair, no padding) solved by POT (``ot`` package).

    With K = 1 - C^q (the δ_max disc) and the square loss, POT's GW term is
    :math:`\\sum (C^p_{ik} - K_{jl})^2 T_{ij} T_{kl} = const + 2 \\langle C^p T C^q, T\\rangle`
    on {T1 = p, Tᵀ1 = q}; so our objective λ<C,T> + λ_gw<C^p T C^q, T> - εH(T) equals
    s [(1-α)<C,T> + α Σ L T T] - εH(T) + const with s = λ + λ_gw/2, α = λ_gw / (2 s), and POT's
    ε is ε / s. ``lam_gw`` here is the effective (already normalised) weight.

    Returns T (Ns, Nt) as a float64 tensor (and POT's log dict, with ``fgw_dist``, if ``log``).
    """
    import ot  # test / benchmark dependency

    cp, cq = structure_matrices(src_grid, trg_grid, delta_min, delta_max)
    k = 1.0 - cq
    s = lam + lam_gw / 2
    alpha = (lam_gw / 2) / s
    c = cost.detach().double().cpu().numpy()
    ns, nt = c.shape
    import numpy as np

    p = np.full(ns, 1.0 / ns)
    q = np.full(nt, 1.0 / nt)
    t, info = ot.gromov.entropic_fused_gromov_wasserstein(
        c, cp.numpy(), k.numpy(), p, q, loss_fun="square_loss", epsilon=eps / s, alpha=alpha,
        max_iter=max_iter, tol=tol, solver="PGD", symmetric=True, numItermax=2000, stopThr=1e-12,
        log=True,
    )
    t = torch.as_tensor(np.asarray(t), dtype=torch.float64)
    return (t, info) if log else t
