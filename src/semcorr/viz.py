"""Figures shared by the CLI (``eval.py``, ``semcorr-match``) and the notebooks.

Drawing functions take an ``ax`` and draw on it; ``plot_*`` functions make a whole figure and save
it when given a ``path`` (returning the path) or return the figure otherwise. Computations that the
figures need are plain torch/numpy functions here too:

- :func:`pck_curve`: PCK(alpha) over a fine alpha grid from per-keypoint normalised errors
  (``dist / L``, see :mod:`semcorr.metrics.pck`), per image or per keypoint;
- :func:`warp_to_source`: the target image warped back into the source frame through a score
  matrix (each source cell copies the target cell its row of the scores/plan points to).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.colors import hsv_to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from semcorr.matchers.transfer import cell_centers, cell_index
from semcorr.metrics.pck import pck_correct, pck_thresholds

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
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
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


def correct_at(prediction: Mapping[str, Any], alpha: float, threshold_by: str) -> torch.Tensor:
    """(K,) bool: which keypoints of one kept prediction (see ``CorrespondenceModule._keep``) lie
    within ``alpha * L`` of the ground truth."""
    valid = prediction["valid"].bool()
    length = pck_thresholds(threshold_by, prediction["trg_kps"][None], valid[None],
                            prediction["trg_bbox"][None], prediction["trg_imsize"][None])
    return pck_correct(prediction["pred"][None], prediction["trg_kps"][None], valid[None], length,
                       [alpha])[0, :, 0]


def plot_predictions(predictions: List[Dict[str, Any]], read_image: Callable[[str], torch.Tensor],
                     path: Optional[Union[str, Path]] = None, alpha: float = 0.1,
                     threshold_by: str = "bbox_kp", cols: int = 2):
    """A grid of evaluated pairs: prediction, ground truth and a line per match coloured correct /
    wrong at ``alpha`` (keypoints in the original frames). None when there is nothing to draw."""
    if not predictions:
        return None
    n = len(predictions)
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    fig, axes = _subplots(path, rows, cols, figsize=(7 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for i, (ax, p) in enumerate(zip(axes.ravel(), predictions)):
        ok = correct_at(p, alpha, threshold_by)
        v = p["valid"].bool()
        vn = v.numpy()
        draw_matches(ax, read_image(p["src_id"]), read_image(p["trg_id"]), p["src_kps"][vn],
                     p["pred"][vn], p["trg_kps"][vn], ok[v].numpy(), legend=i == 0,
                     title=f"{p['category']}: {int(ok.sum())}/{int(v.sum())} correct at "
                           f"alpha={alpha:g} ({threshold_by})")
    fig.tight_layout()
    return _finish(fig, path)


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
# dense warp
# ------------------------------------------------------------------------------------------------
def warp_to_source(trg_img: torch.Tensor, scores: torch.Tensor, src_grid: Tuple[int, int],
                   src_stride: int, trg_grid: Tuple[int, int], trg_stride: int,
                   src_hw: Tuple[int, int]) -> torch.Tensor:
    """The target warped back into the source frame through a score matrix.

    Each source cell i takes the target cell j* = argmax_j scores[i, j] (for OT matchers the
    largest entry of row i of the plan) and copies the target's ``stride`` x ``stride`` pixels
    around j*'s centre, i.e. every source pixel p in cell i reads the target at
    ``p + (c_t(j*) - c_s(i))`` (nearest pixel). A perfect matcher reproduces the source.

    Args:
        trg_img: (3, H', W') network-frame target.
        scores: (Ns, Nt) scores of one pair (``MatchResult.scores[b]``).
        src_hw: (H, W) of the source network frame.
    Returns:
        (3, H, W) warped image; pixels in source cells whose row is all -inf are 0.
    """
    h, w = src_hw
    best, idx = scores.max(dim=-1)  # (Ns,)
    shift = (cell_centers(trg_grid, trg_stride, scores.device)[idx]
             - cell_centers(src_grid, src_stride, scores.device))  # (Ns, 2)
    ys, xs = torch.meshgrid(torch.arange(h, device=scores.device, dtype=torch.float32),
                            torch.arange(w, device=scores.device, dtype=torch.float32), indexing="ij")
    pix = torch.stack([xs, ys], dim=-1).reshape(1, -1, 2)
    cell = cell_index(pix, src_grid, src_stride)[0]  # (H*W,)
    target = pix[0] + shift[cell]
    th, tw = trg_img.shape[-2:]
    grid = (target + 0.5) / torch.tensor([tw, th], device=scores.device) * 2 - 1
    out = F.grid_sample(trg_img[None].float(), grid.view(1, h, w, 2), mode="nearest",
                        padding_mode="zeros", align_corners=False)[0]
    return out * torch.isfinite(best)[cell].view(1, h, w)


def warp_match(batch: Mapping[str, Any], out: Mapping[str, Any], scores: Optional[torch.Tensor] = None,
               index: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source, target and warped target of pair ``index`` of a pipeline output, cropped to the
    image content (no padding). ``batch``/``out``: ``CorrespondenceModule`` input and output
    (``out["src"]``, ``out["trg"]``, ``out["result"]``); ``scores`` (Ns, Nt) replaces the output's.
    """
    src, trg = out["src"], out["trg"]
    scores = out["result"].scores[index] if scores is None else scores
    sh, sw = (int(v) for v in batch["src_content_hw"][index])
    th, tw = (int(v) for v in batch["trg_content_hw"][index])
    warped = warp_to_source(batch["trg_img"][index], scores, src.grid, src.stride, trg.grid,
                            trg.stride, tuple(batch["src_img"].shape[-2:]))
    return (batch["src_img"][index, :, :sh, :sw].cpu(), batch["trg_img"][index, :, :th, :tw].cpu(),
            warped[:, :sh, :sw].cpu())


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
def alpha_grid(max_alpha: float = 0.2, steps: int = 41) -> np.ndarray:
    return np.linspace(0.0, max_alpha, steps)


