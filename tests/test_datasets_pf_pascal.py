"""PF-PASCAL loader on a fixture in the NC-Net pair-list format (1-based, ';'-separated, -1 invalid)."""

import json
from pathlib import Path

import pytest
import torch

from dataset_fixtures import assert_on_colours, painted, sample_on_colours, save
from semcorr.cli.eval import main as eval_main
from semcorr.config import load_config
from semcorr.data.datamodule import dataset_from_config
from semcorr.metrics import Protocol
from semcorr.predictions import pck_from_predictions, read_predictions

KPS = {
    "2007_000001.jpg": (50, 70, [(10, 10), (40, 20), (20, 40), (60, 30)]),
    "2007_000002.jpg": (56, 64, [(12, 14), (44, 18), (25, 45), (50, 50)]),
}
HEADER = "source_image,target_image,class,XA,YA,XB,YB"


def _coords(kps, invalid=()):
    xs = ";".join("-1" if k in invalid else str(p[0] + 1) for k, p in enumerate(kps))
    ys = ";".join("-1" if k in invalid else str(p[1] + 1) for k, p in enumerate(kps))
    return xs, ys


@pytest.fixture()
def pascal_root(tmp_path: Path) -> Path:
    folder = tmp_path / "PF-dataset-PASCAL" / "JPEGImages"
    for i, (name, (h, w, kps)) in enumerate(KPS.items()):
        save(folder / name, painted(h, w, kps, seed=i), exif_orientation=6 if i == 1 else 1)
    a, b = (f"PF-dataset-PASCAL/JPEGImages/{n}" for n in KPS)
    xa, ya = _coords(KPS["2007_000001.jpg"][2])
    xb, yb = _coords(KPS["2007_000002.jpg"][2], invalid=(3,))
    rows = [f"{a},{b},8,{xa},{ya},{xb},{yb}", f"{b},{a},12,{xb},{yb},{xa},{ya}"]
    (tmp_path / "test_pairs.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    (tmp_path / "image_pairs").mkdir()
    (tmp_path / "image_pairs" / "train_pairs.csv").write_text(
        HEADER + ",flip\n" + f"{a},{b},8,{xa},{ya},{xb},{yb},0\n{a},{b},8,{xa},{ya},{xb},{yb},1\n")
    return tmp_path


def _dataset(root, *overrides, split="test"):
    cfg = load_config(["data=pf_pascal", f"data.root={root}", "data.image_size=64", *overrides])
    return dataset_from_config(cfg.data, split, divisor=8)


def test_pairs_classes_and_invalid_keypoints(pascal_root):
    ds = _dataset(pascal_root)
    assert len(ds) == 2 and ds.categories == ["cat", "dog"]
    assert ds.default_protocol == "zero_shot" and set(ds.protocols) == {"zero_shot", "ncnet", "cats"}
    assert ds.protocol.threshold_by == "image" and ds.protocol.frame is None
    assert ds.protocol.direction == "src_to_trg"
    s = ds[0]
    assert s["category"] == "cat" and s["kps_valid"].tolist() == [True, True, True, False]
    assert torch.allclose(s["src_kps_orig"][0], torch.tensor([10.0, 10.0]))  # 1-based -> 0-based
    assert torch.isnan(s["trg_bbox"]).all()
    # the EXIF-rotated target is displayed upright and its keypoints sit on their colours
    pair = ds.load_pair(0)
    assert pair["trg_img"].shape[-2:] == (56, 64)
    assert_on_colours(pair["src_img"], pair["src_kps"], pair["kps_valid"])
    assert_on_colours(pair["trg_img"], pair["trg_kps"], pair["kps_valid"])
    sample_on_colours(s)
    assert [r.category for r in _dataset(pascal_root, "data.categories=[dog]").records] == ["dog"]


def test_exif_orientation_is_applied(pascal_root):
    pair = _dataset(pascal_root).load_pair(1)  # source is the EXIF-rotated image
    h, w, kps = KPS["2007_000002.jpg"]
    assert pair["src_img"].shape[-2:] == (h, w)
    assert_on_colours(pair["src_img"], pair["src_kps"], pair["kps_valid"])


def test_flip_column_mirrors_both_images(pascal_root):
    ds = _dataset(pascal_root, split="train")
    assert len(ds) == 2 and ds.records[1].src.endswith("#hflip")
    plain, flipped = ds.load_pair(0), ds.load_pair(1)
    assert torch.equal(flipped["src_img"], plain["src_img"].flip(-1))
    w = plain["src_img"].shape[-1]
    assert torch.allclose(flipped["src_kps"][:, 0], (w - 1) - plain["src_kps"][:, 0])
    assert_on_colours(flipped["src_img"], flipped["src_kps"], flipped["kps_valid"])
    assert_on_colours(flipped["trg_img"], flipped["trg_kps"], flipped["kps_valid"])


def test_flip_column_is_never_applied_to_evaluation_splits(pascal_root):
    """weakalign ships a test list with a flip column; val lists have one too: only train flips."""
    a, b = (f"PF-dataset-PASCAL/JPEGImages/{n}" for n in KPS)
    xa, ya = _coords(KPS["2007_000001.jpg"][2])
    xb, yb = _coords(KPS["2007_000002.jpg"][2])
    for split in ("test", "val"):
        (pascal_root / f"{split}_pairs.csv").write_text(
            HEADER + ",flip\n" + f"{a},{b},8,{xa},{ya},{xb},{yb},1\n")
        ds = _dataset(pascal_root, split=split)
        assert not ds.records[0].src.endswith("#hflip") and not ds.records[0].meta["flip"]
        pair = ds.load_pair(0)
        assert_on_colours(pair["src_img"], pair["src_kps"], pair["kps_valid"])
        assert_on_colours(pair["trg_img"], pair["trg_kps"], pair["kps_valid"])


def test_target_to_source_serves_pairs_swapped(pascal_root):
    ds = _dataset(pascal_root)
    plain = ds[0]
    ds.set_direction("trg_to_src")
    swapped = ds[0]
    assert swapped["direction"] == "trg_to_src" and swapped["pair_id"] == plain["pair_id"]
    for key in ("img", "kps", "kps_orig", "frame", "imsize", "id", "content_hw"):
        a, b = swapped[f"src_{key}"], plain[f"trg_{key}"]
        assert a == b if isinstance(a, str) else torch.equal(a, b), key
        a, b = swapped[f"trg_{key}"], plain[f"src_{key}"]
        assert a == b if isinstance(a, str) else torch.equal(a, b), key
    assert torch.equal(swapped["kps_valid"], plain["kps_valid"])
    sample_on_colours(swapped)
    with pytest.raises(ValueError, match="trg_to_src"):
        ds.set_direction("both")


@pytest.mark.parametrize("name,frame", [("ncnet", 224), ("cats", 256), ("zero_shot", None)])
def test_eval_protocols(pascal_root, tmp_path, name, frame):
    """Each named protocol runs end to end, is recorded in metrics.json, and its per-pair
    records follow it: target -> source in a square frame for ncnet / cats."""
    out = tmp_path / "run"
    rc = eval_main(["data=pf_pascal", f"data.root={pascal_root}", "data.image_size=64",
                    "backbone=dsift", f"metric.protocol={name}", "plots.n_pairs=0",
                    "logger.wandb=false", "trainer.enable_progress_bar=false", f"out_dir={out}"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    proto = metrics["protocol"]
    assert proto["name"] == name and proto["frame"] == frame and proto["reference"]
    assert proto["direction"] == ("src_to_trg" if frame is None else "trg_to_src")
    rows = read_predictions(out / "predictions.jsonl")
    csv_src = [f"PF-dataset-PASCAL/JPEGImages/{n}" for n in KPS]
    for row, (src, trg) in zip(rows, [csv_src, csv_src[::-1]]):
        # the query image: the CSV's target under target -> source
        assert (row["src_id"], row["trg_id"]) == ((src, trg) if frame is None else (trg, src))
        h, w = row["trg_imsize"]
        assert row["threshold"] == (max(h, w) if frame is None else frame)
        sx, sy = (1.0, 1.0) if frame is None else (frame / w, frame / h)
        for v, p, g, c in zip(row["valid"], row["pred"], row["trg_kps"], row["correct"]["0.1"]):
            d = (((p[0] - g[0]) * sx) ** 2 + ((p[1] - g[1]) * sy) ** 2) ** 0.5
            if v and abs(d - 0.1 * row["threshold"]) > 0.05:
                assert c == (d <= 0.1 * row["threshold"])
    assert pck_from_predictions(rows, Protocol.from_dict(proto))["pck"] == metrics["pck"]


def test_errors_name_the_file(pascal_root):
    with pytest.raises(FileNotFoundError, match="val_pairs.csv"):
        _dataset(pascal_root, split="val")
    (pascal_root / "test_pairs.csv").write_text(HEADER + "\nx.jpg,y.jpg,25,1,1,1,1\n")
    with pytest.raises(ValueError, match=r"test_pairs.csv, row 2"):
        _dataset(pascal_root)
    (pascal_root / "test_pairs.csv").write_text(HEADER + "\nmissing.jpg,y.jpg,3,1,1,1,1\n")
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        _dataset(pascal_root)[0]
