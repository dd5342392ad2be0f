"""Training: fast_dev_run per loss and head, train defaults, frozen blocks, exact resume, and
evaluation of a trained checkpoint through the eval pipeline."""

import json

import lightning as L
import pytest
import torch

from runs import QUIET, SMALL_DATA, TINY_VIT
from semcorr.checkpoint import read_checkpoint
from semcorr.cli import train as train_cli
from semcorr.cli.eval import main as eval_main
from semcorr.builder import build_run
from semcorr.cli.train import fit, train_config

TRAIN_QUIET = ["logger.wandb=false", "logger.csv=false", "trainer.enable_progress_bar=false",
               "trainer.num_sanity_val_steps=0", "trainer.log_every_n_steps=1", "plots.n_pairs=1"]


def tokens(tmp_path, *extra):
    """A tiny run; a ``backbone=...`` in ``extra`` replaces the tiny random ViT."""
    backbone = [] if any(t.startswith("backbone=") for t in extra) else TINY_VIT
    return [*backbone, *SMALL_DATA, *TRAIN_QUIET, f"out_dir={tmp_path}", *extra]


@pytest.mark.parametrize("extra", [
    ["loss=gaussian_ce", "matcher=nn"],
    ["loss=ot_nll", "matcher=gwot", "matcher.grad=checkpoint", "matcher.n_steps=6",
     "matcher.checkpoint_every=3"],
    ["loss=gaussian_ce_ot_nll", "matcher=ot", "matcher.n_steps=10"],
    ["head=resnet_bottleneck", "backbone=dsift"],
    ["head=neighbourhood_consensus", "loss=gaussian_ce_scores", "backbone=dsift"],
    ["head=resnet_bottleneck_nc", "loss=gaussian_ce_scores", "backbone=dsift"],
], ids=["gaussian_ce", "ot_nll_gwot", "combined_ot", "resnet_bottleneck", "nc", "bottleneck_nc"])
def test_fast_dev_run(tmp_path, extra):
    cfg = train_config(tokens(tmp_path, "trainer.fast_dev_run=true", *extra))
    summary = fit(cfg)
    assert summary["global_step"] == 1
    losses = [r["loss"] for r in summary["history"] if r["stage"] == "train"]
    assert len(losses) == 1 and torch.isfinite(torch.tensor(losses)).all()


def test_loss_none_fails_with_one_line(tmp_path, capsys):
    code = train_cli.main(tokens(tmp_path, "loss=none"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "training needs a loss" in err


def test_train_defaults():
    cfg = train_config(["backbone=dinov2_vits14"])
    assert cfg.loss.kind == "gaussian_ce"
    assert cfg.backbone.trainable_blocks == 2
    assert cfg.trainer.gradient_clip_val == 1.0
    cfg = train_config(["backbone=dinov2_vits14", "backbone.trainable_blocks=0", "loss=ot_nll",
                        "trainer.gradient_clip_val=5"])
    assert (cfg.backbone.trainable_blocks, cfg.loss.kind, cfg.trainer.gradient_clip_val) == (0, "ot_nll", 5)
    assert "trainable_blocks" not in train_config(["backbone=dsift"]).backbone  # no blocks to train


class CheckFrozen(L.Callback):
    def __init__(self):
        self.checked = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        vit = module.net.backbone.vit
        assert not vit.patch_embed.training and not vit.blocks[0].training
        assert not vit.blocks[1].training and vit.blocks[2].training
        self.checked += 1


def test_frozen_blocks_do_not_change(tmp_path):
    toks = tokens(tmp_path, "backbone.model_kwargs={depth: 3, embed_dim: 48, num_heads: 2}",
                  "backbone.trainable_blocks=1", "trainer.max_steps=3", "optim.backbone_lr=1e-2",
                  "checkpointing.every_n_steps=1", "trainer.limit_val_batches=1")
    cfg = train_config(toks)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    before = {k: v.clone() for k, v in build_run(cfg, stage="fit").module.state_dict().items()}
    check = CheckFrozen()
    summary = fit(cfg, callbacks=[check])
    after = read_checkpoint(summary["last_checkpoint"])["state_dict"]
    assert check.checked == 3
    prefix = "net.extractor.backbone.vit."
    frozen = [k for k in before if k.startswith((prefix + "blocks.0.", prefix + "blocks.1.",
                                                 prefix + "patch_embed", prefix + "pos_embed"))]
    trained = [k for k in before if k.startswith(prefix + "blocks.2.")]
    assert frozen and trained
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in trained)


class StopAt(L.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path):
    """6 steps (2 epochs of 4 batches) in one go == 3 steps, interrupted, then --resume."""
    common = ["head=resnet_bottleneck", "trainer.max_steps=6", "checkpointing.every_n_steps=1",
              "trainer.limit_val_batches=1", "optim.warmup_steps=2"]
    full = fit(train_config(tokens(tmp_path / "full", *common)))
    cut_dir = tmp_path / "cut"
    part = fit(train_config(tokens(cut_dir, *common)), callbacks=[StopAt(3)])
    assert part["global_step"] == 3
    assert train_cli.main(["--resume", str(cut_dir)]) == 0
    resumed = json.loads((cut_dir / "train_summary.json").read_text())
    assert resumed["global_step"] == full["global_step"] == 6
    a = read_checkpoint(full["last_checkpoint"])
    b = read_checkpoint(resumed["last_checkpoint"])
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"] == 6
    losses = lambda s: [r["loss"] for r in s["history"] if r["stage"] == "train"]  # noqa: E731
    # same batches in the same order, and the resumed run's history is the whole run's
    assert losses(resumed) == losses(full) and losses(resumed)[:3] == losses(part)
    assert [r["step"] for r in resumed["history"]] == [r["step"] for r in full["history"]]


@pytest.mark.slow
def test_eval_of_a_checkpoint_reproduces_validation(tmp_path, capsys):
    run = tmp_path / "run"
    summary = fit(train_config(tokens(run, "head=resnet_bottleneck", "trainer.max_steps=2",
                                      "trainer.val_check_interval=2")))
    assert summary["best_checkpoint"]
    out = tmp_path / "eval"
    assert eval_main([f"ckpt={run}", "data.split=val", f"out_dir={out}", *QUIET]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pck"]["0.1"] == pytest.approx(summary["best_score"], abs=1e-4)
    assert metrics["config"]["head"]["kind"] == "resnet_bottleneck"
