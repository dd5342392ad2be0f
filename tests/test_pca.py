"""PCA feature maps: the first three principal components of a pair's features, fitted jointly on
both images' foreground, as colours; written by eval (plots.pca) and semcorr-match --pca."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from runs import QUIET
from semcorr.pca import foreground_cells, joint_pca_rgb


def test_joint_pca_colours_follow_the_main_directions():
    """39 fit cells (20 source, 19 target) whose features spread along three orthogonal directions
    with variances 81 : 9 : 1 and no correlation: channel k is the k-th direction, min-max scaled
    over the fit cells of both maps; a cell outside the fit is black."""
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))[0][:, :3].t()  # (3, D)
    raw = torch.randn(39, 3, dtype=torch.float64)
    q = torch.linalg.qr(raw - raw.mean(0))[0]  # zero-mean, uncorrelated columns
    coef = q * torch.tensor([9.0, 3.0, 1.0], dtype=torch.float64)
    feats = coef @ basis + 5.0  # (39, 6)
    src = feats[:20].t().reshape(6, 4, 5).float()
    trg = torch.cat([feats[20:], torch.full((1, 6), 50.0, dtype=torch.float64)]).t().reshape(6, 4, 5).float()
    src_fit = torch.ones(4, 5, dtype=torch.bool)
    trg_fit = torch.ones(4, 5, dtype=torch.bool)
    trg_fit[3, 4] = False  # the outlier cell is not fitted
    a, b = joint_pca_rgb(src, trg, src_fit, trg_fit)
    assert a.shape == (4, 5, 3) and b.shape == (4, 5, 3) and a.dtype == torch.float32
    assert torch.equal(b[3, 4], torch.zeros(3))  # not fitted: black
    fitted = torch.cat([a.reshape(-1, 3), b.reshape(-1, 3)[:-1]])
    assert fitted.min(0).values.tolist() == [0, 0, 0] and fitted.max(0).values.tolist() == [1, 1, 1]
    for k in range(3):  # channel k is an affine function of the k-th coefficient
        corr = np.corrcoef(coef[:, k].numpy(), fitted[:, k].double().numpy())[0, 1]
        assert abs(corr) > 0.99999, (k, corr)
    # deterministic: the same input, the same colours (no sign flip between calls)
    assert torch.equal(joint_pca_rgb(src, trg, src_fit, trg_fit)[0], a)
    # one feature, one colour in both images
    trg2 = trg.clone()
    trg2[:, 0, 0] = src[:, 1, 2]
    a2, b2 = joint_pca_rgb(src, trg2, src_fit, trg_fit)
    assert torch.allclose(a2[1, 2], b2[0, 0])


def test_foreground_cells_find_the_object():
    image = torch.full((3, 64, 64), 0.2)
    image[:, 16:40, 24:48] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    fg = foreground_cells(image, torch.tensor([48, 64]), (8, 8), 8)  # rows 6-7 are padding
    want = torch.zeros(8, 8, dtype=torch.bool)
    want[2:5, 3:6] = True
    assert torch.equal(fg, want)


@pytest.mark.slow
def test_eval_writes_the_pca_figure_and_logs_it(tmp_path, monkeypatch):
    from semcorr.cli.eval import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    tokens = [t for t in QUIET if not t.startswith(("logger.wandb", "plots.n_pairs"))]
    assert main([*tokens, "data.n_pairs.test=3", "data.image_size=96", "plots.n_pairs=2",
                 "plots.pca=true", "plots.dense_warp=false", f"out_dir={out}"]) == 0
    assert (out / "pca.png").stat().st_size > 10_000
    media = [p.name for p in out.glob("wandb/offline-run-*/files/media/images/*.png")]
    assert any(name.startswith("pca") for name in media), media
    assert json.loads((out / "metrics.json").read_text())["config"]["plots"]["pca"] is True
    off = tmp_path / "off"
    assert main([*QUIET, "data.n_pairs.test=1", "data.image_size=64", "plots.n_pairs=1",
                 f"out_dir={off}"]) == 0
    assert (off / "keypoints.png").is_file() and not (off / "pca.png").exists()  # off by default


def test_match_pca_writes_the_figure(tmp_path, capsys):
    from semcorr.cli.match import main

    rng = np.random.default_rng(0)
    paths = []
    for name in ("a.png", "b.png"):
        pixels = np.full((48, 64, 3), 40, dtype=np.uint8)
        pixels[12:36, 16:48] = rng.integers(120, 255, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    out = tmp_path / "out"
    assert main([*paths, "--points", "30,20", "--pca", "backbone=dsift", "data.image_size=64",
                 f"out_dir={out}"]) == 0
    assert (out / "pca.png").stat().st_size > 5_000 and (out / "matches.json").is_file()
    assert "pca.png" in capsys.readouterr().out
