"""Pose-Align (GeoAware-SC's ADAPT_FLIP): scores by hand, the flip / keep decision, the merge
rule, the mirrored symmetric pairs of GW-OT's flipped solve, and the eval CLI's record."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from runs import QUIET
from semcorr.backbones.base import Backbone, FeatureMap
from semcorr.data.resize import resize_image, to_network
from semcorr.matchers.nearest import NearestNeighbourMatcher as NNMatcher
from semcorr.matchers.transfer import cell_index
from semcorr.metrics import pck_scores
from semcorr.metrics.protocol import Protocol
from semcorr.net import CorrespondenceNet, symmetric_cells
from semcorr.pose_align import (PoseAlignConfig, PoseAlignedNet, flip_permutation, masked_min_distance,
                                mirrored_source, mutual_nn_distance)
from test_datasets_spair import spair_root  # noqa: F401  (fixture)


class ColourCells(Backbone):
    """A test backbone on 8-px cells: random Fourier features of the cell's mean RGB (distinct
    colours give nearly orthogonal features) and ``asym`` x (right half - left half) mean RGB.
    The second part changes sign under a mirror, as real features know a left-facing head from a
    right-facing one."""

    stride, dim = 8, 35

    def __init__(self, asym: float = 0.5) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("w", torch.randn(32, 3, generator=g) * 20)
        self.register_buffer("b", torch.rand(32, generator=g) * 6.3)
        self.asym = asym

    def forward(self, images: torch.Tensor) -> FeatureMap:
        mean = F.avg_pool2d(images, 8)
        code = torch.sin(torch.einsum("dc,bchw->bdhw", self.w, mean) + self.b[:, None, None])
        halves = F.avg_pool2d(images, (8, 4))
        diff = halves[..., 1::2] - halves[..., 0::2]
        return FeatureMap(torch.cat([code, self.asym * diff], 1), stride=8)


# ------------------------------------------------------------------------------------------------
# scores by hand
# ------------------------------------------------------------------------------------------------
def test_mask_score_equals_the_hand_computed_value():
    """2 x 2 grids, 2-d features, the score's grid = the feature grid (bilinear resize is then the
    identity). Foreground source cells s00 = (3, 4) -> (0.6, 0.8) and s01 = (1.6, -1.2) ->
    (0.8, -0.6); foreground target cells t00 = (0.8, 0.6), t10 = (0.28, -0.96); the background
    target cell t01 = (4, -3) equals s01's direction but is masked out (-1e5), so never nearest.
    d(s00) = min(|s00 - t00|, |s00 - t10|) = sqrt(0.08); d(s01) = |s01 - t10| = sqrt(0.4)."""
    src = torch.tensor([[[3.0, 1.6], [1.0, 2.0]], [[4.0, -1.2], [1.0, 1.0]]])  # (D=2, 2, 2)
    trg = torch.tensor([[[0.8, 4.0], [0.28, 5.0]], [[0.6, -3.0], [-0.96, 5.0]]])
    src_mask = torch.tensor([[True, True], [False, False]])
    trg_mask = torch.tensor([[True, False], [True, False]])
    got = masked_min_distance(src, trg, src_mask, trg_mask, resolution=2)
    assert float(got) == pytest.approx((math.sqrt(0.08) + math.sqrt(0.4)) / 2, abs=1e-6)
    # no foreground source cell: no decision (+inf), never a NaN
    assert math.isinf(float(masked_min_distance(src, trg, src_mask & False, trg_mask, resolution=2)))


def test_mask_score_masks_on_the_canvas_and_upsamples():
    """Masks of canvas size are sampled (nearest) onto the score grid; features resized
    bilinearly: a foreground half-canvas gives the mean over the foreground half only."""
    feats = torch.randn(4, 6, 6)
    mask = torch.zeros(48, 48, dtype=torch.bool)
    mask[:, :24] = True
    same = masked_min_distance(feats, feats, mask, mask, resolution=8)
    assert float(same) == pytest.approx(0.0, abs=1e-3)  # every source cell finds itself


def test_mutual_nn_score_equals_the_hand_computed_value():
    """a0 = (1, 0), a1 = (0, 1), a2 = (0.6, 0.8); b0 = (0.8, 0.6), b1 = (0, 1). Nearest: a0 -> b0,
    a1 -> b1, a2 -> b0; b0 -> a2, b1 -> a1: mutual a1 (distance 0) and a2 (sqrt(0.08)); a0 is not."""
    src = torch.tensor([[1.0, 0.0, 0.6], [0.0, 1.0, 0.8]])[:, None, :]  # (2, 1, 3)
    trg = torch.tensor([[0.8, 0.0], [0.6, 1.0]])[:, None, :]  # (2, 1, 2)
    assert float(mutual_nn_distance(src, trg)) == pytest.approx(math.sqrt(0.08) / 2, abs=1e-6)


def test_flip_permutation_swaps_only_listed_pairs():
    """permute_indices(flip_list, vis): a listed pair (both keypoints valid in both images)
    swaps; everything else stays."""
    pairs = torch.tensor([[[0, 1], [3, 4]], [[2, 0], [-1, -1]]])
    perm = flip_permutation(pairs, 5, 2)
    assert perm.tolist() == [[1, 0, 2, 4, 3], [2, 1, 0, 3, 4]]


# ------------------------------------------------------------------------------------------------
# the decision and the merge, on a pair whose target is the mirror of its source
# ------------------------------------------------------------------------------------------------
TABLE = {0: 1, 1: 0, 2: 3, 3: 2, 5: 6, 6: 5}  # 4 is on the axis; 6 (5's partner) is not annotated
# source keypoints (x, y), pixel-index, on a 64 x 64 image; ids 0..5
SRC_KPS = torch.tensor([[12.0, 20.0], [50.0, 20.0], [20.0, 44.0], [44.0, 44.0], [31.5, 8.0], [10.0, 58.0]])


def _mirror_pair_batch(mirrored_target: bool, seed: int = 0, size: int = 64):
    """One pair: a random texture as source; the target is its mirror image (semantic labels
    follow the object: the target's keypoint a is the mirror of the source's partner of a) or the
    source itself. Whole-image masks, centred canvas of the image's own size."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, size, size, generator=g)
    src, frame, hw, yx = resize_image(image, size, "centre_canvas", divisor=8)
    ids = torch.arange(6)
    if mirrored_target:  # keypoint 5's partner is not annotated: put it at 5's own mirror
        trg = src.flip(-1)
        trg_kps = SRC_KPS[[1, 0, 3, 2, 4, 5]].clone()
        trg_kps[:, 0] = size - 1 - trg_kps[:, 0]
    else:
        trg, trg_kps = src.clone(), SRC_KPS.clone()
    mask = torch.ones(1, size, size, dtype=torch.bool)
    return {
        "src_img": src[None], "trg_img": trg[None],
        "src_kps": to_network(SRC_KPS, frame)[None], "src_kps_orig": SRC_KPS[None],
        "trg_kps_orig": trg_kps[None], "kps_valid": torch.ones(1, 6, dtype=torch.bool),
        "kps_ids": ids[None], "category": ["cat"], "pair_id": ["p"],
        "sym_pairs": torch.tensor([[[0, 1], [2, 3]]]),  # 5's partner is not annotated
        "src_frame": frame[None], "trg_frame": frame[None],
        "src_content_hw": hw[None], "trg_content_hw": hw[None],
        "src_content_yx": yx[None], "trg_content_yx": yx[None],
        "src_imsize": torch.tensor([[size, size]]), "trg_imsize": torch.tensor([[size, size]]),
        "src_mask": mask, "trg_mask": mask, "src_id": ["s"], "trg_id": ["t"],
    }


