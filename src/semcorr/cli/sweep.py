"""Ablation grids: ``python sweep.py <name | file.yaml> [key=value ...] [out_dir=DIR]``.

``<name>`` is a packaged sweep (``semcorr/configs/sweep/<name>.yaml``, e.g. ``matcher_x_head``).

A sweep file::

    name: matcher_x_head          # also the W&B group of every run
    mode: train                   # train | eval: what each run does
    base: [data=synthetic, backbone=dinov2_vits14, trainer.max_steps=100]  # every run's tokens
    grid:                         # the cross product of these overrides, one run per cell
      matcher: [nn, ot, gwot]
      head: [none, resnet_bottleneck]
    eval_after: true              # train mode: evaluate the best checkpoint on data.split
    launcher: []                  # a command prefix for each run, e.g. [srun] (see below)
    labels: {}                    # run name -> a label for the summary's "row" column (optional)

Each run is its own process: ``python -m semcorr.cli.<mode> <tokens>`` (after ``launcher``), its
output in ``DIR/<run name>/run.log``. A run that crashes, runs out of memory or hangs its devices
does not take the sweep down, and a distributed run (``trainer.devices=4 trainer.strategy=ddp``)
is launched by Lightning (or by ``launcher``, e.g. ``[srun]`` in a SLURM allocation) as a run of
its own; the sweep itself is one process and never repeats the grid per rank.

Extra command-line tokens are appended to ``base``; ``out_dir=DIR`` sets the sweep folder
(default ``runs/sweeps/<name>``). Each run lives in ``DIR/<run name>/`` and, once finished, holds
``sweep_result.json``; a re-started sweep skips those runs (so an interrupted sweep resumes), and
failed or interrupted runs are retried from the start (``--overwrite`` of the cell's folder).
A run ended by a signal is ``interrupted``, never ``done``; a SIGINT / SIGTERM to the sweep is
passed on to the running run, which stops in its own way, and the sweep exits 130 / 143.
After every run ``DIR/summary.csv`` and ``DIR/summary.md`` are rewritten with one row per run:
its overrides, status, PCK (eval: the evaluated split; train: the best validation score and,
with ``eval_after``, the test split) and wall-clock seconds.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import OmegaConf

from semcorr.atomic import atomic_open, write_text
from semcorr.cli.common import make_out_dir, run_main, write_json
from semcorr.config import group_file, load_yaml
from semcorr.distributed import launch_rank_is_zero
from semcorr.errors import ConfigError
from semcorr.interrupt import RunInterrupted, exit_code, interrupting_signal, signal_name
from semcorr.rundir import RunLock

log = logging.getLogger("semcorr.sweep")
RESULT = "sweep_result.json"
MODES = ("train", "eval")


@dataclass
class SweepSpec:
    name: str
    mode: str = "eval"
    base: List[str] = field(default_factory=list)
    grid: Dict[str, List[Any]] = field(default_factory=dict)
    eval_after: bool = True
    out_dir: Optional[str] = None
    launcher: List[str] = field(default_factory=list)
    labels: Dict[str, str] = field(default_factory=dict)


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a sweep file (see the module docstring): a path, or the name of a packaged
    sweep (``semcorr/configs/sweep/<name>.yaml``) or of one in a ``$SEMCORR_CONFIG_DIR`` folder."""
    path = Path(path)
    if not path.is_file():
        if path.suffix or len(path.parts) > 1:
            raise FileNotFoundError(f"sweep file not found: {path}")
        path = group_file("sweep", path.name)
    raw = OmegaConf.to_container(load_yaml(path, "name, mode, base, grid, ..."), resolve=True)
    known = set(SweepSpec.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}; valid: {', '.join(sorted(known))}")
    spec = SweepSpec(**{"name": path.stem, **raw})
    for key, kind in (("name", str), ("mode", str), ("base", list), ("grid", dict),
                      ("eval_after", bool), ("launcher", list)):
        if not isinstance(getattr(spec, key), kind):
            raise ConfigError(f"{path}: {key} must be a {kind.__name__}, got "
                              f"{getattr(spec, key)!r}")
    bad_tokens = [t for t in (*spec.base, *spec.launcher) if not isinstance(t, str)]
    if bad_tokens:
        raise ConfigError(f"{path}: base and launcher hold strings, got {bad_tokens}")
    if spec.mode not in MODES:
        raise ConfigError(f"{path}: mode {spec.mode!r}; valid: {', '.join(MODES)}")
    bad = [k for k, v in spec.grid.items() if not isinstance(v, list) or not v]
    if bad or not spec.grid:
        raise ConfigError(f"{path}: grid needs a non-empty list of values per key (bad: {bad})")
    return spec


