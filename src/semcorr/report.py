"""What a run reports beyond its metrics, collected by callbacks from the module's step outputs.

- :func:`pair_records`: one record per evaluated pair (ids, keypoints, prediction, the PCK
  length L, the normalised errors ``dist / L`` and, given alphas, which keypoints are correct),
  in original image pixels;
- :class:`EvalReport`: during ``trainer.test``, every pair's normalised errors (the PCK curve),
  every pair's ``predictions.jsonl`` row (:mod:`semcorr.predictions`), the first ``keep``
  records (figures), backbone / matching time and backbone calls;
- :class:`PredictionPanel`: during training, a figure of the first validation pairs after each
  validation.

Under N processes both gather what the ranks collected (in dataset order) before they report.

The :class:`~semcorr.models.CorrespondenceModule` only computes; these objects own what is kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import lightning as L
import torch

from semcorr.distributed import gather_objects
from semcorr.metrics.pck import pck_correct, pck_inputs
from semcorr.predictions import prediction_row


def pair_records(batch: Dict[str, Any], pred_orig: torch.Tensor, threshold_by: str,
                 frame: Optional[int] = None, alphas: Sequence[float] = (),
                 strict: bool = False) -> List[Dict[str, Any]]:
    """Per pair of a batch: ``index``, ``pair_id``, ``category``, ``src_id``, ``trg_id``,
    ``direction``, ``src_kps``, ``trg_kps`` (K, 2), ``pred`` (K, 2), ``valid`` (K,) (K: the
    pair's own keypoints, without the batch's padding),
    ``trg_bbox``, ``trg_imsize``, ``threshold`` (L, the length alpha multiplies, in the scoring
    frame: original pixels or ``frame``), ``norm_error`` (K,) = dist / L in that frame (NaN
    where not valid) and, when ``alphas`` are given, ``correct`` (K, A) bool exactly as the PCK
    metric counts it (``strict``: ``<``; also kept as ``strict``, for drawings). Keypoints are on
    the CPU in the original frames."""
    valid = batch["kps_valid"].bool()
    pred_s, gt_s, lengths = pck_inputs(threshold_by, pred_orig, batch["trg_kps_orig"], valid,
                                       batch.get("trg_bbox"), batch.get("trg_imsize"), frame)
    dist = torch.linalg.vector_norm(pred_s - gt_s, dim=-1)
    norm = (dist / lengths.to(dist.dtype)[:, None]).masked_fill(~valid, float("nan"))
    correct = pck_correct(pred_s, gt_s, valid, lengths, alphas, strict).cpu() if alphas else None
    cpu = {k: batch[k].detach().cpu() for k in ("src_kps_orig", "trg_kps_orig", "trg_bbox",
                                                 "trg_imsize")}
    pred, norm, valid, lengths = (t.detach().cpu() for t in (pred_orig, norm, valid, lengths))
    index = batch.get("index")
    direction = batch.get("direction")
    counts = batch.get("kps_count")
    records = []
    for b in range(valid.shape[0]):
        k = int(counts[b]) if counts is not None else valid.shape[1]  # the pair's own keypoints
        records.append({
            "index": int(index[b]) if index is not None else b,
            "pair_id": batch["pair_id"][b] if "pair_id" in batch else f"{batch['src_id'][b]}->{batch['trg_id'][b]}",
            "category": batch["category"][b], "src_id": batch["src_id"][b], "trg_id": batch["trg_id"][b],
            "src_kps": cpu["src_kps_orig"][b, :k], "trg_kps": cpu["trg_kps_orig"][b, :k],
            "pred": pred[b, :k].float(), "valid": valid[b, :k], "trg_bbox": cpu["trg_bbox"][b],
            "trg_imsize": cpu["trg_imsize"][b], "threshold": float(lengths[b]),
            "norm_error": norm[b, :k],
            "direction": direction[b] if direction is not None else "src_to_trg", "strict": strict,
            **({"correct": correct[b, :k]} if correct is not None else {}),
        })
    return records


class EvalReport(L.Callback):
    """Collects, over one ``trainer.test``, per pair (in dataset order): the normalised errors
    (``errors``: one 1-D tensor of ``dist / L`` over its valid keypoints: the PCK curve), the
    ``predictions.jsonl`` row (``rows``, given ``alphas``: :mod:`semcorr.predictions`), and the
    first ``keep`` pair records (``predictions``, for figures); milliseconds spent in the backbone
    and in matching; the number of images the backbone processed.

    Under N processes each rank collects its shard and, at the end of the test epoch, every rank
    receives all of them (:func:`semcorr.distributed.gather_objects`), ordered by the pairs'
    dataset ``index``: the report equals a one-process run's, except that ``backbone_calls`` and
    the milliseconds are totals over the ranks (each rank has its own feature cache). Per pair
    only the compact entries are kept (errors, a bounded row), so dense queries (TSS) stay small.

    Args:
        protocol: the run's protocol (:mod:`semcorr.metrics.protocol`; ``threshold_by``,
            ``frame``, ``strict`` are used), or just its ``threshold_by``.
        keep: how many pair records to keep for figures.
        alphas: the PCK alphas of the rows' ``correct``; empty: no rows.
        max_points: rows of pairs with more valid keypoints hold this many (see
            :func:`semcorr.predictions.prediction_row`); None: all.
    """

    def __init__(self, protocol: Mapping[str, Any], keep: int = 0,
                 alphas: Sequence[float] = (), max_points: Optional[int] = None) -> None:
        self.threshold_by, self.keep = protocol["threshold_by"], int(keep)
        self.frame, self.strict = protocol.get("frame"), bool(protocol.get("strict", False))
        self.alphas, self.max_points = [float(a) for a in alphas], max_points
        self.entries: List[Dict[str, Any]] = []  # per pair: index, errors, row?, record?
        self._kept = 0  # entries of this rank holding a record
        self.ms: Dict[str, float] = {}
        self.backbone_calls = 0
        self._calls_at_start = 0

    @property
    def n_pairs(self) -> int:
        return len(self.entries)

    @property
    def errors(self) -> List[torch.Tensor]:
        return [e["errors"] for e in self.entries]

    @property
    def rows(self) -> List[Dict[str, Any]]:
        return [e["row"] for e in self.entries if "row" in e]

    @property
    def predictions(self) -> List[Dict[str, Any]]:
        return [e["record"] for e in self.entries if "record" in e][: self.keep]

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.entries, self.ms, self.backbone_calls, self._kept = [], {}, 0, 0
        self._calls_at_start = pl_module.extractor.backbone_calls

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        for name, value in outputs["ms"].items():
            self.ms[name] = self.ms.get(name, 0.0) + value
        for record in pair_records(batch, outputs["pred_orig"], self.threshold_by, self.frame,
                                   self.alphas, self.strict):
            entry = {"index": record["index"], "errors": record["norm_error"][record["valid"]]}
            if self.alphas:
                entry["row"] = prediction_row(record, self.alphas, self.max_points)
            # this rank's first `keep` records hold the first `keep` of all ranks (see gathering)
            if self._kept < self.keep:
                entry["record"] = record
                self._kept += 1
            self.entries.append(entry)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        calls = pl_module.extractor.backbone_calls - self._calls_at_start
        shards = gather_objects({"entries": self.entries, "ms": self.ms, "calls": calls})
        self.entries = sorted((e for s in shards for e in s["entries"]), key=lambda e: e["index"])
        self.ms = {k: sum(s["ms"].get(k, 0.0) for s in shards) for k in {k for s in shards for k in s["ms"]}}
        self.backbone_calls = sum(s["calls"] for s in shards)

    def timing(self) -> Dict[str, float]:
        """``backbone_ms_per_image``, ``match_ms_per_pair`` and ``backbone_calls``."""
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
        alpha: correct / wrong colouring at this alpha.
        protocol: the run's protocol (:func:`semcorr.builder.run_protocol`): its ``threshold_by``,
            ``frame`` and ``strict`` colour the keypoints as ``val/pck`` counts them.
        log_image: ``log_image(loggers, key, path)`` (see :mod:`semcorr.cli.loggers`).
    """

    def __init__(self, read_image: Callable[[str], torch.Tensor], out_dir: str | Path, alpha: float,
                 protocol: Mapping[str, Any], log_image, keep: int = 4) -> None:
        self.read_image, self.out_dir = read_image, Path(out_dir)
        self.alpha, self.log_image = alpha, log_image
        self.threshold_by, self.frame = protocol["threshold_by"], protocol.get("frame")
        self.strict = bool(protocol.get("strict", False))
        self.keep = int(keep)
        self.predictions: List[Dict[str, Any]] = []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.predictions = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if len(self.predictions) < self.keep:
            records = pair_records(batch, outputs["pred_orig"], self.threshold_by, self.frame,
                                   strict=self.strict)
            self.predictions.extend(records[: self.keep - len(self.predictions)])

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Optional[Path]:
        if trainer.sanity_checking:
            return None
        # every rank drew from its shard: the first `keep` of all of them, as in one process
        shards = gather_objects(self.predictions)
        self.predictions = sorted((r for s in shards for r in s), key=lambda r: r["index"])[: self.keep]
        if not trainer.is_global_zero or not self.predictions:
            return None
        from semcorr.viz import plot_predictions

        folder = self.out_dir / "val_matches"
        folder.mkdir(parents=True, exist_ok=True)
        path = plot_predictions(self.predictions, self.read_image,
                                folder / f"step_{trainer.global_step:06d}.png",
                                alpha=self.alpha, threshold_by=self.threshold_by)
        if path is not None:
            self.log_image(trainer.loggers, "val/matches", path)
        return path
