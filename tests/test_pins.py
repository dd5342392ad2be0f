"""The private APIs of Lightning and timm that semcorr relies on exist in the installed versions,
and pyproject.toml bounds those packages to the versions tested (an upgrade is a deliberate step:
raise the bound once these tests and the suite pass)."""

from __future__ import annotations

import inspect
import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> dict:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {Requirement(d).name: Requirement(d) for d in deps}


def test_lightning_and_timm_have_upper_bounds_that_admit_the_installed_versions():
    reqs = _requirements()
    for name in ("lightning", "timm"):
        spec = reqs[name].specifier
        assert any(s.operator in ("<", "<=") for s in spec), f"{name} has no upper bound: {spec}"
        assert spec.contains(version(name)), f"installed {name} {version(name)} is outside {spec}"


def test_lightning_privates_used_by_last_checkpoint():
    """semcorr.training.LastCheckpoint calls ModelCheckpoint._save_last_checkpoint(trainer,
    monitor_candidates), _monitor_candidates(trainer), _should_skip_saving_checkpoint(trainer)
    and reads _last_global_step_saved."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    for name, params in {"_save_last_checkpoint": ["trainer", "monitor_candidates"],
                         "_monitor_candidates": ["trainer"],
                         "_should_skip_saving_checkpoint": ["trainer"]}.items():
        method = getattr(ModelCheckpoint, name)
        assert list(inspect.signature(method).parameters)[1:] == params, name
    assert ModelCheckpoint(dirpath="x")._last_global_step_saved == 0


def test_timm_private_pos_embed_used_by_dinov2():
    """semcorr.backbones.dinov2 (pos_embed="timm") calls VisionTransformer._pos_embed(x)."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    assert list(inspect.signature(VisionTransformer._pos_embed).parameters) == ["self", "x"]
    vit = VisionTransformer(img_size=28, patch_size=14, embed_dim=12, depth=1, num_heads=2,
                            dynamic_img_size=True)
    tokens = vit.patch_embed(torch.zeros(1, 3, 28, 28))
    assert vit._pos_embed(tokens).shape == (1, 5, 12)  # cls + 2 x 2 patches


def test_lightning_privates_used_at_a_sigterm_and_by_the_loggers():
    """LastCheckpoint.on_exception (a SIGTERM mid-epoch) reads and adjusts the epoch loop's
    ``_batches_that_stepped`` and reads ``_is_training_done`` (both guarded: without them it saves
    no last.ckpt there, and test_faults' exact-resume test fails); finish_loggers reads
    WandbLogger's ``_experiment`` (None until a W&B run is started)."""
    import lightning as L
    from lightning.pytorch.loggers import WandbLogger

    loop = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False).fit_loop.epoch_loop
    assert isinstance(loop._batches_that_stepped, int)
    assert isinstance(loop._is_training_done, bool)
    assert WandbLogger(offline=True, save_dir="unused")._experiment is None
