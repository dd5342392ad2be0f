"""TSS loader on a fixture in the released layout: Middlebury .flo flows, masks, flip_gt.txt.

The fixture's second image is the first shifted by (DX, DY) (and, for the flipped pair, stored
mirrored), so the flow convention can be checked by colour: a query pixel and its ground truth
must show the same colour in the source and in the target as served. The flows are known on the
foreground only (1e10 elsewhere, as released); image 1's foreground reaches the right border, so
some of its flow lands outside image 2: those queries are kept, as the TSS kit keeps them.
"""

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from semcorr.cli.eval import main as eval_main
from semcorr.config import load_config
from semcorr.data.datamodule import dataset_from_config
from semcorr.data.datasets.tss import FLO_MAGIC, read_flo
from semcorr.matchers.transfer import cell_index, transfer_keypoints, transfer_rows
from semcorr.metrics import Protocol
from semcorr.predictions import pck_from_predictions, read_predictions
from semcorr.viz import plot_predictions

H, W, DX, DY = 40, 56, 5, 3
FG1, FG2 = (4, 30, 20, 56), (10, 36, 12, 50)  # foreground rows y0:y1, columns x0:x1 (served frames)
UNKNOWN = (25, 5)  # (x, y) of a foreground pixel of image 1 with unknown flow


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
    # flow1 lives on image 1 and points into image 2 as served (the stored one mirrored when flipped)
    m1 = _mask(FG1) > 0
    flow1 = np.full((H, W, 2), 1e10, np.float32)
    flow1[m1] = (DX, DY)
    flow1[UNKNOWN[1], UNKNOWN[0]] = 1e10
    # flow2 lives on the stored image 2 and points into image 1 (mirrored when flipped)
    m2 = _mask(FG2) > 0
    m2 = m2[:, ::-1] if flip else m2
    flow2 = np.full((H, W, 2), 1e10, np.float32)
    flow2[m2] = (DX, -DY) if flip else (-DX, -DY)
    write_flo(folder / "flow1.flo", flow1)
    write_flo(folder / "flow2.flo", flow2)
    Image.fromarray(_mask(FG1)).save(folder / "mask1.png")
    Image.fromarray(np.ascontiguousarray(_mask(FG2)[:, ::-1] if flip else _mask(FG2))).save(folder / "mask2.png")
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
    assert ds.default_protocol == "tss_kit"
    assert ds.protocol.threshold_by == "image" and ds.protocol.headline == "category_mean"
    s = ds[0]  # FG3DCar 1 -> 2: every pixel with known flow (26 x 36 minus the unknown one)
    y0, y1, x0, x1 = FG1
    assert s["src_kps"].shape == ((y1 - y0) * (x1 - x0) - 1, 2) and s["kps_valid"].all()
    assert torch.allclose(s["trg_kps_orig"] - s["src_kps_orig"], torch.tensor([DX, DY], dtype=torch.float32))
    # flow landing outside image 2 is kept (the kit neither drops nor clips it): 26 rows x 5 columns
    outside = (s["trg_kps_orig"][:, 0] > W - 0.5).sum().item()
    assert outside == (y1 - y0) * DX
    assert ds.records[1].src.endswith("image2.png") and ds.records[1].trg.endswith("image1.png")
    y0, y1, x0, x1 = FG2
    assert ds[1]["src_kps"].shape[0] == (y1 - y0) * (x1 - x0)


def test_flow_convention_by_colour(tss_root):
    ds = _dataset(tss_root)
    for i in range(len(ds)):
        if ds.records[i].category == "JODS":
            continue
        pair = ds.load_pair(i)
        src, trg = pair["src_kps"].long(), pair["trg_kps"].long()
        h, w = pair["trg_img"].shape[-2:]
        inside = (trg[:, 0] < w) & (trg[:, 1] < h) & (trg >= 0).all(1)
        src, trg = src[inside], trg[inside]
        a = pair["src_img"][:, src[:, 1], src[:, 0]]
        b = pair["trg_img"][:, trg[:, 1], trg[:, 0]]
        assert torch.allclose(a, b), ds.records[i].pair_id
    flipped = [r for r in ds.records if r.category == "PASCAL"]
    assert all(r.trg.endswith("#hflip") and not r.src.endswith("#hflip") for r in flipped)
    assert not any(r.trg.endswith("#hflip") for r in ds.records if r.category != "PASCAL")


