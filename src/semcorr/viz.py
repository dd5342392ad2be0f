"""Figures shared by the CLIs (``eval.py``, ``semcorr-match``, ``train.py``) and the notebooks.

Plotting only: drawing functions take an ``ax`` and draw on it; ``plot_*`` functions make a whole
figure and save it when given a ``path`` (returning the path) or return the figure otherwise.
What they draw is computed elsewhere: PCK curves in :mod:`semcorr.metrics.curve`, dense warps in
:mod:`semcorr.warp`, per-pair records in :mod:`semcorr.report`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import hsv_to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from semcorr.atomic import atomic_open
from semcorr.metrics.functional import correct_at
from semcorr.metrics.protocol import Protocol
from semcorr.predictions import spread


CORRECT, WRONG, UNKNOWN = "lime", "red", "tab:blue"


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.detach().permute(1, 2, 0).clamp(0, 1).cpu().float().numpy()


def _subplots(path, nrows: int = 1, ncols: int = 1, **kwargs):
    """A figure for a file (a bare ``Figure``: no pyplot state, any backend, headless) or, without
    ``path``, a pyplot figure that notebooks display."""
    if path is None:
        return plt.subplots(nrows, ncols, **kwargs)
    fig = Figure(figsize=kwargs.pop("figsize", None))
    return fig, fig.subplots(nrows, ncols, **kwargs)


def _finish(fig, path: Optional[Union[str, Path]], dpi: int = 100):
    if path is None:
        return fig
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:  # a killed run never leaves half a PNG
        fig.savefig(f, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi, bbox_inches="tight")
    return path


# ------------------------------------------------------------------------------------------------
# keypoint figures
# ------------------------------------------------------------------------------------------------
def side_by_side(ax, src: torch.Tensor, trg: torch.Tensor, gap: int = 8) -> float:
    """Draw source and target next to each other (top-aligned, white gap); returns the x offset
    of the target (add it to target x coordinates)."""
    a, b = _hwc(src), _hwc(trg)
    h = max(a.shape[0], b.shape[0])
    canvas = np.ones((h, a.shape[1] + gap + b.shape[1], 3))
    canvas[: a.shape[0], : a.shape[1]] = a
    canvas[: b.shape[0], a.shape[1] + gap:] = b
    ax.imshow(canvas)
    ax.axis("off")
    return float(a.shape[1] + gap)


def position_colours(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """(K, 3) RGB colours that encode where a point lies in an image (hue: angle around the
    centre, saturation: distance from it), so matched points share the colour of their source."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    dx = (p[:, 0] - (width - 1) / 2) / max(width / 2, 1)
    dy = (p[:, 1] - (height - 1) / 2) / max(height / 2, 1)
    hue = (np.arctan2(dy, dx) / (2 * np.pi)) % 1.0
    sat = np.clip(np.hypot(dx, dy) / np.sqrt(2), 0.15, 1.0)
    return hsv_to_rgb(np.stack([hue, sat, np.full_like(hue, 0.95)], axis=1))


def draw_matches(ax, src_img, trg_img, src_kps, pred, gt=None, correct=None, title: str = "",
                 legend: bool = False) -> None:
    """Source keypoints, predicted target keypoints and a line per match.

    Lines are green where ``correct`` is True, red where False, blue when unknown. Ground truth
    (if given) is a white cross in the target, joined to a wrong prediction by a dotted line.
    """
    off = side_by_side(ax, src_img, trg_img)
    src_kps, pred = np.asarray(src_kps, dtype=float), np.asarray(pred, dtype=float)
    gt = None if gt is None else np.asarray(gt, dtype=float)
    for k in range(len(src_kps)):
        colour = UNKNOWN if correct is None else (CORRECT if correct[k] else WRONG)
        ax.plot([src_kps[k, 0], pred[k, 0] + off], [src_kps[k, 1], pred[k, 1]], "-", color=colour,
                lw=1, alpha=0.85)
        ax.plot(src_kps[k, 0], src_kps[k, 1], "o", color=colour, ms=4, mec="k", mew=0.5)
        ax.plot(pred[k, 0] + off, pred[k, 1], "o", color=colour, ms=4, mec="k", mew=0.5)
        if gt is not None:
            if correct is not None and not correct[k]:
                ax.plot([pred[k, 0] + off, gt[k, 0] + off], [pred[k, 1], gt[k, 1]], ":",
                        color="white", lw=1)
            ax.plot(gt[k, 0] + off, gt[k, 1], "x", color="white", ms=5, mew=1.5)
    if legend:
        handles = [Line2D([], [], color=CORRECT, marker="o", label="correct"),
                   Line2D([], [], color=WRONG, marker="o", label="wrong")]
        if gt is not None:
            handles.append(Line2D([], [], color="k", marker="x", ls="", label="ground truth"))
        ax.legend(handles=handles, loc="lower left", fontsize=7, framealpha=0.8)
    if title:
        ax.set_title(title, fontsize=8)


