"""``sweep.py NAME --search N``: a hyper-parameter search with Optuna instead of the full grid.

- The space: the sweep file's ``space`` (``key: [choices]`` or ``key: {low, high, log, integer}``),
  or, when it has none, the grid's values as choices. Each trial is a cell with those overrides,
  run like a grid cell (:mod:`semcorr.cli.sweep_cells`), in ``<out_dir>/trial-NNNN/``.
- The objective, maximised: the cell's ``objective`` (``pck@<alpha>`` of its evaluation; a
  training cell without ``eval_after``: its best validation score). A missing or non-finite value
  fails the trial (it is never scored as 0).
- The study lives in ``<out_dir>/study.db`` (SQLite): a re-started search continues it and runs
  trials until N have finished (complete or pruned); trials an interruption left running are
  marked failed. The sampler is TPE, seeded with ``seed`` plus the trials already in the study.
- Pruning: a training cell that runs in the sweep's process reports its validation score
  (``checkpointing.monitor``) after every validation, and Optuna's median pruner stops it when it
  falls below the median of earlier trials at that step (after 2 finished trials). Evaluation
  cells have no intermediate score; cells run as their own process are not pruned.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import lightning as L

from semcorr.cli.sweep_cells import RunFailed, RunStopped, SweepSpec, execute, token_value
from semcorr.errors import ConfigError
from semcorr.interrupt import RunInterrupted, interrupting_signal

log = logging.getLogger("semcorr.sweep")
STUDY_FILE = "study.db"


def search_space(spec: SweepSpec) -> Dict[str, Any]:
    """``{key: optuna distribution}`` of the sweep's ``space`` (or its grid's choices)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    raw = spec.space or spec.grid
    space: Dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, list) and value:
            space[key] = CategoricalDistribution([_choice(v) for v in value])
        elif isinstance(value, dict) and {"low", "high"} <= set(value) <= {"low", "high", "log", "integer"}:
            low, high, use_log = value["low"], value["high"], bool(value.get("log", False))
            if not low < high or (use_log and low <= 0):
                raise ConfigError(f"sweep {spec.name}: space.{key} needs low < high (and low > 0 with log)")
            space[key] = (IntDistribution(int(low), int(high), log=use_log) if value.get("integer")
                          else FloatDistribution(float(low), float(high), log=use_log))
        else:
            raise ConfigError(f"sweep {spec.name}: space.{key} must be a non-empty list of choices or "
                              f"{{low, high, log, integer}}; got {value!r}")
    if not space:
        raise ConfigError(f"sweep {spec.name}: --search needs a space (or a grid) to search")
    return space


