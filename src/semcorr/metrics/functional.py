"""The one PCK rule, as functions (torchmetrics' ``_update`` / ``_compute`` habit).

Everything that says whether a keypoint is correct calls :func:`pck_scores`: the
:class:`~semcorr.metrics.PCK` metric, the PCK-alpha curves, ``predictions.jsonl``, the figures and
the run report. The rule, for one pair under a :class:`~semcorr.metrics.protocol.Protocol`:

1. Coordinates are taken on the 0.0001-px grid that ``predictions.jsonl`` writes
   (:func:`quantize`: ``round(100 x) / 100`` in float64, the double nearest to the written decimal),
   predictions, ground truth and the target box alike, in original target pixels.
2. With ``protocol.frame = F`` they are scaled into an F x F frame: ``x * (F / w)``,
   ``y * (F / h)`` (NC-Net, CATs).
3. L (:func:`pck_lengths`) is max(w, h) of the target box (``bbox``), of the box around the valid
   target keypoints (``bbox_kp``) or of the target image (``image``; F in a frame).
   L must be finite and > 0 for every pair with a valid keypoint (:func:`check_thresholds`).
4. A valid keypoint is correct at alpha when ``dx*dx + dy*dy <= (alpha * L)**2`` (``<`` when
   ``protocol.strict``), in float64 — no square root, so anyone recomputing PCK from
   ``predictions.jsonl`` with these float64 operations gets ``metrics.json`` to the last bit.

Averages (:func:`pck_summary`): ``per_image`` is the mean over pairs of each pair's PCK (each on the
2^-32 grid, :func:`on_pck_grid`, so the sums are exact in any order and over any number of
processes); ``per_keypoint`` is total correct / total valid. Pairs without a valid keypoint count
for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from semcorr.errors import DataError
from semcorr.metrics.protocol import Protocol

COORD_DECIMALS = 4  # predictions.jsonl writes coordinates in 0.0001 px
_SCALE = 10.0 ** COORD_DECIMALS
_GRID = PCK_GRID = 2.0 ** 32  # per-pair PCK is summed in steps of 1 / _GRID


def quantize(values: torch.Tensor) -> torch.Tensor:
    """``values`` in float64 on the 0.0001 grid: ``round(10^4 x) / 10^4``. The division of an integer
    by 10^4 is correctly rounded, so each result is the double nearest to its four-decimal string:
    what a reader of ``predictions.jsonl`` parses. NaN stays NaN."""
    return torch.round(values.double() * _SCALE) / _SCALE


def on_pck_grid(value: float) -> float:
    """A pair's PCK (a fraction) rounded to a multiple of 2^-32, as :class:`PCK` sums it."""
    return round(value * _GRID) / _GRID


def to_frame(points: torch.Tensor, imsize: torch.Tensor, frame: int) -> torch.Tensor:
    """(B, K, 2) (x, y) points of images of size ``imsize`` (B, 2) (h, w), scaled anisotropically
    into a ``frame`` x ``frame`` frame: x * (frame / w), y * (frame / h) (NC-Net, CATs)."""
    hw = imsize.to(points.dtype)
    scale = torch.stack([frame / hw[:, 1], frame / hw[:, 0]], dim=-1)  # (B, 2): x, y
    return points * scale[:, None, :]


