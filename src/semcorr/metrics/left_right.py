"""Left/right diagnostics: how often a prediction lands on the keypoint's mirror image instead of
the keypoint (GECO's subsets and swap rate) and PCK where such a confusion is possible
(GeoAware-SC's geometry-aware subset). ``docs/evaluation.md`` gives each definition next to the
reference code it follows; the keypoint tables are in :mod:`semcorr.data.left_right`.

Every scored keypoint (``valid``: visible in the source and the target) falls in one **subset**
(GECO ``reginehartwig/geco`` ``src/evaluation/pck.py`` ``update_counters_pck_alpha``):

- ``n11``: its counterpart is visible in the **target**;
- ``n10``: it has a counterpart, not visible in the target;
- ``n1x``: it has no counterpart.

At each alpha, with the prediction p, its own ground truth g and the counterpart's ground truth
g' (both in the target), ``near(x)`` = "x within alpha * L of p" by the run's PCK rule
(:func:`semcorr.metrics.functional.within`: same L, frame and comparison as PCK; ``<=`` for every
packaged protocol, as GECO):

- ``hat`` (correct): near(g), in every subset;
- ``swap`` (GECO's n̄11): an n11 keypoint with near(g') and **not** near(g);
- ``near both`` (GECO's ñ11): an n11 keypoint with near(g) and near(g').

A keypoint is **geometry-aware** (GeoAware-SC ``utils/eval_spair.py`` ``convert_all_results``)
when it is scored and another member of its group is visible in the target.

Per pair everything is a count (:class:`LeftRightCounts`); :func:`left_right_summary` pools them
per keypoint, per category and over all pairs (GECO), and the geometry-aware PCK also per image
(mean over the pairs that have a geometry-aware keypoint: GeoAware-SC's reported number).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from semcorr.metrics.functional import (KeypointScores, quantize, scoring_frame, squared_distance,
                                        within)
from semcorr.metrics.protocol import Protocol

SUBSETS = ("n11", "n10", "n1x")
CODES = {"n11": 2, "n10": 1, "n1x": 0}  # subset code per keypoint; -1: not scored
NOT_SCORED = -1


@dataclass
class LeftRightEvidence:
    """What the diagnostics need per keypoint of B pairs (K keypoints, padded).

    Attributes:
        subset: (B, K) int8 :data:`CODES` of each scored keypoint, -1 where not scored.
        sym_gt: (B, K, 2) float64 the counterpart's ground truth in the target (original pixels, on
            the 0.0001 grid), NaN where it is not visible there.
        geo: (B, K) bool geometry-aware keypoints.
    """

    subset: torch.Tensor
    sym_gt: torch.Tensor
    geo: torch.Tensor


def evidence_from_batch(batch: Mapping[str, Any], valid: torch.Tensor) -> Optional[LeftRightEvidence]:
    """:class:`LeftRightEvidence` from a collated batch's left/right keys
    (:mod:`semcorr.data.left_right`) and its scored keypoints ``valid`` (B, K); None when the
    batch has none (a dataset without a symmetry table)."""
    if "trg_sym_vis" not in batch:
        return None
    valid = valid.bool().cpu()
    has, vis = batch["kps_has_sym"].bool().cpu(), batch["trg_sym_vis"].bool().cpu()
    subset = torch.where(has, torch.where(vis, 2, 1), 0).to(torch.int8)
    subset = torch.where(valid, subset, torch.full_like(subset, NOT_SCORED))
    sym = quantize(batch["trg_sym_kps"].cpu())
    sym = torch.where(vis[..., None], sym, torch.full_like(sym, float("nan")))
    return LeftRightEvidence(subset, sym, valid & batch["trg_group_vis"].bool().cpu())


@dataclass
class LeftRightCounts:
    """Per pair (N pairs, A alphas), float64 counts.

    Attributes:
        count: (N, 3) keypoints in n11, n10, n1x (:data:`SUBSETS` order).
        correct: (N, 3, A) of them correct.
        swap: (N, A) n11 keypoints swapped. near_both: (N, A) n11 keypoints near both.
        geo_count: (N,) geometry-aware keypoints. geo_correct: (N, A) of them correct.
        n_valid: (N,) scored keypoints.
    """

    count: torch.Tensor
    correct: torch.Tensor
    swap: torch.Tensor
    near_both: torch.Tensor
    geo_count: torch.Tensor
    geo_correct: torch.Tensor
    n_valid: torch.Tensor

    @classmethod
    def cat(cls, parts: Sequence["LeftRightCounts"]) -> "LeftRightCounts":
        return cls(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(cls)))

    def select(self, index: torch.Tensor) -> "LeftRightCounts":
        return LeftRightCounts(*(getattr(self, f.name)[index] for f in fields(self)))


def left_right_counts(scores: KeypointScores, evidence: LeftRightEvidence, protocol: Protocol,
                      trg_imsize: Optional[torch.Tensor] = None) -> LeftRightCounts:
    """Count the subsets, hits, swaps and near-both keypoints of each pair.

    Args:
        scores: the pairs' PCK evidence (:func:`semcorr.metrics.pck_scores` under ``protocol``).
        evidence: the keypoints' subsets, counterparts and geometry-aware flags.
        trg_imsize: (B, 2) (h, w), needed for a protocol with a scoring ``frame``.
    """
    own = scores.correct.cpu()  # (B, K, A)
    pred = scoring_frame(protocol, scores.pred.cpu(), None if trg_imsize is None else trg_imsize.cpu())
    sym = scoring_frame(protocol, evidence.sym_gt, None if trg_imsize is None else trg_imsize.cpu())
    near_sym = within(squared_distance(pred, sym), scores.lengths.cpu(), scores.alphas, scores.strict)
    subset = evidence.subset
    masks = torch.stack([subset == CODES[name] for name in SUBSETS], dim=1)  # (B, 3, K)
    n11 = masks[:, 0, :, None]
    geo = evidence.geo[..., None]
    return LeftRightCounts(
        count=masks.double().sum(-1),
        correct=(masks[..., None] & own[:, None]).double().sum(2),
        swap=(n11 & near_sym & ~own).double().sum(1),
        near_both=(n11 & near_sym & own).double().sum(1),
        geo_count=evidence.geo.double().sum(1),
        geo_correct=(geo & own).double().sum(1),
        n_valid=scores.valid.cpu().double().sum(1),
    )


def _percent(num: np.ndarray, den: float) -> List[Optional[float]]:
    """100 num / den per alpha; None (JSON null) when den is 0: the rate is undefined."""
    return [None if den <= 0 else float(100.0 * v / den) for v in np.atleast_1d(num)]


def _by_alpha(values: List[Optional[float]], alphas: Sequence[float]) -> Dict[str, Optional[float]]:
    return {f"{float(a):g}": v for a, v in zip(alphas, values)}


def _section(c: LeftRightCounts, alphas: Sequence[float], average: str) -> Dict[str, Any]:
    count = c.count.sum(0).numpy()  # (3,)
    correct = c.correct.sum(0).numpy()  # (3, A)
    n = float(count.sum())
    out: Dict[str, Any] = {"n": int(n)}
    for s, name in enumerate(SUBSETS):
        out[name] = {"count": int(count[s]), "share": None if n <= 0 else float(count[s] / n),
                     "pck": _by_alpha(_percent(correct[s], count[s]), alphas)}
    out["pck"] = _by_alpha(_percent(correct.sum(0), n), alphas)
    out["swap_rate"] = _by_alpha(_percent(c.swap.sum(0).numpy(), count[0]), alphas)
    out["near_both_rate"] = _by_alpha(_percent(c.near_both.sum(0).numpy(), count[0]), alphas)
    out["geo_aware"] = _geo_section(c, alphas, average)
    return out


def _geo_section(c: LeftRightCounts, alphas: Sequence[float], average: str) -> Dict[str, Any]:
    has = c.geo_count > 0
    n_geo = float(c.geo_count.sum())
    n_pairs = int(has.sum())
    per_pair = (c.geo_correct[has] / c.geo_count[has, None]).numpy()  # (P, A)
    per_image = [None] * len(alphas) if n_pairs == 0 else [float(100.0 * v) for v in per_pair.mean(0)]
    per_keypoint = _percent(c.geo_correct.sum(0).numpy(), n_geo)
    scored_pairs = int((c.n_valid > 0).sum())
    n_valid = float(c.n_valid.sum())
    return {
        "average": average,
        "pck": _by_alpha(per_image if average == "per_image" else per_keypoint, alphas),
        "pck_per_image": _by_alpha(per_image, alphas),
        "pck_per_keypoint": _by_alpha(per_keypoint, alphas),
        "count": int(n_geo), "n_pairs": n_pairs,
        "pair_share": None if scored_pairs == 0 else n_pairs / scored_pairs,
        "keypoint_share": None if n_valid <= 0 else n_geo / n_valid,
    }


def left_right_summary(counts: LeftRightCounts, category: Sequence[str], alphas: Sequence[float],
                       protocol: Protocol) -> Dict[str, Any]:
    """The ``left_right`` entry of ``metrics.json``: the overall numbers (every pair pooled) and
    ``per_category`` (categories in first-seen order). Each has ``n`` (scored keypoints), ``n11``,
    ``n10``, ``n1x`` (``count``, ``share`` of ``n`` as a fraction, ``pck`` per alpha in percent),
    ``pck`` (all three pooled: GECO's per-point PCK), ``swap_rate`` and ``near_both_rate`` (percent
    of n11 per alpha) and ``geo_aware`` (``pck``: per image or per keypoint as the protocol
    averages (``average``), both also given; ``count``, ``n_pairs``, ``pair_share``, ``keypoint_share``). Undefined
    values (an empty subset) are None."""
    names = list(dict.fromkeys(category))
    index = np.asarray([names.index(c) for c in category]) if len(category) else np.zeros(0, int)
    out = _section(counts, alphas, protocol.average)
    out["per_category"] = {name: _section(counts.select(torch.from_numpy(np.flatnonzero(index == i))),
                                          alphas, protocol.average)
                           for i, name in enumerate(names)}
    return out
