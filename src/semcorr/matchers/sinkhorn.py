"""Log-domain (semi-unbalanced) Sinkhorn and the marginals the OT family shares.

Functional core of :mod:`semcorr.matchers.ot` and of GW-OT's balanced projection. Masses live
in the log domain; cells outside the support get :data:`NEG` (finite, so ``0 * NEG == 0`` and no
NaN reaches autograd).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

NEG = -1e20  # log-mass outside the support
MARGINALS = ("balanced", "unbalanced")


def per_pair(value, b: int, like: torch.Tensor) -> torch.Tensor:
    """A float, 0-d or (B,) tensor -> (B,) tensor with ``like``'s dtype and device."""
    if isinstance(value, torch.Tensor):
        t = value.to(device=like.device, dtype=like.dtype)
    else:
        t = torch.as_tensor(float(value), dtype=like.dtype, device=like.device)
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
    rho = torch.as_tensor(rho, dtype=logits.dtype, device=logits.device)
    if rho.ndim == 1:
        rho = rho[:, None]
    f = log_p - torch.logsumexp(logits + g[:, None, :], dim=2)
    for _ in range(n_iters):
        g = rho * (log_q - torch.logsumexp(logits + f[:, :, None], dim=1))
        g = torch.where(trg_valid, g, torch.zeros_like(g))
        f = log_p - torch.logsumexp(logits + g[:, None, :], dim=2)
    return f, g
