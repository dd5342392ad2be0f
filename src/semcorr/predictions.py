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
trg_kps          [[x, y], ...] target ground truth (a coordinate that is not finite, on a keypoint
                 that is not valid, is null: the file is strict JSON, never NaN / Infinity)
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
lr_subset        only for data with a symmetry table (:mod:`semcorr.metrics.left_right`):
                 ["n11" | "n10" | "n1x" | null, ...] each scored keypoint's subset (null: not scored)
sym_trg_kps      [[x, y] | null, ...] the counterpart's target ground truth where it is visible there
geo_aware        [bool, ...] geometry-aware keypoints (GeoAware-SC)
===============  =================================================================================

Coordinates are written on the 0.0001-px grid that the PCK rule decides on
(:mod:`semcorr.metrics.functional`), so :func:`pck_from_predictions` recomputes every keypoint's
verdict from ``pred``, ``trg_kps``, ``trg_bbox`` and ``trg_imsize`` under the run's protocol and
gets ``metrics.json`` to the last bit; a sampled row (``kps_index``) contributes its exact
``n_valid`` / ``n_correct`` instead.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import torch

from semcorr.atomic import atomic_open
from semcorr.metrics.functional import pck_scores, summarize_pairs
from semcorr.metrics.left_right import CODES
from semcorr.metrics.protocol import Protocol


def _alpha_key(alpha: float) -> str:
    return f"{float(alpha):g}"


def _points(t: torch.Tensor) -> List[List[Optional[float]]]:
    """Coordinates already on the 0.0001 grid (float64): their shortest decimal form has at most 4
    decimals. A non-finite coordinate (only ever on a keypoint that is not valid) is ``null``:
    the file is strict JSON."""
    return [[v if math.isfinite(v) else None for v in p] for p in t.detach().cpu().double().tolist()]


def spread(mask: torch.Tensor, max_points: Optional[int]) -> np.ndarray:
    """Indices of the True entries of a (K,) bool mask, at most ``max_points`` of them, evenly
    spaced over the list (all when ``max_points`` is None): the keypoints a row keeps and a
    figure draws."""
    idx = torch.nonzero(mask.bool()).flatten().numpy()
    if max_points is not None and len(idx) > max_points:
        idx = idx[np.linspace(0, len(idx) - 1, max_points).round().astype(np.int64)]
    return idx


def prediction_row(record: Mapping[str, Any], max_points: Optional[int] = None) -> Dict[str, Any]:
    """One ``predictions.jsonl`` object from a :func:`semcorr.report.pair_records` record."""
    valid = record["valid"].bool()
    correct = record["correct"].bool()
    alphas = record["alphas"]
    row: Dict[str, Any] = {
        "index": int(record["index"]), "pair_id": record["pair_id"], "category": record["category"],
        "src_id": record["src_id"], "trg_id": record["trg_id"],
        "direction": record.get("direction", "src_to_trg"),
    }
    n_valid = int(valid.sum())
    keep = (torch.from_numpy(spread(valid, max_points)) if max_points is not None and n_valid > max_points
            else torch.arange(valid.shape[0]))
    err = record["norm_error"][keep].double().numpy()
    box = record["trg_bbox"]
    row.update({
        "src_kps": _points(record["src_kps"][keep]), "trg_kps": _points(record["trg_kps"][keep]),
        "pred": _points(record["pred"][keep]), "valid": valid[keep].tolist(),
        "error": [None if not np.isfinite(e) else round(float(e), 5) for e in err],
        "threshold": float(record["threshold"]),
        "correct": {_alpha_key(a): correct[keep, i].tolist() for i, a in enumerate(alphas)},
        "n_valid": n_valid,
        "n_correct": {_alpha_key(a): int(correct[:, i].sum()) for i, a in enumerate(alphas)},
        "trg_imsize": [int(v) for v in record["trg_imsize"].tolist()],
        "trg_bbox": None if torch.isnan(box).any() else [float(v) for v in box.double().tolist()],
    })
    if "lr_subset" in record:
        names = {code: name for name, code in CODES.items()}
        sym = record["sym_trg_kps"][keep].double()
        row.update({
            "lr_subset": [names.get(int(c)) for c in record["lr_subset"][keep].tolist()],
            "sym_trg_kps": [None if bool(torch.isnan(p).any()) else p.tolist() for p in sym],
            "geo_aware": record["geo_aware"][keep].tolist(),
        })
    if len(keep) < valid.shape[0]:
        row["n_queries"] = int(valid.shape[0])
        row["kps_index"] = keep.tolist()
    return row


