"""The figures of a run that need the model (dense warps) next to those drawn from its report.

Computation here, drawing in :mod:`semcorr.viz`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch

from semcorr.config import group_config
from semcorr.data.schema import collate
from semcorr.matchers import build_matcher
from semcorr.models.module import symmetric_cells
from semcorr.predictions import row_record, table_cell, table_columns
from semcorr.viz import pair_thumbnail, plot_dense_warp_rows, plot_pck_curves, plot_predictions
from semcorr.warp import warp_match


@torch.no_grad()
def dense_warp_rows(module, dataset, n_pairs: int, compare: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """Warp the first ``n_pairs`` pairs of ``dataset`` with the module's matcher and with the
    matchers named in ``compare`` (``matcher=<name>`` group files, as configured), all on the
    module's own (cached) features. Returns per pair ``src``, ``trg`` (content crops of the
    network frame), ``warps`` (name -> image) and ``title``."""
    others = {name: build_matcher(group_config("matcher", name)).to(module.device) for name in compare}
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


def write_eval_figures(module, report, dataset, out_dir: Union[str, Path], plots, threshold_by: str,
                       curve: Optional[Mapping[str, Any]] = None, method: str = "") -> Dict[str, Path]:
    """The figures of an evaluation run, written into ``out_dir`` (keys are W&B image keys):
    ``keypoints`` (the ``report``'s kept pairs, correct/wrong at ``plots.alpha``, at most
    ``plots.max_points`` matches per pair),
    ``pck_curve`` (``curve`` from :func:`semcorr.metrics.curve_entry`, all pairs) and
    ``dense_warp`` (first ``plots.n_pairs`` pairs, the run's matcher and those in
    ``plots.warp_compare``)."""
    out_dir = Path(out_dir)
    written: Dict[str, Path] = {}
    path = plot_predictions(report.predictions, dataset.read_image, out_dir / "keypoints.png",
                            alpha=plots.alpha, threshold_by=threshold_by,
                            max_points=getattr(plots, "max_points", 50))
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


def prediction_table(rows: Sequence[Mapping[str, Any]], read_image, n_pairs: int, alpha: float,
                     threshold_by: str, max_points: Optional[int] = 50):
    """The W&B table of the first ``n_pairs`` prediction rows (:mod:`semcorr.predictions`):
    ``(columns, data)``, the rows' columns (lists as JSON text) and a ``thumbnail`` (an (h, w, 3)
    uint8 picture of the pair, correct / wrong at ``alpha``). ``([], [])`` when there is none."""
    rows = sorted(rows, key=lambda r: r["index"])[: max(n_pairs, 0)]
    if not rows:
        return [], []
    columns = table_columns(rows[0])
    data = []
    for row in rows:
        thumb = pair_thumbnail(row_record(row), read_image, alpha, threshold_by, max_points)
        data.append([table_cell(row.get(c)) for c in columns[:-1]] + [thumb])
    return columns, data
