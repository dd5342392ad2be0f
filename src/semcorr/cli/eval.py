"""Zero-shot (or checkpoint) evaluation: ``python eval.py [group=name ...] [key=value ...]``.

Writes ``<out_dir>/config.yaml``, ``metrics.json`` (with the protocol and a PCK-vs-alpha
``pck_curve``), ``predictions.jsonl`` (one line per pair, :mod:`semcorr.predictions`) and the
figures ``keypoints.png``, ``pck_curve.png``, ``dense_warp.png`` and ``pca.png`` (``plots.*``), logs to CSV and
W&B (with a table of the first ``logger.table_pairs`` pairs), and prints a PCK table.
``ckpt=RUN`` evaluates a trained run's best checkpoint through the same pipeline (see
:func:`semcorr.cli.common.resolve_config`).

Distributed (``trainer.devices=N``, ``trainer.strategy=ddp``, ``trainer.num_nodes``): each process
scores its shard of the pairs (no pair twice, none left out), the metrics and the per-pair report
are gathered, and global rank 0 alone writes the files and prints the table (docs/distributed.md).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from semcorr.cli.common import (check_out_dir, make_out_dir, parse_args, pck_table, plural,
                                quiet_unless, rate, resolve_config, run_main, share_out_dir,
                                trainer_kwargs, write_json)
from semcorr.distributed import launch_rank_is_zero
from semcorr.errors import DataError
from semcorr.interrupt import RunInterrupted, interrupting_signal
from semcorr.rundir import check_run_folder, claim_run_folder

# Lightning, torch and the pipeline are imported by evaluate() once the arguments are parsed:
# ``--help`` and a bad argument answer without them.

log = logging.getLogger("semcorr.eval")


def evaluate(argv: Sequence[str]) -> int:
    args = parse_args(argv, "eval.py", flags=("--overwrite",))
    cfg = resolve_config(args)
    if cfg is None:
        return 0
    import lightning as L

    from semcorr.builder import build_run, config_dict
    from semcorr.cli.loggers import finish_loggers, make_loggers
    from semcorr.config import group_config, save_config
    from semcorr.matchers import build_matcher
    from semcorr.eval_stats import left_right_table
    from semcorr.metrics import alpha_grid
    from semcorr.pose_align import LABEL
    from semcorr.progress import ConsoleProgress
    from semcorr.report import EvalReport, EvalTiming, PoseAlignReport

    L.seed_everything(cfg.seed, verbose=False)
    out_dir = check_out_dir(cfg.out_dir)
    if launch_rank_is_zero():  # the other processes of a distributed run write nothing
        check_run_folder(out_dir, args.overwrite)
    run = build_run(cfg, stage="test")
    plots = cfg.plots
    compare = {name: build_matcher(group_config("matcher", name)) for name in plots.warp_compare}
    report = EvalReport(alpha_grid(plots.curve_max_alpha), keep=plots.n_pairs,
                        rows=cfg.predictions.enabled, max_points=cfg.predictions.max_points,
                        dense_warp=plots.dense_warp, method=cfg.matcher.name, compare=compare,
                        pca=plots.pca)
    timing = EvalTiming()
    pose = PoseAlignReport() if cfg.pose_align.enabled else None  # uses GT left/right labels
    callbacks = [report, timing] + ([pose] if pose else [])
    loggers = make_loggers(cfg.logger, out_dir, config_dict(cfg), name=out_dir.name)
    progress = ([ConsoleProgress(f"evaluating {cfg.data.name} ({cfg.data.split})")]
                if cfg.trainer.enable_progress_bar else [])
    trainer = L.Trainer(**trainer_kwargs(cfg, stage="test"), logger=loggers or False,
                        callbacks=[*callbacks, *progress], default_root_dir=str(out_dir),
                        enable_checkpointing=False)
    quiet_unless(trainer.is_global_zero)
    lock = None
    if trainer.is_global_zero:
        make_out_dir(out_dir)  # only once the run is built: a bad config leaves no folder behind
        lock = claim_run_folder(out_dir, args.overwrite)  # --overwrite: an earlier run's files go
        save_config(cfg, out_dir)
    log.info("evaluating %s of %s (%s) with %s + %s on %s", run.dataset.subset_note(),
             cfg.data.name, cfg.data.split, cfg.backbone.name, cfg.matcher.name,
             plural(trainer.world_size, "process", "processes"))
    success = False
    try:
        with share_out_dir(cfg):
            metrics = _evaluate(cfg, trainer, run, report, timing, loggers, out_dir, pose)
        success = True
    except BaseException as err:
        signum = interrupting_signal(err)
        if signum is None:
            raise
        raise RunInterrupted(signum, f"the evaluation stopped; no {out_dir / 'metrics.json'} "
                                     "was written") from None
    finally:
        finish_loggers(loggers, success)
        if lock is not None:
            lock.release()
    if not trainer.is_global_zero:
        return 0
    dagger = f"; Pose-Align: {LABEL}" if cfg.pose_align.enabled else ""
    sys.stdout.write(pck_table(metrics, f"{cfg.data.name} ({cfg.data.split}), {run.dataset.subset_note()}, "
                                        f"protocol {run.protocol.summary()}{dagger}") + "\n")
    if pose is not None:
        p = metrics["pose_align"]
        sys.stdout.write(f"Pose-Align ({p['score']} score) {LABEL}: the mirrored source was kept for "
                         f"{p['pairs_flipped']} of {p['pairs']} pairs\n")
    if "left_right" in metrics:
        sys.stdout.write(left_right_table(metrics["left_right"]) + "\n")
    sys.stdout.write(f"{metrics['timing']['seconds']:.1f} s, "
                     f"{rate(metrics['n_pairs'], metrics['timing']['seconds'])}; "
                     f"wrote {written(out_dir, loggers)}\n")
    return 0


def written(out_dir: Path, loggers) -> str:
    """Where every output of the run went: ``runs/x/: config.yaml, metrics.json, ...``."""
    from semcorr.cli.loggers import wandb_loggers

    names = [p.name + ("/" if p.is_dir() else "") for p in sorted(out_dir.iterdir())
             if not p.name.startswith(".") and p.name != "wandb"]
    text = f"{out_dir}/: {', '.join(names)}"
    if wandb_loggers(loggers):
        text += f"; W&B run in {out_dir / 'wandb'}"
    return text


def _evaluate(cfg, trainer, run, report: EvalReport, timing: EvalTiming, loggers, out_dir: Path,
              pose: Optional[PoseAlignReport] = None) -> dict:
    """Test the run's model; return the metrics (all ranks). Rank 0 writes ``predictions.jsonl``,
    the figures, then ``metrics.json`` (last, atomically: it exists only for a run that finished)."""
    from semcorr.builder import config_dict
    from semcorr.cli.loggers import log_image, log_table, wandb_loggers
    from semcorr.eval_stats import evaluation_statistics, logged_scalars, subset_note
    from semcorr.figures import prediction_table, write_eval_figures
    from semcorr.metrics import curve_entry
    from semcorr.pose_align import pose_align_summary
    from semcorr.predictions import write_predictions

    dataset, proto = run.dataset, run.protocol
    t0 = time.perf_counter()
    trainer.test(run.module, datamodule=run.datamodule, verbose=False)
    seconds = time.perf_counter() - t0
    result = report.result
    if result["n_pairs"] == 0:
        raise DataError(f"no pair of data={cfg.data.name} ({cfg.data.split}) has a valid keypoint: "
                        "nothing was scored, no metrics.json written")
    metrics = {
        "dataset": cfg.data.name,
        "split": cfg.data.split,
        "n_pairs": result["n_pairs"],
        "n_keypoints": result["n_keypoints"],
        "subset": dataset.subset,  # data.max_pairs left pairs out: how many of how many, how
        "protocol": proto.as_dict(),
        "pck": result["pck"],
        "pck_pooled": result["pck_pooled"],
        "pck_category_mean": result["pck_category_mean"],
        "pck_per_category": result["pck_per_category"],
        "pck_per_image": result["pck_per_image"],
        "pck_per_keypoint": result["pck_per_keypoint"],
        "pose_align": ({"enabled": False} if pose is None else pose_align_summary(
            cfg.pose_align, [e[2] for e in pose.entries], [e[1] for e in pose.entries])),
        "timing": {
            "seconds": seconds,
            "pairs_per_s": result["n_pairs"] / max(seconds, 1e-9),
            **timing.timing(),
            "processes": trainer.world_size,
            "image_ids": len(dataset.image_ids()),
            "distinct_images": dataset.distinct_images(),  # by content (docs/datasets.md)
        },
        "config": config_dict(cfg),
    }
    metrics["pck_curve"] = curve_entry(*report.curve_counts(), report.curve_alphas, proto.average)
    if not trainer.is_global_zero:
        return metrics
    subset = subset_note(dataset, cfg.trainer.limit_test_batches)
    if subset:
        metrics["pairs_subset"] = subset
    metrics.update(evaluation_statistics(report, proto, cfg.metric.alphas, cfg.metric.bootstrap,
                                         cfg.metric.bootstrap_seed))
    scalars = logged_scalars(metrics)
    for logger in loggers if scalars else ():
        logger.log_metrics(scalars)
    if report.rows:
        write_predictions(report.rows, out_dir / "predictions.jsonl")
        if cfg.logger.table_pairs > 0 and wandb_loggers(loggers):  # thumbnails cost seconds
            columns, data = prediction_table(report.rows, dataset.read_image,
                                             cfg.logger.table_pairs, cfg.plots.alpha, proto,
                                             cfg.plots.max_points)
            log_table(loggers, "predictions", columns, data)
    figures = write_eval_figures(report, dataset.read_image, out_dir, cfg.plots, proto,
                                 metrics["pck_curve"], method=f"{cfg.backbone.name} + {cfg.matcher.name}",
                                 category_curves=metrics.get("pck_curve_per_category"))
    for key, path in figures.items():
        log_image(loggers, key, path)
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(evaluate, argv, "eval.py")


if __name__ == "__main__":
    raise SystemExit(main())
