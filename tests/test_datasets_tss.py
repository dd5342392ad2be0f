"""TSS loader on a fixture in the released layout: Middlebury .flo flows, masks, flip_gt.txt.

The fixture's second image is the first shifted by (DX, DY) (and, for the flipped pair, stored
mirrored), so the flow convention can be checked by colour: a query pixel and its ground truth
must show the same colour in the source and in the target as served.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semcorr.cli.eval import main as eval_main
from semcorr.config import load_config
from semcorr.data.datamodule import dataset_from_config
from semcorr.data.datasets.tss import FLO_MAGIC, read_flo
from semcorr.matchers.transfer import cell_index, transfer_keypoints, transfer_rows

H, W, DX, DY = 40, 56, 5, 3


def write_flo(path: Path, flow: np.ndarray) -> None:
    h, w = flow.shape[:2]
    with open(path, "wb") as f:
        np.array([FLO_MAGIC], "<f4").tofile(f)
        np.array([w, h], "<i4").tofile(f)
        flow.astype("<f4").tofile(f)


def _mask(rect) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    y0, y1, x0, x1 = rect
    m[y0:y1, x0:x1] = 255
    return m


def write_pair(folder: Path, flip: bool, seed: int, grey16: bool = False) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    im1 = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    served2 = np.zeros_like(im1)
    served2[DY:, DX:] = im1[:H - DY, :W - DX]  # served image 2 = image 1 moved by (DX, DY)
    stored2 = served2[:, ::-1] if flip else served2
    Image.fromarray(im1).save(folder / "image1.png")
    if grey16:
        Image.fromarray(stored2[..., 0].astype(np.uint16) * 257).save(folder / "image2.png")
    else:
        Image.fromarray(np.ascontiguousarray(stored2)).save(folder / "image2.png")
    flow1 = np.zeros((H, W, 2), np.float32)
    flow1[...] = (DX, DY)
    flow1[5, 10] = 1e10  # unknown flow
    # flow2 lives on the stored image 2 and points into image 1 (mirrored when flipped)
    flow2 = np.zeros((H, W, 2), np.float32)
    flow2[...] = (DX, -DY) if flip else (-DX, -DY)
    write_flo(folder / "flow1.flo", flow1)
    write_flo(folder / "flow2.flo", flow2)
    Image.fromarray(_mask((4, 30, 6, 40))).save(folder / "mask1.png")
    m2 = _mask((10, 36, 12, 50))
    Image.fromarray(np.ascontiguousarray(m2[:, ::-1] if flip else m2)).save(folder / "mask2.png")
    (folder / "flip_gt.txt").write_text("1\n" if flip else "0\n")
    (folder / "pair.txt").write_text("image1.png image2.png\n")


@pytest.fixture()
def tss_root(tmp_path: Path) -> Path:
    write_pair(tmp_path / "FG3DCar" / "pair001", flip=False, seed=0)
    write_pair(tmp_path / "PASCAL" / "pair001", flip=True, seed=1)
    write_pair(tmp_path / "JODS" / "pair001", flip=False, seed=2, grey16=True)
    return tmp_path


def _dataset(root, *overrides):
    cfg = load_config(["data=tss", f"data.root={root}", "data.image_size=64", *overrides])
    return dataset_from_config(cfg.data, "test", divisor=8)


def test_both_directions_groups_and_query_count(tss_root):
    ds = _dataset(tss_root)
    assert len(ds) == 6 and ds.categories == ["FG3DCar", "JODS", "PASCAL"]
    assert ds.protocol == {"threshold_by": "image", "average": "per_image"}
    s = ds[0]  # FG3DCar 1 -> 2: foreground 26 x 34 minus the unknown pixel minus the out-of-image
    ys, xs = np.nonzero(_mask((4, 30, 6, 40)))
    expected = sum(1 for y, x in zip(ys, xs) if (y, x) != (5, 10) and x + DX < W and y + DY < H)
    assert s["src_kps"].shape == (expected, 2) and s["kps_valid"].all()
    assert torch.allclose(s["trg_kps_orig"] - s["src_kps_orig"], torch.tensor([DX, DY], dtype=torch.float32))
    assert ds.records[1].src.endswith("image2.png") and ds.records[1].trg.endswith("image1.png")


def test_flow_convention_by_colour(tss_root):
    ds = _dataset(tss_root)
    for i in range(len(ds)):
        if ds.records[i].category == "JODS":
            continue
        pair = ds.load_pair(i)
        src, trg = pair["src_kps"].long(), pair["trg_kps"].long()
        a = pair["src_img"][:, src[:, 1], src[:, 0]]
        b = pair["trg_img"][:, trg[:, 1], trg[:, 0]]
        inside = (pair["trg_img"].sum(0)[trg[:, 1], trg[:, 0]] > 0) | (a.sum(0) == 0)
        assert torch.allclose(a[:, inside], b[:, inside]), ds.records[i].pair_id
    assert ds.records[2].trg.endswith("#hflip") or ds.records[4].trg.endswith("#hflip")


def test_sixteen_bit_grey_image(tss_root):
    ds = _dataset(tss_root)
    index = next(i for i, r in enumerate(ds.records) if r.category == "JODS" and r.src.endswith("image2.png"))
    img = ds.load_pair(index)["src_img"]
    assert img.shape == (3, H, W) and 0.2 < img.max() <= 1.0 and torch.allclose(img[0], img[2])


def test_query_subsampling_only_when_asked(tss_root):
    full = _dataset(tss_root)[0]["src_kps"].shape[0]
    assert _dataset(tss_root, "data.max_queries=100")[0]["src_kps"].shape[0] == 100
    strided = _dataset(tss_root, "data.query_stride=4")[0]["src_kps"].shape[0]
    assert full / 20 < strided < full / 12


def test_errors_name_the_file(tss_root):
    flo = tss_root / "PASCAL" / "pair001" / "flow1.flo"
    flo.write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="flow1.flo"):
        read_flo(flo)
    ds = _dataset(tss_root)
    index = next(i for i, r in enumerate(ds.records) if r.pair_id == "PASCAL/pair001:1->2")
    with pytest.raises(ValueError, match="PASCAL/pair001/flow1.flo"):
        ds[index]
    (tss_root / "FG3DCar" / "pair001" / "mask1.png").unlink()
    with pytest.raises(FileNotFoundError, match="FG3DCar/pair001/mask1.png"):
        ds[0]


def test_dense_transfer_equals_row_gather():
    """The dense path (K > Ns) of transfer_keypoints gives what gathering K rows gives."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 12, 20, generator=g)
    kps = torch.rand(2, 40, 2, generator=g) * torch.tensor([31.0, 23.0])
    for method in ("argmax", "soft_argmax", "window_soft_argmax"):
        pts, best = transfer_keypoints(scores, kps, (3, 4), 8, (4, 5), 8, method=method)
        idx = cell_index(kps, (3, 4), 8)
        rows = torch.gather(scores, 1, idx[..., None].expand(-1, -1, 20))
        ref_pts, ref_best = transfer_rows(rows, (4, 5), 8, method=method)
        assert torch.allclose(pts, ref_pts, atol=1e-5) and torch.equal(best, ref_best)


def test_eval_cli_reports_groups(tss_root, tmp_path):
    out = tmp_path / "run"
    rc = eval_main(["data=tss", f"data.root={tss_root}", "data.image_size=64", "backbone=dsift",
                    "matcher=nn", "metric.alphas=[0.05]", "plots.n_pairs=1", "logger.wandb=false",
                    "trainer.enable_progress_bar=false", f"out_dir={out}"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_pairs"] == 6 and set(metrics["pck_per_category"]) == {"FG3DCar", "JODS", "PASCAL"}
    assert metrics["n_keypoints"] > 2000
    assert 0.0 <= metrics["pck"]["0.05"] <= 100.0