def pck_lengths(threshold_by: str, gt: torch.Tensor, valid: torch.Tensor,
                trg_bbox: Optional[torch.Tensor] = None,
                trg_imsize: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B,) reference length L per pair (dtype of ``gt``).

    Args:
        threshold_by: ``bbox`` | ``bbox_kp`` | ``image``.
        gt: (B, K, 2) ground-truth target keypoints (x, y). valid: (B, K) bool.
        trg_bbox: (B, 4) (x1, y1, x2, y2), for ``bbox``. trg_imsize: (B, 2) (h, w), for ``image``.
    A pair without a valid keypoint gets L = 1 under ``bbox_kp`` (it is never counted).
    """
    if threshold_by == "bbox":
        if trg_bbox is None or torch.isnan(trg_bbox).any():
            raise ValueError("threshold_by='bbox' needs an annotated target box for every pair")
        box = trg_bbox.to(gt.dtype)
        return torch.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1])
    if threshold_by == "bbox_kp":
        big = torch.finfo(gt.dtype).max
        lo = torch.where(valid[..., None], gt, torch.full_like(gt, big)).amin(dim=1)
        hi = torch.where(valid[..., None], gt, torch.full_like(gt, -big)).amax(dim=1)
        extent = (hi - lo).clamp_min(0)
        return torch.where(valid.any(1), extent.amax(dim=-1), torch.ones_like(extent[:, 0]))
    if threshold_by == "image":
        if trg_imsize is None:
            raise ValueError("threshold_by='image' needs the target image size")
        return trg_imsize.amax(dim=-1).to(gt.dtype)
    raise ValueError(f"unknown threshold_by {threshold_by!r}")


def check_thresholds(lengths: torch.Tensor, valid: torch.Tensor, threshold_by: str) -> None:
    """A threshold is never <= 0 or non-finite for a pair that is scored (one with a valid
    keypoint): :class:`~semcorr.errors.DataError` otherwise. (A box ``[10, 10, 5, 5]`` gives
    L = -5 and negative "errors"; one keypoint under ``bbox_kp`` gives L = 0 and PCK 0 for a
    perfect match.) Datasets refuse such pairs when loaded (:mod:`semcorr.data.annotations`);
    this guards every other caller of the rule."""
    scored = valid.bool().any(1)
    bad = scored & ~(torch.isfinite(lengths) & (lengths > 0))
    if bool(bad.any()):
        b = int(bad.nonzero()[0])
        raise DataError(f"PCK threshold L = {float(lengths[b]):g} (threshold_by={threshold_by}) for "
                        f"pair {b} of the batch and {int(bad.sum()) - 1} more: L must be > 0; check "
                        "its target box / keypoints")


def within(dist_sq: torch.Tensor, lengths: torch.Tensor, alphas: Sequence[float],
           strict: bool = False) -> torch.Tensor:
    """(..., A) bool: ``dist_sq <= (alpha * L)**2`` (``<`` when ``strict``), float64.

    Args:
        dist_sq: (B, K) squared distances in the scoring frame. lengths: (B,) L.
    """
    alpha = torch.as_tensor([float(a) for a in alphas], dtype=torch.float64, device=dist_sq.device)
    radius = lengths.double()[:, None, None] * alpha  # (B, 1, A)
    radius_sq = radius * radius
    d = dist_sq.double()[..., None]
    return d < radius_sq if strict else d <= radius_sq


def scoring_frame(protocol: Protocol, points: torch.Tensor,
                  trg_imsize: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, K, 2) target points already on the 0.0001 grid (:func:`quantize`) in the protocol's
    scoring frame: as they are, or scaled into its F x F ``frame`` (:func:`to_frame`)."""
    if protocol.frame is None:
        return points
    if trg_imsize is None:
        raise ValueError("a square scoring frame needs the target image size")
    return to_frame(points, trg_imsize, int(protocol.frame))


def squared_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(...,) ``dx*dx + dy*dy`` of (..., 2) points, in their dtype (float64 for the PCK rule)."""
    delta = a - b
    return delta[..., 0] * delta[..., 0] + delta[..., 1] * delta[..., 1]


@dataclass
class KeypointScores:
    """The PCK evidence of a batch of B pairs with K keypoints, from :func:`pck_scores`.

    Attributes:
        pred, gt: (B, K, 2) float64 predicted / true target keypoints (x, y) on the 0.0001-px grid,
            original target pixels (what ``predictions.jsonl`` writes).
        valid: (B, K) bool, the keypoints scored.
        dist_sq: (B, K) float64 squared distance in the scoring frame (0 where not valid).
        lengths: (B,) float64 L in the scoring frame.
        correct: (B, K, A) bool, False where not valid.
        alphas: the A alphas of ``correct``.
        trg_bbox: (B, 4) float64 target box on the 0.0001 grid (NaN where none), or None.
        strict: the protocol's comparison (``<`` when True), for deciding other alphas
            (:func:`within`).
    """

    pred: torch.Tensor
    gt: torch.Tensor
    valid: torch.Tensor
    dist_sq: torch.Tensor
    lengths: torch.Tensor
    correct: torch.Tensor
    alphas: Tuple[float, ...]
    trg_bbox: Optional[torch.Tensor] = None
    strict: bool = False

    @property
    def norm_error(self) -> torch.Tensor:
        """(B, K) float64 distance / L in the scoring frame; NaN where not valid."""
        err = self.dist_sq.sqrt() / self.lengths[:, None]
        return err.masked_fill(~self.valid, float("nan"))

    def counts(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, A) float64 correct keypoints and (B,) float64 valid keypoints per pair."""
        return self.correct.double().sum(1), self.valid.double().sum(1)


