"""experiment=paper_spair end to end on SPair-layout data with visible symmetric keypoints: the
solver receives the source's symmetric cell pairs and λ_sym, and λ_sym decides a side."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from runs import QUIET
from semcorr.backbones.base import Backbone, FeatureMap
from semcorr.builder import run_protocol
from semcorr.config import load_config
from semcorr.data.datamodule import dataset_from_config
from semcorr.data.schema import collate
from semcorr.matchers import build_matcher
from semcorr.metrics import pck_scores
from semcorr.net import CorrespondenceNet
from test_datasets_spair import spair_root  # noqa: F401  (fixture)


def test_paper_spair_hands_the_solver_the_symmetric_cells_and_lam_sym(spair_root, tmp_path,  # noqa: F811
                                                                      monkeypatch, tiny_vit):
    import semcorr.matchers.gwot.matcher as gwot_matcher
    from semcorr.cli.eval import main as eval_main

    calls = []
    forward, solve = gwot_matcher.GWOTMatcher.forward, gwot_matcher.solve_gwot

    def matcher_spy(self, src, trg, sym_pairs=None, similarity=None):
        calls.append({"sym_pairs": None if sym_pairs is None else sym_pairs.clone()})
        return forward(self, src, trg, sym_pairs=sym_pairs, similarity=similarity)

    def solver_spy(cost, src_grid, trg_grid, src_valid=None, trg_valid=None, sym_pairs=None,
                   options=None, **kw):
        calls[-1]["solver_sym_pairs"] = sym_pairs
        calls[-1]["lam_sym"] = options.lam_sym
        return solve(cost, src_grid, trg_grid, src_valid, trg_valid, sym_pairs, options=options, **kw)

    monkeypatch.setattr(gwot_matcher.GWOTMatcher, "forward", matcher_spy)
    monkeypatch.setattr(gwot_matcher, "solve_gwot", solver_spy)
    out = tmp_path / "run"
    assert eval_main(["experiment=paper_spair", f"data.root={spair_root}", "data.image_size=56", *tiny_vit,
                      "matcher.n_steps=3", *QUIET, f"out_dir={out}"]) == 0
    assert len(calls) == 1  # one batch of the three pairs
    # the pairs' symmetric keypoints, by hand: pair 0 (cat, ids 0-3) (0, 1), (2, 3); pair 1 lost
    # keypoint 1 in its target: (2, 3) only; pair 2 (dog, ids 0-2): (0, 1). Their source cells on
    # the 56 px centred canvas (4 x 4 cells of 14 px): cell = floor((x_net + 0.5) / 14).
    cfg = load_config(["experiment=paper_spair", f"data.root={spair_root}", "data.image_size=56"])
    ds = dataset_from_config(cfg.data, "test", divisor=14)
    expected = []
    for index, pairs in ((0, [(0, 1), (2, 3)]), (1, [(2, 3)]), (2, [(0, 1)])):
        s = ds[index]
        cells = torch.div(s["src_kps"] + 0.5, 14, rounding_mode="floor").long()
        cell = cells[:, 1] * 4 + cells[:, 0]
        expected.append([[int(cell[a]), int(cell[b])] for a, b in pairs] + [[-1, -1]] * (2 - len(pairs)))
    assert calls[0]["sym_pairs"].tolist() == expected
    assert calls[0]["solver_sym_pairs"] is not None and calls[0]["lam_sym"] == pytest.approx(0.1)
    # and the net used the canvas and the source keypoints the dataset gave (original pixels kept)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["data"]["resize"] == "centre_canvas"
    assert metrics["protocol"]["name"] == "geoaware_kpt" and metrics["protocol"]["strict"] is True


class MeanColour(Backbone):
    """A test backbone: the mean RGB of each 8-px cell."""

    stride, dim = 8, 3

    def forward(self, images: torch.Tensor) -> FeatureMap:
        return FeatureMap(F.avg_pool2d(images, 8), stride=8)


def _ambiguous_pair(root: Path, tilt: float) -> Path:
    """One SPair-layout cat pair on a green background: the target has a red left eye (keypoint
    id 0) and a blue right eye (id 1); the source's eyes are red-blue blends, its left eye
    tilted towards blue and its right eye towards red: appearance alone swaps them. The eyes fill
    the 8-px cells (3, 2) and (3, 5) of 64 x 64 images."""
    def image(left, right):
        a = np.zeros((64, 64, 3), dtype=np.float64)
        a[..., 1] = 0.6
        a[24:32, 16:24], a[24:32, 40:48] = left, right
        return (a * 255).round().astype(np.uint8)

    src = image((0.5 - tilt, 0, 0.5 + tilt), (0.5 + tilt, 0, 0.5 - tilt))
    trg = image((1.0, 0, 0), (0, 0, 1.0))
    for name, array in (("src", src), ("trg", trg)):
        path = root / "JPEGImages" / "cat" / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path, format="PNG")  # lossless, whatever the name says
    kps = [[19.5, 27.5], [43.5, 27.5]]
    ann = {"src_imname": "src.jpg", "trg_imname": "trg.jpg", "category": "cat", "src_kps": kps,
           "trg_kps": kps, "kps_ids": ["0", "1"], "src_bndbox": [8, 16, 55, 40],
           "trg_bndbox": [8, 16, 55, 40], "src_imsize": [64, 64, 3], "trg_imsize": [64, 64, 3],
           "viewpoint_variation": 0, "scale_variation": 0, "truncation": 0, "occlusion": 0}
    folder = root / "PairAnnotation" / "test"
    folder.mkdir(parents=True)
    (folder / "000001-src-trg:cat.json").write_text(json.dumps(ann))
    (root / "Layout" / "large").mkdir(parents=True)
    (root / "Layout" / "large" / "test.txt").write_text("000001-src-trg:cat\n")
    return root


@pytest.mark.parametrize("tilt", [0.02, 0.04])
def test_lam_sym_decides_the_side_through_the_pipeline(tmp_path, tilt):
    """The paper_spair pipeline (dataset, canvas, symmetric pairs, GW-OT gwot_spair, transfer,
    geoaware_kpt PCK): without the symmetry term the eyes swap (PCK@0.1 = 0), with Tab. 5's
    λ_sym = 0.1 they land on their own side (100)."""
    root = _ambiguous_pair(tmp_path / "spair", tilt)
    result = {}
    for lam_sym in (0.0, 0.1):
        cfg = load_config(["experiment=paper_spair", f"data.root={root}", "data.image_size=64",
                           "matcher.grad=detach", f"matcher.lam_sym={lam_sym}"])
        ds = dataset_from_config(cfg.data, "test", divisor=8)
        batch = collate([ds[0]])
        assert batch["sym_pairs"].tolist() == [[[0, 1]]]
        net = CorrespondenceNet(MeanColour(), build_matcher(cfg.matcher))
        out = net(batch)
        scores = pck_scores(run_protocol(cfg, ds), [0.1], out.pred_orig, batch["trg_kps_orig"],
                            batch["kps_valid"], batch["trg_bbox"], batch["trg_imsize"])
        result[lam_sym] = 100.0 * float(scores.correct.double().mean())
    assert result == {0.0: 0.0, 0.1: 100.0}


@pytest.mark.slow
def test_tab4_ablation_is_one_command_that_prints_the_table(spair_root, tmp_path, capsys, tiny_vit):  # noqa: F811
    """sweep.py paper_spair_ablation: the four rows of Tab. 4, each an evaluation, then the table."""
    from semcorr.cli.sweep import main as sweep_main

    out = tmp_path / "tab4"
    rc = sweep_main(["paper_spair_ablation", f"data.root={spair_root}", "data.image_size=56", *tiny_vit,
                     "matcher.n_steps=2", *QUIET, f"out_dir={out}"])
    assert rc == 0
    printed = capsys.readouterr().out
    for label in ("OT (paper 55.7)", "+ GW + UB (paper 55.9)", "+ Sym = Ours", "+ Pose-Align = Ours †"):
        assert label in printed, label
    rows = {p.name: json.loads((p / "metrics.json").read_text()) for p in out.iterdir() if p.is_dir()}
    assert len(rows) == 4
    ot = rows["experiment-paper_spair_tab4_ot"]["config"]["matcher"]
    assert (ot["lam_gw"], ot["lam_sym"], ot["marginal"]) == (0.0, 0.0, "balanced")
    assert rows["experiment-paper_spair_tab4_gw_ub"]["config"]["matcher"]["lam_sym"] == 0.0
    assert rows["experiment-paper_spair"]["pose_align"] == {"enabled": False}
    assert rows["experiment-paper_spair_pose_align"]["pose_align"]["enabled"] is True
    assert all(m["protocol"]["name"] == "geoaware_kpt" for m in rows.values())
