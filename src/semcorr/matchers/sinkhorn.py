"""(Semi-unbalanced) Sinkhorn and the marginals the OT family shares.

Functional core of :mod:`semcorr.matchers.ot` and of GW-OT's balanced projection. Potentials
live in the log domain; cells outside the support get :data:`NEG` (finite, so ``0 * NEG == 0``
and no NaN reaches autograd).

:func:`sinkhorn` iterates on a stabilised kernel K = exp(Z + s - m) (m the row maxima): each
iteration is two matrix-vector products over K, one pass each, instead of two log-sum-exps
over (B, Ns, Nt) of several passes and a temporary each; only (B, Ns) and (B, Nt) vectors stay
in the log domain. It falls back to :func:`sinkhorn_log`, the plain log-domain iteration, when a
scaling vector leaves the floating-point range (tiny ε). That check is a host synchronisation;
the ``gpu`` formulation (``implementation="gpu"``, :mod:`semcorr.matchers.static`) runs the
log-domain iteration instead: exact at any ε, sync-free, and capturable as a CUDA graph.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch

import semcorr.matchers.static as static
from semcorr.matchers.static import GraphCache

NEG = -1e20  # log-mass outside the support
MARGINALS = ("balanced", "unbalanced")


def per_pair(value, b: int, like: torch.Tensor) -> torch.Tensor:
    """A float, 0-d or (B,) tensor -> (B,) tensor with ``like``'s dtype and device."""
    if not isinstance(value, torch.Tensor):  # a fill on the device: no host-to-device copy
        return like.new_full((b,), float(value))
    t = value.to(device=like.device, dtype=like.dtype)
    if t.ndim == 0:
        return t.expand(b)
    if t.shape != (b,):
        raise ValueError(f"expected a scalar or a ({b},) tensor, got shape {tuple(t.shape)}")
    return t


