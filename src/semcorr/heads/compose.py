"""A list of heads applied in order: ``kind: compose``, ``heads: [resnet_bottleneck, ...]``.

Feature heads run in list order on the feature maps; score refiners (``refines_similarity``) run in
list order on the similarity volume. ``options`` maps a head kind to keyword arguments that differ
from its defaults, e.g. ``options: {neighbourhood_consensus: {channels: [8, 4]}}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf
from torch import nn

from semcorr.errors import ConfigError
from semcorr.registry import GroupConfig, build, configured, register, schemas
from semcorr.heads.base import Head


@dataclass
class ComposeConfig(GroupConfig):
    heads: List[str] = field(default_factory=list)
    options: Dict[str, Any] = field(default_factory=dict)


@register("head", "compose", ComposeConfig)
class ComposeHead(Head):
    def __init__(self, cfg: Optional[ComposeConfig] = None, dim: int = 0, **overrides) -> None:
        super().__init__()
        cfg = configured(ComposeConfig, cfg, **overrides)
        options = dict(cfg.options or {})
        kinds = {k: v for k, v in schemas("head").items() if k not in ("compose", "none")}
        unknown = [k for k in list(cfg.heads) + list(options) if k not in kinds]
        if unknown:
            raise ConfigError(f"head compose: unknown heads {unknown}; valid: {', '.join(sorted(kinds))}")
        built = []
        for kind in cfg.heads:
            node = OmegaConf.merge(OmegaConf.structured(kinds[kind]),
                                   {"kind": kind, **dict(options.get(kind) or {})})
            built.append(build("head", node, dim=dim))
        self.heads = nn.ModuleList(built)
        self.refines_similarity = any(h.refines_similarity for h in self.heads)

    def forward(self, src, trg):
        for head in self.heads:
            src, trg = head(src, trg)
        return src, trg

    def refine(self, similarity, src, trg):
        for head in self.heads:
            similarity = head.refine(similarity, src, trg)
        return similarity
