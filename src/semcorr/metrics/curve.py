"""PCK as a function of alpha: the ``pck_curve`` of ``metrics.json`` and ``pck_curve.png``.

Each pair contributes its correct-keypoint counts at every alpha of a grid
(:func:`semcorr.metrics.functional.pck_curve_counts`, the one PCK rule), so a curve costs (pairs x
grid) integers however many keypoints a pair has (dense TSS queries), and its value at an alpha
of the protocol equals the metric's there.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import numpy as np
import torch

from semcorr.metrics.functional import summarize_pairs
from semcorr.metrics.protocol import Protocol


def alpha_grid(max_alpha: float = 0.2, steps: int = 41) -> np.ndarray:
    """``steps`` alphas evenly spaced in [0, max_alpha]."""
    return np.linspace(0.0, max_alpha, steps)


def pck_curve(n_correct: torch.Tensor, n_valid: torch.Tensor, alphas: Sequence[float],
              average: str = "per_image") -> Tuple[np.ndarray, np.ndarray]:
    """PCK (in percent) at each alpha.

    Args:
        n_correct: (N, A) correct keypoints of each pair at each alpha.
        n_valid: (N,) valid keypoints of each pair (pairs with none are skipped).
        average: ``per_image`` (mean over pairs of each pair's PCK) or ``per_keypoint``.
    Returns:
        alphas (A,), pck (A,) (NaN without a pair).
    """
    a = np.asarray(alphas, dtype=np.float64)
    if len(n_valid) == 0:
        return a, np.full(a.shape, np.nan)
    summary = summarize_pairs(torch.as_tensor(n_correct), torch.as_tensor(n_valid),
                              ["all"] * len(n_valid), Protocol(average=average), a.tolist())
    return a, np.array(list(summary["pck_pooled"].values()), dtype=np.float64)


def curve_entry(n_correct: torch.Tensor, n_valid: torch.Tensor, alphas: Sequence[float],
                average: str) -> Dict[str, Any]:
    """The ``pck_curve`` entry of ``metrics.json``: ``{"alphas": [...], "pck": [...], "average",
    "n_pairs"}`` (pooled over all pairs, whatever the protocol's headline)."""
    a, pck = pck_curve(n_correct, n_valid, alphas, average)
    return {"alphas": [round(float(x), 6) for x in a], "pck": [float(v) for v in pck],
            "average": average, "n_pairs": int((torch.as_tensor(n_valid) > 0).sum())}