def uniform_log_marginals(
    src_valid: torch.Tensor, trg_valid: torch.Tensor, dtype: torch.dtype
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """log p (B, Ns), log q (B, Nt) uniform over valid cells (NEG elsewhere), and the counts."""
    n_s = src_valid.sum(1).clamp_min(1).to(dtype)
    n_t = trg_valid.sum(1).clamp_min(1).to(dtype)
    log_p = torch.where(src_valid, -n_s.log()[:, None], torch.full_like(n_s[:, None], NEG))
    log_q = torch.where(trg_valid, -n_t.log()[:, None], torch.full_like(n_t[:, None], NEG))
    return log_p, log_q, n_s, n_t


def sinkhorn_log(
    logits: torch.Tensor,
    log_p: torch.Tensor,
    log_q: torch.Tensor,
    trg_valid: torch.Tensor,
    n_iters: int,
    rho=1.0,
    g: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Log-domain (semi-unbalanced) Sinkhorn potentials of the kernel ``exp(logits)``.

    Args:
        logits: (B, Ns, Nt) Z, with NEG at invalid target cells.
        log_p: (B, Ns), log_q: (B, Nt) log marginals, NEG at invalid cells.
        trg_valid: (B, Nt) bool.
        rho: scalar or (B,) tensor; 1 for a balanced column constraint, lam_ub / (lam_ub + eps)
            for a KL column penalty.
        g: optional (B, Nt) warm start of the column potential.
    Returns:
        f (B, Ns), g (B, Nt) such that exp(Z + f_i + g_j) has row sums exp(log_p) exactly.
    """
    if g is None:
        g = torch.zeros_like(log_q)
    rho = _rho(rho)
    f = log_p - torch.logsumexp(logits + g[:, None, :], dim=2)
    for _ in range(n_iters):
        f, g, _ = log_iteration(logits, f, log_p, log_q, trg_valid, rho)
    return f, g


def _rho(rho):
    """A float stays a float (no tensor made from host data); a (B,) tensor becomes (B, 1)."""
    if isinstance(rho, torch.Tensor):
        return rho[:, None] if rho.ndim == 1 else rho
    return float(rho)


def log_iteration(logits: torch.Tensor, f: torch.Tensor, log_p: torch.Tensor, log_q: torch.Tensor,
                  trg_valid: torch.Tensor, rho) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One log-domain Sinkhorn iteration (a column update, then a row update) from f (B, Ns).

    ``rho``: a float or a (B, 1) tensor. Returns f (B, Ns), g (B, Nt) and the row
    log-sum-exp lse_j(Z_ij + g_j) (B, Ns), so that f = log p - lse.
    """
    g = log_q - torch.logsumexp(logits + f[:, :, None], dim=1)
    if not (isinstance(rho, float) and rho == 1.0):
        g = rho * g
    g = torch.where(trg_valid, g, 0.0)
    lse = torch.logsumexp(logits + g[:, None, :], dim=2)
    return log_p - lse, g, lse


def sinkhorn_static(
    logits: torch.Tensor,
    log_p: torch.Tensor,
    log_q: torch.Tensor,
    trg_valid: torch.Tensor,
    n_iters: int,
    rho=1.0,
    g: Optional[torch.Tensor] = None,
    cuda_graph: bool = False,
    graphs: Optional[GraphCache] = None,
) -> "Potentials":
    """The gpu formulation of :func:`sinkhorn` (same arguments and result): the log-domain
    iteration (:func:`log_iteration`), exact at any ε with no fallback to decide, so no host
    synchronisation. With ``cuda_graph`` (on a CUDA device, without autograd) the iterations are
    one captured CUDA graph replayed ``n_iters`` times (cached in ``graphs``)."""
    if g is None:
        g = torch.zeros_like(log_q)
    rho = _rho(rho)
    lse = torch.logsumexp(logits + g[:, None, :], dim=2)
    f = log_p - lse
    if cuda_graph and static.graphs_available(logits.device) and not torch.is_grad_enabled() and n_iters > 0:
        scalar = rho if isinstance(rho, float) else None

        def step(state, consts):
            z, lp, lq, tv, r = consts
            for dst, src in zip(state, log_iteration(z, state[0], lp, lq, tv, scalar if r is None else r)):
                dst.copy_(src)

        consts = [logits, log_p, log_q, trg_valid, None if scalar is not None else rho]
        f, g, lse = static.run_graphed(step, [f, g, lse], consts, n_iters, graphs, key=("sinkhorn", scalar))
        return Potentials(f, g, lse)
    for _ in range(n_iters):
        f, g, lse = log_iteration(logits, f, log_p, log_q, trg_valid, rho)
    return Potentials(f, g, lse)


class Potentials(NamedTuple):
    """f (B, Ns), g (B, Nt); row_lse (B, Ns) = lse_j(Z_ij + g_j) of the last row update (so
    f = log p - row_lse)."""

    f: torch.Tensor
    g: torch.Tensor
    row_lse: torch.Tensor


def sinkhorn(
    logits: torch.Tensor,
    log_p: torch.Tensor,
    log_q: torch.Tensor,
    trg_valid: torch.Tensor,
    n_iters: int,
    rho=1.0,
    g: Optional[torch.Tensor] = None,
    implementation: str = "cpu",
    cuda_graph: bool = False,
    graphs: Optional[GraphCache] = None,
) -> Potentials:
    """Sinkhorn potentials of the kernel ``exp(logits)``: the iteration of :func:`sinkhorn_log`
    (same arguments, same result), on the kernel. ``implementation="gpu"``: :func:`sinkhorn_static`
    (with ``cuda_graph`` and ``graphs``) instead.

    With the shift s = g (the warm start, detached) and m_i = max_j (Z_ij + s_j), K = exp(Z + s - m)
    has entries in [0, 1] and a 1 in every row, and the updates are

    .. math::
        f = \\log p - m - \\log K e^{g - s}, \\qquad
        g = \\rho\\,(\\log q + s - \\log K^\\top e^{f + m}).

    s and m only shift the potentials inside the exponentials, so they are exact constants for
    autograd (detached). If a potential ends non-finite (a row or column of K underflowed, tiny
    ε), the log-domain iteration is run instead.
    """
    if implementation == "gpu":
        return sinkhorn_static(logits, log_p, log_q, trg_valid, n_iters, rho, g, cuda_graph, graphs)
    if g is None:
        g = torch.zeros_like(log_q)
    g_start = g
    rho_t = torch.as_tensor(rho, dtype=logits.dtype, device=logits.device)
    if rho_t.ndim == 1:
        rho_t = rho_t[:, None]
    shift = g.detach()
    with torch.no_grad():
        zs = logits + shift[:, None, :]
        m = zs.amax(2)  # (B, Ns)
    if torch.is_grad_enabled() and logits.requires_grad:
        del zs
        kernel = (logits + shift[:, None, :] - m[:, :, None]).exp()
    else:
        kernel = zs.sub_(m[:, :, None]).exp_()  # in place: no autograd
    ones = torch.ones_like(log_q)

    def row_lse(g_):  # lse_j(Z_ij + g_j)
        return m + torch.matmul(kernel, (g_ - shift).exp()[:, :, None])[..., 0].log()

    lse = row_lse(g)
    f = log_p - lse
    for _ in range(n_iters):
        col = torch.matmul((f + m).exp()[:, None, :], kernel)[:, 0]  # K^T e^{f + m}
        g = rho_t * (log_q + shift - torch.where(trg_valid, col, ones).log())
        g = torch.where(trg_valid, g, torch.zeros_like(g))
        lse = row_lse(g)
        f = log_p - lse
    if not bool(torch.isfinite(lse).all() & torch.isfinite(g).all()):
        del kernel
        f, g = sinkhorn_log(logits, log_p, log_q, trg_valid, n_iters, rho, g_start)
        lse = torch.logsumexp(logits + g[:, None, :], dim=2)
    return Potentials(f, g, lse)