def _pck(out, batch) -> float:
    scores = pck_scores(Protocol(threshold_by="image"), [0.1], out.pred_orig, batch["trg_kps_orig"],
                        batch["kps_valid"], trg_imsize=batch["trg_imsize"])
    return 100.0 * float(scores.correct[..., 0].sum()) / float(scores.valid.sum())


@pytest.mark.parametrize("score", ["mask", "mutual_nn"])
def test_pose_align_takes_the_mirror_when_the_target_is_the_mirror(score):
    batch = _mirror_pair_batch(mirrored_target=True)
    plain = CorrespondenceNet(ColourCells(), NNMatcher())
    net = PoseAlignedNet(ColourCells(), NNMatcher(), options=PoseAlignConfig(enabled=True, score=score),
                         partner=lambda category: TABLE, mirror="canvas")
    net.eval()
    base = plain(batch)
    # appearance alone sends each paired source keypoint to its partner's place in the target
    for a, b in ((0, 1), (1, 0), (2, 3), (3, 2)):
        assert torch.dist(base.pred_orig[0, a], batch["trg_kps_orig"][0, b]) < 4.0
    wrong = pck_scores(Protocol(threshold_by="image"), [0.1], base.pred_orig, batch["trg_kps_orig"],
                       batch["kps_valid"], trg_imsize=batch["trg_imsize"]).correct[0, :4, 0]
    assert not wrong.any()  # every left/right keypoint lands on the wrong side: PCK 0 on them
    out = net(batch)
    info = out.result.extras["pose_align"]
    assert info["flipped"].tolist() == [True] and float(info["score_flipped"][0]) < float(info["score"][0])
    # keypoint 5's partner (6) is not annotated: it keeps the original branch's prediction
    assert info["used"][0].tolist() == [True, True, True, True, True, False]
    assert torch.equal(out.pred_orig[0, 5], base.pred_orig[0, 5])
    assert _pck(out, batch) == 100.0  # the mirrored branch is right everywhere it is used


