"""AP-10K loader on a COCO-style fixture: species / families, visibility flags, pair modes."""

import json
from pathlib import Path

import numpy as np
import pytest

from dataset_fixtures import assert_on_colours, painted, save
from semcorr.config import load_config
from semcorr.data.datamodule import dataset_from_config

# species -> family; two images per species, plus one image with two animals (dropped)
SPECIES = [(1, "antelope", "Bovidae"), (2, "buffalo", "Bovidae"), (3, "cat", "Felidae")]


def _keypoints(rng, h, w, hidden=()):
    kps = []
    for k in range(17):
        x, y = float(rng.integers(4, w - 4)), float(rng.integers(4, h - 4))
        kps += [0.0, 0.0, 0] if k in hidden else [x, y, 2]
    return kps


@pytest.fixture()
def ap10k_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    images, anns = [], []
    for n in range(7):
        cat_id = SPECIES[n // 2][0] if n < 6 else 1
        h, w = 48 + 4 * n, 64
        name = f"{n + 1:012d}.png" if n == 2 else f"{n + 1:012d}.jpg"  # RGBA needs PNG
        hidden = (1, 3, 5, 7, 9, 11, 13, 15) if n == 1 else (16,)
        kps = _keypoints(rng, h, w, hidden)
        pts = [None if kps[3 * k + 2] == 0 else kps[3 * k: 3 * k + 2] for k in range(17)]
        save(tmp_path / "data" / name, painted(h, w, pts[:10], seed=n, half=1),
             mode="RGBA" if n == 2 else None)
        images.append({"id": n + 1, "file_name": name, "height": h, "width": w})
        anns.append({"id": n + 1, "image_id": n + 1, "category_id": cat_id, "iscrowd": 0,
                     "bbox": [0, 0, w, h], "num_keypoints": 17, "keypoints": kps, "area": w * h})
        if n == 6:  # a second animal in the same image: not single-instance
            anns.append({**anns[-1], "id": 100})
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": i, "name": s, "supercategory": f,
                            "keypoints": [f"kp{k}" for k in range(17)]} for i, s, f in SPECIES]}
    (tmp_path / "annotations").mkdir()
    for split in ("train", "val", "test"):
        (tmp_path / "annotations" / f"ap10k-{split}-split1.json").write_text(json.dumps(coco))
    return tmp_path


def _dataset(root, *overrides, split="test"):
    cfg = load_config(["data=ap10k", f"data.root={root}", "data.image_size=64",
                       "data.pairs_per_category=4", *overrides])
    return dataset_from_config(cfg.data, split, divisor=8)


def test_intra_species_pairs(ap10k_root):
    ds = _dataset(ap10k_root)
    assert ds.protocol["threshold_by"] == "bbox"
    assert ds.categories == ["antelope", "buffalo", "cat"]
    for rec in ds.records:
        assert rec.src != rec.trg and rec.meta["trg_species"] == rec.category
        assert "000000000007.jpg" not in (rec.src, rec.trg)  # two animals: excluded
    # one species with two images gives the two ordered pairs
    assert sum(r.category == "cat" for r in ds.records) == 2
    s = ds[0]
    assert s["src_kps"].shape == (17, 2) and s["kps_ids"].tolist() == list(range(17))
    assert s["trg_bbox"].tolist()[:2] == [0.0, 0.0]


def test_visibility_symmetry_and_colours(ap10k_root):
    ds = _dataset(ap10k_root)
    index = next(i for i, r in enumerate(ds.records) if r.src == "000000000002.jpg")
    s = ds[index]
    assert not s["kps_valid"][[1, 3, 5]].any() and s["kps_valid"][[0, 2, 4]].all()
    # ap10k symmetric pairs whose keypoints are both valid: (0,1) loses kp 1, (5,8) loses kp 5
    pairs = {tuple(p) for p in s["sym_pairs"].tolist()}
    assert (0, 1) not in pairs and (12, 15) not in pairs and (6, 9) not in pairs
    assert all(s["kps_valid"][a] and s["kps_valid"][b] for a, b in pairs)
    pair = ds.load_pair(index)
    first10 = pair["kps_valid"].clone()
    first10[10:] = False
    assert_on_colours(pair["src_img"], pair["src_kps"], first10, tol=0.25)
    rgba = ds.load_pair(next(i for i, r in enumerate(ds.records) if r.src == "000000000003.png"))
    assert rgba["src_img"].shape[0] == 3


def test_cross_modes_and_determinism(ap10k_root):
    cross_species = _dataset(ap10k_root, "data.mode=cross_species")
    for rec in cross_species.records:
        assert rec.meta["src_family"] == rec.meta["trg_family"] and rec.meta["trg_species"] != rec.category
    assert {r.category for r in cross_species.records} == {"antelope", "buffalo"}  # cat: alone in family
    cross_family = _dataset(ap10k_root, "data.mode=cross_family")
    assert all(r.meta["src_family"] != r.meta["trg_family"] for r in cross_family.records)
    again = _dataset(ap10k_root, "data.mode=cross_family")
    assert [r.pair_id for r in again.records] == [r.pair_id for r in cross_family.records]
    other_seed = _dataset(ap10k_root, "data.mode=cross_family", "data.seed=1")
    assert [r.pair_id for r in other_seed.records] != [r.pair_id for r in cross_family.records]
    assert len(_dataset(ap10k_root, "data.max_pairs=3")) == 3
    assert len(_dataset(ap10k_root, split="train")) == len(_dataset(ap10k_root))


def test_errors_name_the_file(ap10k_root):
    with pytest.raises(ValueError, match="data.mode must be one of"):
        _dataset(ap10k_root, "data.mode=nope")
    path = ap10k_root / "annotations" / "ap10k-val-split1.json"
    path.write_text(json.dumps({"images": [], "annotations": [{"image_id": 1}], "categories": []}))
    with pytest.raises(ValueError, match="ap10k-val-split1.json"):
        _dataset(ap10k_root, split="val")
    path.unlink()
    with pytest.raises(FileNotFoundError, match="ap10k-val-split1.json"):
        _dataset(ap10k_root, split="val")
