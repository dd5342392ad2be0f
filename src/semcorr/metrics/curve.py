"""PCK as a function of alpha, from per-pair normalised errors (``dist / L``, see
:mod:`semcorr.metrics.pck`): the ``pck_curve`` of ``metrics.json`` and ``pck_curve.png``."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch


def alpha_grid(max_alpha: float = 0.2, steps: int = 41) -> np.ndarray:
    return np.linspace(0.0, max_alpha, steps)


def pck_curve(errors: Sequence[torch.Tensor], alphas: Optional[Sequence[float]] = None,
              average: str = "per_image", strict: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """PCK (in percent) at each alpha from per-pair normalised errors.

    Args:
        errors: one 1-D tensor per pair holding ``dist / L`` of its valid keypoints (what
            :class:`semcorr.report.EvalReport` keeps); pairs with no valid keypoint are skipped, as
            in :class:`semcorr.metrics.PCK`.
        average: ``per_image`` (mean over pairs of each pair's PCK) or ``per_keypoint``.
        strict: count ``error < alpha`` instead of ``error <= alpha``.
    Returns:
        alphas (A,), pck (A,).
    """
    a = alpha_grid() if alphas is None else np.asarray(alphas, dtype=np.float64)
    errs = [np.asarray(e, dtype=np.float64).reshape(-1) for e in errors]
    errs = [e for e in errs if e.size]
    if not errs:
        return a, np.full(a.shape, np.nan)
    within = np.less if strict else np.less_equal
    if average == "per_keypoint":
        flat = np.concatenate(errs)
        return a, 100.0 * within(flat[:, None], a[None]).mean(0)
    if average != "per_image":
        raise ValueError(f"unknown average {average!r}; valid: per_image, per_keypoint")
    return a, 100.0 * np.mean([within(e[:, None], a[None]).mean(0) for e in errs], axis=0)


def curve_entry(errors: Sequence[torch.Tensor], max_alpha: float, average: str,
                strict: bool = False) -> Dict[str, Any]:
    """The ``pck_curve`` entry of ``metrics.json``: ``{"alphas": [...], "pck": [...]}`` (pooled
    over all pairs, whatever the protocol's headline)."""
    alphas, pck = pck_curve(errors, alpha_grid(max_alpha), average, strict)
    return {"alphas": [round(float(a), 6) for a in alphas], "pck": [float(v) for v in pck],
            "average": average, "n_pairs": sum(1 for e in errors if len(e))}