@pytest.mark.parametrize("score", ["mask", "mutual_nn"])
def test_pose_align_keeps_the_original_otherwise(score):
    batch = _mirror_pair_batch(mirrored_target=False)
    plain = CorrespondenceNet(ColourCells(), NNMatcher())
    net = PoseAlignedNet(ColourCells(), NNMatcher(), options=PoseAlignConfig(enabled=True, score=score),
                         partner=lambda category: TABLE, mirror="canvas")
    out, base = net(batch), plain(batch)
    assert out.result.extras["pose_align"]["flipped"].tolist() == [False]
    assert torch.equal(out.pred_orig, base.pred_orig) and _pck(out, batch) == 100.0


def test_mirrored_source_follows_geoaware():
    """x' = W - x on their continuous canvas = W - 1 - x in pixel-index; rows re-labelled through
    the pairs; the image content mirrored inside its box equals the original mirrored and put on
    the canvas again (odd horizontal padding: their keypoints sit 1 px off that image, as theirs)."""
    g = torch.Generator().manual_seed(3)
    image = torch.rand(3, 90, 41, generator=g)  # portrait: 840 canvas, content 383 wide, odd padding
    net_img, frame, hw, yx = resize_image(image, 840, "centre_canvas", divisor=14)
    again, *_ = resize_image(image.flip(-1), 840, "centre_canvas", divisor=14)
    kps = torch.tensor([[5.0, 10.0], [30.0, 12.0], [20.0, 60.0]])
    batch = {"src_img": net_img[None], "src_kps": to_network(kps, frame)[None],
             "src_content_hw": hw[None], "src_content_yx": yx[None],
             "sym_pairs": torch.tensor([[[0, 1]]]), "src_mask": torch.zeros(1, 840, 840, dtype=torch.bool),
             "src_id": ["x"]}
    flipped = mirrored_source(batch, "canvas")
    assert torch.equal(flipped["src_img"][0], again)
    # their continuous coordinates: u = x s + offset, mirrored u' = 840 - u, rows 0 <-> 1
    s, offset = 840 / 90, (840 - 383) // 2
    u = kps * s + torch.tensor([offset, 0.0])
    expected = u[[1, 0, 2]].clone()
    expected[:, 0] = 840 - expected[:, 0]
    assert torch.allclose(flipped["src_kps"][0] + 0.5, expected, atol=1e-3)
    assert flipped["src_id"] == ["x#hflip"]  # the dataset's id of the mirrored image


def test_gwot_flipped_solve_gets_the_mirrored_symmetric_pairs():
    """Under GW-OT the mirrored branch's symmetry term sees the mirrored source's pairs: the
    cells of the re-labelled, mirrored keypoints, i.e. the original pair cells mirrored."""
    from semcorr.config import load_config
    from semcorr.matchers import build_matcher

    batch = _mirror_pair_batch(mirrored_target=True)
    cfg = load_config(["matcher=gwot_spair", "matcher.n_steps=3", "matcher.grad=detach"])
    matcher = build_matcher(cfg.matcher)
    seen = []
    forward = matcher.forward

    def spy(src, trg, sym_pairs=None, similarity=None):
        seen.append(sym_pairs.clone())
        return forward(src, trg, sym_pairs=sym_pairs, similarity=similarity)

    matcher.forward = spy
    net = PoseAlignedNet(ColourCells(), matcher, options=PoseAlignConfig(enabled=True),
                         partner=lambda category: TABLE, mirror="canvas")
    net(batch)
    grid = (8, 8)
    original = symmetric_cells(batch, grid, 8)
    assert torch.equal(seen[0], original)
    cols, rows = original % 8, original // 8
    mirrored_cells = rows * 8 + (7 - cols)
    # pair (a, b) of the mirrored source: a sits where b's mirror is, so the cells swap roles
    assert torch.equal(seen[1], mirrored_cells.flip(-1))
    relabelled = cell_index(mirrored_source(batch, "canvas")["src_kps"], grid, 8)
    assert torch.equal(seen[1], relabelled[:, [[0, 1], [2, 3]]])


