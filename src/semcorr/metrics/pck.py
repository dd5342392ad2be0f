"""PCK: a predicted keypoint is correct if it lies within alpha * L of the ground truth.

L depends on the protocol (``threshold_by``):
- ``bbox``: max(w, h) of the annotated target bounding box (SPair-71k, AP-10K);
- ``bbox_kp``: max(w, h) of the box around the valid target keypoints (PF-WILLOW);
- ``image``: max(w, h) of the target image (PF-PASCAL, TSS).
All in the original target image frame, or, with ``frame=F``, in an F x F frame into which
keypoints, predictions and boxes are scaled anisotropically (NC-Net: 224, CATs: 256; ``image``
then gives L = F). ``strict`` compares with ``<`` instead of ``<=``.

Averaging (``average``):
- ``per_image``: PCK of each pair (over its valid keypoints), then the mean over pairs;
- ``per_keypoint``: total correct keypoints / total valid keypoints.
The headline (``headline``) is the value over all pairs (``pooled``) or the unweighted mean of
the per-category values (``category_mean``, the TSS papers' "Avg."). See
:mod:`semcorr.metrics.protocol` for the named protocols.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
from torchmetrics import Metric

from semcorr.metrics.protocol import AVERAGES, THRESHOLD_BY, check_protocol  # noqa: F401

_GRID = 2.0 ** 32  # per-pair PCK is summed in steps of 1 / _GRID (see PCK)


def on_pck_grid(value: float) -> float:
    """A pair's PCK (a fraction) rounded to a multiple of 2^-32, as :class:`PCK` sums it."""
    return round(value * _GRID) / _GRID


