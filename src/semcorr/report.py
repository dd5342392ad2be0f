"""What a run reports beyond its metrics, collected by callbacks from the module's step outputs.

- :func:`pair_records`: one record per evaluated pair (ids, keypoints, prediction, the PCK
  length L, the normalised errors ``dist / L`` and, given alphas, which keypoints are correct),
  in original image pixels;
- :class:`EvalReport`: during ``trainer.test``, every pair's normalised errors (the PCK curve),
  every pair's ``predictions.jsonl`` row (:mod:`semcorr.predictions`), the first ``keep``
  records (figures), backbone / matching time and backbone calls;
- :class:`PredictionPanel`: during training, a figure of the first validation pairs after each
  validation.

The :class:`~semcorr.models.CorrespondenceModule` only computes; these objects own what is kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import lightning as L
import torch

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
    metric counts it (``strict``: ``<``). Keypoints are on the CPU in the original frames."""
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
            "direction": direction[b] if direction is not None else "src_to_trg",
            **({"correct": correct[b, :k]} if correct is not None else {}),
        })
    return records


class EvalReport(L.Callback):
    """Collects, over one ``trainer.test``: every pair's normalised errors (``errors``: one 1-D
    tensor of ``dist / L`` over its valid keypoints per pair, in dataset order), every pair's
    ``predictions.jsonl`` row (``rows``, each with the pair's dataset ``index``; given
    ``alphas``), the first ``keep`` pair records (``predictions``, for figures), milliseconds
    spent in the backbone and in matching, and the number of images the backbone processed.

    Args:
        protocol: the run's protocol (:mod:`semcorr.metrics.protocol`; ``threshold_by``,
            ``frame``, ``strict`` are used), or just its ``threshold_by``.
        keep: how many pair records to keep for figures.
        alphas: the PCK alphas of the rows' ``correct``; empty: no rows.
        max_points: rows of pairs with more valid keypoints hold this many (see
            :func:`semcorr.predictions.prediction_row`); None: all.
    """

    def __init__(self, protocol: Union[str, Mapping[str, Any]], keep: int = 0,
                 alphas: Sequence[float] = (), max_points: Optional[int] = None) -> None:
        proto = {"threshold_by": protocol} if isinstance(protocol, str) else dict(protocol)
        self.threshold_by, self.keep = proto["threshold_by"], int(keep)
        self.frame, self.strict = proto.get("frame"), bool(proto.get("strict", False))
        self.alphas, self.max_points = [float(a) for a in alphas], max_points
        self.errors: List[torch.Tensor] = []
        self.rows: List[Dict[str, Any]] = []
        self.predictions: List[Dict[str, Any]] = []
        self.ms: Dict[str, float] = {}
        self.n_pairs = 0
        self.backbone_calls = 0
        self._calls_at_start = 0

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.errors, self.rows, self.predictions, self.ms, self.n_pairs = [], [], [], {}, 0
        self._calls_at_start = pl_module.extractor.backbone_calls

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        for name, value in outputs["ms"].items():
            self.ms[name] = self.ms.get(name, 0.0) + value
        for record in pair_records(batch, outputs["pred_orig"], self.threshold_by, self.frame,
                                   self.alphas, self.strict):
            self.n_pairs += 1
            err = record["norm_error"]
            self.errors.append(err[record["valid"]])
            if self.alphas:
                self.rows.append(prediction_row(record, self.alphas, self.max_points))
            if len(self.predictions) < self.keep:
                self.predictions.append(record)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.backbone_calls = pl_module.extractor.backbone_calls - self._calls_at_start

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
        if trainer.sanity_checking or not self.predictions:
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
