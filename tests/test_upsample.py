"""backbone.upsample=k: bilinear upsampling of the feature map, with cells of stride / k px that
keep the keypoint <-> cell rules exact."""

from __future__ import annotations

import json

import pytest
import torch

from runs import QUIET
from semcorr.backbones.base import FeatureMap, cell_centers, valid_cells
from semcorr.backbones.upsample import upsample_features, upsampled_stride
from semcorr.builder import build_run
from semcorr.cli.eval import main as eval_main
from semcorr.errors import ConfigError
from semcorr.matchers.transfer import cell_index, transfer_keypoints


def test_shape_stride_and_a_hand_checked_value():
    fmap = FeatureMap(torch.tensor([[0.0, 1.0], [2.0, 3.0]]).view(1, 1, 2, 2), stride=14)
    up = upsample_features(fmap, 2)
    assert up.features.shape == (1, 1, 4, 4) and up.stride == 7 and isinstance(up.stride, int)
    # out cell (1, 1) sits at input position (0.25, 0.25): 0.75*0.75*0 + 0.75*0.25*(1 + 2) + 0.25*0.25*3
    assert up.features[0, 0, 1, 1].item() == 0.75
    assert up.features[0, 0, 0, 1].item() == 0.25  # row clamped to input row 0: 0.75*0 + 0.25*1
    assert up.features[0, 0, 0, 0].item() == 0.0 and up.features[0, 0, 3, 3].item() == 3.0  # borders
    assert upsample_features(fmap, 1) is fmap
    big = upsample_features(FeatureMap(torch.randn(2, 5, 3, 4), stride=14), 4)
    assert big.features.shape == (2, 5, 12, 16) and big.stride == 3.5


def test_upsampled_cells_sit_where_the_features_were_interpolated():
    """Native features equal to their own cell centres (pixels), upsampled: every interior cell of
    the new grid holds its own centre by the stride / k rule (bilinear is exact on a linear map),
    so a keypoint maps to the cell whose feature describes it."""
    for stride, k in [(14, 2), (14, 4), (8, 8), (14, 7)]:
        h, w = 5, 6
        centres = cell_centers((h, w), stride, dtype=torch.float64)  # (h*w, 2)
        fmap = FeatureMap(centres.t().reshape(1, 2, h, w), stride=stride)
        up = upsample_features(fmap, k)
        s = up.stride
        new = cell_centers(up.grid, s, dtype=torch.float64).t().reshape(2, h * k, w * k)
        inner = (slice(None), slice(k, (h - 1) * k), slice(k, (w - 1) * k))
        assert torch.allclose(up.features[0][inner], new[inner], atol=1e-9), (stride, k)
        # a keypoint at a new cell's centre, and just inside its borders, lands in that cell
        j = torch.arange(h * k * w * k)
        pts = cell_centers(up.grid, s)
        for shift in (0.0, -s / 2, s / 2 - 1e-3):  # the centre, the lower border, just below the next
            assert torch.equal(cell_index((pts + shift)[None], up.grid, s)[0], j), (stride, k, shift)


def test_cell_borders_stay_exact_with_a_fractional_stride():
    """3.5-px cells (14 px / 4): a point on a border (x + 0.5 = m * 3.5) falls in cell m exactly as
    it would with integer arithmetic, and valid cells end where the content does."""
    s = upsampled_stride(14, 4)
    assert s == 3.5
    m = torch.arange(0, 40)
    x = (m * 3.5 - 0.5).float()
    pts = torch.stack([x, torch.zeros_like(x)], -1)[None]
    assert torch.equal(cell_index(pts, (1, 64), s)[0], m)
    assert torch.equal(cell_index(pts - 1e-3, (1, 64), s)[0], (m - 1).clamp_min(0))
    valid = valid_cells(torch.tensor([[28, 42]]), (16, 16), s)[0]  # content 28 x 42 px
    assert valid.sum(0).max() == 8 and valid.sum(1).max() == 12  # 28 / 3.5 rows, 42 / 3.5 columns


def test_factors_whose_cells_are_not_exact_are_refused(make_config, tiny_vit):
    assert [upsampled_stride(14, k) for k in (1, 2, 7, 8, 28)] == [14, 7, 2, 1.75, 0.5]
    with pytest.raises(ValueError, match="upsample=3 makes 14-px cells 14/3 px"):
        upsampled_stride(14, 3)
    with pytest.raises(ConfigError, match=r"backbone=dinov2_vits14: upsample=3 makes 14-px cells .* e.g. 2, 4, 7, 8"):
        build_run(make_config(*tiny_vit, "backbone.upsample=3"), "predict")
    with pytest.raises(ConfigError, match="backbone.upsample must be an integer >= 1, got 0"):
        make_config("backbone.upsample=0")


def test_transfer_through_an_upsampled_match_lands_on_the_fine_grid():
    """NN on 4x-upsampled smooth maps predicts positions on the 3.5-px grid, which the 14-px grid
    cannot express."""
    torch.manual_seed(0)
    native = FeatureMap(torch.randn(1, 8, 4, 4), stride=14)
    up = upsample_features(native, 4)
    flat = torch.nn.functional.normalize(up.features.flatten(2), dim=1)
    scores = torch.einsum("bdn,bdm->bnm", flat, flat)  # cosine: each cell is its own best match
    point = torch.tensor([[[5 * 3.5 + 1.25, 7 * 3.5 + 1.25]]])  # centre of fine cell (row 7, col 5)
    pred, _ = transfer_keypoints(scores, point, up.grid, up.stride, up.grid, up.stride)
    assert torch.equal(pred, point) and pred[0, 0, 0].item() == 18.75


@pytest.mark.slow
def test_eval_with_upsampling_caches_the_native_map(tmp_path):
    """eval.py with backbone.upsample=2 (dense SIFT, 8 -> 4 px cells) for nn and gwot: runs, and
    the features cache holds the native 8-px maps."""
    for matcher in ("nn", "gwot"):
        out = tmp_path / matcher
        assert eval_main([*QUIET, "data.image_size=64", "data.n_pairs.test=3", "backbone.upsample=2",
                          f"matcher={matcher}", "matcher.n_steps=3" if matcher == "gwot" else "plots.alpha=0.1",
                          f"out_dir={out}"]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["config"]["backbone"]["upsample"] == 2 and metrics["n_pairs"] == 3
    from semcorr.config import load_config

    run = build_run(load_config([*QUIET, "data.image_size=64", "data.n_pairs.test=2", "backbone.upsample=2"]))
    run.datamodule.setup("test")
    batch = next(iter(run.datamodule.test_dataloader()))
    src, _ = run.net.features(batch, use_cache=True)
    assert src.grid == (16, 16) and src.stride == 4
    cached = run.net.extractor.stores[0]
    assert {tuple(v.shape) for v in cached.items.values()} == {(128, 8, 8)}
