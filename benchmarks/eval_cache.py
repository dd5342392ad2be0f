"""Backbone calls and eval time with and without the feature cache (PF-WILLOW, dense SIFT).

    python benchmarks/eval_cache.py [--max-pairs N] [--out runs/bench_cache] [extra eval tokens]

Runs ``eval.py`` twice in fresh processes, ``cache.enabled=true`` and ``cache.enabled=false``,
and prints a table of backbone calls, distinct images, seconds inside the feature extractor
(backbone, cache look-ups included), eval seconds (``timing.seconds``, the test loop) and the
process wall time, and checks that the PCK is the same.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run(tokens: list[str], out_dir: Path) -> tuple[dict, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "semcorr.cli.eval", *tokens, f"out_dir={out_dir}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    return json.loads((out_dir / "metrics.json").read_text()), wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-pairs", type=int, default=None)
    parser.add_argument("--out", default="runs/bench_cache")
    args, extra = parser.parse_known_args()
    tokens = ["data=pf_willow", "backbone=dsift", "matcher=nn", "plots.n_pairs=0",
              "logger.wandb=false", "trainer.enable_progress_bar=false", *extra]
    if args.max_pairs:
        tokens.append(f"data.max_pairs={args.max_pairs}")
    rows = []
    for enabled in ("true", "false"):
        metrics, wall = run([*tokens, f"cache.enabled={enabled}"], Path(args.out) / f"cache_{enabled}")
        t = metrics["timing"]
        backbone_s = t["backbone_ms_per_image"] * max(t["backbone_calls"], 1) / 1e3
        rows.append((enabled, metrics["n_pairs"], t["backbone_calls"], t["distinct_images"],
                     backbone_s, t["seconds"], wall, metrics["pck"]))
    lines = [f"{'cache':<7}{'pairs':>7}{'backbone calls':>16}{'distinct images':>17}"
             f"{'backbone s':>12}{'eval s':>9}{'process s':>11}  PCK"]
    for enabled, n, calls, distinct, backbone_s, seconds, wall, pck in rows:
        lines.append(f"{enabled:<7}{n:>7}{calls:>16}{distinct:>17}{backbone_s:>12.1f}{seconds:>9.1f}"
                     f"{wall:>11.1f}  " + ", ".join(f"{a}: {v:.2f}" for a, v in pck.items()))
    sys.stdout.write("\n".join(lines) + "\n")
    if rows[0][-1] != rows[1][-1]:
        sys.stderr.write("warning: PCK differs with and without the cache\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
