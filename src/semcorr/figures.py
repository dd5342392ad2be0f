"""The figures of an evaluation run, drawn from what the run already computed (the
:class:`~semcorr.report.EvalReport`'s kept records and dense-warp panels, the PCK curve): no model
call. Drawing itself is in :mod:`semcorr.viz`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

from semcorr.metrics.protocol import Protocol
from semcorr.predictions import row_record, table_cell, table_columns
from semcorr.viz import (pair_thumbnail, plot_dense_warp_rows, plot_pca_rows, plot_pck_curves,
                         plot_predictions)


def write_eval_figures(report, read_image, out_dir: Union[str, Path], plots, protocol: Protocol,
                       curve: Optional[Mapping[str, Any]] = None, method: str = "",
                       category_curves: Optional[Mapping[str, Any]] = None) -> Dict[str, Path]:
    """The figures of an evaluation run, written into ``out_dir`` (keys are W&B image keys):
    ``keypoints`` (the ``report``'s kept pairs, correct/wrong at ``plots.alpha``, at most
    ``plots.max_points`` matches per pair), ``pck_curve`` (``curve`` from
    :func:`semcorr.metrics.curve_entry`, all pairs), ``pck_curve_per_category`` (with
    ``plots.category_curves``: ``category_curves``, the ``metrics.json`` entry of
    :func:`semcorr.eval_stats.evaluation_statistics`), ``dense_warp`` (the kept pairs'
    panels: the run's matcher and those in ``plots.warp_compare``) and ``pca`` (the kept
    pairs' PCA feature maps, ``plots.pca``)."""
    out_dir = Path(out_dir)
    written: Dict[str, Path] = {}
    path = plot_predictions(report.records, read_image, out_dir / "keypoints.png",
                            alpha=plots.alpha, protocol=protocol, max_points=plots.max_points)
    if path is not None:
        written["keypoints"] = path
    if curve is not None and curve.get("n_pairs"):
        written["pck_curve"] = plot_pck_curves(
            {method or "this run": curve}, out_dir / "pck_curve.png",
            title=f"PCK vs alpha ({curve['n_pairs']} pair{'s' if curve['n_pairs'] != 1 else ''}, "
                  f"{curve['average']}, "
                  f"L by {protocol.threshold_by})")
    if category_curves and plots.category_curves:
        from semcorr.viz_stats import plot_category_curves

        per_cat = {"all": curve["pck"], **category_curves["pck"]} if curve else category_curves["pck"]
        written["pck_curve_per_category"] = plot_category_curves(
            {method or "this run": (category_curves["alphas"], per_cat)},
            out_dir / "pck_curve_per_category.png",
            title=f"PCK vs alpha per category ({category_curves['average']}, L by {protocol.threshold_by})")
    panels = report.panels
    if plots.dense_warp and panels:
        path = plot_dense_warp_rows(panels, out_dir / "dense_warp.png")
        if path is not None:
            written["dense_warp"] = path
    if plots.pca and report.pca_panels:
        written["pca"] = plot_pca_rows(report.pca_panels, out_dir / "pca.png")
    return written


def prediction_table(rows: Sequence[Mapping[str, Any]], read_image, n_pairs: int, alpha: float,
                     protocol: Protocol, max_points: Optional[int] = 50):
    """The W&B table of the first ``n_pairs`` prediction rows (:mod:`semcorr.predictions`):
    ``(columns, data)``, the rows' columns (lists as JSON text) and a ``thumbnail`` (an (h, w, 3)
    uint8 picture of the pair, correct / wrong at ``alpha``). ``([], [])`` when there is none."""
    rows = sorted(rows, key=lambda r: r["index"])[: max(n_pairs, 0)]
    if not rows:
        return [], []
    columns = table_columns(rows[0])
    data = []
    for row in rows:
        thumb = pair_thumbnail(row_record(row, protocol), read_image, alpha, protocol, max_points)
        data.append([table_cell(row.get(c)) for c in columns[:-1]] + [thumb])
    return columns, data
