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

from omegaconf import DictConfig, OmegaConf

from semcorr.checkpoint import read_checkpoint, resolve_checkpoint
from semcorr.errors import ConfigError, DataError

REQUIRED = ("global_step", "loops", "optimizer_states")


@dataclass(frozen=True)
class ResumePoint:
    """Where a run stopped.

    Attributes:
        ckpt_path: the checkpoint to continue from (``checkpoints/last.ckpt`` of a run folder).
        config: the run's saved ``config.yaml`` as plain containers.
        run_dir: the run folder as given (where the run continues: a moved or copied run goes on
            where it now is, whatever ``out_dir`` its config names).
        global_step: optimiser steps done.
        validated: whether the run's history holds a validation at ``global_step``.
        world_size: the number of processes that wrote the checkpoint.
        epoch: the epoch it was saved in; ``mid_epoch``: part-way into it.
    """

    ckpt_path: Path
    config: Dict[str, Any]
    run_dir: Path
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
    run_dir = Path(path).expanduser() if Path(path).expanduser().is_dir() else ckpt_path.parent.parent
    saved = run_dir / "config.yaml"
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
        ckpt_path=ckpt_path, config=config, run_dir=run_dir, global_step=step,
        validated=any(r.get("stage") == "val" and r.get("step") == step for r in records),
        world_size=int((callbacks.get("ResumeDataOrder") or {}).get("world_size", 1)),
        epoch=int(ckpt.get("epoch", 0)),
        mid_epoch=bool(started) and not progress.get("is_last_batch", False))


# what a resumed run may set differently from the run it continues: how long it runs, where and
# with how many processes (checked: ResumePoint.check_world_size), what it logs and draws, and
# where data and caches are found. Everything else would make the rest of the run another run.
RESUME_FREE = ("trainer.max_steps", "trainer.max_epochs", "trainer.devices", "trainer.num_nodes",
               "trainer.strategy", "trainer.accelerator", "trainer.enable_progress_bar",
               "trainer.profiler", "trainer.log_every_n_steps", "device", "logger.", "plots.",
               "predictions.", "cache.", "data.root", "data.num_workers", "data.image_cache_mb",
               "checkpointing.every_n_steps", "checkpointing.save_top_k")


def _flat(node: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(node, dict):
        out: Dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


def _free(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUME_FREE)


def check_resume_changes(saved: DictConfig, cfg: DictConfig, point: ResumePoint) -> None:
    """Refuse (:class:`ConfigError`, one line) a resumed config ``cfg`` that changes a setting of
    the ``saved`` one outside :data:`RESUME_FREE` (``data.batch_size=4``, another matcher, ...),
    or that moves ``out_dir`` away from the run folder: ``--resume`` continues the run that was
    started, exactly, in its own folder."""
    before = _flat(OmegaConf.to_container(saved, resolve=True))
    after = _flat(OmegaConf.to_container(cfg, resolve=True))
    out_dir = after.pop("out_dir", None)
    before.pop("out_dir", None)
    if out_dir is not None and Path(str(out_dir)).expanduser().resolve() != point.run_dir.resolve() \
            and str(out_dir) != str(saved.out_dir):
        raise ConfigError(f"--resume continues in the run's own folder {point.run_dir}; out_dir "
                          f"cannot be changed (copy or move the folder and resume it there)")
    changed = sorted(k for k in set(before) | set(after)
                     if before.get(k, "<absent>") != after.get(k, "<absent>") and not _free(k))
    if changed:
        shown = ", ".join(f"{k} ({before.get(k, '<absent>')!r} -> {after.get(k, '<absent>')!r})"
                          for k in changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        raise ConfigError(f"--resume cannot change {shown}: the resumed run would not continue "
                          "the one that was started; start a new run for other settings (a resume "
                          "may change trainer.max_steps / max_epochs, devices, logging, plots, "
                          "caches and data.root)")
