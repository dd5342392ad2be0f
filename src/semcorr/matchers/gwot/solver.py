"""The GW-OT solver: projected mirror descent, batched and differentiable.

Snelgar et al., "Gromov Wasserstein Optimal Transport for Semantic Correspondences",
arXiv 2602.03105, Eq. 4-6. Source cells i at grid coordinates x_i, target cells j at x̂_j,
L2-normalised features y, ŷ; p, q uniform over the valid cells (n_s, n_t of them):

.. math::
    T^* = \\arg\\min_{T \\ge 0,\\ T 1 = p}\\ \\mathcal F(T) - \\varepsilon H(T),

    \\mathcal F(T) = \\lambda \\langle C, T\\rangle
        + \\tfrac12 c_{gw} \\langle C^p T C^{q\\top}, T\\rangle
        + c_{sym} F_{sym}(T)
        + \\lambda_{ub} \\mathrm{KL}(T^\\top 1 \\,\\|\\, q),

with :math:`C = 1 - y ŷ^\\top`, :math:`C^p_{ik} = 1[\\|x_i - x_k\\| < \\delta_{min}]`,
:math:`C^q_{jl} = 1[\\|x̂_j - x̂_l\\| > \\delta_{max}]` (grid units),
:math:`F_{sym}(T) = -\\sum_{(i,k) \\in G} \\sum_{j,l} s_{ik} ŝ_{jl} T_{ij} T_{kl}`,
:math:`s_{ik} = \\mathrm{sign}(x_{i,x} - x_{k,x})` (ŝ likewise in the target), G the unordered
left/right symmetric pairs of source cells, and :math:`H(T) = -\\sum T \\log T`.

**Scale** (:func:`scale_coefficients`). c_gw and c_sym turn λ_gw and λ_sym into gradient
coefficients. Row i of T carries mass 1/n_s, so :math:`(C^p T C^q)_{ij} \\le |N_{\\delta_{min}}|
/ n_s` and the symmetry gradient is at most 1/n_s: without a scale the two terms fade as the grid
grows. ``scale: fraction`` puts both gradients on the scale of a mass fraction in [0, 1], like
the feature cost, at any grid and δ; ``scale: asot`` (default) doubles the GW gradient, as the
normalisation of the authors' closest released code (ASOT) does; ``grid`` and ``raw`` are the
earlier forms (``docs/gwot.md`` derives and converts between them).

**Solver**: projected mirror descent on log T (entropic mirror map). With the objective gradient
:math:`g_t = \\nabla \\mathcal F(T_t)` and step η,

.. math::
    \\log T_{t+1} = \\Pi_p\\big((1 - \\eta\\varepsilon) \\log T_t - \\eta g_t\\big),

where :math:`\\Pi_p` is the exact KL projection onto {T 1 = p}: a row-wise log-softmax plus
log p (``balanced`` instead projects onto {T1 = p, Tᵀ1 = q} with warm-started Sinkhorn). η is
per pair: η = ``step`` / r_0 with r_0 the largest within-row range of g_0 over valid cells
(row-constant parts of g cancel in the projection, so the range is the step that matters: the
first step moves any row's log-odds by at most ``step`` nats), capped at 2 / (2ε + λ_ub)
(1/ε for ``balanced``): the entropy factor 1 - ηε stays in [0, 1), and the KL column term, which
with the entropy scales a shift of whole target columns by 1 - η(ε + λ_ub) per step, cannot make
the iteration diverge (it does once η(ε + λ_ub) > 2). ηε = 1 is the classic fixed-point
iteration of entropic GW (Peyré et al. 2016; POT's ``PGD``).

The gradient pieces (GW filter, symmetry rows) are in :mod:`semcorr.matchers.gwot.terms`;
padded cells have zero mass, so they drop out of marginals and filters.

**Implementations** (``implementation``, :mod:`semcorr.matchers.static`): ``cpu`` runs the step
in cache-sized chunks into reused buffers (this module); ``gpu`` runs it as a fixed sequence of
whole-tensor ops (:mod:`semcorr.matchers.gwot.gpu`), sync-free, with the step loop optionally
replayed as a CUDA graph (``cuda_graph``). Both give the dense reference's plan. Half-precision
costs are solved in float32 (:func:`~semcorr.matchers.static.solver_dtype`), with autocast off.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import NamedTuple, Optional, Tuple

import torch
from torch.utils.checkpoint import checkpoint

from semcorr.matchers.gridfilter import CPU_CHUNK_ELEMS, disc_size
from semcorr.matchers.gwot.gpu import StepConfig, StepTensors, gpu_step
from semcorr.matchers.gwot.options import GW_FRACTION_WEIGHT, GWOTOptions
from semcorr.matchers.gwot.terms import (DiscKernels, SymPairs, disc_kernels, gw_filter, gw_row_term,
                                         sym_gradient, sym_rows, sym_setup, sym_value)
import semcorr.matchers.static as static
from semcorr.matchers.sinkhorn import NEG, per_pair, sinkhorn, uniform_log_marginals
from semcorr.matchers.static import GraphCache, autocast_off, exact_fp32, resolve_implementation, solver_dtype


class GWOTResult(NamedTuple):
    """log_plan (B, Ns, Nt): log T, -inf at invalid target cells. objective (B, n) or None: the
    objective (with the entropy term) after each step. step_size (B,): η used."""

    log_plan: torch.Tensor
    objective: Optional[torch.Tensor]
    step_size: torch.Tensor


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
    gw_coef: torch.Tensor  # (B,) ∇ of the GW term = gw_coef * C^p T C^q (objective: half of it)
    sym_coef: torch.Tensor  # (B,) ∇ of the symmetry term = sym_coef * ∇F_sym
    lam_ub: torch.Tensor
    eps: torch.Tensor
    delta_min: float
    delta_max: float
    pairs: Optional[SymPairs]
    balanced: bool
    sinkhorn_iters: int
    work: Optional["_Work"] = None  # reused buffers, set when no gradient is recorded (cpu)
    impl: str = "cpu"  # the formulation: "cpu" | "gpu"
    kernels: Optional[DiscKernels] = None  # the gpu formulation's disc stencils


class _Work(NamedTuple):
    """(B, Ns, Nt) buffers reused by every step when no autograd graph is built: on a CPU, a
    fresh tensor of the plan's size costs more (page faults) than a pass over it."""

    plan: torch.Tensor
    filt: torch.Tensor
    trail: torch.Tensor  # the plan filtered over the target grid

    @staticmethod
    def like(x: torch.Tensor) -> "_Work":
        return _Work(*(torch.empty(x.shape, dtype=x.dtype, device=x.device) for _ in range(3)))