def _value(v: Any) -> str:
    if isinstance(v, (list, dict)):
        return json.dumps(v).replace('"', "").replace(" ", "")
    return str(v).lower() if isinstance(v, bool) else str(v)


def grid_runs(spec: SweepSpec) -> List[Dict[str, str]]:
    """One ``{key: value}`` dict of overrides per cell of the grid, in row-major order."""
    keys = list(spec.grid)
    return [dict(zip(keys, map(_value, combo)))
            for combo in itertools.product(*(spec.grid[k] for k in keys))]


def run_name(overrides: Dict[str, str]) -> str:
    text = "__".join(f"{k.split('.')[-1]}-{v}" for k, v in overrides.items())
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)


class RunFailed(RuntimeError):
    """A run's process exited with an error; the message is the last line of its output."""


class RunStopped(RunFailed):
    """A run's process was ended by a signal (exit code 128 + n, or killed by it): the run did not
    finish, and its cell is ``interrupted``, never ``done``."""


def command(spec: SweepSpec, cli: str, tokens: Sequence[str]) -> List[str]:
    """The command line of one run: ``launcher + [python, -m, semcorr.cli.<cli>, *tokens]``."""
    return [*spec.launcher, sys.executable, "-m", f"semcorr.cli.{cli}", *tokens]


