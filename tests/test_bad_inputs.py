"""Bad input on purpose: every command answers a user error with rc 2 and one line naming the
problem, no traceback, and leaves nothing a later run would trust (no metrics.json, no
checkpoint; for errors found before the run starts, no out_dir at all).

The cases are the rows of ``docs/errors.md``: each row's id names a case here (or, for what is not
a command-line error, a test elsewhere, see ``OTHER_TESTS``), and the row's first code span is
text the error line must contain, so the table stays true.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import pytest
import scipy.io
from PIL import Image

from runs import TINY_VIT
from semcorr.cli import eval as eval_cli
from semcorr.cli import features as features_cli
from semcorr.cli import match as match_cli
from semcorr.cli import sweep as sweep_cli
from semcorr.cli import train as train_cli
from semcorr.config import load_config, save_config

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "errors.md"
QUIET = ["logger.wandb=false", "trainer.enable_progress_bar=false",
         "plots.n_pairs=0"]
TRAIN = [*TINY_VIT, "backbone.model_kwargs={depth: 2, embed_dim: 32, num_heads: 2}", "data.image_size=56", "data.batch_size=2", "data.n_pairs.train=4",
         "data.n_pairs.val=2", "logger.wandb=false", "trainer.enable_progress_bar=false"]
# a folder root cannot create, even as root: sysfs refuses new entries (EPERM)
UNWRITABLE = "/sys/semcorr-test-out"

# rows of docs/errors.md that are not command-line cases: id -> the test that keeps them true
OTHER_TESTS = {
    "stale-last-ckpt": "test_robustness.py::test_resumed_logs_are_the_whole_runs_and_last_ckpt_is_final",
    "resume-history": "test_robustness.py::test_resumed_logs_are_the_whole_runs_and_last_ckpt_is_final",
    "nan-feature": "test_robustness.py::test_non_finite_features_are_refused_naming_the_image",
    "nan-plan": "test_robustness.py::test_a_non_finite_plan_is_refused_naming_the_pair",
    "nan-loss": "test_robustness.py::test_losses_propagate_non_finite_plans",
    "diverged": "test_robustness.py::test_diverged_training_stops_marks_wandb_failed_and_the_summary",
    "wandb-failed": "test_robustness.py::test_diverged_training_stops_marks_wandb_failed_and_the_summary",
    "loader-files": "test_robustness.py::test_every_loaders_bad_annotation_file_is_named",
    "huge-image": "test_robustness.py::test_match_decodes_a_huge_jpeg_small_and_answers_in_original_pixels",
    "train-help": "test_bad_inputs.py::test_train_help_mentions_resume",
    "slow-rate": "test_bad_inputs.py::test_rate_unit_for_slow_runs",
    "compare-pairs": "test_compare.py::test_compare_refuses_what_cannot_be_paired",
    "compare-protocols": "test_compare.py::test_compare_refuses_what_cannot_be_paired",
    "precomputed-bad-file": "test_precomputed.py::test_a_bad_file_found_during_a_run_is_one_line",
    "precomputed-file-checks": "test_precomputed.py::test_every_file_is_checked",
    "precomputed-augment": "test_precomputed.py::test_training_with_augmentation_is_refused",
    "precomputed-mirror-padded": "test_precomputed.py::test_mirrored_files_and_the_mirror_rule",
    # issue 24: signals, disks, run folders, annotations, caches (tests/test_faults.py)
    **{case: f"test_faults.py::{name}" for case, name in {
        "matcher-alone-nan": "test_ot_matchers_alone_refuse_non_finite_features_naming_the_cells",
        "sigterm-train": "test_a_signalled_training_exits_non_zero_and_says_interrupted",
        "sigint-train": "test_a_signalled_training_exits_non_zero_and_says_interrupted",
        "sigterm-eval": "test_a_signalled_evaluation_exits_143_without_metrics",
        "sigterm-sweep": "test_a_signalled_sweep_never_marks_the_cell_done",
        "sweep-run-killed": "test_a_run_killed_by_a_signal_is_interrupted_not_done",
        "bad-pairs-skip": "test_bad_pairs_are_left_out_counted_and_empty_pairs_reported",
        "threshold-positive": "test_a_threshold_is_never_zero_or_negative",
        "json-strict": "test_json_is_never_nan_or_infinity",
        "ckpt-unfinished": "test_eval_of_an_unfinished_run_warns_which_step",
        "cache-edited": "test_an_edited_cache_file_is_recomputed_not_used",
        "full-disk-checkpoint": "test_training_on_a_filling_disk_keeps_last_ckpt_and_resumes",
        "killed-mid-save": "test_a_save_killed_mid_write_leaves_the_previous_checkpoint",
        "full-disk-write": "test_a_full_disk_keeps_the_previous_file",
        "out-dir-unique": "test_default_out_dirs_are_unique_within_a_second_and_across_processes",
        "out-dir-in-use": "test_a_folder_in_use_is_refused_and_free_once_its_run_dies",
        "out-dir-has-results": "test_an_out_dir_with_results_needs_overwrite",
        "resume-moved": "test_resume_of_a_moved_or_copied_run_continues_where_it_now_is",
        "resume-changes": "test_resume_refuses_settings_that_break_exactness",
        "resume-out-dir": "test_resume_refuses_settings_that_break_exactness",
        "out-dir-full": "test_a_full_disk_under_out_dir_is_one_line",
        "cache-unwritable": "test_a_cache_that_cannot_be_written_warns_once_and_the_run_goes_on",
        "half-precision-eval": "test_eval_runs_in_half_precision",
        "cache-slice": "test_cache_entries_hold_only_their_own_slice",
    }.items()},
}


# ------------------------------------------------------------------------------------------------
# the table
# ------------------------------------------------------------------------------------------------
def doc_rows() -> Dict[str, Tuple[str, str]]:
    """id -> (input, what semcorr does) of every row of the table in docs/errors.md."""
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\|\s*`([a-z0-9-]+)`\s*\|(.*)\|(.*)\|\s*$", line)
        if m:
            rows[m.group(1)] = (m.group(2).strip(), m.group(3).strip())
    return rows


def expected_text(case: str) -> str:
    """The first code span of the row's "what semcorr does" cell, with ``<tmp>`` for the test
    folder's paths."""
    spans = re.findall(r"`([^`]+)`", doc_rows()[case][1])
    assert spans, f"docs/errors.md row {case} quotes no error text"
    return spans[0]


