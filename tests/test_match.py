"""The match command: points, dense grids, masks, DINOv2 and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from runs import TINY_VIT
from semcorr.cli.match import main, parse_points, read_points_file
from semcorr.errors import InputError
from semcorr.foreground import border_contrast_mask, dense_points



@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random colour texture (distinct SIFT descriptors everywhere)."""
    rng = np.random.default_rng(seed)
    small = rng.random((h // 8 + 2, w // 8 + 2, 3))
    big = np.kron(small, np.ones((8, 8, 1)))[:h, :w]
    noise = rng.random((h, w, 3)) * 0.3
    return (np.clip(0.7 * big + noise, 0, 1) * 255).astype(np.uint8)


def _save(array: np.ndarray, path: Path) -> str:
    Image.fromarray(array).save(path)
    return str(path)


@pytest.fixture()
def shifted_pair(tmp_path):
    """Target = source content moved right by 16 px and down by 8 px (two crops of one photo)."""
    import skimage.data

    big = np.ascontiguousarray(skimage.data.astronaut()[::2, ::2])  # 256 x 256
    src = _save(big[40:168, 40:200].copy(), tmp_path / "src.png")  # 128 x 160
    trg = _save(big[32:160, 24:184].copy(), tmp_path / "trg.png")  # origin moved up-left
    return src, trg, np.array([16.0, 8.0])


def _run(argv, capsys):
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_parse_points_and_files(tmp_path):
    assert parse_points("1,2; 3.5,4").tolist() == [[1.0, 2.0], [3.5, 4.0]]
    (tmp_path / "p.json").write_text(json.dumps({"points": [[5, 6], [7, 8]]}))
    (tmp_path / "p.txt").write_text("# x y\n5 6\n7,8  # second\n\n")
    assert read_points_file(tmp_path / "p.json").tolist() == [[5.0, 6.0], [7.0, 8.0]]
    assert read_points_file(tmp_path / "p.txt").tolist() == [[5.0, 6.0], [7.0, 8.0]]
    for bad in ("1", "1,2,3", "a,b", ";", "nan,1"):
        with pytest.raises(InputError):
            parse_points(bad)


def test_points_transfer_a_shift_with_dsift(shifted_pair, tmp_path, capsys):
    src, trg, shift = shifted_pair
    # cell centres of the 8 px grid (x = 8 c + 3.5): a correct cell match is then exact
    points = np.array([[43.5, 35.5], [83.5, 67.5], [123.5, 91.5], [59.5, 99.5], [27.5, 75.5]])
    text = ";".join(f"{x:g},{y:g}" for x, y in points)
    out = tmp_path / "out"
    # image_size = the source's longer side: no rescaling, so the 8 px grid sees the true shift
    rc, stdout, err = _run([src, trg, "--points", text, "backbone=dsift", "matcher=nn",
                            "data.image_size=160", "data.resize=longer_side", f"out_dir={out}"], capsys)
    assert rc == 0, err
    record = json.loads((out / "matches.json").read_text())
    assert (out / "matches.png").stat().st_size > 10_000 and (out / "config.yaml").is_file()
    assert record["backbone"] == "dsift" and record["matcher"] == "nn" and not record["dense"]
    # (x, y) throughout: points are (x, y), sizes (width, height) of the 160 x 128 image
    assert record["src_size"] == [160, 128] and len(record["matches"]) == 5
    assert "(x, y)" in record["axes"] and "(width, height)" in record["axes"]
    got_src = np.array([m["src"] for m in record["matches"]])
    got_trg = np.array([m["trg"] for m in record["matches"]])
    np.testing.assert_allclose(got_src, points)
    # the true match is src + shift, a whole number of cells: argmax transfer is exact
    err_px = np.abs(got_trg - (points + shift)).max(1)
    assert (err_px < 0.01).all(), err_px
    assert all(0.5 < m["score"] <= 1.0 for m in record["matches"])  # cosine similarities


def test_dense_with_mask_file_and_all(shifted_pair, tmp_path, capsys):
    src, trg, _ = shifted_pair
    mask = np.zeros((128, 160), np.uint8)
    mask[:, :64] = 255  # left 64 px = 8 cells of 8 px
    mask_path = _save(mask, tmp_path / "mask.png")
    common = ["backbone=dsift", "data.image_size=160", "data.resize=longer_side"]
    rc, _, err = _run([src, trg, "--dense", "--mask", mask_path, *common,
                       f"out_dir={tmp_path / 'm'}"], capsys)
    assert rc == 0, err
    pts = np.array([m["src"] for m in json.loads((tmp_path / "m" / "matches.json").read_text())["matches"]])
    assert len(pts) == 16 * 8 and pts[:, 0].max() < 64
    rc, _, err = _run([src, trg, "--dense", "--mask=all", *common, f"out_dir={tmp_path / 'a'}"], capsys)
    assert rc == 0, err
    record = json.loads((tmp_path / "a" / "matches.json").read_text())
    assert record["dense"] and len(record["matches"]) == 16 * 20


def test_border_contrast_finds_the_object():
    image = np.full((96, 128, 3), 200, np.uint8)
    image[30:70, 40:100] = _texture(40, 60, seed=3)
    img = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    fg = border_contrast_mask(img, cell=8)
    assert fg[40:60, 50:90].mean() > 0.95 and fg[:20].mean() == 0 and fg[:, :25].mean() == 0
    pts = dense_points(img, stride=8, image_size=128, resize="longer_side")
    assert len(pts) > 0
    assert (pts[:, 0] > 30).all() and (pts[:, 0] < 110).all() and (pts[:, 1] > 20).all() and (pts[:, 1] < 80).all()
    with pytest.raises(InputError, match="no foreground"):
        dense_points(torch.full((3, 64, 64), 0.5), stride=8, image_size=64, resize="longer_side")


def test_dinov2_random_tiny_vit(shifted_pair, tmp_path, capsys):
    src, trg, _ = shifted_pair
    rc, _, err = _run([src, trg, "--points", "10,10;150,120", *TINY_VIT, "data.image_size=112",
                       f"out_dir={tmp_path / 'v'}"], capsys)
    assert rc == 0, err
    record = json.loads((tmp_path / "v" / "matches.json").read_text())
    trg_pts = np.array([m["trg"] for m in record["matches"]])
    assert record["backbone"] == "dinov2_vits14" and trg_pts.shape == (2, 2)
    assert (trg_pts >= 0).all() and (trg_pts[:, 0] <= 159).all() and (trg_pts[:, 1] <= 127).all()


@pytest.mark.parametrize("case", ["missing", "unreadable", "outside", "too_small", "no_points",
                                  "two_modes", "mask_without_dense", "bad_point", "bad_key"])
def test_bad_inputs_end_with_one_line(case, shifted_pair, tmp_path, capsys):
    src, trg, _ = shifted_pair
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    small = _save(_texture(10, 10), tmp_path / "small.png")
    argv = {
        "missing": [src, str(tmp_path / "nope.png"), "--points", "1,1"],
        "unreadable": [src, str(junk), "--points", "1,1"],
        "outside": [src, trg, "--points", "10,10;160,5"],
        "too_small": [src, small, "--points", "1,1", *TINY_VIT],
        "no_points": [src, trg],
        "two_modes": [src, trg, "--points", "1,1", "--dense"],
        "mask_without_dense": [src, trg, "--points", "1,1", "--mask", "all"],
        "bad_point": [src, trg, "--points", "1;2"],
        "bad_key": [src, trg, "--points", "1,1", "backbone.nope=3"],
    }[case]
    expected = {"missing": "not found", "unreadable": "cannot read image", "outside": "outside",
                "too_small": "smaller than one 14-px patch", "no_points": "exactly one",
                "two_modes": "exactly one", "mask_without_dense": "--mask",
                "bad_point": "cannot parse point", "bad_key": "unknown key"}[case]
    rc, out, err = _run([*argv, f"out_dir={tmp_path / 'o'}"], capsys)
    lines = [line for line in err.splitlines() if line.strip() and " INFO " not in line]
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith("semcorr-match: error:") and expected in lines[0], lines[0]
    assert not (tmp_path / "o" / "matches.json").exists()


@pytest.mark.slow
def test_module_entry_point_reports_without_traceback(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    proc = subprocess.run([sys.executable, "-m", "semcorr.cli.match", str(tmp_path / "a.png"),
                           str(tmp_path / "b.png"), "--points", "1,1"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "image not found" in proc.stderr


def test_match_uses_the_checkpoints_weights(shifted_pair, tmp_path, capsys):
    """``ckpt=RUN`` rebuilds the run's model and loads its weights: a checkpoint whose head differs
    from the initial one changes the predictions, and equals matching with that head directly."""
    import torch

    from semcorr.builder import build_run, config_dict
    from semcorr.config import load_config, save_config
    from semcorr.inference import match_images
    from semcorr.data.base import load_image

    src, trg, _ = shifted_pair
    tokens = ["backbone=dsift", "head=resnet_bottleneck", "matcher=nn", "data.image_size=160",
              "data.resize=longer_side", f"out_dir={tmp_path / 'run'}"]
    cfg = load_config(tokens)
    module = build_run(cfg, stage="predict").module
    torch.manual_seed(3)
    with torch.no_grad():  # a "trained" head: far from the identity it starts as
        for p in module.net.head.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    save_config(cfg, run)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"run_config": config_dict(cfg)}},
               run / "checkpoints" / "last.ckpt")
    points = "43.5,35.5;83.5,67.5;123.5,91.5;59.5,99.5;27.5,75.5;100,50;140,110"

    def matched(*extra):
        out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
        rc, _, err = _run([src, trg, "--points", points, *extra, f"out_dir={out}"], capsys)
        assert rc == 0, err
        return np.array([m["trg"] for m in json.loads((out / "matches.json").read_text())["matches"]])

    initial = matched(*tokens[:-1])
    trained = matched(f"ckpt={run}")
    assert np.abs(initial - trained).max() > 1.0  # the checkpoint's head moved predictions
    direct = match_images(module.net.eval(), load_image(src), load_image(trg), torch.tensor(
        [[float(v) for v in p.split(",")] for p in points.split(";")]), 160, "longer_side")
    np.testing.assert_allclose(trained, direct.trg_points.numpy(), atol=0.01)
