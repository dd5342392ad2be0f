"""Entropic optimal transport matcher (balanced or semi-unbalanced Sinkhorn), log domain.

Problem, with C = 1 - y ŷᵀ the cosine cost between L2-normalised features and p, q uniform over
the valid source / target cells:

.. math::
    T^* = \\arg\\min_{T \\ge 0,\\ T1 = p}\\ \\lambda \\langle C, T\\rangle
          + \\lambda_{ub}\\,\\mathrm{KL}(T^\\top 1 \\,\\|\\, q) - \\varepsilon H(T),
    \\qquad H(T) = -\\sum_{ij} T_{ij} \\log T_{ij}.

``balanced`` replaces the KL penalty by the constraint :math:`T^\\top 1 = q`. The minimiser is
:math:`T_{ij} = \\exp(f_i + g_j - \\lambda C_{ij} / \\varepsilon)` with the potentials found by
alternating exact updates (Sinkhorn; Chizat et al. 2018 for the unbalanced column update):

.. math::
    f = \\log p - \\mathrm{lse}_j(Z + g), \\qquad
    g = \\rho\\,(\\log q - \\mathrm{lse}_i(Z + f)), \\qquad
    Z = -\\lambda C / \\varepsilon,\\ \\rho = \\lambda_{ub} / (\\lambda_{ub} + \\varepsilon)

(:math:`\\rho = 1` for ``balanced``). The iteration ends with an f update, so rows hold exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from semcorr.backbones.base import FeatureMap
from semcorr.config import register
from semcorr.matchers import MatcherConfig
from semcorr.matchers.base import Matcher, MatchResult

NEG = -1e20  # log-mass outside the support: finite, so 0 * NEG == 0 and no NaN reaches autograd
MARGINALS = ("balanced", "unbalanced")


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


def solve_ot(
    cost: torch.Tensor,
    src_valid: Optional[torch.Tensor] = None,
    trg_valid: Optional[torch.Tensor] = None,
    lam=1.0,
    eps=0.01,
    lam_ub=0.05,
    marginal: str = "unbalanced",
    n_iters: int = 50,
) -> torch.Tensor:
    """Entropic OT plan (see the module docstring).

    Args:
        cost: (B, Ns, Nt) C.
        src_valid, trg_valid: (B, Ns), (B, Nt) bool masks (None: all valid).
        lam, eps, lam_ub: floats or (B,) tensors.
    Returns:
        (B, Ns, Nt) log T; -inf at invalid target cells. Rows of invalid source cells are the
        rows they would have with mass 1 / n_s (they take no part in the column marginal).
    """
    if marginal not in MARGINALS:
        raise ValueError(f"marginal must be one of {MARGINALS}, got {marginal!r}")
    b, ns, nt = cost.shape
    dev, dt = cost.device, cost.dtype
    if src_valid is None:
        src_valid = torch.ones(b, ns, dtype=torch.bool, device=dev)
    if trg_valid is None:
        trg_valid = torch.ones(b, nt, dtype=torch.bool, device=dev)
    lam = _per_pair(lam, b, cost)
    eps = _per_pair(eps, b, cost)
    log_p, log_q, n_s, _ = uniform_log_marginals(src_valid, trg_valid, dt)
    z = (-lam / eps)[:, None, None] * cost
    z = z.masked_fill(~trg_valid[:, None, :], NEG)
    if marginal == "balanced":
        rho = torch.ones_like(eps)
    else:
        lam_ub = _per_pair(lam_ub, b, cost)
        rho = lam_ub / (lam_ub + eps)
    _, g = sinkhorn_log(z, log_p, log_q, trg_valid, n_iters, rho)
    # Final row update with every row at mass 1 / n_s ("virtual" rows for padded source cells).
    log_p_all = (-n_s.log())[:, None].expand(b, ns)
    f = log_p_all - torch.logsumexp(z + g[:, None, :], dim=2)
    log_plan = z + f[:, :, None] + g[:, None, :]
    return log_plan.masked_fill(~trg_valid[:, None, :], float("-inf"))


def _per_pair(value, b: int, like: torch.Tensor) -> torch.Tensor:
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


def cosine_cost(src: FeatureMap, trg: FeatureMap) -> torch.Tensor:
    """(B, Ns, Nt) C = 1 - cos(y_i, ŷ_j), computed in float32 (or float64 for float64 input)."""
    dt = torch.float64 if src.features.dtype == torch.float64 else torch.float32
    a = torch.nn.functional.normalize(src.flat().to(dt), dim=-1)
    b = torch.nn.functional.normalize(trg.flat().to(dt), dim=-1)
    return 1.0 - a @ b.transpose(1, 2)


def similarity_cost(similarity: torch.Tensor) -> torch.Tensor:
    """(B, Ns, Nt) C = 1 - s for a given (e.g. consensus-refined) similarity; -inf entries (invalid
    target cells, which the solvers mask anyway) become a finite cost of 2."""
    dt = torch.float64 if similarity.dtype == torch.float64 else torch.float32
    s = similarity.to(dt)
    return 1.0 - torch.where(torch.isfinite(s), s, torch.full_like(s, -1.0))


def masks(src: FeatureMap, trg: FeatureMap) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B, Ns), (B, Nt) bool validity of the cells (all True where a map has no mask)."""
    out = []
    for fm in (src, trg):
        b = fm.features.shape[0]
        n = fm.grid[0] * fm.grid[1]
        if fm.valid is None:
            out.append(torch.ones(b, n, dtype=torch.bool, device=fm.features.device))
        else:
            out.append(fm.valid.reshape(b, n).bool())
    return out[0], out[1]


@dataclass
class OTConfig(MatcherConfig):
    """Entropic OT. ``marginal``: ``balanced`` (Sinkhorn) or ``unbalanced`` (KL column penalty)."""

    lam: float = 0.2
    eps: float = 0.01
    lam_ub: float = 0.05
    marginal: str = "unbalanced"
    n_steps: int = 50


@register("matcher", "ot", OTConfig)
class OTMatcher(Matcher):
    """Entropic OT between patch grids; ``scores`` = log of the plan (see :func:`solve_ot`)."""

    def __init__(self, lam=0.2, eps=0.01, lam_ub=0.05, marginal="unbalanced", n_steps=50):
        super().__init__()
        if marginal not in MARGINALS:
            raise ValueError(f"marginal must be one of {MARGINALS}, got {marginal!r}")
        self.lam, self.eps, self.lam_ub = lam, eps, lam_ub
        self.marginal, self.n_steps = marginal, n_steps

    def forward(
        self, src: FeatureMap, trg: FeatureMap, sym_pairs: Optional[torch.Tensor] = None,
        similarity: Optional[torch.Tensor] = None,
    ) -> MatchResult:
        """src, trg: feature maps (B, D, h, w); returns scores (B, Ns, Nt) = log T.

        ``similarity`` (B, Ns, Nt), optional: use ``C = 1 - similarity`` instead of the cosine
        cost of the features (e.g. a neighbourhood-consensus-refined similarity).
        """
        with torch.autocast(src.features.device.type, enabled=False):
            cost = cosine_cost(src, trg) if similarity is None else similarity_cost(similarity)
            sv, tv = masks(src, trg)
            log_plan = solve_ot(
                cost, sv, tv, self.lam, self.eps, self.lam_ub, self.marginal, self.n_steps
            )
        return MatchResult(scores=log_plan)
