"""Files a run writes get the mode the user's umask gives (collaborators on shared storage can
read them): metrics.json, train_summary.json and feature-cache files were 0600 (``mkstemp``).
Every writer goes through :mod:`semcorr.atomic`."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from runs import QUIET, SMALL_DATA, TINY_VIT
from semcorr.atomic import current_umask, write_text

ROOT = Path(__file__).resolve().parents[1]


def test_the_umask_is_read_without_changing_it(tmp_path):
    before = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        assert current_umask() == 0o027  # unchanged by reading it
        path = write_text(tmp_path / "x.json", "{}")  # mkstemp + rename, as every result file
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(before)


def _modes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode)
            for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o007, 0o660)])
def test_every_file_of_eval_and_train_follows_the_umask(tmp_path, umask, expected):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    cache = tmp_path / "cache"
    eval_args = ["data.n_pairs.test=2", "data.image_size=64", *QUIET, "plots.n_pairs=1",
                 f"cache.disk_dir={cache}", f"out_dir={tmp_path / 'eval'}"]
    train_args = [*TINY_VIT, *SMALL_DATA, *QUIET, "trainer.max_steps=1", "trainer.limit_val_batches=1",
                  f"out_dir={tmp_path / 'train'}"]
    script = (f"import os\nos.umask({umask})\n"
              "from semcorr.cli.eval import main as ev\nfrom semcorr.cli.train import main as tr\n"
              f"assert ev({eval_args!r}) == 0\nassert tr({train_args!r}) == 0\n")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    modes = {**{f"eval/{k}": v for k, v in _modes(tmp_path / "eval").items()},
             **{f"train/{k}": v for k, v in _modes(tmp_path / "train").items()},
             **{f"cache/{k}": v for k, v in _modes(cache).items()}}
    for name in ("eval/metrics.json", "eval/predictions.jsonl", "eval/config.yaml", "eval/keypoints.png",
                 "train/train_summary.json", "train/config.yaml"):
        assert name in modes, sorted(modes)
    assert any(k.startswith("cache/") for k in modes) and any(k.endswith(".ckpt") for k in modes)
    wrong = {k: oct(v) for k, v in modes.items() if v != expected}
    assert not wrong, f"not {oct(expected)} under umask {oct(umask)}: {wrong}"