def record_correct(p: Mapping[str, Any], alpha: float) -> torch.Tensor:
    """(K,) bool: which keypoints of a pair record are correct at ``alpha``, as the metric counts
    them (its column of ``correct`` when the metric had this alpha, else the same PCK rule on the
    record's distances: :func:`semcorr.metrics.functional.correct_at`)."""
    alphas = [float(a) for a in p.get("alphas", ())]
    if float(alpha) in alphas:
        return p["correct"][:, alphas.index(float(alpha))].bool()
    return correct_at(p["dist_sq"], p["threshold"], p["valid"], alpha, bool(p.get("strict", False)))


def _draw_record(ax, p: Dict[str, Any], read_image: Callable[[str], torch.Tensor], alpha: float,
                 threshold_by: str, max_points: Optional[int], legend: bool = False) -> None:
    v = p["valid"].bool()
    ok = record_correct(p, alpha)
    idx = spread(v, max_points)
    shown = "" if len(idx) == int(v.sum()) else f", {len(idx)} drawn"
    draw_matches(ax, read_image(p["src_id"]), read_image(p["trg_id"]), p["src_kps"][idx],
                 p["pred"][idx], p["trg_kps"][idx], ok[idx].numpy(), legend=legend,
                 title=f"{p['category']}: {int(ok.sum())}/{int(v.sum())} correct at "
                       f"alpha={alpha:g} ({threshold_by}{shown})")


