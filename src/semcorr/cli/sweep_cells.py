"""Running one cell of a sweep: in the sweep's own process when it can, else as a process of its own.

A cell shares the sweep's process (torch, the CLIs and the packaged configs are imported once for
the whole sweep) unless the sweep file says ``isolate: true`` (or ``--isolate``), gives a
``launcher`` (``[srun]``), or the cell asks for several processes (``trainer.devices`` > 1,
``trainer.num_nodes`` > 1, a ``ddp`` / ``fsdp`` / ``deepspeed`` strategy): those run as
``python -m semcorr.cli.<mode> <tokens>``, so a crash, an out-of-memory kill or a hung device
takes down that cell only. Either way the cell's output (its stdout, stderr and log) goes to
``<run dir>/run.log``, and a failed cell raises :class:`RunFailed` with the error's last line.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from semcorr.errors import SemcorrError
from semcorr.interrupt import exit_code, interrupting_signal, signal_name

log = logging.getLogger("semcorr.sweep")
RESULT = "sweep_result.json"
MODES = ("train", "eval")
MULTI_PROCESS_STRATEGIES = ("ddp", "fsdp", "deepspeed")


@dataclass
class SweepSpec:
    """A sweep file (``semcorr/configs/sweep/<name>.yaml``; ``sweep.py --help``)."""

    name: str
    description: str = ""
    mode: str = "eval"  # train | eval: what each cell does
    base: List[str] = field(default_factory=list)  # every cell's tokens
    grid: Dict[str, List[Any]] = field(default_factory=dict)  # key -> values: the cross product
    # --search N: key -> [choices] or {low, high, log, integer}; empty: the grid's values as choices
    space: Dict[str, Any] = field(default_factory=dict)
    objective: str = "pck@0.1"  # maximised by --search: pck@<alpha> of the cell's evaluation
    seed: int = 0  # the search sampler's seed
    eval_after: bool = True  # train mode: evaluate the best checkpoint on data.split
    out_dir: Optional[str] = None
    launcher: List[str] = field(default_factory=list)  # a command prefix per cell, e.g. [srun]
    isolate: bool = False  # every cell in a process of its own
    labels: Dict[str, str] = field(default_factory=dict)  # cell name -> the summary's "row" label


def token_value(v: Any) -> str:
    """A value as it is written in a ``key=value`` token (lists and mappings in flow style)."""
    if isinstance(v, (list, dict)):
        return json.dumps(v).replace('"', "").replace(" ", "")
    return str(v).lower() if isinstance(v, bool) else str(v)


class RunFailed(RuntimeError):
    """A cell ended with an error; the message is the last line of its output."""


class RunStopped(RunFailed):
    """A cell's process was ended by a signal (exit code 128 + n, or killed by it): the cell did
    not finish, and it is ``interrupted``, never ``done``."""


def cell_tokens(spec: SweepSpec, overrides: Dict[str, str], run_dir: Path,
                extra: Sequence[str]) -> List[str]:
    """The tokens of one cell: no progress bar of its own (the sweep shows one line per cell;
    the sweep file or command line may turn it back on), the base, the command line's extra
    tokens, the cell's overrides, its folder and W&B group. ``--overwrite``: the cell's folder is
    the sweep's own; a retried cell replaces what a failed or interrupted one left."""
    return ["trainer.enable_progress_bar=false", *spec.base, *extra,
            *(f"{k}={v}" for k, v in overrides.items()), f"out_dir={run_dir}",
            f"logger.group={spec.name}", "--overwrite"]


def command(spec: SweepSpec, cli: str, tokens: Sequence[str]) -> List[str]:
    """The command line of one cell run as a process: ``launcher + [python, -m, semcorr.cli.<cli>, *tokens]``."""
    return [*spec.launcher, sys.executable, "-m", f"semcorr.cli.{cli}", *tokens]


def shares_process(spec: SweepSpec, tokens: Sequence[str]) -> bool:
    """Whether a cell may run in the sweep's own process (see the module docstring)."""
    if spec.isolate or spec.launcher:
        return False
    from semcorr.cli.common import several_processes, trainer_kwargs
    from semcorr.config import load_config

    try:
        cfg = load_config(tokens, default_groups={"loss": "gaussian_ce"} if spec.mode == "train" else None)
    except SemcorrError:
        return True  # the cell reports its own error, in its run.log
    kwargs = trainer_kwargs(cfg, stage="test")
    strategy = str(kwargs.get("strategy", "auto")).lower()
    return not several_processes(kwargs) and not any(s in strategy for s in MULTI_PROCESS_STRATEGIES)


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
    """Wait for a cell's process; when the sweep itself is interrupted (SIGINT / SIGTERM), pass
    the signal on to the cell, wait for it to stop in its own way (its summary, its last
    checkpoint), then raise the interruption. A second interruption kills the cell."""
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


