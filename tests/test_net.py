"""The pure-torch pipeline (CorrespondenceNet) and the boundary around it: shapes of its output,
the module's steps use it unchanged, figures come from what evaluation computed (no second
forward), and only evaluation is timed."""

import json

import lightning as L
import pytest
import torch

from runs import QUIET, SMALL_DATA
from semcorr.builder import build_run
from semcorr.cli.eval import main as eval_main
from semcorr.cli.train import fit, train_config
from semcorr.data.schema import collate
from semcorr.net import CorrespondenceNet, MatchOutput, StageClock


def _batch(run, n=2):
    return collate([run.dataset[i] for i in range(n)])


def test_forward_returns_the_documented_shapes(make_config):
    run = build_run(make_config("backbone=dsift", "matcher=ot", "matcher.n_steps=3",
                                "data.n_pairs.test=2", "data.image_size=64"))
    net = run.net.eval()
    assert isinstance(net, CorrespondenceNet) and not isinstance(net, L.LightningModule)
    batch = _batch(run)
    out = net(batch)
    assert isinstance(out, MatchOutput)
    b, k = batch["src_kps"].shape[:2]
    (h, w), (h2, w2) = out.src.grid, out.trg.grid
    assert out.src.features.shape[:1] == (b,) and out.src.valid.shape == (b, h, w)
    assert out.scores.shape == (b, h * w, h2 * w2)
    assert out.pred.shape == out.pred_orig.shape == (b, k, 2) and out.score.shape == (b, k)
    # predictions in original pixels are the network-frame ones through the target frame
    sx, sy, ox, oy = batch["trg_frame"][0].tolist()
    expected_x = (out.pred[0, :, 0] - ox + 0.5) / sx - 0.5
    torch.testing.assert_close(out.pred_orig[0, :, 0], expected_x)


def test_the_module_step_is_the_net_plus_the_metric(make_config):
    run = build_run(make_config("backbone=dsift", "data.n_pairs.test=3", "data.image_size=64"))
    batch = _batch(run, 3)
    direct = run.net.eval()(batch)
    step = run.module.eval().test_step(batch, 0)
    torch.testing.assert_close(step["match"].pred_orig, direct.pred_orig, rtol=0, atol=0)
    scores = step["pck"]
    assert scores.correct.shape == (3, batch["src_kps"].shape[1], 3)
    assert run.module.test_metric.compute()["n_pairs"] == 3


def test_stage_clock_sums_per_stage():
    clock = StageClock()
    for _ in range(3):
        with clock.stage("backbone", torch.device("cpu")):
            pass
    assert set(clock.totals()) == {"backbone"} and clock.totals()["backbone"] >= 0


def test_figures_reuse_the_evaluation_and_only_evaluation_is_timed(tmp_path, monkeypatch):
    """With figures on, the net runs once per batch (no second forward for the dense warps), the
    backbone as often as without figures, and the clock exists only during the test epoch."""
    calls = {"forward": 0, "clock_seen": set()}
    original = CorrespondenceNet.forward

    def counting(self, batch, use_cache=None):
        calls["forward"] += 1
        calls["clock_seen"].add(self.clock is not None)
        return original(self, batch, use_cache)

    monkeypatch.setattr(CorrespondenceNet, "forward", counting)
    common = [*QUIET, "backbone=dsift", "data.n_pairs.test=6", "data.batch_size=2",
              "data.image_size=64"]
    assert eval_main([*common, "plots.n_pairs=4", f"out_dir={tmp_path / 'fig'}"]) == 0
    assert calls["forward"] == 3 and calls["clock_seen"] == {True}
    with_figs = json.loads((tmp_path / "fig" / "metrics.json").read_text())
    assert (tmp_path / "fig" / "dense_warp.png").stat().st_size > 5_000
    calls["forward"] = 0
    assert eval_main([*common, "plots.n_pairs=0", f"out_dir={tmp_path / 'nofig'}"]) == 0
    without = json.loads((tmp_path / "nofig" / "metrics.json").read_text())
    assert calls["forward"] == 3
    assert with_figs["timing"]["backbone_calls"] == without["timing"]["backbone_calls"]
    assert with_figs["pck"] == without["pck"]


@pytest.mark.slow
def test_training_steps_are_not_timed(tmp_path, tiny_vit):
    class ClockAbsent(L.Callback):
        seen = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.seen.append(module.net.clock)

    cfg = train_config([*tiny_vit, *SMALL_DATA, *QUIET, "trainer.max_steps=2",
                        "trainer.limit_val_batches=1", "logger.csv=false", f"out_dir={tmp_path}"])
    probe = ClockAbsent()
    fit(cfg, callbacks=[probe])
    assert probe.seen == [None, None]
