"""A finished evaluation run as per-pair arrays, from what it stored: ``metrics.json`` (dataset,
split, protocol, alphas) and ``predictions.jsonl`` (:mod:`semcorr.predictions`). No model call.

:func:`score_rows` rescoring every row at once (padded to the largest keypoint count) by the one
PCK rule (:func:`semcorr.metrics.pck_scores`) is what :mod:`semcorr.compare`, the per-category
curves and ``benchmarks/evaluation_stats.py`` build on. A row that holds only a sample of its
keypoints (``kps_index``, dense TSS flow) contributes its stored exact counts at the run's
alphas; at other alphas (curves) the written sample stands for the pair.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from semcorr.errors import DataError
from semcorr.metrics.functional import KeypointScores, pck_curve_counts, pck_scores
from semcorr.metrics.left_right import (CODES, NOT_SCORED, LeftRightCounts, LeftRightEvidence,
                                        left_right_counts)
from semcorr.metrics.protocol import Protocol
from semcorr.predictions import read_predictions


@dataclass
class ScoredRows:
    """Rows rescored together: ``scores`` (N rows, K = the largest row), ``trg_imsize`` (N, 2),
    ``evidence`` (left/right, None unless every row has it) and ``sampled`` (N,) bool rows that
    hold a sample of their keypoints."""

    scores: KeypointScores
    trg_imsize: torch.Tensor
    evidence: Optional[LeftRightEvidence]
    sampled: np.ndarray


def score_rows(rows: Sequence[Mapping[str, Any]], protocol: Protocol,
               alphas: Sequence[float]) -> ScoredRows:
    """Every row's keypoints scored at ``alphas`` under ``protocol`` in one padded batch."""
    n = len(rows)
    k = max((len(r["valid"]) for r in rows), default=0)
    pred = np.zeros((n, k, 2))
    gt = np.zeros((n, k, 2))
    valid = np.zeros((n, k), dtype=bool)
    box = np.full((n, 4), np.nan)
    imsize = np.zeros((n, 2), dtype=np.int64)
    with_lr = n > 0 and all("lr_subset" in r for r in rows)
    subset = np.full((n, k), NOT_SCORED, dtype=np.int8)
    sym = np.full((n, k, 2), np.nan)
    geo = np.zeros((n, k), dtype=bool)
    for i, r in enumerate(rows):
        m = len(r["valid"])
        if m:
            pred[i, :m] = r["pred"]
            gt[i, :m] = r["trg_kps"]
            valid[i, :m] = r["valid"]
        if r.get("trg_bbox") is not None:
            box[i] = r["trg_bbox"]
        imsize[i] = r["trg_imsize"]
        if with_lr and m:
            subset[i, :m] = [NOT_SCORED if s is None else CODES[s] for s in r["lr_subset"]]
            sym[i, :m] = [(np.nan, np.nan) if p is None else p for p in r["sym_trg_kps"]]
            geo[i, :m] = r["geo_aware"]
    size = torch.from_numpy(imsize)
    needs_box = protocol.threshold_by == "bbox"
    scores = pck_scores(protocol, alphas, torch.from_numpy(pred), torch.from_numpy(gt),
                        torch.from_numpy(valid), torch.from_numpy(box) if needs_box else None, size)
    evidence = (LeftRightEvidence(torch.from_numpy(subset), torch.from_numpy(sym), torch.from_numpy(geo))
                if with_lr else None)
    sampled = np.asarray(["kps_index" in r for r in rows], dtype=bool)
    return ScoredRows(scores, size, evidence, sampled)


