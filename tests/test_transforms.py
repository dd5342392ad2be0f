"""Paired augmentation: keypoints follow the pixels, flips swap left/right ids, never at eval."""

import numpy as np
import pytest
import torch

from dataset_fixtures import assert_on_colours, painted
from semcorr.config import load_config
from semcorr.data.datamodule import CorrespondenceDataModule, dataset_from_config
from semcorr.data.transforms import PairTransform, build_train_transform

SRC = [(8, 10), (50, 12), (30, 30), (60, 44)]
TRG = [(12, 8), (44, 16), (28, 34), (5, 40)]


def _image(kps, seed):
    return torch.from_numpy(painted(48, 64, kps, seed=seed, half=2)).permute(2, 0, 1).float() / 255


def _pair(ids=(0, 1, 2, 3), category="cat"):
    return {
        "category": category,
        "src_img": _image(SRC, 0), "trg_img": _image(TRG, 1),
        "src_kps": torch.tensor(SRC, dtype=torch.float32), "trg_kps": torch.tensor(TRG, dtype=torch.float32),
        "kps_valid": torch.ones(4, dtype=torch.bool),
        "kps_ids": None if ids is None else torch.tensor(ids),
        "src_bbox": torch.tensor([5.0, 5.0, 55.0, 35.0]), "trg_bbox": torch.full((4,), float("nan")),
        "sym_pairs": torch.tensor([[0, 1]]),
    }


def _check(out, order=None):
    assert_on_colours(out["src_img"], out["src_kps"], out["kps_valid"], order)
    assert_on_colours(out["trg_img"], out["trg_kps"], out["kps_valid"], order)


def test_crop_moves_keypoints_and_invalidates_the_cut_ones():
    t = PairTransform(crop_p=1.0, min_crop=0.3, hflip_p=0.0, photometric_p=0.0,
                      generator=torch.Generator().manual_seed(0))
    cut = 0
    for _ in range(20):
        out = t(_pair())
        _check(out)
        h, w = out["src_img"].shape[-2:]
        x1, y1, x2, y2 = out["src_bbox"].tolist()
        assert 0 <= x1 <= x2 <= w - 1 and 0 <= y1 <= y2 <= h - 1 and x2 - x1 == 50 and y2 - y1 == 30
        cut += int((~out["kps_valid"]).sum())
        kps = out["src_kps"][out["kps_valid"]]
        assert ((kps >= 0) & (kps <= torch.tensor([w - 1, h - 1]))).all()
    assert cut > 0  # some crops pushed keypoints (e.g. trg kp 3 at x=5) out of the image


def test_flip_swaps_symmetric_ids():
    partner = {"cat": {0: 1, 1: 0, 3: 5}}  # kp 2 on the axis; kp 3's partner 5 not annotated
    t = PairTransform(crop_p=0.0, hflip_p=1.0, photometric_p=0.0, partner=partner.get)
    pair = _pair()
    out = t(pair)
    w = pair["src_img"].shape[-1]
    assert torch.equal(out["src_img"], pair["src_img"].flip(-1))
    # new keypoint 0 is the mirror of old keypoint 1 (so it shows keypoint 1's colour), and so on
    _check(out, order=[1, 0, 2, 3])
    mirrored = torch.tensor([w - 1 - SRC[1][0], SRC[1][1]], dtype=torch.float32)
    assert torch.allclose(out["src_kps"][0], mirrored)
    assert out["kps_valid"].tolist() == [True, True, True, False]
    assert out["kps_ids"].tolist() == [0, 1, 2, 3]
    box = out["src_bbox"].tolist()
    assert box == [w - 1 - 55.0, 5.0, w - 1 - 5.0, 35.0]


def test_flip_one_image_keeps_index_meaning():
    partner = {"cat": {0: 1, 1: 0}}
    g = torch.Generator().manual_seed(3)
    t = PairTransform(crop_p=0.0, hflip_p=0.5, photometric_p=0.0, partner=partner.get, generator=g)
    seen = set()
    for _ in range(16):
        pair = _pair()
        out = t(pair)
        src_flipped = not torch.equal(out["src_img"], pair["src_img"])
        trg_flipped = not torch.equal(out["trg_img"], pair["trg_img"])
        seen.add((src_flipped, trg_flipped))
        swap = [1, 0, 2, 3]
        assert_on_colours(out["src_img"], out["src_kps"], out["kps_valid"], swap if src_flipped else None)
        assert_on_colours(out["trg_img"], out["trg_kps"], out["kps_valid"], swap if trg_flipped else None)
    assert {(True, False), (False, True)} <= seen  # images are flipped independently


def test_unknown_symmetry_flips_both_images_without_relabelling():
    t = PairTransform(crop_p=0.0, hflip_p=1.0, photometric_p=0.0, partner=lambda c: None)
    pair = _pair(ids=None)
    out = t(pair)
    assert torch.equal(out["src_img"], pair["src_img"].flip(-1))
    assert torch.equal(out["trg_img"], pair["trg_img"].flip(-1))
    _check(out)
    assert out["kps_valid"].all()


def test_photometric_changes_colours_only_and_is_seeded():
    def run(seed):
        t = PairTransform(crop_p=0.0, hflip_p=0.0, photometric_p=1.0, jitter=0.4, hue=0.1,
                          generator=torch.Generator().manual_seed(seed))
        return t(_pair())

    a, b, c = run(0), run(0), run(1)
    pair = _pair()
    assert a["src_img"].shape == pair["src_img"].shape and torch.equal(a["src_kps"], pair["src_kps"])
    assert not torch.allclose(a["src_img"], pair["src_img"], atol=1e-2)
    assert torch.equal(a["src_img"], b["src_img"]) and not torch.equal(a["src_img"], c["src_img"])


def test_config_builder_and_no_augmentation_at_eval(tmp_path):
    cfg = load_config(["data=synthetic"])
    assert build_train_transform(cfg.data) is None
    cfg = load_config(["data=synthetic", "data.augment.enabled=true", "data.augment.hflip_p=1.0",
                       "data.augment.crop_p=0", "data.augment.photometric_p=0"])
    t = build_train_transform(cfg.data)
    assert isinstance(t, PairTransform) and t.partner("cat") is None
    spair = load_config(["data=spair_train"])
    t = build_train_transform(spair.data)
    assert t.partner("cat")[0] == 1 and t.partner("aeroplane")[4] == 5
    with pytest.raises(ValueError, match="min_crop"):
        PairTransform(min_crop=0.0)

    def make(split):
        return dataset_from_config(cfg.data, split, divisor=8)

    dm = CorrespondenceDataModule(make, batch_size=2, train_transform=build_train_transform(cfg.data))
    assert dm.dataset("train").transform is not None
    assert dm.dataset("val").transform is None and dm.dataset("test").transform is None
    augmented, plain = dm.dataset("train")[0], make("train")[0]
    w = int(plain["src_imsize"][1])
    np.testing.assert_allclose(augmented["src_kps_orig"][:, 0].numpy(),
                               (w - 1) - plain["src_kps_orig"][:, 0].numpy(), atol=1e-4)
