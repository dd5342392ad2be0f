"""The ``gpu`` formulation of one GW-OT mirror-descent step: a fixed, short sequence of
whole-tensor operations (``implementation: gpu``, the default on accelerators).

With the per-solve constants of :class:`StepTensors` (η, the coefficients and the stencils are
computed once per solve, see :func:`semcorr.matchers.gwot.solver.solve_gwot`), one step is

.. math::
    T = \\operatorname{diag}(p)\\,\\mathrm{softmax}_{row}(z), \\qquad
    F = C^p T K \\ \\text{(two convolutions)}, \\qquad \\tilde q = T^\\top 1,

    z' = a z + c + \\beta F - \\eta\\lambda_{ub} \\big(\\log \\tilde q + \\log n_t\\big)\\,[\\text{valid}]
         \\;(+\\ \\text{the symmetry rows}),

with a = 1 - ηε, c = -ηλC (NEG at padded targets), β = η c_gw: the same iteration as the cpu
formulation (:mod:`semcorr.matchers.gwot.solver`), exact against the dense reference. At 60x60
without symmetry this is 15 ATen ops (7 that write a plan-sized tensor) per step with no host
synchronisation and no shape that depends on data, so ``torch.compile`` traces a step as one
graph and the step loop can be captured once as a CUDA graph and replayed
(:func:`semcorr.matchers.static.run_graphed`). Without autograd the logits are updated in place.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch

from semcorr.matchers.gwot.terms import DiscKernels, gw_filter, sym_step
from semcorr.matchers.sinkhorn import sinkhorn


class StepTensors(NamedTuple):
    """Per-solve tensors of :func:`gpu_step` (None: the term is off). B pairs, Ns, Nt cells."""

    c_eta: torch.Tensor  # (B, Ns, Nt) -η λ C, NEG at invalid targets
    a: torch.Tensor  # (B, 1, 1) 1 - η ε
    beta: torch.Tensor  # (B, 1, 1) η c_gw
    p: torch.Tensor  # (B, Ns, 1) row masses (1/n_s at valid cells, 0 elsewhere)
    log_p: torch.Tensor  # (B, Ns) log p, NEG outside
    log_q: torch.Tensor  # (B, Nt) log q, NEG outside
    trg_valid: torch.Tensor  # (B, Nt) bool
    col_w: Optional[torch.Tensor]  # (B, 1, Nt) η λ_ub at valid targets, 0 elsewhere (None: balanced)
    col_b: Optional[torch.Tensor]  # (B, 1, Nt) col_w · log n_t
    k_src: Optional[torch.Tensor]  # (1, 1, kh, kw, 1) δ_min stencil
    k_trg: Optional[torch.Tensor]  # (1, 1, kh, kw) δ_max stencil
    sym_gather: Optional[torch.Tensor]  # (B, 2S, Nt) rows [b; a] (see terms.SymRows)
    sym_rows: Optional[torch.Tensor]  # (2 B S,) flat rows [a; b]
    sym_weight: Optional[torch.Tensor]  # (B, 2S, 1) η c_sym [s; -s]
    sign_x: Optional[torch.Tensor]  # (w', w') sign(x - l)


class StepConfig(NamedTuple):
    """The static (host-side) settings of :func:`gpu_step`; hashable (a CUDA-graph key)."""

    src_grid: Tuple[int, int]
    trg_grid: Tuple[int, int]
    balanced: bool
    sinkhorn_iters: int


def gpu_step(z: torch.Tensor, g_pot: torch.Tensor, k: StepTensors, cfg: StepConfig,
             need_parts: bool = False):
    """One mirror-descent step from logits z (B, Ns, Nt) (module docstring).

    Without autograd z is updated in place. Returns the new logits, the column potential g_pot
    (B, Nt) (updated for ``balanced`` only) and, with ``need_parts``, (T, log T, F, Tᵀ1) of the
    plan at z for the objective (else None).
    """
    in_place = not torch.is_grad_enabled()
    log_t = None
    if cfg.balanced:
        f, g_pot, _ = sinkhorn(z, k.log_p, k.log_q, k.trg_valid, cfg.sinkhorn_iters, 1.0, g_pot,
                               implementation="gpu")
        log_t = z + f[:, :, None] + g_pot[:, None, :]
        t = log_t.exp()
    elif need_parts:
        log_t = torch.log_softmax(z, 2) + k.log_p[:, :, None]
        t = log_t.exp()
    else:
        t = torch.softmax(z, 2)
        t = t.mul_(k.p) if in_place else t * k.p
    filt = gw_filter(t, cfg.src_grid, cfg.trg_grid, 0.0, 0.0, kernels=DiscKernels(k.k_src, k.k_trg))
    col = t.sum(1, keepdim=True) if (k.col_w is not None or need_parts) else None
    if in_place:
        z_new = torch.addcmul(k.c_eta, k.a, z, out=z).addcmul_(k.beta, filt)
    else:
        z_new = torch.addcmul(torch.addcmul(k.c_eta, k.a, z), k.beta, filt)
    if k.col_w is not None:  # η λ_ub log(q̃ / q) at valid targets
        col_step = torch.addcmul(k.col_b, k.col_w, col.clamp_min(torch.finfo(t.dtype).tiny).log())
        z_new = z_new.sub_(col_step) if in_place else z_new - col_step
    if k.sym_gather is not None:
        nt = z.shape[2]
        upd = sym_step(t, k.sym_gather, k.sign_x, k.sym_weight, cfg.trg_grid)
        if in_place:
            z_new.view(-1, nt).index_add_(0, k.sym_rows, upd)
        else:
            z_new = z_new.reshape(-1, nt).index_add(0, k.sym_rows, upd).view(z.shape)
    parts = (t, log_t, filt, col[:, 0]) if need_parts else None
    return z_new, g_pot, parts
