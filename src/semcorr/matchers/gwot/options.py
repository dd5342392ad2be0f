"""The GW-OT settings: one dataclass, the single source of every default.

The config schema (``matcher=gwot``), the :class:`~semcorr.matchers.gwot.GWOTMatcher` module and
the functional solver :func:`~semcorr.matchers.gwot.solve_gwot` all take a :class:`GWOTOptions`
(LightGlue's ``default_conf`` plays the same role there). Defaults are the paper's TSS /
PF-PASCAL values (Tab. 5).
"""

from __future__ import annotations

from dataclasses import dataclass

from semcorr.matchers.base import check_options
from semcorr.matchers.static import check_static_options

GRAD_MODES = ("unroll", "checkpoint", "detach")
SCALES = ("fraction", "grid", "raw")
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
        scale: how λ_gw and λ_sym are scaled (the convention under which the paper's Tab. 5
            values mean what they meant; see ``docs/gwot.md``): ``fraction`` (default): the GW
            gradient is λ_gw times the fraction of a source cell's neighbourhood mass that lands
            beyond δ_max, the symmetry gradient λ_sym times the partner row's (left - right)
            mass fraction, both in [0, 1] whatever the grid and δ; ``grid``: the earlier
            convention, ν = n_s / ``ref_cells`` on λ_gw and λ_sym with the GW gradient
            2 λ_gw ν C^p T C^q; ``raw``: the paper's equation as written (ν = 1).
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
    scale: str = "fraction"
    ref_cells: int = REF_CELLS
    grad: str = "checkpoint"
    checkpoint_every: int = 5
    tol: float = 0.0
    return_objective: bool = False
    implementation: str = "auto"
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        if self.grad not in GRAD_MODES:
            raise ValueError(f"grad must be one of {GRAD_MODES}, got {self.grad!r}")
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {self.scale!r}")
        check_static_options(self)
        check_options(self)
