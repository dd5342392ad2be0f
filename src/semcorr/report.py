"""What a run reports beyond its metrics, collected by callbacks from the module's step outputs.

- :func:`pair_records`: one record per evaluated pair (ids, keypoints, prediction, the PCK
  length L and the normalised errors ``dist / L``), in original image pixels;
- :class:`EvalReport`: during ``trainer.test``, every pair's normalised errors (the PCK curve),
  the first ``keep`` records (figures), backbone / matching time and backbone calls;
- :class:`PredictionPanel`: during training, a figure of the first validation pairs after each
  validation.

Under N processes both gather what the ranks collected (in dataset order) before they report.

The :class:`~semcorr.models.CorrespondenceModule` only computes; these objects own what is kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import lightning as L
import torch

from semcorr.distributed import gather_objects
from semcorr.metrics.pck import pck_thresholds


def pair_records(batch: Dict[str, Any], pred_orig: torch.Tensor, threshold_by: str) -> List[Dict[str, Any]]:
    """Per pair of a batch: ``index``, ``pair_id``, ``category``, ``src_id``, ``trg_id``,
    ``src_kps``, ``trg_kps`` (K, 2), ``pred`` (K, 2), ``valid`` (K,), ``trg_bbox``, ``trg_imsize``,
    ``threshold`` (L, the length alpha multiplies) and ``norm_error`` (K,) = dist / L (NaN where
    not valid), all on the CPU in the original frames."""
    valid = batch["kps_valid"].bool()
    lengths = pck_thresholds(threshold_by, batch["trg_kps_orig"], valid, batch.get("trg_bbox"),
                             batch.get("trg_imsize"))
    dist = torch.linalg.vector_norm(pred_orig.float() - batch["trg_kps_orig"].float(), dim=-1)
    norm = (dist / lengths.to(dist.dtype)[:, None]).masked_fill(~valid, float("nan"))
    cpu = {k: batch[k].detach().cpu() for k in ("src_kps_orig", "trg_kps_orig", "trg_bbox",
                                                 "trg_imsize")}
    pred, norm, valid, lengths = (t.detach().cpu() for t in (pred_orig, norm, valid, lengths))
    index = batch.get("index")
    records = []
    for b in range(valid.shape[0]):
        records.append({
            "index": int(index[b]) if index is not None else b,
            "pair_id": batch["pair_id"][b] if "pair_id" in batch else f"{batch['src_id'][b]}->{batch['trg_id'][b]}",
            "category": batch["category"][b], "src_id": batch["src_id"][b], "trg_id": batch["trg_id"][b],
            "src_kps": cpu["src_kps_orig"][b], "trg_kps": cpu["trg_kps_orig"][b],
            "pred": pred[b].float(), "valid": valid[b], "trg_bbox": cpu["trg_bbox"][b],
            "trg_imsize": cpu["trg_imsize"][b], "threshold": float(lengths[b]),
            "norm_error": norm[b],
        })
    return records


class EvalReport(L.Callback):
    """Collects, over one ``trainer.test``: every pair's record (:func:`pair_records`;
    ``records``, in dataset order), from which ``errors`` (one 1-D tensor of ``dist / L`` over
    its valid keypoints per pair: the PCK curve) and ``predictions`` (the first ``keep`` records,
    for figures); milliseconds spent in the backbone and in matching; the number of images the
    backbone processed.

    Under N processes each rank collects its shard and, at the end of the test epoch, every rank
    receives all of them (:func:`semcorr.distributed.gather_objects`), ordered by the pairs'
    dataset ``index``: the report equals a one-process run's, except that ``backbone_calls`` and
    the milliseconds are totals over the ranks (each rank has its own feature cache). Whatever a
    record carries rides along.

    Args:
        threshold_by: the PCK length L (``bbox`` | ``bbox_kp`` | ``image``).
        keep: how many pair records to keep for figures.
    """

    def __init__(self, threshold_by: str, keep: int = 0) -> None:
        self.threshold_by, self.keep = threshold_by, int(keep)
        self.records: List[Dict[str, Any]] = []
        self.ms: Dict[str, float] = {}
        self.backbone_calls = 0
        self._calls_at_start = 0

    @property
    def n_pairs(self) -> int:
        return len(self.records)

    @property
    def errors(self) -> List[torch.Tensor]:
        return [r["norm_error"][r["valid"]] for r in self.records]

    @property
    def predictions(self) -> List[Dict[str, Any]]:
        return self.records[: self.keep]

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.records, self.ms, self.backbone_calls = [], {}, 0
        self._calls_at_start = pl_module.extractor.backbone_calls

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        for name, value in outputs["ms"].items():
            self.ms[name] = self.ms.get(name, 0.0) + value
        self.records.extend(pair_records(batch, outputs["pred_orig"], self.threshold_by))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        calls = pl_module.extractor.backbone_calls - self._calls_at_start
        shards = gather_objects({"records": self.records, "ms": self.ms, "calls": calls})
        self.records = sorted((r for s in shards for r in s["records"]), key=lambda r: r["index"])
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
        alpha, threshold_by: correct / wrong colouring.
        log_image: ``log_image(loggers, key, path)`` (see :mod:`semcorr.cli.loggers`).
    """

    def __init__(self, read_image: Callable[[str], torch.Tensor], out_dir: str | Path, alpha: float,
                 threshold_by: str, log_image, keep: int = 4) -> None:
        self.read_image, self.out_dir = read_image, Path(out_dir)
        self.alpha, self.threshold_by, self.log_image = alpha, threshold_by, log_image
        self.keep = int(keep)
        self.predictions: List[Dict[str, Any]] = []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.predictions = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if len(self.predictions) < self.keep:
            records = pair_records(batch, outputs["pred_orig"], self.threshold_by)
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
