"""Figures shared by the CLI and the notebooks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from semcorr.metrics.pck import pck_correct, pck_thresholds  # noqa: E402


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).clamp(0, 1).cpu().numpy()


def side_by_side(ax, src: torch.Tensor, trg: torch.Tensor) -> float:
    """Draw source and target next to each other; returns the x offset of the target."""
    a, b = _hwc(src), _hwc(trg)
    h = max(a.shape[0], b.shape[0])
    canvas = np.ones((h, a.shape[1] + b.shape[1], 3))
    canvas[: a.shape[0], : a.shape[1]] = a
    canvas[: b.shape[0], a.shape[1]:] = b
    ax.imshow(canvas)
    ax.axis("off")
    return float(a.shape[1])


def draw_matches(ax, src_img, trg_img, src_kps, pred, gt=None, correct=None, title: str = "") -> None:
    """Source keypoints, predicted target keypoints and a line per match.

    Lines are green where ``correct`` is True, red where False, blue when unknown; ground truth
    (if given) is drawn as white crosses in the target.
    """
    off = side_by_side(ax, src_img, trg_img)
    src_kps, pred = np.asarray(src_kps), np.asarray(pred)
    for k in range(len(src_kps)):
        colour = "tab:blue" if correct is None else ("lime" if correct[k] else "red")
        ax.plot([src_kps[k, 0], pred[k, 0] + off], [src_kps[k, 1], pred[k, 1]], "-", color=colour, lw=1)
        ax.plot(src_kps[k, 0], src_kps[k, 1], "o", color=colour, ms=4, mec="k", mew=0.5)
        ax.plot(pred[k, 0] + off, pred[k, 1], "o", color=colour, ms=4, mec="k", mew=0.5)
        if gt is not None:
            g = np.asarray(gt)[k]
            ax.plot(g[0] + off, g[1], "x", color="white", ms=5, mew=1.5)
    if title:
        ax.set_title(title, fontsize=8)


def plot_predictions(predictions: List[Dict[str, Any]], read_image: Callable[[str], torch.Tensor],
                     path: str | Path, alpha: float = 0.1, threshold_by: str = "bbox_kp") -> Optional[Path]:
    """A grid of evaluated pairs: predictions vs ground truth, coloured correct/wrong at ``alpha``."""
    if not predictions:
        return None
    n = len(predictions)
    cols = min(2, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, p in zip(axes.ravel(), predictions):
        valid = p["valid"].bool()
        length = pck_thresholds(threshold_by, p["trg_kps"][None], valid[None],
                                p["trg_bbox"][None], p["trg_imsize"][None])
        ok = pck_correct(p["pred"][None], p["trg_kps"][None], valid[None], length, [alpha])[0, :, 0]
        v = valid.numpy()
        draw_matches(ax, read_image(p["src_id"]), read_image(p["trg_id"]), p["src_kps"][v],
                     p["pred"][v], p["trg_kps"][v], ok[valid].numpy(),
                     title=f"{p['category']}: {int(ok.sum())}/{int(v.sum())} correct at alpha={alpha:g}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
