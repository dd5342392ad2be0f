"""The LightningModule: backbone -> head -> matcher -> keypoint transfer -> PCK (and a loss).

Pure-torch parts are built elsewhere (:func:`semcorr.builder.build_model`) and passed in; this
module only wires one shared step for train / val / test, the per-stage metrics and the
optimisers. What a run reports beyond the metrics (per-pair errors, kept predictions, timing) is
collected by callbacks from the step outputs (:mod:`semcorr.report`).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional, Sequence

import lightning as L
import torch

from semcorr.backbones.base import Backbone, FeatureMap, valid_cells
from semcorr.data.resize import to_original
from semcorr.features import FeatureExtractor
from semcorr.heads.base import Head, NoHead
from semcorr.errors import NumericalError
from semcorr.matchers.base import (Matcher, MatchResult, check_finite_inputs, check_finite_scores,
                                   cosine_similarity)
from semcorr.matchers.transfer import cell_index, transfer_keypoints
from semcorr.metrics import PCK
from semcorr.stores import FeatureStore


def symmetric_cells(batch: Dict[str, Any], grid: tuple[int, int], stride: int) -> Optional[torch.Tensor]:
    """(B, S, 2) source-cell indices of the batch's symmetric keypoint pairs (-1 = padding)."""
    pairs = batch.get("sym_pairs")
    if pairs is None or pairs.numel() == 0:
        return None
    cells = cell_index(batch["src_kps"], grid, stride)  # (B, K)
    ok = (pairs >= 0).all(-1)
    safe = pairs.clamp_min(0)
    out = torch.gather(cells, 1, safe.flatten(1)).view_as(pairs)
    valid = batch["kps_valid"]
    both = torch.gather(valid, 1, safe.flatten(1)).view_as(pairs).all(-1)
    return torch.where((ok & both)[..., None], out, torch.full_like(out, -1))


