"""End-to-end evaluation through the CLI entry point."""

import json

import pytest

from semcorr.cli.eval import main


def test_eval_on_synthetic_writes_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["data.n_pairs.test=6", "data.batch_size=3", "plots.n_pairs=2", f"out_dir={out}",
               "trainer.enable_progress_bar=false", "logger.wandb=false"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "synthetic" and metrics["split"] == "test"
    assert metrics["n_pairs"] == 6 and metrics["n_keypoints"] > 0
    assert metrics["protocol"] == {"threshold_by": "image", "average": "per_image"}
    assert set(metrics["pck"]) == {"0.05", "0.1", "0.15"}
    assert all(0.0 <= v <= 100.0 for v in metrics["pck"].values())
    assert metrics["pck"]["0.05"] <= metrics["pck"]["0.1"] <= metrics["pck"]["0.15"]
    # dense SIFT on mildly warped photographs is far better than chance
    assert metrics["pck"]["0.1"] > 40
    assert set(metrics["pck_per_category"]) <= {"astronaut", "chelsea", "coffee", "rocket", "camera", "coins"}
    timing = metrics["timing"]
    assert timing["pairs_per_s"] > 0 and timing["backbone_ms_per_image"] > 0
    assert timing["match_ms_per_pair"] > 0
    assert metrics["config"]["data"]["n_pairs"]["test"] == 6
    assert (out / "config.yaml").is_file() and (out / "keypoints.png").is_file()
    assert "PCK@0.1" in capsys.readouterr().out


def test_eval_alphas_and_protocol_are_configurable(tmp_path):
    out = tmp_path / "run"
    rc = main(["data.n_pairs.test=2", "metric.alphas=[0.02,0.2]", "metric.average=per_keypoint",
               f"out_dir={out}", "trainer.enable_progress_bar=false", "logger.wandb=false"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["pck"]) == {"0.02", "0.2"}
    assert metrics["protocol"]["average"] == "per_keypoint"


def test_eval_errors_are_one_line(tmp_path, capsys):
    assert main(["data=does_not_exist", f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pf_willow" in err[0] and "synthetic" in err[0]
    assert main(["backbone=dinov2_vitb14", "backbone.weights=timm", f"out_dir={tmp_path}",
                 "logger.wandb=false"]) == 2
    assert "backbone.weights=" in capsys.readouterr().err


def test_print_config_exits_without_running(tmp_path, capsys):
    assert main(["--print-config", "data=pf_willow", f"out_dir={tmp_path / 'x'}"]) == 0
    out = capsys.readouterr().out
    assert "kind: pf_willow" in out and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_eval_pf_willow_subset_with_wandb_offline(tmp_path, pf_willow_root):
    out = tmp_path / "run"
    rc = main(["data=pf_willow", f"data.root={pf_willow_root}", "data.max_pairs=16",
               f"out_dir={out}", "trainer.enable_progress_bar=false", "logger.mode=offline"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_pairs"] == 16 and metrics["protocol"]["threshold_by"] == "bbox_kp"
    assert (out / "wandb").is_dir()


@pytest.mark.slow
def test_eval_runs_an_experiment_preset(tmp_path):
    """The paper's SPair preset end to end (DINOv2-B/14 layout, random weights, GW-OT with the
    symmetry term) on a few small synthetic pairs."""
    out = tmp_path / "run"
    rc = main(["experiment=paper_spair", "data=synthetic", "data.image_size=112", "data.n_pairs.test=2",
               "backbone.weights=none", "matcher.n_steps=5", f"out_dir={out}", "logger.wandb=false",
               "trainer.enable_progress_bar=false", "plots.n_pairs=1"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_pairs"] == 2 and metrics["config"]["experiment"] == "paper_spair"
    assert metrics["config"]["matcher"]["name"] == "gwot_spair"
    assert metrics["config"]["backbone"]["norm"] is False
