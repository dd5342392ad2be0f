"""Figures of evaluation statistics: per-category PCK-alpha curves (one panel per category, runs
overlaid, as Fig. 6/7 of the GW-OT paper) and per-category differences between runs with their
intervals (``semcorr-compare``). Drawn from numbers already computed; no model call."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from semcorr.viz import _finish, _subplots

Curves = Tuple[Sequence[float], Mapping[str, Sequence[Optional[float]]]]


def _values(values: Sequence[Optional[float]]) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


def plot_category_curves(curves: Mapping[str, Curves], path: Optional[Union[str, Path]] = None,
                         title: str = "", marks: Sequence[float] = (0.05, 0.1, 0.15)):
    """PCK vs alpha, one panel per category (``all`` first), one line per run.

    Args:
        curves: run name -> (alphas, {category: PCK in percent at each alpha}); categories are
            the union over runs, in first-seen order.
    """
    names = list(dict.fromkeys(c for _, per_cat in curves.values() for c in per_cat))
    if "all" in names:
        names.remove("all")
        names.insert(0, "all")
    if not names:
        return None
    cols = min(len(names), 5 if len(names) > 9 else 3)
    rows = math.ceil(len(names) / cols)
    fig, axes = _subplots(path, rows, cols, figsize=(2.7 * cols, 2.3 * rows), squeeze=False,
                          sharex=True, sharey=True)
    for ax, name in zip(axes.flat, names):
        for run, (alphas, per_cat) in curves.items():
            if name in per_cat:
                ax.plot(np.asarray(alphas, dtype=np.float64), _values(per_cat[name]), lw=1.4, label=run)
        for m in marks:
            ax.axvline(m, color="0.85", lw=0.8, zorder=0)
        ax.set_title(name, fontsize=9, fontweight="bold" if name == "all" else "normal")
        ax.set_ylim(0, 100)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("alpha")
    for ax in axes[:, 0]:
        ax.set_ylabel("PCK (%)")
    axes.flat[0].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _finish(fig, path)


def plot_differences(result: Dict[str, Any], path: Optional[Union[str, Path]] = None,
                     alpha: Optional[float] = None):
    """Per category (and overall, at the bottom) the PCK difference of each later run minus the
    first, with its 95 % interval, at ``alpha`` (default: the compared alpha nearest 0.1).
    ``result``: :func:`semcorr.compare.compare_runs`'s."""
    comps = result["comparisons"]
    if not comps or not result["alphas"]:
        return None
    if alpha is None:
        alpha = min(result["alphas"], key=lambda a: (abs(a - 0.1), a))
    key = f"{alpha:g}"
    cats = list(result["categories"]) + ["all"]
    fig, ax = _subplots(path, figsize=(6.0, 0.32 * len(cats) + 1.4))
    offsets = np.linspace(-0.15, 0.15, len(comps)) if len(comps) > 1 else [0.0]
    y = np.arange(len(cats))[::-1].astype(np.float64)
    for comp, dy in zip(comps, offsets):
        pck = comp["measures"]["pck"]
        entries = [pck["per_category"].get(c, {}).get(key) for c in cats[:-1]] + [pck["overall"][key]]
        diff = _values([e and e["difference"] for e in entries])
        lo = _values([e["ci95"][0] if e and e["ci95"] else None for e in entries])
        hi = _values([e["ci95"][1] if e and e["ci95"] else None for e in entries])
        ax.errorbar(diff, y + dy, xerr=[diff - lo, hi - diff], fmt="o", ms=4, capsize=2, lw=1.2,
                    label=f"{comp['run']} − {comp['against']}")
    ax.axvline(0, color="0.4", lw=0.8)
    ax.axhline(0.5, color="0.85", lw=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels(cats, fontsize=8)
    ax.set_xlabel(f"PCK@{key} difference (points), 95 % paired-bootstrap interval")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _finish(fig, path)