# ------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------
def willow_root(tmp: Path) -> Path:
    """A two-image PF-WILLOW in its released layout (PNG + .mat with pts_coord, 1-based)."""
    folder = tmp / "willow" / "PF-dataset-WILLOW" / "car(G)"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"{name}.png")
        scipy.io.savemat(folder / f"{name}.mat", {"pts_coord": rng.uniform(5, 40, (2, 10))})
    return tmp / "willow"


def truncated_willow(tmp: Path, size: int) -> List[str]:
    root = willow_root(tmp)
    mat = root / "PF-dataset-WILLOW" / "car(G)" / "a.mat"
    mat.write_bytes(mat.read_bytes()[:size])
    return ["data=pf_willow", f"data.root={root}", "backbone=dsift"]


def images(tmp: Path) -> List[str]:
    rng = np.random.default_rng(1)
    paths = []
    for name in ("src.png", "trg.png"):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(tmp / name)
        paths.append(str(tmp / name))
    return [*paths, "--points", "8,8", "backbone=dsift"]


def sweep_file(tmp: Path) -> List[str]:
    path = tmp / "tiny.yaml"
    path.write_text("mode: eval\nbase: [data=synthetic, backbone=dsift, data.image_size=64, "
                    "data.n_pairs.test=2, logger.wandb=false]\ngrid: {matcher: [nn]}\n")
    return [str(path)]


def a_file(tmp: Path, name: str = "file.txt") -> Path:
    path = tmp / name
    path.write_text("I am a file, not a folder\n")
    return path


def garbage_resume(tmp: Path) -> List[str]:
    run = tmp / "run"
    (run / "checkpoints").mkdir(parents=True)
    save_config(load_config(TRAIN), run)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint" * 20)
    return ["--resume", str(run)]


def png_file(tmp: Path) -> Path:
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp / "picture.png")
    return tmp / "picture.png"


