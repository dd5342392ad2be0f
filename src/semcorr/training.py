"""What training adds to the shared pipeline: a resumable data order and Lightning callbacks.

- :class:`EpochShuffleSampler`: the training order of epoch e is ``randperm`` seeded by
  (seed, e), and the sampler can start part-way into an epoch, so ``--resume`` replays exactly
  the batches an uninterrupted run would have seen (:class:`ResumeDataOrder` tells it where the
  restored trainer stands).
- :class:`PredictionPanel`: a figure of predicted vs ground-truth matches after each validation.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterator, Optional, Tuple

import lightning as L
import torch
from torch.utils.data import Sampler

log = logging.getLogger(__name__)


class EpochShuffleSampler(Sampler[int]):
    """A random permutation of ``range(n)`` per epoch, seeded by ``(seed, epoch)``.

    ``position``: optional callable returning ``(epoch, samples already consumed this epoch)``,
    read when iteration starts (set by :class:`ResumeDataOrder`); without it, the epoch is the
    last one given to :meth:`set_epoch` and iteration starts at the beginning.
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0
        self.position: Optional[Callable[[], Tuple[int, int]]] = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=gen).tolist()

    def __iter__(self) -> Iterator[int]:
        epoch, skip = (self.epoch, 0) if self.position is None else self.position()
        return iter(self.order(epoch)[skip:])

    def __len__(self) -> int:
        return self.n


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


class PredictionPanel(L.Callback):
    """After each validation, draws the module's kept ``predictions`` and logs the figure.

    Args:
        read_image: ``read_image(image_id) -> (3, h, w)`` of the validation dataset.
        out_dir: where ``val_matches/step_<n>.png`` goes.
        log_image: ``log_image(loggers, key, path)`` (see :mod:`semcorr.cli.loggers`).
    """

    def __init__(self, read_image, out_dir: str | Path, alpha: float, threshold_by: str,
                 log_image) -> None:
        self.read_image, self.out_dir = read_image, Path(out_dir)
        self.alpha, self.threshold_by, self.log_image = alpha, threshold_by, log_image

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not getattr(pl_module, "predictions", None):
            return
        from semcorr.viz import plot_predictions

        folder = self.out_dir / "val_matches"
        folder.mkdir(parents=True, exist_ok=True)
        path = plot_predictions(pl_module.predictions, self.read_image,
                                folder / f"step_{trainer.global_step:06d}.png",
                                alpha=self.alpha, threshold_by=self.threshold_by)
        if path is not None:
            self.log_image(trainer.loggers, "val/matches", path)


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
