"""A saved run re-runs: ``--config runs/x/config.yaml`` gives the same metrics.json; the saved
config holds every resolved value (data root, protocol, checkpoint file, image size); a
checkpoint's feature settings survive a ``data=`` token unless overridden, and an override is
printed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from runs import QUIET, SMALL_DATA
from semcorr.cli.eval import main as eval_main
from semcorr.cli.match import main as match_main
from semcorr.cli.train import main as train_main

SMALL_EVAL = ["data=synthetic", "data.n_pairs.test=4", "data.image_size=64", "data.n_keypoints=8",
              *QUIET]


def _comparable(metrics: dict) -> dict:
    """metrics.json without what differs between two runs of the same settings: the time taken
    and the output folder."""
    out = {k: v for k, v in metrics.items() if k not in ("timing", "config")}
    config = dict(metrics["config"])
    config.pop("out_dir")
    out["config"] = config
    out["backbone_calls"] = metrics["timing"]["backbone_calls"]
    return out


def _saved(run) -> dict:
    return OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))


def test_eval_rerun_from_saved_config_gives_the_same_metrics(tmp_path):
    first, again = tmp_path / "first", tmp_path / "again"
    assert eval_main([*SMALL_EVAL, "matcher=ot", f"out_dir={first}"]) == 0
    saved = _saved(first)
    assert saved["metric"]["protocol"] == "image"  # the protocol used, not null
    assert eval_main(["--config", str(first / "config.yaml"), f"out_dir={again}"]) == 0
    a = json.loads((first / "metrics.json").read_text())
    b = json.loads((again / "metrics.json").read_text())
    assert _comparable(a) == _comparable(b)
    # the run folder works too, and later tokens override the saved values
    third = tmp_path / "third"
    assert eval_main(["--config", str(first), "metric.alphas=[0.2]", f"out_dir={third}"]) == 0
    c = json.loads((third / "metrics.json").read_text())
    assert list(c["pck"]) == ["0.2"] and c["config"]["matcher"]["name"] == "ot"


def test_a_rerun_writes_a_new_folder_unless_told(tmp_path, monkeypatch):
    from semcorr.cli.common import parse_args, resolve_config

    first = tmp_path / "first"
    assert eval_main([*SMALL_EVAL, f"out_dir={first}", "predictions.enabled=false"]) == 0
    monkeypatch.chdir(tmp_path)
    cfg = resolve_config(parse_args(["--config", str(first / "config.yaml")], "eval.py"))
    assert cfg.out_dir != str(first) and cfg.out_dir.startswith("runs/")


@pytest.mark.slow
@pytest.mark.shared_data
def test_pf_willow_saved_config_names_root_and_protocol_and_reruns(tmp_path, pf_willow_root, monkeypatch):
    """No data.root given: the saved config names the shared copy it read, and the protocol."""
    first, again = tmp_path / "first", tmp_path / "again"
    common = ["data=pf_willow", "data.max_pairs=10", "data.batch_size=5", *QUIET]
    assert eval_main([*common, f"out_dir={first}"]) == 0
    saved = _saved(first)
    assert saved["data"]["root"] == str(pf_willow_root.absolute())
    assert saved["metric"]["protocol"] == "hpf" and saved["data"]["image_size"] == 224
    monkeypatch.setenv("SEMCORR_SHARED_DATA", str(tmp_path / "nowhere"))  # the root is in the file
    assert eval_main(["--config", str(first / "config.yaml"), f"out_dir={again}"]) == 0
    a = json.loads((first / "metrics.json").read_text())
    b = json.loads((again / "metrics.json").read_text())
    assert _comparable(a) == _comparable(b)


def test_print_config_shows_the_resolved_values(capsys, tmp_path):
    from semcorr.paths import shared_data_dir

    assert eval_main(["data=pf_willow", "--print-config", f"out_dir={tmp_path}"]) == 0
    printed = OmegaConf.create(capsys.readouterr().out)
    assert printed.metric.protocol == "hpf"
    shared = shared_data_dir()
    if shared is not None and (shared / "pf-willow").is_dir():
        assert printed.data.root == str((shared / "pf-willow").absolute())
    else:
        assert printed.data.root is None  # nothing to find: the dataset says what to set


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step run of the tiny ViT at 56 px (image_size differs from the data files' 224)."""
    from runs import TINY_VIT

    out = tmp_path_factory.mktemp("trained") / "run"
    assert train_main([*TINY_VIT, *SMALL_DATA, *QUIET, "trainer.max_steps=2",
                       "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0",
                       f"out_dir={out}"]) == 0
    return out


@pytest.mark.slow
def test_checkpoint_eval_keeps_feature_settings_and_names_the_file(trained, tmp_path, caplog):
    out = tmp_path / "ev"
    # data=synthetic would bring the file's 224 px; the checkpoint trained at 56 px keeps it
    assert eval_main([f"ckpt={trained}", "data=synthetic", "data.n_pairs.test=2", *QUIET,
                      f"out_dir={out}"]) == 0
    saved = _saved(out)
    assert saved["data"]["image_size"] == 56
    ckpt = saved["ckpt"]
    assert ckpt.endswith(".ckpt") and Path(ckpt).is_absolute()
    assert Path(ckpt).resolve().parent == (trained / "checkpoints").resolve()
    # re-run from the saved config: the same checkpoint file, the same numbers
    again = tmp_path / "again"
    assert eval_main(["--config", str(out / "config.yaml"), f"out_dir={again}"]) == 0
    a = json.loads((out / "metrics.json").read_text())
    b = json.loads((again / "metrics.json").read_text())
    assert _comparable(a) == _comparable(b)
    # an explicit override wins, and is printed as a warning
    caplog.set_level(logging.WARNING, logger="semcorr")
    from semcorr.cli.common import parse_args, resolve_config

    cfg = resolve_config(parse_args([f"ckpt={trained}", "data=synthetic", "data.image_size=112",
                                     f"out_dir={tmp_path / 'x'}"], "eval.py"))
    assert cfg.data.image_size == 112
    assert any("data.image_size=112 overrides the checkpoint's training-time value 56" in r.getMessage()
               for r in caplog.records)


@pytest.mark.slow
def test_train_rerun_from_saved_config(trained, capsys):
    assert train_main(["--config", str(trained / "config.yaml"), "--print-config"]) == 0
    printed = OmegaConf.to_container(OmegaConf.create(capsys.readouterr().out))
    saved = _saved(trained)
    assert printed.pop("out_dir") != saved.pop("out_dir")
    assert printed == saved


def test_match_rerun_from_saved_config(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    image = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(np.roll(image, 16, axis=1)).save(tmp_path / "b.png")
    first, again = tmp_path / "first", tmp_path / "again"
    args = [str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--points", "40,40;60,50"]
    assert match_main([*args, "backbone=dsift", "matcher=ot", f"out_dir={first}"]) == 0
    assert match_main([*args, "--config", str(first / "config.yaml"), f"out_dir={again}"]) == 0
    a = json.loads((first / "matches.json").read_text())
    b = json.loads((again / "matches.json").read_text())
    assert a == b and a["matcher"] == "ot"


def test_bad_saved_configs_are_one_line_errors(tmp_path, capsys):
    assert eval_main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "saved config not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("just: text\n")
    assert eval_main(["--config", str(bad)]) == 2
    assert "not a saved run config" in capsys.readouterr().err
    assert eval_main(["--config"]) == 2
    assert train_main(["--config", str(bad), "--resume", str(tmp_path)]) == 2
