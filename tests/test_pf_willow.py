"""PF-WILLOW on the real released files (skips when ../shared/data is absent)."""

import csv

import numpy as np
import pytest
import scipy.io
import torch

from semcorr.data.datasets.pf_willow import PFWillowDataset
from semcorr.data.resize import to_original


def test_all_ordered_pairs_match_the_released_list(pf_willow_root):
    ds = PFWillowDataset(root=str(pf_willow_root), divisor=8)
    assert len(ds) == 900 and len(ds.categories) == 10 and len(ds.image_ids()) == 100
    with open(pf_willow_root / "test_pairs.csv", newline="") as f:
        released = {(r["src_image"], r["trg_image"]) for r in csv.DictReader(f)}
    assert {(r.src, r.trg) for r in ds.records} == released


def test_keypoints_are_zero_based_and_round_trip(pf_willow_root):
    ds = PFWillowDataset(root=str(pf_willow_root), divisor=8, max_pairs=3)
    sample = ds[0]
    rec = ds.records[0]
    raw = scipy.io.loadmat(str((pf_willow_root / rec.src).with_suffix(".mat")))["pts_coord"]
    assert np.allclose(sample["src_kps_orig"].numpy(), raw.T[:, :2] - 1, atol=1e-5)
    assert sample["kps_valid"].all() and sample["src_kps"].shape == (10, 2)
    back = to_original(sample["trg_kps"], sample["trg_frame"])
    assert torch.allclose(back, sample["trg_kps_orig"], atol=1e-3)
    h, w = sample["trg_imsize"].tolist()
    assert (sample["trg_kps_orig"][:, 0] < w).all() and (sample["trg_kps_orig"][:, 1] < h).all()


def test_pair_list_formats(pf_willow_root, tmp_path):
    ds = PFWillowDataset(root=str(pf_willow_root), pairs_csv="test_pairs.csv", divisor=8)
    assert len(ds) == 900
    # the NC-Net style list with ;-separated 1-based coordinates
    rec = ds.records[5]
    xa = ";".join(f"{v + 1:.4f}" for v in rec.src_kps[:, 0])
    ya = ";".join(f"{v + 1:.4f}" for v in rec.src_kps[:, 1])
    xb = ";".join(f"{v + 1:.4f}" for v in rec.trg_kps[:, 0])
    yb = ";".join(f"{v + 1:.4f}" for v in rec.trg_kps[:, 1])
    path = tmp_path / "test_pairs_pf.csv"
    path.write_text("imageA,imageB,XA,YA,XB,YB\n"
                    f"PF-dataset/{rec.src.split('/', 1)[1]},PF-dataset/{rec.trg.split('/', 1)[1]},"
                    f"{xa},{ya},{xb},{yb}\n")
    other = PFWillowDataset(root=str(pf_willow_root), pairs_csv=str(path), divisor=8)
    assert len(other) == 1 and other.records[0].src == rec.src
    assert np.allclose(other.records[0].trg_kps, rec.trg_kps, atol=1e-3)


def test_category_selection_and_errors(pf_willow_root, tmp_path):
    ds = PFWillowDataset(root=str(pf_willow_root), categories=["duck(S)"], divisor=8)
    assert len(ds) == 90 and ds.categories == ["duck(S)"]
    with pytest.raises(ValueError, match="duck"):
        PFWillowDataset(root=str(pf_willow_root), categories=["goose"], divisor=8)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        PFWillowDataset(root=str(tmp_path / "nowhere"), divisor=8)