@contextmanager
def output_to(log_path: Path) -> Iterator[Any]:
    """Inside the block, this process's stdout, stderr and log records (semcorr's at INFO) go to
    ``log_path`` (appended), as a cell run as a process would write them."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    root, ours = logging.getLogger(), logging.getLogger("semcorr")
    saved_handlers, saved_level = root.handlers[:], ours.level
    with open(log_path, "a") as out:
        handler = logging.StreamHandler(out)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s",
                                               "%H:%M:%S"))
        root.handlers = [handler]
        ours.setLevel(logging.INFO)
        try:
            with redirect_stdout(out), redirect_stderr(out):
                yield out
        finally:
            root.handlers = saved_handlers
            ours.setLevel(saved_level)


def run_in_process(cli: str, tokens: Sequence[str], log_path: Path,
                   callbacks: Sequence[Any] = ()) -> None:
    """Run ``eval`` or ``train`` with ``tokens`` in this process (``callbacks``: extra Lightning
    callbacks of a training run, e.g. a search's pruning); :class:`RunFailed` on an error."""
    with output_to(log_path) as out:
        out.write(f"$ semcorr-{cli} {' '.join(tokens)}   (in the sweep's process)\n")
        try:
            if cli == "eval":
                from semcorr.cli.eval import evaluate

                evaluate(list(tokens))
            else:
                from semcorr.cli.common import parse_args
                from semcorr.cli.train import fit, train_config

                args = parse_args(list(tokens), "train.py", flags=("--overwrite",))
                fit(train_config(args.tokens, extra_dirs=args.config_dirs), callbacks=list(callbacks),
                    overwrite=args.overwrite)
        except Exception as err:  # noqa: BLE001  (one failed cell does not stop the sweep)
            if interrupting_signal(err) is not None:  # the sweep was interrupted: not the cell's failure
                out.write(f"{cli}.py: {err}\n")  # the line the command itself would end with
                raise
            out.write(traceback.format_exc())
            raise RunFailed(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    _free_memory()


def _free_memory() -> None:
    """Release what a finished in-process cell held (its model, cached features, GPU blocks)."""
    import gc

    gc.collect()
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def execute(spec: SweepSpec, overrides: Dict[str, str], run_dir: Path, extra: Sequence[str],
            callbacks: Callable[[], Sequence[Any]] = lambda: ()) -> Dict[str, Any]:
    """Run one cell (see the module docstring); returns its result: ``pck`` (eval, or train with
    ``eval_after``), ``val_best`` and ``steps`` (train), ``in_process`` and ``seconds``.
    ``callbacks()``: extra callbacks for an in-process training cell."""
    tokens = cell_tokens(spec, overrides, run_dir, extra)
    log_path = run_dir / "run.log"
    shared = shares_process(spec, tokens)
    t0 = time.perf_counter()
    result: Dict[str, Any] = {"in_process": shared}
    given = list(callbacks()) if shared and spec.mode == "train" else []

    def run(cli: str, cli_tokens: Sequence[str]) -> None:
        if shared:
            run_in_process(cli, cli_tokens, log_path, given if cli == "train" else ())
        else:
            run_process(command(spec, cli, cli_tokens), log_path)

    if spec.mode == "eval":
        run("eval", tokens)
        result["pck"] = json.loads((run_dir / "metrics.json").read_text())["pck"]
    else:
        run("train", tokens)
        summary = json.loads((run_dir / "train_summary.json").read_text())
        result["val_best"] = summary["best_score"]
        result["steps"] = summary["global_step"]
        pruned = next((c.pruned_at for c in given if getattr(c, "pruned_at", None) is not None), None)
        if pruned is not None:
            result["pruned_at_step"] = pruned
        elif spec.eval_after and summary["best_checkpoint"]:
            eval_dir = run_dir / "eval"
            # the checkpoint brings its config; the cell's trainer.* (devices, strategy, ...) too
            placement = [t for t in tokens if t.startswith("trainer.")]
            run("eval", [f"ckpt={summary['best_checkpoint']}", f"out_dir={eval_dir}",
                         f"logger.group={spec.name}", *placement, *extra, "--overwrite"])
            result["pck"] = json.loads((eval_dir / "metrics.json").read_text())["pck"]
    result["seconds"] = time.perf_counter() - t0
    return result
