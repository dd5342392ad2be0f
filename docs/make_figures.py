"""Make the README figure from the project's own code (needs PF-WILLOW in the shared data).

    python docs/make_figures.py [--out docs/gwot_vs_nn.png]

``gwot_vs_nn.png``: one PF-WILLOW pair matched with dense SIFT, by nearest neighbours and by
GW-OT (``matcher=gwot_pf_willow``). Top: the ten keypoints, green when within alpha = 0.1 of
the ground truth (white crosses), red otherwise. Bottom: the target warped back into the source
frame through each matcher's scores / plan (``semcorr.warp.warp_to_source``). About 20 s on a CPU.
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

SUBSET, INDEX, SIZE, ALPHA = "winebottle(M)", 72, 192, 0.1
MATCHERS = {"NN": "nn", "GW-OT": "gwot_pf_willow"}
log = logging.getLogger("make_figures")


def gwot_vs_nn(path: Path) -> Path:
    dataset = PFWillowDataset(image_size=SIZE, divisor=8, categories=[SUBSET])
    sample = dataset[INDEX]
    batch = collate([sample])
    src_img, trg_img = dataset.read_image(sample["src_id"]), dataset.read_image(sample["trg_id"])
    fig = Figure(figsize=(12, 6.4))
    grid = fig.add_gridspec(2, 4, height_ratios=[1.0, 1.05])
    warps = {}
    for col, (name, matcher) in enumerate(MATCHERS.items()):
        net = inference_model(load_config(["backbone=dsift", f"matcher={matcher}", f"data.image_size={SIZE}"]))
        with torch.no_grad():
            out = net(batch)
        ok = pck_scores(Protocol(threshold_by="bbox_kp"), [ALPHA], out.pred_orig, batch["trg_kps_orig"],
                        batch["kps_valid"]).correct[0, :, 0]
        ax = fig.add_subplot(grid[0, 2 * col: 2 * col + 2])
        viz.draw_matches(ax, src_img, trg_img, batch["src_kps_orig"][0], out.pred_orig[0],
                         batch["trg_kps_orig"][0], ok.numpy(), legend=col == 0,
                         title=f"{name} (dense SIFT): {int(ok.sum())}/{len(ok)} keypoints correct at alpha={ALPHA:g}")
        src_net, trg_net, warps[name] = warp_match(batch, out)
        log.info("%s: %d/%d correct", name, int(ok.sum()), len(ok))
    axes = [fig.add_subplot(grid[1, c]) for c in range(4)]
    viz.plot_dense_warps(src_net, trg_net, warps, axes=axes)
    fig.suptitle(f"PF-WILLOW {SUBSET}: nearest neighbours vs GW-OT", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
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