def pck_scores(protocol: Protocol, alphas: Sequence[float], pred: torch.Tensor, gt: torch.Tensor,
               valid: torch.Tensor, trg_bbox: Optional[torch.Tensor] = None,
               trg_imsize: Optional[torch.Tensor] = None) -> KeypointScores:
    """Score predictions under ``protocol`` (the rule in the module docstring).

    Args:
        pred, gt: (B, K, 2) predicted / true target keypoints (x, y), original target pixels.
        valid: (B, K) bool. trg_bbox: (B, 4) (x1, y1, x2, y2), needed for ``bbox``.
        trg_imsize: (B, 2) (h, w), needed for ``image`` and for a scoring ``frame``.
    """
    valid = valid.bool()
    pred_q, gt_q = quantize(pred), quantize(gt)
    box = None if trg_bbox is None else quantize(trg_bbox)
    pred_s, gt_s = scoring_frame(protocol, pred_q, trg_imsize), scoring_frame(protocol, gt_q, trg_imsize)
    box_s, size_s = box, trg_imsize
    if protocol.frame is not None:
        f = int(protocol.frame)
        if box is not None:
            box_s = to_frame(box.view(-1, 2, 2), trg_imsize, f).view(-1, 4)
        size_s = torch.full_like(trg_imsize, f)
    lengths = pck_lengths(protocol.threshold_by, gt_s, valid, box_s, size_s)
    check_thresholds(lengths, valid, protocol.threshold_by)
    dist_sq = squared_distance(pred_s, gt_s)
    dist_sq = torch.where(valid, dist_sq, torch.zeros_like(dist_sq))
    correct = within(dist_sq, lengths, alphas, protocol.strict) & valid[..., None]
    return KeypointScores(pred=pred_q, gt=gt_q, valid=valid, dist_sq=dist_sq, lengths=lengths,
                          correct=correct, alphas=tuple(float(a) for a in alphas), trg_bbox=box,
                          strict=protocol.strict)


# ------------------------------------------------------------------------------------------------
# _update / _compute
# ------------------------------------------------------------------------------------------------
@dataclass
class PCKStates:
    """Sums over pairs, per category (C) and alpha (A), all float64 (exact for counts and for
    per-pair PCK on the 2^-32 grid): ``kp_correct`` (C, A), ``kp_total`` (C,), ``img_pck_sum``
    (C, A), ``img_count`` (C,)."""

    kp_correct: torch.Tensor
    kp_total: torch.Tensor
    img_pck_sum: torch.Tensor
    img_count: torch.Tensor

    @classmethod
    def zeros(cls, n_categories: int, n_alphas: int, device=None) -> "PCKStates":
        z = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)  # noqa: E731
        return cls(z(n_categories, n_alphas), z(n_categories), z(n_categories, n_alphas),
                   z(n_categories))


def pck_update(states: PCKStates, n_correct: torch.Tensor, n_valid: torch.Tensor,
               category_idx: torch.Tensor) -> None:
    """Add pairs to ``states`` in place.

    Args:
        n_correct: (B, A) correct keypoints per pair. n_valid: (B,) valid keypoints per pair.
        category_idx: (B,) long.
    """
    n_correct, n_valid = n_correct.double(), n_valid.double()
    category_idx = category_idx.to(states.kp_total.device).long()
    has = n_valid > 0
    per_pair = torch.round(n_correct / n_valid.clamp_min(1)[:, None] * _GRID) / _GRID
    states.kp_correct.index_add_(0, category_idx, n_correct.to(states.kp_correct.device))
    states.kp_total.index_add_(0, category_idx, n_valid.to(states.kp_total.device))
    states.img_pck_sum.index_add_(0, category_idx[has], per_pair[has].to(states.img_pck_sum.device))
    states.img_count.index_add_(0, category_idx[has], torch.ones_like(n_valid[has]).to(states.img_count.device))


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, 100.0 * num / den.clamp_min(1e-12), torch.full_like(num, float("nan")))


