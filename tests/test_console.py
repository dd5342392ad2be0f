"""A quiet console: a progress bar per long loop, the PCK table and where the outputs went; the
libraries' noise only with ``--verbose``; W&B only when configured."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from runs import QUIET, SMALL_DATA, TINY_VIT
from semcorr.cli.console import console_is_quiet, quiet_console
from semcorr.cli.loggers import wandb_enabled

ROOT = Path(__file__).resolve().parents[1]
NOISE = ("GPU available", "TPU available", "litlogger", "LeafSpec", "wandb", "W&B",
         "modules in eval mode", "module(s) in eval mode", "unreliable results", "Warning", "INFO")


class _Keep(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_quiet_console_drops_library_info_and_known_warnings():
    keep = _Keep()
    root = logging.getLogger()
    root.addHandler(keep)
    try:
        for verbose in (False, True):
            keep.messages.clear()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with quiet_console(verbose):
                    assert console_is_quiet() is not verbose
                    logging.getLogger("lightning.pytorch.utilities.rank_zero").info("GPU available: False")
                    logging.getLogger("lightning.pytorch.utilities.rank_zero").warning("a real problem")
                    warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning)
                    warnings.warn("Found 3 module(s) in eval mode at the start of training.")
                    warnings.warn("something semcorr should hear about")
            texts = [str(w.message) for w in caught]
            assert "a real problem" in keep.messages
            assert "something semcorr should hear about" in texts
            assert ("GPU available: False" in keep.messages) is verbose
            assert any("LeafSpec" in t for t in texts) is verbose
            assert any("eval mode" in t for t in texts) is verbose
        assert console_is_quiet() is False
    finally:
        root.removeHandler(keep)


def test_wandb_only_when_configured(monkeypatch, tmp_path):
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    assert wandb_enabled(None) is False  # the default: no anonymous run by surprise
    assert wandb_enabled(True) is True and wandb_enabled(False) is False
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_enabled(None) is True
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_enabled(None) is False
    monkeypatch.delenv("WANDB_MODE")
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    os.chmod(tmp_path / ".netrc", 0o600)
    assert wandb_enabled(None) is True


def _env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), NETRC=str(tmp_path / "no-netrc"), HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
               **extra)
    return env


def _run(args, env, cwd):
    return subprocess.run([sys.executable, str(ROOT / "eval.py"), *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=600)


def _without_legend(stdout: str):
    """(the lines, the legend lines under the PCK table: its bootstrap intervals, semcorr.eval_stats)."""
    legend = [line for line in stdout.splitlines() if line.startswith(("±:", "no interval for "))]
    return [line for line in stdout.splitlines() if line not in legend], legend


def _bar_chunks(stderr: str):
    return [c.strip() for c in re.split(r"[\r\n]", stderr) if c.strip()]


@pytest.mark.slow
def test_the_demo_console_is_quiet(tmp_path):
    """``python eval.py`` as the README runs it (fewer pairs): 12 lines on stdout (the table and
    where everything went) plus the table's legend of its intervals, only the progress bar on
    stderr, and no W&B without a W&B setup."""
    proc = _run(["data.n_pairs.test=6", "plots.n_pairs=1", "out_dir=runs/demo"], _env(tmp_path), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines, legend = _without_legend(proc.stdout)
    assert len(lines) == 12 and 1 <= len(legend) <= 2, proc.stdout
    assert lines[0].startswith("synthetic (test), 6 pairs, protocol image")
    assert "wrote runs/demo/: config.yaml" in lines[-1]
    for name in ("metrics.json", "predictions.jsonl", "keypoints.png", "pck_curve.png", "dense_warp.png", "csv/"):
        assert name in lines[-1]
    chunks = _bar_chunks(proc.stderr)
    assert chunks and all(c.startswith("evaluating synthetic (test):") for c in chunks), chunks
    assert re.search(r"6/6 \[[0-9:]+<00:00, +[0-9.]+(s/pair|pair/s)\]", chunks[-1]), chunks[-1]
    for word in NOISE:
        assert word not in proc.stdout + proc.stderr, word
    assert not (tmp_path / "runs" / "demo" / "wandb").exists()  # no W&B run by surprise


@pytest.mark.slow
def test_wandb_offline_is_silent_and_verbose_shows_everything(tmp_path):
    env = _env(tmp_path, WANDB_MODE="offline")
    common = ["data.n_pairs.test=2", "plots.n_pairs=0", "predictions.enabled=false"]
    proc = _run([*common, "out_dir=runs/quiet"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "runs" / "quiet" / "wandb").is_dir()  # WANDB_MODE configures W&B
    # 2 pairs of 2 categories: title, header, rule, 2 categories, rule, all, where it went
    assert len(_without_legend(proc.stdout)[0]) == 8 and "W&B run in runs/quiet/wandb" in proc.stdout
    assert all(c.startswith("evaluating") for c in _bar_chunks(proc.stderr)), proc.stderr[-2000:]
    loud = _run([*common, "out_dir=runs/loud", "--verbose"], env, tmp_path)
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert "GPU available" in loud.stderr and "wandb" in loud.stderr
    assert "semcorr.eval INFO evaluating 2 pairs of synthetic" in loud.stderr


@pytest.mark.slow
def test_training_and_an_exact_resume_stay_quiet(tmp_path):
    """A mid-epoch resume (our sampler makes it exact) and frozen modules in eval mode: Lightning's
    warnings about both are not printed; the training bar is."""
    env = _env(tmp_path)
    run = ["-c", "import sys; from semcorr.cli.train import main; raise SystemExit(main(sys.argv[1:]))"]
    tokens = [*TINY_VIT, *SMALL_DATA, *QUIET, "trainer.enable_progress_bar=true",
              "backbone.trainable_blocks=1", "checkpointing.every_n_steps=1",
              "trainer.limit_val_batches=1", "out_dir=runs/t"]
    first = subprocess.run([sys.executable, *run, *tokens, "trainer.max_steps=1"], capture_output=True,
                           text=True, env=env, cwd=tmp_path, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = subprocess.run([sys.executable, *run, "--resume", "runs/t", "trainer.max_steps=2"],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for proc in (first, resumed):
        out = proc.stdout + proc.stderr
        for word in NOISE:
            assert word not in out, (word, out[-2000:])
        assert re.search(r"trained 1 step in|trained 2 steps in", proc.stdout), proc.stdout
        assert "training:" in proc.stderr


def _read_pty(master: int, wait_s: float = 10.0) -> str:
    """What was written to a pty, read until the final bar is in or ``wait_s`` passed (the kernel
    hands pty output to the reading side asynchronously: one read can come back short under load)."""
    import os
    import select
    import time

    chunks, deadline = [], time.monotonic() + wait_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunks.append(os.read(master, 65536))
            except OSError:  # EIO: the writing side is closed and everything was read
                break
        elif b"pair/s" in b"".join(chunks) and b"\n" in b"".join(chunks):
            break
    return b"".join(chunks).decode("utf-8", "replace")


def test_progress_bars_show_on_a_terminal_that_reports_no_size(monkeypatch):
    """A bare pty (``script``, some CI runners) reports 0 x 0; tqdm then hid every bar (the demo's
    console showed none). Such a terminal gets a fixed 100 x 24."""
    import os
    import pty
    import sys

    from semcorr.progress import make_bar, terminal_columns

    master, slave = pty.openpty()  # a new pty has no size
    with open(slave, "w", encoding="utf-8") as stream:
        assert terminal_columns(stream) == 0
        monkeypatch.setattr(sys, "stderr", stream)
        bar = make_bar(3, "evaluating", "pair")
        bar.update(3)
        bar.close()
        stream.flush()
    text = _read_pty(master)
    os.close(master)
    assert "evaluating: 100%" in text and "3/3" in text and "pair/s" in text