def plot_predictions(predictions: List[Dict[str, Any]], read_image: Callable[[str], torch.Tensor],
                     path: Optional[Union[str, Path]] = None, alpha: float = 0.1,
                     protocol: Optional[Protocol] = None, cols: int = 2,
                     max_points: Optional[int] = 50):
    """A grid of evaluated pairs: prediction, ground truth and a line per match coloured correct /
    wrong at ``alpha`` (keypoints in the original frames). None when there is nothing to draw.

    ``predictions``: per-pair records (:func:`semcorr.report.pair_records`,
    :func:`semcorr.predictions.row_record`); ``protocol`` names L in the titles. At most
    ``max_points`` matches are drawn
    per pair, evenly spaced over its valid keypoints (dense TSS queries number tens of
    thousands); the counts in the titles are over all of them."""
    if not predictions:
        return None
    n = len(predictions)
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    fig, axes = _subplots(path, rows, cols, figsize=(7 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    threshold_by = protocol.threshold_by if protocol is not None else "L"
    for i, (ax, p) in enumerate(zip(axes.ravel(), predictions)):
        _draw_record(ax, p, read_image, alpha, threshold_by, max_points, legend=i == 0)
    fig.tight_layout()
    return _finish(fig, path)


def pair_thumbnail(record: Dict[str, Any], read_image: Callable[[str], torch.Tensor],
                   alpha: float = 0.1, protocol: Optional[Protocol] = None,
                   max_points: Optional[int] = 50,
                   width_in: float = 5.0, dpi: int = 72) -> np.ndarray:
    """(h, w, 3) uint8 picture of one evaluated pair (as :func:`plot_predictions` draws it), for a
    W&B table cell."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(width_in, width_in * 0.5), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.subplots()
    _draw_record(ax, record, read_image, alpha, protocol.threshold_by if protocol else "L", max_points)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def plot_matches(src_img: torch.Tensor, trg_img: torch.Tensor, src_pts, trg_pts,
                 path: Optional[Union[str, Path]] = None, scores=None, title: str = "",
                 max_lines: int = 40):
    """Matches of arbitrary points (no ground truth): each source point and its target point share
    a colour that encodes the source position (:func:`position_colours`).

    Up to ``max_lines`` matches (spread over the list) also get a connecting line; with more
    points (``--dense``) the colours alone show the correspondence field.
    """
    src_pts = np.asarray(src_pts, dtype=float).reshape(-1, 2)
    trg_pts = np.asarray(trg_pts, dtype=float).reshape(-1, 2)
    h, w = src_img.shape[-2:]
    colours = position_colours(src_pts, h, w)
    width = 6.0 * (src_img.shape[-1] + trg_img.shape[-1]) / max(h, trg_img.shape[-2]) / 2
    fig, ax = _subplots(path, figsize=(min(max(width, 6.0), 14.0), 4.2))
    off = side_by_side(ax, src_img, trg_img)
    n = len(src_pts)
    size = 16 if n <= 100 else 9
    ax.scatter(src_pts[:, 0], src_pts[:, 1], c=colours, s=size, edgecolors="k", linewidths=0.3)
    ax.scatter(trg_pts[:, 0] + off, trg_pts[:, 1], c=colours, s=size, edgecolors="k",
               linewidths=0.3)
    if n:
        for k in np.unique(np.linspace(0, n - 1, min(n, max_lines)).round().astype(int)):
            ax.plot([src_pts[k, 0], trg_pts[k, 0] + off], [src_pts[k, 1], trg_pts[k, 1]], "-",
                    color=colours[k], lw=0.8, alpha=0.8)
    if scores is not None and n:
        s = np.asarray(scores, dtype=float)
        title = f"{title}  ({n} points, score median {np.median(s):.3g})".strip()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _finish(fig, path)


# ------------------------------------------------------------------------------------------------
# dense warps and transport plans
# ------------------------------------------------------------------------------------------------
def plot_plan_rows(trg_img: torch.Tensor, rows: Mapping[str, torch.Tensor], stride: int,
                   trg_kps=None, pred: Optional[Mapping[str, Any]] = None, labels: Sequence[str] = (),
                   path: Optional[Union[str, Path]] = None, src_img: Optional[torch.Tensor] = None,
                   src_kps=None):
    """Rows of transport plans (or score matrices) over the target image.

    Args:
        trg_img: (3, H, W) network-frame target.
        rows: setting name -> (K, h, w) row of each of K source points, reshaped to the target
            grid (any non-negative scale; each map is divided by its maximum).
        trg_kps: optional (K, 2) ground truth (white cross); pred: optional name -> (K, 2)
            predictions (cyan dot), both in the network frame.
        src_img, src_kps: optional source image and points, drawn as a first column.
    One row of panels per setting, one column per source point.
    """
    names = list(rows)
    k = int(next(iter(rows.values())).shape[0])
    extra = 1 if src_img is not None else 0
    fig, axes = _subplots(path, len(names), k + extra, figsize=(2.3 * (k + extra), 2.2 * len(names)),
                             squeeze=False)
    h, w = trg_img.shape[-2:]
    colours = colormaps["tab10"](np.arange(k) % 10)
    for r, name in enumerate(names):
        if extra:
            ax = axes[r, 0]
            ax.imshow(_hwc(src_img))
            if src_kps is not None:
                p = np.asarray(src_kps, dtype=float)
                ax.scatter(p[:, 0], p[:, 1], c=colours, s=25, edgecolors="k")
            ax.set_title("source points" if r == 0 else "", fontsize=8)
            ax.set_ylabel(name, fontsize=8)
            ax.set_xticks([]), ax.set_yticks([])
        for c in range(k):
            ax = axes[r, c + extra]
            heat = rows[name][c].detach().float().cpu()
            heat = (heat / heat.max().clamp_min(1e-30)).numpy()
            ax.imshow(_hwc(trg_img) * 0.55)
            gh, gw = heat.shape
            ax.imshow(heat, cmap="magma", alpha=0.75, extent=(-0.5, gw * stride - 0.5, gh * stride - 0.5, -0.5),
                      vmin=0, vmax=1, interpolation="nearest")
            ax.set_xlim(-0.5, w - 0.5), ax.set_ylim(h - 0.5, -0.5)
            if trg_kps is not None:
                g = np.asarray(trg_kps, dtype=float)[c]
                ax.plot(g[0], g[1], "x", color="white", ms=7, mew=2)
            if pred is not None:
                q = np.asarray(pred[name], dtype=float)[c]
                ax.plot(q[0], q[1], "o", color="cyan", ms=5, mec="k")
            title = labels[c] if c < len(labels) else f"point {c}"
            ax.set_title(title if r == 0 else "", fontsize=8, color=colours[c])
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0 and not extra:
                ax.set_ylabel(name, fontsize=8)
    fig.tight_layout()
    return _finish(fig, path)


def plot_dense_warps(src_img: torch.Tensor, trg_img: torch.Tensor,
                     warps: Mapping[str, torch.Tensor], path: Optional[Union[str, Path]] = None,
                     title: str = "", axes=None):
    """One row: source, target, then the target warped into the source frame by each method
    (``warps``: name -> (3, H, W) from :func:`warp_to_source`). Pass ``axes`` (a row of
    ``2 + len(warps)`` axes) to draw into an existing figure."""
    panels = [("source", src_img), ("target", trg_img)] + [(f"warped: {k}", v) for k, v in warps.items()]
    own = axes is None
    if own:
        fig, axes = _subplots(path, 1, len(panels), figsize=(2.6 * len(panels), 2.8), squeeze=False)
        axes = axes[0]
    for ax, (name, image) in zip(axes, panels):
        ax.imshow(_hwc(image))
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    if not own:
        return None
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _finish(fig, path)


# ------------------------------------------------------------------------------------------------
# PCK vs alpha
# ------------------------------------------------------------------------------------------------
CurveLike = Union[Tuple[Sequence[float], Sequence[float]], Mapping[str, Any], str, Path]


def _as_curve(curve: CurveLike) -> Tuple[np.ndarray, np.ndarray]:
    if isinstance(curve, (str, Path)):  # a metrics.json or the run folder holding it
        path = Path(curve)
        curve = json.loads((path / "metrics.json" if path.is_dir() else path).read_text())
    if isinstance(curve, Mapping):
        data = curve.get("pck_curve", curve)
        if "alphas" not in data:
            raise ValueError("metrics have no 'pck_curve' (written by eval.py since plots were added)")
        return np.asarray(data["alphas"], float), np.asarray(data["pck"], float)
    alphas, pck = curve
    return np.asarray(alphas, float), np.asarray(pck, float)


def plot_pck_curves(curves: Mapping[str, CurveLike], path: Optional[Union[str, Path]] = None,
                    title: str = "", marks: Sequence[float] = (0.05, 0.1, 0.15), ax=None):
    """PCK vs alpha, one line per method. ``curves`` maps a name to ``(alphas, pck)``, a metrics
    dict or a ``metrics.json`` path / run folder (their ``pck_curve``)."""
    own = ax is None
    if own:
        fig, ax = _subplots(path, figsize=(4.6, 3.4))
    for name, curve in curves.items():
        alphas, pck = _as_curve(curve)
        ax.plot(alphas, pck, "-", lw=1.6, label=name)
    for m in marks:
        ax.axvline(m, color="0.85", lw=0.8, zorder=0)
    ax.set_xlabel("alpha (threshold / L)")
    ax.set_ylabel("PCK (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)
    if not own:
        return None
    fig.tight_layout()
    return _finish(fig, path)


def plot_dense_warp_rows(rows: List[Dict[str, Any]], path: Optional[Union[str, Path]] = None):
    """Stack rows of ``{"src", "trg", "warps"}`` (:func:`semcorr.figures.dense_warp_rows`) into
    one figure (one pair per row)."""
    if not rows:
        return None
    cols = 2 + len(rows[0]["warps"])
    fig, axes = _subplots(path, len(rows), cols, figsize=(2.6 * cols, 2.7 * len(rows)), squeeze=False)
    for ax_row, row in zip(axes, rows):
        plot_dense_warps(row["src"], row["trg"], row["warps"], axes=ax_row)
    fig.tight_layout()
    return _finish(fig, path)




# ------------------------------------------------------------------------------------------------
# PCA feature maps
# ------------------------------------------------------------------------------------------------
def draw_pca_map(ax, rgb: torch.Tensor, stride: float, title: str = "") -> None:
    """Draw an (h, w, 3) PCA colour map over the pixels its cells cover (``stride`` px each), so
    it lines up with the image drawn next to it."""
    h, w = rgb.shape[:2]
    ax.imshow(rgb.cpu().numpy(), interpolation="nearest",
              extent=(-0.5, w * stride - 0.5, h * stride - 0.5, -0.5))
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def plot_pca_rows(rows: List[Dict[str, Any]], path: Optional[Union[str, Path]] = None):
    """One pair per row: source, its PCA map, target, its PCA map (rows of
    :func:`semcorr.pca.pca_panel`: the first three principal components of the pair's features,
    fitted jointly on both images' foreground, as RGB)."""
    if not rows:
        return None
    import textwrap

    fig, axes = _subplots(path, len(rows), 4, figsize=(10.4, 2.5 * len(rows)), squeeze=False)
    for ax_row, row in zip(axes, rows):
        ax_row[0].imshow(_hwc(row["src"]))
        ax_row[0].set_title("\n".join(textwrap.wrap(row["title"], 48)), fontsize=7, loc="left")
        draw_pca_map(ax_row[1], row["src_pca"], row["stride"], f"source PCA (fit: {row['fit']})")
        ax_row[2].imshow(_hwc(row["trg"]))
        draw_pca_map(ax_row[3], row["trg_pca"], row["stride"], "target PCA")
        for ax in (ax_row[0], ax_row[2]):
            ax.axis("off")
    fig.suptitle("first 3 principal components (R, G, B) of the features, fitted jointly on both "
                 "images' foreground; black: background", fontsize=9)
    fig.tight_layout()
    return _finish(fig, path)
