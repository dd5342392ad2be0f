"""Make the README figure from the project's own code (needs PF-WILLOW in the shared data).

    python docs/make_figures.py [--out docs/gwot_vs_nn.png]

``gwot_vs_nn.png``: one PF-WILLOW pair matched with dense SIFT at 224 px (the resolution of the
README's table), by nearest neighbours and by GW-OT (``matcher=gwot_pf_willow``). Top: the ten
keypoints, green when within alpha = 0.1 of the ground truth (white crosses), red otherwise,
each prediction linked to its ground truth. Bottom: the target warped into the source frame
through each matcher's scores / plan (``semcorr.warp.warp_to_source``).

The pair is chosen by a rule, not by eye: of the 90 pairs of the ``winebottle(M)`` subset, the
one whose gain (GW-OT's correct keypoints minus NN's, at alpha = 0.1) is the subset's median
(ties: the first in the dataset's order), i.e. a typical pair, not the best one. The figure's
title names it. About 15 minutes of CPU time (90 pairs through both matchers).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch
from matplotlib.figure import Figure

from semcorr import viz
from semcorr.config import load_config
from semcorr.data.datasets.pf_willow import PFWillowDataset
from semcorr.data.schema import collate
from semcorr.inference import inference_model
from semcorr.metrics import Protocol, pck_scores
from semcorr.warp import warp_match

SUBSET, SIZE, ALPHA = "winebottle(M)", 224, 0.1
MATCHERS = {"NN": "nn", "GW-OT": "gwot_pf_willow"}
log = logging.getLogger("make_figures")


def correct(net, batch) -> tuple:
    """(the net's output, (B, K) bool: correct at ALPHA, PF-WILLOW's protocol: L by the box of the
    target keypoints)."""
    with torch.no_grad():
        out = net(batch)
    ok = pck_scores(Protocol(threshold_by="bbox_kp"), [ALPHA], out.pred_orig, batch["trg_kps_orig"],
                    batch["kps_valid"]).correct[..., 0]
    return out, ok


def typical_pair(dataset, nets) -> tuple[int, list]:
    """The index of the pair whose gain (GW-OT minus NN correct keypoints) is the subset's median
    (lower median, first such pair), and every pair's gain."""
    gains = []
    for start in range(0, len(dataset), 8):
        batch = collate([dataset[i] for i in range(start, min(start + 8, len(dataset)))])
        counts = [correct(nets[name], batch)[1].sum(-1) for name in MATCHERS]
        gains += (counts[1] - counts[0]).tolist()
    median = sorted(gains)[(len(gains) - 1) // 2]
    return gains.index(median), gains


def gwot_vs_nn(path: Path) -> Path:
    dataset = PFWillowDataset(image_size=SIZE, divisor=8, categories=[SUBSET])
    nets = {name: inference_model(load_config(["backbone=dsift", f"matcher={matcher}",
                                               f"data.image_size={SIZE}"]))
            for name, matcher in MATCHERS.items()}
    index, gains = typical_pair(dataset, nets)
    log.info("gains over %d pairs: median %d (pair %d); mean %.2f", len(gains), gains[index], index,
             sum(gains) / len(gains))
    sample = dataset[index]
    batch = collate([sample])
    src_img, trg_img = dataset.read_image(sample["src_id"]), dataset.read_image(sample["trg_id"])
    fig = Figure(figsize=(12, 6.6))
    grid = fig.add_gridspec(2, 4, height_ratios=[1.0, 1.05])
    warps = {}
    for col, name in enumerate(MATCHERS):
        out, ok = correct(nets[name], batch)
        ok = ok[0]
        ax = fig.add_subplot(grid[0, 2 * col: 2 * col + 2])
        viz.draw_matches(ax, src_img, trg_img, batch["src_kps_orig"][0], out.pred_orig[0],
                         batch["trg_kps_orig"][0], ok.numpy(), legend=col == 0,
                         title=f"{name} (dense SIFT, {SIZE} px): {int(ok.sum())}/{len(ok)} keypoints "
                               f"correct at alpha={ALPHA:g}")
        src_net, trg_net, warps[name] = warp_match(batch, out)
        log.info("%s: %d/%d correct", name, int(ok.sum()), len(ok))
    axes = [fig.add_subplot(grid[1, c]) for c in range(4)]
    viz.plot_dense_warps(src_net, trg_net, warps, axes=axes)
    fig.suptitle(f"PF-WILLOW {SUBSET}, pair {index} ({Path(sample['src_id']).name} -> "
                 f"{Path(sample['trg_id']).name}): the subset's median GW-OT gain "
                 f"({gains[index]:+d} keypoints; mean {sum(gains) / len(gains):+.2f} over "
                 f"{len(gains)} pairs)", fontsize=10)
    fig.tight_layout()
    viz.caption(fig, viz.WARP_CAPTION)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72, bbox_inches="tight")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "gwot_vs_nn.png")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        path = gwot_vs_nn(args.out)
    except FileNotFoundError as err:
        sys.stderr.write(f"make_figures.py: error: {err}\n")
        return 2
    log.info("wrote %s (%d KB)", path, path.stat().st_size // 1024)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
