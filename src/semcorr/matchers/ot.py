"""Entropic optimal transport matcher (balanced or semi-unbalanced Sinkhorn).

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

import contextlib
from dataclasses import dataclass, fields, replace
from typing import Optional

import torch

from semcorr.backbones.base import FeatureMap
from semcorr.matchers.base import (Matcher, MatcherConfig, MatchResult, check_finite_inputs,
                                   check_options, masks, match_cost)
from semcorr.matchers.sinkhorn import NEG, per_pair, sinkhorn, uniform_log_marginals
from semcorr.matchers.static import (GraphCache, autocast_off, check_static_options, exact_fp32,
                                     resolve_implementation, solver_dtype)
from semcorr.registry import configured, register


@dataclass
class OTOptions:
    """Settings of entropic OT; the single source of its defaults (config, module, solver).

    ``marginal``: ``balanced`` (Sinkhorn) or ``unbalanced`` (KL column penalty ``lam_ub``).
    ``n_steps``: Sinkhorn iterations. λ's and ε may be tensors (0-d or (B,)) in the solver.
    ``implementation``: ``auto`` (``cpu`` on a CPU, ``gpu`` elsewhere) | ``cpu`` (Sinkhorn on a
    stabilised kernel, two matrix-vector products per iteration, with a log-domain fallback
    decided on the host) | ``gpu`` (the log-domain iteration: no fallback to decide, sync-free).
    ``cuda_graph``: replay the iterations as a captured CUDA graph (``gpu`` on a CUDA device,
    without autograd; elsewhere ignored).
    """

    lam: float = 0.2
    eps: float = 0.01
    lam_ub: float = 0.05
    marginal: str = "unbalanced"
    n_steps: int = 50
    implementation: str = "auto"
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        check_static_options(self)
        check_options(self)


def solve_ot(
    cost: torch.Tensor,
    src_valid: Optional[torch.Tensor] = None,
    trg_valid: Optional[torch.Tensor] = None,
    options: Optional[OTOptions] = None,
    graphs: Optional[GraphCache] = None,
    **overrides,
) -> torch.Tensor:
    """Entropic OT plan (see the module docstring).

    Args:
        cost: (B, Ns, Nt) C.
        src_valid, trg_valid: (B, Ns), (B, Nt) bool masks (None: all valid).
        options: :class:`OTOptions` (default: its defaults); ``overrides`` replace any of its
            fields, e.g. ``solve_ot(cost, lam=0.5, eps=t)`` with t a (B,) tensor.
        graphs: where ``cuda_graph`` keeps its captured graphs (None: captured for this call).
    Returns:
        (B, Ns, Nt) log T; -inf at invalid target cells. Rows of invalid source cells are the
        rows they would have with mass 1 / n_s (they take no part in the column marginal).
        float32 for a float16 / bfloat16 cost (solved in float32, autocast off).
    """
    opts = replace(options or OTOptions(), **overrides)
    cost = solver_dtype(cost)
    impl = resolve_implementation(opts.implementation, cost.device)
    with autocast_off(cost.device), exact_fp32(cost.device) if impl == "gpu" else contextlib.nullcontext():
        return _solve_ot(cost, src_valid, trg_valid, opts, impl, graphs)


def _solve_ot(cost, src_valid, trg_valid, opts: OTOptions, impl: str, graphs) -> torch.Tensor:
    b, ns, nt = cost.shape
    dev, dt = cost.device, cost.dtype
    if src_valid is None:
        src_valid = torch.ones(b, ns, dtype=torch.bool, device=dev)
    if trg_valid is None:
        trg_valid = torch.ones(b, nt, dtype=torch.bool, device=dev)
    lam = per_pair(opts.lam, b, cost)
    eps = per_pair(opts.eps, b, cost)
    log_p, log_q, n_s, _ = uniform_log_marginals(src_valid, trg_valid, dt)
    z = ((-lam / eps)[:, None, None] * cost).masked_fill_(~trg_valid[:, None, :], NEG)
    if opts.marginal == "balanced":
        rho = torch.ones_like(eps)
    else:
        lam_ub = per_pair(opts.lam_ub, b, cost)
        rho = lam_ub / (lam_ub + eps)
    needs_grad = torch.is_grad_enabled() and (z.requires_grad or rho.requires_grad)
    with contextlib.nullcontext() if needs_grad else torch.no_grad():  # no graph to record
        _, g, row_lse = sinkhorn(z, log_p, log_q, trg_valid, opts.n_steps, rho, implementation=impl,
                                 cuda_graph=opts.cuda_graph, graphs=graphs)
    # Final row update with every row at mass 1 / n_s ("virtual" rows for padded source cells).
    f = (-n_s.log())[:, None] - row_lse
    log_plan = (z + g[:, None, :]).add_(f[:, :, None])
    return log_plan.masked_fill_(~trg_valid[:, None, :], float("-inf"))


@dataclass
class OTConfig(MatcherConfig, OTOptions):
    """``matcher`` group schema of kind ``ot`` (see :class:`OTOptions`)."""


@register("matcher", "ot", OTConfig)
class OTMatcher(Matcher):
    """Entropic OT between patch grids; ``scores`` = log of the plan (see :func:`solve_ot`)."""

    def __init__(self, cfg: Optional[OTConfig] = None, **overrides) -> None:
        super().__init__()
        cfg = configured(OTConfig, cfg, **overrides)
        self.options = OTOptions(**{f.name: getattr(cfg, f.name) for f in fields(OTOptions)})
        self._graphs = GraphCache()  # cuda_graph: captured iterations per shape

    def forward(
        self, src: FeatureMap, trg: FeatureMap, sym_pairs: Optional[torch.Tensor] = None,
        similarity: Optional[torch.Tensor] = None,
    ) -> MatchResult:
        """src, trg: feature maps (B, D, h, w); returns scores (B, Ns, Nt) = log T.

        ``similarity`` (B, Ns, Nt), optional: use ``C = 1 - similarity`` instead of the cosine
        cost of the features (e.g. a neighbourhood-consensus-refined similarity).
        """
        # one NaN would make the whole plan NaN: refuse it, naming the cells (also when used alone)
        check_finite_inputs(src, trg, similarity=similarity)
        with torch.autocast(src.features.device.type, enabled=False):
            cost = match_cost(src, trg, similarity)
            sv, tv = masks(src, trg)
            log_plan = solve_ot(cost, sv, tv, options=self.options, graphs=self._graphs)
        return MatchResult(scores=log_plan)