def test_eval_records_pose_align_and_prints_the_dagger(spair_root, tmp_path, capsys, tiny_vit):  # noqa: F811
    from semcorr.cli.eval import main as eval_main

    out = tmp_path / "run"
    rc = eval_main(["experiment=paper_spair_pose_align", f"data.root={spair_root}", "data.image_size=56",
                    *tiny_vit, "matcher.n_steps=3", *QUIET, f"out_dir={out}"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "uses ground-truth left/right labels (†)" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    pose = metrics["pose_align"]
    assert pose["enabled"] and pose["label"] == "uses ground-truth left/right labels (†)"
    assert pose["pairs"] == 3 and 0 <= pose["pairs_flipped"] <= 3 and pose["score"] == "mask"
    assert metrics["protocol"]["name"] == "geoaware_kpt" and metrics["protocol"]["average"] == "per_keypoint"
    assert metrics["pck"] == metrics["pck_per_keypoint"] and "0.1" in metrics["pck_per_image"]
    # off by default, and said so
    plain = tmp_path / "plain"
    assert eval_main(["experiment=paper_spair", f"data.root={spair_root}", "data.image_size=56",
                      *tiny_vit, "matcher.n_steps=3", *QUIET, f"out_dir={plain}"]) == 0
    assert json.loads((plain / "metrics.json").read_text())["pose_align"] == {"enabled": False}
    assert "(†)" not in capsys.readouterr().out


def test_pose_align_refuses_to_train_or_run_without_labels(make_config):
    from semcorr.builder import build_run
    from semcorr.errors import ConfigError

    with pytest.raises(ConfigError, match="test-time"):
        build_run(make_config("pose_align.enabled=true", "loss=gaussian_ce"), stage="fit")
    with pytest.raises(ConfigError, match="left/right"):
        build_run(make_config("pose_align.enabled=true", "data=pf_willow"), stage="test")


def test_pose_align_upsamples_the_mirrored_source_like_the_original():
    """backbone.upsample: both branches' source maps are upsampled (same grid as the target's)."""
    batch = _mirror_pair_batch(mirrored_target=True)
    backbone = ColourCells()
    backbone.upsample = 2
    net = PoseAlignedNet(backbone, NNMatcher(), options=PoseAlignConfig(enabled=True, score="mutual_nn"),
                         partner=lambda category: TABLE, mirror="canvas")
    net.eval()
    out = net(batch)
    assert out.src.features.shape[-2:] == (16, 16) and out.trg.features.shape[-2:] == (16, 16)
    assert out.result.extras["pose_align"]["flipped"].tolist() == [True]


def test_the_mirrored_source_is_named_as_the_datasets_mirrored_image():
    """The flipped branch's source id is ``I#hflip``, the id under which the datasets serve and
    ``semcorr-features --mirrored`` stores an image's mirror (backbone=precomputed reads it)."""
    from semcorr.data.base import FLIP_SUFFIX

    batch = _mirror_pair_batch(mirrored_target=False)
    assert mirrored_source(batch, "canvas")["src_id"] == ["s" + FLIP_SUFFIX]
    assert torch.equal(mirrored_source(batch, "canvas")["src_img"], batch["src_img"].flip(-1))


@pytest.mark.slow
@pytest.mark.parametrize("resize", ["centre_canvas", "longer_side_pad"])
def test_pose_align_on_precomputed_features_gives_the_direct_run(spair_root, tmp_path, resize):  # noqa: F811
    """backbone=precomputed with the mirrored images' files (semcorr-features --mirrored): the
    mirrored source is read from ``I#hflip``'s file, and every prediction and decision is the
    direct run's (the mirrored canvas is the canvas of the mirrored image)."""
    from semcorr.cli.eval import main as eval_main
    from semcorr.cli.features import main as features_main

    data = ["data=spair", f"data.root={spair_root}", "data.image_size=64", f"data.resize={resize}"]
    feats = tmp_path / "feats"
    assert features_main([*data, "backbone=dsift", f"out_dir={feats}", "--mirrored"]) == 0
    runs = {}
    for name, backbone in (("direct", ["backbone=dsift"]),
                           ("pre", ["backbone=precomputed", f"backbone.root={feats}"])):
        out = tmp_path / name
        assert eval_main([*data, *backbone, "matcher=nn", "pose_align.enabled=true", *QUIET,
                          f"out_dir={out}"]) == 0
        runs[name] = (json.loads((out / "metrics.json").read_text()),
                      [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()])
    (direct, direct_rows), (pre, pre_rows) = runs["direct"], runs["pre"]
    assert pre["pose_align"] == direct["pose_align"] and pre["pck"] == direct["pck"]
    assert [r["pred"] for r in pre_rows] == [r["pred"] for r in direct_rows]
    assert pre["pose_align"]["pairs_flipped"] >= 1  # the mirrored branch's file decided a pair
