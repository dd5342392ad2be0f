"""Time of the statistics computed from a run's stored files, on a synthetic SPair-sized run.

    python benchmarks/evaluation_stats.py [--out runs/bench_stats] [--pairs-per-category N]

Writes two synthetic runs shaped like SPair-71k's test split (18 categories, 12,234 pairs, up to
30 keypoints, every row with left/right fields) through the real row writer
(:func:`semcorr.report.pair_records`, :func:`semcorr.predictions.prediction_row`), then times,
each from the stored files and with no model call: reading and rescoring one run
(:func:`semcorr.run_data.load_run`), its bootstrap intervals at the eval default
(``metric.bootstrap``), its left/right summary, and ``semcorr-compare`` of the two runs (paired
bootstrap and permutation test at their defaults, per-category curves, figures not included).
Prints wall and CPU time (this process) and the load average: wall timings under load mislead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from semcorr.compare import CompareSettings, compare_runs
from semcorr.config import MetricConfig
from semcorr.data.left_right import left_right_fields, visible_points
from semcorr.data.schema import collate
from semcorr.metrics import Protocol, pck_scores
from semcorr.metrics.bootstrap import Measure, bootstrap_intervals
from semcorr.metrics.left_right import left_right_summary
from semcorr.predictions import prediction_row, write_predictions
from semcorr.report import pair_records
from semcorr.run_data import load_run

# SPair-71k test pairs per category (the counts SD-DINO's pck_spair_pascal.py weights with)
SPAIR_TEST = [690, 650, 702, 702, 870, 644, 564, 600, 646, 640, 600, 600, 702, 650, 862, 664, 756, 692]
PROTOCOL = Protocol(name="hpf", threshold_by="bbox", average="per_image")
ALPHAS = (0.05, 0.1, 0.15)


def synthetic_rows(seed: int, counts, skill: float):
    """SPair-like prediction rows: per pair up to 30 keypoint ids, each visible in each image with
    probability 0.6, ids (2i, 2i+1) mirrored for i < 10; a share of predictions lands on the
    counterpart. ``skill`` scales the prediction noise down."""
    rng = np.random.default_rng(seed)
    pairs = [(2 * i, 2 * i + 1) for i in range(10)]
    groups = [[0, 1], [2, 3, 4, 5]]
    rows, index = [], 0
    for c, n in enumerate(counts):
        samples = []
        for _ in range(n):
            k = 30
            src_vis, trg_vis = rng.random(k) < 0.6, rng.random(k) < 0.6
            src, trg = rng.uniform(0, 400, (k, 2)), rng.uniform(0, 400, (k, 2))
            valid = src_vis & trg_vis
            ids = np.flatnonzero(valid)
            noise = rng.normal(0, 40 / skill, (len(ids), 2))
            pred = trg[ids] + noise
            for j, i in enumerate(ids):
                if i < 20 and rng.random() < 0.1:
                    pred[j] = trg[i ^ 1] + rng.normal(0, 5, 2)
            fields = left_right_fields(ids, visible_points(src, src_vis), visible_points(trg, trg_vis), pairs, groups)
            s = {key: torch.as_tensor(v) for key, v in fields.items()}
            s.update({"src_kps": torch.as_tensor(src[ids]), "src_kps_orig": torch.as_tensor(src[ids]),
                      "trg_kps_orig": torch.as_tensor(trg[ids]), "pred": torch.as_tensor(pred),
                      "kps_valid": torch.ones(len(ids), dtype=torch.bool),
                      "trg_bbox": torch.tensor([0.0, 0.0, 399.0, 399.0]), "trg_imsize": torch.tensor([400, 400]),
                      "category": f"cat{c:02d}", "src_id": f"s{index}", "trg_id": f"t{index}",
                      "pair_id": f"p{index}", "index": index})
            samples.append(s)
            index += 1
        for start in range(0, len(samples), 256):
            chunk = samples[start: start + 256]
            preds = [s.pop("pred") for s in chunk]
            batch = collate(chunk)
            pred = torch.zeros(len(chunk), batch["kps_valid"].shape[1], 2, dtype=torch.float64)
            for b, p in enumerate(preds):
                pred[b, : len(p)] = p
            scores = pck_scores(PROTOCOL, ALPHAS, pred, batch["trg_kps_orig"], batch["kps_valid"],
                                batch["trg_bbox"], batch["trg_imsize"])
            rows += [prediction_row(r) for r in pair_records(batch, scores)]
    return rows


def write_run(folder: Path, rows) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_predictions(rows, folder / "predictions.jsonl")
    metrics = {"dataset": "synthetic_spair", "split": "test", "protocol": PROTOCOL.as_dict(),
               "pck": {f"{a:g}": 0.0 for a in ALPHAS}}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench_stats")
    parser.add_argument("--pairs-per-category", type=int, default=None, help="default: SPair's counts")
    args = parser.parse_args()
    counts = [args.pairs_per_category] * 18 if args.pairs_per_category else SPAIR_TEST
    out = Path(args.out)
    t0 = time.perf_counter()
    for name, seed, skill in (("a", 0, 1.0), ("b", 1, 1.1)):
        write_run(out / name, synthetic_rows(seed, counts, skill))
    built = time.perf_counter() - t0
    timings = []

    def timed(what, fn):
        t, cpu = time.perf_counter(), time.process_time()
        result = fn()
        timings.append((what, time.perf_counter() - t, time.process_time() - cpu))
        return result

    run = timed("read + rescore predictions.jsonl (one run)", lambda: load_run(out / "a"))
    n_boot = MetricConfig().bootstrap
    measure = Measure.pck(run.n_correct, run.n_valid, run.category, run.alphas, PROTOCOL.average)
    ci = timed(f"bootstrap intervals ({n_boot} resamples, metric.bootstrap default)",
               lambda: bootstrap_intervals(measure, n_boot))
    lr = timed("left/right summary (overall + per category)",
               lambda: left_right_summary(run.left_right, run.category, run.alphas, PROTOCOL))
    s = CompareSettings()
    result = timed(f"semcorr-compare of two runs (bootstrap {s.bootstrap}, permutations "
                   f"{s.permutations}, 7 measures, curves; no figures)",
                   lambda: compare_runs([out / "a", out / "b"], s))
    load = os.getloadavg()
    lines = [f"{len(run.pair_id)} pairs, {int(run.n_valid.sum())} keypoints "
             f"({built:.1f} s to build the two runs); load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"]
    lines.append(f"{'':<92}{'wall':>9}{'CPU':>9}")
    lines += [f"{what:<92}{sec:>7.2f} s{cpu:>7.2f} s" for what, sec, cpu in timings]
    d = result["comparisons"][0]["measures"]["pck"]["overall"]["0.1"]
    lines.append(f"check: PCK@0.1 {measure.values()[0][1]:.2f} "
                 f"{ci['pck_ci95']['0.1']}; swap rate@0.1 {lr['swap_rate']['0.1']:.2f}; "
                 f"b - a @0.1 {d['difference']:+.2f} {d['ci95']} p={d['p']:.4f}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
