"""Supervised fine-tuning: ``python train.py [group=name ...] [key=value ...] [--resume RUN]``.

The same pipeline as evaluation (backbone -> head -> matcher -> transfer -> PCK) plus a loss;
Lightning Trainer arguments come from ``trainer.*``. Writes under ``out_dir``: ``config.yaml``,
``checkpoints/best-*.ckpt`` (selected by ``checkpointing.monitor``, validation PCK@0.1),
``checkpoints/last.ckpt`` (every ``checkpointing.every_n_steps`` steps, for ``--resume``),
``val_matches/*.png``, CSV / W&B logs and ``train_summary.json`` (learning curves, best score).

Training defaults (:data:`TRAIN_DEFAULT_GROUPS`, :data:`TRAIN_DEFAULTS`), applied only where
neither the command line nor the chosen group file sets the key:

- ``loss=gaussian_ce`` (evaluation's default is ``loss=none``; training with it is an error);
- ``backbone.trainable_blocks=2`` for DINOv2 (the survey baseline: the last two blocks train);
- ``trainer.gradient_clip_val=1.0``; ``trainer.precision=bf16-mixed`` on a GPU (AMP).

``--resume RUN`` (a run folder or a ``.ckpt``) re-opens the run's saved config, restores the
weights, optimiser, scheduler, step and data order, and continues in the same ``out_dir``.

Distributed (``trainer.devices=N``, ``trainer.strategy=ddp``, ``trainer.num_nodes``): each process
trains on its share of every epoch's order; validation is exact over all ranks; global rank 0
alone writes the config, checkpoints, figures and ``train_summary.json`` (docs/distributed.md).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from semcorr.builder import Run, build_run, config_dict
from semcorr.checkpoint import typed_config
from semcorr.cli.common import (accelerator, check_out_dir, make_out_dir, parse_args, quiet_unless,
                                run_main, share_out_dir, trainer_kwargs, write_json)
from semcorr.cli.loggers import finish_loggers, log_image, make_loggers
from semcorr.config import expand_experiment, group_file, load_config, save_config, to_yaml
from semcorr.distributed import launch_rank_is_zero
from semcorr.errors import ConfigError, NumericalError, TrainingDiverged
from semcorr.registry import GROUPS
from semcorr.report import PredictionPanel
from semcorr.resume import ResumePoint, check_resume_changes, read_resume_point
from semcorr.interrupt import RunInterrupted, interrupting_signal, signal_name
from semcorr.rundir import check_run_folder, claim_run_folder
from semcorr.training import (AtomicCheckpointIO, History, LastCheckpoint, ResumeDataOrder,
                              RunFolder)

log = logging.getLogger("semcorr.train")

TRAIN_DEFAULT_GROUPS = {"loss": "gaussian_ce"}
# key -> (backbone kinds it applies to or None for all, value, only on a GPU)
TRAIN_DEFAULTS = {
    "backbone.trainable_blocks": (("dinov2",), 2, False),
    "trainer.gradient_clip_val": (None, 1.0, False),
    "trainer.precision": (None, "bf16-mixed", True),
}


def _set_in_file(cfg: DictConfig, key: str, extra_dirs: Sequence[str] = ()) -> bool:
    """Whether the group file chosen for ``key``'s group sets ``key`` itself."""
    group, _, rest = key.partition(".")
    if group not in GROUPS:
        return False
    try:
        path = group_file(group, cfg[group].name, extra_dirs)
    except ConfigError:
        return False
    return OmegaConf.select(OmegaConf.load(path), rest, default="__absent__") != "__absent__"


def apply_train_defaults(cfg: DictConfig, tokens: Sequence[str],
                         extra_dirs: Sequence[str] = ()) -> DictConfig:
    """Apply :data:`TRAIN_DEFAULTS` where neither ``tokens`` nor the group files set the key."""
    given = {t.split("=", 1)[0] for t in tokens}
    on_gpu = accelerator(cfg) == "gpu"
    for key, (kinds, value, gpu_only) in TRAIN_DEFAULTS.items():
        if key in given or (gpu_only and not on_gpu) or _set_in_file(cfg, key, extra_dirs):
            continue
        if kinds is not None and cfg[key.split(".")[0]].kind not in kinds:
            continue
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def train_config(tokens: Sequence[str], resume: Optional[ResumePoint] = None,
                 extra_dirs: Sequence[str] = ()) -> DictConfig:
    """The run config: a new run from ``tokens``, or the resumed run's saved config + ``tokens``.

    ``extra_dirs``: user config folders (``--config-dir``)."""
    if resume is None:
        cfg = load_config(tokens, default_groups=TRAIN_DEFAULT_GROUPS, extra_dirs=extra_dirs)
        # what an experiment file sets counts as given, like the command line's own tokens
        return apply_train_defaults(cfg, expand_experiment(tokens, extra_dirs)[1], extra_dirs)
    saved = typed_config(resume.config)
    cfg = load_config(tokens, base=saved, extra_dirs=extra_dirs)
    check_resume_changes(saved, cfg, resume)
    cfg.out_dir = str(resume.run_dir)  # where the run is now, not where its config says it was
    return cfg