def write_predictions(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write rows as JSON lines, sorted by ``index``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as f:
        for row in sorted(rows, key=lambda r: r["index"]):
            f.write(json.dumps(row, separators=(",", ":"), allow_nan=False) + "\n")
    return path


def _tensor(points: Sequence[Sequence[Optional[float]]]) -> torch.Tensor:
    """float64 coordinates of a row, ``null`` read as NaN."""
    return torch.tensor([[float("nan") if v is None else v for v in p] for p in points],
                        dtype=torch.float64)


def read_predictions(path: str | Path) -> List[Dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def row_counts(row: Mapping[str, Any], protocol: Protocol,
               alphas: Sequence[float]) -> tuple[torch.Tensor, int]:
    """(A,) correct keypoints of a row at ``alphas`` and its number of valid keypoints, recomputed
    from its coordinates by the PCK rule (:func:`semcorr.metrics.pck_scores`); a sampled row
    (``kps_index``: only some queries written) gives its stored exact counts."""
    if "kps_index" in row:
        return (torch.tensor([float(row["n_correct"][_alpha_key(a)]) for a in alphas],
                             dtype=torch.float64), int(row["n_valid"]))
    def pts(key: str) -> torch.Tensor:
        return _tensor(row[key]).reshape(1, -1, 2)

    box = row.get("trg_bbox")
    scores = pck_scores(protocol, alphas, pts("pred"), pts("trg_kps"),
                        torch.tensor(row["valid"], dtype=torch.bool).reshape(1, -1),
                        None if box is None else torch.tensor([box], dtype=torch.float64),
                        torch.tensor([row["trg_imsize"]], dtype=torch.long))
    n_correct, n_valid = scores.counts()
    return n_correct[0], int(n_valid[0])


def pck_from_predictions(rows: Sequence[Mapping[str, Any]], protocol: Protocol,
                         alphas: Optional[Sequence[float]] = None) -> Dict[str, Any]:
    """PCK in percent from prediction rows, recomputed from their coordinates under ``protocol``
    (the one PCK rule, :mod:`semcorr.metrics.functional`): the same dict as
    :meth:`semcorr.metrics.PCK.compute` (categories in first-seen order). ``alphas``: default the
    rows' own."""
    rows = [r for r in rows if r["n_valid"] > 0]
    if not rows:
        return {"n_pairs": 0, "n_keypoints": 0}
    alphas = [float(a) for a in (alphas if alphas is not None else rows[0]["n_correct"])]
    counts = [row_counts(r, protocol, alphas) for r in rows]
    n_correct = torch.stack([c for c, _ in counts])
    n_valid = torch.tensor([n for _, n in counts], dtype=torch.float64)
    return summarize_pairs(n_correct, n_valid, [r["category"] for r in rows], protocol, alphas)


def row_record(row: Mapping[str, Any], protocol: Protocol) -> Dict[str, Any]:
    """A row as the record a pair drawing needs (``semcorr.viz``, as :func:`semcorr.report.pair_records`
    makes it): ``src_id``, ``trg_id``, ``category``, ``src_kps``, ``trg_kps``, ``pred`` (K, 2),
    ``valid`` (K,), ``dist_sq`` (K,) and ``threshold`` (recomputed from the coordinates under
    ``protocol``), ``norm_error`` (K,), ``correct`` (K, A), ``alphas`` and ``strict``."""
    def pts(key: str) -> torch.Tensor:
        return _tensor(row[key]).reshape(-1, 2)

    valid = torch.tensor(row["valid"], dtype=torch.bool).reshape(-1)
    box = row.get("trg_bbox")
    scores = pck_scores(protocol, (), pts("pred")[None], pts("trg_kps")[None], valid[None],
                        None if box is None else torch.tensor([box], dtype=torch.float64),
                        torch.tensor([row["trg_imsize"]], dtype=torch.long))
    alphas = tuple(float(a) for a in row["correct"])
    correct = [row["correct"][k] for k in row["correct"]]
    return {
        "src_id": row["src_id"], "trg_id": row["trg_id"], "category": row["category"],
        "src_kps": pts("src_kps"), "trg_kps": pts("trg_kps"), "pred": pts("pred"), "valid": valid,
        "dist_sq": scores.dist_sq[0], "threshold": float(row["threshold"]),
        "norm_error": torch.tensor([float("nan") if e is None else e for e in row["error"]],
                                   dtype=torch.float64).reshape(-1),
        "correct": torch.tensor(correct, dtype=torch.bool).reshape(len(alphas), len(valid)).T,
        "alphas": alphas, "strict": protocol.strict,
    }


def table_columns(row: Mapping[str, Any]) -> List[str]:
    """The W&B table's columns: a row's keys and ``thumbnail``."""
    return [k for k in row] + ["thumbnail"]


def table_cell(value: Any) -> Any:
    """A W&B table cell: numbers and strings as they are, lists and dicts as JSON text."""
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return value
