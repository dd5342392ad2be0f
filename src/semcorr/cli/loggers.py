"""Experiment loggers: CSV always, Weights & Biases online or offline."""

from __future__ import annotations

import csv
import logging
import netrc
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from lightning.pytorch.loggers import CSVLogger, Logger

from semcorr.cli.console import console_is_quiet
from semcorr.resume import ResumePoint

log = logging.getLogger(__name__)


def wandb_login() -> bool:
    """Whether a W&B login is configured: ``$WANDB_API_KEY`` or an ``api.wandb.ai`` entry in
    ``~/.netrc`` (what ``wandb login`` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return bool(netrc.netrc().authenticators("api.wandb.ai"))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_enabled(wandb: Optional[bool]) -> bool:
    """``logger.wandb``: true / false as given; null (the default): only when W&B is configured
    in the environment (``$WANDB_MODE`` set to anything but ``disabled``, or a login), so a run
    never starts an anonymous or unwanted W&B run by surprise."""
    if wandb is not None:
        return bool(wandb)
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env:
        return env != "disabled"
    return wandb_login()


def wandb_mode(mode: str) -> str:
    """Resolve ``auto``: online only with a login and ``WANDB_MODE`` not offline/disabled."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("offline", "disabled", "dryrun"):
        return "offline" if env == "dryrun" else env
    return "online" if wandb_login() else "offline"


def earlier_csv_rows(path: str | Path, before_step: int, validated: bool = False) -> List[Dict[str, str]]:
    """Rows of a run's ``csv/metrics.csv`` logged before the checkpoint of step ``before_step``
    that a run resumes from (the resumed run logs the later ones again); empty fields dropped.

    Lightning logs step n's training rows, and the validation after it, under ``step`` n - 1:
    the validation rows at ``before_step - 1`` are kept only when the checkpoint was written
    after that validation (``validated``).
    """
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    keep = []
    for row in rows:
        try:
            step = float(row.get("step") or "nan")
        except ValueError:
            continue
        is_val = any(k and k.startswith("val/") and v for k, v in row.items())
        if step < before_step - 1 or (step == before_step - 1 and (validated or not is_val)):
            keep.append({k: v for k, v in row.items() if k and v not in ("", None)})
    return keep


def make_loggers(cfg: Any, out_dir: str | Path, run_config: Dict[str, Any], name: str,
                 log_model: bool = False, resume: Optional[ResumePoint] = None) -> List[Logger]:
    """Loggers for a run in ``out_dir`` (``cfg`` is the ``logger`` config section).

    ``log_model``: upload checkpoints to W&B as artifacts (online runs only).
    ``resume``: the run resumes from this point (:mod:`semcorr.resume`); ``csv/metrics.csv`` keeps
    the rows logged before its step (and its validation, if it had one)
    (Lightning's CSV logger would start the file afresh), so a resumed run's CSV log is the
    whole run's.
    """
    out_dir = Path(out_dir)
    loggers: List[Logger] = []
    if cfg.csv:
        earlier = (earlier_csv_rows(out_dir / "csv" / "metrics.csv", resume.global_step,
                                    resume.validated) if resume is not None else [])
        csv_logger = CSVLogger(save_dir=str(out_dir), name="csv", version="")
        if earlier:
            csv_logger.experiment.metrics.extend(earlier)  # written first, at the next save
        loggers.append(csv_logger)
    mode = wandb_mode(cfg.mode) if wandb_enabled(cfg.wandb) else "disabled"
    if mode != "disabled":
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        quiet = console_is_quiet()  # W&B's banner, sync hints and run summary: --verbose only
        if quiet:  # W&B checks some init arguments before a run's settings apply: set it up silent
            wandb.setup(settings=wandb.Settings(silent=True, quiet=True))
        logger = WandbLogger(
            project=cfg.project, group=cfg.group, tags=list(cfg.tags), name=name,
            save_dir=str(out_dir), mode=mode, config=run_config,
            log_model=bool(log_model and mode == "online"),
            settings=wandb.Settings(silent=quiet, quiet=quiet),
        )
        loggers.append(logger)
        log.info("W&B logging %s (project %s)", mode, cfg.project)
    return loggers


def wandb_loggers(loggers: List[Logger]) -> List[Logger]:
    """The W&B loggers among ``loggers`` (by class name: wandb is imported only when used)."""
    return [logger for logger in loggers if type(logger).__name__ == "WandbLogger"]


def log_image(loggers: List[Logger], key: str, path: str | Path) -> None:
    """Send an image file to every logger that takes images (W&B)."""
    for logger in wandb_loggers(loggers):
        logger.log_image(key=key, images=[str(path)])


def log_table(loggers: List[Logger], key: str, columns: List[str], data: List[List[Any]],
              image_columns: Sequence[str] = ("thumbnail",)) -> None:
    """Send a table to every W&B logger; cells of ``image_columns`` (arrays) become images."""
    if not data:
        return
    for logger in wandb_loggers(loggers):
        import wandb

        picked = [columns.index(c) for c in image_columns if c in columns]
        rows = [[wandb.Image(v) if i in picked else v for i, v in enumerate(row)] for row in data]
        logger.log_table(key=key, columns=columns, data=rows)


def finish_loggers(loggers: List[Logger], success: bool) -> None:
    """End a run's loggers: ``finalize`` with its status, and close its W&B run with exit code 0
    (finished) or 1 (failed), so a later run in the same process starts its own W&B run and a
    failed run is never synced as finished."""
    for logger in loggers:
        try:
            logger.finalize("success" if success else "failed")
            if type(logger).__name__ == "WandbLogger" and logger._experiment is not None:
                logger.experiment.finish(exit_code=0 if success else 1)
        except Exception as err:  # noqa: BLE001  (never let logging clean-up hide the run's outcome)
            log.warning("could not close logger %s: %s", type(logger).__name__, err)