def training_callbacks(cfg: DictConfig, run: Run, out_dir: Path, with_loggers: bool
                       ) -> Dict[str, L.Callback]:
    """The callbacks of a training run, by name: ``best`` (``checkpoints/best-*.ckpt`` by
    ``checkpointing.monitor``), ``last`` (``last.ckpt``), ``history`` (learning curves),
    ``data_order`` (exact resume), ``folder`` (a moved run's checkpoint paths), ``panel``
    (validation figure) and, with loggers, ``lr``."""
    ck = cfg.checkpointing
    callbacks: Dict[str, L.Callback] = {
        "best": ModelCheckpoint(dirpath=out_dir / "checkpoints", monitor=ck.monitor, mode="max",
                                save_top_k=ck.save_top_k, auto_insert_metric_name=False,
                                filename="best-step{step:06d}"),
        "last": LastCheckpoint(out_dir / "checkpoints", every_n_train_steps=ck.every_n_steps or None),
        "history": History(),
        "folder": RunFolder(out_dir / "checkpoints"),
        "data_order": ResumeDataOrder(cfg.data.batch_size),
        "panel": PredictionPanel(run.dataset.read_image, out_dir, cfg.plots.alpha, run.protocol,
                                 log_image, keep=cfg.plots.n_pairs),
    }
    if with_loggers:
        callbacks["lr"] = LearningRateMonitor(logging_interval="step")
    return callbacks


def diverged(err: NumericalError, trainer: L.Trainer, last: LastCheckpoint,
             resume: Optional[ResumePoint]) -> TrainingDiverged:
    """The one-line error of a run stopped by a non-finite value: where, and the last good checkpoint."""
    step = trainer.global_step
    where = (f"in the validation after step {step}" if trainer.validating or trainer.sanity_checking
             else f"at step {step + 1}")
    step_saved = last.saved_step or (resume.global_step if resume else None)
    good = (f"{last.last_model_path} (step {step_saved})" if last.last_model_path
            else "none (no checkpoint was written)")
    return TrainingDiverged(f"training diverged {where}: {err}; the run stopped; last good "
                            f"checkpoint: {good}")


def fit(cfg: DictConfig, resume: Optional[ResumePoint] = None,
        callbacks: Sequence[L.Callback] = (), overwrite: bool = False) -> Dict[str, Any]:
    """Train one run (continuing ``resume`` when given); returns its summary, also written to
    ``train_summary.json`` whatever the outcome: ``status`` ``finished``, ``interrupted`` (and
    ``signal``; :class:`~semcorr.interrupt.RunInterrupted` is raised) or ``failed`` (and
    ``error``). A non-finite loss, gradient, feature or plan stops the run with
    :class:`~semcorr.errors.TrainingDiverged` naming the step and the last good checkpoint.
    ``out_dir`` must not hold another run's results unless ``overwrite`` (:mod:`semcorr.rundir`).
    """
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out_dir = check_out_dir(cfg.out_dir)
    rank_zero = launch_rank_is_zero()
    if rank_zero:
        check_run_folder(out_dir, overwrite, resume=resume is not None)
    run = build_run(cfg, stage="fit")
    make_out_dir(out_dir)  # only once the run is built: a bad config leaves no folder behind
    lock = claim_run_folder(out_dir, overwrite, resume=resume is not None) if rank_zero else None
    try:
        return _fit(cfg, run, out_dir, resume, callbacks)
    finally:
        if lock is not None:
            lock.release()


