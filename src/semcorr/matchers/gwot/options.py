"""The GW-OT settings: one dataclass, the single source of every default.

The config schema (``matcher=gwot``), the :class:`~semcorr.matchers.gwot.GWOTMatcher` module and
the functional solver :func:`~semcorr.matchers.gwot.solve_gwot` all take a :class:`GWOTOptions`
(LightGlue's ``default_conf`` plays the same role there).

Where each default comes from (``docs/gwot.md``, *Where every default comes from*):

- **Tab. 5** of Snelgar et al. (arXiv 2602.03105), TSS / PF-PASCAL row: λ 0.2, λ_gw 0.2, no
  symmetry term, λ_ub 0.05 (so: the unbalanced marginal), δ (3, 5); Sec. 5.1: 50 steps; App. A:
  the 60 x 60 grid of ``ref_cells``.
- **ASOT** (``mingu6/action_seg_ot``, ``src/asot.py`` and ``src/train.py``, the authors' closest
  released code): the scale of the GW term (``scale: asot``), ε = 0.01 (its evaluation
  ``eval_eps``), the first step of 4 nats (its ``4 / grad.max()`` at the first iteration; semcorr
  measures the within-row range and caps the step, issue 15) and the initial plan p qᵀ (its
  ``dx dyᵀ``). The paper gives no ε, step size or initialisation.
- **semcorr**: ``sinkhorn_iters`` (``balanced`` only), ``grad`` / ``checkpoint_every``, ``tol``,
  ``return_objective``: how the solve runs, not what it solves.
"""

from __future__ import annotations

from dataclasses import dataclass

from semcorr.matchers.base import check_options
from semcorr.matchers.static import check_static_options

GRAD_MODES = ("unroll", "checkpoint", "detach")
SCALES = ("asot", "fraction", "grid", "raw")
# c_gw = GW_FRACTION_WEIGHT[scale] * λ_gw * n_s / |N_δmin|: the weight of the torn neighbourhood
# fraction in the GW gradient. ASOT's band filter (1/r on the 2⌊rN⌋ frames around a frame, centre
# excluded) gives (C_v p)_i = 2 for rows of mass 1/N, hence 2 (docs/gwot.md derives it).
GW_FRACTION_WEIGHT = {"asot": 2.0, "fraction": 1.0}
REF_CELLS = 3600  # the paper's 60 x 60 grid (DINOv2-B/14 at 840 px), for ``scale: grid``


@dataclass
class GWOTOptions:
    """Settings of one GW-OT solve (see :mod:`semcorr.matchers.gwot.solver` for the maths).

    Attributes:
        lam, lam_gw, lam_sym, lam_ub, eps: weights of the feature cost, GW term, symmetry term,
            KL column penalty and entropy. The solver also accepts tensors here (0-d or one per
            pair, differentiable).
        delta_min, delta_max: neighbourhood radii of the structure matrices, in grid cells.
        n_steps: mirror-descent steps (the maximum, with ``tol``).
        step: first-step size in nats (η = step / row range of ∇F at T_0, capped at
            2 / (2ε + λ_ub), see :func:`~semcorr.matchers.gwot.solver.step_size_cap`).
        marginal: ``unbalanced`` (KL column penalty) or ``balanced`` (Tᵀ1 = q).
        sinkhorn_iters: Sinkhorn iterations per step for ``balanced`` (warm-started).
        scale: how λ_gw and λ_sym become gradient coefficients (Tab. 5 does not say; see
            ``docs/gwot.md``, *Scale*): ``asot`` (default): the GW gradient is 2 λ_gw times the
            fraction of a source cell's neighbourhood mass that lands beyond δ_max (ASOT's
            normalisation carried to the disc), the symmetry gradient λ_sym times the partner
            row's (left - right) mass fraction; ``fraction``: the same with λ_gw (half the GW
            weight of ``asot``); ``grid``: the earlier convention, ν = n_s / ``ref_cells`` on
            λ_gw and λ_sym with the GW gradient 2 λ_gw ν C^p T C^q; ``raw``: the paper's
            equation as written (ν = 1).
        ref_cells: the reference grid of ``scale: grid``.
        grad: ``unroll`` | ``checkpoint`` (blocks of ``checkpoint_every`` steps recomputed in
            backward) | ``detach`` (no gradient).
        tol: > 0 stops after a block in which the plan moved less than ``tol`` per step (L1).
        return_objective: also return the objective after each step.
        implementation: ``auto`` (``cpu`` on a CPU, ``gpu`` on other devices) | ``cpu`` (chunked,
            in-place, host-side decisions) | ``gpu`` (whole-tensor ops, sync-free, static shapes;
            the matcher solves on the full grid instead of cropping). Same plan either way; see
            :mod:`semcorr.matchers.static`.
        cuda_graph: replay the step loop as a captured CUDA graph (``gpu`` formulation on a CUDA
            device, without autograd, ``tol`` 0 and no objective; elsewhere ignored). The
            module keeps a graph per batch size and grid (the two most recent).
    """

    lam: float = 0.2  # Tab. 5 (TSS, PF-PASCAL)
    lam_gw: float = 0.2  # Tab. 5 (TSS, PF-PASCAL), under scale: asot
    lam_sym: float = 0.0  # Tab. 5: no symmetry term for TSS / PF-PASCAL
    lam_ub: float = 0.05  # Tab. 5 (TSS, PF-PASCAL)
    eps: float = 0.01  # ASOT's eval_eps (src/train.py); not in the paper
    delta_min: float = 3.0  # Tab. 5
    delta_max: float = 5.0  # Tab. 5
    n_steps: int = 50  # Sec. 5.1: "projected gradient descent with 50 steps"
    step: float = 4.0  # ASOT: 4 / max gradient at the first step; semcorr: row range, capped
    marginal: str = "unbalanced"  # Eq. 4 / Tab. 5: the column marginal is a KL penalty (λ_ub)
    sinkhorn_iters: int = 10  # semcorr (balanced only)
    scale: str = "asot"  # ASOT's normalisation (docs/gwot.md, Scale)
    ref_cells: int = REF_CELLS  # App. A: 60 x 60 (scale: grid only)
    grad: str = "checkpoint"  # semcorr
    checkpoint_every: int = 5  # semcorr
    tol: float = 0.0  # semcorr: always n_steps steps
    return_objective: bool = False  # semcorr
    implementation: str = "auto"  # semcorr (issue 22)
    cuda_graph: bool = False  # semcorr (issue 22)

    def __post_init__(self) -> None:
        if self.grad not in GRAD_MODES:
            raise ValueError(f"grad must be one of {GRAD_MODES}, got {self.grad!r}")
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {self.scale!r}")
        check_static_options(self)
        check_options(self)
