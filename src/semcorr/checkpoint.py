"""Checkpoints of trained runs: find them, re-open their config, rebuild the model, load weights.

A training checkpoint (Lightning ``.ckpt``) holds the module's ``state_dict`` and, in its
hyper-parameters, ``run_config``: the resolved config of the run. :func:`checkpoint_config`
re-types that config with the current schemas, so ``eval.py ckpt=PATH [overrides]`` rebuilds the
same backbone, head and matcher (``backbone.weights`` is set to ``none``: the checkpoint carries
every weight) and :func:`load_weights` fills them in.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from semcorr.config import RunConfig, TrainerConfig
from semcorr.errors import ConfigError, DataError, first_sentence
from semcorr.registry import GROUPS, schemas


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


def check_resumable(path: str | Path) -> Path:
    """``path`` (a run folder or a ``.ckpt``) as the checkpoint ``--resume`` continues from,
    checked before anything starts: a readable Lightning training checkpoint with its loop state."""
    ckpt_path = resolve_checkpoint(path, prefer="last")
    ckpt = read_checkpoint(ckpt_path, mmap=True)
    missing = [k for k in ("global_step", "loops", "optimizer_states") if k not in ckpt]
    if missing:
        raise DataError(f"{ckpt_path} cannot be resumed: it lacks {', '.join(missing)} "
                        "(a weights-only file? evaluate it with ckpt= instead)")
    return ckpt_path


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
        raise ConfigError(f"the saved config does not fit the current schemas: {err}") from None
    OmegaConf.set_struct(cfg, True)
    return cfg


def checkpoint_config(path: str | Path) -> DictConfig:
    """The run config stored in a checkpoint, ready to rebuild the model for evaluation."""
    ckpt = read_checkpoint(resolve_checkpoint(path))
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


def load_weights(module: torch.nn.Module, path: str | Path) -> Path:
    """Load a checkpoint's ``state_dict`` into ``module``; model keys must match exactly.

    Keys of the training loss (``loss_fn.*``) are ignored, so an evaluation module without a loss
    loads a training checkpoint.
    """
    path = resolve_checkpoint(path)
    state = read_checkpoint(path)["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith("loss_fn.")}
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("loss_fn.")]
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
