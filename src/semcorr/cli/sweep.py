"""Ablation grids and searches: ``python sweep.py <name | file.yaml> [key=value ...] [--search N]``.

``<name>`` is a packaged sweep (``semcorr/configs/sweep/<name>.yaml``, listed by ``--help`` and
in ``docs/presets.md``) or one in a ``$SEMCORR_CONFIG_DIR`` folder. The sweep file's keys are the
fields of :class:`~semcorr.cli.sweep_cells.SweepSpec`; :data:`HELP` is the user's description.

Grid mode (the default) runs every cell of the cross product of ``grid``; each finished cell
holds ``sweep_result.json`` and a re-started sweep skips it (an interrupted sweep resumes; failed
or interrupted cells are retried from the start: ``--overwrite`` of the cell's folder). A cell
ended by a signal is ``interrupted``, never ``done``; a SIGINT / SIGTERM to the sweep is passed on
to the running cell, which stops in its own way, and the sweep exits 130 / 143. One sweep at a
time holds its folder (a lock). Search mode (``--search N``, :mod:`semcorr.cli.sweep_search`) runs N trials
of an Optuna study kept in ``study.db``. Cells share the sweep's process unless they need their
own (:mod:`semcorr.cli.sweep_cells`). After every cell ``summary.csv`` and ``summary.md`` are
rewritten (one row per cell); ``sweep.yaml`` holds the sweep as run (``--config`` re-runs it).
The console shows one live line: cells done, the running cell and its time, and the ETA.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import re
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import OmegaConf

from semcorr.atomic import atomic_open, write_text
from semcorr.cli.common import make_out_dir, plural, run_main, write_json
from semcorr.cli.sweep_cells import (MODES, RESULT, RunFailed, RunStopped, SweepSpec,  # noqa: F401
                                     command, execute, run_process, token_value)
from semcorr.config import group_file, load_yaml
from semcorr.distributed import launch_rank_is_zero
from semcorr.errors import ConfigError
from semcorr.interrupt import RunInterrupted, interrupting_signal, signal_name
from semcorr.rundir import RunLock

log = logging.getLogger("semcorr.sweep")

HELP = """usage: sweep.py NAME|FILE [key=value ...] [out_dir=DIR] [--search N] [--isolate]
                [--config FILE] [--verbose] [--help]

Run an ablation grid (every cell of a cross product) or, with --search N, N trials of an Optuna
search, each cell an evaluation or a training run; write summary.md / summary.csv.