def _choice(value: Any) -> Any:
    """Optuna stores choices of None, bool, int, float or str; others as their YAML text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else token_value(value)


def objective_value(result: Dict[str, Any], objective: str) -> float:
    """The number a trial is scored by (see the module docstring); :class:`RunFailed` when absent
    or not finite."""
    if not objective.startswith("pck@"):
        raise ConfigError(f"objective must be pck@<alpha>, got {objective!r}")
    alpha = objective.split("@", 1)[1]
    pck = result.get("pck") or {}
    value = next((v for a, v in pck.items() if float(a) == float(alpha)), None)
    if value is None and "pck" not in result:
        value = result.get("val_best")
    if value is None:
        raise RunFailed(f"the run reported no {objective} (alphas: {', '.join(pck) or 'none'})")
    value = float(value)
    if not math.isfinite(value):
        raise RunFailed(f"{objective} is {value}: not a score")
    return value


class PruneTrial(L.Callback):
    """Reports the validation score (the run's ``checkpointing.monitor``) to an Optuna trial
    after every validation and stops training when the pruner says so (``pruned_at``: the step)."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial
        self.pruned_at: Optional[int] = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        monitor = getattr(trainer.checkpoint_callback, "monitor", None)
        value = trainer.callback_metrics.get(monitor) if monitor else None
        if value is None or not math.isfinite(float(value)):
            return
        self.trial.report(float(value), trainer.global_step)
        if self.trial.should_prune():
            self.pruned_at = trainer.global_step
            trainer.should_stop = True


def open_study(spec: SweepSpec, out_dir: Path):
    """The search's study in ``out_dir/study.db`` (created, or continued)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{(out_dir / STUDY_FILE).absolute()}"
    study = optuna.load_study(study_name=spec.name, storage=storage) if _exists(storage, spec.name) else None
    seed = spec.seed + (len(study.trials) if study is not None else 0)  # a resumed search samples anew
    return optuna.create_study(
        study_name=spec.name, storage=storage, load_if_exists=True, direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))


def _exists(storage: str, name: str) -> bool:
    import optuna

    try:
        return any(s.study_name == name for s in optuna.get_all_study_summaries(storage))
    except Exception:  # noqa: BLE001  (no database yet)
        return False


def finished(study) -> int:
    from optuna.trial import TrialState

    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)


def run_search(spec: SweepSpec, out_dir: Path, n_trials: int, extra: Sequence[str],
               on_start: Callable[[str], None], on_end: Callable[[str, Dict[str, Any]], None]) -> List[Dict[str, Any]]:
    """Run trials until ``n_trials`` have finished; returns one summary row per trial of the
    study (earlier runs' included). ``on_start(name)`` / ``on_end(name, row)``: progress."""
    from optuna.trial import TrialState

    study = open_study(spec, out_dir)
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(stale.number, state=TrialState.FAIL)  # an interrupted search left it running
        log.warning("trial %d was interrupted; marked failed", stale.number)
    space = search_space(spec)
    while finished(study) < n_trials:
        trial = study.ask(space)
        overrides = {k: token_value(v) for k, v in trial.params.items()}
        name = f"trial-{trial.number:04d}"
        trial.set_user_attr("run", name)
        on_start(name)
        row: Dict[str, Any] = {"run": name, "overrides": overrides}
        try:
            result = execute(spec, overrides, out_dir / name, extra, callbacks=lambda: [PruneTrial(trial)])
            row.update(result)
            trial.set_user_attr("result", result)
            if "pruned_at_step" in result:
                study.tell(trial, state=TrialState.PRUNED)
                row["status"] = f"pruned at step {result['pruned_at_step']}"
            else:
                study.tell(trial, objective_value(result, spec.objective))
                row["status"] = "done"
        except RunStopped as err:  # the cell alone was stopped (killed, out of memory, ...)
            study.tell(trial, state=TrialState.FAIL)
            row["status"] = f"interrupted: {str(err).splitlines()[0][:80]}"
            log.error("%s %s", name, row["status"])
        except (Exception, SystemExit, KeyboardInterrupt) as err:  # noqa: BLE001  (one failed trial does not stop the search)
            study.tell(trial, state=TrialState.FAIL)
            signum = interrupting_signal(err)
            if signum is not None:  # the sweep itself was interrupted: it stops here
                raise RunInterrupted(signum, f"the search stopped in {name} (marked failed); start "
                                             "it again to continue") from None
            row["status"] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:80] if str(err) else ''}"
            log.error("%s %s", name, row["status"])
        on_end(name, row)
    return study_rows(study)


def study_rows(study) -> List[Dict[str, Any]]:
    """One summary row per trial of the study, in trial order."""
    rows = []
    for t in study.trials:
        result = dict(t.user_attrs.get("result") or {})
        state = t.state.name.lower()
        status = {"complete": "done", "pruned": "pruned", "fail": "failed"}.get(state, state)
        rows.append({"run": t.user_attrs.get("run", f"trial-{t.number:04d}"),
                     "overrides": {k: token_value(v) for k, v in t.params.items()},
                     "status": status, **result})
    return rows


def best_line(study_path: Path, spec: SweepSpec) -> str:
    """``best pck@0.1 = 41.52 (trial-0007: matcher.lam_gw=0.21)`` of the study, or ''."""
    import optuna

    study = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{study_path.absolute()}")
    try:
        best = study.best_trial
    except ValueError:
        return ""
    params = ", ".join(f"{k}={v}" for k, v in best.params.items())
    return f"best {spec.objective} = {best.value:.2f} ({best.user_attrs.get('run', best.number)}: {params})"
