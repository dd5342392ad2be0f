"""A run's saved config re-runs it: the values the defaults leave open are written down.

- :func:`resolve_open_values` fills what a config leaves to the code: ``data.root`` (null: the
  dataset's copy in the shared data folder, :func:`semcorr.paths.resolve_root`), the
  ``metric.protocol`` name (null: the dataset's default protocol) and ``ckpt`` (a run folder:
  the checkpoint file it selects). ``--print-config`` and the saved ``config.yaml`` show them.
- :func:`saved_config` reads a run's ``config.yaml`` (``--config FILE``) as the base of a run.
- :func:`keep_feature_settings`: when a run evaluates a checkpoint, the settings that change the
  checkpoint's features (:data:`FEATURE_KEYS`) keep their training-time values unless the
  command line names them; a command line that does is logged as a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from semcorr.checkpoint import resolve_checkpoint, typed_config
from semcorr.config import expand_experiment
from semcorr.errors import ConfigError
from semcorr.paths import shared_data_dir
from semcorr.registry import GROUPS, builder

log = logging.getLogger(__name__)

# settings a trained model's features depend on (a network frame of another size, another
# resizing, other blocks' tokens and their fusion, another cell size): a checkpoint's values win
# over a group file's
FEATURE_KEYS = ("data.image_size", "data.resize", "backbone.layer", "backbone.layers",
                "backbone.fuse", "backbone.norm", "backbone.pos_embed", "backbone.upsample")
_ABSENT = object()


def given_keys(tokens: Sequence[str], extra_dirs: Sequence[str | Path] = ()) -> set:
    """The keys (and groups) the command line sets, an experiment's tokens included."""
    return {t.split("=", 1)[0] for t in expand_experiment(tokens, extra_dirs)[1] if "=" in t}


def saved_config(path: str | Path) -> DictConfig:
    """A run's saved ``config.yaml`` (or the run folder holding it) as a typed config to start
    from; its ``out_dir`` is cleared (a re-run writes a new folder unless ``out_dir=`` is given)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"saved config not found: {path}")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as err:  # noqa: BLE001  (YAML and OmegaConf errors alike)
        raise ConfigError(f"{path}: not a readable config ({' '.join(str(err).split())[:200]})") from None
    missing = [g for g in GROUPS if not isinstance(raw, dict) or not isinstance(raw.get(g), dict)]
    if missing:
        raise ConfigError(f"{path}: not a saved run config (no {', '.join(missing)} section); "
                          "give the config.yaml a run wrote")
    try:
        cfg = typed_config(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    cfg.out_dir = None
    return cfg


def keep_feature_settings(cfg: DictConfig, base: DictConfig, tokens: Sequence[str],
                          extra_dirs: Sequence[str | Path] = ()) -> DictConfig:
    """For a run that evaluates a checkpoint (``base.ckpt`` set, or ``base`` read from one): the
    :data:`FEATURE_KEYS` of ``base`` replace those a group file brought in (``data=pf_willow``
    would reset a 128 px training size to 224); keys the command line sets stay, with a warning."""
    if not cfg.ckpt:
        return cfg
    given = given_keys(tokens, extra_dirs)
    for key in FEATURE_KEYS:
        group = key.split(".")[0]
        if base[group].kind != cfg[group].kind:
            continue  # another kind of backbone: the checkpoint's weights will not fit anyway
        old = OmegaConf.select(base, key, default=_ABSENT)
        new = OmegaConf.select(cfg, key, default=_ABSENT)
        if old is _ABSENT or new is _ABSENT or old == new:
            continue
        if key in given:
            log.warning("%s=%s overrides the checkpoint's training-time value %s (its features "
                        "change)", key, new, old)
        else:
            OmegaConf.update(cfg, key, old, merge=False)
            log.info("kept the checkpoint's %s=%s (override with %s=...)", key, old, key)
    return cfg


def default_data_root(data: DictConfig) -> Optional[str]:
    """The folder a dataset with ``data.root: null`` reads: its copy in the shared data folder
    (absolute), or None when it has none (the dataset then says what to set)."""
    cls = builder("data", data.kind)
    sub = getattr(cls, "shared_subdir", None)
    shared = shared_data_dir()
    if data.root or not sub or shared is None or not (shared / sub).is_dir():
        return None
    return str((shared / sub).absolute())


def default_protocol(data: DictConfig) -> Optional[str]:
    """The name of a dataset's default protocol when its class declares it (a folder dataset
    declares its protocol when built: :func:`semcorr.builder.build_run` fills that one)."""
    cls = builder("data", data.kind)
    return vars(cls).get("default_protocol") if isinstance(cls, type) else None


def resolve_open_values(cfg: DictConfig, base: Optional[DictConfig] = None,
                        tokens: Sequence[str] = (), extra_dirs: Sequence[str | Path] = ()) -> DictConfig:
    """Fill ``data.root``, ``metric.protocol`` and ``ckpt`` (see the module docstring) in place.

    With a ``base`` (a checkpoint's or a saved config) and a ``data=`` token, the base's protocol
    name belongs to its own dataset: it is cleared (unless ``metric.protocol=`` is given) and the
    new dataset's default filled in."""
    given = given_keys(tokens, extra_dirs)
    if base is not None and "data" in given and "metric.protocol" not in given:
        cfg.metric.protocol = None
    if cfg.ckpt:
        cfg.ckpt = str(resolve_checkpoint(cfg.ckpt).absolute())
    if cfg.data.root is None:
        cfg.data.root = default_data_root(cfg.data)
    if cfg.metric.protocol is None:
        cfg.metric.protocol = default_protocol(cfg.data)
    return cfg