def run_process(cmd: Sequence[str], log_path: Path) -> None:
    """Run ``cmd`` with its output appended to ``log_path``; :class:`RunFailed` on a non-zero exit."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])  # the folder holding this semcorr package
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        start = out.tell()
        # its own session: a Ctrl-C reaches the sweep, which passes it on once (wait_forwarding)
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        code = wait_forwarding(proc)
    if code:
        with open(log_path, errors="replace") as f:
            f.seek(start)
            lines = [line.strip() for line in f.read().splitlines() if line.strip()]
        last = lines[-1] if lines else "no output"
        signum = -code if code < 0 else code - 128 if code in STOP_CODES else None
        if signum is not None:
            raise RunStopped(f"{signal_name(signum)} (exit {code}): {last}")
        raise RunFailed(f"exit {code}: {last}")


STOP_CODES = tuple(exit_code(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL))


def wait_forwarding(proc: subprocess.Popen) -> int:
    """Wait for a run's process; when the sweep itself is interrupted (SIGINT / SIGTERM), pass
    the signal on to the run, wait for it to stop in its own way (its summary, its last
    checkpoint), then raise the interruption. A second interruption kills the run."""
    try:
        return proc.wait()
    except BaseException as err:
        signum = interrupting_signal(err)
        if signum is None or proc.poll() is not None:
            raise
        proc.send_signal(signum)
        try:
            proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
        raise


def execute(spec: SweepSpec, overrides: Dict[str, str], run_dir: Path,
            extra: Sequence[str]) -> Dict[str, Any]:
    """Run one cell, in its own process(es); returns its result (PCK and seconds)."""
    # --overwrite: the cell's folder is the sweep's own; a retried run replaces what a failed
    # or interrupted one left
    tokens = [*spec.base, *extra, *(f"{k}={v}" for k, v in overrides.items()),
              f"out_dir={run_dir}", f"logger.group={spec.name}", "--overwrite"]
    log_path = run_dir / "run.log"
    t0 = time.perf_counter()
    result: Dict[str, Any] = {}
    if spec.mode == "eval":
        run_process(command(spec, "eval", tokens), log_path)
        result["pck"] = json.loads((run_dir / "metrics.json").read_text())["pck"]
    else:
        run_process(command(spec, "train", tokens), log_path)
        summary = json.loads((run_dir / "train_summary.json").read_text())
        result["val_best"] = summary["best_score"]
        result["steps"] = summary["global_step"]
        if spec.eval_after and summary["best_checkpoint"]:
            eval_dir = run_dir / "eval"
            # the checkpoint brings its config; the cell's trainer.* (devices, strategy, ...) too
            placement = [t for t in tokens if t.startswith("trainer.")]
            run_process(command(spec, "eval", [f"ckpt={summary['best_checkpoint']}",
                                               f"out_dir={eval_dir}", f"logger.group={spec.name}",
                                               *placement, *extra, "--overwrite"]), log_path)
            result["pck"] = json.loads((eval_dir / "metrics.json").read_text())["pck"]
    result["seconds"] = time.perf_counter() - t0
    return result


def write_summary(out_dir: Path, spec: SweepSpec, rows: List[Dict[str, Any]]) -> None:
    """``summary.csv`` and ``summary.md``: one row per run."""
    alphas = sorted({a for r in rows for a in (r.get("pck") or {})}, key=float)
    keys = list(spec.grid)
    labelled = ["row"] if spec.labels else []
    header = [*labelled, "run", *keys, "status", *(f"pck@{a}" for a in alphas)]
    if spec.mode == "train":
        header += ["val_best", "steps"]
    header.append("seconds")
    table = []
    for r in rows:
        line = [*([spec.labels.get(r["run"], "")] if labelled else []), r["run"],
                *(r["overrides"][k] for k in keys), r["status"],
                *(_fmt(r.get("pck", {}).get(a)) for a in alphas)]
        if spec.mode == "train":
            line += [_fmt(r.get("val_best")), str(r.get("steps", ""))]
        line.append(_fmt(r.get("seconds"), 1))
        table.append(line)
    with atomic_open(out_dir / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(table)
    md = [f"# Sweep {spec.name} ({spec.mode})", "", "| " + " | ".join(header) + " |",
          "|" + "---|" * len(header)]
    md += ["| " + " | ".join(line) + " |" for line in table]
    write_text(out_dir / "summary.md", "\n".join(md) + "\n")


def _fmt(v: Any, digits: int = 2) -> str:
    return "" if v is None else f"{float(v):.{digits}f}"


def sweep(argv: Sequence[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(__doc__ or "")
        return 0
    if not launch_rank_is_zero():
        raise ConfigError("sweep.py runs as one process, not once per rank: start it without "
                          "srun / torchrun (a sweep's launcher: [srun] starts each run on the ranks)")
    spec = load_sweep(argv[0])
    extra = [t for t in argv[1:] if not t.startswith("out_dir=")]
    outs = [t.split("=", 1)[1] for t in argv[1:] if t.startswith("out_dir=")]
    out_dir = make_out_dir(outs[-1] if outs else spec.out_dir or f"runs/sweeps/{spec.name}")
    with RunLock.acquire(out_dir):  # one sweep per folder at a time; a re-started one resumes it
        return _sweep(spec, out_dir, extra)


def _sweep(spec: SweepSpec, out_dir: Path, extra: Sequence[str]) -> int:
    rows: List[Dict[str, Any]] = []
    cells = grid_runs(spec)
    for i, overrides in enumerate(cells):
        name = run_name(overrides)
        run_dir = out_dir / name
        done = run_dir / RESULT
        row: Dict[str, Any] = {"run": name, "overrides": overrides}
        rows.append(row)
        if done.is_file():
            row.update(json.loads(done.read_text()), status="done (skipped)")
            log.info("[%d/%d] %s: finished before, skipped", i + 1, len(cells), name)
            write_summary(out_dir, spec, rows)
            continue
        log.info("[%d/%d] %s", i + 1, len(cells), name)
        try:
            result = execute(spec, overrides, run_dir, extra)
            write_json(done, result)  # atomic: a re-started sweep trusts it
            row.update(result, status="done")
        except RunStopped as err:  # the run alone was stopped (killed, out of memory, ...)
            log.error("%s interrupted: %s", name, err)
            row["status"] = f"interrupted: {str(err).splitlines()[0][:80]}"
        except (Exception, SystemExit, KeyboardInterrupt) as err:  # one failed run does not stop the sweep
            signum = interrupting_signal(err)
            if signum is not None:  # the sweep itself was interrupted: it stops here
                row["status"] = f"interrupted: {signal_name(signum)}"
                write_summary(out_dir, spec, rows)
                raise RunInterrupted(signum, f"the sweep stopped in run {name} ({i + 1}/{len(cells)}, "
                                             "not marked done); start it again to continue") from None
            log.error("%s failed: %s", name, err)
            log.debug("%s", traceback.format_exc())
            row["status"] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:80]}"
        write_summary(out_dir, spec, rows)
    unfinished = sum(not r["status"].startswith("done") for r in rows)
    sys.stdout.write((out_dir / "summary.md").read_text())
    sys.stdout.write(f"{len(rows) - unfinished}/{len(rows)} runs finished; {out_dir / 'summary.md'}\n")
    return 1 if unfinished else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(sweep, argv, "sweep.py")


if __name__ == "__main__":
    raise SystemExit(main())
