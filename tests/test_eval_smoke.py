"""End-to-end evaluation through the CLI entry point."""

import json

import numpy as np
import pytest

from runs import QUIET
from semcorr.builder import build_run
from semcorr.cli.eval import main
from semcorr.config import load_config
from semcorr.figures import prediction_table
from semcorr.metrics import Protocol
from semcorr.predictions import pck_from_predictions, read_predictions


def test_eval_on_synthetic_writes_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["data.n_pairs.test=6", "data.batch_size=3", "plots.n_pairs=2", f"out_dir={out}",
               "trainer.enable_progress_bar=false", "logger.wandb=false"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "synthetic" and metrics["split"] == "test"
    assert metrics["n_pairs"] == 6 and metrics["n_keypoints"] > 0
    proto = metrics["protocol"]
    assert proto["name"] == "image" and proto["threshold_by"] == "image"
    assert proto["average"] == "per_image" and proto["direction"] == "src_to_trg"
    assert proto["strict"] is False and proto["frame"] is None and "overrides" not in proto
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
    rc = main([*QUIET, "data.n_pairs.test=2", "metric.alphas=[0.02,0.2]", "metric.average=per_keypoint",
               f"out_dir={out}"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["pck"]) == {"0.02", "0.2"}
    assert metrics["protocol"]["average"] == "per_keypoint"
    assert metrics["protocol"]["overrides"] == ["average"]


@pytest.mark.parametrize("average", ["per_image", "per_keypoint"])
def test_predictions_jsonl_reproduces_metrics(tmp_path, average):
    """PCK recomputed from predictions.jsonl equals metrics.json: overall, per category, both
    averages and the category mean."""
    out = tmp_path / "run"
    rc = main(["data.n_pairs.test=7", "data.batch_size=3", "plots.n_pairs=0", f"out_dir={out}",
               f"metric.average={average}", "trainer.enable_progress_bar=false", "logger.wandb=false"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    rows = read_predictions(out / "predictions.jsonl")
    assert [r["index"] for r in rows] == list(range(7))
    required = {"pair_id", "category", "src_id", "trg_id", "src_kps", "trg_kps", "pred", "valid",
                "threshold", "correct"}
    assert all(required <= set(r) for r in rows)
    for r in rows:
        k = len(r["valid"])
        assert len(r["src_kps"]) == len(r["trg_kps"]) == len(r["pred"]) == k
        assert set(r["correct"]) == {"0.05", "0.1", "0.15"}
        for alpha, flags in r["correct"].items():
            assert len(flags) == k and sum(flags) == r["n_correct"][alpha]
            assert not any(f and not v for f, v in zip(flags, r["valid"]))
            # the flags follow from the written coordinates, by the PCK rule in plain Python
            for f, v, p, g in zip(flags, r["valid"], r["pred"], r["trg_kps"]):
                dx, dy = p[0] - g[0], p[1] - g[1]
                radius = float(alpha) * r["threshold"]
                assert f == (v and dx * dx + dy * dy <= radius * radius)
        assert r["n_valid"] == sum(r["valid"])
    # recomputed from the file's coordinates alone: metrics.json to the last bit
    again = pck_from_predictions(rows, Protocol.from_dict(metrics["protocol"]))
    for key in ("pck", "pck_pooled", "pck_category_mean", "pck_per_image", "pck_per_keypoint",
                "pck_per_category", "n_pairs", "n_keypoints"):
        assert again[key] == metrics[key], key


def test_strict_threshold_is_selectable(tmp_path):
    out = tmp_path / "run"
    rc = main(["data.n_pairs.test=2", "metric.strict=true", "plots.n_pairs=0", f"out_dir={out}",
               "trainer.enable_progress_bar=false", "logger.wandb=false"])
    assert rc == 0
    proto = json.loads((out / "metrics.json").read_text())["protocol"]
    assert proto["strict"] is True and proto["overrides"] == ["strict"]
    assert main(["metric.protocol=ncnet", f"out_dir={tmp_path / 'x'}", "logger.wandb=false"]) == 2


def test_wandb_table_of_predictions(tmp_path, make_config):
    out = tmp_path / "run"
    rc = main(["data.n_pairs.test=3", "plots.n_pairs=0", "logger.table_pairs=2", f"out_dir={out}",
               "trainer.enable_progress_bar=false", "logger.mode=offline"])
    assert rc == 0
    tables = list((out / "wandb").glob("offline-run-*/files/media/table/predictions_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"][-1] == "thumbnail" and "correct" in table["columns"]
    assert len(table["data"]) == 2 and all(row[-1] == "Image" for row in table["data"])
    # the cells: the rows' values (lists as JSON text) and an RGB thumbnail per pair
    rows = read_predictions(out / "predictions.jsonl")
    dataset = build_run(make_config("data.n_pairs.test=3")).dataset
    columns, data = prediction_table(rows, dataset.read_image, 2, 0.1, Protocol(threshold_by="image"))
    assert columns == table["columns"] and len(data) == 2
    assert json.loads(data[0][columns.index("correct")]) == rows[0]["correct"]
    thumb = data[1][-1]
    assert thumb.dtype == np.uint8 and thumb.ndim == 3 and thumb.shape[2] == 3 and thumb.std() > 0


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
    # metric.protocol=null: the preset names SPair's protocol (hpf), which synthetic data has not
    rc = main(["experiment=paper_spair", "data=synthetic", "metric.protocol=null", "data.image_size=112",
               "data.n_pairs.test=2",
               "backbone.weights=none", "matcher.n_steps=5", f"out_dir={out}", *QUIET])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_pairs"] == 2 and metrics["config"]["experiment"] == "paper_spair"
    assert metrics["config"]["matcher"]["name"] == "gwot_spair"
    assert metrics["config"]["backbone"]["norm"] is False


def test_a_rerun_in_the_same_folder_leaves_no_stale_predictions(tmp_path):
    out = tmp_path / "run"
    common = ["data.n_pairs.test=2", "plots.n_pairs=0", f"out_dir={out}", "trainer.enable_progress_bar=false",
              "logger.wandb=false"]
    assert main(common) == 0 and (out / "predictions.jsonl").is_file()
    # without --overwrite the folder of a finished run is refused (docs/errors.md: out-dir-has-results)
    assert main([*common, "predictions.enabled=false"]) == 2
    assert main([*common, "predictions.enabled=false", "--overwrite"]) == 0
    assert (out / "metrics.json").is_file() and not (out / "predictions.jsonl").exists()


def test_thumbnails_are_drawn_only_for_wandb(tmp_path, monkeypatch):
    import semcorr.cli.eval as eval_cli

    drawn = []
    monkeypatch.setattr(eval_cli, "prediction_table", lambda *a, **k: drawn.append(1) or ([], []))
    assert main(["data.n_pairs.test=2", "plots.n_pairs=0", f"out_dir={tmp_path / 'run'}",
                 "trainer.enable_progress_bar=false", "logger.wandb=false", "logger.table_pairs=4"]) == 0
    assert drawn == []  # CSV logger only: no W&B table, so no thumbnails
