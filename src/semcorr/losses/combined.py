"""A weighted sum of losses: ``terms: {gaussian_ce: 1.0, ot_nll: 0.5}``.

``terms`` maps a loss kind to its weight; ``options`` maps a kind to keyword arguments that differ
from that kind's defaults, e.g. ``options: {ot_nll: {n_negatives: 8}}``. Each term's value and
logs are logged under ``<kind>/...``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch
from omegaconf import OmegaConf
from torch import nn

from semcorr.backbones.base import FeatureMap
from semcorr.errors import ConfigError
from semcorr.registry import GroupConfig, build, configured, register, schemas
from semcorr.matchers.base import MatchResult


@dataclass
class CombinedConfig(GroupConfig):
    terms: Dict[str, float] = field(default_factory=lambda: {"gaussian_ce": 1.0})
    options: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.terms:
            raise ValueError("terms must name at least one loss kind with its weight, got {}")
        for kind, weight in self.terms.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
                raise ValueError(f"terms.{kind} must be a weight >= 0, got {weight!r}")
        kinds = schemas("loss")
        for kind, opts in self.options.items():
            if kind in kinds:  # an unknown kind is reported (with the valid ones) when building
                try:
                    kinds[kind](**{**dict(opts or {}), "kind": kind})
                except TypeError as err:
                    raise ValueError(f"options.{kind}: {err}") from None
                except ValueError as err:
                    raise ValueError(f"options.{kind}.{err}") from None


@register("loss", "combined", CombinedConfig)
class CombinedLoss(nn.Module):
    """``sum_t weight_t * loss_t(batch, src, trg, result)``."""

    def __init__(self, cfg: Optional[CombinedConfig] = None, **overrides) -> None:
        super().__init__()
        cfg = configured(CombinedConfig, cfg, **overrides)
        terms, options = dict(cfg.terms), dict(cfg.options or {})
        kinds = {k: v for k, v in schemas("loss").items() if k not in ("none", "combined")}
        unknown = [k for k in list(terms) + list(options) if k not in kinds]
        if unknown or not terms:
            raise ConfigError(f"loss combined: unknown or no terms {unknown or '{}'}; valid "
                              f"terms: {', '.join(sorted(kinds))}")
        self.weights = {k: float(v) for k, v in terms.items()}
        parts = {}
        for kind in terms:
            node = OmegaConf.merge(OmegaConf.structured(kinds[kind]),
                                   {"kind": kind, **dict(options.get(kind) or {})})
            parts[kind] = build("loss", node)
        self.parts = nn.ModuleDict(parts)

    def forward(self, batch: Dict[str, Any], src: FeatureMap, trg: FeatureMap,
                result: MatchResult) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        total = None
        logs: Dict[str, torch.Tensor] = {}
        for kind, part in self.parts.items():
            value, part_logs = part(batch, src, trg, result)
            logs[kind] = value.detach()
            logs.update({f"{kind}/{k}": v for k, v in part_logs.items()})
            term = self.weights[kind] * value
            total = term if total is None else total + term
        return total, logs
