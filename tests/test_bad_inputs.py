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


Case = Callable[[Path], Tuple[Callable, List[str]]]
EVAL, TRAIN_CMD, MATCH, SWEEP = eval_cli.main, train_cli.main, match_cli.main, sweep_cli.main
PROG = {EVAL: "eval.py", TRAIN_CMD: "train.py", MATCH: "semcorr-match", SWEEP: "sweep.py"}

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
