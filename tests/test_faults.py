"""Faults a busy cluster or a hostile user brings (issue 24; the rows of docs/errors.md):
signals, a full disk, a save killed mid-write, shared or moved run folders, a feature cache that
lies or cannot be written, half precision, matchers used on their own, non-finite JSON.

Tests that need a small filesystem mount a tmpfs (root in a sandbox); where mounting is not
allowed they skip with the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List

import numpy as np
import pytest
import torch

from runs import QUIET, TINY_VIT
from semcorr.atomic import atomic_open, current_umask, write_bytes, write_json
from semcorr.checkpoint import read_checkpoint
from semcorr.cli import eval as eval_cli
from semcorr.cli import match as match_cli
from semcorr.cli import train as train_cli
from semcorr.config import load_config
from semcorr.stores import DiskCache, MemoryCache, stored_bytes
from semcorr.training import AtomicCheckpointIO

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [*TINY_VIT, "backbone.model_kwargs={depth: 2, embed_dim: 32, num_heads: 2}",
         "data=synthetic", "data.image_size=56", "data.batch_size=2", "data.n_pairs.train=8",
         "data.n_pairs.val=2", "data.n_keypoints=8", "trainer.num_sanity_val_steps=0",
         "trainer.limit_val_batches=1", *QUIET]
EVAL_FAST = ["backbone=dsift", "data=synthetic", "data.image_size=64", "data.n_pairs.test=4", *QUIET]


def env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline",
                PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))


def error_lines(text: str, prog: str) -> List[str]:
    return [line for line in text.splitlines() if line.startswith(f"{prog}: ")]


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` for the block; skips the test where mounting is not
    allowed (not root, no CAP_SYS_ADMIN)."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}); the "
                    "full-disk tests need a small filesystem")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill the filesystem of ``folder`` (a tmpfs) up to ``leave`` bytes."""
    path = folder / "filler"
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    if leave:
        size = path.stat().st_size
        os.truncate(path, max(0, size - leave))
    return path


# ------------------------------------------------------------------------------------------------
# atomic writes
# ------------------------------------------------------------------------------------------------
def test_atomic_files_get_the_umask_mode_not_0600(tmp_path):
    """mkstemp creates 0600; a result file gets what open() would give it: 0666 minus the umask."""
    before = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        path = write_json(tmp_path / "a.json", {"a": 1})
        assert (path.stat().st_mode & 0o777) == 0o640
    finally:
        os.umask(before)
    path = write_bytes(tmp_path / "b.bin", b"x")
    assert (path.stat().st_mode & 0o777) == 0o666 & ~before


def test_json_is_never_nan_or_infinity(tmp_path):
    with pytest.raises(ValueError, match=r"refusing to write .*a.json: non-finite value\(s\) at pck.0\.1"):
        write_json(tmp_path / "a.json", {"pck": {"0.1": float("nan")}})
    assert not (tmp_path / "a.json").exists() and not list(tmp_path.iterdir())
    write_json(tmp_path / "b.json", {"history": [{"loss": float("inf")}, {"loss": 1.0}]}, non_finite="null")
    text = (tmp_path / "b.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text) == {"history": [{"loss": None}, {"loss": 1.0}], "non_finite": ["history[0].loss"]}


def test_a_full_disk_keeps_the_previous_file(tmp_path):
    """A write that fills the disk raises OSError naming the file and leaves the old content (a
    plain rewrite on the same disk destroys it: the control shows the disk really fills)."""
    with tmpfs(tmp_path / "small", "1m") as disk:
        old = b"old content " * 1000
        write_bytes(disk / "plain.bin", old)
        write_bytes(disk / "result.bin", old)
        fill(disk, leave=4096)
        with pytest.raises(OSError) as err:
            write_bytes(disk / "result.bin", b"x" * 200_000)
        assert "No space left on device" in str(err.value) and str(disk / "result.bin") in str(err.value)
        assert (disk / "result.bin").read_bytes() == old
        assert not list(disk.glob(".*.tmp"))
        with pytest.raises(OSError):  # control: writing in place truncates first
            (disk / "plain.bin").write_bytes(b"x" * 200_000)
        assert (disk / "plain.bin").read_bytes() != old


def _checkpoint(step: int, size: int = 50_000) -> dict:
    return {"state_dict": {"w": torch.full((size,), float(step))}, "global_step": step}


def test_a_checkpoint_save_on_a_full_disk_keeps_the_last_good_one(tmp_path):
    io = AtomicCheckpointIO()
    with tmpfs(tmp_path / "small", "2m") as disk:
        last = disk / "checkpoints" / "last.ckpt"
        io.save_checkpoint(_checkpoint(1), last)
        fill(disk, leave=64 * 1024)
        with pytest.raises(OSError, match="No space left on device") as err:
            io.save_checkpoint(_checkpoint(2), last)
        assert str(last) in str(err.value)
        ckpt = read_checkpoint(last)
        assert ckpt["global_step"] == 1 and bool((ckpt["state_dict"]["w"] == 1).all())
        assert not list(last.parent.glob(".*.tmp"))


KILL_WRITER = """
import sys, torch
from semcorr.training import AtomicCheckpointIO
io, path = AtomicCheckpointIO(), sys.argv[1]
for step in range(1, 100):
    io.save_checkpoint({"state_dict": {"w": torch.full((48_000_000,), float(step))}, "global_step": step}, path)
    print("saved", step, flush=True)
"""


@pytest.mark.slow
def test_a_save_killed_mid_write_leaves_the_previous_checkpoint(tmp_path):
    """kill -9 while a 190 MB checkpoint is being written: last.ckpt is the previous one, whole."""
    last = tmp_path / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", KILL_WRITER, str(last)], stdout=subprocess.PIPE,
                            text=True, env=env())
    try:
        assert proc.stdout.readline().strip() == "saved 1"
        deadline = time.time() + 120
        while time.time() < deadline:  # the second save is under way: its temporary file grows
            temps = list(last.parent.glob(".last.ckpt.*.tmp"))
            if temps and temps[0].stat().st_size > 1_000_000:
                break
            time.sleep(0.002)
        else:
            pytest.fail("the second save never started")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    temps = list(last.parent.glob(".last.ckpt.*.tmp"))
    assert temps and temps[0].stat().st_size < last.stat().st_size  # killed mid-write indeed
    ckpt = read_checkpoint(last)
    assert ckpt["global_step"] == 1 and bool((ckpt["state_dict"]["w"] == 1).all())


