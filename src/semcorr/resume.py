"""Resuming a training run (``train.py --resume RUN``): the checkpoint is read once, here.

:func:`read_resume_point` turns a run folder (or a ``.ckpt``) into a :class:`ResumePoint`: the
checkpoint file Lightning continues from, the run's saved config, and what the rest of training
needs to know about it (step, whether it was validated at that step, the processes that wrote it
and whether it stopped part-way into an epoch). Lightning then restores weights, optimiser,
scheduler, loops and callbacks from the file itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict

from omegaconf import OmegaConf

from semcorr.checkpoint import read_checkpoint, resolve_checkpoint
from semcorr.errors import ConfigError, DataError

REQUIRED = ("global_step", "loops", "optimizer_states")


@dataclass(frozen=True)
class ResumePoint:
    """Where a run stopped.

    Attributes:
        ckpt_path: the checkpoint to continue from (``checkpoints/last.ckpt`` of a run folder).
        config: the run's saved ``config.yaml`` as plain containers.
        global_step: optimiser steps done.
        validated: whether the run's history holds a validation at ``global_step``.
        world_size: the number of processes that wrote the checkpoint.
        epoch: the epoch it was saved in; ``mid_epoch``: part-way into it.
    """

    ckpt_path: Path
    config: Dict[str, Any]
    global_step: int
    validated: bool
    world_size: int
    epoch: int
    mid_epoch: bool

    def check_world_size(self, world_size: int) -> None:
        """Refuse (:class:`ConfigError`) to continue part-way into an epoch with another number of
        processes than wrote the checkpoint: the batches already trained on came from the other
        number's shards of the epoch's order, so the rest of that epoch cannot be replayed.
        Checkpoints at an epoch's end resume under any number of processes."""
        if self.world_size != world_size and self.mid_epoch:
            raise ConfigError(
                f"--resume: {self.ckpt_path} was saved part-way into epoch {self.epoch} by "
                f"{self.world_size} process(es); resume it with {self.world_size} "
                f"(trainer.devices x trainer.num_nodes), not {world_size}, or from a checkpoint at "
                "an epoch's end")


def read_resume_point(path: str | Path) -> ResumePoint:
    """The :class:`ResumePoint` of a run folder or ``.ckpt``, checked before anything starts: a
    readable Lightning training checkpoint with its loop state, and the run's ``config.yaml``
    beside its ``checkpoints/`` folder (each problem one line naming the file)."""
    ckpt_path = resolve_checkpoint(path, prefer="last")
    ckpt = read_checkpoint(ckpt_path, mmap=True)
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise DataError(f"{ckpt_path} cannot be resumed: it lacks {', '.join(missing)} "
                        "(a weights-only file? evaluate it with ckpt= instead)")
    saved = Path(path) / "config.yaml" if Path(path).is_dir() else ckpt_path.parent.parent / "config.yaml"
    if not saved.is_file():
        raise FileNotFoundError(f"--resume: no config.yaml beside {ckpt_path} (expected {saved})")
    try:
        config = OmegaConf.to_container(OmegaConf.load(saved), resolve=True)
    except Exception as err:  # noqa: BLE001  (a damaged YAML file)
        raise DataError(f"--resume: cannot read {saved} ({type(err).__name__})") from None
    if not isinstance(config, dict):
        raise DataError(f"--resume: {saved} is not a run config")
    step = int(ckpt["global_step"])
    callbacks = ckpt.get("callbacks") or {}
    records = (callbacks.get("History") or {}).get("records", [])
    progress = ckpt["loops"].get("fit_loop", {}).get("epoch_loop.batch_progress", {})
    started = int(progress.get("current", {}).get("ready", 0))  # batches of this epoch begun
    return ResumePoint(
        ckpt_path=ckpt_path, config=config, global_step=step,
        validated=any(r.get("stage") == "val" and r.get("step") == step for r in records),
        world_size=int((callbacks.get("ResumeDataOrder") or {}).get("world_size", 1)),
        epoch=int(ckpt.get("epoch", 0)),
        mid_epoch=bool(started) and not progress.get("is_last_batch", False))
