"""Lightning callbacks that training adds to the shared pipeline.

- :class:`ResumeDataOrder`: points the training sampler
  (:class:`semcorr.data.samplers.EpochShuffleSampler`) at the restored trainer's progress, so
  ``--resume`` replays exactly the batches an uninterrupted run would have seen (with the same
  number of processes; :meth:`semcorr.resume.ResumePoint.check_world_size` refuses a mid-epoch
  checkpoint under another);
- :class:`History`: the learning curves, for ``train_summary.json`` (kept in checkpoints, so a
  resumed run's history is the whole run's);
- :class:`LastCheckpoint`: ``last.ckpt``, always holding the final state of the run (also when
  a SIGTERM stops it);
- :class:`AtomicCheckpointIO`: every checkpoint written beside its target and renamed into place
  (a full disk or a kill mid-save leaves the previous file intact);
- :class:`RunFolder`: a resumed run that was moved or copied keeps its checkpoint bookkeeping
  (best / last paths) in the folder it now lives in.

(The validation figure is :class:`semcorr.report.PredictionPanel`.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from semcorr.atomic import atomic_open


class ResumeDataOrder(L.Callback):
    """Points the training loader's :class:`EpochShuffleSampler` at the trainer's progress.

    When a run resumes mid-epoch the sampler skips the batches already trained on, and every
    epoch (resumed or not) uses its own seeded order. Its checkpoint state records the number of
    processes, whose shards of the order the skipped batches came from
    (:meth:`semcorr.resume.ResumePoint.check_world_size`).
    """

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.world_size = 1

    @property
    def state_key(self) -> str:
        return "ResumeDataOrder"

    def state_dict(self) -> Dict[str, Any]:
        return {"world_size": self.world_size, "batch_size": self.batch_size}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.world_size = trainer.world_size
        if stage != "fit" or not hasattr(trainer.datamodule, "train_position"):
            return

        def position() -> Tuple[int, int]:
            progress = trainer.fit_loop.epoch_loop.batch_progress.current
            return trainer.current_epoch, progress.completed * self.batch_size

        trainer.datamodule.train_position = position


class History(L.Callback):
    """Keeps the learning curves: training loss per step and validation metrics per validation.

    ``records``: a list of ``{"step", "stage", <metric>: value}`` dicts (JSON-ready). They are
    saved in every checkpoint and restored by ``--resume``, so a resumed run's history starts at
    step 1, not at the resume step.
    """

    def __init__(self) -> None:
        self.records: list[dict] = []

    def state_dict(self) -> Dict[str, Any]:
        return {"records": [dict(r) for r in self.records]}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.records = [dict(r) for r in state_dict.get("records", [])]

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


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` steps (for ``--resume``) *and* after the final
    training step, so it always holds the run's final state.

    Lightning's ``save_last`` writes a final ``last.ckpt`` only when no earlier one was written:
    a 12-step run saving every 7 steps ended with a ``last.ckpt`` of step 7 that ``eval.py ckpt=``
    and ``--resume`` then used. The final save happens at the end of the last training batch
    (``max_steps`` reached, the last batch of ``max_epochs``, or a stop requested), where the loop
    state is the one ``--resume`` continues exactly from; ``on_train_end`` saves only if training
    ended otherwise. It is also written after every validation (``checkpointing.every_n_steps=0``:
    only then). Nothing is saved when training raises (the last good state stays), except that a
    SIGTERM in a one-process run saves at the end of the step it arrived in, before the run stops.
    """

    def __init__(self, dirpath: Any, every_n_train_steps: int | None = None) -> None:
        # one name, always: a stale last.ckpt is replaced, never kept beside a last-v1.ckpt
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True,
                         every_n_train_steps=every_n_train_steps, enable_version_counter=False)

    @property
    def saved_step(self) -> int | None:
        """The ``global_step`` of the last checkpoint this callback wrote in this process."""
        return self._last_global_step_saved or None

    @staticmethod
    def _ending(trainer: L.Trainer) -> bool:
        if trainer.should_stop:
            return True
        # a SIGTERM stops the run after this batch (Lightning raises at the batch boundary): save
        # here, where --resume continues exactly. In one process only: a save is collective, and
        # under DDP the ranks need not have seen the signal at the same batch.
        if trainer.received_sigterm and trainer.world_size == 1:
            return True
        if trainer.max_steps is not None and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            return True
        max_epochs = trainer.max_epochs
        return bool(trainer.is_last_batch and max_epochs not in (None, -1)
                    and trainer.current_epoch + 1 >= max_epochs)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._ending(trainer) and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking:
            return
        if self._last_global_step_saved != trainer.global_step or not self.last_model_path:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """``last.ckpt`` after every validation in training (Lightning 2.6 writes ``last`` at
        validation only along with a top-k checkpoint of the same callback, so with
        ``checkpointing.every_n_steps=0`` it was never written until the run ended)."""
        super().on_validation_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer):  # sanity check, or saved this step
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        """A SIGTERM noticed after this step's batch-end hooks stops the run at the end of the
        step (Lightning's check closes ``on_advance_end``): save ``last.ckpt`` there, in the state
        a save at this step's validation end has, so ``--resume`` continues exactly. One process
        only (see :meth:`_ending`)."""
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        loop = trainer.fit_loop.epoch_loop
        if not isinstance(exception, SIGTERMException) or trainer.world_size != 1 \
                or self._should_skip_saving_checkpoint(trainer) or not trainer.training \
                or not hasattr(loop, "_batches_that_stepped") \
                or getattr(loop, "_is_training_done", True):  # only the mid-epoch stop
            return
        # the loggers' step counter moves on at the very end of a step; checkpoints written inside
        # the step (at validation end) hold the value before that, and restoring one moves it on
        # again (as Lightning itself does around its epoch-end logging)
        loop._batches_that_stepped -= 1
        try:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        finally:
            loop._batches_that_stepped += 1


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing each checkpoint atomically in its own folder
    (:func:`semcorr.atomic.atomic_open`: a temporary file beside the target, ``fsync``, rename).

    Lightning's own writer (``_atomic_save``) goes through an fsspec transaction whose temporary
    file lives in ``$TMPDIR``; when that is another filesystem than ``out_dir`` the commit is a
    copy that truncates the old ``last.ckpt`` first, so a full disk or a kill during the copy
    destroyed the last good checkpoint. Here the old file is replaced only by a complete new one;
    a failed save raises ``OSError`` naming the file (e.g. ``No space left on device``).
    """

    def save_checkpoint(self, checkpoint: Dict[str, Any], path: Any,
                        storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)


class RunFolder(L.Callback):
    """Keeps a resumed run's checkpoint bookkeeping in the folder the run now lives in.

    ``ModelCheckpoint`` restores its best / last paths only when the checkpoint's ``dirpath`` is
    its own; in a moved or copied run folder it dropped them (and, finding the old ``last.ckpt``,
    wrote ``last-v1.ckpt`` beside it). Before the callbacks load their states, every
    checkpoint-callback state that names another folder is rewritten to this run's
    ``checkpoints`` folder (the same files, where they are now).
    """

    PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = os.path.realpath(os.path.expanduser(str(dirpath)))

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: Dict[str, Any]) -> None:
        for state in (checkpoint.get("callbacks") or {}).values():
            old = state.get("dirpath") if isinstance(state, dict) else None
            if not isinstance(old, str) or old == self.dirpath:
                continue
            moved = lambda p: (os.path.join(self.dirpath, os.path.relpath(p, old))  # noqa: E731
                               if isinstance(p, str) and p else p)
            for key in self.PATH_KEYS:
                if key in state:
                    state[key] = moved(state[key])
            if isinstance(state.get("best_k_models"), dict):
                state["best_k_models"] = {moved(k): v for k, v in state["best_k_models"].items()}
            state["dirpath"] = self.dirpath
