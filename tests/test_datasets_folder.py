"""The ``folder`` dataset: a user's images with a JSON or CSV pair list."""

import json
from pathlib import Path

import pytest

from dataset_fixtures import assert_on_colours, painted, sample_on_colours, save
from semcorr.config import load_config
from semcorr.data.datamodule import dataset_from_config

A = [(10, 12), (40, 20), (25, 35)]
B = [(14, 10), (30, 30), (50, 8)]


@pytest.fixture()
def folder_root(tmp_path: Path) -> Path:
    save(tmp_path / "a.jpg", painted(48, 64, A, seed=0), exif_orientation=6)
    save(tmp_path / "sub" / "b.png", painted(40, 60, B, seed=1), mode="RGBA")
    pairs = [
        {"src": "a.jpg", "trg": "sub/b.png", "src_kps": A, "trg_kps": [B[0], None, B[2]],
         "category": "mine", "trg_bbox": [0, 0, 59, 39], "src_bbox": [5, 5, 50, 40]},
        {"src": "sub/b.png", "trg": "a.jpg", "src_kps": B, "trg_kps": A, "category": "mine",
         "src_bbox": [0, 0, 59, 39], "trg_bbox": [5, 5, 50, 40], "kps_ids": [4, 5, 6]},
    ]
    (tmp_path / "pairs.json").write_text(json.dumps(pairs))
    rows = ["src,trg,XA,YA,XB,YB,category",
            "a.jpg,sub/b.png," + ";".join(str(p[0]) for p in A) + "," + ";".join(str(p[1]) for p in A)
            + "," + ";".join(str(p[0]) for p in B) + ",10;-1;8,other"]
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def _dataset(root, *overrides):
    cfg = load_config(["data=folder", f"data.root={root}", "data.image_size=64", *overrides])
    return dataset_from_config(cfg.data, "test", divisor=8)


def test_json_pairs(folder_root):
    ds = _dataset(folder_root)
    assert len(ds) == 2 and ds.default_protocol == "folder"
    assert (ds.protocol.threshold_by, ds.protocol.average) == ("bbox", "per_image")
    s = ds[0]
    assert s["kps_valid"].tolist() == [True, False, True] and s["kps_ids"].tolist() == [-1, -1, -1]
    assert ds[1]["kps_ids"].tolist() == [4, 5, 6]
    pair = ds.load_pair(0)
    assert pair["src_img"].shape[-2:] == (48, 64)  # EXIF orientation applied
    assert_on_colours(pair["src_img"], pair["src_kps"], pair["kps_valid"])
    assert_on_colours(pair["trg_img"], pair["trg_kps"], pair["kps_valid"])
    sample_on_colours(s)


def test_csv_pairs_and_protocol(folder_root):
    ds = _dataset(folder_root, "data.pairs=pairs.csv")
    assert len(ds) == 1 and ds.categories == ["other"]
    assert ds.protocol.threshold_by == "bbox_kp"  # no boxes in the CSV
    assert ds[0]["kps_valid"].tolist() == [True, False, True]
    assert _dataset(folder_root, "data.threshold_by=image").protocol.threshold_by == "image"


def test_errors_name_the_file(folder_root):
    (folder_root / "sub" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match="sub/b.png"):
        _dataset(folder_root)
    (folder_root / "bad.json").write_text(json.dumps([{"src": "a.jpg", "trg": "a.jpg", "src_kps": [[1, 2]]}]))
    with pytest.raises(ValueError, match="bad.json, pair 0"):
        _dataset(folder_root, "data.pairs=bad.json")
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        _dataset(folder_root, "data.pairs=nothere.json")


def test_symmetry_list_gives_left_right_keys(folder_root):
    assert "trg_sym_vis" not in _dataset(folder_root)[0]  # no data.symmetry: no left/right
    ds = _dataset(folder_root, "data.symmetry=[[0,1]]", "data.geo_groups=[[0,1,2]]")
    s = ds[0]  # a.jpg -> sub/b.png, keypoint 1 null in the target
    assert s["kps_has_sym"].tolist() == [True, True, False]
    assert s["trg_sym_vis"].tolist() == [False, True, False] and s["src_sym_vis"].tolist() == [True, True, False]
    assert s["trg_sym_kps"][1].tolist() == list(map(float, B[0]))
    assert s["trg_group_vis"].tolist() == [True, True, True]  # 0 and 2 are visible in the target
    from semcorr.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data.symmetry must hold pairs \[a, b\]"):
        _dataset(folder_root, "data.symmetry=[[0,1,2]]")