def pck_curve(errors: Sequence[torch.Tensor], alphas: Optional[Sequence[float]] = None,
              average: str = "per_image") -> Tuple[np.ndarray, np.ndarray]:
    """PCK (in percent) at each alpha from per-pair normalised errors.

    Args:
        errors: one 1-D tensor per pair holding ``dist / L`` of its valid keypoints (what
            ``CorrespondenceModule.errors`` keeps); pairs with no valid keypoint are skipped, as
            in :class:`semcorr.metrics.PCK`.
        average: ``per_image`` (mean over pairs of each pair's PCK) or ``per_keypoint``.
    Returns:
        alphas (A,), pck (A,).
    """
    a = alpha_grid() if alphas is None else np.asarray(alphas, dtype=np.float64)
    errs = [np.asarray(e, dtype=np.float64).reshape(-1) for e in errors]
    errs = [e for e in errs if e.size]
    if not errs:
        return a, np.full(a.shape, np.nan)
    if average == "per_keypoint":
        flat = np.concatenate(errs)
        return a, 100.0 * (flat[:, None] <= a[None]).mean(0)
    if average != "per_image":
        raise ValueError(f"unknown average {average!r}; valid: per_image, per_keypoint")
    return a, 100.0 * np.mean([(e[:, None] <= a[None]).mean(0) for e in errs], axis=0)


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


