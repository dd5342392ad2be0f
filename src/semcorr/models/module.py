"""The LightningModule: a :class:`~semcorr.net.CorrespondenceNet`, a loss, a PCK metric and an
optimiser, wired into one shared step for train / val / test.

Everything is built elsewhere (:func:`semcorr.builder.build_run`) and passed in. What a run
reports beyond the logged metrics (per-pair rows, figures, timing) is collected by callbacks
(:mod:`semcorr.report`) from what the steps return: :class:`StepOutput`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, TypedDict

import lightning as L
import torch

from semcorr.checkpoint import upgrade_state_dict
from semcorr.config import OptimConfig
from semcorr.errors import NumericalError
from semcorr.metrics import PCK, KeypointScores
from semcorr.net import CorrespondenceNet, MatchOutput

LossFn = Callable[..., Any]  # loss(batch, src, trg, result) -> (loss, logs), see semcorr.losses


class StepOutput(TypedDict, total=False):
    """What ``validation_step`` / ``test_step`` return (``training_step`` returns the loss).

    Keys: ``match``: the net's :class:`~semcorr.net.MatchOutput`; ``pck``: the batch's
    :class:`~semcorr.metrics.KeypointScores` under the run's protocol (what the metric added);
    ``loss``: the scalar loss, when the module has one.
    """

    match: MatchOutput
    pck: KeypointScores
    loss: torch.Tensor


class CorrespondenceModule(L.LightningModule):
    """Train / validate / test a :class:`~semcorr.net.CorrespondenceNet`.

    Args:
        net: the pipeline (backbone, head, matcher, keypoint transfer).
        loss: ``loss(batch, src, trg, result) -> (loss, logs)`` (:mod:`semcorr.losses`); needed to
            train, optional for evaluation (then validation / test also log it).
        metric: the PCK metric (protocol, alphas, categories); the module keeps one copy per
            evaluation stage. Default: ``PCK()``.
        optim: optimiser and schedule settings (:class:`~semcorr.config.OptimConfig`); default
            ``OptimConfig()``.
        run_config: the resolved run config, saved in checkpoints so ``eval.py ckpt=`` rebuilds.
    """

    def __init__(self, net: CorrespondenceNet, loss: Optional[LossFn] = None,
                 metric: Optional[PCK] = None, optim: Optional[OptimConfig] = None,
                 run_config: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        self.save_hyperparameters({"run_config": run_config})
        self.net = net
        self.loss_fn = loss
        metric = metric if metric is not None else PCK()
        self.val_metric = metric.clone()
        self.test_metric = metric.clone()
        self.optim = optim if optim is not None else OptimConfig()

    # ------------------------------------------------------------------ the shared step
    def _step(self, batch: Dict[str, Any], stage: str) -> StepOutput:
        out: StepOutput = {"match": self.net(batch, use_cache=stage != "train")}
        match = out["match"]
        if stage != "train":
            metric = self.test_metric if stage == "test" else self.val_metric
            scores = metric.score(match.pred_orig, batch["trg_kps_orig"], batch["kps_valid"],
                                  batch.get("trg_bbox"), batch.get("trg_imsize"))
            metric.update(category_idx=batch["category_idx"], scores=scores)
            out["pck"] = scores
        if self.loss_fn is None:
            if stage == "train":
                raise RuntimeError("training needs a loss: set loss=gaussian_ce or loss=ot_nll")
            return out
        loss, logs = self.loss_fn(batch, match.src, match.trg, match.result)
        if stage == "train" and not bool(torch.isfinite(loss.detach()).all()):
            raise NumericalError(f"non-finite loss (train/loss = {float(loss.detach()):g})")
        # validation / test values are epoch means over all ranks' pairs (sync_dist); the
        # training loss is logged per step, as this rank's
        sync, bs = stage != "train", batch["src_img"].shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=bs, sync_dist=sync)
        for key, value in logs.items():
            self.log(f"{stage}/{key}", value, batch_size=bs, sync_dist=sync)
        out["loss"] = loss
        return out

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")["loss"]

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        return self._step(batch, "test")

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

    # ------------------------------------------------------------------ metrics per epoch
    # A metric is reset when its epoch starts, not when it ends, so that callbacks reading the
    # epoch's result in their own epoch-end hooks (semcorr.report.EvalReport) get it whichever
    # hook Lightning calls first; compute() caches, so computing twice syncs ranks once.
    def on_validation_epoch_start(self) -> None:
        self.val_metric.reset()

    def on_test_epoch_start(self) -> None:
        self.test_metric.reset()

    def _log_pck(self, metric: PCK, stage: str) -> None:
        # compute() sums the metric's states over all ranks, so every rank logs the same values;
        # synced with max, which keeps them bit-exact (a mean over 3 ranks could round)
        result = metric.compute()
        same = dict(sync_dist=True, reduce_fx="max")
        for alpha, value in result["pck"].items():
            self.log(f"{stage}/pck@{alpha}", value, prog_bar=alpha == "0.1", **same)
        for cat, values in result["pck_per_category"].items():
            for alpha, value in values.items():
                self.log(f"{stage}/pck@{alpha}/{cat}", value, **same)

    def on_validation_epoch_end(self) -> None:
        self._log_pck(self.val_metric, "val")

    def on_test_epoch_end(self) -> None:
        self._log_pck(self.test_metric, "test")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        cfg = self.optim
        backbone_lr = cfg.backbone_lr or cfg.lr * 0.1
        backbone_params = [p for p in self.net.backbone.parameters() if p.requires_grad]
        # learnable matcher weights (log lambdas / epsilon) get no weight decay: it would pull them to 1
        matcher_params = [p for p in self.net.matcher.parameters() if p.requires_grad]
        ids = {id(p) for p in backbone_params + matcher_params}
        other = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        groups = [g for g in ({"params": other, "lr": cfg.lr},
                              {"params": backbone_params, "lr": backbone_lr},
                              {"params": matcher_params, "lr": cfg.lr, "weight_decay": 0.0})
                  if g["params"]]
        if not groups:
            raise RuntimeError("nothing to train: no head, no learnable matcher and a frozen backbone")
        optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        if cfg.scheduler == "constant":
            return optimizer
        total = self.trainer.estimated_stepping_batches if self.trainer else 1
        warmup = cfg.warmup_steps

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / max(warmup, 1)
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Checkpoints written before the net existed name its weights without ``net.``."""
        checkpoint["state_dict"] = upgrade_state_dict(checkpoint["state_dict"])