def pck_thresholds(
    threshold_by: str,
    trg_kps: torch.Tensor,
    valid: torch.Tensor,
    trg_bbox: Optional[torch.Tensor] = None,
    trg_imsize: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """(B,) reference length L per pair.

    Args:
        trg_kps: (B, K, 2) ground-truth target keypoints (x, y), original frame.
        valid: (B, K) bool.
        trg_bbox: (B, 4) (x1, y1, x2, y2), for ``bbox``.
        trg_imsize: (B, 2) (h, w), for ``image``.
    """
    if threshold_by == "bbox":
        if trg_bbox is None or torch.isnan(trg_bbox).any():
            raise ValueError("threshold_by='bbox' needs an annotated target box for every pair")
        return torch.maximum(trg_bbox[:, 2] - trg_bbox[:, 0], trg_bbox[:, 3] - trg_bbox[:, 1])
    if threshold_by == "bbox_kp":
        big = torch.finfo(trg_kps.dtype).max
        lo = torch.where(valid[..., None], trg_kps, torch.full_like(trg_kps, big)).amin(dim=1)
        hi = torch.where(valid[..., None], trg_kps, torch.full_like(trg_kps, -big)).amax(dim=1)
        extent = (hi - lo).clamp_min(0)
        return torch.where(valid.any(1), extent.amax(dim=-1), torch.ones_like(extent[:, 0]))
    if threshold_by == "image":
        if trg_imsize is None:
            raise ValueError("threshold_by='image' needs the target image size")
        return trg_imsize.amax(dim=-1).to(trg_kps.dtype)
    raise ValueError(f"unknown threshold_by {threshold_by!r}; valid: {', '.join(THRESHOLD_BY)}")


def to_frame(points: torch.Tensor, imsize: torch.Tensor, frame: int) -> torch.Tensor:
    """(B, K, 2) (x, y) points of images of size ``imsize`` (B, 2) (h, w), scaled anisotropically
    into a ``frame`` x ``frame`` frame: x * frame / w, y * frame / h (NC-Net, CATs)."""
    hw = imsize.to(points.dtype)
    scale = torch.stack([frame / hw[:, 1], frame / hw[:, 0]], dim=-1)  # (B, 2): x, y
    return points * scale[:, None, :]


def pck_inputs(
    threshold_by: str, pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor,
    trg_bbox: Optional[torch.Tensor] = None, trg_imsize: Optional[torch.Tensor] = None,
    frame: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Predictions, ground truth and L in the frame PCK is scored in.

    Args:
        pred, gt: (B, K, 2) predicted / true target keypoints, original target frame.
        valid: (B, K) bool. trg_bbox: (B, 4) (x1, y1, x2, y2). trg_imsize: (B, 2) (h, w).
        frame: None (original pixels) or F (scale everything into F x F; needs ``trg_imsize``).
    Returns:
        pred (B, K, 2), gt (B, K, 2) float, lengths (B,).
    """
    pred, gt = pred.float(), gt.float()
    if frame is None:
        return pred, gt, pck_thresholds(threshold_by, gt, valid, trg_bbox, trg_imsize)
    if trg_imsize is None:
        raise ValueError("a square scoring frame needs the target image size")
    pred, gt = to_frame(pred, trg_imsize, frame), to_frame(gt, trg_imsize, frame)
    if trg_bbox is not None and threshold_by == "bbox":
        trg_bbox = to_frame(trg_bbox.float().view(-1, 2, 2), trg_imsize, frame).view(-1, 4)
    square = torch.full_like(trg_imsize, int(frame))
    return pred, gt, pck_thresholds(threshold_by, gt, valid, trg_bbox, square)


def pck_correct(
    pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, lengths: torch.Tensor,
    alphas: Sequence[float], strict: bool = False,
) -> torch.Tensor:
    """(B, K, A) bool: keypoint k of pair b is within alphas[a] * lengths[b] (``<=``; ``<`` when
    ``strict``), False where invalid."""
    dist = torch.linalg.vector_norm(pred.float() - gt.float(), dim=-1)  # (B, K)
    alpha = torch.as_tensor(list(alphas), dtype=dist.dtype, device=dist.device)
    thr = lengths.to(dist.dtype)[:, None, None] * alpha[None, None, :]
    inside = dist[..., None] < thr if strict else dist[..., None] <= thr
    return inside & valid[..., None]


class PCK(Metric):
    """PCK over many batches and processes, overall and per category, in percent.

    States are sums (``dist_reduce_fx="sum"``) that float64 holds exactly, so the result is the
    same bits however the pairs are split across batches and processes (sharded without padding,
    see :class:`semcorr.data.samplers.ShardSampler`), in whatever order they are added:
    ``kp_correct`` (C, A) / ``kp_total`` (C,) for per-keypoint averaging (counts), ``img_pck_sum``
    (C, A) / ``img_count`` (C,) for per-image averaging (pairs with no valid keypoint are not
    counted). Each pair's PCK is rounded to a multiple of 2^-32 (below 1.2e-8 percentage points)
    before it is summed, which keeps the sums exact up to 2^21 pairs per category.

    ``compute()`` returns ``{"pck": {alpha: value}, "pck_per_category": {name: {alpha: value}},
    "pck_pooled": ..., "pck_category_mean": ..., "pck_per_keypoint": ..., "pck_per_image": ...,
    "n_pairs": int, "n_keypoints": int}`` with alphas as their decimal strings. ``pck_pooled``
    is over all pairs under the configured ``average``, ``pck_category_mean`` the unweighted mean
    of ``pck_per_category``, and ``pck`` is the one ``headline`` names.

    Args:
        alphas, threshold_by, average, strict, frame, headline: the protocol
            (:mod:`semcorr.metrics.protocol`).
        categories: category names, indexed by ``category_idx`` in :meth:`update`.
    """

    full_state_update = False

    def __init__(self, alphas: Sequence[float] = (0.05, 0.1, 0.15), threshold_by: str = "bbox",
                 average: str = "per_image", categories: Sequence[str] = ("all",),
                 strict: bool = False, frame: Optional[int] = None, headline: str = "pooled",
                 **kwargs) -> None:
        super().__init__(**kwargs)
        check_protocol({"threshold_by": threshold_by, "average": average, "direction": "src_to_trg",
                        "headline": headline, "strict": bool(strict), "frame": frame})
        self.alphas = [float(a) for a in alphas]
        self.threshold_by = threshold_by
        self.average = average
        self.strict = bool(strict)
        self.frame = None if frame is None else int(frame)
        self.headline = headline
        self.categories = list(categories)
        c, a = len(self.categories), len(self.alphas)
        self.add_state("kp_correct", torch.zeros(c, a, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("kp_total", torch.zeros(c, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("img_pck_sum", torch.zeros(c, a, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("img_count", torch.zeros(c, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor,
               category_idx: Optional[torch.Tensor] = None, trg_bbox: Optional[torch.Tensor] = None,
               trg_imsize: Optional[torch.Tensor] = None) -> None:
        """Add a batch.

        Args:
            pred, gt: (B, K, 2) predicted / true target keypoints, original target frame.
            valid: (B, K) bool. category_idx: (B,) long (default 0).
            trg_bbox: (B, 4) for ``bbox``; trg_imsize: (B, 2) (h, w) for ``image``.
        """
        pred, gt, lengths = pck_inputs(self.threshold_by, pred, gt, valid, trg_bbox, trg_imsize,
                                       self.frame)
        correct = pck_correct(pred, gt, valid, lengths, self.alphas, self.strict).double()  # (B, K, A)
        n_valid = valid.double().sum(1)  # (B,)
        if category_idx is None:
            category_idx = torch.zeros(pred.shape[0], dtype=torch.long, device=pred.device)
        category_idx = category_idx.to(self.kp_total.device).long()
        per_pair_correct = correct.sum(1)  # (B, A)
        has = n_valid > 0
        per_pair_pck = per_pair_correct / n_valid.clamp_min(1)[:, None]
        per_pair_pck = torch.round(per_pair_pck * _GRID) / _GRID  # on_pck_grid, batched: exact sums
        self.kp_correct.index_add_(0, category_idx, per_pair_correct)
        self.kp_total.index_add_(0, category_idx, n_valid)
        self.img_pck_sum.index_add_(0, category_idx[has], per_pair_pck[has])
        self.img_count.index_add_(0, category_idx[has], torch.ones_like(n_valid[has]))

    @staticmethod
    def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return torch.where(den > 0, 100.0 * num / den.clamp_min(1e-12), torch.full_like(num, float("nan")))

    def _as_dict(self, values: torch.Tensor) -> Dict[str, float]:
        return {f"{a:g}": float(v) for a, v in zip(self.alphas, values.tolist())}

    def compute(self) -> Dict[str, object]:
        per_kp = self._ratio(self.kp_correct.sum(0), self.kp_total.sum())
        per_img = self._ratio(self.img_pck_sum.sum(0), self.img_count.sum())
        if self.average == "per_keypoint":
            per_cat = self._ratio(self.kp_correct, self.kp_total[:, None])
        else:
            per_cat = self._ratio(self.img_pck_sum, self.img_count[:, None])
        present = (self.kp_total > 0).tolist()
        pooled = per_kp if self.average == "per_keypoint" else per_img
        shown = [i for i, p in enumerate(present) if p]
        category_mean = (per_cat[shown].mean(0) if shown
                         else torch.full_like(pooled, float("nan")))
        return {
            "pck": self._as_dict(pooled if self.headline == "pooled" else category_mean),
            "pck_pooled": self._as_dict(pooled),
            "pck_category_mean": self._as_dict(category_mean),
            "pck_per_keypoint": self._as_dict(per_kp),
            "pck_per_image": self._as_dict(per_img),
            "pck_per_category": {
                name: self._as_dict(per_cat[i]) for i, name in enumerate(self.categories) if present[i]
            },
            "n_pairs": int(self.img_count.sum().item()),
            "n_keypoints": int(self.kp_total.sum().item()),
        }
