"""Checks of a pair's annotations, run when a dataset is loaded (:meth:`PairDataset.finalize`).

A degenerate annotation does not crash a run; it quietly gives a wrong PCK: a target box
``[10, 10, 5, 5]`` makes the threshold negative, a single keypoint under ``threshold_by=bbox_kp``
makes it 0 (PCK 0 for a perfect match), a keypoint at 1e308 is "valid" and writes ``Infinity``.
Each function returns the first problem as a phrase (None when there is none); the dataset turns
it into an error naming the annotation file, or skips the pair with a counted warning
(``data.bad_pairs=skip``).

The rules (``docs/datasets.md``):

- a pair lists the same number K >= 1 of keypoints on both sides, as (K, 2) coordinates;
- a valid keypoint is finite and lies inside its image, up to ``margin`` x the image's longer
  side beyond its border (pixel-index convention: the image covers [-0.5, w - 0.5]);
- a box is four finite numbers ``x1, y1, x2, y2`` with ``x2 > x1`` and ``y2 > y1``;
- an image is at least :data:`MIN_IMAGE_SIDE` pixels on each side;
- under the run's protocol, every pair with a valid keypoint has a threshold L > 0: a target box
  for ``bbox``, valid target keypoints that span more than a point for ``bbox_kp``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

MIN_IMAGE_SIDE = 8  # px; smaller is a placeholder or a broken file, not a photograph
SIDES = (("src", "source"), ("trg", "target"))


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def box_problem(box: Optional[Sequence[float]], which: str) -> Optional[str]:
    """Whether a box (x1, y1, x2, y2) is four finite numbers with positive width and height."""
    if box is None:
        return None
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    shown = "[" + ", ".join(_fmt(v) for v in b) + "]"
    if b.size != 4 or not np.isfinite(b).all():
        return f"the {which} box {shown} is not four finite numbers x1, y1, x2, y2"
    if not (b[2] > b[0] and b[3] > b[1]):
        return f"the {which} box {shown} has no area (needs x2 > x1 and y2 > y1)"
    return None


def keypoint_problem(kps: np.ndarray, valid: np.ndarray, size_hw: Tuple[int, int], which: str,
                     image: str, margin: float) -> Optional[str]:
    """Whether every valid keypoint of one side is finite and inside its ``size_hw`` image (up to
    ``margin`` x the longer side beyond the border)."""
    h, w = size_hw
    pts = kps[valid]
    idx = np.nonzero(valid)[0]
    finite = np.isfinite(pts).all(1)
    if not finite.all():
        k = int(idx[~finite][0])
        return (f"{which} keypoint {k} is not finite ({_fmt(kps[k, 0])}, {_fmt(kps[k, 1])}) but "
                "marked valid")
    slack = margin * max(h, w)
    lo, hi = -0.5 - slack, np.array([w - 0.5 + slack, h - 0.5 + slack])
    outside = ((pts < lo) | (pts > hi)).any(1)
    if outside.any():
        k = int(idx[outside][0])
        return (f"{which} keypoint {k} ({_fmt(kps[k, 0])}, {_fmt(kps[k, 1])}) lies outside the "
                f"{w}x{h} image {image} (more than data.keypoint_margin={margin:g} of its longer "
                "side beyond the border)")
    return None


def shape_problem(src_kps: np.ndarray, trg_kps: np.ndarray, valid: np.ndarray) -> Optional[str]:
    """Whether both sides list the same K >= 1 keypoints as (K, 2), with a (K,) validity."""
    k = src_kps.shape[0] if src_kps.ndim == 2 else -1
    if src_kps.ndim != 2 or trg_kps.ndim != 2 or src_kps.shape[1:] != (2,) or trg_kps.shape[1:] != (2,):
        return (f"keypoints must be lists of [x, y] pairs, got shapes {tuple(src_kps.shape)} and "
                f"{tuple(trg_kps.shape)}")
    if k == 0 and trg_kps.shape[0] == 0:
        return "it lists no keypoints"
    if trg_kps.shape[0] != k or valid.shape != (k,):
        return (f"{k} source keypoints, {trg_kps.shape[0]} target keypoints and "
                f"{valid.shape[0] if valid.ndim else 0} validity flags do not match")
    return None


def image_problem(size_hw: Tuple[int, int], image: str) -> Optional[str]:
    h, w = size_hw
    if min(h, w) < MIN_IMAGE_SIDE:
        return f"the image {image} is {w}x{h} px (at least {MIN_IMAGE_SIDE} px a side are needed)"
    return None


def threshold_problem(trg_kps: np.ndarray, valid: np.ndarray, trg_box: Optional[Sequence[float]],
                      threshold_by: str) -> Optional[str]:
    """Whether a pair with valid keypoints gets a threshold L > 0 under ``threshold_by`` (the
    sides as the protocol serves them: ``trg`` is the side predictions are scored on)."""
    if not valid.any():
        return None
    if threshold_by == "bbox" and trg_box is None:
        return "it has no target box, which metric.threshold_by=bbox needs"
    if threshold_by == "bbox_kp":
        pts = trg_kps[valid]
        extent = float((pts.max(0) - pts.min(0)).max())
        if not extent > 0:
            return (f"its {len(pts)} valid target keypoint(s) span {extent:g} px, so "
                    "metric.threshold_by=bbox_kp gives a threshold L = 0")
    return None
