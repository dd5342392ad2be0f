"""Checkpoints of trained runs: find them, re-open their config, rebuild the model, load weights.

A training checkpoint (Lightning ``.ckpt``) holds the module's ``state_dict`` and, in its
hyper-parameters, ``run_config``: the resolved config of the run. :func:`checkpoint_config`
re-types that config with the current schemas, so ``eval.py ckpt=PATH [overrides]`` rebuilds the
same backbone, head and matcher (``backbone.weights`` is set to ``none``: the checkpoint carries
every weight) and :func:`load_weights` fills them in.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from semcorr.config import RunConfig, TrainerConfig
from semcorr.errors import ConfigError, DataError, first_sentence
from semcorr.registry import GROUPS, schemas

log = logging.getLogger("semcorr")


def resolve_checkpoint(path: str | Path, prefer: str = "best") -> Path:
    """A ``.ckpt`` file from a file path or a training run's ``out_dir``.

    For a run folder: the best checkpoint recorded in ``train_summary.json`` (``prefer="best"``)
    or ``checkpoints/last.ckpt`` (``prefer="last"``, or when no best exists).
    """
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    summary = path / "train_summary.json"
    if prefer == "best" and summary.is_file():
        best = json.loads(summary.read_text()).get("best_checkpoint")
        if best and Path(best).is_file():
            return Path(best)
    last = path / "checkpoints" / "last.ckpt"
    if last.is_file():
        return last
    found = sorted((path / "checkpoints").glob("*.ckpt"))
    if found:
        return found[-1]
    raise FileNotFoundError(f"no checkpoint in {path} (expected checkpoints/last.ckpt)")


def read_checkpoint(path: str | Path, mmap: bool = False) -> Dict[str, Any]:
    """The content of a training checkpoint; a file that is not one (text, an image, a truncated
    or foreign file) raises :class:`DataError` naming it. ``mmap``: map the tensors instead of
    reading them (cheap checks of large files)."""
    path = Path(path)
    try:
        mmap = mmap and zipfile.is_zipfile(path)  # mapping needs torch's zip format
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as err:  # noqa: BLE001  (UnpicklingError, RuntimeError, EOFError, ...)
        raise DataError(f"{path} is not a readable checkpoint ({type(err).__name__}: "
                        f"{first_sentence(err)})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise DataError(f"{path} is not a training checkpoint (no state_dict)")
    return ckpt


def typed_config(saved: Dict[str, Any]) -> DictConfig:
    """A saved (plain) run config as a typed, struct-mode config of the current schemas."""
    plain = dict(saved)
    cfg = OmegaConf.structured(RunConfig)
    try:
        for group in GROUPS:
            section = dict(plain.pop(group) or {})
            kinds = schemas(group)
            if section.get("kind") not in kinds:
                raise ConfigError(f"saved config: unknown {group} kind {section.get('kind')!r}; "
                                  f"valid: {', '.join(sorted(kinds))}")
            cfg[group] = OmegaConf.merge(OmegaConf.structured(kinds[section["kind"]]), section)
        cfg = OmegaConf.merge(cfg, plain)
    except ConfigError:
        raise
    except Exception as err:  # a key the current schemas no longer know
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"the saved config does not fit the current schemas: {first}") from None
    OmegaConf.set_struct(cfg, True)
    return cfg


def warn_if_unfinished(path: str | Path, ckpt_path: Path, ckpt: Dict[str, Any]) -> Optional[str]:
    """Log (and return) a warning when the run a checkpoint belongs to did not finish: its
    ``train_summary.json`` says ``failed`` or ``interrupted`` (or is missing beside a
    ``checkpoints/`` folder: the run is still going, or was killed). The warning names the step
    the checkpoint was saved at, so an evaluation of a stale ``last.ckpt`` is never silent."""
    path = Path(path).expanduser()
    run_dir = path if path.is_dir() else ckpt_path.parent.parent
    summary_path = run_dir / "train_summary.json"
    if not (run_dir / "checkpoints").is_dir() or ckpt_path.parent != run_dir / "checkpoints":
        return None  # a checkpoint file on its own: nothing says how its run ended
    try:
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    except (OSError, ValueError):
        summary = {"status": "unreadable"}
    status = None if summary is None else summary.get("status")
    if status == "finished":
        return None
    said = (f"its train_summary.json says {status!r}" + (f" ({summary['error']})" if summary.get("error") else "")
            if summary is not None else "it has no train_summary.json (still running, or killed)")
    text = (f"ckpt={path}: the run did not finish: {said}; evaluating {ckpt_path.name}, saved at "
            f"step {ckpt.get('global_step', '?')}")
    log.warning(text)
    return text


def checkpoint_config(path: str | Path) -> DictConfig:
    """The run config stored in a checkpoint, ready to rebuild the model for evaluation (a
    checkpoint of a run that did not finish is used with a warning, :func:`warn_if_unfinished`)."""
    ckpt_path = resolve_checkpoint(path)
    ckpt = read_checkpoint(ckpt_path, mmap=True)
    warn_if_unfinished(path, ckpt_path, ckpt)
    saved = (ckpt.get("hyper_parameters") or {}).get("run_config")
    if not saved:
        raise ConfigError(f"{path} has no run_config in its hyper-parameters (not a semcorr "
                          "training checkpoint?)")
    cfg = typed_config(saved)
    if "weights" in cfg.backbone:
        cfg.backbone.weights = "none"  # every weight comes from the checkpoint
    cfg.out_dir = None
    # the processes the run trained on say nothing about where it is evaluated: the defaults
    # (one device) unless the command line sets them
    for key in PLACEMENT_KEYS:
        cfg.trainer[key] = getattr(TrainerConfig, key)
    return cfg


PLACEMENT_KEYS = ("devices", "num_nodes", "strategy", "sync_batchnorm", "profiler")


NET_PREFIX = "net."
_LEGACY_PREFIXES = ("extractor.", "head.", "matcher.")  # before the net: the module held these


def upgrade_state_dict(state: Dict[str, Any]) -> Dict[str, Any]:
    """A module ``state_dict`` with the net's weights under ``net.`` (checkpoints written before
    :class:`~semcorr.net.CorrespondenceNet` existed held them at the top level)."""
    return {(NET_PREFIX + k if k.startswith(_LEGACY_PREFIXES) else k): v for k, v in state.items()}


def load_weights(net: torch.nn.Module, path: str | Path) -> Path:
    """Load a training checkpoint's net weights into a :class:`~semcorr.net.CorrespondenceNet`;
    keys must match exactly. The training loss's keys (``loss_fn.*``) are not the net's."""
    path = resolve_checkpoint(path)
    state = upgrade_state_dict(read_checkpoint(path)["state_dict"])
    state = {k[len(NET_PREFIX):]: v for k, v in state.items() if k.startswith(NET_PREFIX)}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{path} does not fit the model built from its config: missing "
                          f"{missing[:5]}, unexpected {unexpected[:5]}")
    return path


def ckpt_token(tokens: Sequence[str]) -> Optional[str]:
    """The value of the last ``ckpt=...`` token, if any."""
    found = None
    for token in tokens:
        if token.startswith("ckpt="):
            found = token.split("=", 1)[1] or None
    return found