class CorrespondenceModule(L.LightningModule):
    """Semantic correspondence model with one shared step.

    Args:
        backbone: a :class:`~semcorr.backbones.Backbone`.
        matcher: a :class:`~semcorr.matchers.Matcher`.
        head: optional :class:`~semcorr.heads.Head` (feature head and / or score refiner).
        loss: optional callable ``loss(batch, src, trg, result) -> (loss, logs)``; needed to train.
        transfer: keypoint-transfer options (``method``, ``window``, ``temperature``).
        alphas, threshold_by, average, strict, frame, headline, categories: the PCK protocol
            (:mod:`semcorr.metrics.protocol`).
        stores: feature caches used in val/test (see :mod:`semcorr.stores`).
        optim: ``lr``, ``backbone_lr``, ``weight_decay``, ``scheduler``, ``warmup_steps``.
        run_config: the resolved run config, saved in checkpoints so ``eval.py ckpt=`` rebuilds.

    ``validation_step`` / ``test_step`` return the step's output (:meth:`match` plus ``ms``, the
    milliseconds spent in the backbone and in matching) for reporting callbacks.
    """

    def __init__(
        self,
        backbone: Backbone,
        matcher: Matcher,
        head: Optional[Head] = None,
        loss: Optional[Any] = None,
        transfer: Optional[Dict[str, Any]] = None,
        alphas: Sequence[float] = (0.05, 0.1, 0.15),
        threshold_by: str = "bbox",
        average: str = "per_image",
        categories: Sequence[str] = ("all",),
        strict: bool = False,
        frame: Optional[int] = None,
        headline: str = "pooled",
        stores: Sequence[FeatureStore] = (),
        optim: Optional[Dict[str, Any]] = None,
        run_config: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "matcher", "head", "loss", "stores"])
        self.extractor = FeatureExtractor(backbone, stores)
        self.head = head if head is not None else NoHead()
        self.matcher = matcher
        self.loss_fn = loss
        self.transfer = dict(transfer or {})
        self.optim_cfg = dict(optim or {})
        protocol = dict(alphas=alphas, threshold_by=threshold_by, average=average, strict=strict,
                        frame=frame, headline=headline)
        self.test_pck = PCK(categories=categories, **protocol)
        self.val_pck = PCK(categories=categories, **protocol)

    @property
    def backbone(self) -> Backbone:
        return self.extractor.backbone

    @contextmanager
    def _timed(self, ms: Dict[str, float], name: str) -> Iterator[None]:
        """Adds the wall-clock milliseconds of the block to ``ms[name]`` (synchronising CUDA)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        ms[name] = ms.get(name, 0.0) + (time.perf_counter() - t0) * 1e3

    # ------------------------------------------------------------------ the pipeline
    def features(self, batch: Dict[str, Any], use_cache: bool) -> tuple[FeatureMap, FeatureMap]:
        src = self.extractor(batch["src_img"], batch.get("src_id"), use_cache)
        trg = self.extractor(batch["trg_img"], batch.get("trg_id"), use_cache)
        src.valid = valid_cells(batch["src_content_hw"], src.grid, src.stride)
        trg.valid = valid_cells(batch["trg_content_hw"], trg.grid, trg.stride)
        return src, trg

    def match(self, batch: Dict[str, Any], src: FeatureMap, trg: FeatureMap) -> Dict[str, Any]:
        """Head, matcher and keypoint transfer. Returns scores, predictions (both frames).

        Non-finite features entering the matcher, or non-finite scores coming out of it, raise
        :class:`~semcorr.errors.NumericalError` naming the image or pair (never a silently NaN
        plan, see :func:`semcorr.matchers.base.check_finite_inputs`).
        """
        src, trg = self.head(src, trg)
        check_finite_inputs(src, trg, batch.get("src_id"), batch.get("trg_id"))
        sym = symmetric_cells(batch, src.grid, src.stride)
        similarity = None
        if self.head.refines_similarity:  # e.g. neighbourhood consensus, see semcorr.heads.base
            similarity = self.head.refine(cosine_similarity(src, trg), src, trg)
            check_finite_inputs(src, trg, batch.get("src_id"), batch.get("trg_id"), similarity)
        result: MatchResult = self.matcher(src, trg, sym_pairs=sym, similarity=similarity)
        check_finite_scores(result, type(self.matcher).__name__, batch.get("pair_id"))
        pred, score = transfer_keypoints(
            result.scores, batch["src_kps"], src.grid, src.stride, trg.grid, trg.stride,
            **self.transfer,
        )
        pred_orig = to_original(pred, batch["trg_frame"])
        return {"src": src, "trg": trg, "result": result, "pred": pred, "pred_orig": pred_orig,
                "score": score}

    def forward(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        src, trg = self.features(batch, use_cache=not self.training)
        return self.match(batch, src, trg)

    def _step(self, batch: Dict[str, Any], stage: str) -> Dict[str, Any]:
        ms: Dict[str, float] = {}
        with self._timed(ms, "backbone"):
            src, trg = self.features(batch, use_cache=stage != "train")
        with self._timed(ms, "match"):
            out = self.match(batch, src, trg)
        out["ms"] = ms
        bs = batch["src_img"].shape[0]
        if stage != "train":
            metric = self.test_pck if stage == "test" else self.val_pck
            metric.update(out["pred_orig"], batch["trg_kps_orig"], batch["kps_valid"],
                          batch["category_idx"], batch["trg_bbox"], batch["trg_imsize"])
        if self.loss_fn is None:
            if stage == "train":
                raise RuntimeError("training needs a loss: set loss=gaussian_ce or loss=ot_nll")
            return out
        loss, logs = self.loss_fn(batch, out["src"], out["trg"], out["result"])
        if stage == "train" and not bool(torch.isfinite(loss.detach()).all()):
            raise NumericalError(f"non-finite loss (train/loss = {float(loss.detach()):g})")
        # validation / test values are epoch means: over all ranks' pairs (sync_dist); the training
        # loss is logged per step, as this rank's
        sync = stage != "train"
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=bs, sync_dist=sync)
        for key, value in logs.items():
            self.log(f"{stage}/{key}", value, batch_size=bs, sync_dist=sync)
        out["loss"] = loss
        return out

    # ------------------------------------------------------------------ Lightning hooks
    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")["loss"]

    def on_before_optimizer_step(self, optimizer) -> None:
        """Refuse a step on non-finite gradients (they would make every weight NaN, and the next
        checkpoint with them). Not under fp16 AMP, whose loss scaler skips such steps itself."""
        if str(self.trainer.precision).startswith("16"):
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            names = [n for n, p in self.named_parameters()
                     if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
            raise NumericalError(f"non-finite gradient of {names[0] if names else 'a parameter'}"
                                 + (f" and {len(names) - 1} more" if len(names) > 1 else ""))

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        return self._step(batch, "test")

    def _log_pck(self, metric: PCK, stage: str) -> Dict[str, Any]:
        # compute() sums the metric's states over all ranks, so every rank logs the same values;
        # synced with max, which keeps them bit-exact (a mean over 3 ranks could round)
        result = metric.compute()
        same = dict(sync_dist=True, reduce_fx="max")
        for alpha, value in result["pck"].items():
            self.log(f"{stage}/pck@{alpha}", value, prog_bar=alpha == "0.1", **same)
        for cat, values in result["pck_per_category"].items():
            for alpha, value in values.items():
                self.log(f"{stage}/pck@{alpha}/{cat}", value, **same)
        metric.reset()
        return result

    def on_validation_epoch_end(self) -> None:
        self.last_val_result = self._log_pck(self.val_pck, "val")

    def on_test_epoch_end(self) -> None:
        self.last_test_result = self._log_pck(self.test_pck, "test")

    def configure_optimizers(self):
        cfg = self.optim_cfg
        lr = float(cfg.get("lr", 1e-4))
        backbone_lr = cfg.get("backbone_lr") or lr * 0.1
        backbone_params = [p for p in self.backbone.parameters() if p.requires_grad]
        # learnable matcher weights (log lambdas / epsilon) get no weight decay: it would pull them to 1
        matcher_params = [p for p in self.matcher.parameters() if p.requires_grad]
        ids = {id(p) for p in backbone_params + matcher_params}
        other = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        groups = [g for g in ({"params": other, "lr": lr},
                              {"params": backbone_params, "lr": backbone_lr},
                              {"params": matcher_params, "lr": lr, "weight_decay": 0.0})
                  if g["params"]]
        if not groups:
            raise RuntimeError("nothing to train: no head, no learnable matcher and a frozen backbone")
        optimizer = torch.optim.AdamW(groups, weight_decay=float(cfg.get("weight_decay", 0.05)))
        total = self.trainer.estimated_stepping_batches if self.trainer else 1
        warmup = int(cfg.get("warmup_steps", 0))
        if cfg.get("scheduler", "cosine") == "constant":
            return optimizer

        def factor(step: int) -> float:
            import math

            if step < warmup:
                return (step + 1) / max(warmup, 1)
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
