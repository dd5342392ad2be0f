"""SPair-71k loader on a fixture written in the released layout and field names."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset_fixtures import assert_on_colours, painted, sample_on_colours, save
from runs import QUIET
from semcorr.config import load_config
from semcorr.data.datamodule import dataset_from_config
from semcorr.data.schema import collate
from semcorr.metrics import Protocol
from semcorr.predictions import pck_from_predictions, read_predictions

# cat kps ids 0..5; symmetric: (0,1), (2,3), (4,5) in the packaged table
IMAGES = {
    "cat/2008_000001.jpg": (60, 80, {0: (10, 12), 1: (30, 12), 2: (8, 40), 3: (50, 40), 5: (70, 50)}),
    "cat/2008_000002.jpg": (64, 64, {0: (12, 10), 1: (40, 14), 2: (6, 30), 3: (44, 44), 4: (60, 60)}),
    "dog/2009_000003.jpg": (48, 72, {0: (5, 5), 1: (20, 20), 2: (60, 40)}),
}


def _segmentation(h, w, box, other=None):
    """(h, w) uint8 labels: 0 background, 8 (the VOC id of cat) inside ``box`` (x1, y1, x2, y2),
    15 (person) inside ``other``: another object that is not the cat."""
    labels = np.zeros((h, w), dtype=np.uint8)
    x1, y1, x2, y2 = box
    labels[y1:y2 + 1, x1:x2 + 1] = 8
    if other is not None:
        x1, y1, x2, y2 = other
        labels[y1:y2 + 1, x1:x2 + 1] = 15
    return labels


SEGMENTATION = {"cat/2008_000001.jpg": _segmentation(60, 80, (5, 8, 55, 45), other=(60, 40, 79, 59)),
                "cat/2008_000002.jpg": _segmentation(64, 64, (4, 6, 62, 62))}


def _pair(name, src, trg, category, ids, flags, trg_box=None, null_kp=None):
    s_kps = [list(IMAGES[src][2][i]) for i in ids]
    t_kps = [list(IMAGES[trg][2][i]) for i in ids]
    if null_kp is not None:
        t_kps[null_kp] = None
    h, w = IMAGES[trg][:2]
    return name, {
        "pair_id": 1, "filename": name, "src_imname": Path(src).name, "trg_imname": Path(trg).name,
        "src_imsize": [IMAGES[src][1], IMAGES[src][0], 3], "trg_imsize": [w, h, 3],
        "src_bndbox": [2, 2, 75, 55], "trg_bndbox": trg_box or [3, 4, 62, 62], "category": category,
        "src_pose": "Right", "trg_pose": "Left", "src_kps": s_kps, "trg_kps": t_kps,
        "kps_ids": [str(i) for i in ids], **flags,
    }


@pytest.fixture()
def spair_root(tmp_path: Path) -> Path:
    for i, (rel, (h, w, kps)) in enumerate(IMAGES.items()):
        kp_list = [kps.get(k) for k in range(max(kps) + 1)]
        save(tmp_path / "JPEGImages" / rel, painted(h, w, kp_list, seed=i), mode="L" if i == 2 else None)
    for rel, labels in SEGMENTATION.items():  # the cats have segmentations, the dog has none
        save((tmp_path / "Segmentation" / rel).with_suffix(".png"), labels)
    flags0 = dict(viewpoint_variation=0, scale_variation=0, truncation=0, occlusion=0)
    flags1 = dict(viewpoint_variation=2, scale_variation=1, truncation=1, occlusion=0)
    pairs = [
        _pair("000001-2008_000001-2008_000002:cat", "cat/2008_000001.jpg", "cat/2008_000002.jpg",
              "cat", [0, 1, 2, 3], flags0),
        # a keypoint missing in the target and a box touching the image border
        _pair("000002-2008_000002-2008_000001:cat", "cat/2008_000002.jpg", "cat/2008_000001.jpg",
              "cat", [0, 1, 2, 3], flags1, trg_box=[0, 0, 79, 59], null_kp=1),
        _pair("000003-2009_000003-2009_000003:dog", "dog/2009_000003.jpg", "dog/2009_000003.jpg",
              "dog", [0, 1, 2], flags0),
    ]
    for split in ("test", "trn"):
        folder = tmp_path / "PairAnnotation" / split
        folder.mkdir(parents=True)
        for name, ann in pairs:
            (folder / f"{name}.json").write_text(json.dumps(ann))
        layout = tmp_path / "Layout" / "large"
        layout.mkdir(parents=True, exist_ok=True)
        (layout / f"{split}.txt").write_text("\n".join(n for n, _ in pairs) + "\n")
    return tmp_path


def _dataset(root, *overrides, split="test"):
    cfg = load_config(["data=spair", f"data.root={root}", "data.image_size=64", *overrides])
    return dataset_from_config(cfg.data, split, divisor=8)


def test_records_schema_and_colours(spair_root):
    ds = _dataset(spair_root)
    assert len(ds) == 3 and ds.categories == ["cat", "dog"]
    assert ds.default_protocol == "hpf"
    assert ds.protocol.threshold_by == "bbox" and ds.protocol.average == "per_image"
    s = ds[0]
    assert s["src_img"].shape == (3, 64, 64) and s["src_kps"].shape == (4, 2)
    assert s["kps_ids"].tolist() == [0, 1, 2, 3] and s["kps_valid"].all()
    assert s["trg_bbox"].tolist() == [3, 4, 62, 62]
    assert s["src_imsize"].tolist() == [60, 80]
    assert sorted(map(tuple, s["sym_pairs"].tolist())) == [(0, 1), (2, 3)]
    pair = ds.load_pair(0)
    assert_on_colours(pair["src_img"], pair["src_kps"], pair["kps_valid"])
    assert_on_colours(pair["trg_img"], pair["trg_kps"], pair["kps_valid"])
    sample_on_colours(s)
    batch = collate([ds[0], ds[1], ds[2]])
    assert batch["src_kps"].shape == (3, 4, 2) and batch["sym_pairs"].shape == (3, 2, 2)


def test_missing_keypoint_border_box_and_grey_image(spair_root):
    ds = _dataset(spair_root)
    s = ds[1]
    assert s["kps_valid"].tolist() == [True, False, True, True]
    # the symmetric pair (0, 1) loses its partner; only (2, 3) remains
    assert s["sym_pairs"].tolist() == [[2, 3]]
    assert s["trg_bbox"].tolist() == [0, 0, 79, 59]
    grey = ds.load_pair(2)["src_img"]
    assert grey.shape[0] == 3 and torch.allclose(grey[0], grey[1])


def test_difficulty_category_and_max_pairs_filters(spair_root):
    assert len(_dataset(spair_root, "data.viewpoint_variation=[0]")) == 2
    assert len(_dataset(spair_root, "data.truncation=[1]", "data.scale_variation=[1]")) == 1
    assert [r.category for r in _dataset(spair_root, "data.categories=[dog]").records] == ["dog"]
    assert len(_dataset(spair_root, "data.max_pairs=2")) == 2
    assert len(_dataset(spair_root, split="train")) == 3
    with pytest.raises(ValueError, match="unknown categories"):
        _dataset(spair_root, "data.categories=[zebra]")


def test_errors_name_the_file(spair_root):
    image = spair_root / "JPEGImages" / "cat" / "2008_000002.jpg"
    data = image.read_bytes()
    image.unlink()
    with pytest.raises(FileNotFoundError, match="2008_000002.jpg"):  # found when loaded (its size)
        _dataset(spair_root)
    image.write_bytes(data)
    bad = spair_root / "PairAnnotation" / "test" / "000003-2009_000003-2009_000003:dog.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="000003-2009_000003-2009_000003:dog.json"):
        _dataset(spair_root)
    bad.unlink()
    (spair_root / "Layout" / "large" / "test.txt").write_text("000001-2008_000001-2008_000002:cat\n")
    assert len(_dataset(spair_root)) == 1
    (spair_root / "JPEGImages" / "cat" / "2008_000001.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="2008_000001.jpg"):  # found when loaded (its header)
        _dataset(spair_root)


def test_eval_cli_reports_both_averages(spair_root, tmp_path):
    from semcorr.cli.eval import main as eval_main

    out = tmp_path / "run"
    rc = eval_main(["data=spair", f"data.root={spair_root}", "data.image_size=64", "backbone=dsift",
                    *QUIET, f"out_dir={out}"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    proto = metrics["protocol"]
    assert proto["name"] == "hpf" and proto["threshold_by"] == "bbox" and proto["average"] == "per_image"
    assert "juhongm999/hpf" in proto["reference"]
    assert metrics["n_pairs"] == 3 and metrics["n_keypoints"] == 4 + 3 + 3
    # the official code's average: the mean over every pair; per keypoint reported next to it
    assert metrics["pck"] == metrics["pck_per_image"] == metrics["pck_pooled"]
    assert "0.1" in metrics["pck_per_keypoint"]
    rows = read_predictions(out / "predictions.jsonl")
    again = pck_from_predictions(rows, Protocol.from_dict(metrics["protocol"]))
    assert again["pck_per_image"] == metrics["pck_per_image"]
    assert again["pck_per_keypoint"] == metrics["pck_per_keypoint"]
    assert [r["threshold"] for r in rows] == [59.0, 79.0, 59.0]  # max side of each target box
    assert rows[1]["valid"] == [True, False, True, True] and rows[1]["trg_bbox"] == [0, 0, 79, 59]


def test_cats_protocol_scores_the_source_box_in_a_256_frame(spair_root, tmp_path):
    from semcorr.cli.eval import main as eval_main

    out = tmp_path / "run"
    rc = eval_main(["data=spair", f"data.root={spair_root}", "data.image_size=64", "backbone=dsift",
                    "metric.protocol=cats", "plots.n_pairs=0", "logger.wandb=false",
                    "trainer.enable_progress_bar=false", f"out_dir={out}"])
    assert rc == 0
    assert json.loads((out / "metrics.json").read_text())["protocol"]["frame"] == 256
    rows = read_predictions(out / "predictions.jsonl")
    first = rows[0]  # predicted into the annotation's source, 2008_000001 (60 x 80), box 2,2,75,55
    assert first["src_id"] == "cat/2008_000002.jpg" and first["trg_id"] == "cat/2008_000001.jpg"
    assert first["trg_bbox"] == [2, 2, 75, 55]
    assert first["threshold"] == pytest.approx(max(73 * 256 / 80, 53 * 256 / 60))


def _image_annotations(root: Path) -> None:
    """The released ``ImageAnnotation/<category>/<name>.json`` of the fixture's images: every
    keypoint visible in the image (``kps``: id -> [x, y] or null)."""
    for rel, (_, _, kps) in IMAGES.items():
        path = root / "ImageAnnotation" / Path(rel).with_suffix(".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"kps": {str(i): list(kps[i]) if i in kps else None for i in range(15)}}))


def test_left_right_keys_from_image_annotations(spair_root, tmp_path, caplog):
    assert "trg_sym_vis" not in _dataset(spair_root)[0]  # no ImageAnnotation: no left/right
    assert "no left/right diagnostics" in caplog.text
    _image_annotations(spair_root)
    ds = _dataset(spair_root)
    s = ds[1]  # cat 2008_000002 -> 2008_000001, ids 0..3, keypoint 1 null in the pair file
    assert s["kps_valid"].tolist() == [True, False, True, True]
    # keypoint 0's counterpart 1 is visible in the target image, though not in the pair's list
    assert s["trg_sym_vis"].tolist() == [True, True, True, True]
    assert s["trg_sym_kps"][0].tolist() == [30.0, 12.0] and s["src_sym_kps"][0].tolist() == [40.0, 14.0]
    # cat's geometry-aware groups: [2, 3] and [9, 10, 11, 12]
    assert s["trg_group_vis"].tolist() == [False, False, True, True]
    from semcorr.cli.eval import main as eval_main
    from semcorr.run_data import load_run
    from semcorr.metrics.left_right import left_right_summary

    for proto in ("hpf", "cats"):
        out = tmp_path / proto
        assert eval_main(["data=spair", f"data.root={spair_root}", "data.image_size=64", "backbone=dsift",
                          *QUIET, f"metric.protocol={proto}", f"out_dir={out}"]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        lr = metrics["left_right"]
        assert lr["n"] == metrics["n_keypoints"] == 10
        # pair 0: all four n11; pair 1 as above: 0, 2, 3 n11; dog (an image with itself, ids 0, 1,
        # 2 visible): 0, 1 n11, 2 n10 (its counterpart 3 is not visible); the same both ways
        assert (lr["n11"]["count"], lr["n10"]["count"], lr["n1x"]["count"]) == (9, 1, 0)
        run = load_run(out)
        assert left_right_summary(run.left_right, run.category, run.alphas, run.protocol) == lr


def test_foreground_masks_from_segmentation_else_the_box(spair_root):
    """Pose-Align's masks: the Segmentation/ file's pixels of the category's VOC id where the
    image has one (not the other object's), else the annotated box; in the network frame."""
    ds = _dataset(spair_root)
    assert "src_mask" not in ds[0]
    ds.serve_masks = "auto"
    seg = ds.foreground("cat/2008_000001.jpg", torch.tensor([2.0, 2, 75, 55]), (60, 80))
    assert torch.equal(seg, torch.from_numpy(SEGMENTATION["cat/2008_000001.jpg"] == 8))
    dog = ds.foreground("dog/2009_000003.jpg", torch.tensor([3.0, 4, 62, 40]), (48, 72))
    assert dog.sum() == (62 - 3 + 1) * (40 - 4 + 1) and dog[4, 3] and not dog[3, 3] and not dog[4, 63]
    s = ds[0]
    assert s["src_mask"].shape == (64, 64) and s["src_mask"].dtype == torch.bool
    assert 0 < int(s["src_mask"].sum()) < 64 * 64 and 0 < int(s["trg_mask"].sum())
    ds.serve_masks = "box"
    box = ds.foreground("cat/2008_000001.jpg", torch.tensor([2.0, 2, 75, 55]), (60, 80))
    assert int(box.sum()) == 74 * 54
