"""The matcher contract: two feature maps in, a (B, Ns, Nt) score matrix out; and the costs the
matchers share."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from semcorr.backbones.base import FeatureMap
from semcorr.errors import NumericalError
from semcorr.matchers.sinkhorn import MARGINALS
from semcorr.matchers.transfer import TransferConfig
from semcorr.precision import autocast_off
from semcorr.registry import GroupConfig


@dataclass
class MatcherConfig(GroupConfig):
    """Fields every matcher config has; ``transfer`` is read by the pipeline, not the matcher."""

    transfer: TransferConfig = field(default_factory=TransferConfig)


@dataclass
class MatchResult:
    """Scores between every source cell i and target cell j.

    Attributes:
        scores: (B, Ns, Nt). Larger is better. For ``nn`` these are cosine similarities; for the
            OT family they are log of the transport plan (rows sum to the source marginal).
            Invalid (padded) target cells hold ``-inf``.
        extras: matcher-specific diagnostics (e.g. ``objective`` per solver step).
    """

    scores: torch.Tensor
    extras: Dict[str, Any] = field(default_factory=dict)


class Matcher(nn.Module):
    """Base class of matchers.

    ``forward(src, trg, sym_pairs=None, similarity=None)``:
        src, trg: :class:`FeatureMap` of the source and target images (same batch size B).
        sym_pairs: optional (B, S, 2) long, pairs of *source cell indices* (row-major in the
            source grid) that are left/right symmetric; -1 marks padding. Matchers without a
            symmetry term ignore it.
        similarity: optional (B, Ns, Nt) similarity to match on instead of the cosine
            similarity of the features (-inf at invalid target cells), e.g. one refined by a
            neighbourhood-consensus head (:meth:`semcorr.heads.Head.refine`).
    returns :class:`MatchResult`.
    """

    def forward(
        self, src: FeatureMap, trg: FeatureMap, sym_pairs: Optional[torch.Tensor] = None,
        similarity: Optional[torch.Tensor] = None,
    ) -> MatchResult:
        raise NotImplementedError


def score_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype similarities are computed in: float64 for float64 input, else float32 (half
    precision features are upcast; docs/backbones.md, "Precision")."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def cosine_similarity(src: FeatureMap, trg: FeatureMap) -> torch.Tensor:
    """(B, Ns, Nt) cosine similarity of L2-normalised features; -inf at invalid target cells.

    Computed in float32 (float64 for float64 features) with autocast off, so a bf16 / fp16
    autocast around it (``trainer.precision=bf16-mixed``) leaves every score, and the argmax
    and softmax taken of it, as in float32."""
    dt = score_dtype(src.features)
    with autocast_off(src.features.device):
        a = nn.functional.normalize(src.flat().to(dt), dim=-1)
        b = nn.functional.normalize(trg.flat().to(dt), dim=-1)
        sim = a @ b.transpose(1, 2)
    if trg.valid is not None:
        sim = sim.masked_fill(~trg.valid.flatten(1)[:, None, :], float("-inf"))
    return sim


def cosine_cost(src: FeatureMap, trg: FeatureMap) -> torch.Tensor:
    """(B, Ns, Nt) C = 1 - cos(y_i, ŷ_j), computed in float32 (or float64 for float64 input),
    autocast off."""
    dt = score_dtype(src.features)
    with autocast_off(src.features.device):
        a = nn.functional.normalize(src.flat().to(dt), dim=-1)
        b = nn.functional.normalize(trg.flat().to(dt), dim=-1)
        return 1.0 - a @ b.transpose(1, 2)


def similarity_cost(similarity: torch.Tensor) -> torch.Tensor:
    """(B, Ns, Nt) C = 1 - s for a given (e.g. consensus-refined) similarity; -inf entries (invalid
    target cells, which the solvers mask anyway) become a finite cost of 2."""
    s = similarity.to(score_dtype(similarity))
    return 1.0 - torch.where(torch.isfinite(s), s, torch.full_like(s, -1.0))


def match_cost(src: FeatureMap, trg: FeatureMap, similarity: Optional[torch.Tensor]) -> torch.Tensor:
    """The OT family's cost: from ``similarity`` when given, else the cosine cost."""
    return cosine_cost(src, trg) if similarity is None else similarity_cost(similarity)


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


