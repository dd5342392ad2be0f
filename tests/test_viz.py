"""Figures and the computations behind them: PCK curves, dense warps, the eval figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from semcorr.metrics import Protocol, pck_scores
from semcorr.metrics.curve import pck_curve
from semcorr.metrics.functional import pck_curve_counts
from semcorr.viz import plot_dense_warps, plot_matches, plot_pck_curves, position_colours
from semcorr.warp import warp_to_source


def test_pck_curve_by_hand():
    # three pairs, L = 100: keypoint distances (0, 9, 30), (4,) and none valid
    gt = torch.zeros(3, 3, 2)
    pred = gt.clone()
    pred[0, :, 0] = torch.tensor([0.0, 9.0, 30.0])
    pred[1, 0, 0] = 4.0
    valid = torch.tensor([[True, True, True], [True, False, False], [False, False, False]])
    box = torch.tensor([[0.0, 0.0, 100.0, 10.0]]).repeat(3, 1)
    alphas = [0.0, 0.05, 0.1, 0.2]
    scores = pck_scores(Protocol(), alphas, pred, gt, valid, box)
    counts, n_valid = pck_curve_counts(scores, alphas), valid.sum(1)
    assert counts.tolist() == [[1, 1, 2, 2], [0, 1, 1, 1], [0, 0, 0, 0]]
    _, per_image = pck_curve(counts, n_valid, alphas, average="per_image")
    # pair 1: 1/3, 1/3, 2/3, 2/3; pair 2: 0, 1, 1, 1; the empty pair is skipped
    np.testing.assert_allclose(per_image, 100 * np.array([1 / 6, 2 / 3, 5 / 6, 5 / 6]))
    _, per_kp = pck_curve(counts, n_valid, alphas, average="per_keypoint")
    np.testing.assert_allclose(per_kp, [25.0, 50.0, 75.0, 75.0])
    assert np.isnan(pck_curve(torch.zeros(0, 1), torch.zeros(0), [0.1])[1]).all()
    with pytest.raises(ValueError):
        pck_curve(counts, n_valid, alphas, average="mean")


def _scores_for_shift(grid, dc, dr):
    """Scores whose row argmax maps source cell (r, c) to target cell (r + dr, c + dc)."""
    h, w = grid
    idx = torch.arange(h * w)
    r, c = idx // w, idx % w
    tgt = (r + dr).clamp(0, h - 1) * w + (c + dc).clamp(0, w - 1)
    scores = torch.full((h * w, h * w), -1.0)
    scores[idx, tgt] = 1.0
    return scores


def test_warp_to_source_identity_and_shift():
    image = torch.rand(3, 32, 48)
    warped = warp_to_source(image, _scores_for_shift((4, 6), 0, 0), (4, 6), 8, (4, 6), 8, (32, 48))
    torch.testing.assert_close(warped, image)
    # every source cell reads the target one cell to the right: the warp is a 8 px shift left
    warped = warp_to_source(image, _scores_for_shift((4, 6), 1, 0), (4, 6), 8, (4, 6), 8, (32, 48))
    torch.testing.assert_close(warped[:, :, :40], image[:, :, 8:])
    # a source row with no finite score (padding) stays black
    scores = _scores_for_shift((4, 6), 0, 0)
    scores[0] = float("-inf")
    assert warp_to_source(image, scores, (4, 6), 8, (4, 6), 8, (32, 48))[:, :8, :8].abs().sum() == 0


def test_position_colours_distinguish_positions():
    colours = position_colours(np.array([[0, 0], [99, 0], [0, 49], [99, 49], [49.5, 24.5]]), 50, 100)
    assert colours.shape == (5, 3) and (colours >= 0).all() and (colours <= 1).all()
    assert len({tuple(np.round(c, 3)) for c in colours}) == 5


def test_plots_write_files(tmp_path):
    src, trg = torch.rand(3, 40, 60), torch.rand(3, 50, 50)
    pts = np.array([[5.0, 5.0], [30.0, 20.0]])
    assert plot_matches(src, trg, pts, pts + 1, tmp_path / "m.png", scores=[0.5, 0.7]).stat().st_size > 0
    assert plot_dense_warps(src, trg, {"nn": src}, tmp_path / "w.png").is_file()
    metrics = {"pck_curve": {"alphas": [0, 0.1, 0.2], "pck": [0, 50, 80]}}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(metrics))
    path = plot_pck_curves({"a": metrics, "b": tmp_path / "run", "c": ([0, 0.2], [0, 100])},
                           tmp_path / "c.png")
    assert path.is_file()
    with pytest.raises(ValueError, match="pck_curve"):
        plot_pck_curves({"old": {"pck": {"0.1": 50}}}, tmp_path / "d.png")


@pytest.mark.slow
def test_eval_writes_figures_and_curve(tmp_path, monkeypatch):
    """eval.py on 4 synthetic pairs: the curve matches the PCK metric at its alphas, every figure
    is written and logged to (offline) W&B, and plots.warp_compare adds a matcher."""
    from semcorr.cli.eval import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    rc = main(["data.max_pairs=4", "data.batch_size=2", "plots.n_pairs=2", "metric.alphas=[0.05,0.1]",
               "plots.warp_compare=[nn]", "trainer.enable_progress_bar=false", f"out_dir={out}"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    curve = metrics["pck_curve"]
    assert curve["n_pairs"] == 4 and curve["alphas"][0] == 0 and curve["alphas"][-1] == pytest.approx(0.2)
    for alpha, value in metrics["pck"].items():  # the same rule: the same value at alpha
        i = int(np.argmin(np.abs(np.array(curve["alphas"]) - float(alpha))))
        assert curve["pck"][i] == value
    assert np.all(np.diff(curve["pck"]) >= 0)
    for name in ("keypoints", "pck_curve", "dense_warp"):
        assert (out / f"{name}.png").stat().st_size > 5_000
    media = list(out.glob("wandb/offline-run-*/files/media/images/*.png"))
    assert {p.name.split("_")[0] for p in media} >= {"keypoints", "pck", "dense"}


def test_matches_are_legible_on_any_background_and_linked_to_ground_truth():
    """Every prediction (correct ones too) is linked to its ground truth; lines and markers carry a
    black outline; ground truth is a white cross with a black edge (visible on white and black)."""
    from matplotlib.figure import Figure

    from semcorr import viz

    for background in (0.0, 1.0):
        image = torch.full((3, 40, 50), background)
        fig = Figure()
        ax = fig.subplots()
        src = np.array([[5.0, 5.0], [20.0, 30.0], [40.0, 10.0]])
        pred = src + 1.0
        gt = src + np.array([[0.5, 0.5], [8.0, 0.0], [0.0, 9.0]])
        viz.draw_matches(ax, image, image, src, pred, gt, np.array([True, False, False]), legend=True)
        lines = ax.get_lines()
        links = [l for l in lines if l.get_linestyle() == "--"]
        assert len(links) == 3  # one per match, the correct one included
        crosses = [l for l in lines if l.get_marker() == "X"]
        assert len(crosses) == 3 and all(l.get_markerfacecolor() == "white" and l.get_markeredgecolor() == "black"
                                         for l in crosses)
        drawn = [l for l in lines if l.get_linestyle() in ("-", "--")]
        assert all(l.get_path_effects() for l in drawn)  # outlined
        dots = [l for l in lines if l.get_marker() == "o"]
        assert dots and all(l.get_markeredgecolor() == "black" for l in dots)


def test_dense_warp_figures_say_what_is_warped_into_what(tmp_path):
    from semcorr import viz

    image = torch.rand(3, 32, 32)
    fig = viz.plot_dense_warps(image, image, {"nn": image})
    titles = [ax.get_title() for ax in fig.axes]
    assert "target warped into the source\nframe by nn" in titles
    assert any("target image carried into the source frame" in t.get_text() for t in fig.texts)