# ------------------------------------------------------------------------------------------------
# the figures of an evaluation run
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def dense_warp_rows(module, dataset, n_pairs: int, compare: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """Warp the first ``n_pairs`` pairs of ``dataset`` with the module's matcher and with the
    matchers named in ``compare`` (``configs/matcher/<name>.yaml``, default settings), all on the
    module's own (cached) features. Returns per pair ``src``, ``trg`` (content crops of the
    network frame), ``warps`` (name -> image) and ``title``."""
    from semcorr.config import load_config
    from semcorr.data.schema import collate
    from semcorr.matchers import build_matcher
    from semcorr.models.module import symmetric_cells

    others = {}
    for name in compare:
        cfg = load_config([f"matcher={name}"]).matcher
        if cfg.get("grad", "detach") != "detach":
            cfg.grad = "detach"  # drawing needs no gradient
        others[name] = build_matcher(cfg).to(module.device)
    own = module.hparams.get("run_config", {}) or {}
    own_name = (own.get("matcher") or {}).get("name") or type(module.matcher).__name__
    rows = []
    was_training = module.training
    module.eval()
    for index in range(min(n_pairs, len(dataset))):
        batch = collate([dataset[index]])
        batch = {k: v.to(module.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        src, trg = module.features(batch, use_cache=True)
        # cached features may be inference-mode tensors (from trainer.test); matchers that run
        # autograd internally (GW-OT's checkpointed steps) need ordinary ones
        src, trg = src.with_features(src.features.clone()), trg.with_features(trg.features.clone())
        out = module.match(batch, src, trg)
        results = {own_name: out["result"]}
        for name, matcher in others.items():
            sym = symmetric_cells(batch, out["src"].grid, out["src"].stride)
            results[name] = matcher(out["src"], out["trg"], sym_pairs=sym)
        warps = {}
        for name, r in results.items():
            src_crop, trg_crop, warps[name] = warp_match(batch, out, r.scores[0])
        rows.append({"src": src_crop, "trg": trg_crop, "warps": warps,
                     "title": f"{batch['category'][0]}: {batch['pair_id'][0]}"})
    module.train(was_training)
    return rows


def plot_dense_warp_rows(rows: List[Dict[str, Any]], path: Optional[Union[str, Path]] = None):
    """Stack :func:`dense_warp_rows` output into one figure (one pair per row)."""
    if not rows:
        return None
    cols = 2 + len(rows[0]["warps"])
    fig, axes = _subplots(path, len(rows), cols, figsize=(2.6 * cols, 2.7 * len(rows)), squeeze=False)
    for ax_row, row in zip(axes, rows):
        plot_dense_warps(row["src"], row["trg"], row["warps"], axes=ax_row)
    fig.tight_layout()
    return _finish(fig, path)


def curve_of_run(errors: Sequence[torch.Tensor], max_alpha: float, average: str) -> Dict[str, Any]:
    """The ``pck_curve`` entry of ``metrics.json``: ``{"alphas": [...], "pck": [...]}``."""
    alphas, pck = pck_curve(errors, alpha_grid(max_alpha), average)
    return {"alphas": [round(float(a), 6) for a in alphas], "pck": [float(v) for v in pck],
            "average": average, "n_pairs": sum(1 for e in errors if len(e))}


def write_eval_figures(module, dataset, out_dir: Union[str, Path], plots, threshold_by: str,
                       curve: Optional[Mapping[str, Any]] = None, method: str = "") -> Dict[str, Path]:
    """The figures of an evaluation run, written into ``out_dir`` (keys are W&B image keys):
    ``keypoints`` (first ``plots.n_pairs`` pairs, correct/wrong at ``plots.alpha``),
    ``pck_curve`` (``curve`` from :func:`curve_of_run`, all pairs) and ``dense_warp`` (first
    ``plots.n_pairs`` pairs, the run's matcher and those in ``plots.warp_compare``)."""
    out_dir = Path(out_dir)
    written: Dict[str, Path] = {}
    path = plot_predictions(module.predictions, dataset.read_image, out_dir / "keypoints.png",
                            alpha=plots.alpha, threshold_by=threshold_by)
    if path is not None:
        written["keypoints"] = path
    if curve is not None and curve.get("n_pairs"):
        written["pck_curve"] = plot_pck_curves(
            {method or "this run": curve}, out_dir / "pck_curve.png",
            title=f"PCK vs alpha ({curve['n_pairs']} pairs, {curve['average']}, L by {threshold_by})")
    if plots.dense_warp and plots.n_pairs > 0:
        rows = dense_warp_rows(module, dataset, plots.n_pairs, list(plots.warp_compare))
        path = plot_dense_warp_rows(rows, out_dir / "dense_warp.png")
        if path is not None:
            written["dense_warp"] = path
    return written