def row_pair_counts(rows: Sequence[Mapping[str, Any]], scored: ScoredRows,
                    alphas: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """(N, A) correct and (N,) valid keypoint counts per pair: recomputed, or a sampled row's
    stored exact counts."""
    n_correct, n_valid = (t.numpy() for t in scored.scores.counts())
    n_correct, n_valid = n_correct.copy(), n_valid.copy()
    for i in np.flatnonzero(scored.sampled):
        n_correct[i] = [rows[i]["n_correct"][f"{float(a):g}"] for a in alphas]
        n_valid[i] = rows[i]["n_valid"]
    return n_correct, n_valid


@dataclass
class RunData:
    """One run's per-pair results (N pairs in ``predictions.jsonl`` order).

    Attributes:
        path: the run folder. name: its folder name. metrics: ``metrics.json``.
        protocol, dataset, split, alphas: from ``metrics.json``.
        pair_id, category: (N,) lists. n_correct: (N, A). n_valid: (N,).
        left_right: per-pair :class:`LeftRightCounts`, None for runs without left/right data.
        curve_alphas, curve_correct, curve_valid: (A',), (N, A') correct and (N,) valid counts on a
            grid of alphas (when asked; a sampled row's written keypoints).
    """

    path: Path
    name: str
    metrics: Dict[str, Any]
    protocol: Protocol
    dataset: str
    split: str
    alphas: Tuple[float, ...]
    pair_id: List[str]
    category: List[str]
    n_correct: np.ndarray
    n_valid: np.ndarray
    left_right: Optional[LeftRightCounts]
    curve_alphas: Optional[np.ndarray] = None
    curve_correct: Optional[np.ndarray] = None
    curve_valid: Optional[np.ndarray] = None

    def reorder(self, order: Sequence[int]) -> "RunData":
        """The same run with its pairs in ``order`` (indices into its own order)."""
        idx = np.asarray(order, dtype=np.int64)
        return RunData(
            self.path, self.name, self.metrics, self.protocol, self.dataset, self.split, self.alphas,
            [self.pair_id[i] for i in idx], [self.category[i] for i in idx], self.n_correct[idx],
            self.n_valid[idx], None if self.left_right is None else self.left_right.select(torch.from_numpy(idx)),
            self.curve_alphas, None if self.curve_correct is None else self.curve_correct[idx],
            None if self.curve_valid is None else self.curve_valid[idx])


def read_metrics(run: str | Path) -> Tuple[Path, Dict[str, Any]]:
    """A run folder (or its ``metrics.json``) and its parsed metrics; :class:`DataError` naming
    what is missing."""
    path = Path(run).expanduser()
    folder = path.parent if path.name == "metrics.json" else path
    metrics_path = folder / "metrics.json"
    if not metrics_path.is_file():
        raise DataError(f"{folder}: no metrics.json (not a finished evaluation run)")
    with open(metrics_path, encoding="utf-8") as f:
        metrics = json.load(f)
    for key in ("dataset", "split", "protocol", "pck"):
        if key not in metrics:
            raise DataError(f"{metrics_path} has no {key!r}: not an evaluation run's metrics")
    return folder, metrics


def load_run(run: str | Path, curve_alphas: Optional[Sequence[float]] = None) -> RunData:
    """Read a run folder and rescore its ``predictions.jsonl`` under its own protocol and alphas
    (and on ``curve_alphas`` when given)."""
    folder, metrics = read_metrics(run)
    rows_path = folder / "predictions.jsonl"
    if not rows_path.is_file():
        raise DataError(f"{folder}: no predictions.jsonl (run with predictions.enabled=true)")
    rows = read_predictions(rows_path)
    protocol = Protocol.from_dict(metrics["protocol"])
    alphas = tuple(float(a) for a in metrics["pck"])
    scored = score_rows(rows, protocol, alphas)
    n_correct, n_valid = row_pair_counts(rows, scored, alphas)
    left_right = None
    if scored.evidence is not None and not scored.sampled.any():
        left_right = left_right_counts(scored.scores, scored.evidence, protocol, scored.trg_imsize)
    grid = curve = curve_valid = None
    if curve_alphas is not None:
        grid = np.asarray(curve_alphas, dtype=np.float64)
        curve = pck_curve_counts(scored.scores, grid.tolist()).numpy().astype(np.float64)
        curve_valid = scored.scores.valid.sum(1).numpy().astype(np.float64)
    return RunData(folder, folder.name, metrics, protocol, str(metrics["dataset"]), str(metrics["split"]),
                   alphas, [str(r["pair_id"]) for r in rows], [str(r["category"]) for r in rows],
                   n_correct, n_valid, left_right, grid, curve, curve_valid)
