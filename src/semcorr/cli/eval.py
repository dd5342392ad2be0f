"""Zero-shot (or checkpoint) evaluation: ``python eval.py [group=name ...] [key=value ...]``.

Writes ``<out_dir>/config.yaml``, ``metrics.json`` (with a PCK-vs-alpha ``pck_curve``) and the
figures ``keypoints.png``, ``pck_curve.png`` and ``dense_warp.png`` (``plots.*``), logs to CSV and
W&B, and prints a PCK table.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import lightning as L

from semcorr.cli.common import (accelerator, build_parts, config_dict, parse_args, pck_table,
                                protocol, resolve_config, run_main)
from semcorr.cli.loggers import log_image, make_loggers
from semcorr.checkpoint import checkpoint_config, ckpt_token, load_weights
from semcorr.config import save_config
from semcorr.data.datamodule import datamodule_from_config
from semcorr.features import DiskCache, MemoryCache
from semcorr.models import CorrespondenceModule
from semcorr.viz import curve_of_run, write_eval_figures

log = logging.getLogger("semcorr.eval")


def feature_stores(cfg, trained: bool = False):
    """Feature caches checked in order: memory, then ``cache.disk_dir`` when set.

    ``trained``: the weights come from a checkpoint, whose features the disk cache's keys do not
    tell apart from the pretrained ones, so only the in-memory cache is used.
    """
    if not cfg.cache.enabled:
        return []
    stores = [MemoryCache(cfg.cache.memory_mb)]
    if cfg.cache.disk_dir and not trained:
        stores.append(DiskCache(cfg.cache.disk_dir))
    return stores


def evaluate(argv: Sequence[str]) -> int:
    args = parse_args(argv, "eval.py")
    ckpt = ckpt_token(args.tokens)  # ckpt=PATH: rebuild from the checkpoint's config, then override
    cfg = resolve_config(args, base=checkpoint_config(ckpt) if ckpt else None)
    if cfg is None:
        return 0
    L.seed_everything(cfg.seed, verbose=False)
    out_dir = Path(cfg.out_dir)
    save_config(cfg, out_dir)
    backbone, head, matcher = build_parts(cfg)
    datamodule = datamodule_from_config(cfg.data, divisor=backbone.stride, seed=cfg.seed)
    dataset = datamodule.dataset(cfg.data.split)
    proto = protocol(cfg, dataset)
    module = CorrespondenceModule(
        backbone, matcher, head=head, transfer=dict(cfg.matcher.transfer),
        alphas=list(cfg.metric.alphas), categories=dataset.categories,
        stores=feature_stores(cfg, trained=bool(cfg.ckpt)), keep_predictions=cfg.plots.n_pairs,
        run_config=config_dict(cfg), **proto,
    )
    if cfg.ckpt:
        log.info("loaded weights from %s", load_weights(module, cfg.ckpt))
    loggers = make_loggers(cfg.logger, out_dir, config_dict(cfg), name=out_dir.name)
    trainer = L.Trainer(
        accelerator=accelerator(cfg), devices=1, logger=loggers or False,
        default_root_dir=str(out_dir), enable_checkpointing=False,
        enable_progress_bar=cfg.trainer.enable_progress_bar,
        limit_test_batches=cfg.trainer.limit_test_batches, precision=cfg.trainer.precision,
    )
    log.info("evaluating %d pairs of %s (%s) with %s + %s", len(dataset), cfg.data.name,
             cfg.data.split, cfg.backbone.name, cfg.matcher.name)
    t0 = time.perf_counter()
    trainer.test(module, datamodule=datamodule, verbose=False)
    seconds = time.perf_counter() - t0
    result = module.last_test_result
    n_images = len(dataset.image_ids())
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
            "backbone_ms_per_image": module.timer.total_ms.get("backbone", 0.0)
            / max(module.extractor.backbone_calls, 1),
            "match_ms_per_pair": module.timer.mean_ms("match"),
            "backbone_calls": module.extractor.backbone_calls,
            "distinct_images": n_images,
        },
        "config": config_dict(cfg),
    }
    metrics["pck_curve"] = curve_of_run(module.errors, cfg.plots.curve_max_alpha, proto["average"])
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    figures = write_eval_figures(module, dataset, out_dir, cfg.plots, proto["threshold_by"],
                                 metrics["pck_curve"], method=f"{cfg.backbone.name} + {cfg.matcher.name}")
    for key, path in figures.items():
        log_image(loggers, key, path)
    for logger in loggers:
        logger.finalize("success")
    sys.stdout.write(pck_table(result, f"{cfg.data.name} ({cfg.data.split}), {result['n_pairs']} pairs, "
                               f"{proto['average']}, threshold by {proto['threshold_by']}") + "\n")
    sys.stdout.write(f"{seconds:.1f} s, {metrics['timing']['pairs_per_s']:.1f} pairs/s; "
                     f"wrote {out_dir / 'metrics.json'}\n")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(evaluate, argv, "eval.py")


if __name__ == "__main__":
    raise SystemExit(main())
