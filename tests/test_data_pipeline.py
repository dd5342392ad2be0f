import pytest
import torch
import torch.nn.functional as F

from semcorr.backbones.base import valid_cells
from semcorr.data.datasets.synthetic import SyntheticPairs
from semcorr.data.schema import collate
from semcorr.net import symmetric_cells


def _sample(k, s=0, hw=(32, 32)):
    return {"src_img": torch.zeros(3, *hw), "src_kps": torch.ones(k, 2), "trg_kps": torch.ones(k, 2),
            "src_kps_orig": torch.ones(k, 2), "trg_kps_orig": torch.ones(k, 2),
            "kps_valid": torch.ones(k, dtype=torch.bool), "kps_ids": torch.arange(k),
            "sym_pairs": torch.zeros(s, 2, dtype=torch.long), "category": "c", "category_idx": 0}


def test_collate_pads_keypoints_and_symmetric_pairs():
    batch = collate([_sample(3, 1), _sample(5, 0)])
    assert batch["src_kps"].shape == (2, 5, 2)
    assert batch["kps_valid"].tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert batch["kps_ids"][0].tolist() == [0, 1, 2, -1, -1]
    assert batch["sym_pairs"].shape == (2, 1, 2) and batch["sym_pairs"][1].tolist() == [[-1, -1]]
    assert batch["category"] == ["c", "c"] and batch["category_idx"].tolist() == [0, 0]


def test_collate_rejects_images_of_different_sizes_with_advice():
    with pytest.raises(ValueError, match="longer_side_pad"):
        collate([_sample(2, hw=(32, 32)), _sample(2, hw=(32, 48))])


def test_valid_cells_excludes_padding():
    mask = valid_cells(torch.tensor([[16, 24]]), (4, 4), 8)
    assert mask[0].sum() == 2 * 3 and mask[0, :2, :3].all()


def test_symmetric_keypoint_pairs_become_source_cells():
    batch = {"src_kps": torch.tensor([[[3.5, 3.5], [11.5, 3.5], [3.5, 11.5]]]),
             "kps_valid": torch.tensor([[True, True, False]]),
             "sym_pairs": torch.tensor([[[0, 1], [0, 2], [-1, -1]]])}
    cells = symmetric_cells(batch, (2, 2), 8)
    assert cells.tolist() == [[[0, 1], [-1, -1], [-1, -1]]]  # pair with an invalid keypoint dropped


@pytest.mark.parametrize("index", [0, 3, 7])
def test_synthetic_ground_truth_is_exact(index):
    """Target keypoints map onto the source keypoints, and target pixels carry source colours."""
    ds = SyntheticPairs(split="test", images=["astronaut", "chelsea", "coffee"],
                        n_pairs={"test": 8}, tps_strength=0.03, divisor=8)
    pair = ds.load_pair(index)
    assert pair["kps_valid"].sum() >= 8
    src, trg = pair["src_img"], pair["trg_img"]
    mapping, _ = ds.warp(index, *src.shape[-2:])
    mapped = torch.from_numpy(mapping(pair["trg_kps"].double().numpy())).float()
    assert torch.allclose(mapped, pair["src_kps"], atol=1e-3)

    def colour(img, pts):
        h, w = img.shape[-2:]
        grid = (pts + 0.5) / torch.tensor([w, h]) * 2 - 1
        return F.grid_sample(img[None], grid[None, None].float(), align_corners=False)[0, :, 0].T

    # at integer target pixels the warp is exact: the pixel is the source sampled at M(t)
    t = pair["trg_kps"].round()
    s = torch.from_numpy(mapping(t.double().numpy()))
    a, b = colour(src, s), colour(trg, t)
    assert (a - b).abs().max() < 1e-4
    assert (a - b.roll(1, 0)).abs().max() > 0.05  # different points differ: the check has teeth


def test_synthetic_is_reproducible_and_splits_differ():
    a = SyntheticPairs(split="test", n_pairs={"test": 2}, divisor=8)
    b = SyntheticPairs(split="test", n_pairs={"test": 2}, divisor=8)
    c = SyntheticPairs(split="val", n_pairs={"val": 2}, divisor=8)
    assert torch.equal(a[1]["trg_kps"], b[1]["trg_kps"])
    assert not torch.equal(a[1]["trg_kps"], c[1]["trg_kps"])