def garbage_weights(tmp: Path) -> Path:
    path = tmp / "dinov2_vits14_pretrain.pth"
    path.write_bytes(b"\x80\x02garbage" * 20)
    return path


def feature_folder(tmp: Path, image_size: int = 64, resize: str = "square") -> Path:
    """An empty precomputed-features folder: its features.json only."""
    from semcorr.backbones.feature_files import FeatureLayout, write_layout

    root = tmp / "feats"
    write_layout(root, FeatureLayout(stride=8, image_size=image_size, resize=resize, dim=128))
    return root


def folder_pairs(tmp: Path, image: Tuple[int, int] = (48, 64), **changes) -> List[str]:
    """A one-pair ``data=folder`` dataset (two 64 x 48 images, three keypoints, boxes) with
    ``changes`` to the pair's annotation; a key set to ``...`` is removed."""
    import json

    root = tmp / "pairs"
    root.mkdir()
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 255, (*image, 3), dtype=np.uint8)).save(root / "b.png")
    pair = {"src": "a.png", "trg": "b.png", "src_kps": [[10, 10], [20, 30], [40, 12]],
            "trg_kps": [[12, 11], [22, 28], [41, 15]], "src_bbox": [0, 0, 60, 45],
            "trg_bbox": [0, 0, 60, 45], **changes}
    (root / "pairs.json").write_text(json.dumps([{k: v for k, v in pair.items() if v is not ...}]))
    return ["data=folder", f"data.root={root}", "data.image_size=64", "backbone=dsift"]