arguments:
  NAME|FILE       a packaged sweep (below) or your own sweep file (.yaml)
  key=value       appended to every cell's tokens (e.g. data.root=/data/pf-willow)
  out_dir=DIR     the sweep's folder (default runs/sweeps/<name>); each cell in DIR/<cell>/
  --search N      run N trials of an Optuna search (TPE, median pruning) over the file's
                  space (or its grid's values); the study is kept in DIR/study.db
  --isolate       run every cell as a process of its own (default: cells share the sweep's
                  process unless they need several processes or the file gives a launcher)
  --config FILE   re-run a sweep as it ran: the DIR/sweep.yaml a sweep wrote
  --verbose       the libraries' messages too
  --help          this text

a sweep file:
  name: my_sweep                 also the W&B group of every cell
  description: one line          shown by --help
  mode: eval                     eval | train: what each cell does
  base: [data=pf_willow, backbone=dsift]     every cell's tokens
  grid:                          the cross product, one cell per combination
    matcher: [nn, ot, gwot]
    matcher.transfer.method: [argmax, window_soft_argmax]
  space:                         --search only (default: the grid's values as choices)
    matcher.lam_gw: {low: 0.01, high: 2.0, log: true}
    matcher.n_steps: {low: 10, high: 80, integer: true}
    matcher: [gwot, gwot_pf_willow]
  objective: pck@0.1             what --search maximises (the cell's evaluation)
  seed: 0                        the search sampler's seed
  eval_after: true               train mode: evaluate the best checkpoint on data.split
  launcher: []                   a command prefix per cell, e.g. [srun] in a SLURM allocation
  isolate: false                 every cell in its own process
  labels: {}                     cell name -> a label for the summary's "row" column (optional)

A re-started sweep resumes: finished grid cells are skipped (DIR/<cell>/sweep_result.json),
failed or interrupted ones retried; a search continues its study until N trials have finished.
Each cell's output is in DIR/<cell>/run.log. Ctrl-C (or SIGTERM) stops the running cell in its
own way and the sweep with exit 130 (143); the cell is not marked done.

packaged sweeps:
{sweeps}

examples:
  python sweep.py pf_willow_zero_shot
  python sweep.py gwot_sensitivity data=pf_willow backbone=dsift out_dir=runs/sweeps/gwot_sens
  python sweep.py gwot_sensitivity data=pf_willow backbone=dsift --search 20
  python sweep.py synthetic_matcher_x_head out_dir=runs/sweeps/synthetic
  python sweep.py --config runs/sweeps/synthetic/sweep.yaml
"""


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a sweep file: a path, or the name of a packaged sweep
    (``semcorr/configs/sweep/<name>.yaml``) or of one in a ``$SEMCORR_CONFIG_DIR`` folder."""
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
    for key, kind in (("name", str), ("description", str), ("mode", str), ("base", list),
                      ("grid", dict), ("space", dict), ("objective", str), ("seed", int),
                      ("eval_after", bool), ("launcher", list), ("isolate", bool),
                      ("labels", dict)):
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


def grid_runs(spec: SweepSpec) -> List[Dict[str, str]]:
    """One ``{key: value}`` dict of overrides per cell of the grid, in row-major order."""
    keys = list(spec.grid)
    return [dict(zip(keys, map(token_value, combo)))
            for combo in itertools.product(*(spec.grid[k] for k in keys))]


def run_name(overrides: Dict[str, str]) -> str:
    text = "__".join(f"{k.split('.')[-1]}-{v}" for k, v in overrides.items())
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)


# ------------------------------------------------------------------------------------------------
# summaries
# ------------------------------------------------------------------------------------------------
def write_summary(out_dir: Path, spec: SweepSpec, rows: List[Dict[str, Any]],
                  keys: Optional[Sequence[str]] = None) -> None:
    """``summary.csv`` and ``summary.md``: one row per cell (``keys``: the varied keys; default
    the grid's)."""
    alphas = sorted({a for r in rows for a in (r.get("pck") or {})}, key=float)
    keys = list(spec.grid if keys is None else keys)
    labelled = ["row"] if spec.labels else []
    header = [*labelled, "run", *keys, "status", *(f"pck@{a}" for a in alphas)]
    if spec.mode == "train":
        header += ["val_best", "steps"]
    header.append("seconds")
    table = []
    for r in rows:
        line = [*([spec.labels.get(r["run"], "")] if labelled else []), r["run"],
                *(r["overrides"].get(k, "") for k in keys), r["status"],
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


def cell_line(name: str, row: Dict[str, Any], objective: str) -> str:
    """The permanent line of a finished cell: status, its score and seconds."""
    alpha = objective.split("@", 1)[-1]
    pck = next((v for a, v in (row.get("pck") or {}).items() if float(a) == float(alpha)), None)
    score = f", {objective} {pck:.2f}" if pck is not None else (
        f", val best {row['val_best']:.2f}" if row.get("val_best") is not None else "")
    took = f" in {row['seconds']:.0f} s" if row.get("seconds") is not None else ""
    return f"{name}: {row['status']}{score}{took}"


# ------------------------------------------------------------------------------------------------
# the live line
# ------------------------------------------------------------------------------------------------
class SweepProgress:
    """One live line for the whole sweep (tqdm, on stderr): cells finished of all, the running
    cell with its elapsed time, the rate and the ETA (from the cells run now, skipped ones not
    counted); a finished cell's result is printed above it as a line of its own."""

    def __init__(self, total: int, done: int, name: str, objective: str) -> None:
        from semcorr.progress import make_bar

        self.bar = make_bar(total, f"sweep {name}", "cell", leave=True, initial=done)
        self.objective = objective
        self.current: Optional[str] = None
        self.started = 0.0
        self.stop = threading.Event()
        self.ticker: Optional[threading.Thread] = None
        if getattr(self.bar.fp, "isatty", lambda: False)():
            self.ticker = threading.Thread(target=self._tick, daemon=True)
            self.ticker.start()

    def _postfix(self) -> str:
        if self.current is None:
            return ""
        return f"{self.current} {time.perf_counter() - self.started:.0f} s"

    def _tick(self) -> None:
        while not self.stop.wait(1.0):
            self.bar.set_postfix_str(self._postfix(), refresh=True)

    def start(self, name: str) -> None:
        self.current, self.started = name, time.perf_counter()
        self.bar.set_postfix_str(self._postfix(), refresh=True)

    def end(self, name: str, row: Dict[str, Any]) -> None:
        self.bar.write(cell_line(name, row, self.objective), file=sys.stderr)
        self.current = None
        self.bar.update(1)

    def close(self) -> None:
        self.stop.set()
        self.bar.set_postfix_str("", refresh=False)
        self.bar.close()


# ------------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------------
def parse_sweep_args(argv: Sequence[str]) -> Dict[str, Any]:
    """``{"file", "tokens", "out_dir", "search", "isolate"}`` of the command line."""
    args: Dict[str, Any] = {"file": None, "tokens": [], "out_dir": None, "search": None, "isolate": False}
    it = iter(argv)
    for token in it:
        if token in ("--search", "--config"):
            value = next(it, None)
            if value is None:
                raise ConfigError(f"{token} needs a value")
            if token == "--config":
                args["file"] = value
            else:
                try:
                    args["search"] = int(value)
                except ValueError:
                    raise ConfigError(f"--search needs a number of trials, got {value!r}") from None
                if args["search"] < 1:
                    raise ConfigError(f"--search needs at least 1 trial, got {value}")
        elif token == "--isolate":
            args["isolate"] = True
        elif token == "--verbose":
            continue  # handled by run_main
        elif token.startswith("--"):
            raise ConfigError(f"unknown flag {token}; valid: --search N, --isolate, --config FILE, "
                              "--verbose, --help")
        elif token.startswith("out_dir="):
            args["out_dir"] = token.split("=", 1)[1]
        elif "=" not in token and args["file"] is None:
            args["file"] = token
        else:
            args["tokens"].append(token)
    if args["file"] is None:
        raise ConfigError("give a sweep: a packaged name or a file (sweep.py --help lists them)")
    return args


def sweep_help() -> str:
    from semcorr.cli.help import SWEEP, description, two_columns
    from semcorr.config import available

    sweeps = two_columns([(n, description(SWEEP, n)) for n in available(SWEEP)]) or "  (none)"
    return HELP.replace("{sweeps}", sweeps)


def sweep(argv: Sequence[str]) -> int:
    if not argv or any(t in ("-h", "--help") for t in argv):
        sys.stdout.write(sweep_help())
        return 0
    if not launch_rank_is_zero():
        raise ConfigError("sweep.py runs as one process, not once per rank: start it without "
                          "srun / torchrun (a sweep's launcher: [srun] starts each run on the ranks)")
    args = parse_sweep_args(argv)
    spec = load_sweep(args["file"])
    spec.isolate = spec.isolate or args["isolate"]
    extra = args["tokens"]
    out_dir = make_out_dir(args["out_dir"] or spec.out_dir or f"runs/sweeps/{spec.name}")
    with RunLock.acquire(out_dir):  # one sweep per folder at a time; a re-started one resumes it
        return _sweep(spec, out_dir, extra, args["search"])


def _sweep(spec: SweepSpec, out_dir: Path, extra: Sequence[str], search: Optional[int]) -> int:
    ran = dict(asdict(spec), base=[*spec.base, *extra], out_dir=str(out_dir))
    write_text(out_dir / "sweep.yaml", OmegaConf.to_yaml(OmegaConf.create(ran)))
    if search is not None:
        rows, keys = _search(spec, out_dir, search, extra)
    else:
        rows, keys = _grid(spec, out_dir, extra), None
    failed = sum(not r["status"].startswith(("done", "pruned")) for r in rows)
    sys.stdout.write((out_dir / "summary.md").read_text())
    tail = ""
    if search is not None:
        from semcorr.cli.sweep_search import STUDY_FILE, best_line

        tail = f"; {best_line(out_dir / STUDY_FILE, spec)}; study {out_dir / STUDY_FILE}"
    sys.stdout.write(f"{len(rows) - failed}/{plural(len(rows), 'run')} finished{tail}; wrote "
                     f"{out_dir}/: summary.md, summary.csv, sweep.yaml and one folder per run\n")
    return 1 if failed else 0


def _grid(spec: SweepSpec, out_dir: Path, extra: Sequence[str]) -> List[Dict[str, Any]]:
    cells = grid_runs(spec)
    done_before = sum((out_dir / run_name(c) / RESULT).is_file() for c in cells)
    progress = SweepProgress(len(cells), done_before, spec.name, spec.objective)
    rows: List[Dict[str, Any]] = []
    try:
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
            progress.start(name)
            try:
                result = execute(spec, overrides, run_dir, extra)
                write_json(done, result)  # atomic: a re-started sweep trusts it
                row.update(result, status="done")
            except RunStopped as err:  # the cell alone was stopped (killed, out of memory, ...)
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
                row["status"] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:80]}"
            progress.end(name, row)
            write_summary(out_dir, spec, rows)
    finally:
        progress.close()
    return rows


def _search(spec: SweepSpec, out_dir: Path, n_trials: int, extra: Sequence[str]):
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError("--search needs Optuna: pip install 'semcorr[search]' (or pip install "
                          "optuna)") from None
    from semcorr.cli.sweep_search import finished, open_study, run_search, search_space

    keys = list(search_space(spec))
    progress = SweepProgress(n_trials, min(finished(open_study(spec, out_dir)), n_trials),
                             spec.name, spec.objective)
    rows: List[Dict[str, Any]] = []

    def on_end(name: str, row: Dict[str, Any]) -> None:
        progress.end(name, row)
        rows.append(row)
        write_summary(out_dir, spec, rows, keys)

    try:
        rows = run_search(spec, out_dir, n_trials, extra, progress.start, on_end)
    finally:
        progress.close()
    write_summary(out_dir, spec, rows, keys)
    return rows, keys


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(sweep, argv, "sweep.py")


if __name__ == "__main__":
    raise SystemExit(main())
