"""AP-10K benchmark construction (GeoAware-SC's steps) on a COCO fixture whose pairs are counted
by hand.

Five species in three families; the released split files are merged; one image is a crowd, one
has too few visible keypoints, one holds two animals. With 3 test and 2 val images per species
(``data.test_per_species=3``, ``data.val_per_species=2``) the kept images split as:

=========  ========  =============================  ===========  =========  ========
species    family    kept images (id: visible kps)  train        val        test
=========  ========  =============================  ===========  =========  ========
antelope   Bovidae   1F 2F 4F 5F 6L 7R (3: crowd)   1            2 4        5 6 7
buffalo    Bovidae   11F 12F 13L 14F                -            11         12 13 14
cat        Felidae   41F ... 47F                    41 42        43 44      45 46 47
dog        Canidae   21F 23R 24F (22: 2 visible)    -            -          21 23 24
fox        Canidae   31L 32F                        -            -          31 32
=========  ========  =============================  ===========  =========  ========

F: all 17 keypoints visible, L: only 0, 1, 2, R: only 3, 4, 5, so an L-R pair shares none and is
never a pair; every other pair shares at least 3.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from dataset_fixtures import assert_on_colours, painted, save
from semcorr.config import load_config
from semcorr.data.datamodule import dataset_from_config

SPECIES = {1: ("antelope", "Bovidae"), 2: ("buffalo", "Bovidae"), 3: ("dog", "Canidae"),
           4: ("fox", "Canidae"), 5: ("cat", "Felidae")}
VISIBLE = {"F": range(17), "L": (0, 1, 2), "R": (3, 4, 5), "T": (0, 1)}
# image id -> (category id, visibility, split file)
IMAGES = {
    1: (1, "F", "train"), 2: (1, "F", "train"), 3: (1, "F", "train"), 4: (1, "F", "train"),
    5: (1, "F", "train"), 6: (1, "L", "test"), 7: (1, "R", "test"),
    11: (2, "F", "train"), 12: (2, "F", "train"), 13: (2, "L", "train"), 14: (2, "F", "val"),
    21: (3, "F", "train"), 22: (3, "T", "train"), 23: (3, "R", "train"), 24: (3, "F", "train"),
    31: (4, "L", "test"), 32: (4, "F", "test"),
    **{i: (5, "F", "train" if i < 44 else "test") for i in range(41, 48)},
}
CROWD, TWO_ANIMALS = 3, 14
H, W = 48, 64


def _name(i: int) -> str:
    return f"{i:012d}.jpg"


def _keypoints(i: int, pattern: str):
    rng = np.random.default_rng(i)
    kps = []
    for k in range(17):
        x, y = float(rng.integers(4, W - 4)), float(rng.integers(4, H - 4))
        kps += [x, y, 2] if k in VISIBLE[pattern] else [0.0, 0.0, 0]
    return kps


@pytest.fixture()
def ap10k_root(tmp_path: Path) -> Path:
    files = {s: {"images": [], "annotations": [], "categories": []} for s in ("train", "val", "test")}
    for split in files:
        files[split]["categories"] = [{"id": c, "name": s, "supercategory": f,
                                       "keypoints": [f"kp{k}" for k in range(17)]}
                                      for c, (s, f) in SPECIES.items()]
    for i, (cat, pattern, split) in IMAGES.items():
        kps = _keypoints(i, pattern)
        pts = [kps[3 * k: 3 * k + 2] if kps[3 * k + 2] else None for k in range(10)]
        save(tmp_path / "data" / _name(i), painted(H, W, pts, seed=i, half=1))
        files[split]["images"].append({"id": i, "file_name": _name(i), "height": H, "width": W})
        ann = {"id": 100 + i, "image_id": i, "category_id": cat, "iscrowd": int(i == CROWD),
               "bbox": [2, 3, 50 + i % 5, 40], "num_keypoints": len(VISIBLE[pattern]),
               "keypoints": kps, "area": 2000}
        files[split]["annotations"].append(ann)
        if i == TWO_ANIMALS:  # a second animal (a cat) after the first: the first one is kept
            files[split]["annotations"].append({**ann, "id": 999, "category_id": 5})
    (tmp_path / "annotations").mkdir()
    for split, coco in files.items():
        (tmp_path / "annotations" / f"ap10k-{split}-split1.json").write_text(json.dumps(coco))
    return tmp_path


def _dataset(root, *overrides, split="test"):
    cfg = load_config(["data=ap10k", f"data.root={root}", "data.image_size=64",
                       "data.test_per_species=3", "data.val_per_species=2", *overrides])
    return dataset_from_config(cfg.data, split, divisor=8)


def _pairs(ds):
    return [(int(r.src[:12]), int(r.trg[:12])) for r in ds.records]


def test_intra_species_test_pairs_hand_counted(ap10k_root):
    ds = _dataset(ap10k_root)
    assert ds.default_protocol == "geoaware" and ds.protocol.threshold_by == "bbox"
    assert ds.categories == ["antelope", "buffalo", "cat", "dog", "fox"]
    assert _pairs(ds) == [(5, 6), (5, 7),                      # antelope: 6L-7R share nothing
                          (12, 13), (12, 14), (13, 14),        # buffalo (14: its first animal)
                          (45, 46), (45, 47), (46, 47),        # cat
                          (21, 23), (21, 24), (23, 24),        # dog (22: 2 visible, dropped)
                          (31, 32)]                            # fox
    assert ds.records[0].pair_id == "5-6:antelope"
    assert all(r.meta["src_species"] == r.meta["trg_species"] == r.category for r in ds.records)


def test_val_and_train_splits(ap10k_root):
    assert _pairs(_dataset(ap10k_root, split="val")) == [(2, 4), (43, 44)]
    assert _pairs(_dataset(ap10k_root, split="train")) == [(41, 42)]
    with pytest.raises(ValueError, match="no cross_species pairs in the train split"):
        _dataset(ap10k_root, "data.mode=cross_species", split="train")


def test_cross_species_hand_counted(ap10k_root):
    ds = _dataset(ap10k_root, "data.mode=cross_species")
    # Bovidae: antelope {5F, 6L, 7R} x buffalo {12F, 13L, 14F} = 9, minus 7R-13L -> 8;
    # Canidae: dog {21F, 23R, 24F} x fox {31L, 32F} = 6, minus 23R-31L -> 5; Felidae: one species
    assert ds.categories == ["Bovidae", "Canidae"]
    assert sum(r.category == "Bovidae" for r in ds.records) == 8
    assert sum(r.category == "Canidae" for r in ds.records) == 5
    assert (7, 13) not in _pairs(ds) and (23, 31) not in _pairs(ds)
    assert all(r.meta["src_species"] in ("antelope", "dog") for r in ds.records)  # first species: source
    val = _dataset(ap10k_root, "data.mode=cross_species", split="val")
    assert _pairs(val) == [(2, 11), (4, 11)]  # the val split of Canidae is empty
    # capped: 4 per family, picked by hash, the same every time, another seed another pick
    capped = _dataset(ap10k_root, "data.mode=cross_species", "data.cross_species_pairs=4")
    assert [sum(r.category == f for r in capped.records) for f in ("Bovidae", "Canidae")] == [4, 4]
    assert set(_pairs(capped)) < set(_pairs(ds))
    assert _pairs(_dataset(ap10k_root, "data.mode=cross_species", "data.cross_species_pairs=4")) == _pairs(capped)
    other = _dataset(ap10k_root, "data.mode=cross_species", "data.cross_species_pairs=4", "data.seed=1")
    assert _pairs(other) != _pairs(capped)


def test_cross_family_hand_counted(ap10k_root):
    ds = _dataset(ap10k_root, "data.mode=cross_family")
    # Bovidae {5F 6L 7R 12F 13L 14F} x Canidae {21F 23R 24F 31L 32F}: 30 minus L-R (6-23, 13-23)
    # and R-L (7-31) -> 27; x Felidae {45 46 47}: 18; Canidae x Felidae: 15
    assert ds.categories == ["all"] and len(ds) == 27 + 18 + 15
    assert all(r.meta["src_family"] < r.meta["trg_family"] for r in ds.records)
    capped = _dataset(ap10k_root, "data.mode=cross_family", "data.cross_family_pairs=20")
    assert len(capped) == 20 + 18 + 15
    assert len(_dataset(ap10k_root, "data.mode=cross_family", split="val")) == 3 * 2  # Bov x Fel


def test_filters_single_instance_and_geoaware_defaults(ap10k_root):
    ds = _dataset(ap10k_root, "data.single_instance=true")
    buffalo = [p for p, r in zip(_pairs(ds), ds.records) if r.category == "buffalo"]
    assert buffalo == [(11, 12), (11, 13), (12, 13)]  # 14 (two animals) dropped
    # GeoAware-SC's sizes (30 test, 20 val per species): every species fits in its test split
    cfg = load_config(["data=ap10k", f"data.root={ap10k_root}"])
    assert (cfg.data.test_per_species, cfg.data.val_per_species) == (30, 20)
    full = dataset_from_config(cfg.data, "test", divisor=8)
    assert sum(r.category == "cat" for r in full.records) == 7 * 6 // 2
    assert not any(CROWD in p for p in _pairs(full))


def test_visibility_symmetry_boxes_and_colours(ap10k_root):
    ds = _dataset(ap10k_root)
    index = _pairs(ds).index((5, 6))
    s = ds[index]
    assert s["kps_valid"].tolist() == [k < 3 for k in range(17)]
    assert s["sym_pairs"].tolist() == [[0, 1]]  # of the ap10k pairs only (0, 1) is valid in both
    # left/right keys from all 17 keypoints of each image (image 5 shows all, image 6 only 0, 1, 2)
    assert s["kps_has_sym"].tolist() == [k not in (2, 3, 4) for k in range(17)]
    assert s["src_sym_vis"].tolist() == s["kps_has_sym"].tolist()
    assert s["trg_sym_vis"].tolist() == [k in (0, 1) for k in range(17)]
    assert s["trg_sym_kps"][0].tolist() == ds.load_pair(index)["trg_kps"][1].tolist()
    assert not s["trg_group_vis"].any()  # no geometry-aware group has two members in image 6
    assert s["src_group_vis"].tolist() == [k >= 5 for k in range(17)]
    assert s["trg_bbox"].tolist() == [2.0, 3.0, 2.0 + 50 + 6 % 5, 43.0]  # COCO [x, y, w, h]
    pair = ds.load_pair(index)
    assert_on_colours(pair["src_img"], pair["src_kps"], pair["kps_valid"], tol=0.25)
    assert_on_colours(pair["trg_img"], pair["trg_kps"], pair["kps_valid"], tol=0.25)


def test_errors_name_the_file(ap10k_root):
    with pytest.raises(ValueError, match="data.mode must be one of"):
        _dataset(ap10k_root, "data.mode=nope")
    path = ap10k_root / "annotations" / "ap10k-val-split1.json"
    path.write_text(json.dumps({"images": [], "annotations": [{"image_id": 999}], "categories": []}))
    with pytest.raises(ValueError, match="ap10k-val-split1.json"):
        _dataset(ap10k_root)
    path.unlink()
    with pytest.raises(FileNotFoundError, match="ap10k-val-split1.json"):
        _dataset(ap10k_root)