def config_dir(tmp: Path, rel: str, content: bytes | str) -> Path:
    """A --config-dir holding one file ``rel`` (e.g. ``data/mine.yaml``)."""
    path = tmp / "configs" / rel
    path.parent.mkdir(parents=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return tmp / "configs"


def own_config(tmp: Path, rel: str, content: bytes | str) -> List[str]:
    group, name = rel.split("/")
    return ["--config-dir", str(config_dir(tmp, rel, content)), f"{group}={Path(name).stem}"]


def sweep_yaml(tmp: Path, content: str) -> List[str]:
    path = tmp / "bad_sweep.yaml"
    path.write_text(content)
    return [str(path)]


Case = Callable[[Path], Tuple[Callable, List[str]]]
EVAL, TRAIN_CMD, MATCH, SWEEP = eval_cli.main, train_cli.main, match_cli.main, sweep_cli.main
FEATURES = features_cli.main
PROG = {EVAL: "eval.py", TRAIN_CMD: "train.py", MATCH: "semcorr-match", SWEEP: "sweep.py",
        FEATURES: "semcorr-features"}

CASES: Dict[str, Case] = {
    "mat-truncated-0": lambda t: (EVAL, truncated_willow(t, 0)),
    "mat-truncated-100": lambda t: (EVAL, truncated_willow(t, 100)),
    "mat-truncated-200": lambda t: (EVAL, truncated_willow(t, 200)),
    "unknown-category": lambda t: (EVAL, [*truncated_willow(t, 10 ** 6), "data.categories=[car(X)]"]),
    "transfer-method-bogus": lambda t: (EVAL, ["matcher.transfer.method=bogus", "logger.wandb=true"]),
    "max-pairs-zero": lambda t: (EVAL, ["data.max_pairs=0"]),
    "image-size-zero": lambda t: (EVAL, ["data.image_size=0"]),
    "n-steps-negative": lambda t: (EVAL, ["matcher=gwot", "matcher.n_steps=-3"]),
    "pose-align-no-labels": lambda t: (EVAL, ["pose_align.enabled=true"]),
    "pose-align-train": lambda t: (TRAIN_CMD, [*TRAIN, "pose_align.enabled=true"]),
    "alphas-empty": lambda t: (EVAL, ["metric.alphas=[]"]),
    "image-size-not-multiple": lambda t: (EVAL, [*TINY_VIT, "data.image_size=230"]),
    "ckpt-text": lambda t: (EVAL, [f"ckpt={a_file(t, 'notes.ckpt')}"]),
    "ckpt-png": lambda t: (EVAL, [f"ckpt={png_file(t)}"]),
    "resume-garbage": lambda t: (TRAIN_CMD, garbage_resume(t)),
    "weights-garbage": lambda t: (EVAL, ["backbone=dinov2_vits14", f"backbone.weights={garbage_weights(t)}",
                                         "backbone.model_kwargs={depth: 1}"]),
    "weights-missing-offline": lambda t: (EVAL, ["backbone=dinov2_vits14", "backbone.weights=timm"]),
    "out-dir-is-file-eval": lambda t: (EVAL, [f"out_dir={a_file(t)}"]),
    "out-dir-is-file-train": lambda t: (TRAIN_CMD, [*TRAIN, f"out_dir={a_file(t)}"]),
    "out-dir-is-file-match": lambda t: (MATCH, [*images(t), f"out_dir={a_file(t)}"]),
    "out-dir-is-file-sweep": lambda t: (SWEEP, [*sweep_file(t), f"out_dir={a_file(t)}"]),
    "out-dir-under-file": lambda t: (EVAL, [f"out_dir={a_file(t)}/run"]),
    "out-dir-unwritable-eval": lambda t: (EVAL, [f"out_dir={UNWRITABLE}"]),
    "out-dir-unwritable-train": lambda t: (TRAIN_CMD, [*TRAIN, f"out_dir={UNWRITABLE}"]),
    "out-dir-unwritable-match": lambda t: (MATCH, [*images(t), f"out_dir={UNWRITABLE}"]),
    "out-dir-unwritable-sweep": lambda t: (SWEEP, [*sweep_file(t), f"out_dir={UNWRITABLE}"]),
    "config-missing": lambda t: (EVAL, ["--config", str(t / "missing.yaml")]),
    "config-not-a-run": lambda t: (EVAL, ["--config", str(a_file(t, "notes.yaml"))]),
    "help-unknown-topic": lambda t: (EVAL, ["--help", "nonsense"]),
    "search-zero": lambda t: (SWEEP, [*sweep_file(t), "--search", "0"]),
    "precomputed-no-root": lambda t: (EVAL, ["backbone=precomputed"]),
    "precomputed-no-layout": lambda t: (EVAL, ["backbone=precomputed", f"backbone.root={t}"]),
    "precomputed-frame": lambda t: (EVAL, ["backbone=precomputed", f"backbone.root={feature_folder(t)}"]),
    "precomputed-missing-file": lambda t: (EVAL, ["backbone=precomputed", "data.n_pairs.test=2",
                                                  f"backbone.root={feature_folder(t, 224, 'longer_side_pad')}"]),
    "upsample-inexact": lambda t: (EVAL, ["backbone.upsample=3"]),
    "layers-twice": lambda t: (EVAL, [*TINY_VIT, "backbone.layers=[1,-1]"]),
    "features-format": lambda t: (FEATURES, ["--format", "bogus"]),
    "features-other-kind": lambda t: (FEATURES, ["data.image_size=64", "data.n_pairs.test=1",
                                                 f"out_dir={feature_folder(t)}"]),
    # degenerate annotations (data/annotations.py), found when the dataset is loaded
    "box-negative": lambda t: (EVAL, folder_pairs(t, trg_bbox=[10, 10, 5, 5])),
    "box-zero-area": lambda t: (EVAL, folder_pairs(t, trg_bbox=[10, 10, 10, 30])),
    "one-keypoint-bbox-kp": lambda t: (EVAL, folder_pairs(t, src_bbox=..., trg_bbox=...,
                                                          src_kps=[[10, 10], None, None])),
    "keypoints-all-null": lambda t: (EVAL, folder_pairs(t, src_kps=[None, None, None])),
    "keypoint-far-outside": lambda t: (EVAL, folder_pairs(t, trg_kps=[[12, 11], [22, 28], [900, 15]])),
    "keypoint-huge": lambda t: (EVAL, folder_pairs(t, trg_kps=[[12, 11], [22, 28], [1e308, 15]])),
    "keypoints-empty": lambda t: (EVAL, folder_pairs(t, src_kps=[], trg_kps=[])),
    "image-1x1": lambda t: (EVAL, folder_pairs(t, image=(1, 1))),
    # config files (config.py load_yaml, group_config; sweep.py load_sweep)
    "config-file-malformed": lambda t: (EVAL, own_config(t, "data/mine.yaml", "kind: synthetic\nimage_size: [1\n")),
    "config-file-binary": lambda t: (EVAL, own_config(t, "data/mine.yaml", bytes(range(128, 256)))),
    "config-file-list": lambda t: (EVAL, own_config(t, "data/mine.yaml", "- a\n- b\n")),
    "config-file-value-type": lambda t: (EVAL, own_config(t, "data/mine.yaml", "kind: synthetic\nimage_size: abc\n")),
    "config-file-value-range": lambda t: (EVAL, own_config(t, "data/mine.yaml", "kind: synthetic\nimage_size: 0\n")),
    "experiment-file-malformed": lambda t: (EVAL, own_config(t, "experiment/mine.yaml", "tokens: [a=\n")),
    "sweep-file-malformed": lambda t: (SWEEP, sweep_yaml(t, "grid: {matcher: [nn\n")),
    "sweep-file-list": lambda t: (SWEEP, sweep_yaml(t, "- 1\n- 2\n")),
    "sweep-file-bad-base": lambda t: (SWEEP, sweep_yaml(t, "grid: {matcher: [nn]}\nbase: 3\n")),
    "config-dir-missing": lambda t: (EVAL, ["--config-dir", str(t / "no-such-folder")]),
    "precision-bogus": lambda t: (EVAL, ["trainer.precision=17"]),
}


def _error_lines(err: str, prog: str) -> List[str]:
    return [line for line in err.splitlines() if line.startswith(f"{prog}: error:")]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line(case, tmp_path, capsys):
    command, argv = CASES[case](tmp_path)
    prog = PROG[command]
    out = tmp_path / "out"
    if not any(t.startswith("out_dir=") for t in argv):
        argv = [*argv, f"out_dir={out}"]
    extra = [] if command in (MATCH, SWEEP) or "--resume" in argv else QUIET
    rc = command([*argv, *extra] if command is not EVAL else [*extra, *argv])
    err = capsys.readouterr().err
    lines = _error_lines(err, prog)
    assert rc == 2 and len(lines) == 1, err[-3000:]
    assert "Traceback" not in err
    want = expected_text(case).replace("<tmp>", str(tmp_path))
    assert want in lines[0], (want, lines[0])
    assert "\n" not in lines[0].strip()
    # nothing a later run would trust; errors found before the run starts leave no out_dir
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    assert not list(tmp_path.rglob("metrics.json")) and not list(tmp_path.rglob("matches.json"))
    if case != "resume-garbage":
        assert not list(tmp_path.rglob("*.ckpt")) or case.startswith("ckpt-")
    if case == "weights-missing-offline":
        assert "vitb14" not in lines[0]


def test_every_row_of_the_table_is_tested():
    rows = doc_rows()
    assert len(rows) >= 30
    untested = sorted(set(rows) - set(CASES) - set(OTHER_TESTS))
    assert not untested, f"rows of docs/errors.md without a test: {untested}"
    missing = sorted(set(CASES) - set(rows))
    assert not missing, f"cases not in docs/errors.md: {missing}"
    here = Path(__file__).parent
    for case, where in OTHER_TESTS.items():
        assert case in rows, case
        module, name = where.split("::")
        assert f"def {name}(" in (here / module).read_text(), where


@pytest.mark.slow
def test_the_command_prints_no_traceback(tmp_path):
    """Run as a program (not in-process), a bad value is one line without a traceback."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    proc = subprocess.run([sys.executable, "-m", "semcorr.cli.train", "trainer.max_steps=-5",
                           f"out_dir={tmp_path / 'o'}"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert _error_lines(proc.stderr, "train.py") == [
        "train.py: error: trainer.max_steps must be an integer >= -1, got -5"]
    assert not (tmp_path / "o").exists()


def test_train_help_mentions_resume(capsys):
    with pytest.raises(SystemExit) as exit_:
        train_cli.main(["--help"])
    assert exit_.value.code == 0
    assert "--resume RUN" in capsys.readouterr().out


def test_rate_unit_for_slow_runs():
    from semcorr.cli.common import rate

    assert rate(900, 60.0) == "15.0 pairs/s"
    assert rate(4, 18.0) == "4.5 s/pair"  # not "0.2 pairs/s", and never "0.0 pairs/s"
    assert rate(1, 3600.0) == "3600.0 s/pair"
