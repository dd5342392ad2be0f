"""What a run reports beyond its logged metrics, collected by callbacks from the step outputs
(:class:`semcorr.models.module.StepOutput`: the net's :class:`~semcorr.net.MatchOutput` and the
batch's :class:`~semcorr.metrics.KeypointScores`) — nothing here scores a keypoint again.

- :func:`pair_records`: one record per evaluated pair (ids, keypoints, prediction, L, which
  keypoints are correct), in original image pixels;
- :class:`EvalReport`: during ``trainer.test``, the metric's result, every pair's
  ``predictions.jsonl`` row (:mod:`semcorr.predictions`) and PCK-curve counts, and the first
  ``keep`` pairs' records, dense warps and PCA maps (figures are drawn from these: no second
  forward);
- :class:`EvalTiming`: backbone / matching time and backbone calls during ``trainer.test``
  (a :class:`~semcorr.net.StageClock` on the net, only while testing);
- :class:`PredictionPanel`: during training, a figure of the first validation pairs after each
  validation.

Under N processes the callbacks gather what the ranks collected (in dataset order) before they
report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import lightning as L
import torch

from semcorr.distributed import gather_objects
from semcorr.matchers.base import Matcher
from semcorr.metrics.functional import KeypointScores, pck_curve_counts, quantize
from semcorr.metrics.left_right import LeftRightCounts, evidence_from_batch, left_right_counts
from semcorr.metrics.protocol import Protocol
from semcorr.net import MatchOutput, StageClock, symmetric_cells
from semcorr.pca import pca_panel
from semcorr.predictions import prediction_row
from semcorr.warp import warp_match


def pair_records(batch: Dict[str, Any], scores: KeypointScores) -> List[Dict[str, Any]]:
    """Per pair of a batch: ``index``, ``pair_id``, ``category``, ``src_id``, ``trg_id``,
    ``direction``, ``src_kps``, ``trg_kps``, ``pred`` (K, 2) float64 on the 0.0001-px grid of
    ``predictions.jsonl``, ``valid`` (K,), ``trg_bbox``, ``trg_imsize``, ``threshold`` (L, in the
    scoring frame), ``dist_sq`` (K,) squared distance in that frame, ``norm_error`` (K,) = dist / L
    (NaN where not valid), ``correct`` (K, A) bool, ``alphas`` and ``strict`` (K: the pair's own
    keypoints, without the batch's padding). All on the CPU;
    the PCK evidence is ``scores`` (:func:`semcorr.metrics.pck_scores`), not recomputed.
    A batch with left/right keys (:mod:`semcorr.data.left_right`) adds ``lr_subset`` (K,) int8
    subset codes, ``sym_trg_kps`` (K, 2) and ``geo_aware`` (K,)
    (:class:`semcorr.metrics.left_right.LeftRightEvidence`)."""
    src_kps = quantize(batch["src_kps_orig"]).cpu()
    pred, gt, valid = scores.pred.cpu(), scores.gt.cpu(), scores.valid.cpu()
    norm, correct, dist_sq = scores.norm_error.cpu(), scores.correct.cpu(), scores.dist_sq.cpu()
    lengths = scores.lengths.cpu()
    box = scores.trg_bbox.cpu() if scores.trg_bbox is not None else quantize(batch["trg_bbox"]).cpu()
    imsize = batch["trg_imsize"].cpu()
    index, direction, counts = batch.get("index"), batch.get("direction"), batch.get("kps_count")
    evidence = evidence_from_batch(batch, valid)
    records = []
    for b in range(valid.shape[0]):
        k = int(counts[b]) if counts is not None else valid.shape[1]
        records.append({
            "index": int(index[b]) if index is not None else b,
            "pair_id": batch["pair_id"][b] if "pair_id" in batch else f"{batch['src_id'][b]}->{batch['trg_id'][b]}",
            "category": batch["category"][b], "src_id": batch["src_id"][b], "trg_id": batch["trg_id"][b],
            "direction": direction[b] if direction is not None else "src_to_trg",
            "src_kps": src_kps[b, :k], "trg_kps": gt[b, :k], "pred": pred[b, :k],
            "valid": valid[b, :k], "trg_bbox": box[b], "trg_imsize": imsize[b],
            "threshold": float(lengths[b]), "dist_sq": dist_sq[b, :k], "norm_error": norm[b, :k],
            "correct": correct[b, :k], "alphas": scores.alphas, "strict": scores.strict,
        })
        if evidence is not None:
            records[-1].update({"lr_subset": evidence.subset[b, :k], "sym_trg_kps": evidence.sym_gt[b, :k],
                                "geo_aware": evidence.geo[b, :k]})
    return records


def warp_panel(batch: Dict[str, Any], match: MatchOutput, b: int, name: str,
               compare: Mapping[str, Matcher]) -> Dict[str, Any]:
    """The dense-warp figure's row for pair ``b``: ``src``, ``trg`` (content crops of the network
    frame), ``warps`` (matcher name -> the target warped into the source frame through that
    matcher's scores) and ``title``. ``compare``: more matchers, run on the pair's head output."""
    warps = {}
    src_crop, trg_crop, warps[name] = (t.cpu() for t in warp_match(batch, match, index=b))
    if compare:
        one = {k: (v[b: b + 1] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        src, trg = (fm.with_features(fm.features[b: b + 1]) for fm in (match.src, match.trg))
        src.valid, trg.valid = match.src.valid[b: b + 1], match.trg.valid[b: b + 1]
        sym = symmetric_cells(one, src.grid, src.stride)
        for other, matcher in compare.items():
            result = matcher.to(src.features.device)(src, trg, sym_pairs=sym)
            warps[other] = warp_match(batch, match, scores=result.scores[0], index=b)[2].cpu()
    return {"src": src_crop, "trg": trg_crop, "warps": warps,
            "title": f"{batch['category'][b]}: {batch['pair_id'][b] if 'pair_id' in batch else b}"}


class EvalReport(L.Callback):
    """Collects, over one ``trainer.test``, in dataset order:

    - ``result``: the test metric's :meth:`~semcorr.metrics.PCK.compute` (all ranks);
    - per pair (``entries``): ``category``, ``curve`` (A',) correct keypoints at each alpha of
      ``curve_alphas``, ``n_correct`` (A,) at the metric's alphas and ``n_valid``; ``left_right``
      (:class:`~semcorr.metrics.left_right.LeftRightCounts` of the pair) when the data has
      left/right keys; the ``predictions.jsonl`` ``row`` (when ``rows``); for the first ``keep``
      pairs, their ``record`` (:func:`pair_records`, the keypoint figure) and dense-warp
      ``panel`` (:func:`warp_panel`, when ``dense_warp``) and PCA maps ``pca``
      (:func:`semcorr.pca.pca_panel` of the features the matcher saw, when ``pca``).

    Under N processes each rank collects its shard and, at the end of the test epoch, every rank
    receives all of them (:func:`semcorr.distributed.gather_objects`) ordered by the pairs'
    dataset ``index``: the report equals a one-process run's. Per pair only compact entries are
    kept, so dense queries (TSS) stay small.

    Args:
        curve_alphas: the alphas of the PCK curve.
        keep: how many pairs' records and panels to keep for figures.
        rows: keep ``predictions.jsonl`` rows; ``max_points``: a pair with more valid keypoints
            writes this many (:func:`semcorr.predictions.prediction_row`); None: all.
        dense_warp: keep dense-warp panels of the kept pairs; ``method``: the run's matcher's name
            in them; ``compare``: more matchers warped on the same features.
        pca: keep PCA feature maps of the kept pairs.
    """

    def __init__(self, curve_alphas: Sequence[float], keep: int = 0,
                 rows: bool = True, max_points: Optional[int] = None, dense_warp: bool = False,
                 method: str = "this run", compare: Optional[Mapping[str, Matcher]] = None,
                 pca: bool = False) -> None:
        self.curve_alphas = [float(a) for a in curve_alphas]
        self.keep, self.keep_rows, self.max_points = int(keep), rows, max_points
        self.dense_warp, self.method, self.compare = dense_warp, method, dict(compare or {})
        self.pca = pca
        self.entries: List[Dict[str, Any]] = []
        self.result: Optional[Dict[str, Any]] = None
        self._kept = 0  # entries of this rank holding a record

    @property
    def n_pairs(self) -> int:
        return len(self.entries)

    @property
    def rows(self) -> List[Dict[str, Any]]:
        return [e["row"] for e in self.entries if "row" in e]

    @property
    def records(self) -> List[Dict[str, Any]]:
        """The first ``keep`` pairs' records (the keypoint figure)."""
        return [e["record"] for e in self.entries if "record" in e][: self.keep]

    @property
    def panels(self) -> List[Dict[str, Any]]:
        """The first ``keep`` pairs' dense-warp panels."""
        return [e["panel"] for e in self.entries if "panel" in e][: self.keep]

    @property
    def pca_panels(self) -> List[Dict[str, Any]]:
        """The first ``keep`` pairs' PCA feature maps."""
        return [e["pca"] for e in self.entries if "pca" in e][: self.keep]

    def pair_counts(self) -> tuple[torch.Tensor, torch.Tensor, List[str]]:
        """(N, A) correct counts at the metric's alphas, (N,) valid counts and the N categories
        of every pair (the input of :mod:`semcorr.metrics.bootstrap`)."""
        if not self.entries:
            return torch.zeros(0, 0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64), []
        return (torch.stack([e["n_correct"] for e in self.entries]),
                torch.tensor([e["n_valid"] for e in self.entries], dtype=torch.float64),
                [e["category"] for e in self.entries])

    def left_right(self) -> Optional[LeftRightCounts]:
        """Every pair's left/right counts, None unless every pair has them."""
        parts = [e.get("left_right") for e in self.entries]
        if not parts or any(p is None for p in parts):
            return None
        return LeftRightCounts.cat(parts)

    def curve_counts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, A') correct counts at the curve's alphas and (N,) valid counts of every pair."""
        if not self.entries:
            return torch.zeros(0, len(self.curve_alphas), dtype=torch.long), torch.zeros(0)
        return (torch.stack([e["curve"] for e in self.entries]),
                torch.tensor([e["n_valid"] for e in self.entries], dtype=torch.float64))

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.entries, self.result, self._kept = [], None, 0

    @torch.no_grad()
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        scores: KeypointScores = outputs["pck"]
        curve = pck_curve_counts(scores, self.curve_alphas).cpu()
        n_correct = scores.counts()[0].cpu()
        evidence = evidence_from_batch(batch, scores.valid)
        lr = None if evidence is None else left_right_counts(scores, evidence, pl_module.test_metric.protocol,
                                                             batch["trg_imsize"])
        for b, record in enumerate(pair_records(batch, scores)):
            entry: Dict[str, Any] = {"index": record["index"], "category": record["category"],
                                     "curve": curve[b], "n_correct": n_correct[b],
                                     "n_valid": int(record["valid"].sum())}
            if lr is not None:
                entry["left_right"] = lr.select(torch.tensor([b]))
            if self.keep_rows:
                entry["row"] = prediction_row(record, self.max_points)
            # this rank's first `keep` records hold the first `keep` of all ranks (see gathering)
            if self._kept < self.keep:
                entry["record"] = record
                if self.dense_warp:
                    entry["panel"] = warp_panel(batch, outputs["match"], b, self.method, self.compare)
                if self.pca:
                    entry["pca"] = pca_panel(batch, outputs["match"], b)
                self._kept += 1
            self.entries.append(entry)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.result = pl_module.test_metric.compute()  # cached: the module logs the same values
        shards = gather_objects(self.entries)
        self.entries = sorted((e for s in shards for e in s), key=lambda e: e["index"])


class PoseAlignReport(L.Callback):
    """Which pairs took Pose-Align's mirrored branch (``result.extras["pose_align"]`` of
    :class:`~semcorr.pose_align.PoseAlignedNet`) during ``trainer.test``, gathered over ranks in
    dataset order: ``entries`` = [(index, category, flipped)]."""

    def __init__(self) -> None:
        self.entries: List[tuple] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.entries = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        flipped = outputs["match"].result.extras["pose_align"]["flipped"].tolist()
        index = batch.get("index")
        for b, f in enumerate(flipped):
            self.entries.append((int(index[b]) if index is not None else b, batch["category"][b], bool(f)))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        shards = gather_objects(self.entries)
        self.entries = sorted((e for s in shards for e in s), key=lambda e: e[0])


class EvalTiming(L.Callback):
    """Backbone and matching time during ``trainer.test``: a :class:`~semcorr.net.StageClock` is put
    on the net for the test epoch only (training steps are never timed or synchronised).

    ``timing()`` after the test: ``backbone_ms_per_image``, ``match_ms_per_pair`` and
    ``backbone_calls``; under N processes totals over the ranks (each has its own feature cache).
    """

    def __init__(self) -> None:
        self.ms: Dict[str, float] = {}
        self.backbone_calls = self.n_pairs = 0
        self._clock: Optional[StageClock] = None
        self._calls_at_start = 0

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._clock = pl_module.net.clock = StageClock()
        self._calls_at_start = pl_module.net.extractor.backbone_calls
        self.n_pairs = 0

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.n_pairs += int(batch["src_img"].shape[0])

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.net.clock = None
        mine = {"ms": self._clock.totals() if self._clock else {}, "pairs": self.n_pairs,
                "calls": pl_module.net.extractor.backbone_calls - self._calls_at_start}
        shards = gather_objects(mine)
        self.ms = {k: sum(s["ms"].get(k, 0.0) for s in shards) for k in {k for s in shards for k in s["ms"]}}
        self.backbone_calls = sum(s["calls"] for s in shards)
        self.n_pairs = sum(s["pairs"] for s in shards)

    def timing(self) -> Dict[str, float]:
        return {
            "backbone_ms_per_image": self.ms.get("backbone", 0.0) / max(self.backbone_calls, 1),
            "match_ms_per_pair": self.ms.get("match", 0.0) / max(self.n_pairs, 1),
            "backbone_calls": self.backbone_calls,
        }


class PredictionPanel(L.Callback):
    """After each validation, draws the first ``keep`` validation pairs and logs the figure.

    Args:
        read_image: ``read_image(image_id) -> (3, h, w)`` of the validation dataset.
        out_dir: where ``val_matches/step_<n>.png`` goes.
        alpha: correct / wrong colouring at this alpha (by the PCK rule,
            :func:`semcorr.metrics.functional.correct_at`).
        protocol: the run's protocol (named in the titles).
        log_image: ``log_image(loggers, key, path)`` (see :mod:`semcorr.cli.loggers`).
    """

    def __init__(self, read_image: Callable[[str], torch.Tensor], out_dir: str | Path, alpha: float,
                 protocol: Protocol, log_image, keep: int = 4) -> None:
        self.read_image, self.out_dir = read_image, Path(out_dir)
        self.alpha, self.log_image, self.protocol = alpha, log_image, protocol
        self.keep = int(keep)
        self.records: List[Dict[str, Any]] = []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.records = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if len(self.records) < self.keep:
            records = pair_records(batch, outputs["pck"])
            self.records.extend(records[: self.keep - len(self.records)])

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Optional[Path]:
        if trainer.sanity_checking:
            return None
        # every rank drew from its shard: the first `keep` of all of them, as in one process
        shards = gather_objects(self.records)
        self.records = sorted((r for s in shards for r in s), key=lambda r: r["index"])[: self.keep]
        if not trainer.is_global_zero or not self.records:
            return None
        from semcorr.viz import plot_predictions

        folder = self.out_dir / "val_matches"
        folder.mkdir(parents=True, exist_ok=True)
        path = plot_predictions(self.records, self.read_image,
                                folder / f"step_{trainer.global_step:06d}.png",
                                alpha=self.alpha, protocol=self.protocol)
        if path is not None:
            self.log_image(trainer.loggers, "val/matches", path)
        return path