def check_options(opts: Any) -> None:
    """Raise ``ValueError`` naming the setting when an OT-family option is out of range (tensor
    values, given to the solvers directly, are not checked)."""
    if opts.marginal not in MARGINALS:
        raise ValueError(f"marginal must be one of {MARGINALS}, got {opts.marginal!r}")
    for f in fields(opts):
        value = getattr(opts, f.name)
        if isinstance(value, torch.Tensor) or isinstance(value, (bool, str)) or value is None:
            continue
        if f.name in ("eps", "step") and not float(value) > 0:
            raise ValueError(f"{f.name} must be > 0, got {value}")
        if f.name in ("n_steps", "sinkhorn_iters", "checkpoint_every", "ref_cells"):
            low = 0 if f.name == "n_steps" else 1
            if int(value) != value or value < low:
                raise ValueError(f"{f.name} must be an integer >= {low}, got {value}")
        elif isinstance(value, (int, float)) and value < 0:
            raise ValueError(f"{f.name} must be >= 0, got {value}")


def _where(ids: Optional[Sequence[str]], b: int, what: str) -> str:
    return f"{what} {ids[b]!r}" if ids is not None and b < len(ids) else f"{what} {b} of the batch"


def values_readable(t: torch.Tensor) -> bool:
    """Whether the host may read values of ``t`` now (not a ``meta`` tensor, not while
    ``torch.compile`` traces, not during CUDA-graph capture)."""
    if t.device.type == "meta" or torch.compiler.is_compiling():
        return False
    return not (t.is_cuda and torch.cuda.is_current_stream_capturing())


def check_finite_inputs(src: FeatureMap, trg: FeatureMap, src_ids: Optional[Sequence[str]] = None,
                        trg_ids: Optional[Sequence[str]] = None,
                        similarity: Optional[torch.Tensor] = None) -> None:
    """Raise :class:`NumericalError` naming the image when features (or a given similarity)
    about to enter a matcher hold NaN or Inf.

    One non-finite value makes every entry of an OT / GW-OT plan NaN (the solvers mix all cells),
    after which argmax sends every keypoint to cell 0: a low PCK with no warning. Such values come
    from a broken image, weights or an overflow (``trainer.precision``); they are refused, never
    masked. ``similarity`` may hold ``-inf`` (padded target cells), not NaN or ``+inf``.

    Reading the verdict is one host synchronisation per call, outside any solver loop; where values
    cannot be read (``meta`` tensors, ``torch.compile`` tracing, CUDA-graph capture) nothing is
    checked.
    """
    if not values_readable(src.features):
        return
    for fmap, ids, side in ((src, src_ids, "source image"), (trg, trg_ids, "target image")):
        bad = ~torch.isfinite(fmap.features).all(dim=1)  # (B, h, w) cells with any bad channel
        if bool(bad.any()):
            b = int(bad.flatten(1).any(1).nonzero()[0])
            n, total = int(bad[b].sum()), bad[b].numel()
            cells = [tuple(c) for c in bad[b].nonzero().tolist()[:3]]
            where = ", ".join(f"({r}, {c})" for r, c in cells) + (", ..." if n > len(cells) else "")
            raise NumericalError(
                f"non-finite features (NaN or Inf) in {n} of {total} cells of {_where(ids, b, side)} "
                f"entering the matcher (cells (row, column): {where}); check the image file, "
                "backbone.weights and trainer.precision")
    if similarity is not None:
        bad = torch.isnan(similarity) | (similarity == float("inf"))
        if bool(bad.any()):
            b = int(bad.flatten(1).any(1).nonzero()[0])
            raise NumericalError(f"non-finite similarity (NaN or +Inf) from the head for "
                                 f"{_where(src_ids, b, 'source image')} entering the matcher")


def check_finite_scores(result: MatchResult, matcher: str,
                        pair_ids: Optional[Sequence[str]] = None) -> None:
    """Raise :class:`NumericalError` naming the pair when a matcher's scores hold NaN or +Inf
    (``-inf`` marks padded target cells and is allowed): a plan is never silently non-finite."""
    scores = result.scores
    bad = torch.isnan(scores) | (scores == float("inf"))
    if bool(bad.any()):
        b = int(bad.flatten(1).any(1).nonzero()[0])
        raise NumericalError(f"matcher {matcher} returned non-finite scores (NaN or +Inf) for "
                             f"{_where(pair_ids, b, 'pair')} from finite features; check its settings "
                             "(e.g. eps, lam) and trainer.precision")
