"""Per-pair predictions of an evaluation run: ``predictions.jsonl`` (one JSON object per pair, in
dataset order) and the PCK recomputed from it.

A line (``docs/datasets.md`` documents it for users), coordinates in original image pixels:

===============  =================================================================================
key              value
===============  =================================================================================
index            the pair's index in the dataset (sorts records gathered from several processes)
pair_id          the dataset's pair id
category         the category the pair is scored under
src_id, trg_id   image ids as served: the source holds the query keypoints, the prediction lies in
                 the target (a ``trg_to_src`` protocol swaps them relative to the annotation)
direction        ``src_to_trg`` or ``trg_to_src``
src_kps          [[x, y], ...] query keypoints (source ground truth)
trg_kps          [[x, y], ...] target ground truth
pred             [[x, y], ...] predicted target locations
valid            [bool, ...] scored keypoints (annotated in both images)
error            [float | null, ...] distance / L in the scoring frame (null where not valid)
threshold        L, the length alpha multiplies (in the protocol's scoring frame: original pixels,
                 or F for an F x F frame)
correct          {"0.1": [bool, ...], ...} per alpha, False where not valid
n_valid          number of valid keypoints of the pair (all of them, also when sampled)
n_correct        {"0.1": int, ...} correct keypoints of the pair (all of them)
trg_imsize       [h, w] of the target image; trg_bbox [x1, y1, x2, y2] or null
n_queries,       only for a pair with more valid keypoints than ``predictions.max_points`` (dense
kps_index        TSS flow): the per-keypoint lists hold that many valid queries, evenly spaced,
                 ``kps_index`` their positions in the full list of ``n_queries``
===============  =================================================================================

PCK follows from ``n_valid`` / ``n_correct`` (:func:`pck_from_predictions`); with no sampling the
per-keypoint lists give the same counts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import torch

from semcorr.metrics.pck import on_pck_grid


def _alpha_key(alpha: float) -> str:
    return f"{float(alpha):g}"


def _points(t: torch.Tensor) -> List[List[float]]:
    return np.round(t.detach().cpu().double().numpy(), 2).tolist()


def spread(mask: torch.Tensor, max_points: Optional[int]) -> np.ndarray:
    """Indices of the True entries of a (K,) bool mask, at most ``max_points`` of them, evenly
    spaced over the list (all when ``max_points`` is None): the keypoints a row keeps and a
    figure draws."""
    idx = torch.nonzero(mask.bool()).flatten().numpy()
    if max_points is not None and len(idx) > max_points:
        idx = idx[np.linspace(0, len(idx) - 1, max_points).round().astype(np.int64)]
    return idx


def prediction_row(record: Mapping[str, Any], alphas: Sequence[float],
                   max_points: Optional[int] = None) -> Dict[str, Any]:
    """One ``predictions.jsonl`` object from a :func:`semcorr.report.pair_records` record that
    holds ``correct`` (K, A)."""
    valid = record["valid"].bool()
    correct = record["correct"].bool()
    row: Dict[str, Any] = {
        "index": int(record["index"]), "pair_id": record["pair_id"], "category": record["category"],
        "src_id": record["src_id"], "trg_id": record["trg_id"],
        "direction": record.get("direction", "src_to_trg"),
    }
    n_valid = int(valid.sum())
    keep = (torch.from_numpy(spread(valid, max_points)) if max_points is not None and n_valid > max_points
            else torch.arange(valid.shape[0]))
    err = record["norm_error"][keep].double().numpy()
    row.update({
        "src_kps": _points(record["src_kps"][keep]), "trg_kps": _points(record["trg_kps"][keep]),
        "pred": _points(record["pred"][keep]), "valid": valid[keep].tolist(),
        "error": [None if not np.isfinite(e) else round(float(e), 5) for e in err],
        "threshold": float(record["threshold"]),
        "correct": {_alpha_key(a): correct[keep, i].tolist() for i, a in enumerate(alphas)},
        "n_valid": n_valid,
        "n_correct": {_alpha_key(a): int(correct[:, i].sum()) for i, a in enumerate(alphas)},
        "trg_imsize": [int(v) for v in record["trg_imsize"].tolist()],
        "trg_bbox": None if torch.isnan(record["trg_bbox"]).any() else
        [round(float(v), 2) for v in record["trg_bbox"].tolist()],
    })
    if len(keep) < valid.shape[0]:
        row["n_queries"] = int(valid.shape[0])
        row["kps_index"] = keep.tolist()
    return row


def write_predictions(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write rows as JSON lines, sorted by ``index``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in sorted(rows, key=lambda r: r["index"]):
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
    return path


def read_predictions(path: str | Path) -> List[Dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def pck_from_predictions(rows: Sequence[Mapping[str, Any]], average: str = "per_image",
                         headline: str = "pooled") -> Dict[str, Any]:
    """PCK in percent from prediction rows, as :class:`semcorr.metrics.PCK` computes it (each
    pair's PCK on its 2^-32 grid, :func:`semcorr.metrics.pck.on_pck_grid`):
    ``pck``, ``pck_pooled``, ``pck_category_mean``, ``pck_per_image``, ``pck_per_keypoint``,
    ``pck_per_category``, ``n_pairs``, ``n_keypoints``. Pairs without a valid keypoint count
    for nothing."""
    rows = [r for r in rows if r["n_valid"] > 0]
    if not rows:
        return {"n_pairs": 0, "n_keypoints": 0}
    alphas = list(rows[0]["n_correct"])

    def summary(group: Sequence[Mapping[str, Any]]) -> Dict[str, Dict[str, float]]:
        total = sum(r["n_valid"] for r in group)
        return {
            "per_image": {a: 100.0 * sum(on_pck_grid(r["n_correct"][a] / r["n_valid"]) for r in group)
                          / len(group) for a in alphas},
            "per_keypoint": {a: 100.0 * sum(r["n_correct"][a] for r in group) / total for a in alphas},
        }

    overall = summary(rows)
    categories = list(dict.fromkeys(r["category"] for r in rows))
    per_cat = {c: summary([r for r in rows if r["category"] == c])[average] for c in categories}
    cat_mean = {a: sum(v[a] for v in per_cat.values()) / len(per_cat) for a in alphas}
    pooled = overall[average]
    return {
        "pck": pooled if headline == "pooled" else cat_mean,
        "pck_pooled": pooled, "pck_category_mean": cat_mean,
        "pck_per_image": overall["per_image"], "pck_per_keypoint": overall["per_keypoint"],
        "pck_per_category": per_cat,
        "n_pairs": len(rows), "n_keypoints": sum(r["n_valid"] for r in rows),
    }


def row_record(row: Mapping[str, Any]) -> Dict[str, Any]:
    """A row as the tensors a pair drawing needs (``semcorr.viz``): ``src_id``, ``trg_id``,
    ``category``, ``src_kps``, ``trg_kps``, ``pred`` (K, 2), ``valid`` (K,), ``norm_error`` (K,)."""
    def pts(key: str) -> torch.Tensor:
        return torch.tensor(row[key], dtype=torch.float32).reshape(-1, 2)

    return {
        "src_id": row["src_id"], "trg_id": row["trg_id"], "category": row["category"],
        "src_kps": pts("src_kps"), "trg_kps": pts("trg_kps"), "pred": pts("pred"),
        "valid": torch.tensor(row["valid"], dtype=torch.bool).reshape(-1),
        "norm_error": torch.tensor([float("nan") if e is None else e for e in row["error"]],
                                   dtype=torch.float64).reshape(-1),
    }


def table_columns(row: Mapping[str, Any]) -> List[str]:
    """The W&B table's columns: a row's keys and ``thumbnail``."""
    return [k for k in row] + ["thumbnail"]


def table_cell(value: Any) -> Any:
    """A W&B table cell: numbers and strings as they are, lists and dicts as JSON text."""
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return value
