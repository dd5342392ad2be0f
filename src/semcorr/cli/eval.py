"""Zero-shot (or checkpoint) evaluation: ``python eval.py [group=name ...] [key=value ...]``.

Writes ``<out_dir>/config.yaml``, ``metrics.json`` (with a PCK-vs-alpha ``pck_curve``) and the
figures ``keypoints.png``, ``pck_curve.png`` and ``dense_warp.png`` (``plots.*``), logs to CSV and
W&B, and prints a PCK table. ``ckpt=RUN`` evaluates a trained run's best checkpoint through the
same pipeline (see :func:`semcorr.cli.common.resolve_config`).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import lightning as L

from semcorr.builder import build_run, config_dict, run_protocol
from semcorr.cli.common import (accelerator, check_out_dir, make_out_dir, parse_args, pck_table,
                                rate, resolve_config, run_main, write_json)
from semcorr.cli.loggers import finish_loggers, log_image, make_loggers
from semcorr.config import save_config
from semcorr.figures import write_eval_figures
from semcorr.metrics import curve_entry
from semcorr.report import EvalReport

log = logging.getLogger("semcorr.eval")


def evaluate(argv: Sequence[str]) -> int:
    cfg = resolve_config(parse_args(argv, "eval.py"))
    if cfg is None:
        return 0
    L.seed_everything(cfg.seed, verbose=False)
    out_dir = check_out_dir(cfg.out_dir)
    run = build_run(cfg, stage="test")
    make_out_dir(out_dir)  # only once the run is built: a bad config leaves no folder behind
    (out_dir / "metrics.json").unlink(missing_ok=True)  # an earlier run's, no longer this config's
    save_config(cfg, out_dir)
    dataset = run.dataset
    proto = run_protocol(cfg, dataset)
    report = EvalReport(proto["threshold_by"], keep=cfg.plots.n_pairs)
    loggers = make_loggers(cfg.logger, out_dir, config_dict(cfg), name=out_dir.name)
    trainer = L.Trainer(
        accelerator=accelerator(cfg), devices=1, logger=loggers or False, callbacks=[report],
        default_root_dir=str(out_dir), enable_checkpointing=False,
        enable_progress_bar=cfg.trainer.enable_progress_bar,
        limit_test_batches=cfg.trainer.limit_test_batches, precision=cfg.trainer.precision,
    )
    log.info("evaluating %d pairs of %s (%s) with %s + %s", len(dataset), cfg.data.name,
             cfg.data.split, cfg.backbone.name, cfg.matcher.name)
    success = False
    try:
        metrics = _evaluate(cfg, trainer, run, report, proto, loggers, out_dir)
        success = True
    finally:
        finish_loggers(loggers, success)
    sys.stdout.write(pck_table(metrics, f"{cfg.data.name} ({cfg.data.split}), {metrics['n_pairs']} pairs, "
                                        f"{proto['average']}, threshold by {proto['threshold_by']}") + "\n")
    sys.stdout.write(f"{metrics['timing']['seconds']:.1f} s, "
                     f"{rate(metrics['n_pairs'], metrics['timing']['seconds'])}; "
                     f"wrote {out_dir / 'metrics.json'}\n")
    return 0


def _evaluate(cfg, trainer, run, report, proto, loggers, out_dir: Path) -> dict:
    """Test the run's model; write the figures, then ``metrics.json`` (last, atomically: it
    exists only for a run that finished); return the metrics."""
    module, datamodule, dataset = run.module, run.datamodule, run.dataset
    t0 = time.perf_counter()
    trainer.test(module, datamodule=datamodule, verbose=False)
    seconds = time.perf_counter() - t0
    result = module.last_test_result
    metrics = {
        "dataset": cfg.data.name,
        "split": cfg.data.split,
        "n_pairs": result["n_pairs"],
        "n_keypoints": result["n_keypoints"],
        "protocol": proto,
        "pck": result["pck"],
        "pck_per_category": result["pck_per_category"],
        "pck_per_image": result["pck_per_image"],
        "pck_per_keypoint": result["pck_per_keypoint"],
        "timing": {
            "seconds": seconds,
            "pairs_per_s": result["n_pairs"] / max(seconds, 1e-9),
            **report.timing(),
            "distinct_images": len(dataset.image_ids()),
        },
        "config": config_dict(cfg),
    }
    metrics["pck_curve"] = curve_entry(report.errors, cfg.plots.curve_max_alpha, proto["average"])
    figures = write_eval_figures(module, report, dataset, out_dir, cfg.plots, proto["threshold_by"],
                                 metrics["pck_curve"], method=f"{cfg.backbone.name} + {cfg.matcher.name}")
    for key, path in figures.items():
        log_image(loggers, key, path)
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(evaluate, argv, "eval.py")


if __name__ == "__main__":
    raise SystemExit(main())
