"""Distributed runs (Lightning DDP on CPU, gloo): two processes evaluate exactly what one does,
train and resume; and the pieces that make it so (shards, exact PCK sums, one out_dir, the
Trainer arguments, resume checks).

The two-process tests start the CLI as a user would (``python eval.py ... trainer.devices=2
trainer.strategy=ddp``), so Lightning re-launches the command line as a second process.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from semcorr.cli.common import trainer_kwargs
from semcorr.cli.eval import main as eval_main
from semcorr.cli.train import main as train_main
from semcorr.config import load_config
from semcorr.data.samplers import EpochShuffleSampler, ShardSampler
from semcorr.distributed import DEFAULT_OUT_DIR_ENV, launch_out_dir, launch_rank_is_zero
from semcorr.metrics import PCK, Protocol
from semcorr.resume import read_resume_point

ROOT = Path(__file__).resolve().parents[1]
# 7 pairs: odd, so a padding sampler would score one pair twice under two processes
EVAL = ["data=synthetic", "data.image_size=64", "data.n_pairs.test=7", "data.batch_size=2",
        "backbone=dsift", "matcher=nn", "logger.wandb=false", "trainer.enable_progress_bar=false",
        "plots.n_pairs=3", "plots.dense_warp=false", "trainer.accelerator=cpu"]
DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]
RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS",
             "SLURM_STEP_ID", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", "JSM_NAMESPACE_RANK",
             "MASTER_ADDR", "MASTER_PORT", DEFAULT_OUT_DIR_ENV)


def cli(script, args, cwd, timeout=240):
    """Run ``python <script> args`` in ``cwd`` as a user would (a fresh process, clean rank env)."""
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="offline", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def comparable(metrics):
    """metrics.json without what legitimately differs: the config (devices, out_dir) and timing."""
    return {k: v for k, v in metrics.items() if k not in ("config", "timing")}


# ------------------------------------------------------------------ two processes, end to end
@pytest.mark.slow
def test_two_processes_evaluate_exactly_like_one(tmp_path):
    one = tmp_path / "one"
    assert eval_main([*EVAL, f"out_dir={one}"]) == 0
    # no out_dir: the default runs/<timestamp> must be one folder for both processes
    done = cli("eval.py", [*EVAL, *DDP], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs
    two = json.loads((runs[0] / "metrics.json").read_text())
    ref = json.loads((one / "metrics.json").read_text())
    assert two["n_pairs"] == ref["n_pairs"] == 7
    assert comparable(two) == comparable(ref)  # bit-identical PCK, per category, curve, counts
    assert two["timing"]["processes"] == 2 and ref["timing"]["processes"] == 1
    assert two["timing"]["backbone_calls"] >= ref["timing"]["distinct_images"]
    assert (runs[0] / "config.yaml").is_file() and (runs[0] / "keypoints.png").is_file()
    assert done.stdout.count("PCK@0.05") == 1  # one table, from rank 0


@pytest.mark.slow
def test_two_processes_train_and_resume(tmp_path, capsys):
    """Learnable GW-OT whose symmetry weight gets no gradient (no symmetric keypoints in the
    synthetic data: DDP needs find_unused_parameters), stopped part-way into an epoch and resumed
    on two processes; resuming it on one is refused in one line."""
    run = tmp_path / "run"
    tokens = ["backbone=dsift", "matcher=gwot", "matcher.learnable=true", "matcher.lam_sym=0.5",
              "matcher.n_steps=4", "loss=ot_nll", "data=synthetic", "data.image_size=64",
              "data.batch_size=2", "data.n_pairs.train=12", "data.n_pairs.val=5",
              "data.n_keypoints=8", "logger.wandb=false", "trainer.enable_progress_bar=false",
              "trainer.num_sanity_val_steps=0", "plots.n_pairs=1", "optim.scheduler=constant",
              "checkpointing.every_n_steps=1", *DDP, f"out_dir={run}"]
    # 12 pairs / 2 processes / batches of 2 = 3 steps an epoch: step 2 is mid-epoch
    first = cli("train.py", [*tokens, "trainer.max_steps=2"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["callbacks"]["ResumeDataOrder"]["world_size"] == 2
    # refused before any process starts, so it can run in this one
    assert train_main(["--resume", str(run), "trainer.devices=1", "trainer.max_steps=4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "part-way into epoch 0 by 2 process(es)" in err[0], err
    again = cli("train.py", ["--resume", str(run), "trainer.max_steps=4"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["global_step"] == 4 and summary["processes"] == 2
    # a resumed run's history is the whole run's (the steps before the cut come from the checkpoint)
    assert [r["step"] for r in summary["history"] if r["stage"] == "train"] == [1, 2, 3, 4]
    val = [r for r in summary["history"] if r["stage"] == "val"]  # epoch end at step 3: 5 val pairs
    assert len(val) == 1 and val[0]["step"] == 3 and summary["best_score"] is not None
    assert again.stdout.count("trained 4 steps") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# ------------------------------------------------------------------ the pieces
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_partition_the_pairs(world):
    for n in range(world, 12):
        shards = [list(ShardSampler(n, r, world)) for r in range(world)]
        assert sorted(i for s in shards for i in s) == list(range(n))
        assert [len(ShardSampler(n, r, world)) for r in range(world)] == [len(s) for s in shards]


def test_training_shards_are_equal_and_resumable():
    one = EpochShuffleSampler(7, seed=3)
    ranks = [EpochShuffleSampler(7, seed=3, rank=r, world_size=2) for r in range(2)]
    full = one.order(1)
    assert [len(s) for s in ranks] == [4, 4]  # padded: both ranks run the same number of steps
    assert ranks[0].order(1) == full[0::2] and ranks[1].order(1) == full[1::2] + full[:1]
    ranks[1].position = lambda: (1, 2)  # resumed after one batch of 2 in epoch 1
    assert list(ranks[1]) == ranks[1].order(1)[2:]
    assert len(one) == 7 and list(one) == one.order(0)


def test_pck_is_the_same_bits_however_the_pairs_are_split():
    torch.manual_seed(0)
    b, k = 40, 7
    gt = torch.rand(b, k, 2) * 100
    pred = gt + torch.randn(b, k, 2) * 8
    valid = torch.rand(b, k) > 0.3
    cat = torch.randint(0, 3, (b,))
    args = dict(alphas=(0.05, 0.1, 0.15), protocol=Protocol(threshold_by="bbox_kp"),
                categories=("a", "b", "c"))

    def run(*parts):
        metrics = []
        for part in parts:
            m = PCK(**args)
            for chunk in torch.split(torch.as_tensor(part), 3):
                m.update(pred[chunk], gt[chunk], valid[chunk], cat[chunk])
            metrics.append(m)
        total = metrics[0]
        for m in metrics[1:]:  # what the all-reduce of sum states does
            for name in ("kp_correct", "kp_total", "img_pck_sum", "img_count"):
                setattr(total, name, getattr(total, name) + getattr(m, name))
        return total.compute()

    one = run(list(range(b)))
    assert run(list(range(0, b, 2)), list(range(1, b, 2))) == one
    assert run(list(range(1, b, 3)), list(range(2, b, 3)), list(range(0, b, 3))[::-1]) == one


def test_trainer_arguments_pass_through():
    cfg = load_config(["trainer.strategy=ddp", "trainer.num_nodes=2", "trainer.devices=4",
                       "trainer.sync_batchnorm=true", "trainer.profiler=simple",
                       "trainer.max_steps=7", "trainer.accelerator=cpu"])
    test = trainer_kwargs(cfg, "test")
    assert {k: test[k] for k in ("strategy", "num_nodes", "devices", "sync_batchnorm", "profiler")} == {
        "strategy": "ddp", "num_nodes": 2, "devices": 4, "sync_batchnorm": True, "profiler": "simple"}
    assert "max_steps" not in test and test["use_distributed_sampler"] is False
    assert trainer_kwargs(cfg, "fit")["max_steps"] == 7

    from lightning.pytorch.strategies import DDPStrategy

    from semcorr.builder import build_run

    gwot = load_config(["trainer.strategy=ddp", "matcher=gwot", "matcher.learnable=true",
                        "loss=ot_nll", "data.image_size=32"])
    strategy = trainer_kwargs(gwot, "fit", build_run(gwot, "fit").module)["strategy"]
    assert isinstance(strategy, DDPStrategy) and strategy._ddp_kwargs["find_unused_parameters"]
    nn = load_config(["trainer.strategy=ddp", "loss=gaussian_ce", "head=resnet_bottleneck",
                      "data.image_size=32"])
    assert trainer_kwargs(nn, "fit", build_run(nn, "fit").module)["strategy"] == "ddp"


def test_one_default_out_dir_per_launch(monkeypatch):
    for key in RANK_VARS:
        monkeypatch.delenv(key, raising=False)
    assert launch_out_dir() is None and launch_rank_is_zero()
    assert load_config([]).out_dir.startswith("runs/")
    monkeypatch.setenv(DEFAULT_OUT_DIR_ENV, "runs/chosen-by-rank-0")
    assert load_config([]).out_dir == "runs/chosen-by-rank-0"
    assert load_config(["out_dir=mine"]).out_dir == "mine"
    monkeypatch.delenv(DEFAULT_OUT_DIR_ENV)
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_PROCID", "5")
    assert launch_out_dir() == "runs/slurm-123.0" and not launch_rank_is_zero()
    for key in ("SLURM_NTASKS", "SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_PROCID"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launch_out_dir() == "runs/torchrun-abc" and not launch_rank_is_zero()


def test_resume_with_another_number_of_processes(tmp_path):
    (tmp_path / "config.yaml").write_text("seed: 0\n")

    def ckpt(world, ready, last):
        path = tmp_path / "checkpoints" / f"{world}-{ready}-{last}.ckpt"
        path.parent.mkdir(exist_ok=True)
        torch.save({"epoch": 1, "global_step": 3, "optimizer_states": [], "state_dict": {},
                    "callbacks": {"ResumeDataOrder": {"world_size": world}},
                    "loops": {"fit_loop": {"epoch_loop.batch_progress": {
                        "current": {"ready": ready, "completed": max(ready - 1, 0)},
                        "is_last_batch": last}}}}, path)
        return read_resume_point(path)

    ckpt(2, 3, False).check_world_size(2)  # same number: exact
    ckpt(2, 3, True).check_world_size(1)  # at an epoch's end: any number
    with pytest.raises(ValueError, match="part-way into epoch 1 by 2 process"):
        ckpt(2, 1, False).check_world_size(4)


def test_sweep_is_one_process_and_runs_cells_as_processes(tmp_path, monkeypatch, capsys):
    from semcorr.cli.sweep import SweepSpec, command, main

    spec = SweepSpec(name="x", launcher=["srun", "--ntasks=4"])
    assert command(spec, "train", ["a=1"]) == ["srun", "--ntasks=4", sys.executable, "-m",
                                               "semcorr.cli.train", "a=1"]
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert main(["synthetic_matcher_x_head", f"out_dir={tmp_path}"]) == 2
    assert "one process" in capsys.readouterr().err