def test_flip_gt_conventions(tss_root):
    """flip_gt.txt = 1: the kit's reference drivers mirror the *other* image, never the query
    image (data.flip_gt=other, the default); data.flip_gt=ignore serves both as stored, as
    DenseMatching does, and then the stored flow of the fixture's flip pair no longer matches."""
    ignore = _dataset(tss_root, "data.flip_gt=ignore")
    assert not any("#hflip" in r.src + r.trg for r in ignore.records)
    index = next(i for i, r in enumerate(ignore.records) if r.pair_id == "PASCAL/pair001:1->2")
    pair = ignore.load_pair(index)
    src, trg = pair["src_kps"].long(), pair["trg_kps"].long()
    inside = trg[:, 0] < W
    a = pair["src_img"][:, src[inside, 1], src[inside, 0]]
    b = pair["trg_img"][:, trg[inside, 1], trg[inside, 0]]
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="flip_gt"):
        _dataset(tss_root, "data.flip_gt=source")


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
    (tss_root / "FG3DCar" / "pair001" / "flow1.flo").unlink()
    with pytest.raises(FileNotFoundError, match="FG3DCar/pair001/flow1.flo"):
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


def test_eval_cli_headline_is_the_mean_of_the_groups(tss_root, tmp_path):
    out = tmp_path / "run"
    rc = eval_main(["data=tss", f"data.root={tss_root}", "data.image_size=64", "backbone=dsift",
                    "matcher=nn", "metric.alphas=[0.05]", "plots.n_pairs=2", "logger.wandb=false",
                    "predictions.max_points=100", "trainer.enable_progress_bar=false",
                    f"out_dir={out}"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    groups = metrics["pck_per_category"]
    assert metrics["n_pairs"] == 6 and set(groups) == {"FG3DCar", "JODS", "PASCAL"}
    assert metrics["n_keypoints"] == 3 * (26 * 36 - 1 + 26 * 38)
    assert metrics["protocol"]["name"] == "tss_kit" and metrics["protocol"]["headline"] == "category_mean"
    mean = sum(v["0.05"] for v in groups.values()) / 3
    assert metrics["pck"]["0.05"] == pytest.approx(mean) == metrics["pck_category_mean"]["0.05"]
    assert metrics["pck_pooled"] == metrics["pck_per_image"]
    # dense queries: a sample of 100 per pair in predictions.jsonl, with exact counts
    rows = read_predictions(out / "predictions.jsonl")
    assert all(len(r["pred"]) == 100 and r["n_queries"] == r["n_valid"] > 100 for r in rows)
    assert all(r["kps_index"] == sorted(r["kps_index"]) for r in rows)
    again = pck_from_predictions(rows, Protocol.from_dict(metrics["protocol"]))
    assert again["pck"] == pytest.approx(metrics["pck"], abs=1e-9)
    assert (out / "keypoints.png").is_file()


def test_dense_figures_draw_a_bounded_sample(tss_root):
    ds = _dataset(tss_root)
    s = ds[0]
    k = s["src_kps"].shape[0]
    record = {"src_id": s["src_id"], "trg_id": s["trg_id"], "category": s["category"],
              "src_kps": s["src_kps_orig"], "trg_kps": s["trg_kps_orig"], "pred": s["trg_kps_orig"],
              "valid": s["kps_valid"], "norm_error": torch.zeros(k), "dist_sq": torch.zeros(k),
              "threshold": 1.0}
    fig = plot_predictions([record], ds.read_image, max_points=50)
    lines = len(fig.axes[0].lines)
    # a line, a link to the ground truth, a ground-truth cross and two markers per drawn match
    assert 100 <= lines <= 5 * 50 < k
    plt.close(fig)