def _fit(cfg: DictConfig, run: Run, out_dir: Path, resume: Optional[ResumePoint],
         callbacks: Sequence[L.Callback]) -> Dict[str, Any]:
    # Lightning keeps the modes modules are in when fit starts; train() lets the backbone put its
    # frozen blocks in eval mode (DinoV2.train) before the first step.
    run.module.train()
    loggers = make_loggers(cfg.logger, out_dir, config_dict(cfg), name=out_dir.name, log_model=True,
                           resume=resume)
    named = training_callbacks(cfg, run, out_dir, bool(loggers))
    trainer = L.Trainer(**trainer_kwargs(cfg, "fit", run.module), logger=loggers or False,
                        callbacks=[*named.values(), *callbacks], default_root_dir=str(out_dir),
                        plugins=[AtomicCheckpointIO()])
    quiet_unless(trainer.is_global_zero)
    if resume is not None:
        resume.check_world_size(trainer.world_size)
    if trainer.is_global_zero:
        save_config(cfg, out_dir)
    log.info("training %s + %s + %s on %s (%d train / %d val pairs), loss %s, %d process(es), "
             "out_dir %s", cfg.backbone.name, cfg.head.name, cfg.matcher.name, cfg.data.name,
             len(run.datamodule.dataset("train")), len(run.dataset), cfg.loss.name,
             trainer.world_size, out_dir)
    t0 = time.perf_counter()
    error: Optional[BaseException] = None
    try:
        with share_out_dir(cfg):
            trainer.fit(run.module, datamodule=run.datamodule,
                        ckpt_path=str(resume.ckpt_path) if resume else None)
    except NumericalError as err:
        error = diverged(err, trainer, named["last"], resume)
    except BaseException as err:  # noqa: BLE001  (recorded in the summary, then raised again)
        error = err
    signum = interrupting_signal(error) if error is not None else None
    status = ("interrupted" if signum is not None or (error is None and trainer.interrupted)
              else "failed" if error is not None else "finished")
    finish_loggers(loggers, status == "finished")
    summary = run_summary(cfg, trainer, named, status, None if signum else error,
                          time.perf_counter() - t0, resume)
    if signum is not None:
        summary["signal"] = signal_name(signum)
    if trainer.is_global_zero:
        try:
            write_json(out_dir / "train_summary.json", summary, non_finite="null")
        except OSError as err:  # a full disk: say so, but the run's own error comes first
            if error is None:
                raise
            log.error("could not write %s: %s", out_dir / "train_summary.json", err)
    if signum is not None:
        raise RunInterrupted(signum, interrupted_detail(summary, out_dir)) from None
    if isinstance(error, TrainingDiverged):
        raise error from None
    if error is not None:
        raise error
    return summary


def interrupted_detail(summary: Dict[str, Any], out_dir: Path) -> str:
    """What an interrupted run kept, for its one-line message."""
    if summary["last_checkpoint"]:
        kept = (f"last checkpoint {summary['last_checkpoint']} (step {summary['last_checkpoint_step']}); "
                f"continue with: train.py --resume {out_dir}")
    else:
        kept = "no last.ckpt was written" + (f" (best checkpoint: {summary['best_checkpoint']})"
                                             if summary["best_checkpoint"] else "")
    return f"training stopped at step {summary['global_step']}; {kept}"


def run_summary(cfg: DictConfig, trainer: L.Trainer, named: Dict[str, L.Callback], status: str,
                error: Optional[BaseException], seconds: float,
                resume: Optional[ResumePoint]) -> Dict[str, Any]:
    """The content of ``train_summary.json``."""
    best, last = named["best"], named["last"]
    saved_step = last.saved_step or (resume.global_step if resume else None)
    return {
        "status": status,
        "error": None if error is None else f"{type(error).__name__}: {error}",
        "out_dir": str(cfg.out_dir),
        "global_step": trainer.global_step,
        "seconds": seconds,
        "monitor": cfg.checkpointing.monitor,
        "best_score": None if best.best_model_score is None else float(best.best_model_score),
        "best_checkpoint": best.best_model_path or None,
        "last_checkpoint": last.last_model_path or None,
        "last_checkpoint_step": saved_step if last.last_model_path else None,
        "history": named["history"].records,
        "processes": trainer.world_size,
    }


def train(argv: Sequence[str]) -> int:
    args = parse_args(argv, "train.py", flags=("--resume", "--overwrite"))
    # a garbage last.ckpt or a missing config.yaml fails here, before anything starts
    resume = read_resume_point(args.resume) if args.resume else None
    cfg = train_config(args.tokens, resume, args.config_dirs)
    if args.print_config:
        sys.stdout.write(to_yaml(cfg))
        return 0
    summary = fit(cfg, resume=resume, overwrite=args.overwrite)
    if not launch_rank_is_zero():
        return 0
    best = summary["best_score"]
    sys.stdout.write(f"trained {summary['global_step']} steps in {summary['seconds']:.1f} s; "
                     f"best {summary['monitor']} = {'n/a' if best is None else f'{best:.2f}'}; "
                     f"checkpoints in {Path(cfg.out_dir) / 'checkpoints'}\n")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(train, argv, "train.py")


if __name__ == "__main__":
    raise SystemExit(main())