def _work(pb: _Problem) -> Optional[_Work]:
    """The buffers, when this step records no gradient (in-place updates are safe)."""
    return None if torch.is_grad_enabled() else pb.work


def _row_chunks(x: torch.Tensor):
    """Slices of axis 1 of x (B, Ns, Nt) of about ``CPU_CHUNK_ELEMS`` elements (one on a GPU)."""
    bsz, ns, nt = x.shape
    rows = ns if x.device.type != "cpu" else max(1, CPU_CHUNK_ELEMS // max(bsz * nt, 1))
    return [slice(r, min(r + rows, ns)) for r in range(0, ns, rows)]


def _plan(pb: _Problem, z: torch.Tensor, g: torch.Tensor, need_log: bool = True,
          work: Optional[_Work] = None):
    """Project exp(z) (logits, NEG at invalid targets) onto the constraint set.

    Returns T (padded source rows at zero mass), log T (None unless ``need_log``; unbalanced) and
    the column potential (balanced). With ``work`` (no autograd), T is written into
    ``work.plan`` chunk by chunk (softmax and the row mass while the chunk is in cache).
    """
    if pb.balanced:
        f, g, _ = sinkhorn(z, pb.log_p, pb.log_q, pb.trg_valid, pb.sinkhorn_iters, 1.0, g,
                           implementation=pb.impl)
        log_t = z + f[:, :, None] + g[:, None, :]
        return log_t.exp(), log_t, g
    if not need_log:
        if work is not None:  # rows of all pairs in one sequence: contiguous chunks (softmax.out)
            rows, plan, p = z.reshape(1, -1, z.shape[2]), work.plan.view(1, -1, z.shape[2]), pb.p.reshape(1, -1)
            for r in _row_chunks(rows):
                t = plan[:, r]
                torch.ops.aten._softmax.out(rows[:, r], 2, False, out=t)
                t.mul_(p[:, r, None])
            return work.plan, None, g
        return torch.softmax(z, dim=2) * pb.p[:, :, None], None, g
    log_t = torch.log_softmax(z, dim=2) + pb.log_p[:, :, None]
    return log_t.exp(), log_t, g


def _parts(pb: _Problem, t: torch.Tensor, work: Optional[_Work] = None):
    """Pieces shared by the gradient and the objective at plan T."""
    filt = gw_filter(t, pb.src_grid, pb.trg_grid, pb.delta_min, pb.delta_max,
                     out=None if work is None else work.filt, tmp=None if work is None else work.trail,
                     kernels=pb.kernels)
    col = t.sum(1)  # (B, Nt)
    log_ratio = _log_ratio(pb, col)
    sym = None
    if pb.pairs is not None:
        sym = sym_gradient(t, pb.pairs, pb.trg_grid)
    return filt, col, log_ratio, sym


def _log_ratio(pb: _Problem, col: torch.Tensor) -> torch.Tensor:
    """(B, Nt) log(q̃ / q) at valid targets, 0 elsewhere."""
    return torch.where(pb.trg_valid, col.clamp_min(torch.finfo(col.dtype).tiny).log() - pb.log_q,
                       torch.zeros_like(col))


def _objective(pb: _Problem, t, log_t, filt, col, log_ratio) -> torch.Tensor:
    """(B,) F(T) - ε H(T)."""
    lin = (pb.cost * t).sum((1, 2))
    row_term = gw_row_term(pb.p, pb.src_grid, pb.delta_min, pb.kernels)
    gw = (row_term * pb.p).sum(1) - (filt * t).sum((1, 2))
    kl = (col * log_ratio).sum(1)  # sum q̃ log(q̃ / q) (both sum to 1)
    ent = (t * log_t).sum((1, 2))  # -H(T); T = 0 where log T = NEG
    obj = pb.lam * lin + 0.5 * pb.gw_coef * gw + pb.lam_ub * kl + pb.eps * ent
    if pb.pairs is not None:
        obj = obj + pb.sym_coef * sym_value(t, pb.pairs, pb.trg_grid)
    return obj


def _full_gradient(pb: _Problem, t: torch.Tensor) -> torch.Tensor:
    """(B, Ns, Nt) ∇F(T) (without the entropy term), used for the automatic step size.

    No autograd: the terms are summed in place, into a work buffer when there is one.
    """
    work = _work(pb)
    filt, _, log_ratio, sym = _parts(pb, t, work)
    row_term = gw_row_term(pb.p, pb.src_grid, pb.delta_min, pb.kernels)
    g = torch.mul(pb.cost, pb.lam[:, None, None], **({} if work is None else {"out": work.trail}))
    g.addcmul_(pb.gw_coef[:, None, None], filt.neg_().add_(row_term[:, :, None]))  # c_gw (row - F)
    g.add_(pb.lam_ub[:, None, None] * log_ratio[:, None, :])
    if sym is not None:
        idx, vals = sym
        bsz, ns, nt = g.shape
        g.view(-1, nt).index_add_(0, idx, vals * pb.sym_coef.repeat_interleave(vals.shape[0] // bsz)[:, None])
    return g


def step_size_cap(eps: torch.Tensor, lam_ub: torch.Tensor) -> torch.Tensor:
    """(B,) largest automatic η: 2 / (2ε + λ_ub) (= 1/ε without the KL term).

    Linearised at its fixed point, a step multiplies log-odds perturbations by 1 - ηε (entropy)
    down to 1 - η(ε + λ_ub) (a shift of whole target columns, which the KL column term
    -η λ_ub log(Tᵀ1/q) pushes back): the map diverges once η(ε + λ_ub) > 2, and this cap, the
    minimiser of max(|1 - ηε|, |1 - η(ε + λ_ub)|), keeps it a contraction (factor λ_ub/(2ε + λ_ub)).
    """
    return 2.0 / (2.0 * eps + lam_ub)


def auto_step_size(pb: _Problem, t: torch.Tensor, step: float) -> torch.Tensor:
    """(B,) η = step / (largest within-row range of ∇F over valid cells), capped at
    :func:`step_size_cap` (1/ε for ``balanced``)."""
    with torch.no_grad():
        g = _full_gradient(pb, t)
        big = torch.finfo(g.dtype).max
        vt = pb.trg_valid[:, None, :]
        # in place (g is a temporary): -big at invalid targets for the max, then +big for the min
        rng = g.masked_fill_(~vt, -big).amax(2) - g.masked_fill_(~vt, big).amin(2)  # (B, Ns)
        rng = torch.where(pb.src_valid, rng, torch.zeros_like(rng)).amax(1)
        cap = step_size_cap(pb.eps, pb.lam_ub)
        eta = torch.where(rng > 0, step / rng.clamp_min(torch.finfo(g.dtype).tiny), cap)
        return torch.minimum(eta, cap)


def _step(pb: _Problem, z, g_pot, eta, a, c_eta, want_obj: bool):
    """One mirror-descent step from logits z. Returns the new logits, the column potential and
    (optionally) the objective of the plan at z."""
    work = _work(pb)
    t, log_t, g_pot = _plan(pb, z, g_pot, need_log=want_obj, work=work)
    filt, col, log_ratio, sym = _parts(pb, t, work)
    obj = _objective(pb, t, log_t, filt, col, log_ratio).detach() if want_obj else None
    beta = (eta * pb.gw_coef)[:, None, None]
    # z' = (1 - ηε) z - η (λC + c_gw (row - F) + λub log(q̃/q) + c_sym U); row constants dropped.
    col_step = (eta * pb.lam_ub)[:, None, None] * log_ratio[:, None, :]
    z_new = _descend(z, a, c_eta, beta, filt, col_step, in_place=work is not None)
    if sym is not None:
        idx, vals = sym
        bsz, ns, nt = z.shape
        w = (eta * pb.sym_coef).repeat_interleave(vals.shape[0] // bsz)[:, None]
        if work is not None:
            z_new.view(-1, nt).index_add_(0, idx, -w * vals)
        else:
            z_new = z_new.reshape(-1, nt).index_add(0, idx, -w * vals).reshape(bsz, ns, nt)
    return z_new, g_pot, obj


def _descend(z, a, c_eta, beta, filt, col_step, in_place: bool) -> torch.Tensor:
    """z' = a z + c_eta + beta filt - col_step; ``in_place`` (no autograd): into z, chunk by
    chunk, so that the four terms are combined while a chunk is in cache."""
    if not in_place:
        return torch.addcmul(torch.addcmul(c_eta, a, z), beta, filt) - col_step
    for r in _row_chunks(z):
        zc = z[:, r]
        torch.addcmul(c_eta[:, r], a, zc, out=zc).addcmul_(beta, filt[:, r]).sub_(col_step)
    return z


def scale_coefficients(opts: GWOTOptions, n_s: torch.Tensor, lam_gw: torch.Tensor,
                       lam_sym: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B,) coefficients c_gw, c_sym of the GW and symmetry gradients under ``opts.scale``:
    ∇ = c_gw C^p T C^q + c_sym ∇F_sym (the objective holds ½ c_gw <C^p T C^q, T> + c_sym F_sym).

    - ``fraction``: c_gw = λ_gw n_s / |N_δmin|, c_sym = λ_sym n_s. A row carries mass 1/n_s, so
      c_gw (C^p T C^q)_ij = λ_gw x (the fraction of the mass of i's δ_min-neighbourhood sent
      beyond δ_max of j) and c_sym u_b(j) = λ_sym x (fraction of the partner row's mass left of
      j minus right of j): both on [0, 1] scales, like the feature cost.
    - ``asot`` (default): c_gw = 2 λ_gw n_s / |N_δmin| (ASOT's normalisation, (C_v p)_i = 2 in
      the interior; :data:`~semcorr.matchers.gwot.options.GW_FRACTION_WEIGHT`), c_sym as
      ``fraction``.
    - ``grid``: c_gw = 2 λ_gw ν, c_sym = λ_sym ν with ν = n_s / ref_cells.
    - ``raw``: c_gw = 2 λ_gw, c_sym = λ_sym (the paper's equation as written).
    """
    if opts.scale in GW_FRACTION_WEIGHT:
        neighbourhood = disc_size(float(opts.delta_min), strict=True)
        weight = GW_FRACTION_WEIGHT[opts.scale]
        return weight * lam_gw * n_s / max(neighbourhood, 1), lam_sym * n_s
    nu = n_s / opts.ref_cells if opts.scale == "grid" else torch.ones_like(n_s)
    return 2 * lam_gw * nu, lam_sym * nu


def solve_gwot(
    cost: torch.Tensor,
    src_grid: Tuple[int, int],
    trg_grid: Tuple[int, int],
    src_valid: Optional[torch.Tensor] = None,
    trg_valid: Optional[torch.Tensor] = None,
    sym_pairs: Optional[torch.Tensor] = None,
    options: Optional[GWOTOptions] = None,
    step_size=None,
    graphs: Optional[GraphCache] = None,
    **overrides,
) -> GWOTResult:
    """Solve GW-OT (module docstring) for a batch of pairs.

    Args:
        cost: (B, Ns, Nt) C, Ns = h*w and Nt = h'*w' row-major cells.
        src_grid, trg_grid: (h, w), (h', w').
        src_valid, trg_valid: (B, Ns), (B, Nt) bool; False cells get no mass (None: all valid).
        sym_pairs: (B, S, 2) long source cell indices of unordered symmetric pairs, -1 padding.
        options: :class:`GWOTOptions` (default: its defaults); ``overrides`` replace any of its
            fields, e.g. ``solve_gwot(cost, g, g, lam_gw=t, grad="unroll")``. λ's and ε may be
            floats or (B,) / 0-d tensors (differentiable); δ floats or 0-d tensors.
        step_size: a fixed η instead of the automatic one (float or (B,) tensor); no cap.
        graphs: where ``cuda_graph`` keeps its captured step graphs across calls (a module's
            :class:`~semcorr.matchers.static.GraphCache`; None: captured for this call only).
    Returns:
        :class:`GWOTResult`. Rows of padded source cells are filled with the row they would
        have at mass 1/n_s (they take no part in the marginals or the filters). float32 for a
        float16 / bfloat16 cost (solved in float32), else the cost's dtype.

    ``implementation: gpu`` (the default off the CPU) is sync-free when λ_sym and the other
    weights are given as tensors or floats, ``tol`` is 0 and the cost is on the device.
    """
    opts = replace(options or GWOTOptions(), **overrides)
    cost = solver_dtype(cost)
    impl = resolve_implementation(opts.implementation, cost.device)
    with autocast_off(cost.device), exact_fp32(cost.device) if impl == "gpu" else contextlib.nullcontext():
        return _solve(cost, tuple(src_grid), tuple(trg_grid), src_valid, trg_valid, sym_pairs, opts, impl,
                      step_size, graphs)


def _solve(cost, src_grid, trg_grid, src_valid, trg_valid, sym_pairs, opts: GWOTOptions, impl: str,
           step_size, graphs) -> GWOTResult:
    pb = _problem(cost, src_grid, trg_grid, src_valid, trg_valid, sym_pairs, opts, impl)
    # No graph when none is asked for or nothing requires a gradient (then also the fast path).
    differentiable = [cost, pb.lam, pb.gw_coef, pb.sym_coef, pb.lam_ub, pb.eps]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in differentiable)
    ctx = torch.no_grad() if opts.grad == "detach" or not needs_grad else contextlib.nullcontext()
    with ctx:
        if not torch.is_grad_enabled() and impl == "cpu":
            pb = pb._replace(work=_Work.like(cost))
        return _run(pb, opts, step_size, graphs)


def gpu_step_function(cost: torch.Tensor, src_grid: Tuple[int, int], trg_grid: Tuple[int, int],
                      src_valid: Optional[torch.Tensor] = None, trg_valid: Optional[torch.Tensor] = None,
                      sym_pairs: Optional[torch.Tensor] = None, options: Optional[GWOTOptions] = None,
                      step_size=None, **overrides):
    """The gpu formulation's mirror-descent step as a function of the iterate alone, for
    ``torch.compile`` or a hand-made CUDA graph (arguments as :func:`solve_gwot`).

    Returns ``(step, z, g)``: the initial logits z (B, Ns, Nt) and column potential g (B, Nt),
    and ``step(z, g) -> (z, g)``, one step (:func:`~semcorr.matchers.gwot.gpu.gpu_step`; in
    place without autograd). :func:`solve_gwot` runs it ``n_steps`` times, then forms the plan.
    Call it as :func:`solve_gwot` does: autocast off, and on CUDA inside
    :func:`~semcorr.matchers.static.exact_fp32` (else cuDNN may run the filters in TF32).
    """
    opts = replace(options or GWOTOptions(), **overrides)
    cost = solver_dtype(cost)
    pb = _problem(cost, tuple(src_grid), tuple(trg_grid), src_valid, trg_valid, sym_pairs, opts, "gpu")
    z, g_pot, eta, a, c_eta = _start(pb, opts, step_size)
    consts = _step_tensors(pb, eta, a, c_eta)
    cfg = StepConfig(pb.src_grid, pb.trg_grid, pb.balanced, pb.sinkhorn_iters)

    def step(z_in: torch.Tensor, g_in: torch.Tensor):
        return gpu_step(z_in, g_in, consts, cfg)[:2]

    return step, z, g_pot


def _problem(cost, src_grid, trg_grid, src_valid, trg_valid, sym_pairs, opts: GWOTOptions,
             impl: str) -> _Problem:
    """The per-solve quantities (marginals, coefficients, symmetry pairs, stencils)."""
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
    gw_coef, sym_coef = scale_coefficients(opts, n_s, per_pair(opts.lam_gw, bsz, cost),
                                           per_pair(opts.lam_sym, bsz, cost))
    pairs = None
    if sym_pairs is not None and sym_pairs.numel() > 0 and _sym_active(opts.lam_sym, impl):
        pairs = sym_setup(sym_pairs.to(dev), src_grid, dt)
    balanced = opts.marginal == "balanced"
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
        lam=per_pair(opts.lam, bsz, cost),
        gw_coef=gw_coef,
        sym_coef=sym_coef,
        lam_ub=cost.new_zeros(bsz) if balanced else per_pair(opts.lam_ub, bsz, cost),
        eps=per_pair(opts.eps, bsz, cost),
        delta_min=float(opts.delta_min),
        delta_max=float(opts.delta_max),
        pairs=pairs,
        balanced=balanced,
        sinkhorn_iters=opts.sinkhorn_iters,
        impl=impl,
        kernels=disc_kernels(float(opts.delta_min), float(opts.delta_max), cost) if impl == "gpu" else None,
    )
    return pb


def _sym_active(lam_sym, impl: str) -> bool:
    """Whether the symmetry term is on, decided on the host: a float by its value; a tensor by
    its values in the cpu formulation (a synchronisation), always in the gpu formulation (a
    zero weight then adds exact zeros)."""
    if not isinstance(lam_sym, torch.Tensor):
        return float(lam_sym) != 0
    return impl == "gpu" or bool((lam_sym != 0).any())


def _step_tensors(pb: _Problem, eta: torch.Tensor, a: torch.Tensor, c_eta: torch.Tensor) -> StepTensors:
    """The per-solve constants of the gpu step (:class:`~semcorr.matchers.gwot.gpu.StepTensors`)."""
    col_w = col_b = None
    if not pb.balanced:
        valid = pb.trg_valid.to(c_eta.dtype)
        col_w = ((eta * pb.lam_ub)[:, None] * valid)[:, None, :]
        col_b = col_w * torch.where(pb.trg_valid, -pb.log_q, torch.zeros_like(pb.log_q))[:, None, :]
    sym = [None] * 4
    if pb.pairs is not None:
        rows = sym_rows(pb.pairs, c_eta.shape, pb.trg_grid, c_eta)
        sym = [rows.gather, rows.rows, (eta * pb.sym_coef)[:, None, None] * rows.sign, rows.sign_x]
    return StepTensors(c_eta, a, (eta * pb.gw_coef)[:, None, None], pb.p[:, :, None], pb.log_p, pb.log_q,
                       pb.trg_valid, col_w, col_b, pb.kernels.src, pb.kernels.trg, *sym)


def _start(pb: _Problem, opts: GWOTOptions, step_size):
    """The initial logits z (B, Ns, Nt) (NEG at invalid targets) and potential g (B, Nt), η (B,),
    a = 1 - ηε (B, 1, 1) and the constant part of the step c = -ηλC (NEG at invalid targets)."""
    bsz, ns, nt = pb.cost.shape
    z = pb.cost.new_zeros(bsz, ns, nt).masked_fill_(~pb.trg_valid[:, None, :], NEG)
    g_pot = pb.cost.new_zeros(bsz, nt)
    if step_size is None:
        with torch.no_grad():
            t0 = _plan(pb, z, g_pot, need_log=False, work=_work(pb))[0]
        eta = auto_step_size(pb, t0, opts.step)
    else:
        eta = per_pair(step_size, bsz, pb.cost).detach()
    a = (1 - eta * pb.eps)[:, None, None]
    # Constant part of the step: -η λ C, with NEG at invalid targets (keeps them at zero mass).
    c_eta = (-(eta * pb.lam)[:, None, None] * pb.cost).masked_fill_(~pb.trg_valid[:, None, :], NEG)
    return z, g_pot, eta, a, c_eta


def _run(pb: _Problem, opts: GWOTOptions, step_size, graphs: Optional[GraphCache] = None) -> GWOTResult:
    n_steps, grad, tol, want_obj = opts.n_steps, opts.grad, opts.tol, opts.return_objective
    z, g_pot, eta, a, c_eta = _start(pb, opts, step_size)
    if pb.impl == "gpu":
        consts = _step_tensors(pb, eta, a, c_eta)
        cfg = StepConfig(pb.src_grid, pb.trg_grid, pb.balanced, pb.sinkhorn_iters)

        def one_step(z_in, g_in):
            z_out, g_out, parts = gpu_step(z_in, g_in, consts, cfg, need_parts=want_obj)
            obj = None
            if want_obj:
                t, log_t, filt, col = parts
                obj = _objective(pb, t, log_t, filt, col, _log_ratio(pb, col)).detach()
            return z_out, g_out, obj

        use_graph = (opts.cuda_graph and static.graphs_available(pb.cost.device) and not torch.is_grad_enabled()
                     and tol == 0 and not want_obj and n_steps > 0)
        if use_graph:  # the whole step loop: one captured step, replayed n_steps times
            def graph_step(state, tensors):
                z_out, g_out, _ = gpu_step(state[0], state[1], StepTensors(*tensors), cfg)
                for dst, src in zip(state, (z_out, g_out)):
                    if src is not dst:
                        dst.copy_(src)

            z, g_pot = static.run_graphed(graph_step, [z, g_pot], list(consts), n_steps, graphs, key=("gwot", cfg))
            n_steps = 0
    else:
        def one_step(z_in, g_in):
            return _step(pb, z_in, g_in, eta, a, c_eta, want_obj)

    def block(z_in, g_in, k):
        objs = []
        for _ in range(k):
            z_in, g_in, o = one_step(z_in, g_in)
            objs.append(o)
        return z_in, g_in, objs

    objectives = []
    done = 0
    prev_t = None
    every = opts.checkpoint_every
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
        log_plan = (z + g_pot[:, None, :]).add_(f + log_p_all)
    elif torch.is_grad_enabled():
        log_plan = torch.log_softmax(z, dim=2) + log_p_all
    else:  # no autograd: one buffer fewer
        log_plan = torch.log_softmax(z, dim=2).add_(log_p_all)
    return log_plan.masked_fill_(~pb.trg_valid[:, None, :], float("-inf"))