def pck_summary(states: PCKStates, protocol: Protocol, alphas: Sequence[float],
                categories: Sequence[str]) -> Dict[str, object]:
    """PCK in percent from summed states: ``pck`` (the protocol's headline), ``pck_pooled``,
    ``pck_category_mean``, ``pck_per_keypoint``, ``pck_per_image``, ``pck_per_category``
    (present categories only), ``n_pairs``, ``n_keypoints``; alphas as their decimal strings."""
    def as_dict(values: torch.Tensor) -> Dict[str, float]:
        return {f"{float(a):g}": float(v) for a, v in zip(alphas, values.tolist())}

    s = states
    per_kp = _ratio(s.kp_correct.sum(0), s.kp_total.sum())
    per_img = _ratio(s.img_pck_sum.sum(0), s.img_count.sum())
    if protocol.average == "per_keypoint":
        per_cat = _ratio(s.kp_correct, s.kp_total[:, None])
    else:
        per_cat = _ratio(s.img_pck_sum, s.img_count[:, None])
    present = (s.kp_total > 0).tolist()
    pooled = per_kp if protocol.average == "per_keypoint" else per_img
    shown = [i for i, p in enumerate(present) if p]
    category_mean = per_cat[shown].mean(0) if shown else torch.full_like(pooled, float("nan"))
    return {
        "pck": as_dict(pooled if protocol.headline == "pooled" else category_mean),
        "pck_pooled": as_dict(pooled),
        "pck_category_mean": as_dict(category_mean),
        "pck_per_keypoint": as_dict(per_kp),
        "pck_per_image": as_dict(per_img),
        "pck_per_category": {name: as_dict(per_cat[i]) for i, name in enumerate(categories)
                             if present[i]},
        "n_pairs": int(s.img_count.sum().item()),
        "n_keypoints": int(s.kp_total.sum().item()),
    }


def pck_curve_counts(scores: KeypointScores, alphas: Sequence[float]) -> torch.Tensor:
    """(B, A) int64 correct keypoints per pair at each of ``alphas`` (the curve's grid), by the
    same rule as :func:`pck_scores`."""
    hits = within(scores.dist_sq, scores.lengths, alphas, scores.strict) & scores.valid[..., None]
    return hits.sum(1)


def correct_at(dist_sq: torch.Tensor, length: float, valid: torch.Tensor, alpha: float,
               strict: bool = False) -> torch.Tensor:
    """(K,) bool: the keypoints of one pair correct at ``alpha`` (the PCK rule, for an alpha the
    metric was not given, e.g. a figure's ``plots.alpha``).

    Args:
        dist_sq: (K,) squared distances in the scoring frame. length: L. valid: (K,) bool.
    """
    hit = within(dist_sq[None], torch.tensor([float(length)], dtype=torch.float64), [alpha], strict)
    return hit[0, :, 0] & valid.bool()


def summarize_pairs(n_correct: torch.Tensor, n_valid: torch.Tensor, category: List[str],
                    protocol: Protocol, alphas: Sequence[float]) -> Dict[str, object]:
    """:func:`pck_summary` of pairs given as (N, A) correct counts, (N,) valid counts and their
    category names (categories in first-seen order)."""
    categories = list(dict.fromkeys(category))
    index = {c: i for i, c in enumerate(categories)}
    states = PCKStates.zeros(len(categories), len(alphas))
    idx = torch.tensor([index[c] for c in category], dtype=torch.long)
    if len(category):
        pck_update(states, n_correct, n_valid, idx)
    return pck_summary(states, protocol, alphas, categories)