@pytest.mark.slow
def test_training_on_a_filling_disk_keeps_last_ckpt_and_resumes(tmp_path, capsys, monkeypatch):
    """The disk fills during training: the save fails with one line, rc 2, the previous last.ckpt
    stays whole, and once space is freed --resume continues from it."""
    import lightning as L

    class FillAt(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == 2 and not (disk / "filler").exists():
                fill(disk, leave=16 * 1024)

    real = train_cli.training_callbacks
    monkeypatch.setattr(train_cli, "training_callbacks",
                        lambda *a, **k: {**real(*a, **k), "fill": FillAt()})
    with tmpfs(tmp_path / "small", "48m") as disk:
        run = disk / "run"
        rc = train_cli.main([*TRAIN, "trainer.max_steps=4", "checkpointing.every_n_steps=1",
                             "logger.csv=false", f"out_dir={run}"])
        err = capsys.readouterr().err
        lines = error_lines(err, "train.py")
        assert rc == 2 and len(lines) == 1, err[-3000:]
        assert "No space left on device" in lines[0] and "last.ckpt" in lines[0]
        assert "Traceback" not in err
        last = run / "checkpoints" / "last.ckpt"
        assert read_checkpoint(last)["global_step"] == 1
        assert not list(last.parent.glob(".*.tmp"))
        (disk / "filler").unlink()
        monkeypatch.setattr(train_cli, "training_callbacks", real)
        assert train_cli.main(["--resume", str(run)]) == 0
        summary = json.loads((run / "train_summary.json").read_text())
        assert summary["status"] == "finished" and summary["global_step"] == 4
        assert read_checkpoint(last)["global_step"] == 4


def test_a_full_disk_under_out_dir_is_one_line(tmp_path, capsys):
    """eval.py into a full disk: rc 2, one line naming the disk error, no metrics.json."""
    with tmpfs(tmp_path / "small", "256k") as disk:
        fill(disk)
        rc = eval_cli.main([*EVAL_FAST, f"out_dir={disk / 'run'}"])
        err = capsys.readouterr().err
        lines = error_lines(err, "eval.py")
        assert rc == 2 and len(lines) == 1 and "No space left on device" in lines[0], err[-3000:]
        assert "Traceback" not in err
        assert not list(disk.rglob("metrics.json"))


# ------------------------------------------------------------------------------------------------
# signals
# ------------------------------------------------------------------------------------------------
def _start(module: str, args: List[str]) -> subprocess.Popen:
    # faulthandler: a child that does not stop can be made to print where every thread is
    # SIGINT as a terminal gives it: a runner started in the background (``cmd &`` in a
    # non-interactive shell) ignores SIGINT, and its children would inherit that
    return subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(env(), PYTHONFAULTHANDLER="1"),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    """The child's stderr once it ends; a child still running after ``timeout`` s fails the test
    with the stacks of all its threads (SIGABRT through faulthandler)."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        err = proc.communicate(timeout=60)[1]
        pytest.fail(f"the run did not stop within {timeout:.0f} s of the signal; its threads:\n{err[-8000:]}")


def _wait_for(path_glob, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if list(path_glob()):
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before the signal: "
                        f"{proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the run never got going")


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signalled_training_exits_non_zero_and_says_interrupted(sig, code, tmp_path):
    """SIGTERM / SIGINT mid-training: exit 143 / 130, one line, summary "interrupted". last.ckpt
    is saved only at validations (every 10 steps) here, so a SIGTERM's own save shows: the last
    checkpoint is the step the run stopped at, and --resume continues from it."""
    run = tmp_path / "run"
    proc = _start("semcorr.cli.train", [*TRAIN, "trainer.max_steps=100000", "data.n_pairs.train=400",
                                        "checkpointing.every_n_steps=0", "trainer.val_check_interval=10",
                                        f"out_dir={run}"])
    _wait_for(lambda: (run / "checkpoints").glob("best-*.ckpt"), proc)
    proc.send_signal(sig)
    err = _finish(proc)
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err
    lines = error_lines(err, "train.py")
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == sig.name
    assert summary["error"] is None
    assert len(lines) == 1 and lines[0].startswith(
        f"train.py: interrupted by {sig.name}; training stopped at step {summary['global_step']}; ")
    if sig == signal.SIGTERM:  # saved at the batch the signal arrived in, where --resume goes on
        assert lines[0].endswith(f"last checkpoint {run / 'checkpoints' / 'last.ckpt'} (step "
                                 f"{summary['global_step']}); continue with: train.py --resume {run}"), \
            (lines, sorted(p.name for p in (run / "checkpoints").iterdir()), err[-4000:])
        assert summary["last_checkpoint_step"] == summary["global_step"]
        step = summary["global_step"]
        assert train_cli.main(["--resume", str(run), f"trainer.max_steps={step + 1}"]) == 0
        assert json.loads((run / "train_summary.json").read_text())["global_step"] == step + 1


@pytest.mark.slow
@pytest.mark.parametrize("when", ["in_batch", "after_batch_end"])
def test_a_sigterm_stop_resumes_exactly(when, tmp_path, monkeypatch):
    """SIGTERM noticed during a step (saved at its batch end) or after its batch-end hooks (saved
    when Lightning stops the step, LastCheckpoint.on_exception): --resume from that last.ckpt gives
    the weights, moments and losses of an uninterrupted run, bit for bit."""
    import lightning as L

    from semcorr.interrupt import RunInterrupted
    from semcorr.models.module import CorrespondenceModule

    def sigterm(trainer):  # what Lightning's SIGTERM handler does
        if trainer.global_step == 3:
            trainer._signal_connector.received_sigterm = True

    class InBatch(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            sigterm(trainer)

    common = [*TRAIN, "trainer.max_steps=6", "checkpointing.every_n_steps=0", "optim.warmup_steps=2"]
    full = train_cli.fit(train_cli.train_config([*common, f"out_dir={tmp_path / 'full'}"]))
    cut = tmp_path / "cut"
    callbacks = []
    if when == "in_batch":
        callbacks = [InBatch()]
    else:  # the module's hook runs after every callback's on_train_batch_end
        monkeypatch.setattr(CorrespondenceModule, "on_train_batch_end",
                            lambda self, *a: sigterm(self.trainer), raising=False)
    with pytest.raises(RunInterrupted):
        train_cli.fit(train_cli.train_config([*common, f"out_dir={cut}"]), callbacks=callbacks)
    monkeypatch.undo()
    part = json.loads((cut / "train_summary.json").read_text())
    assert part["status"] == "interrupted" and part["global_step"] == part["last_checkpoint_step"] == 3
    assert train_cli.main(["--resume", str(cut)]) == 0
    resumed = json.loads((cut / "train_summary.json").read_text())
    a, b = read_checkpoint(full["last_checkpoint"]), read_checkpoint(resumed["last_checkpoint"])
    assert a["global_step"] == b["global_step"] == 6
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    losses = lambda s: [(r["step"], r["loss"]) for r in s["history"] if r["stage"] == "train"]  # noqa: E731
    assert losses(resumed) == losses(full)


@pytest.mark.slow
def test_a_signalled_evaluation_exits_143_without_metrics(tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    proc = _start("semcorr.cli.eval", [*EVAL_FAST, "data.n_pairs.test=20000", "data.batch_size=1",
                                       f"cache.disk_dir={cache}", f"out_dir={run}"])
    _wait_for(lambda: cache.rglob("*.pt"), proc)  # the test loop has started
    proc.send_signal(signal.SIGTERM)
    err = _finish(proc)
    assert proc.returncode == 143, err[-3000:]
    assert error_lines(err, "eval.py") == [
        f"eval.py: interrupted by SIGTERM; the evaluation stopped; no {run / 'metrics.json'} was written"]
    assert not (run / "metrics.json").exists() and not (run / "predictions.jsonl").exists()


@pytest.mark.slow
def test_a_signalled_sweep_never_marks_the_cell_done(tmp_path):
    """SIGTERM to a sweep: the running cell gets it too and stops, the sweep exits 143, the cell
    is "interrupted" (no sweep_result.json); started again, the sweep runs that cell."""
    spec = tmp_path / "tiny.yaml"
    cache = tmp_path / "cache"
    spec.write_text("mode: eval\nbase: [data=synthetic, backbone=dsift, data.image_size=64, "
                    f"data.batch_size=1, logger.wandb=false, plots.n_pairs=0, cache.disk_dir={cache}, "
                    "trainer.enable_progress_bar=false]\ngrid: {matcher: [nn]}\n")
    out = tmp_path / "sweep"
    proc = _start("semcorr.cli.sweep", [str(spec), "data.n_pairs.test=20000", f"out_dir={out}"])
    _wait_for(lambda: cache.rglob("*.pt"), proc)
    proc.send_signal(signal.SIGTERM)
    err = _finish(proc)
    assert proc.returncode == 143, err[-3000:]
    assert error_lines(err, "sweep.py") == [
        "sweep.py: interrupted by SIGTERM; the sweep stopped in run matcher-nn (1/1, not marked "
        "done); start it again to continue"]
    cell = out / "matcher-nn"
    assert not (cell / "sweep_result.json").exists() and not (cell / "metrics.json").exists()
    assert "| interrupted: SIGTERM |" in (out / "summary.md").read_text()
    assert "eval.py: interrupted by SIGTERM" in (cell / "run.log").read_text()  # the run stopped itself
    done = subprocess.run([sys.executable, "-m", "semcorr.cli.sweep", str(spec), "data.n_pairs.test=2",
                           f"out_dir={out}"], capture_output=True, text=True, env=env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (cell / "sweep_result.json").is_file() and "| done |" in (out / "summary.md").read_text()


def test_a_run_killed_by_a_signal_is_interrupted_not_done(tmp_path):
    """A cell whose process ends by a signal (exit 143, or killed) is RunStopped, not a result."""
    from semcorr.cli.sweep import RunFailed, RunStopped, run_process

    for script, want in (("import sys; sys.exit(143)", "SIGTERM (exit 143)"),
                         ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "SIGKILL (exit -9)")):
        with pytest.raises(RunStopped, match=re.escape(want)):
            run_process([sys.executable, "-c", script], tmp_path / "run.log")
    with pytest.raises(RunFailed) as failed:
        run_process([sys.executable, "-c", "import sys; sys.exit(2)"], tmp_path / "run.log")
    assert not isinstance(failed.value, RunStopped)


# ------------------------------------------------------------------------------------------------
# run folders
# ------------------------------------------------------------------------------------------------
def test_default_out_dirs_are_unique_within_a_second_and_across_processes():
    from semcorr.config import default_out_dir

    here = {default_out_dir() for _ in range(500)}
    assert len(here) == 500
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(4) as pool:  # forks share all Python state
        names = pool.map(_default_out_dir, range(8))
    assert len(set(names)) == 8 and all(n.startswith("runs/") for n in names), names


def _default_out_dir(_: int) -> str:
    from semcorr.config import default_out_dir

    return default_out_dir()


HOLD_LOCK = """
import sys, time
from semcorr.rundir import RunLock
lock = RunLock.acquire(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


def test_a_folder_in_use_is_refused_and_free_once_its_run_dies(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE,
                              text=True, env=env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc = eval_cli.main([*EVAL_FAST, f"out_dir={run}"])
        lines = error_lines(capsys.readouterr().err, "eval.py")
        assert rc == 2 and len(lines) == 1
        assert f"eval.py: error: out_dir {run} is in use by another run (pid {holder.pid} on " in lines[0]
        assert not (run / "metrics.json").exists() and not (run / "config.yaml").exists()
    finally:
        holder.kill()  # kill -9: the kernel drops its lock
        holder.wait()
    assert eval_cli.main([*EVAL_FAST, f"out_dir={run}"]) == 0
    assert (run / "metrics.json").is_file()


@pytest.mark.parametrize("cli,args,prog", [
    (eval_cli, EVAL_FAST, "eval.py"),
    pytest.param(train_cli, TRAIN, "train.py", marks=pytest.mark.slow),
])
def test_an_out_dir_with_results_needs_overwrite(cli, args, prog, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"pck": {"0.1": 55.0}}')
    (run / "config.yaml").write_text("out_dir: elsewhere\n")
    rc = cli.main([*args, "trainer.max_steps=1", f"out_dir={run}"])
    lines = error_lines(capsys.readouterr().err, prog)
    assert rc == 2 and lines == [
        f"{prog}: error: out_dir {run} holds another run's results (config.yaml, metrics.json); "
        "choose another out_dir, or pass --overwrite to replace them (or --resume to continue a "
        "training run)"]
    assert (run / "metrics.json").read_text() == '{"pck": {"0.1": 55.0}}'  # untouched
    assert cli.main([*args, "trainer.max_steps=1", f"out_dir={run}", "--overwrite"]) == 0
    assert "out_dir: elsewhere" not in (run / "config.yaml").read_text()
    if prog == "eval.py":
        assert json.loads((run / "metrics.json").read_text())["n_pairs"] == 4
    else:
        assert not (run / "metrics.json").exists()  # the earlier run's result is gone


def test_match_refuses_an_out_dir_with_results(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(1)
    for name in ("src.png", "trg.png"):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(tmp_path / name)
    args = [str(tmp_path / "src.png"), str(tmp_path / "trg.png"), "--points", "8,8", "backbone=dsift",
            "logger.wandb=false", f"out_dir={tmp_path / 'm'}"]
    assert match_cli.main(args) == 0
    first = (tmp_path / "m" / "matches.json").read_text()
    assert match_cli.main([*args[:3], "20,20", *args[4:]]) == 2
    assert "holds another run's results (config.yaml, matches.json, matches.png)" in capsys.readouterr().err
    assert (tmp_path / "m" / "matches.json").read_text() == first
    assert match_cli.main([*args[:3], "20,20", *args[4:], "--overwrite"]) == 0
    assert (tmp_path / "m" / "matches.json").read_text() != first


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A 3-step training run (validated at step 2: a best checkpoint; last.ckpt at step 3)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert train_cli.main([*TRAIN, "trainer.max_steps=3", "trainer.val_check_interval=2",
                           "checkpointing.every_n_steps=1", f"out_dir={run}"]) == 0
    return run


def _copy(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    return to


@pytest.mark.slow
def test_resume_of_a_moved_or_copied_run_continues_where_it_now_is(trained_run, tmp_path):
    import shutil

    original = {p: p.stat().st_mtime_ns for p in trained_run.rglob("*") if p.is_file()}
    copy = _copy(trained_run, tmp_path / "copy")
    assert train_cli.main(["--resume", str(copy), "trainer.max_steps=4"]) == 0
    assert {p: p.stat().st_mtime_ns for p in trained_run.rglob("*") if p.is_file()} == original
    summary = json.loads((copy / "train_summary.json").read_text())
    assert summary["global_step"] == 4 and summary["out_dir"] == str(copy)
    assert summary["last_checkpoint"] == str((copy / "checkpoints" / "last.ckpt").resolve())
    assert summary["best_checkpoint"].startswith(str((copy / "checkpoints").resolve()))
    assert Path(summary["best_checkpoint"]).is_file()
    assert sorted(p.name for p in (copy / "checkpoints").glob("last*.ckpt")) == ["last.ckpt"]
    assert read_checkpoint(copy / "checkpoints" / "last.ckpt")["global_step"] == 4
    moved = tmp_path / "moved"
    shutil.move(str(_copy(trained_run, tmp_path / "tmp-copy")), moved)
    assert train_cli.main(["--resume", str(moved), "trainer.max_steps=4"]) == 0
    assert sorted(p.name for p in (moved / "checkpoints").glob("last*.ckpt")) == ["last.ckpt"]
    assert json.loads((moved / "train_summary.json").read_text())["out_dir"] == str(moved)


@pytest.mark.slow
@pytest.mark.parametrize("tokens,want", [
    (["data.batch_size=4"], "--resume cannot change data.batch_size (2 -> 4): the resumed run would "
                            "not continue the one that was started"),
    (["matcher=ot"], "--resume cannot change matcher."),
    (["out_dir=/tmp/elsewhere"], "--resume continues in the run's own folder"),
])
def test_resume_refuses_settings_that_break_exactness(tokens, want, trained_run, tmp_path, capsys):
    copy = _copy(trained_run, tmp_path / "copy")
    rc = train_cli.main(["--resume", str(copy), *tokens])
    lines = error_lines(capsys.readouterr().err, "train.py")
    assert rc == 2 and len(lines) == 1 and want in lines[0], lines


@pytest.mark.slow
def test_eval_of_an_unfinished_run_warns_which_step(trained_run, tmp_path, caplog):
    copy = _copy(trained_run, tmp_path / "copy")
    summary = json.loads((copy / "train_summary.json").read_text())
    summary.update(status="interrupted", best_checkpoint=None)
    (copy / "train_summary.json").write_text(json.dumps(summary))
    with caplog.at_level("WARNING", logger="semcorr"):
        assert eval_cli.main([f"ckpt={copy}", *QUIET, "data.n_pairs.test=2", f"out_dir={tmp_path / 'e'}"]) == 0
    assert f"ckpt={copy}: the run did not finish: its train_summary.json says 'interrupted'; " \
           "evaluating last.ckpt, saved at step 3" in caplog.text


def test_unfinished_runs_are_named_and_finished_ones_are_quiet(tmp_path):
    from semcorr.checkpoint import warn_if_unfinished

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    run = tmp_path / "run"
    text = warn_if_unfinished(run, ckpt, {"global_step": 8})
    assert text == (f"ckpt={run}: the run did not finish: it has no train_summary.json (still "
                    "running, or killed); evaluating last.ckpt, saved at step 8")
    (run / "train_summary.json").write_text(json.dumps({"status": "failed", "error": "OSError: disk"}))
    assert "says 'failed' (OSError: disk); evaluating last.ckpt, saved at step 8" in warn_if_unfinished(ckpt, ckpt, {"global_step": 8})
    (run / "train_summary.json").write_text(json.dumps({"status": "finished"}))
    assert warn_if_unfinished(run, ckpt, {"global_step": 8}) is None
    assert warn_if_unfinished(tmp_path / "x.ckpt", tmp_path / "x.ckpt", {}) is None  # a file on its own


# ------------------------------------------------------------------------------------------------
# feature caches
# ------------------------------------------------------------------------------------------------
def _flip_tensor_bytes(path: Path, tensor: torch.Tensor) -> None:
    """Change a cached tensor's bytes inside its file, keeping the file's size (an in-place edit)."""
    data = bytearray(path.read_bytes())
    raw = tensor.contiguous().view(torch.uint8).numpy().tobytes()
    at = data.find(raw[:64])
    assert at >= 0, "tensor bytes not found in the file"
    size = path.stat().st_size
    data[at: at + len(raw)] = bytes(len(raw))  # zeros
    path.write_bytes(bytes(data))
    assert path.stat().st_size == size


def test_disk_cache_detects_an_in_place_edit_of_the_same_size(tmp_path, caplog):
    cache = DiskCache(tmp_path / "c")
    value = torch.randn(8, 5, 5) + 3
    cache.put("k", value)
    assert torch.equal(cache.get("k"), value)
    _flip_tensor_bytes(cache.path("k"), value)
    with caplog.at_level("WARNING"):
        assert cache.get("k") is None
    assert "checksum mismatch" in caplog.text and not cache.path("k").exists()


def test_cache_entries_hold_only_their_own_slice(tmp_path):
    from semcorr.backbones.base import FeatureMap
    from semcorr.features import FeatureExtractor

    class Backbone(torch.nn.Module):
        stride = 8

        def cache_key(self):
            return "toy"

        def forward(self, images):
            return FeatureMap(images.mean(1, keepdim=True).repeat(1, 64, 1, 1)[..., ::8, ::8], 8)

    memory, disk = MemoryCache(100), DiskCache(tmp_path / "d")
    extractor = FeatureExtractor(Backbone(), stores=[memory, disk])
    images = torch.rand(4, 3, 64, 64)
    extractor(images, ids=["a", "b", "c", "d"], use_cache=True)
    one = 64 * 8 * 8 * 4  # bytes of one image's features
    assert memory.bytes == 4 * one  # was 4 x the batch's storage
    assert all(stored_bytes(v) == one for v in memory.items.values())
    files = list((tmp_path / "d").rglob("*.pt"))
    assert len(files) == 4 and all(f.stat().st_size < one + 4096 for f in files)


def test_memory_cache_counts_the_storage_a_view_keeps():
    cache = MemoryCache(1)
    batch = torch.zeros(4, 1000)
    cache.put("view", batch[0])
    assert cache.bytes == batch.numel() * 4


@pytest.mark.parametrize("where", ["file", "sysfs", "full"])
def test_a_cache_that_cannot_be_written_warns_once_and_the_run_goes_on(where, tmp_path, caplog):
    plain = tmp_path / "plain"
    assert eval_cli.main([*EVAL_FAST, "cache.enabled=false", f"out_dir={plain}"]) == 0
    with contextlib.ExitStack() as stack:
        if where == "file":
            disk_dir = tmp_path / "a-file"
            disk_dir.write_text("not a folder")
        elif where == "sysfs":
            disk_dir = Path("/sys/semcorr-test-cache")
        else:
            disk_dir = stack.enter_context(tmpfs(tmp_path / "small", "64k")) / "cache"
            disk_dir.mkdir()
            fill(disk_dir.parent)
        with caplog.at_level("WARNING", logger="semcorr"):
            rc = eval_cli.main([*EVAL_FAST, f"cache.disk_dir={disk_dir}", f"out_dir={tmp_path / 'run'}"])
    assert rc == 0
    warnings = [r for r in caplog.records if "feature cache: cannot write" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["pck"] == json.loads((plain / "metrics.json").read_text())["pck"]


@pytest.mark.slow
def test_an_edited_cache_file_is_recomputed_not_used(tmp_path, caplog):
    """The issue's case: cached features overwritten in place with the same size gave PCK 0;
    now each such file is a miss and the result is the uncached one."""
    cache = tmp_path / "cache"
    args = [*EVAL_FAST, f"cache.disk_dir={cache}"]  # dsift: features cacheable across runs
    assert eval_cli.main([*args, f"out_dir={tmp_path / 'a'}"]) == 0
    files = list(cache.rglob("*.pt"))
    assert files
    for f in files:
        blob = torch.load(f, weights_only=True)
        _flip_tensor_bytes(f, blob["features"])
    with caplog.at_level("WARNING", logger="semcorr"):
        assert eval_cli.main([*args, f"out_dir={tmp_path / 'b'}"]) == 0
    a, b = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in "ab")
    assert a["pck"] == b["pck"]  # (with the zeroed features used as they were: PCK changes)
    assert caplog.text.count("checksum mismatch") == len(files)


# ------------------------------------------------------------------------------------------------
# annotations
# ------------------------------------------------------------------------------------------------
def test_bad_pairs_are_left_out_counted_and_empty_pairs_reported(tmp_path, caplog):
    """data.bad_pairs=skip: a bad pair is left out with one counted warning; a pair with no valid
    keypoint is reported (count and ids) and not scored; the rest is evaluated."""
    from PIL import Image

    root = tmp_path / "pairs"
    root.mkdir()
    rng = np.random.default_rng(3)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / name)
    good = {"src": "a.png", "trg": "b.png", "src_kps": [[10, 10], [20, 30], [40, 12]],
            "trg_kps": [[12, 11], [22, 28], [41, 15]], "src_bbox": [0, 0, 60, 45], "trg_bbox": [0, 0, 60, 45]}
    pairs = [good, {**good, "src_kps": [None, None, None]}, {**good, "trg_bbox": [10, 10, 5, 5]},
             {**good, "trg_kps": [[12, 11], [22, 28], [1e308, 15]]}]
    (root / "pairs.json").write_text(json.dumps(pairs))
    out = tmp_path / "run"
    args = ["data=folder", f"data.root={root}", "data.image_size=64", "backbone=dsift", *QUIET]
    assert eval_cli.main([*args, f"out_dir={tmp_path / 'strict'}"]) == 2  # the default: an error
    with caplog.at_level("WARNING", logger="semcorr"):
        assert eval_cli.main([*args, "data.bad_pairs=skip", f"out_dir={out}"]) == 0
    left_out = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(left_out) == 1 and left_out[0].startswith(
        "folder: left out 2 pair(s) with bad annotations (data.bad_pairs=skip), e.g. folder: bad "
        f"annotation of pair '2:a.png->b.png' in {root / 'pairs.json'}, pair 2: the target box")
    assert ("folder: 1 of 2 pairs have no keypoint annotated in both images and are not scored: "
            "1:a.png->b.png") in caplog.text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_pairs"] == 1 and metrics["n_keypoints"] == 3
    assert metrics["pairs_subset"] == {"bad_pairs_left_out": 2}  # the table says so too (issue 21)
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["pair_id"] for r in rows] == ["0:a.png->b.png", "1:a.png->b.png"]


def test_annotation_rules_on_real_pf_willow_pass(pf_willow_root):
    """Every PF-WILLOW pair passes the checks (keypoints inside their images, no margin needed)."""
    from semcorr.data.datamodule import dataset_from_config

    cfg = load_config(["data=pf_willow", f"data.root={pf_willow_root}", "data.keypoint_margin=0"])
    assert len(dataset_from_config(cfg.data, "test", divisor=14)) == 900


# ------------------------------------------------------------------------------------------------
# precision, matchers, thresholds
# ------------------------------------------------------------------------------------------------
def test_precision_values_are_lightnings():
    from typing import get_args

    from lightning.fabric.connector import (_PRECISION_INPUT_INT, _PRECISION_INPUT_STR,
                                            _PRECISION_INPUT_STR_ALIAS)

    from semcorr.config import PRECISIONS

    want = {*get_args(_PRECISION_INPUT_STR), *get_args(_PRECISION_INPUT_INT), *get_args(_PRECISION_INPUT_STR_ALIAS)}
    assert set(PRECISIONS) == want


def test_pck_states_stay_float64_when_the_module_is_cast():
    from semcorr.metrics import PCK

    metric = PCK()
    module = torch.nn.ModuleDict({"m": metric}).to(torch.bfloat16)
    assert all(getattr(module["m"], n).dtype == torch.float64 for n in PCK.STATES)
    module.half()
    gt = torch.rand(2, 3, 2) * 50
    metric.update(gt + 1, gt, torch.ones(2, 3, dtype=torch.bool), trg_bbox=torch.tensor([[0.0, 0, 60, 60]] * 2))
    assert metric.kp_total.dtype == torch.float64 and float(metric.kp_total.sum()) == 6


@pytest.mark.parametrize("precision", ["bf16-true", "16-true"])
def test_eval_runs_in_half_precision(precision, tmp_path):
    out = tmp_path / "run"
    assert eval_cli.main([*TINY_VIT, "data=synthetic", "data.image_size=56", "data.n_pairs.test=4",
                          *QUIET, f"trainer.precision={precision}", f"out_dir={out}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_pairs"] == 4 and metrics["config"]["trainer"]["precision"] == precision
    assert all(0 <= v <= 100 for v in metrics["pck"].values())


@pytest.mark.parametrize("name", ["ot", "gwot"])
@pytest.mark.parametrize("side", ["src", "trg"])
def test_ot_matchers_alone_refuse_non_finite_features_naming_the_cells(name, side):
    from semcorr.backbones.base import FeatureMap
    from semcorr.config import group_config
    from semcorr.errors import NumericalError
    from semcorr.matchers import build_matcher

    matcher = build_matcher(group_config("matcher", name))
    maps = {s: torch.randn(1, 8, 4, 5) for s in ("src", "trg")}
    maps[side][0, 3, 2, 1] = float("nan")
    maps[side][0, 0, 3, 4] = float("inf")
    with pytest.raises(NumericalError) as err:
        matcher(FeatureMap(maps["src"], 14), FeatureMap(maps["trg"], 14))
    which = "source" if side == "src" else "target"
    assert (f"non-finite features (NaN or Inf) in 2 of 20 cells of {which} image 0 of the batch "
            "entering the matcher (cells (row, column): (2, 1), (3, 4))") in str(err.value)


@pytest.mark.parametrize("threshold_by,box,kps,length", [
    ("bbox", [10.0, 10.0, 5.0, 5.0], None, -5.0),
    ("bbox", [10.0, 10.0, 10.0, 30.0], None, 20.0),  # zero width: L = max(w, h) = 20 is fine
    ("bbox_kp", None, [[5.0, 5.0]], 0.0),
])
def test_a_threshold_is_never_zero_or_negative(threshold_by, box, kps, length):
    from semcorr.errors import DataError
    from semcorr.metrics.functional import pck_scores
    from semcorr.metrics.protocol import Protocol

    gt = torch.tensor([kps or [[5.0, 5.0], [8.0, 9.0]]])
    valid = torch.ones(gt.shape[:2], dtype=torch.bool)
    box_t = None if box is None else torch.tensor([box])
    proto = Protocol(threshold_by=threshold_by)
    if length > 0:
        assert float(pck_scores(proto, [0.1], gt, gt, valid, box_t).lengths[0]) == length
        return
    with pytest.raises(DataError, match=f"PCK threshold L = {length:g} \\(threshold_by={threshold_by}\\)"):
        pck_scores(proto, [0.1], gt, gt, valid, box_t)
    # a pair without a valid keypoint is not scored, whatever its L
    pck_scores(proto, [0.1], gt, gt, torch.zeros_like(valid), box_t)


def test_predictions_write_null_for_a_non_finite_coordinate(tmp_path):
    from semcorr.predictions import read_predictions, row_counts, write_predictions
    from semcorr.metrics.protocol import Protocol

    row = {"index": 0, "pred": [[1.0, 2.0], [None, None]], "trg_kps": [[1.0, 2.0], [None, None]],
           "valid": [True, False], "trg_bbox": [0, 0, 10, 10], "trg_imsize": [20, 20],
           "n_correct": {"0.1": 1}, "n_valid": 1}
    from semcorr.predictions import _points
    assert _points(torch.tensor([[1.0, float("nan")]], dtype=torch.float64)) == [[1.0, None]]
    write_predictions([row], tmp_path / "p.jsonl")
    text = (tmp_path / "p.jsonl").read_text()
    assert "NaN" not in text and "null" in text
    counts, n_valid = row_counts(read_predictions(tmp_path / "p.jsonl")[0], Protocol(), [0.1])
    assert n_valid == 1 and float(counts[0]) == 1
    with pytest.raises(ValueError):
        write_predictions([{**row, "threshold": float("nan")}], tmp_path / "q.jsonl")
    assert not (tmp_path / "q.jsonl").exists()

