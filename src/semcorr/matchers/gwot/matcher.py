"""The GW-OT matcher: a thin ``nn.Module`` over :func:`~semcorr.matchers.gwot.solver.solve_gwot`."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Dict, Optional

import torch
from torch import nn

from semcorr.backbones.base import FeatureMap
from semcorr.matchers.base import (Matcher, MatcherConfig, MatchResult, check_finite_inputs,
                                   masks, match_cost)
from semcorr.matchers.gwot.crop import box_rows, crop_pairwise, crop_to_valid, remap_cells, uncrop
from semcorr.matchers.gwot.options import GWOTOptions
from semcorr.matchers.gwot.solver import solve_gwot
from semcorr.matchers.static import GraphCache, autocast_off, resolve_implementation
from semcorr.registry import configured, register

LEARNABLE = ("lam", "lam_gw", "lam_sym", "lam_ub", "eps")


@dataclass
class GWOTConfig(MatcherConfig, GWOTOptions):
    """``matcher`` group schema of kind ``gwot``: the solver's :class:`GWOTOptions` plus
    ``learnable`` (non-zero λ's and ε become trainable parameters)."""

    learnable: bool = False


@register("matcher", "gwot", GWOTConfig)
class GWOTMatcher(Matcher):
    """GW-OT between patch grids: ``scores`` = log of the plan, ``extras["objective"]`` (B, n)
    when ``return_objective``.

    The ``cpu`` formulation solves on the bounding box of the valid cells (a crop decided on the
    host); the ``gpu`` formulation on the full grids, sync-free, with the same scores.

    Args:
        cfg: a :class:`GWOTConfig` (default: its defaults); ``overrides`` replace its fields.
            ``learnable``: every non-zero λ and ε becomes an ``nn.Parameter`` stored as its log
            (``log_lam``, ...); zero-valued terms stay switched off (buffers).
    """

    def __init__(self, cfg: Optional[GWOTConfig] = None, **overrides) -> None:
        super().__init__()
        cfg = configured(GWOTConfig, cfg, **overrides)
        self.options = GWOTOptions(**{f.name: getattr(cfg, f.name) for f in fields(GWOTOptions)})
        self._graphs = GraphCache()  # cuda_graph: captured step loops per batch size and grid
        for key in LEARNABLE:
            v = torch.as_tensor(float(getattr(self.options, key)), dtype=torch.float32)
            if cfg.learnable and float(v) > 0:
                self.register_parameter("log_" + key, nn.Parameter(v.log()))
            else:
                self.register_buffer("log_" + key, v.log(), persistent=False)

    def weights(self) -> Dict[str, torch.Tensor]:
        """Current λ's and ε as tensors."""
        return {k: getattr(self, "log_" + k).exp() for k in LEARNABLE}

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
        # one NaN would make the whole plan NaN: refuse it, naming the cells (also when used alone)
        check_finite_inputs(src, trg, similarity=similarity)
        impl = resolve_implementation(self.options.implementation, src.features.device)
        if float(self.options.lam_sym) == 0:  # off for good (learnable leaves zero weights off)
            sym_pairs = None
        with autocast_off(src.features.device):
            if impl == "gpu":
                return self._solve_full(src, trg, sym_pairs, similarity)
            # Solve on the bounding box of the valid cells (exact: padded cells carry no mass).
            src_c, s_box = crop_to_valid(src)
            trg_c, t_box = crop_to_valid(trg)
            if similarity is None:
                cost = match_cost(src_c, trg_c, None)
            else:
                cost = crop_pairwise(match_cost(src, trg, similarity), src.grid, s_box, trg.grid, t_box)
            sv, tv = masks(src_c, trg_c)
            if sym_pairs is not None:
                sym_pairs = remap_cells(sym_pairs, src.grid, s_box)
            weights = {k: v.to(cost.dtype) for k, v in self.weights().items()}
            res = solve_gwot(cost, src_c.grid, trg_c.grid, sv, tv, sym_pairs,
                             options=replace(self.options, implementation=impl, **weights))
            scores = uncrop(res.log_plan, src.grid, s_box, trg.grid, t_box)
        return _result(scores, res)

    def _solve_full(self, src: FeatureMap, trg: FeatureMap, sym_pairs, similarity) -> MatchResult:
        """The gpu formulation: the full grids (no crop, no host synchronisation); rows of
        source cells outside the valid cells' bounding box as :func:`uncrop` gives them."""
        cost = match_cost(src, trg, similarity)
        sv, tv = masks(src, trg)
        weights = {k: v.to(cost.dtype) for k, v in self.weights().items()}
        res = solve_gwot(cost, src.grid, trg.grid, sv, tv, sym_pairs, graphs=self._graphs,
                         options=replace(self.options, implementation="gpu", **weights))
        scores = res.log_plan
        if src.valid is not None:
            scores = scores.index_select(1, box_rows(src.valid, src.grid))
        return _result(scores, res)


def _result(scores: torch.Tensor, res) -> MatchResult:
    extras = {"step_size": res.step_size}
    if res.objective is not None:
        extras["objective"] = res.objective
    return MatchResult(scores=scores, extras=extras)
