"""Lightning callbacks that training adds to the shared pipeline.

- :class:`ResumeDataOrder`: points the training sampler
  (:class:`semcorr.data.samplers.EpochShuffleSampler`) at the restored trainer's progress, so
  ``--resume`` replays exactly the batches an uninterrupted run would have seen;
- :class:`History`: the learning curves, for ``train_summary.json``.

(The validation figure is :class:`semcorr.report.PredictionPanel`.)
"""

from __future__ import annotations

from typing import Tuple

import lightning as L


class ResumeDataOrder(L.Callback):
    """Points the training loader's :class:`EpochShuffleSampler` at the trainer's progress.

    When a run resumes mid-epoch the sampler skips the batches already trained on, and every
    epoch (resumed or not) uses its own seeded order.
    """

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not hasattr(trainer.datamodule, "train_position"):
            return

        def position() -> Tuple[int, int]:
            progress = trainer.fit_loop.epoch_loop.batch_progress.current
            return trainer.current_epoch, progress.completed * self.batch_size

        trainer.datamodule.train_position = position


class History(L.Callback):
    """Keeps the learning curves: training loss per step and validation metrics per validation.

    ``records``: a list of ``{"step", "stage", <metric>: value}`` dicts (JSON-ready).
    """

    def __init__(self) -> None:
        self.records: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.records.append({"step": trainer.global_step, "stage": "train",
                                 "loss": float(loss.detach())})

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith("val/") and k.count("/") == 1}
        self.records.append({"step": trainer.global_step, "stage": "val", **metrics})
